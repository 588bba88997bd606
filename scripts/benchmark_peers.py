"""The ``peers`` section of ``scripts/benchmark.py``: AuM beside the Audio Spectrogram Transformer.

aum-jax's AuM (Fo-Bi, random weights, 24 blocks) and Hugging Face transformers'
``ASTForAudioClassification`` (random weights, 12 layers, SDPA attention, eval mode under
``torch.inference_mode()``) at the same width and the same 16 x 16 patching without overlap, on
``--peer-seconds`` clips at ``--peer-batches``: the inference forward, in ms, clips/s and the peak
RSS of the process. The AuM of each width and length is initialised and saved once, and its processes load it as
``predict`` does (``model_files.load_model``); AST's build their random weights in memory, as torch initialises
a module. Every figure comes from a fresh process (``--peer-child``) that times
``--peer-reps`` forwards after one warm-up; ``--peer-rounds`` rounds each run every point once,
AuM then AST, and each figure is the median over the rounds. A process that fails (e.g. out of memory) makes
its point a row of nan, its unit saying why.

The processes run this file as a script (``scripts/benchmark.py --peer-child=...`` runs the same
code): each imports only its own framework, so that neither peak RSS counts the other's
libraries (benchmark.py's imports hold JAX, about 200 MB), and torch's OpenMP threads never
share a process with XLA's (torch and transformers are imported by the AST processes only).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import sys
import tempfile
import time

import numpy as np
from absl import app, flags
from benchmark_child import run_json_child

from aum_jax.cli import flags as cli_flags
from aum_jax.core import memory

Row = tuple[str, float, str]

# width: (AuM embed_dim, AST hidden_size and attention heads)
WIDTHS: dict[str, tuple[int, int]] = {"tiny": (192, 3), "small": (384, 6), "base": (768, 12)}
MODELS = ("aum", "ast")
# Named clip lengths: the AudioSet recipes' input (10 s clips padded to 1024 frames) and 4 and 16 times it.
NAMED_FRAMES: dict[float, int] = {10: 1024, 41: 4096, 164: 16384}
MEL_BINS, CLASSES, PATCH = 128, 527, 16


def _positive_numbers(values: list[str], kind: type) -> bool:
    try:
        return all(kind(v) > 0 and math.isfinite(kind(v)) for v in values)
    except ValueError:
        return False


_WIDTHS = flags.DEFINE_list("peer-widths", list(WIDTHS), "peers: widths (tiny, small, base: AuM embed_dim "
                            "192/384/768 at depth 24 against AST hidden 192/384/768, 3/6/12 heads, 12 layers).")
_SECONDS = flags.DEFINE_list("peer-seconds", ["10", "41", "164", "300"], "peers: clip lengths in seconds "
                             "(100 frames a second, rounded up to whole patches; 10, 41, 164: 1024, 4096, 16384 frames).")
_BATCHES = flags.DEFINE_list("peer-batches", ["1", "8"], "peers: batch sizes.")
_ROUNDS = flags.DEFINE_integer("peer-rounds", 3, "peers: interleaved rounds, each running every point once, AuM then "
                               "AST, each in a fresh process; the median is given.", lower_bound=1)
_REPS = flags.DEFINE_integer("peer-reps", 3, "peers: timed forwards per process, after one warm-up.", lower_bound=1)
_CHILD = flags.DEFINE_string("peer-child", None, "internal: time one point, model:width:frames:batch "
                             "(e.g. aum:small:1024:1), and print it as a JSON line.")
_AUM_DIR = flags.DEFINE_string("peer-aum-dir", None, "internal: the model directory an aum --peer-child loads.")
flags.register_validator("peer-widths", lambda v: set(v) <= set(WIDTHS), f"choose from {list(WIDTHS)}")
flags.register_validator("peer-seconds", lambda v: _positive_numbers(v, float), "positive numbers wanted")
flags.register_validator("peer-batches", lambda v: _positive_numbers(v, int), "positive whole numbers wanted")


def frames(seconds: float) -> int:
    """fbank frames of a ``seconds`` clip: 100 a second, rounded up to whole patches (the named lengths aside)."""
    if seconds in NAMED_FRAMES:
        return NAMED_FRAMES[seconds]
    return max(PATCH, math.ceil(round(seconds * 100) / PATCH) * PATCH)


def require_peers() -> None:
    """Ends the process with one ``error:`` line unless torch and transformers are installed (nothing is imported)."""
    missing = [name for name in ("torch", "transformers") if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"error: the peers section needs {' and '.join(missing)}: pip install -e \".[bench]\"")


def child_requested() -> bool:
    return _CHILD.value is not None


def aum_config(width: str, length: int):
    """The AuM-{tiny,small,base} Fo-Bi of ``width`` for ``length``-frame clips (an ``AuMConfig``)."""
    from aum_jax.models.config import AuMConfig

    return AuMConfig(embed_dim=WIDTHS[width][0], depth=24, bimamba_type="v1", cls_position="middle",
                     num_classes=CLASSES, audio_length=length, num_mel_bins=MEL_BINS)


def save_aum(width: str, length: int, directory: str) -> None:
    """Saves a randomly initialised AuM of ``width`` for ``length``-frame clips as a model directory."""
    from aum_jax.checkpoints import model_files
    from aum_jax.models.aum import init_model

    model_files.save_model(init_model(aum_config(width, length)), directory)


def _aum_ms(width: str, length: int, batch: int, reps: int) -> float:
    from aum_jax.core import logs

    logs.quiet_native_logs()  # before JAX loads.
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from aum_jax.checkpoints import model_files
    from aum_jax.training.speed import time_ms

    with jax.default_matmul_precision("highest"):
        model = model_files.load_model(_AUM_DIR.value)  # as predict and hear load a model
        if model.config != aum_config(width, length):
            raise ValueError(f"{_AUM_DIR.value} holds another AuM than {width} at {length} frames")
        model.eval()
        graphdef, state = nnx.split(model)
        forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        x = jnp.asarray(np.random.RandomState(0).randn(batch, length, MEL_BINS).astype(np.float32))
        return time_ms(lambda: forward(state, x), reps, warmup=1)


def _ast_ms(width: str, length: int, batch: int, reps: int) -> float:
    import torch
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(0)  # and torch's default thread count (os.cpu_count())
    hidden, heads = WIDTHS[width][0], WIDTHS[width][1]
    config = ASTConfig(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=12, intermediate_size=4 * hidden,
                       frequency_stride=PATCH, time_stride=PATCH, max_length=length, num_mel_bins=MEL_BINS,
                       num_labels=CLASSES)
    model = ASTForAudioClassification._from_config(config, attn_implementation="sdpa").eval()
    x = torch.randn(batch, length, MEL_BINS)
    times = []
    with torch.inference_mode():
        for rep in range(1 + reps):  # the first is the warm-up
            start = time.perf_counter()
            model(x)
            if rep:
                times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def run_child() -> None:
    """Times the ``--peer-child`` point and prints ``{"ms": median ms of the reps, "rss_mb": peak RSS}``."""
    model, width, length, batch = _CHILD.value.split(":")
    ms = {"aum": _aum_ms, "ast": _ast_ms}[model](width, int(length), int(batch), _REPS.value)
    rss_mb = memory.peak_rss_mb()
    print(json.dumps({"ms": ms, "rss_mb": rss_mb}), flush=True)


def _run_point(model: str, width: str, length: int, batch: int, aum_dir: str) -> dict | str:
    """A fresh process's figures of one point, or why it failed."""
    return run_json_child([os.path.abspath(__file__), f"--peer-child={model}:{width}:{length}:{batch}",
                           f"--peer-reps={_REPS.value}", f"--peer-aum-dir={aum_dir}"])


def _measure(points: list[tuple[str, float, int]]) -> tuple[dict[tuple, list[dict]], dict[tuple, str]]:
    """Every point's figures per round, AuM then AST in fresh processes, and the points that failed, with why."""
    results: dict[tuple, list[dict]] = {(point, model): [] for point in points for model in MODELS}
    failed: dict[tuple, str] = {}
    with tempfile.TemporaryDirectory(prefix="aum_jax_peers_") as saved:
        aum_dirs = {}  # (width, frames) -> an AuM of random weights, saved once: each aum process loads it.
        for width, seconds, _ in points:
            if (width, frames(seconds)) not in aum_dirs:
                aum_dirs[width, frames(seconds)] = os.path.join(saved, f"{width}_{frames(seconds)}")
                save_aum(width, frames(seconds), aum_dirs[width, frames(seconds)])
        for round_ in range(_ROUNDS.value):
            for width, seconds, batch in points:
                for model in MODELS:
                    key = ((width, seconds, batch), model)
                    if key in failed:  # out of memory again: don't spend the time
                        continue
                    result = _run_point(model, width, frames(seconds), batch, aum_dirs[width, frames(seconds)])
                    if isinstance(result, str):
                        failed[key] = f"failed in round {round_ + 1}: {result}"
                    else:
                        results[key].append(result)
    return results, failed


def peers_section() -> list[Row]:
    """ms, clips/s and peak RSS of AuM and AST per width, clip length and batch; AST ms over AuM ms."""
    require_peers()
    print(f"# peers: torch {importlib.metadata.version('torch')}, transformers "
          f"{importlib.metadata.version('transformers')} (AST: sdpa, inference_mode, torch's default threads), "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    points = [(width, float(seconds), int(batch)) for width in _WIDTHS.value for seconds in _SECONDS.value
              for batch in _BATCHES.value]
    results, failed = _measure(points)
    rows: list[Row] = []
    for point in points:
        width, seconds, batch = point
        label = f"peers {width} {seconds:g} s ({frames(seconds)} frames) B={batch}"
        medians = {}
        for model in MODELS:
            if (point, model) in failed:
                rows.append((f"{label}: {model} failed", float("nan"), failed[point, model]))
                continue
            ms = float(np.median([r["ms"] for r in results[point, model]]))
            rss = float(np.median([r["rss_mb"] for r in results[point, model]]))
            medians[model] = ms, rss
            rows += [(f"{label}: {model} ms", ms, "ms"), (f"{label}: {model} clips/s", batch * 1000 / ms, "clips/s"),
                     (f"{label}: {model} peak RSS", rss, "MB")]
        if len(medians) == len(MODELS):
            rows += [(f"{label}: AuM speed-up (ast ms / aum ms)", medians["ast"][0] / medians["aum"][0], "x"),
                     (f"{label}: RSS ratio (ast / aum)", medians["ast"][1] / medians["aum"][1], "x")]
    return rows


def _main(argv: list[str]) -> None:
    if len(argv) > 1 or not child_requested():
        raise app.UsageError("run as scripts/benchmark.py --sections peers; this file runs one --peer-child point")
    run_child()


if __name__ == "__main__":  # a --peer-child process
    app.run(_main, flags_parser=cli_flags.parse_absl_flags)
