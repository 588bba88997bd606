"""An audio needle in a haystack: a spoken keyword hidden in a long recording, and a model that must find it.

As DASS (Bhati et al.) measures long-audio models: one 1 s needle clip (a keyword in its own noise,
from a folder in the demo dataset's layout: ``eval.json``, ``class_labels_indices.csv`` and, for each
clip's speech span, SNR and noise colour, ``clips.csv``) is placed at a random offset in ``seconds``
of that clip's own background noise (:func:`aum_jax.data.demo.render.background`, at the level the
noise has inside the clip), the needle crossfaded in (:func:`aum_jax.data.demo.render.hide`). Each
haystack is a 16 kHz PCM-16 wav.

A model reads each haystack in one of :data:`MODES` and gives a timeline; :func:`score_timeline`
scores it against the keyword's span: its speech, and :data:`LATE_SECONDS` plus one row after it (a
causal model names a word once it has heard it; a window once it holds it):

- ``found``: of the rows overlapping the span, the one with the highest score of any class has the
  keyword as its top-1 class (the model names the word where it was said);
- ``peak_found``: the row where the keyword's score peaks over the whole recording overlaps the span;
  ``time_error_s``: the distance from that row's centre to the speech's centre;
- ``detected``: the keyword's score reaches ``threshold`` in a row that ends within the span;
  ``latency_s``: from the speech's end to the end of the first such row (negative: before the word is over);
- ``false_alarms``: the times any class's score rises to ``threshold`` in rows that end outside it.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from aum_jax.data.demo import acoustics, render
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.sources.datafile import DatafileSource
from aum_jax.inference import classify, whole
from aum_jax.inference.stream import Stream
from aum_jax.models import AudioMamba

MODES = ("windows", "whole", "whole-tile", "stream")  # whole: the position table interpolated (a grid model's).
LATE_SECONDS = 0.25  # a detection may come this long after the word ends (plus one row).
STREAM_CHUNK_SECONDS = 0.1  # what the stream mode pushes at a time, as a live source would.


@dataclasses.dataclass(frozen=True)
class Needle:
    """One labelled 1 s clip and what its recipe row (``clips.csv``) says of it (None: no row)."""

    path: str
    label: int
    onset: int | None  # the speech's first sample in the clip
    offset: int | None  # and one past its last
    snr_db: float | None
    noise_beta: float | None  # None: the clip's background is not coloured noise


def read_needles(folder: str | os.PathLike) -> tuple[list[Needle], list[str]]:
    """The single-label clips of ``folder``'s ``eval.json`` (the demo dataset's layout) and the class names.

    Raises:
      ValueError: ``folder`` lacks ``eval.json`` or ``class_labels_indices.csv``, or names no single-label clip.
    """
    root = os.path.abspath(os.path.expanduser(os.fspath(folder)))
    eval_json, label_csv = os.path.join(root, "eval.json"), os.path.join(root, "class_labels_indices.csv")
    missing = [p for p in (eval_json, label_csv) if not os.path.isfile(p)]
    if missing:
        raise ValueError(f"{root} is not in the demo dataset's layout: no {', '.join(missing)}")
    source = DatafileSource(eval_json, label_csv)
    recipe: dict[str, dict[str, str]] = {}
    if os.path.isfile(os.path.join(root, "clips.csv")):
        with open(os.path.join(root, "clips.csv"), newline="", encoding="utf-8") as f:
            recipe = {os.path.abspath(os.path.join(root, row["wav"])): row for row in csv.DictReader(f)}
    found = []
    for i in range(len(source)):
        record = source[i]
        if len(record.labels) != 1:
            continue  # a needle is one keyword
        row = recipe.get(os.path.abspath(record.key))
        values = ((int(row["onset"]), int(row["offset"]), float(row["snr_db"]),
                   float(row["noise_beta"]) if row.get("noise_beta") else None) if row else (None,) * 4)
        found.append(Needle(record.key, record.labels[0], *values))
    if not found:
        raise ValueError(f"{eval_json} names no single-label clip to hide")
    return found, list(source.class_names)


def noise_level(clip: np.ndarray, onset: int, offset: int, snr_db: float) -> float:
    """The RMS of the noise inside a demo clip, from its recipe (``render._render_clip``): the speech span holds speech and
    noise at ``snr_db``, so the noise is its RMS times 10**(-snr/20) / sqrt(1 + 10**(-snr/10))."""
    span = clip[onset:offset].astype(np.float64)
    return float(np.sqrt(np.mean(span**2)) * 10.0 ** (-snr_db / 20.0) / np.sqrt(1.0 + 10.0 ** (-snr_db / 10.0)))


def write_haystacks(folder: str, seconds: float, count: int, needles: Sequence[Needle], seed: int) -> list[dict]:
    """``count`` haystacks of ``seconds`` as wavs in ``folder``; the placements: wav, class, speech span in seconds.

    Raises:
      ValueError: a needle that is not mono 16 kHz audio of at most ``seconds``.
    """
    import soundfile

    rate = render.SAMPLE_RATE
    samples = round(seconds * rate)
    placements = []
    for p in range(count):
        rng = np.random.default_rng([seed, samples, p])
        needle = needles[int(rng.integers(len(needles)))]
        clip, clip_rate = soundfile.read(needle.path, dtype="float64")
        if clip.ndim != 1 or clip_rate != rate or clip.size > samples:
            raise ValueError(f"{needle.path}: a needle must be mono {rate} Hz audio of at most {seconds:g} s")
        at = int(rng.integers(samples - clip.size + 1))
        if needle.onset is None:  # no recipe row: the whole clip, its noise drawn from the demo's ranges
            onset, offset = 0, clip.size
            snr_db, beta = float(rng.uniform(*render.SNR_DB)), float(rng.uniform(*acoustics.BACKGROUND_BETA))
        else:  # a clip over another background than coloured noise: coloured noise of a drawn slope around it
            onset, offset, snr_db = needle.onset, needle.offset, needle.snr_db
            beta = needle.noise_beta if needle.noise_beta is not None else float(rng.uniform(*acoustics.BACKGROUND_BETA))
        haystack = render.background(rng, beta, noise_level(clip, onset, offset, snr_db), samples)
        render.hide(haystack, clip, at)
        wav = os.path.join(folder, f"haystack_{seconds:g}s_{p:03d}.wav")
        soundfile.write(wav, np.clip(np.round(haystack * 32767.0), -32768, 32767).astype(np.int16), rate,
                        subtype="PCM_16", format="WAV")
        placements.append({"wav": wav, "needle": needle.path, "class": needle.label, "at": at / rate,
                           "start": (at + onset) / rate, "end": (at + offset) / rate})
    return placements


def _rises(above: np.ndarray) -> np.ndarray:
    """``above`` (rows, C) bool -> (rows, C): True where a class's score rises to the threshold."""
    return above & ~np.vstack([np.zeros((1, above.shape[1]), bool), above[:-1]])


def score_timeline(starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, placement: dict,
                   threshold: float = 0.5) -> dict:
    """``found``, ``peak_found``, ``time_error_s``, ``detected``, ``latency_s`` and ``false_alarms`` of one
    timeline (rows ``starts``/``ends`` in seconds, ``scores`` (rows, C)) for ``placement`` (the module docstring)."""
    start, end, label = placement["start"], placement["end"], placement["class"]
    row = float(np.median(ends - starts)) if len(starts) else 0.0
    late = end + LATE_SECONDS + row  # a row ending by then may still name the word
    near = np.flatnonzero((starts < late) & (ends > start))
    best = int(near[np.argmax(scores[near].max(axis=1))]) if near.size else None
    peak = int(np.argmax(scores[:, label]))
    in_span = (ends > start) & (ends <= late)
    hits = np.flatnonzero(in_span & (scores[:, label] >= threshold))
    rises = _rises(scores >= threshold)
    return {"found": best is not None and int(np.argmax(scores[best])) == label,
            "peak_found": bool(starts[peak] < late and ends[peak] > start),
            "time_error_s": float(abs(0.5 * (starts[peak] + ends[peak]) - 0.5 * (start + end))),
            "detected": bool(hits.size), "latency_s": float(ends[hits[0]] - end) if hits.size else None,
            "false_alarms": int(rises[~in_span].sum()), "rows": int(len(starts))}


def mode_for(model: AudioMamba, prep: Preprocessing) -> str:
    """How a model reads a long file: a causal one-pass model as a ``"stream"``; a bidirectional one-pass model
    (no position table, no cls token) in one pass, ``"whole"``; any other by sliding ``"windows"``."""
    if whole.streams(model, prep):
        return "stream"
    cfg = model.config
    return "whole" if cfg.position == "none" and cfg.cls_position == "none" else "windows"


def reader(model: AudioMamba, prep: Preprocessing, mode: str, hop_seconds: float = 0.25) -> Callable[[str], classify.Timeline]:
    """How ``model`` reads a recording in ``mode`` (:data:`MODES`) -> its timeline: sliding windows of its input
    every ``hop_seconds``; one pass over the whole file (the position table interpolated, or tiled; a causal
    one-pass model in :data:`aum_jax.inference.whole.STREAM_CHUNK_SECONDS` pieces carrying its state); or as a
    live stream, :data:`STREAM_CHUNK_SECONDS` at a time. A causal model's compiled stream serves every file.

    Raises:
      ValueError: an unknown mode, or ``"stream"`` for a model that does not stream.
    """
    if mode not in MODES:
        raise ValueError(f"unknown haystack mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "windows":
        return lambda path: classify.classify_recording(model, prep, path, window_seconds=None, hop_seconds=hop_seconds)
    if whole.streams(model, prep) and mode != "whole-tile":
        stream = Stream.of(model, prep)
        chunk = STREAM_CHUNK_SECONDS if mode == "stream" else whole.STREAM_CHUNK_SECONDS

        def read(path: str) -> classify.Timeline:
            for _ in stream.read(path, chunk_seconds=chunk):
                pass
            return stream.timeline(path)

        return read
    if mode == "stream":
        raise ValueError("the stream mode needs a causal one-pass model (AudioMamba.check_streams)")
    pos_embed = "tile" if mode == "whole-tile" else "interpolate"
    return lambda path: whole.classify_whole(model, prep, path, pos_embed=pos_embed)


def run(model: AudioMamba, prep: Preprocessing, placements: Sequence[dict], mode: str, hop_seconds: float = 0.25,
        threshold: float = 0.5) -> list[dict]:
    """Each placement's :func:`score_timeline` with ``wall_s`` (the read, features and model; the first call
    compiles) and ``duration_s``."""
    read = reader(model, prep, mode, hop_seconds)
    results = []
    for placement in placements:
        begin = time.perf_counter()
        timeline = read(placement["wav"])
        wall = time.perf_counter() - begin
        results.append({**score_timeline(timeline.starts, timeline.ends, timeline.scores, placement, threshold),
                        "wall_s": wall, "duration_s": timeline.duration})
    return results


def summary(results: Sequence[dict]) -> dict[str, float | None]:
    """The shares (%) found, peak found and detected; the median time error, latency (of the detected; None when
    none was) and wall per minute of audio; false alarms per minute of audio."""
    latencies = [r["latency_s"] for r in results if r["latency_s"] is not None]
    minutes = sum(r["duration_s"] for r in results) / 60.0
    return {"found": 100.0 * float(np.mean([r["found"] for r in results])),
            "peak_found": 100.0 * float(np.mean([r["peak_found"] for r in results])),
            "time_error_s": float(np.median([r["time_error_s"] for r in results])),
            "detected": 100.0 * float(np.mean([r["detected"] for r in results])),
            "latency_s": float(np.median(latencies)) if latencies else None,
            "false_alarms_per_min": float(sum(r["false_alarms"] for r in results) / minutes),
            "wall_per_min_s": float(np.median([60.0 * r["wall_s"] / r["duration_s"] for r in results]))}
