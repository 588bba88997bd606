"""EPIC-Sounds as a source (``config.data.source == "epic_sounds"``): labelled segments cut from
the per-video audio arrays of one HDF5 file, as listed in an annotation CSV; its settings are
``config.data.epic_sounds.*``."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from aum_jax.data.features import audio
from aum_jax.data.records import ClipRecord, RecordList
from aum_jax.data.sources.base import SourceKind


def timestamp_to_seconds(timestamp: str) -> float:
    """``"HH:MM:SS.fff"`` -> seconds (the EPIC annotation time format)."""
    hours, minutes, seconds = timestamp.split(":")
    whole, _, millis = seconds.partition(".")
    return int(hours) * 3600 + int(minutes) * 60 + int(whole) + float(millis or 0) / 1000


class EpicSoundsSource(RecordList, SourceKind):
    """EPIC-Sounds: labelled segments of the per-video audio in one HDF5 file.

    The HDF5 file holds one 1-D dataset per ``video_id`` (24 kHz samples). The
    annotation CSV has ``annotation_id, video_id, start_timestamp, stop_timestamp,
    class_id`` columns (the official ``EPIC_Sounds_*.csv``). As the original loader
    does, sample positions are ``int(seconds * sample_rate)``; a segment longer than
    ``clip_secs`` is cropped to a ``clip_secs`` window (minus one sample), at a
    uniformly random start for training and at the segment start for evaluation; a
    shorter segment is used whole.
    """

    name = "epic_sounds"
    split_what = "annotation list"
    random_crops = True

    def __init__(
        self,
        annotations_csv: str | os.PathLike,
        hdf5_path: str | os.PathLike,
        num_classes: int = 44,
        sample_rate: int = 24000,
        clip_secs: float = 10.0,
    ):
        self.hdf5_path = os.fspath(hdf5_path)
        self.num_classes = num_classes
        self.sample_rate = sample_rate
        self.clip_samples = int(round(sample_rate * clip_secs))
        self._h5: Any = None
        with open(annotations_csv, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        self._segments: list[tuple[str, int, int]] = []
        records = []
        for row in rows:
            key = f"{row['video_id']}/{row['annotation_id']}"
            label = int(row.get("class_id") or 0)  # the test split has no labels.
            if not 0 <= label < num_classes:
                raise ValueError(
                    f"{os.fspath(annotations_csv)}: segment {key} has class_id {label}, "
                    f"outside 0..{num_classes - 1}"
                )
            start = int(timestamp_to_seconds(row["start_timestamp"]) * sample_rate)
            stop = int(timestamp_to_seconds(row["stop_timestamp"]) * sample_rate)
            self._segments.append((row["video_id"], start, stop))
            records.append(ClipRecord(key=key, labels=(label,)))
        self._records = records

    @staticmethod
    def config() -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.hdf5 = ""  # EPIC-KITCHENS-100_audio.hdf5 (one dataset per video).
        c.train_annotations = ""  # EPIC_Sounds_train.csv.
        c.validation_annotations = ""  # EPIC_Sounds_validation.csv.
        c.test_annotations = ""  # annotation CSV of eval.test_split "test" ("" none).
        c.clip_secs = 10.0  # crop length: audio_length / 100 seconds.
        return c

    @classmethod
    def split_key(cls, split: str) -> str:
        return f"epic_sounds.{split}_annotations"

    @classmethod
    def needed_files(cls, data: ml_collections.ConfigDict, splits: Sequence[str]) -> list[tuple[str, str, str]]:
        """Each split's annotation list, and the audio file."""
        return [*super().needed_files(data, splits), ("epic_sounds.hdf5", data.epic_sounds.hdf5, "audio HDF5 file")]

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, split: str) -> EpicSoundsSource:
        return cls(data.epic_sounds[f"{split}_annotations"], data.epic_sounds.hdf5, num_classes=data.num_classes,
                   sample_rate=data.sample_rate, clip_secs=data.epic_sounds.clip_secs)

    def __getstate__(self) -> dict[str, Any]:
        # An open h5py file cannot be pickled into worker processes; reopen there.
        return {**self.__dict__, "_h5": None}

    def load_audio(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, int]:
        """Reads the segment (cropped as the class docstring says) as ``(1, samples)``."""
        import h5py

        key = self._records[index].key
        video_id, start, stop = self._segments[index]
        try:
            if self._h5 is None:
                self._h5 = h5py.File(self.hdf5_path, "r")
            samples = self._h5[video_id]
            if stop - start < self.clip_samples:
                clip = samples[start:stop]
            else:
                delta = stop - start - self.clip_samples
                offset = rng.uniform(0, delta) if rng is not None else 0.0
                first = int(start + offset)
                clip = samples[first : first + self.clip_samples - 1]
        except Exception as e:  # noqa: BLE001 - any HDF5 failure names the segment.
            raise audio.AudioLoadError(
                f"{self.hdf5_path}:{key}", f"cannot read segment ({e})"
            ) from e
        clip = np.asarray(clip, dtype=np.float32)
        if clip.size == 0:
            raise audio.AudioLoadError(f"{self.hdf5_path}:{key}", "segment has no samples", "empty")
        return clip[None, :], self.sample_rate
