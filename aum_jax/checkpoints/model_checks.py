"""The checks of a model directory's files: its JSON files, the shapes, dtypes, values and
checksums of its parameters, each failure a :class:`ModelDirectoryError` naming the file
(:mod:`aum_jax.checkpoints.model_files` writes and reads the directory)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from aum_jax.core import storage
from aum_jax.core.errors import UserError
from aum_jax.data.features import preprocessing as preprocessing_lib
from aum_jax.models import AudioMamba, AuMConfig

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
CHECKSUMS_FILE = "checksums.json"
PREPROCESSING_FILE = "preprocessing.json"  # the input features and the meaning of the logits.
STACKED_PREFIX = "layers/"  # the blocks' parameters, stacked along a leading depth axis.
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class ModelDirectoryError(UserError, ValueError):
    """A model directory that is missing, damaged, or whose config does not fit its parameters."""


def flat_params(tree: Any) -> dict[str, Any]:
    """A parameter state, or orbax's metadata tree of one (``{..: {"value": meta}}``), as ``{"a/b": leaf}``."""
    pure = nnx.to_pure_dict(tree) if isinstance(tree, nnx.State) else tree
    flat = traverse_util.flatten_dict(pure)
    return {"/".join(map(str, k[:-1] if k[-1] == "value" else k)): v for k, v in flat.items()}


def checksums(params: nnx.State) -> dict[str, str]:
    """SHA-256 of each parameter's bytes, by its path."""
    return {k: hashlib.sha256(np.ascontiguousarray(np.asarray(v)).data).hexdigest()  # hashed in place, not copied
            for k, v in sorted(flat_params(params).items())}


def checksums_digest(directory: str | os.PathLike) -> str | None:
    """The SHA-256 hex of a model directory's ``checksums.json`` (what names its parameters), or None without one."""
    path = Path(directory) / CHECKSUMS_FILE
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ModelDirectoryError naming the file when it is not one."""
    try:
        values = storage.read_json(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelDirectoryError(f"{path} is not a readable JSON file: {e}") from e
    if not isinstance(values, dict):
        raise ModelDirectoryError(f"{path} must hold a JSON object, not {type(values).__name__}")
    return values


def param_metadata(params_dir: Path) -> dict[str, Any]:
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
    return flat_params(metadata.item_metadata.tree)


def expected_shapes(config: AuMConfig) -> dict[str, tuple[int, ...]]:
    """``{"a/b": shape}`` of the parameters ``config`` builds, computed abstractly and in
    time independent of the depth (one block is traced; the stack adds a leading ``depth`` axis)."""
    one_block = nnx.eval_shape(lambda: AudioMamba(config.replace(depth=1), rngs=nnx.Rngs(0)))
    shapes = {k: tuple(v.shape) for k, v in flat_params(nnx.state(one_block, nnx.Param)).items()}
    return {k: (config.depth, *shape[1:]) if k.startswith(STACKED_PREFIX) else shape for k, shape in shapes.items()}


def check_fits(stored: dict[str, Any], config: AuMConfig, directory: Path) -> None:
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


def read_checksums(directory: Path, names: set[str]) -> dict[str, str]:
    """``{"a/b": sha256 hex}`` of ``checksums.json``, checked to name exactly the parameters ``names``."""
    path = directory / CHECKSUMS_FILE
    values = read_json_object(path)
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


def check_preprocessing(prep: preprocessing_lib.Preprocessing, config: AuMConfig, directory: Path) -> None:
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


def read_error_reason(error: BaseException) -> str:
    """The innermost reason in an orbax/TensorStore exception chain, on one line."""
    reasons = []
    while error is not None:
        reasons.append(str(error).split(" See full TensorStore details")[0].strip())
        error = error.__cause__ or error.__context__
    text = next((r for r in reversed(reasons) if r), "") or "unknown error"
    return text.splitlines()[0][:300]


def check_values(params: nnx.State, directory: Path, digests: dict[str, str] | None) -> None:
    """Raises ModelDirectoryError for non-finite parameters, or (with the ``checksums.json`` ``digests``)
    ones that differ from them."""
    bad = [k for k, v in flat_params(params).items() if not np.isfinite(np.asarray(v)).all()]
    if bad:
        raise ModelDirectoryError(f"{directory / PARAMS_DIR} is damaged: parameter(s) {', '.join(bad[:5])} hold NaN "
                                  "or Inf values")
    if digests is None:
        return
    changed = [k for k, digest in checksums(params).items() if digests[k] != digest]
    if changed:
        raise ModelDirectoryError(f"{directory / PARAMS_DIR} is damaged: parameter(s) {', '.join(changed[:5])} no "
                                  f"longer match {directory / CHECKSUMS_FILE}")
