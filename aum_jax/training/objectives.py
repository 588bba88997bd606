"""The training objectives, by name: what a training step minimises (``config.train.objective``).

An objective's loss maps ``(module, batch, settings)`` to the batch's mean loss, a scalar, and a dict
of scalar metrics logged beside it, where ``batch`` is ``{"fbank": (B, T, F), "label": (B, C)}``
(plus what the objective's data adds, e.g. distillation's ``teacher`` targets) and ``settings`` are
its static :class:`Settings`. The module trained is the AudioMamba itself, or one the objective
builds around it (its ``backbone``, the model a run saves), e.g. masked patch modelling's heads.
:data:`OBJECTIVES` is the registry: a new objective (MAE-style, data2vec-style, ...) is one module
with its loss (and its module) plus one line here.
The evaluation loss is always :func:`aum_jax.evaluation.losses.label_loss` of the logits, whatever
the objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from aum_jax.evaluation.losses import label_loss
from aum_jax.models import AudioMamba, AuMConfig, init_model
from aum_jax.models.masked_patch_model import MaskedPatchModel
from aum_jax.training import distillation, masked_patches


@dataclasses.dataclass(frozen=True)
class Settings:
    """What an objective reads besides the module and the batch (hashable: a static argument of the step).

    Attributes:
      loss: the label loss ``config.train.loss``, "BCE" or "CE".
      distill: distillation's settings (the "distill" objective), else None.
      masked: masked patch modelling's settings (the "masked_patches" objective), else None.
    """

    loss: str
    distill: distillation.Distill | None = None
    masked: masked_patches.MaskedPatches | None = None


Loss = Callable[[nnx.Module, dict[str, jax.Array], Settings], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registered objective.

    Attributes:
      loss: its loss function (see the module docstring).
      module: the module trained, built as ``module(config, rngs=...)`` around an AudioMamba it
        holds as ``backbone``; None: the AudioMamba itself.
      uses_labels: whether it reads the clips' labels (a run without them needs no labelled clips).
      step_settings: ``(config, backbone config) -> {Settings field: value}`` for the step (raising
        ValueError, naming the key, for a setting it cannot use); None: no settings of its own.
    """

    loss: Loss
    module: type[nnx.Module] | None = None
    uses_labels: bool = True
    step_settings: Callable[[ml_collections.ConfigDict, AuMConfig], dict[str, Any]] | None = None

    def settings(self, config: ml_collections.ConfigDict, model: AuMConfig) -> dict[str, Any]:
        """The step's keyword settings of this objective for ``config`` (see ``step_settings``)."""
        return self.step_settings(config, model) if self.step_settings else {}

    def init(self, config: AuMConfig, seed: int, sharding: jax.sharding.Sharding | None = None) -> nnx.Module:
        """The freshly initialised module this objective trains (see :func:`aum_jax.models.init_model`)."""
        return init_model(config, seed, sharding, module=self.module or AudioMamba)

    def backbone(self, module: nnx.Module) -> AudioMamba:
        """The AudioMamba inside ``module``: what the run evaluates and saves."""
        return module if self.module is None else module.backbone


def supervised(model: AudioMamba, batch: dict[str, jax.Array], settings: Settings) -> tuple[jax.Array, dict]:
    """The original's objective: the label loss of the model's logits (B, C) on ``batch["fbank"]``."""
    return label_loss(model(batch["fbank"]), batch["label"], settings.loss), {}


OBJECTIVES: dict[str, Objective] = {
    "supervised": Objective(supervised),
    "distill": Objective(distillation.objective),
    "masked_patches": Objective(masked_patches.objective, MaskedPatchModel, uses_labels=False,
                                step_settings=masked_patches.step_settings),
}


def get(name: str) -> Objective:
    """The objective registered as ``name``.

    Raises:
      ValueError: no objective has that name (the message lists the registered ones).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown training objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
