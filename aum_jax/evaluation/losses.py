"""The label loss of the original: BCE with logits, or cross-entropy.

Evaluation reports it as the ``loss`` metric; the "supervised" training objective
(:mod:`aum_jax.training.objectives`) minimises it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


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


def per_clip_label_loss(logits: jax.Array, labels: jax.Array, loss: str) -> jax.Array:
    """``(B,)``: :func:`label_loss` of each clip (BCE averaged over its classes), for losses weighted per clip."""
    if loss == "BCE":
        return optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=-1)
    if loss == "CE":
        return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.argmax(labels, axis=-1))
    raise ValueError(f"unknown loss {loss!r}; use 'BCE' or 'CE'")
