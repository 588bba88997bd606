"""A folder of your own clips as a source: one class per folder, single-label.

    ROOT/<class name>/<clip>.wav|flac|...                       each clip's split from a hash of its path
    ROOT/train/<class name>/<clip>, ROOT/validation/..., ROOT/test/...   the splits as laid out

Clips may sit in subfolders of their class folder. Without the split level, a clip's split
is decided by the SHA-256 of its path relative to ROOT (``fractions`` of train, validation
and test), so adding or removing clips never moves another one. With it, ``train/`` is
required, a missing ``validation/`` is taken from ``train/`` by the same hash, and a
missing ``test/`` means no test split. The class names are the sorted folder names of the
training clips; every clip has the one class of its folder (multi-label data is out of
scope). Files without an audio extension are left out; a file with one that cannot be
decoded is a bad clip of the input pipeline (counted, and fatal past
``config.data.max_bad_fraction``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging

from aum_jax import audio
from aum_jax.records import ClipRecord, RecordList

SPLITS = ("train", "validation", "test")


class FolderError(ValueError):
    """A folder that cannot serve as a dataset; the message names the path and the fix."""


def split_of(relative_path: str, fractions: Sequence[float]) -> str:
    """The split ("train", "validation" or "test") of a clip, from the SHA-256 of its relative path.

    The first 64 bits of the digest, as a fraction of 2**64, fall in ``[0, train)``,
    ``[train, train + validation)`` or the rest.
    """
    digest = hashlib.sha256(Path(relative_path).as_posix().encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2.0**64
    train, validation = fractions[0], fractions[1]
    return "train" if position < train else "validation" if position < train + validation else "test"


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """``(train, validation, test)``: three shares >= 0 adding up to 1, train and validation > 0."""
    values = tuple(float(f) for f in fractions)
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1) > 1e-6 or min(values[:2]) <= 0:
        raise FolderError(f"folder fractions {tuple(fractions)}: give (train, validation, test) shares >= 0 that "
                          "add up to 1, train and validation above 0")
    return values


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """What a folder holds.

    Attributes:
      root: the folder.
      class_names: sorted class folder names; a clip's label is its index here.
      clips: split -> ``[(path, class index)]`` sorted by path; an absent split has none.
      split_folders: the splits came from ``train/``, ``validation/`` (and ``test/``) folders.
    """

    root: Path
    class_names: tuple[str, ...]
    clips: dict[str, list[tuple[str, int]]]
    split_folders: bool

    def describe(self) -> str:
        """``"3 classes; train 120, validation 15, test 15 clips (by hash)"``."""
        counts = ", ".join(f"{split} {len(self.clips[split])}" for split in SPLITS)
        return f"{len(self.class_names)} classes; {counts} clips (" + (
            "split folders)" if self.split_folders else "split by path hash)")


def _class_clips(folder: Path, extensions: frozenset[str]) -> dict[str, list[Path]]:
    """``{class name: its audio files}`` of the class folders in ``folder``; a class without clips raises."""
    classes: dict[str, list[Path]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        files = [Path(dirpath) / name for dirpath, _, names in os.walk(entry, followlinks=True) for name in names
                 if not name.startswith(".") and name.rsplit(".", 1)[-1].lower() in extensions]
        if not files:
            raise FolderError(f"{entry} has no audio clips ({', '.join('.' + e for e in sorted(extensions))}): "
                              "add clips or remove the folder")
        classes[entry.name] = sorted(files)
    return classes


def scan(root: str | os.PathLike, fractions: Sequence[float], extensions: Sequence[str]) -> FolderLayout:
    """Lists the clips of ``root`` by class and split (see the module docstring).

    Raises:
      FileNotFoundError: ``root`` does not exist.
      FolderError: no class folders, a class folder without clips, fewer than two classes,
        a class of validation/ or test/ that train/ lacks, bad fractions, or a split
        without clips (train, validation).
    """
    root = Path(root).expanduser().absolute()
    fractions = check_fractions(fractions)
    if not root.is_dir():
        raise FileNotFoundError(f"folder {root} does not exist or is not a folder")
    extensions = frozenset(e.lower().lstrip(".") for e in extensions)
    split_folders = (root / "train").is_dir()
    if not split_folders and any((root / s).is_dir() for s in SPLITS[1:]):
        raise FolderError(f"{root} has {' and '.join(s + '/' for s in SPLITS[1:] if (root / s).is_dir())} but no "
                          "train/: with a split level, train/ holds the training clips")
    by_split = {s: _class_clips(root / s, extensions) for s in SPLITS if (root / s).is_dir()} if split_folders \
        else {"": _class_clips(root, extensions)}
    names = tuple(sorted(by_split["train" if split_folders else ""]))
    where = root / "train" if split_folders else root
    if not names:
        raise FolderError(f"{where} has no class folders: lay the clips out as {where}/<class name>/<clip>.wav "
                          "(one folder per class)")
    if len(names) < 2:
        raise FolderError(f"{where} has one class folder ({names[0]}): a classifier needs at least two")
    for split, classes in by_split.items():
        extra = sorted(set(classes) - set(names))
        if extra:
            raise FolderError(f"{root / split} has class folder(s) {', '.join(extra)} that {where} lacks")
    clips: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for split, classes in by_split.items():
        base = root / split if split else root
        for name, files in classes.items():
            for path in files:
                hashed = split_of(str(path.relative_to(base)), fractions)
                target = split or hashed
                if split == "train" and "validation" not in by_split and hashed == "validation":
                    target = "validation"  # no validation/: taken from train/.
                clips[target].append((str(path), names.index(name)))
    layout = FolderLayout(root, names, {s: sorted(c) for s, c in clips.items()}, split_folders)
    _check_splits(layout)
    logging.info("Folder %s: %s", root, layout.describe())
    return layout


def _check_splits(layout: FolderLayout) -> None:
    """Raises FolderError for an empty validation split or a class without training clips."""
    if not layout.clips["validation"]:
        raise FolderError(f"{layout.root}: no clip falls in the validation split; add clips, or a validation/ "
                          "folder, or raise the validation share (config.data.folder_fractions)")
    in_train = {label for _, label in layout.clips["train"]}
    missing = [name for i, name in enumerate(layout.class_names) if i not in in_train]
    if missing:
        raise FolderError(f"{layout.root}: class(es) {', '.join(missing)} have no training clip; add clips"
                          + ("" if layout.split_folders else " (a clip's split comes from a hash of its path)"))


class FolderSource(RecordList):
    """The clips of one split of a :class:`FolderLayout`, each labelled with its class folder."""

    random_crops = False

    def __init__(self, layout: FolderLayout, split: str):
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; a folder has {', '.join(SPLITS)}")
        self.class_names = list(layout.class_names)
        self.num_classes = len(self.class_names)
        self._records = [ClipRecord(key=path, labels=(label,)) for path, label in layout.clips[split]]

    def load_audio(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, int]:
        """Decodes the clip's file with :func:`aum_jax.audio.load_waveform`."""
        del rng
        return audio.load_waveform(self._records[index].key)
