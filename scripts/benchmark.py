"""Benchmarks, one section per subsystem; run ``--sections`` to pick them.

Sections:

* ``input``: training input-pipeline throughput of ONE worker (in-process, one
  reading thread): 10 s 16 kHz wav clips decoded from disk, Kaldi fbank, mixup,
  SpecAugment, normalisation and noise, in clips per second.
* ``scan``: forward + backward time of each selective-scan implementation on one
  layer input, as ratios to the sequential reference, side by side (the Pallas kernel
  only on a GPU).

Each section returns rows of ``(name, value, unit)`` that are printed as a table;
record results in BENCHMARKS.md.

  python scripts/benchmark.py --sections input
"""

from __future__ import annotations

from aum_jax import console

console.quiet_native_logs()  # before JAX and TensorFlow load.

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable

import numpy as np
import soundfile as sf
from absl import app, flags

from aum_jax import input_pipeline
from configs.data import get_data_config

_SECTIONS = flags.DEFINE_list("sections", ["input", "scan"], "sections to run: input, scan.")
_INPUT_CLIPS = flags.DEFINE_integer("input_clips", 16, "distinct wav files on disk.")
_INPUT_BATCHES = flags.DEFINE_integer("input_batches", 20, "timed batches of 12 clips.")
_INPUT_THREADS = flags.DEFINE_integer("input_threads", 1, "reading threads of the worker.")
_SCAN_SHAPE = flags.DEFINE_list("scan_shape", ["4", "513", "384", "16"], "B,L,D,N of the scan section.")
_SCAN_REPEATS = flags.DEFINE_integer("scan_repeats", 5, "timed calls per scan implementation.")

Row = tuple[str, float, str]


def _write_clips(folder: str, count: int) -> tuple[str, str]:
    """``count`` 10 s 16 kHz 16-bit wavs of noisy tones + datafile + label CSV."""
    rng = np.random.default_rng(0)
    t = np.arange(160_000) / 16_000
    entries = []
    for i in range(count):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.05 * rng.standard_normal(t.size)
        path = os.path.join(folder, f"clip{i}.wav")
        sf.write(path, wave.astype(np.float32), 16_000, subtype="PCM_16")
        entries.append({"wav": path, "labels": f"/m/c{i % 4}"})
    datafile = os.path.join(folder, "train.json")
    with open(datafile, "w") as f:
        json.dump({"data": entries}, f)
    label_csv = os.path.join(folder, "labels.csv")
    with open(label_csv, "w") as f:
        f.write("index,mid,display_name\n" + "".join(f"{i},/m/c{i},c{i}\n" for i in range(4)))
    return datafile, label_csv


def input_section() -> list[Row]:
    """Clips per second of one in-process worker on the AudioSet recipe, noise on."""
    with tempfile.TemporaryDirectory() as folder:
        config = get_data_config("audioset_20k")  # 1024 frames, freqm 48, timem 192, mixup 0.5.
        config.train_datafile, config.label_csv = _write_clips(folder, _INPUT_CLIPS.value)
        config.n_class = 4
        config.noise = True
        config.num_workers = 0
        config.read_threads = _INPUT_THREADS.value
        config.prefetch_buffer_size = config.batch_size
        iterator = input_pipeline.make_train_iterator(config, process_index=0, process_count=1)
        next(iterator)  # warm-up: caches, first prefetch.
        start = time.perf_counter()
        for _ in range(_INPUT_BATCHES.value):
            next(iterator)
        seconds = time.perf_counter() - start
    clips = _INPUT_BATCHES.value * config.batch_size
    return [
        ("input: clips/s, 1 worker, 1 thread" if _INPUT_THREADS.value == 1
         else f"input: clips/s, 1 worker, {_INPUT_THREADS.value} threads", clips / seconds,
         "clips/s"),
        ("input: ms per clip", 1000 * seconds / clips, "ms"),
    ]


def scan_section() -> list[Row]:
    """Milliseconds per forward + backward pass of each scan implementation, and ratios."""
    import jax
    import jax.numpy as jnp

    from aum_jax.ops import SCAN_IMPLS, selective_scan

    batch, length, dim, n = (int(v) for v in _SCAN_SHAPE.value)
    keys = jax.random.split(jax.random.key(0), 5)
    u, delta, z = (jax.random.normal(k, (batch, length, dim)) for k in keys[:3])
    b, c = (jax.random.normal(k, (batch, length, n)) for k in keys[3:])
    a = -jnp.broadcast_to(jnp.arange(1.0, n + 1), (dim, n))
    # Pallas runs in interpret mode on CPU, which says nothing about its speed.
    impls = [i for i in SCAN_IMPLS if i != "pallas" or jax.default_backend() == "gpu"]
    ms = {}
    for impl in impls:
        step = jax.jit(jax.grad(
            lambda u, impl=impl: selective_scan(u, delta, a, b, c, None, z, None, True, impl=impl).sum()
        ))
        step(u).block_until_ready()
        start = time.perf_counter()
        for _ in range(_SCAN_REPEATS.value):
            step(u).block_until_ready()
        ms[impl] = 1000 * (time.perf_counter() - start) / _SCAN_REPEATS.value
    shape = f"B={batch} L={length} D={dim} N={n}"
    rows = [(f"scan {impl}: ms fwd+bwd ({shape})", ms[impl], "ms") for impl in impls]
    rows += [(f"scan speed-up {impl} vs sequential", ms["sequential"] / ms[impl], "x") for impl in impls[1:]]
    return rows


SECTIONS: dict[str, Callable[[], list[Row]]] = {"input": input_section, "scan": scan_section}


def main(argv: list[str]) -> None:
    del argv
    unknown = set(_SECTIONS.value) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    print(f"# {platform.node()} {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    for section in _SECTIONS.value:
        for name, value, unit in SECTIONS[section]():
            print(f"{name:45s} {value:10.2f} {unit}")


if __name__ == "__main__":
    app.run(main, flags_parser=console.parse_absl_flags)
