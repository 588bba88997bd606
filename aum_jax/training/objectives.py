"""The training objectives, by name: what a training step minimises (``config.train.objective``).

An objective registers, as one :class:`Objective` line of :data:`OBJECTIVES`:

- ``loss(module, batch, settings)``: the batch's mean loss, a scalar, and a dict of scalar metrics
  logged beside it. ``batch`` is ``{"fbank": (B, T, F), "label": (B, C)}`` plus what the objective's
  data adds (e.g. distillation's ``teacher`` targets);
- ``settings(config, backbone config)``: its static settings for the step, an object of its own
  type read from the config (hashable: a static argument of the jitted step); a setting it cannot
  use raises ValueError naming the key (``config_checks`` makes it a config error);
- ``module``: the module trained, the AudioMamba itself or one the objective builds around it (its
  ``backbone``, the model a run saves), e.g. masked patch modelling's heads;
- ``frozen_targets(frozen, batch, settings)``: entries a frozen module (distillation's online
  teacher) adds to each batch, without gradients;
- ``config_key`` and ``default_config()``: the config section its settings are read from, at its
  defaults; every recipe carries it (:func:`aum_jax.configs.common.get_objective_configs`).

The step (:func:`aum_jax.training.update.train_step`) passes these through without naming any
objective: a new one (MAE-style, data2vec-style, ...) is one module plus one line here.
The evaluation loss is always :func:`aum_jax.evaluation.losses.label_loss` of the logits, whatever
the objective.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import jax
import ml_collections
from flax import nnx

from aum_jax.evaluation.losses import label_loss
from aum_jax.models import AudioMamba, AuMConfig, init_model
from aum_jax.models.masked_patch_model import MaskedPatchModel
from aum_jax.training import distillation, event_detection, masked_patches

Batch = dict[str, jax.Array]
Loss = Callable[[nnx.Module, Batch, Any], tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registered objective (see the module docstring)."""

    loss: Loss
    settings: Callable[[ml_collections.ConfigDict, AuMConfig], Hashable]
    module: type[nnx.Module] | None = None
    uses_labels: bool = True  # whether it reads the clips' labels (a run without them needs no labelled clips)
    frozen_targets: Callable[[nnx.Module, Batch, Any], Batch] | None = None
    config_key: str = ""
    default_config: Callable[[], ml_collections.ConfigDict] | None = None

    def init(self, config: AuMConfig, seed: int, sharding: jax.sharding.Sharding | None = None) -> nnx.Module:
        """The freshly initialised module this objective trains (see :func:`aum_jax.models.init_model`)."""
        return init_model(config, seed, sharding, module=self.module or AudioMamba)

    def backbone(self, module: nnx.Module) -> AudioMamba:
        """The AudioMamba inside ``module``: what the run evaluates and saves."""
        return module if self.module is None else module.backbone


@dataclasses.dataclass(frozen=True)
class Supervised:
    """The supervised objective's settings: the label loss ``config.train.loss``, "BCE" or "CE"."""

    loss: str


def supervised_settings(config: ml_collections.ConfigDict, model: AuMConfig) -> Supervised:
    """:class:`Supervised` of ``config.train``."""
    del model
    return Supervised(config.train.loss)


def supervised(model: AudioMamba, batch: Batch, settings: Supervised) -> tuple[jax.Array, dict]:
    """The original's objective: the label loss of the model's logits (B, C) on ``batch["fbank"]``."""
    return label_loss(model(batch["fbank"]), batch["label"], settings.loss), {}


OBJECTIVES: dict[str, Objective] = {
    "supervised": Objective(supervised, supervised_settings),
    "distill": Objective(distillation.objective, distillation.step_settings, frozen_targets=distillation.online_targets,
                         config_key="distill", default_config=distillation.default_config),
    "events": Objective(event_detection.objective, event_detection.step_settings, config_key="events",
                        default_config=event_detection.default_config),
    "masked_patches": Objective(masked_patches.objective, masked_patches.step_settings, MaskedPatchModel,
                                uses_labels=False, config_key="pretrain", default_config=masked_patches.default_config),
}


def get(name: str) -> Objective:
    """The objective registered as ``name``.

    Raises:
      ValueError: no objective has that name (the message lists the registered ones).
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown training objective {name!r}; registered: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name]
