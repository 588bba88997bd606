"""The training job: learning, resumption, non-finite steps, multi-device, the CLI."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from aum_jax.configs import speechcommands
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.core import workdir as workdir_lib
from aum_jax.data.sources import labels
from aum_jax.evaluation import report as report_lib
from aum_jax.models import AuMConfig, init_model
from aum_jax.training import config_checks, eval_mode, objectives, run_checkpoints, train, update
from tests.helpers import REPO_ROOT, read_scalars, subprocess_env, toy_config, write_toy_dataset

BCE = ("supervised", objectives.Supervised("BCE"))  # the step's objective and settings.


def final_params(workdir: Path) -> dict:
    return nnx.to_pure_dict(nnx.state(model_files.load_model(workdir / workdir_lib.MODEL_DIR), nnx.Param))


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


def test_training_reduces_the_loss_and_writes_tensorboard(toy, tmp_path: Path) -> None:
    report = train.train_and_evaluate(toy_config(toy, num_steps=12, steps_per_epoch=12), tmp_path)
    losses = read_scalars(tmp_path, "train/loss")
    assert sorted(losses) == list(range(1, 13))
    first, last = np.mean([losses[s] for s in (1, 2, 3)]), np.mean([losses[s] for s in (10, 11, 12)])
    assert last < 0.7 * first, losses
    assert read_scalars(tmp_path, "validation/accuracy")[12] == report["final"]["accuracy"]
    assert report["final"]["num_examples"] == 12
    assert (tmp_path / "model" / "config.json").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["step"] == 12


def test_the_best_model_by_loss_is_the_one_with_the_lowest_validation_loss(toy, tmp_path: Path) -> None:
    report = train.train_and_evaluate(toy_config(toy, metric="loss", eval_every=2), tmp_path)
    losses = read_scalars(tmp_path, "validation/loss")
    assert sorted(losses) == [2, 4, 6]
    best = json.loads((tmp_path / workdir_lib.BEST_FILE).read_text())
    assert best["step"] == report["best"]["step"] == min(losses, key=losses.get)
    assert best["loss"] == pytest.approx(min(losses.values()))


def test_a_metric_evaluation_does_not_report_is_a_config_error() -> None:
    config = speechcommands.get_config("runlocal")
    config.train.metric = "accurcy"
    with pytest.raises(config_checks.ConfigError, match="config.train.metric='accurcy' is no metric evaluation "
                       'reports; choose from mAP, mAUC, d_prime, accuracy, loss .did you mean "accuracy"'):
        config_checks.check(config, "train")
    config.train.metric = "loss"
    config_checks.check(config, "train")
    config.data.max_bad_fraction = 2.0
    with pytest.raises(config_checks.ConfigError, match=r"config.data.max_bad_fraction=2.0: must be in \[0, 1\]"):
        config_checks.check(config, "train")


def test_eval_mode_reads_a_training_checkpoint_without_the_training_data(toy, tmp_path: Path) -> None:
    import shutil

    config = toy_config(toy, num_steps=2, checkpoint_every=2)
    train.train_and_evaluate(config, tmp_path)
    shutil.rmtree(tmp_path / workdir_lib.MODEL_DIR)  # leave only the training checkpoint
    config.data.train_datafile = str(tmp_path / "gone.json")
    reports = eval_mode.evaluate_workdir(config, tmp_path)
    assert reports["validation"]["num_examples"] == 12
    assert reports["validation"]["model"].endswith("checkpoints")
    config.eval.model_dir = str(tmp_path / "typo")
    with pytest.raises(model_files.ModelDirectoryError, match="not an aum-jax model directory"):
        eval_mode.evaluate_workdir(config, tmp_path)


def test_resume_gives_the_same_params_and_data_order(toy, tmp_path: Path) -> None:
    overrides = dict(num_steps=6)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    config = toy_config(toy, **overrides)
    config.eval.split = ""  # workdir/model is then the final model.
    train.train_and_evaluate(config, straight)
    config.train.num_steps = 3  # stops after step 3, as a killed run would ...
    train.train_and_evaluate(config, resumed)
    assert run_checkpoints.make_manager(resumed, 3).latest_step() == 3
    config.train.num_steps = 6  # ... and the restarted job resumes from its checkpoint.
    train.train_and_evaluate(config, resumed)
    straight_losses, resumed_losses = read_scalars(straight, "train/loss"), read_scalars(resumed, "train/loss")
    assert sorted(resumed_losses) == list(range(1, 7))
    np.testing.assert_array_equal([resumed_losses[s] for s in range(1, 7)],
                                  [straight_losses[s] for s in range(1, 7)])  # same batches, same order.
    jax.tree.map(np.testing.assert_array_equal, final_params(resumed), final_params(straight))


def test_a_finished_workdir_without_its_model_rebuilds_it_or_says_why_it_cannot(toy, tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    config = toy_config(toy, num_steps=4, eval_every=2, checkpoint_every=2)
    report = train.train_and_evaluate(config, workdir)
    best, want = report["best"]["step"], final_params(workdir)
    shutil.rmtree(workdir / workdir_lib.MODEL_DIR)  # deleted by hand.
    again = train.train_and_evaluate(config, workdir)
    assert again[report_lib.ALREADY_TRAINED] and again["step"] == 4 and again["best"]["step"] == best
    jax.tree.map(np.testing.assert_array_equal, final_params(workdir), want)  # the best step's model, as trained.
    assert model_files.load_preprocessing(workdir / workdir_lib.MODEL_DIR) == labels.training_preprocessing(config)
    (workdir / workdir_lib.MODEL_DIR).rename(workdir / ".model.previous")  # a kill inside replace_dir's fallback.
    train.train_and_evaluate(config, workdir)
    assert (workdir / workdir_lib.MODEL_DIR).is_dir() and not (workdir / ".model.previous").exists()

    # Neither the model nor the checkpoint of its step: one line, exit status 1.
    shutil.rmtree(workdir / workdir_lib.MODEL_DIR)
    shutil.rmtree(workdir / workdir_lib.CHECKPOINT_DIR / str(best))
    result = subprocess.run(
        [sys.executable, "-m", "aum_jax.main", "--config=configs/speechcommands.py:runlocal", f"--workdir={workdir}",
         f"--config.data.train_datafile={toy['train']}", f"--config.data.validation_datafile={toy['eval']}",
         f"--config.data.label_csv={toy['label_csv']}", "--config.data.num_classes=2", "--config.eval.test_split=",
         "--config.train.num_steps=4"], env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {workdir / 'report.json'} says training finished, but {workdir / 'model'}/ is missing and no "
        f"checkpoint of its best step {best} remains; train again in a new --workdir")
    assert not (workdir / workdir_lib.MODEL_DIR).exists()


def _tiny_model_and_optimizer() -> tuple[nnx.Module, nnx.Optimizer]:
    config = AuMConfig(num_mel_bins=32, audio_length=32, embed_dim=32, depth=1, num_classes=2)
    model = init_model(config, 0)
    optimizer = nnx.Optimizer(model, update.make_optimizer(speechcommands.get_config().optimizer,
                                                          optax.constant_schedule(1e-3)), wrt=nnx.Param)
    return model, optimizer


def test_a_bad_step_changes_no_parameter_or_moment() -> None:
    model, optimizer = _tiny_model_and_optimizer()
    batch = {"fbank": jnp.ones((4, 32, 32)), "label": jax.nn.one_hot(jnp.arange(4) % 2, 2)}

    def snapshot() -> list:  # parameters and the inner optimizer state (moments, schedule count).
        return [jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(model, nnx.Param))),
                jax.tree.map(np.array, nnx.to_pure_dict(nnx.state(optimizer.opt_state.inner_state)))]

    before = snapshot()
    nan_batch = {**batch, "fbank": batch["fbank"].at[0, 0, 0].set(jnp.inf)}
    metrics = update.train_step(model, optimizer, nan_batch, *BCE)
    assert not bool(metrics["ok"]) and not np.isfinite(float(metrics["loss"]))
    assert update.nonfinite_inputs(metrics["nonfinite_inputs"]) == {"fbank"}  # the input named.
    jax.tree.map(np.testing.assert_array_equal, snapshot(), before)
    metrics = update.train_step(model, optimizer, batch, *BCE, max_loss=1e-3)  # finite, out of bounds.
    assert not bool(metrics["ok"]) and np.isfinite(float(metrics["loss"]))
    assert update.nonfinite_inputs(metrics["nonfinite_inputs"]) == set()
    metrics = update.train_step(model, optimizer, batch, *BCE, max_grad_norm=1e-6)
    assert not bool(metrics["ok"]) and np.isfinite(float(metrics["grad_norm"]))
    jax.tree.map(np.testing.assert_array_equal, snapshot(), before)
    assert int(optimizer.opt_state.notfinite_count[...]) == 3  # apply_if_finite counted all three.

    metrics = update.train_step(model, optimizer, batch, *BCE, max_loss=1e4, max_grad_norm=1e6)
    assert bool(metrics["ok"])  # a good batch within the bounds still trains.
    assert int(optimizer.opt_state.notfinite_count[...]) == 0
    assert int(optimizer.opt_state.total_notfinite[...]) == 3
    assert not np.array_equal(snapshot()[0]["head"]["kernel"], before[0]["head"]["kernel"])


def test_main_help() -> None:
    result = subprocess.run([sys.executable, "-m", "aum_jax.main", "--help"], env=subprocess_env(),
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Command line of the training and evaluation job" in result.stdout
    for flag in ("--config", "--workdir", "--mode"):
        assert flag in result.stdout


def test_ctrl_c_checkpoints_exits_130_and_the_job_resumes(toy_overrides, tmp_path: Path) -> None:
    env = subprocess_env()
    workdir = tmp_path / "work"
    command = [sys.executable, "-m", "aum_jax.main", "--config=configs/speechcommands.py:runlocal", *toy_overrides,
               f"--workdir={workdir}", "--config.train.num_steps=100000", "--config.train.checkpoint_every=2"]
    job = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
    try:
        deadline = time.monotonic() + 180
        while not (workdir / "checkpoints" / "2").is_dir():
            assert job.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.2)
        job.send_signal(signal.SIGINT)  # SIGTERM's 143: tests/training/test_workdir_use.py.
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "training interrupted after step" in stderr and "by SIGINT" in stderr
    stopped = run_checkpoints.make_manager(workdir, 3).latest_step()
    assert stopped >= 2
    resumed = subprocess.run(command[:-2] + [f"--config.train.num_steps={stopped + 2}"], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored the checkpoint of step {stopped}" in resumed.stderr
    assert json.loads((workdir / "report.json").read_text())["step"] == stopped + 2
