"""What the tests share: fixture models and paths, a toy dataset and config, subprocess runs of
the command lines, and the check that a refusal is one ``error:`` line."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import soundfile
from aum_jax.configs import speechcommands

from aum_jax.checkpoints import convert
from aum_jax.checkpoints.model_files import save_model
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.data.sources.datafile import write_datafile

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures"
TINY_FOBI = FIXTURES / "aum_torch" / "tiny_fobi" / "state_dict.pth"
NAMES = tuple(f"c{i}" for i in range(10))  # the fixture's 10 classes.


def save_tiny_fobi(out: Path, *, mean: float, std: float, loss: str, class_names: tuple[str, ...] = ()) -> Path:
    """The original's tiny Fo-Bi checkpoint (4 blocks, 192 wide, 128 x 128 input) converted into
    the model directory ``out`` with the given statistics, loss and class names."""
    prep = Preprocessing(num_mel_bins=128, target_length=128, mean=mean, std=std, loss=loss, class_names=class_names)
    save_model(convert.convert(convert.read_torch_checkpoint(TINY_FOBI)), out, preprocessing=prep)
    return out


SAMPLE_RATE = 16_000
CLASSES = {"/toy/low": 300.0, "/toy/high": 2500.0}  # mid: tone frequency (Hz).


def write_toy_dataset(root: Path, clips_per_class: int = 12, seed: int = 0) -> dict[str, str]:
    """Noisy low and high tones, 0.35 s at 16 kHz: a two-class set a tiny model learns at once."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    label_csv = root / "labels.csv"
    label_csv.write_text("index,mid,display_name\n" + "".join(
        f"{i},{mid},{mid.rsplit('/', 1)[1]}\n" for i, mid in enumerate(CLASSES)))
    paths = {}
    for split, count in (("train", clips_per_class), ("eval", clips_per_class // 2)):
        entries = []
        for mid, freq in CLASSES.items():
            for n in range(count):
                t = np.arange(int(0.35 * SAMPLE_RATE)) / SAMPLE_RATE
                tone = 0.3 * np.sin(2 * np.pi * freq * rng.uniform(0.9, 1.1) * t + rng.uniform(0, 2 * np.pi))
                wav = root / split / f"{mid.rsplit('/', 1)[1]}{n}.wav"
                wav.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(wav, (tone + 0.02 * rng.normal(size=t.shape)).astype(np.float32), SAMPLE_RATE)
                entries.append((str(wav.relative_to(root)), [mid]))
        paths[split] = str(root / f"{split}.json")
        write_datafile(paths[split], entries)
    paths["label_csv"] = str(label_csv)
    return paths


def toy_config(paths: dict[str, str], **train_overrides) -> ml_collections.ConfigDict:
    """The Speech Commands recipe shrunk to the toy set: 32x32 inputs, a 32-wide 1-block AuM."""
    config = speechcommands.get_config("runlocal")
    data = config.data
    data.train_datafile, data.validation_datafile, data.label_csv = paths["train"], paths["eval"], paths["label_csv"]
    data.num_classes, data.num_mel_bins, data.audio_length = 2, 32, 32
    data.freqm = data.timem = 0
    data.mixup, data.noise = 0.0, False
    data.batch_size, data.eval_batch_size = 4, 8
    config.model.embed_dim, config.model.depth = 32, 1
    config.optimizer.lr = 3e-3
    config.eval.test_split = ""
    config.train.update(dict(loss="CE", num_steps=6, steps_per_epoch=6, log_every=1, checkpoint_every=2))
    config.train.update(train_overrides)
    return config


def read_scalars(workdir: Path, tag: str) -> dict[int, float]:
    """``{step: value}`` of one TensorBoard scalar, over every event file of ``workdir``."""
    import tensorflow as tf

    values = {}
    for path in sorted(glob.glob(str(workdir / "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def xla_flags(*flags: str) -> str:
    """The suite's XLA_FLAGS (set in tests/conftest.py) with ``flags`` added."""
    return " ".join([os.environ.get("XLA_FLAGS", ""), *flags]).strip()


# For processes that run long recordings through a model: XLA's default optimisation, not the
# suite's -O0 (tests/conftest.py), which compiles faster but runs slower.
OPTIMIZED = {"XLA_FLAGS": ""}


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), **extra)
    env.setdefault("JAX_PLATFORMS", "cpu")
    return env


SAMPLE = FIXTURES / "audio" / "sample0.wav"  # 10 s at 16 kHz.


PEAK_RSS = textwrap.dedent("""
    import json, resource, subprocess, sys
    done = subprocess.run([sys.executable, *sys.argv[1:]], capture_output=True, text=True)
    print(json.dumps({"rc": done.returncode, "kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                      "stdout": done.stdout[-2000:], "stderr": done.stderr[-2000:]}))
""")


def run(*args: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                          timeout=400, **kwargs)


def assert_one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit status 1, no traceback, and the last stderr line is ``error: ...`` holding ``fragments``."""
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in line, line
    assert sum(row.startswith("error: ") for row in result.stderr.splitlines()) == 1, result.stderr[-3000:]
    return line


def main_cli(workdir: Path, toy_overrides: list[str], *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return run("-m", "aum_jax.main", "--config=configs/speechcommands.py:runlocal", f"--workdir={workdir}",
               *toy_overrides, *extra, **kwargs)


class RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/aum_jax_pwned"),))


@contextlib.contextmanager
def read_only(folder: Path):
    """No entry can be created in ``folder``: chmod for users, the immutable attribute for root."""
    if os.geteuid() == 0:
        if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
            pytest.skip("running as root without chattr +i: a folder cannot be made read-only")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
