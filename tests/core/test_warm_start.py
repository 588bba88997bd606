"""The warm start: JAX's compilation cache in a folder per jax and machine, and the traced model skeletons on disk.

The end-to-end test runs ``predict`` as a user does, twice on one model and once on another, and reads what
the cache gave each call from its ``-v`` log and from the cache folder.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys

import jax
import numpy as np
import soundfile
from flax import nnx

from aum_jax.checkpoints import model_files
from aum_jax.core import warm_start
from aum_jax.data.features.preprocessing import Preprocessing
from aum_jax.models import AuMConfig, init_model, model_with_params, skeleton
from aum_jax.models import aum as aum_lib
from tests.helpers import REPO_ROOT

TINY = dict(embed_dim=32, depth=2, num_classes=3, audio_length=64, num_mel_bins=32, patch_size=(16, 16),
            strides=(16, 16))


def _cpuinfo(path, flags: str) -> str:
    path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t: other\n")
    return str(path)


def test_another_machine_or_jax_gets_another_compilation_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("AUM_JAX_CACHE", str(tmp_path))
    avx512 = warm_start.machine_key(_cpuinfo(tmp_path / "a", "fpu sse2 avx2 avx512f"))
    avx2 = warm_start.machine_key(_cpuinfo(tmp_path / "b", "fpu sse2 avx2"))
    assert avx512 != avx2 and avx512 == warm_start.machine_key(_cpuinfo(tmp_path / "c", "fpu sse2 avx2 avx512f"))
    here = warm_start.compilation_cache_dir()
    assert here.parent == tmp_path / "xla" and f"jax{jax.__version__}" in here.name
    assert here.name.endswith(warm_start.machine_key())
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0" if name == "jax" else real(name))
    assert warm_start.compilation_cache_dir() != here


def test_memoized_makes_once_and_again_when_the_key_or_the_libraries_change(tmp_path, monkeypatch):
    monkeypatch.setenv("AUM_JAX_CACHE", str(tmp_path))
    made = []

    def make(value):
        made.append(value)
        return {"value": value}

    assert warm_start.memoized("t", "key", lambda: make(1)) == {"value": 1}
    assert warm_start.memoized("t", "key", lambda: make(2)) == {"value": 1}  # read back, not made
    assert warm_start.memoized("t", "other key", lambda: make(3)) == {"value": 3}
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "99.0" if name == "flax" else real(name))
    assert warm_start.memoized("t", "key", lambda: make(4)) == {"value": 4}
    assert made == [1, 3, 4]
    for path in (tmp_path / "traced" / "t").iterdir():
        path.write_bytes(b"not a pickle")
    assert warm_start.memoized("t", "key", lambda: make(5)) == {"value": 5}  # a damaged file is made again
    assert warm_start.memoized("t", "key", lambda: make(6)) == {"value": 5}


def test_a_skeleton_read_back_from_disk_builds_the_model_init_model_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("AUM_JAX_CACHE", str(tmp_path))
    config = AuMConfig(**TINY)
    aum_lib._skeleton.cache_clear()
    traced = skeleton(config, 3)
    aum_lib._skeleton.cache_clear()  # the next call reads the file the first wrote
    read = skeleton(config, 3)
    assert len(list((tmp_path / "traced" / "skeleton").iterdir())) == 1
    assert read.graphdef == traced.graphdef
    assert jax.tree.map(lambda x: (x.shape, x.dtype), read.params) == jax.tree.map(lambda x: (x.shape, x.dtype),
                                                                                 traced.params)
    fresh = init_model(config, 3)
    model = model_with_params(config, nnx.state(fresh, nnx.Param), 3)
    for ours, theirs in zip(jax.tree.leaves(nnx.state(model, nnx.Not(nnx.Param))),
                            jax.tree.leaves(nnx.state(fresh, nnx.Not(nnx.Param)))):
        np.testing.assert_array_equal(jax.random.key_data(ours) if jax.dtypes.issubdtype(ours.dtype, jax.dtypes.prng_key)
                                      else ours, jax.random.key_data(theirs) if jax.dtypes.issubdtype(
                                          theirs.dtype, jax.dtypes.prng_key) else theirs)
    x = np.random.default_rng(0).normal(size=(2, 64, 32)).astype(np.float32)
    np.testing.assert_array_equal(nnx.view(model, deterministic=True)(x), nnx.view(fresh, deterministic=True)(x))


def _predict(model_dir, wav, cache) -> tuple[str, str]:
    """One ``predict`` call as a user runs it (no test session's JAX cache); (its top line, its cache log line)."""
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR",
                                                            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")}
    env.update(AUM_JAX_CACHE=str(cache), PYTHONPATH=str(REPO_ROOT), JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-m", "aum_jax.predict", "--model-dir", str(model_dir), "--audio", str(wav),
                           "-v"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [line for line in done.stderr.splitlines() if "XLA compilation cache" in line]
    assert len(logged) == 1, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1], logged[0]


def _counts(line: str) -> tuple[int, int]:
    loaded, written = re.search(r"(\d+) program\(s\) loaded, (\d+) written", line).groups()
    return int(loaded), int(written)


def test_predict_loads_its_programs_on_a_second_call_and_compiles_anew_for_another_model(tmp_path):
    prep = Preprocessing(num_mel_bins=32, target_length=64, mean=-4.0, std=4.0, loss="BCE")
    first = model_files.save_model(init_model(AuMConfig(**TINY)), tmp_path / "first", preprocessing=prep)
    other = model_files.save_model(init_model(AuMConfig(**{**TINY, "depth": 3})), tmp_path / "other",
                                   preprocessing=prep)
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, np.random.default_rng(0).normal(scale=0.1, size=16000).astype(np.float32), 16000)
    cache = tmp_path / "cache"

    cold_top, cold = _predict(first, wav, cache)
    folder = warm_start.compilation_cache_dir().name  # this jax's and this machine's folder
    assert str(cache / "xla" / folder) in cold
    assert _counts(cold)[1] >= 1  # the forward was compiled and written
    programs = set(os.listdir(cache / "xla" / folder))
    assert len(list((cache / "traced" / "skeleton").iterdir())) == 1

    warm_top, warm = _predict(first, wav, cache)
    assert warm_top == cold_top
    loaded, written = _counts(warm)
    assert loaded >= 1 and written == 0  # the forward is loaded and nothing is compiled (nor traced: no build program)
    assert set(os.listdir(cache / "xla" / folder)) == programs

    _, another = _predict(other, wav, cache)
    assert _counts(another)[1] >= 1  # another model's programs are its own
    assert set(os.listdir(cache / "xla" / folder)) > programs
    assert len(list((cache / "traced" / "skeleton").iterdir())) == 2
