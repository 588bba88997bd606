"""Serving export: a model's forward pass lowered by ``jax.export`` and written with its preprocessing.

:func:`export_model` lowers a model; :func:`write_export` writes the artifact of a model
directory and, beside it, the JSON (:func:`sidecar_path`) that says what turns audio into
its input, both atomically. The command line is ``python -m aum_jax.export``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.core import storage
from aum_jax.inference import classify
from aum_jax.models import AudioMamba

PLATFORMS = ("cpu", "cuda")  # the default: one artifact for CPU and CUDA servers.
KNOWN_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # jax.export's built-in lowering platforms (its docstring).
SIDECAR_SUFFIX = ".preprocessing.json"
# One artifact serves CPU and CUDA: the Pallas/Triton kernels in its CUDA lowering, the
# sequential scan in its CPU lowering (the C++ kernel is compiled on the serving machine's first use).
PORTABLE_SCAN = "portable"
# The Triton kernels' custom call: no compatibility guarantee across jaxlib versions, so an
# artifact with it must be served by the jaxlib that wrote it (the sidecar records the version).
TRITON_CALL = jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")


def export_model(model: AudioMamba, batch: int | None = None, platforms: Sequence[str] = PLATFORMS) -> jax.export.Exported:
    """Lowers ``model`` (eval mode, parameters as constants) for ``platforms``.

    Args:
      model: the model.
      batch: a fixed batch size, or None for a symbolic batch dimension.
      platforms: lowering platforms.

    Returns:
      The ``jax.export.Exported`` of ``features (B, T, F) float32 -> logits (B, C) float32``.
    """
    model = nnx.view(model, deterministic=True)  # eval mode, the caller's model left in its own.
    graphdef, state = nnx.split(model)

    def forward(features: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, state)(features)

    cfg = model.config
    (dim,) = jax.export.symbolic_shape("batch") if batch is None else (batch,)
    spec = jax.ShapeDtypeStruct((dim, cfg.audio_length, cfg.num_mel_bins), jnp.float32)
    with jax.default_matmul_precision("highest"):  # the original's float32, on every platform.
        return jax.export.export(jax.jit(forward), platforms=tuple(platforms), disabled_checks=[TRITON_CALL])(spec)


def sidecar_path(output: str | os.PathLike) -> Path:
    """``model.jaxexport`` -> ``model.preprocessing.json``."""
    output = Path(output)
    return output.with_name(output.stem + SIDECAR_SUFFIX) if output.suffix else output.with_name(output.name + SIDECAR_SUFFIX)


def check_platforms(platforms: Sequence[str]) -> tuple[str, ...]:
    """The lowering platforms, each one JAX knows, without repeats.

    Raises:
      ValueError: an empty list, or a platform JAX does not know (named).
    """
    platforms = tuple(p.strip().lower() for p in platforms)
    unknown = [p for p in platforms if p not in KNOWN_PLATFORMS]
    if not platforms or unknown:
        raise ValueError(f"--platforms {','.join(platforms)}: "
                         + (f"unknown platform(s) {', '.join(unknown)}" if unknown else "no platform given")
                         + f"; JAX lowers for {', '.join(KNOWN_PLATFORMS)}")
    return tuple(dict.fromkeys(platforms))


def write_export(model_dir: str | os.PathLike, output: str | os.PathLike, batch: int | None = None,
                 platforms: Sequence[str] = PLATFORMS, *, verify: bool = True) -> tuple[Path, Path]:
    """Exports the model of ``model_dir`` to ``output`` and its preprocessing beside it.

    Both files are replaced atomically: on any failure (a full disk) neither changes.

    Returns:
      ``(artifact path, preprocessing JSON path)``.

    Raises:
      NoHeadError: a model without a classification head (a pretraining model).
      ValueError: an unknown platform, a model without statistics or loss.
      ModelDirectoryError: a missing or damaged model directory.
      OSError: the output cannot be written.
    """
    platforms = check_platforms(platforms)
    model_dir = model_files.model_directory(model_dir)
    classify.require_head(model_files.load_config(model_dir), str(model_dir))  # before the model loads.
    model = model_files.load_model(model_dir, verify=verify, scan_impl=PORTABLE_SCAN)
    cfg = model.config
    prep = model_files.load_preprocessing(model_dir)
    if prep is None or not prep.has_statistics or not prep.loss:
        missing = (f"no {model_files.PREPROCESSING_FILE}" if prep is None else
                   "no normalisation statistics" if not prep.has_statistics else "no training loss")
        raise ValueError(f"{model_dir} has {missing}, so the artifact's input and scores would be unknown; store them "
                         "with python scripts/convert_checkpoint.py ... --dataset NAME (or --mean/--std/--loss)")
    exported = export_model(model, batch, platforms)
    output = Path(output)
    sidecar = sidecar_path(output)
    description = {
        "artifact": output.name,
        "platforms": list(exported.platforms),
        "jaxlib": jax.lib.__version__,  # a CUDA lowering with the Triton kernels needs this jaxlib to serve it
        "input": {"shape": [batch or "batch", cfg.audio_length, cfg.num_mel_bins], "dtype": "float32",
                  "meaning": "fbank features, normalised as 'preprocessing' says"},
        "output": {"shape": [batch or "batch", cfg.num_classes], "dtype": "float32", "meaning": "logits",
                   "score": prep.score},
        "preprocessing": prep.to_dict(),
        "model": cfg.to_dict(),
    }
    try:
        storage.write_bytes(output, exported.serialize())
        storage.write_text(sidecar, json.dumps(description, indent=1))
    except OSError as e:
        raise OSError(f"cannot write {output}: {model_files.write_error_reason(e)}; nothing was written") from e
    return output, sidecar
