"""The logging of the command-line tools: quiet by default, everything back with ``-v``.

By default a tool shows its progress bars, a compact line now and then, its warnings and
errors, and its results. The INFO chatter of TensorFlow's C++ runtime (the oneDNN notice
of every process), of JAX's backend probing, of orbax and of clu's writers is dropped;
``-v 0`` / ``--verbosity=0`` (or a bare ``-v``) brings it back, ``-v 1`` adds debug lines.

Native libraries read their log level from the environment when they load, so a tool
calls :func:`quiet_native_logs` before it imports JAX or TensorFlow. TensorFlow
logs its load-time notices through absl C++ before any level applies, so the code that
needs TensorFlow (clu's writers, TFDS) loads it through :func:`import_tensorflow`, which
silences its stderr on a quiet console; a tool that never writes TensorBoard events or
reads TFDS (``--help``, a config mistake, ``--mode=eval``) never pays for loading it.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

QUIET = -1  # absl verbosity of a quiet console: warnings and errors.
_QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "2",  # TensorFlow C++: no INFO (oneDNN notice) or WARNING lines.
    "GRPC_VERBOSITY": "ERROR",
}


def verbosity_from_argv(argv: Sequence[str]) -> int:
    """The ``-v``/``--verbosity`` value of a command line (a bare ``-v`` means 0), else QUIET."""
    value = QUIET
    for i, arg in enumerate(argv):
        if arg in ("-v", "--verbosity", "--v"):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            value = int(nxt) if nxt.lstrip("-").isdigit() else 0
        elif arg.startswith(("--verbosity=", "--v=")):
            text = arg.split("=", 1)[1]
            value = int(text) if text.lstrip("-").isdigit() else 0
    return value


_quiet = False  # set by quiet_native_logs: TensorFlow loads with its stderr silenced.


def quiet_native_logs(argv: Sequence[str] | None = None) -> None:
    """Silences the native INFO logs of TensorFlow unless the command line asks for verbosity.

    Call before JAX, TensorFlow or clu is imported; child processes inherit the settings
    (and a spawned worker re-runs the tool's module, and so this call).

    Args:
      argv: the command line (default ``sys.argv``).
    """
    global _quiet
    if verbosity_from_argv(sys.argv if argv is None else argv) >= 0:
        return
    _quiet = True
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)


def import_tensorflow() -> None:
    """Loads TensorFlow (once), with file descriptor 2 silenced after :func:`quiet_native_logs`.

    Call before importing clu's writers or TFDS, which load it.
    """
    if "tensorflow" in sys.modules:
        return
    if _quiet:
        _import_silently("tensorflow")
    else:
        importlib.import_module("tensorflow")


def _import_silently(module: str) -> None:
    """Imports ``module`` with the process's stderr (fd 2) pointed at /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        importlib.import_module(module)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class _LibraryErrorFilter:
    """Drops the ERROR logs (with their tracebacks) that orbax's threads, and asyncio about orbax's
    futures, write about a failed checkpoint write: the tool reports it in one line; ``-v`` shows them."""

    def filter(self, record: Any) -> bool:
        from_orbax = "/orbax/" in record.pathname
        unretrieved = record.name == "asyncio" and "exception was never retrieved" in record.getMessage()
        return not (record.levelno >= 40 and (from_orbax or unretrieved))


def _unraisable(unraisable: Any) -> None:
    """Quiet ``sys.unraisablehook``: tensorstore's writes that finish after orbax closed its event loop
    on a failed checkpoint write, and orbax's reads of other arrays abandoned when one array of a
    damaged checkpoint failed (both reported by the tool), are logged at INFO; the rest as usual."""
    from absl import logging

    error = unraisable.exc_value
    frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
    if (isinstance(error, RuntimeError) and str(error) == "Event loop is closed") or any(
            "/orbax/" in frame.filename for frame in frames):
        logging.info("an orbax read or write ended after the tool reported its failure: %s", error)
        return
    sys.__unraisablehook__(unraisable)


def quiet_library_errors() -> None:
    """Drops the ERROR logs of orbax's failed writes and their unraisable leftovers (reported by the tool)."""
    from absl import logging

    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryErrorFilter) for f in handler.filters):
        handler.addFilter(_LibraryErrorFilter())
    sys.unraisablehook = _unraisable


def configure(verbosity: int) -> None:
    """Sets absl's (and so Python logging's) level for an argparse tool."""
    from absl import logging

    logging.set_verbosity(verbosity)
    if verbosity < 0:
        quiet_library_errors()


def is_verbose() -> bool:
    from absl import logging

    return logging.get_verbosity() >= logging.INFO


def line(text: str) -> None:
    """A compact progress line that does not break a tqdm bar (an INFO log when verbose).

    Only process 0 of a multi-process job prints.
    """
    import jax
    from absl import logging
    from tqdm import tqdm

    if jax.process_index() != 0:
        return
    if is_verbose():
        logging.info("%s", text)
    else:
        tqdm.write(text, file=sys.stderr)
