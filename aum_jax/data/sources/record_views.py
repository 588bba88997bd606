"""Sources seen through a change of their records: labels kept for a share of the clips
(``config.data.label_fraction``), the labelled clips alone, and a teacher's stored targets
attached to each clip.

Each wraps any source kind: the clips, their audio and their order stay those of the source.
"""

from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np

from aum_jax.data import teacher_logits
from aum_jax.data.records import AudioSource, ClipRecord


class _View:
    """``source``'s clips, audio and order, with records this class's subclass makes."""

    def __init__(self, source: AudioSource):
        self._source = source
        self.num_classes = source.num_classes
        self.random_crops = source.random_crops
        self.num_unlabelled = source.num_unlabelled
        self.num_unlabelled_by_fraction = source.num_unlabelled_by_fraction

    def __len__(self) -> int:
        return len(self._source)

    def load_audio(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        return self._source.load_audio(index, rng)

    def __getattr__(self, name: str):  # class_names, datafile, ... of the source.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._source, name)


class _Relabelled(_View):
    """``source`` with the labels of each clip replaced by ``labels[i]``."""

    def __init__(self, source: AudioSource, labels: list[tuple[int, ...]]):
        super().__init__(source)
        self._labels = labels
        self.num_unlabelled = sum(not ls for ls in labels)
        self.num_unlabelled_by_fraction = self.num_unlabelled - source.num_unlabelled

    def __getitem__(self, index: int) -> ClipRecord:
        record = self._source[index]
        return ClipRecord(record.key, self._labels[index], record.teacher)  # clip labels alone: no events.


class _Subset(_View):
    """The clips ``indices`` of ``source``, in their order."""

    def __init__(self, source: AudioSource, indices: list[int]):
        super().__init__(source)
        self._indices = indices
        self.num_unlabelled = self.num_unlabelled_by_fraction = 0

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int) -> ClipRecord:
        return self._source[self._indices[index]]

    def load_audio(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        return self._source.load_audio(self._indices[index], rng)


class _WithTeacher(_View):
    """``source`` whose record ``i`` carries the targets of row ``rows[i]`` of ``stored``."""

    def __init__(self, source: AudioSource, stored: teacher_logits.StoredLogits, rows: np.ndarray,
                 temperature: float, kind: str):
        super().__init__(source)
        self._stored, self._rows = stored, rows
        self._targets = functools.partial(teacher_logits.targets, temperature=temperature, kind=kind)

    def __getitem__(self, index: int) -> ClipRecord:
        record = self._source[index]
        return dataclasses.replace(record, teacher=self._targets(self._stored.logits(int(self._rows[index]))))


def keep_label_share(source: AudioSource, fraction: float, seed: int) -> AudioSource:
    """``source`` with the labels of a seeded, class-stratified ``fraction`` of its labelled clips.

    Clips are grouped by their first label; each group keeps ``round(fraction * size)`` of its
    clips' labels (at least one), drawn with ``seed``; the others become unlabelled. Clips
    that had no labels stay unlabelled.

    Raises:
      ValueError: ``fraction`` outside (0, 1].
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"config.data.label_fraction={fraction}: must be in (0, 1]")
    if fraction == 1.0:
        return source
    records = [source[i] for i in range(len(source))]
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for i, record in enumerate(records):
        if record.labels:
            groups[record.labels[0]].append(i)
    rng = np.random.default_rng(seed)
    keep: set[int] = set()
    for label in sorted(groups):
        members = groups[label]
        count = max(1, round(fraction * len(members)))
        keep.update(int(i) for i in rng.choice(members, size=count, replace=False))
    return _Relabelled(source, [r.labels if i in keep else () for i, r in enumerate(records)])


def labelled_only(source: AudioSource) -> AudioSource:
    """The clips of ``source`` that have labels, in their order."""
    return _Subset(source, [i for i in range(len(source)) if source[i].labels])


def with_teacher_targets(source: AudioSource, stored: teacher_logits.StoredLogits, temperature: float,
                         kind: str) -> AudioSource:
    """``source`` whose records carry their clip's stored teacher targets (:func:`teacher_logits.targets`
    of its row at ``temperature``, ``kind`` "softmax" or "sigmoid"), read when a record is.

    Raises:
      ValueError: clips without a row in ``stored`` (their count and the first one's key).
    """
    keys = [source[i].key for i in range(len(source))]
    rows = [stored.row_of(key) for key in keys]
    missing = [key for key, row in zip(keys, rows, strict=True) if row is None]
    if missing:
        raise ValueError(f"{stored.folder}: {len(missing)} of the {len(keys)} training clips have no stored "
                         f"teacher logits (the first: {missing[0]})")
    return _WithTeacher(source, stored, np.asarray(rows, np.int64), temperature, kind)
