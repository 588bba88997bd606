"""The GPU image for the scripts' tests: a Python that has only jax, flax, optax and
ml_collections (with their dependencies) and sees the checkout, not the installed package."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, subprocess_env

GPU_IMAGE = ("jax", "flax", "optax", "ml_collections")  # what the GPU image's Python has, with their dependencies
ABSENT = ("grain", "clu", "tensorflow", "tensorflow_datasets", "tensorboard", "librosa", "soundfile", "torch")
# Run by ``python -S -c``: importing a top-level name in ABSENT raises ImportError, then the script runs.
BOOTSTRAP = """
import runpy, sys
class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError(f"No module named {{name!r}} (not on the GPU image)")
        return None
sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _distributions(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """The installed distributions of ``names`` and everything they require (no extras)."""
    found, todo = {}, list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        try:
            found[key] = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9_.-]+", r).group(0) for r in found[key].requires or [] if "extra ==" not in r]
    return list(found.values())


@pytest.fixture(scope="module")
def gpu_image_path(tmp_path_factory) -> Path:
    """A folder of links to the GPU image's packages (and their dist-info) in this site-packages."""
    folder = tmp_path_factory.mktemp("gpu_image")
    for dist in _distributions(GPU_IMAGE):
        for top in {Path(str(f)).parts[0] for f in dist.files or []} - {".."}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (folder / top).exists() and top.split(".")[0] not in ABSENT:
                (folder / top).symlink_to(source)
    return folder


def run_on_gpu_image(image: Path, script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``script`` under ``python -S`` (no .pth file, so no editable install) with only the
    checkout and ``image`` on its path and the ABSENT modules refused; children it starts with
    ``sys.executable -S`` see the same path."""
    command = [sys.executable, "-S", "-c", BOOTSTRAP.format(blocked=set(ABSENT)), script, *args]
    return subprocess.run(command, env=dict(subprocess_env(), PYTHONPATH=f"{REPO_ROOT}:{image}"), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)
