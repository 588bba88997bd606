"""Batches of clips in this process, and the accounting of clips that fail to load.

Clips are decoded and augmented one by one (in ``num_workers`` grain processes, or in
this one) and batched here, so the batches depend on the seed alone, not on the worker
or read-thread counts, and the iterator state (clips consumed) resumes with any of them.
Workers exit when their parent dies, SIGKILL included.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from aum_jax.core.errors import UserError
from aum_jax.data.features import audio
from aum_jax.data.pipeline.stages.base import Element, Failure


class BadInputError(UserError, RuntimeError):
    """More clips failed to load than ``config.data.max_bad_fraction`` allows.

    The message names the first bad clip and why it failed; ``details`` lists up to 20 of them (``-v``).
    """

    def __init__(self, bad: dict[str, str], limit: int, num_records: int):
        messages = list(bad.values())
        others = f"; and {len(messages) - 1} more (run with -v for all)" if len(messages) > 1 else ""
        super().__init__(
            f"{len(bad)} of {num_records} clips could not be loaded (at most {limit} allowed by "
            f"config.data.max_bad_fraction): {messages[0]}{others}"
        )
        self.details = "\n".join(f"  {m}" for m in messages[:20]) + (
            f"\n  ... and {len(messages) - 20} more" if len(messages) > 20 else "")
        self.bad = dict(bad)
        self._args = (dict(bad), limit, num_records)

    def __reduce__(self):
        # Picklable, so an error raised in a worker process reaches the main process.
        return (type(self), self._args)


class _ExitWithParent:
    """grain ``worker_init_fn``: each worker ends itself once the trainer is gone.

    grain's workers are daemon processes, which die with a parent that exits normally
    but are orphaned when it is killed (SIGKILL, OOM killer). A watcher thread in every
    worker polls its parent PID and exits when the parent has changed; the
    multiprocessing resource tracker then sees its last pipe close and exits too.
    (A Linux parent-death signal would fire when grain's short-lived starter thread
    ends, not the trainer.)
    """

    def __init__(self, parent_pid: int, poll_s: float):
        self._parent_pid = parent_pid
        self._poll_s = poll_s

    def __call__(self, worker_index: int, worker_count: int) -> None:
        del worker_index, worker_count
        threading.Thread(target=self._watch, name="exit-with-parent", daemon=True).start()

    def _watch(self) -> None:
        while os.getppid() == self._parent_pid:
            time.sleep(self._poll_s)
        os._exit(1)


class BatchIterator(grain.DatasetIterator):
    """Batches the clips of one process, counting, logging and limiting bad inputs.

    Clips are decoded and augmented by grain (``num_workers`` processes, or this one)
    one by one; they are batched here, in this process, so every batch holds the same
    clips whatever the worker and thread counts. Its state is the number of clips
    consumed, so a run resumes on the same clip with any number of workers.

    Training drops clips that failed to load; evaluation keeps them as zero rows with
    ``mask`` False. Once more distinct clips than ``limit`` have failed,
    :class:`BadInputError` is raised naming them.

    Attributes:
      bad_inputs: ``{key: message}`` of every distinct clip that failed to load.
      num_skipped: how many times a clip was skipped (a bad clip counts once per
        epoch it is drawn in).
      skipped_by_kind: ``num_skipped`` split by kind (``audio.BAD_INPUT_KINDS``).
    """

    def __init__(
        self,
        clips: grain.MapDataset,
        config: ml_collections.ConfigDict,
        batch_size: int,
        *,
        train: bool,
        limit: int,
        num_records: int,
    ):
        super().__init__()
        self._clips = clips
        self._read_options = grain.ReadOptions(
            num_threads=config.read_threads, prefetch_buffer_size=config.prefetch_buffer_size
        )
        self._num_workers = config.num_workers
        self._worker_poll_s = config.worker_parent_poll_s
        self._batch_size = batch_size
        self._train = train
        self._limit = limit
        self._num_records = num_records
        self._elements: grain.DatasetIterator | None = None
        self._position = 0
        self.bad_inputs: dict[str, str] = {}
        self.num_skipped = 0
        self.skipped_by_kind: dict[str, int] = {}

    def _open(self) -> grain.DatasetIterator:
        clips = self._clips[self._position:] if self._position else self._clips
        ds = clips.to_iter_dataset(self._read_options)
        if self._num_workers > 0:
            ds = ds.mp_prefetch(
                # a batch of clips buffered per worker between the processes.
                grain.MultiprocessingOptions(num_workers=self._num_workers,
                                             per_worker_buffer_size=self._batch_size),
                worker_init_fn=_ExitWithParent(os.getpid(), self._worker_poll_s),
            )
        return iter(ds)

    def _count(self, failure: Failure) -> None:
        key, kind, message = failure
        self.num_skipped += 1
        self.skipped_by_kind[kind] = self.skipped_by_kind.get(kind, 0) + 1
        if key not in self.bad_inputs:
            logging.warning("skipping a clip that cannot be loaded: %s", message)
            self.bad_inputs[key] = message
            if len(self.bad_inputs) > self._limit:
                raise BadInputError(self.bad_inputs, self._limit, self._num_records)

    def __next__(self) -> Element:
        if self._elements is None:
            self._elements = self._open()
        rows: list[Element] = []
        while len(rows) < self._batch_size:
            element = next(self._elements)  # StopIteration ends a finite pass; a partial batch is dropped.
            self._position += 1
            failure = element.pop("failure", None)
            if failure is not None:
                self._count(failure)
                if self._train:
                    continue
            rows.append(element)
        return {k: np.stack([row[k] for row in rows]) for k in rows[0]}

    def skipped_by_kind_everywhere(self) -> dict[str, int]:
        """:attr:`skipped_by_kind` summed over the processes (every process calls it), kinds with none left out."""
        counts = np.array([self.skipped_by_kind.get(k, 0) for k in audio.BAD_INPUT_KINDS], np.int64)
        if jax.process_count() > 1:
            counts = multihost_utils.process_allgather(counts).sum(axis=0)
        return {k: int(n) for k, n in zip(audio.BAD_INPUT_KINDS, counts, strict=True) if n}

    def get_state(self) -> dict[str, Any]:
        return {
            "position": self._position,
            "bad_inputs": dict(self.bad_inputs),
            "num_skipped": self.num_skipped,
            "skipped_by_kind": dict(self.skipped_by_kind),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.close()
        self._position = int(state["position"])
        self.bad_inputs = dict(state["bad_inputs"])
        self.num_skipped = int(state["num_skipped"])
        self.skipped_by_kind = {k: int(v) for k, v in state["skipped_by_kind"].items()}

    def close(self) -> None:
        """Stops the worker processes, if any; the next batch starts them again."""
        if self._elements is not None:
            self._elements.close()
            self._elements = None
