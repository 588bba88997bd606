"""What makes a command's second call fast: JAX's persistent compilation cache and traced model structures, on disk.

Both live under :func:`cache_root` (``$AUM_JAX_CACHE``, else ``~/.cache/aum_jax``), in folders keyed so that
another jax, another machine or another model never reads a stale entry:

- ``xla/<jax>-<jaxlib>-<machine>/``: JAX's own compilation cache (``jax_compilation_cache_dir``), turned on by
  :func:`enable_compilation_cache`. JAX keys each entry by the program's HLO (so another model, width,
  input shape or scan implementation compiles anew), the jaxlib version, the XLA flags, the backend and
  its devices; not by the CPU's instruction set, for which XLA's CPU code is compiled, hence a folder per
  jax and machine (architecture, CPU model and instruction-set flags: :func:`machine_key`). An explicit
  ``JAX_COMPILATION_CACHE_DIR`` (or ``jax_compilation_cache_dir``) is the user's and wins.
- ``traced/<kind>/<digest>.pkl``: a value made by tracing Python (:func:`memoized`; the model's skeleton,
  :func:`aum_jax.models.aum.skeleton`), keyed by the caller's key, the jax, jaxlib, flax and Python versions
  and a digest of aum-jax's own source.

:func:`aum_jax.cli.command.guard` turns the compilation cache on before a command's ``main`` runs, and with
``-v`` logs what it gave (programs loaded, and written: :func:`log_compilation_cache`); library users call
:func:`enable_compilation_cache` themselves.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import pickle
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from absl import logging

from aum_jax.core import storage

T = TypeVar("T")

# Programs that compile faster than this are not written (JAX's default is 1 s): predict's forward
# compiles in 0.3-1 s on 2 cores; the many tiny programs of eager array operations stay out of the cache.
MIN_COMPILE_SECONDS = 0.1
# The compilation cache's size limit; JAX evicts the least recently used entries beyond it.
MAX_BYTES = 4 * 2**30


def cache_root() -> Path:
    """``$AUM_JAX_CACHE`` if the variable is set, else ``~/.cache/aum_jax``: where aum-jax caches what it makes."""
    base = os.environ.get("AUM_JAX_CACHE")
    return Path(base) if base else Path.home() / ".cache" / "aum_jax"


def machine_key(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """``<architecture>-<12 hex digits>``: the CPU's model name and instruction-set flags, hashed
    (the first processor of ``cpuinfo_path``; ``platform.processor()`` where there is no procfs)."""
    fields = {}
    try:
        with open(cpuinfo_path) as cpuinfo:
            for line in cpuinfo:
                if not line.strip():  # the first processor's block ends
                    break
                name, _, value = line.partition(":")
                fields[name.strip()] = value.strip()
    except OSError:
        pass
    described = "|".join((fields.get("model name", platform.processor()), fields.get("flags", fields.get("Features", ""))))
    return f"{platform.machine()}-{hashlib.sha256(described.encode()).hexdigest()[:12]}"


def _versions(*names: str) -> str:
    return "-".join(f"{name}{importlib.metadata.version(name)}" for name in names)


def compilation_cache_dir() -> Path:
    """This jax's and this machine's compilation cache folder under :func:`cache_root`."""
    return cache_root() / "xla" / f"{_versions('jax', 'jaxlib')}-{machine_key()}"


class _Counts:
    """The compilation cache's hits and writes in this process, from JAX's monitoring events."""

    def __init__(self) -> None:
        self.hits = self.writes = 0

    def __call__(self, event: str, **_) -> None:
        if event == "/jax/compilation_cache/cache_hits":
            self.hits += 1
        elif event == "/jax/compilation_cache/cache_misses":  # recorded when a compiled program is written
            self.writes += 1


_COUNTS = _Counts()


@functools.cache
def enable_compilation_cache() -> str | None:
    """Turns JAX's persistent compilation cache on in :func:`compilation_cache_dir` (once per process); the folder used.

    A ``JAX_COMPILATION_CACHE_DIR`` or ``jax_compilation_cache_dir`` already set is kept. A folder that
    cannot be made (a read-only home) leaves the cache off, with an INFO log: the command still runs.
    """
    import jax

    where = jax.config.jax_compilation_cache_dir
    if not where:
        folder = compilation_cache_dir()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            logging.info("XLA compilation cache off: %s", e)
            return None
        where = str(folder)
        jax.config.update("jax_compilation_cache_dir", where)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    jax.monitoring.register_event_listener(_COUNTS)
    return where


def log_compilation_cache() -> None:
    """An INFO log (``-v``) of what the compilation cache gave this process: programs loaded, and written."""
    where = enable_compilation_cache()
    if where:
        logging.info("XLA compilation cache %s: %d program(s) loaded, %d written", where, _COUNTS.hits, _COUNTS.writes)


@functools.cache
def source_digest() -> str:
    """A SHA-256 of aum-jax's Python source (the package and its kernels): a changed module changes it."""
    import aum_jax
    import aum_jax.kernels

    digest = hashlib.sha256()
    roots = [Path(aum_jax.__file__).parent, *map(Path, aum_jax.kernels.__path__)]
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def memoized(kind: str, key: str, make: Callable[[], T]) -> T:
    """``make()``, kept on disk under ``traced/<kind>/`` for later processes with the same ``key``.

    The file's name digests ``key``, the jax, jaxlib and flax versions, Python's and
    :func:`source_digest`, so that another library or another aum-jax never reads it. A file that
    cannot be read is made again and replaced; a cache that cannot be written leaves the value unsaved.
    """
    full = "\n".join((kind, key, _versions("jax", "jaxlib", "flax"), sys.version, source_digest()))
    path = cache_root() / "traced" / kind / f"{hashlib.sha256(full.encode()).hexdigest()}.pkl"
    try:
        with open(path, "rb") as f:
            return pickle.load(f)  # a file of our own cache, written below by this code
    except FileNotFoundError:
        pass
    except Exception as e:  # noqa: BLE001 - a damaged or foreign file: made again.
        logging.info("%s unreadable (%s): made again", path, e)
    value = make()
    try:
        storage.write_bytes(path, pickle.dumps(value))
    except OSError as e:
        logging.info("%s not written: %s", path, e)
    return value
