"""A real VictoriaMetrics single-node server for tests: it scrapes sample apps itself and answers the
Prometheus query API, with its own ``-search.latencyOffset``.

- :func:`victoria_metrics_binary` (``$ROLLBACKD_TEST_VICTORIA_METRICS``, else ``victoria-metrics``
  on the PATH, as Debian's package installs it; ``scripts/ensure-services.sh`` installs it);
- :func:`require_victoria_metrics`: the binary, or skip the test saying why;
- :class:`VictoriaMetricsServer` (``start()``, ``wait_ready()``, ``wait_for_samples()``, ``stop()``).

Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import pytest

from rollbackd.demo.processes import HOST, ProcessStartError, _http_get, _Process, _tail, free_port

#: Environment variable naming the VictoriaMetrics binary (else ``victoria-metrics`` on the PATH).
VICTORIA_METRICS_ENV = "ROLLBACKD_TEST_VICTORIA_METRICS"


def victoria_metrics_binary() -> str | None:
    configured = os.environ.get(VICTORIA_METRICS_ENV)
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("victoria-metrics")


def require_victoria_metrics() -> str:
    binary = victoria_metrics_binary()
    if binary is None:
        pytest.skip(
            "needs a VictoriaMetrics server binary: no 'victoria-metrics' on the PATH (Debian package "
            f"victoria-metrics; scripts/ensure-services.sh installs it) nor in ${VICTORIA_METRICS_ENV}"
        )
    return binary


class VictoriaMetricsServer(_Process):
    """VictoriaMetrics scraping ``targets`` every ``scrape_interval_s``; ``latency_offset`` is its
    ``-search.latencyOffset`` (``None``: its default, 30 s); ``extra_args`` go on its command line
    (``-tls``, ``-httpAuth.*``), and ``tls`` says it serves https (then its own readiness checks
    cannot get in: wait through a client that can, ``tests.backendfixtures.wait_for_data``)."""

    name = "victoria-metrics"

    def __init__(
        self,
        *,
        binary: str,
        targets: Sequence[str],
        data_dir: Path,
        latency_offset: str | None = None,
        scrape_interval_s: float = 1.0,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        tls: bool = False,
    ) -> None:
        self.binary = binary
        self.targets = tuple(targets)
        self.data_dir = data_dir
        self.latency_offset = latency_offset
        self.scrape_interval_s = scrape_interval_s
        self.port = port if port is not None else free_port()
        self.extra_args = tuple(extra_args)
        self.tls = tls
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = data_dir / "scrape.yml"
        super().__init__(log_path=data_dir / "victoria-metrics.log")

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def _command(self) -> list[str]:
        command = [
            self.binary,
            f"-httpListenAddr={HOST}:{self.port}",
            f"-storageDataPath={self.data_dir / 'data'}",
            f"-promscrape.config={self.config_path}",
            "-loggerLevel=ERROR",
        ]
        if self.latency_offset is not None:
            command.append(f"-search.latencyOffset={self.latency_offset}")
        return [*command, *self.extra_args]

    def _ready_url(self) -> str:
        return f"{self.url}/health"

    def start(self) -> Self:
        interval = f"{round(self.scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval},
            "scrape_configs": [{
                "job_name": "sampleapp",
                "honor_labels": True,
                "static_configs": [{"targets": list(self.targets)}],
            }],
        }
        self.config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        self._spawn()
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        status, body = _http_get(url, timeout_s=10.0)
        document = json.loads(body)
        if status != 200 or document.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: HTTP {status} {document}")
        result: list[dict[str, Any]] = document["data"]["result"]
        return result

    def wait_for_samples(self, promql: str, *, timeout_s: float = 90.0) -> None:
        """Block until ``promql`` answers with data: with the default latency offset, samples
        become visible only 30 s after they were scraped."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                if self.query(promql):
                    return
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"VictoriaMetrics has no answer to {promql!r} after {timeout_s:g}s; log "
                    f"{self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.5)
