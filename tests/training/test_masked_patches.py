"""Self-supervised pretraining by masked patch modelling: the masks, the targets, the losses on real
clips, data parallelism, a SIGKILLed run's resumption, and the head-less model it leaves, which
fine-tuning, HEAR and predict --embeddings take as it is."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile
from aum_jax.configs import pretrain, speechcommands
from flax import nnx, traverse_util

from aum_jax import hear
from aum_jax.checkpoints import model_files, pretrained
from aum_jax.core import workdir as workdir_lib
from aum_jax.models import AuMConfig, init_model
from aum_jax.models.masked_patch_model import MaskedPatchModel
from aum_jax.training import config_checks, masked_patches, objectives, run_checkpoints, train
from tests.helpers import (
    REPO_ROOT,
    assert_one_error_line,
    read_scalars,
    run,
    subprocess_env,
    write_toy_dataset,
    xla_flags,
)


def _toy_flags(toy: dict[str, str]) -> list[str]:
    """configs/pretrain.py:runlocal on the toy clips at 32 bins x 48 frames (2 x 3 patches), a 32-wide 1-block AuM."""
    return ["--config=configs/pretrain.py:runlocal", "--config.demo.generate=False",
            f"--config.data.train_datafile={toy['train']}", f"--config.data.label_csv={toy['label_csv']}",
            "--config.data.num_classes=2", "--config.data.num_mel_bins=32", "--config.data.audio_length=48",
            "--config.model.depth=1", "--config.model.embed_dim=32", "--config.pretrain.cluster_sides=(1, 2)"]


def _toy_config(toy: dict[str, str], **train_overrides):
    config = pretrain.get_config("runlocal")
    config.demo.generate = False
    data = config.data
    data.train_datafile, data.label_csv, data.num_classes = toy["train"], toy["label_csv"], 2
    data.num_mel_bins, data.audio_length = 32, 48
    config.model.depth, config.model.embed_dim = 1, 32
    config.pretrain.cluster_sides = (1, 2)
    config.train.update(dict(num_steps=40, log_every=1, checkpoint_every=20), **train_overrides)
    return config


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, str]:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), clips_per_class=8)


@pytest.fixture(scope="module")
def pretrained_run(toy, tmp_path_factory) -> Path:
    """A workdir pretrained for 40 steps on the toy clips (labels ignored)."""
    workdir = tmp_path_factory.mktemp("pretrained")
    train.train_and_evaluate(_toy_config(toy), workdir)
    return workdir


def test_masks_are_exact_in_count_and_deterministic_per_seed_and_step() -> None:
    settings = masked_patches.MaskedPatches(grid=(8, 12), patch_size=(16, 16), num_masked=60, cluster_sides=(3, 5))
    config = AuMConfig(num_mel_bins=128, audio_length=192, embed_dim=32, depth=1, strides=(16, 16))
    sequences = []
    for seed in (0, 0, 1):
        model = init_model(config, seed, module=MaskedPatchModel)
        sequences.append([np.asarray(masked_patches.draw_masks(model.masking(), 4, settings)[1]) for _ in range(3)])
    for mask in sequences[0]:
        assert mask.shape == (4, 96) and (mask.sum(axis=1) == 60).all()
    for a, b in zip(sequences[0], sequences[1], strict=True):
        np.testing.assert_array_equal(a, b)  # same seed, same step: same masks.
    assert not np.array_equal(sequences[0][0], sequences[0][1])  # the next step draws others,
    assert not np.array_equal(sequences[0][0][0], sequences[0][0][1])  # each clip its own,
    assert not np.array_equal(sequences[0][0], sequences[2][0])  # and another seed others.
    # Cluster masking: nearly every masked patch has a masked neighbour (squares of 3 to 5 a side).
    grid = sequences[0][0].reshape(4, 8, 12)
    padded = np.pad(grid, ((0, 0), (1, 1), (1, 1)))
    neighbours = padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2] | padded[:, 1:-1, 2:]
    assert (neighbours[grid]).mean() > 0.95
    single = masked_patches.MaskedPatches(grid=(8, 12), patch_size=(16, 16), num_masked=60, cluster_sides=(1, 1))
    _, scattered = masked_patches.draw_masks(jax.random.key(0), 4, single)
    assert (np.asarray(scattered).sum(axis=1) == 60).all()


def test_patches_are_the_patch_embeddings_inputs_and_a_masked_patch_never_leaks_into_its_prediction() -> None:
    config = AuMConfig(num_mel_bins=32, audio_length=64, embed_dim=32, depth=2, strides=(16, 16), bimamba_type="v2")
    settings = masked_patches.MaskedPatches(grid=config.patch_grid, patch_size=(16, 16), num_masked=3)
    x = np.random.default_rng(0).normal(size=(2, 64, 32)).astype(np.float32)
    got = np.asarray(masked_patches.patches(jnp.asarray(x), settings))
    spectrogram = x.swapaxes(1, 2)  # (B, F, T): patches run over frequency first, as the embedding's conv.
    want = np.stack([spectrogram[:, f * 16:(f + 1) * 16, t * 16:(t + 1) * 16].reshape(2, -1)
                     for f in range(2) for t in range(4)], axis=1)
    np.testing.assert_array_equal(got, want)

    model = init_model(config, 0, module=MaskedPatchModel)
    indices, mask = masked_patches.draw_masks(jax.random.key(3), 2, settings)
    before = model(jnp.asarray(x), mask)
    changed = spectrogram.copy()
    for row, patch_ids in enumerate(np.asarray(indices)):
        for p in patch_ids:  # new content inside every masked patch.
            f, t = divmod(int(p), 4)
            changed[row, f * 16:(f + 1) * 16, t * 16:(t + 1) * 16] += 5.0
    after = model(jnp.asarray(changed.swapaxes(1, 2)), mask)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)  # no output, masked or not, sees a masked patch's content.
    visible = int(np.flatnonzero(~np.asarray(mask[0]))[0])
    changed[0, (visible // 4) * 16:(visible // 4 + 1) * 16, (visible % 4) * 16:(visible % 4 + 1) * 16] += 5.0
    assert not np.array_equal(model(jnp.asarray(changed.swapaxes(1, 2)), mask)[0], before[0])  # a visible one does.


def test_both_losses_fall_on_real_clips_and_reach_tensorboard(pretrained_run) -> None:
    for tag in ("train/infonce", "train/mse"):
        values = read_scalars(pretrained_run, tag)
        assert sorted(values) == list(range(1, 41)), tag
        first, last = np.mean([values[s] for s in range(1, 6)]), np.mean([values[s] for s in range(36, 41)])
        assert last < 0.9 * first, (tag, first, last)
    accuracy = read_scalars(pretrained_run, "train/masked_accuracy")
    assert all(0.0 <= v <= 1.0 for v in accuracy.values()) and len(accuracy) == 40
    report = json.loads((pretrained_run / workdir_lib.REPORT_FILE).read_text())
    assert report["step"] == 40 and set(report["train"]) >= {"loss", "infonce", "mse", "masked_accuracy"}


def test_the_model_directory_holds_the_backbone_alone(pretrained_run) -> None:
    directory = pretrained_run / workdir_lib.MODEL_DIR
    files = model_files.open_model_dir(directory)
    assert files.config.num_classes == 0 and files.preprocessing.class_names == ()
    names = json.loads((directory / model_files.CHECKSUMS_FILE).read_text())["sha256"]
    assert not [n for n in names if n.split("/")[0] in ("mask_token", "discriminative", "generative", "head")]
    # The saved backbone is the trained module's, bit for bit (the checkpoint of the last step).
    saved = nnx.to_pure_dict(nnx.state(model_files.load_model(directory), nnx.Param))
    config = _toy_config({"train": "", "label_csv": ""})
    backbone, step = run_checkpoints.restore_model(config, pretrained_run)
    assert step == 40
    jax.tree.map(np.testing.assert_array_equal, nnx.to_pure_dict(nnx.state(backbone, nnx.Param)), saved)


def test_fine_tuning_loads_every_backbone_weight_and_no_ssl_head(pretrained_run) -> None:
    directory = pretrained_run / workdir_lib.MODEL_DIR
    backbone = model_files.load_model(directory)
    source = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(backbone, nnx.Param)))
    init = speechcommands.get_config().init
    target_config = backbone.config.replace(strides=(8, 8), num_classes=2)  # another grid: 3 x 5.
    model = pretrained.init_from_pretrained(directory, target_config, init, seed=7)
    target = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    fresh = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(init_model(target_config, 7), nnx.Param)))
    assert set(target) == set(source) | {("head", "kernel"), ("head", "bias")}
    loaded = [k for k in source if k != ("pos_embed",) and np.array_equal(target[k], source[k])]
    assert len(loaded) == len(source) - 1, sorted(set(source) - set(loaded))  # every weight but the resized grid.
    assert target[("pos_embed",)].shape == (1, 1 + 15, 32) and source[("pos_embed",)].shape == (1, 1 + 6, 32)
    np.testing.assert_array_equal(target[("pos_embed",)][:, :1], source[("pos_embed",)][:, :1])  # the cls entry.
    for key in (("head", "kernel"), ("head", "bias")):
        np.testing.assert_array_equal(target[key], fresh[key])  # a fresh head.


def test_a_fine_tune_from_the_pretrained_directory_trains_from_the_command_line(pretrained_run, toy, tmp_path) -> None:
    workdir = tmp_path / "finetune"
    done = run("-m", "aum_jax.main", "--config=configs/speechcommands.py:runlocal", f"--workdir={workdir}",
               f"--config.data.train_datafile={toy['train']}", f"--config.data.validation_datafile={toy['eval']}",
               f"--config.data.test_datafile={toy['eval']}", f"--config.data.label_csv={toy['label_csv']}",
               "--config.data.num_classes=2", "--config.data.num_mel_bins=32", "--config.data.audio_length=48",
               "--config.model.depth=1", "--config.model.embed_dim=32", "--config.model.bimamba_type=v2",
               "--config.model.strides=(8, 8)", "--config.data.label_fraction=0.5",
               f"--config.init.checkpoint={pretrained_run / workdir_lib.MODEL_DIR}", "--config.train.num_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training on the 8 labelled of the 16 clips" in done.stderr
    assert model_files.open_model_dir(workdir / workdir_lib.MODEL_DIR).config.num_classes == 2


def test_hear_and_predict_embeddings_take_the_pretrained_directory(pretrained_run, tmp_path) -> None:
    directory = pretrained_run / workdir_lib.MODEL_DIR
    sound = (0.1 * np.sin(np.arange(8000) / 5.0)).astype(np.float32)
    model = hear.load_model(str(directory))
    scene = hear.get_scene_embeddings(np.stack([sound, sound]), model)
    assert scene.shape == (2, 32) and np.isfinite(scene).all()
    wav = tmp_path / "tone.wav"
    soundfile.write(wav, sound, 16000, subtype="FLOAT")  # the very samples HEAR was given.
    out = tmp_path / "rows.npz"
    done = run("-m", "aum_jax.predict", f"--model-dir={directory}", "--audio", str(wav), "--embeddings", str(out),
               "--pool")
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_allclose(np.load(out)["embedding"][0], scene[0], rtol=1e-4, atol=1e-5)  # both pool windows alike.


FOUR_DEVICES = textwrap.dedent("""
    import json
    import jax, ml_collections, numpy as np, optax
    from flax import nnx
    from aum_jax.core import sharding
    from aum_jax.models import AuMConfig, init_model
    from aum_jax.models.masked_patch_model import MaskedPatchModel
    from aum_jax.training import masked_patches, update

    assert jax.device_count() == 4, jax.devices()
    config = AuMConfig(num_mel_bins=32, audio_length=64, embed_dim=32, depth=1, strides=(16, 16), bimamba_type="v2")
    settings = masked_patches.MaskedPatches(config.patch_grid, (16, 16), 5, (1, 2))
    batch = {"fbank": np.random.default_rng(0).normal(size=(8, 64, 32)).astype(np.float32),
             "label": np.zeros((8, 2), np.float32)}
    out = []
    for devices in (1, 4):
        mesh = sharding.make_mesh(ml_collections.ConfigDict({"data_axis": "data", "num_devices": devices}))
        model = init_model(config, 0, module=MaskedPatchModel)
        optimizer = nnx.Optimizer(model, optax.sgd(0.5), wrt=nnx.Param)
        for module in (model, optimizer):
            nnx.update(module, sharding.replicate(nnx.state(module), mesh))
        steps = [update.train_step(model, optimizer, sharding.global_batch(batch, mesh), "masked_patches", settings)
                 for _ in range(2)]
        out.append({"metrics": [{k: float(v) for k, v in m.items()} for m in steps],
                    "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(nnx.state(model, nnx.Param))]})
    print("RESULT " + json.dumps(out))
""")


def test_four_devices_compute_what_one_does() -> None:
    env = subprocess_env(XLA_FLAGS=xla_flags("--xla_force_host_platform_device_count=4"))
    done = subprocess.run([sys.executable, "-c", FOUR_DEVICES], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    one, four = json.loads(done.stdout.split("RESULT ", 1)[1])
    for a, b in zip(one["metrics"], four["metrics"], strict=True):
        assert a.keys() == b.keys() >= {"loss", "infonce", "mse", "masked_accuracy"}
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-5, err_msg=key)
    for a, b in zip(one["params"], four["params"], strict=True):  # parameters of size ~0.1: float32 sums reordered.
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_a_sigkilled_pretraining_resumes_bit_identically_with_another_worker_count(toy, tmp_path) -> None:
    env = subprocess_env()
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    command = [sys.executable, "-m", "aum_jax.main", *_toy_flags(toy), "--config.train.checkpoint_every=2",
               "--config.train.log_every=1"]
    job = subprocess.Popen([*command, f"--workdir={killed}", "--config.train.num_steps=100000",
                            "--config.data.num_workers=2"], env=env, cwd=REPO_ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoints" / "4").is_dir() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (killed / "checkpoints" / "4").is_dir()
        job.send_signal(signal.SIGKILL)
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
    stopped = run_checkpoints.make_manager(killed, 3).latest_step()
    end = stopped + 3
    for workdir in (killed, straight):
        done = subprocess.run([*command, f"--workdir={workdir}", f"--config.train.num_steps={end}",
                               "--config.data.num_workers=0"], env=env, cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((killed / workdir_lib.REPORT_FILE).read_text())["restored_from_step"] == stopped
    for tag in ("train/loss", "train/infonce", "train/mse"):
        resumed, whole = read_scalars(killed, tag), read_scalars(straight, tag)
        assert [resumed[s] for s in range(stopped + 1, end + 1)] == [whole[s] for s in range(stopped + 1, end + 1)]
    params = [nnx.to_pure_dict(nnx.state(model_files.load_model(w / workdir_lib.MODEL_DIR), nnx.Param))
              for w in (killed, straight)]
    jax.tree.map(np.testing.assert_array_equal, *params)


def test_a_pretraining_config_mistake_is_one_error_line(toy, tmp_path) -> None:
    workdir = tmp_path / "work"
    assert_one_error_line(run("-m", "aum_jax.main", *_toy_flags(toy), f"--workdir={workdir}",
                              "--config.model.strides=(8, 8)"), "config.model.strides=(8, 8)", "do not overlap")
    assert not workdir.exists()
    for key, value, fragment in (("mask_ratio", 1.5, "(0, 1)"), ("cluster_sides", (3, 2), "(low, high)"),
                                 ("generative_weight", -1.0, "at least 0")):
        config = _toy_config(toy)
        config.pretrain[key] = value
        with pytest.raises(config_checks.ConfigError, match=re.escape(f"config.pretrain.{key}=")) as raised:
            config_checks.check(config, "train")
        assert fragment in str(raised.value)
    with pytest.raises(config_checks.ConfigError, match="no split is evaluated"):  # nothing labelled to evaluate.
        config_checks.check(_toy_config(toy), "eval")
    # A ratio must mask 2 patches or more (InfoNCE's negative) and leave one visible, on the config's own grid.
    for config, ratio, fragment in ((_toy_config(toy), 0.999, "masks 6 of the 6 patches of the 2 x 3 grid"),
                                    (_toy_config(toy), 0.1, "masks 1 of the 6 patches"),
                                    (pretrain.get_config("runlocal"), 0.97, "masks 16 of the 16 patches of the 4 x 4"),
                                    (pretrain.get_config("runlocal"), 0.999, "(none visible)"),
                                    (pretrain.get_config("runlocal"), 0.02, "masks 0 of the 16")):
        config.pretrain.mask_ratio = ratio
        with pytest.raises(config_checks.ConfigError, match=re.escape(f"config.pretrain.mask_ratio={ratio} ")) as e:
            config_checks.check(config, "train")
        assert fragment in str(e.value)
    config = pretrain.get_config("runlocal")
    for ratio in (0.125, 0.9375):  # 2 and 15 of the 16.
        config.pretrain.mask_ratio = ratio
        config_checks.check(config, "train")


def test_every_variant_masks_as_ssast_and_a_folder_of_unlabelled_clips_pretrains(tmp_path) -> None:
    for variant, grid in (("demo", (4, 6)), ("tiny", (8, 64)), ("small", (8, 64)), ("base", (8, 64))):
        config = pretrain.get_config(variant)
        model = AuMConfig.from_dict(config.model.to_dict())
        assert model.patch_grid == grid and model.embed_dim == {"tiny": 192, "small": 384, "base": 768}.get(variant, 192)
        settings = objectives.get(config.train.objective).settings(config, model)
        assert settings.num_masked == round(0.78125 * grid[0] * grid[1])  # SSAST: 400 of 512 patches.
    root = tmp_path / "clips"
    (root / "unlabelled").mkdir(parents=True)
    for i in range(4):
        soundfile.write(root / "unlabelled" / f"{i}.wav", (0.1 * np.sin(np.arange(8000) * (i + 1) / 7)).astype(np.float32),
                        16000)
    done = run("-m", "aum_jax.main", "--config=configs/pretrain.py:runlocal", f"--workdir={tmp_path / 'work'}",
               "--config.demo.generate=False", "--config.data.source=folder", f"--config.data.folder.root={root}",
               "--config.model.depth=1", "--config.model.embed_dim=32", "--config.train.num_steps=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert model_files.open_model_dir(tmp_path / "work" / workdir_lib.MODEL_DIR).config.num_classes == 0
