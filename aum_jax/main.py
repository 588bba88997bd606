"""Command line of the training and evaluation job.

  python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo
  python -m aum_jax.main --config=configs/audioset.py:small_imgnet --workdir=DIR --config.train.num_steps=1000
  python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo --mode=eval

Every setting lives in the config file (print it with ``--config=... --mode=print``);
``--config.<path>=<value>`` overrides any of them. Training resumes by itself from the
newest checkpoint in the workdir. ``--mode=eval`` evaluates ``config.eval.model_dir``,
else ``workdir/model``, else the newest training checkpoint, on ``config.eval.split``
(and ``config.eval.test_split``) and writes ``workdir/eval_<split>.json``.

On a cluster, start one process per host with ``--distributed`` (Cloud TPU, SLURM,
Open MPI are detected) or with explicit ``--coordinator_address``, ``--num_processes``
and ``--process_id``.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
from pathlib import Path

import jax
import ml_collections
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from aum_jax import demo_data, evaluate, input_pipeline, model_files, run_checkpoints, sharding, train
from aum_jax import workdir as workdir_lib
from aum_jax.models import AudioMamba, AuMConfig, init_model

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
        config.data.eval_datafile = str(dataset.valid_json or dataset.eval_json)
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
    """Evaluates a model directory or the newest checkpoint; writes ``workdir/eval_<split>.json``."""
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
    sharding.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
    nnx.update(model, sharding.replicate(nnx.state(model), mesh))
    reports = {}
    for split in filter(None, (config.eval.split, config.eval.test_split)):
        result = evaluate.evaluate_split(model, config.data, split, mesh, config.train.loss)
        logging.info("%s on %s: %s", source, split, result)
        reports[split] = {"model": source, "split": split, **result}
        evaluate.write_report(workdir / workdir_lib.eval_report_file(split), reports[split])
    return reports


def _quiet_orbax_info(record: std_logging.LogRecord) -> bool:
    """Keeps orbax's warnings and errors but drops its per-save INFO chatter."""
    return record.levelno >= std_logging.WARNING or f"{os.sep}orbax{os.sep}" not in record.pathname


# Errors that end a run with one line on stderr and exit status 1 instead of a traceback.
CLEAN_EXITS = (
    workdir_lib.WorkdirInUseError,
    train.DivergedWorkdirError,
    train.NonFiniteLossError,
    input_pipeline.BadInputError,
    run_checkpoints.CheckpointMismatchError,
)


def _exit_with_one_line(error: Exception) -> None:
    """Logs the whole message, then ends the process with its first line."""
    message = str(error)
    logging.error("%s: %s", type(error).__name__, message)
    sys.exit(f"error: {message.splitlines()[0]}")


def main(argv: list[str]) -> None:
    logging.get_absl_logger().addFilter(_quiet_orbax_info)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    if _MODE.value == "print":
        print(config)
        return
    if not _WORKDIR.value:
        raise app.UsageError("--workdir is required")
    if _COORDINATOR.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif _DISTRIBUTED.value:
        jax.distributed.initialize()
    logging.info("JAX %s, process %d of %d, devices: %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices())
    if config.get("demo") and config.demo.generate:
        prepare_demo_data(config)
    workdir = Path(_WORKDIR.value)
    try:
        if _MODE.value == "eval":
            run_eval(config, workdir)
        else:
            train.train_and_evaluate(config, workdir)
    except train.TrainingInterrupted as e:
        logging.warning("%s", e)
        sys.exit(143)
    except CLEAN_EXITS as e:
        _exit_with_one_line(e)


if __name__ == "__main__":
    app.run(main)
