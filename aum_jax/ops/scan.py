"""Selective scan (the S6 recurrence of Mamba): the registry of its implementations and their dispatch.

The recurrence, per batch b, channel d and state n, over time t:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <h_t, C_t> + D * u_t,   then   y_t *= silu(z_t)

Tensors are channels-last, the natural JAX layout: ``u``, ``delta`` and ``z`` are
(B, L, D), ``B`` and ``C`` are (B, L, N), ``A`` is (D, N). The original CUDA kernel
takes (B, D, L); only the layout differs, the arguments and their meaning are the same.

Five implementations compute the same function and are all differentiable:

- ``"sequential"``, ``"associative"``, ``"chunked"``: the pure-JAX scans of
  :mod:`aum_jax.ops.jax_scan` (a ``lax.scan`` over time with a hand-written backward; an
  associative scan; chunks of ``chunk_size`` steps whose training memory holds only
  chunk-boundary states).
- ``"cpu"``: the C++ kernels of ``kernels/cpu/cpu_scan.cc`` for XLA's CPU backend, through the
  XLA FFI, compiled on first use: a 16-channel block's states stay in vector registers
  while time advances, and the backward recomputes them per block.
- ``"pallas"``: the Pallas/Triton GPU kernels of ``kernels/pallas/`` (Pallas interpret mode off
  the GPU): a fused forward kernel that keeps chunk-boundary states and a backward kernel
  that walks time in reverse, recomputing the states in between.

Each is registered once in ``IMPLEMENTATIONS`` (name, function, the platforms where it
runs, whether remat can keep its readout); ``SCAN_IMPLS``, ``impl="auto"`` and the tests
read from it. There is also ``"portable"``, for inference artifacts lowered for several
platforms (the serving export): the Pallas kernels in the CUDA lowering (for a fixed
batch: Triton takes no symbolic grid; the chunked scan otherwise), the sequential scan in
every other (one primitive with a lowering rule per platform).

``impl="auto"`` picks, on the device the computation runs on: ``"pallas"`` on a CUDA GPU
of compute capability 8.0 or more (Pallas' Triton backend needs Ampere; its training
memory matches the original's and it is the fastest), else ``"chunked"``, whose training
memory is bounded like the kernel's; ``"cpu"`` on CPU, the fastest there (the ``scan``
section of ``scripts/benchmark.py``), else ``"sequential"`` where no C++ compiler builds
it; ``"chunked"`` elsewhere (TPU). A fallback says why once, naming the device.

The two kernels (``"cpu"``, ``"pallas"``) are custom calls that XLA cannot partition:
under a data-parallel mesh (``jax.set_mesh``) each device runs them on its own batch
rows (``aum_jax.kernels.partition``).

``bidirectional_scan`` sums a forward-in-time scan and a backward-in-time one, as AuM's
Fo-Bi and Bi-Bi blocks do: the kernels read time backwards for the second (the Pallas
one runs both in one launch); the pure-JAX implementations flip its inputs and output.

:func:`selective_scan_from_state` scans a piece of a longer sequence from the state the previous
piece ended in and returns the state it ends in (inference on a stream, or on a recording of any
length in bounded memory), by the implementation's ``Implementation.from_state``: the C++ and
Pallas forward kernels take an initial state and return the last one; the pure-JAX
implementations, and ``"portable"`` (whose artifacts must lower for every platform), run the
``lax.scan`` of :func:`aum_jax.ops.jax_scan.scan_from_state`.

An implementation may also have fused kernels for inference (``FusedInference``; the C++ one
has): the mixer's conv with its SiLU (:func:`conv_silu`), and the scan with the delta bias and
softplus, D skip, the directions' sum and the gate (:func:`fused_scan`), which the training path
leaves to XLA. An AuM in eval mode uses them. They compute the same function; their gradient is
the training path's (a ``custom_vjp``), so they never change what training computes.

The state is always float32, whatever the input dtype; the output takes ``u``'s dtype.
The readout ``<h_t, C_t>`` is computed at ``HIGHEST`` precision, as the original kernel's
float32 arithmetic, whatever the default matmul precision.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.extend
import jax.numpy as jnp
from absl import logging
from jax.ad_checkpoint import checkpoint_name
from jax.interpreters import mlir

from aum_jax.kernels.cpu import cpu_scan
from aum_jax.kernels.pallas.selective_scan import (
    bidirectional_selective_scan,
    one_direction,
)
from aum_jax.kernels.pallas.selective_scan import (
    selective_scan_from_state as pallas_scan_from_state,
)
from aum_jax.ops import jax_scan
from aum_jax.ops.conv import causal_conv

DEFAULT_CHUNK_SIZE = 128
SCAN_READOUT = "scan_readout"  # checkpoint name of a pure-JAX or CPU scan's readout, (B, L, D) float32
MIN_TRITON_CAPABILITY = (8, 0)  # Pallas' Triton backend supports Ampere and newer


Tensors = Sequence[jax.Array]


Readout = Callable[..., jax.Array]  # (u, delta, A, B, C, *, chunk_size, reverse) -> (B, L, D) float32


def _time_reversed(forward: Readout) -> Readout:
    """A readout that runs backward in time by flipping a forward-only one's sequences."""

    def readout(u, delta, A, B, C, *, chunk_size: int, reverse: bool) -> jax.Array:
        if not reverse:
            return forward(u, delta, A, B, C, chunk_size=chunk_size)
        flip = lambda x: jnp.flip(x, axis=1)
        return flip(forward(flip(u), flip(delta), A, flip(B), flip(C), chunk_size=chunk_size))

    return readout


def _zero_state(u: jax.Array, A: jax.Array) -> jax.Array:
    """The (B, D, N) float32 zero state a scan starts from."""
    return jnp.zeros((u.shape[0], u.shape[2], A.shape[1]), jnp.float32)


def _cpu_readout(u, delta, A, B, C, *, chunk_size: int, reverse: bool) -> jax.Array:
    del chunk_size
    return cpu_scan.scan_readout(u, delta, A, B, C, reverse)


_sequential_readout = _time_reversed(lambda u, delta, A, B, C, *, chunk_size: jax_scan.scan_sequential(u, delta, A, B, C))
_chunked_readout = _time_reversed(
    lambda u, delta, A, B, C, *, chunk_size: jax_scan.scan_chunked(u, delta, A, B, C, _zero_state(u, A), chunk_size))
_associative_readout = _time_reversed(
    lambda u, delta, A, B, C, *, chunk_size: jax_scan.scan_associative(u, delta, A, B, C, _zero_state(u, A)))


def _step_sizes(u, delta, A, B, C, delta_bias, delta_softplus: bool) -> tuple[jax.Array, ...]:
    """The scan's inputs in float32, delta with its bias added and softplus applied."""
    f32 = jnp.float32
    u, delta, A, B, C = (x.astype(f32) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.astype(f32)
    if delta_softplus:
        delta = jax.nn.softplus(delta)
    return u, delta, A, B, C


def _skip_and_gate(y: jax.Array, u: jax.Array, D: jax.Array | None, z: jax.Array | None) -> jax.Array:
    """The readout (B, L, D) float32 with the D skip added and the silu(z) gate applied."""
    if D is not None:
        y = y + u * D.astype(jnp.float32)
    if z is not None:
        y = y * jax.nn.silu(z.astype(jnp.float32))
    return y


@functools.partial(jax.jit, static_argnames=("delta_softplus", "readout", "chunk_size", "reverse"))
def _one_direction(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, *, readout: Readout, chunk_size: int, reverse: bool
) -> jax.Array:
    """One scan around a readout (the recurrence alone, on float32 inputs, state from t = L - 1 down
    to 0 with ``reverse``, output in time order): bias, softplus, D skip and gate in XLA."""
    out_dtype = u.dtype
    u, delta, A, B, C = _step_sizes(u, delta, A, B, C, delta_bias, delta_softplus)
    y = checkpoint_name(readout(u, delta, A, B, C, chunk_size=chunk_size, reverse=reverse), SCAN_READOUT)
    return _skip_and_gate(y, u, D, z).astype(out_dtype)


StateReadout = Callable[..., tuple[jax.Array, jax.Array]]  # (u, delta, A, B, C, h0) -> (y (B, L, D), h_last (B, D, N))
FromState = Callable[..., tuple[jax.Array, jax.Array]]  # selective_scan_from_state's arguments, less impl


def _readout_from_state(readout: StateReadout) -> FromState:
    """The from-state scan around ``readout``, the recurrence alone on float32 inputs from a state:
    bias, softplus, D skip and gate in XLA."""

    def run(u, delta, A, B, C, D, z, delta_bias, h0, *, delta_softplus: bool) -> tuple[jax.Array, jax.Array]:
        out_dtype = u.dtype
        u, delta, A, B, C = _step_sizes(u, delta, A, B, C, delta_bias, delta_softplus)
        y, h_last = readout(u, delta, A, B, C, h0.astype(jnp.float32))
        return _skip_and_gate(y, u, D, z).astype(out_dtype), h_last

    return run


_JAX_FROM_STATE = _readout_from_state(jax_scan.scan_from_state)


def selective_scan_from_state(
    u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, D: jax.Array | None,
    z: jax.Array | None, delta_bias: jax.Array | None, h0: jax.Array, *, delta_softplus: bool = True,
    impl: str = "auto",
) -> tuple[jax.Array, jax.Array]:
    """:func:`selective_scan` forward in time of a piece of a longer sequence, from the state ``h0``
    (B, D, N) float32 the previous piece ended in (zeros at the start), by ``impl``'s from-state scan
    (``"auto"`` resolved on the default device); inference only.

    The pieces' outputs, joined, are the whole sequence's: one pass over a recording of any length
    in bounded memory, or a live stream. Returns the piece's output (B, L, D) in ``u``'s dtype and
    the state it ends in (B, D, N) float32.
    """
    from_state = IMPLEMENTATIONS[resolve_impl(impl)].from_state
    return from_state(u, delta, A, B, C, D, z, delta_bias, h0, delta_softplus=delta_softplus)


def _via_readout(readout: Readout) -> Callable[..., jax.Array]:
    """The bidirectional scan of a readout: one ``_one_direction`` per direction."""

    def run(us, deltas, As, Bs, Cs, Ds, z, delta_biases, *, delta_softplus: bool, scale: float, chunk_size: int):
        out = None
        for k, A in enumerate(As):
            pick = lambda seq: seq[0] if len(seq) == 1 else seq[k]
            y = _one_direction(
                pick(us), pick(deltas), A, pick(Bs), pick(Cs), pick(Ds) if Ds else None, z,
                pick(delta_biases) if delta_biases else None, delta_softplus,
                readout=readout, chunk_size=chunk_size, reverse=k == 1,
            )
            out = y if out is None else out + y
        return out * scale if scale != 1.0 else out

    return run


def _pallas(*args, delta_softplus: bool, scale: float, chunk_size: int, interpret: bool | None = None) -> jax.Array:
    del chunk_size
    return bidirectional_selective_scan(*args, delta_softplus=delta_softplus, scale=scale, interpret=interpret)


def _unflattened(run: Callable[..., jax.Array], *flat: jax.Array, tree, **kwargs) -> jax.Array:
    return run(*jax.tree.unflatten(tree, flat), **kwargs)


def _cuda_inference(*args, **kwargs) -> jax.Array:
    """The Pallas kernels; with a symbolic batch (Triton takes no dynamic grid) the chunked scan."""
    if isinstance(args[0][0].shape[0], int):
        return _pallas(*args, **kwargs, interpret=False)
    return _via_readout(_chunked_readout)(*args, **kwargs)


# One primitive with a lowering per platform: lax.platform_dependent would lower the Pallas branch
# for CPU as well, which Pallas refuses; a per-platform lowering rule lowers it for CUDA only.
_portable_p = jax.extend.core.Primitive("aum_portable_scan")
_portable_p.def_abstract_eval(lambda *flat, tree, **kwargs: jax.core.ShapedArray(flat[0].shape, flat[0].dtype))
_portable_p.def_impl(functools.partial(_unflattened, _via_readout(_sequential_readout)))
mlir.register_lowering(_portable_p, mlir.lower_fun(
    functools.partial(_unflattened, _cuda_inference), multiple_results=False), platform="cuda")
mlir.register_lowering(_portable_p, mlir.lower_fun(
    functools.partial(_unflattened, _via_readout(_sequential_readout)), multiple_results=False))


def _portable(*args, delta_softplus: bool, scale: float, chunk_size: int) -> jax.Array:
    """The Pallas kernels in a CUDA lowering (the chunked scan there for a symbolic batch), the
    sequential scan in any other; inference only."""
    flat, tree = jax.tree.flatten(args)
    return _portable_p.bind(*flat, tree=tree, delta_softplus=delta_softplus, scale=scale, chunk_size=chunk_size)


def _cpu_unavailable(device: jax.Device) -> str | None:
    del device
    reason = cpu_scan.unavailable_reason()
    return None if reason is None else f"its C++ kernel does not build here: {reason}"


def _pallas_unavailable(device: jax.Device) -> str | None:
    capability = getattr(device, "compute_capability", None)
    if capability is None:
        return "it is not a CUDA device, and Pallas' Triton backend runs on CUDA only"
    major, minor = (int(x) for x in str(capability).split(".")[:2])
    if (major, minor) < MIN_TRITON_CAPABILITY:
        return (f"its compute capability {capability} is below "
                f"{'.'.join(map(str, MIN_TRITON_CAPABILITY))}, the least Pallas' Triton backend supports")
    return None


@dataclasses.dataclass(frozen=True)
class FusedInference:
    """An implementation's inference kernels, forward only (see :func:`conv_silu`, :func:`fused_scan`).

    ``conv_silu(x, kernel, bias, dim, reverse)``: x (B, L, >= dim) float32 -> (B, L, dim).
    ``scan(us, deltas, As, Bs, Cs, Ds, biases, xz, scale)``: -> (B, L, D) float32.
    """

    conv_silu: Callable[..., jax.Array]
    scan: Callable[..., jax.Array]


@dataclasses.dataclass(frozen=True)
class Implementation:
    """One selective-scan implementation.

    ``run(us, deltas, As, Bs, Cs, Ds, z, delta_biases, *, delta_softplus, scale, chunk_size)``
    is the bidirectional scan of :func:`bidirectional_scan`. An implementation of the recurrence
    alone registers it with :meth:`of_readout`, which wraps it in the bias, softplus, skip and gate.
    ``from_state(u, delta, A, B, C, D, z, delta_bias, h0, *, delta_softplus)`` is its
    :func:`selective_scan_from_state` (the pure-JAX ``lax.scan`` unless it has a kernel for it).
    """

    name: str
    run: Callable[..., jax.Array]
    platforms: tuple[str, ...] = ()  # JAX platforms where it runs; () on every one
    keeps_readout: bool = False  # its readout is the named SCAN_READOUT, which remat "dots_scan" can keep
    differentiable: bool = True  # it trains (has a gradient)
    auto_on: tuple[str, ...] = ()  # platforms where "auto" may pick it ("*": any), first registered first
    unavailable: Callable[[jax.Device], str | None] = lambda device: None  # why it cannot run on a device
    fused_inference: FusedInference | None = None  # inference kernels that fuse the scan's surroundings
    from_state: FromState = _JAX_FROM_STATE  # selective_scan_from_state: a piece of a sequence, from a state

    @classmethod
    def of_readout(cls, name: str, readout: Readout, **fields) -> Implementation:
        """The implementation around ``readout(u, delta, A, B, C, *, chunk_size, reverse)``, (B, L, D) float32."""
        return cls(name, _via_readout(readout), keeps_readout=True, **fields)


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl for impl in (
        Implementation.of_readout("cpu", _cpu_readout, platforms=("cpu",), auto_on=("cpu",),
                                  unavailable=_cpu_unavailable,
                                  fused_inference=FusedInference(cpu_scan.conv_silu, cpu_scan.scan_inference),
                                  from_state=_readout_from_state(cpu_scan.scan_from_state)),
        Implementation("pallas", _pallas, auto_on=("gpu",), unavailable=_pallas_unavailable,
                       from_state=pallas_scan_from_state),
        Implementation.of_readout("sequential", _sequential_readout, auto_on=("cpu",)),
        Implementation.of_readout("chunked", _chunked_readout, auto_on=("*",)),
        Implementation.of_readout("associative", _associative_readout),
        Implementation("portable", _portable, differentiable=False),
    )
}
SCAN_IMPLS: tuple[str, ...] = tuple(IMPLEMENTATIONS)  # every name a config may give, besides "auto"


@functools.cache
def _warn_fallback(device: str, impl: str, reason: str, pick: str) -> None:
    logging.warning("selective scan on %s: scan_impl 'auto' picks %r, not %r, because %s.", device, pick, impl, reason)


def _auto(device: jax.Device) -> str:
    """The first registered implementation that ``auto`` may pick on ``device``'s platform and
    that runs there; warns once per device about each one passed over."""
    passed = []
    for impl in IMPLEMENTATIONS.values():
        if device.platform in impl.auto_on or "*" in impl.auto_on:
            reason = impl.unavailable(device)
            if reason is None:
                for name, why in passed:
                    _warn_fallback(f"{device.device_kind} ({device.platform})", name, why, impl.name)
                return impl.name
            passed.append((impl.name, reason))
    raise AssertionError("'chunked' runs everywhere")


def default_device() -> jax.Device:
    """The device a computation runs on by default: the first of the default backend."""
    return jax.devices()[0]


def resolve_impl(impl: str, device: jax.Device | None = None) -> str:
    """Maps ``"auto"`` to the implementation for ``device`` (default: the first device of the
    default backend); checks that any other name is registered and runs there."""
    device = device if device is not None else default_device()
    if impl == "auto":
        return _auto(device)
    if impl not in IMPLEMENTATIONS:
        raise ValueError(f"Unknown selective-scan impl {impl!r}; choose one of {SCAN_IMPLS} or 'auto'.")
    platforms = IMPLEMENTATIONS[impl].platforms
    if platforms and device.platform not in platforms:
        raise ValueError(f"scan_impl {impl!r} runs on the {'/'.join(platforms)} backend only, "
                         f"not {device.platform!r}; use 'auto'.")
    return impl


def selective_scan(
    u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, D: jax.Array | None = None,
    z: jax.Array | None = None, delta_bias: jax.Array | None = None, delta_softplus: bool = False, *,
    impl: str = "auto", chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    """Runs the selective scan forward in time.

    Args:
      u: (B, L, D) input.
      delta: (B, L, D) step sizes, before ``delta_bias`` and softplus.
      A: (D, N) state matrix (negative reals: ``-exp(A_log)``).
      B: (B, L, N) input projection.
      C: (B, L, N) output projection.
      D: (D,) skip connection, or None.
      z: (B, L, D) gate, multiplied in as ``silu(z)``, or None.
      delta_bias: (D,) added to ``delta`` before the softplus, or None.
      delta_softplus: apply softplus to ``delta`` (after adding ``delta_bias``).
      impl: one of ``SCAN_IMPLS``, or ``"auto"`` to pick by device.
      chunk_size: steps per chunk for ``impl="chunked"``.

    Returns:
      (B, L, D) output in ``u``'s dtype.
    """
    return bidirectional_scan(*one_direction(u, delta, A, B, C, D, z, delta_bias), delta_softplus=delta_softplus,
                              impl=impl, chunk_size=chunk_size)


def bidirectional_scan(
    us: Tensors, deltas: Tensors, As: Tensors, Bs: Tensors, Cs: Tensors, Ds: Tensors, z: jax.Array | None,
    delta_biases: Tensors, *, delta_softplus: bool, scale: float = 1.0, impl: str = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> jax.Array:
    """``scale * (scan_0 + scan_1)``: scan 0 runs forward in time, scan 1 backward.

    ``As`` holds a (D, N) matrix per direction (one: a single forward scan). ``us``,
    ``deltas`` (B, L, D), ``Bs``, ``Cs`` (B, L, N), ``Ds`` and ``delta_biases`` (D,) hold
    one tensor shared by both directions or one per direction (``Ds`` and
    ``delta_biases`` may be empty); all are in time order, and scan 1's output at t is the
    one it produced on reaching t. ``z`` (B, L, D), shared, gates both. Returns (B, L, D)
    in ``us[0]``'s dtype.
    """
    run = IMPLEMENTATIONS[resolve_impl(impl)].run  # outside jit: "auto" is not a cache key
    return run(tuple(us), tuple(deltas), tuple(As), tuple(Bs), tuple(Cs), tuple(Ds), z, tuple(delta_biases),
               delta_softplus=delta_softplus, scale=scale, chunk_size=chunk_size)


def has_fused_inference(impl: str) -> bool:
    """Whether ``impl`` (``"auto"`` resolved on the default device) has inference kernels."""
    return IMPLEMENTATIONS[resolve_impl(impl)].fused_inference is not None


def _with_gradient_of(reference: Callable[..., jax.Array], fused: Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """``fused(*arrays)``, differentiated as ``reference(*arrays)`` (the same function)."""

    @jax.custom_vjp
    def call(*arrays):
        return fused(*arrays)

    def call_fwd(*arrays):
        return fused(*arrays), arrays

    def call_bwd(arrays, dout):
        return jax.vjp(reference, *arrays)[1](dout)

    call.defvjp(call_fwd, call_bwd)
    return call


def conv_silu(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *, dim: int, reverse: bool,
              impl: str = "auto") -> jax.Array:
    """``silu(causal_conv(x[..., :dim], kernel, bias))`` (:func:`aum_jax.ops.conv.causal_conv`) by ``impl``'s
    inference kernel, which reads ``x`` (B, L, >= dim) in place; kernel (K, dim), bias (dim,) or None.
    Returns (B, L, dim) float32."""
    fused = IMPLEMENTATIONS[resolve_impl(impl)].fused_inference
    bias = jnp.zeros((dim,), jnp.float32) if bias is None else bias.astype(jnp.float32)
    reference = lambda x, k, b: jax.nn.silu(causal_conv(x[..., :dim], k, b, reverse=reverse))
    kernel_call = lambda x, k, b: fused.conv_silu(x, k, b, dim, reverse)
    return _with_gradient_of(reference, kernel_call)(x.astype(jnp.float32), kernel.astype(jnp.float32), bias)


def fused_scan(us: Tensors, deltas: Tensors, As: Tensors, Bs: Tensors, Cs: Tensors, Ds: Tensors, xz: jax.Array,
               delta_biases: Tensors, *, scale: float = 1.0, impl: str = "auto") -> jax.Array:
    """:func:`bidirectional_scan` with softplus deltas, gated by ``z = xz[..., D:]`` of in_proj's output
    ``xz`` (B, L, 2D), by ``impl``'s inference kernel; the sequences as :func:`bidirectional_scan`'s (one
    entry shared by both directions, or one per direction; ``Ds`` and ``delta_biases`` not empty).
    Returns (B, L, D) float32."""
    name = resolve_impl(impl)
    fused = IMPLEMENTATIONS[name].fused_inference
    dim = us[0].shape[-1]
    f32 = lambda seq: tuple(x.astype(jnp.float32) for x in seq) * (len(As) if len(seq) == 1 else 1)

    def reference(us, deltas, As, Bs, Cs, Ds, biases, xz):
        return IMPLEMENTATIONS[name].run(us, deltas, As, Bs, Cs, Ds, xz[..., dim:], biases, delta_softplus=True,
                                         scale=scale, chunk_size=DEFAULT_CHUNK_SIZE)

    kernel_call = lambda us, deltas, As, Bs, Cs, Ds, biases, xz: fused.scan(us, deltas, As, Bs, Cs, Ds, biases, xz, scale)
    args = (f32(us), f32(deltas), f32(As), f32(Bs), f32(Cs), f32(Ds), f32(delta_biases), xz.astype(jnp.float32))
    return _with_gradient_of(reference, kernel_call)(*args)
