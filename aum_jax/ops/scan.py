"""Selective scan (the S6 recurrence of Mamba) in pure JAX.

The recurrence, per batch b, channel d and state n, over time t:

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = <h_t, C_t> + D * u_t,   then   y_t *= silu(z_t)

Tensors are channels-last, the natural JAX layout: ``u``, ``delta`` and ``z`` are
(B, L, D), ``B`` and ``C`` are (B, L, N), ``A`` is (D, N). The original CUDA kernel
takes (B, D, L); only the layout differs, the arguments and their meaning are the same.

Five implementations compute the same function and are all differentiable:

- ``"sequential"``: a ``lax.scan`` over time, the readable reference, with a hand-written
  backward ``lax.scan`` (a ``jax.custom_vjp``) that keeps every state, as JAX's own would.
- ``"associative"``: ``jax.lax.associative_scan`` over time, log-depth parallel.
- ``"chunked"``: a ``lax.scan`` over chunks of ``chunk_size`` steps with a parallel scan
  inside each chunk; the chunk body is rematerialised, so neither the forward nor the
  backward pass ever holds the whole (B, L, D, N) state tensor, only chunk-boundary states.
- ``"cpu"``: the C++ kernels of ``kernels/cpu_scan.cc`` for XLA's CPU backend, through the
  XLA FFI, compiled on first use: a 16-channel block's states stay in vector registers
  while time advances, and the backward recomputes them per block.
- ``"pallas"``: the Pallas/Triton GPU kernels of ``kernels/`` (Pallas interpret mode off
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
from aum_jax.kernels.pallas.selective_scan import bidirectional_selective_scan, one_direction

DEFAULT_CHUNK_SIZE = 128
SCAN_READOUT = "scan_readout"  # checkpoint name of a pure-JAX or CPU scan's readout, (B, L, D) float32
HIGHEST = jax.lax.Precision.HIGHEST
MIN_TRITON_CAPABILITY = (8, 0)  # Pallas' Triton backend supports Ampere and newer


def _discretize(
    u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Returns the per-step decay exp(delta*A) and input delta*B*u, both (B, L, D, N) float32."""
    decay = jnp.exp(delta[..., None] * A)
    drive = (delta * u)[..., None] * B[:, :, None, :]
    return decay, drive


def _combine(
    left: tuple[jax.Array, jax.Array], right: tuple[jax.Array, jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Composes two affine maps h -> a*h + b, applying ``left`` first."""
    a_l, b_l = left
    a_r, b_r = right
    return a_r * a_l, a_r * b_l + b_r


def _time_major(x: jax.Array) -> jax.Array:
    """(B, L, ...) <-> (L, B, ...)."""
    return jnp.swapaxes(x, 0, 1)


def _forward_states(dt, dtu, B, C, At, keep_states: bool):
    """The recurrence over time-major inputs, with the state laid out (B, N, D).

    dt, dtu = delta * u: (L, B, D); B, C: (L, B, N); At = A.T: (N, D). Returns the readout
    (L, B, D) and, with ``keep_states``, the states before each step, h_{t-1} (L, B, N, D),
    and the last one, h_{L-1} (B, N, D). The channel axis D is minor so that the decay, the
    input and the readout are all vectorised along it, and the readout is a batched mat-vec
    (a dot, which XLA's CPU backend runs far faster than a reduce over a middle axis).
    """

    def step(h_prev, inputs):
        dt_t, dtu_t, B_t, C_t = inputs
        h = jnp.exp(dt_t[:, None, :] * At) * h_prev + dtu_t[:, None, :] * B_t[:, :, None]
        y = jnp.einsum("bnd,bn->bd", h, C_t, precision=HIGHEST)
        return h, ((y, h_prev) if keep_states else y)

    h0 = jnp.zeros((dt.shape[1], At.shape[0], At.shape[1]), jnp.float32)
    h_last, out = jax.lax.scan(step, h0, (dt, dtu, B, C))
    return (*out, h_last) if keep_states else out


@jax.custom_vjp
def _scan_sequential(u, delta, A, B, C):
    """(B, L, D) inputs, zero initial state -> (B, L, D) readout <h_t, C_t>, with a ``lax.scan``
    over time; A is (D, N), B and C are (B, L, N).

    Its gradient is a hand-written reverse ``lax.scan`` (``_sequential_bwd``): JAX's own
    transpose of the forward scan ran about 10x the forward's time on CPU.
    """
    dt, dtu, B, C = (_time_major(x) for x in (delta, delta * u, B, C))
    return _time_major(_forward_states(dt, dtu, B, C, A.T, keep_states=False))


def _sequential_fwd(u, delta, A, B, C):
    """The forward pass, keeping every state h_{t-1} (L, B, N, D) and h_{L-1} for the backward one."""
    dt, dtu, B_t, C_t = (_time_major(x) for x in (delta, delta * u, B, C))
    y, states, h_last = _forward_states(dt, dtu, B_t, C_t, A.T, keep_states=True)
    return _time_major(y), (u, delta, A, B, C, states, h_last)


def _sequential_bwd(residuals, dy):
    """Walks time backwards with g_t = dLoss/dh_t (B, N, D), reading the stored states.

    With decay_t = exp(delta_t A), h_t = decay_t h_{t-1} + delta_t u_t B_t, y_t = <h_t, C_t>:

        g_t = dy_t C_t + decay_{t+1} g_{t+1}
        dC_t = sum_d h_t dy_t              dB_t = sum_d g_t delta_t u_t
        d(delta_t u_t) = sum_n g_t B_t     w_t = decay_t g_t h_{t-1}
        d delta_t = sum_n w_t A + u_t d(delta_t u_t)       du_t = delta_t d(delta_t u_t)
        dA = sum_{b, t} w_t delta_t

    The step reads h_{t-1} and carries it on as the next step's h_t. The sums over D are
    batched mat-vecs (dots); the sum over N is written out as N multiply-adds, which XLA
    fuses with w's producer; dA accumulates in a (B, N, D) carry and is summed over the
    batch once after the loop: a reduce over a non-minor axis in every step cost as much
    as the rest of the step on CPU.
    """
    u, delta, A, B, C, states, h_last = residuals
    At = A.T  # (N, D)

    def step(carry, inputs):
        g, dA, h = carry
        dt_t, u_t, dy_t, B_t, C_t, h_prev = inputs
        g = g + dy_t[:, None, :] * C_t[:, :, None]
        dC = jnp.einsum("bnd,bd->bn", h, dy_t, precision=HIGHEST)
        dB = jnp.einsum("bnd,bd->bn", g, dt_t * u_t, precision=HIGHEST)
        ddtu = jnp.einsum("bnd,bn->bd", g, B_t, precision=HIGHEST)
        g = jnp.exp(dt_t[:, None, :] * At) * g  # decay_t g_t, the next step's carry
        w = g * h_prev
        ddt = ddtu * u_t
        for n in range(At.shape[0]):
            ddt = ddt + w[:, n, :] * At[n]
        dA = dA + w * dt_t[:, None, :]
        return (g, dA, h_prev), (ddtu * dt_t, ddt, dB, dC)

    zeros = jnp.zeros_like(h_last)
    inputs = [_time_major(x) for x in (delta, u, dy, B, C)] + [states]
    (_, dA, _), grads = jax.lax.scan(step, (zeros, zeros, h_last), inputs, reverse=True)
    du, ddelta, dB, dC = (_time_major(x) for x in grads)
    return du, ddelta, jnp.sum(dA, axis=0).T, dB, dC


_scan_sequential.defvjp(_sequential_fwd, _sequential_bwd)


def _scan_parallel(u, delta, A, B, C, h0):
    """Like ``_scan_sequential`` with an associative scan; also returns the last state (B, D, N)."""
    decay, drive = _discretize(u, delta, A, B)
    drive = drive.at[:, 0].add(decay[:, 0] * h0)
    _, h = jax.lax.associative_scan(_combine, (decay, drive), axis=1)
    return jnp.einsum("bldn,bln->bld", h, C, precision=HIGHEST), h[:, -1]


def _scan_associative(u, delta, A, B, C, h0):
    return _scan_parallel(u, delta, A, B, C, h0)[0]


def _scan_chunked(u, delta, A, B, C, h0, chunk_size: int):
    """Scans chunks of ``chunk_size`` steps in turn; only boundary states are kept."""
    batch, length, dim = u.shape
    chunk = min(chunk_size, length)
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        # delta = 0 makes a step the identity map: decay exp(0) = 1 and input 0.
        u, delta, B, C = (jnp.pad(x, ((0, 0), (0, pad), (0, 0))) for x in (u, delta, B, C))

    def to_chunks(x):
        return jnp.swapaxes(x.reshape(batch, n_chunks, chunk, x.shape[-1]), 0, 1)

    @jax.checkpoint
    def body(h, inputs):
        y, h_last = _scan_parallel(*inputs[:2], A, *inputs[2:], h)
        return h_last, y

    _, y = jax.lax.scan(body, h0, [to_chunks(x) for x in (u, delta, B, C)])
    y = jnp.swapaxes(y, 0, 1).reshape(batch, n_chunks * chunk, dim)
    return y[:, :length]


Tensors = Sequence[jax.Array]


def _readout(impl: str, u, delta, A, B, C, *, chunk_size: int, reverse: bool) -> jax.Array:
    """The recurrence alone on float32 inputs: u, delta (B, L, D), A (D, N), B, C (B, L, N) -> <h_t, C_t>.

    With ``reverse`` the state runs from t = L - 1 down to 0; the output stays in time order.
    """
    if impl == "cpu":
        return cpu_scan.scan_readout(u, delta, A, B, C, reverse)
    if reverse:
        flip = lambda x: jnp.flip(x, axis=1)
        return flip(_readout(impl, flip(u), flip(delta), A, flip(B), flip(C), chunk_size=chunk_size, reverse=False))
    if impl == "sequential":
        return _scan_sequential(u, delta, A, B, C)
    h0 = jnp.zeros((u.shape[0], u.shape[2], A.shape[1]), jnp.float32)
    if impl == "associative":
        return _scan_associative(u, delta, A, B, C, h0)
    return _scan_chunked(u, delta, A, B, C, h0, chunk_size)


@functools.partial(jax.jit, static_argnames=("delta_softplus", "impl", "chunk_size", "reverse"))
def _one_direction(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus: bool, *, impl: str, chunk_size: int, reverse: bool
) -> jax.Array:
    """One scan around a readout implementation: bias, softplus, D skip and gate in XLA."""
    out_dtype = u.dtype
    f32 = jnp.float32
    u, delta, A, B, C = (x.astype(f32) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.astype(f32)
    if delta_softplus:
        delta = jax.nn.softplus(delta)
    y = checkpoint_name(_readout(impl, u, delta, A, B, C, chunk_size=chunk_size, reverse=reverse), SCAN_READOUT)
    if D is not None:
        y = y + u * D.astype(f32)
    if z is not None:
        y = y * jax.nn.silu(z.astype(f32))
    return y.astype(out_dtype)


def _via_readout(impl: str) -> Callable[..., jax.Array]:
    """The bidirectional scan of a readout implementation: one ``_one_direction`` per direction."""

    def run(us, deltas, As, Bs, Cs, Ds, z, delta_biases, *, delta_softplus: bool, scale: float, chunk_size: int):
        out = None
        for k, A in enumerate(As):
            pick = lambda seq: seq[0] if len(seq) == 1 else seq[k]
            y = _one_direction(
                pick(us), pick(deltas), A, pick(Bs), pick(Cs), pick(Ds) if Ds else None, z,
                pick(delta_biases) if delta_biases else None, delta_softplus,
                impl=impl, chunk_size=chunk_size, reverse=k == 1,
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
    return _via_readout("chunked")(*args, **kwargs)


# One primitive with a lowering per platform: lax.platform_dependent would lower the Pallas branch
# for CPU as well, which Pallas refuses; a per-platform lowering rule lowers it for CUDA only.
_portable_p = jax.extend.core.Primitive("aum_portable_scan")
_portable_p.def_abstract_eval(lambda *flat, tree, **kwargs: jax.core.ShapedArray(flat[0].shape, flat[0].dtype))
_portable_p.def_impl(functools.partial(_unflattened, _via_readout("sequential")))
mlir.register_lowering(_portable_p, mlir.lower_fun(
    functools.partial(_unflattened, _cuda_inference), multiple_results=False), platform="cuda")
mlir.register_lowering(_portable_p, mlir.lower_fun(
    functools.partial(_unflattened, _via_readout("sequential")), multiple_results=False))


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
class Implementation:
    """One selective-scan implementation.

    ``run(us, deltas, As, Bs, Cs, Ds, z, delta_biases, *, delta_softplus, scale, chunk_size)``
    is the bidirectional scan of :func:`bidirectional_scan`.
    """

    name: str
    run: Callable[..., jax.Array]
    platforms: tuple[str, ...] = ()  # JAX platforms where it runs; () on every one
    keeps_readout: bool = False  # its readout is the named SCAN_READOUT, which remat "dots_scan" can keep
    differentiable: bool = True  # it trains (has a gradient)
    auto_on: tuple[str, ...] = ()  # platforms where "auto" may pick it ("*": any), first registered first
    unavailable: Callable[[jax.Device], str | None] = lambda device: None  # why it cannot run on a device


IMPLEMENTATIONS: dict[str, Implementation] = {
    impl.name: impl for impl in (
        Implementation("cpu", _via_readout("cpu"), platforms=("cpu",), keeps_readout=True, auto_on=("cpu",),
                       unavailable=_cpu_unavailable),
        Implementation("pallas", _pallas, auto_on=("gpu",), unavailable=_pallas_unavailable),
        Implementation("sequential", _via_readout("sequential"), keeps_readout=True, auto_on=("cpu",)),
        Implementation("chunked", _via_readout("chunked"), keeps_readout=True, auto_on=("*",)),
        Implementation("associative", _via_readout("associative"), keeps_readout=True),
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
