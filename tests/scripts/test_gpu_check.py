"""scripts/gpu_check.py runs its code paths on a CPU (``--smoke``: tiny shapes, Pallas in
interpret mode), so that it works the first time a GPU is there, from a checkout on a Python
that has only jax, flax, optax and ml_collections (the GPU image)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO_ROOT, subprocess_env
from tests.scripts.gpu_image import gpu_image_path, run_on_gpu_image  # noqa: F401 (a fixture)

SCRIPT = str(REPO_ROOT / "scripts" / "gpu_check.py")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], env=subprocess_env(), cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


def test_the_checkout_imports_its_kernels_and_configs_uninstalled(gpu_image_path):
    """From the repository root, ``python -c "import aum_jax.kernels"`` finds the checkout's folders."""
    done = subprocess.run([sys.executable, "-S", "-c", "import aum_jax.kernels.cpu, aum_jax.configs.common, aum_jax; "
                           "print(aum_jax.__file__)"], env=dict(subprocess_env(), PYTHONPATH=str(gpu_image_path)),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == str(REPO_ROOT / "aum_jax" / "__init__.py")


def test_smoke_runs_every_section_on_the_gpu_image_and_writes_json_lines(tmp_path, gpu_image_path):
    out = tmp_path / "check.jsonl"
    done = run_on_gpu_image(gpu_image_path, SCRIPT, "--smoke", "--repeats", "1", "--out", str(out))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    numerics = [r for r in records if r["part"] == "numerics"]
    assert {(r["shape"], r["directions"]) for r in numerics} == {
        (s, d) for s in ("smoke_fobi", "smoke_bibi") for d in (1, 2)}
    assert all(r["ok"] and 0 < r["max_rel_error"] < 1e-4 and r["tensors"] >= 9 for r in numerics)
    scans = [r for r in records if r["part"] == "scan"]
    assert {(r["impl"], r["directions"]) for r in scans} == {(i, d) for i in ("pallas", "chunked") for d in (1, 2)}
    assert all(r["fwd_ms_per_direction"] > 0 and r["fwdbwd_ms_per_direction"] > 0 for r in scans)
    recipes = [r for r in records if r["part"] == "recipe"]  # each from a child process, on the same image
    assert [r["mode"] for r in recipes] == ["bfloat16", "highest"]  # TF32 is float32 off a GPU.
    assert all(r["train_clips_s"] > 0 and r["infer_clips_s"] > 0 for r in recipes)
    assert "numerics smoke_fobi" in done.stdout and "recipe   smoke_bibi" in done.stdout  # the table


def test_a_numerics_failure_exits_non_zero(tmp_path):
    out = tmp_path / "check.jsonl"
    done = _run("--smoke", "--sections", "numerics", "--shapes", "smoke_bibi", "--tolerance", "1e-12", "--out", str(out))
    assert done.returncode == 1
    assert "FAIL" in done.stdout and done.stderr.strip().startswith("error:")
    assert not any(json.loads(line).get("ok") for line in out.read_text().splitlines())


def test_without_a_gpu_it_says_so(tmp_path):
    """With JAX held to the CPU (as on a machine without a GPU, and on one with a GPU hidden)."""
    done = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "x.jsonl")], cwd=REPO_ROOT,
                          env=subprocess_env(JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES=""), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 1 and done.stderr.strip().startswith("error: no CUDA GPU here")
    assert not (tmp_path / "x.jsonl").exists()
