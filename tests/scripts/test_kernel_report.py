"""scripts/kernel_report.py: the Triton IR it takes out of the CUDA lowering, and its occupancy
arithmetic. Compiling the IR needs the triton wheel (its own environment), not a GPU."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, subprocess_env
from tests.scripts.gpu_image import gpu_image_path, run_on_gpu_image  # noqa: F401 (a fixture)

spec = importlib.util.spec_from_file_location("kernel_report", REPO_ROOT / "scripts" / "kernel_report.py")
kernel_report = importlib.util.module_from_spec(spec)
sys.modules["kernel_report"] = kernel_report  # its dataclasses look their module up
spec.loader.exec_module(kernel_report)


def test_the_recipe_shapes_lower_to_a_forward_and_a_backward_kernel_with_the_block_table():
    kernels = kernel_report.triton_kernels(kernel_report.Shape.parse("12 513 1536 16 fobi"))
    assert [k["name"] for k in kernels] == ["aum_selective_scan_fwd", "aum_selective_scan_bwd"]
    assert [k["num_warps"] for k in kernels] == [2, 4]  # 4 and 2 state elements a thread
    assert all("tt.func" in k["ttir"] for k in kernels)
    (infer,) = kernel_report.triton_kernels(kernel_report.Shape.parse("12 513 1536 16 infer"))
    assert infer["name"] == "aum_selective_scan_fwd"


def test_occupancy_counts_registers_warps_and_shared_memory():
    assert kernel_report.occupancy(255, 1, 0, 90) == 0.125  # 8 warps per SM
    assert kernel_report.occupancy(128, 1, 0, 90) == 0.25
    assert kernel_report.occupancy(114, 4, 256, 90) == 0.25  # 120 registers allocated: 4 programs of 4 warps
    assert kernel_report.occupancy(32, 1, 0, 90) == 0.5  # at most 32 programs per SM
    assert kernel_report.occupancy(32, 1, 100 * 1024, 80) == 1 / 64  # shared memory: 1 program of 1 warp


def test_the_kernels_lower_on_the_gpu_image_from_the_checkout(tmp_path, gpu_image_path):
    """The lowering runs on a Python with jax alone, the script found in the checkout uninstalled."""
    probe = tmp_path / "lower.py"
    probe.write_text(
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('kernel_report', {str(REPO_ROOT / 'scripts' / 'kernel_report.py')!r})\n"
        "report = importlib.util.module_from_spec(spec)\n"
        "sys.modules['kernel_report'] = report\n"
        "spec.loader.exec_module(report)\n"
        "print(*[k['name'] for k in report.triton_kernels(report.Shape.parse('2 33 32 16 infer'))])\n")
    done = run_on_gpu_image(gpu_image_path, str(probe), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["aum_selective_scan_fwd"]


@pytest.mark.parametrize("shape", ["12 513 1536", "12 513 1536 16 sideways", "0 513 1536 16 fobi"])
def test_bad_shapes_are_one_error_line(shape):
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "kernel_report.py"), "--shapes", shape],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip().startswith("error: shape") and "Traceback" not in done.stderr


@pytest.mark.skipif(kernel_report.find_triton_python(make=False) is None,
                    reason="no triton here (run scripts/kernel_report.py once to make its environment)")
def test_the_kernels_compile_without_spills():
    done = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "kernel_report.py"), "--shapes", "48 65 768 16 fobi",
                           "--archs", "90"], env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "kernels that spill or fail: 0" in done.stdout
