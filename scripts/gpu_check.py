"""One call that proves the GPU path: the Pallas scan kernels' numerics and speed, and the
recipes' train step and inference, on one CUDA GPU.

    python scripts/gpu_check.py --out $OUT/gpu_check.jsonl \
        [--original $OUT/torch.jsonl] [--original-scan $OUT/cuda_scan.jsonl]
    python scripts/gpu_check.py --smoke --out /tmp/smoke.jsonl     # the same code paths, tiny, on a CPU

1. numerics: the kernels' outputs and all eight gradients against the sequential scan run
   on the same device, at the three recipe shapes, one direction (forward in time) and
   both (Fo-Bi's shared inputs, Bi-Bi's own);
2. scan: forward, and forward + backward, milliseconds of the kernels per direction, and
   of XLA's chunked scan beside them;
3. recipes: ``aum_jax.training.update.train_step`` (the recipes' optimizer chain) and inference of
   base Fo-Bi 1024x128 batch 12, base Fo-Bi 128x128 batch 48 and small Bi-Bi 1024x128 batch
   12, at ``highest``, ``tensorfloat32`` and ``bfloat16`` (``model.dtype``), with the device's
   peak memory. Each recipe runs in its own process, its modes from the smallest footprint
   up, so that the device's peak statistic belongs to the mode it follows.

With ``--original`` (``../shared/gpu-anchor/torch_orig.py``'s JSON lines, same GPU) and
``--original-scan`` (``cuda_scan.py``'s), figures come with ratios to the original AuM and
mamba_ssm's kernel. Writes one JSON line per figure to ``--out``, prints a table, and exits
1 when a numerics check fails. It runs from a checkout without installing and imports jax, flax,
optax and ml_collections only (the GPU image has no grain, clu, librosa, soundfile or TFDS).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # the checkout, when aum_jax is not installed (the GPU image)

SHAPES = {  # name: (B, L, D, N, mode); mode fobi: two directions sharing inputs, bibi: their own
    "base_fobi_audioset": (12, 513, 1536, 16, "fobi"),
    "base_fobi_spc": (48, 65, 768, 16, "fobi"),
    "small_bibi_audioset": (12, 513, 768, 16, "bibi"),
}
SMOKE_SHAPES = {"smoke_fobi": (2, 33, 32, 16, "fobi"), "smoke_bibi": (2, 21, 24, 8, "bibi")}
SMOKE_TIMED = ("smoke_bibi",)  # --smoke times one shape and one recipe: the code paths, not the speed
MODES = ("bfloat16", "tensorfloat32", "highest")  # smallest footprint first (see the docstring)
SMOKE_MODES = ("bfloat16", "highest")  # off a GPU TF32 matmuls are float32 ones: the code path of "highest".
TOLERANCE = 1e-4  # default of --tolerance: max |kernel - sequential| / max |sequential|, per output and gradient


def _inputs(batch: int, length: int, dim: int, n: int, mode: str, seed: int = 0):
    """Bidirectional-scan arguments as the model makes them: delta before bias and softplus."""
    import jax
    import jax.numpy as jnp

    per_dir = 2 if mode == "bibi" else 1
    keys = iter(jax.random.split(jax.random.key(seed), 16))
    rows = lambda scale=1.0: tuple(scale * jax.random.normal(next(keys), (batch, length, dim)) for _ in range(per_dir))
    states = lambda: tuple(jax.random.normal(next(keys), (batch, length, n)) for _ in range(per_dir))
    a = tuple(-jnp.exp(0.5 * jax.random.normal(next(keys), (dim, n))) for _ in range(2))
    d = tuple(jnp.ones((dim,)) for _ in range(per_dir))
    bias = tuple(0.1 * jax.random.normal(next(keys), (dim,)) for _ in range(per_dir))
    return rows(), rows(0.5), a, states(), states(), d, jax.random.normal(next(keys), (batch, length, dim)), bias


def _scan_fn(impl: str, directions: int, scale: float):
    from aum_jax.ops import bidirectional_scan

    def run(us, deltas, As, Bs, Cs, Ds, z, biases):
        pick = lambda seq: seq[:1] if directions == 1 else seq
        return bidirectional_scan(pick(us), pick(deltas), As[:directions], pick(Bs), pick(Cs), pick(Ds), z,
                                  pick(biases), delta_softplus=True, scale=scale, impl=impl)

    return run


def numerics(shapes: dict, tolerance: float) -> list[dict]:
    """The kernels against the sequential scan on this device: outputs and eight gradients."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    records = []
    for name, (batch, length, dim, n, mode) in shapes.items():
        args = _inputs(batch, length, dim, n, mode)
        weights = jnp.cos(jnp.arange(batch * length * dim, dtype=jnp.float32).reshape(batch, length, dim))
        for directions in (1, 2):
            scale = 0.5 if mode == "bibi" and directions == 2 else 1.0
            results = {}
            for impl in ("pallas", "sequential"):
                fn = _scan_fn(impl, directions, scale)
                def loss(*a, fn=fn):
                    out = fn(*a)
                    return jnp.sum(out * weights), out

                (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(8)), has_aux=True))(*args)
                results[impl] = [out] + [g for g in jax.tree.leaves(grads)]
            errors = [float(np.max(np.abs(np.asarray(k) - np.asarray(s)))) / (float(np.max(np.abs(np.asarray(s)))) + 1e-30)
                      for k, s in zip(results["pallas"], results["sequential"], strict=True)]
            records.append({"part": "numerics", "shape": name, "bld_n": [batch, length, dim, n], "mode": mode,
                            "directions": directions, "max_rel_error": max(errors), "tensors": len(errors),
                            "ok": max(errors) <= tolerance})
    return records


def scan_timings(shapes: dict, repeats: int, original_scan: dict) -> list[dict]:
    """Forward and forward + backward ms per direction: the kernels (one launch for both
    directions), and XLA's chunked scan."""
    import jax

    from aum_jax.training.speed import time_ms

    records = []
    for name, (batch, length, dim, n, mode) in shapes.items():
        args = _inputs(batch, length, dim, n, mode)
        for impl in ("pallas", "chunked"):
            for directions in (1, 2):
                fn = _scan_fn(impl, directions, 1.0)
                forward = jax.jit(fn)
                grad = jax.jit(jax.grad(lambda *a, fn=fn: fn(*a).sum(), argnums=tuple(range(8))))
                fwd = time_ms(lambda: forward(*args), repeats, warmup=2) / directions
                both = time_ms(lambda: grad(*args), repeats, warmup=2) / directions
                record = {"part": "scan", "shape": name, "bld_n": [batch, length, dim, n], "impl": impl,
                          "directions": directions, "fwd_ms_per_direction": fwd, "fwdbwd_ms_per_direction": both}
                theirs = original_scan.get((batch, length, dim, n))
                if theirs:
                    record["fwdbwd_vs_mamba_ssm"] = both / (theirs["cuda_fwdbwd_us"] / 1000)
                    record["fwd_vs_mamba_ssm"] = fwd / (theirs["cuda_fwd_us"] / 1000)
                records.append(record)
    return records


def recipe_child(name: str, repeats: int, modes: tuple[str, ...]) -> None:
    """In its own process: one recipe in each of ``modes``, printed as JSON lines."""
    import jax

    from aum_jax.training import speed

    recipe = speed.RECIPES[name]
    for mode in modes:
        start = time.perf_counter()
        figures = speed.measure(recipe, scan_impl="pallas", mode=mode, repeats=repeats)
        print("RECIPE " + json.dumps({"part": "recipe", "recipe": name, "mode": mode, "size": recipe.size,
                                      "variant": recipe.bimamba_type, "frames": recipe.frames,
                                      "batch": recipe.train_batch, "seconds": time.perf_counter() - start,
                                      "device": jax.devices()[0].device_kind, **figures}), flush=True)


def recipes(names: list[str], repeats: int, originals: dict, smoke: bool) -> list[dict]:
    records = []
    modes = SMOKE_MODES if smoke else MODES
    for name in names:
        # The child runs on this interpreter as it was started: without site-packages' .pth files under -S.
        done = subprocess.run([sys.executable, *(["-S"] if sys.flags.no_site else []), __file__, "--recipe-child", name,
                               "--repeats", str(repeats), *(["--smoke"] if smoke else [])],
                              capture_output=True, text=True, cwd=REPO)
        lines = [json.loads(l[7:]) for l in done.stdout.splitlines() if l.startswith("RECIPE ")]
        if done.returncode or len(lines) != len(modes):
            records.append({"part": "recipe", "recipe": name, "error": done.stderr.strip().splitlines()[-1:]})
            continue
        for record in lines:
            theirs = originals.get((record["size"], record["variant"], record["frames"], record["batch"], record["mode"]))
            if theirs:
                record["train_vs_original"] = record["train_clips_s"] / theirs["train_clips_s"]
                record["infer_vs_original"] = record["infer_clips_s"] / theirs["infer_clips_s"]
                if "peak_gb" in record:
                    record["memory_vs_original"] = record["peak_gb"] / theirs["mem_gb"]
            records.append(record)
    return records


def _read_originals(path: str | None) -> dict:
    """torch_orig.py's lines by (size, variant, frames, batch, mode): bfloat16 meets its fp16 AMP."""
    found = {}
    for rec in _json_lines(path):
        if rec.get("part") == "torch" and "step_ms" in rec:
            mode = "bfloat16" if rec["amp"] else "tensorfloat32" if rec["tf32"] else "highest"
            found[(rec["size"], rec["variant"], rec["frames"], rec["batch"], mode)] = rec
    return found


def _read_original_scan(path: str | None) -> dict:
    return {tuple(rec["shape"]): rec for rec in _json_lines(path) if "shape" in rec}


def _json_lines(path: str | None) -> list[dict]:
    if not path:
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _table(records: list[dict]) -> str:
    lines = []
    for r in records:
        if r["part"] == "numerics":
            lines.append(f"numerics {r['shape']:<22} {r['directions']} dir  max rel error {r['max_rel_error']:.2e}  "
                         f"{'ok' if r['ok'] else 'FAIL'}")
        elif r["part"] == "scan":
            extra = f"  vs mamba_ssm fwd+bwd {r['fwdbwd_vs_mamba_ssm']:.2f}x" if "fwdbwd_vs_mamba_ssm" in r else ""
            lines.append(f"scan     {r['shape']:<22} {r['impl']:<10} {r['directions']} dir  fwd {r['fwd_ms_per_direction']:8.3f} ms"
                         f"  fwd+bwd {r['fwdbwd_ms_per_direction']:8.3f} ms per direction{extra}")
        elif r["part"] == "recipe" and "error" in r:
            lines.append(f"recipe   {r['recipe']:<22} FAILED: {r['error']}")
        elif r["part"] == "recipe":
            memory = f"peak {r['peak_gb']:.2f} GB" if "peak_gb" in r else f"planned {r.get('train_planned_gb', float('nan')):.2f} GB"
            ratio = (f"  vs original: train {r['train_vs_original']:.2f}x, infer {r['infer_vs_original']:.2f}x"
                     if "train_vs_original" in r else "")
            lines.append(f"recipe   {r['recipe']:<22} {r['mode']:<13} step {r.get('train_step_ms', float('nan')):8.1f} ms  "
                         f"train {r.get('train_clips_s', float('nan')):8.1f} clips/s  infer {r['infer_clips_s']:8.1f} clips/s  "
                         f"{memory}{ratio}")
        else:
            lines.append(json.dumps(r))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_check.jsonl", help="JSON lines file to write (appended)")
    parser.add_argument("--original", help="torch.jsonl of ../shared/gpu-anchor/torch_orig.py on the same GPU")
    parser.add_argument("--original-scan", help="cuda_scan.jsonl of ../shared/gpu-anchor/cuda_scan.py on the same GPU")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; Pallas in interpret mode off the GPU")
    parser.add_argument("--sections", default="numerics,scan,recipes", help="comma-separated: numerics, scan, recipes")
    parser.add_argument("--shapes", default="", help="comma-separated names of the shapes to check (default: all)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per figure")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="numerics: largest relative error that passes")
    parser.add_argument("--recipe-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.recipe_child:
        recipe_child(args.recipe_child, args.repeats, SMOKE_MODES if args.smoke else MODES)
        return 0
    import jax

    device = jax.devices()[0]
    on_cuda = getattr(device, "compute_capability", None) is not None
    if not on_cuda and not args.smoke:
        print(f"error: no CUDA GPU here ({device.device_kind}); run with --smoke to check the code paths on a CPU",
              file=sys.stderr)
        return 1
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    if args.shapes:
        unknown = set(args.shapes.split(",")) - set(shapes)
        if unknown:
            print(f"error: no shape {', '.join(sorted(unknown))}; choose from {', '.join(shapes)}", file=sys.stderr)
            return 1
        shapes = {name: shapes[name] for name in args.shapes.split(",")}
    sections = set(args.sections.split(","))
    records = [{"part": "env", "device": device.device_kind, "compute_capability": getattr(device, "compute_capability", None),
                "jax": jax.__version__, "smoke": args.smoke, "time": time.strftime("%Y-%m-%d %H:%M:%S")}]
    start = time.perf_counter()
    if "numerics" in sections:
        records += numerics(shapes, args.tolerance)
    timed = {name: shapes[name] for name in SMOKE_TIMED if name in shapes} if args.smoke else shapes
    if "scan" in sections:
        records += scan_timings(timed, args.repeats, _read_original_scan(args.original_scan))
    if "recipes" in sections:
        records += recipes(list(timed), args.repeats, _read_originals(args.original), args.smoke)
    records.append({"part": "done", "seconds": time.perf_counter() - start})
    with open(args.out, "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    print(_table(records))
    failed = [r for r in records if r.get("ok") is False or "error" in r]
    if failed:
        print(f"error: {len(failed)} checks failed (see {args.out})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
