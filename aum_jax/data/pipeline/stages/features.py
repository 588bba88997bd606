"""The fbank stage: waveform -> unnormalised features (:meth:`Preprocessing.spectrogram`)."""

from __future__ import annotations

import ml_collections
import numpy as np

from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage


class Features(Stage, name="features", order=30, needs="waveform", keys=("cache_features",)):
    """Waveform -> ``fbank`` ``(target_length, num_mel_bins)`` float32, a fresh array per clip, and
    ``samples``, the waveform's length at the model's rate (which frames hold audio).

    With ``cache_features`` (training) it and the stages before it run once per clip, their
    result kept (:attr:`keeps_earlier`).
    """

    @property
    def keeps_earlier(self) -> bool:
        return bool(self._settings["cache_features"]) and self._context.train

    @classmethod
    def check(cls, config: ml_collections.ConfigDict, context: ClipContext) -> None:
        if bool(config.cache_features) and context.train and config.mixup > 0:
            raise ValueError(f"{config.name}: cache_features needs mixup 0 (mixup={config.mixup} mixes waveforms "
                             "before the fbank, so a clip's features change every epoch)")

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        prep = self._context.preprocessing
        try:
            spec = prep.spectrogram(element["waveform"], prep.sample_rate)
        except ValueError as e:  # a clip shorter than one frame.
            return {"failure": (element["key"], "too_short", f"{element['key']}: {e}")}
        kept = {k: element[k] for k in ("key", "label", "teacher", "labelled", "teacher_fbank", "events")
                if k in element}  # the waveform goes.
        return {**kept, "fbank": spec, "samples": element["waveform"].shape[-1]}
