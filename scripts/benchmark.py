"""Benchmarks, one section per subsystem; run ``--sections`` to pick them.

Sections:

* ``input``: training input-pipeline throughput of ONE worker (in-process, one
  reading thread): 10 s 16 kHz wav clips decoded from disk, Kaldi fbank, mixup,
  SpecAugment, normalisation and noise, in clips per second.
* ``scan``: forward, and forward + backward (all eight gradients), time of each scan implementation
  on one layer input, as ratios to the kernel of the backend, side by side (the Pallas
  kernel only on a GPU, where it also runs both directions in one launch). On a CPU the C++
  kernel is timed once per ``--cpu-variants`` target (``native``, ``x86-64-v3`` for AVX2:
  one library each, in one process), and ``--scan-rounds`` alternates the implementations.
* ``model``: ``aum_jax.training.update.train_step`` (the recipes' optimizer chain, BCE) and inference
  clips/s, and the memory XLA plans, of AuM at the published recipes' shapes, per scan
  implementation (the C++ kernel per ``--cpu-variants`` target), ``--model-remat`` policy and
  ``--model-mode`` (highest, tensorfloat32, bfloat16), side by side; with the sgemm rate
  measured in the same run, the train step's matmul FLOPs give an MFU. With ``--original``
  (the JSON lines of ``../shared/gpu-anchor/torch_orig.py`` from the same machine) each figure
  is also given as a ratio to the original PyTorch AuM (bfloat16 against its fp16 AMP).
* ``distill``: the demo's train step with an online teacher (the demo model, float32 and
  bfloat16) against the same step without one, for a student at half the teacher's width;
  the arms interleaved, median of ``--distill-rounds``.
* ``pretrain``: the train step of self-supervised pretraining (``configs/pretrain.py``: masked
  patch modelling, its heads and masks) against the supervised step of the same backbone and
  batch, and against the demo's own supervised step (overlapping patches: more tokens); the
  arms interleaved, median of ``--pretrain-rounds``.
* ``scaling``: the train step on 1, 2 and 4 simulated CPU devices (one process each) at a
  fixed per-device batch, with the scan kernels partitioned (each device scans its own
  rows, as training runs) and replicated (every device scans the whole batch, as XLA
  does with a custom call it cannot split): the work ratio, step time at n devices over
  step time at 1. The devices share the same cores, so the ideal ratio is n.
* ``peers``: the inference forward of AuM (Fo-Bi, random weights) beside Hugging Face
  transformers' ``ASTForAudioClassification`` (random weights, SDPA, CPU torch) at the same width
  (``--peer-widths``: tiny, small, base) and 16 x 16 patching, per ``--peer-seconds`` clip length
  and ``--peer-batches`` batch: ms, clips/s and peak RSS of each, AST ms over AuM ms (the AuM
  speed-up) and the RSS ratio. Each figure is a fresh process's; the rounds interleave AuM and
  AST, median of ``--peer-rounds`` (``scripts/benchmark_peers.py``; needs ``pip install -e ".[bench]"``).
* ``haystack``: an audio needle in a haystack (as DASS measures long-audio models): one 1 s clip of
  the demo's held-out test voices hidden at a random offset in ``--haystack-seconds`` (30 s, 2 and
  10 min) of the demo's own coloured noise, ``--haystack-placements`` seeded placements per length,
  found by the demo model (``--haystack-model``, trained by ``configs/demo.py``) with sliding windows
  (every ``--haystack-hop`` s) and in one whole pass (the position embedding interpolated or tiled):
  the share found at the keyword (top-1 of the row nearest it), the share whose peak score for the
  keyword lies on it, the median time error of that peak, wall seconds per minute of audio and the
  peak RSS, each mode and length in a fresh process (``scripts/benchmark_haystack.py``).

Each section returns rows of ``(name, value, unit)`` that are printed as a table;
record results in BENCHMARKS.md.

  python scripts/benchmark.py --sections input
  python scripts/benchmark.py --sections scan,model      # on a GPU: the recipe shapes
  python scripts/benchmark.py --sections scan,model --cpu-variants native,x86-64-v3 --scan-rounds 3
  python scripts/benchmark.py --sections scaling
  python scripts/benchmark.py --sections distill
  python scripts/benchmark.py --sections pretrain
  python scripts/benchmark.py --sections peers --peer-widths tiny,small --peer-seconds 10,41
  python scripts/benchmark.py --sections haystack --haystack-model /tmp/aum_demo/model
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

import contextlib  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import benchmark_haystack  # noqa: E402 (scripts/, the folder of this script)
import benchmark_peers  # noqa: E402
from benchmark_child import sgemm_gflops  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from aum_jax.cli import flags as cli_flags  # noqa: E402
from aum_jax.training.speed import time_ms  # noqa: E402

_SECTIONS = flags.DEFINE_list("sections", ["input", "scan", "model"],
                              "sections to run: input, scan, model, scaling, distill, pretrain, peers, haystack.")
_DISTILL_ROUNDS = flags.DEFINE_integer("distill-rounds", 5, "distill: interleaved rounds of 3 steps per arm.")
_PRETRAIN_ROUNDS = flags.DEFINE_integer("pretrain-rounds", 5, "pretrain: interleaved rounds of 3 steps per arm.")
_INPUT_CLIPS = flags.DEFINE_integer("input-clips", 16, "distinct wav files on disk.")
_INPUT_BATCHES = flags.DEFINE_integer("input-batches", 20, "timed batches of 12 clips.")
_INPUT_THREADS = flags.DEFINE_integer("input-threads", 1, "reading threads of the worker.")
_SCAN_SHAPES = flags.DEFINE_multi_string(
    "scan-shape", None, "B,L,D,N of the scan section, repeatable (default: 4,513,384,16 on CPU; "
    "12,513,1536,16, the base AudioSet layer, and 48,65,768,16 on GPU)."
)
_SCAN_REPEATS = flags.DEFINE_integer("scan-repeats", 5, "timed calls per scan implementation.")
_SCAN_ROUNDS = flags.DEFINE_integer(
    "scan-rounds", 1, "rounds over the scan implementations, each timing every one in turn; the median round is given.")
_CPU_VARIANTS = flags.DEFINE_list(
    "cpu-variants", None, "targets (-march values) of the C++ CPU kernel, side by side in the scan and model sections "
    "(default: $AUM_JAX_CPU_MARCH, else native).")
_MODEL_SHAPES = flags.DEFINE_list(
    "model-shapes", None, "recipes of the model section (default: the three recipe shapes on GPU, "
    "tiny_fobi_spc and base_fobi_spc_infer8 on CPU); see aum_jax.training.speed.RECIPES."
)
_MODEL_IMPLS = flags.DEFINE_list("model-impls", None, "scan impls of the model section (default: all that run here).")
_MODEL_REMAT = flags.DEFINE_list(
    "model-remat", ["dots"], "remat policies of the model section, side by side (dots, dots_scan, none, full)."
)
_MODEL_STEPS = flags.DEFINE_integer("model-steps", 5, "timed train steps and inference calls per figure.")
_MODES = flags.DEFINE_list(
    "model-mode", ["highest"], "precision modes of the model section, side by side: highest (the original's "
    "float32), tensorfloat32 (the original with allow_tf32), bfloat16 (model.dtype; vs the original's fp16 AMP).",
)
_ORIGINAL = flags.DEFINE_string("original", None, "torch.jsonl of gpu-anchor's torch_orig.py, for ratios.")
_SCALING_RECIPE = flags.DEFINE_string("scaling-recipe", "tiny_fobi_spc", "recipe of the scaling section.")
_SCALING_BATCH = flags.DEFINE_integer("scaling-batch", 8, "per-device batch of the scaling section.")
_SCALING_DEVICES = flags.DEFINE_list("scaling-devices", ["1", "2", "4"], "simulated device counts of the scaling section.")
_SCALING_CHILD = flags.DEFINE_integer("scaling-child", 0, "internal: time the scaling step on this many devices.")

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
    from aum_jax.configs.data import get_data_config

    from aum_jax.data.pipeline import input_pipeline

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


def _runnable_impls() -> list[str]:
    import jax

    from aum_jax.ops import IMPLEMENTATIONS

    # Pallas runs in interpret mode off the GPU, which says nothing about its speed; the
    # C++ kernel runs on the CPU backend only; the sections time gradients ('portable' has none).
    kernel = "pallas" if jax.default_backend() == "gpu" else "cpu"
    return [name for name, impl in IMPLEMENTATIONS.items()
            if impl.differentiable and (name not in ("pallas", "cpu") or name == kernel)]


@functools.cache
def _cpu_variants() -> list[str]:
    """The --cpu-variants targets of the C++ kernel that build and run here (the others are named, not timed)."""
    from aum_jax.kernels.cpu import cpu_scan

    found = []
    for march in _CPU_VARIANTS.value or [cpu_scan.selected_march()]:
        reason = cpu_scan.unavailable_reason(march)
        if reason is None:
            found.append(march)
        else:
            print(f"# cpu kernel {march}: not timed: {reason.splitlines()[0]}")
    return found


def _labelled(impls: list[str]) -> list[tuple[str, str, str | None]]:
    """(label, impl, CPU kernel target) per timed implementation: "cpu" once per --cpu-variants target."""
    from aum_jax.kernels.cpu import cpu_scan

    labelled = []
    for impl in impls:
        if impl != "cpu":
            labelled.append((impl, impl, None))
            continue
        variants = _cpu_variants()
        for march in variants:
            label = f"cpu {march} ({cpu_scan.variant(march).isa})" if len(variants) > 1 or _CPU_VARIANTS.value else "cpu"
            labelled.append((label, impl, march))
    return labelled


def _kernel_target(march: str | None):
    """The block in which scan_impl="cpu" runs the kernel built for ``march`` (nothing for None)."""
    from aum_jax.kernels.cpu import cpu_scan

    return cpu_scan.use(march) if march else contextlib.nullcontext()


def scan_section() -> list[Row]:
    """Milliseconds per forward, and forward + backward, of each implementation, with ratios.

    On a GPU the Fo-Bi pair of directions is also timed, as the kernel runs it in one launch.
    """
    import jax
    import jax.numpy as jnp

    from aum_jax.ops import bidirectional_scan, selective_scan

    on_gpu = jax.default_backend() == "gpu"
    shapes = _SCAN_SHAPES.value or (["12,513,1536,16", "48,65,768,16"] if on_gpu else ["4,513,384,16"])
    impls = _labelled(_runnable_impls())
    rows: list[Row] = []
    for spec in shapes:
        batch, length, dim, n = (int(v) for v in spec.split(","))
        keys = jax.random.split(jax.random.key(0), 5)
        u, delta, z = (jax.random.normal(k, (batch, length, dim)) for k in keys[:3])
        b, c = (jax.random.normal(k, (batch, length, n)) for k in keys[3:])
        a = -jnp.broadcast_to(jnp.arange(1.0, n + 1), (dim, n))
        d, bias = jnp.ones((dim,)), jnp.zeros((dim,))
        shape = f"B={batch} L={length} D={dim} N={n}"
        rounds: dict[str, list[tuple[float, ...]]] = {label: [] for label, _, _ in impls}
        args = (u, delta, a, b, c, d, z, bias)
        every = tuple(range(len(args)))  # training needs all eight gradients
        for _ in range(_SCAN_ROUNDS.value):  # each round times every implementation in turn
            for label, impl, march in impls:
                one = lambda *args, impl=impl: selective_scan(*args, True, impl=impl)
                pair = lambda u, delta, a, b, c, d, z, bias, impl=impl: bidirectional_scan(
                    (u,), (delta,), (a, a), (b,), (c,), (d,), z, (bias,), delta_softplus=True, impl=impl
                )
                with _kernel_target(march):
                    forward = jax.jit(one)
                    grad = jax.jit(jax.grad(lambda *args, one=one: one(*args).sum(), argnums=every))
                    times = (time_ms(lambda: forward(*args), _SCAN_REPEATS.value),
                             time_ms(lambda: grad(*args), _SCAN_REPEATS.value))
                    if on_gpu:
                        pair_grad = jax.jit(jax.grad(lambda *args, pair=pair: pair(*args).sum(), argnums=every))
                        times += (time_ms(lambda: pair_grad(*args), _SCAN_REPEATS.value),)
                rounds[label].append(times)
        # The median round of each, by its fwd+bwd time.
        timed = {label: sorted(r, key=lambda t: t[1])[len(r) // 2] for label, r in rounds.items()}
        for label, times in timed.items():
            rows.append((f"scan {label}: fwd ms ({shape})", times[0], "ms"))
            rows.append((f"scan {label}: fwd+bwd ms ({shape})", times[1], "ms"))
            if on_gpu:
                rows.append((f"scan {label}: both directions fwd+bwd ms ({shape})", times[2], "ms"))
        references = [label for label, impl, _ in impls if impl == ("pallas" if on_gpu else "cpu")]
        for reference in references:
            for label, impl, _ in impls:
                if impl not in ("pallas", "cpu"):
                    for what, i in (("fwd", 0), ("fwd+bwd", 1)):
                        rows.append((f"scan {what}: {reference} vs {label} ({shape})", timed[label][i] / timed[reference][i], "x"))
    return rows


ORIGINAL_MODES = {"highest": (False, False), "tensorfloat32": (True, False), "bfloat16": (False, True)}  # (tf32, amp)


def _originals(mode: str) -> dict[tuple, dict]:
    """gpu-anchor's figures of the original in the matching mode, by (size, variant, frames, batch)."""
    if not _ORIGINAL.value:
        return {}
    found = {}
    with open(_ORIGINAL.value) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("part") == "torch" and "step_ms" in rec and (rec["tf32"], rec["amp"]) == ORIGINAL_MODES[mode]:
                found[(rec["size"], rec["variant"], rec["frames"], rec["batch"])] = rec
    return found


def model_section() -> list[Row]:
    """The recipe shapes per scan implementation, remat policy and mode, side by side; MFU against this run's sgemm."""
    import jax

    from aum_jax.training import speed

    on_gpu = jax.default_backend() == "gpu"
    names = _MODEL_SHAPES.value or (list(speed.GPU_RECIPES) if on_gpu else ["tiny_fobi_spc", "base_fobi_spc_infer8"])
    impls = _labelled(_MODEL_IMPLS.value or _runnable_impls())
    rows: list[Row] = []
    for mode in _MODES.value:
        sgemm = sgemm_gflops(speed.PRECISIONS[mode][0])
        rows.append((f"sgemm GFLOP/s (2048^3, {mode})", sgemm, "GFLOP/s"))
        originals = _originals(mode)
        for name in names:
            recipe = speed.RECIPES[name]
            original = originals.get((recipe.size, recipe.bimamba_type, recipe.frames, recipe.train_batch or recipe.infer_batch))
            results = {}
            for (name_of_impl, impl, march), remat in itertools.product(impls, _MODEL_REMAT.value):
                label = " ".join([name_of_impl] + ([f"remat={remat}"] if len(_MODEL_REMAT.value) > 1 else [])
                                 + ([mode] if len(_MODES.value) > 1 else []))
                try:
                    with _kernel_target(march):
                        results[label] = speed.measure(recipe, scan_impl=impl, remat=remat, mode=mode,
                                                       repeats=_MODEL_STEPS.value)
                except Exception as error:  # noqa: BLE001 - an impl that runs out of memory is a result
                    rows.append((f"{name} {label}: failed: {str(error).splitlines()[0][:60]}", float("nan"), ""))
            for label, figures in results.items():
                for what, value in figures.items():
                    rows.append((f"{name} {label}: {what}", value, ""))
                if "train_matmul_gflops" in figures:
                    rows.append((f"{name} {label}: train MFU vs sgemm", 100 * figures["train_matmul_gflops"] / sgemm, "%"))
                if original is not None:
                    for ours, theirs in (("train_clips_s", "train_clips_s"), ("infer_clips_s", "infer_clips_s")):
                        if ours in figures:
                            rows.append((f"{name} {label}: {ours} vs original", figures[ours] / original[theirs], "x"))
                    memory = figures.get("peak_gb", figures.get("train_planned_gb"))
                    if memory is not None:
                        rows.append((f"{name} {label}: memory vs original", memory / original["mem_gb"], "x"))
            for a, b in itertools.combinations(results, 2):
                key = "train_clips_s" if "train_clips_s" in results[a] else "infer_clips_s"
                rows.append((f"{name}: {key} {a} vs {b}", results[a][key] / results[b][key], "x"))
    return rows


def _interleaved_medians(steps: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """The median ms of 3 calls of each compiled step, over ``rounds`` rounds that interleave the arms."""
    import numpy as np

    times: dict[str, list[float]] = {arm: [] for arm in steps}
    for _ in range(rounds):
        for arm, step in steps.items():
            times[arm].append(time_ms(step, 3, warmup=0))
    return {arm: float(np.median(t)) for arm, t in times.items()}


def distill_section() -> list[Row]:
    """ms per train step of a half-width demo student without a teacher and with the demo model online."""
    import jax
    import numpy as np
    from aum_jax.configs import demo
    from flax import nnx

    from aum_jax.models import AuMConfig, init_model
    from aum_jax.training import distillation, objectives, update

    config = demo.get_config()
    teacher_config = AuMConfig.from_dict(config.model.to_dict())
    student_config = teacher_config.replace(embed_dim=teacher_config.embed_dim // 2)
    rng = np.random.default_rng(0)
    batch = {"fbank": rng.normal(size=(config.data.batch_size, teacher_config.audio_length,
                                       teacher_config.num_mel_bins)).astype(np.float32),
             "label": np.eye(teacher_config.num_classes, dtype=np.float32)[
                 rng.integers(teacher_config.num_classes, size=config.data.batch_size)]}
    settings = {"supervised": objectives.Supervised("CE"), "distill": distillation.step_settings(config, None)}
    tx = update.make_optimizer(config.optimizer, update.learning_rate_schedule(config.optimizer, 100))
    arms = {"no teacher": None, "online teacher float32": "float32", "online teacher bfloat16": "bfloat16"}
    steps = {}
    for arm, dtype in arms.items():
        model = init_model(student_config, 0)
        optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
        teacher = None if dtype is None else init_model(teacher_config.replace(dtype=dtype), 1)
        if teacher is not None:
            teacher.eval()
            teacher = distillation.Teacher(teacher)
        name = "supervised" if teacher is None else "distill"
        steps[arm] = lambda m=model, o=optimizer, n=name, t=teacher: update.train_step(m, o, batch, n, settings[n],
                                                                                    frozen=t)["loss"]
        jax.block_until_ready(steps[arm]())  # compiled before any timing.
    medians = _interleaved_medians(steps, _DISTILL_ROUNDS.value)
    rows: list[Row] = [(f"distill: {arm} train step (demo batch {config.data.batch_size})", ms, "ms")
                       for arm, ms in medians.items()]
    rows += [(f"distill: {arm} vs no teacher", medians[arm] / medians["no teacher"], "x")
             for arm in arms if arm != "no teacher"]
    return rows


def pretrain_section() -> list[Row]:
    """ms per train step of the demo pretraining (masked patches) and of supervised steps on its batch."""
    import jax
    import numpy as np
    from aum_jax.configs import demo, pretrain
    from flax import nnx

    from aum_jax.models import AuMConfig
    from aum_jax.training import objectives, update

    config = pretrain.get_config("demo")
    backbone = AuMConfig.from_dict(config.model.to_dict())
    rng = np.random.default_rng(0)
    batch = {"fbank": rng.normal(size=(config.data.batch_size, backbone.audio_length,
                                       backbone.num_mel_bins)).astype(np.float32),
             "label": np.eye(backbone.num_classes, dtype=np.float32)[
                 rng.integers(backbone.num_classes, size=config.data.batch_size)]}
    demo_model = AuMConfig.from_dict(demo.get_config().model.to_dict())
    arms = {"masked patches": ("masked_patches", backbone), "supervised, same backbone": ("supervised", backbone),
            f"supervised, demo strides {demo_model.strides}": ("supervised", demo_model)}
    tx = update.make_optimizer(config.optimizer, update.learning_rate_schedule(config.optimizer, 100))
    steps = {}
    for arm, (name, model_config) in arms.items():
        objective = objectives.get(name)
        module = objective.init(model_config, 0)
        optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)
        settings = objective.settings(config, model_config)
        steps[arm] = lambda m=module, o=optimizer, n=name, s=settings: update.train_step(m, o, batch, n, s)["loss"]
        jax.block_until_ready(steps[arm]())  # compiled before any timing.
    medians = _interleaved_medians(steps, _PRETRAIN_ROUNDS.value)
    rows: list[Row] = [(f"pretrain: {arm} train step (batch {config.data.batch_size})", ms, "ms")
                       for arm, ms in medians.items()]
    rows += [(f"pretrain: masked patches vs {arm}", medians["masked patches"] / medians[arm], "x")
             for arm in arms if arm != "masked patches"]
    return rows


def _scaling_child(devices: int) -> None:
    """One process with ``devices`` simulated devices: prints the step ms, partitioned and replicated."""
    import jax
    import jax.numpy as jnp
    import ml_collections
    from flax import nnx

    from aum_jax.core import sharding
    from aum_jax.models import init_model
    from aum_jax.training import speed, update

    recipe = speed.RECIPES[_SCALING_RECIPE.value]
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data_axis": "data", "num_devices": devices}))
    config = recipe.model_config()
    batch_size = _SCALING_BATCH.value * devices
    key = jax.random.key(0)
    batch = {"fbank": jax.random.normal(key, (batch_size, recipe.frames, config.num_mel_bins)),
             "label": (jax.random.uniform(key, (batch_size, recipe.num_classes)) < 0.05).astype(jnp.float32)}
    batch = sharding.global_batch(jax.device_get(batch), mesh)
    result = {}
    steps = {"partitioned": update.train_step, "replicated": update.train_step.jitted}  # .jitted: no mesh context
    for name, step in steps.items():
        model = init_model(config, 0, sharding.replicated(mesh))
        opt = nnx.Optimizer(model, speed.optimizer(recipe), wrt=nnx.Param)
        nnx.update(opt, sharding.replicate(nnx.state(opt), mesh))
        result[name] = speed.time_ms(lambda: step(model, opt, batch, "BCE")["loss"], _MODEL_STEPS.value, warmup=2)
    print("SCALING " + json.dumps(result), flush=True)


def scaling_section() -> list[Row]:
    """Work ratio of the train step at 1, 2 and 4 simulated devices, partitioned and replicated scan."""
    times = {}
    for devices in map(int, _SCALING_DEVICES.value):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        done = subprocess.run(
            [sys.executable, __file__, f"--scaling-child={devices}", f"--scaling-recipe={_SCALING_RECIPE.value}",
             f"--scaling-batch={_SCALING_BATCH.value}", f"--model-steps={_MODEL_STEPS.value}"],
            env=env, capture_output=True, text=True)
        line = next((l for l in done.stdout.splitlines() if l.startswith("SCALING ")), None)
        if done.returncode or line is None:
            raise RuntimeError(f"the {devices}-device scaling run failed:\n{done.stderr[-2000:]}")
        times[devices] = json.loads(line[8:])
    rows: list[Row] = []
    first = min(times)
    for devices, result in times.items():
        for name, ms in result.items():
            rows.append((f"scaling {name}: step ms, {devices} devices x {_SCALING_BATCH.value} clips", ms, "ms"))
            rows.append((f"scaling {name}: work ratio at {devices} devices (ideal {devices / first:g})",
                         ms / times[first][name], "x"))
    return rows


def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


SECTIONS: dict[str, Callable[[], list[Row]]] = {
    "input": input_section, "scan": scan_section, "model": model_section, "scaling": scaling_section,
    "distill": distill_section, "pretrain": pretrain_section, "peers": benchmark_peers.peers_section,
    "haystack": benchmark_haystack.haystack_section,
}


def main(argv: list[str]) -> None:
    del argv
    if _SCALING_CHILD.value:
        return _scaling_child(_SCALING_CHILD.value)
    if benchmark_peers.child_requested():
        return benchmark_peers.run_child()
    if benchmark_haystack.child_requested():
        return benchmark_haystack.run_child()
    unknown = set(_SECTIONS.value) - set(SECTIONS)
    if unknown:
        raise app.UsageError(f"unknown sections {sorted(unknown)}; choose from {list(SECTIONS)}")
    if "peers" in _SECTIONS.value:
        benchmark_peers.require_peers()  # before any section runs
    if "haystack" in _SECTIONS.value:
        benchmark_haystack.require_model()  # a missing demo model: one error line before any section runs
    import jax

    print(f"# {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{jax.devices()[0].device_kind}, jax {jax.__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if jax.default_backend() == "cpu":
        from aum_jax.kernels.cpu import cpu_scan

        print(f"# {_cpu_model()}; cpu scan kernel: " + ", ".join(
            f"{march} -> {cpu_scan.variant(march).isa}, {cpu_scan.variant(march).lanes} float32 lanes"
            for march in _cpu_variants()))
    failures = []
    for section in _SECTIONS.value:
        for name, value, unit in SECTIONS[section]():
            print(f"{name:60s} {value:10.2f} {unit}", flush=True)
            if math.isnan(value) and "failed" in name:
                failures.append(f"{name} {unit}".strip())
    if failures:  # every row is printed first; then the run is not a success.
        sys.exit(f"error: {len(failures)} measurement(s) failed; the first: {failures[0]}")


if __name__ == "__main__":
    app.run(main, flags_parser=cli_flags.parse_absl_flags)
