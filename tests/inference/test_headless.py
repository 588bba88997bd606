"""A model without a classification head (a pretraining model: num_classes 0) gives embeddings, never
class scores: predict (clips, windows, whole files, features), export and the library's scoring
functions refuse it in one line naming --embeddings, before the model loads; --embeddings takes it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aum_jax.checkpoints.model_files import save_model
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.inference import classify, whole
from aum_jax.models import AuMConfig, init_model
from tests.helpers import SAMPLE, assert_one_error_line, run

# As masked patch modelling saves its backbone (aum_jax.training.train): num_classes 0, no classes, no loss.
CONFIG = AuMConfig(num_mel_bins=32, audio_length=32, embed_dim=32, depth=1, num_classes=0)
PREP = Preprocessing(num_mel_bins=32, target_length=32, mean=-5.0, std=4.0)


@pytest.fixture(scope="module")
def headless_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("headless") / "m"
    save_model(init_model(CONFIG), out, preprocessing=PREP)
    return out


@pytest.mark.parametrize("args", [
    ["--audio", str(SAMPLE)],
    ["--audio", str(SAMPLE), "--window-seconds", "0.32", "--json", "{tmp}/t.json"],
    ["--audio", str(SAMPLE), "--whole"],
    ["--audio", str(SAMPLE), "--save-features", "{tmp}/z.npy"],
    ["--features", "{tmp}/x.npy", "--save-logits", "{tmp}/y.npy"],
], ids=["clips", "windows", "whole", "pooled features", "features"])
def test_predict_refuses_scores_of_a_model_without_a_head(headless_dir, tmp_path, args):
    np.save(tmp_path / "x.npy", np.zeros((2, 32, 32), np.float32))
    result = run("-m", "aum_jax.predict", "--model-dir", str(headless_dir), *(a.format(tmp=tmp_path) for a in args))
    assert_one_error_line(result, f"{headless_dir} has no classification head", "--embeddings")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_export_refuses_it_with_the_same_check(headless_dir, tmp_path):
    result = run("-m", "aum_jax.export", "--model-dir", str(headless_dir), "--output", str(tmp_path / "m.jaxexport"))
    assert_one_error_line(result, f"{headless_dir} has no classification head", "--embeddings")
    assert not list(tmp_path.iterdir())


def test_the_library_refuses_it_too(tmp_path):
    model = init_model(CONFIG)
    with pytest.raises(classify.NoHeadError, match="no classification head"):
        classify.logits_and_features(model, np.zeros((1, 32, 32), np.float32))
    with pytest.raises(classify.NoHeadError):
        classify.classify_clips(model, PREP, [str(SAMPLE)])
    with pytest.raises(classify.NoHeadError):
        classify.classify_recording(model, PREP, str(SAMPLE))
    with pytest.raises(classify.NoHeadError):
        whole.classify_whole(model, PREP, str(SAMPLE))


def test_embeddings_of_it_are_written(headless_dir, tmp_path):
    out = tmp_path / "rows.npz"
    result = run("-m", "aum_jax.predict", "--model-dir", str(headless_dir), "--audio", str(SAMPLE), "--embeddings",
                 str(out), "--pool")
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.load(out)["embedding"].shape == (1, 32)
