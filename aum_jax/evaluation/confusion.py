"""Confusion matrix of a single-label classifier over a split: computed, printed, plotted.

Rows are true classes, columns predicted classes (argmax of the logits); each row of
the printed table and of the PNG adds up to the clips of that class. The matrix comes
from the outputs of the evaluation pass (:func:`aum_jax.evaluation.evaluate.forward_pass`) that also
gives the split's metrics, so the two always agree.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aum_jax.core import storage
from aum_jax.evaluation.evaluate import Outputs


def confusion_matrix(outputs: Outputs) -> np.ndarray:
    """Counts ``(C, C)`` int64 of (true class, argmax prediction) over a pass with labels.

    The true class of a clip is the argmax of its label vector (single-label data).
    """
    num_classes = outputs.logits.shape[1]
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (outputs.labels.argmax(-1), outputs.logits.argmax(-1)), 1)
    return counts


def format_table(counts: np.ndarray, names: Sequence[str]) -> str:
    """The matrix as text: a row per true class, with its recall; a column per prediction."""
    width = max(3, *(len(n) for n in names), len(str(counts.max()))) + 2
    corner = "true/pred"
    header = f"{corner:<{width + 2}}" + "".join(f"{n:>{width}}" for n in names) + f"{'recall':>8}"
    lines = [header]
    for name, row in zip(names, counts):
        total = row.sum()
        recall = f"{row[len(lines) - 1] / total:8.1%}" if total else f"{'-':>8}"
        lines.append(f"{name:<{width + 2}}" + "".join(f"{v:>{width}d}" for v in row) + recall)
    correct, total = np.trace(counts), counts.sum()
    lines.append(f"accuracy {correct}/{total} = {correct / max(total, 1):.2%}")
    return "\n".join(lines)


def plot(counts: np.ndarray, names: Sequence[str], path: str | os.PathLike, title: str) -> None:
    """Saves the matrix as a PNG heat map, each cell annotated with its count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 1.0 + 0.55 * len(names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = np.arange(len(names))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in ticks:
        for j in ticks:
            if counts[i, j]:
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="fraction of the true class", fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def save(counts: np.ndarray, names: Sequence[str], workdir: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """Writes ``confusion_<split>.json`` and ``confusion_<split>.png`` in ``workdir``, each atomically."""
    workdir = Path(workdir)
    json_path, png_path = workdir / f"confusion_{split}.json", workdir / f"confusion_{split}.png"
    storage.write_text(json_path, json.dumps({"split": split, "classes": list(names), "counts": counts.tolist()},
                                                  indent=1))
    accuracy = np.trace(counts) / max(counts.sum(), 1)
    with storage.staged_file(png_path) as staging:
        plot(counts, names, staging, f"{split}: accuracy {accuracy:.1%} on {counts.sum()} clips")
    return json_path, png_path


def load(workdir: str | os.PathLike, split: str) -> tuple[np.ndarray, list[str]] | None:
    """The stored matrix and class names of ``split``, or None."""
    stored = storage.read_json(Path(workdir) / f"confusion_{split}.json")
    if stored is None:
        return None
    return np.asarray(stored["counts"], np.int64), stored["classes"]
