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
import hashlib
import json
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from aum_jax.core import storage
from aum_jax.core import workdir as workdir_lib
from aum_jax.core.errors import UserError
from aum_jax.data.features import preprocessing as preprocessing_lib
from aum_jax.models import AudioMamba, AuMConfig, model_with_params

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CHECKSUMS_FILE = "checksums.json"
PREPROCESSING_FILE = "preprocessing.json"  # the input features and the meaning of the logits.
STACKED_PREFIX = "layers/"  # the blocks' parameters, stacked along a leading depth axis.
# What a model directory holds: its parameters and JSON files (config, checksums, preprocessing, records).
MODEL_DIR_FILES = (PARAMS_DIR, "*.json")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# What a training workdir holds besides its model/ (aum_jax.core.workdir).
WORKDIR_MARKS = (workdir_lib.REPORT_FILE, workdir_lib.CHECKPOINT_DIR, workdir_lib.LOCK_FILE, workdir_lib.BEST_FILE)


class ModelDirectoryError(UserError, ValueError):
    """A model directory that is missing, damaged, or whose config does not fit its parameters."""


def _flat(tree: Any) -> dict[str, Any]:
    """A parameter state, or orbax's metadata tree of one (``{..: {"value": meta}}``), as ``{"a/b": leaf}``."""
    pure = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree
    flat = traverse_util.flatten_dict(pure)
    return {"/".join(map(str, k[:-1] if k[-1] == "value" else k)): v for k, v in flat.items()}


def _checksums(params: nnx.State) -> dict[str, str]:
    """SHA-256 of each parameter's bytes, by its path."""
    return {k: hashlib.sha256(np.ascontiguousarray(np.asarray(v)).tobytes()).hexdigest()
            for k, v in sorted(_flat(params).items())}


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def checksums_digest(directory: str | os.PathLike) -> str | None:
    """The SHA-256 hex of a model directory's ``checksums.json`` (what names its parameters), or None without one."""
    path = Path(directory) / CHECKSUMS_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


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
            (staging / CHECKSUMS_FILE).write_text(json.dumps({"sha256": _checksums(params)}, indent=1))
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


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ModelDirectoryError naming the file when it is not one."""
    try:
        values = storage.read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirectoryError(f"{path} is not a readable JSON file: {e}") from e
    if not isinstance(values, dict):
        raise ModelDirectoryError(f"{path} must hold a JSON object, not {type(values).__name__}")
    return values


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
    values = _read_json_object(path)
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
        return AuMConfig.from_dict(_read_json_object(path))
    except (ValueError, TypeError) as e:
        if isinstance(e, ModelDirectoryError):
            raise
        raise ModelDirectoryError(f"{path} is not a valid model config: {e}") from e


def _param_metadata(params_dir: Path) -> dict[str, Any]:
    """``{"a/b": array metadata}`` of a saved parameter state, read without reading the arrays."""
    if not params_dir.is_dir():
        raise ModelDirectoryError(f"{params_dir} not found: the model directory has no parameters")
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            metadata = checkpointer.metadata(params_dir)
        except Exception as e:  # noqa: BLE001 - any reader failure: the directory is damaged.
            raise ModelDirectoryError(f"{params_dir} cannot be read: {read_error_reason(e)}") from e
    if metadata is None or getattr(metadata, "item_metadata", None) is None:
        raise ModelDirectoryError(f"{params_dir} is damaged: its metadata ({params_dir / '_METADATA'}) is missing "
                                  "or unreadable")
    return _flat(metadata.item_metadata.tree)


def expected_shapes(config: AuMConfig) -> dict[str, tuple[int, ...]]:
    """``{"a/b": shape}`` of the parameters ``config`` builds, computed abstractly and in
    time independent of the depth (one block is traced; the stack adds a leading ``depth`` axis)."""
    one_block = nnx.eval_shape(lambda: AudioMamba(config.replace(depth=1), rngs=nnx.Rngs(0)))
    shapes = {k: tuple(v.shape) for k, v in _flat(nnx.state(one_block, nnx.Param)).items()}
    return {k: (config.depth, *shape[1:]) if k.startswith(STACKED_PREFIX) else shape for k, shape in shapes.items()}


def _check_fits(stored: dict[str, Any], config: AuMConfig, directory: Path) -> None:
    """Raises ModelDirectoryError for parameters whose presence, shape or dtype differs from ``config.json``'s model."""
    wanted = expected_shapes(config)
    problems = [f"{k} missing" for k in wanted if k not in stored]
    problems += [f"{k} not in the model" for k in stored if k not in wanted]
    problems += [f"{k} is {tuple(stored[k].shape)} in {PARAMS_DIR}/, {shape} by {CONFIG_FILE}"
                 for k, shape in wanted.items() if k in stored and tuple(stored[k].shape) != shape]
    if problems:
        raise ModelDirectoryError(f"{directory / CONFIG_FILE} does not fit {directory / PARAMS_DIR}: "
                                  f"{'; '.join(problems[:5])}" + (" ..." if len(problems) > 5 else "")
                                  + " (was config.json edited, or copied from another model?)")
    not_float = [f"{k} ({m.dtype})" for k, m in stored.items() if not jax.dtypes.issubdtype(m.dtype, np.floating)]
    if not_float:
        raise ModelDirectoryError(f"{directory / PARAMS_DIR}: parameters that are not floating point: "
                                  + ", ".join(not_float[:5]))


def _read_checksums(directory: Path, names: set[str]) -> dict[str, str]:
    """``{"a/b": sha256 hex}`` of ``checksums.json``, checked to name exactly the parameters ``names``."""
    path = directory / CHECKSUMS_FILE
    values = _read_json_object(path)
    digests = values.get("sha256")
    if set(values) != {"sha256"} or not isinstance(digests, dict):
        raise ModelDirectoryError(f"{path}: expected {{\"sha256\": {{parameter: digest}}}}, found the keys "
                                  f"{sorted(values)}")
    malformed = [k for k, v in digests.items() if not (isinstance(v, str) and SHA256_HEX.fullmatch(v))]
    if malformed:
        raise ModelDirectoryError(f"{path}: field sha256.{malformed[0]} is not a SHA-256 hex digest")
    missing, extra = sorted(names - set(digests)), sorted(set(digests) - names)
    if missing or extra:
        raise ModelDirectoryError(f"{path} does not list the parameters of {directory / PARAMS_DIR}: "
                                  + "; ".join(filter(None, (missing and f"missing {', '.join(missing[:3])}",
                                                            extra and f"unknown {', '.join(extra[:3])}"))))
    return digests


def _check_preprocessing(prep: preprocessing_lib.Preprocessing, config: AuMConfig, directory: Path) -> None:
    """Raises ModelDirectoryError where ``preprocessing.json`` contradicts ``config.json``."""
    path = directory / PREPROCESSING_FILE
    if prep.num_mel_bins != config.num_mel_bins:
        raise ModelDirectoryError(f"{path}: field num_mel_bins is {prep.num_mel_bins}, but the model "
                                  f"({directory / CONFIG_FILE}) takes {config.num_mel_bins} bins")
    if prep.target_length != config.audio_length:
        raise ModelDirectoryError(f"{path}: field target_length is {prep.target_length}, but the model "
                                  f"({directory / CONFIG_FILE}) takes {config.audio_length} frames")
    if len(prep.class_names) not in (0, config.num_classes):
        raise ModelDirectoryError(f"{path}: field class_names has {len(prep.class_names)} names, but the model "
                                  f"({directory / CONFIG_FILE}) has {config.num_classes} classes")


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
        _check_preprocessing(prep, config, directory)
    stored = _param_metadata(directory / PARAMS_DIR)
    _check_fits(stored, config, directory)
    checksums = None
    if verify:
        if not (directory / CHECKSUMS_FILE).is_file():
            raise ModelDirectoryError(f"{directory} has no {CHECKSUMS_FILE}, so damage to its parameters cannot be "
                                      "detected; --no-verify (config.init.verify=False to fine-tune) loads it anyway")
        checksums = _read_checksums(directory, set(stored))
    else:
        logging.warning("%s is loaded without checking its parameters against %s (--no-verify)", directory,
                        CHECKSUMS_FILE)
    return ModelFiles(directory, config, prep, checksums)


def read_error_reason(error: BaseException) -> str:
    """The innermost reason in an orbax/TensorStore exception chain, on one line."""
    reasons = []
    while error is not None:
        reasons.append(str(error).split(" See full TensorStore details")[0].strip())
        error = error.__cause__ or error.__context__
    text = next((r for r in reversed(reasons) if r), "") or "unknown error"
    return text.splitlines()[0][:300]


def _check_values(params: nnx.State, files: ModelFiles) -> None:
    """Raises ModelDirectoryError for non-finite parameters, or ones that differ from ``checksums.json``."""
    directory = files.path
    bad = [k for k, v in _flat(params).items() if not np.isfinite(np.asarray(v)).all()]
    if bad:
        raise ModelDirectoryError(f"{directory / PARAMS_DIR} is damaged: parameter(s) {', '.join(bad[:5])} hold NaN "
                                  "or Inf values")
    if files.checksums is None:
        return
    changed = [k for k, digest in _checksums(params).items() if files.checksums[k] != digest]
    if changed:
        raise ModelDirectoryError(f"{directory / PARAMS_DIR} is damaged: parameter(s) {', '.join(changed[:5])} no "
                                  f"longer match {directory / CHECKSUMS_FILE}")


def load_model(directory: str | os.PathLike, *, verify: bool = True, **config_overrides) -> AudioMamba:
    """Restores a model saved by ``save_model``, checking what it reads (:func:`open_model_dir`, then the values).

    The parameters are read into the model's abstract shapes (``models.model_with_params``): no
    initialiser runs, so the process holds one copy of the weights.

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
    abstract = nnx.state(nnx.eval_shape(lambda: AudioMamba(config, rngs=nnx.Rngs(0))), nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract)
    params_dir = files.path / PARAMS_DIR
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            params = checkpointer.restore(params_dir, abstract)
        except Exception as e:  # noqa: BLE001 - any reader failure: the directory is damaged.
            raise ModelDirectoryError(f"{params_dir} is damaged (a truncated or overwritten file?): "
                                      f"{read_error_reason(e)}") from e
    _check_values(params, files)
    return model_with_params(config, params)
