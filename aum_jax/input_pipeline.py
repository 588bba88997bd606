"""Grain input pipeline: clips -> augmented, normalised fbank batches.

Per clip, grain maps in the order of the original ``AudiosetDataset.__getitem__``
(the augmentations are in :mod:`aum_jax.augment`):

1. decode (:meth:`aum_jax.datasets.AudioSource.load_audio`);
2. training, with probability ``mixup``: mix in a uniformly drawn second clip with
   lambda ~ Beta(``mixup_beta``, ``mixup_beta``); the label is ``lambda * y1 +
   (1 - lambda) * y2``;
3. fbank: Kaldi fbank (:mod:`aum_jax.audio`), or for EPIC-Sounds the original's
   librosa log-mel; padded (zeros; EPIC: edge) or cut to ``audio_length`` frames; with
   ``cache_features`` (training, no mixup, no random crops) steps 1-3 run once per clip
   and their fbank is kept in memory for the later epochs;
4. training: with ``freq_warp``, the frequency axis scaled by a factor in [1 - w, 1 + w]
   (:func:`aum_jax.augment.frequency_warp`, not in the original); SpecAugment masks, a
   frequency mask of width < ``freqm`` then a time mask of width < ``timem``
   (torchaudio's, or EPIC-Sounds' two per axis);
5. normalise, ``(x - mean) / (2 * std)`` (:func:`aum_jax.audio.normalize`), unless
   ``skip_norm``;
6. training, if ``noise``: add ``U[0,1) * U[0,1) * noise_scale`` noise and roll in
   time by an integer in [-``noise_max_shift``, ``noise_max_shift``).

All randomness comes from grain's per-record generators (``random_map``), so a run
is reproducible from ``config.seed``; the shuffle is seeded per epoch; balanced
sampling draws ``len(shard)`` indices per epoch with replacement, with the
probabilities of the ``*_weight.csv``. Each process reads the disjoint shard
``process_index::process_count``.

Clips are decoded and augmented one by one (in ``num_workers`` grain processes, or in
this one) and batched in this process, so the batches depend on the seed alone, not
on the worker or read-thread counts, and the iterator state (clips consumed) resumes
with any of them. Workers exit when their parent dies, SIGKILL included.

A clip that cannot be decoded (missing, empty, truncated, corrupt, unreadable, too
short) is skipped in training (a masked row in evaluation), logged with an absl
warning and counted by kind; once more than ``max_bad_fraction`` of the source's
clips have failed, the iterator raises :class:`BadInputError` naming them. Errors in
worker processes are re-raised in the main process by grain.

Batches are dicts of NumPy arrays: ``fbank`` ``(B, audio_length, num_mel_bins)``
float32 and ``label`` ``(B, num_classes)`` float32, plus in evaluation ``mask`` ``(B,)``
bool (False on padding and failed rows; the last batch is padded so no clip is lost).
Iterators support ``get_state()`` / ``set_state()`` (and
``grain.checkpoint.CheckpointSave/Restore`` for orbax) for exact resumption.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import threading
import time
from typing import Any

import grain
import ml_collections
import numpy as np
from absl import logging

from aum_jax import audio, augment, datasets

__all__ = [
    "BadInputError",
    "BatchIterator",
    "FeatureOptions",
    "make_eval_iterator",
    "make_train_iterator",
]

Element = dict[str, Any]
# A failed clip, as (key naming the file, kind of failure (audio.BAD_INPUT_KINDS), message).
Failure = tuple[str, str, str]


class BadInputError(RuntimeError):
    """More clips failed to load than ``max_bad_fraction`` allows."""

    def __init__(self, bad: dict[str, str], limit: int, num_records: int):
        shown = "\n  ".join(f"{msg}" for msg in list(bad.values())[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        super().__init__(
            f"{len(bad)} of {num_records} clips could not be loaded (at most {limit} "
            f"allowed by max_bad_fraction):\n  {shown}{more}"
        )
        self.bad = dict(bad)
        self._args = (dict(bad), limit, num_records)

    def __reduce__(self):
        # Picklable, so an error raised in a worker process reaches the main process.
        return (type(self), self._args)


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """The per-clip settings, read once from the data config (see ``configs/data.py``)."""

    num_classes: int
    num_mel_bins: int
    frame_shift_ms: float
    audio_length: int
    feature: str
    epic_window_ms: float
    epic_hop_ms: float
    freq_warp: float
    freqm: int
    timem: int
    mask_style: str
    mixup: float
    mixup_beta: float
    noise: bool
    noise_scale: float
    noise_max_shift: int
    mean: float
    std: float
    skip_norm: bool
    cache_features: bool
    train: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, train: bool) -> FeatureOptions:
        """Reads the options; evaluation turns off masks, mixup and noise (as the original)."""
        if config.feature not in ("kaldi_fbank", "epic_logmel"):
            raise ValueError(f"unknown feature {config.feature!r}")
        if config.mask_style not in ("torchaudio", "epic"):
            raise ValueError(f"unknown mask_style {config.mask_style!r}")
        if config.freq_warp and config.feature != "kaldi_fbank":
            raise ValueError(f"{config.name}: freq_warp works on the Kaldi fbank, not on {config.feature!r}")
        cache_features = bool(config.cache_features) and train
        if cache_features and config.mixup > 0:
            raise ValueError(f"{config.name}: cache_features needs mixup 0 (mixup={config.mixup} mixes waveforms "
                             "before the fbank, so a clip's features change every epoch)")
        return cls(
            num_classes=config.num_classes,
            num_mel_bins=config.num_mel_bins,
            frame_shift_ms=config.frame_shift_ms,
            audio_length=config.audio_length,
            feature=config.feature,
            epic_window_ms=config.epic_window_ms,
            epic_hop_ms=config.epic_hop_ms,
            freq_warp=config.freq_warp if train else 0.0,
            freqm=config.freqm if train else 0,
            timem=config.timem if train else 0,
            mask_style=config.mask_style,
            mixup=config.mixup if train else 0.0,
            mixup_beta=config.mixup_beta,
            noise=bool(config.noise) and train,
            noise_scale=config.noise_scale,
            noise_max_shift=config.noise_max_shift,
            mean=config.mean,
            std=config.std,
            skip_norm=config.skip_norm,
            cache_features=cache_features,
            train=train,
        )


# --------------------------------------------------------------------------- #
# Per-clip stages, each a picklable grain map; a failure marker passes through
# --------------------------------------------------------------------------- #


class _Decode:
    """Source index -> ``{"key", "waveform" (channels, samples), "sample_rate", "label"}``.

    ``index == -1`` is an evaluation padding row, passed on as ``{"padding": True}``.
    """

    def __init__(self, source: datasets.AudioSource, options: FeatureOptions):
        self._source = source
        self._opt = options

    def __call__(self, index: int, rng: np.random.Generator | None = None) -> Element:
        if index < 0:
            return {"padding": True}
        record = self._source[index]
        label = np.zeros((self._opt.num_classes,), np.float32)
        label[list(record.labels)] = 1.0
        try:
            waveform, sample_rate = self._source.load_audio(index, rng)  # rng: a source's random crop.
        except audio.AudioLoadError as e:
            return {"failure": (e.path, e.kind, str(e))}
        return {"key": record.key, "labels": record.labels, "waveform": waveform, "sample_rate": sample_rate,
                "label": label}


class _Stage:
    """A per-clip grain map of the elements holding ``needs``; others (failures, padding) pass."""

    needs = "fbank"

    def __init__(self, options: FeatureOptions, source: datasets.AudioSource | None = None):
        self._opt = options
        self._source = source

    def __call__(self, element: Element, rng: np.random.Generator | None = None) -> Element:
        return self.apply(element, rng) if self.needs in element else element

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        raise NotImplementedError


class _Mixup(_Stage):
    """With probability ``mixup``: mixes in a uniformly drawn second clip, lambda ~ Beta(a, a)."""

    needs = "waveform"

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        if rng.random() >= self._opt.mixup:
            return element
        other_index = int(rng.integers(len(self._source)))
        other = self._source[other_index]
        try:
            other_waveform, _ = self._source.load_audio(other_index, rng)
        except audio.AudioLoadError as e:
            return {"failure": (e.path, e.kind, f"{e} (mixed into {element['key']})")}
        lam = rng.beta(self._opt.mixup_beta, self._opt.mixup_beta)
        label = np.zeros((self._opt.num_classes,), np.float32)
        np.add.at(label, list(element["labels"]), lam)
        np.add.at(label, list(other.labels), 1.0 - lam)
        return {**element, "key": f"{element['key']} mixed with {other.key}",
                "waveform": augment.mix_waveforms(element["waveform"], other_waveform, lam),
                "label": label.astype(np.float32)}


class _Features(_Stage):
    """Waveform -> ``fbank`` (audio_length, num_mel_bins): Kaldi fbank or EPIC log-mel, padded or cut."""

    needs = "waveform"

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        opt = self._opt
        try:
            if opt.feature == "epic_logmel":
                spec = audio.epic_log_mel(element["waveform"][0], element["sample_rate"], opt.num_mel_bins,
                                          opt.epic_window_ms, opt.epic_hop_ms)
                missing = opt.audio_length - spec.shape[0]
                spec = np.pad(spec, ((0, missing), (0, 0)), mode="edge") if missing > 0 else spec[: opt.audio_length]
            else:
                spec = audio.fbank_from_waveform(element["waveform"], element["sample_rate"],
                                                 opt.num_mel_bins, opt.frame_shift_ms)
                spec = audio.pad_or_cut(spec, opt.audio_length)
        except ValueError as e:  # a clip shorter than one frame.
            return {"failure": (element["key"], "too_short", f"{element['key']}: {e}")}
        return {"key": element["key"], "fbank": np.array(spec, np.float32), "label": element["label"],
                "sample_rate": element["sample_rate"]}


class _CachedFeatures:
    """Source index -> :class:`_Decode` then :class:`_Features`, computed once per process.

    For ``cache_features``: without mixup and random crops a clip's fbank is the same every
    epoch, so each is kept (``audio_length * num_mel_bins`` float32 per clip) and handed out
    as a fresh copy (the masks write into it). Failures are not kept: they are retried and
    counted again. Worker processes start empty and fill their own copies.
    """

    def __init__(self, decode: _Decode, features: _Features):
        self._decode, self._features = decode, features
        self._kept: dict[int, Element] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_kept": {}}

    def __call__(self, index: int) -> Element:
        element = self._kept.get(index)
        if element is None:
            element = self._features(self._decode(index))
            if "fbank" not in element:
                return element
            self._kept[index] = element
        return {**element, "fbank": element["fbank"].copy()}


class _Warp(_Stage):
    """A frequency warp by a factor uniform in ``[1 - freq_warp, 1 + freq_warp]``."""

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        factor = rng.uniform(1.0 - self._opt.freq_warp, 1.0 + self._opt.freq_warp)
        return {**element, "fbank": augment.frequency_warp(element["fbank"], factor, element["sample_rate"])}


class _Masks(_Stage):
    """SpecAugment: a frequency then a time mask (torchaudio's, or EPIC-Sounds' two per axis)."""

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        spec, opt = element["fbank"], self._opt  # a fresh array of this clip: masked in place.
        mask = augment.epic_masks if opt.mask_style == "epic" else augment.torchaudio_mask
        if opt.freqm:
            mask(spec, 1, opt.freqm, rng)
        if opt.timem:
            mask(spec, 0, opt.timem, rng)
        return element


class _Normalize(_Stage):
    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        return {**element, "fbank": audio.normalize(element["fbank"], self._opt.mean, self._opt.std)}


class _Noise(_Stage):
    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        noisy = augment.add_noise(element["fbank"], rng, self._opt.noise_scale, self._opt.noise_max_shift)
        return {**element, "fbank": noisy.astype(np.float32)}


class _Example:
    """The pipeline's element: ``{"fbank", "label"}`` (+ ``mask`` in evaluation) or a failure.

    In evaluation a failed clip or a padding row becomes zeros with ``mask`` False (a
    failure keeps its marker, to be counted).
    """

    def __init__(self, options: FeatureOptions):
        self._opt = options

    def __call__(self, element: Element) -> Element:
        opt = self._opt
        if "fbank" in element:
            example = {"fbank": element["fbank"], "label": element["label"]}
            return example if opt.train else {**example, "mask": np.True_}
        if opt.train:
            return element
        empty = {"fbank": np.zeros((opt.audio_length, opt.num_mel_bins), np.float32),
                 "label": np.zeros((opt.num_classes,), np.float32), "mask": np.False_}
        return {**empty, **({"failure": element["failure"]} if "failure" in element else {})}


def _clips(ds: grain.MapDataset, source: datasets.AudioSource, options: FeatureOptions,
           seed: int) -> grain.MapDataset:
    """Source indices -> examples, in the order of the module docstring.

    Each random stage draws from its own per-clip generator (seeded by ``seed``, the
    stage and the clip's position), so the result depends on the seed alone.
    """
    decode_seed, mixup_seed, mask_seed, noise_seed, warp_seed = np.random.SeedSequence(seed).generate_state(5).tolist()
    decode = _Decode(source, options)
    if options.cache_features:
        if source.random_crops:
            raise ValueError("cache_features needs a source without random crops (this one crops each clip "
                             "at random in training, so its features change every epoch)")
        ds = ds.map(_CachedFeatures(decode, _Features(options)))
    else:
        ds = ds.random_map(decode, seed=decode_seed) if options.train else ds.map(decode)
        if options.mixup > 0:
            ds = ds.random_map(_Mixup(options, source), seed=mixup_seed)
        ds = ds.map(_Features(options))
    if options.freq_warp:
        ds = ds.random_map(_Warp(options), seed=warp_seed)
    if options.freqm or options.timem:
        ds = ds.random_map(_Masks(options), seed=mask_seed)
    if not options.skip_norm:
        ds = ds.map(_Normalize(options))
    if options.noise:
        ds = ds.random_map(_Noise(options), seed=noise_seed)
    return ds.map(_Example(options))


# --------------------------------------------------------------------------- #
# Index sampling
# --------------------------------------------------------------------------- #


class _ShardLookup:
    """Position in the shard -> source index (picklable)."""

    def __init__(self, indices: np.ndarray):
        self._indices = indices

    def __call__(self, position: int) -> int:
        return int(self._indices[position]) if position < len(self._indices) else -1


class _WeightedDraw:
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


# --------------------------------------------------------------------------- #
# Batching and bad-input accounting, in this process
# --------------------------------------------------------------------------- #


class _ExitWithParent:
    """grain ``worker_init_fn``: each worker ends itself once the trainer is gone.

    grain's workers are daemon processes, which die with a parent that exits normally
    but are orphaned when it is killed (SIGKILL, OOM killer). A watcher thread in every
    worker polls its parent PID and exits when the parent has changed; the
    multiprocessing resource tracker then sees its last pipe close and exits too.
    (A Linux parent-death signal would fire when grain's short-lived starter thread
    ends, not the trainer.)
    """

    def __init__(self, parent_pid: int, poll_s: float):
        self._parent_pid = parent_pid
        self._poll_s = poll_s

    def __call__(self, worker_index: int, worker_count: int) -> None:
        del worker_index, worker_count
        threading.Thread(target=self._watch, name="exit-with-parent", daemon=True).start()

    def _watch(self) -> None:
        while os.getppid() == self._parent_pid:
            time.sleep(self._poll_s)
        os._exit(1)


class BatchIterator(grain.DatasetIterator):
    """Batches the clips of one process, counting, logging and limiting bad inputs.

    Clips are decoded and augmented by grain (``num_workers`` processes, or this one)
    one by one; they are batched here, in this process, so every batch holds the same
    clips whatever the worker and thread counts. Its state is the number of clips
    consumed, so a run resumes on the same clip with any number of workers.

    Training drops clips that failed to load; evaluation keeps them as zero rows with
    ``mask`` False. Once more distinct clips than ``limit`` have failed,
    :class:`BadInputError` is raised naming them.

    Attributes:
      bad_inputs: ``{key: message}`` of every distinct clip that failed to load.
      num_skipped: how many times a clip was skipped (a bad clip counts once per
        epoch it is drawn in).
      skipped_by_kind: ``num_skipped`` split by kind (``audio.BAD_INPUT_KINDS``).
    """

    def __init__(
        self,
        clips: grain.MapDataset,
        config: ml_collections.ConfigDict,
        batch_size: int,
        *,
        train: bool,
        limit: int,
        num_records: int,
    ):
        super().__init__()
        self._clips = clips
        self._read_options = grain.ReadOptions(
            num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_buffer_size
        )
        self._num_workers = config.num_workers
        self._worker_poll_s = config.worker_parent_poll_s
        self._batch_size = batch_size
        self._train = train
        self._limit = limit
        self._num_records = num_records
        self._elements: grain.DatasetIterator | None = None
        self._position = 0
        self.bad_inputs: dict[str, str] = {}
        self.num_skipped = 0
        self.skipped_by_kind: dict[str, int] = {}

    def _open(self) -> grain.DatasetIterator:
        clips = self._clips[self._position:] if self._position else self._clips
        ds = clips.to_iter_dataset(self._read_options)
        if self._num_workers > 0:
            ds = ds.mp_prefetch(
                # a batch of clips buffered per worker between the processes.
                grain.MultiprocessingOptions(num_workers=self._num_workers,
                                             per_worker_buffer_size=self._batch_size),
                worker_init_fn=_ExitWithParent(os.getpid(), self._worker_poll_s),
            )
        return iter(ds)

    def _count(self, failure: Failure) -> None:
        key, kind, message = failure
        self.num_skipped += 1
        self.skipped_by_kind[kind] = self.skipped_by_kind.get(kind, 0) + 1
        if key not in self.bad_inputs:
            logging.warning("skipping a clip that cannot be loaded: %s", message)
            self.bad_inputs[key] = message
            if len(self.bad_inputs) > self._limit:
                raise BadInputError(self.bad_inputs, self._limit, self._num_records)

    def __next__(self) -> Element:
        if self._elements is None:
            self._elements = self._open()
        rows: list[Element] = []
        while len(rows) < self._batch_size:
            element = next(self._elements)  # StopIteration ends a finite pass; a partial batch is dropped.
            self._position += 1
            failure = element.pop("failure", None)
            if failure is not None:
                self._count(failure)
                if self._train:
                    continue
            rows.append(element)
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    def get_state(self) -> dict[str, Any]:
        return {
            "position": self._position,
            "bad_inputs": dict(self.bad_inputs),
            "num_skipped": self.num_skipped,
            "skipped_by_kind": dict(self.skipped_by_kind),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.close()
        self._position = int(state["position"])
        self.bad_inputs = dict(state["bad_inputs"])
        self.num_skipped = int(state["num_skipped"])
        self.skipped_by_kind = {k: int(v) for k, v in state["skipped_by_kind"].items()}

    def close(self) -> None:
        """Stops the worker processes, if any; the next batch starts them again."""
        if self._elements is not None:
            self._elements.close()
            self._elements = None


# --------------------------------------------------------------------------- #
# Entry points
# --------------------------------------------------------------------------- #


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


def _host_seeds(seed: int, process_index: int) -> tuple[int, int]:
    """Independent (sampling, augmentation) seeds for this process."""
    state = np.random.SeedSequence([seed, process_index]).generate_state(2)
    return int(state[0]), int(state[1])


def make_train_iterator(
    config: ml_collections.ConfigDict,
    *,
    source: datasets.AudioSource | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    num_epochs: int | None = None,
) -> BatchIterator:
    """The training batches of this process.

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
      num_epochs: passes over the shard; ``None`` repeats forever.

    Returns:
      A :class:`BatchIterator` of ``{"fbank": (B, T, F) float32, "label": (B, C)
      float32}`` with ``B = config.batch_size`` (an incomplete last batch is dropped).
    """
    process_index, process_count = _process(process_index, process_count)
    if source is None:
        source = datasets.make_source(config, "train")
    if len(source) == 0:
        raise ValueError(f"{config.name}: the training source is empty")
    shard = np.arange(len(source))[process_index::process_count]
    if len(shard) == 0:
        raise ValueError(f"process {process_index} of {process_count} has no training clips")
    sample_seed, augment_seed = _host_seeds(config.seed, process_index)

    if config.balanced_sampling:
        weights = datasets.load_sample_weights(config.weight_csv, len(source))
        ds = grain.MapDataset.range(len(shard)).repeat(num_epochs)
        ds = ds.map_with_index(_WeightedDraw(weights, config.seed, process_index, process_count))
    else:
        ds = grain.MapDataset.range(len(shard)).shuffle(seed=sample_seed).repeat(num_epochs)
        ds = ds.map(_ShardLookup(shard))
    ds = _clips(ds, source, FeatureOptions.from_config(config, True), augment_seed)
    return BatchIterator(ds, config, config.batch_size, train=True,
                         limit=_bad_limit(config, len(source)), num_records=len(source))


def make_eval_iterator(
    config: ml_collections.ConfigDict,
    split: str = "eval",
    *,
    source: datasets.AudioSource | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
) -> BatchIterator:
    """The evaluation batches of this process: one ordered pass, nothing lost.

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
        source = datasets.make_source(config, split)
    shard = np.arange(len(source))[process_index::process_count]
    batch_size = config.eval_batch_size
    per_process = -(-len(source) // process_count)
    padded = -(-per_process // batch_size) * batch_size
    ds = grain.MapDataset.range(padded).map(_ShardLookup(shard))
    ds = _clips(ds, source, FeatureOptions.from_config(config, False), 0)  # nothing random.
    return BatchIterator(ds, config, batch_size, train=False,
                         limit=_bad_limit(config, len(source)), num_records=len(source))
