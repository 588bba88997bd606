"""The Mamba mixer's depthwise causal conv over time, and its fused inference form with the SiLU."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, reverse: bool = False) -> jax.Array:
    """Depthwise causal conv: x (B, L, C), kernel (K, C), bias (C,) or None -> (B, L, C).

    Output t sees inputs t-K+1 .. t (zeros before 0); with ``reverse`` the same conv of the
    time-flipped sequence, flipped back: output t sees t .. t+K-1, taps in reverse order.

    A sum of K shifted windows: on XLA's CPU backend this runs 10-50x faster, forward and
    backward, than ``lax.conv_general_dilated`` with ``feature_group_count=C`` at the recipes'
    shapes (equal within float32 rounding).
    """
    kernel = kernel.astype(x.dtype)
    width, length = kernel.shape[0], x.shape[1]
    if reverse:  # tap k sees x[t + width - 1 - k]
        padded = jnp.pad(x, ((0, 0), (0, width - 1), (0, 0)))
        windows = [padded[:, width - 1 - k : width - 1 - k + length] for k in range(width)]
    else:  # tap k sees x[t - width + 1 + k]
        padded = jnp.pad(x, ((0, 0), (width - 1, 0), (0, 0)))
        windows = [padded[:, k : k + length] for k in range(width)]
    out = sum(window * kernel[k] for k, window in enumerate(windows))
    return out if bias is None else out + bias.astype(x.dtype)


def causal_conv_from_history(x: jax.Array, history: jax.Array, kernel: jax.Array,
                             bias: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """:func:`causal_conv` (forward in time) of a piece ``x`` (B, L, C) of a longer sequence whose
    ``history`` (B, K - 1, C) holds the K - 1 inputs before it (zeros at the start) -> the piece's
    output (B, L, C) and the history the next piece continues from (B, K - 1, C)."""
    width = kernel.shape[0]
    joined = jnp.concatenate([history.astype(x.dtype), x], axis=1)
    out = causal_conv(joined, kernel, bias)[:, width - 1:]
    return out, joined[:, joined.shape[1] - (width - 1):]
