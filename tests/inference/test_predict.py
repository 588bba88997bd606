"""Self-describing model directories and inference on audio: stored statistics and names,
overrides, clear errors, and long recordings as windowed timelines (JSON, heat map)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from aum_jax.checkpoints import convert, model_files
from aum_jax.checkpoints.model_files import ModelDirectoryError, load_model, save_model
from aum_jax.data.features import audio, kaldi, preprocessing
from aum_jax.inference import classify, windows
from tests.helpers import REPO_ROOT

DEMO_LABELS = REPO_ROOT / "data" / "demo" / "class_labels_indices.csv"  # 10 names, as the fixture's classes.
SAMPLE_RATE = 16_000


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fixture_checkpoint(fixtures_dir) -> Path:
    return fixtures_dir / "aum_torch" / "tiny_fobi" / "state_dict.pth"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, fixture_checkpoint) -> Path:
    """The tiny Fo-Bi fixture converted with explicit statistics, names and a CE loss."""
    out = tmp_path_factory.mktemp("model") / "m"
    result = run_cli("scripts/convert_checkpoint.py", "--torch-checkpoint", str(fixture_checkpoint), "--output", str(out),
                     "--mean", "-5.0114145", "--std", "4.2837193", "--label-csv", str(DEMO_LABELS), "--loss", "CE")
    assert result.returncode == 0, result.stderr
    assert "statistics  mean -5.011414, std 4.283719" in result.stdout
    assert "scores      softmax (CE loss)" in result.stdout
    return out


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory) -> Path:
    """50 s alternating 5 s low and high tones."""
    t = np.arange(50 * SAMPLE_RATE) / SAMPLE_RATE
    freq = np.where((t // 5) % 2 == 0, 300.0, 2500.0)
    noise = 0.01 * np.random.default_rng(0).normal(size=t.shape)
    path = tmp_path_factory.mktemp("audio") / "long.wav"
    soundfile.write(path, (0.3 * np.sin(2 * np.pi * freq * t) + noise).astype(np.float32), SAMPLE_RATE)
    return path


def test_converter_stores_statistics_names_and_score(model_dir):
    prep = model_files.load_preprocessing(model_dir)
    assert (prep.mean, prep.std, prep.loss, prep.score) == (-5.0114145, 4.2837193, "CE", "softmax")
    assert prep.class_names[:3] == ("yes", "no", "up") and len(prep.class_names) == 10
    assert (prep.num_mel_bins, prep.target_length, prep.frame_shift_ms) == (128, 128, 10.0)


def test_converter_dataset_fills_the_published_recipe(tmp_path, fixture_checkpoint):
    out = tmp_path / "spc"
    result = run_cli("scripts/convert_checkpoint.py", "--torch-checkpoint", str(fixture_checkpoint), "--output", str(out),
                     "--target-variant", "Fo-Bi", "--target-num-classes", "35", "--target-audio-length", "128",
                     "--dataset", "speechcommands")
    assert result.returncode == 0, result.stderr
    prep = model_files.load_preprocessing(out)
    assert (prep.mean, prep.std, prep.loss, prep.dataset) == (-6.845978, 5.5654526, "BCE", "speechcommands")
    assert len(prep.class_names) == 35 and prep.score == "sigmoid"


def test_converter_rejects_a_label_list_of_another_size(tmp_path, fixture_checkpoint):
    out = tmp_path / "as"
    result = run_cli("scripts/convert_checkpoint.py", "--torch-checkpoint", str(fixture_checkpoint), "--output", str(out),
                     "--dataset", "audioset")
    assert result.returncode == 1
    assert "names 527 classes but the model has 10" in result.stderr
    assert not out.exists()


def test_predict_uses_the_models_statistics_and_names(model_dir, fixtures_dir):
    wav = str(fixtures_dir / "audio" / "sample0.wav")
    model = load_model(model_dir)
    waveform, sr = audio.load_waveform(wav)
    fbank = preprocessing.pad_or_cut(kaldi.fbank_from_waveform(waveform, sr, 128), 128)
    expected, _ = classify.logits_and_features(model, ((fbank - -5.0114145) / (2 * 4.2837193))[None])
    probs = classify.scores(expected, "softmax")[0]
    best = int(np.argmax(probs))
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", wav, "--top-k", "1")
    assert result.returncode == 0, result.stderr
    names = model_files.load_preprocessing(model_dir).class_names
    assert f"sample0.wav: {names[best]} {probs[best]:.3f}  (softmax)" in result.stdout
    # --mean/--std override the stored statistics.
    other = run_cli("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", wav, "--top-k", "1",
                    "--mean", "0", "--std", "1")
    assert other.returncode == 0 and other.stdout != result.stdout


def test_predict_without_statistics_says_how_to_supply_them(tmp_path, fixture_checkpoint, fixtures_dir):
    save_model(convert.convert(convert.read_torch_checkpoint(fixture_checkpoint)), tmp_path / "bare")
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(tmp_path / "bare"), "--audio",
                     str(fixtures_dir / "audio" / "sample0.wav"))
    assert result.returncode == 1
    assert "no normalisation statistics" in result.stderr and "--mean and --std" in result.stderr
    assert "--dataset" in result.stderr and "Traceback" not in result.stderr


def test_predict_names_nan_rows_and_refuses_zero_rows(model_dir, tmp_path):
    features = np.zeros((5, 128, 128), np.float32)
    features[1, 3, 4] = np.nan
    features[4, 0, 0] = np.inf
    np.save(tmp_path / "bad.npy", features)
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--features", str(tmp_path / "bad.npy"))
    assert result.returncode == 1 and "NaN or Inf values in row(s) 1, 4" in result.stderr
    np.save(tmp_path / "empty.npy", np.zeros((0, 128, 128), np.float32))
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--features", str(tmp_path / "empty.npy"))
    assert result.returncode == 1 and "zero rows" in result.stderr


def test_window_bounds_cover_the_recording():
    assert windows.window_bounds(50 * 16000, 16000, 1.28, 1.0)[-1] == (49 * 16000, 50 * 16000)
    assert len(windows.window_bounds(50 * 16000, 16000, 1.28, 1.0)) == 50
    assert windows.window_bounds(8000, 16000, 1.28, 1.0) == [(0, 8000)]  # shorter than one window.
    # A tail shorter than one 25 ms frame is dropped.
    assert windows.window_bounds(16000 + 100, 16000, 1.0, 1.0) == [(0, 16000)]


def test_long_recording_timeline_json_and_plot(model_dir, long_wav, tmp_path):
    out_json, out_png = tmp_path / "timeline.json", tmp_path / "timeline.png"
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(long_wav),
                     "--window-seconds", "1.28", "--hop-seconds", "1", "--top-k", "3",
                     "--json", str(out_json), "--plot", str(out_png))
    assert result.returncode == 0, result.stderr
    assert "long.wav: 50.00 s, 50 windows, softmax scores" in result.stdout
    assert sum(" s  " in line for line in result.stdout.splitlines()) == 50  # one timeline line per window.
    report = json.loads(out_json.read_text())
    assert report["score"] == "softmax"
    (entry,) = report["files"]
    windows = entry["windows"]
    assert entry["duration_seconds"] == 50.0 and len(windows) == 50
    assert [w["start"] for w in windows] == [float(i) for i in range(50)]
    assert windows[0]["end"] == 1.28 and windows[-1]["end"] == 50.0
    names = set(model_files.load_preprocessing(model_dir).class_names)
    for w in windows:
        assert len(w["top"]) == 3 and {t["label"] for t in w["top"]} <= names
        scores = [t["score"] for t in w["top"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out_png.stat().st_size > 10_000


def test_python_api_windows_match_single_clips(model_dir, long_wav):
    """Each window scores exactly as the same stretch of audio given as a clip of its own."""
    model = load_model(model_dir)
    prep = model_files.load_preprocessing(model_dir)
    timeline = classify.classify_recording(model, prep, str(long_wav), window_seconds=1.0, hop_seconds=2.5)
    assert len(timeline.starts) == 20 and timeline.score == "softmax"
    waveform, sr = audio.load_waveform(long_wav)
    clip = waveform[:, int(7.5 * sr) : int(8.5 * sr)]
    logits, _ = classify.logits_and_features(model, prep.features(clip, sr)[None])
    np.testing.assert_allclose(timeline.scores[3], classify.scores(logits, "softmax")[0], atol=1e-6)
    with pytest.raises(ValueError, match="longer than the model's input of 1.28 s"):
        classify.classify_recording(model, prep, str(long_wav), window_seconds=5.0)


def test_trained_model_directory_carries_the_demo_statistics(tmp_path):
    """train -> model/preprocessing.json -> predict --audio normalises with the training statistics."""
    from aum_jax.configs.data import get_data_config

    from aum_jax.training import train
    from tests.helpers import toy_config, write_toy_dataset

    paths = write_toy_dataset(tmp_path / "data", clips_per_class=4)
    config = toy_config(paths, num_steps=2, steps_per_epoch=2)
    demo = get_data_config("demo")
    config.data.mean, config.data.std = demo.mean, demo.std  # -5.01 and 4.28, not AudioSet's.
    train.train_and_evaluate(config, tmp_path / "work")
    model_dir = tmp_path / "work" / "model"
    prep = model_files.load_preprocessing(model_dir)
    assert (prep.mean, prep.std, prep.loss, prep.score) == (demo.mean, demo.std, "CE", "softmax")
    assert prep.class_names == ("low", "high") and (prep.num_mel_bins, prep.target_length) == (32, 32)

    wav = str(tmp_path / "data" / "eval" / "high0.wav")
    waveform, sr = audio.load_waveform(wav)
    fbank = preprocessing.pad_or_cut(kaldi.fbank_from_waveform(waveform, sr, 32), 32)
    logits, _ = classify.logits_and_features(load_model(model_dir), ((fbank - demo.mean) / (2 * demo.std))[None])
    probs = classify.scores(logits, "softmax")[0]
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", wav, "--top-k", "2")
    assert result.returncode == 0, result.stderr
    expected = ", ".join(f"{('low', 'high')[j]} {probs[j]:.3f}" for j in np.argsort(-probs))
    assert f"high0.wav: {expected}  (softmax)" in result.stdout


@pytest.mark.parametrize("rate", [16_000, 44_100])
def test_training_pipeline_and_predict_make_identical_features(tmp_path, rate):
    """One feature definition: a clip through the training pipeline (augmentations off) and through
    predict gives the same input, bit for bit, at the model's rate and at another one."""
    from aum_jax.configs.data import get_data_config

    from aum_jax.data.pipeline import input_pipeline
    from aum_jax.data.sources.datafile import write_datafile

    t = np.arange(int(0.7 * rate)) / rate
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t) * np.linspace(0.2, 1, t.size)).astype(np.float32), rate)
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n0,/m/a,a\n")
    write_datafile(tmp_path / "train.json", [("clip.wav", ["/m/a"])])
    c = get_data_config("speechcommands")  # 16 kHz, 128 bins, Kaldi fbank, its statistics.
    c.train_datafile, c.label_csv, c.num_classes = str(tmp_path / "train.json"), str(tmp_path / "labels.csv"), 1
    c.audio_length, c.batch_size, c.num_workers = 96, 1, 0
    c.freqm = c.timem = 0
    c.mixup, c.noise, c.freq_warp = 0.0, False, 0.0
    batch = next(input_pipeline.make_train_iterator(c, process_index=0, process_count=1))
    prep = preprocessing.Preprocessing.from_data_config(c)  # what training stores beside the model.
    features, duration, file_rate = classify.file_features(str(wav), prep)
    assert file_rate == rate and duration == pytest.approx(0.7, abs=1e-4)
    assert features.shape == (96, 128) and np.isfinite(features).all()
    np.testing.assert_array_equal(batch["fbank"][0], features)


def test_a_long_files_first_input_is_read_from_its_start_alone(model_dir, long_wav, tmp_path, monkeypatch):
    """Without a window a file is scored on its first input, as the original evaluates a clip. Only
    that much (and 1 s for the resampler's filter) is read; the mean removed is that stretch's, not
    the whole file's, which the fbank's per-frame mean removal cancels: float32 rounding apart, the
    features are the whole file's."""
    prep = model_files.load_preprocessing(model_dir)
    t = np.arange(80 * 44_100) / 44_100
    off_rate = tmp_path / "dc44k.wav"  # resampled; a pure tone, with a DC offset and a slow drift.
    soundfile.write(off_rate, (0.3 * np.sin(2 * np.pi * 700 * t) + 0.05 + 0.02 * np.sin(2 * np.pi * 0.1 * t)
                               ).astype(np.float32), 44_100, subtype="FLOAT")
    whole_read = audio.AudioFile.read
    for path, rate in ((long_wav, SAMPLE_RATE), (off_rate, 44_100)):
        waveform, _ = audio.load_waveform(path)
        reads = []
        monkeypatch.setattr(audio.AudioFile, "read", lambda self, start=0, stop=None: reads.append((start, stop)) or
                            whole_read(self, start, stop))
        features, duration, file_rate = classify.file_features(str(path), prep)
        monkeypatch.undo()
        assert reads == [(0, round(2.28 * rate))]
        assert (duration, file_rate) == (waveform.shape[1] / rate, rate)
        difference = np.abs(features - prep.features(waveform, rate))
        assert difference.max() < 2e-4 and np.median(difference) < 1e-6, difference.max()  # deep bins differ most.


def test_clip_outputs_note_what_was_left_unscored_and_replace_their_files(model_dir, long_wav, tmp_path):
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, (0.3 * np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32),
                    SAMPLE_RATE)
    out = tmp_path / "out"
    out.mkdir()
    (out / "scores.json").write_text("an older run")
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(long_wav), str(clip),
                     "--save-logits", str(out / "logits"), "--save-features", str(out / "features.npy"),
                     "--json", str(out / "scores.json"), "--plot", str(out / "scores.png"), "--overwrite")
    assert result.returncode == 0, result.stderr[-3000:]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {long_wav}: only its first 1.28 s of 50.00 s were scored; --window-seconds scores it all"]
    assert sorted(p.name for p in out.iterdir()) == ["features.npy", "logits", "scores.json", "scores.png"]
    assert np.load(out / "logits").shape == (2, 10) and np.load(out / "features.npy").shape == (2, 192)
    assert [f["file"] for f in json.loads((out / "scores.json").read_text())["files"]] == [str(long_wav), str(clip)]
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_directory_without_checksums_needs_no_verify(model_dir, tmp_path, fixtures_dir):
    from aum_jax import hear

    unchecked = tmp_path / "unchecked"
    shutil.copytree(model_dir, unchecked)
    (unchecked / "checksums.json").unlink()
    wav = str(fixtures_dir / "audio" / "sample0.wav")
    refused = run_cli("-m", "aum_jax.predict", "--model-dir", str(unchecked), "--audio", wav)
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith(
        f"error: {unchecked} has no checksums.json")
    loaded = run_cli("-m", "aum_jax.predict", "--model-dir", str(unchecked), "--audio", wav, "--no-verify")
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert "sample0.wav: " in loaded.stdout and "without checking its parameters" in loaded.stderr
    with pytest.raises(ModelDirectoryError, match="has no checksums.json"):
        hear.load_model(unchecked)
    assert hear.load_model(unchecked, verify=False).scene_embedding_size == 192
