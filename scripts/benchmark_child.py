"""Runs one point of a benchmark section in a fresh Python process and reads the JSON line it prints
last: a process of its own per point, so that no point's memory (peak RSS) or threads hide another's."""

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
