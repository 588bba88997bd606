"""Checks of a job's config values, made before the job writes anything.

Each mistake is a :class:`ConfigError` whose message names the config key, so the command
line ends with one ``error:`` line instead of a traceback from deep inside the run.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import ml_collections

from aum_jax.checkpoints import convert, pretrained
from aum_jax.core import sharding
from aum_jax.core.errors import UserError
from aum_jax.data.pipeline import clip_stages
from aum_jax.evaluation import evaluate
from aum_jax.models import AuMConfig
from aum_jax.training import objectives


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names its key."""


def check(config: ml_collections.ConfigDict, mode: str) -> None:
    """Raises :class:`ConfigError` for the first value of ``config`` that ``mode`` ("train", "eval") cannot use.

    Checked: positive batch sizes and step counts, the metric that picks the best model (one
    that evaluation reports), the training objective (a registered one, and its own settings), the fine-tuning
    source (it exists; a model directory's files are valid), the share of bad clips allowed, the model's settings
    (``AuMConfig``), the data's feature and augmentation settings, and that the devices of the
    mesh divide the batches.
    """
    data, train = config.data, config.train
    positive = {"data.batch_size": data.batch_size, "data.eval_batch_size": data.eval_batch_size,
                "data.sample_rate": data.sample_rate}
    if mode == "eval" or train.objective not in objectives.OBJECTIVES or objectives.get(train.objective).uses_labels:
        positive["data.num_classes"] = data.num_classes
    if mode == "train":
        positive["train.num_steps or train.num_epochs"] = max(train.num_steps, train.num_epochs)
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config.{key}={value}: must be positive")
    if mode == "eval" and not (config.eval.split or config.eval.test_split):
        raise ConfigError("--mode=eval: config.eval.split and config.eval.test_split are both empty, so no split is "
                          "evaluated (a pretraining config has none: evaluate with a fine-tuning recipe's config)")
    if mode == "train":
        _check_metric(train.metric)
        if train.objective not in objectives.OBJECTIVES:
            raise ConfigError(f"config.train.objective={train.objective!r} is no training objective; choose from "
                              f"{', '.join(objectives.OBJECTIVES)}")
        try:
            pretrained.check_source(config.init)
        except convert.CheckpointError as e:
            raise ConfigError(str(e)) from e
    if not 0.0 <= data.max_bad_fraction <= 1.0:
        raise ConfigError(f"config.data.max_bad_fraction={data.max_bad_fraction}: must be in [0, 1]")
    try:
        model = AuMConfig.from_dict(config.model.to_dict())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"config.model.{e}") from e
    if mode == "train":
        try:
            objectives.get(train.objective).settings(config, model)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    try:
        clip_stages.check(data, train=mode == "train")
    except ValueError as e:
        raise ConfigError(f"config.data: {e}") from e
    try:
        mesh = sharding.make_mesh(config.mesh)
        if mode == "train":
            sharding.check_batch_size(data.batch_size, mesh, "data.batch_size")
        sharding.check_batch_size(data.eval_batch_size, mesh, "data.eval_batch_size")
    except ValueError as e:
        raise ConfigError(f"config.{e}") from e


def _check_metric(metric: str) -> None:
    """Raises :class:`ConfigError` unless ``metric`` is one of :data:`aum_jax.evaluation.evaluate.METRIC_DIRECTIONS`."""
    if metric in evaluate.METRIC_DIRECTIONS:
        return
    close = difflib.get_close_matches(str(metric), evaluate.METRIC_DIRECTIONS, n=1)
    raise ConfigError(f"config.train.metric={metric!r} is no metric evaluation reports; choose from "
                      f"{', '.join(evaluate.METRIC_DIRECTIONS)}" + (f' (did you mean "{close[0]}"?)' if close else ""))


def check_workdir(workdir: Path) -> None:
    """Raises :class:`ConfigError` for a ``--workdir`` that is a file."""
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a folder; pass another --workdir")
