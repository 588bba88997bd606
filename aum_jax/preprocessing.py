"""What a model expects of its input and means by its output, stored beside its weights.

A model directory holds ``preprocessing.json`` next to ``config.json``: the feature
settings (fbank kind, mel bins, frame shift, target length), the normalisation
statistics, the class names and the training loss (which says whether a score is a
sigmoid, for multi-label models, or a softmax, for single-label ones). Training writes
it from the data config, the converter from ``--dataset`` or explicit statistics, and
``aum_jax.predict`` and ``aum_jax.export`` read it, so a model is used with the
statistics it was trained with.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from aum_jax import audio, datasets

PREPROCESSING_FILE = "preprocessing.json"
SCORES = {"BCE": "sigmoid", "CE": "softmax"}  # training loss -> score of a prediction.


class MissingStatisticsError(ValueError):
    """A model has no normalisation statistics and none were given."""


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """Audio -> normalised features ``(target_length, num_mel_bins)``, and what logits mean.

    Attributes:
      feature: "kaldi_fbank" (the original's AudiosetDataset) or "epic_logmel".
      num_mel_bins: mel filters.
      frame_shift_ms: fbank hop in milliseconds (kaldi_fbank).
      target_length: frames after zero-padding or cutting.
      mean, std: fbank statistics of the training set: ``x -> (x - mean) / (2 std)``;
        None when unknown.
      skip_norm: features are used unnormalised (EPIC-Sounds).
      loss: training loss, "BCE" (sigmoid scores) or "CE" (softmax scores); "" unknown.
      class_names: display names in class-index order; empty when unknown.
      dataset: the dataset the statistics come from, for messages.
      epic_window_ms, epic_hop_ms: window and hop of the epic_logmel feature.
    """

    feature: str = "kaldi_fbank"
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

    @property
    def score(self) -> str:
        """"sigmoid" or "softmax", from the training loss (sigmoid when it is unknown)."""
        return SCORES.get(self.loss, "sigmoid")

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
        cls, data: ml_collections.ConfigDict, loss: str, class_names: list[str] | tuple[str, ...] = ()
    ) -> Preprocessing:
        """The preprocessing of a training config's ``config.data``."""
        return cls(
            feature=data.feature,
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
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in values.items() if k in known}  # "score" is derived.
        values["class_names"] = tuple(values.get("class_names") or ())
        return cls(**values)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    # ------------------------------------------------------------------ features

    def features(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Waveform ``(channels, samples)`` -> normalised features ``(target_length, num_mel_bins)``.

        The same steps as the evaluation input pipeline: fbank (whole-clip mean removed),
        pad or cut, then ``(x - mean) / (2 std)`` unless ``skip_norm``.
        """
        if self.feature == "epic_logmel":
            spec = audio.epic_log_mel(waveform[0], sample_rate, self.num_mel_bins, self.epic_window_ms, self.epic_hop_ms)
            frames = spec.shape[0]
            if frames < self.target_length:
                spec = np.pad(spec, ((0, self.target_length - frames), (0, 0)), mode="edge")
            spec = spec[: self.target_length]
        elif self.feature == "kaldi_fbank":
            spec = audio.pad_or_cut(
                audio.fbank_from_waveform(waveform, sample_rate, self.num_mel_bins, self.frame_shift_ms),
                self.target_length,
            )
        else:
            raise ValueError(f"unknown feature {self.feature!r}")
        if not self.skip_norm:
            self.require_statistics("this model")
            spec = audio.normalize(spec, self.mean, self.std)
        return np.asarray(spec, np.float32)


def save(preprocessing: Preprocessing, directory: str | os.PathLike) -> None:
    """Writes ``directory/preprocessing.json``."""
    preprocessing.save(Path(directory) / PREPROCESSING_FILE)


def load(directory: str | os.PathLike) -> Preprocessing | None:
    """The preprocessing stored in a model directory, or None for a model without one."""
    path = Path(directory) / PREPROCESSING_FILE
    if not path.is_file():
        return None
    try:
        return Preprocessing.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a valid preprocessing file ({e})") from e


def for_model(directory: str | os.PathLike, num_mel_bins: int, target_length: int) -> Preprocessing:
    """The stored preprocessing of a model, or (older model directories) one without statistics."""
    stored = load(directory)
    if stored is not None:
        return stored
    return Preprocessing(num_mel_bins=num_mel_bins, target_length=target_length)


def for_training(config: ml_collections.ConfigDict) -> Preprocessing:
    """The preprocessing of a training config: its data settings, loss and label names."""
    names: list[str] = []
    if config.data.get("label_csv"):
        names = datasets.load_label_csv(os.path.expanduser(config.data.label_csv))[1]
    return Preprocessing.from_data_config(config.data, config.train.loss, names)
