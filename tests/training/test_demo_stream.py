"""configs/demo_stream.py end to end, shrunk (runlocal): its stretches rendered with their events, a causal
one-pass model trained on them by the events objective, its haystack table printed and stored, and the model
read live by ``predict --stream``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aum_jax.configs import demo_stream
from tests.helpers import assert_one_error_line, run


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


@pytest.mark.parametrize("override, fragment", [
    ("--config.eval.haystack_seconds=(0.5,)", "config.eval.haystack_seconds=(0.5,): lengths of at least 1 s"),
    ("--config.events.positives=best", "config.events.positives='best': choose from frames, max"),
    ("--config.data.crop_seconds=(2.0,1.0)", "crop_seconds must be (shortest, longest)"),
    ("--config.data.frame_targets=False", "config.train.objective=events needs config.data.frame_targets=True"),
])
def test_a_setting_the_recipe_cannot_use_is_one_error_line_before_anything_is_written(tmp_path: Path, override, fragment):
    workdir = tmp_path / "run"
    done = run("-m", "aum_jax.main", "--config=configs/demo_stream.py:runlocal", f"--workdir={workdir}", override,
               env={"AUM_JAX_CACHE": str(tmp_path / "cache")})
    assert_one_error_line(done, fragment)
    assert not workdir.exists() and not (tmp_path / "cache").exists()


def test_haystack_lengths_without_needles_are_refused_in_another_recipe(tmp_path: Path):
    done = run("-m", "aum_jax.main", "--config=configs/demo.py:runlocal", f"--workdir={tmp_path / 'run'}",
               "--config.eval.haystack_seconds=(30.0,)", env={"AUM_JAX_CACHE": str(tmp_path / "cache")})
    assert_one_error_line(done, "config.eval.haystack_clips is empty")


def test_the_one_pass_variants_of_any_recipe_build_a_model_that_reads_in_one_pass():
    from aum_jax.configs import folder, speechcommands
    from aum_jax.models import AudioMamba, AuMConfig, init_model

    for config, kind in ((speechcommands.get_config("causal,runlocal"), "causal"),
                         (folder.get_config("bidirectional"), "bidirectional")):
        model = init_model(AuMConfig.from_dict({**config.model.to_dict(), "audio_length": 64, "num_classes": 3}))
        assert isinstance(model, AudioMamba) and not config.data.remove_waveform_mean
        if kind == "causal":
            model.check_streams()
            assert config.variant.endswith("causal,runlocal")
        else:
            model.check_reads_in_chunks()
            with pytest.raises(ValueError, match="a bidirectional mixer reads the future"):
                model.check_streams()
    with pytest.raises(ValueError, match="names two one-pass types"):
        speechcommands.get_config("causal,bidirectional")
