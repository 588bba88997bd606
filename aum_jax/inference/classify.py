"""Inference with a converted or trained AudioMamba: clips, long recordings, feature arrays.

The command line is ``python -m aum_jax.predict`` (:mod:`aum_jax.predict`); the timeline heat map
is :mod:`aum_jax.inference.plot`; embeddings for downstream work (pooled, per block, per patch) are
:mod:`aum_jax.inference.embeddings`. In Python::

  from aum_jax.checkpoints import model_files
  from aum_jax.inference import classify

  model, prep = model_files.load_model("MODEL_DIR"), model_files.load_preprocessing("MODEL_DIR")
  clips = classify.classify_clips(model, prep, ["a.wav", "b.flac"])
  clips.timelines[0].top(3)                         # [(label, score), ...]
  timeline = classify.classify_recording(model, prep, "long.wav", window_seconds=1, hop_seconds=0.5)

Every file is resampled to the model's rate (``prep.sample_rate``) and becomes the model's
input exactly as in training (:meth:`aum_jax.data.features.preprocessing.Preprocessing.features`).
:func:`classify_clips` scores each file's first input, as the original evaluates a clip
(and reads only that much of the file); :func:`classify_recording` scores every window of a
recording, read a window at a time. Either way memory does not grow with a recording's
length. The model runs through the evaluation pass (:func:`aum_jax.evaluation.evaluate.forward_pass`).
Scores are sigmoids for a model trained with BCE (multi-label), softmaxes for one trained
with CE (single-label), and the raw logits when the training loss is unknown. A model without a
classification head (a pretraining model) has no scores: :func:`require_head` refuses it.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

import ml_collections
import numpy as np
from scipy import special

from aum_jax.core import sharding
from aum_jax.core.errors import UserError
from aum_jax.data.features import audio, preprocessing
from aum_jax.data.sources import labels
from aum_jax.evaluation import evaluate
from aum_jax.inference import windows
from aum_jax.models import AudioMamba, AuMConfig

MATMUL_PRECISIONS = ("highest", "high", "tensorfloat32", "bfloat16", "default")  # jax.default_matmul_precision
# Audio read past a long file's first input: its last fbank frames (25 ms, or an EPIC STFT's
# 43 ms) and the resampler's filter see the samples they see in the whole file (soxr then
# gives the same samples, bit for bit).
FIRST_INPUT_MARGIN_SECONDS = 1.0


class NonFiniteOutputError(UserError, ValueError):
    """The model gave NaN or Inf logits or embeddings."""


class NoHeadError(UserError, ValueError):
    """Class scores or logits asked of a model without a classification head."""


def require_head(config: AuMConfig, source: str = "the model") -> None:
    """Raises :class:`NoHeadError` for a model without a classification head: ``num_classes`` 0, the
    backbone a pretraining objective (masked patch modelling) saves, whose outputs are embeddings,
    not the logits of classes. Every command and function that gives scores or logits checks this.
    """
    if config.num_classes == 0:
        raise NoHeadError(f"{source} has no classification head (num_classes 0: a pretraining model), so it gives "
                          "no class scores or logits; write its embeddings with python -m aum_jax.predict --audio "
                          "FILES --embeddings OUT.npz")


def check_features(features: np.ndarray, expected: tuple[int, int], source: str = "features") -> None:
    """Raises ValueError for a wrong shape, zero rows, or rows holding NaN or Inf (named)."""
    if features.ndim != 3 or features.shape[1:] != expected:
        raise ValueError(f"{source} must be (batch, {expected[0]}, {expected[1]}) for this model, got {features.shape}.")
    if len(features) == 0:
        raise ValueError(f"{source} has zero rows: nothing to predict.")
    bad = np.flatnonzero(~np.isfinite(features).reshape(len(features), -1).all(axis=1))
    if len(bad):
        raise ValueError(f"{source} has NaN or Inf values in row(s) {shown(bad)}.")


def shown(items: Sequence[Any], limit: int = 20) -> str:
    return ", ".join(map(str, items[:limit])) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _batches(rows: Iterable[np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Feature rows ``(T, F)`` -> ``{"fbank": (batch_size, T, F), "mask": (batch_size,)}``, the last zero-padded.

    Fixed-size batches: one compiled program serves any number of rows.
    """
    chunk: list[np.ndarray] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == batch_size:
            yield {"fbank": np.stack(chunk), "mask": np.ones(batch_size, bool)}
            chunk = []
    if chunk:
        fbank = np.stack(chunk)
        padding = batch_size - len(chunk)
        yield {"fbank": np.pad(fbank, ((0, padding), (0, 0), (0, 0))),
               "mask": np.arange(batch_size) < len(chunk)}


def run_model(model: AudioMamba, rows: Iterable[np.ndarray], batch_size: int = 32,
              matmul_precision: str = "highest", with_features: bool = False,
              embed: evaluate.Embed | None = None,
              reduce: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None) -> evaluate.Outputs:
    """Feature rows ``(T, F)`` (any iterable, read lazily) -> logits (and pooled features) on one device.

    Runs the evaluation pass (:func:`aum_jax.evaluation.evaluate.forward_pass`) in fixed-size batches,
    so one compiled program serves any number of rows. float32 matmuls run at
    ``matmul_precision``: "highest" computes as the original; on a GPU "tensorfloat32" is
    faster and about 1e-3 off. ``embed`` also gathers the pooled features, and the blocks'
    pooled states and the patch tokens it asks for (:class:`aum_jax.evaluation.evaluate.Embed`).
    ``reduce`` is called on each batch's outputs (``{"logits": (B, C), ...}``) as they come
    and returns what is kept of them (see :func:`aum_jax.evaluation.evaluate.forward_pass`).
    """
    if batch_size <= 0:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    cfg = model.config
    if with_features and (cfg.num_classes == 0 or cfg.max_pooled):
        raise ValueError("pooled features need a model with a head and pooled features.")
    mesh = sharding.make_mesh(ml_collections.ConfigDict({"data_axis": "data", "num_devices": 1}))
    return evaluate.forward_pass(model, _batches(rows, batch_size), mesh, matmul_precision, desc="predict",
                                 with_features=with_features, embed=embed, reduce=reduce)


def logits_and_features(
    model: AudioMamba, features: np.ndarray, batch_size: int = 32, matmul_precision: str = "highest"
) -> tuple[np.ndarray, np.ndarray]:
    """Fbank features (B, T, F) -> (logits (B, classes), pooled features (B, D)).

    Raises:
      NoHeadError: the model has no classification head.
      ValueError: a wrong shape, zero rows, or rows with NaN or Inf (named).
    """
    require_head(model.config)
    features = np.asarray(features)
    check_features(features, (model.config.audio_length, model.config.num_mel_bins))
    batch_size = min(batch_size, max(len(features), 1))  # fewer rows than a batch: no padding rows are computed
    outputs = run_model(model, features.astype(np.float32), batch_size, matmul_precision, with_features=True)
    return outputs.logits, outputs.features


def scores(logits: np.ndarray, kind: str) -> np.ndarray:
    """Logits (B, C) -> scores (B, C): "sigmoid" (multi-label), "softmax" (single-label) or "logits" (as they are)."""
    if kind == "sigmoid":
        return special.expit(logits)
    if kind == "softmax":
        return special.softmax(logits, axis=-1)
    if kind == preprocessing.LOGITS:
        return np.asarray(logits)
    raise ValueError(f"unknown score {kind!r}; use 'sigmoid', 'softmax' or 'logits'")


def top_k(values: np.ndarray, names: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per row of ``values`` (N, C), the ``k`` highest ``(name, value)``, best first."""
    best = np.argsort(-values, axis=1, kind="stable")[:, :k]
    return [[(names[j], float(values[i, j])) for j in row] for i, row in enumerate(best)]


def require_finite(outputs: np.ndarray, inputs: Sequence[str], what: str = "logits") -> None:
    """Raises :class:`NonFiniteOutputError` naming the inputs (one per row of ``outputs`` ``(N, K)``
    float32) whose ``what`` ("logits", "embeddings") hold NaN or Inf.

    A row's float64 sum is NaN or Inf exactly when one of its float32 values is, and needs no
    mask the size of ``outputs``.
    """
    bad = np.flatnonzero(~np.isfinite(np.sum(outputs, axis=1, dtype=np.float64)))
    if len(bad):
        raise NonFiniteOutputError(
            f"the model gave NaN or Inf {what} for {shown([inputs[i] for i in bad])}: its parameters "
            "may be damaged, or the input is far outside what it was trained on")


# ---------------------------------------------------------------------------- timelines


@dataclasses.dataclass
class Timeline:
    """Scores of one recording, window by window.

    Attributes:
      file: the audio file.
      duration: its length in seconds.
      starts, ends: ``(W,)`` window bounds in seconds.
      scores: ``(W, C)`` sigmoid or softmax scores, or logits.
      score: "sigmoid", "softmax" or "logits".
      class_names: ``C`` names (indices as text when the model has none).
      sample_rate: the file's rate in Hz (resampled to the model's when they differ).
    """

    file: str
    duration: float
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    score: str
    class_names: list[str]
    sample_rate: int

    def top(self, k: int) -> list[list[tuple[str, float]]]:
        """Per window, the ``k`` best ``(label, score)``."""
        return top_k(self.scores, self.class_names, k)

    def to_dict(self, k: int) -> dict[str, Any]:
        """``{"file", "duration_seconds", "sample_rate", "score", "windows": [{"start", "end", "top": [...]}]}``."""
        return {**self._header(), "windows": list(self.windows(k))}

    def _header(self) -> dict[str, Any]:
        return {"file": self.file, "duration_seconds": round(self.duration, 4), "sample_rate": self.sample_rate,
                "score": self.score}

    def windows(self, k: int, rows: int = 4096) -> Iterator[dict[str, Any]]:
        """Each window's ``{"start", "end", "top": [{"label", "score"}, ...]}``, ``rows`` of them ranked at a time."""
        for first in range(0, len(self.starts), rows):
            part = slice(first, first + rows)
            for s, e, top in zip(self.starts[part], self.ends[part], top_k(self.scores[part], self.class_names, k)):
                yield {"start": round(float(s), 4), "end": round(float(e), 4),
                       "top": [{"label": name, "score": value} for name, value in top]}

    def write_json(self, f: TextIO, k: int) -> None:
        """Writes :meth:`to_dict` as JSON to ``f`` a window at a time: memory does not grow with the recording."""
        f.write(json.dumps(self._header())[:-1] + ', "windows": [')
        for i, window in enumerate(self.windows(k)):
            f.write(("," if i else "") + "\n  " + json.dumps(window))
        f.write("\n]}")


@dataclasses.dataclass
class ClipPredictions:
    """What :func:`classify_clips` gives.

    Attributes:
      timelines: one single-window :class:`Timeline` per file scored, in input order.
      logits: ``(N, C)`` of the files scored.
      features: ``(N, D)`` pooled features, or None when not asked for.
      skipped: ``{file: reason}`` of the files that could not be read (too short, unreadable).
    """

    timelines: list[Timeline]
    logits: np.ndarray
    features: np.ndarray | None
    skipped: dict[str, str]


def file_features(path: str, prep: preprocessing.Preprocessing, channel: str = "first") -> tuple[np.ndarray, float, int]:
    """An audio file's first model input (its first ``target_length`` frames), as the training pipeline
    makes a clip's (:meth:`Preprocessing.features` of the whole file).

    Only the file's first ``prep.window_seconds`` + :data:`FIRST_INPUT_MARGIN_SECONDS` are
    read, so a long recording costs what a clip does. A file of at most that length gives
    the training pipeline's input bit for bit. A longer one has the mean of that stretch
    removed where the pipeline removes the whole file's: the fbank removes each frame's own
    mean after it, which cancels any constant, so the two differ by float32 rounding only
    (up to about 1e-4 in the bins far below a frame's peak, within this fbank's tolerance to
    torchaudio's).

    Returns:
      ``(features (target_length, num_mel_bins) float32, the file's duration in seconds, its sample rate)``.

    Raises:
      AudioLoadError: the file cannot be read.
      ValueError: it is shorter than one fbank frame.
    """
    with audio.open_audio(path) as f:
        head = f.read(0, round((prep.window_seconds + FIRST_INPUT_MARGIN_SECONDS) * f.sample_rate))
        return prep.features(windows.mono(head, channel), f.sample_rate), f.num_samples / f.sample_rate, f.sample_rate


class _ClipReader:
    """Iterates over the features of readable files, one by one, recording what it saw."""

    def __init__(self, paths: Sequence[str], prep: preprocessing.Preprocessing, channel: str):
        self._paths, self._prep, self._channel = paths, prep, channel
        self.read: list[tuple[str, float, int]] = []  # (file, duration, sample rate) of each row.
        self.skipped: dict[str, str] = {}

    def __iter__(self) -> Iterator[np.ndarray]:
        for path in self._paths:
            try:
                features, duration, sample_rate = file_features(path, self._prep, self._channel)
            except preprocessing.MissingStatisticsError:
                raise
            except (ValueError, audio.AudioLoadError) as e:
                self.skipped[path] = str(e) if path in str(e) else f"{path}: {e}"
                continue
            self.read.append((path, duration, sample_rate))
            yield features


def classify_clips(
    model: AudioMamba, prep: preprocessing.Preprocessing, paths: Sequence[str], batch_size: int = 32,
    matmul_precision: str = "highest", *, channel: str = "first", with_features: bool = False,
) -> ClipPredictions:
    """One window per file (its first ``target_length`` frames), as the original evaluates a clip.

    A file longer than the model's input is scored on its first ``prep.window_seconds``
    only (its timeline's ``ends[0]`` is less than its ``duration``); :func:`classify_recording`
    scores all of it. A file that cannot be read, or is shorter than one fbank frame, is
    skipped and named in ``skipped``; when no file is left the call raises.

    Raises:
      NoHeadError: the model has no classification head.
      ValueError: no file could be read (the reasons are named).
      MissingStatisticsError: ``prep`` has no normalisation statistics.
      NonFiniteOutputError: the model gave NaN or Inf logits (the files are named).
    """
    require_head(model.config)
    reader = _ClipReader(paths, prep, channel)
    batch_size = min(batch_size, max(len(paths), 1))  # fewer files than a batch: no padding rows are computed
    outputs = run_model(model, reader, batch_size, matmul_precision, with_features)
    if not reader.read:
        raise ValueError("no file could be read: " + "; ".join(reader.skipped.values()))
    require_finite(outputs.logits, [path for path, _, _ in reader.read])
    values = scores(outputs.logits, prep.score)
    names = labels.class_names(prep.class_names, outputs.logits.shape[1])
    timelines = [
        Timeline(path, duration, np.array([0.0]), np.array([min(duration, prep.window_seconds)]), values[i : i + 1],
                 prep.score, names, sample_rate)
        for i, (path, duration, sample_rate) in enumerate(reader.read)
    ]
    return ClipPredictions(timelines, outputs.logits, outputs.features, reader.skipped)


def classify_recording(
    model: AudioMamba,
    prep: preprocessing.Preprocessing,
    path: str,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 32,
    matmul_precision: str = "highest",
    *,
    channel: str = "first",
) -> Timeline:
    """Slides the model's window over a whole recording and scores every window.

    Windows are read and featurised a batch at a time (:class:`aum_jax.inference.windows.RecordingWindows`): memory
    stays that of one batch, however long the recording.

    Args:
      model: the model.
      prep: its preprocessing (rate, statistics, names, score kind).
      path: an audio file.
      window_seconds: window length; default the model's input length.
      hop_seconds: window start spacing; default the window length.
      batch_size: windows per forward pass.
      matmul_precision: float32 matmul precision (see :func:`run_model`).
      channel: "first" (as the original) or "mean" of a multi-channel file.

    Returns:
      The :class:`Timeline` of the recording.

    Raises:
      NoHeadError: the model has no classification head.
      ValueError: a window longer than the model's input, or a recording shorter than one
        fbank frame (the file is named).
      AudioLoadError: the file cannot be read.
      NonFiniteOutputError: the model gave NaN or Inf logits (the windows are named).
    """
    require_head(model.config)
    with windows.RecordingWindows(prep, path, window_seconds, hop_seconds, channel) as recording:
        logits = run_model(model, recording, batch_size, matmul_precision).logits
    require_finite(logits, recording.names())
    return Timeline(path, recording.duration, recording.starts, recording.ends, scores(logits, prep.score), prep.score,
                    labels.class_names(prep.class_names, logits.shape[1]), recording.sample_rate)
