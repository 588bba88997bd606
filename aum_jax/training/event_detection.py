"""Sound-event detection (``config.train.objective="events"``): a score per time step, trained from events.

The model's head reads every time step (:meth:`aum_jax.models.AudioMamba.frame_logits`: (B, T', C),
a time step's patch tokens averaged over frequency). A clip with strong labels
(``config.data.<split>_events``) trains its time steps on their targets
(:class:`aum_jax.data.pipeline.stages.events.FrameTargets`, averaged over the frames of a step's
patch), by ``config.events.positives``:

- ``"frames"``: every step, sigmoid cross-entropy against its target, averaged over the classes and
  the steps that hold audio (a model that reads the whole file: each step of an event is named);
- ``"max"``: the max-pooling loss of streaming keyword spotting (Sun et al., Interspeech 2016): of
  each event (a run of a class's steps, extended by ``config.events.tail_seconds``) only its best
  step is a positive, and every step outside the events is a negative of the class. A causal model
  cannot name a word from its first sound; this lets it fire once it has heard enough, within the
  tail. The loss is the negatives' mean cross-entropy plus the events' mean.

A clip with strong labels also trains, with weight ``config.events.clip_weight``, the max over its time
steps on the classes its events hold (a weak label, as DCASE's baselines add to their frame loss: it names
the words before it places them). A clip with clip labels alone trains that max (pooling over time, as
the clip's score is read) on its labels, by ``config.train.loss``. Padding (``frame_valid`` 0: the end of a short clip, or
a random crop's, ``config.data.crop_seconds``) is left out of all of them.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from aum_jax.evaluation.losses import per_clip_label_loss
from aum_jax.models import AudioMamba, AuMConfig


@dataclasses.dataclass(frozen=True)
class Events:
    """The static settings of event detection (hashable: a static argument of the step).

    Attributes:
      clip_loss: the loss of clips with clip labels alone, "BCE" or "CE" (``config.train.loss``).
      patch, stride: a time patch's frames and the hop between patches (the model's).
      positives: "frames" or "max" (see the module docstring).
      tail_steps: with "max", the time steps after an event's end that may hold its best step.
      clip_weight: the weight of a strong clip's pooled loss on its events' classes.
    """

    clip_loss: str
    patch: int
    stride: int
    positives: str = "frames"
    tail_steps: int = 0
    clip_weight: float = 1.0


POSITIVES = ("frames", "max")
MAX_EVENTS = 4  # events of one class per clip that "max" trains apart; later ones share the last one's step.


def default_config() -> ml_collections.ConfigDict:
    """``config.events`` at its defaults."""
    c = ml_collections.ConfigDict()
    c.positives = "frames"  # "frames": each step of an event is a positive; "max": its best step (a causal detector).
    c.tail_seconds = 0.25  # with "max": an event's best step may come this long after its end.
    c.clip_weight = 1.0  # a strong clip's loss on its events' classes, pooled over time, added with this weight.
    return c


def step_settings(config: ml_collections.ConfigDict, model: AuMConfig) -> Events:
    """:class:`Events` of the run's config.

    Raises:
      ValueError: ``config.data.frame_targets`` is off (no frame targets reach the step).
    """
    if not config.data.frame_targets:
        raise ValueError("config.train.objective=events needs config.data.frame_targets=True (each clip's "
                         "frame targets and which frames hold audio)")
    events = config.events
    if events.positives not in POSITIVES:
        raise ValueError(f"config.events.positives={events.positives!r}: choose from {', '.join(POSITIVES)}")
    for key in ("tail_seconds", "clip_weight"):
        if not events[key] >= 0:
            raise ValueError(f"config.events.{key}={events[key]}: must be >= 0")
    step_seconds = model.strides[1] * config.data.frame_shift_ms / 1000.0
    return Events(config.train.loss, model.patch_size[1], model.strides[1], events.positives,
                  round(events.tail_seconds / step_seconds), float(events.clip_weight))


def _per_step(frames: jax.Array, steps: int, settings: Events, reduce) -> jax.Array:
    """``frames`` (B, T, ...) -> (B, T', ...): ``reduce`` over each time patch's frames."""
    index = np.arange(steps)[:, None] * settings.stride + np.arange(settings.patch)[None, :]  # (T', patch)
    return reduce(frames[:, index], axis=2)


def _every_step(logits: jax.Array, targets: jax.Array, valid: jax.Array) -> jax.Array:
    """"frames": (B,) each clip's cross-entropy against its step targets, over its classes and valid steps."""
    count = jnp.maximum(valid.sum(axis=1), 1.0)
    return (optax.sigmoid_binary_cross_entropy(logits, targets).mean(axis=-1) * valid).sum(axis=1) / count


def _best_steps(logits: jax.Array, targets: jax.Array, valid: jax.Array, tail: int) -> jax.Array:
    """"max": (B,) each clip's negatives' mean cross-entropy plus its events' (their best steps')."""
    inside = (targets > 0) & (valid[..., None] > 0)  # (B, T', C)
    span = inside
    for k in range(1, tail + 1):  # an event's steps and the ``tail`` after it: a causal max filter
        span = span | jnp.pad(inside, ((0, 0), (k, 0), (0, 0)))[:, :-k]
    span = span & (valid[..., None] > 0)
    starts = span & ~jnp.pad(span, ((0, 0), (1, 0), (0, 0)))[:, :-1]
    event = jnp.minimum(jnp.cumsum(starts, axis=1), MAX_EVENTS) * span  # (B, T', C): 1.. in an event, 0 outside
    one_hot = event[..., None] == jnp.arange(1, MAX_EVENTS + 1)  # (B, T', C, E)
    best = jnp.where(one_hot, logits[..., None], -jnp.inf).max(axis=1)  # (B, C, E)
    present = one_hot.any(axis=1)
    positive = optax.sigmoid_binary_cross_entropy(jnp.where(present, best, 0.0), 1.0)
    positive = (positive * present).sum(axis=(1, 2)) / jnp.maximum(present.sum(axis=(1, 2)), 1)
    negatives = (~span) & (valid[..., None] > 0)
    negative = optax.sigmoid_binary_cross_entropy(logits, 0.0) * negatives
    return negative.sum(axis=(1, 2)) / jnp.maximum(negatives.sum(axis=(1, 2)), 1) + positive


def objective(model: AudioMamba, batch: dict[str, jax.Array], settings: Events) -> tuple[jax.Array, dict]:
    """The batch's mean event-detection loss and its two parts (see the module docstring)."""
    logits = model.frame_logits(batch["fbank"]).astype(jnp.float32)  # (B, T', C)
    steps = logits.shape[1]
    targets = _per_step(batch["frame_label"], steps, settings, jnp.mean)  # (B, T', C)
    valid = _per_step(batch["frame_valid"], steps, settings, jnp.min)  # (B, T'): the whole patch holds audio
    if settings.positives == "max":
        frame = _best_steps(logits, targets, valid, settings.tail_steps)
    else:
        frame = _every_step(logits, targets, valid)
    pooled = jnp.where(valid[..., None] > 0, logits, -1e9).max(axis=1)  # (B, C): a clip's score, its best step's
    clip = per_clip_label_loss(pooled, batch["label"], settings.clip_loss)
    heard = (targets * valid[..., None]).max(axis=1) > 0  # (B, C): the classes a strong clip's kept steps hold
    heard_loss = per_clip_label_loss(pooled, heard.astype(jnp.float32), "BCE")
    strong = batch["strong"]
    loss = jnp.mean(strong * (frame + settings.clip_weight * heard_loss) + (1.0 - strong) * clip)
    metrics = {"frame_loss": (strong * frame).sum() / jnp.maximum(strong.sum(), 1.0),
               "clip_loss": ((1.0 - strong) * clip).sum() / jnp.maximum((1.0 - strong).sum(), 1.0)}
    return loss, metrics
