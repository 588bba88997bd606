"""Selective scan on the GPU: Pallas (Triton) forward and backward kernels.

``selective_scan_fn`` takes the original CUDA kernel's arguments, channels last.
``bidirectional_selective_scan`` runs AuM's two directions in one launch: direction 1
reads the same time-ordered tensors from the end, so the model never flips a copy.

The forward kernel keeps only the states at chunk boundaries (every 128 steps) for the
backward kernel, which recomputes the states inside each chunk while it walks time in
reverse; training holds O(B L D) per scan, never O(B L D N). The state is float32
whatever the input dtype; the output takes ``u``'s dtype and each gradient its input's.

``selective_scan_from_state`` runs the forward kernel alone on a piece of a longer sequence, from
the state the previous piece ended in, and returns the state it ends in (inference only).

Pallas compiles the kernels through Triton on a CUDA GPU and runs them in interpret mode
elsewhere (``interpret=None`` picks by backend), which is how the CPU tests check them.
Under a data-parallel mesh each device runs them on its own batch rows (``kernels.partition``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax

from .. import partition
from .backward import backward
from .forward import forward
from .layout import BlockConfig, ScanLayout, backward_blocks, forward_blocks

Tensors = Sequence[jax.Array]


def selective_scan_fn(
    u: jax.Array,
    delta: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None = None,
    z: jax.Array | None = None,
    delta_bias: jax.Array | None = None,
    delta_softplus: bool = False,
    *,
    interpret: bool | None = None,
) -> jax.Array:
    """One forward-in-time scan, as mamba_ssm's ``selective_scan_fn`` (channels last).

    Args:
      u, delta: (B, L, D); A: (D, N); B, C: (B, L, N); D, delta_bias: (D,) or None;
      z: (B, L, D) gate, applied as silu(z), or None.

    Returns:
      (B, L, D) in ``u``'s dtype.
    """
    return bidirectional_selective_scan(*one_direction(u, delta, A, B, C, D, z, delta_bias),
                                        delta_softplus=delta_softplus, interpret=interpret)


def selective_scan_from_state(
    u: jax.Array,
    delta: jax.Array,
    A: jax.Array,
    B: jax.Array,
    C: jax.Array,
    D: jax.Array | None,
    z: jax.Array | None,
    delta_bias: jax.Array | None,
    h0: jax.Array,
    *,
    delta_softplus: bool,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`selective_scan_fn` of a piece of a longer sequence, from the state ``h0`` (B, D, N) the
    previous piece ended in (zeros at the start); forward only, no gradient.

    Returns:
      The piece's output (B, L, D) in ``u``'s dtype and the state after its last step (B, D, N) float32.
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    static = _Static(bool(delta_softplus), 1.0, bool(interpret), None)
    us, deltas, As, Bs, Cs, Ds, z, biases = one_direction(u, delta, A, B, C, D, z, delta_bias)

    def run(rows, params):
        *scan_rows, h0 = rows
        layout = _layout(static, scan_rows, params)
        _check(layout, scan_rows, params)
        state = (layout.batch, layout.dim, layout.d_state)
        if h0.shape != state:
            raise ValueError(f"selective scan: h0 has shape {h0.shape}, expected {state}")
        fwd, _ = static.pick(layout)
        out, _, h_last = forward(layout, fwd, _flat(scan_rows, params), out_dtype=u.dtype, save_states=False,
                                 interpret=static.interpret, h0=h0[:, None])
        return out, h_last[:, 0]

    return partition.forward_only(run)((us, deltas, Bs, Cs, z, h0), (As, Ds, biases))


def one_direction(u, delta, A, B, C, D, z, delta_bias) -> tuple:
    """One scan's arguments as :func:`bidirectional_selective_scan`'s, with one direction."""
    optional = lambda x: () if x is None else (x,)
    return (u,), (delta,), (A,), (B,), (C,), optional(D), z, optional(delta_bias)


def bidirectional_selective_scan(
    us: Tensors,
    deltas: Tensors,
    As: Tensors,
    Bs: Tensors,
    Cs: Tensors,
    Ds: Tensors,
    z: jax.Array | None,
    delta_biases: Tensors,
    *,
    delta_softplus: bool,
    scale: float = 1.0,
    interpret: bool | None = None,
    blocks: tuple[BlockConfig, BlockConfig] | None = None,
) -> jax.Array:
    """``scale * sum_k scan_k``, where scan 0 runs forward in time and scan 1 backward.

    ``As`` holds one (D, N) matrix per direction and fixes their number K (1 or 2). Each
    other sequence holds one tensor shared by all directions or one per direction:
    ``us``, ``deltas`` (B, L, D) and ``Bs``, ``Cs`` (B, L, N) together; ``Ds`` and
    ``delta_biases`` (D,) each, or nothing. Scan 1's output at time t is the one it
    produced on reaching t, i.e. ``flip(scan(flip(inputs)))`` of the reference.

    ``blocks`` overrides the (forward, backward) block sizes of ``kernels.layout``'s table;
    both must use the same chunk.
    """
    if interpret is None:
        interpret = jax.default_backend() != "gpu"
    rows = (tuple(us), tuple(deltas), tuple(Bs), tuple(Cs), z)
    params = (tuple(As), tuple(Ds), tuple(delta_biases))
    return _scan(_Static(bool(delta_softplus), float(scale), bool(interpret), blocks), rows, params)


class _Static(NamedTuple):
    delta_softplus: bool
    scale: float
    interpret: bool
    blocks: tuple[BlockConfig, BlockConfig] | None

    def pick(self, layout: ScanLayout) -> tuple[BlockConfig, BlockConfig]:
        if self.blocks is not None:
            fwd, bwd = self.blocks
        else:
            fwd, bwd = forward_blocks(layout, self.interpret), backward_blocks(layout, self.interpret)
        if fwd.chunk != bwd.chunk or fwd.chunk % fwd.unroll or bwd.chunk % bwd.unroll:
            raise ValueError(f"block sizes {fwd}, {bwd}: chunks must agree and be multiples of the unroll")
        return fwd, bwd


def _layout(static: _Static, rows, params) -> ScanLayout:
    us, _, _, _, z = rows
    As, Ds, biases = params
    batch, length, dim = us[0].shape
    return ScanLayout(
        batch=batch, length=length, dim=dim, d_state=As[0].shape[1], n_dirs=len(As), n_u=len(us),
        n_d=len(Ds), n_bias=len(biases), has_z=z is not None, delta_softplus=static.delta_softplus, scale=static.scale,
    )


def _flat(rows, params) -> list[jax.Array]:
    """The kernels' inputs in ``forward.split_inputs`` order."""
    us, deltas, Bs, Cs, z = rows
    As, Ds, biases = params
    return [*us, *deltas, *As, *Bs, *Cs, *Ds, *([] if z is None else [z]), *biases]


def _check(layout: ScanLayout, rows, params) -> None:
    us, deltas, Bs, Cs, z = rows
    As, Ds, biases = params
    seq, states = (layout.batch, layout.length, layout.dim), (layout.batch, layout.length, layout.d_state)
    expected = [("us", us, seq), ("deltas", deltas, seq), ("Bs", Bs, states), ("Cs", Cs, states),
                ("As", As, (layout.dim, layout.d_state)), ("Ds", Ds, (layout.dim,)), ("delta_biases", biases, (layout.dim,))]
    for name, tensors, shape in expected + ([("z", [z], seq)] if z is not None else []):
        for x in tensors:
            if x.shape != shape:
                raise ValueError(f"selective scan: {name} has shape {x.shape}, expected {shape}")
    if len(deltas) != len(us) or len(Bs) != len(us) or len(Cs) != len(us):
        raise ValueError("selective scan: us, deltas, Bs and Cs must be given for the same directions")


def _forward(static: _Static, rows, params, save: bool):
    """One shard: -> (out (B, L, D), (boundary states (B, K, n_chunks, D, N'),) or ())."""
    layout = _layout(static, rows, params)
    _check(layout, rows, params)
    fwd, _ = static.pick(layout)
    out, states, _ = forward(layout, fwd, _flat(rows, params), out_dtype=rows[0][0].dtype, save_states=save,
                             interpret=static.interpret)
    return out, ((states,) if save else ())


def _backward(static: _Static, rows, params, saved, dout):
    """One shard: -> (gradients of rows, of params summed over the shard's batch), in their dtypes."""
    layout = _layout(static, rows, params)
    _, bwd = static.pick(layout)
    (states,) = saved
    du, ddelta, dB, dC, dA, dD, dbias, dz = backward(layout, bwd, _flat(rows, params), states, dout,
                                                      interpret=static.interpret)
    us, deltas, Bs, Cs, z = rows
    As, Ds, biases = params
    cast = lambda grads, like: tuple(g.astype(x.dtype) for g, x in zip(grads, like))
    drows = (cast(du, us), cast(ddelta, deltas), cast(dB, Bs), cast(dC, Cs), None if z is None else dz.astype(z.dtype))
    dparams = (cast(dA, As), cast(() if dD is None else dD, Ds), cast(() if dbias is None else dbias, biases))
    return drows, dparams


_scan = partition.differentiable(partition.Kernel("aum_selective_scan", _forward, _backward))
