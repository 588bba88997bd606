"""Steps that cannot train: the step reports which inputs of its loss were not finite, a stop on such
steps blames the inputs (not the settings) and leaves the checkpoints, and a run that applied no update
saves no model and reports nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aum_jax.core import workdir as workdir_lib
from aum_jax.training import divergence, run_checkpoints, train, update
from tests.helpers import toy_config, write_toy_dataset


def _results(nonfinite: tuple[str, ...] = (), ok: bool = False) -> dict:
    """One step's host values as the jitted step returns them, its inputs ``nonfinite`` not finite."""
    bits = sum(1 << list(update.INPUTS).index(name) for name in nonfinite)
    return {"loss": 0.5 if ok else float("nan"), "grad_norm": 1.0 if ok else float("nan"), "ok": ok,
            "nonfinite_inputs": np.int32(bits)}


def test_a_stop_blames_the_settings_only_when_the_inputs_were_finite(tmp_path: Path) -> None:
    config = toy_config({"train": "", "eval": "", "label_csv": ""}, max_nonfinite_steps=3)
    for bad, words in (("teacher", "the teacher's targets"), ("fbank", "the features")):
        workdir = tmp_path / bad
        watch = divergence.Watch(config, workdir, manager=None)  # the checkpoints are not touched.
        watch.observe(1, [_results(ok=True), _results(), _results((bad,)), _results()])
        assert watch.should_stop(4)
        with pytest.raises(divergence.NonFiniteInputError) as raised:
            watch.stop(4)
        message = str(raised.value)
        assert f"3 steps in a row from step 2 were skipped, and their batches held NaN or Inf in {words}" in message
        assert "optimizer" in message and "--config.optimizer.lr" not in message
        assert not workdir.exists()  # no diverged.json: a restart after fixing the data is not refused.

    manager = run_checkpoints.make_manager(tmp_path / "finite", 3)
    watch = divergence.Watch(config, tmp_path / "finite", manager)
    watch.observe(1, [_results() for _ in range(3)])
    with pytest.raises(divergence.NonFiniteLossError, match="training diverged: .* Change the settings"):
        watch.stop(3)
    assert (tmp_path / "finite" / workdir_lib.DIVERGED_FILE).is_file()
    manager.close()


def test_a_run_that_applied_no_update_saves_no_model_and_reports_nothing(tmp_path: Path) -> None:
    toy = write_toy_dataset(tmp_path / "toy", clips_per_class=4)
    config = toy_config(toy, num_steps=3, eval_every=1, checkpoint_every=1, max_loss=1e-9)  # every step out of bounds.
    workdir = tmp_path / "work"
    with pytest.raises(divergence.NoUpdateError, match="training reached step 3 without applying one update: every "
                                                       "step was skipped, as their losses .* above "
                                                       r"train.max_loss=1e-09.*; no model is saved"):
        train.train_and_evaluate(config, workdir)
    for name in (workdir_lib.MODEL_DIR, workdir_lib.BEST_FILE, workdir_lib.REPORT_FILE):
        assert not (workdir / name).exists(), name
    assert run_checkpoints.make_manager(workdir, 3).all_steps() == []  # never one inside the bad steps.
