"""Training and evaluation of AudioMamba: the original ``traintest.train``, data-parallel.

``train_and_evaluate(config, workdir)`` is one loop, in the sections of its banners:
mesh, input, model, update, checkpoint, train loop, eval. It resumes from the newest
checkpoint in ``workdir/checkpoints`` when there is one (same parameters, optimizer
state and next batch), skips any step whose loss or gradients are not finite (keeping
the parameters it had) and stops with :class:`NonFiniteLossError` after
``config.train.max_nonfinite_steps`` such steps in a row, and checkpoints on SIGTERM or
Ctrl-C before raising :class:`TrainingInterrupted`.

Outputs in ``workdir``: TensorBoard events (``train/*``, ``validation/*``, ``test/*``), ``config.json``,
``checkpoints/<step>/``, ``model/`` (the best evaluated model with its
``preprocessing.json``, readable by ``checkpoints.load_model`` and ``python -m
aum_jax.predict``), ``best.json`` and ``report.json``. A workdir whose ``report.json``
reached the configured steps is not trained again: its report is returned, marked
``already_trained``.
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
from flax import nnx, traverse_util
from jax.experimental import multihost_utils
from tqdm import tqdm

from aum_jax import checkpoints, console, convert, datasets, evaluate, input_pipeline, losses, preprocessing, sharding, train_state
from aum_jax.models import AudioMamba, AuMConfig, count_params

MODEL_DIR = "model"
BEST_FILE = "best.json"
REPORT_FILE = "report.json"
ALREADY_TRAINED = "already_trained"  # key of a returned report: the workdir was finished before.


class NonFiniteLossError(FloatingPointError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped training; a checkpoint of ``step`` was saved."""

    def __init__(self, step: int):
        super().__init__(f"training interrupted after step {step}; checkpoint saved")
        self.step = step


# ----------------------------------------------------------------------------------------
# Optimizer and loss
# ----------------------------------------------------------------------------------------


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
    """The original's per-epoch schedule times its per-step warm-up.

    ``"multistep"``: ``lr * decay_factor ** #{m in range(decay_start_epoch, inf,
    decay_every_epochs) : m <= epoch}`` with ``epoch = step // steps_per_epoch`` (0-based),
    i.e. torch's MultiStepLR stepped after every epoch. ``"epic"``: 1, 0.05 from epoch
    10, 0.01 from epoch 20. ``"constant"``: 1. Warm-up multiplies by ``warmup_start + (1 - warmup_start) *
    min(1, s / warmup_steps)``, with ``s`` the step rounded down to ``warmup_interval``.
    """
    if config.schedule not in ("multistep", "epic", "constant"):
        raise ValueError(f"unknown lr schedule {config.schedule!r}; use 'multistep', 'epic' or 'constant'")
    warmup_steps = round(config.warmup_epochs * steps_per_epoch) if config.warmup_epochs > 0 else config.warmup_steps

    def schedule(step: jax.Array) -> jax.Array:
        epoch = step // steps_per_epoch
        if config.schedule == "multistep":
            decays = jnp.maximum(0, (epoch - config.decay_start_epoch) // config.decay_every_epochs + 1)
            factor = jnp.asarray(config.decay_factor, jnp.float32) ** decays
        elif config.schedule == "epic":
            factor = jnp.where(epoch < 10, 1.0, jnp.where(epoch < 20, 0.05, 0.01))
        else:
            factor = jnp.ones((), jnp.float32)
        if warmup_steps > 0:
            stair = (step // config.warmup_interval) * config.warmup_interval
            ramp = jnp.minimum(stair / warmup_steps, 1.0)
            factor = factor * (config.warmup_start + (1.0 - config.warmup_start) * ramp)
        return config.lr * factor

    return schedule


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule) -> optax.GradientTransformation:
    """torch ``Adam(lr, betas=(b1, b2), eps, weight_decay)``: L2 decay enters the gradient."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.scale_by_adam(b1=config.b1, b2=config.b2, eps=config.eps),
        optax.scale_by_learning_rate(schedule),
    )


@nnx.jit(static_argnames="loss")
def train_step(
    model: AudioMamba, optimizer: nnx.Optimizer, batch: dict[str, jax.Array], loss: str
) -> tuple[jax.Array, jax.Array]:
    """One Adam step on a global batch ``{"fbank": (B, T, F), "label": (B, C)}``.

    When the loss or any gradient is not finite, parameters and optimizer state keep
    their previous values (the RNG counters still advance).

    Returns:
      ``(loss, ok)``: the batch's mean loss and whether the update was applied.
    """
    params_before = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    optimizer_before = nnx.to_pure_dict(nnx.state(optimizer))

    def compute_loss(model: AudioMamba) -> jax.Array:
        return losses.loss_value(model(batch["fbank"]), batch["label"], loss)

    value, grads = nnx.value_and_grad(compute_loss)(model)
    ok = jnp.isfinite(value)
    for g in jax.tree.leaves(grads):
        ok &= jnp.all(jnp.isfinite(g))
    optimizer.update(model, grads)

    def keep_if_bad(node: nnx.Module | nnx.Optimizer, before: dict[str, Any], *filters: Any) -> None:
        state = nnx.state(node, *filters)
        chosen = jax.tree.map(lambda new, old: jnp.where(ok, new, old), nnx.to_pure_dict(state), before)
        nnx.replace_by_pure_dict(state, chosen)
        nnx.update(node, state)

    keep_if_bad(model, params_before, nnx.Param)
    keep_if_bad(optimizer, optimizer_before)
    return value, ok


# ----------------------------------------------------------------------------------------
# Model construction
# ----------------------------------------------------------------------------------------


def _init_from_model_dir(directory: str, target: AuMConfig, seed: int) -> AudioMamba:
    """A ``target`` model with every parameter of an aum-jax model directory that fits.

    The position embedding is resampled to the new patch grid, and the head is kept only
    when the class count matches; any other mismatch is an error.
    """
    source = checkpoints.load_model(directory)
    model = checkpoints.init_model(target, seed)
    params = nnx.state(model, nnx.Param)
    fresh = traverse_util.flatten_dict(nnx.to_pure_dict(params))
    loaded = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(source, nnx.Param)))
    for key, value in fresh.items():
        old = loaded.get(key)
        if old is not None and old.shape == value.shape:
            fresh[key] = old
        elif key == ("pos_embed",) and old is not None and source.config.num_cls_tokens == target.num_cls_tokens:
            grid_from, grid_to = source.config.patch_grid, target.patch_grid
            fresh[key] = jnp.asarray(
                convert.resample_pos_embed(np.asarray(old), grid_from, grid_to, target.num_cls_tokens)
            )
        elif key[0] != "head":
            shape = None if old is None else old.shape
            raise ValueError(f"{directory}: parameter {'/'.join(map(str, key))} {shape} does not fit {value.shape}")
    nnx.replace_by_pure_dict(params, traverse_util.unflatten_dict(fresh))
    nnx.update(model, params)
    return model


def build_model(model_config: AuMConfig, init: ml_collections.ConfigDict, seed: int) -> AudioMamba:
    """A fresh model, or one initialised from ``init.checkpoint`` (.pth or model directory)."""
    if not init.checkpoint:
        return checkpoints.init_model(model_config, seed)
    path = os.path.expanduser(init.checkpoint)
    logging.info("Initialising from %s", path)
    if os.path.isdir(path):
        return _init_from_model_dir(path, model_config, seed)
    state = convert.read_torch_checkpoint(path)
    layout = convert.SourceLayout(
        kind=init.kind or convert.detect_source_kind(state),
        cls_position=init.vim_cls_position,
        strides=tuple(init.source_strides) if init.source_strides else None,
        num_mel_bins=init.source_num_mel_bins,
    )
    return convert.init_from_source(state, model_config, layout, seed=seed)


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


# ----------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates.

    Returns:
      The report also written to ``workdir/report.json``: ``{"step", "best", "final",
      "test"}`` with the metrics of :func:`aum_jax.evaluate.evaluate`.
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    is_main = jax.process_index() == 0
    if is_main:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1))
    train_cfg = config.train

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
    finished = _read_json(workdir / REPORT_FILE)
    if finished is not None and finished.get("step", -1) >= num_steps:  # nothing to do: keep the results.
        return {**finished, ALREADY_TRAINED: True}
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
    train_iter = input_pipeline.make_train_iterator(config.data, source=source)

    # ---------------------------------------------------------------- model
    model_config = AuMConfig.from_dict(config.model.to_dict())
    model = build_model(model_config, config.init, train_cfg.seed)
    logging.info("AuM %s %s: %.3f M parameters", model_config.size_name, model_config.aum_type,
                 count_params(model) / 1e6)

    # ---------------------------------------------------------------- update
    schedule = learning_rate_schedule(config.optimizer, steps_per_epoch)
    optimizer = nnx.Optimizer(model, make_optimizer(config.optimizer, schedule), wrt=nnx.Param)
    nnx.update(model, sharding.replicate(nnx.state(model), mesh))
    nnx.update(optimizer, sharding.replicate(nnx.state(optimizer), mesh))
    model.train()

    # ---------------------------------------------------------------- checkpoint
    manager = train_state.make_manager(workdir, train_cfg.keep_checkpoints)
    step = train_state.restore_latest(manager, model, optimizer, train_iter)
    if step:
        console.line(f"Resuming from the checkpoint of step {step} ({manager.directory})")
    best = _read_json(workdir / BEST_FILE)
    model_preprocessing = preprocessing.for_training(config)  # stored beside the model.
    report: dict[str, Any] = {"best": best, "final": None, "test": None}

    def run_eval(split: str, eval_model: AudioMamba) -> dict[str, float]:
        result = evaluate.evaluate_split(eval_model, config.data, split, mesh, train_cfg.loss)
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
            checkpoints.save_model(model, workdir / MODEL_DIR, overwrite=True, preprocessing=model_preprocessing)
            if is_main:
                (workdir / BEST_FILE).write_text(evaluate.to_json(best))

    # ---------------------------------------------------------------- train loop
    inject = set(train_cfg.inject_nonfinite_steps)
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=num_steps, writer=writer, every_steps=train_cfg.log_every or None)
    bar = tqdm(total=num_steps, initial=step, desc="train", unit="step", disable=not is_main)
    losses: list[float] = []
    skipped = consecutive_bad = 0
    last_eval = None
    try:
        with _StopRequest() as stop:
            while step < num_steps:
                batch = next(train_iter)
                if step in inject:
                    batch["fbank"] = np.full_like(batch["fbank"], np.nan)
                loss, ok = train_step(model, optimizer, sharding.global_batch(batch, mesh), train_cfg.loss)
                step += 1
                loss, ok = float(loss), bool(ok)
                bar.update()
                report_progress(step)
                if ok:
                    consecutive_bad = 0
                    losses.append(loss)
                    bar.set_postfix(loss=f"{loss:.4f}")
                else:
                    skipped += 1
                    consecutive_bad += 1
                    logging.warning("step %d: non-finite loss %s, update skipped (%d in a row)",
                                    step, loss, consecutive_bad)
                    if consecutive_bad >= train_cfg.max_nonfinite_steps:
                        train_state.save(manager, step, model, optimizer, train_iter, force=True)
                        raise NonFiniteLossError(
                            f"{consecutive_bad} consecutive non-finite losses up to step {step}; the "
                            f"last good state is checkpointed in {manager.directory} (step {step})"
                        )
                if _every(step, train_cfg.log_every) or step == num_steps:
                    # The lr of the last applied update: skipped steps do not advance the schedule.
                    scalars = {"train/lr": float(schedule(max(int(optimizer.step[...]) - 1, 0))), "train/skipped_steps": skipped}
                    if losses:
                        scalars["train/loss"] = float(np.mean(losses))
                    writer.write_scalars(step, scalars)
                    console.line(f"step {step}/{num_steps}  loss {scalars.get('train/loss', float('nan')):.4f}  "
                                 f"lr {scalars['train/lr']:.2e}" + (f"  skipped {skipped}" if skipped else ""))
                    losses, skipped = [], 0
                # Evaluate before checkpointing: a run killed during the evaluation resumes
                # from the previous checkpoint and evaluates this step again.
                if config.eval.split and (_every(step, eval_every) or step == num_steps):
                    eval_and_keep_best(step)
                    last_eval = step
                if _every(step, train_cfg.checkpoint_every):
                    train_state.save(manager, step, model, optimizer, train_iter)
                if stop.any_process(step, train_cfg.stop_check_every):
                    train_state.save(manager, step, model, optimizer, train_iter, force=True)
                    raise TrainingInterrupted(step)
            train_state.save(manager, step, model, optimizer, train_iter, force=True)
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
        checkpoints.save_model(model, workdir / MODEL_DIR, overwrite=True, preprocessing=model_preprocessing)
    report["step"] = step
    report["best"] = best
    if config.eval.test_split and (workdir / MODEL_DIR).is_dir():
        best_model = checkpoints.load_model(workdir / MODEL_DIR)
        nnx.update(best_model, sharding.replicate(nnx.state(best_model), mesh))
        report["test"] = run_eval(config.eval.test_split, best_model)
        writer.write_scalars(step, {f"{config.eval.test_split}/{k}": v for k, v in report["test"].items()})
        logging.info("%s with the best model: %s", config.eval.test_split, report["test"])
    evaluate.write_report(workdir / REPORT_FILE, report)
    writer.close()
    return report
