"""Runs a converted or trained AudioMamba on audio files or fbank features.

On audio files (any format soundfile or librosa reads, any sample rate), printing the top classes:

  python -m aum_jax.predict --model-dir MODEL_DIR --audio a.wav b.flac [--top-k 5]

Each file is resampled to the model's rate, becomes a Kaldi fbank, is zero-padded or cut to
the model's frame count and normalised with the statistics stored in
MODEL_DIR/preprocessing.json (written by training and by the converter); --mean/--std,
--label-csv and --loss override them. A file that cannot be read, or is shorter than one
25 ms frame, is skipped with a warning (unless --save-logits/--save-features need every row).
A file longer than the model's input is scored on its first input, as the original evaluates
a clip (only that much is read), with a note on stderr naming it; --window-seconds scores it all.

Long recordings: slide the model's window over the whole file, a batch of windows at a time
(memory does not grow with the recording), and print a timeline of the top classes per
window; save it as JSON and as a heat map:

  python -m aum_jax.predict --model-dir MODEL_DIR --audio long.wav \\
      --window-seconds 1 --hop-seconds 0.5 --json timeline.json --plot timeline.png

Whole recordings in one pass (not in the original): the model runs once over each whole file, the
position embedding extended along time (--whole-pos-embed interpolate, as the original resizes it
for another input length, or tile), and the head scores every time patch; the same timeline, JSON
and heat map as windows, one row per time patch (memory grows linearly with the recording, and a
pass that would not fit in the memory available is refused before it starts, saying what it needs;
a one-pass model reads any length in bounded memory; a note on stderr gives the peak memory the
command reached):

  python -m aum_jax.predict --model-dir MODEL_DIR --audio long.wav --whole --json timeline.json --plot timeline.png

Embeddings for downstream work: per window of each whole file (windows of the model's input
length one after another, or --window-seconds/--hop-seconds; read a window at a time), the pooled
embedding (the vector the head reads), with --layers the pooled hidden state after the chosen
blocks, with --tokens the final tokens on the (frequency, time) patch grid, in one .npz; with
--pool one row per file, the mean of its windows weighted by the audio each holds (as HEAR's
scene embedding):

  python -m aum_jax.predict --model-dir MODEL_DIR --audio a.wav long.flac \\
      --embeddings out.npz [--layers all|0,5,11] [--tokens | --pool] [--window-seconds 1]

On features:

  python -m aum_jax.predict --model-dir MODEL_DIR --features X.npy --save-logits Y.npy \\
      [--save-features Z.npy] [--batch-size 32] [--scan-impl auto]

X holds normalised fbank features, float32 (B, T, F), with T and F as the model expects
(see MODEL_DIR/config.json).

Scores are sigmoids for a model trained with BCE (multi-label) and softmaxes for one
trained with CE (single-label); a model without preprocessing.json has no known loss, so
its raw logits are printed unless --loss is given. A model without a classification head (a
pretraining model, num_classes 0) gives no scores: it is refused except with --embeddings.
A model directory without checksums.json is refused unless --no-verify.

A second call of a model is faster: what the first compiled and traced is kept under
$AUM_JAX_CACHE (default ~/.cache/aum_jax), keyed by jax, the machine and the model (-v says what
was loaded); deleting it is safe.

Output files (--json, --plot, --save-logits, --save-features, --embeddings) are checked before
the model is loaded: a path that exists is refused unless --overwrite, and so are a folder, two
outputs naming one file, and an output naming an input. A file is written atomically: a kill or
a full disk leaves the old file (with --overwrite), or none.
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before TensorFlow loads.

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from aum_jax.cli import command  # noqa: E402
from aum_jax.cli import flags as cli_flags  # noqa: E402
from aum_jax.core import memory, storage  # noqa: E402
from aum_jax.data.features import audio, preprocessing  # noqa: E402
from aum_jax.data.sources import labels  # noqa: E402
from aum_jax.inference import windows  # noqa: E402

# JAX, orbax and the model load in the functions that run them, not at import: --help and a flag
# mistake answer at once, without the seconds those imports take.
if TYPE_CHECKING:
    from aum_jax.inference import classify
    from aum_jax.inference.stream import Stream

MATMUL_PRECISIONS = ("highest", "high", "tensorfloat32", "bfloat16", "default")  # jax.default_matmul_precision's

# The five things predict does, picked by the inputs and flags given, and the options each takes
# (by their argparse ``dest``); parse_flags refuses an option given to a mode that does not take it.
_SCORING = ("top_k", "mean", "std", "label_csv", "loss")
_AUDIO = ("channel",)
MODES: dict[str, tuple[str, tuple[str, ...]]] = {
    "features": ("--features: scores of fbank features", (*_SCORING, "save_logits", "save_features")),
    "clips": ("--audio: scores of each file's first input", (*_SCORING, *_AUDIO, "save_logits", "save_features",
                                                              "json", "plot")),
    "windows": ("--audio with --window-seconds/--hop-seconds: scores of windows over each whole file",
                (*_SCORING, *_AUDIO, "window_seconds", "hop_seconds", "json", "plot")),
    "whole": ("--audio --whole: scores of every time patch of one pass over each whole file",
              (*_SCORING, *_AUDIO, "whole", "whole_pos_embed", "json", "plot")),
    "stream": ("--audio --stream: scores of every time slice, each file read as a live source",
               (*_SCORING, *_AUDIO, "stream", "chunk_seconds", "threshold", "json", "plot")),
    "embeddings": ("--audio --embeddings: embeddings of windows over each whole file",
                   (*_AUDIO, "embeddings", "window_seconds", "hop_seconds", "pool", "layers", "tokens")),
}

MODES_OPTIONS = frozenset(option for _, takes in MODES.values() for option in takes)


def mode_of(args: argparse.Namespace) -> str:
    """The mode of :data:`MODES` that ``args`` ask for."""
    if args.features:
        return "features"
    if args.embeddings:
        return "embeddings"
    if args.stream:
        return "stream"
    if args.whole:
        return "whole"
    return "windows" if args.window_seconds or args.hop_seconds else "clips"


def _check_choice(parser: argparse.ArgumentParser, flag: str, value: str, choices: tuple[str, ...]) -> None:
    """argparse's refusal of a value not in ``choices``, for a flag whose choices are checked after parsing."""
    if value not in choices:
        parser.error(f"argument {flag}: invalid choice: {value!r} (choose from {', '.join(map(repr, choices))})")


def parse_flags(argv: list[str]) -> argparse.Namespace:
    parser = cli_flags.argument_parser("python -m aum_jax.predict", "Runs an aum-jax model on audio files or fbank "
                                     "features.", __doc__)
    cli_flags.add_model_dir_flag(parser)
    cli_flags.add_no_verify_flag(parser)
    inputs = parser.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--features", help=".npy of normalised fbank features, float32 (B, T, F)")
    inputs.add_argument("--audio", nargs="+", help="audio files to classify")
    parser.add_argument("--batch-size", type=int, default=32, help="examples (windows) per forward pass (default: 32, "
                        "or the number of files or rows when fewer)")
    parser.add_argument("--matmul-precision", default="highest", choices=MATMUL_PRECISIONS,
                        help="float32 matmuls: highest (default) computes as the original; on a GPU "
                        "tensorfloat32 is faster and about 1e-3 off")
    parser.add_argument("--scan-impl", help="selective-scan implementation: auto, or a name in aum_jax.ops.SCAN_IMPLS "
                        "(an unknown name is refused with the list; default: the model's)")
    cli_flags.add_overwrite_flag(parser)

    scoring = parser.add_argument_group("scores (every mode but --embeddings)")
    scoring.add_argument("--top-k", type=int, help="classes printed per example or window (default: 5)")
    scoring.add_argument("--mean", type=float, help="fbank mean of the training set (default: the model's)")
    scoring.add_argument("--std", type=float, help="fbank std of the training set (default: the model's)")
    scoring.add_argument("--label-csv", help="index,mid,display_name CSV naming the classes (default: the model's names)")
    scoring.add_argument("--loss", choices=tuple(preprocessing.SCORES), help="the model's training loss: BCE scores with "
                         "sigmoids, CE with softmaxes (default: the model's; raw logits when unknown)")
    scoring.add_argument("--save-logits", help="--features or clips: .npy to write the logits (B, classes) to")
    scoring.add_argument("--save-features", help="--features or clips: .npy to write the pooled features (B, D) to")
    scoring.add_argument("--json", help="--audio: write the per-file, per-window top-k scores to this JSON file")
    scoring.add_argument("--plot", help="--audio: draw a heat map of the top classes over time to this PNG")

    audio = parser.add_argument_group("audio files (--audio)")
    audio.add_argument("--channel", choices=windows.CHANNELS, help="of a multi-channel file, the first channel "
                       "(default, as the original) or their mean")
    audio.add_argument("--window-seconds", type=float, help="slide a window of this length over each whole file "
                       "(default: the model's input length, once --hop-seconds is given; --embeddings always "
                       "slides one)")
    audio.add_argument("--hop-seconds", type=float, help="spacing of the windows (default: the window length)")

    one_pass = parser.add_argument_group("one pass over each whole file (--audio --whole)")
    one_pass.add_argument("--whole", action="store_true", help="run the model once over each whole file and "
                          "score every time patch (instead of windows)")
    one_pass.add_argument("--whole-pos-embed", help="how the position embedding extends "
                          "along time: interpolate (default; as the original resizes it for another input length) or "
                          "tile (the clip's columns repeated)")

    live = parser.add_argument_group("live: a one-pass causal model reads each file as it arrives (--audio --stream)")
    live.add_argument("--stream", action="store_true", help="read each file (or '-': raw 16-bit mono PCM at the "
                      "model's rate from standard input) in chunks as a live source would, print each detection "
                      "when it happens and score every time slice (a model that streams: docs/inference.md)")
    live.add_argument("--chunk-seconds", type=float, help="audio per chunk read (default: 0.1)")
    live.add_argument("--threshold", type=float, help="a class is detected when its score rises to this "
                      "(default: 0.5)")

    embedding = parser.add_argument_group("embeddings (--audio --embeddings)")
    embedding.add_argument("--embeddings", help="write the embeddings of every window of each file (one row per file "
                           "with --pool) to this .npz instead of printing scores")
    rows = embedding.add_mutually_exclusive_group()
    rows.add_argument("--pool", action="store_true", help="one row per file, the mean of its windows weighted by the "
                      "audio each holds (as HEAR's scene embedding)")
    rows.add_argument("--tokens", action="store_true", help="also the final tokens on the (frequency, time) patch "
                      "grid of each window, for a frame-level head")
    embedding.add_argument("--layers", help="also the pooled hidden state after these blocks: 'all' or 0-based "
                           "indices such as 0,5,11")

    args = parser.parse_args(argv[1:])
    flags.FLAGS.mark_as_parsed()
    logs.configure(args.verbosity)
    mode = mode_of(args)
    described, takes = MODES[mode]
    for option in sorted(MODES_OPTIONS - set(takes)):  # every option given that the mode does not take.
        if getattr(args, option) is not None and getattr(args, option) is not False:  # --mean 0 is given.
            parser.error(f"--{option.replace('_', '-')} does not go with {described}")
    if (args.mean is None) != (args.std is None):
        parser.error("--mean and --std go together")
    if args.batch_size <= 0 or (args.top_k is not None and args.top_k <= 0):
        parser.error("--batch-size and --top-k must be positive")
    # Names from the model's registries, which import JAX: checked only when given.
    if args.scan_impl is not None:
        from aum_jax.ops import SCAN_IMPLS

        _check_choice(parser, "--scan-impl", args.scan_impl, (*SCAN_IMPLS, "auto"))
    if args.whole_pos_embed is not None:
        from aum_jax.models.aum import WHOLE_POS_EMBEDS

        _check_choice(parser, "--whole-pos-embed", args.whole_pos_embed, WHOLE_POS_EMBEDS)
    args.top_k = 5 if args.top_k is None else args.top_k
    args.channel = args.channel or "first"
    args.whole_pos_embed = args.whole_pos_embed or "interpolate"
    if args.chunk_seconds is not None and args.chunk_seconds <= 0:
        parser.error("--chunk-seconds must be positive")
    args.chunk_seconds = args.chunk_seconds or 0.1
    args.threshold = 0.5 if args.threshold is None else args.threshold
    if mode != "stream" and "-" in (args.audio or ()):
        parser.error("--audio - (standard input) is read by --stream")
    return args


def _preprocessing(args: argparse.Namespace, model_dir: str, num_classes: int, num_mel_bins: int,
                   audio_length: int) -> preprocessing.Preprocessing:
    """The model's stored preprocessing with the flags' overrides; a model without one is said so."""
    from aum_jax.checkpoints import model_files

    prep = model_files.load_preprocessing(model_dir)
    if prep is None:
        print(f"note: {model_dir} has no {model_files.PREPROCESSING_FILE}: "
              + ("scores by --loss" if args.loss else "printing raw logits (--loss BCE or CE gives scores)")
              + (f"; audio becomes a Kaldi fbank at {preprocessing.RECIPE_SAMPLE_RATES['kaldi_fbank']} Hz"
                 if args.audio else ""), file=sys.stderr)
        prep = preprocessing.Preprocessing(num_mel_bins=num_mel_bins, target_length=audio_length)
    names = tuple(labels.load_label_csv(args.label_csv)[1]) if args.label_csv else None
    if names is not None and len(names) != num_classes:
        raise ValueError(f"{args.label_csv} names {len(names)} classes but the model has {num_classes}")
    return prep.replace(mean=args.mean, std=args.std, class_names=names, loss=args.loss)


def _print_timeline(tl: classify.Timeline, k: int, windowed: bool, model_rate: int) -> None:
    rate = f"; {tl.sample_rate} Hz resampled to {model_rate} Hz" if tl.sample_rate != model_rate else ""
    if not windowed:
        print(f"{tl.file}: " + ", ".join(f"{n} {s:.3f}" for n, s in tl.top(k)[0]) + f"  ({tl.score}{rate})")
        return
    print(f"{tl.file}: {tl.duration:.2f} s, {len(tl.starts)} windows, {tl.score} scores{rate}")
    width = len(f"{tl.ends.max():.2f}")
    for start, end, top in zip(tl.starts, tl.ends, tl.top(k)):
        print(f"  {start:>{width}.2f}-{end:>{width}.2f} s  " + ", ".join(f"{n} {s:.3f}" for n, s in top))


def _save(path: str | None, array: np.ndarray | None, what: str) -> None:
    if path and array is not None:
        with storage.staged_file(path) as staging, open(staging, "wb") as f:  # a name: np.save appends ".npy".
            np.save(f, array)
        logging.info("Wrote %s %s to %s", what, array.shape, path)


def _windowed(args: argparse.Namespace, model, prep) -> tuple[list[classify.Timeline], dict[str, str]]:
    from aum_jax.inference import classify, whole

    if not args.whole:
        windows.check_window(prep, args.window_seconds)  # the same for every file: an error, not a skipped file.
    timelines, skipped = [], {}
    for path in args.audio:
        try:
            if args.whole:
                timelines.append(whole.classify_whole(model, prep, path, pos_embed=args.whole_pos_embed,
                                                      matmul_precision=args.matmul_precision, channel=args.channel))
                continue
            timelines.append(classify.classify_recording(model, prep, path, args.window_seconds, args.hop_seconds,
                                                        args.batch_size, args.matmul_precision, channel=args.channel))
        except (preprocessing.MissingStatisticsError, classify.NonFiniteOutputError):  # the model's fault: no file is skipped.
            raise
        except (ValueError, audio.AudioLoadError) as e:
            if len(args.audio) == 1:
                raise
            skipped[path] = str(e)
    return timelines, skipped


def _run_audio(args: argparse.Namespace, model, prep) -> int:
    from aum_jax.inference import classify, whole

    windowed = bool(args.window_seconds or args.hop_seconds or args.whole)
    if windowed:
        timelines, skipped = _windowed(args, model, prep)
    else:
        clips = classify.classify_clips(model, prep, args.audio, args.batch_size, args.matmul_precision,
                                       channel=args.channel, with_features=bool(args.save_features))
        timelines, skipped = clips.timelines, clips.skipped
        if skipped and (args.save_logits or args.save_features):
            raise ValueError(f"{len(skipped)} of {len(args.audio)} files could not be read, and the rows of "
                             f"--save-logits/--save-features follow --audio; nothing was saved: "
                             + "; ".join(skipped.values()))
        _save(args.save_logits, clips.logits, "logits")
        _save(args.save_features, clips.features, "features")
        for tl in timelines:
            if tl.ends[0] < tl.duration:
                print(f"note: {tl.file}: only its first {tl.ends[0]:g} s of {tl.duration:.2f} s were scored; "
                      "--window-seconds scores it all", file=sys.stderr)
    for reason in skipped.values():
        print(f"warning: skipped {reason}", file=sys.stderr)
    for tl in timelines:
        _print_timeline(tl, args.top_k, windowed, prep.sample_rate)
    _write_timelines(args, prep, timelines, skipped)
    if args.whole and timelines:  # last: the peak of the whole command, outputs written
        how = ("read as a stream" if whole.streams(model, prep) else "read in chunks" if whole.reads_in_chunks(model)
               else f"{args.whole_pos_embed} position embedding")
        print(f"note: one pass over each whole file ({', '.join(f'{tl.duration:.2f} s' for tl in timelines)}; "
              f"{how}); peak memory {memory.peak_rss_mb():.0f} MB", file=sys.stderr)
    return 0 if timelines else 1


def _write_timelines(args: argparse.Namespace, prep, timelines: list[classify.Timeline], skipped: dict[str, str]) -> None:
    """--json and --plot of the files' timelines."""
    if args.json:  # written a window at a time: an hour's timeline is not held as JSON objects.
        header = {"model": os.path.abspath(args.model_dir), "score": prep.score, "sample_rate": prep.sample_rate,
                  "skipped": skipped}
        with storage.staged_file(args.json) as staging, open(staging, "w", encoding="utf-8") as f:
            f.write(json.dumps(header)[:-1] + ', "files": [')
            for i, tl in enumerate(timelines):
                f.write("," if i else "")
                tl.write_json(f, args.top_k)
            f.write("]}\n")
        print(f"Wrote {args.json}")
    if args.plot and timelines:
        from aum_jax.inference import plot  # matplotlib, only for a plot

        plot.plot_timelines(timelines, args.plot)
        print(f"Wrote {args.plot}")


def _stream_one(stream: Stream, path: str, args: argparse.Namespace) -> classify.Timeline:
    """One file read as a live source: each detection printed when it happens; its timeline."""
    print(f"{path}: a row every {stream.seconds_per_slice * 1000:.0f} ms; detections (score >= {args.threshold:g}):",
          flush=True)
    above = None
    for rows in stream.read(path, chunk_seconds=args.chunk_seconds, channel=args.channel):
        for end, scores in zip(rows.ends, rows.scores):
            now = scores >= args.threshold
            for j in np.flatnonzero(now if above is None else now & ~above):
                print(f"  {end:9.2f} s  {rows.class_names[j]} {scores[j]:.3f}", flush=True)
            above = now
    timeline = stream.timeline(path)
    print(f"{path}: {timeline.duration:.2f} s, {len(timeline.ends)} rows ({timeline.score})")
    return timeline


def _run_stream(args: argparse.Namespace, model_dir, prep) -> int:
    from aum_jax.inference.stream import Stream

    stream = Stream(model_dir, preprocessing=prep, matmul_precision=args.matmul_precision, verify=not args.no_verify)
    timelines, skipped = [], {}
    for path in args.audio:
        try:
            timelines.append(_stream_one(stream, path, args))
        except audio.AudioLoadError as e:
            if len(args.audio) == 1:
                raise
            skipped[path] = str(e)
            print(f"warning: skipped {e}", file=sys.stderr)
    _write_timelines(args, prep, timelines, skipped)
    print(f"note: {len(timelines)} file(s) streamed; peak memory {memory.peak_rss_mb():.0f} MB", file=sys.stderr)
    return 0 if timelines else 1


def _run_features(args: argparse.Namespace, model, prep) -> int:
    from aum_jax.inference import classify

    features = np.load(args.features)
    logits, pooled = classify.logits_and_features(model, features, args.batch_size, args.matmul_precision)
    sources = [f"{args.features}[{i}]" for i in range(len(logits))]
    classify.require_finite(logits, sources)
    _save(args.save_logits, logits, "logits")
    _save(args.save_features, pooled, "features")
    names = labels.class_names(prep.class_names, logits.shape[1])
    for source, best in zip(sources, classify.top_k(classify.scores(logits, prep.score), names, args.top_k)):
        print(f"{source}: " + ", ".join(f"{name} {score:.3f}" for name, score in best) + f"  ({prep.score})")
    return 0


def _run_embeddings(args: argparse.Namespace, model, prep) -> int:
    from aum_jax.inference import embeddings

    layers = embeddings.parse_layers(args.layers, model.config.depth)
    rows = embeddings.embed_files(model, prep, args.audio, window_seconds=args.window_seconds,
                                  hop_seconds=args.hop_seconds, pool=args.pool, layers=layers, tokens=args.tokens,
                                  batch_size=args.batch_size, matmul_precision=args.matmul_precision,
                                  channel=args.channel)
    for reason in rows.skipped.values():
        print(f"warning: skipped {reason}", file=sys.stderr)
    rows.save(args.embeddings)
    shapes = ", ".join(f"{name} {tuple(array.shape)}" for name, array in
                       (("embedding", rows.embedding), ("layers", rows.layers), ("tokens", rows.tokens))
                       if array is not None)
    rows_are = "one per file, its windows pooled" if args.pool else "one per window"
    print(f"Wrote {args.embeddings}: {len(rows.files)} rows of {len(set(rows.files))} files ({rows_are}); {shapes}")
    return 0


OUTPUT_FLAGS = (("--json", "json"), ("--plot", "plot"), ("--save-logits", "save_logits"),
                ("--save-features", "save_features"), ("--embeddings", "embeddings"))


def main(args: argparse.Namespace) -> int:
    from aum_jax.checkpoints import model_files
    from aum_jax.inference import classify

    inputs = [("--features", args.features)] if args.features else [("--audio", path) for path in args.audio]
    cli_flags.check_output_files([(flag, getattr(args, name)) for flag, name in OUTPUT_FLAGS],
                                 overwrite=args.overwrite, inputs=inputs)
    if args.features and not os.path.isfile(args.features):
        raise FileNotFoundError(f"features file {args.features} does not exist")
    overrides = {"scan_impl": args.scan_impl} if args.scan_impl else {}
    model_dir = model_files.model_directory(args.model_dir)
    cfg = model_files.load_config(model_dir)
    if not args.embeddings:  # scores, logits and pooled features need a head: refused before the model loads.
        classify.require_head(cfg, str(model_dir))
    prep = _preprocessing(args, str(model_dir), cfg.num_classes, cfg.num_mel_bins, cfg.audio_length)
    if args.stream:
        return _run_stream(args, model_dir, prep)
    model = model_files.load_model(model_dir, verify=not args.no_verify, **overrides)
    if args.embeddings:
        return _run_embeddings(args, model, prep)
    return _run_audio(args, model, prep) if args.audio else _run_features(args, model, prep)


if __name__ == "__main__":
    # A file that cannot be read or a value that does not fit the model is the user's: one error: line.
    app.run(command.guard(main, also=(OSError, ValueError)), flags_parser=parse_flags)
