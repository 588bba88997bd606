"""A Pallas (Triton) GPU kernel for the selective-scan recurrence.

One program per (batch element, tile of ``block_d`` channels) walks time in a
``fori_loop``, keeping its (block_d, N) state in registers and reading one row of
``u``, ``delta``, ``B`` and ``C`` per step, the layout of the original CUDA kernel.
The elementwise parts (delta bias, softplus, the D skip, the silu gate) stay in XLA,
which fuses them around the kernel; the kernel computes only

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t,    y_t = <h_t, C_t>.

Triton needs power-of-two blocks, so L, the channel count and N are zero-padded: a step
with delta = 0 is the identity and trailing steps cannot change earlier outputs, a padded
state column has B = C = 0, and padded channels are dropped.

The backward pass is the VJP of the pure-JAX chunked scan (``aum_jax.ops.scan``): the
same function, recomputed from the inputs with only chunk-boundary states kept.

On CPU the kernel runs in Pallas interpret mode, which is how the tests check it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from aum_jax.ops.scan import DEFAULT_CHUNK_SIZE, scan_readout

DEFAULT_BLOCK_D = 64  # channels per program
NUM_WARPS = 4


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _kernel(u_ref, delta_ref, a_ref, b_ref, c_ref, y_ref, *, length: int):
    """Refs: u, delta, y (L, BD); A (BD, N); B, C (L, N)."""
    a = a_ref[...]

    def step(t, h):
        u_t = u_ref[t, :]
        delta_t = delta_ref[t, :]
        h = jnp.exp(delta_t[:, None] * a) * h + (delta_t * u_t)[:, None] * b_ref[t, :][None, :]
        y_ref[t, :] = jnp.sum(h * c_ref[t, :][None, :], axis=1)
        return h

    jax.lax.fori_loop(0, length, step, jnp.zeros(a.shape, jnp.float32))


def _pad_to(x: jax.Array, axis: int, size: int) -> jax.Array:
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _pallas_readout(u, delta, A, B, C, *, block_d: int, interpret: bool):
    batch, length, dim = u.shape
    n = A.shape[1]
    lp, np2 = _next_pow2(length), _next_pow2(n)
    bd = min(block_d, _next_pow2(dim))
    dp = pl.cdiv(dim, bd) * bd
    u, delta = (_pad_to(_pad_to(x, 1, lp), 2, dp) for x in (u, delta))
    A = _pad_to(_pad_to(A, 0, dp), 1, np2)
    B, C = (_pad_to(_pad_to(x, 1, lp), 2, np2) for x in (B, C))
    channels = pl.BlockSpec((None, lp, bd), lambda b, d: (b, 0, d))
    states = pl.BlockSpec((None, lp, np2), lambda b, d: (b, 0, 0))
    y = pl.pallas_call(
        functools.partial(_kernel, length=length),
        out_shape=jax.ShapeDtypeStruct((batch, lp, dp), jnp.float32),
        grid=(batch, dp // bd),
        in_specs=[channels, channels, pl.BlockSpec((bd, np2), lambda b, d: (d, 0)), states, states],
        out_specs=channels,
        compiler_params=plgpu.CompilerParams(num_warps=NUM_WARPS, num_stages=1),
        interpret=interpret,
        name="aum_selective_scan",
    )(u, delta, A, B, C)
    return y[:, :length, :dim]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def pallas_readout(u, delta, A, B, C, block_d: int = DEFAULT_BLOCK_D, interpret: bool = False):
    """float32 u, delta (B, L, D), A (D, N), B, C (B, L, N) -> readout <h_t, C_t> (B, L, D)."""
    return _pallas_readout(u, delta, A, B, C, block_d=block_d, interpret=interpret)


def _forward(u, delta, A, B, C, block_d, interpret):
    return _pallas_readout(u, delta, A, B, C, block_d=block_d, interpret=interpret), (u, delta, A, B, C)


def _backward(block_d, interpret, residuals, grad):
    del block_d, interpret
    _, vjp = jax.vjp(lambda *xs: scan_readout(*xs, impl="chunked", chunk_size=DEFAULT_CHUNK_SIZE), *residuals)
    return vjp(grad)


pallas_readout.defvjp(_forward, _backward)
