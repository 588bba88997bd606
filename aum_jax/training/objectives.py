"""The training objectives, by name: what a training step minimises (``config.train.objective``).

An objective maps ``(model, batch, label_loss)`` to the batch's mean loss, a scalar, where
``batch`` is ``{"fbank": (B, T, F), "label": (B, C)}`` and ``label_loss`` is
``config.train.loss`` ("BCE" or "CE"). :data:`OBJECTIVES` is the registry: a new objective
(distillation, masked patch modelling, ...) is one module with its function plus one line here.
The evaluation loss is always :func:`label_loss` of the logits, whatever the objective.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from aum_jax.models import AudioMamba

Objective = Callable[[AudioMamba, dict[str, jax.Array], str], jax.Array]


def label_loss(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
    """Mean loss of logits (B, C) against labels (B, C).

    "BCE" averages the sigmoid cross-entropy over all B * C entries (torch's
    ``BCEWithLogitsLoss``); "CE" is the softmax cross-entropy against ``argmax(labels)``
    (``CrossEntropyLoss`` on the class index, as the original feeds it).
    """
    if loss == "BCE":
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean()
    if loss == "CE":
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.argmax(labels, axis=-1)).mean()
    raise ValueError(f"unknown loss {loss!r}; use 'BCE' or 'CE'")


def supervised(model: AudioMamba, batch: dict[str, jax.Array], loss: str) -> jax.Array:
    """The original's objective: the label loss of the model's logits (B, C) on ``batch["fbank"]``."""
    return label_loss(model(batch["fbank"]), batch["label"], loss)


OBJECTIVES: dict[str, Objective] = {
    "supervised": supervised,
}


def get(name: str) -> Objective:
    """The objective registered as ``name``.

    Raises:
      ValueError: no objective has that name (the message lists the registered ones).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown training objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
