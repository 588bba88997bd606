"""A training workdir: the names of what it holds, and the errors of one a run cannot use.

    WORKDIR/
      lock.json          held by the running trainer (host, PID, start time, heartbeat; aum_jax.training.workdir_lock)
      config.json        the config of the latest start
      checkpoints/<step> training checkpoints (model, optimizer, input position)
      checkpoints/corrupt/<step>   checkpoints that failed to read, moved aside
      model/             the best evaluated model (``aum_jax.checkpoints.model_files.load_model``)
      best.json          its metrics
      report.json        the run's final report
      diverged.json      written when a run stops on divergence; a restart reads it
      eval_<split>.json  written by ``--mode=eval``
"""

from __future__ import annotations

from aum_jax.core.errors import UserError

LOCK_FILE = "lock.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt"  # inside CHECKPOINT_DIR.
MODEL_DIR = "model"
BEST_FILE = "best.json"
REPORT_FILE = "report.json"
DIVERGED_FILE = "diverged.json"


def eval_report_file(split: str) -> str:
    """The file ``--mode=eval`` writes the metrics of ``split`` to."""
    return f"eval_{split}.json"


class WorkdirError(UserError, RuntimeError):
    """A workdir that this run cannot use."""


class WorkdirNotWritableError(WorkdirError):
    """The workdir is a file, or a folder this process cannot write to."""
