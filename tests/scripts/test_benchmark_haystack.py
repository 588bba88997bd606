"""scripts/benchmark.py --sections haystack: a needle clip hidden in the demo's noise, end to end on tiny
random models (a grid model and a one-pass one) and a few synthetic needle clips in the demo dataset's
layout (no trained demo model, no eSpeak rendering): every model's and mode's rows, in range; the splice
keeps the needle; a missing model is one error line."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from aum_jax.checkpoints.model_files import save_model
from aum_jax.data.demo import render
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.models import AuMConfig, init_model
from tests.helpers import REPO_ROOT, assert_one_error_line, run, subprocess_env

sys.path.insert(0, str(REPO_ROOT / "scripts"))  # as when the script runs: its sibling modules import
spec = importlib.util.spec_from_file_location("benchmark_haystack", REPO_ROOT / "scripts" / "benchmark_haystack.py")
haystack = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = haystack  # its dataclass looks its module up
spec.loader.exec_module(haystack)

ROW = re.compile(r"^(?P<name>.*\S)\s+(?P<value>\S+) (?P<unit>\S+)$")
WORDS = ("yes", "no", "up")
RATE = 16_000


def write_clips(root: Path) -> Path:
    """Two 1 s clips per word (a tone burst in white noise) in the demo's layout; clips.csv rows for all but one."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    (root / "class_labels_indices.csv").write_text(
        "index,mid,display_name\n" + "".join(f"{i},/demo/{w},{w}\n" for i, w in enumerate(WORDS)))
    entries, recipe = [], ["split,wav,word,snr_db,noise_beta,onset,offset"]
    for w, word in enumerate(WORDS):
        for n in range(2):
            onset, offset = 4000, 10000
            t = np.arange(offset - onset) / RATE
            clip = 0.01 * rng.standard_normal(RATE)
            clip[onset:offset] += 0.3 * np.sin(2 * np.pi * (300 + 400 * w) * t)
            rel = f"audio/eval/{word}/{n:05d}.wav"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(root / rel, clip.astype(np.float32), RATE, subtype="PCM_16")
            entries.append({"wav": rel, "labels": f"/demo/{word}"})
            if (w, n) != (0, 0):
                recipe.append(f"eval,{rel},{word},25.00,0.000,{onset},{offset}")
    (root / "eval.json").write_text(json.dumps({"data": entries}))
    (root / "clips.csv").write_text("\n".join(recipe) + "\n")
    return root


def tiny_model(out: Path) -> Path:
    config = AuMConfig(embed_dim=16, depth=1, audio_length=96, num_mel_bins=64, num_classes=len(WORDS),
                       strides=(8, 8))
    prep = Preprocessing(num_mel_bins=64, target_length=96, mean=-5.0, std=4.0, loss="CE", class_names=WORDS)
    return save_model(init_model(config), out, preprocessing=prep)


def one_pass_model(out: Path) -> Path:
    """A causal one-pass model: one token per 4-frame slice of every bin, no position table, no cls token."""
    config = AuMConfig(embed_dim=16, depth=1, audio_length=96, num_mel_bins=64, num_classes=len(WORDS),
                       patch_size=(64, 4), strides=(64, 4), position="none", cls_position="none", pool="max",
                       bimamba_type="none")
    prep = Preprocessing(num_mel_bins=64, target_length=96, mean=-5.0, std=4.0, loss="BCE", class_names=WORDS,
                         remove_waveform_mean=False)
    return save_model(init_model(config), out, preprocessing=prep)


def test_the_needle_replaces_the_noise_between_its_fades():
    rng = np.random.default_rng(1)
    noise = render.background(rng, 1.0, 0.05, 5 * RATE)
    assert noise.shape == (5 * RATE,) and abs(np.sqrt(np.mean(noise**2)) - 0.05) < 0.01
    clip = rng.standard_normal(RATE)
    spliced = noise.copy()
    render.hide(spliced, clip, 12_345)
    fade = round(render.FADE_SECONDS * RATE)
    np.testing.assert_array_equal(spliced[12_345 + fade : 12_345 + RATE - fade], clip[fade:-fade])
    np.testing.assert_array_equal(spliced[:12_345], noise[:12_345])
    np.testing.assert_array_equal(spliced[12_345 + RATE :], noise[12_345 + RATE :])


def test_the_section_gives_every_modes_rows_in_range(tmp_path):
    clips = write_clips(tmp_path / "clips")
    model = tiny_model(tmp_path / "model")
    streaming = one_pass_model(tmp_path / "one_pass")
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "benchmark.py"), "--sections", "haystack", "--haystack-model",
         str(model), "--haystack-stream-model", str(streaming), "--haystack-clips", str(clips),
         "--haystack-seconds", "3,700", "--haystack-placements", "2,1"],
        env=subprocess_env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "# haystack: models demo " in done.stdout and "6 needle clips of 3 classes" in done.stdout
    rows = {m["name"]: (float(m["value"]), m["unit"])
            for m in map(ROW.match, done.stdout.splitlines()) if m and not m["name"].startswith("#")}
    ranges = {"found": ("%", 0, 100), "peak found": ("%", 0, 100), "time error": ("s", 0, 700),
              "detected": ("%", 0, 100), "latency": ("s", -1, 1.5), "false alarms": ("/min", 0, math.inf),
              "wall per minute": ("s/min", 1e-6, math.inf), "peak RSS": ("MB", 1, math.inf)}
    expected = ({f"haystack 3 s demo {mode}: {what}" for mode in haystack.MODES for what in ranges}
                | {f"haystack {s} s one-pass {mode}: {what}" for s in (3, 700) for mode in haystack.STREAM_MODES
                   for what in ranges})  # above 600 s the one-pass model alone
    assert set(rows) == expected, done.stdout
    for name, (value, unit) in rows.items():
        wanted, low, high = ranges[name.split(": ", 1)[1]]
        in_range = low <= value <= high or (math.isnan(value) and name.endswith("latency"))  # nan: none detected
        assert unit == wanted and in_range, (name, value, unit)
    for what in ("found", "peak found", "time error", "detected", "false alarms"):  # the same rows, read two ways
        assert rows[f"haystack 700 s one-pass whole: {what}"] == rows[f"haystack 700 s one-pass stream: {what}"]


def test_a_missing_model_says_how_to_train_one(tmp_path):
    done = run("scripts/benchmark.py", "--sections", "haystack", "--haystack-model", str(tmp_path / "none"))
    assert_one_error_line(done, "python -m aum_jax.main --config=configs/demo.py --workdir=/tmp/aum_demo")
