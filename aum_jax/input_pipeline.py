"""Grain input pipeline: clips -> augmented, normalised fbank batches.

Per clip, in the order of the original ``AudiosetDataset.__getitem__``:

1. decode (training: with probability ``mixup`` also a second, uniformly drawn clip;
   both waveforms lose their mean, the second is zero-padded or cut to the first's
   length, they are mixed with lambda ~ Beta(10, 10) and the mix loses its mean; the
   label is ``lambda * y1 + (1 - lambda) * y2``);
2. features: Kaldi fbank (:mod:`aum_jax.audio`), or for EPIC-Sounds the original's
   librosa log-mel;
3. pad (zeros; EPIC: edge) or cut to ``target_length`` frames;
4. training only: SpecAugment, one frequency mask of width < ``freqm`` then one time
   mask of width < ``timem`` with torchaudio's semantics (zeros); EPIC-Sounds uses
   its own two masks per axis filled with the spectrogram mean;
5. ``(x - mean) / (2 * std)`` unless ``skip_norm``;
6. training only, if ``noise``: add ``U[0,1) * U[0,1) / 10`` noise, roll in time by
   an integer in [-10, 10).

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

Batches are dicts of NumPy arrays: ``fbank`` ``(B, target_length, num_mel_bins)``
float32 and ``label`` ``(B, n_class)`` float32, plus in evaluation ``mask`` ``(B,)``
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
from absl import flags, logging

from aum_jax import audio
from aum_jax import datasets

__all__ = [
    "BadInputError",
    "FeatureOptions",
    "epic_log_mel",
    "BatchIterator",
    "make_eval_iterator",
    "make_train_iterator",
    "mix_waveforms",
    "torchaudio_mask",
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
    target_length: int
    feature: str
    epic_window_ms: float
    epic_hop_ms: float
    freqm: int
    timem: int
    mask_style: str
    mixup: float
    noise: bool
    mean: float
    std: float
    skip_norm: bool
    train: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, train: bool) -> FeatureOptions:
        """Reads the options; evaluation turns off masks, mixup and noise (as the original)."""
        if config.feature not in ("kaldi_fbank", "epic_logmel"):
            raise ValueError(f"unknown feature {config.feature!r}")
        if config.mask_style not in ("torchaudio", "epic"):
            raise ValueError(f"unknown mask_style {config.mask_style!r}")
        return cls(
            num_classes=config.n_class,
            num_mel_bins=config.num_mel_bins,
            frame_shift_ms=config.frame_shift_ms,
            target_length=config.target_length,
            feature=config.feature,
            epic_window_ms=config.epic_window_ms,
            epic_hop_ms=config.epic_hop_ms,
            freqm=config.freqm if train else 0,
            timem=config.timem if train else 0,
            mask_style=config.mask_style,
            mixup=config.mixup if train else 0.0,
            noise=bool(config.noise) and train,
            mean=config.mean,
            std=config.std,
            skip_norm=config.skip_norm,
            train=train,
        )


# --------------------------------------------------------------------------- #
# Per-clip operations
# --------------------------------------------------------------------------- #


def mix_waveforms(first: np.ndarray, second: np.ndarray, lam: float) -> np.ndarray:
    """The original's waveform mixup.

    Args:
      first: ``(channels, n1)`` float32.
      second: ``(channels2, n2)`` float32; zero-padded or cut to ``n1`` samples.
      lam: weight of ``first``.

    Returns:
      ``(channels, n1)`` float32: ``lam * (first - mean) + (1 - lam) * (second - mean)``
      minus its own mean.
    """
    first = audio.remove_mean(first)
    second = audio.remove_mean(second)
    n = first.shape[1]
    fitted = np.zeros((second.shape[0], n), dtype=np.float32)
    fitted[:, : min(n, second.shape[1])] = second[:, :n]
    return audio.remove_mean(np.float32(lam) * first + np.float32(1.0 - lam) * fitted)


def epic_log_mel(
    samples: np.ndarray,
    sample_rate: int,
    num_mel_bins: int,
    window_ms: float,
    hop_ms: float,
) -> np.ndarray:
    """EPIC-Sounds log-mel spectrogram, as the original EPIC loader computes it.

    librosa STFT (n_fft 2048, Hann window of ``window_ms``, hop ``hop_ms``, centred
    with zero padding), magnitude, HTK mel filters without normalisation,
    ``log(mel + 1e-6)``.

    Args:
      samples: ``(samples,)`` float32.
      sample_rate: in Hz (24 kHz for EPIC-Sounds).
      num_mel_bins: mel bands.
      window_ms: window length in milliseconds.
      hop_ms: hop in milliseconds.

    Returns:
      ``(frames, num_mel_bins)`` float32, ``frames = 1 + samples // hop``.
    """
    import librosa  # slow import; only EPIC-Sounds needs it.

    spec = librosa.stft(
        samples,
        n_fft=2048,
        window="hann",
        hop_length=int(round(hop_ms * sample_rate / 1e3)),
        win_length=int(round(window_ms * sample_rate / 1e3)),
        pad_mode="constant",
    )
    mel_basis = _librosa_mel(sample_rate, num_mel_bins)
    return np.log(mel_basis @ np.abs(spec) + 1e-6).T.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _librosa_mel(sample_rate: int, num_mel_bins: int) -> np.ndarray:
    import librosa

    return librosa.filters.mel(
        sr=sample_rate, n_fft=2048, n_mels=num_mel_bins, htk=True, norm=None
    )


def torchaudio_mask(
    spec: np.ndarray, axis: int, mask_param: int, rng: np.random.Generator
) -> None:
    """One torchaudio ``FrequencyMasking``/``TimeMasking`` mask, in place (zeros).

    ``width = int(u1 * mask_param)`` and ``start = int(u2 * (size - u1 * mask_param))``
    with ``u1, u2 ~ U[0, 1)``: the width is uniform in ``[0, mask_param)`` and the
    band ``[start, start + width)`` lies inside the axis.

    Args:
      spec: ``(time, freq)``.
      axis: 0 masks time frames, 1 masks frequency bins.
      mask_param: the maximum width (exclusive).
      rng: generator.
    """
    value = rng.random() * mask_param
    start = int(rng.random() * (spec.shape[axis] - value))
    band = slice(start, start + int(value))
    if axis == 0:
        spec[band] = 0.0
    else:
        spec[:, band] = 0.0


def _epic_masks(
    spec: np.ndarray, axis: int, mask_param: int, rng: np.random.Generator, count: int = 2
) -> None:
    """The EPIC-Sounds loader's masks, in place: up to ``count`` bands set to the mean.

    Each mask draws ``w`` in ``[0, mask_param)``, ``start`` in ``[0, size - w)`` and
    ``end`` in ``[start, start + w)``; a zero width ends the masking of this axis.
    """
    size = spec.shape[axis]
    for _ in range(count):
        width = int(rng.integers(0, mask_param))
        start = int(rng.integers(0, size - width))
        if width == 0:
            return
        band = slice(start, int(rng.integers(start, start + width)))
        if axis == 0:
            spec[band] = spec.mean()
        else:
            spec[:, band] = spec.mean()


def _add_noise(spec: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``spec + U[0,1)^(T,F) * U[0,1) / 10``, rolled in time by ``randint(-10, 10)``."""
    noisy = spec + rng.random(spec.shape, dtype=np.float32) * np.float32(rng.random() / 10)
    return np.roll(noisy, int(rng.integers(-10, 10)), axis=0)


class _ClipTransform:
    """Index -> example dict (or a failure marker); picklable for worker processes.

    Called as ``transform(index, rng)`` by ``random_map`` (training) and as
    ``transform(index)`` by ``map`` (evaluation). ``index == -1`` is an evaluation
    padding row.
    """

    def __init__(self, source: datasets.AudioSource, options: FeatureOptions):
        self._source = source
        self._opt = options

    def _features(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        opt = self._opt
        if opt.feature == "epic_logmel":
            spec = epic_log_mel(
                waveform[0], sample_rate, opt.num_mel_bins, opt.epic_window_ms, opt.epic_hop_ms
            )
            frames = spec.shape[0]
            if frames < opt.target_length:
                return np.pad(spec, ((0, opt.target_length - frames), (0, 0)), mode="edge")
            return spec[: opt.target_length]
        spec = audio.fbank_from_waveform(
            waveform, sample_rate, opt.num_mel_bins, opt.frame_shift_ms
        )
        return audio.pad_or_cut(spec, opt.target_length)

    def _empty(self) -> Element:
        opt = self._opt
        return {
            "fbank": np.zeros((opt.target_length, opt.num_mel_bins), np.float32),
            "label": np.zeros((opt.num_classes,), np.float32),
            "mask": np.False_,
        }

    def __call__(self, index: int, rng: np.random.Generator | None = None) -> Element:
        opt = self._opt
        if index < 0:
            return self._empty()
        record = self._source[index]
        label = np.zeros((opt.num_classes,), np.float32)
        keys = record.key
        try:
            waveform, sample_rate = self._source.load_audio(index, rng)
            if rng is not None and opt.mixup > 0 and rng.random() < opt.mixup:
                other_index = int(rng.integers(len(self._source)))
                other = self._source[other_index]
                keys = f"{record.key} mixed with {other.key}"
                other_waveform, _ = self._source.load_audio(other_index, rng)
                lam = rng.beta(10, 10)
                waveform = mix_waveforms(waveform, other_waveform, lam)
                np.add.at(label, list(record.labels), lam)
                np.add.at(label, list(other.labels), 1.0 - lam)
            else:
                label[list(record.labels)] = 1.0
            spec = self._features(waveform, sample_rate)
        except audio.AudioLoadError as e:
            return self._failure((e.path, e.kind, str(e)))
        except ValueError as e:  # a clip shorter than one frame.
            return self._failure((record.key, "too_short", f"{keys}: {e}"))

        if rng is not None:
            spec = np.array(spec, dtype=np.float32)  # writable copy for in-place masks.
            if opt.mask_style == "epic":
                if opt.freqm:
                    _epic_masks(spec, 1, opt.freqm, rng)
                if opt.timem:
                    _epic_masks(spec, 0, opt.timem, rng)
            else:
                if opt.freqm:
                    torchaudio_mask(spec, 1, opt.freqm, rng)
                if opt.timem:
                    torchaudio_mask(spec, 0, opt.timem, rng)
        if not opt.skip_norm:
            spec = (spec - np.float32(opt.mean)) / np.float32(2.0 * opt.std)
        if rng is not None and opt.noise:
            spec = _add_noise(spec, rng)
        example = {"fbank": spec.astype(np.float32), "label": label}
        if not opt.train:
            example["mask"] = np.True_
        return example

    def _failure(self, failure: Failure) -> Element:
        if self._opt.train:
            return {"failure": failure}
        return {**self._empty(), "failure": failure}


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


def _mark_flags_parsed_for_workers(config: ml_collections.ConfigDict) -> None:
    if config.num_workers > 0 and not flags.FLAGS.is_parsed():
        # grain's workers read absl flags; outside app.run (tests, notebooks) use
        # their defaults instead of failing with UnparsedFlagAccessError.
        flags.FLAGS.mark_as_parsed()


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
        settings, ``num_workers`` (0 = in this process), ``read_threads``,
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
    ds = ds.random_map(_ClipTransform(source, FeatureOptions.from_config(config, True)),
                       seed=augment_seed)
    _mark_flags_parsed_for_workers(config)
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
    ds = ds.map(_ClipTransform(source, FeatureOptions.from_config(config, False)))
    _mark_flags_parsed_for_workers(config)
    return BatchIterator(ds, config, batch_size, train=False,
                         limit=_bad_limit(config, len(source)), num_records=len(source))
