"""The original's training augmentations, one small function each.

The input pipeline (:mod:`aum_jax.input_pipeline`) applies them as grain maps in the
order of the original ``AudiosetDataset.__getitem__``: decode, mixup
(:func:`mix_waveforms`), fbank, masks (:func:`torchaudio_mask` or, for EPIC-Sounds,
:func:`epic_masks`), normalise (:func:`aum_jax.audio.normalize`), noise
(:func:`add_noise`). Their knobs live in ``config.data`` (``configs/data.py``).
"""

from __future__ import annotations

import numpy as np

from aum_jax import audio


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
    first = audio.remove_mean(first)
    second = audio.remove_mean(second)
    n = first.shape[1]
    fitted = np.zeros((second.shape[0], n), dtype=np.float32)
    fitted[:, : min(n, second.shape[1])] = second[:, :n]
    return audio.remove_mean(np.float32(lam) * first + np.float32(1.0 - lam) * fitted)


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


def add_noise(spec: np.ndarray, rng: np.random.Generator, scale: float, max_shift: int) -> np.ndarray:
    """``spec + U[0,1)^(T,F) * U[0,1) * scale``, rolled in time by ``randint(-max_shift, max_shift)``.

    The original: ``scale`` 1/10, ``max_shift`` 10.
    """
    noisy = spec + rng.random(spec.shape, dtype=np.float32) * np.float32(rng.random() * scale)
    return np.roll(noisy, int(rng.integers(-max_shift, max_shift)), axis=0)
