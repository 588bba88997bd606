"""The frame-target and random-crop stages: events land on the frames that hear them; crops keep the targets
with their frames; the settings they cannot work with are refused."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest

from aum_jax.configs import data as data_configs
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.pipeline import clip_stages
from aum_jax.data.pipeline.stages.base import ClipContext
from aum_jax.data.pipeline.stages.crop import RandomCrop
from aum_jax.data.pipeline.stages.events import FrameTargets
from aum_jax.data.records import Event


def config(**changes) -> ml_collections.ConfigDict:
    c = data_configs.defaults()
    c.name, c.num_classes, c.audio_length, c.num_mel_bins = "toy", 3, 300, 8
    c.frame_targets = True
    c.update(changes)
    return c


def context(c: ml_collections.ConfigDict) -> ClipContext:
    return ClipContext(Preprocessing.from_data_config(c), c.num_classes, train=True)


def element(events, seconds: float = 2.0) -> dict:
    fbank = np.arange(300 * 8, dtype=np.float32).reshape(300, 8)
    return {"key": "k", "label": np.zeros(3, np.float32), "fbank": fbank, "samples": round(seconds * 16000),
            **({"events": events} if events is not None else {})}


def test_an_events_frames_are_its_targets_and_padding_is_not_valid():
    c = config()
    out = FrameTargets(c, context(c))(element((Event(0.5, 1.0, 2), Event(1.2, 1.3, 0))))
    centres = (np.arange(300) * 160 + 200) / 16000
    np.testing.assert_array_equal(out["frame_label"][:, 2], ((centres >= 0.5) & (centres < 1.0)).astype(np.float32))
    np.testing.assert_array_equal(out["frame_label"][:, 0], ((centres >= 1.2) & (centres < 1.3)).astype(np.float32))
    assert not out["frame_label"][:, 1].any()
    assert out["frame_valid"].sum() == 1 + (32000 - 400) // 160 == 198  # 2 s of audio, the rest padding
    assert out["strong"] == 1.0 and "events" not in out and "samples" not in out


def test_a_clip_without_events_is_weak_and_one_named_without_any_is_strong():
    c = config()
    weak = FrameTargets(c, context(c))(element(None))
    strong = FrameTargets(c, context(c))(element(()))
    assert weak["strong"] == 0.0 and strong["strong"] == 1.0
    assert not weak["frame_label"].any() and not strong["frame_label"].any()


@pytest.mark.parametrize("changes, fragment", [
    ({"mixup": 0.5}, "frame_targets needs mixup off"),
    ({"noise": True}, "frame_targets needs noise off"),
    ({"feature": "epic_logmel"}, "frame_targets needs feature 'kaldi_fbank'"),
    ({"crop_seconds": (1.0, 2.0), "frame_targets": False}, "crop_seconds needs frame_targets=True"),
    ({"crop_seconds": (2.0, 1.0)}, "crop_seconds must be \\(shortest, longest\\)"),
])
def test_settings_the_stages_cannot_work_with_are_refused(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        clip_stages.check(config(**changes), train=True)


def test_a_crop_moves_a_random_stretch_of_the_audio_with_its_targets_to_the_start():
    c = config(crop_seconds=(0.5, 1.5))
    targets = FrameTargets(c, context(c))(element((Event(0.5, 1.0, 2),)))
    crop = RandomCrop(c, context(c))
    lengths = set()
    for seed in range(20):
        out = crop(dict(targets), np.random.default_rng(seed))
        length = int(out["frame_valid"].sum())
        lengths.add(length)
        assert 50 <= length <= 150 and out["frame_valid"][:length].all()
        start = int(out["fbank"][0, 0]) // 8  # the fbank's rows are numbered: where the crop began
        np.testing.assert_array_equal(out["fbank"][:length], targets["fbank"][start : start + length])
        np.testing.assert_array_equal(out["frame_label"][:length], targets["frame_label"][start : start + length])
        assert not out["fbank"][length:].any() and not out["frame_label"][length:].any()
        assert start + length <= 198  # within the frames that hear audio
    assert len(lengths) > 5  # random lengths
    again = crop(dict(targets), np.random.default_rng(3))
    np.testing.assert_array_equal(again["fbank"], crop(dict(targets), np.random.default_rng(3))["fbank"])
