"""Decoding audio files: whole, or a stretch at a time, and resampling.

Public API:

* :func:`load_waveform` -- decode a file to ``(channels, samples)`` float32.
* :func:`open_audio` -- an :class:`AudioFile` that reads any stretch of a recording, so a
  long one is never held whole (soundfile seeks; formats only librosa reads are decoded
  once).
* :func:`resample` -- to another rate with soxr's high-quality polyphase filter.
* :func:`as_float_samples` -- a waveform array of any kind (NumPy, JAX, torch; integer PCM
  or floats) as float32 samples, the one entry for audio given as an array.
* :class:`AudioLoadError` -- the single exception raised for unreadable files.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Union

import numpy as np
from absl import logging

from aum_jax.core.errors import UserError

__all__ = [
    "AudioFile",
    "AudioLoadError",
    "BAD_INPUT_KINDS",
    "as_float_samples",
    "load_waveform",
    "open_audio",
    "resample",
]

PathLike = Union[str, os.PathLike]

# Why a clip can fail to load; the input pipeline counts skipped clips by these.
BAD_INPUT_KINDS = ("missing", "empty", "truncated", "unreadable", "non_finite", "too_short")
# Integer PCM as WAV decoders read it: (the value of silence, full scale) -> (x - silence) / full scale.
_PCM_SCALES = {"int8": (0, 2**7), "uint8": (2**7, 2**7), "int16": (0, 2**15), "int32": (0, 2**31)}
_FLOAT_SAMPLES = ("float16", "float32", "float64")
_SAMPLE_TYPES = "float samples in [-1, 1] or integer PCM (int8, uint8, int16, int32)"
# Past this much audio, a file only librosa reads (so decoded whole) is named in a warning.
_WHOLE_DECODE_WARNING_SECONDS = 600.0


class AudioLoadError(UserError, OSError):
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
    soundfile cannot read is decoded whole with ``librosa.load(path, sr=None, mono=False)``
    (a warning names one of more than 10 minutes: it is held in memory whole).

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
    seconds = decoded[0].shape[1] / decoded[1]
    if seconds > _WHOLE_DECODE_WARNING_SECONDS:
        logging.warning("%s: only librosa reads this format, so its %.1f minutes of audio are decoded whole and held "
                        "in memory (%.0f MB); a WAV or FLAC copy is read a stretch at a time", p, seconds / 60,
                        decoded[0].nbytes / 2**20)
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


def as_float_samples(samples: Any, where: str) -> np.ndarray:
    """Audio samples given as an array -> float32 samples of the same shape.

    ``samples`` is a NumPy or JAX array, a torch tensor on any device, or anything
    ``np.asarray`` takes. Integer PCM is scaled to [-1, 1] by its type, as WAV decoders
    read it: int8 / 128, uint8 (x - 128) / 128 (8-bit WAV is unsigned), int16 / 32768,
    int32 / 2**31. float16, float32 and float64 samples are taken as they are (a float32
    NumPy array is not copied).

    Raises:
      ValueError (naming ``where``): samples of another type (bool, int64, complex,
        strings, objects are no audio samples), or NaN or Inf samples.
    """
    if hasattr(samples, "detach"):  # a torch tensor, on any device.
        samples = samples.detach().cpu()
        try:
            samples = samples.numpy()
        except TypeError as e:  # a type NumPy lacks, such as bfloat16.
            raise ValueError(f"{where} holds {samples.dtype} values, not audio samples; give {_SAMPLE_TYPES}") from e
    array = np.asarray(samples)
    kind = array.dtype.name
    if kind in _PCM_SCALES:
        silence, full_scale = _PCM_SCALES[kind]
        floats = array.astype(np.float32)
        if silence:
            floats -= np.float32(silence)
        floats *= np.float32(1.0 / full_scale)  # a power of two: exact.
        return floats
    if kind not in _FLOAT_SAMPLES:
        raise ValueError(f"{where} holds {array.dtype} values, not audio samples; give {_SAMPLE_TYPES}")
    floats = np.asarray(array, np.float32)
    # The float64 sum is NaN or Inf exactly when a sample is (float32 samples cannot overflow it),
    # and needs no mask the size of the array.
    if not np.isfinite(np.sum(floats, dtype=np.float64)):
        raise ValueError(f"{where} holds NaN or Inf samples")
    return floats


def resample(waveform: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """``(channels, samples)`` at ``sample_rate`` -> ``(channels, samples')`` float32 at ``target_rate``.

    Float samples or integer PCM (:func:`as_float_samples`); soxr's high-quality ("HQ")
    polyphase filter, or the samples as they are when the rates agree (a float32 array is
    returned itself).
    """
    waveform = as_float_samples(waveform, "waveform")
    if int(sample_rate) == int(target_rate):
        return waveform
    import soxr  # librosa's resampler; only needed off the model's rate.

    out = soxr.resample(np.ascontiguousarray(waveform.T), int(sample_rate), int(target_rate), quality="HQ")
    return np.ascontiguousarray(out.T, dtype=np.float32)
