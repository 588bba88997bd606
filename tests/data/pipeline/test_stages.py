"""The stage registry: a toy augmentation registered in one line runs in training batches only; mixup's waveform mix."""

from __future__ import annotations

import numpy as np
import pytest
from aum_jax.configs.data import defaults

from aum_jax.data.pipeline import clip_stages
from aum_jax.data.pipeline import input_pipeline as ip
from aum_jax.data.pipeline.stages.base import Element, Stage
from aum_jax.data.pipeline.stages.mixup import mix_waveforms
from tests.data.pipeline.test_input_pipeline import pipeline_config, validation_batches


class Gain(Stage, name="gain", order=65, stream="gain", train_only=True):  # after normalise (60), before noise (70).
    """A toy augmentation: the normalised fbank times 2 (exact in float32), with its own random stream."""

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        rng.random()  # draws from its own stream, leaving the others' draws as they were.
        return {**element, "fbank": element["fbank"] * np.float32(2.0)}


def test_a_registered_stage_runs_in_training_and_not_in_evaluation(tmp_path, monkeypatch):
    c = pipeline_config(tmp_path, 6, noise=False)  # masks and mixup on: their streams must not move.
    train, evaluation = next(ip.make_train_iterator(c, process_index=0, process_count=1)), next(validation_batches(c))
    monkeypatch.setattr(clip_stages, "REGISTRY", (*clip_stages.REGISTRY, Gain))
    gained = next(ip.make_train_iterator(c, process_index=0, process_count=1))
    np.testing.assert_array_equal(gained["fbank"], train["fbank"] * np.float32(2.0))
    np.testing.assert_array_equal(gained["label"], train["label"])
    np.testing.assert_array_equal(next(validation_batches(c))["fbank"], evaluation["fbank"])


def test_streams_are_seeded_in_registry_order():
    assert list(clip_stages.stream_seeds(0)) == ["decode", "mixup", "masks", "noise", "warp", "crop"]


def test_every_stage_key_has_a_default_in_the_data_config():
    keys = defaults()
    for stage in clip_stages.REGISTRY:
        assert all(key in keys for key in stage.keys), stage.name
    claimed = {key for stage in clip_stages.REGISTRY for key in stage.keys}
    assert claimed == {"freqm", "timem", "freq_warp", "mask_style", "mixup", "mixup_beta", "noise", "noise_scale",
                       "noise_max_shift", "cache_features", "frame_targets", "crop_seconds"}
    names = [stage.name for stage in clip_stages.REGISTRY]
    assert len(set(names)) == len(names)


def test_two_stages_on_one_stream_are_refused(monkeypatch):
    class Twin(Gain, name="twin", order=66, stream="masks", train_only=True):
        """A second stage on the masks' stream."""

    monkeypatch.setattr(clip_stages, "REGISTRY", (*clip_stages.REGISTRY, Twin))
    with pytest.raises(ValueError, match="share a random stream"):
        clip_stages.stream_seeds(0)


def test_mixup_keeps_the_clips_means_for_a_model_that_streams():
    """Without remove_waveform_mean (a streaming model's features never see a whole clip's mean) the mix
    is the clips' weighted sum; with it, the original's centred mix."""
    rng = np.random.default_rng(0)
    first, second = (rng.normal(size=(1, 800)).astype(np.float32) + 0.5 for _ in range(2))
    np.testing.assert_allclose(mix_waveforms(first, second[:, :600], 0.7, remove_mean=False),
                               0.7 * first + 0.3 * np.pad(second[:, :600], ((0, 0), (0, 200))), rtol=1e-6)
    centred = mix_waveforms(first, second, 0.7)
    assert abs(float(centred.mean())) < 1e-6 and not np.allclose(centred, 0.7 * first + 0.3 * second)
