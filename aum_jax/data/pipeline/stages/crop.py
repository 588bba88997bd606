"""Crops of random length: a training clip's fbank and frame targets cut to a random stretch of its audio."""

from __future__ import annotations

import ml_collections
import numpy as np

from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage


class RandomCrop(Stage, name="crop", order=37, stream="crop", train_only=True, keys=("crop_seconds",),
                 switches=("crop_seconds",)):
    """Cuts the frames that hold audio (``frame_valid``) to a random stretch of ``crop_seconds`` = (shortest,
    longest) seconds at a random start, moved to the clip's start; the rest is padding (zero fbank, as a short
    clip is padded; ``frame_valid`` 0, so the loss skips it), the arrays keep their shape (one compiled step).
    """

    @classmethod
    def check(cls, config: ml_collections.ConfigDict, context: ClipContext) -> None:
        crop = tuple(config.crop_seconds)
        if not crop:
            return
        if len(crop) != 2 or not 0 < crop[0] <= crop[1]:
            raise ValueError(f"{config.name}: crop_seconds must be (shortest, longest) with 0 < shortest <= longest, "
                             f"got {crop}")
        if not config.frame_targets:
            raise ValueError(f"{config.name}: crop_seconds needs frame_targets=True (a crop cuts the clip's frame "
                             "targets with its fbank, and its padding is left out of the loss)")

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        prep = self._context.preprocessing
        heard = int(element["frame_valid"].sum())
        shortest, longest = (max(1, round(s * 1000.0 / prep.frame_shift_ms)) for s in self._settings["crop_seconds"])
        length = int(rng.integers(min(shortest, heard), min(longest, heard) + 1)) if heard else 0
        start = int(rng.integers(heard - length + 1))
        cropped = {}
        for key in ("fbank", "frame_label", "frame_valid"):
            out = np.zeros_like(element[key])
            out[:length] = element[key][start : start + length]
            cropped[key] = out
        return {**element, **cropped}
