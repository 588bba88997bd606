"""Crash-safe training, with real trainer processes: the workdir lock, SIGKILL with grain
workers, checkpoint fallback, divergence stops and one-line exits."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aum_jax.core import workdir as workdir_lib
from aum_jax.training import run_checkpoints, train, workdir_lock
from tests.helpers import REPO_ROOT, read_scalars, subprocess_env, toy_config, write_toy_dataset

MAIN = [sys.executable, "-m", "aum_jax.main", "--config=configs/speechcommands.py:runlocal"]  # + toy_overrides.


def _children(pid: int) -> set[int]:
    """PIDs whose parent is ``pid``."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def _wait_for(path: Path, job: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert job.poll() is None, job.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.2)


def test_second_trainer_sigkill_with_workers_and_takeover(toy_overrides, tmp_path: Path) -> None:
    env = subprocess_env()
    workdir = tmp_path / "work"
    no_eval = ["--config.eval.split=", "--config.eval.test_split="]  # the checks read the report and stderr.
    command = MAIN + toy_overrides + no_eval + [f"--workdir={workdir}", "--config.train.checkpoint_every=2",
                                                "--config.data.num_workers=2"]
    first = subprocess.Popen(command + ["--config.train.num_steps=100000"], env=env, cwd=REPO_ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(workdir / "checkpoints" / "2", first)
        holder = json.loads((workdir / workdir_lib.LOCK_FILE).read_text())
        assert holder["pid"] == first.pid

        # A second trainer on the same workdir stops at once, naming the holder.
        second = subprocess.run(command + ["--config.train.num_steps=100000"], env=env, cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=240)
        assert second.returncode == 1, second.stderr[-3000:]
        assert "Traceback" not in second.stderr
        line = _last_line(second.stderr)
        assert line.startswith(f"error: workdir {workdir} is in use by host ")
        assert f"PID {first.pid}, started {holder['started']}" in line

        # SIGKILL: the grain workers and the resource tracker do not outlive the trainer.
        children = _children(first.pid)
        assert len(children) >= 3, children  # 2 workers + multiprocessing's resource tracker.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert not [pid for pid in children if _alive(pid)], "orphaned worker processes"
    finally:
        if first.poll() is None:
            first.kill()

    # The dead holder's lock is taken over; the run resumes, now with another worker count.
    stopped = run_checkpoints.make_manager(workdir, 3).latest_step()
    resumed = subprocess.run(MAIN + toy_overrides + no_eval + [f"--workdir={workdir}", "--config.data.num_workers=0",
                                                               f"--config.train.num_steps={stopped + 2}"],
                             env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"PID {first.pid} is not running" in resumed.stderr
    assert f"Restored the checkpoint of step {stopped}" in resumed.stderr
    report = json.loads((workdir / workdir_lib.REPORT_FILE).read_text())
    assert report["step"] == stopped + 2 and report["restored_from_step"] == stopped
    assert not (workdir / workdir_lib.LOCK_FILE).exists()  # released at the end.


def test_a_stale_lock_from_another_host_is_taken_over(tmp_path: Path) -> None:
    lock_path = tmp_path / workdir_lib.LOCK_FILE
    holder = {"host": "elsewhere", "pid": 1, "started": "2026-11-24T10:00:00+00:00"}
    lock_path.write_text(json.dumps(holder))
    lock = workdir_lock.WorkdirLock(tmp_path, heartbeat_s=0.05, stale_after_s=60)
    with pytest.raises(workdir_lock.WorkdirInUseError, match="in use by host elsewhere, PID 1, started 2026"):
        lock.acquire()  # its heartbeat is fresh.
    old = time.time() - 61
    os.utime(lock_path, (old, old))
    with lock:
        assert json.loads(lock_path.read_text())["pid"] == os.getpid()
        before = lock_path.stat().st_mtime
        time.sleep(0.3)
        assert lock_path.stat().st_mtime > before  # the heartbeat touches it.
    assert not lock_path.exists()


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"))


def test_unreadable_checkpoints_fall_back_to_older_ones(toy, tmp_path: Path) -> None:
    config = toy_config(toy, num_steps=4, checkpoint_every=2, keep_checkpoints=5)
    config.eval.split = ""
    train.train_and_evaluate(config, tmp_path)
    checkpoints = tmp_path / workdir_lib.CHECKPOINT_DIR
    for data_file in (checkpoints / "4").rglob("d/*"):  # truncate the newest step's array data.
        data_file.write_bytes(data_file.read_bytes()[:10])
    (checkpoints / "6").mkdir()  # and an empty step directory beside it.
    config.train.num_steps = 6
    report = train.train_and_evaluate(config, tmp_path)
    assert report["restored_from_step"] == 2 and report["step"] == 6
    assert sorted(p.name for p in (checkpoints / workdir_lib.CORRUPT_DIR).iterdir()) == ["4", "6"]
    assert run_checkpoints.make_manager(tmp_path, 5).all_steps() == [2, 4, 6]  # 4 and 6 written anew.
    assert read_scalars(tmp_path, "train/restored_from_step") == {2: 2.0}

    # With every step unreadable, the run starts from scratch (to more steps: a finished run is not retrained).
    for step in (2, 4, 6):
        for data_file in (checkpoints / str(step)).rglob("d/*"):
            data_file.write_bytes(b"")
    config.train.num_steps = 8
    report = train.train_and_evaluate(config, tmp_path)
    assert report["restored_from_step"] is None and report["step"] == 8


def test_a_checkpoint_of_another_model_is_an_error_not_corruption(toy, tmp_path: Path) -> None:
    config = toy_config(toy, num_steps=2)
    config.eval.split = ""
    train.train_and_evaluate(config, tmp_path)
    config.model.embed_dim = 48
    config.train.num_steps = 4  # more steps: a finished run would not be trained again.
    with pytest.raises(run_checkpoints.CheckpointMismatchError, match=r"checkpoints/2/model does not fit.*\n.*shape"):
        train.train_and_evaluate(config, tmp_path)
    assert not (tmp_path / workdir_lib.CHECKPOINT_DIR / workdir_lib.CORRUPT_DIR).exists()


def test_divergence_stops_keeps_earlier_checkpoints_and_refuses_a_blind_restart(toy_overrides, tmp_path: Path) -> None:
    env = subprocess_env()
    workdir = tmp_path / "work"
    # From the 5th update (epoch 2) the lr is multiplied by 1e30: step 6 onwards diverges.
    command = MAIN + toy_overrides + ["--config.eval.split=", "--config.eval.test_split=",  # the report is read
                                      f"--workdir={workdir}", "--config.train.num_steps=12",
                                      "--config.train.checkpoint_every=2", "--config.train.steps_per_epoch=2",
                                      "--config.train.max_nonfinite_steps=3", "--config.optimizer.decay_start_epoch=2"]
    diverging = command + ["--config.optimizer.decay_factor=1e30"]
    result = subprocess.run(diverging, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert _last_line(result.stderr).startswith("error: training diverged: 3 steps in a row from step 6")
    assert run_checkpoints.make_manager(workdir, 3).all_steps() == [2, 4]  # from before the divergence.
    record = json.loads((workdir / workdir_lib.DIVERGED_FILE).read_text())
    assert record["first_bad_step"] == 6 and record["kept_step"] == 4

    again = subprocess.run(diverging, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    line = _last_line(again.stderr)
    assert "stopped on divergence at step 8" in line and "--config.optimizer.lr" in line

    fixed = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "optimizer.decay_factor 1e+30 -> " in fixed.stderr  # the change that fixed it is named.
    assert "Restored the checkpoint of step 4" in fixed.stderr
    report = json.loads((workdir / workdir_lib.REPORT_FILE).read_text())
    assert report["step"] == 12 and report["skipped_steps"] == 0


def test_bad_input_ends_with_one_line(tmp_path: Path) -> None:
    paths = write_toy_dataset(tmp_path / "toy")
    for wav in (tmp_path / "toy" / "train").glob("*.wav"):
        wav.unlink()
    overrides = [f"--config.data.{k}={paths[v]}" for k, v in
                 (("train_datafile", "train"), ("validation_datafile", "eval"), ("test_datafile", "eval"),
                  ("label_csv", "label_csv"))]
    result = subprocess.run(
        [sys.executable, "-m", "aum_jax.main", "--config=configs/speechcommands.py:runlocal",
         f"--workdir={tmp_path / 'work'}", "--config.data.num_classes=2", *overrides],
        env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert _last_line(result.stderr).startswith("error: ") and "could not be loaded" in _last_line(result.stderr)


def test_report_counts_skipped_clips_by_reason(toy, tmp_path: Path) -> None:
    truncated = Path(toy["train"]).parent / "train" / "low0.wav"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    try:
        config = toy_config(toy, num_steps=6)
        config.data.max_bad_fraction = 0.5
        report = train.train_and_evaluate(config, tmp_path)
    finally:
        truncated.write_bytes(data)
    assert report["skipped_clips"]["truncated"] == report["skipped_clips"]["total"] >= 1
    saved = json.loads((tmp_path / workdir_lib.REPORT_FILE).read_text())
    assert saved["skipped_clips"] == report["skipped_clips"] and saved["skipped_steps"] == 0
    assert read_scalars(tmp_path, "input/skipped_clips_truncated")[6] == report["skipped_clips"]["truncated"]
    assert np.isfinite(list(read_scalars(tmp_path, "train/grad_norm").values())).all()
