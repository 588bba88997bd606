"""Differentiable kernels that run per batch shard under data parallelism.

XLA cannot partition a custom call (a ``pallas_call`` on GPU, an XLA FFI call on CPU):
inside a ``jit`` whose inputs are split along the batch it gathers the operands onto
every device and each device computes the whole global batch. :func:`differentiable`
turns a kernel's per-shard forward and backward into one ``jax.custom_vjp`` function
whose forward and backward each run under ``jax.shard_map`` over the current mesh
(``jax.set_mesh``): every device scans only its own rows, and the gradients of the
replicated parameters are summed over the mesh once, in the backward. The
``custom_vjp`` sits outside the ``shard_map`` (jax issue 21855), so JAX's autodiff never
has to transpose the kernel's collectives.

A kernel sees two kinds of inputs: ``rows``, a pytree of arrays whose leading axis is
the batch (split over the mesh), and ``params``, a pytree of arrays every device holds
whole (replicated). Its forward returns the output rows and the rows it saves for the
backward; its backward returns the gradients of ``rows`` and of ``params``, the latter
summed over this shard's batch only.

Without a mesh (plain ``jit``, serving, ``jax.export``), with a one-device mesh, or
with a batch the mesh does not divide, the kernel runs as it is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Hashable
from typing import Any

import jax
from jax.sharding import AxisType, PartitionSpec

Rows = Any  # pytree of (B, ...) arrays
Params = Any  # pytree of replicated arrays


@dataclasses.dataclass(frozen=True)
class Kernel:
    """A kernel's per-shard passes; ``static`` is a hashable description of the launch.

    ``forward(static, rows, params, save)`` -> ``(out (B, ...), saved)``: ``saved`` is a
    tuple of (B, ...) arrays for the backward, empty when ``save`` is False.
    ``backward(static, rows, params, saved, dout)`` -> ``(drows, dparams)``, shaped as
    ``rows`` and ``params``; ``dparams`` summed over this shard's batch.
    """

    name: str
    forward: Callable[[Hashable, Rows, Params, bool], tuple[jax.Array, tuple[jax.Array, ...]]]
    backward: Callable[[Hashable, Rows, Params, tuple[jax.Array, ...], jax.Array], tuple[Rows, Params]]


def batch_axes(batch: int) -> tuple[jax.sharding.AbstractMesh, tuple[str, ...]] | None:
    """The current mesh and the axes that split a batch of ``batch`` rows, or None.

    aum-jax's meshes are data-parallel: every non-manual axis of the mesh set with
    ``jax.set_mesh`` splits the batch. None without a mesh, when those axes hold one
    device, or when they do not divide ``batch``.
    """
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return None
    axes = tuple(name for name, kind in zip(mesh.axis_names, mesh.axis_types) if kind != AxisType.Manual)
    size = 1
    for name in axes:
        size *= mesh.shape[name]
    if size == 1 or batch % size:
        return None
    return mesh, axes


def _batch_size(rows: Rows) -> int:
    return jax.tree.leaves(rows)[0].shape[0]


def _per_shard(fn: Callable, mesh_axes, n_rows_in: int, n_replicated_in: int) -> Callable:
    """``fn(*args) -> (rows_out, summed)`` under ``shard_map``: the first ``n_rows_in``
    arguments and ``rows_out`` split along the batch, the other arguments replicated,
    ``summed`` summed over the mesh (``psum``) and replicated."""
    if mesh_axes is None:
        return fn
    mesh, axes = mesh_axes
    rows_spec, whole = PartitionSpec(axes), PartitionSpec()

    def body(*args):
        rows_out, summed = fn(*args)
        return rows_out, jax.tree.map(lambda x: jax.lax.psum(x, axes), summed)

    return jax.shard_map(
        body, mesh=mesh, in_specs=(rows_spec,) * n_rows_in + (whole,) * n_replicated_in,
        out_specs=(rows_spec, whole),
        check_vma=False,
    )


def forward_only(fn: Callable[[Rows, Params], jax.Array]) -> Callable[[Rows, Params], jax.Array]:
    """``call(rows, params) -> fn(rows, params)`` (output rows (B, ...)), split along the batch over the
    current mesh; no gradient (an inference kernel)."""

    def call(rows, params):
        return _per_shard(lambda r, p: (fn(r, p), ()), batch_axes(_batch_size(rows)), 1, 1)(rows, params)[0]

    return call


def differentiable(kernel: Kernel) -> Callable[[Hashable, Rows, Params], jax.Array]:
    """``call(static, rows, params) -> out``, differentiable in ``rows`` and ``params``,
    split along the batch over the current mesh (see the module docstring)."""

    def run_forward(static, rows, params, save: bool):
        fn = lambda r, p: (kernel.forward(static, r, p, save), ())
        return _per_shard(fn, batch_axes(_batch_size(rows)), 1, 1)(rows, params)[0]

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def call(static, rows, params):
        return run_forward(static, rows, params, save=False)[0]

    def call_fwd(static, rows, params):
        out, saved = run_forward(static, rows, params, save=True)
        return out, (rows, params, saved)

    def call_bwd(static, residuals, dout):
        rows, params, saved = residuals
        fn = lambda r, s, d, p: kernel.backward(static, r, p, s, d)
        return _per_shard(fn, batch_axes(_batch_size(rows)), 3, 1)(rows, saved, dout, params)

    call.defvjp(call_fwd, call_bwd)
    return call
