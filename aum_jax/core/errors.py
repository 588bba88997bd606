"""The base class of every user mistake a command reports in one ``error:`` line.

A command's ``main`` runs under :func:`aum_jax.cli.command.guard`, which turns a
:class:`UserError` into ``error: <first line of the message>`` on stderr and exit status 1
(the whole message is an INFO log, shown with ``-v``). Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake of the user (a config value, a path, a damaged file) that ends a command.

    Subclasses may also derive from a built-in error (``ValueError``, ``OSError``, ...) so that
    library callers can catch them as such.
    """
