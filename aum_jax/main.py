"""Command line of the training and evaluation job.

  python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo
  python -m aum_jax.main --config=configs/audioset.py:small_imgnet --workdir=DIR --config.train.num_steps=1000
  python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo --mode=eval
  python -m aum_jax.main --config=configs/folder.py --config.data.folder.root=PATH --workdir=DIR   # your own clips

Every setting lives in the config file (print it with ``--config=... --mode=print``);
``--config.<path>=<value>`` overrides any of them. Training resumes by itself from the
newest checkpoint in the workdir; a finished workdir is not trained again: its stored
results are printed. ``--mode=eval`` evaluates ``config.eval.model_dir``, else
``workdir/model``, else the newest training checkpoint, on ``config.eval.split``
(``validation``), ``config.eval.test_split`` (``test``) and ``config.eval.extra_test_splits`` and writes
``workdir/eval_<split>.json``; it refuses a workdir that a live trainer holds.

``--workdir`` is a new or empty folder, or the workdir of an earlier run (resumed, or its results
printed); a folder holding anything a run did not write is refused. One inside the aum-jax
checkout (outside its ignored ``runs/`` and ``workdir/``) gets a warning and a ``.gitignore``.

The console shows progress bars, a line every ``config.train.log_every`` steps and the
results; ``-v`` (``--verbosity=0``) adds the INFO logs of every library. A user mistake (an
unknown or invalid config key, a workdir that cannot be written, missing data, a full disk)
ends with one ``error:`` line and exit status 1; config values are checked before anything
is written. Ctrl-C (SIGINT) or SIGTERM stops training after a checkpoint, with exit status 130 or 143.

On a cluster, start one process per host with ``--distributed`` (Cloud TPU, SLURM,
Open MPI are detected) or with explicit ``--coordinator-address``, ``--num-processes``
and ``--process-id``.
"""

from __future__ import annotations

from aum_jax.core import logs

logs.quiet_native_logs()  # before JAX and TensorFlow (clu) load.

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from aum_jax.cli import command  # noqa: E402
from aum_jax.cli import flags as cli_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/demo.py",
    "Training config file, optionally with a variant: configs/<dataset>.py[:<variant>].",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard events, model and reports.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval", "print"],
                          "train: train and evaluate; eval: evaluate a model; print: show the config.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() with auto-detection.")
_COORDINATOR = flags.DEFINE_string("coordinator-address", None, "host:port of process 0 for a multi-process run.")
_NUM_PROCESSES = flags.DEFINE_integer("num-processes", None, "Number of processes of a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process-id", None, "This process's index in a multi-process run.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _MODE.value == "print":
        print(cli_flags.format_config(config))
        return
    # JAX, TensorFlow and the training code load here, not at import: --help, --mode=print and a flag
    # mistake answer without the seconds they take.
    import jax

    from aum_jax.core import workdir as workdir_lib
    from aum_jax.data.sources import labels
    from aum_jax.evaluation import report as report_lib
    from aum_jax.training import config_checks, eval_mode, train
    from aum_jax.training import prepare as data_prepare

    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    logging.info("JAX %s, process %d of %d, devices: %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices())
    workdir = Path(_WORKDIR.value)
    try:
        config_checks.check_workdir(workdir)
        if _MODE.value == "eval":
            eval_mode.check_not_training(workdir, config.train.lock_stale_after_s)
        checkout = workdir_lib.checkout_holding(workdir)
        if checkout is not None and jax.process_index() == 0:
            logging.warning("--workdir %s lies inside the aum-jax checkout %s: it gets a .gitignore that keeps its "
                            "files out of git status (runs/ in the checkout is ignored already)", workdir, checkout)
        config = data_prepare.prepare(config, workdir, training=_MODE.value == "train",  # the run's read-only config.
                                      check=lambda c: config_checks.check(c, _MODE.value))  # before anything is written.
        labels.training_preprocessing(config)  # the label names fit the class count.
        if _MODE.value == "eval":
            reports = eval_mode.evaluate_workdir(config, workdir)
            if jax.process_index() == 0:
                print(report_lib.results_table(list(reports.items())))
            return
        report = train.train_and_evaluate(config, workdir)
    except train.TrainingInterrupted as e:
        logging.warning("%s", e)
        sys.exit(e.exit_status)
    if jax.process_index() == 0:
        print(report_lib.training_run_text(report, config, workdir, workdir / workdir_lib.REPORT_FILE,
                                           workdir / workdir_lib.MODEL_DIR))


if __name__ == "__main__":
    app.run(command.guard(main), flags_parser=cli_flags.parse_absl_flags)
