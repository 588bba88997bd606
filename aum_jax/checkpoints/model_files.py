"""Saving and restoring AudioMamba models with orbax.

A model directory holds ``config.json`` (the ``AuMConfig``), ``params/`` (an orbax
checkpoint of the model's ``nnx.Param`` state), ``checksums.json`` (a SHA-256 of every
parameter) and, when known, ``preprocessing.json`` (features, statistics, class names and
loss; see :mod:`aum_jax.data.features.preprocessing`). It is written to a hidden sibling folder and
swapped with the old one in one step, so a kill never leaves a partial model, nor none.

Opening one (:func:`open_model_dir`) checks every field of its JSON files and the shapes of
its parameters before any model is built; loading (:func:`load_model`) then refuses, with
:class:`ModelDirectoryError` naming the file, parameters that cannot be read, are not
finite, or no longer match their checksums (a damaged file). A directory without
``checksums.json`` is refused unless ``verify=False``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from aum_jax.checkpoints import model_checks
from aum_jax.checkpoints.model_checks import (
    CHECKSUMS_FILE,
    CONFIG_FILE,
    PARAMS_DIR,
    PREPROCESSING_FILE,
    ModelDirectoryError,
)
from aum_jax.core import storage
from aum_jax.core import workdir as workdir_lib
from aum_jax.data.features import preprocessing as preprocessing_lib
from aum_jax.models import AudioMamba, AuMConfig, model_with_params, skeleton

# What a model directory holds: its parameters and JSON files (config, checksums, preprocessing, records).
MODEL_DIR_FILES = (PARAMS_DIR, "*.json")
# What a training workdir holds besides its model/ (aum_jax.core.workdir).
WORKDIR_MARKS = (workdir_lib.REPORT_FILE, workdir_lib.CHECKPOINT_DIR, workdir_lib.LOCK_FILE, workdir_lib.BEST_FILE)


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def save_model(
    model: AudioMamba,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    preprocessing: preprocessing_lib.Preprocessing | None = None,
    records: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``model`` (and its ``preprocessing``, and ``records``: ``{file name: JSON value}``
    written beside them) to ``directory`` atomically; returns its path.

    The files are written to a hidden sibling folder and swapped with any old ``directory``
    in one step (:func:`aum_jax.core.storage.replace_dir`): a kill at any moment leaves the
    old model or the new one. With several processes every one of them must call this
    (orbax writes the arrays collectively); process 0 writes the JSON files and swaps.
    """
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True to replace it.")
    primary = jax.process_index() == 0
    staging = directory.parent / f".{directory.name}.partial"  # one name: every process writes into it.
    if primary:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _sync("aum_jax.save_model.staged")
    params = nnx.state(model, nnx.Param)
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / PARAMS_DIR, params)
            checkpointer.wait_until_finished()
        _sync("aum_jax.save_model.written")
        if primary:
            (staging / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=1))
            (staging / CHECKSUMS_FILE).write_text(json.dumps({"sha256": model_checks.checksums(params)}, indent=1))
            if preprocessing is not None:
                save_preprocessing(preprocessing, staging)
            for name, value in (records or {}).items():
                (staging / name).write_text(json.dumps(value, indent=1))
            storage.replace_dir(staging, directory, MODEL_DIR_FILES)
    except Exception as e:
        if primary:
            shutil.rmtree(staging, ignore_errors=True)
        raise ModelDirectoryError(f"cannot write the model directory {directory}: {write_error_reason(e)}") from e
    except BaseException:
        if primary:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    _sync("aum_jax.save_model.done")
    logging.info("Saved %s model to %s", model.config.aum_type, directory)
    return directory


def write_error_reason(error: Exception) -> str:
    """What stopped orbax (or the OS) from writing, in a few words: "no space left on device", ..."""
    text = str(error)
    for code, reason in (("28", "no space left on device"), ("27", "file too large (a file size limit)"),
                         ("122", "disk quota exceeded"), ("30", "read-only file system")):
        if f"os_error_code='{code}'" in text or getattr(error, "errno", None) == int(code):
            return reason
    return text.splitlines()[0][:200] if text else type(error).__name__


def model_directory(path: str | os.PathLike) -> Path:
    """A model directory, or a training workdir's ``model/``.

    Raises:
      ModelDirectoryError: ``path`` does not exist, or is a training workdir without
        ``model/`` (a workdir has a ``config.json`` too, but no ``params/``).
    """
    path = Path(path).expanduser()
    for candidate in (path, path / workdir_lib.MODEL_DIR):
        if storage.recover_dir(candidate):  # a kill inside a replacement left the old model aside.
            logging.warning("Restored %s, which a replacement interrupted by a kill had left aside", candidate)
    if not path.exists():
        raise ModelDirectoryError(f"{path} does not exist: give an aum-jax model directory or a training workdir")
    if not path.is_dir() or (path / PARAMS_DIR).is_dir():
        return path
    inside = path / workdir_lib.MODEL_DIR
    if (inside / CONFIG_FILE).is_file():
        return inside
    if any((path / name).exists() for name in WORKDIR_MARKS):
        raise ModelDirectoryError(f"{path} is a training workdir with no {workdir_lib.MODEL_DIR}/: training has not "
                                  "saved a model there yet (--mode=eval evaluates its newest checkpoint)")
    return path


def save_preprocessing(preprocessing: preprocessing_lib.Preprocessing, directory: str | os.PathLike) -> None:
    """Writes ``directory/preprocessing.json`` (into a model directory being staged: :func:`save_model`)."""
    (Path(directory) / PREPROCESSING_FILE).write_text(json.dumps(preprocessing.to_dict(), indent=1))


def load_input_features(directory: str | os.PathLike) -> preprocessing_lib.Preprocessing:
    """The preprocessing of a model directory that must say how its inputs are made: features and statistics.

    Raises:
      ModelDirectoryError: no (or a bad) ``preprocessing.json``.
      MissingStatisticsError: it has no normalisation statistics.
    """
    prep = load_preprocessing(directory)
    if prep is None:
        raise ModelDirectoryError(f"{directory} has no {PREPROCESSING_FILE}: its input features are unknown")
    prep.require_statistics(str(directory))
    return prep


def load_preprocessing(directory: str | os.PathLike) -> preprocessing_lib.Preprocessing | None:
    """The preprocessing stored in a model directory, or None for a model without one.

    Raises:
      ModelDirectoryError: a ``preprocessing.json`` that is no JSON object, or a field that is
        unknown, missing, or of the wrong type or range (named).
    """
    path = Path(directory) / PREPROCESSING_FILE
    if not path.is_file():
        return None
    values = model_checks.read_json_object(path)
    try:
        return preprocessing_lib.Preprocessing.from_dict(values)
    except (ValueError, TypeError) as e:
        raise ModelDirectoryError(f"{path}: {e}") from e


def load_config(directory: str | os.PathLike) -> AuMConfig:
    """Reads and checks the ``AuMConfig`` of a model directory (types and ranges of every field).

    Raises:
      ModelDirectoryError: no ``config.json``, or one that is not a valid config (the field named).
    """
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise ModelDirectoryError(f"{path} not found: {directory} is not an aum-jax model directory")
    try:
        return AuMConfig.from_dict(model_checks.read_json_object(path))
    except (ValueError, TypeError) as e:
        if isinstance(e, ModelDirectoryError):
            raise
        raise ModelDirectoryError(f"{path} is not a valid model config: {e}") from e


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """The checked files of a model directory, before any model is built.

    Attributes:
      path: the model directory.
      config: its ``config.json``.
      preprocessing: its ``preprocessing.json``, or None when it has none.
      checksums: ``{"a/b": sha256}`` of ``checksums.json``; None when not verified.
    """

    path: Path
    config: AuMConfig
    preprocessing: preprocessing_lib.Preprocessing | None
    checksums: dict[str, str] | None


def open_model_dir(path: str | os.PathLike, *, verify: bool = True) -> ModelFiles:
    """Reads and checks every file of a model directory (or a workdir's ``model/``) without building a model.

    Checked: each field of ``config.json`` and ``preprocessing.json`` (type and range), that
    they agree (mel bins, frames, one name per class), that the stored parameters' shapes are
    those ``config.json`` builds (from the arrays' metadata, so a hostile size is refused at
    once), and ``checksums.json``, which must exist unless ``verify`` is False (then one
    warning says the parameters are not checked for damage).

    Raises:
      ModelDirectoryError: the first problem found, naming the file and the field.
    """
    directory = model_directory(path).absolute()
    config = load_config(directory)
    try:
        prep = load_preprocessing(directory)
    except ValueError as e:
        raise ModelDirectoryError(str(e)) from e
    if prep is not None:
        model_checks.check_preprocessing(prep, config, directory)
    stored = model_checks.param_metadata(directory / PARAMS_DIR)
    model_checks.check_fits(stored, config, directory)
    checksums = None
    if verify:
        if not (directory / CHECKSUMS_FILE).is_file():
            raise ModelDirectoryError(f"{directory} has no {CHECKSUMS_FILE}, so damage to its parameters cannot be "
                                      "detected; --no-verify (config.init.verify=False to fine-tune) loads it anyway")
        checksums = model_checks.read_checksums(directory, set(stored))
    else:
        logging.warning("%s is loaded without checking its parameters against %s (--no-verify)", directory,
                        CHECKSUMS_FILE)
    return ModelFiles(directory, config, prep, checksums)


def load_model(directory: str | os.PathLike, *, verify: bool = True, **config_overrides) -> AudioMamba:
    """Restores a model saved by ``save_model``, checking what it reads (:func:`open_model_dir`, then the values).

    The parameters are read into the model's abstract shapes (``models.skeleton``): no initialiser
    runs and the model holds the arrays read (``models.model_with_params``), so the process holds one
    copy of the weights.

    ``config_overrides`` may change fields that do not touch the parameters, such as
    ``scan_impl`` or ``drop_path_rate``.

    Raises:
      ModelDirectoryError: a missing or damaged directory, or a config that does not fit the parameters.
    """
    files = open_model_dir(directory, verify=verify)
    try:
        config = files.config.replace(**config_overrides)
    except (TypeError, ValueError) as e:
        raise ModelDirectoryError(f"{files.path}: {e}") from e
    abstract = skeleton(config).params
    params_dir = files.path / PARAMS_DIR
    # Read as host arrays, then placed on the device: a CPU device takes them without a copy, where orbax's
    # restore into device arrays holds a second copy of every array while it reads (a peak of twice the weights).
    as_host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract)
    with ocp.PyTreeCheckpointer() as checkpointer:
        try:
            params = checkpointer.restore(params_dir, args=ocp.args.PyTreeRestore(item=abstract, restore_args=as_host))
        except Exception as e:  # noqa: BLE001 - any reader failure: the directory is damaged.
            raise ModelDirectoryError(f"{params_dir} is damaged (a truncated or overwritten file?): "
                                      f"{model_checks.read_error_reason(e)}") from e
    model_checks.check_values(params, files.path, files.checksums)
    return model_with_params(config, jax.device_put(params, jax.local_devices()[0]))
