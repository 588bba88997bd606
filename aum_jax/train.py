"""Training and evaluation of AudioMamba: the original ``traintest.train``, data-parallel.

``train_and_evaluate(config, workdir)`` is one loop, in the sections of its banners:
workdir, mesh, input, model, update, checkpoint, train loop, eval.

- The workdir is locked for the run (:mod:`aum_jax.workdir`); a second trainer stops.
- A workdir whose ``report.json`` reached the configured steps is not trained again:
  its report is returned, marked ``already_trained``.
- The model and optimizer come from, in this order: the newest readable checkpoint
  in ``workdir/checkpoints`` (same parameters, optimizer state and next batch), else
  the pretrained source ``config.init.checkpoint``, else a fresh initialisation.
- A step whose loss or gradients are not finite, whose loss exceeds
  ``config.train.max_loss`` or whose global gradient norm exceeds
  ``config.train.max_grad_norm`` is skipped inside the jitted step
  (``optax.apply_if_finite``). After ``config.train.max_nonfinite_steps`` such steps
  in a row the run has diverged: it stops with :class:`NonFiniteLossError`, keeps
  only the checkpoints from before the divergence began and writes
  ``diverged.json``; a restart with the same settings refuses with
  :class:`DivergedWorkdirError`, naming the knobs to change.
- SIGTERM or Ctrl-C checkpoint, then raise :class:`TrainingInterrupted`.
- The loss goes to the host only at log, checkpoint and evaluation steps.

Outputs in ``workdir`` are listed in :mod:`aum_jax.workdir`; the best model lands in
``model/`` with its ``preprocessing.json``. ``report.json`` holds the metrics and the
run's accounting: skipped steps, skipped clips by reason and the step training was
restored from; TensorBoard gets the same counts, under ``train/*``, ``validation/*`` and
``test/*``.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx
from jax.experimental import multihost_utils
from tqdm import tqdm

from aum_jax import (
    audio, console, convert, datasets, evaluate, input_pipeline, losses, model_files, preprocessing, run_checkpoints,
    sharding,
)
from aum_jax import workdir as workdir_lib
from aum_jax.models import AudioMamba, AuMConfig, count_params, init_model

# apply_if_finite applies updates anyway after this many bad steps in a row; the loop
# stops long before (config.train.max_nonfinite_steps).
_NEVER_GIVE_UP = np.iinfo(np.int32).max
ALREADY_TRAINED = "already_trained"  # key of a returned report: the workdir was finished before.


class NonFiniteLossError(FloatingPointError):
    """Training diverged: too many consecutive steps were non-finite or out of bounds."""


class DivergedWorkdirError(RuntimeError):
    """The workdir's run stopped on divergence and the settings are unchanged."""


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped training; a checkpoint of ``step`` was saved."""

    def __init__(self, step: int):
        super().__init__(f"training interrupted after step {step}; checkpoint saved")
        self.step = step


# ----------------------------------------------------------------------------------------
# Optimizer and step
# ----------------------------------------------------------------------------------------


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The original's per-epoch schedule times its per-step warm-up.

    ``"multistep"``: ``lr * decay_factor ** #{m in range(decay_start_epoch, inf,
    decay_every_epochs) : m <= epoch}`` with ``epoch = step // steps_per_epoch`` (0-based),
    i.e. torch's MultiStepLR stepped after every epoch. ``"constant"``: 1. Warm-up
    multiplies by ``warmup_start + (1 - warmup_start) * min(1, s / warmup_steps)``, with
    ``s`` the step rounded down to ``warmup_interval``.
    """
    if config.schedule not in ("multistep", "constant"):
        raise ValueError(f"unknown lr schedule {config.schedule!r}; use 'multistep' or 'constant'")
    warmup_steps = round(config.warmup_epochs * steps_per_epoch) if config.warmup_epochs > 0 else config.warmup_steps

    def schedule(step: jax.Array) -> jax.Array:
        factor = jnp.ones((), jnp.float32)
        if config.schedule == "multistep":
            epoch = step // steps_per_epoch
            decays = jnp.maximum(0, (epoch - config.decay_start_epoch) // config.decay_every_epochs + 1)
            factor = jnp.asarray(config.decay_factor, jnp.float32) ** decays
        if warmup_steps > 0:
            stair = (step // config.warmup_interval) * config.warmup_interval
            ramp = jnp.minimum(stair / warmup_steps, 1.0)
            factor = factor * (config.warmup_start + (1.0 - config.warmup_start) * ramp)
        return config.lr * factor

    return schedule


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """torch ``Adam(lr, betas=(b1, b2), eps, weight_decay)`` (L2 decay enters the gradient),
    skipping any update whose gradients are not finite (the schedule does not advance)."""
    return optax.apply_if_finite(
        optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
            optax.scale_by_learning_rate(schedule),
        ),
        max_consecutive_errors=_NEVER_GIVE_UP,
    )


@nnx.jit(static_argnames=("loss", "max_loss", "max_grad_norm"), donate_argnums=(0, 1))
def train_step(
    model: AudioMamba,
    optimizer: nnx.Optimizer,
    batch: dict[str, jax.Array],
    loss: str,
    max_loss: float = float("inf"),
    max_grad_norm: float = float("inf"),
) -> dict[str, jax.Array]:
    """One Adam step on a global batch ``{"fbank": (B, T, F), "label": (B, C)}``.

    The model's and optimizer's buffers are donated. A step whose loss exceeds
    ``max_loss`` or whose gradients' global norm exceeds ``max_grad_norm`` (or either is
    not finite) is handed to the optimizer as non-finite, so ``apply_if_finite`` skips
    it: parameters and moments keep their values, its counters advance.

    Returns:
      ``{"loss", "grad_norm", "ok"}``: the batch's mean loss, the global gradient norm
      and whether the update was applied.
    """

    def compute_loss(model: AudioMamba) -> jax.Array:
        return losses.loss_value(model(batch["fbank"]), batch["label"], loss)

    value, grads = nnx.value_and_grad(compute_loss)(model)
    grad_norm = optax.tree.norm(grads)
    ok = (value <= max_loss) & (grad_norm <= max_grad_norm)  # False for NaN too.
    if max_loss < float("inf") or max_grad_norm < float("inf"):
        grads = jax.tree.map(lambda g: jnp.where(ok, g, jnp.nan), grads)
    optimizer.update(model, grads)
    return {"loss": value, "grad_norm": grad_norm, "ok": ok}


# ----------------------------------------------------------------------------------------
# Helpers of the loop
# ----------------------------------------------------------------------------------------


class _StopRequest:
    """Turns SIGTERM and the first Ctrl-C into a flag checked between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        logging.warning("Received %s; stopping after the current step", signal.Signals(signum).name)
        self.requested = True
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once.
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def any_process(self, step: int, interval: int) -> bool:
        """Whether any process was asked to stop (the same answer on every process).

        With several processes the flags are gathered only every ``interval`` steps, to keep
        a collective out of every step.
        """
        if jax.process_count() == 1:
            return self.requested
        if not _every(step, interval):
            return False
        return bool(multihost_utils.process_allgather(np.array(self.requested)).any())


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _lock_workdir(workdir: Path, train_cfg: ml_collections.ConfigDict) -> workdir_lib.WorkdirLock | None:
    """Process 0 takes the run's lock; every process raises if it is held elsewhere."""
    lock, error = None, None
    if jax.process_index() == 0:
        lock = workdir_lib.WorkdirLock(workdir, train_cfg.lock_heartbeat_s, train_cfg.lock_stale_after_s)
        try:
            lock.acquire()
        except workdir_lib.WorkdirInUseError as e:
            lock, error = None, e
    if jax.process_count() > 1:
        failed = bool(multihost_utils.broadcast_one_to_all(np.array(error is not None)))
        if failed and error is None:
            raise workdir_lib.WorkdirInUseError(f"workdir {workdir} is in use (see the log of process 0)")
    if error is not None:
        raise error
    return lock


def _divergence_knobs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings whose change lets a diverged run go on (see ``check_divergence``)."""
    knobs = {f"optimizer.{k}": v for k, v in config.optimizer.to_dict().items()}
    for key in ("max_loss", "max_grad_norm", "max_nonfinite_steps"):
        knobs[f"train.{key}"] = config.train[key]
    knobs["data.seed"] = config.data.seed
    knobs["data.batch_size"] = config.data.batch_size
    return json.loads(json.dumps(knobs))  # tuples as lists, as read back from JSON.


def check_divergence(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuses to resume a diverged run with unchanged settings; accepts changed ones."""
    record = _read_json(workdir / workdir_lib.DIVERGED_FILE)
    if record is None:
        return
    changed = {k: (record["knobs"].get(k), v) for k, v in _divergence_knobs(config).items()
               if record["knobs"].get(k) != v}
    if not changed:
        raise DivergedWorkdirError(
            f"{workdir} stopped on divergence at step {record['stopped_at_step']} ({record['what']}); "
            f"resumed with the same settings it would diverge again from the kept checkpoint "
            f"(step {record['kept_step']}). Lower --config.optimizer.lr (now {config.optimizer.lr:g}) or "
            f"change the schedule, change --config.data.seed, or, if the bounds fired on a healthy run, raise "
            f"--config.train.max_loss (now {config.train.max_loss:g}) / --config.train.max_grad_norm "
            f"(now {config.train.max_grad_norm:g}); details in {workdir / workdir_lib.DIVERGED_FILE}"
        )
    logging.warning("Resuming %s after its divergence at step %d, with changed settings: %s", workdir,
                    record["stopped_at_step"], ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    if jax.process_index() == 0:
        (workdir / workdir_lib.DIVERGED_FILE).rename(workdir / f"diverged_at_{record['stopped_at_step']}.json")


def _input_counts(train_iter: input_pipeline.BatchIterator) -> dict[str, int]:
    """Skipped clips by kind, summed over processes."""
    counts = np.array([train_iter.skipped_by_kind.get(k, 0) for k in audio.BAD_INPUT_KINDS], np.int64)
    if jax.process_count() > 1:
        counts = multihost_utils.process_allgather(counts).sum(axis=0)
    return {k: int(n) for k, n in zip(audio.BAD_INPUT_KINDS, counts) if n}


# ----------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates.

    Returns:
      The report also written to ``workdir/report.json``: ``{"step", "best", "final",
      "test"}`` with the metrics of :func:`aum_jax.evaluate.evaluate`, and
      ``"restored_from_step"``, ``"skipped_steps"``, ``"skipped_clips"`` (by reason).

    Raises:
      WorkdirInUseError, DivergedWorkdirError, NonFiniteLossError, TrainingInterrupted,
      input_pipeline.BadInputError.
    """
    train_cfg = config.train
    is_main = jax.process_index() == 0

    # ---------------------------------------------------------------- workdir
    workdir = Path(workdir).absolute()
    lock = _lock_workdir(workdir, train_cfg)
    try:
        check_divergence(config, workdir)
        if is_main:
            (workdir / workdir_lib.CONFIG_FILE).write_text(config.to_json_best_effort(indent=1))
        return _train_and_evaluate(config, workdir)
    finally:
        if lock is not None:
            lock.release()


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """The run itself, in the locked ``workdir``: see :func:`train_and_evaluate`."""
    train_cfg = config.train
    is_main = jax.process_index() == 0

    # ---------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(config.mesh)
    global_batch_size = sharding.check_batch_size(config.data.batch_size, mesh, "data.batch_size")
    sharding.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
    logging.info("Mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size, jax.process_count())

    # ---------------------------------------------------------------- input
    source = datasets.make_source(config.data, "train")
    steps_per_epoch = train_cfg.steps_per_epoch
    if steps_per_epoch <= 0:
        steps_per_epoch = max(1, len(source) // global_batch_size)
    num_steps = train_cfg.num_steps if train_cfg.num_steps > 0 else train_cfg.num_epochs * steps_per_epoch
    eval_every = steps_per_epoch if train_cfg.eval_every < 0 else train_cfg.eval_every
    logging.info("%d training clips, global batch %d: %d steps per epoch, %d steps",
                 len(source), global_batch_size, steps_per_epoch, num_steps)
    finished = _read_json(workdir / workdir_lib.REPORT_FILE)
    if finished is not None and finished.get("step", -1) >= num_steps:  # nothing to do: keep the results.
        return {**finished, ALREADY_TRAINED: True}
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
    train_iter = input_pipeline.make_train_iterator(config.data, source=source)

    # ---------------------------------------------------------------- model
    model_config = AuMConfig.from_dict(config.model.to_dict())
    replicated = sharding.replicated(mesh)
    model = init_model(model_config, train_cfg.seed, replicated)  # built on the mesh, under jit.
    logging.info("AuM %s %s: %.3f M parameters", model_config.size_name, model_config.aum_type,
                 count_params(model) / 1e6)

    # ---------------------------------------------------------------- update
    schedule = learning_rate_schedule(config.optimizer, steps_per_epoch)
    tx = make_optimizer(config.optimizer, schedule)
    optimizer = nnx.jit(lambda m: sharding.constrain(nnx.Optimizer(m, tx, wrt=nnx.Param), replicated))(model)

    # ---------------------------------------------------------------- checkpoint
    manager = run_checkpoints.make_manager(workdir, train_cfg.keep_checkpoints)
    step = restored_from = run_checkpoints.restore(manager, model, optimizer, train_iter)
    if not restored_from and config.init.checkpoint:  # a new run starts from a pretrained source.
        pretrained = convert.init_from_pretrained(config.init.checkpoint, model_config, config.init, seed=train_cfg.seed)
        nnx.update(model, sharding.replicate(nnx.state(pretrained, nnx.Param), mesh))
    model.train()
    best = _read_json(workdir / workdir_lib.BEST_FILE)
    model_preprocessing = preprocessing.for_training(config)  # stored beside the model.
    report: dict[str, Any] = {"best": best, "final": None, "test": None,
                              "restored_from_step": restored_from or None}
    if restored_from:
        writer.write_scalars(step, {"train/restored_from_step": restored_from})

    def run_eval(split: str, eval_model: AudioMamba) -> dict[str, float]:
        result = evaluate.evaluate_split(eval_model, config.data, split, mesh, train_cfg.loss, config.eval.matmul_precision)
        eval_model.train()
        return result

    def eval_and_keep_best(step: int) -> None:
        nonlocal best
        result = run_eval(config.eval.split, model)
        writer.write_scalars(step, {f"{config.eval.split}/{k}": v for k, v in result.items()})
        console.line(f"step {step} {config.eval.split}: {console.format_metrics(result)}")
        report["final"] = {"step": step, **result}
        if best is None or result[train_cfg.metric] > best[train_cfg.metric]:
            best = {"step": step, **result}
            model_files.save_model(model, workdir / workdir_lib.MODEL_DIR, overwrite=True, preprocessing=model_preprocessing)
            if is_main:
                (workdir / workdir_lib.BEST_FILE).write_text(evaluate.to_json(best))

    def skipped_total() -> int:
        return int(optimizer.opt_state.total_notfinite[...])

    # ---------------------------------------------------------------- train loop
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=writer, every_steps=train_cfg.log_every or None)
    bar = tqdm(total=num_steps, initial=step, desc="train", unit="step", disable=not is_main)
    pending: list[dict[str, jax.Array]] = []  # on device: the steps since the last host sync.
    window: dict[str, list[float]] = {"loss": [], "grad_norm": []}  # good steps since the last log.
    window_skipped, bad_streak_from = 0, None
    last_eval = None
    try:
        with _StopRequest() as stop:
            while step < num_steps:
                batch = sharding.global_batch(next(train_iter), mesh)
                with jax.set_mesh(mesh), jax.default_matmul_precision(train_cfg.matmul_precision):
                    pending.append(train_step(model, optimizer, batch, train_cfg.loss,
                                              train_cfg.max_loss, train_cfg.max_grad_norm))
                step += 1
                bar.update()
                report_progress(step)
                log_now = _every(step, train_cfg.log_every) or step == num_steps
                eval_now = bool(config.eval.split) and (_every(step, eval_every) or step == num_steps)
                checkpoint_now = _every(step, train_cfg.checkpoint_every)
                stop_now = stop.any_process(step, train_cfg.stop_check_every)
                if not (log_now or eval_now or checkpoint_now or stop_now):
                    continue

                # -------------------------------------------- host sync
                for offset, metrics in enumerate(jax.device_get(pending)):
                    at = step - len(pending) + 1 + offset
                    if metrics["ok"]:
                        bad_streak_from = None
                        window["loss"].append(float(metrics["loss"]))
                        window["grad_norm"].append(float(metrics["grad_norm"]))
                    else:
                        window_skipped += 1
                        bad_streak_from = at if bad_streak_from is None else bad_streak_from
                        logging.warning("step %d: loss %s, gradient norm %s; update skipped", at,
                                        metrics["loss"], metrics["grad_norm"])
                pending.clear()
                if window["loss"]:
                    bar.set_postfix(loss=f"{window['loss'][-1]:.4f}")
                consecutive_bad = int(optimizer.opt_state.notfinite_count[...])
                if consecutive_bad >= train_cfg.max_nonfinite_steps:
                    _stop_on_divergence(config, workdir, manager, step, bad_streak_from, consecutive_bad)
                if log_now:
                    # The lr of the last applied update: skipped steps do not advance the schedule.
                    applied = int(optimizer.step[...]) - skipped_total()
                    scalars = {"train/lr": float(schedule(max(applied - 1, 0))),
                               "train/skipped_steps": window_skipped,
                               "train/skipped_steps_total": skipped_total(),
                               "input/skipped_clips": train_iter.num_skipped}
                    scalars.update({f"input/skipped_clips_{k}": n for k, n in _input_counts(train_iter).items()})
                    if window["loss"]:
                        scalars.update({f"train/{k}": float(np.mean(v)) for k, v in window.items()})
                    writer.write_scalars(step, scalars)
                    console.line(f"step {step}/{num_steps}  loss {scalars.get('train/loss', float('nan')):.4f}  "
                                 f"lr {scalars['train/lr']:.2e}" + (f"  skipped {window_skipped}" if window_skipped else ""))
                    window, window_skipped = {"loss": [], "grad_norm": []}, 0
                # Evaluate before checkpointing: a run killed during the evaluation resumes
                # from the previous checkpoint and evaluates this step again.
                if eval_now:
                    eval_and_keep_best(step)
                    last_eval = step
                if checkpoint_now and bad_streak_from is None:  # never checkpoint inside a bad streak.
                    run_checkpoints.save(manager, step, model, optimizer, train_iter)
                if stop_now:
                    run_checkpoints.save(manager, step, model, optimizer, train_iter, force=True)
                    raise TrainingInterrupted(step)
            if bad_streak_from is None:
                run_checkpoints.save(manager, step, model, optimizer, train_iter, force=True)
    finally:
        bar.close()
        manager.wait_until_finished()
        manager.close()
        train_iter.close()
        writer.flush()

    # ---------------------------------------------------------------- eval
    if config.eval.split and last_eval is None:  # resumed at the end: evaluate what we have.
        eval_and_keep_best(step)
    if not config.eval.split:
        model_files.save_model(model, workdir / workdir_lib.MODEL_DIR, overwrite=True, preprocessing=model_preprocessing)
    report["step"] = step
    report["best"] = best
    report["skipped_steps"] = skipped_total()
    report["skipped_clips"] = {"total": train_iter.num_skipped, **_input_counts(train_iter)}
    model_dir = workdir / workdir_lib.MODEL_DIR
    if config.eval.test_split and model_dir.is_dir():
        best_model = model_files.load_model(model_dir)
        nnx.update(best_model, sharding.replicate(nnx.state(best_model), mesh))
        report["test"] = run_eval(config.eval.test_split, best_model)
        writer.write_scalars(step, {f"{config.eval.test_split}/{k}": v for k, v in report["test"].items()})
        logging.info("%s with the best model: %s", config.eval.test_split, report["test"])
    evaluate.write_report(workdir / workdir_lib.REPORT_FILE, report)
    writer.close()
    return report


def _stop_on_divergence(config: ml_collections.ConfigDict, workdir: Path, manager: Any, step: int,
                        first_bad: int, consecutive_bad: int) -> None:
    """Keeps only checkpoints from before the divergence, records it and raises.

    The parameters of checkpoint ``k`` give the loss of step ``k + 1``; the first bad step
    ``s`` was computed from checkpoint ``s - 1``, so checkpoints from ``s - 1`` on are
    moved aside to ``checkpoints/diverged/``.
    """
    manager.wait_until_finished()
    for k in manager.all_steps():
        if k >= first_bad - 1:
            run_checkpoints.move_aside(manager, k, "diverged")
    kept = manager.latest_step()
    what = (f"{consecutive_bad} steps in a row from step {first_bad} had a non-finite loss or gradient, "
            f"a loss above train.max_loss={config.train.max_loss:g} or a gradient norm above "
            f"train.max_grad_norm={config.train.max_grad_norm:g}")
    if jax.process_index() == 0:
        record = {"stopped_at_step": step, "first_bad_step": first_bad, "what": what, "kept_step": kept,
                  "knobs": _divergence_knobs(config)}
        (workdir / workdir_lib.DIVERGED_FILE).write_text(json.dumps(record, indent=1))
    raise NonFiniteLossError(
        f"training diverged: {what}; stopped at step {step}. "
        + (f"Kept the checkpoint of step {kept}, from before the divergence. " if kept
           else "No checkpoint from before the divergence exists. ")
        + f"Change the settings before restarting (see {workdir / workdir_lib.DIVERGED_FILE})."
    )
