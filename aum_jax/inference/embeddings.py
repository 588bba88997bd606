"""Embeddings of audio files for downstream work: pooled vectors, hidden states, patch tokens.

Each whole file is cut into windows of the model's input length (or ``window_seconds``),
starting every window (or ``hop_seconds``), each read and treated as a clip of its own
(:class:`aum_jax.inference.windows.RecordingWindows`): one row per window, each from one pass of the
model, or with ``pool`` one row per file, the mean of its windows weighted by the audio each
holds (as HEAR's scene embedding, :func:`aum_jax.hear.get_scene_embeddings`, pools a sound):

- ``embedding`` ``(N, D)``: the final tokens after the last norm, pooled as the model pools
  (the cls token for AuM's models): the vector its head reads.
- ``layers`` ``(N, K, D)``: for each asked block, the residual stream after it (what the
  next block reads, before its norm), pooled the same way.
- ``tokens`` ``(N, F', T', D)``: the final tokens on the (frequency, time) patch grid, cls
  left out, for a frame-level head; ``token_times`` ``(T',)`` are the time patches' centres
  in seconds from the window's start.

In Python::

  from aum_jax.inference import embeddings
  rows = embeddings.embed_files(model, prep, ["a.wav", "long.flac"], layers=(0, 1), tokens=True)
  rows.embedding, rows.layers, rows.tokens, rows.files, rows.starts
  rows.save("out.npz")
  files = embeddings.embed_files(model, prep, ["a.wav", "long.flac"], pool=True)  # one row per file

Rows are run in fixed-size batches through the evaluation pass, so the model is compiled
once per batch shape and set of outputs, whatever the number of files; a file is read a
window at a time.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from aum_jax.core import storage
from aum_jax.data.features import audio, kaldi, preprocessing
from aum_jax.evaluation import evaluate
from aum_jax.inference.classify import check_features, require_finite, run_model, shown
from aum_jax.inference.windows import RecordingWindows, check_window
from aum_jax.models import AudioMamba


@dataclasses.dataclass
class Embeddings:
    """Embeddings of files or windows, one row each (see the module docstring).

    Attributes:
      files: ``(N,)`` the file of each row.
      starts, ends: ``(N,)`` the row's window in seconds within its file (a pooled row: 0 and
        the file's duration).
      embedding: ``(N, D)`` float32.
      logits: ``(N, C)`` the head's outputs of the same pass (a pooled row: pooled the same way).
      layer_indices: ``(K,)`` the blocks (0-based) of ``layers``.
      layers: ``(N, K, D)``, or None when no block was asked for.
      tokens: ``(N, F', T', D)``, or None when not asked for.
      token_times: ``(T',)`` centres of the time patches in seconds from a window's start.
      skipped: ``{file: reason}`` of the files that could not be read.
    """

    files: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    embedding: np.ndarray
    logits: np.ndarray
    layer_indices: np.ndarray
    layers: np.ndarray | None
    tokens: np.ndarray | None
    token_times: np.ndarray
    skipped: dict[str, str]

    def save(self, path: str | os.PathLike) -> None:
        """Writes every array (the ones not asked for left out) to the ``.npz`` file ``path``, as named.

        Atomically (:func:`aum_jax.core.storage.staged_file`): a kill or a full disk leaves
        the old file, or none.
        """
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "skipped"}
        with storage.staged_file(path) as staging, open(staging, "wb") as f:  # a name: savez appends ".npz".
            np.savez(f, **{k: v for k, v in arrays.items() if v is not None})


def parse_layers(spec: str | None, depth: int) -> tuple[int, ...]:
    """``"all"`` or ``"i,j,k"`` (0-based block indices) -> a tuple of indices; None or "" -> ().

    Raises:
      ValueError: an index that is not a whole number in ``[0, depth)``.
    """
    if not spec:
        return ()
    if spec.strip() == "all":
        return tuple(range(depth))
    try:
        layers = tuple(int(part) for part in spec.split(","))
    except ValueError:
        raise ValueError(f"--layers {spec!r}: use 'all' or block indices such as 0,5,11") from None
    outside = [i for i in layers if not 0 <= i < depth]
    if outside:
        raise ValueError(f"--layers {spec!r}: the model has blocks 0..{depth - 1}, not {shown(outside)}")
    return layers


def frame_step_ms(prep: preprocessing.Preprocessing) -> float:
    """Milliseconds between the model's input frames."""
    return prep.epic_hop_ms if prep.feature == "epic_logmel" else prep.frame_shift_ms


def time_patch_centres(model: AudioMamba, prep: preprocessing.Preprocessing, t_grid: int | None = None) -> np.ndarray:
    """``(T',)`` the centre of each time patch of a model input (of ``t_grid`` time patches; default the
    config's), in seconds from its first sample.

    A patch spans frames ``t * stride`` to ``t * stride + patch - 1``; a Kaldi frame ``k``
    covers ``[k * shift, k * shift + 25 ms)``, an EPIC-Sounds frame is centred on ``k * hop``.
    """
    cfg = model.config
    (_, patch), (_, stride) = cfg.patch_size, cfg.strides
    centre_frames = np.arange(t_grid or cfg.patch_grid[1]) * stride + (patch - 1) / 2
    frame_centre_ms = 0.0 if prep.feature == "epic_logmel" else kaldi.FRAME_LENGTH_MS / 2
    return (centre_frames * frame_step_ms(prep) + frame_centre_ms) / 1000.0


def time_patch_span(model: AudioMamba, prep: preprocessing.Preprocessing) -> float:
    """Seconds from a window's first time patch to the first one of a window that continues its grid:
    ``T' * stride`` frames (the whole input when the patches do not overlap)."""
    cfg = model.config
    return cfg.patch_grid[1] * cfg.strides[1] * frame_step_ms(prep) / 1000.0


def embed_features(model: AudioMamba, features: np.ndarray, *, layers: Sequence[int] = (), tokens: bool = False,
                   batch_size: int = 32, matmul_precision: str = "highest") -> evaluate.Outputs:
    """Model inputs ``(B, T, F)`` -> :class:`aum_jax.evaluation.evaluate.Outputs` with ``features`` ``(B, D)``,
    ``layers`` ``(B, K, D)`` and ``tokens`` ``(B, F', T', D)`` as asked.

    Raises:
      ValueError: a wrong shape, zero rows, or rows with NaN or Inf (named).
    """
    features = np.asarray(features, np.float32)
    check_features(features, (model.config.audio_length, model.config.num_mel_bins))
    return run_model(model, features, batch_size, matmul_precision, embed=evaluate.Embed(tuple(layers), tokens))


def pool_windows(rows: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """The rows ``(W, ...)`` of one recording's windows -> ``(...)`` float32: their mean weighted by
    the audio each window holds (``bounds`` ``(W, 2)``: each window's start and end, in samples or seconds)."""
    bounds = np.asarray(bounds, np.float64)
    weights = bounds[:, 1] - bounds[:, 0]
    return np.tensordot(weights / weights.sum(), rows, axes=1).astype(np.float32)


def embed_files(
    model: AudioMamba, prep: preprocessing.Preprocessing, paths: Sequence[str], *,
    window_seconds: float | None = None, hop_seconds: float | None = None, pool: bool = False,
    layers: Sequence[int] = (), tokens: bool = False, batch_size: int = 32, matmul_precision: str = "highest",
    channel: str = "first",
) -> Embeddings:
    """The embeddings of every window of each whole file, or with ``pool`` one row per file.

    Windows of ``window_seconds`` (default: the model's input length) start every
    ``hop_seconds`` (default: the window's length). With ``pool`` a file's row is the mean
    of its windows' rows (embedding, layers, logits) weighted by the audio each holds
    (:func:`pool_windows`). A file that cannot be read (or is shorter than one fbank frame)
    is skipped and named in ``skipped``; when no file is left the call raises.

    Raises:
      ValueError: no file could be read (the reasons are named), a window longer than the
        model's input, or ``pool`` with ``tokens`` (each window's patch grid).
      MissingStatisticsError: ``prep`` has no normalisation statistics.
      NonFiniteOutputError: NaN or Inf embeddings (the windows are named).
    """
    if pool and tokens:
        raise ValueError("tokens are each window's patch grid and are not pooled; ask for them without pooling")
    layers = tuple(layers)
    embed = evaluate.Embed(layers, tokens)
    check_window(prep, window_seconds)  # the same for every file: an error, not a skipped file.
    parts, files, starts, ends, skipped = [], [], [], [], {}
    for path in paths:
        try:
            with RecordingWindows(prep, path, window_seconds, hop_seconds, channel) as windows:
                outputs = run_model(model, windows, batch_size, matmul_precision, embed=embed)
        except preprocessing.MissingStatisticsError:
            raise
        except (ValueError, audio.AudioLoadError) as e:
            skipped[path] = str(e) if path in str(e) else f"{path}: {e}"
            continue
        require_finite(outputs.features, windows.names(), "embeddings")
        if pool:
            bounds = np.stack([windows.starts, windows.ends], axis=1)
            outputs = evaluate.Outputs(**{f.name: None if getattr(outputs, f.name) is None else
                                          pool_windows(getattr(outputs, f.name), bounds)[None]
                                          for f in dataclasses.fields(evaluate.Outputs)})
            files.append(path)
            starts.append(0.0)
            ends.append(windows.duration)
        else:
            files += [path] * len(windows.starts)
            starts += list(windows.starts)
            ends += list(windows.ends)
        parts.append(outputs)
    if not parts:
        raise ValueError("no file could be read: " + "; ".join(skipped.values()))
    joined = {f.name: [getattr(p, f.name) for p in parts] for f in dataclasses.fields(evaluate.Outputs)}
    outputs = evaluate.Outputs(**{k: None if v[0] is None else np.concatenate(v) for k, v in joined.items()})
    return Embeddings(np.array(files), np.array(starts, np.float64), np.array(ends, np.float64), outputs.features,
                      outputs.logits, np.array(layers, np.int64), outputs.layers, outputs.tokens,
                      time_patch_centres(model, prep), skipped)
