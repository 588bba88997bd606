"""Benchmarks, one section per subsystem; run ``--sections`` to pick them.

Sections:

* ``input``: training input-pipeline throughput of ONE worker (in-process, one
  reading thread): 10 s 16 kHz wav clips decoded from disk, Kaldi fbank, mixup,
  SpecAugment, normalisation and noise, in clips per second.
* ``scan``: forward, and forward + backward (all eight gradients), time of each scan implementation
  on one layer input, as ratios to the kernel of the backend, side by side (the Pallas
  kernel only on a GPU, where it also runs both directions in one launch).
* ``model``: train-step (Adam, BCE) and inference clips/s, and peak memory, of AuM at the
  published recipes' shapes, per scan implementation (and ``--model_remat`` policy), side by side; with the sgemm rate
  measured in the same run, the train step's matmul FLOPs give an MFU. With ``--original``
  (the JSON lines of ``../shared/gpu-anchor/torch_orig.py`` from the same machine) each
  figure is also given as a ratio to the original PyTorch AuM.

Each section returns rows of ``(name, value, unit)`` that are printed as a table;
record results in BENCHMARKS.md.

  python scripts/benchmark.py --sections input
  python scripts/benchmark.py --sections scan,model      # on a GPU: the recipe shapes
"""

from __future__ import annotations

from aum_jax import console

console.quiet_native_logs()  # before JAX and TensorFlow load.

import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_SECTIONS = flags.DEFINE_list("sections", ["input", "scan", "model"], "sections to run: input, scan, model.")
_INPUT_CLIPS = flags.DEFINE_integer("input_clips", 16, "distinct wav files on disk.")
_INPUT_BATCHES = flags.DEFINE_integer("input_batches", 20, "timed batches of 12 clips.")
_INPUT_THREADS = flags.DEFINE_integer("input_threads", 1, "reading threads of the worker.")
_SCAN_SHAPES = flags.DEFINE_multi_string(
    "scan_shape", None, "B,L,D,N of the scan section, repeatable (default: 4,513,384,16 on CPU; "
    "12,513,1536,16, the base AudioSet layer, and 48,65,768,16 on GPU)."
)
_SCAN_REPEATS = flags.DEFINE_integer("scan_repeats", 5, "timed calls per scan implementation.")
_MODEL_SHAPES = flags.DEFINE_list(
    "model_shapes", None, "presets of the model section (default: the three recipe shapes on GPU, "
    "tiny_fobi_spc and base_fobi_spc_infer8 on CPU); see MODEL_SHAPES."
)
_MODEL_IMPLS = flags.DEFINE_list("model_impls", None, "scan impls of the model section (default: all that run here).")
_MODEL_REMAT = flags.DEFINE_list(
    "model_remat", ["dots"], "remat policies of the model section, side by side (dots, dots_scan, none, full)."
)
_MODEL_STEPS = flags.DEFINE_integer("model_steps", 5, "timed train steps and inference calls per figure.")
_PRECISION = flags.DEFINE_enum(
    "matmul_precision", "highest", ["highest", "high", "default"],
    "float32 matmul precision of the model section: highest is the original's fp32; on GPU, "
    "default is TF32 (the original with allow_tf32).",
)
_DTYPE = flags.DEFINE_enum("model_dtype", "float32", ["float32", "bfloat16"], "compute dtype of the model section.")
_ORIGINAL = flags.DEFINE_string("original", None, "torch.jsonl of gpu-anchor's torch_orig.py, for ratios.")

Row = tuple[str, float, str]


def _write_clips(folder: str, count: int) -> tuple[str, str]:
    """``count`` 10 s 16 kHz 16-bit wavs of noisy tones + datafile + label CSV."""
    import soundfile as sf

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
    from aum_jax import input_pipeline
    from aum_jax.configs.data import get_data_config

    with tempfile.TemporaryDirectory() as folder:
        config = get_data_config("audioset_20k")  # 1024 frames, freqm 48, timem 192, mixup 0.5.
        config.train_datafile, config.label_csv = _write_clips(folder, _INPUT_CLIPS.value)
        config.num_classes = 4
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


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Median milliseconds of ``repeats`` calls, after one warm-up call."""
    import jax

    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def _runnable_impls() -> list[str]:
    import jax

    from aum_jax.ops import SCAN_IMPLS

    # Pallas runs in interpret mode off the GPU, which says nothing about its speed; the
    # C++ kernel runs on the CPU backend only.
    kernel = "pallas" if jax.default_backend() == "gpu" else "cpu"
    return [i for i in SCAN_IMPLS if i not in ("pallas", "cpu") or i == kernel]


def scan_section() -> list[Row]:
    """Milliseconds per forward, and forward + backward, of each implementation, with ratios.

    On a GPU the Fo-Bi pair of directions is also timed, as the kernel runs it in one launch.
    """
    import jax
    import jax.numpy as jnp

    from aum_jax.ops import bidirectional_scan, selective_scan

    on_gpu = jax.default_backend() == "gpu"
    shapes = _SCAN_SHAPES.value or (["12,513,1536,16", "48,65,768,16"] if on_gpu else ["4,513,384,16"])
    impls = _runnable_impls()
    rows: list[Row] = []
    for spec in shapes:
        batch, length, dim, n = (int(v) for v in spec.split(","))
        keys = jax.random.split(jax.random.key(0), 5)
        u, delta, z = (jax.random.normal(k, (batch, length, dim)) for k in keys[:3])
        b, c = (jax.random.normal(k, (batch, length, n)) for k in keys[3:])
        a = -jnp.broadcast_to(jnp.arange(1.0, n + 1), (dim, n))
        d, bias = jnp.ones((dim,)), jnp.zeros((dim,))
        shape = f"B={batch} L={length} D={dim} N={n}"
        fwd, both = {}, {}
        args = (u, delta, a, b, c, d, z, bias)
        every = tuple(range(len(args)))  # training needs all eight gradients
        for impl in impls:
            one = lambda *args, impl=impl: selective_scan(*args, True, impl=impl)
            pair = lambda u, delta, a, b, c, d, z, bias, impl=impl: bidirectional_scan(
                (u,), (delta,), (a, a), (b,), (c,), (d,), z, (bias,), delta_softplus=True, impl=impl
            )
            forward = jax.jit(one)
            grad = jax.jit(jax.grad(lambda *args, one=one: one(*args).sum(), argnums=every))
            fwd[impl] = (_time(lambda: forward(*args), _SCAN_REPEATS.value), _time(lambda: grad(*args), _SCAN_REPEATS.value))
            if on_gpu:
                pair_grad = jax.jit(jax.grad(lambda *args, pair=pair: pair(*args).sum(), argnums=every))
                both[impl] = _time(lambda: pair_grad(*args), _SCAN_REPEATS.value)
        for impl in impls:
            rows.append((f"scan {impl}: fwd ms ({shape})", fwd[impl][0], "ms"))
            rows.append((f"scan {impl}: fwd+bwd ms ({shape})", fwd[impl][1], "ms"))
            if impl in both:
                rows.append((f"scan {impl}: both directions fwd+bwd ms ({shape})", both[impl], "ms"))
        reference = "pallas" if on_gpu else "cpu"
        for impl in impls:
            if impl != reference:
                rows.append((f"scan fwd+bwd: {reference} vs {impl} ({shape})", fwd[impl][1] / fwd[reference][1], "x"))
    return rows


# name: (embed_dim, bimamba_type, frames, classes, train batch or 0, inference batch)
MODEL_SHAPES: dict[str, tuple[int, str, int, int, int, int]] = {
    "base_fobi_audioset": (768, "v1", 1024, 527, 12, 12),  # the AudioSet / VGGSound recipes
    "base_fobi_spc": (768, "v1", 128, 35, 48, 48),  # Speech Commands V2
    "small_bibi_audioset": (384, "v2", 1024, 527, 12, 12),
    "tiny_fobi_spc": (192, "v1", 128, 35, 32, 32),  # the CPU training figure
    "base_fobi_spc_infer8": (768, "v1", 128, 35, 0, 8),  # the CPU inference figure
}


def _matmul_flops_per_clip(config) -> float:
    """Forward matmul FLOPs of one clip: patch embedding, the blocks' projections, the head."""
    length, d, di = config.num_patches + config.num_cls_tokens, config.embed_dim, config.d_inner
    rank, n = config.resolved_dt_rank, config.d_state
    branches = 2 if config.bimamba_type == "v2" else 1
    per_block = 2 * length * (d * 2 * di + branches * (di * (rank + 2 * n) + rank * di) + di * d)
    patch = 2 * config.num_patches * config.patch_size[0] * config.patch_size[1] * d
    return config.depth * per_block + patch + 2 * d * config.num_classes


def _sgemm_gflops() -> float:
    """float32 matmul rate at the section's precision, 2048^3."""
    import jax
    import jax.numpy as jnp

    x = jax.random.normal(jax.random.key(0), (2048, 2048))
    with jax.default_matmul_precision(_PRECISION.value):
        mm = jax.jit(lambda x: x @ x)
        ms = _time(lambda: mm(x), 10)
    return 2 * 2048**3 / ms / 1e6


def _originals() -> dict[tuple, dict]:
    if not _ORIGINAL.value:
        return {}
    tf32, amp = _PRECISION.value != "highest", _DTYPE.value != "float32"
    found = {}
    with open(_ORIGINAL.value) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("part") == "torch" and "step_ms" in rec and (rec["tf32"], rec["amp"]) == (tf32 and not amp, amp):
                found[(rec["size"], rec["variant"], rec["frames"], rec["batch"])] = rec
    return found


def _model_figures(name: str, impl: str, remat: str) -> dict[str, float]:
    """Train-step ms, train and inference clips/s, and the peak memory XLA plans, of one preset."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import nnx

    from aum_jax.models import AudioMamba, AuMConfig

    dim, variant, frames, classes, train_batch, infer_batch = MODEL_SHAPES[name]
    config = AuMConfig(
        embed_dim=dim, bimamba_type=variant, audio_length=frames, num_classes=classes, scan_impl=impl,
        dtype=_DTYPE.value, remat=remat,
    )
    model = AudioMamba(config, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    key = jax.random.key(1)
    figures: dict[str, float] = {}
    with jax.default_matmul_precision(_PRECISION.value):
        x = jax.random.normal(key, (infer_batch, frames, 128))
        infer = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x))
        figures["infer clips/s"] = infer_batch / _time(lambda: infer(params, x), _MODEL_STEPS.value) * 1000
        if train_batch:
            optimizer = optax.adam(1e-5, b1=0.95, b2=0.999)
            x = jax.random.normal(key, (train_batch, frames, 128))
            y = (jax.random.uniform(key, (train_batch, classes)) < 0.05).astype(jnp.float32)

            def step(p, opt_state, x, y):
                loss_fn = lambda p: optax.sigmoid_binary_cross_entropy(nnx.merge(graphdef, p, rest)(x), y).mean()
                loss, grads = jax.value_and_grad(loss_fn)(p)
                updates, opt_state = optimizer.update(grads, opt_state, p)
                return optax.apply_updates(p, updates), opt_state, loss

            state = [params, optimizer.init(params)]
            compiled = jax.jit(step, donate_argnums=(0, 1)).lower(*state, x, y).compile()
            memory = compiled.memory_analysis()
            if memory is not None:
                figures["train peak GB"] = (
                    memory.argument_size_in_bytes + memory.output_size_in_bytes
                    - memory.alias_size_in_bytes + memory.temp_size_in_bytes
                ) / 1e9

            def train_step():
                state[0], state[1], loss = compiled(*state, x, y)
                return loss

            ms = _time(train_step, _MODEL_STEPS.value)
            figures["train step ms"] = ms
            figures["train clips/s"] = train_batch / ms * 1000
            figures["train matmul GFLOP/s"] = 3 * train_batch * _matmul_flops_per_clip(config) / ms / 1e6
    return figures


def model_section() -> list[Row]:
    """The recipe shapes per scan implementation, side by side; MFU against this run's sgemm."""
    import jax

    on_gpu = jax.default_backend() == "gpu"
    names = _MODEL_SHAPES.value or (
        ["base_fobi_audioset", "base_fobi_spc", "small_bibi_audioset"] if on_gpu else ["tiny_fobi_spc", "base_fobi_spc_infer8"]
    )
    impls = _MODEL_IMPLS.value or _runnable_impls()
    sgemm = _sgemm_gflops()
    rows: list[Row] = [(f"sgemm GFLOP/s (2048^3, {_PRECISION.value})", sgemm, "GFLOP/s")]
    originals = _originals()
    for name in names:
        dim, variant, frames, _, train_batch, infer_batch = MODEL_SHAPES[name]
        size = {192: "tiny", 384: "small", 768: "base"}[dim]
        original = originals.get((size, variant, frames, train_batch or infer_batch))
        results = {}
        for impl, remat in itertools.product(impls, _MODEL_REMAT.value):
            label = impl if len(_MODEL_REMAT.value) == 1 else f"{impl} remat={remat}"
            try:
                results[label] = _model_figures(name, impl, remat)
            except Exception as error:  # noqa: BLE001 - an impl that runs out of memory is a result
                rows.append((f"{name} {label}: failed: {str(error).splitlines()[0][:60]}", float("nan"), ""))
        for impl, figures in results.items():
            for what, value in figures.items():
                rows.append((f"{name} {impl}: {what}", value, ""))
            if "train matmul GFLOP/s" in figures:
                rows.append((f"{name} {impl}: train MFU vs sgemm", 100 * figures["train matmul GFLOP/s"] / sgemm, "%"))
            if original is not None:
                for ours, theirs in (("train clips/s", "train_clips_s"), ("infer clips/s", "infer_clips_s")):
                    if ours in figures:
                        rows.append((f"{name} {impl}: {ours} vs original", figures[ours] / original[theirs], "x"))
                if "train peak GB" in figures:
                    rows.append((f"{name} {impl}: peak memory vs original", figures["train peak GB"] / original["mem_gb"], "x"))
        for a, b in itertools.combinations(results, 2):
            key = "train clips/s" if "train clips/s" in results[a] else "infer clips/s"
            rows.append((f"{name}: {key} {a} vs {b}", results[a][key] / results[b][key], "x"))
    return rows


SECTIONS: dict[str, Callable[[], list[Row]]] = {"input": input_section, "scan": scan_section, "model": model_section}


def main(argv: list[str]) -> None:
    del argv
    unknown = set(_SECTIONS.value) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    import jax

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for section in _SECTIONS.value:
        for name, value, unit in SECTIONS[section]():
            print(f"{name:60s} {value:10.2f} {unit}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=console.parse_absl_flags)
