"""Class names and per-clip weights: the label CSV (``index,mid,display_name``), the
``*_weight.csv`` of balanced sampling, and the names a model or a report shows."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from aum_jax.core.errors import UserError
from aum_jax.data.features.preprocessing import Preprocessing


def class_names(names: Sequence[str], num_classes: int) -> list[str]:
    """``names``, or the class indices as text (``"0"``, ``"1"``, ...) when there are none."""
    return list(names) or [str(i) for i in range(num_classes)]


def load_label_csv(label_csv: str | os.PathLike) -> tuple[dict[str, int], list[str]]:
    """Reads ``index,mid,display_name`` rows.

    Returns:
      ``(mid -> index, display names in index order)``.

    Raises:
      ValueError: missing columns, or indices that are not ``0..n-1``.
    """
    with open(label_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    if not {"index", "mid", "display_name"} <= set(reader.fieldnames or ()):
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


class LabelNamesError(UserError, ValueError):
    """A label CSV whose names do not match the configured class count."""


def training_preprocessing(config: ml_collections.ConfigDict) -> Preprocessing:
    """The preprocessing a training config stores beside its model: its data settings, loss and label names.

    Raises:
      LabelNamesError: ``config.data.label_csv`` names another number of classes than
        ``config.data.num_classes``.
    """
    names: list[str] = []
    if config.data.get("label_csv"):
        names = load_label_csv(os.path.expanduser(config.data.label_csv))[1]
        if len(names) != config.data.num_classes:
            raise LabelNamesError(f"config.data.label_csv={config.data.label_csv} names {len(names)} classes, but "
                                  f"config.data.num_classes is {config.data.num_classes}")
    return Preprocessing.from_data_config(config.data, config.train.loss, names)
