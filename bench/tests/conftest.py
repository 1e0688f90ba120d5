"""Fixtures of the benchmarks' own tests (``make test`` runs them with the product's suite)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.detection import DEFAULT_SCENARIOS_DIR


@pytest.fixture
def scenarios_dir() -> Path:
    """The labelled release recordings (shared/scenarios beside the repository); the test is
    skipped, saying where they were looked for, when they are not there."""
    if not any(DEFAULT_SCENARIOS_DIR.glob("*.json")):
        pytest.skip(f"no scenario recordings in {DEFAULT_SCENARIOS_DIR} (shared/ must sit beside the repo)")
    return DEFAULT_SCENARIOS_DIR
