"""The selective scan as a C++ kernel for XLA's CPU backend (``cpu_scan.cc``), through the XLA FFI.

XLA's CPU code for a ``lax.scan`` over time makes a pass over the whole (B, N, D) state
per op per step; the kernel instead keeps a 16-channel block's N states in vector
registers while time advances, and never writes the (B, L, D, N) state tensor. Like
Triton does for its launchers, it is compiled on first use with the machine's C++
compiler (``$CXX``, else ``c++``) for the machine's own CPU, against the installed
jaxlib's FFI headers, and cached under ``$XDG_CACHE_HOME/aum_jax`` (``~/.cache/aum_jax``),
keyed by the source, the flags, the headers and the CPU.

``scan_readout(u, delta, A, B, C, reverse)`` is the recurrence alone, float32, with its
gradient (a second kernel that recomputes each block's states and walks time in reverse).
``unavailable_reason()`` says why the kernel does not build here (None when it does); ``build()`` raises
``CpuKernelUnavailable`` with the compiler's message when it does not.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from . import partition

SOURCE = pathlib.Path(__file__).with_name("cpu_scan.cc")
FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno", "-w")
TARGETS = {"aum_scan_cpu_fwd": "AumScanForward", "aum_scan_cpu_bwd": "AumScanBackward"}
LANES = 16  # channels per vector in cpu_scan.cc


class CpuKernelUnavailable(RuntimeError):
    """The C++ compiler is missing or failed; the message says which and how."""


def _cpu_fingerprint() -> str:
    """The CPU's model and feature flags: -march=native code is built for them."""
    try:
        with open("/proc/cpuinfo") as f:
            return "".join(line for line in f if line.startswith(("model name", "flags")))[:4096]
    except OSError:
        return platform.processor() + platform.machine()


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(root) / "aum_jax"


@functools.cache
def build() -> pathlib.Path:
    """Compiles ``cpu_scan.cc`` once per source, compiler, jaxlib and CPU; returns the library."""
    compiler = os.environ.get("CXX", "c++")
    include = pathlib.Path(jax.ffi.include_dir())
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), compiler.encode(),
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
        done = subprocess.run(
            [compiler, *FLAGS, f"-I{include}", str(SOURCE), "-o", str(partial)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise CpuKernelUnavailable(
                f"{compiler} failed to build {SOURCE.name}; use scan_impl='sequential'.\n{done.stderr[-2000:]}"
            )
        os.replace(partial, library)
    logging.info("Built the CPU selective-scan kernel in %.1f s: %s", time.perf_counter() - start, library)
    return library


@functools.cache
def _register() -> None:
    library = ctypes.cdll.LoadLibrary(str(build()))
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), platform="cpu")


@functools.cache
def unavailable_reason() -> str | None:
    """None when the kernel builds and loads here, else why not (the compiler's message)."""
    try:
        _register()
    except (CpuKernelUnavailable, OSError) as error:
        return str(error)
    return None


def _groups(batch: int, dim: int) -> int:
    """Channel groups per batch row in the backward: enough work items for every core."""
    blocks = -(-dim // LANES)
    return int(min(blocks, max(1, -(-2 * (os.cpu_count() or 1) // batch))))


def _forward(reverse: bool, rows, A: jax.Array, save: bool):
    """One shard: rows (u, delta, B, C) -> the readout (B, L, D); nothing saved beyond the inputs."""
    del save
    _register()
    u, delta, B, C = rows
    call = jax.ffi.ffi_call("aum_scan_cpu_fwd", jax.ShapeDtypeStruct(u.shape, jnp.float32), vmap_method="sequential")
    return call(u, delta, A, B, C, reverse=np.int32(reverse)), ()


def _backward(reverse: bool, rows, A: jax.Array, saved, dy: jax.Array):
    """One shard: -> ((du, ddelta, dB, dC), dA summed over the shard's batch)."""
    del saved
    u, delta, B, C = rows
    batch, length, dim = u.shape
    groups = _groups(batch, dim)
    shapes = [
        jax.ShapeDtypeStruct(u.shape, jnp.float32),  # du
        jax.ShapeDtypeStruct(u.shape, jnp.float32),  # ddelta
        jax.ShapeDtypeStruct((batch, *A.shape), jnp.float32),  # dA per batch row
        jax.ShapeDtypeStruct((groups, *B.shape), jnp.float32),  # dB per channel group
        jax.ShapeDtypeStruct((groups, *C.shape), jnp.float32),  # dC per channel group
    ]
    call = jax.ffi.ffi_call("aum_scan_cpu_bwd", shapes, vmap_method="sequential")
    du, ddelta, dA, dB, dC = call(u, delta, A, B, C, dy.astype(jnp.float32), reverse=np.int32(reverse))
    return (du, ddelta, dB.sum(0), dC.sum(0)), dA.sum(0)


_scan = partition.differentiable(partition.Kernel("aum_scan_cpu", _forward, _backward))


def scan_readout(u: jax.Array, delta: jax.Array, A: jax.Array, B: jax.Array, C: jax.Array, reverse: bool) -> jax.Array:
    """<h_t, C_t> of the recurrence from a zero state, float32; each device of the current
    mesh scans its own batch rows (``kernels.partition``).

    Args:
      u, delta: (B, L, D), delta after its bias and softplus.
      A: (D, N).
      B, C: (B, L, N).
      reverse: scan from t = L - 1 down to 0 (the output stays in time order).

    Returns:
      (B, L, D).
    """
    return _scan(bool(reverse), (u, delta, B, C), A)
