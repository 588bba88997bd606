"""The registry of per-clip stages, and their composition into a grain dataset of examples.

:data:`REGISTRY` lists every stage (:class:`aum_jax.data.pipeline.stages.base.Stage`, one
module each under :mod:`aum_jax.data.pipeline.stages`) in the order they were added; a new
stage is one module plus one line appended there. A stage's ``order`` places it in a clip's
sequence; the registry's order seeds the random streams, so appending a stage leaves every
existing stream, and so the batches of a seed, as they were.
"""

from __future__ import annotations

from typing import Any

import grain
import ml_collections
import numpy as np

from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.pipeline.stages import (crop, decode, events, features, masks, mixup, noise, normalize, teacher_input,
                                          warp)
from aum_jax.data.pipeline.stages.base import ClipContext, Element, Stage
from aum_jax.data.records import AudioSource

REGISTRY: tuple[type[Stage], ...] = (
    decode.Decode,
    mixup.Mixup,
    features.Features,
    masks.Masks,
    normalize.Normalize,
    noise.Noise,
    warp.FrequencyWarp,
    teacher_input.TeacherInput,
    events.FrameTargets,
    crop.RandomCrop,
)


# What a training example carries besides its features and labels, where its source and stages give it.
TRAINING_EXTRAS = ("teacher", "labelled", "teacher_fbank", "frame_label", "frame_valid", "strong")


def stream_seeds(seed: int) -> dict[str, int]:
    """Each registered random stream's seed, drawn from ``seed`` in :data:`REGISTRY` order."""
    streams = [stage.stream for stage in REGISTRY if stage.stream]
    if len(set(streams)) != len(streams):
        raise ValueError(f"two registered stages share a random stream: {streams}")
    return dict(zip(streams, np.random.SeedSequence(seed).generate_state(len(streams)).tolist()))


def clip_context(config: ml_collections.ConfigDict, train: bool, source: AudioSource | None = None,
                 teacher_preprocessing: Preprocessing | None = None) -> ClipContext:
    """The :class:`ClipContext` of a data config (``configs/data.py``)."""
    partly_labelled = train and source is not None and source.num_unlabelled > 0
    return ClipContext(Preprocessing.from_data_config(config), config.num_classes, train, source, partly_labelled,
                       teacher_preprocessing if train else None)


def build_stages(config: ml_collections.ConfigDict, context: ClipContext) -> list[Stage]:
    """The stages ``config`` turns on, in a clip's order; evaluation leaves out the train-only ones.

    Raises:
      ValueError: a stage's settings cannot work (each stage's ``check``, in training and evaluation).
    """
    ordered = sorted(REGISTRY, key=lambda stage: stage.order)
    for stage in ordered:
        stage.check(config, context)
    return [stage(config, context) for stage in ordered
            if (context.train or not stage.train_only) and stage.enabled(config, context)]


def check(config: ml_collections.ConfigDict, train: bool) -> None:
    """Raises ValueError for feature or stage settings of ``config`` that cannot work."""
    build_stages(config, clip_context(config, train))


class _Kept:
    """Source index -> the stages up to one that :attr:`~Stage.keeps_earlier`, computed once per clip per process.

    For ``cache_features``: without random stages before the fbank a clip's fbank is the same
    every epoch, so each is kept (``target_length * num_mel_bins`` float32 per clip) and handed
    out as a fresh copy (the masks write into it). Failures are not kept: they are retried
    and counted again. Worker processes start empty and fill their own copies.
    """

    def __init__(self, stages: list[Stage]):
        self._stages = stages
        self._kept: dict[int, Element] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_kept": {}}

    def __call__(self, index: int) -> Element:
        element = self._kept.get(index)
        if element is None:
            element = index
            for stage in self._stages:
                element = stage(element)
            if "fbank" not in element:
                return element
            self._kept[index] = element
        return {**element, "fbank": element["fbank"].copy()}


class _Example:
    """The pipeline's element: ``{"fbank", "label"}`` (+ ``mask`` in evaluation; + ``teacher``
    targets, the ``labelled`` flag and the frame targets in training where the source and
    ``frame_targets`` give them) or a failure.

    In evaluation a failed clip or a padding row becomes zeros with ``mask`` False (a
    failure keeps its marker, to be counted).
    """

    def __init__(self, context: ClipContext):
        self._context = context

    def __call__(self, element: Element) -> Element:
        context = self._context
        if "fbank" in element:
            example = {"fbank": element["fbank"], "label": element["label"]}
            if not context.train:
                return {**example, "mask": np.True_}
            return {**example, **{k: element[k] for k in TRAINING_EXTRAS if k in element}}
        if context.train:
            return element
        prep = context.preprocessing
        empty = {"fbank": np.zeros((prep.target_length, prep.num_mel_bins), np.float32),
                 "label": np.zeros((context.num_classes,), np.float32), "mask": np.False_}
        return {**empty, **({"failure": element["failure"]} if "failure" in element else {})}


def examples(ds: grain.MapDataset, config: ml_collections.ConfigDict, source: AudioSource, train: bool,
             seed: int, teacher_preprocessing: Preprocessing | None = None) -> grain.MapDataset:
    """Source indices -> examples, per clip in the order of the original ``AudiosetDataset.__getitem__``.

    The registered stages in their ``order``: decode at the model's rate (stream "decode": a
    source's random crop), training mixup (stream "mixup"), fbank, training frequency warp
    (stream "warp"; not in the original) and SpecAugment masks (stream "masks"), normalise,
    training noise and time roll (stream "noise"). With ``cache_features`` the stages up to
    the fbank run once per clip. Each random stage draws from its own per-clip generator
    (grain's ``random_map``), seeded by :func:`stream_seeds` and the clip's position.

    Raises:
      ValueError: settings that cannot work, or ``cache_features`` with a source that crops at random.
    """
    context = clip_context(config, train, source, teacher_preprocessing)
    stages = build_stages(config, context)
    seeds = stream_seeds(seed)
    kept = next((i + 1 for i, stage in enumerate(stages) if stage.keeps_earlier), 0)
    if kept:
        if source.random_crops:
            raise ValueError("cache_features needs a source without random crops (this one crops each clip "
                             "at random in training, so its features change every epoch)")
        ds = ds.map(_Kept(stages[:kept]))
    for stage in stages[kept:]:
        ds = ds.random_map(stage, seed=seeds[stage.stream]) if stage.stream and train else ds.map(stage)
    return ds.map(_Example(context))
