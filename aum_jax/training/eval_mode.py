"""``--mode=eval``: a workdir's model evaluated on the configured splits, with its reports.

The model is ``config.eval.model_dir``, else ``workdir/model``, else the newest readable
training checkpoint in ``workdir/checkpoints``. Each of ``config.eval.split`` and
``config.eval.test_split`` gets ``workdir/eval_<split>.json`` and, with
``config.eval.confusion_matrix``, its confusion matrix from the same pass
(:mod:`aum_jax.evaluation.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ml_collections
from absl import logging
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.core import sharding
from aum_jax.core import workdir as workdir_lib
from aum_jax.data.sources import labels
from aum_jax.evaluation import evaluate, report
from aum_jax.models import AudioMamba
from aum_jax.training import run_checkpoints


def latest_checkpoint_model(config: ml_collections.ConfigDict, workdir: Path) -> AudioMamba | None:
    """The model of the newest readable training checkpoint in ``workdir``, or None."""
    model, step = run_checkpoints.restore_model(config, workdir)
    if not step:
        return None
    logging.info("Evaluating the training checkpoint of step %d", step)
    return model


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, dict[str, Any]]:
    """Evaluates a model directory or the newest checkpoint; writes ``workdir/eval_<split>.json``.

    Returns:
      ``{split: {"model", "split", **metrics}}`` for each evaluated split.

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
    else:
        model, source = latest_checkpoint_model(config, workdir), str(workdir / workdir_lib.CHECKPOINT_DIR)
        if model is None:
            raise model_files.ModelDirectoryError(f"no model in {model_dir} and no checkpoint in {workdir}")
    mesh = sharding.make_mesh(config.mesh)
    nnx.update(model, sharding.replicate(nnx.state(model), mesh))
    names = labels.training_preprocessing(config).class_names
    reports = {}
    for split in filter(None, (config.eval.split, config.eval.test_split)):
        result, outputs = evaluate.evaluate_split(model, config.data, split, mesh, config.train.loss,
                                                  config.eval.matmul_precision)
        logging.info("%s on %s: %s", source, split, result)
        reports[split] = {"model": source, "split": split, **result}
        try:
            report.write_report(workdir / workdir_lib.eval_report_file(split), reports[split])
            if config.eval.confusion_matrix:
                report.save_confusion(outputs, names, workdir, split)
        except OSError as e:
            raise workdir_lib.WorkdirNotWritableError(f"cannot write the {split} report in {workdir}: {e}") from e
    return reports
