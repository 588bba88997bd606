"""The training objectives, by name: what a training step minimises (``config.train.objective``).

An objective maps ``(model, batch, loss)`` to the batch's mean loss, a scalar, where
``batch`` is ``{"fbank": (B, T, F), "label": (B, C)}`` and ``loss`` is the label loss
``config.train.loss`` ("BCE" or "CE"). :data:`OBJECTIVES` is the registry: a new objective
(distillation, masked patch modelling, ...) is one module with its function plus one line here.
The evaluation loss is always :func:`aum_jax.evaluation.losses.label_loss` of the logits, whatever
the objective.
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from aum_jax.evaluation.losses import label_loss
from aum_jax.models import AudioMamba

Objective = Callable[[AudioMamba, dict[str, jax.Array], str], jax.Array]


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
