"""An online teacher's own input, for a teacher whose features differ from the student's."""

from __future__ import annotations

import ml_collections
import numpy as np

from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage


class TeacherInput(Stage, name="teacher_input", order=25, train_only=True, needs="waveform"):
    """The clip's waveform, after mixup, through the teacher's features -> ``teacher_fbank``.

    Built for a distilled run whose online teacher reads other features than the student
    (:attr:`ClipContext.teacher_preprocessing`: rate, bins, length, statistics). The teacher
    sees the same clip and the same mixup as the student (the waveform at the student's rate,
    resampled to the teacher's), through its own fbank and normalisation; the student's
    frequency warp, SpecAugment masks and noise are drawn on the student's grid and are not applied.
    """

    @classmethod
    def enabled(cls, config: ml_collections.ConfigDict, context: ClipContext) -> bool:
        return context.teacher_preprocessing is not None

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        teacher, rate = self._context.teacher_preprocessing, self._context.preprocessing.sample_rate
        try:
            features = teacher.features(element["waveform"], rate)
        except ValueError as e:  # a clip shorter than one of the teacher's frames.
            return {"failure": (element["key"], "too_short", f"{element['key']} (the teacher's input): {e}")}
        return {**element, "teacher_fbank": features}
