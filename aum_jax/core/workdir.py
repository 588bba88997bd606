"""A training workdir: the names of what it holds, and the errors of one a run cannot use.

    WORKDIR/
      lock.json          held by the running trainer (host, PID, start time, heartbeat; aum_jax.training.workdir_lock)
      config.json        the config of the latest start
      checkpoints/<step> training checkpoints (model, optimizer, input position)
      checkpoints/corrupt/<step>   checkpoints that failed to read, moved aside
      checkpoints/diverged/<step>  checkpoints from a divergence on, moved aside
      model/             the best evaluated model (``aum_jax.checkpoints.model_files.load_model``)
      best.json          its metrics
      report.json        the run's final report
      events.out.tfevents.*        TensorBoard scalars
      confusion_<split>.json/.png  the confusion matrix of the best model (``config.eval.confusion_matrix``)
      haystack.json      the best model's needles found in long noise (``config.eval.haystack_seconds``)
      diverged.json      written when a run stops on divergence; a restart reads it
      diverged_at_<step>.json      a ``diverged.json`` that a restart with changed settings went past
      eval_<split>.json  written by ``--mode=eval``
      folder_data.json, labels.csv a folder source's classes, input length and statistics
                                   (``aum_jax.data.sources.folder_setup``)
      .gitignore         ``*``: written into a workdir inside the aum-jax checkout (:func:`checkout_holding`)
                         that its own ``.gitignore`` does not cover, so ``git status`` stays clean

plus the hidden staging names of atomic writes (``.<name>.partial.<pid>``, ``.<name>.previous``:
:mod:`aum_jax.core.storage`; ``.lock.json.*``). :data:`OWN` lists them as patterns: a folder
holding anything else is not a workdir and a run refuses it (``aum_jax.training.config_checks.check_workdir``).
"""

from __future__ import annotations

from pathlib import Path

from aum_jax.core import storage
from aum_jax.core.errors import UserError

LOCK_FILE = "lock.json"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt"  # inside CHECKPOINT_DIR.
MODEL_DIR = "model"
BEST_FILE = "best.json"
REPORT_FILE = "report.json"
HAYSTACK_FILE = "haystack.json"
DIVERGED_FILE = "diverged.json"
GITIGNORE_FILE = ".gitignore"
GITIGNORE_TEXT = "# written by aum-jax: a training workdir inside the source checkout.\n*\n"
FOLDER_RECORD_FILE, FOLDER_LABELS_FILE = "folder_data.json", "labels.csv"  # folder_setup's RECORD_FILE, LABELS_FILE.
# The file-name patterns of everything a run writes in its workdir (the module docstring).
OWN = (LOCK_FILE, f".{LOCK_FILE}.*", CONFIG_FILE, CHECKPOINT_DIR, MODEL_DIR, BEST_FILE, REPORT_FILE, HAYSTACK_FILE,
       DIVERGED_FILE,
       "diverged_at_*.json", "eval_*.json", "confusion_*.json", "confusion_*.png", "events.out.tfevents.*",
       FOLDER_RECORD_FILE, FOLDER_LABELS_FILE, GITIGNORE_FILE, ".*.partial.*", ".*.previous")
# Folders of the checkout that its .gitignore keeps out of git status (README's runs/, and workdir/).
IGNORED_IN_CHECKOUT = ("runs", "workdir")


def eval_report_file(split: str) -> str:
    """The file ``--mode=eval`` writes the metrics of ``split`` to."""
    return f"eval_{split}.json"


def checkout_holding(workdir: Path) -> Path | None:
    """The aum-jax git checkout (the folder holding this package and ``.git``) that ``workdir`` lies in
    outside the folders its ``.gitignore`` covers (:data:`IGNORED_IN_CHECKOUT`), or None."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None  # an installed package: no checkout.
    resolved = workdir.resolve()
    if not resolved.is_relative_to(root) or any(resolved.is_relative_to(root / name) for name in IGNORED_IN_CHECKOUT):
        return None
    return root


def keep_out_of_git(workdir: Path) -> None:
    """Writes ``workdir/.gitignore`` (``*``) when ``workdir`` lies in the checkout (:func:`checkout_holding`)
    and has none: git then shows none of the run's files."""
    path = workdir / GITIGNORE_FILE
    if checkout_holding(workdir) is not None and not path.exists():
        storage.write_text(path, GITIGNORE_TEXT)


class WorkdirError(UserError, RuntimeError):
    """A workdir that this run cannot use."""


class WorkdirNotWritableError(WorkdirError):
    """The workdir is a file, or a folder this process cannot write to."""
