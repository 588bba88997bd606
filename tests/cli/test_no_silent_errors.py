"""No silent wrong answers, with real files and processes: audio at any sample rate is resampled
to the model's, damaged models and tensors are refused,
and every user mistake ends in one ``error:`` line with exit status 1, writing nothing."""

from __future__ import annotations

import json
import resource
import shutil
import signal
from math import gcd
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from scipy.signal import resample_poly

from aum_jax.checkpoints import convert
from aum_jax.checkpoints.model_files import save_model
from aum_jax.data.features import kaldi, preprocessing
from aum_jax.inference import classify
from tests.helpers import (
    SAMPLE,
    TINY_FOBI,
    assert_one_error_line,
    main_cli,
    run,
    save_tiny_fobi,
    xla_flags,
)

PREP = preprocessing.Preprocessing(num_mel_bins=128, target_length=128, mean=-5.0114145, std=4.2837193, loss="CE")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny Fo-Bi fixture with statistics and a CE loss (softmax scores)."""
    return save_tiny_fobi(tmp_path_factory.mktemp("model") / "m", mean=PREP.mean, std=PREP.std, loss=PREP.loss)


def _write_at(path: Path, rate: int) -> Path:
    """SAMPLE resampled to ``rate`` with SciPy's polyphase filter (not the resampler predict uses)."""
    samples, source_rate = soundfile.read(SAMPLE, dtype="float32")
    g = gcd(rate, source_rate)
    soundfile.write(path, resample_poly(samples, rate // g, source_rate // g).astype(np.float32), rate, subtype="PCM_16")
    return path


# ---------------------------------------------------------------------------- sample rate


def test_44k_and_48k_copies_score_like_the_16k_clip(model_dir, tmp_path):
    copies = [str(_write_at(tmp_path / f"copy{rate}.wav", rate)) for rate in (44_100, 48_000)]
    out = tmp_path / "scores.json"
    result = run("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(SAMPLE), *copies,
                 "--top-k", "10", "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "44100 Hz resampled to 16000 Hz" in result.stdout and "48000 Hz resampled to 16000 Hz" in result.stdout
    files = json.loads(out.read_text())["files"]
    scores = [{t["label"]: t["score"] for t in f["windows"][0]["top"]} for f in files]
    assert [f["sample_rate"] for f in files] == [16_000, 44_100, 48_000]
    for copy in scores[1:]:
        assert max(copy, key=copy.get) == max(scores[0], key=scores[0].get)  # the same top class.
        assert max(abs(copy[k] - scores[0][k]) for k in copy) < 1e-2
    # The features themselves agree (bins near 8 kHz, where the resamplers' filters roll off, aside);
    # computed at the copy's own rate, as before, they do not.
    prep = PREP.replace(target_length=998)  # the clip's frames: no padding.
    original = classify.file_features(str(SAMPLE), prep)[0]
    for copy in copies:
        assert np.median(np.abs(classify.file_features(copy, prep)[0] - original)) < 0.01
        waveform, rate = soundfile.read(copy, dtype="float32", always_2d=True)
        own_rate = prep.normalize(preprocessing.pad_or_cut(kaldi.fbank_from_waveform(waveform.T, rate, 128), 998))
        assert np.median(np.abs(own_rate - original)) > 0.1


def test_stereo_files_use_the_first_channel_or_the_mean(model_dir, tmp_path):
    samples, rate = soundfile.read(SAMPLE, dtype="float32")
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, np.stack([samples, 0.1 * samples[::-1]], axis=1), rate, subtype="FLOAT")
    first = classify.classify_clips(predict_model(model_dir), PREP, [str(stereo)]).logits
    mono = classify.classify_clips(predict_model(model_dir), PREP, [str(SAMPLE)]).logits
    mean = classify.classify_clips(predict_model(model_dir), PREP, [str(stereo)], channel="mean").logits
    # "first": channel 0 after removing the mean of both channels, as the original; "mean": their average.
    np.testing.assert_allclose(first, mono, atol=1e-4)
    assert not np.allclose(mean, first, atol=1e-4)


def predict_model(model_dir: Path):
    from aum_jax.checkpoints.model_files import load_model

    return load_model(model_dir)


# ---------------------------------------------------------------------------- finite or refuse


def _corrupted(model_dir: Path, to: Path) -> Path:
    """A copy whose largest array file has 4 KB overwritten in place (the same size)."""
    shutil.copytree(model_dir, to)
    largest = max((p for p in (to / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with largest.open("r+b") as f:
        f.seek(largest.stat().st_size // 2)
        f.write(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return to


def test_a_byte_corrupted_model_is_refused_by_predict_and_export(model_dir, tmp_path):
    damaged = _corrupted(model_dir, tmp_path / "damaged")
    result = run("-m", "aum_jax.predict", "--model-dir", str(damaged), "--audio", str(SAMPLE))
    assert_one_error_line(result, f"{damaged / 'params'} is damaged")
    result = run("-m", "aum_jax.export", "--model-dir", str(damaged), "--output", str(tmp_path / "m.jaxexport"))
    assert_one_error_line(result, f"{damaged / 'params'} is damaged")
    assert not (tmp_path / "m.jaxexport").exists()


def test_a_truncated_array_file_and_a_mismatched_config_name_the_files(model_dir, tmp_path):
    truncated = shutil.copytree(model_dir, tmp_path / "truncated")
    largest = max((p for p in (truncated / "params").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    largest.write_bytes(largest.read_bytes()[:1000])
    result = run("-m", "aum_jax.predict", "--model-dir", str(truncated), "--audio", str(SAMPLE))
    assert_one_error_line(result, f"{truncated / 'params'} is damaged")

    edited = shutil.copytree(model_dir, tmp_path / "edited")
    config = json.loads((edited / "config.json").read_text())
    (edited / "config.json").write_text(json.dumps({**config, "embed_dim": 96}))
    result = run("-m", "aum_jax.predict", "--model-dir", str(edited), "--audio", str(SAMPLE))
    line = assert_one_error_line(result, f"{edited / 'config.json'} does not fit {edited / 'params'}")
    assert "strict" not in result.stderr and "(1, 1, 192) in params/, (1, 1, 96) by config.json" in line


def test_an_int64_tensor_is_refused_by_the_converter(tmp_path):
    state = torch.load(TINY_FOBI, map_location="cpu", weights_only=True)
    state["head.weight"] = (state["head.weight"] * 100).to(torch.int64)
    torch.save(state, tmp_path / "int.pth")
    result = run("scripts/convert_checkpoint.py", "--torch-checkpoint", str(tmp_path / "int.pth"),
                 "--output", str(tmp_path / "out"))
    assert_one_error_line(result, "'head.weight' is a int64 tensor, not floating point")
    assert not (tmp_path / "out").exists()


def test_the_refusal_of_a_code_running_pickle_is_one_line(tmp_path):
    from tests.helpers import RunsCode

    torch.save({"model": {"w": torch.zeros(2)}, "payload": RunsCode()}, tmp_path / "evil.pth")
    result = run("scripts/convert_checkpoint.py", "--torch-checkpoint", str(tmp_path / "evil.pth"),
                 "--output", str(tmp_path / "out"))
    assert_one_error_line(result, "Refusing to load", "evil.pth", "could run code")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_model_without_preprocessing_json_is_not_scored_as_if_it_had_one(tmp_path):
    bare = tmp_path / "bare"
    save_model(convert.convert(convert.read_torch_checkpoint(TINY_FOBI)), bare)
    np.save(tmp_path / "x.npy", np.zeros((2, 128, 128), np.float32))
    result = run("-m", "aum_jax.predict", "--model-dir", str(bare), "--features", str(tmp_path / "x.npy"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "has no preprocessing.json: printing raw logits" in result.stderr
    rows = result.stdout.strip().splitlines()
    assert len(rows) == 2 and all(row.endswith("(logits)") for row in rows)
    with_loss = run("-m", "aum_jax.predict", "--model-dir", str(bare), "--features", str(tmp_path / "x.npy"),
                    "--loss", "CE")
    assert with_loss.returncode == 0 and with_loss.stdout.strip().endswith("(softmax)")
    result = run("-m", "aum_jax.export", "--model-dir", str(bare), "--output", str(tmp_path / "m.jaxexport"))
    assert_one_error_line(result, "has no preprocessing.json")
    assert not (tmp_path / "m.jaxexport").exists() and not (tmp_path / "m.preprocessing.json").exists()


def test_a_too_short_clip_is_named_and_skipped_among_several(model_dir, tmp_path):
    short = tmp_path / "short.wav"
    soundfile.write(short, np.zeros(160, np.float32), 16_000)
    alone = run("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(short))
    assert_one_error_line(alone, "short.wav", "too short")
    several = run("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(short), str(SAMPLE))
    assert several.returncode == 0, several.stderr[-3000:]
    assert "warning: skipped" in several.stderr and "short.wav" in several.stderr
    assert "sample0.wav: " in several.stdout and "short.wav" not in several.stdout
    # Rows of --save-logits follow --audio: with a file missing, nothing is saved.
    saving = run("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(short), str(SAMPLE),
                 "--save-logits", str(tmp_path / "y.npy"))
    assert_one_error_line(saving, "1 of 2 files could not be read")
    assert not (tmp_path / "y.npy").exists()


# ---------------------------------------------------------------------------- the training job


@pytest.mark.parametrize("extra, env, fragments", [
    (["--config.train.num_stepz=5"], {}, ["--config.train.num_stepz: no such config key", 'did you mean "num_steps"']),
    (["--config.data.batch_size=-1"], {}, ["config.data.batch_size=-1: must be positive"]),
    (["--config.model.depth=0"], {}, ["config.model.depth must be positive, got 0"]),
    (["--config.data.batch_size=3"], {"XLA_FLAGS": xla_flags("--xla_force_host_platform_device_count=2")},
     ["config.data.batch_size=3 per process gives a global batch of 3, which the 2 devices"]),
], ids=["unknown key", "batch -1", "depth 0", "batch the devices do not divide"])
def test_a_config_mistake_is_one_line_and_writes_nothing(toy_overrides, tmp_path, extra, env, fragments):
    workdir = tmp_path / "work"
    result = main_cli(workdir, toy_overrides, *extra, env=env)
    assert_one_error_line(result, *fragments)
    assert not workdir.exists()


def test_a_workdir_that_is_a_file_is_one_line(toy_overrides, tmp_path):
    workdir = tmp_path / "work"
    workdir.write_text("not a folder")
    assert_one_error_line(main_cli(workdir, toy_overrides), f"{workdir} is a file")
    assert workdir.read_text() == "not a folder"


def test_a_full_disk_names_the_folder_and_the_last_intact_checkpoint(toy_overrides, tmp_path):
    workdir = tmp_path / "work"
    common = ["--config.train.checkpoint_every=2", "--config.eval.split=", "--config.eval.test_split=",
              "--config.model.scan_impl=chunked"]  # no kernel is compiled under the file size limit.
    first = main_cli(workdir, toy_overrides, *common)
    assert first.returncode == 0, first.stderr[-3000:]
    sizes = {p: p.stat().st_size for p in workdir.rglob("*") if p.is_file()}
    checkpoints = workdir / "checkpoints"
    # The logs and config (twice the largest) fit; the checkpoint's tree metadata, always one file, does not. Its
    # array data is no measure: tensorstore splits it into a number of files that depends on timing.
    limit = 2 * max(size for p, size in sizes.items() if p.parent == workdir)
    assert limit < sizes[checkpoints / "2" / "optimizer" / "_METADATA"], sizes

    def limit_file_size() -> None:  # writes past the limit fail with EFBIG, as on a full disk with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    no_other_writes = {"PYTHONDONTWRITEBYTECODE": "1", "JAX_ENABLE_COMPILATION_CACHE": "false"}  # checkpoints only.
    result = main_cli(workdir, toy_overrides, *common, "--config.train.num_steps=4", preexec_fn=limit_file_size,
                      env=no_other_writes)
    line = assert_one_error_line(result, f"cannot write a checkpoint in {workdir / 'checkpoints'}",
                                 f"the last intact checkpoint is step 2 ({workdir / 'checkpoints' / '2'})")
    assert "file too large" in line
    resumed = main_cli(workdir, toy_overrides, *common, "--config.train.num_steps=4")  # space again: it resumes.
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored the checkpoint of step 2" in resumed.stderr
