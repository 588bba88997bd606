"""Every command of the docs runs: the fenced ``bash``/``sh``/``console`` blocks of README.md and docs/*.md.

Each page is a walk-through, read in order after the README's demo: a command may use what an
earlier command of its page, or the README's demo run, made. One test per command runs it
(and, first, the commands before it on its page, once per module), cheaply:

- ``/tmp`` and the paths under it become paths in one temporary sandbox, and the placeholders
  (:data:`PLACEHOLDERS`) name what the sandbox holds: ``CLIPS`` a folder of class folders, ``DATA``
  a folder of JSON datafiles and their label CSV, ``FEATURES`` an .npy of model inputs, ...;
- a training recipe runs shrunk: ``configs/x.py`` becomes ``configs/x.py:runlocal`` and
  ``configs/x.py:family`` becomes ``configs/x.py:family,runlocal`` (``configs/common.py``'s
  ``parse_variant``), and an override of the step counts is dropped, so runlocal's few steps stand;
- ``pip install`` lines are not run (the environment is installed): their extras must be
  pyproject's and their pinned packages the installed versions; the suite's own ``pytest`` line
  must be ``.ci/run``'s command;
- a command that cannot work here (no GPU, no AudioSet) is written in a ``console`` block with
  the ``error:`` line it prints, which is asserted (exit status 1, that one line).

Each run must exit 0 (or print the documented ``error:`` line), print what a ``console`` block
shows after it (``...`` matches anything), write the outputs its flags name, and print what its
program prints on success (:data:`SIGNATURES`). A fenced command of a program this file has no
rule for fails: every fenced command is checked. The pages themselves are checked too: every
fenced block names its language, the README stays short and links every page, and the links,
the checkout's paths and the ``aum_jax.`` names they give exist.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
PAGE_ORDER = ("README.md", "docs/training.md", "docs/your-data.md", "docs/inference.md", "docs/converting.md",
              "docs/model-and-kernels.md", "docs/architecture.md")
RUN_LANGUAGES = ("bash", "sh", "console")
OTHER_LANGUAGES = ("python", "json", "text")  # shown, not run.
README_MAX_LINES = 200
TIMEOUT_S = 400

# What the sandbox puts behind each placeholder (``{sandbox}`` is its folder).
PLACEHOLDERS = {
    "CLIPS": "{sandbox}/clips",  # CLIPS/{train,validation}/<class>/<clip>.wav
    "DATA": "{sandbox}/data",  # train.json, validation.json, labels.csv
    "NUM_CLASSES": "2",
    "MEAN": "-6.0",
    "STD": "4.0",
    "FEATURES": "{sandbox}/features.npy",  # (2, T, F) inputs of the README demo's model
}
STEP_OVERRIDES = ("--config.train.num_steps", "--config.train.num_epochs", "--config.train.steps_per_epoch")
# Flags whose value a successful run writes.
OUTPUT_FLAGS = ("--out", "--output", "--json", "--plot", "--save-logits", "--save-features", "--embeddings")
# What each program prints when it succeeds (its key: see program()).
SIGNATURES = {
    "aum_jax.main train": "Results (",
    "aum_jax.main eval": "validation",
    "aum_jax.main print": "variant = ",
    "aum_jax.export": "Wrote ",
    "scripts/convert_checkpoint.py": "Wrote ",
    "scripts/teacher_logits.py": "clips' logits",
    "scripts/linear_probe.py": "pooled_accuracy",
    "hear-validator": "Looks good!",
    "aum_jax.predict": "",  # its outputs, or a score line per file: checked in _check_predict.
    "scripts/gpu_check.py": "",  # documented in a console block with its error line.
}
RUNLOCAL_PROGRAMS = ("aum_jax.main", "scripts/teacher_logits.py", "scripts/linear_probe.py")


@dataclasses.dataclass(frozen=True)
class Command:
    """One fenced command: where it is, its text, and what a console block shows after it."""

    page: str
    line: int  # 1-based line of the page where the command starts.
    text: str  # continuations joined.
    expected: tuple[str, ...] = ()  # console output lines.

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"


def fenced_blocks(page: str) -> list[tuple[str, int, list[str]]]:
    """``(language, line of the first content line, lines)`` of every fenced block of ``page``."""
    blocks, language, start, lines, indent = [], None, 0, [], ""
    for number, row in enumerate((REPO_ROOT / page).read_text().splitlines(), 1):
        fence = re.match(r"^( *)```\s*(\S*)", row)
        if fence and language is None:
            indent, language, start, lines = fence.group(1), fence.group(2), number + 1, []
        elif fence:
            blocks.append((language, start, lines))
            language = None
        elif language is not None:
            lines.append(row.removeprefix(indent))  # a block inside a list item is indented with it.
    assert language is None, f"{page}: a fenced block is not closed"
    return blocks


def _logical_lines(start: int, lines: list[str]) -> list[tuple[int, str]]:
    """``(line number, text)`` with backslash continuations joined."""
    joined, pending, first = [], "", start
    for offset, row in enumerate(lines):
        if not pending:
            first = start + offset
        if row.rstrip().endswith("\\"):
            pending += row.rstrip()[:-1] + " "
            continue
        joined.append((first, pending + row))
        pending = ""
    assert not pending, f"line {first}: a continuation runs off the end of its block"
    return joined


def commands_of(page: str) -> list[Command]:
    found = []
    for language, start, lines in fenced_blocks(page):
        if language in ("bash", "sh"):
            for number, text in _logical_lines(start, lines):
                if text.strip() and not text.lstrip().startswith("#"):
                    found.append(Command(page, number, text.strip()))
        elif language == "console":
            current: list = []
            for number, text in _logical_lines(start, lines):
                if text.startswith("$ "):
                    current.append([number, text[2:].strip(), []])
                elif text.strip():
                    assert current, f"{page}:{number}: console output before any $ command"
                    current[-1][2].append(text.strip())
            found += [Command(page, n, t, tuple(e)) for n, t, e in current]
    return found


def pages() -> list[str]:
    extra = sorted(str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "docs").glob("*.md"))
    return [*PAGE_ORDER, *(p for p in extra if p not in PAGE_ORDER)]


COMMANDS = [command for page in pages() for command in commands_of(page)]
DEMO = next(c for c in COMMANDS if c.page == "README.md" and "aum_jax.main" in c.text)  # the README's first command.


# --- turning a documented command into the one that runs here ---------------------------------------------------


def _parts(text: str) -> list[list[str]]:
    """The ``&&``-joined commands of a line, each split as a shell splits it (comments dropped)."""
    return [shlex.split(part, comments=True) for part in text.split(" && ")]


def program(argv: list[str]) -> str:
    """The rule's key: ``aum_jax.main train``, ``aum_jax.predict``, ``scripts/x.py``, ``hear-validator``, ``pip``."""
    if argv[0] == "python" and argv[1:2] == ["-m"]:
        module = argv[2]
        if module == "aum_jax.main":
            mode = next((a.split("=", 1)[1] for a in argv if a.startswith("--mode=")), "train")
            return f"aum_jax.main {mode}"
        return module
    if argv[0] == "python":
        return argv[1]
    return argv[0]


def runlocal(argv: list[str]) -> list[str]:
    """``--config=configs/x.py[:family]`` shrunk with ``runlocal``; step-count overrides dropped."""
    out = []
    for arg in argv:
        if arg.startswith(STEP_OVERRIDES):
            continue
        match = re.fullmatch(r"--config=(configs/\w+\.py)(?::(.*))?", arg)
        if match:
            variants = [v for v in (match.group(2) or "").split(",") if v]
            arg = f"--config={match.group(1)}:{','.join([*variants, 'runlocal'])}"
        out.append(arg)
    return out


def substitute(text: str, sandbox: Path) -> str:
    text = re.sub(r"(?<![\w/.])/tmp(?=/|\b)", f"{sandbox}/tmp", text)
    for name, value in PLACEHOLDERS.items():
        text = re.sub(rf"\b{name}\b", value.format(sandbox=sandbox), text)
    return text


def flag_values(argv: list[str], flag: str) -> list[str]:
    values = []
    for i, arg in enumerate(argv):
        if arg == flag and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


# --- the sandbox ---------------------------------------------------------------------------------------------


def _write_sandbox_data(sandbox: Path) -> None:
    """CLIPS (a split folder of two classes) and DATA (datafiles and a label CSV) from the toy set."""
    from tests.helpers import write_toy_dataset

    paths = write_toy_dataset(sandbox / "data", clips_per_class=6)
    shutil.copy(paths["eval"], sandbox / "data" / "validation.json")
    for split, source in (("train", "train"), ("validation", "eval")):
        for wav in sorted((sandbox / "data" / source).glob("*.wav")):
            target = sandbox / "clips" / split / wav.stem.rstrip("0123456789") / wav.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(wav, target)


def _write_features(sandbox: Path) -> None:
    """FEATURES: two inputs of the README demo's model, shaped as its config.json says."""
    import json

    config = json.loads((sandbox / "tmp" / "aum_demo" / "model" / "config.json").read_text())
    shape = (2, config["audio_length"], config["num_mel_bins"])
    np.save(sandbox / "features.npy", np.random.default_rng(0).normal(size=shape).astype(np.float32))


class Runner:
    """Runs the docs' commands in one sandbox, each once, a page's earlier commands first."""

    def __init__(self, sandbox: Path):
        self.sandbox = sandbox
        self.results: dict[str, tuple[list[list[str]], list[subprocess.CompletedProcess | None], float]] = {}
        (sandbox / "tmp").mkdir()
        _write_sandbox_data(sandbox)
        self.env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu",
                        AUM_JAX_CACHE=str(sandbox / "cache"), MPLBACKEND="Agg")

    def result(self, command: Command):
        if command.id not in self.results:
            if command != DEMO:
                self.result(DEMO)  # every page starts from the README's demo model.
            for earlier in COMMANDS:
                if earlier == command:
                    break
                if earlier.page == command.page:
                    self.result(earlier)
            self.results[command.id] = self._run(command)
        return self.results[command.id]

    def _run(self, command: Command):
        started = time.time()
        argvs, done = [], []
        for argv in _parts(substitute(command.text, self.sandbox)):
            name = program(argv)
            if name.split()[0] in RUNLOCAL_PROGRAMS:
                argv = runlocal(argv)
            argvs.append(argv)
            if _installs_or_tests(argv) or name not in SIGNATURES:
                done.append(None)  # checked, not run (_check_install), or a program without a rule (fails).
                continue
            executable = shutil.which(argv[0]) if argv[0] != "python" else sys.executable
            assert executable, f"{command.id}: {argv[0]} is not installed"
            done.append(subprocess.run([executable, *argv[1:]], check=False, cwd=REPO_ROOT, env=self.env,
                                       capture_output=True, text=True, timeout=TIMEOUT_S))
            if command == DEMO and done[-1].returncode == 0:
                _write_features(self.sandbox)
        return argvs, done, started


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return Runner(tmp_path_factory.mktemp("docs"))


# --- the checks ----------------------------------------------------------------------------------------------


def _installs_or_tests(argv: list[str]) -> bool:
    """``pip install ...`` or the suite's ``python -m pytest ...``: checked, not run."""
    return argv[0] == "pip" or argv[:3] == ["python", "-m", "pytest"]


def _check_install(argv: list[str], line: str) -> None:
    """A pip line installs pyproject's extras and the pinned versions that are installed; pytest is .ci/run's."""
    if argv[:3] == ["python", "-m", "pytest"]:
        ci_line = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
        assert line == ci_line, f"the docs' test command is not .ci/run's:\n  {line}\n  {ci_line}"
        return
    assert argv[:2] == ["pip", "install"], argv
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    args = argv[2:]
    if args[:1] == ["-e"]:
        target = args[1]
        match = re.fullmatch(r"\.(?:\[(.*)\])?", target)
        assert match, f"pip install -e {target}: not this checkout"
        for extra in filter(None, (match.group(1) or "").split(",")):
            assert extra in extras, f"extra {extra!r} is not in pyproject.toml's {sorted(extras)}"
        return
    assert args[:1] == ["--no-deps"], argv
    for pin in args[1:]:
        name, _, version = pin.partition("==")
        assert version, f"{pin}: a --no-deps install is pinned"
        assert importlib.metadata.version(name) == version, f"{name} installed is not {version}"


def _expected_pattern(line: str, sandbox: Path) -> re.Pattern:
    parts = [re.escape(part) for part in substitute(line, sandbox).split("...")]
    return re.compile(".*".join(parts))


def _check_predict(argv: list[str], result: subprocess.CompletedProcess) -> None:
    if any(flag_values(argv, flag) for flag in OUTPUT_FLAGS):
        return  # their files are checked below.
    for audio in flag_values(argv, "--audio"):
        score_line = rf"^{re.escape(audio)}: .*\((softmax|sigmoid|logits)\)"
        assert re.search(score_line, result.stdout, re.MULTILINE), result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=[c.id for c in COMMANDS])
def test_command(command: Command, runner: Runner) -> None:
    argvs, results, started = runner.result(command)
    for argv, result in zip(argvs, results):
        name = program(argv)
        if _installs_or_tests(argv):
            _check_install(argv, command.text)
            continue
        assert name in SIGNATURES, f"{command.id}: no rule to run {shlex.join(argv)!r} (tests/docs/test_docs.py)"
        output = result.stdout + result.stderr
        errors = [line for line in command.expected if line.startswith("error:")]
        if errors:
            assert result.returncode == 1, output[-3000:]
            assert "Traceback" not in result.stderr, result.stderr[-3000:]
            printed = [row for row in result.stderr.splitlines() if row.startswith("error: ")]
            assert len(printed) == 1 and _expected_pattern(errors[0], runner.sandbox).fullmatch(printed[0]), (
                f"{command.id}: expected {errors[0]!r}, got:\n{result.stderr[-3000:]}")
        else:
            assert result.returncode == 0, f"{command.id}: {shlex.join(argv)}\n{output[-4000:]}"
            assert SIGNATURES[name] in output, output[-3000:]
            for flag in OUTPUT_FLAGS:
                for path in flag_values(argv, flag):
                    written = Path(path).exists() and Path(path).stat().st_mtime >= started - 1
                    assert written, f"{command.id}: {flag} {path} was not written"
            if name == "aum_jax.main train":
                workdir = Path(flag_values(argv, "--workdir")[0])
                assert (workdir / "model" / "config.json").exists() and (workdir / "report.json").exists()
            if name == "aum_jax.main eval":
                assert (Path(flag_values(argv, "--workdir")[0]) / "eval_validation.json").exists()
            if name == "aum_jax.predict":
                _check_predict(argv, result)
        lines = output.splitlines()
        for expected in command.expected:
            pattern = _expected_pattern(expected, runner.sandbox)
            assert any(pattern.fullmatch(line.strip()) for line in lines), (
                f"{command.id}: no line {expected!r} in:\n{output[-3000:]}")


# --- the pages themselves ------------------------------------------------------------------------------------


def test_every_fenced_block_says_its_language():
    for page in pages():
        for language, start, _ in fenced_blocks(page):
            assert language in RUN_LANGUAGES + OTHER_LANGUAGES, (
                f"{page}:{start - 1}: a fenced block in {language or 'no language'!r}: "
                f"commands go in {RUN_LANGUAGES}, the rest in {OTHER_LANGUAGES}")


def test_readme_is_short_and_leads_to_every_page():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < README_MAX_LINES
    for page in (REPO_ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    install_and_demo = "pip install -e . && python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo"
    ci_line = (REPO_ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert [c.text for c in COMMANDS if c.page == "README.md"][:2] == [install_and_demo, ci_line]


def test_files_the_docs_name_exist():
    """A path of the checkout in backticks (`aum_jax/ops/scan.py`, `tests/models/toy_mixer.py`) is there."""
    for page in [*pages(), "BENCHMARKS.md"]:
        text = (REPO_ROOT / page).read_text()
        for span in re.findall(r"`([^`\s]+)`", text):
            path = span.rstrip("/.,:;")
            if re.fullmatch(r"(aum_jax|kernels|configs|scripts|tests|data|docs)/[\w/.\-]+", path):
                assert (REPO_ROOT / path).exists(), f"{page}: `{span}` does not exist"


def test_the_layout_names_every_module():
    """docs/architecture.md's layout: each folder's entry names each of its modules (``prep_*`` names a family)."""
    blocks = fenced_blocks("docs/architecture.md")
    layout = next(lines for language, _, lines in blocks if language == "text" and lines[0].startswith("aum_jax/ "))
    entries: dict[str, str] = {}
    for row in layout:
        if not row.startswith(" "):
            folder, _, row = row.partition(" ")
            entries[folder] = ""
        entries[folder] += " " + row
    for folder, text in entries.items():
        if not folder.startswith(("aum_jax/", "kernels/", "scripts/")):
            continue
        words = set(re.findall(r"[\w*]+", text))
        families = [w[:-1] for w in words if w.endswith("*")]
        for path in sorted((REPO_ROOT / folder).glob("*")):
            if path.suffix in (".py", ".cc", ".sh", ".ipynb") and path.stem != "__init__":
                named = path.stem in words or path.name in text or any(path.stem.startswith(f) for f in families)
                assert named, f"docs/architecture.md: the layout's {folder} does not name {path.name}"
        for sub in sorted(p for p in (REPO_ROOT / folder).iterdir() if p.is_dir() and any(p.glob("*.py"))):
            assert f"{folder}{sub.name}/" in entries, f"docs/architecture.md: the layout has no {folder}{sub.name}/"


def _module_file(dotted: list[str]) -> tuple[Path | None, list[str]]:
    """The source file of the longest module prefix of ``aum_jax.x.y.name`` (None for a namespace folder)
    and the names after it."""
    roots = {"kernels": REPO_ROOT / "kernels", "configs": REPO_ROOT / "configs"}  # installed as aum_jax.kernels, ...
    path, found, i = REPO_ROOT / "aum_jax", REPO_ROOT / "aum_jax" / "__init__.py", 1
    while i < len(dotted):
        step = roots[dotted[i]] if i == 1 and dotted[i] in roots else path / dotted[i]
        if step.is_dir():
            path, found = step, (step / "__init__.py" if (step / "__init__.py").exists() else None)
        elif step.with_suffix(".py").exists():
            return step.with_suffix(".py"), dotted[i + 1:]
        else:
            break
        i += 1
    return found, dotted[i:]


def test_names_the_docs_give_exist():
    """A dotted name in backticks (`aum_jax.ops.scan.IMPLEMENTATIONS`) is a module, or a name its module defines
    or imports."""
    for page in [*pages(), "BENCHMARKS.md"]:
        for span in re.findall(r"`(aum_jax(?:\.\w+)+)", (REPO_ROOT / page).read_text()):
            source, rest = _module_file(span.split("."))
            assert source is not None, f"{page}: `{span}`: no such module"
            if rest:
                name = rest[0]
                defined = rf"^\s*(def|class) {name}\b|^{name}\b.*=|^from .* import .*\b{name}\b|^\s+{name},$"
                assert re.search(defined, source.read_text(), re.MULTILINE), (
                    f"{page}: `{span}`: {source.relative_to(REPO_ROOT)} defines no {name}")


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    lines, inside = [], False
    for row in path.read_text().splitlines():
        if row.lstrip().startswith("```"):
            inside = not inside
        elif not inside:
            lines.append(row)
    return {_slug(m.group(1)) for row in lines if (m := re.match(r"^#+ (.*)", row))}


def test_links_lead_somewhere():
    for page in [*pages(), "BENCHMARKS.md"]:
        path = REPO_ROOT / page
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"https?://", target):
                continue
            file, _, anchor = target.partition("#")
            linked = (path.parent / file).resolve() if file else path
            assert linked.exists(), f"{page}: link {target} leads nowhere"
            if anchor:
                assert anchor in _anchors(linked), f"{page}: link {target}: no such heading"
