"""What ``--workdir`` may be, and what happens to it: a folder of other files is refused and left as it
was, a run's own workdir is accepted again (resumed, evaluated), one inside the checkout gets one warning
and stays out of ``git status``, ``--mode=eval`` refuses a workdir a live trainer holds and says which step
it evaluates, and every refusal comes before the first write."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aum_jax.core import storage
from aum_jax.core import workdir as workdir_lib
from aum_jax.data.sources import folder_setup
from aum_jax.training import config_checks, eval_mode, stop_request, train, workdir_lock
from tests.helpers import REPO_ROOT, assert_one_error_line, main_cli, toy_config, write_toy_dataset

CHECKOUT_WARNING = "lies inside the aum-jax checkout"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, str]:
    return write_toy_dataset(tmp_path_factory.mktemp("toy"), clips_per_class=4)


def _flags(toy: dict[str, str]) -> list[str]:
    """The overrides that make the Speech Commands runlocal recipe :func:`tests.helpers.toy_config`'s model and data."""
    return [f"--config.data.train_datafile={toy['train']}", f"--config.data.validation_datafile={toy['eval']}",
            f"--config.data.test_datafile={toy['eval']}", f"--config.data.label_csv={toy['label_csv']}",
            "--config.data.num_classes=2", "--config.model.depth=1", "--config.model.embed_dim=32",
            "--config.data.num_mel_bins=32", "--config.data.audio_length=32", "--config.train.num_steps=2"]


@pytest.fixture(scope="module")
def trained(toy) -> Iterator[tuple[Path, subprocess.CompletedProcess]]:
    """A workdir trained for 2 steps by the command line inside the checkout (under tests/, which its
    .gitignore does not cover), and the finished process; removed afterwards."""
    workdir = REPO_ROOT / "tests" / f"tmp_workdir_{uuid.uuid4().hex[:8]}"
    try:
        yield workdir, main_cli(workdir, _flags(toy))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _git_status(path: Path) -> str:
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", str(path)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_workdir_inside_the_checkout_is_named_once_and_kept_out_of_git_status(trained) -> None:
    workdir, done = trained
    assert done.returncode == 0, done.stderr[-3000:]
    warnings = [line for line in done.stderr.splitlines() if CHECKOUT_WARNING in line]
    assert len(warnings) == 1 and str(workdir) in warnings[0], done.stderr[-3000:]
    assert (workdir / workdir_lib.MODEL_DIR).is_dir() and _git_status(workdir) == ""
    # The checkout's runs/ (README's place for workdirs) and workdir/ are ignored by its own .gitignore:
    # no warning and no .gitignore of ours there; a folder outside the checkout is none of git's business.
    for folder in workdir_lib.IGNORED_IN_CHECKOUT:
        inside = REPO_ROOT / folder / "x"
        assert workdir_lib.checkout_holding(inside) is None
        assert subprocess.run(["git", "check-ignore", "-q", str(inside)], cwd=REPO_ROOT, timeout=60,
                              check=False).returncode == 0
    assert workdir_lib.checkout_holding(Path("/tmp/elsewhere")) is None
    assert workdir_lib.checkout_holding(workdir) == REPO_ROOT


def test_only_a_new_empty_or_run_written_folder_is_a_workdir(trained, tmp_path: Path) -> None:
    workdir, done = trained
    assert done.returncode == 0, done.stderr[-3000:]
    assert workdir_lib.FOLDER_RECORD_FILE == folder_setup.RECORD_FILE
    assert workdir_lib.FOLDER_LABELS_FILE == folder_setup.LABELS_FILE
    config_checks.check_workdir(workdir)  # everything the run wrote is a workdir's own.
    config_checks.check_workdir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    config_checks.check_workdir(tmp_path / "empty")

    def folder(name: str, files: dict[str, str]) -> Path:
        path = tmp_path / name
        for relative, text in files.items():
            (path / relative).parent.mkdir(parents=True, exist_ok=True)
            (path / relative).write_text(text)
        return path

    config = (workdir / workdir_lib.CONFIG_FILE).read_text()
    refused = {  # a file or folder of the user's, named as one a run writes or not.
        "thesis": ({"thesis.txt": "chapter 1", workdir_lib.CONFIG_FILE: config}, "thesis.txt"),
        "other_config": ({workdir_lib.CONFIG_FILE: '{"name": "another tool"}'}, workdir_lib.CONFIG_FILE),
        "labels_alone": ({workdir_lib.FOLDER_LABELS_FILE: "a,b\n"}, workdir_lib.FOLDER_LABELS_FILE),
        "notes_in_model": ({workdir_lib.CONFIG_FILE: config, "model/notes.txt": "mine"}, workdir_lib.MODEL_DIR),
        "own_gitignore": ({".gitignore": "*.pdf\n", workdir_lib.REPORT_FILE: "{}"}, ".gitignore"),
    }
    for name, (files, named) in refused.items():
        path = folder(name, files)
        before = sorted(p.relative_to(path).as_posix() for p in path.rglob("*"))
        with pytest.raises(storage.OutputExistsError, match=f"--workdir {path} holds files no aum-jax run wrote "
                                                            rf"\(.*{named}"):
            config_checks.check_workdir(path)
        assert sorted(p.relative_to(path).as_posix() for p in path.rglob("*")) == before
    config_checks.check_workdir(folder("folder_run", {workdir_lib.FOLDER_RECORD_FILE: "{}",
                                                      workdir_lib.FOLDER_LABELS_FILE: "index,mid,display_name\n"}))
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(config_checks.ConfigError, match="is a file, not a folder"):
        config_checks.check_workdir(tmp_path / "a_file")


def _hold_lock(workdir: Path, pid: int) -> None:
    """Writes ``workdir/lock.json`` as the live process ``pid`` of this host holding it."""
    holder = {"host": socket.gethostname(), "pid": pid, "pid_start_ticks": workdir_lock._process_start_ticks(pid),
              "started": "2026-01-01T00:00:00+00:00"}
    (workdir / workdir_lib.LOCK_FILE).write_text(json.dumps(holder))


def test_every_refusal_comes_before_the_first_write(trained, toy, tmp_path: Path) -> None:
    """A user mistake found anywhere before training leaves ``--workdir`` absent, empty, or as it was."""
    workdir, done = trained
    assert done.returncode == 0, done.stderr[-3000:]
    np.savetxt(tmp_path / "five.csv", np.ones(5))
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.txt").write_text("chapter 1")
    cases = [  # (folder, extra flags, fragments of the error line)
        (thesis, [], ["thesis.txt", "name a new or empty folder"]),
        (None, ["--config.model.embed_dim=64", f"--config.init.checkpoint={workdir / workdir_lib.MODEL_DIR}"],
         ["config.init.checkpoint=", "32 wide"]),
        ("empty", ["--config.data.balanced_sampling=True", f"--config.data.weight_csv={tmp_path / 'five.csv'}"],
         [f"config.data.weight_csv={tmp_path / 'five.csv'}: has 5 weights for", "of 8 clips"]),
        ("empty", ["--config.data.label_fraction=1.5"], ["config.data.label_fraction=1.5: must be in (0, 1]"]),
        (None, ["--mode=eval"], ["no model in", "and no checkpoint in"]),
    ]
    for i, (folder, extra, fragments) in enumerate(cases):
        target = folder if isinstance(folder, Path) else tmp_path / f"work{i}"
        if folder == "empty":
            target.mkdir()
        before = sorted(os.listdir(target)) if target.exists() else None
        assert_one_error_line(main_cli(target, _flags(toy), *extra), *fragments)
        assert (sorted(os.listdir(target)) if target.exists() else None) == before, extra

    # --mode=eval on a workdir a live trainer holds: refused, naming it, and nothing written there.
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        _hold_lock(workdir, sleeper.pid)
        before = sorted(os.listdir(workdir))
        assert_one_error_line(main_cli(workdir, _flags(toy), "--mode=eval"), f"workdir {workdir} is being trained",
                              f"PID {sleeper.pid}", "lock.json")
        assert sorted(os.listdir(workdir)) == before
    finally:
        sleeper.kill()
        sleeper.wait()
        (workdir / workdir_lib.LOCK_FILE).unlink()


def test_eval_names_the_model_and_step_it_evaluates(trained, toy) -> None:
    workdir, done = trained
    assert done.returncode == 0, done.stderr[-3000:]
    config = toy_config(toy)  # the trained model's features, on the validation clips.
    best_step = json.loads((workdir / workdir_lib.BEST_FILE).read_text())["step"]
    reports = eval_mode.evaluate_workdir(config, workdir)
    assert reports["validation"]["step"] == best_step == 2
    assert reports["validation"]["model"] == str(workdir / workdir_lib.MODEL_DIR)
    assert json.loads((workdir / "eval_validation.json").read_text())["step"] == 2
    config_checks.check_workdir(workdir)  # eval's files are a workdir's own too.
    eval_mode.check_not_training(workdir, 120.0)  # no lock: nobody trains it.
    _hold_lock(workdir, 2 ** 22 + 7)  # a PID that runs nothing: a stale lock.
    try:
        eval_mode.check_not_training(workdir, 120.0)
    finally:
        (workdir / workdir_lib.LOCK_FILE).unlink()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_sets_the_exit_status_of_its_signal(signum: int) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers are set in the main thread only")
    with stop_request.StopRequest() as stop:
        os.kill(os.getpid(), signum)
        assert stop.requested and stop.signum == signum
        os.kill(os.getpid(), signal.SIGTERM)  # a later signal does not change which one stopped the run.
        assert stop.signum == signum
    interrupted = train.TrainingInterrupted(7, stop.signum)
    assert interrupted.exit_status == {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    assert f"after step 7 by {signal.Signals(signum).name}" in str(interrupted)
