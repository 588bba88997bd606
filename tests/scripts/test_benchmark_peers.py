"""scripts/benchmark.py --sections peers: AuM beside transformers' AST, one small point end to end
(each model in its own process, and each whole command cold and warm), rows of finite positive figures
and the ratios."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO_ROOT, subprocess_env

pytest.importorskip("transformers")
pytest.importorskip("torch")

ROW = re.compile(r"^(?P<name>.*\S)\s+(?P<value>\S+) (?P<unit>\S+)$")


def test_one_tiny_point_gives_aum_ast_and_their_ratios():
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--sections", "peers", "--peer-widths", "tiny",
         "--peer-seconds", "2", "--peer-batches", "1", "--peer-rounds", "1", "--peer-reps", "1",
         "--peer-command-seconds", "2"],
        env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    failed = [line for line in done.stdout.splitlines() if "failed" in line]
    assert done.returncode == 0 and not failed, "\n".join(failed) + done.stderr[-3000:]  # the command's own error
    assert "# peers: torch " in done.stdout and "load average" in done.stdout
    rows = {m["name"]: (float(m["value"]), m["unit"])
            for m in map(ROW.match, done.stdout.splitlines()) if m and not m["name"].startswith("#")}
    label = "peers tiny 2 s (208 frames) B=1"  # 200 frames, rounded up to whole 16-frame patches
    expected = {f"{label}: {model} {what}": unit for model in ("aum", "ast")
                for what, unit in (("ms", "ms"), ("clips/s", "clips/s"), ("peak RSS", "MB"),
                                   ("matmul GFLOP/s / sgemm", "fraction"), ("command cold wall", "s"),
                                   ("command cold peak RSS", "MB"), ("command warm wall", "s"),
                                   ("command warm peak RSS", "MB"))}
    expected |= {f"{label}: AuM speed-up (ast ms / aum ms)": "x", f"{label}: RSS ratio (ast / aum)": "x",
                 "sgemm GFLOP/s (2048^3, highest)": "GFLOP/s"}
    expected |= {f"{label}: command {when} {what}": "x" for when in ("cold", "warm")
                 for what in ("speed-up (ast s / aum s)", "RSS ratio (ast / aum)")}
    assert set(rows) == set(expected), done.stdout
    for name, (value, unit) in rows.items():
        assert unit == expected[name] and math.isfinite(value) and value > 0, (name, value, unit)
    assert rows[f"{label}: aum matmul GFLOP/s / sgemm"][0] < 1.5  # a share of the machine's rate, not a rate
