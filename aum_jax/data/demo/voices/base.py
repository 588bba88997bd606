"""What every demo synthesizer is (:class:`Synthesizer`) and the helpers they share."""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np

SAMPLE_RATE = 16_000
_TRIM_FRACTION = 0.01  # leading/trailing samples below 1 % of peak are silence


def trim(audio: np.ndarray) -> np.ndarray:
    """``audio`` without its leading and trailing samples below 1 % of its peak."""
    loud = np.flatnonzero(np.abs(audio) > _TRIM_FRACTION * np.abs(audio).max(initial=0.0))
    if loud.size == 0:
        raise RuntimeError("a synthesizer produced silence")
    return audio[loud[0] : loud[-1] + 1]


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    from scipy.signal import resample_poly

    gcd = math.gcd(SAMPLE_RATE, rate)
    return resample_poly(audio, SAMPLE_RATE // gcd, rate // gcd).astype(np.float32)


class Synthesizer(abc.ABC):
    """One kind of synthetic speaker. ``voices[split]``: the split's voices (disjoint between splits, a split
    missing from it has none); ``banked``: spoken once into a split's bank of utterances, else anew per clip."""

    name: ClassVar[str]
    voices: ClassVar[dict[str, tuple[str, ...]]]
    banked: ClassVar[bool]

    @classmethod
    def prepare(cls) -> None:
        """Readies what the worker processes share, once, in the parent process, before they start."""

    @abc.abstractmethod
    def speak(self, word: str, voices: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, dict[str, str]]:
        """``word`` spoken by a speaker drawn from ``voices`` with ``rng``: float32 (samples,) at 16 kHz, trimmed,
        and its recipe (``voice`` and the synthesizer's settings, as strings)."""


def onnx_options():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the demo renders one shard per core.
    options.inter_op_num_threads = 1
    return options
