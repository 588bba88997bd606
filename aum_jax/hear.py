"""The HEAR 2021 API (https://hearbenchmark.com/hear-api.html) over any aum-jax model directory.

  from aum_jax import hear

  model = hear.load_model("models/aum_base_as")          # a model directory, or a training workdir
  scene = hear.get_scene_embeddings(audio, model)       # (n_sounds, model.scene_embedding_size)
  emb, ms = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, n_timestamps, D), (n_sounds, n_timestamps)

``audio`` is float32 ``(n_sounds, n_samples)`` at ``model.sample_rate`` (a NumPy or JAX array,
or a torch tensor); the results are NumPy float32 arrays. Each sound is cut into windows of
the model's input length; each window becomes the model's input as in
training (:meth:`aum_jax.preprocessing.Preprocessing.features`: the fbank and the statistics
of the model's ``preprocessing.json``), and the windows of all sounds run through the model
in fixed-size batches (one compiled program per batch size).

- Scene embedding: the final cls token after the last norm, the vector the model's head
  reads (the original's ``return_features``; the mean of the tokens for a model without
  one), averaged over windows that follow one another, each weighted by the length of
  audio it holds.
- Timestamp embedding: the final patch tokens on their (frequency, time) grid, averaged
  over frequency: one vector per time patch, stamped at the centre of the patch in ms.
  The windows start every ``T' * stride`` frames (the input's length unless the patches
  overlap), so the time patches of successive windows continue one evenly spaced grid.
  Patches whose centre falls past the end of the sound are left out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from aum_jax import evaluate, model_files, predict, preprocessing
from aum_jax.models import AudioMamba
from aum_jax.predict import embeddings


@dataclasses.dataclass
class HearModel:
    """An aum-jax model with what the HEAR API asks of a model.

    Attributes:
      model: the AudioMamba.
      prep: its preprocessing (rate, fbank, statistics).
      batch_size: windows per forward pass.
      matmul_precision: float32 matmul precision ("highest" computes as the original).
    """

    model: AudioMamba
    prep: preprocessing.Preprocessing
    batch_size: int = 32
    matmul_precision: str = "highest"

    @property
    def sample_rate(self) -> int:
        """The rate (Hz) the audio must be given at: the model's training rate."""
        return self.prep.sample_rate

    @property
    def scene_embedding_size(self) -> int:
        return self.model.config.embed_dim

    @property
    def timestamp_embedding_size(self) -> int:
        return self.model.config.embed_dim


def load_model(model_file_path: str | os.PathLike, *, batch_size: int = 32,
               matmul_precision: str = "highest") -> HearModel:
    """The model of an aum-jax model directory (or a training workdir's ``model/``).

    Raises:
      FileNotFoundError, ModelDirectoryError: not a model directory, or a damaged one.
      ValueError: the model has no ``preprocessing.json`` or no normalisation statistics.
    """
    if not os.fspath(model_file_path):
        raise ValueError("load_model needs an aum-jax model directory (aum-jax ships no default weights)")
    directory = model_files.model_directory(model_file_path)
    model = model_files.load_model(directory)
    prep = preprocessing.load(directory)
    if prep is None:
        raise ValueError(f"{directory} has no {preprocessing.PREPROCESSING_FILE}: its input features are unknown "
                         "(convert it with --dataset, or --mean/--std and --sample-rate)")
    prep.require_statistics(str(directory))
    return HearModel(model, prep, batch_size, matmul_precision)


def _sounds(audio: Any) -> np.ndarray:
    """``(n_sounds, n_samples)`` float32 from a NumPy, JAX or torch array; anything else raises ValueError."""
    if hasattr(audio, "detach"):  # a torch tensor, on any device.
        audio = audio.detach().cpu().numpy()
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 2 or 0 in audio.shape:
        raise ValueError(f"audio must be (n_sounds, n_samples) with both > 0, got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise ValueError("audio holds NaN or Inf samples")
    return audio


def _run(audio: np.ndarray, model: HearModel, embed: evaluate.Embed,
         hop_seconds: float) -> tuple[evaluate.Outputs, np.ndarray]:
    """Every window of every sound through the model: its outputs (sound-major) and the ``(W, 2)`` sample bounds."""
    rate = model.sample_rate
    bounds = np.array(predict.window_bounds(audio.shape[1], rate, model.prep.window_seconds, hop_seconds))

    def rows() -> Iterator[np.ndarray]:
        for sound in audio:
            for start, end in bounds:
                yield model.prep.features(sound[None, start:end], rate)

    outputs = predict.run_model(model.model, rows(), model.batch_size, model.matmul_precision, embed=embed)
    return outputs, bounds


def get_scene_embeddings(audio: Any, model: HearModel) -> np.ndarray:
    """``(n_sounds, n_samples)`` at ``model.sample_rate`` -> ``(n_sounds, scene_embedding_size)`` float32."""
    audio = _sounds(audio)
    outputs, bounds = _run(audio, model, evaluate.Embed(), model.prep.window_seconds)
    pooled = outputs.features.reshape(len(audio), len(bounds), -1)
    weights = (bounds[:, 1] - bounds[:, 0]).astype(np.float64)
    return np.einsum("nwd,w->nd", pooled, weights / weights.sum()).astype(np.float32)


def get_timestamp_embeddings(audio: Any, model: HearModel) -> tuple[np.ndarray, np.ndarray]:
    """``(n_sounds, n_samples)`` -> embeddings ``(n_sounds, n_timestamps, timestamp_embedding_size)``
    float32 and their timestamps ``(n_sounds, n_timestamps)`` in ms (the centres of the time patches)."""
    audio = _sounds(audio)
    hop = embeddings.time_patch_span(model.model, model.prep)  # the windows' time patches tile one grid.
    outputs, bounds = _run(audio, model, evaluate.Embed(tokens=True), hop)
    per_time = outputs.tokens.mean(axis=1)  # (N * W, T', D): averaged over the frequency patches.
    per_time = per_time.reshape(len(audio), len(bounds), *per_time.shape[1:])
    starts_ms, ends_ms = (bounds.T * 1000.0 / model.sample_rate)
    centres_ms = starts_ms[:, None] + embeddings.time_patch_centres(model.model, model.prep)[None] * 1000.0
    keep = centres_ms < ends_ms[:, None]  # (W, T'): patches centred on audio.
    keep.flat[0] = True  # a sound shorter than half a patch keeps its first.
    timestamps = np.broadcast_to(centres_ms[keep], (len(audio), int(keep.sum())))
    return per_time[:, keep].astype(np.float32), timestamps.astype(np.float32)
