"""Stored teacher logits: a folder that ``scripts/teacher_logits.py`` (or any framework) writes
once and a distilled run reads instead of running its teacher (``config.distill.logits``).

The folder holds three files:

- ``logits.npy``: ``(N, C)`` float32, one row per clip, the teacher's logits (before any
  softmax or sigmoid);
- ``clips.txt``: ``N`` lines, the clip each row belongs to, named as aum-jax names it
  (:attr:`aum_jax.data.records.ClipRecord.key`: a datafile's ``wav`` resolved against the
  datafile's folder, a folder source's file path, ``name/split/index`` for TFDS);
- ``teacher.json``: ``{"num_classes": C, "class_names": [...] (optional), "teacher": what it
  is, ...}``.

A NumPy ``.npy`` rather than ArrayRecord: memory-mapped, any clip's row is read on demand with
no per-record decoding (grain's workers share the page cache; AudioSet's 2 M x 527 rows are
4.2 GB on disk, never loaded whole), and any framework writes it with NumPy alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special

from aum_jax.core import storage

LOGITS_FILE, CLIPS_FILE, INFO_FILE = "logits.npy", "clips.txt", "teacher.json"
FILES = (LOGITS_FILE, CLIPS_FILE, INFO_FILE)  # all a stored-logits folder holds.


def normalised_key(key: str) -> str:
    """A clip key as the table looks it up: file paths absolute and normalised, other keys as they are."""
    return os.path.normpath(key) if os.path.isabs(key) else key


def write(folder: str | os.PathLike, keys: Sequence[str], logits: np.ndarray, info: dict[str, Any]) -> None:
    """Writes a stored-logits folder whole (built beside it and renamed into place).

    Args:
      folder: the folder to write: new, empty, or an earlier stored-logits folder (replaced);
        a folder holding anything else is refused (:class:`aum_jax.core.storage.OutputExistsError`).
      keys: the ``N`` clip keys.
      logits: ``(N, C)`` teacher logits.
      info: what ``teacher.json`` records besides ``num_classes``.
    """
    folder = Path(folder)
    logits = np.asarray(logits, np.float32)
    if logits.ndim != 2 or len(keys) != len(logits):
        raise ValueError(f"logits of shape {logits.shape} for {len(keys)} clips")
    with storage.staged_dir(folder, FILES) as staging:
        np.save(staging / LOGITS_FILE, logits)
        (staging / CLIPS_FILE).write_text("".join(f"{key}\n" for key in keys))
        (staging / INFO_FILE).write_text(json.dumps({**info, "num_classes": int(logits.shape[1])}, indent=1))


class StoredLogits:
    """A stored-logits folder, read: each clip's row and the targets it gives at a temperature.

    Opening it reads every row once (memory-mapped, in blocks) to refuse NaN or Inf logits: they give
    only non-finite targets, and every step with such a clip would be skipped.

    Raises (when built):
      ValueError: a folder without its three files, whose files disagree (naming the file), or with rows
        that hold NaN or Inf (their count, and the first rows with their clips).
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(os.path.expanduser(os.fspath(folder)))
        for name in (LOGITS_FILE, CLIPS_FILE, INFO_FILE):
            if not (self.folder / name).is_file():
                raise ValueError(f"{self.folder} holds no {name}: not a folder of stored teacher logits "
                                 "(write one with scripts/teacher_logits.py)")
        self.info = storage.read_json(self.folder / INFO_FILE)
        keys = (self.folder / CLIPS_FILE).read_text().splitlines()
        self._row_of = {normalised_key(key): row for row, key in enumerate(keys)}
        shape = self._open().shape
        if len(shape) != 2 or shape[0] != len(keys) or shape[1] != self.info.get("num_classes"):
            raise ValueError(f"{self.folder / LOGITS_FILE} holds logits of shape {tuple(shape)}, but "
                             f"{CLIPS_FILE} names {len(keys)} clips and {INFO_FILE} says "
                             f"{self.info.get('num_classes')} classes")
        self.num_classes = int(shape[1])
        self.class_names = tuple(self.info.get("class_names") or ())
        self._check_finite(keys)
        self._logits: np.ndarray | None = None

    def _check_finite(self, keys: list[str]) -> None:
        """Raises ValueError naming the rows (and their clips) whose logits are not all finite."""
        logits = self._open()
        block = max(1, (1 << 22) // max(1, self.num_classes))  # rows of 16 MB of float32 at a time.
        bad: list[int] = []
        for start in range(0, len(logits), block):
            rows = np.asarray(logits[start:start + block])
            bad.extend(start + int(i) for i in np.flatnonzero(~np.isfinite(rows).all(axis=1)))
        if bad:
            shown = ", ".join(f"{row} ({keys[row]})" for row in bad[:3]) + (", ..." if len(bad) > 3 else "")
            raise ValueError(f"{self.folder / LOGITS_FILE}: {len(bad)} of its {len(keys)} rows hold NaN or Inf "
                             f"logits, which give no target to learn (rows {shown}); write the teacher's logits again")

    def _open(self) -> np.ndarray:
        try:
            return np.load(self.folder / LOGITS_FILE, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"{self.folder / LOGITS_FILE} cannot be read: {e}") from e

    def __len__(self) -> int:
        return len(self._row_of)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_logits": None}  # a worker maps the file again.

    def row_of(self, key: str) -> int | None:
        """The row of clip ``key``, or None if the folder has none."""
        return self._row_of.get(normalised_key(key))

    def logits(self, row: int) -> np.ndarray:
        """``(C,)`` float32: the stored logits of ``row``."""
        if self._logits is None:
            self._logits = self._open()
        return np.asarray(self._logits[row], np.float32)


def targets(logits: np.ndarray, temperature: float, kind: str) -> np.ndarray:
    """Logits ``(..., C)`` -> float32 targets: ``softmax(z / T)`` ("softmax") or ``sigmoid(z / T)`` ("sigmoid").

    NumPy (scipy) rather than :func:`aum_jax.training.distillation.targets_from_logits`: it runs per
    clip in the input pipeline's workers, before mixup mixes two clips' targets.
    """
    z = np.asarray(logits, np.float64) / temperature
    return (scipy.special.softmax(z, axis=-1) if kind == "softmax" else scipy.special.expit(z)).astype(np.float32)
