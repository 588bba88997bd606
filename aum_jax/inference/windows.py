"""The windows of a recording as model inputs: their bounds, the channel the model reads, and
:class:`RecordingWindows`, which reads a file a window at a time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from aum_jax.data.features import audio, preprocessing

MIN_WINDOW_SECONDS = 0.025  # one fbank frame: a shorter tail window is dropped.
CHANNELS = ("first", "mean")  # first: channel 0, as the original; mean: the channels' average.


def mono(waveform: np.ndarray, channel: str) -> np.ndarray:
    """``(channels, samples)`` as the model takes it: as it is ("first": the fbank reads channel 0), or averaged."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}; use one of {', '.join(CHANNELS)}")
    return waveform.mean(axis=0, keepdims=True) if channel == "mean" else waveform


def window_bounds(num_samples: int, sample_rate: int, window_seconds: float, hop_seconds: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample indices of the windows covering a recording.

    Windows start every ``hop_seconds`` until one reaches the end; a last window shorter
    than one fbank frame is dropped (unless it is the only one).
    """
    if window_seconds <= 0 or hop_seconds <= 0:
        raise ValueError(f"window and hop must be positive, got {window_seconds} and {hop_seconds} s")
    window = max(1, round(window_seconds * sample_rate))
    hop = max(1, round(hop_seconds * sample_rate))
    count = 1 + max(0, math.ceil((num_samples - window) / hop))
    bounds = [(i * hop, min(i * hop + window, num_samples)) for i in range(count)]
    min_len = MIN_WINDOW_SECONDS * sample_rate
    while len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_len:
        bounds.pop()
    return bounds


def check_window(prep: preprocessing.Preprocessing, window_seconds: float | None) -> float:
    """The window in seconds: ``window_seconds``, else the model's input length.

    Raises:
      ValueError: a window longer than the model's input.
    """
    model_window = prep.window_seconds
    window_seconds = window_seconds or model_window
    if window_seconds > model_window + 1e-6:
        raise ValueError(f"--window-seconds {window_seconds} is longer than the model's input of {model_window:g} s")
    return window_seconds


def window_name(path: str, start: float, end: float) -> str:
    """``"FILE at S-E s"``: a window in messages."""
    return f"{path} at {start:.2f}-{end:.2f} s"


class RecordingWindows:
    """The windows of one recording as model inputs, read from the file a window at a time.

    Each window is treated as a clip of its own (read, resampled, mean removed, fbank,
    padded to the model's frame count, normalised with ``prep``'s statistics). A context
    manager: the file stays open until it exits.

    Attributes:
      starts, ends: ``(W,)`` window bounds in seconds.
      duration: the recording's length in seconds.
      sample_rate: the file's rate in Hz.

    Raises:
      ValueError: a window longer than the model's input, or a non-positive window or hop.
      AudioLoadError: the file cannot be read.
    """

    def __init__(self, prep: preprocessing.Preprocessing, path: str, window_seconds: float | None = None,
                 hop_seconds: float | None = None, channel: str = "first"):
        window_seconds = check_window(prep, window_seconds)
        self._prep, self._path, self._channel = prep, path, channel
        self._file = audio.open_audio(path)
        self.sample_rate = self._file.sample_rate
        self.duration = self._file.num_samples / self.sample_rate
        try:
            self._bounds = window_bounds(self._file.num_samples, self.sample_rate, window_seconds,
                                         hop_seconds or window_seconds)
        except ValueError:
            self._file.close()
            raise
        self.starts = np.array([s for s, _ in self._bounds], np.float64) / self.sample_rate
        self.ends = np.array([e for _, e in self._bounds], np.float64) / self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray]:
        """Each window's features ``(target_length, num_mel_bins)``; a recording shorter than one frame raises."""
        for start, end in self._bounds:
            try:
                yield self._prep.features(mono(self._file.read(start, end), self._channel), self.sample_rate)
            except preprocessing.MissingStatisticsError:
                raise
            except ValueError as e:  # a recording shorter than one frame.
                raise ValueError(f"{self._path}: {e}") from e

    def names(self) -> list[str]:
        """``"FILE at S-E s"`` of each window, for messages."""
        return [window_name(self._path, s, e) for s, e in zip(self.starts, self.ends)]

    def __enter__(self) -> RecordingWindows:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._file.close()
