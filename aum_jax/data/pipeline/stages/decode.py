"""The first stage: a source index -> the clip's waveform at the model's rate, and its label vector."""

from __future__ import annotations

import numpy as np

from aum_jax.data.features import audio
from aum_jax.data.pipeline.stages.base import Element, Stage


class Decode(Stage, name="decode", order=10, stream="decode", needs="index"):
    """Source index -> ``{"key", "labels", "waveform" (channels, samples), "label" (num_classes,)}``,
    plus ``teacher`` (num_classes,) for a record with stored teacher targets, ``labelled``
    (1.0 or 0.0) where the training source has unlabelled clips, and ``events`` for a record with
    strong labels.

    ``index == -1`` is an evaluation padding row, passed on as ``{"padding": True}``. The
    random stream is a source's random crop (training only).
    """

    def __call__(self, index: int, rng: np.random.Generator | None = None) -> Element:
        if index < 0:
            return {"padding": True}
        source = self._context.source
        record = source[index]
        label = np.zeros((self._context.num_classes,), np.float32)
        label[list(record.labels)] = 1.0
        try:
            waveform, sample_rate = source.load_audio(index, rng)
        except audio.AudioLoadError as e:
            return {"failure": (e.path, e.kind, str(e))}
        element = {"key": record.key, "labels": record.labels, "label": label,
                   "waveform": self._context.preprocessing.resample(waveform, sample_rate)}
        if record.teacher is not None:
            element["teacher"] = np.asarray(record.teacher, np.float32)
        if record.events is not None:
            element["events"] = record.events
        if self._context.partly_labelled:
            element["labelled"] = np.float32(bool(record.labels))
        return element
