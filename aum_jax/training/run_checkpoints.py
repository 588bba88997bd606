"""Training-run checkpoints: model, optimizer and input-iterator state, with orbax.

``workdir/checkpoints/<step>/`` holds three items: ``model`` (every model variable,
parameters and RNG counters alike), ``optimizer`` (its step and moments) and ``iter``
(the input position of each process, one JSON file per process). Restoring all three
puts a run back exactly where it was: same parameters, same next batch. The model
item alone is enough to evaluate a checkpoint.

A step that cannot be read (truncated files, an empty directory) is logged with its
path and the reason, moved aside to ``checkpoints/corrupt/<step>`` and the next older
step is tried; with none left the run starts from scratch and says so. A readable
checkpoint that does not fit the model (another config) is an error naming the keys.

Array checkpoints are written asynchronously; iterator state is captured when the
save is called. A checkpoint that cannot be written (a full disk) is
:class:`CheckpointWriteError`, naming the folder and the last intact checkpoint; the
earlier ones stay, and a restart resumes from the last of them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx, traverse_util
from jax.experimental import multihost_utils

from aum_jax.checkpoints import model_files
from aum_jax.core import logs
from aum_jax.core import workdir as workdir_lib
from aum_jax.core.errors import UserError
from aum_jax.models import AudioMamba, AuMConfig
from aum_jax.training import objectives

MODEL, OPTIMIZER, ITER = "model", "optimizer", "iter"


class CheckpointMismatchError(UserError, ValueError):
    """A readable checkpoint holds arrays that do not fit the model or optimizer."""


class CheckpointWriteError(UserError, OSError):
    """A checkpoint could not be written (a full disk, a file size limit, a lost mount)."""


def _write_error(manager: ocp.CheckpointManager, error: Exception) -> CheckpointWriteError:
    latest = manager.latest_step()
    kept = (f"the last intact checkpoint is step {latest} ({step_path(manager, latest)})" if latest is not None
            else "no checkpoint was written before")
    return CheckpointWriteError(f"cannot write a checkpoint in {manager.directory}: "
                                f"{model_files.write_error_reason(error)}; {kept}, and a restart resumes from it")


def make_manager(workdir: str | os.PathLike, keep: int) -> ocp.CheckpointManager:
    """A manager of ``workdir/checkpoints`` that keeps the last ``keep`` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), workdir_lib.CHECKPOINT_DIR),
        options=options,
        item_names=(MODEL, OPTIMIZER, ITER),
        item_handlers={
            MODEL: ocp.StandardCheckpointHandler(),
            OPTIMIZER: ocp.StandardCheckpointHandler(),
            ITER: grain.checkpoint.CheckpointHandler(),
        },
    )


def _pure(node: nnx.Module | nnx.Optimizer) -> dict[str, Any]:
    return nnx.to_pure_dict(nnx.state(node))


def save(
    manager: ocp.CheckpointManager,
    step: int,
    model: nnx.Module,
    optimizer: nnx.Optimizer,
    iterator: grain.DatasetIterator,
    *,
    force: bool = False,
) -> bool:
    """Saves the state after ``step`` training steps; returns whether a save started.

    Raises:
      CheckpointWriteError: this checkpoint, or the one still being written, cannot be written.
    """
    if manager.latest_step() == step:
        return False
    try:  # the save of an earlier step, written meanwhile, may fail here.
        saved = manager.save(
            step,
            args=ocp.args.Composite(**{
                MODEL: ocp.args.StandardSave(_pure(model)),
                OPTIMIZER: ocp.args.StandardSave(_pure(optimizer)),
                ITER: grain.checkpoint.CheckpointSave(iterator),
            }),
            force=force,
        )
    except Exception as e:  # noqa: BLE001 - orbax reports a failed write as ValueError, OSError, ...
        raise _write_error(manager, e) from e
    if saved:
        logging.info("Saving checkpoint of step %d to %s", step, manager.directory)
    return saved


def close(manager: ocp.CheckpointManager) -> None:
    """Waits for the checkpoint being written, then closes the manager.

    Raises:
      CheckpointWriteError: that checkpoint could not be written.
    """
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
        raise _write_error(manager, e) from e
    finally:
        manager.close()


def step_path(manager: ocp.CheckpointManager, step: int) -> Path:
    return Path(manager.directory) / str(step)


def _check_fits(metadata: Any, target: dict[str, Any], item: str, path: Path) -> None:
    """Raises CheckpointMismatchError naming every key whose presence or shape differs."""
    def flat(tree: Any) -> dict[str, Any]:
        return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}

    saved, wanted = flat(metadata.tree), flat(target)
    problems = [f"{k}: missing from the checkpoint" for k in wanted if k not in saved]
    problems += [f"{k}: in the checkpoint but not in the {item}" for k in saved if k not in wanted]
    problems += [f"{k}: checkpoint shape {tuple(saved[k].shape)}, {item} shape {tuple(v.shape)}"
                 for k, v in wanted.items() if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointMismatchError(
            f"{path / item} does not fit this config's {item} (was it written with another model "
            f"config?):\n  {shown}"
        )


def _all_processes_ok(ok: bool) -> bool:
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.process_allgather(np.array(ok)).all())


def move_aside(manager: ocp.CheckpointManager, step: int, into: str) -> Path:
    """Moves ``checkpoints/<step>`` to ``checkpoints/<into>/<step>`` (process 0) and forgets it."""
    source = step_path(manager, step)
    target = Path(manager.directory) / into / str(step)
    if jax.process_index() == 0:
        target.parent.mkdir(parents=True, exist_ok=True)
        suffix = 1
        while target.exists():
            target = target.with_name(f"{step}.{suffix}")
            suffix += 1
        shutil.move(source, target)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"aum_jax.move_aside.{into}.{step}")
    manager.reload()
    return target


def restore(
    manager: ocp.CheckpointManager,
    model: nnx.Module,
    optimizer: nnx.Optimizer | None,
    iterator: grain.DatasetIterator | None,
    *,
    only_step: int | None = None,
) -> int:
    """Loads the newest readable checkpoint (or that of ``only_step``, if readable) into the given objects in place.

    The restored arrays take the shardings the current ones have. With ``optimizer``
    or ``iterator`` None that item is not read (evaluation needs the model alone, and
    no training data). Unreadable steps are moved aside (see the module docstring).

    Returns:
      The step of the checkpoint, or 0 (nothing changed) when none could be read.

    Raises:
      CheckpointMismatchError: a readable checkpoint does not fit ``model`` or
        ``optimizer``.
    """
    steps = sorted((s for s in manager.all_steps() if only_step in (None, s)), reverse=True)
    initial_input = iterator.get_state() if iterator is not None else None
    nodes = {MODEL: model, OPTIMIZER: optimizer}
    states = {name: nnx.state(node) for name, node in nodes.items() if node is not None}
    targets = {name: jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
               for name, state in states.items()}
    for step in steps:
        path = step_path(manager, step)
        try:
            metadata = manager.item_metadata(step)
            for name, target in targets.items():
                if metadata.get(name) is None:
                    raise FileNotFoundError(f"item {name!r} is missing")
                _check_fits(metadata[name], target, name, path)
            items = {name: ocp.args.StandardRestore(target) for name, target in targets.items()}
            if iterator is not None:
                items[ITER] = grain.checkpoint.CheckpointRestore(iterator)
            restored = manager.restore(step, args=ocp.args.Composite(**items))
            error = None
        except CheckpointMismatchError:
            raise
        except Exception as e:  # noqa: BLE001 - any reader failure means this step is unreadable.
            error = e
        if not _all_processes_ok(error is None):
            reason = f"{type(error).__name__}: {error}" if error else "unreadable on another process"
            aside = move_aside(manager, step, workdir_lib.CORRUPT_DIR)
            logging.error("Cannot read the checkpoint of step %d at %s (%s); moved it to %s",
                          step, path, reason.splitlines()[0], aside)
            if iterator is not None:
                iterator.set_state(initial_input)
            continue
        for name, state in states.items():
            nnx.replace_by_pure_dict(state, restored[name])
            nnx.update(nodes[name], state)
        logs.line(f"Restored the checkpoint of step {step} from {manager.directory}")
        return step
    if steps and only_step is None:
        logging.warning("No readable checkpoint left in %s: starting from scratch", manager.directory)
    return 0


def restore_model(config: Any, workdir: str | os.PathLike, *, only_step: int | None = None) -> tuple[AudioMamba, int]:
    """A model of ``config.model`` (seed ``config.train.seed``) holding the model item of the newest readable
    checkpoint in ``workdir`` (or of ``only_step``), and that step; 0 when none could be read.

    The item is that of the module ``config.train.objective`` trains; the AudioMamba inside it is returned.
    """
    manager = make_manager(workdir, config.train.keep_checkpoints)
    objective = objectives.get(config.train.objective)
    trained = objective.init(AuMConfig.from_dict(config.model.to_dict()), config.train.seed)
    try:
        step = restore(manager, trained, None, None, only_step=only_step)  # the model item alone.
    finally:
        manager.close()
    return objective.backbone(trained), step
