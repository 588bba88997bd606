"""The one place where a command's user mistake becomes one ``error:`` line.

  app.run(command.guard(main), flags_parser=flags.parse_absl_flags)

:func:`guard` wraps a command's ``main``: a :class:`aum_jax.core.errors.UserError` (and the
extra exception types a command names, e.g. predict's unreadable inputs) ends the process with
``error: <first line of the message>`` on stderr and exit status 1; the whole message is an
INFO log (``-v``). Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from absl import logging

from aum_jax.core.errors import UserError

_Main = TypeVar("_Main", bound=Callable[..., Any])


def exit_with_one_line(error: BaseException) -> None:
    """Ends the process with ``error: <first line>`` (exit status 1); the whole message is an INFO log."""
    message = str(error)
    logging.info("%s: %s", type(error).__name__, message)
    sys.exit(f"error: {message.splitlines()[0] if message else type(error).__name__}")


def guard(main: _Main, also: tuple[type[BaseException], ...] = ()) -> _Main:
    """``main``, with a UserError (or one of ``also``) turned into one ``error:`` line and exit status 1."""

    @functools.wraps(main)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except (UserError, *also) as e:
            exit_with_one_line(e)

    return guarded  # type: ignore[return-value]
