"""Shared test set-up: real-process fixtures, the scenario directory, and a guard against tasks
left running after an async test."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

pytest_plugins = ["tests.promfixtures", "tests.kubefixtures", "tests.faultledger"]

# Property tests: no per-example deadline (these machines are noisy); the ledger fixture is shared
# by a test's examples on purpose. In CI the examples are derandomized, so a run is reproducible.
settings.register_profile(
    "rollbackd",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("rollbackd-ci", parent=settings.get_profile("rollbackd"), derandomize=True)
settings.load_profile("rollbackd-ci" if os.environ.get("CI") else "rollbackd")

#: The labelled release recordings live beside the repository, in shared/scenarios.
SCENARIOS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "scenarios"


@pytest.fixture
def scenarios_dir() -> Path:
    if not any(SCENARIOS_DIR.glob("*.json")):
        pytest.skip(f"no scenario recordings in {SCENARIOS_DIR} (shared/ must sit beside the repo)")
    return SCENARIOS_DIR


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every async test gets the leftover-task guard."""
    for item in items:
        if isinstance(item, pytest.Function) and asyncio.iscoroutinefunction(item.obj):
            item.fixturenames.append("no_leftover_tasks")


@pytest.fixture
async def no_leftover_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves tasks of its own running: every task must be awaited on shutdown."""
    before = set(asyncio.all_tasks())
    yield
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
    if leftover:
        await asyncio.sleep(0.05)
        leftover = [t for t in leftover if not t.done()]
    for task in leftover:
        task.cancel()
    assert not leftover, f"tasks left running after the test: {[t.get_name() for t in leftover]}"
