"""cli.command.guard: a UserError ends a command in one error: line, exit status 1; a bug keeps its traceback."""

from __future__ import annotations

import pytest

from aum_jax.cli import command
from aum_jax.core.errors import UserError


class _ToyMistake(UserError, ValueError):
    """A user mistake of a toy command."""


def _main(error: BaseException | None) -> int:
    if error is not None:
        raise error
    return 0


def test_a_user_error_is_one_error_line_and_exit_status_one(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        command.guard(_main)(_ToyMistake("config.x=1: must be positive\nthe details,   on a later line"))
    # sys.exit(str): stderr, status 1; the reason on the later line is kept.
    assert exit_info.value.code == "error: config.x=1: must be positive; the details, on a later line"


@pytest.mark.parametrize("message, line", [
    ("The source does not fit the model:\n  missing key a (shape (3,))\n  missing key b",
     "The source does not fit the model: missing key a (shape (3,)); missing key b"),
    ("Failed loading config.\n\n  Attempted:\n    nope.py", "Failed loading config. Attempted: nope.py"),
    ("one line\twith  runs   of whitespace", "one line with runs of whitespace"),
    ("", ""),
])
def test_one_line_keeps_every_line_of_a_message(message, line) -> None:
    assert command.one_line(message) == line


def test_extra_types_are_user_errors_only_where_named() -> None:
    with pytest.raises(SystemExit, match="error: no such file"):
        command.guard(_main, also=(OSError,))(FileNotFoundError("no such file"))
    with pytest.raises(FileNotFoundError):
        command.guard(_main)(FileNotFoundError("no such file"))


def test_a_bug_keeps_its_traceback_and_a_clean_run_its_status() -> None:
    with pytest.raises(KeyError):
        command.guard(_main)(KeyError("bug"))
    assert command.guard(_main)(None) == 0
