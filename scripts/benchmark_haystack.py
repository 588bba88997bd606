"""The ``haystack`` section of ``scripts/benchmark.py``: a spoken keyword hidden in a long recording.

An audio needle in a haystack (:mod:`aum_jax.inference.haystack`, as DASS measures long-audio models):
one 1 s clip of the demo's held-out test voices is placed at a random offset in ``--haystack-seconds``
of its own background noise, ``--haystack-placements`` placements per length (seeded by
``--haystack-seed``), and two models must find it:

* the demo model (``--haystack-model``, ``configs/demo.py``), read as ``windows`` (its 0.96 s input
  slid every ``--haystack-hop`` seconds) and in one pass over the whole file (``whole``: the position
  table interpolated; ``whole-tile``: tiled);
* the one-pass demo model (``--haystack-stream-model``, ``configs/demo_stream.py``; "" leaves it out),
  read as ``whole`` (the file in 10 s pieces carrying the state) and as a live ``stream`` (0.1 s at a time).

Lengths above :data:`WINDOWED_MAX_SECONDS` are read by the one-pass model alone (the demo model's windows
take some 40 s a placement at 60 min, and its whole pass some 5.6 GB). The needles are the eval split of
``configs/demo.py``'s dataset (``--haystack-clips`` another folder in its layout).

Per model, mode and length: the scores of :func:`aum_jax.inference.haystack.summary` (found, peak found,
time error, detected, latency, false alarms per minute, wall per minute of audio, the first call's compile
included) and the peak RSS of a fresh process (``--haystack-child``) that runs one mode on every placement
of one length, so that no mode's memory hides another's.

The processes run this file as a script (``scripts/benchmark.py --haystack-child=...`` runs the same code).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from pathlib import Path

from absl import app, flags
from benchmark_child import run_json_child

from aum_jax.cli import flags as cli_flags
from aum_jax.core import memory

Row = tuple[str, float, str]

MODES = ("windows", "whole", "whole-tile")  # the demo model's.
STREAM_MODES = ("whole", "stream")  # the one-pass model's.
WINDOWED_MAX_SECONDS = 600.0  # longer haystacks: the one-pass model alone.
DEFAULT_MODEL = "/tmp/aum_demo/model"
DEFAULT_STREAM_MODEL = "/tmp/aum_demo_stream/model"
TRAIN_COMMAND = "python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo"
STREAM_TRAIN_COMMAND = "python -m aum_jax.main --config=configs/demo_stream.py --workdir=/tmp/aum_demo_stream"


def _numbers(values: list[str], kind: type, low: float) -> bool:
    try:
        return all(kind(v) >= low and math.isfinite(kind(v)) for v in values)
    except ValueError:
        return False


_SECONDS = flags.DEFINE_list("haystack-seconds", ["30", "120", "600", "3600"], "haystack: recording lengths in "
                             f"seconds (at least the needle's 1 s; above {WINDOWED_MAX_SECONDS:g} s the one-pass model "
                             "alone).")
_PLACEMENTS = flags.DEFINE_list("haystack-placements", ["20"], "haystack: random placements per length: one number "
                                "for every length, or one per --haystack-seconds length.")
_SEED = flags.DEFINE_integer("haystack-seed", 0, "haystack: seed of the placements (clip, offset, noise).")
_HOP = flags.DEFINE_float("haystack-hop", 0.25, "haystack: hop in seconds of the windows mode (its windows: the "
                          "model's input).", lower_bound=0.001)
_MODEL = flags.DEFINE_string("haystack-model", DEFAULT_MODEL, f"haystack: the model directory (or training workdir) "
                             f"of a demo model ({TRAIN_COMMAND}).")
_STREAM_MODEL = flags.DEFINE_string("haystack-stream-model", DEFAULT_STREAM_MODEL, "haystack: the model directory "
                                    f"of a one-pass demo model ({STREAM_TRAIN_COMMAND}); '' leaves it out.")
_CLIPS = flags.DEFINE_string("haystack-clips", None, "haystack: a folder of needle clips in the demo dataset's layout "
                             "(eval.json, class_labels_indices.csv, optionally clips.csv, audio/eval/<word>/<n>.wav); "
                             "default: the eval split of configs/demo.py's dataset, rendered on first use.")
_CHILD = flags.DEFINE_string("haystack-child", None, "internal: run one mode on one length's placements, "
                             "MODE:SECONDS (e.g. windows:30), and print the results as a JSON line.")
_PLAN = flags.DEFINE_string("haystack-plan", None, "internal: the JSON file of a --haystack-child's placements.")
flags.register_validator("haystack-seconds", lambda v: _numbers(v, float, 1.0), "numbers of at least 1 wanted")
flags.register_validator("haystack-placements", lambda v: _numbers(v, int, 1), "positive whole numbers wanted")


def child_requested() -> bool:
    return _CHILD.value is not None


def require_model() -> Path:
    """The ``--haystack-model`` directory; ends the process with one ``error:`` line when it is not there (or
    ``--haystack-placements`` does not fit ``--haystack-seconds``)."""
    from aum_jax.checkpoints import model_files

    _placements()
    try:
        directory = model_files.model_directory(_MODEL.value)
        model_files.load_config(directory)
        model_files.load_input_features(directory)
    except (ValueError, OSError) as e:  # ModelDirectoryError, MissingStatisticsError
        sys.exit(f"error: the haystack section needs a trained demo model (--haystack-model {_MODEL.value}): {e}; "
                 f"train one with: {TRAIN_COMMAND}")
    return directory


def _placements() -> list[int]:
    counts = [int(v) for v in _PLACEMENTS.value]
    if len(counts) not in (1, len(_SECONDS.value)):
        sys.exit(f"error: --haystack-placements takes one number or one per --haystack-seconds length "
                 f"({len(_SECONDS.value)}), got {len(counts)}")
    return counts * len(_SECONDS.value) if len(counts) == 1 else counts


# ---------------------------------------------------------------------------- one mode in a fresh process


def run_child() -> None:
    """Runs ``--haystack-child``'s mode on every placement of ``--haystack-plan``; prints one JSON line."""
    from aum_jax.core import logs

    logs.quiet_native_logs()  # before JAX loads.
    from aum_jax.checkpoints import model_files
    from aum_jax.inference import haystack

    mode, seconds = _CHILD.value.split(":")
    if mode not in haystack.MODES:
        raise app.UsageError(f"--haystack-child: unknown mode {mode!r}; use one of {', '.join(haystack.MODES)}")
    with open(_PLAN.value, encoding="utf-8") as f:
        placements = json.load(f)
    directory = model_files.model_directory(_MODEL.value)
    model, prep = model_files.load_model(directory), model_files.load_input_features(directory)
    results = haystack.run(model, prep, placements, mode, _HOP.value)
    print(json.dumps({"mode": mode, "seconds": float(seconds), "placements": results,
                      "rss_mb": memory.peak_rss_mb()}), flush=True)


def _run_mode(mode: str, seconds: float, plan: str, directory: Path) -> dict | str:
    """A fresh process's results of one mode on one length, or why it failed."""
    return run_json_child([os.path.abspath(__file__), f"--haystack-child={mode}:{seconds:g}", f"--haystack-plan={plan}",
                           f"--haystack-model={directory}", f"--haystack-hop={_HOP.value}"])


def _models() -> list[tuple[str, Path, tuple[str, ...]]]:
    """(name, directory, modes) of each model the section reads."""
    from aum_jax.checkpoints import model_files

    models = [("demo", require_model(), MODES)]
    if _STREAM_MODEL.value:
        try:
            directory = model_files.model_directory(_STREAM_MODEL.value)
        except (ValueError, OSError) as e:
            sys.exit(f"error: --haystack-stream-model {_STREAM_MODEL.value}: {e}; train one with: {STREAM_TRAIN_COMMAND} "
                     "(or pass --haystack-stream-model '' to leave it out)")
        models.append(("one-pass", directory, STREAM_MODES))
    return models


def haystack_section() -> list[Row]:
    """Each model's scores, wall per minute and peak RSS per mode and haystack length."""
    from aum_jax.checkpoints import model_files
    from aum_jax.inference import haystack

    models = _models()
    folder_of_needles = _CLIPS.value or _demo_needles()
    try:
        clips, names = haystack.read_needles(folder_of_needles)
    except ValueError as e:
        sys.exit(f"error: --haystack-clips: {e}")
    for name, directory, _ in models:
        prep = model_files.load_input_features(directory)
        if prep.class_names and list(prep.class_names) != names:
            sys.exit(f"error: the {name} model's classes {list(prep.class_names)} are not the needle clips' {names} "
                     f"({folder_of_needles})")
    counts = _placements()
    per_length = ", ".join(f"{float(v):g} s: {n}" for v, n in zip(_SECONDS.value, counts))
    print(f"# haystack: models {', '.join(f'{n} {d}' for n, d, _ in models)}; {len(clips)} needle clips of "
          f"{len(names)} classes from {folder_of_needles}; windows every {_HOP.value:g} s; placements {per_length}; "
          f"seed {_SEED.value}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="aum_haystack_") as folder:
        for seconds, count in zip(map(float, _SECONDS.value), counts):
            try:
                placements = haystack.write_haystacks(folder, seconds, count, clips, _SEED.value)
            except ValueError as e:
                sys.exit(f"error: {e}")
            plan = os.path.join(folder, f"plan_{seconds:g}s.json")
            with open(plan, "w", encoding="utf-8") as f:
                json.dump(placements, f)
            for name, directory, modes in models:
                for mode in modes:
                    if name == "demo" and seconds > WINDOWED_MAX_SECONDS:
                        continue
                    label = f"haystack {seconds:g} s {name} {mode}"
                    result = _run_mode(mode, seconds, plan, directory)
                    if isinstance(result, str):
                        rows.append((f"{label}: failed", float("nan"), result))
                        continue
                    s = haystack.summary(result["placements"])
                    rows += [(f"{label}: found", s["found"], "%"), (f"{label}: peak found", s["peak_found"], "%"),
                             (f"{label}: time error", s["time_error_s"], "s"),
                             (f"{label}: detected", s["detected"], "%"),
                             (f"{label}: latency", float("nan") if s["latency_s"] is None else s["latency_s"], "s"),
                             (f"{label}: false alarms", s["false_alarms_per_min"], "/min"),
                             (f"{label}: wall per minute", s["wall_per_min_s"], "s/min"),
                             (f"{label}: peak RSS", result["rss_mb"], "MB")]
            for placement in placements:  # a 60 min haystack is 115 MB: one length's at a time
                os.remove(placement["wav"])
    return rows


def _demo_needles() -> str:
    """The eval split of configs/demo.py's dataset (rendered on first use)."""
    from aum_jax.configs import demo

    from aum_jax.data.demo import demo_data

    settings = demo.get_config().demo
    dataset = demo_data.generate_demo_dataset(
        os.path.expanduser(settings.cache_dir) if settings.cache_dir else demo_data.default_cache_dir(),
        seed=settings.seed, clips_per_word=settings.clips_per_word,
        valid_clips_per_word=settings.valid_clips_per_word, eval_clips_per_word=settings.eval_clips_per_word,
        synth_clips_per_word=settings.synth_clips_per_word, recipe=demo_data.Recipe.from_config(settings),
        show_progress=False)
    return str(dataset.root)


def _main(argv: list[str]) -> None:
    if len(argv) > 1 or not child_requested():
        raise app.UsageError("run as scripts/benchmark.py --sections haystack; this file runs one --haystack-child")
    run_child()


if __name__ == "__main__":  # a --haystack-child process
    app.run(_main, flags_parser=cli_flags.parse_absl_flags)
