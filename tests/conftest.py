"""Shared test helpers: fixture paths and small, fast defaults."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from absl import flags

FIXTURES = Path(__file__).parent / "fixtures"

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


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
