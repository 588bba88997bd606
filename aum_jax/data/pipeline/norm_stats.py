"""The fbank mean and std of a split, for ``config.data.mean`` and ``config.data.std``.

As the original ``get_norm_stats.py``: one ordered pass with normalisation skipped and no
augmentation (the evaluation pipeline), in batches of ``batch_size`` clips; the result is
the average over batches of each batch's mean and of each batch's unbiased standard
deviation, over every frame and bin (the zero padding of short clips included, as the
model sees it). Padding rows of the last batch and clips that fail to load are left out.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np
from tqdm import tqdm

from aum_jax.data.pipeline import input_pipeline
from aum_jax.data.records import AudioSource


@dataclasses.dataclass(frozen=True)
class Statistics:
    """``mean`` and ``std`` of a split's fbanks, over ``num_batches`` batches; ``bad_inputs``:
    ``{clip: message}`` of the clips that could not be loaded."""

    mean: float
    std: float
    num_batches: int
    bad_inputs: dict[str, str]


def fbank_statistics(data: ml_collections.ConfigDict, split: str, batch_size: int, *,
                     source: AudioSource | None = None, show_progress: bool = True) -> Statistics:
    """The statistics of ``split`` of the data config ``data``, read in this process alone.

    Raises:
      BadInputError: more clips failed to load than ``data.max_bad_fraction`` allows.
      ValueError: no clip of the split could be read.
    """
    config = data.copy_and_resolve_references()
    config.skip_norm = True
    config.eval_batch_size = batch_size
    iterator = input_pipeline.make_eval_iterator(config, split, source=source, process_index=0, process_count=1)
    means, stds = [], []
    try:
        for batch in tqdm(iterator, desc=f"{config.name}/{split} statistics", unit="batch", leave=False,
                          disable=not show_progress):
            values = batch["fbank"][batch["mask"]]
            if values.size:
                means.append(float(values.mean()))
                stds.append(float(values.std(ddof=1)))
    finally:
        iterator.close()
    if not means:
        raise ValueError(f"{config.name}: no clip of the {split} split could be read for its fbank statistics")
    return Statistics(float(np.mean(means)), float(np.mean(stds)), len(means), dict(iterator.bad_inputs))
