"""Data-parallel mesh and global batches.

One mesh axis (``config.mesh.data_axis``) spans the devices of every process; batches
are split along it and parameters are replicated. Each process feeds its own shard of
the data (``jax.process_index()::jax.process_count()``), and
``jax.make_array_from_process_local_data`` stitches the per-process batches into one
global array.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

if TYPE_CHECKING:  # the step and its checks run where ml_collections is not installed
    import ml_collections


def make_mesh(config: ml_collections.ConfigDict) -> Mesh:
    """A 1-D mesh over ``config.num_devices`` devices (-1: all), axis ``config.data_axis``."""
    num = jax.device_count() if config.num_devices == -1 else config.num_devices
    if not 0 < num <= jax.device_count():
        raise ValueError(f"mesh.num_devices={config.num_devices}, but {jax.device_count()} devices exist")
    devices = jax.devices()[:num]
    return jax.make_mesh((num,), (config.data_axis,), (jax.sharding.AxisType.Auto,), devices=devices)


def check_batch_size(per_process: int, mesh: Mesh, name: str) -> int:
    """Returns the global batch of ``per_process`` examples per process, if the mesh divides it."""
    global_size = per_process * jax.process_count()
    if global_size % mesh.size:
        raise ValueError(
            f"{name}={per_process} per process gives a global batch of {global_size}, "
            f"which the {mesh.size} devices of the mesh do not divide; pick a multiple of "
            f"{mesh.size // np.gcd(mesh.size, jax.process_count())}."
        )
    return global_size


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh's data axis."""
    return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def global_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's batch ``{k: (B, ...)}`` -> global arrays ``{k: (B * processes, ...)}``."""
    sharding = data_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Puts every array of ``tree`` (the same on every process) on all devices of ``mesh``."""
    sharding = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def put(x: jax.Array) -> jax.Array:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(put, tree)


def mesh_context(tree: Any) -> contextlib.AbstractContextManager:
    """``jax.set_mesh`` of the mesh that ``tree``'s arrays are split over, or a null context.

    Entered around a jitted call, it lets the kernels inside it (``aum_jax.kernels.partition``)
    run on each device's batch rows: a ``NamedSharding`` of the mesh is the only trace of it
    that the call's inputs carry.
    """
    for leaf in jax.tree.leaves(tree):
        spec = getattr(leaf, "sharding", None)
        if isinstance(spec, NamedSharding) and spec.mesh.size > 1 and not spec.is_fully_replicated:
            return jax.set_mesh(spec.mesh)
    return contextlib.nullcontext()


class OnDataMesh:
    """A jitted function that is called, traced and lowered under :func:`mesh_context` of its
    argument ``arg`` (the batch): its kernels then run per device on a data-parallel mesh."""

    def __init__(self, jitted: Callable, arg: int):
        functools.update_wrapper(self, jitted)
        self.jitted, self.arg = jitted, arg

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with mesh_context(args[self.arg]):
            return self.jitted(*args, **kwargs)

    def trace(self, *args: Any, **kwargs: Any) -> Any:
        with mesh_context(args[self.arg]):
            return self.jitted.trace(*args, **kwargs)

    def lower(self, *args: Any, **kwargs: Any) -> Any:
        with mesh_context(args[self.arg]):
            return self.jitted.lower(*args, **kwargs)


def constrain(node: Any, sharding: jax.sharding.Sharding) -> Any:
    """Inside ``jit``: gives every array of an NNX object ``sharding``; returns the object."""
    nnx.update(node, jax.lax.with_sharding_constraint(nnx.state(node), sharding))
    return node
