"""The AST/AuM JSON datafile source (``config.data.source == "datafile"``).

A datafile is ``{"data": [{"wav": path, "labels": "mid1,mid2"}]}``; its label ids are the
``mid`` s of a ``class_labels_indices.csv`` (``index,mid,display_name``). An empty
``labels`` marks an unlabelled clip (training with distillation only). The splits are
``config.data.train_datafile``, ``validation_datafile`` and ``test_datafile``; the label
list is ``config.data.label_csv``.
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
from aum_jax.data.sources.base import SourceKind
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
    clip and the label.
    """

    name = "datafile"
    random_crops = False

    def __init__(self, datafile: str | os.PathLike, label_csv: str | os.PathLike):
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
        self._records = records
        self.num_unlabelled = sum(not r.labels for r in records)

    @classmethod
    def split_key(cls, split: str) -> str:
        return f"{split}_datafile"

    @classmethod
    def needed_files(cls, data: ml_collections.ConfigDict, splits: Sequence[str]) -> list[tuple[str, str, str]]:
        """Each split's datafile, and the label list."""
        needed = super().needed_files(data, splits)
        if data.get("label_csv"):
            needed.append(("label_csv", data.label_csv, "label list"))
        return needed

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, split: str) -> DatafileSource:
        return cls(data[cls.split_key(split)], data.label_csv)

    def load_audio(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, int]:
        """Decodes the clip's file with :func:`aum_jax.data.features.audio.load_waveform`."""
        del rng
        return audio.load_waveform(self._records[index].key)
