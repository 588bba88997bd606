"""Normalisation with the training set's statistics (:meth:`Preprocessing.normalize`)."""

from __future__ import annotations

import numpy as np

from aum_jax.data.pipeline.stages.base import Element, Stage


class Normalize(Stage, name="normalize", order=60):
    """``fbank -> (fbank - mean) / (2 std)`` (unchanged with ``skip_norm``)."""

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        return {**element, "fbank": self._context.preprocessing.normalize(element["fbank"])}
