"""Inference with a converted or trained AudioMamba.

On features:

  python -m aum_jax.predict --checkpoint MODEL_DIR --features X.npy --save-logits Y.npy \
      [--save-features Z.npy] [--batch-size 32] [--scan-impl auto]

X holds normalised fbank features, float32 (B, T, F), with T and F as the model expects
(see MODEL_DIR/config.json).

On audio files (any format soundfile or librosa reads), printing the top classes:

  python -m aum_jax.predict --checkpoint MODEL_DIR --audio a.wav b.flac \
      --label-csv data/audioset/class_labels_indices.csv [--mean -4.2677393 --std 4.5689974]

Each file becomes a Kaldi fbank at its own sample rate, zero-padded or cut to the model's
frame count and normalised with the training set's statistics (default: AudioSet's).
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from tqdm import tqdm

from aum_jax import audio
from aum_jax.model_files import load_model
from aum_jax.datasets import load_label_csv
from aum_jax.models import AudioMamba, AuMConfig
from aum_jax.ops import SCAN_IMPLS

@nnx.jit
def _forward(model: AudioMamba, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    features = model.features(x)
    return model.head(features), features


def predict(model: AudioMamba, features: np.ndarray, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Fbank features (B, T, F) -> (logits (B, classes), pooled features (B, D)).

    Runs in eval mode, in fixed-size batches (the last one zero-padded), so one compiled
    program serves the whole array.
    """
    cfg = model.config
    expected = (cfg.audio_length, cfg.num_mel_bins)
    if features.ndim != 3 or features.shape[1:] != expected:
        raise ValueError(f"Features must be (batch, {expected[0]}, {expected[1]}) for this model, got {features.shape}.")
    if cfg.num_classes == 0 or (cfg.cls_position == "none" and cfg.pool == "max"):
        raise ValueError("predict() needs a model with a head and pooled features.")
    model.eval()
    features = features.astype(np.float32)
    logits, pooled = [], []
    for start in tqdm(range(0, len(features), batch_size), desc="predict", unit="batch", disable=len(features) <= batch_size):
        chunk = features[start : start + batch_size]
        padded = np.pad(chunk, ((0, batch_size - len(chunk)), (0, 0), (0, 0)))
        lg, ft = _forward(model, jnp.asarray(padded))
        logits.append(np.asarray(lg)[: len(chunk)])
        pooled.append(np.asarray(ft)[: len(chunk)])
    return np.concatenate(logits), np.concatenate(pooled)


def audio_features(paths: list[str], config: AuMConfig, mean: float, std: float) -> np.ndarray:
    """Audio files -> normalised fbank features (B, T, F), as the original's evaluation loader.

    Raises ``AudioLoadError`` naming the file that cannot be decoded.
    """
    feats = []
    for path in tqdm(paths, desc="fbank", unit="file", disable=len(paths) < 8):
        fbank = audio.pad_or_cut(audio.load_fbank(path, config.num_mel_bins), config.audio_length)
        feats.append(audio.normalize(fbank, mean, std))
    return np.stack(feats).astype(np.float32)


def top_classes(logits: np.ndarray, names: list[str] | None, k: int) -> list[list[tuple[str, float]]]:
    """Per example, the ``k`` highest-scoring classes with their sigmoid scores."""
    scores = 1 / (1 + np.exp(-logits))
    best = np.argsort(-logits, axis=1)[:, :k]
    return [[(names[j] if names else str(j), float(scores[i, j])) for j in row] for i, row in enumerate(best)]


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aum_jax.predict",
        description="Runs an aum-jax model on fbank features and saves logits (and features).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="model directory (config.json + params/)")
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--features", help=".npy of normalised fbank features, float32 (B, T, F)")
    inputs.add_argument("--audio", nargs="+", help="audio files to classify")
    parser.add_argument("--save-logits", help=".npy to write the logits (B, classes) to")
    parser.add_argument("--save-features", help=".npy to write the pooled features (B, D) to")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default: 32)")
    parser.add_argument("--mean", type=float, default=audio.AUDIOSET_MEAN, help="--audio: fbank mean of the training set (default: AudioSet's)")
    parser.add_argument("--std", type=float, default=audio.AUDIOSET_STD, help="--audio: fbank std of the training set (default: AudioSet's)")
    parser.add_argument("--label-csv", help="index,mid,display_name CSV to name the classes in the printed top list")
    parser.add_argument("--top-k", type=int, default=5, help="classes printed per example (default: 5)")
    parser.add_argument("--scan-impl", choices=(*SCAN_IMPLS, "auto"), help="selective-scan implementation (default: the model's)")
    args = parser.parse_args(argv[1:])
    flags.FLAGS.mark_as_parsed()
    return args


def main(args: argparse.Namespace) -> int:
    if args.features and not os.path.isfile(args.features):
        print(f"error: features file {args.features} does not exist", file=sys.stderr)
        return 1
    overrides = {"scan_impl": args.scan_impl} if args.scan_impl else {}
    try:
        model = load_model(args.checkpoint, **overrides)
        if args.audio:
            features = audio_features(args.audio, model.config, args.mean, args.std)
        else:
            features = np.load(args.features)
        names = load_label_csv(args.label_csv)[1] if args.label_csv else None
        logits, pooled = predict(model, features, args.batch_size)
    except (FileNotFoundError, ValueError, audio.AudioLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.save_logits:
        np.save(args.save_logits, logits)
        logging.info("Wrote logits %s to %s", logits.shape, args.save_logits)
    if args.save_features:
        np.save(args.save_features, pooled)
        logging.info("Wrote features %s to %s", pooled.shape, args.save_features)
    sources = args.audio or [f"{args.features}[{i}]" for i in range(len(logits))]
    for source, best in zip(sources, top_classes(logits, names, args.top_k)):
        print(f"{source}: " + ", ".join(f"{name} {score:.3f}" for name, score in best))
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
