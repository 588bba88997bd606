"""Frame targets: a training clip's events (strong labels) as a target per fbank frame."""

from __future__ import annotations

import ml_collections
import numpy as np

from aum_jax.data.features import kaldi
from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage


class FrameTargets(Stage, name="events", order=35, train_only=True, keys=("frame_targets",),
                   switches=("frame_targets",)):
    """Adds ``frame_label`` (T, classes) float32: 1 where a frame's centre lies in an event of the class;
    ``frame_valid`` (T,) float32: 1 for the frames that hold audio (not padding); ``strong``: 1.0 for a
    clip with strong labels (its events), 0.0 for one with clip labels alone (its ``frame_label`` zeros).
    """

    @classmethod
    def check(cls, config: ml_collections.ConfigDict, context: ClipContext) -> None:
        if not config.frame_targets:
            return
        if config.feature != "kaldi_fbank":
            raise ValueError(f"{config.name}: frame_targets needs feature 'kaldi_fbank' (got {config.feature!r})")
        for key, why in (("mixup", "mixes two clips' waveforms"), ("noise", "rolls the fbank in time")):
            if config[key]:
                raise ValueError(f"{config.name}: frame_targets needs {key} off ({key}={config[key]} {why}, "
                                 "not their frame targets)")

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        prep = self._context.preprocessing
        frames = element["fbank"].shape[0]
        window, shift = kaldi.frame_layout(prep.sample_rate, prep.frame_shift_ms)
        heard = min(frames, max(0, 1 + (element["samples"] - window) // shift))
        centres = (np.arange(frames) * shift + window / 2) / prep.sample_rate  # seconds
        target = np.zeros((frames, self._context.num_classes), np.float32)
        events = element.get("events")
        for onset, offset, label in events or ():
            target[(centres >= onset) & (centres < offset), label] = 1.0
        kept = {k: v for k, v in element.items() if k not in ("events", "samples")}
        return {**kept, "frame_label": target, "frame_valid": (np.arange(frames) < heard).astype(np.float32),
                "strong": np.float32(events is not None)}
