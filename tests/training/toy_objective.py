"""A toy objective with settings of its own, registered as an extension of
:mod:`aum_jax.training.objectives` is (one module, one registry line): the label loss scaled by
``config.scaled.factor``, reported beside it as a metric."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections

from aum_jax.evaluation.losses import label_loss
from aum_jax.models import AudioMamba, AuMConfig
from aum_jax.training.objectives import OBJECTIVES, Objective


@dataclasses.dataclass(frozen=True)
class Scaled:
    """The toy's settings: its factor and the label loss."""

    factor: float
    loss: str


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.factor = 2.0  # what the label loss is multiplied by.
    return c


def settings(config: ml_collections.ConfigDict, model: AuMConfig) -> Scaled:
    del model
    if config.scaled.factor <= 0:
        raise ValueError(f"config.scaled.factor={config.scaled.factor}: must be positive")
    return Scaled(float(config.scaled.factor), config.train.loss)


def scaled(model: AudioMamba, batch: dict[str, jax.Array], s: Scaled) -> tuple[jax.Array, dict[str, jax.Array]]:
    loss = label_loss(model(batch["fbank"]), batch["label"], s.loss)
    return s.factor * loss, {"unscaled": loss}


OBJECTIVES["scaled"] = Objective(scaled, settings, config_key="scaled", default_config=default_config)
