"""Decoding audio files: whole, or a stretch at a time, and resampling.

Public API:

* :func:`load_waveform` -- decode a file to ``(channels, samples)`` float32.
* :func:`open_audio` -- an :class:`AudioFile` that reads any stretch of a recording, so a
  long one is never held whole (soundfile seeks; formats only librosa reads are decoded
  once).
* :func:`resample` -- to another rate with soxr's high-quality polyphase filter.
* :class:`AudioLoadError` -- the single exception raised for unreadable files.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Union

import numpy as np
from absl import logging

__all__ = [
    "AudioFile",
    "AudioLoadError",
    "BAD_INPUT_KINDS",
    "load_waveform",
    "open_audio",
    "resample",
]

PathLike = Union[str, os.PathLike]

# Why a clip can fail to load; the input pipeline counts skipped clips by these.
BAD_INPUT_KINDS = ("missing", "empty", "truncated", "unreadable", "non_finite", "too_short")


class AudioLoadError(OSError):
    """A file could not be decoded into audio.

    Raised for a missing, empty, truncated, corrupt or otherwise unreadable file.
    ``path``, ``reason`` and ``kind`` (one of :data:`BAD_INPUT_KINDS`, for counting) are
    kept as attributes; the message names the file.
    """

    def __init__(self, path: PathLike, reason: str, kind: str = "unreadable"):
        if kind not in BAD_INPUT_KINDS:
            raise ValueError(f"unknown bad-input kind {kind!r}")
        self.path = os.fspath(path)
        self.reason = str(reason)
        self.kind = kind
        super().__init__(f"cannot load audio file {self.path!r}: {self.reason}")

    def __str__(self) -> str:
        return f"cannot load audio file {self.path!r}: {self.reason}"

    def __reduce__(self):
        # Keep the exception picklable across worker processes.
        return (type(self), (self.path, self.reason, self.kind))


def _open_soundfile(path: str) -> Any:
    import soundfile

    return soundfile.SoundFile(path)


def _read_librosa(path: str) -> tuple[np.ndarray, int]:
    import librosa  # imported lazily: slow to import and rarely needed.

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, sr = librosa.load(path, sr=None, mono=False)
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 1:
        data = data[None, :]
    return np.ascontiguousarray(data), int(sr)



def _check_wav_length(path: str, size: int) -> None:
    """Raises if a RIFF/WAVE file's data chunk claims more bytes than the file holds.

    libsndfile reads such a file without complaint, as a shorter clip. Files of other
    formats, and WAVs written for streaming (data size 0 or 0xFFFFFFFF), pass.
    """
    with open(path, "rb") as f:
        header = f.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            return
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            chunk_id, chunk_size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):
                    return
                held = size - f.tell()
                if chunk_size > held:
                    raise AudioLoadError(
                        path, f"truncated WAV: the header promises {chunk_size} data bytes, the file holds {held}",
                        "truncated",
                    )
                return
            f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)



def _check_file(path: str) -> None:
    """Raises :class:`AudioLoadError` for a missing, empty or truncated file."""
    if not os.path.exists(path):
        raise AudioLoadError(path, "file does not exist", "missing")
    if os.path.isdir(path):
        raise AudioLoadError(path, "is a directory", "missing")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise AudioLoadError(path, f"cannot stat file ({e})") from e
    if size == 0:
        raise AudioLoadError(path, "file is empty (0 bytes)", "empty")
    _check_wav_length(path, size)


class AudioFile:
    """An open recording: ``sample_rate``, ``num_channels``, ``num_samples`` and :meth:`read`.

    A context manager; built by :func:`open_audio`.
    """

    def __init__(self, path: str, handle: Any = None, decoded: tuple[np.ndarray, int] | None = None):
        self.path = path
        self._handle = handle  # a soundfile.SoundFile, or None for a decoded file.
        self._decoded = decoded[0] if decoded else None
        if handle is not None:
            self.sample_rate, self.num_channels, self.num_samples = int(handle.samplerate), handle.channels, handle.frames
        else:
            self.sample_rate = int(decoded[1])
            self.num_channels, self.num_samples = self._decoded.shape
        if self.num_channels == 0 or self.num_samples <= 0:
            raise AudioLoadError(path, f"contains no samples ({self.num_channels} channels, {self.num_samples} samples)",
                                 "empty")
        if self.sample_rate <= 0:
            raise AudioLoadError(path, f"bad sample rate {self.sample_rate}")

    def read(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples ``[start, stop)`` (default: to the end) as ``(channels, samples)`` float32.

        Integer PCM is scaled to [-1, 1) as torchaudio does (e.g. int16 / 32768).

        Raises:
          AudioLoadError: the stretch holds NaN or Inf.
        """
        stop = self.num_samples if stop is None else min(stop, self.num_samples)
        if self._handle is None:
            data = self._decoded[:, start:stop]
        else:
            try:
                self._handle.seek(start)
                data = np.ascontiguousarray(self._handle.read(stop - start, dtype="float32", always_2d=True).T)
            except Exception as e:  # noqa: BLE001 - any decoder failure names the file.
                raise AudioLoadError(self.path, f"cannot decode samples {start} to {stop} ({e})") from e
        if not np.isfinite(data).all():
            raise AudioLoadError(self.path, "contains non-finite samples (NaN or Inf)", "non_finite")
        return data

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()

    def __enter__(self) -> AudioFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_audio(path: PathLike) -> AudioFile:
    """Opens an audio file for reading.

    WAV/FLAC/OGG/... are opened with soundfile and read a stretch at a time; a file
    soundfile cannot read is decoded whole with ``librosa.load(path, sr=None, mono=False)``.

    Raises:
      AudioLoadError: missing, empty, truncated (a WAV whose header promises more
        samples than it holds), corrupt or unreadable file, or no samples.
    """
    p = os.fspath(path)
    _check_file(p)
    try:
        return AudioFile(p, handle=_open_soundfile(p))
    except AudioLoadError:
        raise
    except Exception as sf_err:  # noqa: BLE001 - any decoder failure is reported below.
        logging.log_every_n(logging.INFO, "soundfile cannot read %s (%s); trying librosa", 100, p, sf_err)
        try:
            decoded = _read_librosa(p)
        except Exception as lr_err:  # noqa: BLE001
            lr_msg = f"{type(lr_err).__name__}: {lr_err}" if str(lr_err) else type(lr_err).__name__
            raise AudioLoadError(
                p, f"not a readable audio file (soundfile: {sf_err}; librosa: {lr_msg})"
            ) from lr_err
    return AudioFile(p, decoded=decoded)


def load_waveform(path: PathLike) -> tuple[np.ndarray, int]:
    """Decodes a whole audio file (see :func:`open_audio`).

    Returns:
      ``(waveform, sample_rate)`` with waveform float32 of shape ``(channels, samples)``.

    Raises:
      AudioLoadError: missing, empty, truncated, corrupt or unreadable file, no samples,
        or non-finite samples.
    """
    with open_audio(path) as f:
        return f.read(), f.sample_rate


def resample(waveform: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """``(channels, samples)`` at ``sample_rate`` -> ``(channels, samples')`` float32 at ``target_rate``.

    soxr's high-quality ("HQ") polyphase filter; the same array when the rates agree.
    """
    if int(sample_rate) == int(target_rate):
        return waveform
    import soxr  # librosa's resampler; only needed off the model's rate.

    out = soxr.resample(np.ascontiguousarray(np.asarray(waveform, np.float32).T), int(sample_rate), int(target_rate),
                        quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)
