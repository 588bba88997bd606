"""Flag parsing of the command-line tools, absl and argparse alike: ``-v``, ``--help``, one ``error:`` line.

absl tools pass :func:`parse_absl_flags` to ``app.run``; argparse tools build their parser
with :func:`argument_parser` and the shared flags below. Either way a usage mistake (an unknown
flag or value, a missing, unreadable or invalid ``--config`` file, an unknown config variant or
key) ends the process with one ``error:`` line on stderr and exit status 1. A command that writes
files checks them before it loads anything (:func:`check_output_files`): none replaces a file
without ``--overwrite``. Flags are kebab-case (``--model-dir``); ``--config.<path>`` overrides
spell the config's snake_case keys.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import ml_collections

from aum_jax.cli.command import one_line
from aum_jax.core import logs, storage


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


def _config_file_args(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``(flag as given, file path)`` of each config-file flag (``config_flags.DEFINE_config_file``) in ``argv``:
    ``("--config=configs/demo.py:runlocal", "configs/demo.py")``."""
    from absl import flags
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    names = [name for name in flags.FLAGS if isinstance(flags.FLAGS[name].parser, ConfigFileFlagParser)]
    found = []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        if arg == "--":
            break
        for name in names:
            match = re.fullmatch(rf"--?{re.escape(name)}(?:=(.*))?", arg, re.DOTALL)
            if match is None:
                continue
            value = match.group(1) if match.group(1) is not None else (args[i + 1] if i + 1 < len(args) else None)
            if value is not None:
                found.append((f"--{name}={value}", value.split(":", 1)[0]))
    return found


def _check_config_files(argv: Sequence[str]) -> None:
    """Ends the process with one ``error:`` line for a config file that is missing, a folder or unreadable
    (ml_collections would defer the error to the config's first use, as two chained tracebacks)."""
    for flag, path in _config_file_args(argv):
        if not path:
            sys.exit(f"error: {flag}: names no config file")
        if not os.path.exists(path):
            sys.exit(f"error: {flag}: no such config file {path}")
        if os.path.isdir(path):
            sys.exit(f"error: {flag}: {path} is a folder, not a config file")
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            sys.exit(f"error: {flag}: cannot read {path}: {e.strerror or e}")


def _flag_error(error: Exception) -> str:
    """One ``error:`` line for absl's flag error; for a config file's ``get_config`` that raised (an unknown
    variant), its own reason rather than ml_collections' traceback text."""
    text = str(error).removeprefix("flag ")
    prefix, wrapped, _ = text.partition("Error whilst parsing config file:")
    if wrapped:
        cause = error
        while cause.__cause__ or cause.__context__:
            cause = cause.__cause__ or cause.__context__
        text = prefix + str(cause)
    return f"error: {one_line(text)}"


def parse_absl_flags(argv: list[str]) -> list[str]:
    """absl flag parsing for a tool's ``app.run``: quiet by default, a bare ``-v``, ``--help`` exits 0.

    A bad flag value, a missing or unreadable ``--config`` file, one that is not valid Python
    (its file and line named), a ``get_config`` that refuses its variant (its reason: the
    variants it takes) or an unknown ``--config.<key>`` (with the suggestion of a close key)
    ends the process with one ``error:`` line, exit status 1.
    """
    from absl import flags, logging

    argv = expand_bare_verbose(argv)
    _check_config_files(argv)
    try:
        rest = flags.FLAGS(argv)
    except SystemExit:
        if any(a in ("-h", "--help", "--helpshort", "--helpfull", "-?") for a in argv[1:]):
            sys.exit(0)
        raise
    except flags.Error as e:
        sys.exit(_flag_error(e))
    except (AttributeError, KeyError) as e:  # ml_collections: an override of a key the config lacks.
        sys.exit(_config_key_error(e, argv))
    except SyntaxError as e:  # a config file that is not Python.
        sys.exit(f"error: {e.filename}:{e.lineno}: {e.msg} (a config file must be valid Python)")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logs.QUIET)
        logs.quiet_library_errors()
    return rest


class _OneLineErrors(argparse.ArgumentParser):
    """argparse with a usage mistake as one ``error:`` line and exit status 1 (argparse's own: its usage and 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"error: {one_line(message)}\n")


def argument_parser(prog: str, description: str, epilog: str | None) -> argparse.ArgumentParser:
    """The parser of an argparse tool, its module docstring as the epilog, with ``-v``; a usage mistake
    (``parser.error``, an unknown flag, a bad value) ends the process with one ``error:`` line, exit status 1."""
    parser = _OneLineErrors(prog=prog, description=description, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_verbosity_flag(parser)
    return parser


def add_model_dir_flag(parser: argparse.ArgumentParser) -> None:
    """``--model-dir``: a model directory or a training workdir."""
    parser.add_argument("--model-dir", dest="model_dir", required=True,
                        help="model directory (config.json + params/ + preprocessing.json), or a training workdir "
                        "(its model/)")


def add_no_verify_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-verify``: load a model directory that has no ``checksums.json``."""
    parser.add_argument("--no-verify", action="store_true",
                        help="load a model directory without checksums.json (its parameters are then not checked "
                        "for damage)")


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``: the command may replace files that exist at its output paths."""
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files that exist at the output paths (default: refuse them)")


def check_output_files(outputs: Sequence[tuple[str, str | os.PathLike | None]], *, overwrite: bool,
                       inputs: Sequence[tuple[str, str | os.PathLike]] = ()) -> None:
    """Refuses, before a command loads or writes anything, the output files it may not write.

    Args:
      outputs: ``(flag, path)`` of each file the command will write (path None or "": not asked for).
      overwrite: the user's ``--overwrite``.
      inputs: ``(flag, path)`` of the files the command reads.

    Raises:
      OutputExistsError: an output that is a folder, an existing file without ``overwrite``
        (:func:`aum_jax.core.storage.check_output_file`), or the same file as another output or an input.
    """
    seen = {os.path.realpath(path): f"{flag} {path}" for flag, path in reversed(inputs)}
    for flag, path in outputs:
        if not path:
            continue
        key = os.path.realpath(path)
        if key in seen:
            raise storage.OutputExistsError(f"{flag} {path} is the same file as {seen[key]}; name another file")
        seen[key] = f"{flag} {path}"
        storage.check_output_file(path, flag, overwrite=overwrite)


def add_verbosity_flag(parser: argparse.ArgumentParser) -> None:
    """``-v [N]`` / ``--verbosity N`` for an argparse tool."""
    parser.add_argument(
        "-v", "--verbosity", type=int, nargs="?", const=0, default=logs.QUIET,
        help="log level: -1 warnings only (default), 0 (or bare -v) info of every library, 1 debug",
    )


def format_config(config: ml_collections.ConfigDict) -> str:
    """Every knob as ``path = value``, one a line (the paths ``--config.<path>`` overrides), values plain
    (references resolved)."""
    lines = []

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for key in sorted(node):
                walk(f"{prefix}.{key}" if prefix else key, node[key])
        else:
            lines.append(f"{prefix} = {node!r}")

    walk("", config.to_dict())
    return "\n".join(lines)
