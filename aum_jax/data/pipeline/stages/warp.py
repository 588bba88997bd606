"""Frequency warp (VTLP) of the Kaldi fbank; not in the original."""

from __future__ import annotations

import ml_collections
import numpy as np

from aum_jax.data.features import kaldi
from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage


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
    # A gather and a float32 lerp over all frames at once (np.interp works row by row, in float64).
    below = np.minimum(np.floor(source).astype(np.int64), bins - 2)
    weight = (source - below).astype(np.float32)
    return (spec[:, below] * (1.0 - weight) + spec[:, below + 1] * weight).astype(np.float32)


class FrequencyWarp(Stage, name="warp", order=40, stream="warp", train_only=True, keys=("freq_warp",),
                    switches=("freq_warp",)):
    """A frequency warp by a factor uniform in ``[1 - freq_warp, 1 + freq_warp]``, per clip."""

    @classmethod
    def check(cls, config: ml_collections.ConfigDict, context: ClipContext) -> None:
        if config.freq_warp and config.feature != "kaldi_fbank":
            raise ValueError(f"{config.name}: freq_warp works on the Kaldi fbank, not on {config.feature!r}")

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        width = self._settings["freq_warp"]
        factor = rng.uniform(1.0 - width, 1.0 + width)
        return {**element, "fbank": frequency_warp(element["fbank"], factor, self._context.preprocessing.sample_rate)}
