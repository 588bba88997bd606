"""EPIC-Sounds' log-mel spectrogram (the ``epic_logmel`` feature), as the original EPIC loader computes it."""

from __future__ import annotations

import functools

import numpy as np


def epic_log_mel(samples: np.ndarray, sample_rate: int, num_mel_bins: int, window_ms: float,
                 hop_ms: float) -> np.ndarray:
    """EPIC-Sounds log-mel spectrogram, as the original EPIC loader computes it.

    librosa STFT (n_fft 2048, Hann window of ``window_ms``, hop ``hop_ms``, centred
    with zero padding), magnitude, HTK mel filters without normalisation,
    ``log(mel + 1e-6)``.

    Args:
      samples: ``(samples,)`` float32.
      sample_rate: in Hz (24 kHz for EPIC-Sounds).
      num_mel_bins: mel bands.
      window_ms: window length in milliseconds.
      hop_ms: hop in milliseconds.

    Returns:
      ``(frames, num_mel_bins)`` float32, ``frames = 1 + samples // hop``.
    """
    import librosa  # slow import; only EPIC-Sounds needs it.

    spec = librosa.stft(
        samples,
        n_fft=2048,
        window="hann",
        hop_length=int(round(hop_ms * sample_rate / 1e3)),
        win_length=int(round(window_ms * sample_rate / 1e3)),
        pad_mode="constant",
    )
    mel_basis = _librosa_mel(sample_rate, num_mel_bins)
    return np.log(mel_basis @ np.abs(spec) + 1e-6).T.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _librosa_mel(sample_rate: int, num_mel_bins: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sample_rate, n_fft=2048, n_mels=num_mel_bins, htk=True, norm=None)
