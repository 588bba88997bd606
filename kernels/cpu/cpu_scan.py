"""The selective scan as a C++ kernel for XLA's CPU backend (``cpu_scan.cc``), through the XLA FFI.

XLA's CPU code for a ``lax.scan`` over time makes a pass over the whole (B, N, D) state
per op per step; the kernel instead keeps a block of channels' states in vector registers
while time advances, and never writes the (B, L, D, N) state tensor. The vector width and
the block shape follow the instruction set it is compiled for (``cpu_scan.cc`` picks them
from the compiler's target macros: 16 lanes on AVX-512, 8 on AVX2, 4 on NEON).

Like Triton does for its launchers, it is compiled on first use with the machine's C++
compiler (``$CXX``, else ``c++``) against the installed jaxlib's FFI headers, for the
target ``$AUM_JAX_CPU_MARCH`` (a ``-march`` value, default ``native``: the machine's own
CPU; a value starting with ``-`` is passed as the flag itself, e.g. ``-mcpu=neoverse-n1``),
and cached under ``$XDG_CACHE_HOME/aum_jax`` (``~/.cache/aum_jax``), keyed by the source,
the flags, the target, the headers and the CPU.

Several targets load side by side in one process: each has its own library and FFI
targets (``aum_scan_cpu_fwd`` for ``native``, ``aum_scan_cpu_fwd_x86-64-v3`` for
``x86-64-v3``). ``scan_readout(..., march=...)`` picks one; ``use(march)`` switches the one
``scan_impl="cpu"`` runs for the functions traced inside it.

``scan_readout(u, delta, A, B, C, reverse)`` is the recurrence alone, float32, with its
gradient (a second kernel that recomputes each block's states and walks time in reverse).
``scan_from_state(u, delta, A, B, C, h0)`` is the same forward kernel started from a state and
returning the last one, for a sequence read in pieces (inference only).
For inference, ``conv_silu`` (the mixer's depthwise conv and SiLU) and ``scan_inference`` (both
directions with the delta bias and softplus, D skip, sum, scale and gate) fuse what the
training path leaves to XLA; they have no gradient of their own (``aum_jax.ops`` gives them one).
``unavailable_reason()`` says why the kernel does not build or run here (None when it does);
``build()`` raises ``CpuKernelUnavailable`` with the compiler's message when it does not.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import os
import pathlib
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from .. import partition

SOURCE = pathlib.Path(__file__).with_name("cpu_scan.cc")
MARCH_ENV = "AUM_JAX_CPU_MARCH"
FLAGS = ("-O3", "-std=c++17", "-fPIC", "-fno-math-errno")  # besides the target and -shared
# The CPU flags (/proc/cpuinfo) a library of each instruction set needs, beyond x86-64's baseline.
ISA_CPU_FLAGS = {"avx512": ("avx512f", "avx512dq", "avx512bw", "avx512vl"), "avx2": ("avx2", "fma")}

_selected: str | None = None  # set by use()


class CpuKernelUnavailable(RuntimeError):
    """The C++ compiler is missing or failed, or the CPU lacks the target's instructions."""


@dataclasses.dataclass(frozen=True)
class Variant:
    """A kernel library loaded into this process, with its FFI targets registered."""

    march: str
    library: pathlib.Path
    isa: str  # the instruction set the kernel's vectors use: avx512, avx2, neon or generic
    lanes: int  # float32 channels per vector

    @property
    def forward_target(self) -> str:
        return _target_name("aum_scan_cpu_fwd", self.march)

    @property
    def backward_target(self) -> str:
        return _target_name("aum_scan_cpu_bwd", self.march)

    @property
    def conv_target(self) -> str:
        return _target_name("aum_conv_silu_cpu", self.march)

    @property
    def inference_target(self) -> str:
        return _target_name("aum_scan_inference_cpu", self.march)


def selected_march() -> str:
    """The target ``scan_impl="cpu"`` runs: ``use()``'s, else ``$AUM_JAX_CPU_MARCH``, else native."""
    return _selected or os.environ.get(MARCH_ENV) or "native"


@contextlib.contextmanager
def use(march: str) -> Iterator[None]:
    """Runs ``scan_impl="cpu"`` with the kernel built for ``march`` inside the block.

    The target is read when a function is traced, so JAX's caches are cleared on entry and
    exit: functions traced before are traced again with the target in effect.
    """
    global _selected
    previous, _selected = _selected, march
    jax.clear_caches()
    try:
        yield
    finally:
        _selected = previous
        jax.clear_caches()


def _target_name(base: str, march: str) -> str:
    return base if march == "native" else f"{base}_{re.sub(r'[^A-Za-z0-9_.-]', '_', march.lstrip('-'))}"


def target_flag(march: str) -> str:
    """The compiler flag for ``march``: ``-march=X``; ``-mcpu=native`` for the machine's own CPU
    on ARM, where GCC and Clang spell it so; a value starting with ``-`` is the flag itself."""
    if march.startswith("-"):
        return march
    if march == "native" and platform.machine().lower() in ("aarch64", "arm64"):
        return "-mcpu=native"
    return f"-march={march}"


def compile_command(compiler: str, march: str, output: pathlib.Path | str, *mode: str) -> list[str]:
    """The command that compiles ``cpu_scan.cc`` for ``march``; ``mode`` is ``-shared`` for the
    library, ``-S`` for assembly."""
    include = pathlib.Path(jax.ffi.include_dir())
    # jaxlib's headers as system headers: their warnings are not the kernel's.
    return [compiler, *FLAGS, target_flag(march), *mode, "-isystem", str(include), str(SOURCE), "-o", str(output)]


def _cpu_fingerprint() -> str:
    """The CPU's model and feature flags: -march=native code is built for them."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor() + platform.machine()


def cpu_flags() -> set[str]:
    """This CPU's feature flags from /proc/cpuinfo; empty where there is none."""
    for line in _cpu_fingerprint().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "aum_jax"


@functools.cache
def build(march: str | None = None) -> pathlib.Path:
    """Compiles ``cpu_scan.cc`` for ``march`` (default: ``selected_march()`` at the first call)
    once per source, compiler, target, jaxlib and CPU; returns the library."""
    march = march or selected_march()
    compiler = os.environ.get("CXX", "c++")
    include = pathlib.Path(jax.ffi.include_dir())
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), target_flag(march).encode(), compiler.encode(),
                 (include / "xla/ffi/api/c_api.h").read_bytes(), _cpu_fingerprint().encode()):
        key.update(part)
    library = _cache_dir() / f"cpu_scan-{key.hexdigest()[:16]}.so"
    if library.exists():
        return library
    if shutil.which(compiler) is None:
        raise CpuKernelUnavailable(
            f"no C++ compiler {compiler!r} on PATH for the CPU selective-scan kernel; install one "
            "(e.g. apt install g++) or set $CXX, or use scan_impl='sequential'"
        )
    library.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # Build beside the cache entry and rename: concurrent processes never see half a file.
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        partial = pathlib.Path(tmp) / library.name
        done = subprocess.run(compile_command(compiler, march, partial, "-shared"), capture_output=True, text=True)
        if done.returncode != 0:
            raise CpuKernelUnavailable(
                f"{compiler} failed to build {SOURCE.name} for {target_flag(march)}; use scan_impl='sequential'.\n"
                f"{done.stderr[-2000:]}"
            )
        os.replace(partial, library)
    logging.info("Built the CPU selective-scan kernel for %s in %.1f s: %s", march, time.perf_counter() - start, library)
    return library


def variant(march: str | None = None) -> Variant:
    """The kernel built for ``march`` (default: ``selected_march()``), loaded and registered."""
    return _load(march or selected_march())


@functools.cache
def _load(march: str) -> Variant:
    library = build(march)
    handle = ctypes.cdll.LoadLibrary(str(library))
    handle.AumScanIsa.restype = ctypes.c_char_p
    loaded = Variant(march, library, handle.AumScanIsa().decode(), handle.AumScanLanes())
    missing = sorted(set(ISA_CPU_FLAGS.get(loaded.isa, ())) - cpu_flags())
    if march != "native" and cpu_flags() and missing:
        raise CpuKernelUnavailable(f"the kernel built for {march} uses {loaded.isa}; this CPU lacks {', '.join(missing)}")
    for target, symbol in ((loaded.forward_target, "AumScanForward"), (loaded.backward_target, "AumScanBackward"),
                           (loaded.conv_target, "AumConvSilu"), (loaded.inference_target, "AumScanInference")):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, symbol)), platform="cpu")
    logging.info("CPU selective-scan kernel for %s: %s, %d float32 lanes", march, loaded.isa, loaded.lanes)
    return loaded


def unavailable_reason(march: str | None = None) -> str | None:
    """None when the kernel for ``march`` (default: the selected one) builds and runs here, else why not."""
    return _reason(march or selected_march())


@functools.cache
def _reason(march: str) -> str | None:
    try:
        _load(march)
    except (CpuKernelUnavailable, OSError) as error:
        return str(error)
    return None


def _groups(batch: int, dim: int, lanes: int) -> int:
    """Channel groups per batch row in the backward: enough work items for every core."""
    blocks = -(-dim // lanes)
    return int(min(blocks, max(1, -(-2 * (os.cpu_count() or 1) // batch))))


def _forward(static: tuple[bool, str], rows, A: jax.Array, save: bool):
    """One shard: rows (u, delta, B, C) -> the readout (B, L, D); nothing saved beyond the inputs."""
    del save
    reverse, march = static
    u, delta, B, C = rows
    call = jax.ffi.ffi_call(variant(march).forward_target, jax.ShapeDtypeStruct(u.shape, jnp.float32),
                            vmap_method="sequential")
    return call(u, delta, A, B, C, reverse=np.int32(reverse)), ()


def _backward(static: tuple[bool, str], rows, A: jax.Array, saved, dy: jax.Array):
    """One shard: -> ((du, ddelta, dB, dC), dA summed over the shard's batch)."""
    del saved
    reverse, march = static
    kernel = variant(march)
    u, delta, B, C = rows
    batch, length, dim = u.shape
    groups = _groups(batch, dim, kernel.lanes)
    padded = -(-dim // kernel.lanes) * kernel.lanes  # whole vectors of channels
    shapes = [
        jax.ShapeDtypeStruct(u.shape, jnp.float32),  # du
        jax.ShapeDtypeStruct(u.shape, jnp.float32),  # ddelta
        jax.ShapeDtypeStruct((batch, A.shape[1], padded), jnp.float32),  # dA per batch row, transposed
        jax.ShapeDtypeStruct((groups, *B.shape), jnp.float32),  # dB per channel group
        jax.ShapeDtypeStruct((groups, *C.shape), jnp.float32),  # dC per channel group
    ]
    call = jax.ffi.ffi_call(kernel.backward_target, shapes, vmap_method="sequential")
    du, ddelta, dA, dB, dC = call(u, delta, A, B, C, dy.astype(jnp.float32), reverse=np.int32(reverse))
    return (du, ddelta, dB.sum(0), dC.sum(0)), dA.sum(0)[:, :dim].T


_scan = partition.differentiable(partition.Kernel("aum_scan_cpu", _forward, _backward))


def scan_readout(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, reverse: bool,
                 march: str | None = None) -> jax.Array:
    """<h_t, C_t> of the recurrence from a zero state, float32; each device of the current
    mesh scans its own batch rows (``kernels.partition``).

    Args:
      u, delta: (B, L, D), delta after its bias and softplus.
      A: (D, N).
      B, C: (B, L, N).
      reverse: scan from t = L - 1 down to 0 (the output stays in time order).
      march: the kernel's target (default: ``selected_march()`` when traced).

    Returns:
      (B, L, D).
    """
    return _scan((bool(reverse), march or selected_march()), (u, delta, B, C), A)


def scan_from_state(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, h0: jax.Array,
                    march: str | None = None) -> tuple[jax.Array, jax.Array]:
    """<h_t, C_t> of the recurrence forward in time from the state ``h0``, float32, forward only: a
    piece of a longer sequence, started from the state the previous piece ended in.

    Args:
      u, delta: (B, L, D), delta after its bias and softplus.
      A: (D, N).
      B, C: (B, L, N).
      h0: (B, D, N), the state before the piece's first step (zeros at the sequence's start).
      march: the kernel's target (default: ``selected_march()`` when traced).

    Returns:
      The readout (B, L, D) and the state after the piece's last step (B, D, N).
    """
    target = variant(march or selected_march()).forward_target

    def run(rows, params):
        u, delta, B, C, h0 = rows
        shapes = (jax.ShapeDtypeStruct(u.shape, jnp.float32), jax.ShapeDtypeStruct(h0.shape, jnp.float32))
        call = jax.ffi.ffi_call(target, shapes, vmap_method="sequential")
        return call(u, delta, *params, B, C, h0, reverse=np.int32(False))

    return partition.forward_only(run)((u, delta, B, C, h0), (A,))


def conv_silu(x: jax.Array, kernel: jax.Array, bias: jax.Array, dim: int, reverse: bool,
              march: str | None = None) -> jax.Array:
    """silu(depthwise causal conv + bias) of the channels [0, dim) of ``x``, float32, forward only.

    Args:
      x: (B, L, >= dim), e.g. in_proj's output with the conv's input first: read in place.
      kernel: (K, dim) taps; output t sees x[t - K + 1 .. t] (with ``reverse`` x[t .. t + K - 1],
        the taps in reverse order).
      bias: (dim,).

    Returns:
      (B, L, dim).
    """
    target = variant(march or selected_march()).conv_target

    def run(rows, params):
        call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((*rows[0].shape[:2], dim), jnp.float32),
                                vmap_method="sequential")
        return call(rows[0], *params, reverse=np.int32(reverse))

    return partition.forward_only(run)((x,), (kernel, bias))


def scan_inference(us, deltas, As, Bs, Cs, Ds, biases, xz: jax.Array, scale: float,
                   march: str | None = None) -> jax.Array:
    """``scale * sum_k (<h_t, C_t> + D_k u_t) * silu(z)`` of one or two directions, float32, forward only.

    Args:
      us, deltas: per direction (B, L, D), delta before its bias and softplus.
      As: per direction (D, N); the first runs forward in time, the second backward.
      Bs, Cs: per direction (B, L, N).
      Ds, biases: per direction (D,): the skip and the delta bias.
      xz: (B, L, 2D): in_proj's output; z is its channels [D, 2D), read in place.

    Returns:
      (B, L, D).
    """
    target = variant(march or selected_march()).inference_target
    directions = len(As)
    pad = lambda seq: tuple(seq) * 2 if directions == 1 else tuple(seq)  # the kernel always takes two
    dim = us[0].shape[-1]

    def run(rows, params):
        u, delta, B, C, z = rows[0:2], rows[2:4], rows[4:6], rows[6:8], rows[8]
        A, D, bias = params[0:2], params[2:4], params[4:6]
        args = [x for k in range(2) for x in (u[k], delta[k], A[k], B[k], C[k], D[k], bias[k])]
        call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(u[0].shape, jnp.float32), vmap_method="sequential")
        return call(*args, z, directions=np.int32(directions), scale=np.float32(scale), z_offset=np.int64(dim))

    return partition.forward_only(run)((*pad(us), *pad(deltas), *pad(Bs), *pad(Cs), xz), (*pad(As), *pad(Ds), *pad(biases)))
