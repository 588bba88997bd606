"""Registers, spills, shared memory and occupancy of the GPU scan kernels, without a GPU.

Lowers the Pallas selective-scan kernels for CUDA with ``jax.export`` at each shape, takes
the Triton IR out of every ``__gpu$xla.gpu.triton`` custom call, compiles it to a cubin for
each architecture with the ``triton`` wheel (which bundles ptxas) and prints, per kernel,
shape and architecture: warps per program, registers per thread, spill bytes, shared
memory and the theoretical occupancy (65,536 registers, 64 warps and 32 programs per SM;
228 KB of shared memory on sm_90, 164 KB on sm_80).

    python scripts/kernel_report.py                          # the three recipe shapes, sm_80 and sm_90
    python scripts/kernel_report.py --shapes "12 513 1536 16 fobi" --archs 90 --json report.jsonl

A shape is ``B L D N MODE``: MODE ``fobi`` (two directions sharing their inputs, forward and
backward, as Fo-Bi trains), ``bibi`` (two directions with their own inputs, as Bi-Bi trains) or
``infer`` (Fo-Bi's forward alone). ``--fwd-blocks``/``--bwd-blocks`` override the block table
of ``aum_jax.kernels.pallas.layout`` (``block_d,num_warps,unroll,chunk``) to compare variants.

The compiler runs in a child process (Triton's LLVM must not meet jaxlib's in one process):
the Python of ``--triton-python``, else this one if it has the ``triton`` wheel (the
``kernel-report`` extra), else a virtual environment with ``triton==TRITON_VERSION`` that
the script makes once under ``~/.cache/aum_jax`` (pip, about 200 MB).
The figures are a proxy: on a GPU, XLA compiles the kernels with its own Triton, and only a
timing (``scripts/gpu_check.py``) is the speed. Exits 1 when a kernel spills or does not
compile.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the checkout, when aum_jax is not installed (the GPU image)

RECIPE_SHAPES = ("12 513 1536 16 fobi", "48 65 768 16 fobi", "12 513 768 16 bibi")  # base Fo-Bi AS, base 128x128, small Bi-Bi AS
MODES = ("fobi", "bibi", "infer")
SM_REGISTERS, SM_WARPS, SM_PROGRAMS = 65536, 64, 32
SM_SHARED_KB = {80: 164, 86: 100, 89: 100, 90: 228}
TRITON_VERSION = "3.9.0"  # the kernel-report extra's


def triton_venv() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "aum_jax" / f"triton-{TRITON_VERSION}"


def find_triton_python(make: bool) -> str | None:
    """This Python if it imports triton, else the cached venv's (made when ``make``), else None."""
    if importlib.util.find_spec("triton") is not None:
        return sys.executable
    python = triton_venv() / "bin" / "python"
    if not python.exists() and make:
        print(f"making {triton_venv()} with triton=={TRITON_VERSION} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(triton_venv())], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"triton=={TRITON_VERSION}"], check=True)
    return str(python) if python.exists() else None


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int
    length: int
    dim: int
    d_state: int
    mode: str

    @classmethod
    def parse(cls, text: str) -> Shape:
        parts = text.split()
        if len(parts) != 5 or parts[4] not in MODES or not all(p.isdigit() and int(p) > 0 for p in parts[:4]):
            raise ValueError(f"shape {text!r}: expected 'B L D N MODE' with positive sizes and MODE in {MODES}")
        return cls(*map(int, parts[:4]), parts[4])

    def __str__(self) -> str:
        return f"{self.batch}x{self.length}x{self.dim}x{self.d_state}-{self.mode}"


def occupancy(registers: int, warps: int, shared_bytes: int, arch: int) -> float:
    """Theoretical occupancy: resident warps per SM over the SM's 64."""
    per_warp = -(-registers // 8) * 8 * 32  # registers are allocated per warp, 256 at a time
    programs = min(SM_REGISTERS // (per_warp * warps), SM_PROGRAMS, SM_WARPS // warps)
    if shared_bytes:
        programs = min(programs, SM_SHARED_KB.get(arch, 100) * 1024 // shared_bytes)
    return programs * warps / SM_WARPS


def triton_kernels(shape: Shape, blocks=None) -> list[dict]:
    """Lowers the kernels at ``shape`` for CUDA; returns [{name, num_warps, num_stages, ttir}]."""
    import jax
    import jax.numpy as jnp
    from aum_jax.kernels.pallas.selective_scan import bidirectional_selective_scan
    from jax import export
    from jax._src.interpreters import mlir as jax_mlir
    from jax._src.lib import triton as jax_triton
    from jax._src.lib.mlir import ir

    S, f32 = jax.ShapeDtypeStruct, jnp.float32
    rows, states = S((shape.batch, shape.length, shape.dim), f32), S((shape.batch, shape.length, shape.d_state), f32)
    matrix, vector = S((shape.dim, shape.d_state), f32), S((shape.dim,), f32)
    k = 2 if shape.mode == "bibi" else 1
    args = ((rows,) * k, (rows,) * k, (matrix,) * 2, (states,) * k, (states,) * k, (vector,) * k, rows, (vector,) * k)

    def loss(*a):
        out = bidirectional_selective_scan(*a, delta_softplus=True, scale=0.5 if shape.mode == "bibi" else 1.0,
                                           interpret=False, blocks=blocks)
        return out.sum()

    fn = loss if shape.mode == "infer" else jax.value_and_grad(loss, argnums=tuple(range(8)))
    exported = export.export(jax.jit(fn), platforms=["cuda"],
                             disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(*args)
    context = jax_mlir.make_ir_context()
    jax_triton.dialect.register_dialect(context)  # the kernels' IR is Triton-dialect MLIR bytecode
    context.load_all_available_dialects()
    found = []
    with context, ir.Location.unknown():

        def visit(op) -> None:
            op = getattr(op, "operation", op)
            if op.name == "stablehlo.custom_call" and "triton" in ir.StringAttr(op.attributes["call_target_name"]).value:
                config = ir.DictAttr(op.attributes["mhlo.backend_config"])
                entry = {}
                for i in range(len(config)):
                    key, value = config[i].name, config[i].attr
                    if key == "ir":
                        entry["ttir"] = ir.Module.parse(ir.StringAttr(value).value_bytes).operation.get_asm(
                            enable_debug_info=False)
                    elif key in ("name", "num_warps", "num_stages"):
                        entry[key] = ir.StringAttr(value).value if key == "name" else ir.IntegerAttr(value).value
                found.append(entry)
            for region in op.regions:
                for block in region.blocks:
                    for inner in block.operations:
                        visit(inner)

        visit(ir.Module.parse(exported.mlir_module()).operation)
    return found


def compile_worker(path: str, arch: int, warps: int, stages: int) -> None:
    """Child process: compiles one Triton-IR file through every NVIDIA stage from ``ttir`` on,
    as XLA's pipeline does; ptxas prints its figures, then a JSON line gives shared memory."""
    from triton._C.libtriton import ir
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import IRSource, make_backend

    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    context = ir.context()
    source = IRSource(path, context, backend)
    options = backend.parse_options({"num_warps": warps, "num_stages": stages, "num_ctas": 1})
    stages_by_ext: dict = {}
    backend.add_stages(stages_by_ext, options, source.language)
    metadata = {"hash": "0" * 64, "target": target, **options.__dict__}
    module = source.make_ir(target, options, backend.get_codegen_implementation(options), backend.get_module_map(), context)
    result: dict = {}
    try:
        for stage in stages_by_ext.values():
            module = stage(module, metadata)
    except Exception as error:  # noqa: BLE001 - the report carries the compiler's message
        result["error"] = str(error)[-500:]
    result["shared"] = int(metadata.get("shared") or 0)
    print("\n" + json.dumps(result), flush=True)


def compile_kernel(ttir: str, arch: int, warps: int, stages: int, python: str, workdir: Path) -> dict:
    path = workdir / f"kernel_{abs(hash((ttir, arch)))}.ttir"
    path.write_text(ttir)
    env = dict(os.environ, TRITON_DUMP_PTXAS_LOG="1", TRITON_CACHE_DIR=str(workdir / "cache"))
    done = subprocess.run([python, __file__, "--compile-worker", str(path), str(arch), str(warps), str(stages)],
                          capture_output=True, text=True, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        return {"error": (done.stderr or done.stdout)[-500:]}
    result = json.loads(lines[-1])
    log = done.stdout + done.stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    result.update(registers=int(registers.group(1)) if registers else None,
                  spill_stores=int(spills.group(1)) if spills else 0, spill_loads=int(spills.group(2)) if spills else 0)
    return result


def parse_blocks(text: str | None):
    if not text:
        return None
    from aum_jax.kernels.pallas.layout import BlockConfig

    return BlockConfig(*map(int, text.split(",")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(RECIPE_SHAPES), help="'B L D N MODE' per shape")
    parser.add_argument("--archs", default="80,90", help="compute capabilities, comma-separated (80: A100, 90: H100)")
    parser.add_argument("--json", help="also write one JSON line per kernel, shape and arch to this file")
    parser.add_argument("--fwd-blocks", help="forward blocks 'block_d,num_warps,unroll,chunk' (default: the table)")
    parser.add_argument("--bwd-blocks", help="backward blocks 'block_d,num_warps,unroll,chunk' (default: the table)")
    parser.add_argument("--triton-python", help="a Python with the triton wheel (default: see above)")
    parser.add_argument("--compile-worker", nargs=4, metavar=("TTIR", "ARCH", "WARPS", "STAGES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.compile_worker:
        path, arch, warps, stages = args.compile_worker
        compile_worker(path, int(arch), int(warps), int(stages))
        return 0
    try:
        shapes = [Shape.parse(s) for s in args.shapes]
        archs = [int(a) for a in args.archs.split(",")]
        fwd, bwd = parse_blocks(args.fwd_blocks), parse_blocks(args.bwd_blocks)
    except (ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if (fwd is None) != (bwd is None):
        print("error: give both --fwd-blocks and --bwd-blocks, or neither", file=sys.stderr)
        return 1
    try:
        args.triton_python = args.triton_python or find_triton_python(make=True)
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"error: could not make {triton_venv()} with triton=={TRITON_VERSION}: {error}", file=sys.stderr)
        return 1
    probe = subprocess.run([args.triton_python, "-c", "import triton; print(triton.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode:
        print(f"error: {args.triton_python} cannot import triton; pass a --triton-python that can", file=sys.stderr)
        return 1
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    header = f"{'shape':<22} {'kernel':<6} {'arch':>5} {'warps':>5} {'regs':>5} {'spill st/ld':>12} {'smem':>6} {'occupancy':>9}"
    print(f"triton {probe.stdout.strip()}\n{header}")
    failures = 0
    out = open(args.json, "a") if args.json else None
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            for kernel in triton_kernels(shape, (fwd, bwd) if fwd else None):
                name = kernel["name"].removeprefix("aum_selective_scan_")
                for arch in archs:
                    got = compile_kernel(kernel["ttir"], arch, kernel["num_warps"], kernel["num_stages"],
                                         args.triton_python, Path(tmp))
                    row = {"shape": str(shape), "kernel": name, "arch": f"sm_{arch}", "warps": kernel["num_warps"], **got}
                    if "error" in got or got.get("registers") is None:
                        failures += 1
                        print(f"{str(shape):<22} {name:<6} {'sm_%d' % arch:>5} DOES NOT COMPILE: {got.get('error', '')[:200]}")
                    else:
                        row["occupancy"] = occupancy(got["registers"], kernel["num_warps"], got["shared"], arch)
                        failures += bool(got["spill_stores"] or got["spill_loads"])
                        spills = f"{got['spill_stores']}/{got['spill_loads']}"
                        print(f"{str(shape):<22} {name:<6} {'sm_%d' % arch:>5} {kernel['num_warps']:>5} "
                              f"{got['registers']:>5} {spills:>12} {got['shared']:>6} {row['occupancy']:>9.1%}")
                    if out:
                        out.write(json.dumps(row) + "\n")
                    sys.stdout.flush()
    if out:
        out.close()
    print(f"kernels that spill or fail: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
