"""The training objectives, by name: what a training step minimises (``config.train.objective``).

An objective maps ``(model, batch, settings)`` to the batch's mean loss, a scalar, where
``batch`` is ``{"fbank": (B, T, F), "label": (B, C)}`` (plus what the objective's data adds,
e.g. distillation's ``teacher`` targets) and ``settings`` are its static :class:`Settings`.
:data:`OBJECTIVES` is the registry: a new objective (masked patch modelling, ...) is one
module with its function plus one line here.
The evaluation loss is always :func:`aum_jax.evaluation.losses.label_loss` of the logits, whatever
the objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from aum_jax.evaluation.losses import label_loss
from aum_jax.models import AudioMamba
from aum_jax.training import distillation


@dataclasses.dataclass(frozen=True)
class Settings:
    """What an objective reads besides the model and the batch (hashable: a static argument of the step).

    Attributes:
      loss: the label loss ``config.train.loss``, "BCE" or "CE".
      distill: distillation's settings (the "distill" objective), else None.
    """

    loss: str
    distill: distillation.Distill | None = None


Objective = Callable[[AudioMamba, dict[str, jax.Array], Settings], jax.Array]


def supervised(model: AudioMamba, batch: dict[str, jax.Array], settings: Settings) -> jax.Array:
    """The original's objective: the label loss of the model's logits (B, C) on ``batch["fbank"]``."""
    return label_loss(model(batch["fbank"]), batch["label"], settings.loss)


OBJECTIVES: dict[str, Objective] = {
    "supervised": supervised,
    "distill": distillation.objective,
}


def get(name: str) -> Objective:
    """The objective registered as ``name``.

    Raises:
      ValueError: no objective has that name (the message lists the registered ones).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown training objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
