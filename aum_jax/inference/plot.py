"""Heat maps of timelines: each recording's best classes (rows) over time (columns)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from aum_jax.core import storage
from aum_jax.data.features import preprocessing
from aum_jax.inference.classify import Timeline


def plot_timelines(timelines: Sequence[Timeline], path: str | os.PathLike, num_classes: int = 10) -> None:
    """Saves a PNG with a heat map per recording: its ``num_classes`` best classes over time.

    The image replaces ``path`` atomically (:func:`aum_jax.core.storage.staged_file`); its
    format is that of the suffix (PNG without one).

    Classes are ranked by their highest score in the recording; colour is the score (0 to 1
    for sigmoid and softmax scores, the logits' own range otherwise).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [np.argsort(-tl.scores.max(axis=0))[: min(num_classes, tl.scores.shape[1])] for tl in timelines]
    heights = [max(1.6, 0.32 * len(order) + 1.0) for order in rows]
    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, tl, order in zip(axes[:, 0], timelines, rows):
        hop = float(tl.starts[1] - tl.starts[0]) if len(tl.starts) > 1 else float(tl.ends[0] - tl.starts[0])
        edges = np.append(tl.starts, tl.starts[-1] + hop)  # each column spans its hop.
        bounded = tl.score != preprocessing.LOGITS
        mesh = ax.pcolormesh(edges, np.arange(len(order) + 1), tl.scores[:, order].T, cmap="magma",
                             vmin=0.0 if bounded else None, vmax=1.0 if bounded else None, shading="flat")
        ax.set_yticks(np.arange(len(order)) + 0.5, [tl.class_names[j] for j in order])
        ax.invert_yaxis()
        ax.set_xlabel("time (s)")
        ax.set_title(f"{os.path.basename(tl.file)}: top {len(order)} classes, {len(tl.starts)} windows")
        fig.colorbar(mesh, ax=ax, label=f"{tl.score} score", pad=0.01)
    fig.tight_layout()
    try:  # the staging file's name has no image suffix: the format is the destination's.
        with storage.staged_file(path) as staging:
            fig.savefig(staging, dpi=110, format=os.path.splitext(path)[1][1:] or "png")
    finally:
        plt.close(fig)
