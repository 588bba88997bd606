"""Knowledge distillation (``config.distill``): the student learns the teacher's targets beside the labels.

The targets are the teacher's probabilities at temperature ``T``: ``softmax(z_t / T)`` for the
"kl" loss (single-label, CE tasks) or ``sigmoid(z_t / T)`` for "bce" (multi-label, BCE tasks,
as EfficientAT). They come either from an online teacher, a frozen model run inside each
training step on the very batch the student sees (:func:`teacher_targets`), or from stored
logits (``scripts/teacher_logits.py``), which ride with each clip through the input pipeline,
mixed by mixup's own lambda. Per clip, ``(1 - weight) * label_loss + weight * distill_loss``;
an unlabelled clip (``batch["labelled"] == 0``) trains on ``distill_loss`` alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from aum_jax.evaluation.losses import label_loss, per_clip_label_loss
from aum_jax.models import AudioMamba

LOSSES = ("kl", "bce")
TEACHER_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Distill:
    """The static settings of distillation (hashable: a static argument of the jitted step).

    Attributes:
      weight: lambda, the distillation loss's share for a labelled clip.
      temperature: T, dividing teacher and student logits.
      loss: "kl" or "bce".
      input_scale, input_shift: the online teacher's input from the student's,
        ``x_t = x_s * input_scale + input_shift``: the student's normalisation undone and the
        teacher's applied (1 and 0 when both use the same statistics).
    """

    weight: float
    temperature: float
    loss: str
    input_scale: float = 1.0
    input_shift: float = 0.0


def targets_from_logits(logits: jax.Array, distill: Distill) -> jax.Array:
    """Teacher logits ``(B, C)`` -> float32 targets ``(B, C)``: its softmax or sigmoid at temperature T."""
    scaled = logits.astype(jnp.float32) / distill.temperature
    return jax.nn.softmax(scaled, axis=-1) if distill.loss == "kl" else jax.nn.sigmoid(scaled)


def teacher_targets(teacher: AudioMamba, batch: dict[str, jax.Array], distill: Distill) -> jax.Array:
    """The frozen teacher's targets ``(B, C)`` for a batch: on its own input ``teacher_fbank``
    ``(B, T_t, F_t)`` where the batch has it (a teacher of other features), else on the student's
    normalised ``fbank`` ``(B, T, F)`` mapped to the teacher's statistics."""
    x = batch.get("teacher_fbank")
    if x is None:
        x = batch["fbank"] * distill.input_scale + distill.input_shift
    return jax.lax.stop_gradient(targets_from_logits(teacher(x), distill))


def distill_loss(logits: jax.Array, targets: jax.Array, distill: Distill) -> jax.Array:
    """Per-clip distillation loss ``(B,)`` of student logits ``(B, C)`` against teacher targets ``(B, C)``.

    "kl": ``T^2 * KL(targets || softmax(logits / T))`` (Hinton's scaling keeps the gradients'
    size as T changes). "bce": the sigmoid cross-entropy of the logits against the targets,
    averaged over classes (EfficientAT's ``BCEWithLogitsLoss`` against the teacher's sigmoids).
    """
    if distill.loss == "kl":
        t = distill.temperature
        log_q = jax.nn.log_softmax(logits / t, axis=-1)
        return t * t * jnp.sum(targets * (jnp.log(jnp.maximum(targets, 1e-30)) - log_q), axis=-1)
    return optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1)


def objective(model: AudioMamba, batch: dict[str, jax.Array], settings: Any) -> tuple[jax.Array, dict]:
    """The batch's mean (and no metrics) of ``(1 - weight) * label_loss + weight * distill_loss`` over labelled clips
    and ``distill_loss`` over unlabelled ones.

    ``batch`` holds ``fbank`` (B, T, F), ``label`` (B, C), ``teacher`` (B, C) targets and, where
    the source has unlabelled clips, ``labelled`` (B,) (1 or 0). ``settings`` is the step's
    :class:`aum_jax.training.objectives.Settings` (``loss``, ``distill``).
    """
    distill: Distill = settings.distill
    logits = model(batch["fbank"])  # the teacher's own input, if any, is not the student's.
    soft = distill_loss(logits, batch["teacher"], distill)
    if "labelled" not in batch:  # every clip labelled: weight 0 is the supervised loss, bit for bit.
        hard_mean = label_loss(logits, batch["label"], settings.loss)
        return (1.0 - distill.weight) * hard_mean + distill.weight * soft.mean(), {}
    hard = per_clip_label_loss(logits, batch["label"], settings.loss)
    weight = jnp.where(batch["labelled"] > 0, distill.weight, 1.0)
    return jnp.mean(weight * soft + (1.0 - weight) * hard), {}
