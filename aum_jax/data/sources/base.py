"""What a kind of data source declares to the registry (:mod:`aum_jax.data.sources.registry`).

A kind is a source class (a grain random-access source of :class:`aum_jax.data.records.ClipRecord`
s, see :class:`aum_jax.data.records.AudioSource`) that also says, as class attributes and
class methods of :class:`SourceKind`:

* ``name``: the value of ``config.data.source`` that picks it;
* :meth:`SourceKind.config`: its section ``config.data.<name>`` with defaults (empty: none);
* :meth:`SourceKind.split_key`: the ``config.data`` key whose value names a split;
* :meth:`SourceKind.needed_files`: the files a run on some splits reads, checked before it starts;
* :meth:`SourceKind.from_config`: how the source of one split is built;
* :meth:`SourceKind.configure` and :meth:`SourceKind.prepare`: what follows from the data (set in the
  run's derived config, before its checks) and the files made on first use (after them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import ml_collections

from aum_jax.core.errors import UserError
from aum_jax.data.records import AudioSource


class DataNotFoundError(UserError, FileNotFoundError):
    """A datafile, label list or dataset folder of the config does not exist."""


def lookup(data: ml_collections.ConfigDict, key: str) -> Any:
    """The value of the dotted ``key`` (``"tfds.train_split"``) under ``data``; None when absent."""
    node: Any = data
    for part in key.split("."):
        node = node.get(part) if node is not None else None
    return node


class SourceKind:
    """The declarations every registered source class makes (see the module docstring)."""

    name: ClassVar[str]
    split_what: ClassVar[str] = "datafile"  # what the file of a split is, in messages.
    num_unlabelled: int = 0  # clips without labels (a kind that allows them counts them).
    num_unlabelled_by_fraction: int = 0  # a source as read: none taken by config.data.label_fraction.

    @staticmethod
    def config() -> ml_collections.ConfigDict:
        """The section ``config.data.<name>``, each key with its default and a one-line comment."""
        return ml_collections.ConfigDict()

    @classmethod
    def split_key(cls, split: str) -> str:
        """The (dotted) ``config.data`` key naming ``split``."""
        raise NotImplementedError

    @classmethod
    def needed_files(cls, data: ml_collections.ConfigDict, splits: Sequence[str]) -> list[tuple[str, str, str]]:
        """``(config.data key, path, what it is)`` of every file a run on ``splits`` reads.

        The default: the value of each split's key that is set, as a ``split_what``.
        """
        return [(cls.split_key(split), lookup(data, cls.split_key(split)), f"{split} {cls.split_what}")
                for split in splits if lookup(data, cls.split_key(split))]

    @classmethod
    def from_config(cls, data: ml_collections.ConfigDict, split: str) -> AudioSource:
        """The source of ``split`` (its key is set) from the data config ``data``."""
        raise NotImplementedError

    @classmethod
    def configure(cls, config: ml_collections.ConfigDict, workdir: Path) -> Any:
        """Sets in ``config`` (the run's derived copy) what follows from the data; writes nothing.

        Runs before the config is checked. Returns what :meth:`prepare` needs (the default: None).
        """
        del config, workdir

    @classmethod
    def prepare(cls, config: ml_collections.ConfigDict, workdir: Path, configured: Any,
                statistics: Callable[..., Any]) -> None:
        """Makes the kind's first-use files (after the checks) and sets ``config`` to them (the default: none).

        ``statistics`` computes a split's fbank statistics
        (:func:`aum_jax.data.pipeline.norm_stats.fbank_statistics`, which reads through the input
        pipeline, itself built on the registry: passed in, so no source module imports it).
        """
        del config, workdir, configured, statistics
