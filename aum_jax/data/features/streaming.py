"""A model's input features computed as the audio arrives, chunk by chunk, in fixed memory.

:class:`StreamingFeatures` turns live mono audio into the normalised fbank frames of a
:class:`~aum_jax.data.features.preprocessing.Preprocessing`, frame by frame as each completes:
for a causal one-pass model reading audio live. The frames of a stream, pushed in any chunks,
are the frames :meth:`Preprocessing.frames <aum_jax.data.features.preprocessing.Preprocessing.frames>`
gives for the whole recording (measured: equal bit for bit, every chunking tried).

Why only ``remove_waveform_mean=False``: the original front end subtracts the mean of the WHOLE
waveform before the fbank, which no stream knows before its end. Every later step of Kaldi's fbank
(per-frame DC removal, pre-emphasis, window, power spectrum, mel, log; ``snip_edges`` framing) reads
one frame's own samples only, so without that mean a frame is complete as soon as its last sample
arrives. A frame's features are computed by :func:`aum_jax.data.features.kaldi.frame_features`, the
same code as the whole-recording path: there is one implementation of a frame's features.

Memory: between pushes only the samples of the frame in progress are kept (fewer than one window,
400 samples at 16 kHz), plus, for audio at another rate, soxr's resampler state (fixed by its
filter, not by the stream's length).

Input at another rate than the model's is resampled, not refused: live audio comes at the device's
rate (44.1 or 48 kHz for most microphones), and refusing it would leave every caller to write a
streaming resampler whose output must then match the whole-file path's. python-soxr's
``soxr.ResampleStream`` (librosa's resampler, already a dependency) with the same "HQ" quality as
:func:`aum_jax.data.features.audio.resample` gives, chunk by chunk, the samples that
``soxr.resample`` gives for the whole recording, bit for bit (tested at 8, 11.025, 22.05, 32,
44.1, 48 and 96 kHz with chunks of 1 sample upwards), so the whole-file path is left as it is and
the two agree. The resampler holds back its last samples (its filter's delay) until
:meth:`StreamingFeatures.flush` says the stream has ended; at the model's rate nothing is held
back and :meth:`~StreamingFeatures.flush` returns no frames (``snip_edges`` drops the incomplete
last frame, as the whole-file path does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aum_jax.data.features import audio, kaldi
from aum_jax.data.features.preprocessing import Preprocessing

__all__ = ["StreamingFeatures"]


class StreamingFeatures:
    """Normalised fbank frames of live mono audio, given as each frame completes.

    ``push`` the samples as they arrive (any number per call, 0 included), then ``flush`` once at
    the end; the rows returned, concatenated, are ``prep.frames(whole_recording, sample_rate)``.

    Args:
      prep: the model's preprocessing: ``feature="kaldi_fbank"``, ``remove_waveform_mean=False``,
        with normalisation statistics (or ``skip_norm``).
      sample_rate: the rate (Hz, a whole number) of the pushed samples; default the model's
        (``prep.sample_rate``). Another rate is resampled to the model's (soxr "HQ", streaming).

    Attributes:
      prep: the preprocessing.
      sample_rate: the rate of the pushed samples.
      window, shift: a frame's length and hop in samples at the model's rate.
      frames_out: frames returned so far (the index of the next frame).

    Raises:
      ValueError: ``remove_waveform_mean`` True or a feature other than kaldi_fbank (the field
        named), or a bad ``sample_rate``.
      MissingStatisticsError: ``prep`` has no normalisation statistics.
    """

    def __init__(self, prep: Preprocessing, sample_rate: int | None = None):
        if not isinstance(prep, Preprocessing):
            raise ValueError(f"prep must be a Preprocessing, got {type(prep).__name__}")
        if prep.feature != "kaldi_fbank":
            raise ValueError(f"field feature is {prep.feature!r}: streaming features are computed for kaldi_fbank only")
        if prep.remove_waveform_mean:
            raise ValueError("field remove_waveform_mean is True: these features subtract the mean of the whole "
                             "waveform, which a stream does not know before its end; streaming needs a model whose "
                             "preprocessing has remove_waveform_mean false")
        prep.require_statistics("the streamed model")
        rate = prep.sample_rate if sample_rate is None else sample_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or rate <= 0:
            raise ValueError(f"sample_rate must be a positive whole number of Hz, got {sample_rate!r}")
        self.prep = prep
        self.sample_rate = int(rate)
        self.window, self.shift = kaldi.frame_layout(prep.sample_rate, prep.frame_shift_ms)
        self.frames_out = 0
        self._pending = np.zeros(0, np.float32)  # samples of the frame in progress (< window), model's rate.
        self._skip = 0  # samples still to drop before the next frame starts (only when shift > window).
        self._finished = False
        self._resampler: Any = None
        if self.sample_rate != prep.sample_rate:
            import soxr  # librosa's resampler; only needed off the model's rate.

            # As audio.resample: soxr "HQ", float32; a stream gives the samples soxr.resample gives.
            self._resampler = soxr.ResampleStream(self.sample_rate, prep.sample_rate, 1, dtype="float32",
                                                  quality="HQ")

    @property
    def buffered_samples(self) -> int:
        """Samples (at the model's rate) kept for the frame in progress: always fewer than :attr:`window`."""
        return int(self._pending.shape[0])

    def push(self, samples: Any) -> np.ndarray:
        """Takes the next samples; returns the frames they complete.

        Args:
          samples: ``(n,)`` mono samples at :attr:`sample_rate`, ``n >= 0``: float samples or
            integer PCM (:func:`aum_jax.data.features.audio.as_float_samples`), taken as float32.

        Returns:
          ``(frames, num_mel_bins)`` float32, normalised as the model's input; 0 rows when no
          frame completed.

        Raises:
          ValueError: samples that are not 1-D, of no audio type, or NaN or Inf; a push after
            :meth:`flush`.
        """
        if self._finished:
            raise ValueError("the stream has been flushed; start a new StreamingFeatures for new audio")
        x = audio.as_float_samples(samples, "samples")
        if x.ndim != 1:
            raise ValueError(f"samples must be mono, shape (samples,), got shape {x.shape}")
        if self._resampler is not None:
            x = self._resampler.resample_chunk(np.ascontiguousarray(x), last=False)
        return self._frames(x)

    def flush(self) -> np.ndarray:
        """Ends the stream: the frames completed by the resampler's held-back samples (none at the model's rate).

        The incomplete last frame is dropped, as the whole-recording path drops it (``snip_edges``).
        After this the stream takes no more samples.

        Returns:
          ``(frames, num_mel_bins)`` float32, normalised; usually 0 rows at the model's rate.
        """
        if self._finished:
            return self._empty()
        tail = np.zeros(0, np.float32)
        if self._resampler is not None:
            tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            self._resampler = None
        out = self._frames(tail)
        self._finished = True
        self._pending = np.zeros(0, np.float32)
        return out

    def _frames(self, x: np.ndarray) -> np.ndarray:
        """The frames that ``x`` (float32 ``(n,)`` at the model's rate, following what came before) completes."""
        if self._skip:
            dropped = min(self._skip, x.shape[0])
            x, self._skip = x[dropped:], self._skip - dropped
        if x.shape[0] == 0:
            return self._empty()
        joined = np.concatenate([self._pending, np.asarray(x, np.float32)])
        prep = self.prep
        spec = kaldi.frame_features(joined, prep.sample_rate, prep.num_mel_bins, prep.frame_shift_ms)
        consumed = spec.shape[0] * self.shift  # where the next frame starts in ``joined``.
        self._skip = max(0, consumed - joined.shape[0])
        self._pending = joined[consumed:].copy()  # a copy: the joined chunk is not kept alive.
        self.frames_out += spec.shape[0]
        return prep.normalize(spec)

    def _empty(self) -> np.ndarray:
        return np.zeros((0, self.prep.num_mel_bins), np.float32)
