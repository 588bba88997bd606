"""The console of the command-line tools: quiet by default, everything back with ``-v``.

By default a tool shows its progress bars, a compact line now and then, its warnings and
errors, and its results. The INFO chatter of TensorFlow's C++ runtime (the oneDNN notice
of every process), of JAX's backend probing, of orbax and of clu's writers is dropped;
``-v 0`` / ``--verbosity=0`` (or a bare ``-v``) brings it back, ``-v 1`` adds debug lines.

Native libraries read their log level from the environment when they load, so a tool
calls :func:`quiet_native_logs` before it imports JAX or TensorFlow. TensorFlow 2.21
logs its load-time notices through absl C++ before any level applies, so a tool that
needs TensorFlow (through clu's writers) imports it with its stderr silenced.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
import traceback
from collections.abc import Mapping, Sequence
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


def quiet_native_logs(argv: Sequence[str] | None = None, *, preload_tensorflow: bool = False) -> None:
    """Silences the native INFO logs of TensorFlow unless the command line asks for verbosity.

    Call before JAX, TensorFlow or clu is imported; child processes inherit the settings
    (and a spawned worker re-runs the tool's module, and so this call).

    Args:
      argv: the command line (default ``sys.argv``).
      preload_tensorflow: import TensorFlow now, with file descriptor 2 silenced.
    """
    if verbosity_from_argv(sys.argv if argv is None else argv) >= 0:
        return
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if preload_tensorflow and "tensorflow" not in sys.modules:
        _import_silently("tensorflow")


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


def expand_bare_verbose(argv: list[str]) -> list[str]:
    """absl's ``-v`` wants a value: a bare ``-v`` becomes ``--verbosity=0``."""
    out = []
    for i, arg in enumerate(argv):
        nxt = argv[i + 1] if i + 1 < len(argv) else ""
        if arg == "-v" and not nxt.lstrip("-").isdigit():
            out.append("--verbosity=0")
        else:
            out.append(arg)
    return out


def _config_key_error(error: Exception, argv: Sequence[str]) -> str:
    """One line for an unknown ``--config.<key>``: the flag and ml_collections' suggestion."""
    text = str(error.args[0] if error.args else error)
    while text[:1] in ("'", '"'):  # KeyError messages come quoted, once per re-raise.
        try:
            text = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            break
    key, _, suggestion = text.partition("\n")
    key = key.strip("'\"")
    flag = next((a.split("=", 1)[0] for a in argv if a.startswith("--config.") and key in a), f"--config ... {key}")
    suggestion = suggestion.strip()
    return f"error: {flag}: no such config key" + (f"; {suggestion[:1].lower()}{suggestion[1:]}" if suggestion else "")


def parse_absl_flags(argv: list[str]) -> list[str]:
    """absl flag parsing for a tool's ``app.run``: quiet by default, a bare ``-v``, ``--help`` exits 0.

    A bad flag value or an unknown ``--config.<key>`` ends the process with one ``error:`` line
    (and the suggestion of a close key), exit status 1.
    """
    from absl import flags, logging

    argv = expand_bare_verbose(argv)
    try:
        rest = flags.FLAGS(argv)
    except SystemExit:
        if any(a in ("-h", "--help", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
            sys.exit(0)
        raise
    except flags.Error as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config lacks.
        sys.exit(_config_key_error(e, argv))
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(QUIET)
        _quiet_library_errors()
    return rest


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


def _quiet_library_errors() -> None:
    from absl import logging

    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryErrorFilter) for f in handler.filters):
        handler.addFilter(_LibraryErrorFilter())
    sys.unraisablehook = _unraisable


def argument_parser(prog: str, description: str, epilog: str | None) -> argparse.ArgumentParser:
    """The parser of an argparse tool, its module docstring as the epilog, with ``-v``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbosity_flag(parser)
    return parser


def add_model_dir_flag(parser: argparse.ArgumentParser) -> None:
    """``--model-dir`` (old name ``--checkpoint``): a model directory or a training workdir."""
    parser.add_argument("--model-dir", "--checkpoint", dest="model_dir", required=True,
                        help="model directory (config.json + params/ + preprocessing.json), or a training workdir "
                        "(its model/); --checkpoint is the old name")


def add_no_verify_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-verify``: load a model directory that has no ``checksums.json``."""
    parser.add_argument("--no-verify", action="store_true",
                        help="load a model directory without checksums.json (its parameters are then not checked "
                        "for damage)")


def add_verbosity_flag(parser: argparse.ArgumentParser) -> None:
    """``-v [N]`` / ``--verbosity N`` for an argparse tool."""
    parser.add_argument(
        "-v", "--verbosity", type=int, nargs="?", const=0, default=QUIET,
        help="log level: -1 warnings only (default), 0 (or bare -v) info of every library, 1 debug",
    )


def configure(verbosity: int) -> None:
    """Sets absl's (and so Python logging's) level for an argparse tool."""
    from absl import logging

    logging.set_verbosity(verbosity)
    if verbosity < 0:
        _quiet_library_errors()


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


def format_metrics(values: Mapping[str, Any], keys: Sequence[str] = ("accuracy", "mAP", "mAUC", "loss")) -> str:
    """``accuracy 0.9250  mAP 0.9512 ...`` for the keys present."""
    return "  ".join(f"{k} {values[k]:.4f}" for k in keys if isinstance(values.get(k), (int, float)))


def results_table(rows: Sequence[tuple[str, Mapping[str, Any] | None]]) -> str:
    """A fixed-width table of metrics, one row per ``(name, metrics)``; None rows are left out.

    Args:
      rows: e.g. ``[("validation", {"step": 620, "accuracy": 0.93, ...}), ("test", {...})]``.
    """
    columns = ("step", "accuracy", "mAP", "mAUC", "d_prime", "loss", "num_examples")
    present = [c for c in columns if any(r and r.get(c) is not None for _, r in rows)]
    header = f"{'split':<12}" + "".join(f"{c:>13}" for c in present)
    lines = [header, "-" * len(header)]
    for name, metrics in rows:
        if not metrics:
            continue
        cells = []
        for c in present:
            value = metrics.get(c)
            if value is None:
                cells.append(f"{'-':>13}")
            elif c in ("step", "num_examples"):
                cells.append(f"{int(value):>13d}")
            else:
                cells.append(f"{float(value):>13.4f}")
        lines.append(f"{name:<12}" + "".join(cells))
    return "\n".join(lines)
