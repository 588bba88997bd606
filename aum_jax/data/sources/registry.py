"""Random-access audio sources for the grain input pipeline.

Every source is a grain-compatible random-access data source (``len`` and
``__getitem__``) whose items are :class:`ClipRecord` s: a key naming the clip (a
file path, a TFDS id, an EPIC-Sounds annotation id) and its label indices. Audio is
decoded separately by :meth:`AudioSource.load_audio`, so the pipeline can read a
second clip for mixup and can skip clips that fail to decode.

Sources:

* :class:`DatafileSource` -- the AST/AuM JSON datafile
  ``{"data": [{"wav": path, "labels": "mid1,mid2"}]}`` with a
  ``class_labels_indices.csv`` (``index,mid,display_name``).
* :class:`TfdsSource` -- any TFDS audio dataset read through ``tfds.data_source``
  (ArrayRecord), e.g. ``speech_commands``.
* :class:`EpicSoundsSource` -- EPIC-Sounds segments cut from the per-video audio
  arrays of one HDF5 file, as listed in an annotation CSV.
* :class:`aum_jax.data.sources.folder_source.FolderSource` -- a folder of clips, one class per folder.

:func:`make_source` builds the source named by a data config (``configs/data.py``).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from aum_jax.core.errors import UserError
from aum_jax.core import storage
from aum_jax.data.features import audio
from aum_jax.data.records import AudioSource, ClipRecord, RecordList
from aum_jax.data.sources import folder_source

__all__ = [
    "AudioSource",
    "ClipRecord",
    "DatafileSource",
    "EpicSoundsSource",
    "TfdsSource",
    "load_label_csv",
    "load_sample_weights",
    "make_source",
    "timestamp_to_seconds",
    "write_datafile",
]


def load_label_csv(label_csv: str | os.PathLike) -> tuple[dict[str, int], list[str]]:
    """Reads ``index,mid,display_name`` rows.

    Returns:
      ``(mid -> index, display names in index order)``.

    Raises:
      ValueError: missing columns, or indices that are not ``0..n-1``.
    """
    with open(label_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise ValueError(f"{label_csv}: expected columns index,mid,display_name")
    index_of = {row["mid"]: int(row["index"]) for row in rows}
    if sorted(index_of.values()) != list(range(len(rows))):
        raise ValueError(f"{label_csv}: indices must be 0..{len(rows) - 1}, each once")
    names = [""] * len(rows)
    for row in rows:
        names[int(row["index"])] = row["display_name"]
    return index_of, names


def load_sample_weights(weight_csv: str | os.PathLike, num_records: int) -> np.ndarray:
    """Reads a ``*_weight.csv`` (one weight per line), shape ``(num_records,)`` float64.

    Raises:
      ValueError: wrong count, or negative / non-finite / all-zero weights.
    """
    weights = np.atleast_1d(np.loadtxt(weight_csv, delimiter=",", dtype=np.float64))
    if weights.shape != (num_records,):
        raise ValueError(
            f"{weight_csv}: has {weights.size} weights for a datafile of {num_records} clips"
        )
    if not np.all(np.isfinite(weights)) or np.any(weights < 0) or weights.sum() <= 0:
        raise ValueError(f"{weight_csv}: weights must be finite, >= 0 and not all zero")
    return weights


def write_datafile(path: str | os.PathLike, entries: Sequence[tuple[str, Sequence[str]]]) -> None:
    """Writes an AST/AuM datafile: ``entries`` are ``(wav path, [label mids])``.

    Replaced atomically (:func:`aum_jax.core.storage.write_text`), so a reader never sees half a file.
    """
    data = [{"wav": wav, "labels": ",".join(mids)} for wav, mids in entries]
    storage.write_text(path, json.dumps({"data": data}, indent=1))


class DatafileSource(RecordList):
    """The AST/AuM JSON datafile with its label CSV.

    Relative ``wav`` paths resolve against the JSON file's folder. Every label id is
    checked when the source is built: an unknown one raises ``ValueError`` naming the
    clip and the label.
    """

    random_crops = False

    def __init__(self, datafile: str | os.PathLike, label_csv: str | os.PathLike):
        self.datafile = os.path.expanduser(os.fspath(datafile))
        index_of, self.class_names = load_label_csv(label_csv)
        self.num_classes = len(self.class_names)
        with open(self.datafile, encoding="utf-8") as f:
            entries = json.load(f)["data"]
        root = os.path.dirname(os.path.abspath(self.datafile))
        records = []
        for i, entry in enumerate(entries):
            path = os.path.join(root, os.path.expanduser(entry["wav"]))
            labels = []
            for mid in entry["labels"].split(","):
                if mid not in index_of:
                    raise ValueError(
                        f"{self.datafile}: clip {i} ({path}) has label {mid!r}, which is "
                        f"not in {os.fspath(label_csv)}"
                    )
                labels.append(index_of[mid])
            records.append(ClipRecord(key=path, labels=tuple(labels)))
        self._records = records

    def load_audio(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, int]:
        """Decodes the clip's file with :func:`aum_jax.data.features.audio.load_waveform`."""
        del rng
        return audio.load_waveform(self._records[index].key)


class TfdsSource:
    """A TFDS audio dataset read with ``tfds.data_source`` (ArrayRecord format).

    The dataset must be prepared in ``data_dir`` (``tfds build`` or
    ``builder.download_and_prepare(file_format="array_record")``). Integer audio is
    scaled to [-1, 1) as torchaudio does (int16 / 32768).
    """

    random_crops = False

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        audio_key: str = "audio",
        label_key: str = "label",
    ):
        import tensorflow_datasets as tfds  # heavy import, only when used.

        self.name, self.split = name, split
        self.audio_key, self.label_key = audio_key, label_key
        info = tfds.builder(name, data_dir=data_dir).info
        self.num_classes = int(info.features[label_key].num_classes)
        self.class_names = list(info.features[label_key].names)
        self.sample_rate = int(info.features[audio_key].sample_rate)
        self._source = tfds.data_source(name, split=split, data_dir=data_dir)
        self._last: tuple[int, Any] | None = None  # the last decoded (index, record).

    def __len__(self) -> int:
        return len(self._source)

    def _key(self, index: int) -> str:
        return f"{self.name}/{self.split}/{index}"

    def _record(self, index: int) -> Any:
        """The decoded record; the pipeline asks for the label, then the audio, of one index."""
        last = self._last
        if last is not None and last[0] == index:
            return last[1]
        record = self._source[index]
        self._last = (index, record)
        return record

    def __getitem__(self, index: int) -> ClipRecord:
        label = int(self._record(index)[self.label_key])
        if not 0 <= label < self.num_classes:
            raise ValueError(f"{self._key(index)}: label {label} outside 0..{self.num_classes - 1}")
        return ClipRecord(key=self._key(index), labels=(label,))

    def load_audio(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[np.ndarray, int]:
        """Returns the example's audio as ``(1, samples)`` float32."""
        del rng
        try:
            samples = np.asarray(self._record(index)[self.audio_key])
        except Exception as e:  # noqa: BLE001 - any reader failure names the example.
            raise audio.AudioLoadError(self._key(index), f"cannot read example ({e})") from e
        if samples.size == 0:
            raise audio.AudioLoadError(self._key(index), "example has no samples", "empty")
        if np.issubdtype(samples.dtype, np.integer):
            scale = float(np.iinfo(samples.dtype).max) + 1.0
            samples = samples.astype(np.float32) / scale
        samples = samples.astype(np.float32)
        # TFDS stores audio as (samples,) or, multi-channel, as (samples, channels).
        samples = samples[None, :] if samples.ndim == 1 else samples.T
        return np.ascontiguousarray(samples), self.sample_rate


def timestamp_to_seconds(timestamp: str) -> float:
    """``"HH:MM:SS.fff"`` -> seconds (the EPIC annotation time format)."""
    hours, minutes, seconds = timestamp.split(":")
    whole, _, millis = seconds.partition(".")
    return int(hours) * 3600 + int(minutes) * 60 + int(whole) + float(millis or 0) / 1000


class EpicSoundsSource(RecordList):
    """EPIC-Sounds: labelled segments of the per-video audio in one HDF5 file.

    The HDF5 file holds one 1-D dataset per ``video_id`` (24 kHz samples). The
    annotation CSV has ``annotation_id, video_id, start_timestamp, stop_timestamp,
    class_id`` columns (the official ``EPIC_Sounds_*.csv``). As the original loader
    does, sample positions are ``int(seconds * sample_rate)``; a segment longer than
    ``clip_secs`` is cropped to a ``clip_secs`` window (minus one sample), at a
    uniformly random start for training and at the segment start for evaluation; a
    shorter segment is used whole.
    """

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


# How each dataset's files are made: the step of data/README.md.
PREP_STEPS = {
    "audioset": "python scripts/prep_audioset.py --segments_csv <*_segments.csv> --audio_dir <clips> "
                "--out data/audioset/datafiles/<name>.json (data/README.md, AudioSet)",
    "vggsound": "python scripts/prep_vggsound.py --csv vggsound.csv --audio_dir <wavs> (data/README.md, VGGSound)",
    "voxceleb": "python scripts/prep_voxceleb.py --iden_split iden_split.txt --wav_dir <wav root> "
                "(data/README.md, VoxCeleb1)",
    "speechcommands": "python scripts/prep_speechcommands.py --root <speech_commands_v0.02> "
                      "(data/README.md, Speech Commands V2)",
    "epic_sounds": "put or link the EPIC-Sounds annotation CSVs and EPIC-KITCHENS-100_audio.hdf5 in "
                   "data/epic_sounds/ (data/README.md, EPIC-Sounds)",
}
PREP_STEPS["audioset_20k"] = PREP_STEPS["audioset"]
WEIGHT_STEP = ("python scripts/gen_weight_file.py --datafile data/audioset/datafiles/unbalanced.json "
               "(data/README.md, AudioSet)")


class DataNotFoundError(UserError, FileNotFoundError):
    """A datafile, label list or dataset folder of the config does not exist."""


def split_key(config: ml_collections.ConfigDict, split: str) -> str:
    """The data-config key naming ``split``: ``<split>_datafile``, ``tfds_<split>_split``,
    ``epic_<split>_annotations`` or (every split) ``folder``."""
    key = {
        "datafile": f"{split}_datafile",
        "tfds": f"tfds_{split}_split",
        "epic_sounds": f"epic_{split}_annotations",
        "folder": "folder",
    }.get(config.source)
    if key is None:
        raise ValueError(f"unknown data source {config.source!r}")
    return key


def check_files(config: ml_collections.ConfigDict, splits: Sequence[str]) -> None:
    """Raises :class:`DataNotFoundError` for the first file of ``splits`` that does not exist.

    The message names the path, the config key, the dataset and the ``data/README.md``
    step that makes the file. TFDS datasets are left to TFDS.
    """
    needed: list[tuple[str, str, str]] = []  # (key, path, what)
    for split in splits:
        key = split_key(config, split)
        if config.source != "tfds" and config.get(key):
            what = {"epic_sounds": "annotation list", "folder": "clip folder"}.get(config.source, "datafile")
            needed.append((key, config[key], f"{split} {what}"))
    if config.source == "datafile" and config.get("label_csv"):
        needed.append(("label_csv", config.label_csv, "label list"))
    if config.source == "epic_sounds":
        needed.append(("epic_hdf5", config.epic_hdf5, "audio HDF5 file"))
    if "train" in splits and config.get("balanced_sampling") and config.get("weight_csv"):
        needed.append(("weight_csv", config.weight_csv, "sampling-weight file"))
    for key, path, what in needed:
        if os.path.exists(os.path.expanduser(path)):
            continue
        step = WEIGHT_STEP if key == "weight_csv" else PREP_STEPS.get(config.name)
        how = f"Create it with: {step}" if step else "See data/README.md for how to prepare the data"
        raise DataNotFoundError(
            f"{path} does not exist: it is the {config.name} {what} (config.data.{key}). "
            f"{how}; or point --config.data.{key} at your copy."
        )


def make_source(config: ml_collections.ConfigDict, split: str) -> AudioSource:
    """Builds the source of ``split`` (``"train"``, ``"validation"``, ``"test"``) from a data config.

    Args:
      config: a data config (``configs/data.py``); ``config.source`` picks the kind and
        ``<split>_datafile`` / ``tfds_<split>_split`` / ``epic_<split>_annotations``
        names the split.
      split: the split name.

    Raises:
      ValueError: unknown source kind or split, or a source whose class count differs
        from ``config.num_classes``.
    """
    kind = config.source
    key = split_key(config, split)
    if not config.get(key):
        raise ValueError(f"{config.name}: no {split!r} split (config.{key} is unset)")
    if kind == "datafile":
        source: AudioSource = DatafileSource(config[key], config.label_csv)
    elif kind == "folder":
        layout = folder_source.scan(config.folder, config.folder_fractions, config.folder_extensions)
        source = folder_source.FolderSource(layout, split)
    elif kind == "tfds":
        source = TfdsSource(
            config.tfds_name, config[key], config.tfds_data_dir or None
        )
    else:
        source = EpicSoundsSource(
            config[key],
            config.epic_hdf5,
            num_classes=config.num_classes,
            sample_rate=config.sample_rate,
            clip_secs=config.epic_clip_secs,
        )
    if source.num_classes != config.num_classes:
        raise ValueError(
            f"{config.name}: the {split} source has {source.num_classes} classes but "
            f"config.num_classes is {config.num_classes}"
        )
    return source

