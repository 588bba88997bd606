"""configs/demo_stream.py end to end, shrunk (runlocal): its stretches rendered with their events, a causal
one-pass model trained on them by the events objective, its haystack table printed and stored, and the model
read live by ``predict --stream``."""

from __future__ import annotations

import json
from pathlib import Path

from aum_jax.configs import demo_stream
from tests.helpers import run


def test_the_one_pass_demo_trains_finds_needles_and_streams(tmp_path: Path):
    workdir = tmp_path / "run"
    env = {"AUM_JAX_CACHE": str(tmp_path / "cache"), "MPLBACKEND": "Agg"}
    done = run("-m", "aum_jax.main", "--config=configs/demo_stream.py:runlocal", f"--workdir={workdir}", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "A test keyword hidden in noise, 2 placements per length" in done.stdout, done.stdout[-2000:]
    rows = json.loads((workdir / "haystack.json").read_text())["rows"]
    assert [(r["seconds"], r["mode"], r["placements"]) for r in rows] == [(10.0, "stream", 2)]
    assert all(0 <= r[k] <= 100 for r in rows for k in ("found", "peak_found", "detected"))
    config = json.loads((workdir / "model" / "config.json").read_text())
    local = demo_stream.get_config("runlocal").model
    assert (config["bimamba_type"], config["position"], config["cls_position"]) == ("none", "none", "none")
    assert tuple(config["patch_size"]) == tuple(local.patch_size) == (64, demo_stream.SLICE_FRAMES)
    stretch = next((tmp_path / "cache" / "demo").glob("*/audio/eval/00000.wav"))
    out = tmp_path / "timeline.json"
    streamed = run("-m", "aum_jax.predict", "--model-dir", str(workdir / "model"), "--audio", str(stretch),
                   "--stream", "--json", str(out), env=env)
    assert streamed.returncode == 0, streamed.stderr[-3000:]
    timeline = json.loads(out.read_text())
    assert timeline  # the stretch's rows, one per 40 ms slice
