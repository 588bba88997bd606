"""Flag parsing of the command-line tools, absl and argparse alike: ``-v``, ``--help``, one ``error:`` line.

absl tools pass :func:`parse_absl_flags` to ``app.run``; argparse tools build their parser
with :func:`argument_parser` and the shared flags below. Flags are kebab-case
(``--model-dir``); ``--config.<path>`` overrides spell the config's snake_case keys.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections

from aum_jax.core import logs


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
        logging.set_verbosity(logs.QUIET)
        logs.quiet_library_errors()
    return rest


def argument_parser(prog: str, description: str, epilog: str | None) -> argparse.ArgumentParser:
    """The parser of an argparse tool, its module docstring as the epilog, with ``-v``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
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
