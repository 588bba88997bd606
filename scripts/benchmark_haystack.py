"""The ``haystack`` section of ``scripts/benchmark.py``: a spoken keyword hidden in a long recording.

An audio needle in a haystack, as DASS (Bhati et al., Saurabhbhati/DASS) measures long-audio models:
one 1 s clip of the demo's held-out test voices (``aum_jax.data.demo``: a keyword in coloured noise)
is placed at a random offset in ``--haystack-seconds`` of the demo's background noise, and the
demo model (``--haystack-model``) must find it. ``--haystack-placements`` placements per length,
each a random eval clip at a random offset (seeded by ``--haystack-seed``), every one scored in
three modes:

* ``windows``: :func:`aum_jax.inference.classify.classify_recording`, the model's own 0.96 s input
  slid every ``--haystack-hop`` seconds;
* ``whole-interpolate`` and ``whole-tile``: :func:`aum_jax.inference.whole.classify_whole`, one pass
  over the whole recording, the position embedding interpolated or tiled along time.

The haystack is the noise of the needle clip itself (its ``noise_beta`` and SNR in the dataset's
``clips.csv``; without a row there, drawn from ``render.NOISE_BETA`` and ``render.SNR_DB``) at the
level it has inside that clip: 1 s pieces of the demo's own ``render._coloured_noise`` (as each demo
clip's noise is made), joined by 10 ms equal-power crossfades. One long ``_coloured_noise`` would
not do: it is normalised over its whole length, so a brown noise's power would sit almost all below
1 Hz, its audible part some 30 dB under the clips' at 10 minutes. The needle clip (speech in its
own noise) replaces the noise at its offset, with the same crossfades; each haystack is a 16 kHz
PCM-16 wav in a temporary folder.

Per mode and length: ``found``, the share of placements where the timeline row overlapping the
keyword's speech (its onset and offset in ``clips.csv``; the whole clip without them) whose centre
is nearest the keyword's centre has the keyword as its top-1 class; ``peak found``, the share where
the row of the highest score for the keyword over the whole recording overlaps the speech;
``time error``, the median distance from that row's centre to the keyword's centre; ``wall per
minute``, the median seconds of the call (reading, features, model; the first call compiles) per
minute of audio; and ``peak RSS``, of a fresh process (``--haystack-child``) that runs one mode on
every placement of one length, so that no mode's memory hides another's.

The processes run this file as a script (``scripts/benchmark.py --haystack-child=...`` runs the same code).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import app, flags
from benchmark_child import run_json_child

from aum_jax.cli import flags as cli_flags
from aum_jax.core import memory

Row = tuple[str, float, str]

MODES = ("windows", "whole-interpolate", "whole-tile")
DEFAULT_MODEL = "/tmp/aum_demo/model"
TRAIN_COMMAND = "python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo"
FADE_SECONDS = 0.01  # equal-power crossfades between noise pieces and around the needle.


def _numbers(values: list[str], kind: type, low: float) -> bool:
    try:
        return all(kind(v) >= low and math.isfinite(kind(v)) for v in values)
    except ValueError:
        return False


_SECONDS = flags.DEFINE_list("haystack-seconds", ["30", "120", "600"], "haystack: recording lengths in seconds "
                             "(at least the needle's 1 s).")
_PLACEMENTS = flags.DEFINE_list("haystack-placements", ["20"], "haystack: random placements per length: one number "
                                "for every length, or one per --haystack-seconds length.")
_SEED = flags.DEFINE_integer("haystack-seed", 0, "haystack: seed of the placements (clip, offset, noise).")
_HOP = flags.DEFINE_float("haystack-hop", 0.25, "haystack: hop in seconds of the windows mode (its windows: the "
                          "model's input).", lower_bound=0.001)
_MODEL = flags.DEFINE_string("haystack-model", DEFAULT_MODEL, f"haystack: the model directory (or training workdir) "
                             f"of a demo model ({TRAIN_COMMAND}).")
_CLIPS = flags.DEFINE_string("haystack-clips", None, "haystack: a folder of needle clips in the demo dataset's layout "
                             "(eval.json, class_labels_indices.csv, optionally clips.csv, audio/eval/<word>/<n>.wav); "
                             "default: the eval split of configs/demo.py's dataset, rendered on first use.")
_CHILD = flags.DEFINE_string("haystack-child", None, "internal: run one mode on one length's placements, "
                             "MODE:SECONDS (e.g. windows:30), and print the results as a JSON line.")
_PLAN = flags.DEFINE_string("haystack-plan", None, "internal: the JSON file of a --haystack-child's placements.")
flags.register_validator("haystack-seconds", lambda v: _numbers(v, float, 1.0), "numbers of at least 1 wanted")
flags.register_validator("haystack-placements", lambda v: _numbers(v, int, 1), "positive whole numbers wanted")


def child_requested() -> bool:
    return _CHILD.value is not None


def require_model() -> Path:
    """The ``--haystack-model`` directory; ends the process with one ``error:`` line when it is not there (or
    ``--haystack-placements`` does not fit ``--haystack-seconds``)."""
    from aum_jax.checkpoints import model_files

    _placements()
    try:
        directory = model_files.model_directory(_MODEL.value)
        model_files.load_config(directory)
        model_files.load_input_features(directory)
    except (ValueError, OSError) as e:  # ModelDirectoryError, MissingStatisticsError
        sys.exit(f"error: the haystack section needs a trained demo model (--haystack-model {_MODEL.value}): {e}; "
                 f"train one with: {TRAIN_COMMAND}")
    return directory


def _placements() -> list[int]:
    counts = [int(v) for v in _PLACEMENTS.value]
    if len(counts) not in (1, len(_SECONDS.value)):
        sys.exit(f"error: --haystack-placements takes one number or one per --haystack-seconds length "
                 f"({len(_SECONDS.value)}), got {len(counts)}")
    return counts * len(_SECONDS.value) if len(counts) == 1 else counts


# ---------------------------------------------------------------------------- needles and haystacks


@dataclasses.dataclass(frozen=True)
class Needle:
    """One labelled 1 s clip and what its recipe row (``clips.csv``) says of it (None: no row)."""

    path: str
    label: int
    onset: int | None  # the speech's first sample in the clip
    offset: int | None  # and one past its last
    snr_db: float | None
    noise_beta: float | None


def needles(folder: str | None) -> tuple[list[Needle], list[str], str]:
    """The eval clips of ``folder`` (a demo dataset's layout), else of configs/demo.py's dataset (built on first
    use by :func:`aum_jax.data.demo.demo_data.generate_demo_dataset`): ``(needles, class names, root)``."""
    from aum_jax.data.sources.datafile import DatafileSource

    if folder is None:
        from aum_jax.configs import demo

        from aum_jax.data.demo import demo_data

        settings = demo.get_config().demo
        dataset = demo_data.generate_demo_dataset(
            os.path.expanduser(settings.cache_dir) if settings.cache_dir else demo_data.default_cache_dir(),
            seed=settings.seed, clips_per_word=settings.clips_per_word,
            valid_clips_per_word=settings.valid_clips_per_word, eval_clips_per_word=settings.eval_clips_per_word,
            show_progress=False)
        root, eval_json, label_csv = dataset.root, dataset.eval_json, dataset.label_csv
    else:
        root = Path(folder).expanduser().resolve()
        eval_json, label_csv = root / "eval.json", root / "class_labels_indices.csv"
        missing = [str(p) for p in (eval_json, label_csv) if not p.is_file()]
        if missing:
            sys.exit(f"error: --haystack-clips {folder} is not in the demo dataset's layout: no {', '.join(missing)}")
    source = DatafileSource(eval_json, label_csv)
    recipe: dict[str, dict[str, str]] = {}
    if (root / "clips.csv").is_file():
        with open(root / "clips.csv", newline="", encoding="utf-8") as f:
            recipe = {os.path.abspath(os.path.join(root, row["wav"])): row for row in csv.DictReader(f)}
    found = []
    for i in range(len(source)):
        record = source[i]
        if len(record.labels) != 1:
            continue  # a needle is one keyword
        row = recipe.get(os.path.abspath(record.key))
        found.append(Needle(record.key, record.labels[0], *((int(row["onset"]), int(row["offset"]),
                                                            float(row["snr_db"]), float(row["noise_beta"]))
                                                           if row else (None,) * 4)))
    if not found:
        sys.exit(f"error: {eval_json} names no single-label clip to hide")
    return found, list(source.class_names), str(root)


def _ramps(samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-power fades over ``samples``: (in, out), in**2 + out**2 == 1."""
    t = (np.arange(samples) + 0.5) / samples
    return np.sin(0.5 * np.pi * t), np.cos(0.5 * np.pi * t)


def background(rng: np.random.Generator, beta: float, level: float, samples: int) -> np.ndarray:
    """``samples`` of the demo clips' noise at RMS ``level``: 1 s pieces of ``render._coloured_noise`` (each
    unit-RMS over its 1 s, as a clip's noise is) overlapped by equal-power crossfades."""
    from aum_jax.data.demo import render

    piece = render.CLIP_SAMPLES
    fade = round(FADE_SECONDS * render.SAMPLE_RATE)
    hop = piece - fade
    count = -(-samples // hop) + 1
    fade_in, fade_out = _ramps(fade)
    window = np.ones((count, piece))
    window[1:, :fade], window[:, hop:] = fade_in, fade_out
    pieces = np.stack([render._coloured_noise(rng, beta, piece) for _ in range(count)]) * window
    out = np.zeros((count + 1) * hop)
    out[: count * hop].reshape(count, hop)[:] += pieces[:, :hop]
    out[hop:].reshape(count, hop)[:, :fade] += pieces[:, hop:]  # each piece's tail under the next one's head
    return level * out[:samples]


def hide(haystack: np.ndarray, clip: np.ndarray, at: int) -> None:
    """Puts ``clip`` in place of ``haystack[at : at + len(clip)]``, with equal-power crossfades at both ends."""
    from aum_jax.data.demo import render

    fade = round(FADE_SECONDS * render.SAMPLE_RATE)
    fade_in, fade_out = _ramps(fade)
    end = at + clip.size
    haystack[at : at + fade] *= fade_out
    haystack[at + fade : end - fade] = 0.0
    haystack[end - fade : end] *= fade_in
    window = np.ones(clip.size)
    window[:fade], window[-fade:] = fade_in, fade_out
    haystack[at:end] += clip * window


def noise_level(clip: np.ndarray, onset: int, offset: int, snr_db: float) -> float:
    """The RMS of the noise inside a demo clip, from its recipe (``render._mix``): the speech span holds speech and
    noise at ``snr_db``, so the noise is its RMS times 10**(-snr/20) / sqrt(1 + 10**(-snr/10))."""
    span = clip[onset:offset].astype(np.float64)
    return float(np.sqrt(np.mean(span**2)) * 10.0 ** (-snr_db / 20.0) / np.sqrt(1.0 + 10.0 ** (-snr_db / 10.0)))


def write_haystacks(folder: str, seconds: float, count: int, clips: list[Needle]) -> list[dict]:
    """``count`` haystacks of ``seconds`` as wavs in ``folder``; the placements: wav, class, speech span in seconds."""
    import soundfile

    from aum_jax.data.demo import render

    rate = render.SAMPLE_RATE
    samples = round(seconds * rate)
    placements = []
    for p in range(count):
        rng = np.random.default_rng([_SEED.value, samples, p])
        needle = clips[int(rng.integers(len(clips)))]
        clip, clip_rate = soundfile.read(needle.path, dtype="float64")
        if clip.ndim != 1 or clip_rate != rate or clip.size > samples:
            sys.exit(f"error: {needle.path}: a needle must be mono {rate} Hz audio of at most {seconds:g} s")
        at = int(rng.integers(samples - clip.size + 1))
        if needle.onset is None:  # no recipe row: the whole clip, its noise drawn from the demo's ranges
            onset, offset = 0, clip.size
            snr_db, beta = float(rng.uniform(*render.SNR_DB)), float(rng.uniform(*render.NOISE_BETA))
        else:
            onset, offset, snr_db, beta = needle.onset, needle.offset, needle.snr_db, needle.noise_beta
        haystack = background(rng, beta, noise_level(clip, onset, offset, snr_db), samples)
        hide(haystack, clip, at)
        wav = os.path.join(folder, f"haystack_{seconds:g}s_{p:03d}.wav")
        soundfile.write(wav, np.clip(np.round(haystack * 32767.0), -32768, 32767).astype(np.int16), rate,
                        subtype="PCM_16", format="WAV")
        placements.append({"wav": wav, "needle": needle.path, "class": needle.label, "at": at / rate,
                           "start": (at + onset) / rate, "end": (at + offset) / rate})
    return placements


# ---------------------------------------------------------------------------- one mode in a fresh process


def score_timeline(starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, placement: dict) -> dict:
    """found, peak found and time error of one timeline (see the module docstring)."""
    start, end, label = placement["start"], placement["end"], placement["class"]
    centre = 0.5 * (start + end)
    centres = 0.5 * (starts + ends)
    overlapping = np.flatnonzero((starts < end) & (ends > start))
    nearest = int(overlapping[np.argmin(np.abs(centres[overlapping] - centre))]) if overlapping.size else None
    peak = int(np.argmax(scores[:, label]))
    return {"found": nearest is not None and int(np.argmax(scores[nearest])) == label,
            "peak_found": bool(starts[peak] < end and ends[peak] > start),
            "time_error_s": float(abs(centres[peak] - centre)), "rows": int(len(starts))}


def run_child() -> None:
    """Runs ``--haystack-child``'s mode on every placement of ``--haystack-plan``; prints one JSON line."""
    from aum_jax.core import logs

    logs.quiet_native_logs()  # before JAX loads.
    from aum_jax.checkpoints import model_files
    from aum_jax.inference import classify, whole

    mode, seconds = _CHILD.value.split(":")
    if mode not in MODES:
        raise app.UsageError(f"--haystack-child: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    with open(_PLAN.value, encoding="utf-8") as f:
        placements = json.load(f)
    directory = model_files.model_directory(_MODEL.value)
    model, prep = model_files.load_model(directory), model_files.load_input_features(directory)
    results = []
    for placement in placements:
        begin = time.perf_counter()
        if mode == "windows":
            timeline = classify.classify_recording(model, prep, placement["wav"], window_seconds=None,
                                                  hop_seconds=_HOP.value)
        else:
            timeline = whole.classify_whole(model, prep, placement["wav"], pos_embed=mode.split("-", 1)[1])
        wall = time.perf_counter() - begin
        results.append({**score_timeline(timeline.starts, timeline.ends, timeline.scores, placement),
                        "wall_s": wall, "duration_s": timeline.duration})
    rss_mb = memory.peak_rss_mb()
    print(json.dumps({"mode": mode, "seconds": float(seconds), "placements": results, "rss_mb": rss_mb}), flush=True)


def _run_mode(mode: str, seconds: float, plan: str, directory: Path) -> dict | str:
    """A fresh process's results of one mode on one length, or why it failed."""
    return run_json_child([os.path.abspath(__file__), f"--haystack-child={mode}:{seconds:g}", f"--haystack-plan={plan}",
                           f"--haystack-model={directory}", f"--haystack-hop={_HOP.value}"])


def haystack_section() -> list[Row]:
    """found, peak found, time error, wall per minute and peak RSS per mode and haystack length."""
    directory = require_model()
    from aum_jax.checkpoints import model_files

    prep = model_files.load_input_features(directory)
    clips, names, root = needles(_CLIPS.value)
    if prep.class_names and list(prep.class_names) != names:
        sys.exit(f"error: the model's classes {list(prep.class_names)} are not the needle clips' {names} ({root})")
    counts = _placements()
    per_length = ", ".join(f"{float(v):g} s: {n}" for v, n in zip(_SECONDS.value, counts))
    print(f"# haystack: model {directory}; {len(clips)} needle clips of {len(names)} classes from {root}; "
          f"windows of {prep.window_seconds:g} s every {_HOP.value:g} s; placements {per_length}; seed {_SEED.value}; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="aum_haystack_") as folder:
        for seconds, count in zip(map(float, _SECONDS.value), counts):
            placements = write_haystacks(folder, seconds, count, clips)
            plan = os.path.join(folder, f"plan_{seconds:g}s.json")
            with open(plan, "w", encoding="utf-8") as f:
                json.dump(placements, f)
            for mode in MODES:
                label = f"haystack {seconds:g} s {mode}"
                result = _run_mode(mode, seconds, plan, directory)
                if isinstance(result, str):
                    rows.append((f"{label}: failed", float("nan"), result))
                    continue
                results = result["placements"]
                rows += [(f"{label}: found", 100 * float(np.mean([r["found"] for r in results])), "%"),
                         (f"{label}: peak found", 100 * float(np.mean([r["peak_found"] for r in results])), "%"),
                         (f"{label}: time error", float(np.median([r["time_error_s"] for r in results])), "s"),
                         (f"{label}: wall per minute",
                          float(np.median([60 * r["wall_s"] / r["duration_s"] for r in results])), "s/min"),
                         (f"{label}: peak RSS", result["rss_mb"], "MB")]
            for placement in placements:  # a 10 min haystack is 19 MB: one length's at a time
                os.remove(placement["wav"])
    return rows


def _main(argv: list[str]) -> None:
    if len(argv) > 1 or not child_requested():
        raise app.UsageError("run as scripts/benchmark.py --sections haystack; this file runs one --haystack-child")
    run_child()


if __name__ == "__main__":  # a --haystack-child process
    app.run(_main, flags_parser=cli_flags.parse_absl_flags)
