"""Saving and restoring AudioMamba models with orbax.

A model directory holds ``config.json`` (the ``AuMConfig``), ``params/`` (an orbax
checkpoint of the model's ``nnx.Param`` state) and, when known, ``preprocessing.json``
(features, statistics, class names and loss; see :mod:`aum_jax.preprocessing`). It is written to a hidden sibling
directory first and renamed into place, so a crash never leaves a partial model behind.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging
from flax import nnx

from aum_jax import preprocessing as preprocessing_lib
from aum_jax.models import AudioMamba, AuMConfig, init_model

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"


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
            if preprocessing is not None:
                preprocessing_lib.save(preprocessing, staging)
            if directory.exists():
                shutil.rmtree(directory)
            staging.rename(directory)
    except BaseException:
        if primary:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    _sync("aum_jax.save_model.done")
    logging.info("Saved %s model to %s", model.config.aum_type, directory)
    return directory


def load_config(directory: str | os.PathLike) -> AuMConfig:
    """Reads the ``AuMConfig`` of a model directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {directory} is not an aum-jax model directory.")
    return AuMConfig.load(path)


def load_model(directory: str | os.PathLike, **config_overrides) -> AudioMamba:
    """Restores a model saved by ``save_model``.

    ``config_overrides`` may change fields that do not touch the parameters, such as
    ``scan_impl`` or ``drop_path_rate``.
    """
    directory = Path(directory).absolute()
    config = load_config(directory).replace(**config_overrides)
    model = init_model(config)
    with ocp.StandardCheckpointer() as checkpointer:
        params = checkpointer.restore(directory / PARAMS_DIR, nnx.state(model, nnx.Param))
    nnx.update(model, params)
    return model
