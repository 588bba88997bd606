"""Embeddings for downstream work: the HEAR 2021 API and predict's embeddings (pooled, per block,
per patch) against a direct forward pass of a converted fixture model; long clips, batch sizes,
one compilation per batch shape, and the command line's .npz. One-pass models (causal and
bidirectional) give an embedding per time slice, at their own hop, from one pass."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
import tensorflow as tf
import torch
from flax import nnx

from aum_jax import hear
from aum_jax.checkpoints.model_files import ModelDirectoryError, save_model
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.inference import classify, embeddings, whole
from aum_jax.models import AudioMamba, AuMConfig, init_model
from tests.helpers import NAMES, REPO_ROOT, save_tiny_fobi, subprocess_env

RATE = 16_000
WINDOW = 20_480  # the fixture model's input: 128 frames, 1.28 s.
GRID = (8, 8)  # its patch grid (frequency, time); the cls token sits at index 32 of 65.


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """The tiny Fo-Bi fixture (4 blocks, 192 wide) converted with statistics, names and a CE loss."""
    return save_tiny_fobi(tmp_path_factory.mktemp("hear") / "m", mean=-5.0114145, std=4.2837193, loss="CE",
                          class_names=NAMES)


@pytest.fixture(scope="module")
def hear_model(model_dir) -> hear.HearModel:
    return hear.load_model(str(model_dir))


def sounds(count: int, seconds: float, seed: int = 0) -> np.ndarray:
    """``(count, samples)`` float32: tones of different pitches in noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    tones = [0.3 * np.sin(2 * np.pi * rng.uniform(200, 4000) * t) for _ in range(count)]
    return (np.stack(tones) + 0.02 * rng.normal(size=(count, t.size))).astype(np.float32)


def direct(model: AudioMamba, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's own pass, by hand: (cls features (B, D), final patch tokens on the grid (B, F', T', D))."""
    x = jnp.asarray(features)
    hidden = np.asarray(model.encode(model.tokens(x))[0])
    patches = np.delete(hidden, GRID[0] * GRID[1] // 2, axis=1)  # the middle cls token out.
    return np.asarray(model.outputs(x)["features"]), patches.reshape(len(x), *GRID, -1)


def test_hear_model_attributes(hear_model):
    assert (hear_model.sample_rate, hear_model.scene_embedding_size, hear_model.timestamp_embedding_size) == (
        RATE, 192, 192)


def test_hear_functions_match_a_direct_forward_pass(hear_model):
    audio = sounds(2, 1.28)  # one model window each.
    features = np.stack([hear_model.prep.features(a[None], RATE) for a in audio])
    pooled, tokens = direct(hear_model.model, features)
    np.testing.assert_allclose(hear.get_scene_embeddings(audio, hear_model), pooled, atol=1e-5)
    emb, timestamps = hear.get_timestamp_embeddings(audio, hear_model)
    assert emb.shape == (2, GRID[1], 192) and timestamps.shape == (2, GRID[1])
    np.testing.assert_allclose(emb, tokens.mean(axis=1), atol=1e-5)  # averaged over frequency.
    # Time patch t spans frames 16t..16t+15; Kaldi frame k covers [10k, 10k + 25) ms.
    np.testing.assert_allclose(timestamps[0], 160 * np.arange(8) + 87.5)


def test_a_50_second_clip_is_windowed(hear_model):
    audio = sounds(2, 50.0, seed=1)
    scene = hear.get_scene_embeddings(audio, hear_model)
    emb, timestamps = hear.get_timestamp_embeddings(audio, hear_model)
    # 39 whole windows of 1.28 s (8 time patches each) and a last one of 0.08 s, whose
    # first patch is centred at 87.5 ms, past its end.
    assert scene.shape == (2, 192) and emb.shape == (2, 39 * 8, 192) and timestamps.shape == (2, 39 * 8)
    np.testing.assert_allclose(timestamps[1], 160 * np.arange(39 * 8) + 87.5)
    assert np.isfinite(scene).all() and np.isfinite(emb).all()
    # Window 5 is the model's pass over samples 5 * 20480 .. 6 * 20480, on its own.
    features = hear_model.prep.features(audio[1:, 5 * WINDOW : 6 * WINDOW], RATE)[None]
    pooled, tokens = direct(hear_model.model, features)
    np.testing.assert_allclose(emb[1, 40:48], tokens[0].mean(axis=0), atol=1e-5)
    # The scene embedding averages the windows, weighted by the audio they hold.
    windows = [hear_model.prep.features(audio[:1, s : s + WINDOW], RATE) for s in range(0, 50 * RATE, WINDOW)]
    per_window, _ = direct(hear_model.model, np.stack(windows))
    weights = np.array([WINDOW] * 39 + [50 * RATE - 39 * WINDOW], np.float64)
    np.testing.assert_allclose(scene[0], weights @ per_window / weights.sum(), atol=1e-5)


def test_overlapping_patches_give_evenly_spaced_timestamps():
    """Strides of 8 under 16-frame patches: 7 time patches 80 ms apart per 0.64 s input; the windows
    start every 560 ms, so the patches of successive windows continue one grid."""
    config = AuMConfig(num_mel_bins=32, audio_length=64, strides=(8, 8), embed_dim=32, depth=1, num_classes=2,
                       bimamba_type="v2")
    prep = Preprocessing(num_mel_bins=32, target_length=64, mean=-5.0, std=4.0, loss="CE")
    model = hear.HearModel(init_model(config, seed=1), prep)
    audio = sounds(1, 2.0, seed=7)
    emb, timestamps = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape == (1, 24, 32)  # 3 windows of 7 patches (0, 0.56, 1.12 s) and 3 of the last (1.68 s).
    np.testing.assert_allclose(timestamps[0], 80 * np.arange(24) + 87.5)
    features = prep.features(audio[:, 8960 : 8960 + 10240], RATE)[None]  # the second window.
    hidden = np.asarray(model.model.encode(model.model.tokens(jnp.asarray(features)))[0])
    patches = np.delete(hidden, 3 * 7 // 2, axis=1).reshape(1, 3, 7, 32)
    np.testing.assert_allclose(emb[0, 7:14], patches[0].mean(axis=0), atol=1e-5)


def test_scene_embeddings_are_deterministic_and_batch_size_independent(hear_model):
    audio = sounds(5, 3.0, seed=2)  # 3 windows each: 15 rows.
    whole = hear.HearModel(hear_model.model, hear_model.prep, batch_size=15)  # every window in one batch.
    reference = hear.get_scene_embeddings(audio, whole)
    np.testing.assert_array_equal(hear.get_scene_embeddings(audio, whole), reference)
    small = hear.HearModel(hear_model.model, hear_model.prep, batch_size=4)
    np.testing.assert_allclose(hear.get_scene_embeddings(audio, small), reference, atol=1e-5)
    np.testing.assert_allclose(hear.get_scene_embeddings(audio[3:], small), reference[3:], atol=1e-5)


def test_the_results_are_float32_of_the_kind_of_array_given(hear_model):
    """HEAR's tools hand a TensorFlow model TF tensors and a torch model torch tensors, and read
    the results back with ``.numpy()`` / ``.detach().cpu().numpy()``."""
    assert isinstance(hear_model, tf.Module)
    audio = sounds(2, 2.0, seed=4)
    expected = (hear.get_scene_embeddings(audio, hear_model), *hear.get_timestamp_embeddings(audio, hear_model))
    assert all(type(e) is np.ndarray and e.dtype == np.float32 for e in expected)
    for given, kind, dtype in ((jnp.asarray(audio), np.ndarray, np.float32), (tf.constant(audio), tf.Tensor, tf.float32),
                               (torch.from_numpy(audio), torch.Tensor, torch.float32)):
        results = (hear.get_scene_embeddings(given, hear_model), *hear.get_timestamp_embeddings(given, hear_model))
        for result, reference in zip(results, expected, strict=True):
            assert isinstance(result, kind) and result.dtype == dtype, (type(result), result.dtype)
            if kind is torch.Tensor:
                assert result.device == given.device
            np.testing.assert_array_equal(np.asarray(result), reference)


def test_hear_refuses_bad_audio(hear_model, tmp_path):
    with pytest.raises(ValueError, match=r"\(n_sounds, n_samples\)"):
        hear.get_scene_embeddings(np.zeros(16000, np.float32), hear_model)
    with pytest.raises(ValueError, match="NaN or Inf"):
        hear.get_scene_embeddings(np.full((1, 16000), np.nan, np.float32), hear_model)
    for values, dtype in ((np.ones((1, 16000), bool), "bool"), (np.ones((1, 16000), np.complex64), "complex64"),
                          (np.ones((1, 16000), np.int64), "int64"), (torch.ones(1, 16000, dtype=torch.bfloat16),
                                                                     "torch.bfloat16")):
        with pytest.raises(ValueError, match=f"audio holds {dtype} values, not audio samples"):
            hear.get_timestamp_embeddings(values, hear_model)
    with pytest.raises(ModelDirectoryError, match="does not exist"):
        hear.load_model(tmp_path / "nothing")


def test_sounds_of_unequal_lengths_are_refused_naming_the_shape(hear_model):
    short, long = sounds(1, 0.5)[0], sounds(1, 1.0)[0]
    ragged = np.empty(2, object)
    ragged[:] = [short, long]
    for given in ([short, long], (short, long), ragged, [torch.from_numpy(short), torch.from_numpy(long)]):
        for embed in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
            with pytest.raises(ValueError, match=r"audio must be \(n_sounds, n_samples\): sounds of one length, got 2 "
                               r"sounds of shapes \(8000,\), \(16000,\)"):
                embed(given, hear_model)
    # Sounds of one length, as a list, embed as the array of them.
    audio = sounds(2, 1.0, seed=3)
    np.testing.assert_array_equal(hear.get_scene_embeddings(list(audio), hear_model),
                                  hear.get_scene_embeddings(audio, hear_model))


# A process of its own: the warning comes once per process.
OUT_OF_RANGE = """
import numpy as np
from aum_jax import hear
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.models import AuMConfig, init_model

model = hear.HearModel(init_model(AuMConfig(num_mel_bins=32, audio_length=32, embed_dim=32, depth=1, num_classes=0)),
                       Preprocessing(num_mel_bins=32, target_length=32, mean=-5.0, std=4.0))
tone = np.sin(np.arange(8000) / 5.0).astype(np.float32)[None]
hear.get_scene_embeddings(0.9 * tone, model)
print("in range done", flush=True)
for _ in range(2):
    assert np.isfinite(hear.get_scene_embeddings(2.5 * tone, model)).all()
    assert np.isfinite(hear.get_timestamp_embeddings(2.5 * tone, model)[0]).all()
"""


def test_audio_outside_minus_one_one_is_embedded_with_one_warning():
    done = subprocess.run([sys.executable, "-c", OUT_OF_RANGE], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if "outside the [-1, 1] of HEAR's API" in line]
    assert len(warnings) == 1 and "up to 2.5 in magnitude" in warnings[0], done.stderr[-3000:]


def test_integer_pcm_embeds_as_the_float_clip(hear_model):
    """int16 PCM, as a NumPy or JAX array or a torch tensor, is scaled by its type (/ 32768) as a WAV
    decoder reads it, not taken as floats of +-32767."""
    audio = sounds(2, 3.0, seed=8)
    pcm = np.round(audio * 32767).astype(np.int16)
    reference = hear.get_scene_embeddings(audio, hear_model)
    for given in (pcm, jnp.asarray(pcm), torch.from_numpy(pcm)):
        scene = np.asarray(hear.get_scene_embeddings(given, hear_model))
        cosine = np.sum(scene * reference, axis=1) / np.linalg.norm(scene, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.min() > 0.9999, cosine
    np.testing.assert_array_equal(hear.get_timestamp_embeddings(pcm, hear_model)[0],
                                  hear.get_timestamp_embeddings(pcm / np.float32(32768), hear_model)[0])


def test_nan_embeddings_are_refused_naming_the_sounds(hear_model):
    """A model whose parameters went NaN in memory: an error naming the sounds, not NaN embeddings."""
    graph, params, rest = nnx.split(hear_model.model, nnx.Param, ...)
    nan = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)  # new arrays: the model is left as it is.
    broken = hear.HearModel(nnx.merge(graph, nan, rest), hear_model.prep)
    audio = sounds(2, 2.0, seed=9)
    for embed in (hear.get_scene_embeddings, hear.get_timestamp_embeddings):
        with pytest.raises(classify.NonFiniteOutputError, match="NaN or Inf embeddings for sound 0, sound 1"):
            embed(audio, broken)
    assert np.isfinite(hear.get_scene_embeddings(audio, hear_model)).all()  # the model itself is untouched.


def test_tokens_on_the_grid_and_the_blocks_pooled_states(hear_model):
    model = hear_model.model
    features = np.stack([hear_model.prep.features(a[None], RATE) for a in sounds(3, 1.0, seed=3)])
    out = embeddings.embed_features(model, features, layers=(0, 3), tokens=True, batch_size=2)
    pooled, tokens = direct(model, features)
    assert out.tokens.shape == (3, *GRID, 192) and out.layers.shape == (3, 2, 192)
    np.testing.assert_allclose(out.features, pooled, atol=1e-5)
    np.testing.assert_allclose(out.tokens, tokens, atol=1e-5)
    # The last block's residual stream, normalised, is the final embedding; the first block's is not.
    np.testing.assert_allclose(np.asarray(model.norm_f(jnp.asarray(out.layers[:, 1]))), pooled, atol=1e-5)
    assert np.abs(np.asarray(model.norm_f(jnp.asarray(out.layers[:, 0]))) - pooled).max() > 1e-2


def test_the_model_is_compiled_once_per_batch_shape(hear_model, monkeypatch):
    model, prep = hear_model.model, hear_model.prep
    traces = []
    embed = AudioMamba.outputs

    def counting(self, x):
        traces.append(x.shape)
        return embed(self, x)

    monkeypatch.setattr(AudioMamba, "outputs", counting)
    rows = np.stack([prep.features(a[None], RATE) for a in sounds(7, 1.0, seed=4)])
    for count in (7, 3, 5, 1):
        embeddings.embed_features(model, rows[:count], layers=(1,), batch_size=3)
    assert traces == [(3, 128, 128)]
    embeddings.embed_features(model, rows, layers=(1,), tokens=True, batch_size=3)  # other outputs: once more.
    assert len(traces) == 2


def test_parse_layers():
    assert embeddings.parse_layers("all", 4) == (0, 1, 2, 3)
    assert embeddings.parse_layers("0,3", 4) == (0, 3) and embeddings.parse_layers(None, 4) == ()
    with pytest.raises(ValueError, match=r"blocks 0..3, not 4"):
        embeddings.parse_layers("1,4", 4)
    with pytest.raises(ValueError, match="use 'all' or block indices"):
        embeddings.parse_layers("last", 4)


def test_predict_embeds_every_window_of_each_whole_file(model_dir, hear_model, tmp_path):
    clip, long = tmp_path / "clip.wav", tmp_path / "long.wav"
    soundfile.write(clip, sounds(1, 0.7, seed=5)[0], RATE)
    soundfile.write(long, sounds(1, 3.0, seed=6)[0], RATE)
    out = tmp_path / "emb.npz"
    result = subprocess.run([sys.executable, "-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio",
                             str(clip), str(long), "--embeddings", str(out), "--layers", "all", "--tokens"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    # Windows of the model's input, 1.28 s: 1 of the clip, 3 of the long file (1.28 + 1.28 + 0.44 s).
    assert "4 rows of 2 files (one per window)" in result.stdout
    saved = np.load(out)
    assert list(saved["files"]) == [str(clip)] + [str(long)] * 3
    np.testing.assert_allclose(saved["starts"], [0, 0, 1.28, 2.56])
    np.testing.assert_allclose(saved["ends"], [0.7, 1.28, 2.56, 3.0])
    assert saved["embedding"].shape == (4, 192) and saved["layers"].shape == (4, 4, 192)
    assert saved["tokens"].shape == (4, *GRID, 192) and list(saved["layer_indices"]) == [0, 1, 2, 3]
    np.testing.assert_allclose(saved["token_times"], (160 * np.arange(8) + 87.5) / 1000)
    rows = embeddings.embed_files(hear_model.model, hear_model.prep, [str(clip), str(long)], window_seconds=1.28,
                                  layers=range(4), tokens=True)
    np.testing.assert_allclose(saved["embedding"], rows.embedding, atol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.wav", "emb.npz", "long.wav"]  # no staging file left.
    # A block the model does not have is one line, and nothing is written.
    bad = subprocess.run([sys.executable, "-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(clip),
                          "--embeddings", str(tmp_path / "bad.npz"), "--layers", "4"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "error: --layers '4': the model has blocks 0..3, not 4"]
    assert not (tmp_path / "bad.npz").exists()


def test_pooled_file_embeddings_are_hears_scene_embeddings(model_dir, hear_model, tmp_path):
    """--pool: one row per file, its windows weighted by the audio each holds, as HEAR pools a sound."""
    paths = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for path, seconds, seed in zip(paths, (0.7, 4.0), (10, 11)):
        soundfile.write(path, sounds(1, seconds, seed=seed)[0], RATE)
    out = tmp_path / "pooled.npz"
    result = subprocess.run([sys.executable, "-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio",
                             *map(str, paths), "--embeddings", str(out), "--pool", "--layers", "3"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 rows of 2 files (one per file, its windows pooled)" in result.stdout
    saved = np.load(out)
    np.testing.assert_allclose(saved["starts"], [0, 0])
    np.testing.assert_allclose(saved["ends"], [0.7, 4.0])
    for row, path in zip(saved["embedding"], paths):
        waveform, _ = soundfile.read(path, dtype="float32")  # as written: 16-bit PCM.
        np.testing.assert_allclose(row, hear.get_scene_embeddings(waveform[None], hear_model)[0], atol=1e-5)
    # The blocks' pooled states are pooled over the windows as the embedding is.
    rows = embeddings.embed_files(hear_model.model, hear_model.prep, [str(paths[1])], layers=(3,))
    np.testing.assert_allclose(saved["layers"][1, 0], embeddings.pool_windows(rows.layers[:, 0],
                                                                              np.stack([rows.starts, rows.ends], 1)),
                               atol=1e-6)
    with pytest.raises(ValueError, match="tokens are each window's patch grid and are not pooled"):
        embeddings.embed_files(hear_model.model, hear_model.prep, [str(paths[0])], pool=True, tokens=True)


# A one-pass model: a token per 4-frame time slice over all 32 bins, no position table, no cls token.
ONE_PASS = AuMConfig(num_mel_bins=32, audio_length=40, patch_size=(32, 4), strides=(32, 4), embed_dim=24, depth=2,
                     num_classes=3, bimamba_type="none", cls_position="none", pool="max", position="none")
ONE_PASS_PREP = Preprocessing(num_mel_bins=32, target_length=40, mean=-5.0, std=4.0, loss="BCE",
                              remove_waveform_mean=False)


@pytest.fixture(scope="module", params=["none", "v2"], ids=["causal", "bidirectional"])
def one_pass_dir(request, tmp_path_factory) -> Path:
    config = dataclasses.replace(ONE_PASS, bimamba_type=request.param)
    return save_model(init_model(config, 0), tmp_path_factory.mktemp("one_pass") / "m", preprocessing=ONE_PASS_PREP)


def test_a_one_pass_model_gives_an_embedding_per_time_slice_at_its_hop(one_pass_dir):
    model = hear.load_model(one_pass_dir)
    causal = model.model.config.bimamba_type == "none"
    assert hear.one_pass(model.model) and model.whole and whole.streams(model.model, model.prep) == causal
    audio = sounds(3, 3.03, seed=12)  # 301 frames: 75 whole time slices of 4 (a partial last one has none).
    emb, ms = hear.get_timestamp_embeddings(audio, model)
    assert emb.shape == (3, 75, 24) and ms.shape == (3, 75)
    # Slice k spans frames 4k..4k+3 (Kaldi frame j covers [10j, 10j + 25) ms): centred at 40k + 27.5 ms.
    np.testing.assert_allclose(ms, np.broadcast_to(40.0 * np.arange(75) + 27.5, (3, 75)))
    assert np.diff(ms).max() <= 50.0 and 3030.0 - ms[0, -1] < 50.0  # the validator's 50 ms, to the sound's end.
    for sound, rows, stamps in zip(audio, emb, ms, strict=True):  # the rows of one whole pass.
        reference = whole.run_whole(model.model, model.prep, sound[None], RATE)
        np.testing.assert_allclose(rows, reference.frames, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stamps, reference.centres * 1000.0, rtol=1e-6)
    if causal:  # the stream's rows, state carried (64 slices a step here); any batch size.
        frames = np.stack([model.prep.frames(sound[None], RATE)[:300] for sound in audio])
        streamed, _ = model.model.stream(jnp.asarray(frames), model.model.initial_state(3))
        np.testing.assert_allclose(emb, streamed["frames"], rtol=1e-5, atol=1e-5)
        small = hear.HearModel(model.model, model.prep, batch_size=2)
        np.testing.assert_allclose(hear.get_timestamp_embeddings(audio, small)[0], emb, rtol=1e-6, atol=1e-6)
    # The scene: the mean over time of the slices' embeddings.
    np.testing.assert_allclose(hear.get_scene_embeddings(audio, model), emb.mean(axis=1), rtol=1e-6, atol=1e-6)
    short, short_ms = hear.get_timestamp_embeddings(audio[:, :880], model)  # 55 ms: 4 frames, one slice.
    assert short.shape == (3, 1, 24) and short_ms.tolist() == [[27.5]] * 3
    with pytest.raises(ValueError, match="shorter than one time slice"):
        hear.get_timestamp_embeddings(audio[:, :879], model)
    graph, params, rest = nnx.split(model.model, nnx.Param, ...)
    nan = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
    broken = hear.HearModel(nnx.merge(graph, nan, rest), model.prep)
    with pytest.raises(classify.NonFiniteOutputError, match="NaN or Inf"):
        hear.get_scene_embeddings(audio, broken)
    # whole=False: windows of the model's input (0.4 s, 10 slices each), each read on its own.
    windows, window_ms = hear.get_timestamp_embeddings(audio, hear.HearModel(model.model, model.prep, whole=False))
    np.testing.assert_allclose(window_ms[:, :75], ms)  # and a 76th: windows keep the padded slice centred on audio.
    if causal:  # the first window's whole slices are the pass's (0.4 s holds 38 frames, then padding) ...
        np.testing.assert_allclose(windows[:, :9], emb[:, :9], rtol=1e-5, atol=1e-5)
    # ... but later windows know nothing before them.
    assert np.abs(windows[:, 10:75] - emb[:, 10:]).max() > 1e-3


def test_hear_validator_passes_a_one_pass_model(one_pass_dir, tmp_path):
    done = subprocess.run([str(Path(sys.executable).parent / "hear-validator"), "aum_jax.hear", "--model",
                           str(one_pass_dir)], env=subprocess_env(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "Interval between timestamps is 40.0ms" in done.stdout and done.stdout.rstrip().endswith("Looks good!")
