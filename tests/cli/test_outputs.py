"""No command replaces a file it did not write: predict's and export's outputs are checked before the
model is loaded (a missing model directory is never reached), an existing file only replaced with
--overwrite, a folder, two outputs naming one file and an output naming an input refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import SAMPLE, assert_one_error_line, run, save_tiny_fobi

OLD = "a file the user keeps"
# Each output flag of predict, with the inputs and flags it goes with.
PREDICT_OUTPUTS = {
    "--json": ["--audio", str(SAMPLE)],
    "--plot": ["--audio", str(SAMPLE)],
    "--save-logits": ["--audio", str(SAMPLE)],
    "--save-features": ["--features", "{features}"],
    "--embeddings": ["--audio", str(SAMPLE)],
}


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inputs") / "x.npy"
    np.save(path, np.zeros((1, 128, 128), np.float32))
    return path


def _predict(model_dir: Path | str, *args: str):
    return run("-m", "aum_jax.predict", "--model-dir", str(model_dir), *args)


@pytest.mark.parametrize("flag", list(PREDICT_OUTPUTS))
def test_predict_refuses_an_existing_output_before_loading_the_model(flag, tmp_path, features):
    kept = tmp_path / "kept.out"
    kept.write_text(OLD)
    inputs = [a.format(features=features) for a in PREDICT_OUTPUTS[flag]]
    result = _predict(tmp_path / "no_model", *inputs, flag, str(kept))
    assert_one_error_line(result, f"{flag} {kept} exists; pass --overwrite to replace it")
    assert kept.read_text() == OLD
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.out"]


@pytest.mark.parametrize("args, fragment", [
    (["--audio", str(SAMPLE), "--json", "{tmp}"], "--json {tmp} is a folder; name a file"),
    (["--audio", str(SAMPLE), "--json", "{tmp}/out", "--plot", "{tmp}/out"],
     "--plot {tmp}/out is the same file as --json {tmp}/out"),
    (["--audio", str(SAMPLE), "--save-logits", "{tmp}/y.npy", "--save-features", "{tmp}/./y.npy"],
     "--save-features {tmp}/./y.npy is the same file as --save-logits {tmp}/y.npy"),
    (["--audio", str(SAMPLE), "--json", str(SAMPLE)], f"--json {SAMPLE} is the same file as --audio {SAMPLE}"),
], ids=["a folder", "two outputs", "two spellings of one file", "an input"])
def test_predict_refuses_outputs_it_cannot_write_even_with_overwrite(args, fragment, tmp_path):
    before = SAMPLE.read_bytes()
    result = _predict(tmp_path / "no_model", *(a.format(tmp=tmp_path) for a in args), "--overwrite")
    assert_one_error_line(result, fragment.format(tmp=tmp_path))
    assert not list(tmp_path.iterdir()) and SAMPLE.read_bytes() == before


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_fobi(tmp_path_factory.mktemp("outputs") / "m", mean=-5.0114145, std=4.2837193, loss="CE")


def test_predict_overwrite_replaces_the_file(model_dir, tmp_path):
    out = tmp_path / "scores.json"
    out.write_text(OLD)
    result = _predict(model_dir, "--audio", str(SAMPLE), "--json", str(out), "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(out.read_text())["files"][0]["file"] == str(SAMPLE)


@pytest.mark.parametrize("existing, flag", [("m.jaxexport", "--output"), ("m.preprocessing.json", "--output's sidecar")])
def test_export_refuses_an_existing_artifact_or_sidecar_before_loading_the_model(existing, flag, tmp_path):
    (tmp_path / existing).write_text(OLD)
    result = run("-m", "aum_jax.export", "--model-dir", str(tmp_path / "no_model"), "--output",
                 str(tmp_path / "m.jaxexport"))
    assert_one_error_line(result, f"{flag} {tmp_path / existing} exists; pass --overwrite to replace it")
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing] and (tmp_path / existing).read_text() == OLD
