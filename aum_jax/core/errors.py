"""The base class of every user mistake a command reports in one ``error:`` line.

A command's ``main`` runs under :func:`aum_jax.cli.command.guard`, which turns a
:class:`UserError` into ``error: <the message on one line>`` on stderr and exit status 1
(the message and its ``details`` are an INFO log, shown with ``-v``). Any other exception is a
bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake of the user (a config value, a path, a damaged file) that ends a command.

    Subclasses may also derive from a built-in error (``ValueError``, ``OSError``, ...) so that
    library callers can catch them as such. ``details`` holds what the console line leaves out
    (e.g. every bad clip of a list the message counts), for the INFO log.
    """

    details: str = ""
