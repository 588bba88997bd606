"""A TFDS audio dataset as a source (``config.data.source == "tfds"``), read through
``tfds.data_source`` (ArrayRecord), e.g. ``speech_commands``; its settings are ``config.data.tfds.*``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from aum_jax.core import logs
from aum_jax.data.features import audio
from aum_jax.data.records import ClipRecord
from aum_jax.data.sources.base import DataNotFoundError, SourceKind


class TfdsSource(SourceKind):
    """A TFDS audio dataset read with ``tfds.data_source`` (ArrayRecord format).

    The dataset must be prepared in ``data_dir`` (``tfds build`` or
    ``builder.download_and_prepare(file_format="array_record")``); one that is not is a
    :class:`DataNotFoundError` (nothing is downloaded). Integer audio is
    scaled to [-1, 1) as torchaudio does (int16 / 32768). TFDS finds its own files: none
    are checked before a run.
    """

    name = "tfds"
    random_crops = False

    def __init__(
        self,
        name: str,
        split: str,
        data_dir: str | None = None,
        audio_key: str = "audio",
        label_key: str = "label",
    ):
        logs.import_tensorflow()
        import tensorflow_datasets as tfds  # heavy import (TensorFlow), only when used.

        self.dataset, self.split = name, split
        self.audio_key, self.label_key = audio_key, label_key
        try:  # nothing is downloaded at run time: a dataset not prepared is refused.
            info = tfds.builder(name, data_dir=data_dir).info
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # noqa: BLE001 - an unknown name, a dataset not prepared, a builder's failed import.
            raise DataNotFoundError(f"TFDS dataset {name!r} ({split}) cannot be opened, is it prepared in "
                                    f"{data_dir or 'the TFDS default data_dir'} (tfds build {name} "
                                    f"--file_format=array_record)? {type(e).__name__}: {e}") from e
        self.num_classes = int(info.features[label_key].num_classes)
        self.class_names = list(info.features[label_key].names)
        self.sample_rate = int(info.features[audio_key].sample_rate)
        self._last: tuple[int, Any] | None = None  # the last decoded (index, record).

    @staticmethod
    def config() -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.name = ""  # TFDS dataset name, e.g. "speech_commands".
        c.data_dir = ""  # TFDS data_dir; "" = the TFDS default.
        c.train_split = "train"  # TFDS training split.
        c.validation_split = "validation"  # TFDS validation split.
        c.test_split = ""  # TFDS split of eval.test_split "test" ("" none).
        return c

    @classmethod
    def split_key(cls, split: str) -> str:
        return f"tfds.{split}_split"

    @classmethod
    def needed_files(cls, data: ml_collections.ConfigDict, splits: Sequence[str]) -> list[tuple[str, str, str]]:
        return []  # TFDS checks its own files.

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, split: str) -> TfdsSource:
        return cls(data.tfds.name, data.tfds[f"{split}_split"], data.tfds.data_dir or None)

    def __len__(self) -> int:
        return len(self._source)

    def _key(self, index: int) -> str:
        return f"{self.dataset}/{self.split}/{index}"

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
