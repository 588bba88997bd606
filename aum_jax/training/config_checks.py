"""Checks of a job's config values, made before the job writes anything.

Each mistake is a :class:`ConfigError` whose message names the config key, so the command
line ends with one ``error:`` line instead of a traceback from deep inside the run.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

import ml_collections

from aum_jax.checkpoints import convert, model_files, pretrained
from aum_jax.core import sharding, storage
from aum_jax.core import workdir as workdir_lib
from aum_jax.core.errors import UserError
from aum_jax.data.pipeline import clip_stages
from aum_jax.data.sources import folder_layout, registry
from aum_jax.data.sources.base import lookup
from aum_jax.data.sources.folder import FolderSource
from aum_jax.evaluation import evaluate
from aum_jax.models import AuMConfig
from aum_jax.training import objectives


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names its key."""


def check(config: ml_collections.ConfigDict, mode: str) -> None:
    """Raises :class:`ConfigError` for the first value of ``config`` that ``mode`` ("train", "eval") cannot use.

    Checked: positive batch sizes and step counts, the metric that picks the best model (one
    that evaluation reports), the training objective (a registered one, and its own settings), the fine-tuning
    source (it exists; a model directory's files are valid), the share of labelled clips in training and that of
    bad clips allowed, the model's settings
    (``AuMConfig``), the data's feature and augmentation settings, the extra test splits (:func:`_check_extra_splits`),
    and that the devices of the mesh divide the batches.
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
    _check_extra_splits(config)
    if mode == "eval" and not evaluated_splits(config):
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
    if mode == "train" and not 0.0 < data.label_fraction <= 1.0:
        raise ConfigError(f"config.data.label_fraction={data.label_fraction}: must be in (0, 1], the share of the "
                          "training clips that keep their labels")
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
    if mode == "train":
        _check_haystack(config)
    try:
        mesh = sharding.make_mesh(config.mesh)
        if mode == "train":
            sharding.check_batch_size(data.batch_size, mesh, "data.batch_size")
        sharding.check_batch_size(data.eval_batch_size, mesh, "data.eval_batch_size")
    except ValueError as e:
        raise ConfigError(f"config.{e}") from e


def evaluated_splits(config: ml_collections.ConfigDict) -> list[str]:
    """The splits a run evaluates, in order: ``config.eval.split``, ``test_split``, then each of
    ``extra_test_splits``; the empty ones left out."""
    evaluation = config.eval
    return [s for s in (evaluation.split, evaluation.test_split, *evaluation.get("extra_test_splits", ())) if s]


def _check_extra_splits(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigError` for an extra test split (``config.eval.extra_test_splits``) that is empty,
    repeats another evaluated split, or that the data source cannot read: its ``config.data`` key (the
    datafile source's ``<split>_datafile``) missing or empty, or a folder source's split other than its three."""
    extra = tuple(config.eval.get("extra_test_splits", ()))
    if not extra:
        return
    named, kind = f"config.eval.extra_test_splits={extra}", registry.kind_of(config.data)
    seen = [config.eval.split, config.eval.test_split]
    for split in extra:
        if not split:
            raise ConfigError(f"{named}: an empty split name; name each split to evaluate")
        if split in seen:
            raise ConfigError(f"{named}: {split!r} is evaluated already (config.eval.split, config.eval.test_split "
                              "or an earlier extra split); name each split once")
        seen.append(split)
        key, what = kind.split_key(split), f"the {kind.split_what} of the split {split!r}"
        if kind is FolderSource and split not in folder_layout.SPLITS:
            raise ConfigError(f"{named}: a folder source has no split {split!r}, only {', '.join(folder_layout.SPLITS)}")
        if lookup(config.data, key) is None:
            raise ConfigError(f"{named}: config.data has no key {key}, {what}; add it to the config file")
        if not lookup(config.data, key):
            raise ConfigError(f"{named}: config.data.{key}, {what}, is empty; set it")


def _check_haystack(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigError` for haystack settings the end of a run cannot use (``config.eval.haystack_*``)."""
    evaluation = config.eval
    seconds = tuple(evaluation.get("haystack_seconds") or ())
    if not seconds:
        return
    if not all(isinstance(s, (int, float)) and s >= 1 for s in seconds):
        raise ConfigError(f"config.eval.haystack_seconds={seconds}: lengths of at least 1 s (a needle is 1 s) wanted")
    if evaluation.haystack_placements < 1:
        raise ConfigError(f"config.eval.haystack_placements={evaluation.haystack_placements}: must be positive")
    from_demo = config.get("demo") and config.demo.generate and config.demo.get("kind") == "stretches"
    if not evaluation.haystack_clips and not from_demo:
        raise ConfigError("config.eval.haystack_seconds is set but config.eval.haystack_clips is empty: point it at a "
                          "folder of needle clips in the demo dataset's layout (eval.json, class_labels_indices.csv)")


def _check_metric(metric: str) -> None:
    """Raises :class:`ConfigError` unless ``metric`` is one of :data:`aum_jax.evaluation.evaluate.METRIC_DIRECTIONS`."""
    if metric in evaluate.METRIC_DIRECTIONS:
        return
    close = difflib.get_close_matches(str(metric), evaluate.METRIC_DIRECTIONS, n=1)
    raise ConfigError(f"config.train.metric={metric!r} is no metric evaluation reports; choose from "
                      f"{', '.join(evaluate.METRIC_DIRECTIONS)}" + (f' (did you mean "{close[0]}"?)' if close else ""))


def check_workdir(workdir: Path) -> None:
    """Refuses a ``--workdir`` a run may not write in: a file, or a folder that is not an aum-jax workdir.

    A missing or empty folder is fine, and so is a workdir of an earlier run (resuming is normal): a
    folder whose every entry is one a run writes (:data:`aum_jax.core.workdir.OWN`), its ``config.json``
    a run's config, its ``labels.csv`` beside a folder source's record and its ``model/`` a model directory's
    files. Anything else may be the user's, which a run must never replace: the folder is refused.

    Raises:
      ConfigError: ``workdir`` is a file.
      OutputExistsError: a folder holding what no run wrote, naming (up to three of) them.
    """
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir} is a file, not a folder; pass another --workdir")
    if not workdir.is_dir():
        return
    try:
        foreign = storage.foreign_entries(workdir, workdir_lib.OWN)
        foreign += [name for name, ours in ((workdir_lib.CONFIG_FILE, _is_run_config),
                                            (workdir_lib.FOLDER_LABELS_FILE, _beside_folder_record),
                                            (workdir_lib.MODEL_DIR, _is_model_dir),
                                            (workdir_lib.GITIGNORE_FILE, _is_our_gitignore))
                    if os.path.lexists(workdir / name) and not ours(workdir / name)]
    except OSError as e:
        raise workdir_lib.WorkdirNotWritableError(f"--workdir {workdir} cannot be read ({e.strerror or e})") from e
    if foreign:
        foreign = sorted(foreign)
        raise storage.OutputExistsError(
            f"--workdir {workdir} holds files no aum-jax run wrote ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}); name a new or empty folder, or the workdir of a run to resume it")


def _is_run_config(path: Path) -> bool:
    """Whether ``path`` is a run's ``config.json``: a JSON object with the sections every config has."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, IsADirectoryError):
        return False
    return isinstance(config, dict) and {"data", "model", "train"} <= set(config)


def _beside_folder_record(path: Path) -> bool:
    """Whether ``path`` (a ``labels.csv``) is a folder source's: its record lies beside it."""
    return path.is_file() and (path.parent / workdir_lib.FOLDER_RECORD_FILE).is_file()


def _is_model_dir(path: Path) -> bool:
    """Whether ``path`` (``model/``) holds only what a model directory holds."""
    return path.is_dir() and not storage.foreign_entries(path, model_files.MODEL_DIR_FILES)


def _is_our_gitignore(path: Path) -> bool:
    """Whether ``path`` is the ``.gitignore`` a run writes (:func:`aum_jax.core.workdir.keep_out_of_git`)."""
    return path.is_file() and path.read_text(encoding="utf-8", errors="replace") == workdir_lib.GITIGNORE_TEXT
