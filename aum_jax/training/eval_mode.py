"""``--mode=eval``: a workdir's model evaluated on the configured splits, with its reports.

The model is ``config.eval.model_dir``, else ``workdir/model``, else the newest readable
training checkpoint in ``workdir/checkpoints``; a console line names it and its step (that of
``best.json``, else ``report.json``, for ``workdir/model``; the checkpoint's), and each report
carries them. Each of ``config.eval.split``, ``config.eval.test_split`` and ``config.eval.extra_test_splits``
gets ``workdir/eval_<split>.json`` and, with ``config.eval.confusion_matrix``, its confusion matrix
from the same pass (:mod:`aum_jax.evaluation.report`).

A workdir that a live trainer holds (its ``lock.json``, :mod:`aum_jax.training.workdir_lock`) is
refused (:func:`check_not_training`) rather than evaluated on the side: the trainer replaces
``model/`` and deletes old checkpoints while they would be read, reports written beside it would
describe a model that is already gone, and on an accelerator both would share its memory. The
trainer evaluates ``config.eval.split`` itself and prints its results when it ends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
from absl import logging
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.core import logs, sharding, storage
from aum_jax.core import workdir as workdir_lib
from aum_jax.data.sources import labels
from aum_jax.evaluation import evaluate, report
from aum_jax.training import config_checks, run_checkpoints, workdir_lock


class WorkdirTrainingError(workdir_lib.WorkdirError):
    """``--mode=eval`` on a workdir that a live trainer holds."""


def check_not_training(workdir: Path, stale_after_s: float) -> None:
    """Refuses a ``workdir`` whose lock a live trainer holds (see the module docstring).

    Raises:
      WorkdirTrainingError: naming the trainer (host, PID, start) and the lock file.
    """
    holder = workdir_lock.live_holder(workdir, stale_after_s)
    if holder is not None:
        raise WorkdirTrainingError(
            f"workdir {workdir} is being trained by {workdir_lock.describe_holder(holder)} (lock "
            f"{workdir / workdir_lib.LOCK_FILE}): --mode=eval would read a model and checkpoints that the trainer is "
            "replacing; wait for it to finish (it evaluates config.eval.split itself) or stop it")


def _model_step(workdir: Path) -> int | None:
    """The step of ``workdir/model``: that of ``best.json``, else (a run without evaluation) of ``report.json``."""
    for name in (workdir_lib.BEST_FILE, workdir_lib.REPORT_FILE):
        record = storage.read_json(workdir / name)
        if record is not None:
            return record.get("step")
    return None


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, dict[str, Any]]:
    """Evaluates a model directory or the newest checkpoint; writes ``workdir/eval_<split>.json``.

    Returns:
      ``{split: {"model", "step", "split", **metrics}}`` for each evaluated split (``step`` None when unknown:
      a ``config.eval.model_dir``).

    Raises:
      ModelDirectoryError: ``config.eval.model_dir`` is no model directory, or the workdir has
        neither a model nor a checkpoint.
      WorkdirNotWritableError: a report cannot be written.
    """
    if config.eval.model_dir and not (Path(config.eval.model_dir) / model_files.CONFIG_FILE).is_file():
        raise model_files.ModelDirectoryError(f"config.eval.model_dir={config.eval.model_dir} is not an aum-jax "
                                              "model directory")
    model_dir = Path(config.eval.model_dir or workdir / workdir_lib.MODEL_DIR)
    if (model_dir / model_files.CONFIG_FILE).is_file():
        model, source = model_files.load_model(model_dir), str(model_dir)
        step = None if config.eval.model_dir else _model_step(workdir)
    else:
        checkpoints = workdir / workdir_lib.CHECKPOINT_DIR
        model, step = run_checkpoints.restore_model(config, workdir) if checkpoints.is_dir() else (None, 0)
        if not step:
            raise model_files.ModelDirectoryError(f"no model in {model_dir} and no checkpoint in {workdir}")
        source = str(checkpoints)
    logs.line(f"Evaluating {source}" + (f" (step {step})" if step is not None else ""))
    mesh = sharding.make_mesh(config.mesh)
    nnx.update(model, sharding.replicate(nnx.state(model), mesh))
    names = labels.training_preprocessing(config).class_names
    reports = {}
    for split in config_checks.evaluated_splits(config):
        result, outputs = evaluate.evaluate_split(model, config.data, split, mesh, config.train.loss,
                                                  config.eval.matmul_precision)
        logging.info("%s on %s: %s", source, split, result)
        reports[split] = {"model": source, "step": step, "split": split, **result}
        try:
            workdir_lib.keep_out_of_git(workdir)
            report.write_report(workdir / workdir_lib.eval_report_file(split), reports[split])
            if config.eval.confusion_matrix:
                report.save_confusion(outputs, names, workdir, split)
        except OSError as e:
            raise workdir_lib.WorkdirNotWritableError(f"cannot write the {split} report in {workdir}: {e}") from e
    return reports
