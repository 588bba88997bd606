"""Converts an original PyTorch AuM checkpoint into an aum-jax model directory.

Plain conversion (a trained AuM model, config inferred from the tensor shapes):

  python scripts/convert_checkpoint.py --torch-checkpoint best_audio_model.pth --output models/aum_base

Init mode (a NEW model initialised from ViM ImageNet or AuM weights, as the original's
imagenet_pretrain / aum_pretrain do):

  python scripts/convert_checkpoint.py --torch-checkpoint vim_s_midclstok.pth --output models/spc_init \
      --target-variant Bi-Bi --target-num-classes 35 --target-audio-length 128 --target-strides 16,16

The output directory holds config.json, an orbax checkpoint under params/ and
preprocessing.json: the fbank settings, normalisation statistics, class names and loss
that ``python -m aum_jax.predict --audio`` uses. ``--dataset audioset`` (audioset_20k,
vggsound, voxceleb, speechcommands, epic_sounds) fills in the published recipe's feature
settings, sample rate, statistics, label CSV and loss; ``--mean/--std/--label-csv/--loss/
--sample-rate`` give them explicitly (and override the dataset's).
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from absl import app, flags
from aum_jax.configs.data import DATASETS

from aum_jax.checkpoints import convert, pretrained
from aum_jax.checkpoints.model_files import MODEL_DIR_FILES, save_model
from aum_jax.cli import command
from aum_jax.cli import flags as cli_flags
from aum_jax.core import logs, storage
from aum_jax.data.features import preprocessing as preprocessing_lib
from aum_jax.data.sources import labels
from aum_jax.models import AuMConfig, count_params

REPO_ROOT = Path(__file__).resolve().parents[1]


def _pair(text: str) -> tuple[int, int]:
    try:
        f, t = (int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected two integers 'F,T', got {text!r}") from e
    return f, t


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = cli_flags.argument_parser("python scripts/convert_checkpoint.py", __doc__.split("\n\n")[0],
                                       "\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--torch-checkpoint", required=True, help="the .pth file (state_dict, module.-prefixed or {'model': ...})")
    parser.add_argument("--output", required=True, help="the model directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it holds an earlier model "
                        "directory (a folder holding other files is refused)")
    parser.add_argument("--strides", type=_pair, help="F,T strides the checkpoint was trained with (default: its patch size)")
    parser.add_argument("--audio-length", type=int, help="frames the checkpoint was trained with (default: inferred from pos_embed)")
    parser.add_argument("--num-mel-bins", type=int, default=128, help="mel bins of the input (default: 128)")
    parser.add_argument("--cls-position", choices=["middle", "head", "end"], help="where a single cls token sits (default: middle)")
    pre = parser.add_argument_group("preprocessing stored with the model (preprocessing.json)")
    pre.add_argument("--dataset", choices=DATASETS, help="fill the published fbank statistics, label CSV and loss of this recipe")
    pre.add_argument("--mean", type=float, help="fbank mean of the training set (overrides --dataset's)")
    pre.add_argument("--std", type=float, help="fbank std of the training set (overrides --dataset's)")
    pre.add_argument("--label-csv", help="index,mid,display_name CSV naming the classes (overrides --dataset's)")
    pre.add_argument("--loss", choices=("BCE", "CE"), help="training loss: BCE gives sigmoid scores, CE softmax (default: --dataset's, else BCE)")
    pre.add_argument("--sample-rate", type=int, help="Hz the model's training audio was prepared at; predict resamples "
                     "every file to it (default: --dataset's, else 16000)")
    init = parser.add_argument_group("init mode: build a new model from the checkpoint's backbone")
    init.add_argument("--target-variant", help="Fo-Fo, Fo-Bi or Bi-Bi (or none, v1, v2); switches init mode on")
    init.add_argument("--target-num-classes", type=int, help="classes of the new head")
    init.add_argument("--target-audio-length", type=int, help="frames of the new model's input")
    init.add_argument("--target-strides", type=_pair, help="F,T strides of the new model (default: the patch size)")
    init.add_argument("--source-kind", choices=["vim", "aum"], help="source family (default: detected from its keys)")
    init.add_argument("--source-cls-position", choices=["middle", "head", "double"], default="middle",
                      help="ViM source: where its cls entries sit in pos_embed (default: middle)")
    init.add_argument("--seed", type=int, default=0, help="seed of the fresh head")
    args = parser.parse_args(argv[1:])
    flags.FLAGS.mark_as_parsed()
    logs.configure(args.verbosity)
    if (args.mean is None) != (args.std is None):
        parser.error("--mean and --std go together")
    target_flags = (args.target_num_classes, args.target_audio_length, args.target_strides)
    if args.target_variant is None and any(v is not None for v in target_flags):
        parser.error("--target-* flags need --target-variant (init mode)")
    if args.target_variant is not None and (args.target_num_classes is None or args.target_audio_length is None):
        parser.error("init mode needs --target-num-classes and --target-audio-length")
    return args


def build(args: argparse.Namespace):
    state = convert.read_torch_checkpoint(args.torch_checkpoint)
    if args.target_variant is None:
        return convert.convert(
            state, strides=args.strides, audio_length=args.audio_length,
            num_mel_bins=args.num_mel_bins, cls_position=args.cls_position,
        )
    target = convert.infer_config(
        state, strides=args.target_strides, audio_length=args.target_audio_length,
        num_mel_bins=args.num_mel_bins, cls_position=args.cls_position,
    ).replace(bimamba_type=pretrained.target_variant(args.target_variant), num_classes=args.target_num_classes)
    layout = pretrained.SourceLayout(
        kind=args.source_kind or pretrained.detect_source_kind(state),
        cls_position=args.source_cls_position,
        strides=args.strides,
        num_mel_bins=args.num_mel_bins,
    )
    return pretrained.init_from_source(state, target, layout, seed=args.seed)


def _repo_path(path: str) -> str:
    """A recipe's repository-relative path, found from any working directory."""
    return path if Path(path).exists() or Path(path).is_absolute() else str(REPO_ROOT / path)


def build_preprocessing(args: argparse.Namespace, model_config: AuMConfig) -> preprocessing_lib.Preprocessing:
    """The model's preprocessing: the recipe's (``--dataset``), the model's input shape, the flags' overrides."""
    prep = preprocessing_lib.Preprocessing()
    label_csv = args.label_csv
    if args.dataset:
        recipe = importlib.import_module(f"aum_jax.configs.{args.dataset}").get_config()
        prep = preprocessing_lib.Preprocessing.from_data_config(recipe.data, recipe.train.loss)
        label_csv = label_csv or _repo_path(recipe.data.label_csv)
    names = labels.load_label_csv(label_csv)[1] if label_csv else None
    if names is not None and len(names) != model_config.num_classes:
        raise ValueError(f"{label_csv} names {len(names)} classes but the model has {model_config.num_classes}")
    prep = prep.replace(num_mel_bins=model_config.num_mel_bins, target_length=model_config.audio_length,
                        mean=args.mean, std=args.std, loss=args.loss, sample_rate=args.sample_rate,
                        class_names=names and tuple(names))
    return prep if prep.loss else prep.replace(loss="BCE")


def main(args: argparse.Namespace) -> int:
    # Before any conversion work: only a model directory is ever replaced, and only with --overwrite.
    storage.check_output_dir(args.output, "--output", MODEL_DIR_FILES, overwrite=args.overwrite)
    model = build(args)
    prep = build_preprocessing(args, model.config)
    path = save_model(model, args.output, overwrite=args.overwrite, preprocessing=prep)
    cfg = model.config
    if prep.skip_norm:
        stats = "none (the features are used unnormalised)"
    elif prep.has_statistics:
        stats = f"mean {prep.mean:.7g}, std {prep.std:.7g}" + (f" ({prep.dataset})" if prep.dataset else "")
    else:
        stats = "NOT STORED: predict --audio will ask for --mean/--std (convert with --dataset or --mean/--std)"
    print(
        f"Wrote {path}\n"
        f"  variant     {cfg.aum_type} (bimamba_type={cfg.bimamba_type})\n"
        f"  size        {cfg.size_name} (embed_dim={cfg.embed_dim})\n"
        f"  depth       {cfg.depth}\n"
        f"  classes     {cfg.num_classes}\n"
        f"  input       {cfg.audio_length} frames x {cfg.num_mel_bins} mel bins, audio at {prep.sample_rate} Hz\n"
        f"  patch grid  {cfg.patch_grid[0]} x {cfg.patch_grid[1]} (patch {cfg.patch_size}, strides {cfg.strides})\n"
        f"  parameters  {count_params(model):,}\n"
        f"  statistics  {stats}\n"
        f"  class names {'from ' + (args.label_csv or prep.dataset) if prep.class_names else 'none (indices are printed)'}\n"
        f"  scores      {prep.score} ({prep.loss} loss)"
    )
    return 0


if __name__ == "__main__":
    # A missing or unreadable checkpoint, an existing output or a bad flag value is the user's: one error: line.
    app.run(command.guard(main, also=(FileNotFoundError, FileExistsError, ValueError)), flags_parser=parse_flags)
