"""Divergence of a training run: bad steps in a row, the stop, and the refusal of a blind restart.

A step whose loss or gradients are not finite, whose loss exceeds ``config.train.max_loss``
or whose global gradient norm exceeds ``config.train.max_grad_norm`` is skipped inside the
jitted step (``optax.apply_if_finite``). :class:`Watch` reads the steps' results at each
host sync: after ``config.train.max_nonfinite_steps`` bad steps in a row the run has
diverged; it keeps only the checkpoints from before the divergence began, writes
``diverged.json`` and raises :class:`NonFiniteLossError`. :func:`check_resume` makes a
restart with the same settings refuse (:class:`DivergedWorkdirError`), naming the knobs
to change, and lets one with changed settings go on.
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
from aum_jax.training import run_checkpoints


class NonFiniteLossError(UserError, FloatingPointError):
    """Training diverged: too many consecutive steps were non-finite or out of bounds."""


class DivergedWorkdirError(UserError, RuntimeError):
    """The workdir's run stopped on divergence and the settings are unchanged."""


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
        self._window: dict[str, list[float]] = collections.defaultdict(list)
        self._skipped = 0
        self.last_means: dict[str, float] = {}  # of the last window taken with good steps.

    def observe(self, first_step: int, results: Sequence[dict[str, Any]]) -> None:
        """Takes the host values ``{"loss", "grad_norm", "ok", ...}`` (the objective's metrics besides) of steps
        ``first_step, first_step + 1, ...``."""
        for step, result in enumerate(results, first_step):
            if result["ok"]:
                self._streak_from = None
                for key, value in result.items():
                    if key != "ok":
                        self._window[key].append(float(value))
            else:
                self._skipped += 1
                self._streak_from = step if self._streak_from is None else self._streak_from
                logging.warning("step %d: loss %s, gradient norm %s; update skipped", step, result["loss"],
                                result["grad_norm"])

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
        """Keeps only checkpoints from before the divergence, writes ``diverged.json`` and raises.

        The parameters of checkpoint ``k`` give the loss of step ``k + 1``; the first bad step
        ``s`` was computed from checkpoint ``s - 1``, so checkpoints from ``s - 1`` on are moved
        aside to ``checkpoints/diverged/``.
        """
        first_bad, train = self._streak_from, self._config.train
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
