"""Training and evaluation of AudioMamba: the original ``traintest.train``, data-parallel.

``train_and_evaluate(config, workdir)`` plans the run (mesh, data, step counts, balanced sampling's
weights) and reads the models it starts from (the online teacher; the pretrained source of a run
with no checkpoint to resume) before it writes anything, then runs one loop, in the sections of
its banners: input, model, update, checkpoint, train loop, eval.

- The workdir is locked for the run (:mod:`aum_jax.core.workdir`); a second trainer stops.
- A workdir whose ``report.json`` reached the configured steps is not trained again (nor
  locked, so a read-only one works): its report is returned, marked
  :data:`aum_jax.evaluation.report.ALREADY_TRAINED`.
  If its ``model/`` is gone, it is rebuilt from the checkpoint of the step it held (the
  best one), with a warning; with that checkpoint gone too, :class:`MissingModelError`.
- The model and optimizer come from, in this order: the newest readable checkpoint
  in ``workdir/checkpoints`` (same parameters, optimizer state and next batch), else
  the pretrained source ``config.init.checkpoint``, else a fresh initialisation.
- The module trained is the objective's (``config.train.objective``, :mod:`aum_jax.training.objectives`):
  the AudioMamba, or a module around it (masked patch modelling's heads); the AudioMamba is what is
  evaluated and saved. A run without ``config.eval.split`` saves its last model.
- A bad step (non-finite, or out of ``config.train.max_loss``/``max_grad_norm``) is
  skipped inside the jitted step; too many in a row stop the run
  (:mod:`aum_jax.training.divergence`). No model is evaluated before the first applied update,
  and a run that ends without one raises :class:`~aum_jax.training.divergence.NoUpdateError`
  rather than save or report an untrained model.
- SIGTERM or Ctrl-C checkpoint, then raise :class:`TrainingInterrupted`.
- The loss goes to the host only at log, checkpoint and evaluation steps.
- The test split and the extra test splits (``config.eval.extra_test_splits``) are evaluated once,
  with the best model; each one's confusion matrix comes from the same pass.

Outputs in ``workdir`` are listed in :mod:`aum_jax.core.workdir`; the best model lands in
``model/`` with its ``preprocessing.json``. ``report.json`` holds the metrics and the
run's accounting: skipped steps, skipped clips by reason and the step training was
restored from; TensorBoard gets the same counts, under ``train/*``, ``validation/*`` and
``test/*`` (and ``<split>/*`` of each extra test split).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import tempfile
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from tqdm import tqdm

from aum_jax.checkpoints import convert, model_files, pretrained
from aum_jax.core import logs, sharding, storage
from aum_jax.core import workdir as workdir_lib
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.pipeline import batching, input_pipeline, sampling
from aum_jax.data.records import AudioSource
from aum_jax.data.sources import labels, registry
from aum_jax.evaluation import evaluate
from aum_jax.evaluation import report as report_lib
from aum_jax.models import AudioMamba, AuMConfig, count_params
from aum_jax.training import (
    distill_setup,
    distillation,
    divergence,
    objectives,
    run_checkpoints,
    stop_request,
    update,
    workdir_lock,
)
from aum_jax.training.config_checks import ConfigError

if TYPE_CHECKING:
    from clu import metric_writers


class MissingModelError(workdir_lib.WorkdirError):
    """A finished workdir whose ``model/`` is gone, with no checkpoint of its step to rebuild it from."""


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped training; a checkpoint of ``step`` was saved.

    Attributes:
      step: the step of that checkpoint.
      exit_status: what the command exits with: 128 + the signal's number, as a shell reports a process
        that signal ended (130 for Ctrl-C, 143 for SIGTERM).
    """

    def __init__(self, step: int, signum: int):
        super().__init__(f"training interrupted after step {step} by {signal.Signals(signum).name}; checkpoint saved")
        self.step = step
        self.exit_status = 128 + signum


# ----------------------------------------------------------------------------------------
# Helpers of the loop
# ----------------------------------------------------------------------------------------


def _every(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def _log_window(writer: metric_writers.MetricWriter, step: int, num_steps: int, watch: divergence.Watch,
                optimizer: nnx.Optimizer, schedule: optax.Schedule, train_iter: batching.BatchIterator) -> None:
    """Writes the scalars of the steps since the last log, and a console line."""
    means, skipped = watch.take_window()
    skipped_total = int(optimizer.opt_state.total_notfinite[...])
    applied = _applied_updates(optimizer)  # skipped steps do not advance the schedule.
    scalars = {"train/lr": float(schedule(max(applied - 1, 0))), "train/skipped_steps": skipped,
               "train/skipped_steps_total": skipped_total, "input/skipped_clips": train_iter.num_skipped}
    scalars.update({f"input/skipped_clips_{k}": n for k, n in train_iter.skipped_by_kind_everywhere().items()})
    scalars.update({f"train/{k}": v for k, v in means.items()})
    writer.write_scalars(step, scalars)
    logs.line(f"step {step}/{num_steps}  loss {scalars.get('train/loss', float('nan')):.4f}  "
                 f"lr {scalars['train/lr']:.2e}" + (f"  skipped {skipped}" if skipped else ""))


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run will do, worked out before anything is written."""

    mesh: jax.sharding.Mesh
    source: AudioSource  # the training clips.
    steps_per_epoch: int
    num_steps: int
    eval_every: int
    distill: distill_setup.Setup | None  # the teacher side of a distilled run.
    weights: np.ndarray | None  # balanced sampling's weights of the training clips (sampling.train_weights).


def plan(config: ml_collections.ConfigDict) -> Plan:
    """The mesh, the training source, the step counts and the distillation of ``config``.

    Raises:
      ValueError: batch sizes the mesh does not divide, an unknown split, a bad source.
      ConfigError: a teacher that does not fit, or unlabelled clips an objective of labels cannot train on.
      SampleWeightsError: balanced sampling without weights that fit the training clips.
    """
    train_cfg = config.train
    mesh = sharding.make_mesh(config.mesh)
    global_batch_size = sharding.check_batch_size(config.data.batch_size, mesh, "data.batch_size")
    sharding.check_batch_size(config.data.eval_batch_size, mesh, "data.eval_batch_size")
    logging.info("Mesh %s over %d devices, %d processes", dict(mesh.shape), mesh.size, jax.process_count())
    source = registry.make_source(config.data, "train")
    distill = distill_setup.setup(config, source)
    if distill:
        source = distill.source
    elif objectives.get(train_cfg.objective).uses_labels:
        source = distill_setup.labelled_clips(config, source)
    weights = sampling.train_weights(config.data, source)  # checked now, used by the input.
    steps_per_epoch = train_cfg.steps_per_epoch
    if steps_per_epoch <= 0:
        steps_per_epoch = max(1, len(source) // global_batch_size)
    num_steps = train_cfg.num_steps if train_cfg.num_steps > 0 else train_cfg.num_epochs * steps_per_epoch
    eval_every = steps_per_epoch if train_cfg.eval_every < 0 else train_cfg.eval_every
    logging.info("%d training clips, global batch %d: %d steps per epoch, %d steps",
                 len(source), global_batch_size, steps_per_epoch, num_steps)
    return Plan(mesh, source, steps_per_epoch, num_steps, eval_every, distill, weights)


@dataclasses.dataclass(frozen=True)
class _Sources:
    """The models a run reads besides its own checkpoints, read before it writes anything: a damaged or
    misfitting one is refused with the workdir untouched."""

    teacher: distillation.Teacher | None  # the online teacher, frozen, replicated on the mesh.
    pretrained: AudioMamba | None  # config.init.checkpoint for a run that starts without a checkpoint.


def _has_checkpoints(workdir: Path) -> bool:
    """Whether ``workdir/checkpoints`` holds a step to resume from (readable or not)."""
    folder = workdir / workdir_lib.CHECKPOINT_DIR
    return folder.is_dir() and any(entry.name.isdigit() for entry in folder.iterdir())


def _pretrained(config: ml_collections.ConfigDict) -> AudioMamba:
    """The model of ``config.init.checkpoint`` for ``config.model``.

    Raises:
      ConfigError: a source that cannot be read or does not fit ``config.model`` (naming the key).
    """
    try:
        return pretrained.init_from_pretrained(config.init.checkpoint, AuMConfig.from_dict(config.model.to_dict()),
                                               config.init, seed=config.train.seed,
                                               class_names=labels.training_preprocessing(config).class_names)
    except (convert.CheckpointError, model_files.ModelDirectoryError) as e:
        raise ConfigError(f"config.init.checkpoint={config.init.checkpoint}: {e}") from e


def _read_sources(config: ml_collections.ConfigDict, workdir: Path, run: Plan) -> _Sources:
    """The teacher of ``run`` and, for a run with nothing to resume in ``workdir``, its pretrained source."""
    teacher = distill_setup.load_teacher(run.distill, run.mesh) if run.distill else None
    starts_fresh = bool(config.init.checkpoint) and not _has_checkpoints(workdir)
    return _Sources(teacher, _pretrained(config) if starts_fresh else None)


class _Results:
    """Evaluations during and after training: the best model (``model/``, ``best.json``), the
    final and test metrics, and the confusion matrix of the split the demo prints."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, mesh: jax.sharding.Mesh,
                 writer: metric_writers.MetricWriter, records: dict[str, Any]):
        self._config, self._workdir, self._mesh, self._writer = config, workdir, mesh, writer
        self._records = records  # written beside the model.
        self._preprocessing = _model_preprocessing(config)  # stored beside the model.
        self.best = storage.read_json(workdir / workdir_lib.BEST_FILE)
        self.final: dict[str, Any] | None = None
        self.last_step: int | None = None

    def _evaluate(self, model: AudioMamba, split: str, step: int) -> tuple[dict[str, float], evaluate.Outputs]:
        cfg = self._config
        result, outputs = evaluate.evaluate_split(model, cfg.data, split, self._mesh, cfg.train.loss,
                                                  cfg.eval.matmul_precision)  # an eval-mode view: the model trains on.
        self._writer.write_scalars(step, {f"{split}/{k}": v for k, v in result.items()})
        return result, outputs

    def save_model(self, model: AudioMamba) -> None:
        model_files.save_model(model, self._workdir / workdir_lib.MODEL_DIR, overwrite=True,
                               preprocessing=self._preprocessing, records=self._records)

    def _save_confusion(self, outputs: evaluate.Outputs, split: str) -> None:
        if self._config.eval.confusion_matrix:
            report_lib.save_confusion(outputs, self._preprocessing.class_names, self._workdir, split)

    def validate(self, step: int, model: AudioMamba) -> None:
        """Evaluates ``config.eval.split``; a better model by ``config.train.metric`` (higher, or lower for
        the loss: :data:`aum_jax.evaluation.evaluate.METRIC_DIRECTIONS`) than the best so far replaces it."""
        split, metric = self._config.eval.split, self._config.train.metric
        result, outputs = self._evaluate(model, split, step)
        logs.line(f"step {step} {split}: {report_lib.format_metrics(result)}")
        self.final, self.last_step = {"step": step, **result}, step
        if self.best is None or evaluate.is_better(metric, result[metric], self.best[metric]):
            self.best = {"step": step, **result}
            self.save_model(model)
            if jax.process_index() == 0:
                storage.write_text(self._workdir / workdir_lib.BEST_FILE, report_lib.to_json(self.best))
            if not self._config.eval.test_split:
                self._save_confusion(outputs, split)

    def test(self, step: int) -> dict[str, dict[str, float]]:
        """Evaluates ``config.eval.test_split``, then each of ``config.eval.extra_test_splits``, once, with the
        best model (read once): ``{split: metrics}``, empty without such a split or a model."""
        evaluation, model_dir = self._config.eval, self._workdir / workdir_lib.MODEL_DIR
        splits = [s for s in (evaluation.test_split, *evaluation.get("extra_test_splits", ())) if s]
        if not splits or not model_dir.is_dir():
            return {}
        model = model_files.load_model(model_dir)
        nnx.update(model, sharding.replicate(nnx.state(model), self._mesh))
        results = {}
        for split in splits:
            results[split], outputs = self._evaluate(model, split, step)
            logging.info("%s with the best model: %s", split, results[split])
            self._save_confusion(outputs, split)
        return results

    def haystack(self) -> list[dict[str, Any]] | None:
        """With ``config.eval.haystack_seconds``: the best model finds needles hidden in noise of those lengths
        (:mod:`aum_jax.inference.haystack`, read as the model reads a file: a stream, one pass or windows),
        stored as ``workdir/haystack.json``; process 0 alone."""
        cfg, model_dir = self._config.eval, self._workdir / workdir_lib.MODEL_DIR
        if not cfg.haystack_seconds or jax.process_index() != 0 or not model_dir.is_dir():
            return None
        from aum_jax.inference import haystack

        model, prep = model_files.load_model(model_dir), model_files.load_input_features(model_dir)
        needles, names = haystack.read_needles(cfg.haystack_clips)
        if prep.class_names and list(prep.class_names) != names:
            raise ValueError(f"config.eval.haystack_clips: the needles' classes {names} are not the model's "
                             f"{list(prep.class_names)}")
        mode = haystack.mode_for(model, prep)
        rows = []
        with tempfile.TemporaryDirectory(prefix="aum_haystack_") as folder:
            for seconds in cfg.haystack_seconds:
                placements = haystack.write_haystacks(folder, seconds, cfg.haystack_placements, needles,
                                                      cfg.haystack_seed)
                results = haystack.run(model, prep, placements, mode)
                rows.append({"seconds": float(seconds), "mode": mode, "placements": len(results),
                             **haystack.summary(results)})
                for placement in placements:
                    os.remove(placement["wav"])
        storage.write_text(self._workdir / workdir_lib.HAYSTACK_FILE, report_lib.to_json({"rows": rows}))
        return rows


def _model_preprocessing(config: ml_collections.ConfigDict) -> Preprocessing:
    """The preprocessing stored beside the run's model; without classes for an objective that reads no labels."""
    prep = labels.training_preprocessing(config)
    uses_labels = objectives.get(config.train.objective).uses_labels
    return prep if uses_labels else dataclasses.replace(prep, class_names=(), loss="")


def _restore_finished_model(config: ml_collections.ConfigDict, workdir: Path, report: dict[str, Any]) -> None:
    """Gives a finished ``workdir`` its ``model/`` back if it is gone: the backup a kill inside
    :func:`aum_jax.core.storage.replace_dir` left, else the model of the checkpoint of the step it held.

    Raises:
      MissingModelError: no checkpoint of that step can be read.
      WorkdirNotWritableError: the backup cannot be put back.
    """
    model_dir = workdir / workdir_lib.MODEL_DIR
    try:
        storage.recover_dir(model_dir)
    except OSError as e:
        raise workdir_lib.WorkdirNotWritableError(f"cannot put back the model directory {model_dir}: {e}") from e
    if model_dir.is_dir():
        return
    kind, step = ("best", report["best"]["step"]) if report.get("best") else ("final", report["step"])
    restored = 0
    if (workdir / workdir_lib.CHECKPOINT_DIR / str(step)).is_dir():
        model, restored = run_checkpoints.restore_model(config, workdir, only_step=step)
    if not restored:
        raise MissingModelError(f"{workdir / workdir_lib.REPORT_FILE} says training finished, but {model_dir}/ is "
                                f"missing and no checkpoint of its {kind} step {step} remains; train again in a "
                                "new --workdir")
    model_files.save_model(model, model_dir, preprocessing=_model_preprocessing(config))
    logging.warning("%s was missing: restored it from the checkpoint of its %s step %d", model_dir, kind, step)


# ----------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint) and evaluates.

    Returns:
      The report also written to ``workdir/report.json``: ``{"step", "best", "final",
      "test"}`` with the metrics of :func:`aum_jax.evaluation.evaluate.split_metrics`, ``"extra_tests"``
      (``{split: metrics}`` of ``config.eval.extra_test_splits``; absent without them), and
      ``"restored_from_step"``, ``"skipped_steps"``, ``"skipped_clips"`` (by reason), and ``"train"``: the
      means of the last logged window of steps (loss, gradient norm, the objective's metrics).

    Raises:
      WorkdirError (MissingModelError among them), DivergedWorkdirError, NonFiniteLossError,
      NonFiniteInputError, NoUpdateError, TrainingInterrupted, BadInputError, CheckpointWriteError;
      before anything is written: what :func:`plan` raises, and ConfigError for a teacher or pretrained
      source that cannot be loaded or does not fit.
    """
    workdir = Path(workdir).absolute()
    run = plan(config)
    finished = storage.read_json(workdir / workdir_lib.REPORT_FILE)
    if finished is not None and finished.get("step", -1) >= run.num_steps:  # nothing to do: keep the results.
        _restore_finished_model(config, workdir, finished)
        return {**finished, report_lib.ALREADY_TRAINED: True}
    sources = _read_sources(config, workdir, run)
    lock = workdir_lock.lock_for_run(workdir, config.train.lock_heartbeat_s, config.train.lock_stale_after_s)
    try:
        divergence.check_resume(config, workdir)
        if jax.process_index() == 0:
            storage.write_text(workdir / workdir_lib.CONFIG_FILE, config.to_json_best_effort(indent=1))
        return _train_and_evaluate(config, workdir, run, sources)
    finally:
        if lock is not None:
            lock.release()


def _applied_updates(optimizer: nnx.Optimizer) -> int:
    """The updates applied so far (a run's steps, resumed ones included, less the skipped ones)."""
    return int(optimizer.step[...]) - int(optimizer.opt_state.total_notfinite[...])


@dataclasses.dataclass(frozen=True)
class _Trainee:
    """What a run trains: the objective's module, the AudioMamba it evaluates and saves (the module
    itself, or inside it), the optimizer and its schedule, and the step's static settings."""

    trained: nnx.Module
    model: AudioMamba
    optimizer: nnx.Optimizer
    schedule: optax.Schedule
    settings: Hashable


def _build(config: ml_collections.ConfigDict, run: Plan) -> _Trainee:
    """The objective's module and its optimizer, built on the run's mesh (replicated, under jit)."""
    model_config = AuMConfig.from_dict(config.model.to_dict())
    replicated = sharding.replicated(run.mesh)
    objective = objectives.get(config.train.objective)
    trained = objective.init(model_config, config.train.seed, replicated)
    model = objective.backbone(trained)
    logging.info("AuM %s %s: %.3f M parameters", model_config.size_name, model_config.aum_type,
                 count_params(model) / 1e6)
    schedule = update.learning_rate_schedule(config.optimizer, run.steps_per_epoch)
    tx = update.make_optimizer(config.optimizer, schedule)
    optimizer = nnx.jit(lambda m: sharding.constrain(nnx.Optimizer(m, tx, wrt=nnx.Param), replicated))(trained)
    return _Trainee(trained, model, optimizer, schedule, objective.settings(config, model_config))


def _resume(config: ml_collections.ConfigDict, manager: ocp.CheckpointManager, trainee: _Trainee,
            train_iter: batching.BatchIterator, writer: metric_writers.MetricWriter, run: Plan,
            sources: _Sources) -> tuple[int, int]:
    """Restores the newest checkpoint of ``manager``, else starts from the pretrained source; -> (step, restored step)."""
    step = restored_from = run_checkpoints.restore(manager, trainee.trained, trainee.optimizer, train_iter)
    if restored_from:
        writer.write_scalars(step, {"train/restored_from_step": restored_from})
    elif config.init.checkpoint:  # a new run starts from a pretrained source (read already, unless none was readable).
        source = sources.pretrained or _pretrained(config)
        nnx.update(trainee.model, sharding.replicate(nnx.state(source, nnx.Param), run.mesh))
    trainee.trained.train()
    return step, restored_from


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: Path, run: Plan,
                        sources: _Sources) -> dict[str, Any]:
    """The run itself, in the locked ``workdir``: see :func:`train_and_evaluate`."""
    train_cfg, mesh, is_main = config.train, run.mesh, jax.process_index() == 0
    logs.import_tensorflow()  # clu's writers load TensorFlow: only a run that trains pays for it.
    from clu import metric_writers, periodic_actions

    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
    train_iter = input_pipeline.make_train_iterator(
        config.data, source=run.source, teacher_preprocessing=run.distill.teacher_preprocessing if run.distill else None,
        weights=run.weights)
    trainee = _build(config, run)
    trained, model, optimizer = trainee.trained, trainee.model, trainee.optimizer
    manager = run_checkpoints.make_manager(workdir, train_cfg.keep_checkpoints)
    step, restored_from = _resume(config, manager, trainee, train_iter, writer, run, sources)
    distilled = {distill_setup.RECORD_FILE: run.distill.record} if run.distill else {}
    results = _Results(config, workdir, mesh, writer, distilled)
    watch = divergence.Watch(config, workdir, manager)

    report_progress = periodic_actions.ReportProgress(
        num_train_steps=run.num_steps, writer=writer, every_steps=train_cfg.log_every or None)
    bar = tqdm(total=run.num_steps, initial=step, desc="train", unit="step", disable=not is_main)
    pending: list[dict[str, jax.Array]] = []  # on device: the steps since the last host sync.
    try:
        with stop_request.StopRequest() as stop:
            while step < run.num_steps:
                batch = sharding.global_batch(next(train_iter), mesh)
                with jax.set_mesh(mesh), jax.default_matmul_precision(train_cfg.matmul_precision):
                    pending.append(update.train_step(trained, optimizer, batch, train_cfg.objective, trainee.settings,
                                                     train_cfg.max_loss, train_cfg.max_grad_norm, sources.teacher))
                step += 1
                bar.update()
                report_progress(step)
                log_now = _every(step, train_cfg.log_every) or step == run.num_steps
                eval_now = bool(config.eval.split) and (_every(step, run.eval_every) or step == run.num_steps)
                checkpoint_now = _every(step, train_cfg.checkpoint_every)
                stop_now = stop.any_process(step, train_cfg.stop_check_every)
                if not (log_now or eval_now or checkpoint_now or stop_now):
                    continue

                # -------------------------------------------- host sync
                watch.observe(step - len(pending) + 1, jax.device_get(pending))
                pending.clear()
                if watch.last_loss is not None:
                    bar.set_postfix(loss=f"{watch.last_loss:.4f}")
                if watch.should_stop(step):
                    watch.stop(step)
                if log_now:
                    _log_window(writer, step, run.num_steps, watch, optimizer, trainee.schedule, train_iter)
                # Evaluate before checkpointing: a run killed during the evaluation resumes
                # from the previous checkpoint and evaluates this step again.
                if eval_now and _applied_updates(optimizer):
                    results.validate(step, model)
                elif eval_now:  # an untrained model is never evaluated, nor saved, as a result.
                    logging.warning("step %d: no update has been applied yet; not evaluated", step)
                if checkpoint_now and watch.may_checkpoint:  # never checkpoint inside a bad streak.
                    run_checkpoints.save(manager, step, trained, optimizer, train_iter)
                if stop_now:
                    run_checkpoints.save(manager, step, trained, optimizer, train_iter, force=True)
                    raise TrainingInterrupted(step, stop.signum)
            if watch.may_checkpoint:
                run_checkpoints.save(manager, step, trained, optimizer, train_iter, force=True)
    finally:
        bar.close()
        run_checkpoints.close(manager)
        train_iter.close()
        writer.flush()

    if not _applied_updates(optimizer):
        watch.no_update(step)
    report = _finish(config, workdir, results, model, step, restored_from, optimizer, train_iter, watch,
                     {"distilled": run.distill.record} if run.distill else {})
    writer.close()
    return report


def _finish(config: ml_collections.ConfigDict, workdir: Path, results: _Results, model: AudioMamba, step: int,
            restored_from: int, optimizer: nnx.Optimizer, train_iter: batching.BatchIterator,
            watch: divergence.Watch, extra: dict[str, Any]) -> dict[str, Any]:
    """After the last step: the model evaluated if it was not (resumed at the end), or saved for a run
    without an evaluation split; the test splits; the run's report (with ``extra``), written to ``workdir``."""
    if config.eval.split and results.last_step is None:
        results.validate(step, model)
    if not config.eval.split:
        results.save_model(model)
    tests = results.test(step)
    test = tests.pop(config.eval.test_split, None)  # the rest: config.eval.extra_test_splits.
    report = {"step": step, "best": results.best, "final": results.final, "test": test,
              **({"extra_tests": tests} if tests else {}), "haystack": results.haystack(),
              "restored_from_step": restored_from or None,
              "skipped_steps": int(optimizer.opt_state.total_notfinite[...]),
              "skipped_clips": {"total": train_iter.num_skipped, **train_iter.skipped_by_kind_everywhere()},
              "train": watch.last_means, **extra}
    report_lib.write_report(workdir / workdir_lib.REPORT_FILE, report)
    return report
