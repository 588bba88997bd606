"""The forward selective-scan kernel: every direction of one (batch, channel tile) in one program.

Per step, with the delta bias, softplus, D skip and silu gate fused in:

    dt  = softplus(delta_t + bias)                          (block_d,)
    h   = exp(dt * A) * h + (dt * u_t) * B_t                (block_d, N)
    out += scale * (<h, C_t> + D * u_t) * silu(z_t)         (block_d,)

Direction 0 stores ``out``; direction 1, walking time backward, adds to it. At the start of
every chunk of ``chunk`` logical steps the state is written to ``states`` (B, K, n_chunks,
D, N), the only residual the backward pass needs besides the inputs. For inference on a
sequence read in pieces, each direction may start from a given state ``h0`` (B, K, D, N) instead
of zeros and return the one it ends in, ``h_last`` (B, K, D, N).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from . import layout as lo
from .layout import BlockConfig, ScanLayout, Tile


class InputRefs(NamedTuple):
    """The kernels' input refs by name: a tuple per tensor kind (one entry shared by both directions
    or one per direction; ``As`` one per direction; ``Ds`` and ``biases`` may be empty); ``z`` or None."""

    us: tuple
    deltas: tuple
    As: tuple
    Bs: tuple
    Cs: tuple
    Ds: tuple
    z: Any
    biases: tuple


def groups(refs, counts: Sequence[int]) -> list[tuple]:
    """Flat refs -> consecutive tuples of ``counts`` refs each (the rest dropped)."""
    bounds = list(itertools.accumulate(counts, initial=0))
    return [tuple(refs[start:stop]) for start, stop in zip(bounds, bounds[1:])]


def split_inputs(layout: ScanLayout, refs) -> InputRefs:
    """Flat refs, in the order ``selective_scan`` passes them -> :class:`InputRefs`."""
    n_u = layout.n_u
    us, deltas, As, Bs, Cs, Ds, z, biases = groups(
        refs, (n_u, n_u, layout.n_dirs, n_u, n_u, layout.n_d, int(layout.has_z), layout.n_bias))
    return InputRefs(us, deltas, As, Bs, Cs, Ds, z[0] if z else None, biases)


def direction_constants(layout: ScanLayout, inputs: InputRefs, tile: Tile, k: int):
    """A (block_d, N'), D and delta bias (block_d,) of direction ``k`` (None where absent)."""
    a = lo.channel_state_tile(inputs.As[k], tile, layout.n_state)
    d = lo.channel_vector(inputs.Ds[layout.pick(layout.n_d, k)], tile) if inputs.Ds else None
    bias = lo.channel_vector(inputs.biases[layout.pick(layout.n_bias, k)], tile) if inputs.biases else None
    return a, d, bias


def load_step(layout: ScanLayout, inputs: InputRefs, tile: Tile, k: int, t, readout: bool = True) -> dict[str, jax.Array]:
    """The rows of time ``t`` that direction ``k`` reads; without ``readout``, only those the state needs."""
    j = layout.pick(layout.n_u, k)
    rows = dict(
        u=lo.channel_row(inputs.us[j], tile, t),
        delta=lo.channel_row(inputs.deltas[j], tile, t),
        B=lo.state_row(inputs.Bs[j], tile, t, layout.n_state),
    )
    if readout:
        rows["C"] = lo.state_row(inputs.Cs[j], tile, t, layout.n_state)
    if readout and inputs.z is not None:
        rows["z"] = lo.channel_row(inputs.z, tile, t)
    return rows


def step_size(layout: ScanLayout, delta: jax.Array, bias: jax.Array | None) -> jax.Array:
    """dt from the raw delta row: + bias, then softplus."""
    if bias is not None:
        delta = delta + bias
    return lo.softplus(delta) if layout.delta_softplus else delta


def _direction(layout: ScanLayout, blocks: BlockConfig, inputs: InputRefs, out_ref, states_ref, tile: Tile, k: int,
               h0_ref=None, h_last_ref=None) -> None:
    """Direction ``k``'s walk over time: stores (k = 0) or adds to (k > 0) the output rows; starts from
    ``h0_ref``'s state (zeros without it) and stores the last state to ``h_last_ref`` (both (B, K, D, N))."""
    a, d, bias = direction_constants(layout, inputs, tile, k)
    state_view = lambda ref: ref.at[tile.b, jnp.int32(k), pl.ds(tile.d0, tile.block_d), pl.ds(0, layout.n_state)]

    def load_rows(s):
        t = lo.time_index(layout, k, s)
        rows = load_step(layout, inputs, tile, k, t)
        if k > 0:
            rows["out"] = lo.channel_row(out_ref, tile, t)
        return t, rows

    def compute(s, loaded, h):
        t, rows = loaded
        dt = step_size(layout, rows["delta"], bias)
        h = jnp.exp(dt[:, None] * a) * h + (dt * rows["u"])[:, None] * rows["B"][None, :]
        y = jnp.sum(h * rows["C"][None, :], axis=1)
        if d is not None:
            y = y + d * rows["u"]
        if layout.has_z:
            y = y * jax.nn.sigmoid(rows["z"]) * rows["z"]
        if layout.scale != 1.0:
            y = y * layout.scale
        if k > 0:
            y = y + rows["out"]
        lo.store_channel_row(out_ref, tile, t, y)
        return h

    def chunk(c, h, size: int):
        if states_ref is not None:
            view = states_ref.at[tile.b, jnp.int32(k), jnp.int32(c), pl.ds(tile.d0, tile.block_d), pl.ds(0, layout.n_state)]
            lo.store(view, h, tile.dn_mask)
        return lo.walk(c * blocks.chunk, size, blocks.unroll, h, load_rows, compute)

    n_full, tail = divmod(layout.length, blocks.chunk)
    if h0_ref is None:
        h = jnp.zeros((blocks.block_d, layout.n_state), jnp.float32)
    else:
        h = lo.load(state_view(h0_ref), tile.dn_mask)
    if n_full:
        h = jax.lax.fori_loop(0, n_full, functools.partial(chunk, size=blocks.chunk), h)
    if tail:
        h = chunk(n_full, h, tail)
    if h_last_ref is not None:
        lo.store(state_view(h_last_ref), h, tile.dn_mask)


def _kernel(*refs, layout: ScanLayout, blocks: BlockConfig, save_states: bool, from_state: bool, interpret: bool):
    n_in = len(refs) - 1 - int(save_states) - int(from_state)
    inputs = split_inputs(layout, refs[:n_in])  # h0, the last input where given, is not among them
    h0_ref = refs[n_in - 1] if from_state else None
    outputs = iter(refs[n_in:])
    out_ref = next(outputs)
    states_ref = next(outputs) if save_states else None
    h_last_ref = next(outputs) if from_state else None
    tile = Tile.here(layout, blocks.block_d)
    for k in range(layout.n_dirs):
        if k and not interpret:
            plgpu.debug_barrier()  # direction k reads back the output rows direction k - 1 stored
        _direction(layout, blocks, inputs, out_ref, states_ref, tile, k, h0_ref, h_last_ref)


def num_chunks(layout: ScanLayout, blocks: BlockConfig) -> int:
    return pl.cdiv(layout.length, blocks.chunk)


def forward(
    layout: ScanLayout, blocks: BlockConfig, inputs: list[jax.Array], *, out_dtype, save_states: bool, interpret: bool,
    h0: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None, jax.Array | None]:
    """Runs the kernel: flat inputs in ``split_inputs`` order -> out (B, L, D), the chunk-boundary states
    (with ``save_states``) or None, and with an initial state ``h0`` (B, K, D, N) float32 (each direction
    starts from its own) the state each ends in (B, K, D, N) float32, else None."""
    shape = (layout.batch, layout.length, layout.dim)
    out_shape = [jax.ShapeDtypeStruct(shape, out_dtype)]
    if save_states:
        states = (layout.batch, layout.n_dirs, num_chunks(layout, blocks), layout.dim, layout.n_state)
        out_shape.append(jax.ShapeDtypeStruct(states, jnp.float32))
    from_state = h0 is not None
    if from_state:
        out_shape.append(jax.ShapeDtypeStruct((layout.batch, layout.n_dirs, layout.dim, layout.d_state), jnp.float32))
    outs = pl.pallas_call(
        functools.partial(_kernel, layout=layout, blocks=blocks, save_states=save_states, from_state=from_state,
                          interpret=interpret),
        out_shape=out_shape,
        grid=(layout.batch, pl.cdiv(layout.dim, blocks.block_d)),
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=1),
        interpret=interpret,
        name="aum_selective_scan_fwd",
    )(*inputs, *([h0.astype(jnp.float32)] if from_state else []))
    return outs[0], (outs[1] if save_states else None), (outs[-1] if from_state else None)
