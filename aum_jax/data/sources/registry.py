"""The registry of source kinds: ``config.data.source`` -> the class that builds it.

Every kind (:class:`aum_jax.data.sources.base.SourceKind`) is one module of
:mod:`aum_jax.data.sources` and one line of :data:`KINDS`: the data defaults hold each kind's
section (:func:`config_sections`), :func:`check_files` asks the kind which files a run needs and
:func:`make_source` builds a split with it.

* ``datafile`` -- the AST/AuM JSON datafile with its label CSV (:mod:`.datafile`);
* ``tfds`` -- any TFDS audio dataset read through ``tfds.data_source`` (:mod:`.tfds`);
* ``epic_sounds`` -- EPIC-Sounds segments of one HDF5 file (:mod:`.epic_sounds`);
* ``folder`` -- a folder of clips, one class per folder (:mod:`.folder`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ml_collections

from aum_jax.core.errors import UserError
from aum_jax.data.records import AudioSource
from aum_jax.data.sources import record_views
from aum_jax.data.sources.base import DataNotFoundError, SourceKind, lookup
from aum_jax.data.sources.datafile import DatafileSource
from aum_jax.data.sources.epic_sounds import EpicSoundsSource
from aum_jax.data.sources.folder import FolderSource
from aum_jax.data.sources.tfds import TfdsSource

KINDS: dict[str, type[SourceKind]] = {
    DatafileSource.name: DatafileSource,
    TfdsSource.name: TfdsSource,
    EpicSoundsSource.name: EpicSoundsSource,
    FolderSource.name: FolderSource,
}
WEIGHT_STEP = ("python scripts/gen_weight_file.py --datafile data/audioset/datafiles/unbalanced.json "
               "(data/README.md, AudioSet)")


class SourceConfigError(UserError, ValueError):
    """A data config that names no known source kind or split, or whose source does not fit it."""


def kind_of(data: ml_collections.ConfigDict) -> type[SourceKind]:
    """The class of ``data.source``; raises ``SourceConfigError`` for an unknown kind."""
    kind = KINDS.get(data.source)
    if kind is None:
        raise SourceConfigError(f"unknown data source {data.source!r}; choose from {', '.join(KINDS)}")
    return kind


def config_sections() -> dict[str, ml_collections.ConfigDict]:
    """``{kind: its config.data.<kind> section}`` of every kind that has settings."""
    return {name: section for name, kind in KINDS.items() if (section := kind.config())}


def check_files(data: ml_collections.ConfigDict, splits: Sequence[str], prep_step: str = "") -> None:
    """Raises :class:`DataNotFoundError` for the first file of ``splits`` that does not exist.

    The message names the path, the config key, the dataset and how the file is made: ``prep_step``
    (the dataset's step of ``data/README.md``, e.g. ``configs/audioset.py``'s ``PREP_STEP``).
    """
    needed = kind_of(data).needed_files(data, splits)
    if "train" in splits and data.get("balanced_sampling") and data.get("weight_csv"):
        needed.append(("weight_csv", data.weight_csv, "sampling-weight file"))
    for key, path, what in needed:
        if os.path.exists(os.path.expanduser(path)):
            continue
        step = WEIGHT_STEP if key == "weight_csv" else prep_step
        how = f"Create it with: {step}" if step else "See data/README.md for how to prepare the data"
        raise DataNotFoundError(
            f"{path} does not exist: it is the {data.name} {what} (config.data.{key}). "
            f"{how}; or point --config.data.{key} at your copy."
        )


def make_source(data: ml_collections.ConfigDict, split: str) -> AudioSource:
    """Builds the source of ``split`` (``"train"``, ``"validation"``, ``"test"``) from a data config.

    Args:
      data: a data config (``configs/data.py``); ``data.source`` picks the kind, whose
        ``split_key`` names the split's key.
      split: the split name.

    The training split keeps the labels of ``data.label_fraction`` of its clips
    (:func:`aum_jax.data.sources.record_views.keep_label_share`, seeded by ``data.seed``).

    Raises:
      SourceConfigError: unknown source kind or split, a source whose class count differs
        from ``data.num_classes``, or a validation or test split with unlabelled clips.
    """
    kind = kind_of(data)
    key = kind.split_key(split)
    if not lookup(data, key):
        raise SourceConfigError(f"{data.name}: no {split!r} split (config.{key} is unset)")
    source = kind.from_config(data, split)
    if source.num_classes != data.num_classes:
        raise SourceConfigError(
            f"{data.name}: the {split} source has {source.num_classes} classes but "
            f"config.num_classes is {data.num_classes}"
        )
    if split == "train":
        return record_views.keep_label_share(source, data.label_fraction, data.seed)
    if source.num_unlabelled:
        raise SourceConfigError(f"{data.name}: {source.num_unlabelled} clips of the {split} split have no labels "
                         f"(config.{key}); validation and test clips need them")
    return source
