"""The checkout as a project: pyproject's package list names every package folder of
aum_jax/, kernels/ and configs/, so that an install (not editable) holds the whole tree."""

from __future__ import annotations

import tomllib

from tests.helpers import REPO_ROOT

# Top-level folders that install under another name (pyproject's package-dir).
MAPPED = {"kernels": "aum_jax.kernels", "configs": "aum_jax.configs"}


def _package_folders() -> set[str]:
    names = set()
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
