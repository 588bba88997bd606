"""The checkout as a project: pyproject's package list names every package folder of
aum_jax/, kernels/ and configs/, so that an install (not editable) holds the whole tree; no
top-level folder of the checkout shadows an installed package; the extras are bounded."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib

from tests.helpers import REPO_ROOT, subprocess_env

# Top-level folders that install under another name (pyproject's package-dir).
MAPPED = {"kernels": "aum_jax.kernels", "configs": "aum_jax.configs"}


def _package_folders() -> set[str]:
    names = set(MAPPED.values())
    for top in ("aum_jax", *MAPPED):
        for init in (REPO_ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(REPO_ROOT).parts
            names.add(".".join((MAPPED.get(parts[0], parts[0]), *parts[1:])))
    return names


def test_pyproject_installs_every_package_folder():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    assert set(setuptools["packages"]) == _package_folders()
    assert setuptools["package-dir"] == {installed: folder for folder, installed in MAPPED.items()}


def test_no_top_level_folder_shadows_an_installed_package():
    """With the checkout's root on ``sys.path`` (``python -m`` or ``python -c`` run from it, the tests'
    PYTHONPATH), ``import NAME`` of every installed top-level package finds the installed one: a
    top-level folder of that name has no ``__init__.py`` (a namespace folder ranks below any regular
    package) and is not a module."""
    installed = {name for name, dists in importlib.metadata.packages_distributions().items()
                 if "aum-jax" not in dists and name.isidentifier()}
    tops = {p.name for p in REPO_ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}
    regular = sorted(name for name in tops if (REPO_ROOT / name / "__init__.py").is_file() and name in installed)
    assert not regular, f"top-level packages of the checkout named as installed ones: {regular}"
    clashes = sorted(tops & installed)  # namespace folders: the installed package must still win.
    for name in clashes:
        done = subprocess.run([sys.executable, "-c", f"import {name}; print({name}.__file__)"], cwd=REPO_ROOT,
                              env=subprocess_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        assert not done.stdout.strip().startswith(str(REPO_ROOT)), (name, done.stdout)


def test_every_dependency_and_extra_has_an_upper_bound():
    """A fresh install tomorrow gets the releases CI tested: every requirement is pinned or capped."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    unbounded = [r for r in requirements if not re.search(r"(==|<)", r.split(";")[0])]
    assert not unbounded, unbounded
