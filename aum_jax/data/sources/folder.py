"""A folder of your own clips as a source (``config.data.source == "folder"``): one class per
folder, single-label, laid out as :mod:`aum_jax.data.sources.folder_layout` reads it; its settings
are ``config.data.folder.*``. On first use its class names, input length and fbank statistics
are fixed in the workdir (:mod:`aum_jax.data.sources.folder_setup`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from aum_jax.data.features import audio
from aum_jax.data.records import ClipRecord, RecordList
from aum_jax.data.sources import folder_layout, folder_setup
from aum_jax.data.sources.base import SourceKind


class FolderSource(RecordList, SourceKind):
    """The clips of one split of a :class:`aum_jax.data.sources.folder_layout.FolderLayout`,
    each labelled with its class folder."""

    name = "folder"
    split_what = "clip folder"
    random_crops = False

    def __init__(self, layout: folder_layout.FolderLayout, split: str):
        if split not in folder_layout.SPLITS:
            raise ValueError(f"unknown split {split!r}; a folder has {', '.join(folder_layout.SPLITS)}")
        self.class_names = list(layout.class_names)
        self.num_classes = len(self.class_names)
        self._records = [ClipRecord(key=path, labels=(label,) if label >= 0 else ())
                         for path, label in layout.clips[split]]
        self.num_unlabelled = sum(not r.labels for r in self._records)  # the clips of unlabelled/.

    @staticmethod
    def config() -> ml_collections.ConfigDict:
        c = ml_collections.ConfigDict()
        c.root = ""  # ROOT/<class>/<clip>, or ROOT/{train,validation,test}/<class>/<clip> (not in the original).
        c.fractions = (0.8, 0.1, 0.1)  # train, validation, test shares of a folder without split folders, by a hash of each path.
        c.extensions = ("wav", "flac", "ogg", "mp3", "opus", "m4a", "aiff", "aif")  # what counts as a clip (any case).
        c.max_audio_length = 1024  # audio_length 0: the longest training clip's frames, at most this (10.24 s).
        c.stats_batch_size = 1000  # clips per batch of the training split's fbank statistics (get_norm_stats.py's).
        c.classes_required = True  # two class folders and validation clips needed; False (configs/pretrain.py): labels ignored.
        return c

    @classmethod
    def split_key(cls, split: str) -> str:
        return "folder.root"  # one folder holds every split.

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, split: str) -> FolderSource:
        folder = data.folder
        return cls(folder_layout.scan(folder.root, folder.fractions, folder.extensions,
                                      classes_required=folder.classes_required), split)

    @classmethod
    def configure(cls, config: ml_collections.ConfigDict, workdir: Path) -> folder_layout.FolderLayout:
        """Scans the folder and sets the class count, label CSV, input length (:func:`folder_setup.configure`)."""
        return folder_setup.configure(config, workdir)

    @classmethod
    def prepare(cls, config: ml_collections.ConfigDict, workdir: Path, configured: folder_layout.FolderLayout,
                statistics: Callable[..., Any]) -> None:
        """The workdir's record and label CSV, made on first use (:func:`folder_setup.prepare`)."""
        folder_setup.prepare(config, workdir, configured, cls(configured, "train"), statistics)

    def load_audio(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        """Decodes the clip's file with :func:`aum_jax.data.features.audio.load_waveform`."""
        del rng
        return audio.load_waveform(self._records[index].key)
