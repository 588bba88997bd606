"""Shared test helpers: fixture paths and small, fast defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from absl import flags

FIXTURES = Path(__file__).parent / "fixtures"

# grain's worker processes read absl flags; outside absl.app.run they need parsing.
flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
