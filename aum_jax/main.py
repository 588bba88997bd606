"""Command line of the training and evaluation job.

  python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo
  python -m aum_jax.main --config=configs/audioset.py:small_imgnet --workdir=DIR --config.train.num_steps=1000
  python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo --mode=eval
  python -m aum_jax.main --config=configs/folder.py --config.data.folder=PATH --workdir=DIR   # your own clips

Every setting lives in the config file (print it with ``--config=... --mode=print``);
``--config.<path>=<value>`` overrides any of them. Training resumes by itself from the
newest checkpoint in the workdir; a finished workdir is not trained again: its stored
results are printed. ``--mode=eval`` evaluates ``config.eval.model_dir``, else
``workdir/model``, else the newest training checkpoint, on ``config.eval.split``
(``validation``) and ``config.eval.test_split`` (``test``) and writes
``workdir/eval_<split>.json``.

The console shows progress bars, a line every ``config.train.log_every`` steps and the
results; ``-v`` (``--verbosity=0``) adds the INFO logs of every library. A user mistake (an
unknown or invalid config key, a workdir that cannot be written, missing data, a full disk)
ends with one ``error:`` line and exit status 1; config values are checked before anything
is written.

On a cluster, start one process per host with ``--distributed`` (Cloud TPU, SLURM,
Open MPI are detected) or with explicit ``--coordinator_address``, ``--num_processes``
and ``--process_id``.
"""

from __future__ import annotations

from aum_jax.cli import console

console.quiet_native_logs(preload_tensorflow=True)  # before JAX and TensorFlow (clu) load.

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import ml_collections  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from aum_jax.checkpoints import convert, model_files  # noqa: E402
from aum_jax.core import sharding  # noqa: E402
from aum_jax.data.demo import demo_data  # noqa: E402
from aum_jax.data.features import preprocessing  # noqa: E402
from aum_jax.data.pipeline import batching  # noqa: E402
from aum_jax.data.sources import datasets, folder_setup, folder_source  # noqa: E402
from aum_jax.evaluation import confusion, evaluate  # noqa: E402
from aum_jax.models import AudioMamba, AuMConfig, init_model  # noqa: E402
from aum_jax.training import config_checks, divergence, run_checkpoints, train  # noqa: E402
from aum_jax.training import workdir as workdir_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/demo.py",
    "Training config file, optionally with a variant: configs/<dataset>.py[:<variant>].",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events, model and reports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "print"],
                          "train: train and evaluate; eval: evaluate a model; print: show the config.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def prepare_demo_data(config: ml_collections.ConfigDict) -> None:
    """Generates (or reuses) the eSpeak demo dataset and points ``config.data`` at it."""
    demo = config.demo
    dataset = demo_data.generate_demo_dataset(
        os.path.expanduser(demo.cache_dir) if demo.cache_dir else demo_data.default_cache_dir(),
        seed=demo.seed,
        clips_per_word=demo.clips_per_word,
        valid_clips_per_word=demo.valid_clips_per_word,
        eval_clips_per_word=demo.eval_clips_per_word,
        show_progress=jax.process_index() == 0,
    )
    with config.unlocked():
        config.data.train_datafile = str(dataset.train_json)
        config.data.validation_datafile = str(dataset.valid_json or dataset.eval_json)
        config.data.test_datafile = str(dataset.eval_json)
        config.data.label_csv = str(dataset.label_csv)


def _latest_checkpoint_model(config: ml_collections.ConfigDict, workdir: Path) -> AudioMamba | None:
    """The model of the newest readable training checkpoint in ``workdir``, or None."""
    manager = run_checkpoints.make_manager(workdir, config.train.keep_checkpoints)
    model = init_model(AuMConfig.from_dict(config.model.to_dict()), config.train.seed)
    try:
        step = run_checkpoints.restore(manager, model, None, None)  # the model item alone.
    finally:
        manager.close()
    if not step:
        return None
    logging.info("Evaluating the training checkpoint of step %d", step)
    return model


def run_eval(config: ml_collections.ConfigDict, workdir: Path) -> dict:
    """Evaluates a model directory or the newest checkpoint; writes ``workdir/eval_<split>.json``.

    With ``config.eval.confusion_matrix``, each split's confusion matrix, from the same pass,
    goes to ``workdir/confusion_<split>.json`` and ``.png``.
    """
    if config.eval.model_dir and not (Path(config.eval.model_dir) / model_files.CONFIG_FILE).is_file():
        raise app.UsageError(f"config.eval.model_dir={config.eval.model_dir} is not an aum-jax model directory")
    model_dir = Path(config.eval.model_dir or workdir / workdir_lib.MODEL_DIR)
    if (model_dir / model_files.CONFIG_FILE).is_file():
        model, source = model_files.load_model(model_dir), str(model_dir)
    else:
        model, source = _latest_checkpoint_model(config, workdir), str(workdir / workdir_lib.CHECKPOINT_DIR)
        if model is None:
            raise app.UsageError(f"no model in {model_dir} and no checkpoint in {workdir}")
    mesh = sharding.make_mesh(config.mesh)
    nnx.update(model, sharding.replicate(nnx.state(model), mesh))
    names = list(preprocessing.for_training(config).class_names)
    reports = {}
    for split in filter(None, (config.eval.split, config.eval.test_split)):
        result, outputs = evaluate.evaluate_split(model, config.data, split, mesh, config.train.loss,
                                                  config.eval.matmul_precision)
        logging.info("%s on %s: %s", source, split, result)
        reports[split] = {"model": source, "split": split, **result}
        try:
            evaluate.write_report(workdir / workdir_lib.eval_report_file(split), reports[split])
            if config.eval.confusion_matrix and jax.process_index() == 0:
                counts = confusion.confusion_matrix(outputs)
                confusion.save(counts, names or [str(i) for i in range(len(counts))], workdir, split)
        except OSError as e:
            raise workdir_lib.WorkdirNotWritableError(f"cannot write the {split} report in {workdir}: {e}") from e
    return reports


def format_config(config: ml_collections.ConfigDict) -> str:
    """Every knob as ``path = value``, one a line, values plain (references resolved)."""
    lines = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key in sorted(node):
                walk(f"{prefix}.{key}" if prefix else key, node[key])
        else:
            lines.append(f"{prefix} = {node!r}")

    walk("", config.to_dict())
    return "\n".join(lines)


def splits_to_check(config: ml_collections.ConfigDict, mode: str) -> list[str]:
    """The splits a mode reads: training needs train and the evaluated ones."""
    evaluated = [s for s in (config.eval.split, config.eval.test_split) if s]
    return (["train"] if mode == "train" else []) + evaluated


def print_results(report: dict[str, Any], workdir: Path, config: ml_collections.ConfigDict) -> None:
    """The final table: the best model on validation (and test), and where the files are."""
    rows = [(config.eval.split or "final", report.get("best") or report.get("final"))]
    if report.get("test"):
        rows.append((config.eval.test_split, {"step": (report.get("best") or {}).get("step"), **report["test"]}))
    print(f"\nResults ({workdir / workdir_lib.REPORT_FILE}); best model by {config.train.metric} in {workdir / workdir_lib.MODEL_DIR}:")
    print(console.results_table(rows))


def show_confusion(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Prints the confusion matrix that training (or ``--mode=eval``) stored for the test split (else validation)."""
    split = config.eval.test_split or config.eval.split
    stored = confusion.load(workdir, split)
    if jax.process_index() != 0:
        return
    if stored is None:
        print(f"\nNo confusion matrix of {split} is stored in {workdir}; --mode=eval computes it.")
        return
    counts, names = stored
    print(f"\nConfusion matrix of the best model on {split} (rows: true, columns: predicted; "
          f"{workdir / f'confusion_{split}.png'}):")
    print(confusion.format_table(counts, names))


# Errors that end a run with one line on stderr and exit status 1 instead of a traceback.
CLEAN_EXITS = (
    config_checks.ConfigError,
    datasets.DataNotFoundError,
    workdir_lib.WorkdirError,
    divergence.DivergedWorkdirError,
    divergence.NonFiniteLossError,
    batching.BadInputError,
    run_checkpoints.CheckpointMismatchError,
    run_checkpoints.CheckpointWriteError,
    model_files.ModelDirectoryError,
    folder_source.FolderError,
    convert.CheckpointError,
    preprocessing.LabelNamesError,
)


def _exit_with_one_line(error: Exception) -> None:
    """Ends the process with the first line of the message (the whole message is an INFO log: ``-v``)."""
    message = str(error)
    logging.info("%s: %s", type(error).__name__, message)
    sys.exit(f"error: {message.splitlines()[0]}")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _MODE.value == "print":
        print(format_config(config))
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    logging.info("JAX %s, process %d of %d, devices: %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices())
    workdir = Path(_WORKDIR.value)
    is_main = jax.process_index() == 0
    try:
        config_checks.check_workdir(workdir)
        folder = folder_setup.configure(config, workdir) if config.data.source == "folder" else None
        config_checks.check(config, _MODE.value)  # before anything is written.
        if config.get("demo") and config.demo.generate:
            prepare_demo_data(config)
        if folder is not None:
            folder_setup.prepare(config, workdir, folder)
        datasets.check_files(config.data, splits_to_check(config, _MODE.value))
        preprocessing.for_training(config)  # the label names fit the class count.
        if _MODE.value == "eval":
            reports = run_eval(config, workdir)
            if is_main:
                print(console.results_table([(split, r) for split, r in reports.items()]))
            return
        report = train.train_and_evaluate(config, workdir)
    except train.TrainingInterrupted as e:
        logging.warning("%s", e)
        sys.exit(143)
    except CLEAN_EXITS as e:
        _exit_with_one_line(e)
    if is_main:
        if report.get(train.ALREADY_TRAINED):
            print(f"{workdir} is already trained to step {report['step']}; its stored results follow "
                  "(--mode=eval evaluates again, a larger --config.train.num_steps trains on).")
        print_results(report, workdir, config)
    if config.eval.confusion_matrix:
        show_confusion(config, workdir)


if __name__ == "__main__":
    app.run(main, flags_parser=console.parse_absl_flags)
