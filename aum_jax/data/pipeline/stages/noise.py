"""The original's noise augmentation: uniform noise added to the normalised fbank, then a time roll."""

from __future__ import annotations

import ml_collections
import numpy as np

from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage


def add_noise(spec: np.ndarray, rng: np.random.Generator, scale: float, max_shift: int) -> np.ndarray:
    """``spec + U[0,1)^(T,F) * U[0,1) * scale``, rolled in time by ``randint(-max_shift, max_shift)``.

    The original: ``scale`` 1/10, ``max_shift`` 10.
    """
    noisy = spec + rng.random(spec.shape, dtype=np.float32) * np.float32(rng.random() * scale)
    return np.roll(noisy, int(rng.integers(-max_shift, max_shift)), axis=0)


class Noise(Stage):
    """:func:`add_noise` with ``noise_scale`` and ``noise_max_shift``, per training clip."""

    name = "noise"
    order = 70
    stream = "noise"
    train_only = True
    keys = ("noise", "noise_scale", "noise_max_shift")

    def __init__(self, config: ml_collections.ConfigDict, context: ClipContext):
        super().__init__(config, context)
        self._scale, self._max_shift = config.noise_scale, config.noise_max_shift

    @classmethod
    def enabled(cls, config: ml_collections.ConfigDict, context: ClipContext) -> bool:
        return bool(config.noise)

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        noisy = add_noise(element["fbank"], rng, self._scale, self._max_shift)
        return {**element, "fbank": noisy.astype(np.float32)}
