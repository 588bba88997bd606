"""The original's noise augmentation: uniform noise added to the normalised fbank, then a time roll."""

from __future__ import annotations

import numpy as np

from aum_jax.data.pipeline.stages.base import Element, Stage


def add_noise(spec: np.ndarray, rng: np.random.Generator, scale: float, max_shift: int) -> np.ndarray:
    """``spec + U[0,1)^(T,F) * U[0,1) * scale``, rolled in time by ``randint(-max_shift, max_shift)``.

    The original: ``scale`` 1/10, ``max_shift`` 10.
    """
    noisy = spec + rng.random(spec.shape, dtype=np.float32) * np.float32(rng.random() * scale)
    return np.roll(noisy, int(rng.integers(-max_shift, max_shift)), axis=0)


class Noise(Stage, name="noise", order=70, stream="noise", train_only=True,
            keys=("noise", "noise_scale", "noise_max_shift"), switches=("noise",)):
    """:func:`add_noise` with ``noise_scale`` and ``noise_max_shift``, per training clip."""

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        noisy = add_noise(element["fbank"], rng, self._settings["noise_scale"], self._settings["noise_max_shift"])
        return {**element, "fbank": noisy.astype(np.float32)}
