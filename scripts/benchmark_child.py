"""Runs one point of a benchmark section in a fresh Python process and reads the JSON line it prints
last: a process of its own per point, so that no point's memory (peak RSS) or threads hide another's;
times a whole command as a user waits for it; and measures the machine's float32 matmul rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys


def run_json_child(args: list[str]) -> dict | str:
    """``python ARGS`` with this environment -> the last JSON object it printed, or why it failed."""
    done = subprocess.run([sys.executable, *args], env=dict(os.environ), capture_output=True, text=True)
    line = next((l for l in reversed(done.stdout.splitlines()) if l.startswith("{")), None)
    if done.returncode == 0 and line is not None:
        return json.loads(line)
    if done.returncode < 0:
        name = signal.Signals(-done.returncode).name
        return f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    last = next((l.strip() for l in reversed(done.stderr.splitlines()) if l.strip()), "no output")
    return f"exit {done.returncode}: {last[:100]}"


# Runs the command given and prints its wall time and its peak RSS: a small interpreter of its own is the
# command's parent, so that the peak counts the command's memory only (a child forked from the benchmark's
# large process could count the parent's pages).
_TIMED = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"rc": done.returncode, "wall_s": time.perf_counter() - start,
                  "rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  "stdout": done.stdout[-1000:], "stderr": done.stderr[-1000:]}))
"""


def time_command(args: list[str], env: dict[str, str]) -> dict | str:
    """``args`` run as a user runs them, with ``env`` -> ``{"wall_s", "rss_mb"}``, or why it failed."""
    done = subprocess.run([sys.executable, "-c", _TIMED, *args], env=env, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else None
    if result is None:
        return f"timer exit {done.returncode}: {done.stderr.strip()[-100:]}"
    if result["rc"] != 0:
        last = next((l.strip() for l in reversed(result["stderr"].splitlines()) if l.strip()), "no output")
        return f"exit {result['rc']}: {last[:100]}"
    return {"wall_s": result["wall_s"], "rss_mb": result["rss_mb"]}


def sgemm_gflops(precision: str = "highest", size: int = 2048) -> float:
    """This machine's float32 matmul rate (GFLOP/s) through XLA, ``size``^3 at ``precision``, median of 10."""
    import jax

    from aum_jax.training.speed import time_ms

    x = jax.random.normal(jax.random.key(0), (size, size))
    with jax.default_matmul_precision(precision):
        mm = jax.jit(lambda x: x @ x)
        ms = time_ms(lambda: mm(x), 10)
    return 2 * size**3 / ms / 1e6
