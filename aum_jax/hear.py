"""The HEAR 2021 API (https://hearbenchmark.com/hear-api.html) over any aum-jax model directory.

  from aum_jax import hear

  model = hear.load_model("models/aum_base_as")          # a model directory, or a training workdir
  scene = hear.get_scene_embeddings(audio, model)       # (n_sounds, model.scene_embedding_size)
  emb, ms = hear.get_timestamp_embeddings(audio, model)  # (n_sounds, n_timestamps, D), (n_sounds, n_timestamps)

HEAR's own tools run it as it is: ``hear-validator aum_jax.hear --model DIR`` and
``python -m heareval.embeddings.runner aum_jax.hear --model DIR --tasks-dir TASKS``.

``audio`` is ``(n_sounds, n_samples)`` at ``model.sample_rate``: a NumPy or JAX array, a
TensorFlow tensor or a torch tensor on any device, of float samples in [-1, 1] or integer
PCM, scaled by its type (:func:`aum_jax.data.features.audio.as_float_samples`: int16 / 32768,
...). Sounds of unequal lengths (a list of them) are refused: HEAR gives a batch of one length.
Float samples outside [-1, 1], which HEAR's API rules out, are embedded as they are, with one
warning (absl logging, once per process) giving their peak: the fbank sees their true level.
The results are float32 of the kind the audio came as: TensorFlow tensors for a
TensorFlow tensor, torch tensors on the audio's device for a torch tensor, NumPy arrays
otherwise. Each sound is cut into windows of the model's input length; each window becomes the
model's input as in training (:meth:`aum_jax.data.features.preprocessing.Preprocessing.features`: the
fbank and the statistics of the model's ``preprocessing.json``), and the windows of all
sounds run through the model in fixed-size batches (one compiled program per batch size).
NaN or Inf embeddings (damaged parameters, or audio far outside what the model was trained
on) raise :class:`aum_jax.inference.classify.NonFiniteOutputError` naming the sounds.

- Scene embedding: the final cls token after the last norm, the vector the model's head
  reads (the original's ``return_features``; the mean of the tokens for a model without
  one), averaged over windows that follow one another, each weighted by the length of
  audio it holds (:func:`aum_jax.inference.embeddings.pool_windows`, as ``predict
  --embeddings --pool`` pools a file).
- Timestamp embedding: the final patch tokens on their (frequency, time) grid, averaged
  over frequency: one vector per time patch, stamped at the centre of the patch in ms.
  The windows start every ``T' * stride`` frames (the input's length unless the patches
  overlap), so the time patches of successive windows continue one evenly spaced grid.
  Patches whose centre falls past the end of the sound are left out. Each batch of windows
  is averaged and written into the result as it comes out of the model, so the call holds
  the result and one batch, however long the sounds.
  With ``load_model(..., whole=True)`` each sound runs through the model once, whole
  (:mod:`aum_jax.inference.whole`): the same patch tokens averaged over frequency, stamped at
  the patches' centres, from one pass over the sound with the position embedding extended
  along time (``pos_embed``).

A one-pass model (tokens that are whole time slices of ``t`` frames, no position table, no cls
token: :func:`one_pass`) reads each whole sound in one pass by default (``whole=False`` gives it
windows): one timestamp embedding per time slice, the slice's final token, stamped at the slice's
centre, so the timestamps are ``t`` frames apart (40 ms for 4-frame slices at a 10 ms shift), for
every whole time slice of the sound (a partial last one has none, as in a stream). A causal
model that streams (:func:`aum_jax.inference.whole.streams`) reads the sounds of a batch together,
:data:`STREAM_PIECE_SLICES` slices at a time, carrying every block's state
(:meth:`aum_jax.models.aum.AudioMamba.stream`: the rows of one pass, in memory that does not grow
with the length); a bidirectional one reads each sound in one pass
(:func:`aum_jax.inference.whole.run_whole`). Its scene embedding is the mean over time of those
per-slice embeddings.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import tensorflow as tf
from absl import logging
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.data.features import preprocessing
from aum_jax.data.features.audio import as_float_samples
from aum_jax.evaluation import evaluate
from aum_jax.inference import classify, embeddings, whole, windows
from aum_jax.models import AudioMamba
from aum_jax.models.aum import WHOLE_POS_EMBEDS

# The time slices a causal one-pass model reads per compiled step (the sounds' frames are padded to a
# whole number of these).
STREAM_PIECE_SLICES = 64


def one_pass(model: AudioMamba) -> bool:
    """Whether ``model`` reads a sound of any length in one pass, a token per time slice: one patch over every
    mel bin, time slices that do not overlap, no position table and no cls token (causal or bidirectional:
    :meth:`aum_jax.models.aum.AudioMamba.one_pass_problems`)."""
    return not model.one_pass_problems()


class HearModel(tf.Module):
    """An aum-jax model with what the HEAR API asks of a model.

    A ``tf.Module`` because HEAR's validator and evaluation kit accept only a
    ``torch.nn.Module`` or a ``tf.Module``: TensorFlow is a core dependency of aum-jax (torch
    is optional), and the kits' TensorFlow path hands the model tensors without moving it to
    a device (JAX places it). It holds no TensorFlow variables.

    Attributes:
      model: the AudioMamba.
      prep: its preprocessing (rate, fbank, statistics).
      batch_size: windows per forward pass.
      matmul_precision: float32 matmul precision ("highest" computes as the original).
      whole: timestamp embeddings from one pass over each whole sound, not windows (given None: for a
        :func:`one_pass` model).
      pos_embed: with ``whole``, how the position embedding extends along time (``WHOLE_POS_EMBEDS``).
    """

    def __init__(self, model: AudioMamba, prep: preprocessing.Preprocessing, batch_size: int = 32,
                 matmul_precision: str = "highest", whole: bool | None = None, pos_embed: str = "interpolate"):
        super().__init__(name="aum_jax")
        if pos_embed not in WHOLE_POS_EMBEDS:
            raise ValueError(f"unknown pos_embed {pos_embed!r}; use one of {', '.join(WHOLE_POS_EMBEDS)}")
        self.model = model
        self.prep = prep
        self.batch_size = batch_size
        self.matmul_precision = matmul_precision
        self.whole = one_pass(model) if whole is None else whole
        self.pos_embed = pos_embed

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


def load_model(model_file_path: str | os.PathLike, *, batch_size: int = 32, matmul_precision: str = "highest",
               verify: bool = True, whole: bool | None = None, pos_embed: str = "interpolate") -> HearModel:
    """The model of an aum-jax model directory (or a training workdir's ``model/``).

    ``whole=True`` gives timestamp embeddings from one pass over each whole sound (``pos_embed``:
    ``"interpolate"`` or ``"tile"``, see :mod:`aum_jax.inference.whole`); ``whole=None``, the default,
    does for a :func:`one_pass` model (its slices, see the module docstring) and gives windows otherwise.

    ``verify=False`` loads a directory without ``checksums.json`` (its parameters are then
    not checked for damage).

    Raises:
      ModelDirectoryError: not a model directory, a damaged one, or one without
        ``checksums.json`` while ``verify``.
      ValueError: the model has no ``preprocessing.json`` or no normalisation statistics.
    """
    if not os.fspath(model_file_path):
        raise ValueError("load_model needs an aum-jax model directory (aum-jax ships no default weights)")
    directory = model_files.model_directory(model_file_path)
    model = model_files.load_model(directory, verify=verify)
    prep = model_files.load_preprocessing(directory)
    if prep is None:
        raise ValueError(f"{directory} has no {model_files.PREPROCESSING_FILE}: its input features are unknown "
                         "(convert it with --dataset, or --mean/--std and --sample-rate)")
    prep.require_statistics(str(directory))
    return HearModel(model, prep, batch_size, matmul_precision, whole, pos_embed)


def _sounds(audio: Any) -> np.ndarray:
    """``(n_sounds, n_samples)`` float32 samples from any array :func:`aum_jax.data.features.audio.as_float_samples`
    takes, or a list (or object array) of sounds of one length; samples outside [-1, 1] are warned of, once.

    Raises:
      ValueError: another shape, sounds of unequal lengths, values that are no audio samples
        (bool, complex, ...), or NaN or Inf samples.
    """
    if isinstance(audio, (list, tuple)) or (isinstance(audio, np.ndarray) and audio.dtype == object):
        shapes = [tuple(np.shape(sound)) for sound in audio]
        if len(set(shapes)) > 1:
            raise ValueError(f"audio must be (n_sounds, n_samples): sounds of one length, got {len(shapes)} sounds of "
                             f"shapes {classify.shown(shapes, 5)}; pad or cut them to one length, or embed each alone")
        audio = (np.stack([as_float_samples(sound, f"audio[{i}]") for i, sound in enumerate(audio)]) if shapes
                 else np.zeros((0, 0), np.float32))
    audio = as_float_samples(audio, "audio")
    if audio.ndim != 2 or 0 in audio.shape:
        raise ValueError(f"audio must be (n_sounds, n_samples) with both > 0, got shape {audio.shape}")
    peak = max(float(audio.max()), -float(audio.min()))
    if peak > 1.0:
        logging.log_first_n(logging.WARNING, "audio holds samples up to %.4g in magnitude, outside the [-1, 1] of "
                            "HEAR's API; they are embedded as given (float PCM values such as +-32767 must be divided "
                            "by 32768 first)", 1, peak)
    return audio


def _as_given(given: Any, *results: np.ndarray) -> tuple[Any, ...]:
    """``results`` (float32) as the kind of array ``given`` is: TensorFlow tensors, torch tensors
    on its device, else NumPy arrays."""
    torch = sys.modules.get("torch")  # a torch tensor can only come from a process that imported torch.
    if torch is not None and isinstance(given, torch.Tensor):
        return tuple(torch.from_numpy(r).to(given.device) for r in results)
    if tf.is_tensor(given):
        return tuple(tf.convert_to_tensor(r) for r in results)
    return results


def _names(audio: np.ndarray) -> list[str]:
    """``"sound i"`` of each sound, for messages."""
    return [f"sound {i}" for i in range(len(audio))]


def _run(audio: np.ndarray, model: HearModel, bounds: np.ndarray, embed: evaluate.Embed,
         reduce: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None) -> evaluate.Outputs:
    """Every window (``bounds``: ``(W, 2)`` samples) of every sound through the model; outputs sound-major."""
    rate = model.sample_rate

    def rows() -> Iterator[np.ndarray]:
        for sound in audio:
            for start, end in bounds:
                yield model.prep.features(sound[None, start:end], rate)

    return classify.run_model(model.model, rows(), model.batch_size, model.matmul_precision, embed=embed,
                             reduce=reduce)


def _bounds(audio: np.ndarray, model: HearModel, hop_seconds: float) -> np.ndarray:
    """``(W, 2)`` sample bounds of the windows of the model's input length every ``hop_seconds``."""
    return np.array(windows.window_bounds(audio.shape[1], model.sample_rate, model.prep.window_seconds, hop_seconds))


@nnx.jit
def _stream_step(model: AudioMamba, fbank: jax.Array, state: Any) -> tuple[jax.Array, Any]:
    """Fbank ``(B, n * t, F)`` read on from ``state`` -> the ``n`` slices' final tokens ``(B, n, D)`` and the state."""
    out, state = model.stream(fbank, state)
    return out["frames"], state


def _streamed(audio: np.ndarray, model: HearModel) -> tuple[np.ndarray, np.ndarray]:
    """Sounds ``(n_sounds, n_samples)`` through a causal one-pass model that streams, ``model.batch_size``
    sounds at a time, :data:`STREAM_PIECE_SLICES` time slices per step with every block's state carried ->
    the final token of every whole time slice ``(n_sounds, S, D)`` (a partial last slice has none, as in
    :class:`aum_jax.inference.stream.Stream`) and the slices' centres ``(S,)`` in seconds.

    Raises:
      ValueError: sounds shorter than one time slice.
    """
    prep, amba = model.prep, nnx.view(model.model, deterministic=True)  # eval mode, the caller's model left in its own.
    t = amba.config.patch_size[1]  # frames per time slice.
    step = STREAM_PIECE_SLICES * t
    groups = []
    for first in range(0, len(audio), model.batch_size):
        group = audio[first:first + model.batch_size]
        frames = np.stack([prep.frames(sound[None], model.sample_rate) for sound in group])  # (B, frames, F)
        count = frames.shape[1] // t
        if not count:
            raise ValueError(f"sounds of {audio.shape[1]} samples are shorter than one time slice of the model "
                             f"({t} frames of {embeddings.frame_step_ms(prep):g} ms)")
        # Zeros to a whole number of steps: a causal model's rows do not read what comes after them.
        frames = np.pad(frames, ((0, 0), (0, -(-count // STREAM_PIECE_SLICES) * step - frames.shape[1]), (0, 0)))
        state, rows = amba.initial_state(len(group)), []
        with jax.default_matmul_precision(model.matmul_precision):
            for start in range(0, frames.shape[1], step):
                tokens, state = _stream_step(amba, frames[:, start:start + step], state)
                rows.append(np.asarray(tokens))
        groups.append(np.concatenate(rows, axis=1)[:, :count])
    return np.concatenate(groups), embeddings.time_patch_centres(amba, prep, count)


def _whole_frames(audio: np.ndarray, model: HearModel) -> tuple[np.ndarray, np.ndarray]:
    """Sounds ``(n_sounds, n_samples)``, each in one pass -> the time patches' tokens averaged over frequency
    ``(n_sounds, T', D)`` float32 and their centres ``(n_sounds, T')`` in ms.

    Raises:
      ValueError: sounds shorter than one time slice of a one-pass model.
      NonFiniteOutputError: NaN or Inf embeddings (the sounds named).
    """
    if whole.streams(model.model, model.prep):
        frames, centres = _streamed(audio, model)
        stamps = np.repeat(centres[None] * 1000.0, len(audio), axis=0)
    else:
        passes = [whole.run_whole(model.model, model.prep, sound[None], model.sample_rate, pos_embed=model.pos_embed,
                                  matmul_precision=model.matmul_precision, source=name)
                  for sound, name in zip(audio, _names(audio))]
        frames, stamps = np.stack([p.frames for p in passes]), np.stack([p.centres * 1000.0 for p in passes])
    classify.require_finite(frames.reshape(len(audio), -1), _names(audio), "embeddings")
    return frames.astype(np.float32), stamps.astype(np.float32)


def get_scene_embeddings(audio: Any, model: HearModel) -> Any:
    """``(n_sounds, n_samples)`` at ``model.sample_rate`` -> ``(n_sounds, scene_embedding_size)`` float32,
    of the kind ``audio`` is (see the module's docstring). A :func:`one_pass` model reading whole sounds
    (``model.whole``) gives the mean over time of its timestamp embeddings (one per time slice).

    Raises:
      ValueError: audio of another shape or type, or with NaN or Inf samples; sounds shorter than one
        time slice of a one-pass model read whole.
      NonFiniteOutputError: NaN or Inf embeddings (the sounds named).
    """
    given, audio = audio, _sounds(audio)
    if model.whole and one_pass(model.model):
        return _as_given(given, _whole_frames(audio, model)[0].mean(axis=1))[0]
    bounds = _bounds(audio, model, model.prep.window_seconds)
    per_window = _run(audio, model, bounds, evaluate.Embed()).features.reshape(len(audio), len(bounds), -1)
    scene = np.stack([embeddings.pool_windows(rows, bounds) for rows in per_window])
    classify.require_finite(scene, _names(audio), "embeddings")
    return _as_given(given, scene)[0]


def get_timestamp_embeddings(audio: Any, model: HearModel) -> tuple[Any, Any]:
    """``(n_sounds, n_samples)`` -> embeddings ``(n_sounds, n_timestamps, timestamp_embedding_size)``
    and their timestamps ``(n_sounds, n_timestamps)`` in ms (the centres of the time patches; of a
    :func:`one_pass` model's time slices, ``patch_size[1]`` frames apart), float32 of the kind ``audio``
    is (see the module's docstring).

    Raises:
      ValueError: audio of another shape or type, or with NaN or Inf samples; sounds shorter than one
        time slice of a one-pass model read whole.
      NonFiniteOutputError: NaN or Inf embeddings (the sounds named).
    """
    given, audio = audio, _sounds(audio)
    if model.whole:
        return _as_given(given, *_whole_frames(audio, model))
    bounds = _bounds(audio, model, embeddings.time_patch_span(model.model, model.prep))  # one grid of patches.
    starts_ms, ends_ms = bounds.T * 1000.0 / model.sample_rate
    centres_ms = starts_ms[:, None] + embeddings.time_patch_centres(model.model, model.prep)[None] * 1000.0
    keep = centres_ms < ends_ms[:, None]  # (W, T'): patches centred on audio.
    keep.flat[0] = True  # a sound shorter than half a patch keeps its first.
    offsets = np.concatenate([[0], np.cumsum(keep.sum(axis=1))])  # where each window's patches go.
    result = np.empty((len(audio), offsets[-1], model.timestamp_embedding_size), np.float32)
    done = 0  # windows written so far, sound-major.

    def write_per_time(rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch's tokens ``(B, F', T', D)``, averaged over frequency, into ``result``; nothing else is kept."""
        nonlocal done
        for per_time in rows["tokens"].mean(axis=1):  # (T', D)
            sound, window = divmod(done, len(bounds))
            result[sound, offsets[window] : offsets[window + 1]] = per_time[keep[window]]
            done += 1
        return {}

    _run(audio, model, bounds, evaluate.Embed(tokens=True), write_per_time)
    classify.require_finite(result.reshape(len(audio), -1), _names(audio), "embeddings")
    return _as_given(given, result, np.repeat(centres_ms[keep][None].astype(np.float32), len(audio), axis=0))
