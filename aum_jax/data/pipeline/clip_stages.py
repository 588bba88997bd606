"""The per-clip stages of the input pipeline, and their composition.

Each stage is a picklable grain map over one clip's element, a dict; an element that
failed (``{"failure": (key, kind, message)}``) or is an evaluation padding row passes
the stages untouched. The features themselves are :class:`aum_jax.data.features.preprocessing.Preprocessing`'s
(resampling, fbank, padding or cutting, normalisation), the augmentations
:mod:`aum_jax.data.pipeline.augment`'s. :func:`examples` composes the stages; its docstring gives their
order and the order of their random streams.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import grain
import ml_collections
import numpy as np

from aum_jax.data.features import audio
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.pipeline import augment
from aum_jax.data.sources import datasets

Element = dict[str, Any]
# A failed clip, as (key naming the file, kind of failure (audio.BAD_INPUT_KINDS), message).
Failure = tuple[str, str, str]
MASK_STYLES = ("torchaudio", "epic")
# The per-clip random streams, in the order their seeds are drawn from the pipeline seed.
RANDOM_STREAMS = ("decode", "mixup", "masks", "noise", "warp")


@dataclasses.dataclass(frozen=True)
class FeatureOptions:
    """The per-clip settings, read once from the data config (see ``configs/data.py``)."""

    preprocessing: Preprocessing
    num_classes: int
    freq_warp: float
    freqm: int
    timem: int
    mask_style: str
    mixup: float
    mixup_beta: float
    noise: bool
    noise_scale: float
    noise_max_shift: int
    cache_features: bool
    train: bool

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, train: bool) -> FeatureOptions:
        """Reads the options; evaluation turns off masks, mixup and noise (as the original).

        Raises:
          ValueError: an unknown feature or mask style, or a combination that cannot work.
        """
        preprocessing = Preprocessing.from_data_config(config)
        if config.mask_style not in MASK_STYLES:
            raise ValueError(f"unknown mask_style {config.mask_style!r}; use one of {', '.join(MASK_STYLES)}")
        if config.freq_warp and config.feature != "kaldi_fbank":
            raise ValueError(f"{config.name}: freq_warp works on the Kaldi fbank, not on {config.feature!r}")
        cache_features = bool(config.cache_features) and train
        if cache_features and config.mixup > 0:
            raise ValueError(f"{config.name}: cache_features needs mixup 0 (mixup={config.mixup} mixes waveforms "
                             "before the fbank, so a clip's features change every epoch)")
        return cls(
            preprocessing=preprocessing,
            num_classes=config.num_classes,
            freq_warp=config.freq_warp if train else 0.0,
            freqm=config.freqm if train else 0,
            timem=config.timem if train else 0,
            mask_style=config.mask_style,
            mixup=config.mixup if train else 0.0,
            mixup_beta=config.mixup_beta,
            noise=bool(config.noise) and train,
            noise_scale=config.noise_scale,
            noise_max_shift=config.noise_max_shift,
            cache_features=cache_features,
            train=train,
        )


class _Decode:
    """Source index -> ``{"key", "labels", "waveform" (channels, samples), "label"}``, at the model's rate.

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
        return {"key": record.key, "labels": record.labels, "label": label,
                "waveform": self._opt.preprocessing.resample(waveform, sample_rate)}


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
            other_waveform, other_rate = self._source.load_audio(other_index, rng)
        except audio.AudioLoadError as e:
            return {"failure": (e.path, e.kind, f"{e} (mixed into {element['key']})")}
        lam = rng.beta(self._opt.mixup_beta, self._opt.mixup_beta)
        label = np.zeros((self._opt.num_classes,), np.float32)
        np.add.at(label, list(element["labels"]), lam)
        np.add.at(label, list(other.labels), 1.0 - lam)
        other_waveform = self._opt.preprocessing.resample(other_waveform, other_rate)
        return {**element, "key": f"{element['key']} mixed with {other.key}",
                "waveform": augment.mix_waveforms(element["waveform"], other_waveform, lam),
                "label": label.astype(np.float32)}


class _Features(_Stage):
    """Waveform -> ``fbank`` (target_length, num_mel_bins): :meth:`Preprocessing.spectrogram`."""

    needs = "waveform"

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        prep = self._opt.preprocessing
        try:
            spec = prep.spectrogram(element["waveform"], prep.sample_rate)
        except ValueError as e:  # a clip shorter than one frame.
            return {"failure": (element["key"], "too_short", f"{element['key']}: {e}")}
        return {"key": element["key"], "fbank": spec, "label": element["label"]}


class _CachedFeatures:
    """Source index -> :class:`_Decode` then :class:`_Features`, computed once per process.

    For ``cache_features``: without mixup and random crops a clip's fbank is the same every
    epoch, so each is kept (``target_length * num_mel_bins`` float32 per clip) and handed out
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
        warped = augment.frequency_warp(element["fbank"], factor, self._opt.preprocessing.sample_rate)
        return {**element, "fbank": warped}


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
    """:meth:`Preprocessing.normalize` (nothing with ``skip_norm``)."""

    def apply(self, element: Element, rng: np.random.Generator | None) -> Element:
        return {**element, "fbank": self._opt.preprocessing.normalize(element["fbank"])}


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
        prep = opt.preprocessing
        empty = {"fbank": np.zeros((prep.target_length, prep.num_mel_bins), np.float32),
                 "label": np.zeros((opt.num_classes,), np.float32), "mask": np.False_}
        return {**empty, **({"failure": element["failure"]} if "failure" in element else {})}


def examples(ds: grain.MapDataset, source: datasets.AudioSource, options: FeatureOptions,
             seed: int) -> grain.MapDataset:
    """Source indices -> examples, per clip in the order of the original ``AudiosetDataset.__getitem__``.

    1. decode, resampled to the model's rate (random stream "decode": a source's random crop);
    2. training, with probability ``mixup``: mix in a uniformly drawn second clip (stream "mixup");
    3. fbank (:meth:`Preprocessing.spectrogram`); with ``cache_features`` steps 1-3 run once
       per clip (no mixup, no random crops, so no stream is used);
    4. training: frequency warp (stream "warp"; not in the original), then SpecAugment masks,
       frequency then time (stream "masks");
    5. normalise (:meth:`Preprocessing.normalize`);
    6. training: noise and time roll (stream "noise").

    Each random stage draws from its own per-clip generator (grain's ``random_map``), seeded by
    its stream's seed and the clip's position. The stream seeds are drawn from ``seed`` in the
    order of :data:`RANDOM_STREAMS` (decode, mixup, masks, noise, warp): a new stream is
    appended there, so the existing ones, and so a resumed run's augmentations, keep their seeds.
    """
    seeds = dict(zip(RANDOM_STREAMS, np.random.SeedSequence(seed).generate_state(len(RANDOM_STREAMS)).tolist()))
    decode = _Decode(source, options)
    if options.cache_features:
        if source.random_crops:
            raise ValueError("cache_features needs a source without random crops (this one crops each clip "
                             "at random in training, so its features change every epoch)")
        ds = ds.map(_CachedFeatures(decode, _Features(options)))
    else:
        ds = ds.random_map(decode, seed=seeds["decode"]) if options.train else ds.map(decode)
        if options.mixup > 0:
            ds = ds.random_map(_Mixup(options, source), seed=seeds["mixup"])
        ds = ds.map(_Features(options))
    if options.freq_warp:
        ds = ds.random_map(_Warp(options), seed=seeds["warp"])
    if options.freqm or options.timem:
        ds = ds.random_map(_Masks(options), seed=seeds["masks"])
    ds = ds.map(_Normalize(options))
    if options.noise:
        ds = ds.random_map(_Noise(options), seed=seeds["noise"])
    return ds.map(_Example(options))
