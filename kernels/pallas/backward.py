"""The backward selective-scan kernel: walks time in reverse, recomputing states chunk by chunk.

For each chunk, last to first, starting from the boundary state the forward pass stored:

1. the states are recomputed forward through the chunk, and the state at the start of
   every sub-block of ``unroll`` steps is parked in a small scratch buffer;
2. the sub-blocks are visited last to first: the ``unroll`` states of one are recomputed into
   registers from its parked start, then its steps are walked backward, carrying
   ``dh = exp(dt_{s+1} A) * dh_{s+1}`` from step to step.

With ``g = dout * scale * silu(z)`` and ``dh_s = carry + g C_s``, a step yields

    du = g D + dt sum_n(dh B),  ddt = u sum_n(dh B) + sum_n(dh h_{s-1} a A),
    dB = sum_d(dh dt u),  dC = sum_d(g h_s),  dA += dh h_{s-1} a dt,  dD += g u,
    dz = dout scale (y + D u) silu'(z),  ddelta = ddt softplus'(delta + bias),  dbias += ddelta.

Row gradients of an input shared by both directions accumulate in place: direction 1 adds
to what direction 0 stored. dB and dC are summed over channels per tile here and over
tiles by the caller; dA, dD and dbias per program, and over the batch by the caller.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from . import forward as fw
from . import layout as lo
from .layout import BlockConfig, ScanLayout, Tile


class GradRefs(NamedTuple):
    """The backward kernel's output refs by name (a tuple per row-gradient kind, one per given
    tensor; dD, dbias, dz None where absent) and its scratch buffer."""

    du: tuple
    ddelta: tuple
    dB: tuple
    dC: tuple
    dA: Any
    dD: Any
    dbias: Any
    dz: Any
    scratch: Any


def _split_outputs(layout: ScanLayout, refs) -> GradRefs:
    """Flat outputs, in ``backward``'s ``out_shape`` order -> :class:`GradRefs`."""
    n = layout.n_u
    du, ddelta, dB, dC, (dA,), dD, dbias, dz, (scratch,) = fw.groups(
        refs, (n, n, n, n, 1, int(layout.n_d > 0), int(layout.n_bias > 0), int(layout.has_z), 1))
    first = lambda group: group[0] if group else None
    return GradRefs(du, ddelta, dB, dC, dA, first(dD), first(dbias), first(dz), scratch)


def _direction(layout: ScanLayout, blocks: BlockConfig, inputs: fw.InputRefs, states_ref, dout_ref, grads: GradRefs,
               tile: Tile, k: int, interpret: bool):
    """Direction ``k``'s walk back over time: stores its row gradients (adding to direction 0's
    for shared inputs) and dA; returns its dD and dbias sums (block_d,)."""
    a, d, bias = fw.direction_constants(layout, inputs, tile, k)
    z_ref, n_state = inputs.z, layout.n_state
    j = layout.pick(layout.n_u, k)
    du_ref, ddelta_ref, dB_ref, dC_ref = grads.du[j], grads.ddelta[j], grads.dB[j], grads.dC[j]
    accumulate = k > 0 and layout.n_u == 1  # direction 0 already stored this input's rows
    bucket = pl.program_id(1)

    def state_row_view(ref, t):
        return ref.at[tile.b, bucket, t, pl.ds(0, n_state)]

    def scratch_view(i):
        return grads.scratch.at[tile.b, bucket, i, pl.ds(0, blocks.block_d), pl.ds(0, n_state)]

    def advance(h, rows):
        dt = fw.step_size(layout, rows["delta"], bias)
        decay = jnp.exp(dt[:, None] * a)
        return decay * h + (dt * rows["u"])[:, None] * rows["B"][None, :], decay, dt

    def load_rows(s):
        """The rows that recompute the state at logical step ``s``: u, delta, B."""
        t = lo.time_index(layout, k, s)
        return t, fw.load_step(layout, inputs, tile, k, t, readout=False)

    def load_back_rows(t):
        """The rows the walk back needs besides those: C, z, dout and what direction 0 stored."""
        rows = {"C": lo.state_row(inputs.Cs[j], tile, t, n_state), "dout": lo.channel_row(dout_ref, tile, t)}
        if z_ref is not None:
            rows["z"] = lo.channel_row(z_ref, tile, t)
        if accumulate:
            rows["du"] = lo.channel_row(du_ref, tile, t)
            rows["ddelta"] = lo.channel_row(ddelta_ref, tile, t)
            rows["dB"] = lo.load(state_row_view(dB_ref, t), tile.n_mask)
            rows["dC"] = lo.load(state_row_view(dC_ref, t), tile.n_mask)
        if k > 0 and z_ref is not None:
            rows["dz"] = lo.channel_row(grads.dz, tile, t)
        return rows

    def step_back(t, rows, h, h_prev, decay, dt, carry):
        dh_next, dA, dD, dbias = carry
        u, dout = rows["u"], rows["dout"] * layout.scale
        y = jnp.sum(h * rows["C"][None, :], axis=1)
        if d is not None:
            y = y + d * u
        if z_ref is not None:
            z = rows["z"]
            sig = jax.nn.sigmoid(z)
            dz = dout * y * sig * (1.0 + z * (1.0 - sig))
            lo.store_channel_row(grads.dz, tile, t, dz + rows["dz"] if k > 0 else dz)
            g = dout * z * sig
        else:
            g = dout
        dh = dh_next + g[:, None] * rows["C"][None, :]
        dbu = jnp.sum(dh * rows["B"][None, :], axis=1)
        du = dt * dbu
        if d is not None:
            du = du + g * d
            dD = dD + g * u
        da = dh * h_prev * decay
        ddt = u * dbu + jnp.sum(da * a, axis=1)
        dA = dA + da * dt[:, None]
        ddelta = ddt
        if layout.delta_softplus:
            ddelta = ddt * lo.softplus_grad(rows["delta"] if bias is None else rows["delta"] + bias)
        if bias is not None:
            dbias = dbias + ddelta
        dB = jnp.sum(dh * (dt * u)[:, None], axis=0)
        dC = jnp.sum(g[:, None] * h, axis=0)
        if accumulate:
            du, ddelta, dB, dC = du + rows["du"], ddelta + rows["ddelta"], dB + rows["dB"], dC + rows["dC"]
        lo.store_channel_row(du_ref, tile, t, du)
        lo.store_channel_row(ddelta_ref, tile, t, ddelta)
        lo.store(state_row_view(dB_ref, t), dB, tile.n_mask)
        lo.store(state_row_view(dC_ref, t), dC, tile.n_mask)
        return decay * dh, dA, dD, dbias

    def sub_block_back(first, size: int, h_start, carry):
        """Recomputes ``size`` states from ``h_start`` into registers, then walks them back."""
        loaded = [load_rows(first + i) for i in range(size)]
        states, decays, dts, h = [], [], [], h_start
        for _, rows in loaded:
            h, decay, dt = advance(h, rows)
            states.append(h)
            decays.append(decay)
            dts.append(dt)
        for i in reversed(range(size)):  # the other rows are loaded as the walk reaches their step
            t, rows = loaded[i]
            rows = {**rows, **load_back_rows(t)}
            carry = step_back(t, rows, states[i], states[i - 1] if i else h_start, decays[i], dts[i], carry)
        return carry

    def park(first, i, h, size: int):
        """Stores sub-block ``i``'s start state, then advances ``h`` over its ``size`` steps."""
        lo.store(scratch_view(jnp.int32(i)), h, None)
        return lo.walk(first + i * blocks.unroll, size, size, h, load_rows, lambda s, loaded, h: advance(h, loaded[1])[0])

    def chunk_back(c, size: int, carry):
        first = c * blocks.chunk
        n_sub, rest = divmod(size, blocks.unroll)
        boundary = states_ref.at[tile.b, jnp.int32(k), jnp.int32(c), pl.ds(tile.d0, blocks.block_d), pl.ds(0, n_state)]
        h = lo.load(boundary, tile.dn_mask)
        if n_sub:
            h = jax.lax.fori_loop(0, n_sub, lambda i, h: park(first, i, h, blocks.unroll), h)
        if rest:
            lo.store(scratch_view(jnp.int32(n_sub)), h, None)
        if not interpret:
            plgpu.debug_barrier()  # the parked states are read back below
        if rest:
            h_start = lo.load(scratch_view(jnp.int32(n_sub)), None)
            carry = sub_block_back(first + n_sub * blocks.unroll, rest, h_start, carry)

        def back(i, carry):
            i = n_sub - 1 - i
            return sub_block_back(first + i * blocks.unroll, blocks.unroll, lo.load(scratch_view(i), None), carry)

        return jax.lax.fori_loop(0, n_sub, back, carry) if n_sub else carry

    zeros_d = jnp.zeros((blocks.block_d,), jnp.float32)
    zeros_dn = jnp.zeros((blocks.block_d, n_state), jnp.float32)
    carry = (zeros_dn, zeros_dn, zeros_d, zeros_d)
    n_full, tail = divmod(layout.length, blocks.chunk)
    if tail:
        carry = chunk_back(n_full, tail, carry)
    if n_full:
        carry = jax.lax.fori_loop(0, n_full, lambda i, c: chunk_back(n_full - 1 - i, blocks.chunk, c), carry)
    _, dA, dD, dbias = carry
    lo.store(grads.dA.at[jnp.int32(k), tile.b, pl.ds(tile.d0, blocks.block_d), pl.ds(0, n_state)], dA, tile.dn_mask)
    return dD, dbias


def _kernel(*refs, layout: ScanLayout, blocks: BlockConfig, n_inputs: int, interpret: bool):
    inputs, states_ref, dout_ref = fw.split_inputs(layout, refs[:n_inputs]), refs[n_inputs], refs[n_inputs + 1]
    grads = _split_outputs(layout, refs[n_inputs + 2 :])
    tile = Tile.here(layout, blocks.block_d)
    sums = {"dD": [0.0] * layout.n_d, "dbias": [0.0] * layout.n_bias}
    for k in range(layout.n_dirs):
        if k and not interpret:
            plgpu.debug_barrier()  # direction k reads back the rows direction k - 1 stored
        dD_k, dbias_k = _direction(layout, blocks, inputs, states_ref, dout_ref, grads, tile, k, interpret)
        if layout.n_d:
            sums["dD"][layout.pick(layout.n_d, k)] += dD_k
        if layout.n_bias:
            sums["dbias"][layout.pick(layout.n_bias, k)] += dbias_k
    for ref, values in ((grads.dD, sums["dD"]), (grads.dbias, sums["dbias"])):
        for i, value in enumerate(values):
            lo.store(ref.at[jnp.int32(i), tile.b, pl.ds(tile.d0, blocks.block_d)], value, tile.d_mask)


def backward(
    layout: ScanLayout, blocks: BlockConfig, inputs: list[jax.Array], states: jax.Array, dout: jax.Array, *, interpret: bool
):
    """Runs the kernel. Returns float32 (du, ddelta, dB, dC per given tensor; dA (K, D, N);
    dD (n_d, D) or None; dbias (n_bias, D) or None; dz or None), reduced over tiles and batch."""
    batch, length, dim, n_state = layout.batch, layout.length, layout.dim, layout.n_state
    tiles = pl.cdiv(dim, blocks.block_d)
    f32 = jnp.float32
    rows = jax.ShapeDtypeStruct((batch, length, dim), f32)
    per_tile = jax.ShapeDtypeStruct((batch, tiles, length, n_state), f32)
    out_shape = [rows] * (2 * layout.n_u) + [per_tile] * (2 * layout.n_u)
    out_shape.append(jax.ShapeDtypeStruct((layout.n_dirs, batch, dim, n_state), f32))
    for count in (layout.n_d, layout.n_bias):
        if count:
            out_shape.append(jax.ShapeDtypeStruct((count, batch, dim), f32))
    if layout.has_z:
        out_shape.append(rows)
    scratch = (batch, tiles, pl.cdiv(blocks.chunk, blocks.unroll), blocks.block_d, n_state)
    out_shape.append(jax.ShapeDtypeStruct(scratch, f32))
    outs = pl.pallas_call(
        functools.partial(_kernel, layout=layout, blocks=blocks, n_inputs=len(inputs), interpret=interpret),
        out_shape=out_shape,
        grid=(batch, tiles),
        compiler_params=plgpu.CompilerParams(num_warps=blocks.num_warps, num_stages=1),
        interpret=interpret,
        name="aum_selective_scan_bwd",
    )(*inputs, states, dout)
    du, ddelta, dB, dC, dA, dD, dbias, dz, _ = _split_outputs(layout, outs)
    n = layout.d_state
    dB = [x.sum(axis=1)[..., :n] for x in dB]
    dC = [x.sum(axis=1)[..., :n] for x in dC]
    dA = dA.sum(axis=1)[..., :n]
    dD = None if dD is None else dD.sum(axis=1)
    dbias = None if dbias is None else dbias.sum(axis=1)
    return list(du), list(ddelta), dB, dC, dA, dD, dbias, dz
