"""One flag convention for every command line: kebab-case flags (``--model-dir``), read off the
sources of aum_jax/ and scripts/ (absl ``DEFINE_*`` and argparse ``add_argument``)."""

from __future__ import annotations

import re

from tests.helpers import REPO_ROOT

# The flag name of an absl definition (the first argument, one line or the next) or an argparse option.
ABSL = re.compile(r"flags\.DEFINE_\w+\(\s*\"([^\"]+)\"")
ARGPARSE = re.compile(r"add_argument\(\s*((?:\"-[^\"]*\",\s*)+)")


def _flags() -> dict[str, list[str]]:
    found = {}
    for path in [*sorted((REPO_ROOT / "aum_jax").rglob("*.py")), *sorted((REPO_ROOT / "scripts").glob("*.py"))]:
        text = path.read_text()
        names = ABSL.findall(text) + [n.lstrip("-") for group in ARGPARSE.findall(text) for n in re.findall(r"\"([^\"]+)\"", group)]
        if names:
            found[str(path.relative_to(REPO_ROOT))] = names
    return found


def test_the_scripts_and_commands_define_flags():
    found = _flags()
    assert "cpu-variants" in found["scripts/benchmark.py"] and "original-scan" in found["scripts/gpu_check.py"]


def test_every_flag_is_kebab_case():
    bad = {path: [n for n in names if not re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*|[a-zA-Z?]", n)]
           for path, names in _flags().items()}
    assert not {path: names for path, names in bad.items() if names}
