"""Conversion safety and the command-line tools: every bad key is named, junk and pickles
that would run code are refused, nothing partial is written, and the CLIs work end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import torch
from flax import nnx

from aum_jax.checkpoints import convert, pretrained
from aum_jax.checkpoints.model_files import load_model, save_model
from aum_jax.data.features import audio
from aum_jax.data.features.preprocessing import AUDIOSET_MEAN, AUDIOSET_STD
from tests.helpers import REPO_ROOT, RunsCode


@pytest.fixture(scope="module")
def fobi(fixtures_dir):
    folder = fixtures_dir / "aum_torch" / "tiny_fobi"
    return folder, convert.read_torch_checkpoint(folder / "state_dict.pth")


def test_every_bad_key_is_named(fobi):
    _, state = fobi
    state = dict(state)
    del state["layers.2.mixer.D"]
    del state["norm_f.weight"]
    state["layers.1.mixer.extra"] = np.zeros(3, np.float32)
    state["layers.3.mixer.x_proj.weight"] = np.zeros((40, 384), np.float32)
    config = convert.infer_config(fobi[1])
    with pytest.raises(convert.CheckpointError) as err:
        convert.convert(state, config)
    message = str(err.value)
    assert "missing key layers.2.mixer.D (expected shape (384,))" in message
    assert "missing key norm_f.weight" in message
    assert "unexpected key layers.1.mixer.extra (shape (3,))" in message
    assert "mis-shaped key layers.3.mixer.x_proj.weight: checkpoint (40, 384), model (44, 384)" in message


def test_variant_mismatch_is_reported(fobi):
    config = convert.infer_config(fobi[1]).replace(bimamba_type="v2")
    with pytest.raises(convert.CheckpointError, match="missing key layers.0.mixer.conv1d_b.weight"):
        convert.convert(fobi[1], config)


def test_infers_config_from_shapes(fobi):
    config = convert.infer_config(fobi[1])
    assert (config.embed_dim, config.depth, config.bimamba_type, config.num_classes) == (192, 4, "v1", 10)
    assert (config.patch_size, config.strides, config.audio_length) == ((16, 16), (16, 16), 128)
    assert (config.d_state, config.d_conv, config.expand, config.resolved_dt_rank) == (16, 4, 2, 12)
    # 65 position entries = 1 cls + 64 patches: 8 x 8 with strides 16, or 12 x 5 ... with strides 10 none fits.
    assert convert.infer_config(fobi[1], audio_length=100, strides=(16, 12)).audio_length == 100
    with pytest.raises(convert.CheckpointError, match="No power-of-two audio length"):
        convert.infer_config(fobi[1], strides=(10, 10))


def test_refuses_non_checkpoints(tmp_path, fixtures_dir):
    with pytest.raises(convert.CheckpointError, match="is not a PyTorch checkpoint"):
        convert.read_torch_checkpoint(fixtures_dir / "audio" / "eval.json")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(convert.CheckpointError, match="empty.pth is not a PyTorch checkpoint"):
        convert.read_torch_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert.read_torch_checkpoint(tmp_path / "nope.pth")
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(convert.CheckpointError, match="holds a list"):
        convert.read_torch_checkpoint(not_tensors)


def test_refuses_pickles_that_would_run_code(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "payload": RunsCode()}, evil)
    with pytest.raises(convert.CheckpointError, match="Refusing to load .*evil.pth"):
        convert.read_torch_checkpoint(evil)
    assert not Path("/tmp/aum_jax_pwned").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_convert_then_predict_cli(fobi, tmp_path):
    folder, _ = fobi
    out = tmp_path / "model"
    result = run_cli("scripts/convert_checkpoint.py", "--torch-checkpoint", str(folder / "state_dict.pth"), "--output", str(out))
    assert result.returncode == 0, result.stderr
    for fact in ("Fo-Bi", "tiny", "depth       4", "classes     10", "8 x 8", "1,095,562"):
        assert fact in result.stdout
    logits, feats = tmp_path / "logits.npy", tmp_path / "features.npy"
    result = run_cli(
        "-m", "aum_jax.predict", "--model-dir", str(out), "--features", str(folder / "input.npy"),
        "--save-logits", str(logits), "--save-features", str(feats), "--batch-size", "3",
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(logits), np.load(folder / "logits.npy"), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.load(feats), np.load(folder / "features.npy"), atol=1e-4, rtol=0)
    # The output exists now: a second conversion refuses to overwrite it without --overwrite.
    again = run_cli("scripts/convert_checkpoint.py", "--torch-checkpoint", str(folder / "state_dict.pth"), "--output", str(out))
    assert again.returncode != 0 and "exists; pass --overwrite" in again.stderr
    # It checks the output before converting: a missing source is never read.
    again = run_cli("scripts/convert_checkpoint.py", "--torch-checkpoint", str(tmp_path / "absent.pth"), "--output", str(out))
    assert again.returncode == 1 and "Traceback" not in again.stderr
    assert again.stderr.strip().splitlines()[-1] == f"error: --output {out} exists; pass --overwrite to replace it"


def test_convert_cli_init_mode(fixtures_dir, tmp_path):
    source = fixtures_dir / "vim_imagenet_init" / "vim_small_midcls.pth"
    out = tmp_path / "init"
    result = run_cli(
        "scripts/convert_checkpoint.py", "--torch-checkpoint", str(source), "--output", str(out),
        "--target-variant", "Bi-Bi", "--target-num-classes", "35", "--target-audio-length", "128",
        "--target-strides", "16,16",
    )
    assert result.returncode == 0, result.stderr
    model = load_model(out)
    assert (model.config.num_classes, model.config.audio_length, model.config.bimamba_type) == (35, 128, "v2")
    np.testing.assert_allclose(
        np.asarray(model.pos_embed[...]), np.load(fixtures_dir / "vim_imagenet_init" / "pos_embed_after_init.npy"), atol=1e-4
    )


def test_bad_checkpoint_writes_nothing(tmp_path, fixtures_dir):
    out = tmp_path / "model"
    result = run_cli(
        "scripts/convert_checkpoint.py", "--torch-checkpoint", str(fixtures_dir / "audio" / "eval.json"), "--output", str(out)
    )
    assert result.returncode == 1
    assert "eval.json is not a PyTorch checkpoint" in result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_help_explains_both_modes():
    result = run_cli("scripts/convert_checkpoint.py", "--help")
    assert result.returncode == 0
    assert "--target-variant" in result.stdout and "init mode" in result.stdout
    result = run_cli("-m", "aum_jax.predict", "--help")
    assert result.returncode == 0 and "--save-logits" in result.stdout


def test_predict_rejects_mismatched_features(fobi, tmp_path):
    folder, state = fobi
    from aum_jax.checkpoints.model_files import save_model

    save_model(convert.convert(state), tmp_path / "m")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 64, 128), np.float32))
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(tmp_path / "m"), "--features", str(bad), "--save-logits", str(tmp_path / "y.npy"))
    assert result.returncode == 1 and "(batch, 128, 128)" in result.stderr


def test_predict_on_audio_files_reproduces_the_original_end_to_end(fobi, tmp_path, fixtures_dir):
    """Real wavs -> fbank -> converted model gives the original's inputs and logits."""
    folder, state = fobi
    from aum_jax.checkpoints.model_files import save_model

    save_model(convert.convert(state), tmp_path / "m")
    expected = np.load(folder / "logits.npy")  # the fixture batch holds the first clips
    wavs = [str(fixtures_dir / "audio" / f"sample{k}.wav") for k in range(len(expected))]
    logits = tmp_path / "logits.npy"
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(tmp_path / "m"), "--audio", *wavs,
                     "--mean", str(AUDIOSET_MEAN), "--std", str(AUDIOSET_STD), "--save-logits", str(logits), "--top-k", "2")
    assert result.returncode == 0, result.stderr
    assert all(f"sample{k}.wav: " in result.stdout for k in range(len(expected)))
    # The fbank agrees within 1e-3, i.e. 1e-3 / (2 * 4.57) after normalisation; logits follow.
    np.testing.assert_allclose(np.load(logits), expected, atol=1e-3, rtol=0)


def test_audio_features_match_the_original_inputs(fobi, fixtures_dir):
    folder, state = fobi
    expected = np.load(folder / "input.npy")
    wavs = [str(fixtures_dir / "audio" / f"sample{k}.wav") for k in range(len(expected))]
    from aum_jax.data.features.preprocessing import Preprocessing

    config = convert.infer_config(state)
    prep = Preprocessing(num_mel_bins=config.num_mel_bins, target_length=config.audio_length,
                         mean=AUDIOSET_MEAN, std=AUDIOSET_STD)
    features = np.stack([prep.features(*audio.load_waveform(wav)) for wav in wavs])  # as predict computes them.
    np.testing.assert_allclose(features, expected, atol=1e-3 / (2 * AUDIOSET_STD), rtol=0)


def test_predict_names_an_unreadable_audio_file(fobi, tmp_path):
    from aum_jax.checkpoints.model_files import save_model

    save_model(convert.convert(fobi[1]), tmp_path / "m")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF....WAVEfmt garbage")
    result = run_cli("-m", "aum_jax.predict", "--model-dir", str(tmp_path / "m"), "--audio", str(broken),
                     "--mean", "-4", "--std", "4")
    assert result.returncode == 1 and "broken.wav" in result.stderr


def test_init_mode_across_variants_keeps_the_backbone(fixtures_dir, fobi):
    """As the original's non-strict load: Bi-Bi ViM -> Fo-Bi drops the _b branch; Fo-Bi -> Bi-Bi adds a fresh one."""
    vim = convert.read_torch_checkpoint(fixtures_dir / "vim_imagenet_init" / "vim_small_midcls.pth")
    target = convert.infer_config(vim, audio_length=128).replace(num_classes=35, bimamba_type="v1")
    model = pretrained.init_from_source(vim, target, pretrained.SourceLayout(kind="vim"))
    np.testing.assert_array_equal(model.layers.mixer.A_b_log[...][1], vim["layers.1.mixer.A_b_log"])
    assert not hasattr(model.layers.mixer, "conv1d_b")

    _, state = fobi
    target = convert.infer_config(state).replace(bimamba_type="v2", num_classes=7)
    model = pretrained.init_from_source(state, target, pretrained.SourceLayout(kind="aum"))
    np.testing.assert_array_equal(model.layers.mixer.x_proj.kernel[...][2], state["layers.2.mixer.x_proj.weight"].T)
    np.testing.assert_array_equal(model.layers.mixer.dt_proj_b.bias[...], 0.0)  # fresh, as initialised


def test_init_mode_still_rejects_other_mismatches(fobi):
    _, state = fobi
    deeper = convert.infer_config(state).replace(depth=5)
    with pytest.raises(convert.CheckpointError, match="missing key layers.4.mixer.in_proj.weight"):
        pretrained.init_from_source(state, deeper, pretrained.SourceLayout(kind="aum"))
    headless = {k: v for k, v in state.items() if k != "patch_embed.proj.weight"}
    with pytest.raises(convert.CheckpointError, match="no 'patch_embed.proj.weight'"):
        pretrained.init_from_source(headless, convert.infer_config(state), pretrained.SourceLayout(kind="aum"))


def test_reads_checkpoints_that_carry_their_training_arguments(tmp_path, fobi):
    import argparse

    folder, state = fobi
    raw = torch.load(folder / "state_dict.pth", map_location="cpu", weights_only=True)
    path = tmp_path / "with_args.pth"
    torch.save({"model": raw, "args": argparse.Namespace(lr=5e-4, model="vim_small")}, path)
    assert convert.read_torch_checkpoint(path).keys() == state.keys()


def test_a_model_directory_and_its_pth_initialise_the_same_model(fobi, tmp_path):
    folder, _ = fobi
    state = convert.read_torch_checkpoint(folder / "state_dict.pth")
    source = convert.convert(state)
    round_trip = convert.torch_state_dict(source)
    assert sorted(round_trip) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(round_trip[key], value, err_msg=key)
    save_model(source, tmp_path / "source")
    target = source.config.replace(audio_length=source.config.audio_length // 2, num_classes=3)
    init = ml_collections.ConfigDict({"kind": "aum", "vim_cls_position": "middle", "verify": True,
                                      "source_strides": source.config.strides,
                                      "source_num_mel_bins": source.config.num_mel_bins})
    from_dir = pretrained.init_from_pretrained(tmp_path / "source", target, init, seed=1)
    from_pth = pretrained.init_from_pretrained(folder / "state_dict.pth", target, init, seed=1)
    params = [nnx.to_pure_dict(nnx.state(m, nnx.Param)) for m in (from_dir, from_pth)]
    jax.tree.map(np.testing.assert_array_equal, *params)
    assert params[0]["pos_embed"].shape[1] == target.num_patches + target.num_cls_tokens
