"""Knowledge distillation (``config.train.objective="distill"``, set by ``config.distill``): the student
learns the teacher's targets beside the labels.

The targets are the teacher's probabilities at temperature ``T``: ``softmax(z_t / T)`` for the
"kl" loss (single-label, CE tasks) or ``sigmoid(z_t / T)`` for "bce" (multi-label, BCE tasks,
as EfficientAT). They come either from an online teacher, a frozen model run inside each
training step on the very batch the student sees (:func:`online_targets`), or from stored
logits (``scripts/teacher_logits.py``), which ride with each clip through the input pipeline,
mixed by mixup's own lambda. Per clip, ``(1 - weight) * label_loss + weight * distill_loss``;
an unlabelled clip (``batch["labelled"] == 0``) trains on ``distill_loss`` alone.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from aum_jax.evaluation.losses import label_loss, per_clip_label_loss
from aum_jax.models import AudioMamba, AuMConfig

LOSSES = ("kl", "bce")
TEACHER_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class Distill:
    """The static settings of distillation (hashable: a static argument of the jitted step).

    Attributes:
      weight: lambda, the distillation loss's share for a labelled clip.
      temperature: T, dividing teacher and student logits.
      loss: "kl" or "bce".
      label_loss: the label loss of the labelled clips, ``config.train.loss`` ("BCE" or "CE").
    """

    weight: float
    temperature: float
    loss: str
    label_loss: str


def default_config() -> ml_collections.ConfigDict:
    """``config.distill`` at its defaults: knowledge distillation from a teacher
    (``config.train.objective="distill"``); not in the original.

    ``loss = (1 - weight) * label_loss + weight * distill_loss`` per labelled clip; an
    unlabelled clip trains on ``distill_loss`` alone.
    """
    c = ml_collections.ConfigDict()
    c.teacher = ""  # an aum-jax model directory run frozen inside each step on the student's batch ("" none).
    c.logits = ""  # a folder of stored teacher logits (scripts/teacher_logits.py): no teacher forward ("" none).
    c.weight = 0.9  # lambda; EfficientAT's kd_lambda=0.1 weighs the label loss, i.e. 0.9 here.
    c.temperature = 1.0  # softens teacher and student alike; EfficientAT's and DASS's default.
    c.loss = ""  # "kl" (T^2 KL to the teacher's softmax) or "bce" (to its sigmoids, as EfficientAT); "": kl for a CE task, bce for BCE.
    c.teacher_dtype = "float32"  # the online teacher's compute dtype: "float32" or "bfloat16" (its parameters stay float32).
    return c


def step_settings(config: ml_collections.ConfigDict, model: AuMConfig) -> Distill:
    """:class:`Distill` of ``config.distill`` (``loss`` "": kl for a CE task, bce for BCE).

    Raises:
      ValueError: a setting out of range, naming its key.
    """
    del model
    d = config.distill
    if not 0.0 <= d.weight <= 1.0:
        raise ValueError(f"config.distill.weight={d.weight}: must be in [0, 1]")
    if not d.temperature > 0:
        raise ValueError(f"config.distill.temperature={d.temperature}: must be positive")
    loss = d.loss or ("kl" if config.train.loss == "CE" else "bce")
    if loss not in LOSSES:
        raise ValueError(f"config.distill.loss={d.loss!r}: choose from {', '.join(LOSSES)} "
                         "(or leave it empty: kl for a CE task, bce for BCE)")
    if d.teacher_dtype not in TEACHER_DTYPES:
        raise ValueError(f"config.distill.teacher_dtype={d.teacher_dtype!r}: choose from {', '.join(TEACHER_DTYPES)}")
    return Distill(float(d.weight), float(d.temperature), loss, config.train.loss)


class Teacher(nnx.Module):
    """The frozen online teacher and how it reads a batch: its own input ``teacher_fbank`` (B, T_t, F_t)
    where the batch has it (a teacher of other features), else the student's normalised ``fbank``
    (B, T, F) mapped to its statistics, ``x * input_scale + input_shift`` (1 and 0 when both use the
    same statistics)."""

    def __init__(self, model: AudioMamba, input_scale: float = 1.0, input_shift: float = 0.0):
        self.model, self.input_scale, self.input_shift = model, input_scale, input_shift

    def __call__(self, batch: dict[str, jax.Array]) -> jax.Array:
        """-> the teacher's logits (B, C)."""
        x = batch.get("teacher_fbank")
        if x is None:
            x = batch["fbank"] * self.input_scale + self.input_shift
        return self.model(x)


def targets_from_logits(logits: jax.Array, distill: Distill) -> jax.Array:
    """Teacher logits ``(B, C)`` -> float32 targets ``(B, C)``: its softmax or sigmoid at temperature T."""
    scaled = logits.astype(jnp.float32) / distill.temperature
    return jax.nn.softmax(scaled, axis=-1) if distill.loss == "kl" else jax.nn.sigmoid(scaled)


def online_targets(teacher: Teacher, batch: dict[str, jax.Array], distill: Distill) -> dict[str, jax.Array]:
    """``{"teacher": (B, C)}``: the frozen teacher's targets for this very batch, without gradients."""
    return {"teacher": jax.lax.stop_gradient(targets_from_logits(teacher(batch), distill))}


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


def objective(model: AudioMamba, batch: dict[str, jax.Array], distill: Distill) -> tuple[jax.Array, dict]:
    """The batch's mean (and no metrics) of ``(1 - weight) * label_loss + weight * distill_loss`` over labelled clips
    and ``distill_loss`` over unlabelled ones.

    ``batch`` holds ``fbank`` (B, T, F), ``label`` (B, C), ``teacher`` (B, C) targets and, where
    the source has unlabelled clips, ``labelled`` (B,) (1 or 0).
    """
    logits = model(batch["fbank"])  # the teacher's own input, if any, is not the student's.
    soft = distill_loss(logits, batch["teacher"], distill)
    if "labelled" not in batch:  # every clip labelled: weight 0 is the supervised loss, bit for bit.
        hard_mean = label_loss(logits, batch["label"], distill.label_loss)
        return (1.0 - distill.weight) * hard_mean + distill.weight * soft.mean(), {}
    hard = per_clip_label_loss(logits, batch["label"], distill.label_loss)
    weight = jnp.where(batch["labelled"] > 0, distill.weight, 1.0)
    return jnp.mean(weight * soft + (1.0 - weight) * hard), {}
