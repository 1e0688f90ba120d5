"""Real processes for tests and benchmarks: sample apps and a Prometheus scraping them.

The helpers live in :mod:`rollbackd.demo.processes` (the demo runs the same processes) and are
re-exported here:

- :func:`free_port`, :func:`prometheus_binary` (``$ROLLBACKD_TEST_PROMETHEUS``, else
  ``prometheus`` on the PATH);
- :func:`start_sample_app` / :func:`astart_sample_app` → :class:`SampleAppProcess`
  (``control()`` / ``acontrol()`` switch its behaviour, ``stop()`` ends it);
- :func:`start_prometheus` / :func:`astart_prometheus` → :class:`PrometheusServer`
  (``stop()``, ``start()`` / ``restart()`` on the same port and data, ``wait_for_scrapes()``).

Pytest fixtures (enable with ``pytest_plugins = ["tests.promfixtures"]`` in conftest.py):

- ``sample_apps``: a factory starting sample apps, all stopped at teardown;
- ``prometheus_factory``: a factory starting Prometheus servers over given scrape targets, all
  stopped at teardown; skips the test with the reason when the ``prometheus`` binary is missing.

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rollbackd.demo.processes import (
    HOST,
    ProcessStartError,
    PrometheusServer,
    SampleAppProcess,
    astart_prometheus,
    astart_sample_app,
    find_prometheus,
    free_port,
    start_prometheus,
    start_sample_app,
)

__all__ = [
    "HOST",
    "PROMETHEUS_ENV",
    "ProcessStartError",
    "PrometheusFactory",
    "PrometheusServer",
    "SampleAppFactory",
    "SampleAppProcess",
    "astart_prometheus",
    "astart_sample_app",
    "free_port",
    "prometheus_binary",
    "prometheus_factory",
    "require_prometheus",
    "sample_apps",
    "start_prometheus",
    "start_sample_app",
]

#: Environment variable naming the Prometheus binary (else ``prometheus`` on the PATH).
PROMETHEUS_ENV = "ROLLBACKD_TEST_PROMETHEUS"


def prometheus_binary() -> str | None:
    """The Prometheus server binary to use, or ``None`` when there is none."""
    configured = os.environ.get(PROMETHEUS_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return find_prometheus()


# Pytest fixtures

SampleAppFactory = Callable[..., SampleAppProcess]
PrometheusFactory = Callable[..., PrometheusServer]


def require_prometheus() -> str:
    """The Prometheus binary, or skip the running test saying why."""
    binary = prometheus_binary()
    if binary is None:
        pytest.skip(f"needs a Prometheus server binary: none on the PATH (or in ${PROMETHEUS_ENV})")
    return binary


@pytest.fixture
def sample_apps(tmp_path: Path) -> Iterator[SampleAppFactory]:
    """``sample_apps(deployment=..., namespace=..., rps=..., ...)`` starts a sample app and waits
    for it; every app started is stopped at teardown."""
    started: list[SampleAppProcess] = []

    def factory(**options: Any) -> SampleAppProcess:
        options.setdefault("log_dir", tmp_path)
        app = start_sample_app(**options)
        started.append(app)
        return app

    yield factory
    for app in started:
        app.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[PrometheusFactory]:
    """``prometheus_factory(targets=[...], scrape_interval_s=1.0)`` starts Prometheus over those
    scrape targets and waits for its first scrapes; skips the test when Prometheus is missing.
    Every server started is stopped at teardown."""
    binary = require_prometheus()
    started: list[PrometheusServer] = []

    def factory(**options: Any) -> PrometheusServer:
        options.setdefault("binary", binary)
        options.setdefault("data_dir", tmp_path / f"prometheus-{len(started)}")
        server = start_prometheus(**options)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()
