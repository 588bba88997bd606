"""Which clips a process reads, in which order: the index streams of the input pipeline.

Each process reads the disjoint shard ``process_index::process_count`` of the source.
Training repeats it forever: shuffled per epoch from a per-process seed, or, with
balanced sampling, drawn with replacement with the probabilities of :func:`train_weights`
(the original's ``WeightedRandomSampler``). Evaluation reads it once, in order, padded
with ``-1`` (no clip) so every process runs the same number of batches. Every stream
is a random-access grain ``MapDataset``, so a run resumes at any position.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import logging

from aum_jax.core.errors import UserError
from aum_jax.data.records import AudioSource
from aum_jax.data.sources import labels


class SampleWeightsError(UserError, ValueError):
    """Balanced sampling that cannot draw: no weight file, or one that does not fit the training clips."""


def label_weights(label_lists: Sequence[tuple[int, ...]], num_classes: int) -> np.ndarray:
    """Per-clip weights ``(num_clips,)`` float64 from the clips' labels, as ``scripts/gen_weight_file.py``
    writes them: each class weighs ``1000 / (count + 0.01)`` (``count``: the clips that carry it), a
    clip the sum over its labels; a clip without labels weighs the mean of the labelled clips."""
    counts = np.zeros(num_classes)
    for clip_labels in label_lists:
        for label in clip_labels:
            counts[label] += 1
    class_weight = 1000.0 / (counts + 0.01)
    weights = np.array([sum(class_weight[label] for label in ls) if ls else np.nan for ls in label_lists])
    labelled = ~np.isnan(weights)
    weights[~labelled] = weights[labelled].mean() if labelled.any() else 1.0
    return weights


def train_weights(config: ml_collections.ConfigDict, source: AudioSource) -> np.ndarray | None:
    """The sampling weights ``(len(source),)`` of balanced sampling (``config.balanced_sampling``), else None.

    With every label in view (``config.label_fraction`` 1) they are the ``config.weight_csv`` file's, one
    per clip of ``source``. Under ``label_fraction < 1`` that file, made from every clip's labels, would
    draw by the labels the fraction hid; the weights then come from the labels the run keeps
    (:func:`label_weights`), the clips without any drawn as often as a mean labelled clip, and the file
    is not read.

    Raises:
      SampleWeightsError: no ``weight_csv`` with every label in view, or a file that cannot be read, holds
        another count of weights than ``source`` has clips, or weights that cannot draw (naming the file).
    """
    if not config.balanced_sampling:
        return None
    if config.label_fraction < 1.0:
        logging.info("Balanced sampling under config.data.label_fraction=%s: weights from the labels the run keeps",
                     config.label_fraction)
        return label_weights([source[i].labels for i in range(len(source))], config.num_classes)
    if not config.weight_csv:
        raise SampleWeightsError("config.data.balanced_sampling=True needs config.data.weight_csv, a file of one "
                                 "sampling weight per training clip (scripts/gen_weight_file.py writes it)")
    path = os.path.expanduser(config.weight_csv)
    try:
        return labels.load_sample_weights(path, len(source))
    except (OSError, ValueError) as e:
        reason = str(e).removeprefix(f"{path}: ")
        raise SampleWeightsError(f"config.data.weight_csv={config.weight_csv}: {reason}") from e


class ShardLookup:
    """Position in the shard -> source index (picklable)."""

    def __init__(self, indices: np.ndarray):
        self._indices = indices

    def __call__(self, position: int) -> int:
        return int(self._indices[position]) if position < len(self._indices) else -1


class WeightedDraw:
    """Shard position -> source index, drawn with replacement per epoch.

    Epoch ``e`` draws ``len(weights)`` indices of the WHOLE source with probabilities
    proportional to ``weights``, from a generator seeded by ``(seed, e)`` that every
    process shares: the original's ``WeightedRandomSampler(weights, len(weights),
    replacement=True)``, made deterministic and random-access. Process ``i`` of ``n``
    takes draws ``i, i + n, ...`` of that global sequence.
    """

    def __init__(self, weights: np.ndarray, seed: int, process_index: int, process_count: int):
        self._p = weights / weights.sum()
        self._seed = seed
        self._shard = slice(process_index, None, process_count)

    @functools.lru_cache(maxsize=2)
    def _epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self._seed, epoch])
        return rng.choice(len(self._p), size=len(self._p), p=self._p)[self._shard]

    def __call__(self, position: int, _: Any) -> int:
        draws = self._epoch(0)
        epoch, offset = divmod(position, len(draws))
        return int(self._epoch(epoch)[offset])


def shard(num_records: int, process_index: int, process_count: int) -> np.ndarray:
    """The source indices of this process: ``process_index::process_count``."""
    return np.arange(num_records)[process_index::process_count]


def host_seeds(seed: int, process_index: int) -> tuple[int, int]:
    """Independent (sampling, augmentation) seeds for this process."""
    state = np.random.SeedSequence([seed, process_index]).generate_state(2)
    return int(state[0]), int(state[1])


def train_indices(num_records: int, seed: int, process_index: int, process_count: int,
                  weights: np.ndarray | None = None) -> grain.MapDataset:
    """This process's training stream of source indices, endless.

    Args:
      num_records: clips in the source.
      seed: the data seed (``config.seed``).
      process_index, process_count: this process's shard.
      weights: ``(num_records,)`` sampling weights for balanced sampling, or None to
        shuffle the shard per epoch.
    """
    indices = shard(num_records, process_index, process_count)
    ds = grain.MapDataset.range(len(indices))
    if weights is not None:
        return ds.repeat(None).map_with_index(WeightedDraw(weights, seed, process_index, process_count))
    sample_seed, _ = host_seeds(seed, process_index)
    return ds.shuffle(seed=sample_seed).repeat(None).map(ShardLookup(indices))


def eval_indices(num_records: int, batch_size: int, process_index: int, process_count: int) -> grain.MapDataset:
    """This process's evaluation stream: its shard in order, padded with -1 to the same number of
    ``ceil(ceil(num_records / process_count) / batch_size)`` batches on every process."""
    per_process = -(-num_records // process_count)
    padded = -(-per_process // batch_size) * batch_size
    return grain.MapDataset.range(padded).map(ShardLookup(shard(num_records, process_index, process_count)))
