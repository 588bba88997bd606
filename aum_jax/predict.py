"""Inference with a converted or trained AudioMamba.

  python -m aum_jax.predict --checkpoint MODEL_DIR --features X.npy --save-logits Y.npy \
      [--save-features Z.npy] [--batch-size 32] [--scan-impl auto]

X holds normalised fbank features, float32 (B, T, F), with T and F as the model expects
(see MODEL_DIR/config.json). Audio-file input arrives with the audio front end.
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

from aum_jax.checkpoints import load_model
from aum_jax.models import AudioMamba
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


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aum_jax.predict",
        description="Runs an aum-jax model on fbank features and saves logits (and features).",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--checkpoint", required=True, help="model directory (config.json + params/)")
    parser.add_argument("--features", required=True, help=".npy of normalised fbank features, float32 (B, T, F)")
    parser.add_argument("--save-logits", required=True, help=".npy to write the logits (B, classes) to")
    parser.add_argument("--save-features", help=".npy to write the pooled features (B, D) to")
    parser.add_argument("--batch-size", type=int, default=32, help="examples per forward pass (default: 32)")
    parser.add_argument("--scan-impl", choices=(*SCAN_IMPLS, "auto"), help="selective-scan implementation (default: the model's)")
    args = parser.parse_args(argv[1:])
    flags.FLAGS.mark_as_parsed()
    return args


def main(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.features):
        print(f"error: features file {args.features} does not exist", file=sys.stderr)
        return 1
    overrides = {"scan_impl": args.scan_impl} if args.scan_impl else {}
    try:
        model = load_model(args.checkpoint, **overrides)
        logits, pooled = predict(model, np.load(args.features), args.batch_size)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    np.save(args.save_logits, logits)
    logging.info("Wrote logits %s to %s", logits.shape, args.save_logits)
    if args.save_features:
        np.save(args.save_features, pooled)
        logging.info("Wrote features %s to %s", pooled.shape, args.save_features)
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
