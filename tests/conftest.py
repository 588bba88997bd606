"""Shared fixtures and session settings: the absl flags grain needs, one XLA compilation cache and one aum-jax
cache per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from absl import flags

# grain's worker processes read absl flags; outside absl.app.run they need parsing.
flags.FLAGS.mark_as_parsed()

# One XLA compilation cache per test session, shared by the pytest workers and every process
# they start (set before any test module imports JAX): dozens of tests train, evaluate and
# predict with the same toy models, and each fresh process would compile the same programs
# again. Compiled programs are keyed by their HLO, the XLA flags and the JAX version.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="aum_jax_test_xla_cache_")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # the toy programs compile in < 1 s each.

# Everything else aum-jax caches (the traced model skeletons of aum_jax.core.warm_start, the demo's
# data unless a test names its own folder) goes to one folder per session, not the user's home.
_OWN_AUM_CACHE = "AUM_JAX_CACHE" not in os.environ
if _OWN_AUM_CACHE:
    os.environ["AUM_JAX_CACHE"] = tempfile.mkdtemp(prefix="aum_jax_test_cache_")

# The tests check numbers, not speed: XLA's CPU backend with LLVM at -O0 compiles the suite's
# hundreds of small programs a third faster (tests/models and tests/ops: 448 s -> 291 s of CPU)
# and emits the same arithmetic (XLA's CPU fast-math is off at every level). Processes the tests
# start inherit it; a test that sets XLA_FLAGS itself adds its flags to these.
if "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
    if _OWN_AUM_CACHE:
        shutil.rmtree(os.environ["AUM_JAX_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    from tests.helpers import FIXTURES  # after the cache settings above: helpers imports JAX.

    return FIXTURES


@pytest.fixture(scope="module")
def toy_overrides(tmp_path_factory) -> list[str]:
    """Command-line overrides that train the Speech Commands runlocal recipe on the toy set in seconds."""
    from tests.helpers import write_toy_dataset

    paths = write_toy_dataset(tmp_path_factory.mktemp("toy"), clips_per_class=4)
    return [f"--config.data.train_datafile={paths['train']}", f"--config.data.validation_datafile={paths['eval']}",
            f"--config.data.test_datafile={paths['eval']}", f"--config.data.label_csv={paths['label_csv']}",
            "--config.data.num_classes=2", "--config.model.depth=1", "--config.model.embed_dim=32",
            "--config.data.num_mel_bins=32", "--config.data.audio_length=32", "--config.train.num_steps=2"]
