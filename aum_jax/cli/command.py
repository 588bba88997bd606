"""The one place where a command starts: its compilation cache on, and a user mistake as one ``error:`` line.

  app.run(command.guard(main), flags_parser=flags.parse_absl_flags)

:func:`guard` wraps a command's ``main``: it turns on the persistent XLA compilation cache
(:func:`aum_jax.core.warm_start.enable_compilation_cache`) before ``main`` runs, and a
:class:`aum_jax.core.errors.UserError` (and the extra exception types a command names, e.g.
predict's unreadable inputs) ends the process with
``error: <the message on one line>`` on stderr and exit status 1 (:func:`one_line`: a reason on
a later line of the message is kept); the message and its ``details`` are also an INFO log (``-v``). Any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from absl import logging

from aum_jax.core import warm_start
from aum_jax.core.errors import UserError

_Main = TypeVar("_Main", bound=Callable[..., Any])


def one_line(message: str) -> str:
    """``message`` on one line: its non-blank lines joined by "; " (by a space after a line that ends
    in ``:;,.``), each run of whitespace one space."""
    text = ""
    for line in message.splitlines():
        line = " ".join(line.split())
        if line:
            text = line if not text else text + (" " if text[-1] in ":;,." else "; ") + line
    return text


def exit_with_one_line(error: BaseException) -> None:
    """Ends the process with ``error: <the message on one line>`` (exit status 1); the message and its
    ``details`` (:class:`aum_jax.core.errors.UserError`) are also an INFO log."""
    message = str(error)
    details = getattr(error, "details", "")
    logging.info("%s: %s%s", type(error).__name__, message, f"\n{details}" if details else "")
    # A write the error cut short (orbax's async checkpoint fragments) is collected at exit; Python's warning
    # about its coroutine would print after the error line, which must stay the last.
    warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
    sys.exit(f"error: {one_line(message) or type(error).__name__}")


def guard(main: _Main, also: tuple[type[BaseException], ...] = ()) -> _Main:
    """``main``, run with the compilation cache on, a UserError (or one of ``also``) turned into one ``error:``
    line and exit status 1."""

    @functools.wraps(main)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        warm_start.enable_compilation_cache()
        try:
            return main(*args, **kwargs)
        except (UserError, *also) as e:
            exit_with_one_line(e)
        finally:  # before an error line, which prints as the process exits
            warm_start.log_compilation_cache()

    return guarded  # type: ignore[return-value]
