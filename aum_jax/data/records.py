"""What every audio source gives the input pipeline: clip records and random access to them.

A source (a kind of :mod:`aum_jax.data.sources.registry`) is a grain-compatible
random-access data source (``len`` and ``__getitem__``) of :class:`ClipRecord` s, with
:meth:`AudioSource.load_audio` decoding a clip apart from its record.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Protocol

import numpy as np


class Event(NamedTuple):
    """One sound event of a clip (a strong label): from ``onset`` to ``offset`` seconds, of class ``label``."""

    onset: float
    offset: float
    label: int


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One clip of a source.

    Attributes:
      key: what names the clip in messages: a file path, ``name/split/index`` for TFDS,
        ``video_id/annotation_id`` for EPIC-Sounds.
      labels: class indices of the clip (repeats allowed); empty for an unlabelled training clip.
      teacher: ``(num_classes,)`` float32 targets of a distillation teacher (its stored
        logits at the run's temperature), or None.
      events: the clip's sound events with their onsets and offsets (strong labels; empty: none
        happens in it), or None where only its clip labels are known.
    """

    key: str
    labels: tuple[int, ...]
    teacher: np.ndarray | None = None
    events: tuple[Event, ...] | None = None


class AudioSource(Protocol):
    """What the input pipeline needs from a source."""

    num_classes: int
    random_crops: bool  # load_audio's rng draws a random crop: a clip's audio differs between epochs.
    num_unlabelled: int  # clips without labels (only a training split may hold them).
    num_unlabelled_by_fraction: int  # of those, the clips config.data.label_fraction took the labels of.

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> ClipRecord: ...

    def load_audio(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, int]:
        """Decodes clip ``index``: ``((channels, samples) float32, sample_rate)``.

        ``rng`` drives random temporal crops (EPIC-Sounds training); ``None`` asks for
        the deterministic evaluation crop. Raises :class:`aum_jax.data.features.audio.AudioLoadError`
        naming the clip when it cannot be read.
        """
        ...


class RecordList:
    """Random access to a list of :class:`ClipRecord` built by the subclass in ``_records``."""

    _records: list[ClipRecord]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> ClipRecord:
        return self._records[index]
