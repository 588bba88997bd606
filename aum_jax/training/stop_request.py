"""SIGTERM and Ctrl-C during training: a flag the loop checks between steps, the same on every process."""

from __future__ import annotations

import signal
import threading
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils


class StopRequest:
    """Turns SIGTERM and the first Ctrl-C into a flag checked between steps.

    Attributes:
      requested: a stop was asked for.
      signum: the signal that asked for it (the first one); SIGTERM where another process received it.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signum = signal.SIGTERM
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        del frame
        logging.warning("Received %s; stopping after the current step", signal.Signals(signum).name)
        if not self.requested:
            self.signum = signal.Signals(signum)
        self.requested = True
        if signum == signal.SIGINT:  # a second Ctrl-C interrupts at once.
            signal.signal(signal.SIGINT, self._previous.get(signal.SIGINT, signal.default_int_handler))

    def __enter__(self) -> StopRequest:
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
        if interval <= 0 or step % interval:
            return False
        return bool(multihost_utils.process_allgather(np.array(self.requested)).any())
