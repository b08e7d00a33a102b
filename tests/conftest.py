"""Shared fixtures: the protocol samples (copied byte-exact from shared/omaha-samples)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent


def sample(name: str) -> bytes:
    """Return the raw bytes of one sample document in tests/data/."""
    return (DATA / name).read_bytes()


@pytest.fixture
def samples_dir() -> Path:
    return DATA
