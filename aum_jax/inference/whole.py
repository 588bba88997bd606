"""Whole recordings in one pass: the model runs once over all of a recording, however long.

The recording's fbank is padded (as a short clip is) to the model's input length plus a whole
number of clips' worth of time patches, so that recordings of similar lengths share one compiled
program; the position embedding is extended along time (:meth:`aum_jax.models.AudioMamba.whole`,
``pos_embed``: ``"interpolate"`` as the original resizes it for another input length, or
``"tile"``). The head scores every time patch (its tokens averaged over frequency), which gives a
:class:`aum_jax.inference.classify.Timeline` with one row per time patch, on the same JSON and
plot as sliding windows. Memory grows linearly with the recording: the audio, its fbank and the
model's activations of one pass (``aum_jax.core.memory.peak_rss_mb`` reports what the process reached),
so such a pass is estimated first (:func:`estimate_whole_mb`) and refused before the file is read
where it would not fit in the memory available (:func:`check_memory`).

A one-pass model (tokens that are whole time slices, no position table, no cls token) reads any length
in bounded memory. A causal one (:meth:`aum_jax.models.aum.AudioMamba.check_streams`) is read
:data:`STREAM_CHUNK_SECONDS` at a time, carrying its state (:class:`aum_jax.inference.stream.Stream`).
A Bi-Bi one, which reads each step's future, is read in chunks (:func:`read_in_chunks`): its features
embedded as the file is read, then block by block the backward branch from the end and the forward one
from the start, each carrying its state, keeping a few numbers per token of the whole file between
blocks. Either gives the rows of one pass, one per time slice.

  from aum_jax.inference import whole
  timeline = whole.classify_whole(model, prep, "long.wav")
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import numpy as np
from absl import logging
from flax import nnx

from aum_jax.core import memory
from aum_jax.core.errors import UserError
from aum_jax.data.features import audio, preprocessing
from aum_jax.data.features.streaming import StreamingFeatures
from aum_jax.data.sources import labels
from aum_jax.inference import classify, embeddings, windows
from aum_jax.inference.stream import Stream, file_chunks
from aum_jax.models import AudioMamba
from aum_jax.models.aum import WHOLE_POS_EMBEDS
from aum_jax.ops import resolve_impl


STREAM_CHUNK_SECONDS = 10.0  # audio read at a time when a model that streams reads a whole file.
CHUNK_TOKENS = 2048  # time slices one compiled program of a chunked pass reads at a time (82 s of 40 ms slices).


def streams(model: AudioMamba, prep: preprocessing.Preprocessing) -> bool:
    """Whether ``model`` with ``prep`` reads audio as a stream (its features too)."""
    try:
        model.check_streams()
    except ValueError:
        return False
    return _features_stream(prep)


def _features_stream(prep: preprocessing.Preprocessing) -> bool:
    """Whether ``prep``'s features are made as the audio is read (:class:`StreamingFeatures`)."""
    return prep.feature == "kaldi_fbank" and not prep.remove_waveform_mean


def reads_in_chunks(model: AudioMamba) -> bool:
    """Whether a whole pass of ``model`` is read a piece at a time (:func:`read_in_chunks`)."""
    try:
        model.check_reads_in_chunks()
    except ValueError:
        return False
    return True


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


class WholePassMemoryError(UserError, MemoryError):
    """A single pass over a whole recording that would not fit in the memory available, refused before it starts."""


# The memory per token of a single pass's activations on the CPU, in words (4 bytes) per inner channel (Di)
# of the Mamba mixer: (base, per scan direction, per direction and state dimension N), by scan implementation
# (the others, e.g. Pallas interpreted, as "sequential"). Fitted to the resident memory that classify_whole
# added (VmHWM less VmRSS before it, 1-4 min of 16 kHz noise, 2 cores, the host side counted apart below):
# XLA's planned temporaries ("cpu": Bi-Bi 7.6 Di words a token, Fo-Fo 5.5; "sequential" 14.6 and 8.6;
# "associative", whose states are materialised, 165 and 83 at N = 16) plus about 3 Di that XLA's CPU runtime
# holds beyond its plan. Measured / estimated, MB, at 1 and 4 min: Bi-Bi, 64 bins, D 192, "cpu": 112 / 104,
# 379 / 365; the same at 44.1 kHz, stereo: 141 / 152, 443 / 556; "sequential": 168 / 159, 583 / 581; Fo-Bi,
# 128 bins, 4 blocks: 63 / 73, 223 / 245; Bi-Bi, D 384, N 32: 83 / 71, 254 / 233.
_ACTIVATION_WORDS = {"cpu": (6, 2, 0), "sequential": (5, 6, 0), "chunked": (5, 6, 0), "associative": (5, 2, 5)}
_PASS_OVERHEAD_MB = 16.0  # compiling the pass, whatever its length.


def estimate_whole_mb(model: AudioMamba, prep: preprocessing.Preprocessing, num_samples: int, sample_rate: int, *,
                      channels: int = 1) -> float:
    """The memory (MB) that a single pass (:func:`run_whole`, not read in chunks) over a recording of
    ``num_samples`` samples of ``channels`` channels at ``sample_rate`` adds to the process's resident memory:
    the samples read and resampled and the padded fbank (each about twice: their working copies), and, on the
    CPU, the activations of one block over the whole token sequence (the blocks run in turn;
    ``_ACTIVATION_WORDS``)."""
    cfg = model.config
    seconds = num_samples / sample_rate
    frames = input_frames(model, math.ceil(seconds * 1000.0 / embeddings.frame_step_ms(prep)))
    tokens = model.whole_tokens(frames)
    samples = num_samples * channels * (1 + (prep.sample_rate / sample_rate if sample_rate != prep.sample_rate else 0))
    host = 2 * 4 * (samples + frames * cfg.num_mel_bins)
    base, per_direction, per_state = (0, 0, 0)  # an accelerator's activations are in its own memory.
    if jax.default_backend() == "cpu":
        impl = resolve_impl(cfg.scan_impl)
        base, per_direction, per_state = _ACTIVATION_WORDS.get(impl, _ACTIVATION_WORDS["sequential"])
    directions = 1 if cfg.bimamba_type == "none" else 2
    words = cfg.d_inner * (base + directions * (per_direction + per_state * cfg.d_state))
    return (host + 4 * words * tokens) / 2**20 + _PASS_OVERHEAD_MB


def check_memory(model: AudioMamba, prep: preprocessing.Preprocessing, num_samples: int, sample_rate: int,
                 source: str, *, channels: int = 1) -> None:
    """Refuses a single whole pass that would not fit: :func:`estimate_whole_mb` against
    :func:`aum_jax.core.memory.available_mb`.

    Raises:
      WholePassMemoryError: the estimate exceeds what is available (the source, both figures and the
        ways out named).
    """
    need, available = estimate_whole_mb(model, prep, num_samples, sample_rate, channels=channels), memory.available_mb()
    seconds = num_samples / sample_rate
    if available is not None and need > available:
        raise WholePassMemoryError(
            f"{source}: one pass over its {seconds:.0f} s would need about {need:,.0f} MB of memory, and "
            f"{available:,.0f} MB is available; read it in windows instead (predict without --whole), or with a "
            "one-pass model, which reads any length in bounded memory (docs/inference.md)")
    logging.info("%s: one pass over %.0f s needs about %.0f MB (%s MB available)", source, seconds, need,
                 "?" if available is None else f"{available:.0f}")


@functools.partial(jax.jit, static_argnames=("graphdef", "pos_embed"))
def _forward(graphdef: nnx.GraphDef, state: nnx.State, fbank: jax.Array, pos_embed: str) -> dict[str, jax.Array]:
    """``AudioMamba.whole`` of the split model: only its rows leave the program (no copy of the parameters)."""
    return nnx.merge(graphdef, state).whole(fbank, pos_embed)


def _single_pass(model: AudioMamba, prep: preprocessing.Preprocessing, waveform: np.ndarray, sample_rate: int,
                 pos_embed: str, matmul_precision: str, source: str) -> WholePass:
    """One compiled pass of ``AudioMamba.whole`` over the padded fbank of the whole waveform."""
    duration = waveform.shape[1] / sample_rate
    frames = math.ceil(duration * 1000.0 / embeddings.frame_step_ms(prep))
    length = input_frames(model, frames)
    fbank = prep.replace(target_length=length).features(waveform, sample_rate)[None]
    model = nnx.view(model, deterministic=True)  # eval mode, the caller's model left in its own.
    with jax.default_matmul_precision(matmul_precision):
        out = jax.device_get(_forward(*nnx.split(model), fbank, pos_embed))
    t_grid = out["frame_logits"].shape[1]
    centres = embeddings.time_patch_centres(model, prep, t_grid)
    keep = centres < duration
    keep[0] = True  # a recording shorter than half a patch keeps its first.
    logits = out["frame_logits"][0][keep]
    classify.require_finite(logits, [f"{source} at {c:.2f} s" for c in centres[keep]])
    return WholePass(logits, out["frames"][0][keep], out["logits"][0], centres[keep],
                     t_grid * model.config.patch_grid[0] + model.config.num_cls_tokens)


@functools.partial(jax.jit, static_argnums=(0, 2))
def _method(graphdef: nnx.GraphDef, state: nnx.State, name: str, *args: Any) -> Any:
    """``getattr(module, name)(*args)`` of the module ``nnx.merge(graphdef, state)``: compiled once per method
    and shapes, whichever layer's weights ``state`` holds."""
    return getattr(nnx.merge(graphdef, state), name)(*args)


def _piece(array: np.ndarray, start: int, size: int) -> np.ndarray:
    """Rows ``start`` to ``start + size`` of ``array`` (n, ...), zero-padded to ``size`` rows, with a batch axis:
    (1, size, ...)."""
    piece = array[start:start + size]
    if len(piece) < size:
        piece = np.concatenate([piece, np.zeros((size - len(piece), *piece.shape[1:]), piece.dtype)])
    return piece[None]


def _slice_tokens(graphdef: nnx.GraphDef, state: nnx.State, frames: Iterable[np.ndarray], size: int,
                  t: int) -> np.ndarray:
    """Normalised fbank frames in blocks (k, F), as they are made -> the tokens (n, D) of their whole time slices
    of ``t`` frames, embedded ``size`` slices at a time as the frames arrive (a partial last slice has none)."""
    tokens, pending = [], None
    for block in frames:
        pending = block if pending is None else np.concatenate([pending, block])
        done = len(pending) // (size * t) * size * t
        for start in range(0, done, size * t):
            piece = pending[None, start:start + size * t]
            tokens.append(np.asarray(_method(graphdef, state, "slice_tokens", piece))[0])
        pending = pending[done:]
    rest = 0 if pending is None else len(pending) // t
    if rest:  # the last piece, padded to the compiled size: the padding's tokens are dropped.
        tokens.append(np.asarray(_method(graphdef, state, "slice_tokens", _piece(pending, 0, size * t)))[0, :rest])
    return np.concatenate(tokens) if tokens else np.zeros((0, 0), np.float32)


def read_in_chunks(model: AudioMamba, frames: Iterable[np.ndarray], *, chunk_tokens: int = CHUNK_TOKENS,
                   matmul_precision: str = "highest") -> dict[str, np.ndarray]:
    """:meth:`AudioMamba.whole <aum_jax.models.aum.AudioMamba.whole>` of a one-pass model (a causal or Bi-Bi
    one: :meth:`~aum_jax.models.aum.AudioMamba.check_reads_in_chunks`) over a recording of any length, holding
    the hidden and residual streams (n, D) of the whole recording and ``chunk_tokens`` tokens' work at a time.

    The features arrive in blocks and are embedded as they come, ``chunk_tokens`` time slices at a time.
    Then block by block: a Bi-Bi block's backward branch reads the sequence in chunks from its end to its
    start, carrying its conv's inputs and its scan's state, and keeps only the state it enters each chunk
    with; then the forward branch reads the chunks from start to end, carrying its own, and on each chunk
    the backward branch is read again from the state kept for it and the two are joined
    (:meth:`~aum_jax.models.block.Block.read_back`, :meth:`~aum_jax.models.block.Block.read_forward`).
    Every chunk has one compiled size: the last is padded with steps past the sequence's end, which the
    backward branch reads first and which leave its state as it is (it starts from the true end).

    Args:
      model: the model (read in eval mode; the caller's left in its own).
      frames: normalised fbank frames (k, F) in blocks, in order, of any sizes.
      chunk_tokens: time slices per chunk.
      matmul_precision: float32 matmul precision.

    Returns:
      ``"frame_logits"`` (n, classes), ``"frames"`` (n, D) and ``"logits"`` (classes,), as ``whole`` gives
      them for the ``n`` whole time slices of the frames (a partial last slice has none).

    Raises:
      ValueError: a model whose pass is not read in chunks (why), or frames of no whole time slice.
    """
    model.check_reads_in_chunks()
    model = nnx.view(model, deterministic=True)
    cfg = model.config
    graphdef, state = nnx.split(model)
    block_def, blocks = nnx.split(model.layers)
    with jax.default_matmul_precision(matmul_precision):
        hidden = _slice_tokens(graphdef, state, frames, chunk_tokens, cfg.patch_size[1])
        n = len(hidden)
        if not n:
            raise ValueError(f"the recording is shorter than one time slice of the model ({cfg.patch_size[1]} frames)")
        size = min(chunk_tokens, 1 << (n - 1).bit_length())  # a short recording: a few compiled sizes, not one each.
        pieces = [(start, min(size, n - start)) for start in range(0, n, size)]
        residual = np.zeros(hidden.shape, np.float32 if cfg.residual_in_fp32 else hidden.dtype)
        for layer in range(cfg.depth):
            block = jax.tree.map(operator.itemgetter(layer), blocks)
            entering = {}  # piece start -> the backward branch's state at the piece's end (Bi-Bi).
            if cfg.bimamba_type == "v2":
                carry = model.layers.mixer.initial_state(1)
                for start, valid in reversed(pieces):
                    entering[start] = carry
                    _, carry = _method(block_def, block, "read_back", _piece(hidden, start, size),
                                       _piece(residual, start, size), carry, np.int32(valid))
                    carry = jax.block_until_ready(carry)  # one piece in flight: not every piece's copies queued.
            carry = model.layers.mixer.initial_state(1)
            for start, valid in pieces:
                h, r = _piece(hidden, start, size), _piece(residual, start, size)
                back = None
                if entering:  # read again, not kept: the backward branch's output (n, Di) would be twice the streams.
                    back, _ = _method(block_def, block, "read_back", h, r, entering[start], np.int32(valid))
                h, r, carry = _method(block_def, block, "read_forward", h, r, carry, np.int32(valid), back)
                hidden[start:start + valid] = np.asarray(h)[0, :valid]
                residual[start:start + valid] = np.asarray(r)[0, :valid]
        out: dict[str, np.ndarray] = {}
        for start, valid in pieces:
            rows = _method(graphdef, state, "frame_outputs", _piece(hidden, start, size), _piece(residual, start, size))
            for key, value in rows.items():
                if key not in out:  # the frames overwrite the hidden stream where they can: a chunk reads its own rows.
                    fits = key == "frames" and hidden.dtype == value.dtype
                    out[key] = hidden if fits else np.empty((n, *value.shape[2:]), value.dtype)
                out[key][start:start + valid] = np.asarray(value)[0, :valid]
        del hidden, residual
        out["logits"] = np.asarray(_method(graphdef, state, "pooled_logits", out["frames"][None])[0])
    return out


def _chunked_pass(model: AudioMamba, prep: preprocessing.Preprocessing, frames: Iterable[np.ndarray],
                  matmul_precision: str, source: str) -> WholePass:
    """:func:`read_in_chunks` as a :class:`WholePass`: a row per whole time slice."""
    out = read_in_chunks(model, frames, matmul_precision=matmul_precision)
    n = len(out["frame_logits"])
    centres = embeddings.time_patch_centres(model, prep, n)
    classify.require_finite(out["frame_logits"], [f"{source} at {c:.2f} s" for c in centres])
    return WholePass(out["frame_logits"], out["frames"], out["logits"], centres, n)


def run_whole(model: AudioMamba, prep: preprocessing.Preprocessing, waveform: np.ndarray, sample_rate: int, *,
              pos_embed: str = "interpolate", matmul_precision: str = "highest", source: str = "audio") -> WholePass:
    """A waveform ``(channels, samples)`` at ``sample_rate`` -> :class:`WholePass` of one model pass.

    A one-pass model (:func:`reads_in_chunks`) is read in chunks (:func:`read_in_chunks`), a row per whole
    time slice; any other runs once over the whole fbank, padded to :func:`input_frames`, after
    :func:`check_memory` has found room for it.

    Raises:
      ValueError: an unknown ``pos_embed``, or audio shorter than one fbank frame (one time slice).
      WholePassMemoryError: a single pass that would not fit in the memory available.
      NonFiniteOutputError: NaN or Inf logits (``source`` named).
    """
    if pos_embed not in WHOLE_POS_EMBEDS:
        raise ValueError(f"unknown pos_embed {pos_embed!r}; use one of {', '.join(WHOLE_POS_EMBEDS)}")
    if reads_in_chunks(model):
        return _chunked_pass(model, prep, [prep.frames(waveform, sample_rate)], matmul_precision, source)
    check_memory(model, prep, waveform.shape[1], sample_rate, source, channels=waveform.shape[0])
    return _single_pass(model, prep, waveform, sample_rate, pos_embed, matmul_precision, source)


def _file_pass(model: AudioMamba, prep: preprocessing.Preprocessing, path: str, pos_embed: str, matmul_precision: str,
               channel: str) -> tuple[WholePass, float, int]:
    """The :class:`WholePass` of a file, its duration in seconds and its sample rate: a one-pass model's
    features made as the file is read where they can be (:class:`StreamingFeatures`), else the whole file
    read first (a single pass refused before then where it would not fit: :func:`check_memory`)."""
    chunked = reads_in_chunks(model)
    if chunked and _features_stream(prep):
        rate, chunks = file_chunks(path, STREAM_CHUNK_SECONDS, prep.sample_rate, channel)
        features, samples = StreamingFeatures(prep, rate), 0

        def frames() -> Iterator[np.ndarray]:
            nonlocal samples
            for chunk in chunks:
                samples += len(chunk)
                yield features.push(chunk)
            yield features.flush()

        return _chunked_pass(model, prep, frames(), matmul_precision, path), samples / rate, rate
    with audio.open_audio(path) as f:
        if not chunked:
            check_memory(model, prep, f.num_samples, f.sample_rate, path, channels=f.num_channels)
        waveform, rate = windows.mono(f.read(0, f.num_samples), channel), f.sample_rate
    if chunked:
        result = _chunked_pass(model, prep, [prep.frames(waveform, rate)], matmul_precision, path)
    else:
        result = _single_pass(model, prep, waveform, rate, pos_embed, matmul_precision, path)
    return result, waveform.shape[1] / rate, rate


def classify_whole(model: AudioMamba, prep: preprocessing.Preprocessing, path: str, *, pos_embed: str = "interpolate",
                   matmul_precision: str = "highest", channel: str = "first") -> classify.Timeline:
    """Scores every time patch of a whole recording in one pass (see the module docstring).

    Each row of the timeline is a time patch: it starts and ends half a stride either side of
    the patch's centre (the patches' own spans overlap where the strides are smaller).

    Raises:
      NoHeadError: the model has no classification head.
      ValueError: an unknown ``pos_embed``, or a recording shorter than one fbank frame (one time slice; named).
      WholePassMemoryError: a single pass that would not fit in the memory available (before the file is read).
      AudioLoadError: the file cannot be read.
      NonFiniteOutputError: NaN or Inf logits (the time patches named).
    """
    classify.require_head(model.config)
    if pos_embed not in WHOLE_POS_EMBEDS:
        raise ValueError(f"unknown pos_embed {pos_embed!r}; use one of {', '.join(WHOLE_POS_EMBEDS)}")
    if streams(model, prep):
        stream = Stream.of(model, prep, matmul_precision=matmul_precision)
        for _ in stream.read(path, chunk_seconds=STREAM_CHUNK_SECONDS, channel=channel):
            pass
        return stream.timeline(path)
    try:
        result, duration, sample_rate = _file_pass(model, prep, path, pos_embed, matmul_precision, channel)
    except preprocessing.MissingStatisticsError:
        raise
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    half = model.config.strides[1] * embeddings.frame_step_ms(prep) / 2000.0
    starts = np.maximum(result.centres - half, 0.0)
    ends = np.minimum(result.centres + half, duration)
    return classify.Timeline(path, duration, starts, ends, classify.scores(result.logits, prep.score), prep.score,
                            labels.class_names(prep.class_names, result.logits.shape[1]), sample_rate)
