"""Evaluating a model over a split: masked batches, gathered across processes.

Every process runs the same number of evaluation batches (the input pipeline pads its
shard); the logits, labels and masks of each global batch are gathered to every
process, the padding rows dropped, and the metrics of :mod:`aum_jax.metrics` computed
on the whole split, as the original's ``validate_acc`` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from scipy import special
from tqdm import tqdm

from aum_jax import input_pipeline, losses, metrics, sharding
from aum_jax.models import AudioMamba


@nnx.jit
def _logits(model: AudioMamba, fbank: jax.Array) -> jax.Array:
    """Fbank (B, T, F) -> logits (B, C)."""
    return model(fbank)


def evaluate(
    model: AudioMamba, batches: Iterable[dict[str, np.ndarray]], mesh: jax.sharding.Mesh, loss: str,
    desc: str = "eval", matmul_precision: str = "highest",
) -> dict[str, float]:
    """Runs ``model`` (in eval mode; it is left so) over ``batches`` of this process.

    Args:
      model: the model, its parameters replicated over ``mesh``.
      batches: this process's ``{"fbank": (B, T, F), "label": (B, C), "mask": (B,)}``.
      mesh: the data-parallel mesh.
      loss: "BCE" or "CE", for the reported loss.
      desc: the progress bar's label (the split's name).
      matmul_precision: float32 matmul precision; "highest" computes as the original.

    Returns:
      ``{"mAP", "mAUC", "d_prime", "accuracy", "loss", "num_examples"}``.
    """
    model.eval()
    all_logits, all_labels = [], []
    show = jax.process_index() == 0
    for batch in tqdm(batches, desc=desc, unit="batch", disable=not show, leave=False):
        arrays = sharding.global_batch(batch, mesh)
        with jax.set_mesh(mesh), jax.default_matmul_precision(matmul_precision):
            logits = _logits(model, arrays["fbank"])
        logits, labels, mask = multihost_utils.process_allgather(
            (logits, arrays["label"], arrays["mask"]), tiled=True
        )
        keep = np.asarray(mask, bool)
        all_logits.append(np.asarray(logits)[keep])
        all_labels.append(np.asarray(labels)[keep])
    logits, labels = np.concatenate(all_logits), np.concatenate(all_labels)
    bad = int(np.sum(~np.isfinite(logits)))
    if bad:
        logging.warning("%d non-finite logits in evaluation were replaced by numbers", bad)
        logits = np.nan_to_num(logits)  # the original's if_nan2num.
    result = metrics.classification_metrics(labels, special.expit(logits))
    result["loss"] = float(losses.loss_value(jnp.asarray(logits), jnp.asarray(labels), loss))
    result["num_examples"] = len(labels)
    return result


def evaluate_split(
    model: AudioMamba, data: ml_collections.ConfigDict, split: str, mesh: jax.sharding.Mesh, loss: str,
    matmul_precision: str = "highest",
) -> dict[str, float]:
    """:func:`evaluate` over one pass of ``split`` of the data config ``data``."""
    iterator = input_pipeline.make_eval_iterator(data, split)
    try:
        return evaluate(model, iterator, mesh, loss, desc=split, matmul_precision=matmul_precision)
    finally:
        iterator.close()


def to_json(report: dict[str, Any]) -> str:
    """Indented, standard JSON: non-finite metrics (e.g. d' of a perfect AUC) become null."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and not np.isfinite(value):
            return None
        return value

    return json.dumps(clean(report), indent=1, sort_keys=True, allow_nan=False)


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Writes ``report`` as indented JSON (on process 0 only)."""
    if jax.process_index() != 0:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(to_json(report))
    logging.info("Wrote the evaluation report %s", path)
