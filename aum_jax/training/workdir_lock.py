"""The lock that gives one training run the use of its workdir (:mod:`aum_jax.core.workdir`).

A second trainer on a locked workdir stops at once with :class:`WorkdirInUseError`,
naming the holder; a workdir that cannot be written (a file, a read-only folder) stops it
with :class:`~aum_jax.core.workdir.WorkdirNotWritableError`. A lock whose holder is gone is
taken over with a warning: on the same host when its PID no longer runs (or now belongs to a
newer process), on another host when its heartbeat is older than ``stale_after_s``
(``config.train.lock_stale_after_s``), and always when it was written by an earlier
incarnation of the same SLURM job (a requeue keeps ``SLURM_JOB_ID`` and raises
``SLURM_RESTART_COUNT``). With several processes only process 0 takes the lock: one lock per run.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from aum_jax.core import workdir as workdir_lib
from aum_jax.core.workdir import LOCK_FILE, WorkdirError, WorkdirNotWritableError


class WorkdirInUseError(WorkdirError):
    """Another live trainer holds the workdir's lock."""


def _process_start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else.
        return True
    return True


def _this_holder() -> dict[str, Any]:
    now = time.time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_start_ticks": _process_start_ticks(os.getpid()),
        "started": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
        "started_unix": now,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT", "0"),
    }


def _parse_holder(text: str) -> dict[str, Any]:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"host": "?", "pid": -1, "started": "? (unreadable lock file)"}


def describe_holder(holder: dict[str, Any]) -> str:
    return f"host {holder.get('host')}, PID {holder.get('pid')}, started {holder.get('started')}"


def why_stale(holder: dict[str, Any], heartbeat_age_s: float, stale_after_s: float) -> str | None:
    """Why the lock of ``holder`` may be taken over, or None while it is live."""
    me = _this_holder()
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"] \
            and holder.get("slurm_restart_count") != me["slurm_restart_count"]:
        return f"it was taken by an earlier run of SLURM job {holder['slurm_job_id']}"
    if holder.get("host") == me["host"]:
        pid = int(holder.get("pid", -1))
        if pid == me["pid"] or not _pid_alive(pid):
            return f"PID {pid} is not running"
        ticks = _process_start_ticks(pid)
        if holder.get("pid_start_ticks") is not None and ticks is not None and ticks != holder["pid_start_ticks"]:
            return f"PID {pid} now belongs to another process"
        return None
    if heartbeat_age_s > stale_after_s:
        return f"its heartbeat is {heartbeat_age_s:.0f} s old (train.lock_stale_after_s={stale_after_s:g})"
    return None


def read_lock(path: Path) -> tuple[dict[str, Any], float] | None:
    """The holder record of the lock file ``path`` and its heartbeat age in seconds, or None if there is no lock."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    return _parse_holder(text), age


def live_holder(workdir: Path, stale_after_s: float) -> dict[str, Any] | None:
    """The holder record of ``workdir``'s lock while a live trainer holds it; None without a lock or with a
    stale one."""
    found = read_lock(Path(workdir).absolute() / LOCK_FILE)
    if found is None or why_stale(*found, stale_after_s) is not None:
        return None
    return found[0]


class WorkdirLock:
    """An exclusive, heartbeated lock file in a workdir; a context manager.

    Args:
      workdir: the directory (created if missing; inside the aum-jax checkout it gets a ``.gitignore``:
        :func:`aum_jax.core.workdir.keep_out_of_git`).
      heartbeat_s: seconds between touches of the lock file.
      stale_after_s: a lock from another host whose file was not touched for this long
        is stale.
    """

    def __init__(self, workdir: str | os.PathLike, heartbeat_s: float, stale_after_s: float):
        self.path = Path(workdir).absolute() / LOCK_FILE
        self._heartbeat_s = heartbeat_s
        self._stale_after_s = stale_after_s
        self._holder = _this_holder()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _write_exclusive(self) -> bool:
        """Creates the lock file with our holder record; False if it already exists."""
        staging = self.path.with_name(f".{LOCK_FILE}.{self._holder['host']}.{os.getpid()}")
        staging.write_text(json.dumps(self._holder, indent=1))
        try:
            os.link(staging, self.path)  # atomic, fails if the lock exists, content complete.
            return True
        except FileExistsError:
            return False
        finally:
            staging.unlink()

    def _read(self) -> tuple[dict[str, Any], float] | None:
        return read_lock(self.path)

    def acquire(self) -> None:
        """Takes the lock, or takes over a stale one.

        Raises:
          WorkdirInUseError: a live trainer holds it.
          WorkdirNotWritableError: the workdir is a file or cannot be written.
        """
        workdir = self.path.parent
        if workdir.exists() and not workdir.is_dir():
            raise WorkdirNotWritableError(f"workdir {workdir} is a file, not a folder; pass another --workdir")
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            self._take()
            workdir_lib.keep_out_of_git(workdir)
        except WorkdirError:
            raise
        except OSError as e:
            raise WorkdirNotWritableError(f"cannot write to workdir {workdir} ({e.strerror or e}); a finished "
                                          "workdir prints its results read-only, an unfinished one needs write "
                                          "access") from e
        self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
        self._thread.start()
        logging.info("Locked %s", workdir)

    def _take(self) -> None:
        """Creates the lock file, taking over a stale one; raises WorkdirInUseError for a live one."""
        while not self._write_exclusive():
            found = self._read()
            if found is None:
                continue  # released meanwhile.
            holder, age = found
            reason = why_stale(holder, age, self._stale_after_s)
            if reason is None:
                raise WorkdirInUseError(
                    f"workdir {self.path.parent} is in use by {describe_holder(holder)} "
                    f"(lock {self.path}, heartbeat {age:.0f} s ago); stop that run or use another --workdir"
                )
            # Move the stale lock aside under a unique name: of several takers, one wins.
            aside = self.path.with_name(f".{LOCK_FILE}.stale.{self._holder['host']}.{os.getpid()}")
            try:
                os.rename(self.path, aside)
            except FileNotFoundError:
                continue
            taken = _parse_holder(aside.read_text())
            if taken.get("pid") != holder.get("pid") or taken.get("host") != holder.get("host"):
                # Another taker won meanwhile and this is its fresh lock: put it back.
                with contextlib.suppress(FileExistsError):
                    os.link(aside, self.path)
                aside.unlink()
                continue
            aside.unlink()
            logging.warning("Taking over the lock of %s from %s: %s", self.path.parent, describe_holder(holder), reason)

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Stops the heartbeat and removes the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        found = self._read()
        if found is not None and found[0].get("pid") == os.getpid() and found[0].get("host") == self._holder["host"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_for_run(workdir: Path, heartbeat_s: float, stale_after_s: float) -> WorkdirLock | None:
    """Process 0 takes the run's lock (returned; None elsewhere); every process raises if it cannot be had.

    Raises:
      WorkdirError: the lock is held by a live trainer, or the workdir cannot be written.
    """
    lock, error = None, None
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir, heartbeat_s, stale_after_s)
        try:
            lock.acquire()
        except WorkdirError as e:
            lock, error = None, e
    if jax.process_count() > 1:
        failed = bool(multihost_utils.broadcast_one_to_all(np.array(error is not None)))
        if failed and error is None:
            raise WorkdirInUseError(f"workdir {workdir} cannot be locked (see the log of process 0)")
    if error is not None:
        raise error
    return lock
