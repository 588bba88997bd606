"""Layers shared by the model and its token mixers: RMSNorm, the depthwise causal conv, and
PyTorch's default initialisers (the original's modules are PyTorch's)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from aum_jax.ops.conv import causal_conv


def torch_linear_init(scale: float = 1.0) -> nnx.Initializer:
    """PyTorch's default ``nn.Linear``/``nn.Conv1d`` weight init, U(+-1/sqrt(fan_in)), times ``scale``:
    flax's ``variance_scaling`` with variance scale/3 over the kernel's fan-in (its axis -2)."""
    return nnx.initializers.variance_scaling(scale**2 / 3, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default bias init U(+-1/sqrt(fan_in)); the fan-in is the weight's, not in the bias' shape."""
    bound = 1 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis, computed in float32: ``x / rms(x) * weight``."""

    def __init__(self, dim: int, eps: float):
        self.eps = eps
        self.weight = nnx.Param(jnp.ones((dim,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        """(..., D) -> (..., D) float32."""
        x = x.astype(jnp.float32)
        rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
        return x * rstd * self.weight[...]


class CausalConv1d(nnx.Module):
    """Depthwise causal conv over time: output t sees inputs t-K+1 .. t (zeros before 0).

    With ``reverse`` it is the same conv applied to the time-flipped sequence, flipped back:
    output t sees inputs t .. t+K-1 with the taps in reverse order (zeros after L-1).
    """

    def __init__(self, channels: int, width: int, use_bias: bool, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(torch_linear_init()(rngs.params(), (width, channels)))
        self.bias = nnx.Param(torch_bias_init(width)(rngs.params(), (channels,))) if use_bias else None

    def __call__(self, x: jax.Array, *, reverse: bool = False) -> jax.Array:
        """(B, L, C) -> (B, L, C) (:func:`aum_jax.ops.conv.causal_conv`)."""
        return causal_conv(x, self.kernel[...], None if self.bias is None else self.bias[...], reverse=reverse)
