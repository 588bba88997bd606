"""The AST/AuM JSON datafile source (``config.data.source == "datafile"``).

A datafile is ``{"data": [{"wav": path, "labels": "mid1,mid2"}]}``; its label ids are the
``mid`` s of a ``class_labels_indices.csv`` (``index,mid,display_name``). An empty
``labels`` marks an unlabelled clip (training with distillation only). The splits are
``config.data.train_datafile``, ``validation_datafile`` and ``test_datafile``; the label
list is ``config.data.label_csv``. A split's clips may also have strong labels, their events'
onsets and offsets, from the DCASE TSV ``config.data.<split>_events``
(:mod:`aum_jax.data.sources.events`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from aum_jax.core import storage
from aum_jax.data.features import audio
from aum_jax.data.records import ClipRecord, RecordList
from aum_jax.data.sources import events as events_tsv
from aum_jax.data.sources.base import SourceKind, lookup
from aum_jax.data.sources.labels import load_label_csv


def write_datafile(path: str | os.PathLike, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Writes an AST/AuM datafile: ``entries`` are ``(wav path, [label mids])``.

    Replaced atomically (:func:`aum_jax.core.storage.write_text`), so a reader never sees half a file.
    """
    data = [{"wav": wav, "labels": ",".join(mids)} for wav, mids in entries]
    storage.write_text(path, json.dumps({"data": data}, indent=1))


class DatafileSource(RecordList, SourceKind):
    """The AST/AuM JSON datafile with its label CSV.

    Relative ``wav`` paths resolve against the JSON file's folder. Every label id is
    checked when the source is built: an unknown one raises ``ValueError`` naming the
    clip and the label. With ``events`` (a DCASE TSV) the clips it names carry their events, and
    their labels are their events' classes (a datafile label that disagrees is refused).
    """

    name = "datafile"
    random_crops = False

    def __init__(self, datafile: str | os.PathLike, label_csv: str | os.PathLike, events: str | os.PathLike = ""):
        self.datafile = os.path.expanduser(os.fspath(datafile))
        index_of, self.class_names = load_label_csv(label_csv)
        self.num_classes = len(self.class_names)
        entries = storage.read_json(self.datafile)["data"]
        root = os.path.dirname(os.path.abspath(self.datafile))
        records = []
        for i, entry in enumerate(entries):
            path = os.path.join(root, os.path.expanduser(entry["wav"]))
            labels = []
            for mid in filter(None, entry["labels"].split(",")):
                if mid not in index_of:
                    raise ValueError(
                        f"{self.datafile}: clip {i} ({path}) has label {mid!r}, which is "
                        f"not in {os.fspath(label_csv)}"
                    )
                labels.append(index_of[mid])
            records.append(ClipRecord(key=path, labels=tuple(labels)))
        if events:
            records = self._with_events(records, os.path.expanduser(os.fspath(events)), index_of)
        self._records = records
        self.num_unlabelled = sum(not r.labels and r.events is None for r in records)  # no event is a label too.

    def _with_events(self, records: list[ClipRecord], tsv: str, index_of: dict[str, int]) -> list[ClipRecord]:
        """``records`` with the events of ``tsv``; a named clip's labels become its events' classes."""
        classes = {**{name: i for i, name in enumerate(self.class_names)}, **index_of}
        found = events_tsv.read_events(tsv, [r.key for r in records], classes)
        with_events = []
        for record, clip_events in zip(records, found):
            if clip_events is not None:
                labels = tuple(sorted({e.label for e in clip_events}))
                if record.labels and set(record.labels) != set(labels):
                    raise events_tsv.EventsError(
                        f"{self.datafile}: clip {record.key} has labels {sorted(set(record.labels))} but its events "
                        f"in {tsv} are of classes {list(labels)}")
                record = ClipRecord(record.key, labels, record.teacher, clip_events)
            with_events.append(record)
        return with_events

    @classmethod
    def split_key(cls, split: str) -> str:
        return f"{split}_datafile"

    @staticmethod
    def events_key(split: str) -> str:
        """The ``config.data`` key of a split's events TSV."""
        return f"{split}_events"

    @classmethod
    def needed_files(cls, data: ml_collections.ConfigDict, splits: Sequence[str]) -> list[tuple[str, str, str]]:
        """Each split's datafile, and the label list."""
        needed = super().needed_files(data, splits)
        if data.get("label_csv"):
            needed.append(("label_csv", data.label_csv, "label list"))
        needed += [(cls.events_key(split), lookup(data, cls.events_key(split)), f"{split} events TSV")
                   for split in splits if lookup(data, cls.events_key(split))]
        return needed

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, split: str) -> DatafileSource:
        return cls(data[cls.split_key(split)], data.label_csv, lookup(data, cls.events_key(split)) or "")

    def load_audio(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, int]:
        """Decodes the clip's file with :func:`aum_jax.data.features.audio.load_waveform`."""
        del rng
        return audio.load_waveform(self._records[index].key)
