"""The update: the original's learning-rate schedule, its optimizer and one jitted training step.

Kept apart from the loop (:mod:`aum_jax.training.train`) so that the step can be timed and checked
with jax, flax and optax alone (``scripts/benchmark.py``, ``scripts/gpu_check.py``).
The config arguments are ``config.optimizer`` sections (any object with those attributes).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from aum_jax.core import sharding
from aum_jax.training import objectives

# apply_if_finite applies updates anyway after this many bad steps in a row; the loop
# stops long before (config.train.max_nonfinite_steps).
_NEVER_GIVE_UP = np.iinfo(np.int32).max
# The batch entries a loss reads, by what they are: a non-finite one makes the step's loss non-finite
# whatever the settings. The step reports them as the bits of "nonfinite_inputs", in this order.
INPUTS = {"fbank": "the features", "label": "the labels", "teacher": "the teacher's targets",
          "teacher_fbank": "the teacher's input features", "frame_label": "the frame targets"}


def learning_rate_schedule(config: Any, steps_per_epoch: int) -> optax.Schedule:
    """The original's per-epoch schedule times its per-step warm-up.

    ``"multistep"``: ``lr * decay_factor ** #{m in range(decay_start_epoch, inf,
    decay_every_epochs) : m <= epoch}`` with ``epoch = step // steps_per_epoch`` (0-based),
    i.e. torch's MultiStepLR stepped after every epoch. ``"constant"``: 1. Warm-up
    multiplies by ``warmup_start + (1 - warmup_start) * min(1, s / warmup_steps)``, with
    ``s`` the step rounded down to ``warmup_interval``.
    """
    if config.schedule not in ("multistep", "constant"):
        raise ValueError(f"unknown lr schedule {config.schedule!r}; use 'multistep' or 'constant'")
    warmup_steps = round(config.warmup_epochs * steps_per_epoch) if config.warmup_epochs > 0 else config.warmup_steps

    def schedule(step: jax.Array) -> jax.Array:
        factor = jnp.ones((), jnp.float32)
        if config.schedule == "multistep":
            epoch = step // steps_per_epoch
            decays = jnp.maximum(0, (epoch - config.decay_start_epoch) // config.decay_every_epochs + 1)
            factor = jnp.asarray(config.decay_factor, jnp.float32) ** decays
        if warmup_steps > 0:
            stair = (step // config.warmup_interval) * config.warmup_interval
            ramp = jnp.minimum(stair / warmup_steps, 1.0)
            factor = factor * (config.warmup_start + (1.0 - config.warmup_start) * ramp)
        return config.lr * factor

    return schedule


def make_optimizer(config: Any, schedule: optax.Schedule) -> optax.GradientTransformation:
    """torch ``Adam(lr, betas=(b1, b2), eps, weight_decay)`` (L2 decay enters the gradient),
    skipping any update whose gradients are not finite (the schedule does not advance)."""
    return optax.apply_if_finite(
        optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
            optax.scale_by_learning_rate(schedule),
        ),
        max_consecutive_errors=_NEVER_GIVE_UP,
    )


@nnx.jit(static_argnames=("objective", "settings", "max_loss", "max_grad_norm"), donate_argnums=(0, 1))
def _train_step(
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    batch: dict[str, jax.Array],
    objective: str,
    settings: Hashable,
    max_loss: float = float("inf"),
    max_grad_norm: float = float("inf"),
    frozen: nnx.Module | None = None,
) -> dict[str, jax.Array]:
    """One Adam step on a global batch ``{"fbank": (B, T, F), "label": (B, C)}``, minimising the
    training objective registered as ``objective`` (:data:`aum_jax.training.objectives.OBJECTIVES`)
    with its ``settings`` (what its ``settings`` reads from the config). ``model`` is the module the
    objective trains (the AudioMamba, or the objective's module around it).

    A ``frozen`` module (distillation's online teacher: frozen, in eval mode, parameters replicated)
    adds the objective's ``frozen_targets`` for this very batch, without gradients; stored targets
    come in the batch instead.

    The model's and optimizer's buffers are donated. A batch split over a mesh runs the
    scan kernels on each device's own rows (:class:`aum_jax.core.sharding.OnDataMesh`). A step
    whose loss exceeds ``max_loss`` or whose gradients' global norm exceeds
    ``max_grad_norm`` (or either is not finite) is handed to the optimizer as non-finite,
    so ``apply_if_finite`` skips it: parameters and moments keep their values, its
    counters advance.

    Returns:
      ``{"loss", "grad_norm", "ok", "nonfinite_inputs"}``: the batch's mean loss, the global gradient norm,
      whether the update was applied and which inputs of the loss held NaN or Inf (bit ``i`` for the ``i``-th
      of :data:`INPUTS`, the frozen module's targets among them; :func:`nonfinite_inputs` names them); and
      the objective's own metrics.
    """
    entry = objectives.get(objective)
    if frozen is not None:
        batch = {**batch, **entry.frozen_targets(frozen, batch, settings)}
    nonfinite = sum(jnp.where(jnp.isfinite(batch[name]).all(), 0, 1 << bit)
                    for bit, name in enumerate(INPUTS) if name in batch)
    (value, metrics), grads = nnx.value_and_grad(lambda m: entry.loss(m, batch, settings), has_aux=True)(model)
    grad_norm = optax.tree.norm(grads)
    ok = (value <= max_loss) & (grad_norm <= max_grad_norm)  # False for NaN too.
    if max_loss < float("inf") or max_grad_norm < float("inf"):
        grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.nan), grads)
    optimizer.update(model, grads)
    return {"loss": value, "grad_norm": grad_norm, "ok": ok, "nonfinite_inputs": nonfinite, **metrics}


def nonfinite_inputs(bits: int) -> set[str]:
    """The names (keys of :data:`INPUTS`) of a step's ``nonfinite_inputs`` bits."""
    return {name for bit, name in enumerate(INPUTS) if int(bits) >> bit & 1}


train_step = sharding.OnDataMesh(_train_step, arg=2)
