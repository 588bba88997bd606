"""Saving and restoring AudioMamba models with orbax.

A model directory holds ``config.json`` (the ``AuMConfig``), ``params/`` (an orbax
checkpoint of the model's ``nnx.Param`` state), ``checksums.json`` (a SHA-256 of every
parameter) and, when known, ``preprocessing.json`` (features, statistics, class names and
loss; see :mod:`aum_jax.preprocessing`). It is written to a hidden sibling directory first
and renamed into place, so a crash never leaves a partial model behind.

Loading refuses, with :class:`ModelDirectoryError` naming the file, a directory whose
``config.json`` does not fit its parameters, whose parameters cannot be read, are not
floating point, are not finite, or no longer match their checksums (a damaged file).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging
from flax import nnx, traverse_util

from aum_jax import preprocessing as preprocessing_lib
from aum_jax import workdir as workdir_lib
from aum_jax.models import AudioMamba, AuMConfig, init_model

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CHECKSUMS_FILE = "checksums.json"


class ModelDirectoryError(ValueError):
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


def save_model(
    model: AudioMamba,
    directory: str | os.PathLike,
    *,
    overwrite: bool = False,
    preprocessing: preprocessing_lib.Preprocessing | None = None,
) -> Path:
    """Writes ``model`` (and its ``preprocessing``) to ``directory`` atomically; returns its path.

    With several processes every one of them must call this (orbax writes the arrays
    collectively); process 0 writes the config and moves the result into place.
    """
    directory = Path(directory).absolute()
    if directory.exists() and not overwrite:
        raise FileExistsError(f"{directory} already exists; pass overwrite=True to replace it.")
    primary = jax.process_index() == 0
    staging = directory.parent / f".{directory.name}.partial"
    if primary:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    _sync("aum_jax.save_model.staged")
    try:
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(staging / PARAMS_DIR, nnx.state(model, nnx.Param))
            checkpointer.wait_until_finished()
        _sync("aum_jax.save_model.written")
        if primary:
            model.config.save(staging / CONFIG_FILE)
            (staging / CHECKSUMS_FILE).write_text(json.dumps({"sha256": _checksums(nnx.state(model, nnx.Param))},
                                                             indent=1))
            if preprocessing is not None:
                preprocessing_lib.save(preprocessing, staging)
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
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
    """A model directory, or a training workdir's ``model/`` (a workdir has a ``config.json`` too, but no ``params/``)."""
    path = Path(path)
    inside = path / workdir_lib.MODEL_DIR
    if not (path / PARAMS_DIR).is_dir() and (inside / CONFIG_FILE).is_file():
        return inside
    return path


def load_config(directory: str | os.PathLike) -> AuMConfig:
    """Reads the ``AuMConfig`` of a model directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not an aum-jax model directory.")
    try:
        return AuMConfig.load(path)
    except (ValueError, TypeError, KeyError) as e:
        raise ModelDirectoryError(f"{path} is not a valid model config: {e}") from e


def _check_fits(metadata: Any, target: nnx.State, directory: Path) -> None:
    """Raises ModelDirectoryError for parameters whose presence, shape or dtype differs from ``config.json``'s model."""
    stored, wanted = _flat(metadata), _flat(target)
    problems = [f"{k} missing" for k in wanted if k not in stored]
    problems += [f"{k} not in the model" for k in stored if k not in wanted]
    problems += [f"{k} is {tuple(stored[k].shape)} in {PARAMS_DIR}/, {tuple(v.shape)} by {CONFIG_FILE}"
                 for k, v in wanted.items() if k in stored and tuple(stored[k].shape) != tuple(v.shape)]
    if problems:
        raise ModelDirectoryError(f"{directory / CONFIG_FILE} does not fit {directory / PARAMS_DIR}: "
                                  f"{'; '.join(problems[:5])}" + (" ..." if len(problems) > 5 else "")
                                  + " (was config.json edited, or copied from another model?)")
    not_float = [f"{k} ({m.dtype})" for k, m in stored.items() if not jax.dtypes.issubdtype(m.dtype, np.floating)]
    if not_float:
        raise ModelDirectoryError(f"{directory / PARAMS_DIR}: parameters that are not floating point: "
                                  + ", ".join(not_float[:5]))


def _check_values(params: nnx.State, directory: Path) -> None:
    """Raises ModelDirectoryError for non-finite parameters, or ones that differ from ``checksums.json``."""
    flat = _flat(params)
    bad = [k for k, v in flat.items() if not np.isfinite(np.asarray(v)).all()]
    if bad:
        raise ModelDirectoryError(f"{directory / PARAMS_DIR} is damaged: parameter(s) {', '.join(bad[:5])} hold NaN "
                                  "or Inf values")
    path = directory / CHECKSUMS_FILE
    if not path.is_file():  # a model directory from before checksums were written.
        return
    stored = json.loads(path.read_text())["sha256"]
    changed = [k for k, digest in _checksums(params).items() if stored.get(k) != digest]
    if changed:
        raise ModelDirectoryError(f"{directory / PARAMS_DIR} is damaged: parameter(s) {', '.join(changed[:5])} no "
                                  f"longer match {path}")


def load_model(directory: str | os.PathLike, **config_overrides) -> AudioMamba:
    """Restores a model saved by ``save_model``, checking what it reads (see the module docstring).

    ``config_overrides`` may change fields that do not touch the parameters, such as
    ``scan_impl`` or ``drop_path_rate``.

    Raises:
      FileNotFoundError: no ``config.json``.
      ModelDirectoryError: a damaged directory, or a config that does not fit the parameters.
    """
    directory = Path(directory).absolute()
    config = load_config(directory).replace(**config_overrides)
    model = init_model(config)
    target = nnx.state(model, nnx.Param)
    params_dir = directory / PARAMS_DIR
    with ocp.StandardCheckpointer() as checkpointer:
        try:
            metadata = checkpointer.metadata(params_dir).item_metadata.tree
        except Exception as e:  # noqa: BLE001 - any reader failure: the directory is damaged.
            raise ModelDirectoryError(f"{params_dir} cannot be read: {str(e).splitlines()[0]}") from e
        _check_fits(metadata, target, directory)
        try:
            params = checkpointer.restore(params_dir, target)
        except Exception as e:  # noqa: BLE001
            reason = str(e).splitlines()[0][:200]
            raise ModelDirectoryError(f"{params_dir} is damaged (a truncated or overwritten file?): {reason}") from e
    _check_values(params, directory)
    nnx.update(model, params)
    return model
