"""The one evaluation pass: a model over batches, logits gathered across processes, and their metrics.

:func:`forward_pass` runs a model over masked batches of this process under the
configured matmul precision; the logits (and labels, and pooled features if asked) of
each global batch are gathered to every process and the padding rows dropped. Every
job that runs a model over data uses it: evaluation during training and
``--mode=eval`` (:func:`split_metrics`, as the original's ``validate_acc``), the
confusion matrix (:func:`aum_jax.evaluation.confusion.confusion_matrix` of the same outputs) and
``aum_jax.predict``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils
from scipy import special
from tqdm import tqdm

from aum_jax.core import sharding
from aum_jax.models import AudioMamba

# The input pipeline (grain), the metrics (scikit-learn) and the loss (optax) load in the functions that use
# them: predict runs forward_pass alone, and its wait is mostly imports.


@dataclasses.dataclass
class Outputs:
    """What a pass over a split gives, padding rows left out.

    Attributes:
      logits: ``(N, C)`` float32.
      labels: ``(N, C)`` float32, or None when the batches had none.
      features: ``(N, D)`` pooled features, or None when not asked for.
      layers: ``(N, K, D)`` the pooled residual stream after the asked blocks, or None.
      tokens: ``(N, F', T', D)`` the final patch tokens on their grid, or None.
    """

    logits: np.ndarray
    labels: np.ndarray | None = None
    features: np.ndarray | None = None
    layers: np.ndarray | None = None
    tokens: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Embed:
    """What an embedding pass gathers besides the pooled features.

    Attributes:
      layers: block indices (0-based) whose pooled residual stream to keep.
      tokens: keep the final patch tokens on their grid.
    """

    layers: tuple[int, ...] = ()
    tokens: bool = False


@functools.partial(jax.jit, static_argnames=("graphdef", "with_features", "embed"))
def _forward(graphdef: nnx.GraphDef, state: nnx.State, fbank: jax.Array, with_features: bool = False,
             embed: Embed | None = None) -> dict[str, jax.Array]:
    """Fbank (B, T, F) -> ``{"logits": (B, C)}``, with ``"features": (B, D)`` if asked; with
    ``embed`` also ``"layers": (B, K, D)`` and ``"tokens": (B, F', T', D)`` as asked.

    A pure function of the model's split ``state``: the program returns only its rows, so a call
    reads the parameters in place and allocates no copy of them (an ``nnx.jit`` of the model would
    also return its state). Nothing is donated: no output has the shape of an input, so XLA could
    reuse none of their buffers. One program per batch shape (``forward_pass``'s batches are fixed).
    """
    model = nnx.merge(graphdef, state)
    if embed is None and not with_features:
        return {"logits": model(fbank)}
    out = model.outputs(fbank)
    if embed is None:
        return {"logits": out["logits"], "features": out["features"]}
    rows = {"logits": out["logits"], "features": out["pooled"]}
    if embed.layers:
        rows["layers"] = jnp.swapaxes(out["layers"][np.array(embed.layers)], 0, 1)
    if embed.tokens:
        rows["tokens"] = out["tokens"]
    return rows


def forward_pass(
    model: AudioMamba, batches: Iterable[dict[str, np.ndarray]], mesh: jax.sharding.Mesh,
    matmul_precision: str = "highest", *, desc: str = "eval", with_features: bool = False,
    embed: Embed | None = None, reduce: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None,
) -> Outputs:
    """Runs ``model`` in eval mode (an ``nnx.view``: the caller's model keeps its mode) over ``batches`` of this process.

    Args:
      model: the model, its parameters replicated over ``mesh``.
      batches: this process's ``{"fbank": (B, T, F), "mask": (B,)}``, with ``"label": (B, C)``
        for metrics; rows whose mask is False (padding, failed clips) are dropped.
      mesh: the data-parallel mesh (every process runs the same number of batches).
      matmul_precision: float32 matmul precision; "highest" computes as the original, on a
        GPU "tensorfloat32" is faster and about 1e-3 off.
      desc: the progress bar's label (the split's name).
      with_features: also gather the pooled features (a model with a head and pooled
        features).
      embed: gather the pooled features and what :class:`Embed` asks for (any model).
      reduce: called on each batch's rows (``{name: (rows, ...)}``, padding dropped) as they
        arrive; what it returns is kept instead, so a caller can shrink or consume outputs
        (e.g. average tokens) without the pass holding every batch's.

    Returns:
      The gathered :class:`Outputs` of every process's rows, in order.
    """
    graphdef, state = nnx.split(nnx.view(model, deterministic=True))  # eval mode, the caller's model left in its own.
    gathered: dict[str, list[np.ndarray]] = {}
    for batch in tqdm(batches, desc=desc, unit="batch", disable=jax.process_index() != 0, leave=False):
        arrays = sharding.global_batch(batch, mesh)
        with jax.set_mesh(mesh), jax.default_matmul_precision(matmul_precision):
            rows = _forward(graphdef, state, arrays["fbank"], with_features=with_features, embed=embed)
        if "label" in arrays:
            rows["labels"] = arrays["label"]
        rows, mask = multihost_utils.process_allgather((rows, arrays["mask"]), tiled=True)
        keep = np.asarray(mask, bool)
        rows = {name: np.asarray(value)[keep] for name, value in rows.items()}
        for name, value in (reduce(rows) if reduce else rows).items():
            gathered.setdefault(name, []).append(value)
    if not gathered:  # nothing to run: no rows.
        return Outputs(logits=np.zeros((0, model.config.num_classes), np.float32))
    return Outputs(**{k: np.concatenate(v) for k, v in gathered.items()})


# Each metric of split_metrics (num_examples is a count) and whether a better model has a larger
# ("max") or smaller ("min") value; config.train.metric names one of them.
METRIC_DIRECTIONS = {"mAP": "max", "mAUC": "max", "d_prime": "max", "accuracy": "max", "loss": "min"}


def is_better(metric: str, new: float | None, best: float | None) -> bool:
    """Whether ``new`` beats ``best`` by ``metric`` (:data:`METRIC_DIRECTIONS`).

    A missing or NaN value (an undefined metric, stored as null) is beaten by any number and
    beats none.
    """
    if new is None or np.isnan(new):
        return False
    if best is None or np.isnan(best):
        return True
    return new < best if METRIC_DIRECTIONS[metric] == "min" else new > best


def split_metrics(outputs: Outputs, loss: str) -> dict[str, float]:
    """``{"mAP", "mAUC", "d_prime", "accuracy", "loss", "num_examples"}`` of a pass with labels."""
    from aum_jax.evaluation import metrics
    from aum_jax.evaluation.losses import label_loss

    logits, labels = outputs.logits, outputs.labels
    bad = int(np.sum(~np.isfinite(logits)))
    if bad:
        logging.warning("%d non-finite logits in evaluation were replaced by numbers", bad)
        logits = np.nan_to_num(logits)  # the original's if_nan2num.
    result = metrics.classification_metrics(labels, special.expit(logits))
    result["loss"] = float(label_loss(jnp.asarray(logits), jnp.asarray(labels), loss))
    result["num_examples"] = len(labels)
    return result


def evaluate_split(
    model: AudioMamba, data: ml_collections.ConfigDict, split: str, mesh: jax.sharding.Mesh, loss: str,
    matmul_precision: str = "highest",
) -> tuple[dict[str, float], Outputs]:
    """One pass over ``split`` of the data config ``data``: its metrics and its outputs."""
    from aum_jax.data.pipeline import input_pipeline

    iterator = input_pipeline.make_eval_iterator(data, split)
    try:
        outputs = forward_pass(model, iterator, mesh, matmul_precision, desc=split)
    finally:
        iterator.close()
    return split_metrics(outputs, loss), outputs
