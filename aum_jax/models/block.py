"""The pre-norm residual block of AuM around a registered token mixer (:mod:`aum_jax.models.mixers`)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from aum_jax.models.config import AuMConfig
from aum_jax.models.layers import RMSNorm
from aum_jax.models.mixers import MIXERS


class Block(nnx.Module):
    """Add -> RMSNorm -> mixer (``config.mixer``; Mamba in the original), carrying the residual stream separately.

    ``residual = residual + drop_path(hidden)``; ``hidden = mixer(norm(residual))``.
    Starting from ``residual = 0`` with a drop-path rate of 0 in the first block gives the
    original's first block, which takes ``residual = hidden``.
    """

    def __init__(self, config: AuMConfig, *, rngs: nnx.Rngs):
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = RMSNorm(config.embed_dim, config.norm_epsilon)
        self.mixer = MIXERS[config.mixer].module(config, rngs=rngs)

    def _add(self, residual: jax.Array, hidden: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The residual stream after adding ``hidden``, and its norm: the mixer's input in ``hidden``'s dtype."""
        residual = residual + hidden
        if self.residual_in_fp32:
            residual = residual.astype(jnp.float32)
        return residual, self.norm(residual).astype(hidden.dtype)

    def stream(self, hidden: jax.Array, residual: jax.Array, state: Any) -> tuple[jax.Array, jax.Array, Any]:
        """A piece (B, L, D) of the sequence (hidden and residual), read forward in time from the mixer's
        ``state`` (its ``stream``; inference, no stochastic depth) -> new hidden, new residual and state."""
        residual, normed = self._add(residual, hidden)
        hidden, state = self.mixer.stream(normed, state)
        return hidden, residual, state

    def read_back(self, hidden: jax.Array, residual: jax.Array, state: Any,
                  valid: jax.Array) -> tuple[jax.Array, Any]:
        """A piece (B, L, D) of the sequence (hidden and residual, the first ``valid`` steps real), read
        backward in time from the Mamba mixer's reverse ``state`` (:meth:`Mamba.direction
        <aum_jax.models.mixers.mamba.Mamba.direction>`; inference) -> the backward branch's output
        (B, L, Di), which :meth:`read_forward` takes, and the state before the piece."""
        _, normed = self._add(residual, hidden)
        return self.mixer.direction(normed, state, valid, reverse=True)

    def read_forward(self, hidden: jax.Array, residual: jax.Array, state: Any, valid: jax.Array,
                     backward: jax.Array | None) -> tuple[jax.Array, jax.Array, Any]:
        """A piece (B, L, D) of the sequence read forward in time from the Mamba mixer's ``state``, with the
        backward branch's output on it (:meth:`read_back`; None for a causal mixer) -> new hidden, new
        residual (the block's output on the piece, as :meth:`__call__` gives it) and the state after it."""
        residual, normed = self._add(residual, hidden)
        forward, state = self.mixer.direction(normed, state, valid, reverse=False)
        return self.mixer.join(forward, backward), residual, state

    def __call__(
        self, hidden: jax.Array, residual: jax.Array, keep_mask: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """hidden, residual (B, L, D), keep_mask (B, 1, 1) -> new hidden, new residual."""
        residual, normed = self._add(residual, hidden * keep_mask.astype(hidden.dtype))
        return self.mixer(normed), residual
