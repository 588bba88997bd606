"""The ``peers`` section of ``scripts/benchmark.py``: AuM beside the Audio Spectrogram Transformer.

aum-jax's AuM (Fo-Bi, random weights, 24 blocks) and Hugging Face transformers'
``ASTForAudioClassification`` (random weights, 12 layers, SDPA attention, eval mode under
``torch.inference_mode()``) at the same width and the same 16 x 16 patching without overlap, on
``--peer-seconds`` clips at ``--peer-batches``, two ways:

- **The forward alone**: ms, clips/s and the peak RSS of the process, and the forward's matmul FLOPs
  (:func:`aum_jax.training.speed.matmul_flops_per_clip` for AuM, torch's ``FlopCounterMode`` for AST)
  per second as a fraction of this machine's float32 matmul rate, measured in the same run
  (``sgemm_gflops``). The AuM of each width and length is saved once, and its processes load it as
  ``predict`` does (``model_files.load_model``); AST's build their random weights in memory, as torch
  initialises a module. Every figure comes from a fresh process (``--peer-child``) that times
  ``--peer-reps`` forwards after one warm-up.
- **The whole command**, at the ``--peer-command-seconds`` lengths: wall seconds and peak RSS of what a
  user runs, from the interpreter's start to the printed scores of ``batch`` files of that length:
  ``python -m aum_jax.predict --model-dir M --audio ... --batch-size B`` (the model directory saved
  with its preprocessing and checksums, verified as predict verifies it), and
  ``scripts/ast_predict.py`` (transformers' ``from_pretrained`` of the same AST saved by
  ``save_pretrained``, its feature extractor, one forward). Cold: AuM's first call, with an empty
  aum-jax cache (``$AUM_JAX_CACHE``: no compiled program, no traced model); warm: the second call.
  AST has no cache: its two calls are given as cold and warm too.

``--peer-rounds`` rounds each run every point once, AuM then AST, and each figure is the median over
the rounds. A process that fails (e.g. out of memory) makes its point a row of nan, its unit saying why.

The forward processes run this file as a script (``scripts/benchmark.py --peer-child=...`` runs the same
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
from benchmark_child import run_json_child, sgemm_gflops, time_command

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
_COMMAND_SECONDS = flags.DEFINE_list("peer-command-seconds", ["10"], "peers: the clip lengths (of --peer-seconds) "
                                     "at which the whole commands are timed too, cold and warm ('' for none).")
_REPS = flags.DEFINE_integer("peer-reps", 3, "peers: timed forwards per process, after one warm-up.", lower_bound=1)
_CHILD = flags.DEFINE_string("peer-child", None, "internal: time one point, model:width:frames:batch "
                             "(e.g. aum:small:1024:1), and print it as a JSON line.")
_AUM_DIR = flags.DEFINE_string("peer-aum-dir", None, "internal: the model directory an aum --peer-child loads.")
flags.register_validator("peer-widths", lambda v: set(v) <= set(WIDTHS), f"choose from {list(WIDTHS)}")
flags.register_validator("peer-seconds", lambda v: _positive_numbers(v, float), "positive numbers wanted")
flags.register_validator("peer-batches", lambda v: _positive_numbers(v, int), "positive whole numbers wanted")
flags.register_validator("peer-command-seconds", lambda v: _positive_numbers([x for x in v if x], float),
                         "positive numbers wanted")
AST_COMMAND = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ast_predict.py")
SAMPLE_RATE = 16_000


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
    """Saves a randomly initialised AuM of ``width`` for ``length``-frame clips as a model directory, with
    AudioSet's fbank statistics and BCE scores, as the converter saves a published checkpoint."""
    from aum_jax.checkpoints import model_files
    from aum_jax.data.features.preprocessing import AUDIOSET_MEAN, AUDIOSET_STD, Preprocessing
    from aum_jax.models.aum import init_model

    prep = Preprocessing(num_mel_bins=MEL_BINS, target_length=length, mean=AUDIOSET_MEAN, std=AUDIOSET_STD,
                          loss="BCE")
    model_files.save_model(init_model(aum_config(width, length)), directory, preprocessing=prep)


def _ast(width: str, length: int):
    """The random AST of ``width`` for ``length``-frame clips (torch's default initialisation, seed 0)."""
    import torch
    from transformers import ASTConfig, ASTForAudioClassification

    torch.manual_seed(0)  # and torch's default thread count (os.cpu_count())
    hidden, heads = WIDTHS[width][0], WIDTHS[width][1]
    config = ASTConfig(hidden_size=hidden, num_attention_heads=heads, num_hidden_layers=12, intermediate_size=4 * hidden,
                       frequency_stride=PATCH, time_stride=PATCH, max_length=length, num_mel_bins=MEL_BINS,
                       num_labels=CLASSES)
    return ASTForAudioClassification._from_config(config, attn_implementation="sdpa").eval()


def save_ast(width: str, length: int, directory: str) -> None:
    """Saves the random AST of ``width`` and its feature extractor (``length`` frames) with ``save_pretrained``."""
    from transformers import ASTFeatureExtractor

    _ast(width, length).save_pretrained(directory)
    ASTFeatureExtractor(num_mel_bins=MEL_BINS, max_length=length).save_pretrained(directory)


def _aum_ms(width: str, length: int, batch: int, reps: int) -> tuple[float, float]:
    from aum_jax.core import logs

    logs.quiet_native_logs()  # before JAX loads.
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from aum_jax.checkpoints import model_files
    from aum_jax.training.speed import matmul_flops_per_clip, time_ms

    with jax.default_matmul_precision("highest"):
        model = model_files.load_model(_AUM_DIR.value)  # as predict and hear load a model
        if model.config != aum_config(width, length):
            raise ValueError(f"{_AUM_DIR.value} holds another AuM than {width} at {length} frames")
        model.eval()
        graphdef, state = nnx.split(model)
        forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
        x = jnp.asarray(np.random.RandomState(0).randn(batch, length, MEL_BINS).astype(np.float32))
        return time_ms(lambda: forward(state, x), reps, warmup=1), batch * matmul_flops_per_clip(model.config) / 1e9


def _ast_ms(width: str, length: int, batch: int, reps: int) -> tuple[float, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = _ast(width, length)
    x = torch.randn(batch, length, MEL_BINS)
    times = []
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            model(x)  # the warm-up, counted
        for _ in range(reps):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), counter.get_total_flops() / 1e9


def run_child() -> None:
    """Times the ``--peer-child`` point and prints ``{"ms": median ms of the reps, "gflop": the forward's matmul
    GFLOP, "rss_mb": peak RSS}``."""
    model, width, length, batch = _CHILD.value.split(":")
    ms, gflop = {"aum": _aum_ms, "ast": _ast_ms}[model](width, int(length), int(batch), _REPS.value)
    rss_mb = memory.peak_rss_mb()
    print(json.dumps({"ms": ms, "gflop": gflop, "rss_mb": rss_mb}), flush=True)


def _run_point(model: str, width: str, length: int, batch: int, aum_dir: str) -> dict | str:
    """A fresh process's figures of one point, or why it failed."""
    return run_json_child([os.path.abspath(__file__), f"--peer-child={model}:{width}:{length}:{batch}",
                           f"--peer-reps={_REPS.value}", f"--peer-aum-dir={aum_dir}"])


def _commands(model: str, width: str, seconds: float, batch: int, saved: dict[str, str], files: list[str],
              round_: int) -> list[dict | str]:
    """The whole command of ``model`` on ``files``, cold then warm: ``[{"wall_s", "rss_mb"}, ...]`` or why each failed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    if model == "aum":
        # A cache folder of its own per point and round: the first call finds nothing in it.
        env["AUM_JAX_CACHE"] = os.path.join(saved["root"], f"cache_{width}_{seconds:g}_{batch}_{round_}")
        args = [sys.executable, "-m", "aum_jax.predict", "--model-dir", saved["aum"], "--batch-size", str(batch),
                "--audio", *files]
    else:
        args = [sys.executable, AST_COMMAND, "--model-dir", saved["ast"], "--audio", *files]
    return [time_command(args, env) for _ in ("cold", "warm")]


def _clips(folder: str, seconds: float, batch: int) -> list[str]:
    """``batch`` files of ``seconds`` of noise at 16 kHz in ``folder`` (written once)."""
    import soundfile

    paths = [os.path.join(folder, f"clip_{seconds:g}s_{i}.wav") for i in range(batch)]
    for i, path in enumerate(paths):
        if not os.path.exists(path):
            noise = np.random.default_rng(i).normal(scale=0.1, size=round(seconds * SAMPLE_RATE))
            soundfile.write(path, noise.astype(np.float32), SAMPLE_RATE)
    return paths


def _measure(points: list[tuple[str, float, int]]) -> tuple[dict[tuple, list[dict]], dict[tuple, str]]:
    """Every point's figures per round, AuM then AST in fresh processes, and the points that failed, with why.

    A key is ``(point, model)`` for the forward and ``(point, model, "cold" | "warm")`` for the whole command.
    """
    commanded = {float(x) for x in _COMMAND_SECONDS.value if x}
    results: dict[tuple, list[dict]] = {}
    failed: dict[tuple, str] = {}
    with tempfile.TemporaryDirectory(prefix="aum_jax_peers_") as root:
        saved: dict[tuple, dict[str, str]] = {}  # (width, frames) -> the AuM and AST saved once for it
        for width, seconds, _ in points:
            key = (width, frames(seconds))
            if key not in saved:
                saved[key] = {"root": root, "aum": os.path.join(root, f"aum_{width}_{key[1]}"),
                              "ast": os.path.join(root, f"ast_{width}_{key[1]}")}
                save_aum(width, key[1], saved[key]["aum"])
                if seconds in commanded:
                    save_ast(width, key[1], saved[key]["ast"])
        for round_ in range(_ROUNDS.value):
            for point in points:
                width, seconds, batch = point
                for model in MODELS:
                    if (point, model) not in failed:  # out of memory again: don't spend the time
                        result = _run_point(model, width, frames(seconds), batch, saved[width, frames(seconds)]["aum"])
                        if isinstance(result, str):
                            failed[point, model] = f"failed in round {round_ + 1}: {result}"
                        else:
                            results.setdefault((point, model), []).append(result)
                    if seconds not in commanded or (point, model, "cold") in failed:
                        continue
                    files = _clips(root, seconds, batch)
                    for when, result in zip(("cold", "warm"), _commands(model, width, seconds, batch,
                                                                        saved[width, frames(seconds)], files, round_)):
                        if isinstance(result, str):
                            failed[point, model, when] = f"failed in round {round_ + 1}: {result}"
                        else:
                            results.setdefault((point, model, when), []).append(result)
    return results, failed


def _median(results: list[dict], name: str) -> float:
    return float(np.median([r[name] for r in results]))


def peers_section() -> list[Row]:
    """Per width, clip length and batch: the forward's ms, clips/s, peak RSS and share of the machine's matmul rate,
    and the whole command's cold and warm wall time and peak RSS, of AuM and AST; AST over AuM."""
    require_peers()
    sgemm = sgemm_gflops("highest")
    print(f"# peers: torch {importlib.metadata.version('torch')}, transformers "
          f"{importlib.metadata.version('transformers')} (AST: sdpa, inference_mode, torch's default threads), "
          f"float32 matmul {sgemm:.0f} GFLOP/s (XLA, 2048^3), load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    points = [(width, float(seconds), int(batch)) for width in _WIDTHS.value for seconds in _SECONDS.value
              for batch in _BATCHES.value]
    results, failed = _measure(points)
    rows: list[Row] = [("sgemm GFLOP/s (2048^3, highest)", sgemm, "GFLOP/s")]
    for point in points:
        width, seconds, batch = point
        label = f"peers {width} {seconds:g} s ({frames(seconds)} frames) B={batch}"
        forward, command = {}, {}
        for model in MODELS:
            if (point, model) in failed:
                rows.append((f"{label}: {model} failed", float("nan"), failed[point, model]))
            elif (point, model) in results:
                ms, rss = _median(results[point, model], "ms"), _median(results[point, model], "rss_mb")
                gflops = _median(results[point, model], "gflop") / (ms / 1000)
                forward[model] = ms, rss
                rows += [(f"{label}: {model} ms", ms, "ms"), (f"{label}: {model} clips/s", batch * 1000 / ms, "clips/s"),
                         (f"{label}: {model} peak RSS", rss, "MB"),
                         (f"{label}: {model} matmul GFLOP/s / sgemm", gflops / sgemm, "fraction")]
            for when in ("cold", "warm"):
                key = (point, model, when)
                if key in failed:
                    rows.append((f"{label}: {model} command {when} failed", float("nan"), failed[key]))
                elif key in results:
                    wall, rss = _median(results[key], "wall_s"), _median(results[key], "rss_mb")
                    command[model, when] = wall, rss
                    rows += [(f"{label}: {model} command {when} wall", wall, "s"),
                             (f"{label}: {model} command {when} peak RSS", rss, "MB")]
        if len(forward) == len(MODELS):
            rows += [(f"{label}: AuM speed-up (ast ms / aum ms)", forward["ast"][0] / forward["aum"][0], "x"),
                     (f"{label}: RSS ratio (ast / aum)", forward["ast"][1] / forward["aum"][1], "x")]
        for when in ("cold", "warm"):
            if ("aum", when) in command and ("ast", when) in command:
                aum, ast = command["aum", when], command["ast", when]
                rows += [(f"{label}: command {when} speed-up (ast s / aum s)", ast[0] / aum[0], "x"),
                         (f"{label}: command {when} RSS ratio (ast / aum)", ast[1] / aum[1], "x")]
    return rows


def _main(argv: list[str]) -> None:
    if len(argv) > 1 or not child_requested():
        raise app.UsageError("run as scripts/benchmark.py --sections peers; this file runs one --peer-child point")
    run_child()


if __name__ == "__main__":  # a --peer-child process
    app.run(_main, flags_parser=cli_flags.parse_absl_flags)
