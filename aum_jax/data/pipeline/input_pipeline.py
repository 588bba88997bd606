"""Grain input pipeline: clips -> augmented, normalised fbank batches.

Three jobs, three modules, composed here:

- :mod:`aum_jax.data.pipeline.sampling`: which source indices this process reads, in which order
  (the shard ``process_index::process_count``; shuffled per epoch from the seed, or drawn
  with the balanced-sampling weights of :func:`~aum_jax.data.pipeline.sampling.train_weights`; in evaluation once, in order, padded);
- :mod:`aum_jax.data.pipeline.clip_stages`: per clip, the registered stages
  (:mod:`aum_jax.data.pipeline.stages`: decode, mixup, fbank, warp, masks, normalise, noise)
  in the original's order, each random one with its own stream; the features themselves are
  :class:`aum_jax.data.features.preprocessing.Preprocessing`'s, the same that ``aum_jax.predict`` uses;
- :mod:`aum_jax.data.pipeline.batching`: batches, built in this process, and the accounting of clips
  that cannot be decoded.

All randomness comes from grain's per-record generators, so a run is reproducible from
``config.seed``. A clip that cannot be decoded (missing, empty, truncated, corrupt,
unreadable, too short) is skipped in training (a masked row in evaluation), logged and
counted by kind; once more than ``max_bad_fraction`` of the source's clips have failed,
the iterator raises :class:`aum_jax.data.pipeline.batching.BadInputError` naming them.

Batches are dicts of NumPy arrays: ``fbank`` ``(B, audio_length, num_mel_bins)``
float32 and ``label`` ``(B, num_classes)`` float32, plus in evaluation ``mask`` ``(B,)``
bool (False on padding and failed rows; the last batch is padded so no clip is lost).
Iterators support ``get_state()`` / ``set_state()`` (and
``grain.checkpoint.CheckpointSave/Restore`` for orbax) for exact resumption.
"""

from __future__ import annotations

import math

import grain
import ml_collections
import numpy as np

from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.pipeline import sampling
from aum_jax.data.pipeline.batching import BatchIterator
from aum_jax.data.pipeline.clip_stages import examples
from aum_jax.data.records import AudioSource
from aum_jax.data.sources import registry

__all__ = ["make_eval_iterator", "make_train_iterator", "train_examples"]


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def _bad_limit(config: ml_collections.ConfigDict, num_records: int) -> int:
    if not 0.0 <= config.max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {config.max_bad_fraction}")
    return int(math.floor(config.max_bad_fraction * num_records))


def train_examples(config: ml_collections.ConfigDict, source: AudioSource, process_index: int,
                   process_count: int, teacher_preprocessing: Preprocessing | None = None,
                   weights: np.ndarray | None = None) -> grain.MapDataset:
    """This process's endless stream of augmented training examples, before batching; ``weights``:
    balanced sampling's, already read (:func:`~aum_jax.data.pipeline.sampling.train_weights`), or None
    to read them here.

    Raises:
      ValueError: an empty source or shard, or settings that cannot work together.
    """
    if len(source) == 0:
        raise ValueError(f"{config.name}: the training source is empty")
    if len(sampling.shard(len(source), process_index, process_count)) == 0:
        raise ValueError(f"process {process_index} of {process_count} has no training clips")
    if weights is None:
        weights = sampling.train_weights(config, source)
    indices = sampling.train_indices(len(source), config.seed, process_index, process_count, weights)
    _, augment_seed = sampling.host_seeds(config.seed, process_index)
    return examples(indices, config, source, True, augment_seed, teacher_preprocessing)


def make_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    source: AudioSource | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    teacher_preprocessing: Preprocessing | None = None,
    weights: np.ndarray | None = None,
) -> BatchIterator:
    """The training batches of this process, endless.

    Args:
      config: a data config (``configs/data.py``): ``batch_size`` (per process),
        ``seed``, ``balanced_sampling``/``weight_csv``, the feature and augmentation
        settings, ``num_workers`` (0 = in this process; grain's workers read absl
        flags, so outside ``absl.app.run`` parse them first, e.g.
        ``flags.FLAGS.mark_as_parsed()``), ``read_threads``,
        ``prefetch_buffer_size``, ``max_bad_fraction``.
      source: the clips; built from ``config`` (split ``"train"``) when omitted.
      process_index: this process's shard; default ``jax.process_index()``.
      process_count: number of shards; default ``jax.process_count()``.
      teacher_preprocessing: an online teacher's own features: each batch adds ``teacher_fbank``
        (:class:`aum_jax.data.pipeline.stages.teacher_input.TeacherInput`).
      weights: balanced sampling's weights of ``source``, already read; None: read here.

    Returns:
      A :class:`BatchIterator` of ``{"fbank": (B, T, F) float32, "label": (B, C)
      float32}`` with ``B = config.batch_size`` (plus distillation's ``teacher``,
      ``labelled`` and ``teacher_fbank`` where the source or teacher gives them).
    """
    process_index, process_count = _process(process_index, process_count)
    if source is None:
        source = registry.make_source(config, "train")
    clips = train_examples(config, source, process_index, process_count, teacher_preprocessing, weights)
    return BatchIterator(clips, config, config.batch_size, train=True,
                         limit=_bad_limit(config, len(source)), num_records=len(source))


def make_eval_iterator(
    config: ml_collections.ConfigDict,
    split: str,
    *,
    source: AudioSource | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """The evaluation batches of ``split`` (e.g. "validation", "test") in this process: one ordered pass.

    No masks, mixup or noise. The shard ``process_index::process_count`` is padded to
    ``ceil(ceil(N / process_count) / B)`` batches of ``B = config.eval_batch_size``,
    the same count on every process; padding rows and clips that failed to load are
    zeros with ``mask`` False.

    Returns:
      A :class:`BatchIterator` of ``{"fbank": (B, T, F) float32, "label": (B, C)
      float32, "mask": (B,) bool}``.
    """
    process_index, process_count = _process(process_index, process_count)
    if source is None:
        source = registry.make_source(config, split)
    indices = sampling.eval_indices(len(source), config.eval_batch_size, process_index, process_count)
    clips = examples(indices, config, source, False, 0)  # nothing random.
    return BatchIterator(clips, config, config.eval_batch_size, train=False,
                         limit=_bad_limit(config, len(source)), num_records=len(source))
