"""The one definition of a model's input, and what its output means, stored beside its weights.

:class:`Preprocessing` turns a waveform into the model's input: resampled to the model's
rate, fbank (:mod:`aum_jax.data.features.kaldi`, or EPIC-Sounds' log-mel:
:mod:`aum_jax.data.features.epic_logmel`), padded or cut to
``target_length`` frames, then normalised with the training set's statistics. The training
pipeline's stages (:mod:`aum_jax.data.pipeline.stages`) call its :meth:`~Preprocessing.resample`,
:meth:`~Preprocessing.spectrogram` and :meth:`~Preprocessing.normalize`, with the
augmentations in between; :mod:`aum_jax.predict` calls :meth:`~Preprocessing.features`.
:meth:`~Preprocessing.frames` gives every frame of a recording, unpadded (the one-pass path), and
:class:`aum_jax.data.features.streaming.StreamingFeatures` the same frames as the audio arrives,
for a model whose features do not remove the whole waveform's mean (``remove_waveform_mean``).

A model directory holds ``preprocessing.json`` next to ``config.json``: these settings,
the class names and the training loss (which says whether a score is a sigmoid, for
multi-label models, or a softmax, for single-label ones). Training writes it from the
data config (:func:`aum_jax.data.sources.labels.training_preprocessing`), the converter
from ``--dataset`` or explicit statistics, and ``aum_jax.predict`` and ``aum_jax.export``
read it (:func:`aum_jax.checkpoints.model_files.load_preprocessing`), so a model is used as
it was trained.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np

from aum_jax.core.errors import UserError
from aum_jax.data.features import audio, epic_logmel, kaldi

SCORES = {"BCE": "sigmoid", "CE": "softmax"}  # training loss -> score of a prediction.
LOGITS = "logits"  # the "score" of a model whose training loss is unknown: raw logits.
# The rate each feature's recipes prepare their audio at.
RECIPE_SAMPLE_RATES = {"kaldi_fbank": 16_000, "epic_logmel": 24_000}
# AudioSet's fbank statistics (the original's --dataset_mean/--dataset_std default).
AUDIOSET_MEAN, AUDIOSET_STD = -4.2677393, 4.5689974


class MissingStatisticsError(UserError, ValueError):
    """A model has no normalisation statistics and none were given."""


def normalize(fbank: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The original's input normalisation ``(fbank - mean) / (2 * std)``, float32.

    Args:
      fbank: ``(..., frames, bins)``.
      mean, std: the training set's fbank statistics (e.g. :data:`AUDIOSET_MEAN`,
        :data:`AUDIOSET_STD`; ``scripts/get_norm_stats.py`` computes them).
    """
    return ((np.asarray(fbank, np.float32) - np.float32(mean)) / np.float32(2.0 * std)).astype(np.float32)


def pad_or_cut(fbank: np.ndarray, target_length: int, mode: str = "constant") -> np.ndarray:
    """Pads at the end (zeros, or ``mode="edge"``: the last frame repeated), or cuts, to ``target_length`` frames.

    Args:
      fbank: ``(frames, bins)``.
      target_length: the wanted number of frames (> 0).
      mode: ``np.pad``'s mode: "constant" (the original's zeros) or "edge" (EPIC-Sounds).

    Returns:
      ``(target_length, bins)``, same dtype as ``fbank``.
    """
    fbank = np.asarray(fbank)
    if fbank.ndim != 2:
        raise ValueError(f"fbank must have shape (frames, bins), got shape {fbank.shape}")
    target_length = int(target_length)
    if target_length <= 0:
        raise ValueError(f"target_length must be positive, got {target_length}")
    missing = target_length - fbank.shape[0]
    return np.pad(fbank, ((0, missing), (0, 0)), mode=mode) if missing > 0 else fbank[:target_length]


_NUMBER = ((int, float), "a number")
_FIELD_TYPES = {  # field -> (accepted types, in words); bool is accepted only where named.
    "feature": ((str,), "a string"), "sample_rate": ((int,), "a whole number"),
    "num_mel_bins": ((int,), "a whole number"), "frame_shift_ms": _NUMBER, "target_length": ((int,), "a whole number"),
    "mean": ((int, float, type(None)), "a number or null"), "std": ((int, float, type(None)), "a number or null"),
    "skip_norm": ((bool,), "true or false"), "loss": ((str,), "a string"), "class_names": ((tuple,), "a list of strings"),
    "dataset": ((str,), "a string"), "epic_window_ms": _NUMBER, "epic_hop_ms": _NUMBER,
    "remove_waveform_mean": ((bool,), "true or false"),
}
# Fields added after model directories were first written, with the value a preprocessing.json
# without one means (the behaviour before the field existed).
_ADDED_FIELDS = {"remove_waveform_mean": True}


# What each Preprocessing field is: how audio becomes feature frames (a model directory fixes them for
# whatever fine-tunes from it), the input's length, its normalisation, and what the logits mean.
FEATURE_FIELDS = ("feature", "sample_rate", "num_mel_bins", "frame_shift_ms", "epic_window_ms", "epic_hop_ms",
                  "remove_waveform_mean")
LENGTH_FIELDS = ("target_length",)
NORMALISATION_FIELDS = ("mean", "std", "skip_norm", "dataset")
LABEL_FIELDS = ("loss", "class_names")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Audio -> normalised features ``(target_length, num_mel_bins)``, and what logits mean.

    Attributes:
      feature: "kaldi_fbank" (the original's AudiosetDataset) or "epic_logmel".
      sample_rate: the rate (Hz) the model's training audio was prepared at; audio at
        another rate is resampled to it first.
      num_mel_bins: mel filters.
      frame_shift_ms: fbank hop in milliseconds (kaldi_fbank).
      target_length: frames after padding (zeros; EPIC: edge) or cutting.
      mean, std: fbank statistics of the training set: ``x -> (x - mean) / (2 std)``;
        None when unknown.
      skip_norm: features are used unnormalised (EPIC-Sounds).
      loss: training loss, "BCE" (sigmoid scores) or "CE" (softmax scores); "" unknown.
      class_names: display names in class-index order; empty when unknown.
      dataset: the dataset the statistics come from, for messages.
      epic_window_ms, epic_hop_ms: window and hop of the epic_logmel feature.
      remove_waveform_mean: kaldi_fbank subtracts the mean of the WHOLE waveform before the
        fbank (True: the original AST/AuM front end, and every model directory written before the
        field existed). False: each frame depends on its own samples alone, so the features can
        be computed as the audio arrives (:mod:`aum_jax.data.features.streaming`); for streaming,
        one-pass models. The epic_logmel recipe removes no mean, whatever this says.
    """

    feature: str = "kaldi_fbank"
    sample_rate: int = RECIPE_SAMPLE_RATES["kaldi_fbank"]
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    target_length: int = 1024
    mean: float | None = None
    std: float | None = None
    skip_norm: bool = False
    loss: str = ""
    class_names: tuple[str, ...] = ()
    dataset: str = ""
    epic_window_ms: float = 10.0
    epic_hop_ms: float = 5.0
    remove_waveform_mean: bool = True  # kaldi_fbank: whole-waveform mean removed first (False: streamable).

    def __post_init__(self) -> None:
        for name, (kinds, wanted) in _FIELD_TYPES.items():
            value = getattr(self, name)
            if not isinstance(value, kinds) or isinstance(value, bool) is not (bool in kinds):
                raise ValueError(f"field {name} must be {wanted}, got {value!r}")
        if not all(isinstance(name, str) for name in self.class_names):
            raise ValueError(f"field class_names must be a list of strings, got {list(self.class_names)!r}")
        if self.feature not in RECIPE_SAMPLE_RATES:
            raise ValueError(f"field feature is {self.feature!r}; use one of {', '.join(RECIPE_SAMPLE_RATES)}")
        if self.loss not in ("", *SCORES):
            raise ValueError(f"field loss is {self.loss!r}; use one of {', '.join(SCORES)} (or \"\": unknown)")
        for name in ("sample_rate", "num_mel_bins", "frame_shift_ms", "target_length", "epic_window_ms", "epic_hop_ms"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"field {name} must be positive, got {value!r}")
        if self.mean is not None and not math.isfinite(self.mean):
            raise ValueError(f"field mean must be a finite number, got {self.mean!r}")
        if self.std is not None and not (math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"field std must be a finite number above 0, got {self.std!r}")

    @property
    def score(self) -> str:
        """"sigmoid" or "softmax", from the training loss; "logits" when it is unknown."""
        return SCORES.get(self.loss, LOGITS)

    @property
    def has_statistics(self) -> bool:
        return self.skip_norm or (self.mean is not None and self.std is not None)

    @property
    def window_seconds(self) -> float:
        """Seconds of audio one model input covers."""
        hop = self.epic_hop_ms if self.feature == "epic_logmel" else self.frame_shift_ms
        return self.target_length * hop / 1000.0

    @classmethod
    def from_data_config(
        cls, data: ml_collections.ConfigDict, loss: str = "", class_names: list[str] | tuple[str, ...] = ()
    ) -> Preprocessing:
        """The preprocessing of a data config (``config.data``; ``configs/data.py``)."""
        return cls(
            feature=data.feature,
            sample_rate=int(data.sample_rate),
            num_mel_bins=int(data.num_mel_bins),
            frame_shift_ms=float(data.frame_shift_ms),
            target_length=int(data.audio_length),
            mean=float(data.mean),
            std=float(data.std),
            skip_norm=bool(data.skip_norm),
            loss=loss,
            class_names=tuple(class_names),
            dataset=data.name,
            epic_window_ms=float(data.epic_window_ms),
            epic_hop_ms=float(data.epic_hop_ms),
            # A data config without the knob means the original front end.
            remove_waveform_mean=data.get("remove_waveform_mean", _ADDED_FIELDS["remove_waveform_mean"]),
        )

    def replace(self, **changes: Any) -> Preprocessing:
        """A copy with ``changes``; None values are ignored (no override)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def require_statistics(self, where: str) -> None:
        """Raises :class:`MissingStatisticsError` saying how to supply missing statistics."""
        if not self.has_statistics:
            raise MissingStatisticsError(
                f"{where} has no normalisation statistics (mean and std of the training set's fbank). "
                "Pass --mean and --std (AudioSet's are -4.2677393 and 4.5689974), or store them in the "
                "model: python scripts/convert_checkpoint.py ... --dataset NAME (or --mean/--std), "
                "or compute them with scripts/get_norm_stats.py."
            )

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["class_names"] = list(self.class_names)
        values["score"] = self.score
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Preprocessing:
        """The inverse of :meth:`to_dict`: every field present and checked (``score``, derived, is ignored).

        A field added later (``remove_waveform_mean``) may be absent, as in files written before it
        existed: it then reads as the behaviour those files had (True).

        Raises:
          ValueError: an unknown or missing field, or a field of the wrong type or range (named).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown, missing = sorted(set(values) - known - {"score"}), sorted(known - set(values) - set(_ADDED_FIELDS))
        if unknown or missing:
            raise ValueError("; ".join(filter(None, (unknown and f"unknown field(s) {', '.join(unknown)}",
                                                    missing and f"missing field(s) {', '.join(missing)}"))))
        values = {**_ADDED_FIELDS, **{k: v for k, v in values.items() if k in known}}
        names = values.get("class_names", [])
        if not isinstance(names, list):
            raise ValueError(f"field class_names must be a list of strings, got {names!r}")
        values["class_names"] = tuple(names)
        return cls(**values)

    # ------------------------------------------------------------------ features

    def resample(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Waveform ``(channels, samples)`` at ``sample_rate`` -> the same at the model's rate."""
        return audio.resample(waveform, sample_rate, self.sample_rate)

    def spectrogram(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Waveform ``(channels, samples)`` -> unnormalised features ``(target_length, num_mel_bins)`` float32.

        Resampled to the model's rate; fbank (first channel; the whole clip's mean removed
        first unless ``remove_waveform_mean`` is False), or the EPIC log-mel; padded or cut. A
        fresh array (augmentations write into it).

        Raises:
          ValueError: a clip shorter than one fbank frame.
        """
        spec = self._unpadded_spectrogram(self.resample(waveform, sample_rate))
        mode = "edge" if self.feature == "epic_logmel" else "constant"
        return np.array(pad_or_cut(spec, self.target_length, mode), np.float32)

    def _unpadded_spectrogram(self, waveform: np.ndarray) -> np.ndarray:
        """Waveform ``(channels, samples)`` at the model's rate -> every frame, unnormalised: ``(frames, bins)``."""
        if self.feature == "epic_logmel":
            return epic_logmel.epic_log_mel(waveform[0], self.sample_rate, self.num_mel_bins, self.epic_window_ms,
                                            self.epic_hop_ms)
        if self.remove_waveform_mean:
            return kaldi.fbank_from_waveform(waveform, self.sample_rate, self.num_mel_bins, self.frame_shift_ms)
        return kaldi.kaldi_fbank(waveform, self.sample_rate, self.num_mel_bins, self.frame_shift_ms)

    def normalize(self, spec: np.ndarray) -> np.ndarray:
        """``(x - mean) / (2 std)`` unless ``skip_norm``.

        Raises:
          MissingStatisticsError: the statistics are unknown.
        """
        if self.skip_norm:
            return spec
        self.require_statistics("this model")
        return normalize(spec, self.mean, self.std)

    def features(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Waveform ``(channels, samples)`` -> the model's input ``(target_length, num_mel_bins)`` float32.

        The evaluation pipeline's steps: :meth:`spectrogram`, then :meth:`normalize`.
        """
        return self.normalize(self.spectrogram(waveform, sample_rate))

    def frames(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Waveform ``(channels, samples)`` -> every feature frame, normalised: ``(frames, num_mel_bins)`` float32.

        :meth:`features` without the padding or cutting to ``target_length``: the input of a
        one-pass model, whatever the recording's length (kaldi_fbank: ``1 + (samples - window) //
        shift`` frames at the model's rate, :func:`aum_jax.data.features.kaldi.frame_layout`). With
        ``remove_waveform_mean`` False these are exactly the frames that
        :class:`aum_jax.data.features.streaming.StreamingFeatures` gives for the same audio pushed
        in any chunks (first channel; resampled here, as there, by soxr's HQ filter).

        Raises:
          ValueError: a clip shorter than one fbank frame.
          MissingStatisticsError: the normalisation statistics are unknown.
        """
        spec = self._unpadded_spectrogram(self.resample(waveform, sample_rate))
        return self.normalize(np.asarray(spec, np.float32))
