"""Divergence of a training run: bad steps in a row, the stop, and the refusal of a blind restart.

A step whose loss or gradients are not finite, whose loss exceeds ``config.train.max_loss``
or whose global gradient norm exceeds ``config.train.max_grad_norm`` is skipped inside the
jitted step (``optax.apply_if_finite``). :class:`Watch` reads the steps' results at each
host sync: after ``config.train.max_nonfinite_steps`` bad steps in a row the run stops.

- When the batches of those steps were finite, the run has diverged: it keeps only the
  checkpoints from before the divergence began, writes ``diverged.json`` and raises
  :class:`NonFiniteLossError`, naming the settings to change. :func:`check_resume` makes a
  restart with the same settings refuse (:class:`DivergedWorkdirError`) and lets one with
  changed settings go on.
- When one of them held NaN or Inf in an input of the loss (the step's ``nonfinite_inputs``:
  :data:`aum_jax.training.update.INPUTS`), no setting is at fault: :class:`NonFiniteInputError`
  names the inputs, and neither checkpoints nor ``diverged.json`` change.

A run that ends without one applied update (every step skipped, before the streak reached the limit)
raises :class:`NoUpdateError` (:meth:`Watch.no_update`) instead of saving an untrained model.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from aum_jax.core import storage
from aum_jax.core import workdir as workdir_lib
from aum_jax.core.errors import UserError
from aum_jax.training import run_checkpoints, update


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: too many consecutive steps were non-finite or out of bounds."""


class DivergedWorkdirError(UserError, RuntimeError):
    """The workdir's run stopped on divergence and the settings are unchanged."""


class NonFiniteInputError(UserError, FloatingPointError):
    """Training stopped on steps whose batches held NaN or Inf in an input of the loss."""


class NoUpdateError(UserError, FloatingPointError):
    """A run ended without one applied update: every step was skipped."""


def knobs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The settings whose change lets a diverged run go on."""
    values = {f"optimizer.{k}": v for k, v in config.optimizer.to_dict().items()}
    for key in ("max_loss", "max_grad_norm", "max_nonfinite_steps"):
        values[f"train.{key}"] = config.train[key]
    values["data.seed"] = config.data.seed
    values["data.batch_size"] = config.data.batch_size
    return json.loads(json.dumps(values))  # tuples as lists, as read back from JSON.


def check_resume(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuses to resume a diverged run with unchanged settings; accepts changed ones."""
    path = workdir / workdir_lib.DIVERGED_FILE
    record = storage.read_json(path)
    if record is None:
        return
    changed = {k: (record["knobs"].get(k), v) for k, v in knobs(config).items() if record["knobs"].get(k) != v}
    if not changed:
        raise DivergedWorkdirError(
            f"{workdir} stopped on divergence at step {record['stopped_at_step']} ({record['what']}); "
            f"resumed with the same settings it would diverge again from the kept checkpoint "
            f"(step {record['kept_step']}). Lower --config.optimizer.lr (now {config.optimizer.lr:g}) or "
            f"change the schedule, change --config.data.seed, or, if the bounds fired on a healthy run, raise "
            f"--config.train.max_loss (now {config.train.max_loss:g}) / --config.train.max_grad_norm "
            f"(now {config.train.max_grad_norm:g}); details in {path}"
        )
    logging.warning("Resuming %s after its divergence at step %d, with changed settings: %s", workdir,
                    record["stopped_at_step"], ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    if jax.process_index() == 0:
        path.rename(workdir / f"diverged_at_{record['stopped_at_step']}.json")


class Watch:
    """Reads the steps' results for divergence; keeps the window of good steps for the logs.

    Args:
      config: the run's config (``train.max_nonfinite_steps``, the bounds, the knobs).
      workdir: where ``diverged.json`` goes.
      manager: the run's checkpoints, of which those from the divergence on are moved aside.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, manager: ocp.CheckpointManager):
        self._config, self._workdir, self._manager = config, workdir, manager
        self._streak_from: int | None = None  # the first step of the current run of bad steps.
        self._streak_inputs: set[str] = set()  # the inputs that were not finite in that run.
        self._bad_inputs: set[str] = set()  # ... in any bad step of this run.
        self._window: dict[str, list[float]] = collections.defaultdict(list)
        self._skipped = 0
        self.last_means: dict[str, float] = {}  # of the last window taken with good steps.

    def observe(self, first_step: int, results: Sequence[dict[str, Any]]) -> None:
        """Takes the host values ``{"loss", "grad_norm", "ok", "nonfinite_inputs", ...}`` (the objective's
        metrics besides) of steps ``first_step, first_step + 1, ...``."""
        for step, result in enumerate(results, first_step):
            result = dict(result)
            bad_inputs = update.nonfinite_inputs(result.pop("nonfinite_inputs"))
            if result["ok"]:
                self._streak_from = None
                self._streak_inputs = set()
                for key, value in result.items():
                    if key != "ok":
                        self._window[key].append(float(value))
            else:
                self._skipped += 1
                self._streak_from = step if self._streak_from is None else self._streak_from
                self._streak_inputs |= bad_inputs
                self._bad_inputs |= bad_inputs
                logging.warning("step %d: loss %s, gradient norm %s; update skipped%s", step, result["loss"],
                                result["grad_norm"],
                                f" (its batch held NaN or Inf in {_inputs_text(bad_inputs)})" if bad_inputs else "")

    @property
    def last_loss(self) -> float | None:
        """The loss of the latest good step of the window, if any."""
        return self._window["loss"][-1] if self._window["loss"] else None

    @property
    def may_checkpoint(self) -> bool:
        """False inside a run of bad steps: a checkpoint is never taken there."""
        return self._streak_from is None

    def bad_in_a_row(self, step: int) -> int:
        """How many steps up to ``step`` (the latest observed) were bad in a row."""
        return 0 if self._streak_from is None else step - self._streak_from + 1

    def should_stop(self, step: int) -> bool:
        return self.bad_in_a_row(step) >= self._config.train.max_nonfinite_steps

    def take_window(self) -> tuple[dict[str, float], int]:
        """The mean loss, gradient norm and metrics of the good steps since the last call, and the bad ones' count."""
        means = {k: float(np.mean(v)) for k, v in self._window.items() if v}
        self.last_means = means or self.last_means
        skipped = self._skipped
        self._window, self._skipped = collections.defaultdict(list), 0
        return means, skipped

    def stop(self, step: int) -> NoReturn:
        """Raises for the bad steps in a row up to ``step``: :class:`NonFiniteInputError` if one of their batches held
        a non-finite input; else, the run diverged, keeps only checkpoints from before the divergence, writes
        ``diverged.json`` and raises :class:`NonFiniteLossError`.

        The parameters of checkpoint ``k`` give the loss of step ``k + 1``; the first bad step
        ``s`` was computed from checkpoint ``s - 1``, so checkpoints from ``s - 1`` on are moved
        aside to ``checkpoints/diverged/``.
        """
        first_bad, train = self._streak_from, self._config.train
        if self._streak_inputs:
            inputs = self._streak_inputs
            raise NonFiniteInputError(
                f"training stopped: {self.bad_in_a_row(step)} steps in a row from step {first_bad} were skipped, and "
                f"their batches held NaN or Inf in {_inputs_text(inputs)}: {_fix_inputs_text(inputs)}; no setting of "
                "the optimizer is at fault, and the checkpoints are kept")
        self._manager.wait_until_finished()
        for k in self._manager.all_steps():
            if k >= first_bad - 1:
                run_checkpoints.move_aside(self._manager, k, "diverged")
        kept = self._manager.latest_step()
        what = (f"{self.bad_in_a_row(step)} steps in a row from step {first_bad} had a non-finite loss or gradient, "
                f"a loss above train.max_loss={train.max_loss:g} or a gradient norm above "
                f"train.max_grad_norm={train.max_grad_norm:g}")
        path = self._workdir / workdir_lib.DIVERGED_FILE
        if jax.process_index() == 0:
            record = {"stopped_at_step": step, "first_bad_step": first_bad, "what": what, "kept_step": kept,
                      "knobs": knobs(self._config)}
            storage.write_text(path, json.dumps(record, indent=1))
        raise NonFiniteLossError(
            f"training diverged: {what}; stopped at step {step}. "
            + (f"Kept the checkpoint of step {kept}, from before the divergence. " if kept
               else "No checkpoint from before the divergence exists. ")
            + f"Change the settings before restarting (see {path})."
        )

    def no_update(self, step: int) -> NoReturn:
        """Raises :class:`NoUpdateError` for a run that reached ``step`` without one applied update."""
        if self._bad_inputs:
            why = (f"their batches held NaN or Inf in {_inputs_text(self._bad_inputs)}: "
                   f"{_fix_inputs_text(self._bad_inputs)}")
        else:
            train = self._config.train
            why = (f"their losses or gradients were not finite or above train.max_loss={train.max_loss:g} / "
                   f"train.max_grad_norm={train.max_grad_norm:g}: raise those bounds if they fired on healthy steps, "
                   f"else lower --config.optimizer.lr (now {self._config.optimizer.lr:g})")
        raise NoUpdateError(f"training reached step {step} without applying one update: every step was skipped, as "
                            f"{why}; no model is saved")


def _inputs_text(names: set[str]) -> str:
    """The inputs ``names`` (keys of :data:`aum_jax.training.update.INPUTS`) in words."""
    return " and ".join(update.INPUTS[name] for name in update.INPUTS if name in names)


def _fix_inputs_text(names: set[str]) -> str:
    """Where to look for the non-finite inputs ``names``."""
    if names & {"teacher", "teacher_fbank"}:
        return "check the teacher (config.distill.teacher, or the stored logits of config.distill.logits)"
    return "check the training clips and config.data (its mean and std among them)"
