"""Live inference with a one-pass causal model: audio in as it arrives, a row of scores per time slice out.

  from aum_jax.inference.stream import Stream

  stream = Stream("MODEL_DIR")              # a model that streams (AudioMamba.check_streams)
  for chunk in microphone_chunks():         # mono samples, at the model's rate or ``sample_rate``
      rows = stream.push(chunk)             # the time slices the chunk completed
      for end, best in zip(rows.ends, rows.top(1)):
          ...
  rows = stream.flush()                     # the end of the audio

The features are made as the samples arrive (:class:`aum_jax.data.features.streaming.StreamingFeatures`)
and the model reads each completed time slice from the state the previous ones left
(:meth:`aum_jax.models.aum.AudioMamba.stream`): a fixed amount of memory, whatever the length, and the
rows of one pass over the whole recording (:meth:`~aum_jax.models.aum.AudioMamba.whole`).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.data.features import audio
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.features.streaming import StreamingFeatures
from aum_jax.data.sources import labels
from aum_jax.inference import classify
from aum_jax.models import AudioMamba

# The time slices one compiled program reads at once: a push's slices are split into these sizes, so
# that any push size runs on at most len(PIECE_SLICES) compiled programs.
PIECE_SLICES = (64, 16, 4, 1)


@dataclasses.dataclass(frozen=True)
class Rows:
    """Rows of a stream: ``starts``, ``ends`` (n,) seconds into the audio where each time slice's samples
    begin and end, ``scores`` (n, C) (``score``: "sigmoid", "softmax" or "logits") and the model's
    ``class_names``."""

    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    score: str
    class_names: Sequence[str]

    def top(self, k: int) -> list[list[tuple[str, float]]]:
        """Per row, the ``k`` best ``(label, score)``."""
        return classify.top_k(self.scores, self.class_names, k)


def file_chunks(path: str, seconds: float, model_rate: int, channel: str) -> tuple[int, Iterator[np.ndarray]]:
    """A file's (or, for ``"-"``, standard input's: raw 16-bit mono PCM at the model's rate) sample rate and
    its mono chunks of ``seconds`` (the first channel, or the mean of them: ``channel``), read as they are
    needed: one chunk in memory at a time."""
    if path == "-":
        size = 2 * max(1, round(seconds * model_rate))

        def pcm() -> Iterator[np.ndarray]:
            rest = b""  # an odd byte a read ended on: the next read completes its sample.
            while block := sys.stdin.buffer.read(size):
                data = rest + block
                usable = len(data) - len(data) % 2
                rest = data[usable:]
                yield np.frombuffer(data[:usable], "<i2").astype(np.float32) / 32768.0

        return model_rate, pcm()
    recording = audio.open_audio(path)

    def blocks() -> Iterator[np.ndarray]:
        with recording:
            step = max(1, round(seconds * recording.sample_rate))
            for start in range(0, recording.num_samples, step):
                samples = recording.read(start, start + step)
                yield samples[0] if channel == "first" else samples.mean(axis=0)

    return recording.sample_rate, blocks()


class Stream:
    """A model directory's causal one-pass model, read live (see the module docstring).

    Args:
      model_dir: a model directory (or training workdir) of a model that streams, whose preprocessing
        keeps each clip's mean (``remove_waveform_mean`` false).
      sample_rate: the rate of the pushed samples (default: the model's); resampled as they arrive.
      preprocessing: the model's own with overrides (statistics, class names, loss; its features must
        be the model's), default: the directory's.
      matmul_precision: float32 matmul precision ("highest": as training computed).
      verify: check the parameters against ``checksums.json``.

    Raises:
      ModelDirectoryError: a missing or damaged model directory.
      ValueError: a model that does not stream, or preprocessing that cannot (naming why).
    """

    def __init__(self, model_dir: str | os.PathLike, *, sample_rate: int | None = None,
                 preprocessing: Preprocessing | None = None, matmul_precision: str = "highest", verify: bool = True):
        directory = model_files.model_directory(model_dir)
        model = model_files.load_model(directory, verify=verify)
        self._start(model, preprocessing or model_files.load_input_features(directory), sample_rate, matmul_precision)

    @classmethod
    def of(cls, model: AudioMamba, preprocessing: Preprocessing, *, sample_rate: int | None = None,
           matmul_precision: str = "highest") -> Stream:
        """The stream of a model already loaded, with its ``preprocessing`` (as :class:`Stream` takes them)."""
        stream = cls.__new__(cls)
        stream._start(model, preprocessing, sample_rate, matmul_precision)
        return stream

    def _start(self, model: AudioMamba, prep: Preprocessing, sample_rate: int | None, matmul_precision: str) -> None:
        model.check_streams()
        self._prep = prep
        self._slice = model.config.patch_size[1]  # frames per time slice.
        self._names = labels.class_names(self._prep.class_names, model.config.num_classes)
        graphdef, params = nnx.split(nnx.view(model, deterministic=True))
        self._params = params

        def step(params, frames, state):
            with jax.default_matmul_precision(matmul_precision):
                return nnx.merge(graphdef, params).stream(frames, state)

        self._step = jax.jit(step, donate_argnums=(2,))
        self._initial_state = model.initial_state
        self.reset(sample_rate)

    def reset(self, sample_rate: int | None = None) -> None:
        """Starts a new recording (at ``sample_rate``, default the model's) with the same model."""
        self._features = StreamingFeatures(self._prep, sample_rate)
        self._state = self._initial_state(1)
        self._pending = np.zeros((0, self._prep.num_mel_bins), np.float32)  # frames of the slice in progress.
        self._slices = 0

    @property
    def seconds_per_slice(self) -> float:
        """The hop between rows, in seconds."""
        return self._slice * self._features.shift / self._prep.sample_rate

    def push(self, samples: np.ndarray) -> Rows:
        """Mono samples (n,), float in [-1, 1] or integer PCM -> the rows of the time slices they completed."""
        return self._rows(self._features.push(samples))

    def flush(self) -> Rows:
        """Ends the stream: the rows the last samples complete (a partial last slice has none, as in one pass)."""
        return self._rows(self._features.flush())

    def read(self, path: str, *, chunk_seconds: float = 1.0, channel: str = "first") -> Iterator[Rows]:
        """Reads a file (or ``"-"``, standard input) from its start as a live source, ``chunk_seconds`` at a
        time: the rows of each chunk, then of the flush. :meth:`timeline` then gives them all.

        Raises:
          AudioLoadError: the file cannot be read.
        """
        rate, chunks = file_chunks(path, chunk_seconds, self._prep.sample_rate, channel)
        self.reset(rate)
        self._read: list[Rows] = []
        self._read_samples, self._read_rate = 0, rate
        for chunk in chunks:
            self._read_samples += len(chunk)
            self._read.append(self.push(chunk))
            yield self._read[-1]
        self._read.append(self.flush())
        yield self._read[-1]

    def timeline(self, path: str) -> classify.Timeline:
        """The timeline of the file :meth:`read` last read: every time slice's row."""
        rows = self._read
        return classify.Timeline(path, self._read_samples / self._read_rate, np.concatenate([r.starts for r in rows]),
                                 np.concatenate([r.ends for r in rows]), np.concatenate([r.scores for r in rows]),
                                 self._prep.score, list(self._names), self._read_rate)

    def _rows(self, frames: np.ndarray) -> Rows:
        frames = np.concatenate([self._pending, frames])
        count = len(frames) // self._slice
        self._pending = frames[count * self._slice:]
        logits, done = [], 0
        for size in PIECE_SLICES:
            while count - done >= size:
                piece = frames[done * self._slice:(done + size) * self._slice][None]
                out, self._state = self._step(self._params, piece, self._state)
                logits.append(np.asarray(out["frame_logits"][0]))
                done += size
        logits = np.concatenate(logits) if logits else np.zeros((0, len(self._names)), np.float32)
        first = self._slices
        self._slices += count
        # Slice k ends with its last frame: frame j spans samples [j * shift, j * shift + window).
        last_frames = (np.arange(first, first + count) + 1) * self._slice - 1
        ends = (last_frames * self._features.shift + self._features.window) / self._prep.sample_rate
        starts = (last_frames - self._slice + 1) * self._features.shift / self._prep.sample_rate
        return Rows(starts, ends, classify.scores(logits, self._prep.score), self._prep.score, self._names)
