"""Live inference: a Stream of a one-pass causal model gives, for any chunking of the audio, the rows of
one pass over the whole recording (within 1e-5), at the times of its time slices, from a fixed amount of
memory; a model that does not stream is refused."""

from __future__ import annotations

import json
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile

from aum_jax.checkpoints.model_files import save_model
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.inference import classify
from aum_jax.inference.stream import Stream
from aum_jax.models import AuMConfig, init_model
from tests.helpers import REPO_ROOT, SAMPLE, subprocess_env

CONFIG = AuMConfig(num_mel_bins=32, audio_length=40, patch_size=(32, 4), strides=(32, 4), embed_dim=24, depth=2,
                   num_classes=3, bimamba_type="none", cls_position="none", pool="max", position="none")
PREP = Preprocessing(num_mel_bins=32, target_length=40, mean=-5.0, std=4.0, loss="BCE", class_names=("a", "b", "c"),
                     remove_waveform_mean=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_model(init_model(CONFIG, 0), tmp_path_factory.mktemp("one_pass") / "m", preprocessing=PREP)


@pytest.fixture(scope="module")
def audio():
    return soundfile.read(SAMPLE, dtype="float32")[0][:16000 * 3]  # 3 s of speech at 16 kHz.


def _whole(model_dir, audio) -> np.ndarray:
    from aum_jax.checkpoints.model_files import load_model
    from flax import nnx

    model = nnx.view(load_model(model_dir), deterministic=True)
    frames = PREP.frames(audio[None], 16000)
    frames = frames[: len(frames) // 4 * 4]  # whole time slices.
    return classify.scores(np.asarray(model.whole(jnp.asarray(frames)[None])["frame_logits"][0]), "sigmoid")


@pytest.mark.parametrize("chunk", [1, 160, 1000, 4096, 16000])
def test_any_chunking_gives_the_rows_of_one_pass(model_dir, audio, chunk):
    stream = Stream(model_dir)
    rows = [stream.push(audio[i:i + chunk]) for i in range(0, len(audio), chunk)] + [stream.flush()]
    scores = np.concatenate([r.scores for r in rows])
    whole = _whole(model_dir, audio)
    assert scores.shape == whole.shape == (74, 3)  # 298 frames of 25 ms every 10 ms: 74 slices of 4.
    np.testing.assert_allclose(scores, whole, rtol=1e-5, atol=1e-5)
    ends = np.concatenate([r.ends for r in rows])
    np.testing.assert_allclose(ends, (np.arange(1, 75) * 4 - 1) * 0.01 + 0.025)  # the last frame's end.
    assert stream.seconds_per_slice == pytest.approx(0.04)
    best = [row[0] for r in rows for row in r.top(1)]  # the model's names, best first.
    assert [name for name, _ in best] == [("a", "b", "c")[i] for i in whole.argmax(axis=1)]


def test_its_memory_does_not_grow_with_the_audio(model_dir, audio):
    stream = Stream(model_dir)
    for _ in range(3):
        for i in range(0, len(audio), 1234):
            stream.push(audio[i:i + 1234])
            assert len(stream._pending) < 4 and stream._features.buffered_samples < stream._features.window


def test_a_model_that_does_not_stream_is_refused(tmp_path):
    save_model(init_model(CONFIG.replace(bimamba_type="v2"), 0), tmp_path / "bi", preprocessing=PREP)
    with pytest.raises(ValueError, match="does not stream: .*bimamba_type='v2'"):
        Stream(tmp_path / "bi")
    save_model(init_model(CONFIG, 0), tmp_path / "mean", preprocessing=PREP.replace(remove_waveform_mean=True))
    with pytest.raises(ValueError, match="remove_waveform_mean"):
        Stream(tmp_path / "mean")


def test_predict_streams_a_file_and_standard_input_as_a_live_source(model_dir, audio, tmp_path):
    """``predict --stream`` prints detections as they happen and writes the timeline of every slice: a
    file and the same samples as raw 16-bit PCM on standard input give the same rows."""
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, audio, 16000, subtype="PCM_16")
    pcm = (soundfile.read(wav, dtype="int16")[0]).astype("<i2").tobytes()
    timelines = {}
    for source, stdin in ((str(wav), None), ("-", pcm)):
        out = tmp_path / f"{len(timelines)}.json"
        done = subprocess.run([sys.executable, "-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", source,
                               "--stream", "--chunk-seconds", "0.25", "--threshold", "0.5", "--json", str(out)],
                              input=stdin, cwd=REPO_ROOT, env=subprocess_env(), capture_output=True, timeout=300)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
        stdout = done.stdout.decode()
        assert f"{source}: a row every 40 ms; detections (score >= 0.5):" in stdout
        assert f"{source}: 3.00 s, 74 rows (sigmoid)" in stdout
        timelines[source] = json.loads(out.read_text())["files"][0]["windows"]
    assert timelines[str(wav)] == timelines["-"]
    stream = Stream(model_dir)
    rows = [stream.push(soundfile.read(wav, dtype="float32")[0]), stream.flush()]
    scores = np.concatenate([r.scores for r in rows])
    best = [w["top"][0]["score"] for w in timelines["-"]]
    np.testing.assert_allclose(best, scores.max(axis=1), atol=1e-4)


def test_a_one_pass_model_trains_through_the_command_and_its_directory_streams(tmp_path, toy_overrides):
    """The one-pass settings of docs/inference.md on a recipe: trained, saved, and read live."""
    from tests.helpers import main_cli

    one_pass = ["--config.model.patch_size=(32,4)", "--config.model.strides=(32,4)", "--config.model.position=none",
                "--config.model.cls_position=none", "--config.model.pool=max", "--config.model.bimamba_type=none",
                "--config.data.remove_waveform_mean=False"]
    done = main_cli(tmp_path / "work", toy_overrides, *one_pass)
    assert done.returncode == 0, done.stderr[-3000:]
    stream = Stream(tmp_path / "work")
    rows = [stream.push(soundfile.read(SAMPLE, dtype="float32")[0][:16000]), stream.flush()]
    assert sum(len(r.ends) for r in rows) == 24 and rows[0].score == "sigmoid"  # 98 frames: 24 slices of 4.


def test_one_pass_over_a_whole_file_reads_a_model_that_streams_as_a_stream(model_dir, audio, tmp_path):
    """``predict --whole`` of a causal one-pass model reads the file in chunks carrying the state: its
    timeline is the stream's, and its JSON is written a window at a time (valid JSON, every row)."""
    wav = tmp_path / "speech.wav"
    soundfile.write(wav, audio, 16000)
    out = tmp_path / "whole.json"
    done = subprocess.run([sys.executable, "-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(wav),
                           "--whole", "--json", str(out), "--top-k", "2"], cwd=REPO_ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "read as a stream" in done.stderr
    windows = json.loads(out.read_text())["files"][0]["windows"]
    stream = Stream(model_dir)
    rows = [stream.push(audio), stream.flush()]
    ends = np.concatenate([r.ends for r in rows])
    assert [w["end"] for w in windows] == [round(float(e), 4) for e in ends]
    np.testing.assert_allclose([w["top"][0]["score"] for w in windows],
                               np.concatenate([r.scores for r in rows]).max(axis=1), atol=1e-4)
