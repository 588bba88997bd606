"""Inference with a converted or trained AudioMamba.

On features:

  python -m aum_jax.predict --checkpoint MODEL_DIR --features X.npy --save-logits Y.npy \\
      [--save-features Z.npy] [--batch-size 32] [--scan-impl auto]

X holds normalised fbank features, float32 (B, T, F), with T and F as the model expects
(see MODEL_DIR/config.json).

On audio files (any format soundfile or librosa reads), printing the top classes:

  python -m aum_jax.predict --checkpoint MODEL_DIR --audio a.wav b.flac [--top-k 5]

Each file becomes a Kaldi fbank at its own sample rate, zero-padded or cut to the model's
frame count and normalised with the statistics stored in MODEL_DIR/preprocessing.json
(written by training and by the converter); --mean/--std and --label-csv override them.

Long recordings: slide the model's window over the whole file, in batches, and print a
timeline of the top classes per window; save it as JSON and as a heat map:

  python -m aum_jax.predict --checkpoint MODEL_DIR --audio long.wav \\
      --window-seconds 1 --hop-seconds 0.5 --json timeline.json --plot timeline.png

Scores are sigmoids for a model trained with BCE (multi-label) and softmaxes for one
trained with CE (single-label); the printed and saved lists say which.
"""

from __future__ import annotations

from aum_jax import console

console.quiet_native_logs()  # before JAX and TensorFlow load.

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import nnx  # noqa: E402
from scipy import special  # noqa: E402
from tqdm import tqdm  # noqa: E402

from aum_jax import audio, preprocessing  # noqa: E402
from aum_jax.model_files import load_model  # noqa: E402
from aum_jax.datasets import load_label_csv  # noqa: E402
from aum_jax.models import AudioMamba  # noqa: E402
from aum_jax.ops import SCAN_IMPLS  # noqa: E402

MATMUL_PRECISIONS = ("highest", "high", "tensorfloat32", "bfloat16", "default")  # jax.default_matmul_precision
MIN_WINDOW_SECONDS = 0.025  # one fbank frame: a shorter tail window is dropped.


@nnx.jit
def _forward(model: AudioMamba, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    features = model.features(x)
    return model.head(features), features


def check_features(features: np.ndarray, expected: tuple[int, int], source: str = "features") -> None:
    """Raises ValueError for a wrong shape, zero rows, or rows holding NaN or Inf (named)."""
    if features.ndim != 3 or features.shape[1:] != expected:
        raise ValueError(f"{source} must be (batch, {expected[0]}, {expected[1]}) for this model, got {features.shape}.")
    if len(features) == 0:
        raise ValueError(f"{source} has zero rows: nothing to predict.")
    bad = np.flatnonzero(~np.isfinite(features).reshape(len(features), -1).all(axis=1))
    if len(bad):
        shown = ", ".join(map(str, bad[:20])) + (f", ... ({len(bad)} rows in all)" if len(bad) > 20 else "")
        raise ValueError(f"{source} has NaN or Inf values in row(s) {shown}.")


def predict(
    model: AudioMamba, features: np.ndarray, batch_size: int = 32, matmul_precision: str = "highest"
) -> tuple[np.ndarray, np.ndarray]:
    """Fbank features (B, T, F) -> (logits (B, classes), pooled features (B, D)).

    Runs in eval mode, in fixed-size batches (the last one zero-padded), so one compiled
    program serves the whole array. float32 matmuls run at ``matmul_precision``: "highest"
    computes as the original; on a GPU "tensorfloat32" is faster and about 1e-3 off.

    Raises:
      ValueError: a wrong shape, zero rows, or rows with NaN or Inf (named).
    """
    cfg = model.config
    features = np.asarray(features)
    check_features(features, (cfg.audio_length, cfg.num_mel_bins))
    if cfg.num_classes == 0 or (cfg.cls_position == "none" and cfg.pool == "max"):
        raise ValueError("predict() needs a model with a head and pooled features.")
    model.eval()
    features = features.astype(np.float32)
    logits, pooled = [], []
    for start in tqdm(range(0, len(features), batch_size), desc="predict", unit="batch", disable=len(features) <= batch_size):
        chunk = features[start : start + batch_size]
        padded = np.pad(chunk, ((0, batch_size - len(chunk)), (0, 0), (0, 0)))
        with jax.default_matmul_precision(matmul_precision):
            lg, ft = _forward(model, jnp.asarray(padded))
        logits.append(np.asarray(lg)[: len(chunk)])
        pooled.append(np.asarray(ft)[: len(chunk)])
    return np.concatenate(logits), np.concatenate(pooled)


def scores(logits: np.ndarray, kind: str) -> np.ndarray:
    """Logits (B, C) -> scores (B, C): "sigmoid" (multi-label) or "softmax" (single-label)."""
    if kind == "sigmoid":
        return special.expit(logits)
    if kind == "softmax":
        return special.softmax(logits, axis=-1)
    raise ValueError(f"unknown score {kind!r}; use 'sigmoid' or 'softmax'")


def top_classes(
    logits: np.ndarray, names: Sequence[str] | None, k: int, score: str = "sigmoid"
) -> list[list[tuple[str, float]]]:
    """Per example, the ``k`` highest-scoring classes with their scores."""
    values = scores(logits, score)
    best = np.argsort(-logits, axis=1)[:, :k]
    return [[(names[j] if names else str(j), float(values[i, j])) for j in row] for i, row in enumerate(best)]


def audio_features(paths: Sequence[str], prep: preprocessing.Preprocessing) -> np.ndarray:
    """Audio files -> normalised features (B, T, F), as the original's evaluation loader.

    Raises ``AudioLoadError`` naming the file that cannot be decoded, and
    :class:`preprocessing.MissingStatisticsError` when ``prep`` has no statistics.
    """
    return _clip_features(paths, prep)[0]


def _clip_features(paths: Sequence[str], prep: preprocessing.Preprocessing) -> tuple[np.ndarray, list[float]]:
    """Audio files -> (normalised features (B, T, F), durations in seconds)."""
    if not prep.skip_norm:
        prep.require_statistics("the model")
    feats, durations = [], []
    for path in tqdm(paths, desc="fbank", unit="file", disable=len(paths) < 8):
        waveform, sample_rate = audio.load_waveform(path)
        feats.append(prep.features(waveform, sample_rate))
        durations.append(waveform.shape[1] / sample_rate)
    return np.stack(feats), durations


# ---------------------------------------------------------------------------- timelines


@dataclasses.dataclass
class Timeline:
    """Scores of one recording, window by window.

    Attributes:
      file: the audio file.
      duration: its length in seconds.
      starts, ends: ``(W,)`` window bounds in seconds.
      scores: ``(W, C)`` sigmoid or softmax scores.
      score: "sigmoid" or "softmax".
      class_names: ``C`` names (indices as text when the model has none).
    """

    file: str
    duration: float
    starts: np.ndarray
    ends: np.ndarray
    scores: np.ndarray
    score: str
    class_names: list[str]

    def top(self, k: int) -> list[list[tuple[str, float]]]:
        """Per window, the ``k`` best ``(label, score)``."""
        best = np.argsort(-self.scores, axis=1)[:, :k]
        return [[(self.class_names[j], float(self.scores[w, j])) for j in row] for w, row in enumerate(best)]

    def to_dict(self, k: int) -> dict[str, Any]:
        """``{"file", "duration_seconds", "score", "windows": [{"start", "end", "top": [{"label", "score"}]}]}``."""
        return {
            "file": self.file,
            "duration_seconds": round(self.duration, 4),
            "score": self.score,
            "windows": [
                {"start": round(float(s), 4), "end": round(float(e), 4),
                 "top": [{"label": name, "score": value} for name, value in top]}
                for s, e, top in zip(self.starts, self.ends, self.top(k))
            ],
        }


def window_bounds(num_samples: int, sample_rate: int, window_seconds: float, hop_seconds: float) -> list[tuple[int, int]]:
    """``(start, end)`` sample indices of the windows covering a recording.

    Windows start every ``hop_seconds`` until one reaches the end; a last window shorter
    than one fbank frame is dropped (unless it is the only one).
    """
    if window_seconds <= 0 or hop_seconds <= 0:
        raise ValueError(f"window and hop must be positive, got {window_seconds} and {hop_seconds} s")
    window = max(1, round(window_seconds * sample_rate))
    hop = max(1, round(hop_seconds * sample_rate))
    count = 1 + max(0, math.ceil((num_samples - window) / hop))
    bounds = [(i * hop, min(i * hop + window, num_samples)) for i in range(count)]
    min_len = MIN_WINDOW_SECONDS * sample_rate
    while len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_len:
        bounds.pop()
    return bounds


def classify_recording(
    model: AudioMamba,
    prep: preprocessing.Preprocessing,
    path: str,
    window_seconds: float | None = None,
    hop_seconds: float | None = None,
    batch_size: int = 32,
    matmul_precision: str = "highest",
) -> Timeline:
    """Slides the model's window over a whole recording and scores every window.

    Each window is treated as a clip of its own (mean removed, fbank, padded to the model's
    frame count, normalised with ``prep``'s statistics); the windows run in batches.

    Args:
      model: the model.
      prep: its preprocessing (statistics, names, score kind).
      path: an audio file.
      window_seconds: window length; default the model's input length.
      hop_seconds: window start spacing; default the window length.
      batch_size: windows per forward pass.
      matmul_precision: float32 matmul precision (see :func:`predict`).

    Returns:
      The :class:`Timeline` of the recording.
    """
    model_window = prep.window_seconds
    window_seconds = window_seconds or model_window
    if window_seconds > model_window + 1e-6:
        raise ValueError(f"--window-seconds {window_seconds} is longer than the model's input of {model_window:g} s")
    hop_seconds = hop_seconds or window_seconds
    if not prep.skip_norm:
        prep.require_statistics("the model")
    waveform, sample_rate = audio.load_waveform(path)
    bounds = window_bounds(waveform.shape[1], sample_rate, window_seconds, hop_seconds)
    windows = np.stack([prep.features(waveform[:, s:e], sample_rate) for s, e in
                        tqdm(bounds, desc="fbank", unit="window", disable=len(bounds) < 64, leave=False)])
    logits, _ = predict(model, windows, batch_size, matmul_precision)
    starts = np.array([s for s, _ in bounds], np.float64) / sample_rate
    ends = np.array([e for _, e in bounds], np.float64) / sample_rate
    names = list(prep.class_names) or [str(i) for i in range(logits.shape[1])]
    return Timeline(path, waveform.shape[1] / sample_rate, starts, ends, scores(logits, prep.score), prep.score, names)


def clip_timelines(
    paths: Sequence[str], durations: Sequence[float], logits: np.ndarray, prep: preprocessing.Preprocessing
) -> list[Timeline]:
    """One-window timelines of clips from their logits (B, C)."""
    values = scores(logits, prep.score)
    names = list(prep.class_names) or [str(i) for i in range(logits.shape[1])]
    return [
        Timeline(path, duration, np.array([0.0]), np.array([min(duration, prep.window_seconds)]),
                 values[i : i + 1], prep.score, names)
        for i, (path, duration) in enumerate(zip(paths, durations))
    ]


def classify_clips(
    model: AudioMamba, prep: preprocessing.Preprocessing, paths: Sequence[str], batch_size: int = 32,
    matmul_precision: str = "highest",
) -> list[Timeline]:
    """One window per file (its first ``target_length`` frames), as the original evaluates a clip."""
    features, durations = _clip_features(paths, prep)
    logits, _ = predict(model, features, batch_size, matmul_precision)
    return clip_timelines(paths, durations, logits, prep)


def plot_timelines(timelines: Sequence[Timeline], path: str, num_classes: int = 10) -> None:
    """Saves a heat map per recording: its ``num_classes`` best classes (rows) over time.

    Classes are ranked by their highest score in the recording; colour is the score.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for tl in timelines:
        order = np.argsort(-tl.scores.max(axis=0))[: min(num_classes, tl.scores.shape[1])]
        rows.append(order)
    heights = [max(1.6, 0.32 * len(order) + 1.0) for order in rows]
    fig, axes = plt.subplots(len(timelines), 1, figsize=(11, sum(heights)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, tl, order in zip(axes[:, 0], timelines, rows):
        hop = float(tl.starts[1] - tl.starts[0]) if len(tl.starts) > 1 else float(tl.ends[0] - tl.starts[0])
        edges = np.append(tl.starts, tl.starts[-1] + hop)  # each column spans its hop.
        mesh = ax.pcolormesh(edges, np.arange(len(order) + 1), tl.scores[:, order].T, cmap="magma",
                             vmin=0.0, vmax=1.0, shading="flat")
        ax.set_yticks(np.arange(len(order)) + 0.5, [tl.class_names[j] for j in order])
        ax.invert_yaxis()
        ax.set_xlabel("time (s)")
        ax.set_title(f"{os.path.basename(tl.file)}: top {len(order)} classes, {len(tl.starts)} windows")
        fig.colorbar(mesh, ax=ax, label=f"{tl.score} score", pad=0.01)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- command line


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aum_jax.predict",
        description="Runs an aum-jax model on fbank features or audio files.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="model directory (config.json + params/ + preprocessing.json)")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--features", help=".npy of normalised fbank features, float32 (B, T, F)")
    inputs.add_argument("--audio", nargs="+", help="audio files to classify")
    parser.add_argument("--save-logits", help=".npy to write the logits (B, classes) to")
    parser.add_argument("--save-features", help=".npy to write the pooled features (B, D) to")
    parser.add_argument("--batch-size", type=int, default=32, help="examples (windows) per forward pass (default: 32)")
    parser.add_argument("--matmul-precision", default="highest", choices=MATMUL_PRECISIONS,
                        help="float32 matmuls: highest (default) computes as the original; on a GPU "
                        "tensorfloat32 is faster and about 1e-3 off")
    parser.add_argument("--mean", type=float, help="fbank mean of the training set (default: the model's)")
    parser.add_argument("--std", type=float, help="fbank std of the training set (default: the model's)")
    parser.add_argument("--label-csv", help="index,mid,display_name CSV naming the classes (default: the model's names)")
    parser.add_argument("--top-k", type=int, default=5, help="classes printed per example or window (default: 5)")
    parser.add_argument("--window-seconds", type=float, help="--audio: slide a window of this length over each whole file "
                        "(default: the model's input length, once --hop-seconds is given)")
    parser.add_argument("--hop-seconds", type=float, help="--audio: spacing of the windows (default: the window length)")
    parser.add_argument("--json", help="--audio: write the per-file, per-window top-k scores to this JSON file")
    parser.add_argument("--plot", help="--audio: draw a heat map of the top classes over time to this PNG")
    parser.add_argument("--scan-impl", choices=(*SCAN_IMPLS, "auto"), help="selective-scan implementation (default: the model's)")
    console.add_verbosity_flag(parser)
    args = parser.parse_args(argv[1:])
    flags.FLAGS.mark_as_parsed()
    console.configure(args.verbosity)
    if (args.mean is None) != (args.std is None):
        parser.error("--mean and --std go together")
    if args.features and (args.window_seconds or args.hop_seconds or args.json or args.plot):
        parser.error("--window-seconds, --hop-seconds, --json and --plot work with --audio")
    if (args.window_seconds or args.hop_seconds) and (args.save_logits or args.save_features):
        parser.error("--save-logits and --save-features take whole clips; use --json for windows")
    return args


def _print_timeline(tl: Timeline, k: int, windowed: bool) -> None:
    if not windowed:
        print(f"{tl.file}: " + ", ".join(f"{n} {s:.3f}" for n, s in tl.top(k)[0]) + f"  ({tl.score})")
        return
    print(f"{tl.file}: {tl.duration:.2f} s, {len(tl.starts)} windows, {tl.score} scores")
    width = len(f"{tl.ends.max():.2f}")
    for start, end, top in zip(tl.starts, tl.ends, tl.top(k)):
        print(f"  {start:>{width}.2f}-{end:>{width}.2f} s  " + ", ".join(f"{n} {s:.3f}" for n, s in top))


def _save_outputs(args: argparse.Namespace, logits: np.ndarray, pooled: np.ndarray) -> None:
    if args.save_logits:
        np.save(args.save_logits, logits)
        logging.info("Wrote logits %s to %s", logits.shape, args.save_logits)
    if args.save_features:
        np.save(args.save_features, pooled)
        logging.info("Wrote features %s to %s", pooled.shape, args.save_features)


def main(args: argparse.Namespace) -> int:
    if args.features and not os.path.isfile(args.features):
        print(f"error: features file {args.features} does not exist", file=sys.stderr)
        return 1
    overrides = {"scan_impl": args.scan_impl} if args.scan_impl else {}
    try:
        model = load_model(args.checkpoint, **overrides)
        prep = (preprocessing.load(args.checkpoint) or preprocessing.Preprocessing(num_mel_bins=model.config.num_mel_bins, target_length=model.config.audio_length))
        names = tuple(load_label_csv(args.label_csv)[1]) if args.label_csv else None
        if names is not None and len(names) != model.config.num_classes:
            raise ValueError(f"{args.label_csv} names {len(names)} classes but the model has {model.config.num_classes}")
        prep = prep.replace(mean=args.mean, std=args.std, class_names=names)
        if args.audio:
            windowed = bool(args.window_seconds or args.hop_seconds)
            if windowed:
                timelines = [classify_recording(model, prep, path, args.window_seconds, args.hop_seconds, args.batch_size,
                                                args.matmul_precision)
                             for path in args.audio]
            else:
                features, durations = _clip_features(args.audio, prep)
                logits, pooled = predict(model, features, args.batch_size, args.matmul_precision)
                timelines = clip_timelines(args.audio, durations, logits, prep)
                _save_outputs(args, logits, pooled)
            for tl in timelines:
                _print_timeline(tl, args.top_k, windowed)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump({"model": os.path.abspath(args.checkpoint), "score": prep.score,
                               "files": [tl.to_dict(args.top_k) for tl in timelines]}, f, indent=1)
                print(f"Wrote {args.json}")
            if args.plot:
                plot_timelines(timelines, args.plot)
                print(f"Wrote {args.plot}")
            return 0
        features = np.load(args.features)
        logits, pooled = predict(model, features, args.batch_size, args.matmul_precision)
    except (FileNotFoundError, ValueError, audio.AudioLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    _save_outputs(args, logits, pooled)
    sources = [f"{args.features}[{i}]" for i in range(len(logits))]
    names = list(prep.class_names) or None
    for source, best in zip(sources, top_classes(logits, names, args.top_k, prep.score)):
        print(f"{source}: " + ", ".join(f"{name} {score:.3f}" for name, score in best) + f"  ({prep.score})")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
