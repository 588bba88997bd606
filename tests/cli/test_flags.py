"""Usage mistakes of every command, absl and argparse alike, are one ``error:`` line and exit status 1:
a ``--config`` file that is missing, a folder, not Python, or refuses its variant; a bad argparse flag."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.helpers import assert_one_error_line, run

# A command as the absl tools are built: a config file flag, parse_absl_flags, no JAX (starts fast).
TOY_COMMAND = textwrap.dedent("""
    from absl import app
    from ml_collections import config_flags
    from aum_jax.cli import command, flags as cli_flags

    _CONFIG = config_flags.DEFINE_config_file("config", None, "the config")

    def main(argv):
        print("batch_size", _CONFIG.value.batch_size)

    app.run(command.guard(main), flags_parser=cli_flags.parse_absl_flags)
""")

VARIANTS_CONFIG = textwrap.dedent("""
    import ml_collections

    def get_config(arg=None):
        if arg not in (None, "small", "big"):
            raise ValueError(f"unknown config variant {arg!r}; choose from ('small', 'big')")
        return ml_collections.ConfigDict({"batch_size": 8 if arg == "big" else 2})
""")


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("toy_command")
    (folder / "command.py").write_text(TOY_COMMAND)
    (folder / "variants.py").write_text(VARIANTS_CONFIG)
    (folder / "broken.py").write_text("import ml_collections\n\ndef get_config(:\n    pass\n")
    return folder


def test_a_good_config_and_variant_still_run(toy):
    done = run(str(toy / "command.py"), f"--config={toy / 'variants.py'}:big", "--config.batch_size=16")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "batch_size 16" in done.stdout


@pytest.mark.parametrize("config, extra, fragments", [
    ("nope.py", [], ["--config=nope.py: no such config file nope.py"]),
    ("nope.py", ["--config.batch_size=3"], ["--config=nope.py: no such config file nope.py"]),
    ("{toy}", [], ["is a folder, not a config file"]),
    ("", [], ["--config=: names no config file"]),
    ("{toy}/broken.py", [], ["broken.py:3: ", "invalid syntax", "valid Python"]),
    ("{toy}/variants.py:bogus", ["-v"], [":bogus: unknown config variant 'bogus'; choose from ('small', 'big')"]),
], ids=["missing", "missing with an override", "a folder", "empty", "syntax error", "unknown variant with -v"])
def test_a_config_file_mistake_is_one_line(toy, config, extra, fragments):
    result = run(str(toy / "command.py"), f"--config={config.format(toy=toy)}", *extra)
    assert_one_error_line(result, *fragments)
    assert "Error whilst parsing" not in result.stderr


@pytest.mark.parametrize("command, fragment", [
    ("-m aum_jax.main --config=configs/demo.py:runlocl --workdir={out}",
     "--config=configs/demo.py:runlocl: unknown config variant 'runlocl'; choose from ('demo', 'runlocal', 'causal', 'bidirectional')"),
    ("scripts/teacher_logits.py --config=nope.py --model-dir=m --out={out}",
     "--config=nope.py: no such config file nope.py"),
], ids=["main, misspelt variant", "teacher_logits, missing file"])
def test_the_real_commands_name_the_config_mistake(tmp_path, command, fragment):
    result = run(*command.format(out=tmp_path / "out").split())
    assert_one_error_line(result, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragment", [
    (["-m", "aum_jax.predict", "--model-dir", "m", "--audio", "a.wav", "--whole", "--window-seconds", "1"],
     "--window-seconds does not go with --audio --whole"),
    (["-m", "aum_jax.predict", "--model-dir", "m"], "one of the arguments --features --audio is required"),
    (["-m", "aum_jax.export", "--model-dir", "m", "--output", "o", "--bogus"], "unrecognized arguments: --bogus"),
], ids=["predict: a parser.error", "predict: a missing argument", "export: an unknown flag"])
def test_an_argparse_usage_mistake_is_one_line_and_exit_status_one(args, fragment):
    result = run(*args)
    assert_one_error_line(result, fragment)
    assert "usage:" not in result.stderr
