"""How a folder of your own clips is laid out: one class per folder, single-label; each clip's split.

    ROOT/<class name>/<clip>.wav|flac|...                       each clip's split from a hash of its path
    ROOT/train/<class name>/<clip>, ROOT/validation/..., ROOT/test/...   the splits as laid out
    ROOT/unlabelled/<clip> (or ROOT/train/unlabelled/<clip>)     training clips without labels

Clips may sit in subfolders of their class folder. Without the split level, a clip's split
is decided by the SHA-256 of its path relative to ROOT (``fractions`` of train, validation
and test), so adding or removing clips never moves another one. With it, ``train/`` is
required, a missing ``validation/`` is taken from ``train/`` by the same hash, and a
missing ``test/`` means no test split. The class names are the sorted folder names of the
training clips; every clip has the one class of its folder (multi-label data is out of
scope). A folder named ``unlabelled`` beside the class folders of the training clips holds
training clips without a class (for distillation, ``config.distill``); it is no class, and
validation and test clips always have one. Files without an audio extension are left out; a file with one that cannot be
decoded is a bad clip of the input pipeline (counted, and fatal past
``config.data.max_bad_fraction``).

Links are followed, each real folder once: a link to a folder already scanned (``loop ->
..``, the root, a class folder, a folder reached through another link) is not entered again,
with a warning. Each real file is one clip, whatever the links that reach it: a file that lies
in a class folder (of any split) has that folder's class and split and its path there, so a
link into another class's (or split's) folder adds no clip and moves none; a file outside
every class folder (a link to other storage) has the class of the first class folder, in
sorted order, that reaches it. Links that reach a clip listed elsewhere are named in one
warning. A link to nothing (dangling) is left out with a warning naming it; a class folder
that is the same folder as the root, a split folder or another class folder is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from absl import logging

from aum_jax.core.errors import UserError

SPLITS = ("train", "validation", "test")
UNLABELLED = "unlabelled"  # the folder of training clips without a class.


class FolderError(UserError, ValueError):
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
      clips: split -> ``[(path, class index)]`` sorted by path, index -1 for a clip of
        ``unlabelled/`` (training only); an absent split has none.
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


@dataclasses.dataclass(frozen=True)
class _ClassFolder:
    """A class folder as listed under the root: its split ("" without split folders), class and paths."""

    split: str
    name: str
    path: Path  # as listed, e.g. ROOT/train/cat.
    real: str  # its real path (links resolved).


def _identity(path: Path) -> tuple[int, int]:
    """The real folder (or file) ``path`` names, links followed: ``(st_dev, st_ino)``."""
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _warn_dangling(path: Path) -> None:
    logging.warning("%s is a link to %s, which does not exist: left out", path, os.readlink(path))


def _class_folders(folder: Path, split: str, scanned: dict[tuple[int, int], Path]) -> list[_ClassFolder]:
    """The class folders in ``folder`` (sorted), each added to ``scanned``; one already there raises."""
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink() and not entry.exists():
            _warn_dangling(entry)
            continue
        if not entry.is_dir():
            continue
        identity = _identity(entry)
        if identity in scanned:
            raise FolderError(f"{entry} is the same folder as {scanned[identity]} (a link): give each class a "
                              "folder of its own")
        scanned[identity] = entry
        found.append(_ClassFolder(split, entry.name, entry, os.path.realpath(entry)))
    return found


def _walk(folder: _ClassFolder, extensions: frozenset[str], scanned: dict[tuple[int, int], Path]) -> list[Path]:
    """The audio files under ``folder``, links followed into folders not in ``scanned`` (which it extends)."""
    files = []
    for dirpath, dirnames, names in os.walk(folder.path, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            path = Path(dirpath) / name
            identity = _identity(path)
            if identity in scanned:
                if path.is_symlink():
                    logging.warning("%s is a link to %s, which is scanned already: not followed again (each "
                                    "clip is listed once)", path, scanned[identity])
                continue
            scanned[identity] = path
            kept.append(name)
        dirnames[:] = kept
        for name in sorted(names):
            path = Path(dirpath) / name
            if name.startswith(".") or name.rsplit(".", 1)[-1].lower() not in extensions:
                continue
            if not path.exists():
                _warn_dangling(path)
                continue
            files.append(path)
    return files


def _list_clips(bases: dict[str, Path], root: Path,
                extensions: frozenset[str]) -> dict[str, dict[str, list[Path]]]:
    """``{split: {class name: its clips}}`` of the class folders in ``bases`` (split -> folder), each
    real file once (see the module docstring); a class folder without clips raises."""
    scanned = {_identity(root): root}
    scanned.update({_identity(base): base for base in bases.values()})
    folders = [f for split, base in bases.items() for f in _class_folders(base, split, scanned)]
    by_real = {f.real: f for f in folders}
    reached: dict[str, list[tuple[int, Path]]] = {}  # real file -> (folder index, path) of each way to it.
    for index, folder in enumerate(folders):
        for path in _walk(folder, extensions, scanned):
            reached.setdefault(os.path.realpath(path), []).append((index, path))
    clips: dict[str, dict[str, list[Path]]] = {split: {} for split in bases}
    for folder in folders:
        clips[folder.split][folder.name] = []
    aliases = []
    for real, ways in reached.items():
        home, parent = None, os.path.dirname(real)
        while home is None and parent != os.path.dirname(parent):
            home, parent = by_real.get(parent), os.path.dirname(parent)
        if home is not None:  # in a class folder: its class and split, at its path there.
            clip = home.path / os.path.relpath(real, home.real)
        else:  # elsewhere: the first class folder that reaches it.
            first, clip = min(ways)
            home = folders[first]
        clips[home.split][home.name].append(clip)
        aliases += [(path, clip) for _, path in ways if path != clip]
    if aliases:
        aliases.sort()
        shown = ", ".join(f"{path} is {clip}" for path, clip in aliases[:5])
        logging.warning("%d link(s) reach clips listed at their real place, each counted once there: %s%s",
                        len(aliases), shown, f" (and {len(aliases) - 5} more)" if len(aliases) > 5 else "")
    for folder in folders:
        if not clips[folder.split][folder.name]:
            raise FolderError(f"{folder.path} has no audio clips ({', '.join('.' + e for e in sorted(extensions))}): "
                              "add clips or remove the folder")
        clips[folder.split][folder.name].sort()
    return clips


def scan(root: str | os.PathLike, fractions: Sequence[float], extensions: Sequence[str], *,
         classes_required: bool = True) -> FolderLayout:
    """Lists the clips of ``root`` by class and split (see the module docstring).

    Without ``classes_required`` (a run that ignores labels) class folders and validation clips
    may be missing: the training clips are those of the class folders and ``unlabelled/``.

    Raises:
      FileNotFoundError: ``root`` does not exist.
      FolderError: no class folders, a class folder without clips, a class folder that is
        the same folder as another (a link), fewer than two classes, a class of validation/
        or test/ that train/ lacks, bad fractions, or a split without clips (train,
        validation).
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
    bases = {s: root / s for s in SPLITS if (root / s).is_dir()} if split_folders else {"": root}
    by_split = _list_clips(bases, root, extensions)
    names = tuple(sorted(set(by_split["train" if split_folders else ""]) - {UNLABELLED}))
    where = root / "train" if split_folders else root
    if not classes_required and not any(by_split["train" if split_folders else ""].values()):
        raise FolderError(f"{where} has no audio clips in class folders or {UNLABELLED}/")
    if not names and classes_required:
        raise FolderError(f"{where} has no class folders: lay the clips out as {where}/<class name>/<clip>.wav "
                          "(one folder per class)")
    if len(names) == 1 and classes_required:
        raise FolderError(f"{where} has one class folder ({names[0]}): a classifier needs at least two")
    for split, classes in by_split.items():
        if split in ("validation", "test") and UNLABELLED in classes:
            raise FolderError(f"{root / split / UNLABELLED}: validation and test clips need a class; put unlabelled "
                              f"clips in {where / UNLABELLED}")
        extra = sorted(set(classes) - set(names) - {UNLABELLED})
        if extra:
            raise FolderError(f"{root / split} has class folder(s) {', '.join(extra)} that {where} lacks")
    clips: dict[str, list[tuple[str, int]]] = {s: [] for s in SPLITS}
    for split, classes in by_split.items():
        base = root / split if split else root
        for name, files in classes.items():
            if name == UNLABELLED:  # training clips, whatever their hash.
                clips["train"] += [(str(path), -1) for path in files]
                continue
            for path in files:
                hashed = split_of(str(path.relative_to(base)), fractions)
                target = split or hashed
                if split == "train" and "validation" not in by_split and hashed == "validation":
                    target = "validation"  # no validation/: taken from train/.
                clips[target].append((str(path), names.index(name)))
    layout = FolderLayout(root, names, {s: sorted(c) for s, c in clips.items()}, split_folders)
    if classes_required:
        _check_splits(layout)
    logging.info("Folder %s: %s", root, layout.describe())
    return layout


def _check_splits(layout: FolderLayout) -> None:
    """Raises FolderError for an empty validation split or a class without training clips."""
    if not layout.clips["validation"]:
        raise FolderError(f"{layout.root}: no clip falls in the validation split; add clips, or a validation/ "
                          "folder, or raise the validation share (config.data.folder.fractions)")
    in_train = {label for _, label in layout.clips["train"]}
    missing = [name for i, name in enumerate(layout.class_names) if i not in in_train]
    if missing:
        raise FolderError(f"{layout.root}: class(es) {', '.join(missing)} have no training clip; add clips"
                          + ("" if layout.split_folders else " (a clip's split comes from a hash of its path)"))
