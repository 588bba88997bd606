"""SpecAugment masks: torchaudio's ``FrequencyMasking``/``TimeMasking`` (the original's) or EPIC-Sounds' two per axis."""

from __future__ import annotations

import ml_collections
import numpy as np

from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage

MASK_STYLES = ("torchaudio", "epic")


# Hand-written: torchaudio's masks in NumPy (no torch at run time), drawing as torchaudio does.
def torchaudio_mask(spec: np.ndarray, axis: int, mask_param: int, rng: np.random.Generator) -> None:
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


def epic_masks(spec: np.ndarray, axis: int, mask_param: int, rng: np.random.Generator, count: int = 2) -> None:
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


class Masks(Stage, name="masks", order=50, stream="masks", train_only=True,
            keys=("freqm", "timem", "mask_style"), switches=("freqm", "timem")):
    """A frequency mask (``freqm``) then a time mask (``timem``), in ``mask_style``, into the clip's fresh fbank."""

    @classmethod
    def check(cls, config: ml_collections.ConfigDict, context: ClipContext) -> None:
        if config.mask_style not in MASK_STYLES:
            raise ValueError(f"unknown mask_style {config.mask_style!r}; use one of {', '.join(MASK_STYLES)}")

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        spec, settings = element["fbank"], self._settings  # a fresh array of this clip: masked in place.
        mask = epic_masks if settings["mask_style"] == "epic" else torchaudio_mask
        if settings["freqm"]:
            mask(spec, 1, settings["freqm"], rng)
        if settings["timem"]:
            mask(spec, 0, settings["timem"], rng)
        return element
