"""The original's training augmentations, one small function each.

The input pipeline (:mod:`aum_jax.data.pipeline.input_pipeline`) applies them as grain maps in the
order of the original ``AudiosetDataset.__getitem__``: decode, mixup
(:func:`mix_waveforms`), fbank, masks (:func:`torchaudio_mask` or, for EPIC-Sounds,
:func:`epic_masks`), normalise (:meth:`aum_jax.data.features.preprocessing.Preprocessing.normalize`), noise
(:func:`add_noise`). Their knobs live in ``config.data`` (``configs/data.py``).
:func:`frequency_warp` (after the fbank, before the masks) is this project's addition.
"""

from __future__ import annotations

import numpy as np

from aum_jax.data.features import kaldi


def mix_waveforms(first: np.ndarray, second: np.ndarray, lam: float) -> np.ndarray:
    """The original's waveform mixup.

    Args:
      first: ``(channels, n1)`` float32.
      second: ``(channels2, n2)`` float32; zero-padded or cut to ``n1`` samples.
      lam: weight of ``first``.

    Returns:
      ``(channels, n1)`` float32: ``lam * (first - mean) + (1 - lam) * (second - mean)``
      minus its own mean.
    """
    first = kaldi.remove_mean(first)
    second = kaldi.remove_mean(second)
    n = first.shape[1]
    fitted = np.zeros((second.shape[0], n), dtype=np.float32)
    fitted[:, : min(n, second.shape[1])] = second[:, :n]
    return kaldi.remove_mean(np.float32(lam) * first + np.float32(1.0 - lam) * fitted)


def torchaudio_mask(
    spec: np.ndarray, axis: int, mask_param: int, rng: np.random.Generator
) -> None:
    """One torchaudio ``FrequencyMasking``/``TimeMasking`` mask, in place (zeros).

    ``width = int(u1 * mask_param)`` and ``start = int(u2 * (size - u1 * mask_param))``
    with ``u1, u2 ~ U[0, 1)``: the width is uniform in ``[0, mask_param)`` and the
    band ``[start, start + width)`` lies inside the axis.

    Args:
      spec: ``(time, freq)``.
      axis: 0 masks time frames, 1 masks frequency bins.
      mask_param: the maximum width (exclusive).
      rng: generator.
    """
    value = rng.random() * mask_param
    start = int(rng.random() * (spec.shape[axis] - value))
    band = slice(start, start + int(value))
    if axis == 0:
        spec[band] = 0.0
    else:
        spec[:, band] = 0.0


def epic_masks(
    spec: np.ndarray, axis: int, mask_param: int, rng: np.random.Generator, count: int = 2
) -> None:
    """The EPIC-Sounds loader's masks, in place: up to ``count`` bands set to the mean.

    Each mask draws ``w`` in ``[0, mask_param)``, ``start`` in ``[0, size - w)`` and
    ``end`` in ``[start, start + w)``; a zero width ends the masking of this axis.
    """
    size = spec.shape[axis]
    for _ in range(count):
        width = int(rng.integers(0, mask_param))
        start = int(rng.integers(0, size - width))
        if width == 0:
            return
        band = slice(start, int(rng.integers(start, start + width)))
        if axis == 0:
            spec[band] = spec.mean()
        else:
            spec[:, band] = spec.mean()


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def frequency_warp(spec: np.ndarray, factor: float, sample_rate: float) -> np.ndarray:
    """A vocal-tract-length warp of a Kaldi fbank: its frequency axis scaled by ``factor``.

    Bin ``k`` of the result takes the fbank at the frequency of bin ``k``'s centre divided by
    ``factor``, interpolated linearly between neighbouring bins (the edge bins repeat):
    ``factor > 1`` moves the spectrum, formants included, up, as a shorter vocal tract
    does (VTLP, Jaitly & Hinton 2013, applied to the log-mel bins).

    Args:
      spec: ``(frames, bins)`` from :func:`aum_jax.data.features.kaldi.kaldi_fbank` at ``sample_rate``.
      factor: the frequency scale, e.g. in ``[0.9, 1.1]``.
      sample_rate: the clip's rate in Hz (the filterbank spans 20 Hz to Nyquist).

    Returns:
      A new float32 ``(frames, bins)`` array.
    """
    bins = spec.shape[1]  # > 3, as kaldi_fbank makes them.
    mel_low, mel_high = (_mel(hz) for hz in kaldi.filterbank_range(sample_rate))
    step = (mel_high - mel_low) / (bins + 1)
    centres = 700.0 * np.expm1((mel_low + step * np.arange(1, bins + 1)) / 1127.0)
    source = np.clip((_mel(centres / factor) - mel_low) / step - 1.0, 0.0, bins - 1)
    below = np.minimum(np.floor(source).astype(np.int64), bins - 2)
    weight = (source - below).astype(np.float32)
    return (spec[:, below] * (1.0 - weight) + spec[:, below + 1] * weight).astype(np.float32)


def add_noise(spec: np.ndarray, rng: np.random.Generator, scale: float, max_shift: int) -> np.ndarray:
    """``spec + U[0,1)^(T,F) * U[0,1) * scale``, rolled in time by ``randint(-max_shift, max_shift)``.

    The original: ``scale`` 1/10, ``max_shift`` 10.
    """
    noisy = spec + rng.random(spec.shape, dtype=np.float32) * np.float32(rng.random() * scale)
    return np.roll(noisy, int(rng.integers(-max_shift, max_shift)), axis=0)
