"""Whole recordings in one pass (``AudioMamba.whole``, ``aum_jax.inference.whole``, ``predict --whole``,
HEAR's ``whole=True``): at a clip's length the pass is the model's own; longer, the position
embedding is extended along time as its scheme says; memory grows linearly with the length, and a
pass that would not fit is refused before the file is read. A one-pass model (Bi-Bi or causal) is
read in chunks instead: the rows of its one pass over the whole recording."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from flax import nnx

from aum_jax import hear
from aum_jax.checkpoints import model_files
from aum_jax.core import memory
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.inference import classify, whole
from aum_jax.models import AuMConfig, init_model
from aum_jax.models.aum import WHOLE_POS_EMBEDS
from tests.helpers import NAMES, assert_one_error_line, run, save_tiny_fobi

RATE = 16_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny Fo-Bi fixture (128 frames, an 8 x 8 patch grid) with statistics, names and a CE loss."""
    return save_tiny_fobi(tmp_path_factory.mktemp("whole") / "m", mean=-5.0114145, std=4.2837193, loss="CE",
                          class_names=NAMES)


@pytest.fixture(scope="module")
def loaded(model_dir):
    return model_files.load_model(model_dir), model_files.load_preprocessing(model_dir)


def tones(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.normal(size=t.size)).astype(np.float32)


@pytest.mark.parametrize("pos_embed", WHOLE_POS_EMBEDS)
def test_a_clip_long_pass_is_the_models_own(loaded, pos_embed):
    model, _ = loaded
    model.eval()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 128, 128)), jnp.float32)
    out = model.whole(x, pos_embed)
    np.testing.assert_array_equal(out["logits"], model(x))
    tokens = model.outputs(x)["tokens"]  # (B, F', T', D) after the final norm
    np.testing.assert_allclose(out["frames"], tokens.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(out["frame_logits"], model.head(tokens.mean(axis=1)), atol=1e-5)


def test_position_embedding_extends_along_time():
    config = AuMConfig(embed_dim=16, depth=1, audio_length=64, num_mel_bins=32, num_classes=3, scan_impl="sequential")
    model = init_model(config)
    model.eval()
    table = model.pos_embed[...][0, 1:].reshape(2, 4, 16)  # (F', T', D) behind the cls entry
    captured = {}

    def tokens_at(pos_embed: str, frames: int) -> jax.Array:
        patches = model.patch_embed(jnp.zeros((1, 32, frames, 1)))
        f, t = patches.shape[1:3]
        out = model.tokens(jnp.zeros((1, frames, 32)), pos_embed=pos_embed)  # zero input: embeddings = bias + pos
        out = np.delete(np.asarray(out[0]), f * t // 2, axis=0).reshape(f, t, -1)
        captured[pos_embed] = out - np.asarray(patches[0])
        return captured[pos_embed]

    tiled = tokens_at("tile", 64 + 16 * 6)  # 10 time patches: the 4 columns repeated
    np.testing.assert_allclose(tiled, np.asarray(table)[:, np.arange(10) % 4], atol=1e-6)
    stretched = tokens_at("interpolate", 64 + 16 * 4)  # 8 time patches: each column's value spread over two
    np.testing.assert_allclose(stretched[:, 0], table[:, 0], atol=1e-6)  # linear resize keeps the ends
    np.testing.assert_allclose(stretched[:, -1], table[:, -1], atol=1e-6)
    np.testing.assert_allclose(stretched[:, 3], 0.75 * table[:, 1] + 0.25 * table[:, 2], atol=1e-6)  # at 1.25


def test_memory_grows_linearly_with_the_recording(loaded):
    """XLA's planned temporary memory of the whole pass: 4x the recording, at most 4.4x the memory."""
    model, _ = loaded
    model.eval()
    graphdef, state = nnx.split(model)

    def planned(frames: int) -> int:
        fn = jax.jit(lambda state, x: nnx.merge(graphdef, state).whole(x)["frame_logits"])
        compiled = fn.lower(state, jax.ShapeDtypeStruct((1, frames, 128), jnp.float32)).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    short, long = planned(128 + 16 * 120), planned(128 + 16 * 4 * 128)  # 128 and 520 time patches
    assert long <= 4.4 * short, (short, long)


def test_classify_whole_scores_every_time_patch(loaded, tmp_path):
    model, prep = loaded
    path = tmp_path / "long.wav"
    soundfile.write(path, tones(30.0), RATE)
    timeline = whole.classify_whole(model, prep, str(path))
    stride_s = 16 * prep.frame_shift_ms / 1000
    assert abs(len(timeline.starts) - 30.0 / stride_s) <= 2
    assert np.all(np.diff(timeline.starts) > 0) and timeline.ends[-1] <= 30.0
    np.testing.assert_allclose(timeline.scores.sum(axis=1), 1.0, atol=1e-5)  # CE: softmax per time patch
    assert timeline.class_names == list(NAMES)
    assert len(timeline.to_dict(3)["windows"]) == len(timeline.starts)


def test_hear_whole_timestamps_equal_windows_for_a_clip_long_sound(model_dir):
    """A sound of exactly the model's input: one window, one whole pass: the same embeddings and stamps."""
    audio = tones(1.28)[None]
    by_windows = hear.load_model(str(model_dir))
    by_whole = hear.load_model(str(model_dir), whole=True)
    emb_w, ms_w = hear.get_timestamp_embeddings(audio, by_windows)
    emb_h, ms_h = hear.get_timestamp_embeddings(audio, by_whole)
    np.testing.assert_allclose(ms_h, ms_w, atol=1e-3)
    np.testing.assert_allclose(emb_h, emb_w, atol=1e-5)
    long = hear.get_timestamp_embeddings(tones(5.0)[None], by_whole)
    assert long[0].shape[1] == long[1].shape[1] and np.all(np.diff(long[1][0]) > 0)
    with pytest.raises(ValueError, match="pos_embed"):
        hear.load_model(str(model_dir), whole=True, pos_embed="wrap")


def test_predict_whole_command(model_dir, tmp_path):
    path = tmp_path / "long.wav"
    soundfile.write(path, tones(12.0), RATE)
    out = tmp_path / "timeline.json"
    done = run("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(path), "--whole",
               "--whole-pos-embed", "tile", "--json", str(out), "--plot", str(tmp_path / "t.png"), "--top-k", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "note: one pass over each whole file (12.00 s; tile position embedding); peak memory" in done.stderr
    rows = json.loads(out.read_text())["files"][0]["windows"]
    assert 70 <= len(rows) <= 76 and len(rows[0]["top"]) == 2
    assert (tmp_path / "t.png").stat().st_size > 0
    bad = run("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(path), "--whole",
              "--window-seconds", "1")
    assert_one_error_line(bad, "--window-seconds does not go with --audio --whole")
    missing = run("-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(tmp_path / "none.wav"),
                  "--whole")
    assert_one_error_line(missing, "none.wav")


ONE_PASS = AuMConfig(num_mel_bins=32, audio_length=40, patch_size=(32, 4), strides=(32, 4), embed_dim=24, depth=2,
                     num_classes=3, bimamba_type="v2", cls_position="none", pool="max", position="none")
ONE_PASS_PREP = Preprocessing(num_mel_bins=32, target_length=40, mean=-5.0, std=4.0, loss="BCE",
                              class_names=("a", "b", "c"), remove_waveform_mean=False)


def _one_pass_whole(model, frames: np.ndarray) -> dict[str, np.ndarray]:
    """``AudioMamba.whole`` over the whole time slices of normalised frames (k, F): the reference."""
    x = jnp.asarray(frames[: len(frames) // 4 * 4])[None]
    return {k: np.asarray(v[0]) for k, v in nnx.view(model, deterministic=True).whole(x).items()}


@pytest.mark.parametrize("bimamba_type", ["v2", "none"])
@pytest.mark.parametrize("chunk_tokens", [16, 4096])
def test_a_one_pass_models_chunked_pass_is_its_whole_pass(bimamba_type, chunk_tokens):
    """103 time slices (and a partial one) in blocks of odd sizes: in chunks of 16, the last of 7, or in one."""
    model = init_model(ONE_PASS.replace(bimamba_type=bimamba_type, depth=3), 0)
    frames = np.random.default_rng(0).normal(size=(4 * 103 + 3, 32)).astype(np.float32)
    out = whole.read_in_chunks(model, (frames[a:a + 37] for a in range(0, len(frames), 37)), chunk_tokens=chunk_tokens)
    reference = _one_pass_whole(model, frames)
    assert out["frame_logits"].shape == (103, 3) and out["frames"].shape == (103, 24)
    for key in ("frame_logits", "frames", "logits"):
        np.testing.assert_allclose(out[key], reference[key], rtol=1e-5, atol=1e-5, err_msg=key)
    assert model.layers.mixer.deterministic is False  # the caller's model left in its own mode.


def test_a_chunked_pass_refuses_a_model_that_reads_otherwise_and_audio_without_a_time_slice():
    with pytest.raises(ValueError, match="bimamba_type='v1'"):
        whole.read_in_chunks(init_model(ONE_PASS.replace(bimamba_type="v1"), 0), [np.zeros((8, 32), np.float32)])
    with pytest.raises(ValueError, match="shorter than one time slice"):
        whole.read_in_chunks(init_model(ONE_PASS, 0), [np.zeros((3, 32), np.float32)])


@pytest.mark.parametrize("remove_waveform_mean", [False, True])
def test_classify_whole_reads_a_bi_bi_one_pass_model_in_chunks(tmp_path, monkeypatch, remove_waveform_mean):
    """100 s: two chunks of 2048 time slices, the features made as the file is read (or the whole file read
    first, where its mean is removed), never the single pass; the rows of one pass over the whole file."""
    model, prep = init_model(ONE_PASS, 0), ONE_PASS_PREP.replace(remove_waveform_mean=remove_waveform_mean)
    path = tmp_path / "long.wav"
    soundfile.write(path, tones(100.0), RATE)
    audio = soundfile.read(path, dtype="float32")[0]
    monkeypatch.setattr(whole, "_single_pass", lambda *args: pytest.fail("a single pass over a whole file"))
    timeline = whole.classify_whole(model, prep, str(path))
    reference = _one_pass_whole(model, prep.frames(audio[None], RATE))
    assert len(timeline.starts) == len(reference["frame_logits"]) == 2499  # 9998 frames of 25 ms every 10 ms.
    np.testing.assert_allclose(timeline.scores, classify.scores(reference["frame_logits"], "sigmoid"), atol=1e-5)
    centres = np.arange(2499) * 0.04 + 0.015 + 0.0125  # a slice's middle frame's centre.
    np.testing.assert_allclose(timeline.starts, centres - 0.02, atol=1e-9)
    passed = whole.run_whole(model, prep, audio[None], RATE)  # HEAR's way in: the same rows.
    assert passed.tokens == 2499
    np.testing.assert_allclose(passed.frames, reference["frames"], atol=1e-5)
    np.testing.assert_allclose(passed.clip_logits, reference["logits"], atol=1e-5)


def test_a_single_pass_that_cannot_fit_is_refused_before_the_file_is_read(loaded, tmp_path, monkeypatch):
    model, prep = loaded
    path = tmp_path / "long.wav"
    soundfile.write(path, tones(60.0), RATE)
    needs = whole.estimate_whole_mb(model, prep, 60 * RATE, RATE)
    monkeypatch.setattr(memory, "available_mb", lambda: needs - 1)
    monkeypatch.setattr(whole, "_single_pass", lambda *args: pytest.fail("the pass ran"))
    with pytest.raises(whole.WholePassMemoryError, match=f"{path}: one pass over its 60 s would need about "
                                                          f"{needs:,.0f} MB of memory, and {needs - 1:,.0f} MB is"):
        whole.classify_whole(model, prep, str(path))
    monkeypatch.setattr(memory, "available_mb", lambda: None)  # unknown (no procfs): nothing refused.
    with pytest.raises(pytest.fail.Exception, match="the pass ran"):
        whole.classify_whole(model, prep, str(path))


def test_the_estimate_grows_with_the_tokens_and_the_samples(loaded):
    model, prep = loaded
    one, two = (whole.estimate_whole_mb(model, prep, minutes * 60 * RATE, RATE) for minutes in (10, 20))
    fixed = whole._PASS_OVERHEAD_MB
    assert 1.9 < (two - fixed) / (one - fixed) < 2.1  # linear beyond the fixed cost of compiling.
    stereo_44k = whole.estimate_whole_mb(model, prep, 10 * 60 * 44_100, 44_100, channels=2)
    assert stereo_44k > one  # more samples read, and resampled.


def test_predict_whole_refuses_a_pass_that_cannot_fit_before_it_starts(model_dir, tmp_path):
    """``available_mb`` patched to 64 MB in the predict process: one error line, exit 1, no pass, no output."""
    path = tmp_path / "long.wav"
    soundfile.write(path, tones(60.0), RATE)
    out = tmp_path / "timeline.json"
    patched = ("import runpy, sys; from aum_jax.core import memory; from aum_jax.inference import whole; "
               "memory.available_mb = lambda: 64.0; "
               "whole._single_pass = lambda *a: sys.exit('the pass ran'); "
               "sys.argv[0] = 'predict'; runpy.run_module('aum_jax.predict', run_name='__main__')")
    done = run("-c", patched, "--model-dir", str(model_dir), "--audio", str(path), "--whole", "--json", str(out))
    line = assert_one_error_line(done, f"{path}: one pass over its 60 s would need about", "MB of memory, and 64 MB is "
                                 "available", "in windows", "one-pass model")
    assert "the pass ran" not in done.stderr and not out.exists(), line
