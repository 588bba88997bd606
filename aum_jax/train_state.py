"""Training-run checkpoints: model, optimizer and input-iterator state, with orbax.

``workdir/checkpoints/<step>/`` holds ``state`` (every model variable, parameters and
RNG counters alike, plus the optimizer's step and moments) and ``iter`` (the grain
iterator position of each process, one JSON file per process). Restoring both puts a
run back exactly where it was: same parameters, same next batch.

Array checkpoints are written asynchronously; iterator state is captured when the
save is called.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

CHECKPOINT_DIR = "checkpoints"


def make_manager(workdir: str | os.PathLike, keep: int) -> ocp.CheckpointManager:
    """A manager of ``workdir/checkpoints`` that keeps the last ``keep`` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
        options=options,
        item_names=("state", "iter"),
        item_handlers={"state": ocp.StandardCheckpointHandler(), "iter": grain.checkpoint.CheckpointHandler()},
    )


def _pure_state(model: nnx.Module, optimizer: nnx.Optimizer) -> dict[str, Any]:
    return {"model": nnx.to_pure_dict(nnx.state(model)), "optimizer": nnx.to_pure_dict(nnx.state(optimizer))}


def save(
    manager: ocp.CheckpointManager,
    step: int,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    iterator: grain.DatasetIterator,
    *,
    force: bool = False,
) -> bool:
    """Saves the state after ``step`` training steps; returns whether a save started."""
    if manager.latest_step() == step:
        return False
    saved = manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_pure_state(model, optimizer)),
            iter=grain.checkpoint.CheckpointSave(iterator),
        ),
        force=force,
    )
    if saved:
        logging.info("Saving checkpoint of step %d to %s", step, manager.directory)
    return saved


def restore_latest(
    manager: ocp.CheckpointManager,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    iterator: grain.DatasetIterator | None,
) -> int:
    """Loads the newest checkpoint into ``model``, ``optimizer`` and ``iterator`` in place.

    The restored arrays take the shardings the current ones have. With ``iterator`` None
    (evaluation) the input position is not read, so no training data is needed.

    Returns:
      The step of the checkpoint, or 0 (nothing changed) when there is none.
    """
    step = manager.latest_step()
    if step is None:
        return 0
    model_state, optimizer_state = nnx.state(model), nnx.state(optimizer)
    target = jax.tree.map(
        ocp.utils.to_shape_dtype_struct,
        {"model": nnx.to_pure_dict(model_state), "optimizer": nnx.to_pure_dict(optimizer_state)},
    )
    items = {"state": ocp.args.StandardRestore(target)}
    if iterator is not None:
        items["iter"] = grain.checkpoint.CheckpointRestore(iterator)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    nnx.replace_by_pure_dict(model_state, restored["state"]["model"])
    nnx.replace_by_pure_dict(optimizer_state, restored["state"]["optimizer"])
    nnx.update(model, model_state)
    nnx.update(optimizer, optimizer_state)
    logging.info("Restored the checkpoint of step %d from %s", step, manager.directory)
    return step
