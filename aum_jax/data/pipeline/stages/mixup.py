"""Waveform mixup (the original's): a second clip mixed into a training clip, labels weighted alike."""

from __future__ import annotations

import ml_collections
import numpy as np

from aum_jax.data.features import audio, kaldi
from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage


def mix_waveforms(first: np.ndarray, second: np.ndarray, lam: float, *, remove_mean: bool = True) -> np.ndarray:
    """The original's waveform mixup.

    Args:
      first: ``(channels, n1)`` float32.
      second: ``(channels2, n2)`` float32; zero-padded or cut to ``n1`` samples.
      lam: weight of ``first``.
      remove_mean: the original's: each clip and the mix without their means (the preprocessing's
        ``remove_waveform_mean``; a streaming model's features never see a whole clip's mean).

    Returns:
      ``(channels, n1)`` float32: ``lam * (first - mean) + (1 - lam) * (second - mean)``
      minus its own mean (without ``remove_mean``: ``lam * first + (1 - lam) * second``).
    """
    centre = kaldi.remove_mean if remove_mean else (lambda x: x)
    first, second = centre(first), centre(second)
    n = first.shape[1]
    fitted = np.zeros((second.shape[0], n), dtype=np.float32)
    fitted[:, : min(n, second.shape[1])] = second[:, :n]
    return centre(np.float32(lam) * first + np.float32(1.0 - lam) * fitted)


class Mixup(Stage, name="mixup", order=20, stream="mixup", train_only=True, needs="waveform",
            keys=("mixup", "mixup_beta")):
    """With probability ``mixup``: mixes in a uniformly drawn second clip, lambda ~ Beta(mixup_beta, mixup_beta).

    Stored teacher targets mix with the same lambda; a mix with an unlabelled clip is unlabelled.
    """

    @classmethod
    def enabled(cls, config: ml_collections.ConfigDict, context: ClipContext) -> bool:
        return config.mixup > 0

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        if rng.random() >= self._settings["mixup"]:
            return element
        source = self._context.source
        other_index = int(rng.integers(len(source)))
        other = source[other_index]
        try:
            other_waveform, other_rate = source.load_audio(other_index, rng)
        except audio.AudioLoadError as e:
            return {"failure": (e.path, e.kind, f"{e} (mixed into {element['key']})")}
        lam = rng.beta(self._settings["mixup_beta"], self._settings["mixup_beta"])
        label = np.zeros((self._context.num_classes,), np.float32)
        np.add.at(label, list(element["labels"]), lam)
        np.add.at(label, list(other.labels), 1.0 - lam)
        other_waveform = self._context.preprocessing.resample(other_waveform, other_rate)
        mixed = {**element, "key": f"{element['key']} mixed with {other.key}",
                 "waveform": mix_waveforms(element["waveform"], other_waveform, lam,
                                           remove_mean=self._context.preprocessing.remove_waveform_mean),
                 "label": label.astype(np.float32)}
        if "teacher" in element:
            mixed["teacher"] = (np.float32(lam) * element["teacher"]
                                + np.float32(1.0 - lam) * np.asarray(other.teacher, np.float32))
        if "labelled" in element:
            mixed["labelled"] = np.float32(min(element["labelled"], bool(other.labels)))
        return mixed
