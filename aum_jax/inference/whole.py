"""Whole recordings in one pass: the model runs once over all of a recording, however long.

The recording's fbank is padded (as a short clip is) to the model's input length plus a whole
number of clips' worth of time patches, so that recordings of similar lengths share one compiled
program; the position embedding is extended along time (:meth:`aum_jax.models.AudioMamba.whole`,
``pos_embed``: ``"interpolate"`` as the original resizes it for another input length, or
``"tile"``). The head scores every time patch (its tokens averaged over frequency), which gives a
:class:`aum_jax.inference.classify.Timeline` with one row per time patch, on the same JSON and
plot as sliding windows. Memory grows linearly with the recording: the audio, its fbank and the
model's activations of one pass (``aum_jax.core.memory.peak_rss_mb`` reports what the process reached).
A model that streams (a causal one-pass model: :meth:`aum_jax.models.aum.AudioMamba.check_streams`) is
read instead :data:`STREAM_CHUNK_SECONDS` at a time, carrying its state (:class:`aum_jax.inference.stream.Stream`):
the same rows, one per time slice, in a fixed amount of memory whatever the length.

  from aum_jax.inference import whole
  timeline = whole.classify_whole(model, prep, "long.wav")
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from flax import nnx

from aum_jax.data.features import audio, preprocessing
from aum_jax.data.sources import labels
from aum_jax.inference import classify, embeddings, windows
from aum_jax.inference.stream import Stream
from aum_jax.models import AudioMamba
from aum_jax.models.aum import WHOLE_POS_EMBEDS


STREAM_CHUNK_SECONDS = 10.0  # audio read at a time when a model that streams reads a whole file.


def streams(model: AudioMamba, prep: preprocessing.Preprocessing) -> bool:
    """Whether ``model`` with ``prep`` reads audio as a stream (its features too)."""
    try:
        model.check_streams()
    except ValueError:
        return False
    return prep.feature == "kaldi_fbank" and not prep.remove_waveform_mean


@dataclasses.dataclass
class WholePass:
    """What one pass over a whole recording gives.

    Attributes:
      logits: ``(T', C)`` the head on each time patch's tokens (averaged over frequency).
      frames: ``(T', D)`` those averaged tokens (HEAR's timestamp embeddings).
      clip_logits: ``(C,)`` the head on the pooled tokens (the cls token of the whole sequence).
      centres: ``(T',)`` each time patch's centre, in seconds from the first sample.
      tokens: the length of the token sequence the model ran over.
    """

    logits: np.ndarray
    frames: np.ndarray
    clip_logits: np.ndarray
    centres: np.ndarray
    tokens: int


def input_frames(model: AudioMamba, frames: int) -> int:
    """The whole pass's input length for a recording of ``frames`` frames: the model's input length plus
    whole clips' worth of time patches, at least ``frames`` (few distinct lengths: few compilations)."""
    cfg = model.config
    stride, per_clip = cfg.strides[1], cfg.patch_grid[1]
    extra = max(0, math.ceil((frames - cfg.audio_length) / stride))
    return cfg.audio_length + stride * per_clip * math.ceil(extra / per_clip)


@nnx.jit(static_argnames=("pos_embed",))
def _forward(model: AudioMamba, fbank: jax.Array, pos_embed: str) -> dict[str, jax.Array]:
    return model.whole(fbank, pos_embed)


def run_whole(model: AudioMamba, prep: preprocessing.Preprocessing, waveform: np.ndarray, sample_rate: int, *,
              pos_embed: str = "interpolate", matmul_precision: str = "highest", source: str = "audio") -> WholePass:
    """A waveform ``(channels, samples)`` at ``sample_rate`` -> :class:`WholePass` of one model pass.

    Raises:
      ValueError: an unknown ``pos_embed``, or audio shorter than one fbank frame.
      NonFiniteOutputError: NaN or Inf logits (``source`` named).
    """
    if pos_embed not in WHOLE_POS_EMBEDS:
        raise ValueError(f"unknown pos_embed {pos_embed!r}; use one of {', '.join(WHOLE_POS_EMBEDS)}")
    duration = waveform.shape[1] / sample_rate
    frames = math.ceil(duration * 1000.0 / embeddings.frame_step_ms(prep))
    length = input_frames(model, frames)
    fbank = prep.replace(target_length=length).features(waveform, sample_rate)[None]
    model = nnx.view(model, deterministic=True)  # eval mode, the caller's model left in its own.
    with jax.default_matmul_precision(matmul_precision):
        out = jax.device_get(_forward(model, fbank, pos_embed))
    t_grid = out["frame_logits"].shape[1]
    centres = embeddings.time_patch_centres(model, prep, t_grid)
    keep = centres < duration
    keep[0] = True  # a recording shorter than half a patch keeps its first.
    logits = out["frame_logits"][0][keep]
    classify.require_finite(logits, [f"{source} at {c:.2f} s" for c in centres[keep]])
    return WholePass(logits, out["frames"][0][keep], out["logits"][0], centres[keep],
                     t_grid * model.config.patch_grid[0] + model.config.num_cls_tokens)


def classify_whole(model: AudioMamba, prep: preprocessing.Preprocessing, path: str, *, pos_embed: str = "interpolate",
                   matmul_precision: str = "highest", channel: str = "first") -> classify.Timeline:
    """Scores every time patch of a whole recording in one pass (see the module docstring).

    Each row of the timeline is a time patch: it starts and ends half a stride either side of
    the patch's centre (the patches' own spans overlap where the strides are smaller).

    Raises:
      NoHeadError: the model has no classification head.
      ValueError: an unknown ``pos_embed``, or a recording shorter than one fbank frame (named).
      AudioLoadError: the file cannot be read.
      NonFiniteOutputError: NaN or Inf logits (the time patches named).
    """
    classify.require_head(model.config)
    if streams(model, prep):
        stream = Stream.of(model, prep, matmul_precision=matmul_precision)
        for _ in stream.read(path, chunk_seconds=STREAM_CHUNK_SECONDS, channel=channel):
            pass
        return stream.timeline(path)
    with audio.open_audio(path) as f:
        waveform, sample_rate = windows.mono(f.read(0, f.num_samples), channel), f.sample_rate
    duration = waveform.shape[1] / sample_rate
    try:
        result = run_whole(model, prep, waveform, sample_rate, pos_embed=pos_embed, matmul_precision=matmul_precision,
                           source=path)
    except preprocessing.MissingStatisticsError:
        raise
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    half = model.config.strides[1] * embeddings.frame_step_ms(prep) / 2000.0
    starts = np.maximum(result.centres - half, 0.0)
    ends = np.minimum(result.centres + half, duration)
    return classify.Timeline(path, duration, starts, ends, classify.scores(result.logits, prep.score), prep.score,
                            labels.class_names(prep.class_names, result.logits.shape[1]), sample_rate)
