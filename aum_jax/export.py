"""Serving export: a model's forward pass as a serialised ``jax.export`` artifact.

  python -m aum_jax.export --model-dir MODEL_DIR --output model.jaxexport [--batch N]

The artifact maps normalised fbank features ``(B, T, F)`` float32 to logits ``(B, C)``
float32, with the parameters inside. The batch dimension is symbolic unless ``--batch``
fixes it. It is lowered for CPU and CUDA, so the same file serves on either; load it
without aum-jax or Flax:

  exported = jax.export.deserialize(open("model.jaxexport", "rb").read())
  logits = exported.call(features)

Beside it, ``model.preprocessing.json`` holds what turns audio into those features
(fbank settings, normalisation statistics), the class names and the score (sigmoid or
softmax) to apply to the logits; see :mod:`aum_jax.data.features.preprocessing`. A model without
``preprocessing.json``, or whose statistics or training loss are unknown, is refused: its
artifact could not be used as it was trained; so is a model without a classification head (a
pretraining model: ``python -m aum_jax.predict --embeddings`` writes its embeddings).

Both paths are checked before the model is loaded: a file that exists at either is refused
unless ``--overwrite``, and so is a folder. Both files are written atomically: on any failure
(a full disk) neither changes.
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow load.

import argparse  # noqa: E402

from absl import app, flags  # noqa: E402

from aum_jax.cli import command  # noqa: E402
from aum_jax.cli import flags as cli_flags  # noqa: E402
from aum_jax.inference.serving import KNOWN_PLATFORMS, PLATFORMS, sidecar_path, write_export  # noqa: E402


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = cli_flags.argument_parser("python -m aum_jax.export", "Writes a model's forward pass as a serialised "
                                     "jax.export artifact (CPU and CUDA).", __doc__)
    cli_flags.add_model_dir_flag(parser)
    parser.add_argument("--output", required=True, help="the artifact to write, e.g. model.jaxexport")
    parser.add_argument("--batch", type=int, help="fixed batch size (default: a symbolic batch dimension)")
    parser.add_argument("--platforms", default=",".join(PLATFORMS),
                        help=f"comma-separated lowering platforms among {', '.join(KNOWN_PLATFORMS)} (default: cpu,cuda)")
    cli_flags.add_no_verify_flag(parser)
    cli_flags.add_overwrite_flag(parser)
    args = parser.parse_args(argv[1:])
    flags.FLAGS.mark_as_parsed()
    logs.configure(args.verbosity)
    if args.batch is not None and args.batch <= 0:
        parser.error("--batch must be positive")
    return args


def main(args: argparse.Namespace) -> int:
    cli_flags.check_output_files([("--output", args.output), ("--output's sidecar", sidecar_path(args.output))],
                                 overwrite=args.overwrite)
    artifact, sidecar = write_export(args.model_dir, args.output, args.batch, args.platforms.split(","),
                                     verify=not args.no_verify)
    print(f"Wrote {artifact} ({artifact.stat().st_size / 1e6:.1f} MB, platforms {args.platforms}, "
          f"batch {args.batch or 'symbolic'})\nWrote {sidecar}")
    return 0


if __name__ == "__main__":
    # A model directory that cannot be read or an output that cannot be written is the user's: one error: line.
    app.run(command.guard(main, also=(OSError, ValueError)), flags_parser=parse_flags)
