"""A daemon whose targets' levers need no Kubernetes (a command, a feature flag) runs without any: a
real ``rollbackd run`` process with no kubeconfig, no service account and no in-cluster
environment says so when it starts, and rolls a bad release back with its command, closed loop (a
real sample app scraped by a real Prometheus; the command calls the app's admin endpoint)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kubefixtures import wait_until
from tests.promfixtures import HOST, PrometheusFactory, SampleAppFactory, free_port
from tests.test_daemon_command import FLIP_BACK
from tests.test_history_processes import Daemon, ready, target_view

KEY = "shop/checkout"
#: Where a process would find Kubernetes: none of them reaches the daemon.
KUBERNETES_ENV = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")


def without_kubernetes(home: Path) -> dict[str, str]:
    """This process' environment with no way to Kubernetes: no kubeconfig (``HOME`` is empty), no
    in-cluster variables; and no ``ROLLBACKD_*`` setting."""
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith("ROLLBACKD_") and k not in KUBERNETES_ENV}
    environ["HOME"] = str(home)
    return environ


@pytest.mark.e2e
async def test_a_command_target_is_rolled_back_without_any_kubernetes_access(
    sample_apps: SampleAppFactory, prometheus_factory: PrometheusFactory, tmp_path: Path
) -> None:
    app = sample_apps(deployment="checkout", namespace="shop", rps=40.0, error_rate=0.002, seed=7)
    prometheus = prometheus_factory(targets=[app.address], scrape_interval_s=1.0, scrapes=3)
    port = free_port()
    config = tmp_path / "rollbackd.yaml"
    config.write_text(yaml.safe_dump({
        "interval_s": 1.0,
        "prometheus": {"url": prometheus.url, "timeout_s": 2, "retries": 0, "scrape_interval_s": 1},
        "http": {"host": HOST, "port": port},
        "log": {"level": "INFO", "format": "json"},
        "store": {"data_dir": str(tmp_path / "data")},
        "verification": {"window_s": 3},
        "defaults": {"policy": {"cooldown_s": 0}},
        "targets": [{
            "name": "checkout", "namespace": "shop", "strategy": "command",
            "candidate": {"deployment": "checkout"},
            "command": {"argv": [sys.executable, "-c", FLIP_BACK, f"{app.url}/control"], "timeout_s": 30},
        }],
    }))  # fmt: skip
    home = tmp_path / "home"
    home.mkdir()
    daemon = Daemon(config, tmp_path / "rollbackd.log", environ=without_kubernetes(home))
    await daemon.start()
    try:
        await ready(port, daemon)
        said = [line for line in daemon.lines() if line.get("kubernetes") == "off"]
        assert [line["msg"] for line in said] == [
            "no Kubernetes access, and none needed: the feature-flag and command targets (shop/checkout) "
            "are rolled back without it"
        ], daemon.tail()
        assert said[0]["level"] == "INFO"

        async def judged_healthy_for(seconds: float) -> bool:
            view = await target_view(port, KEY)
            lifetime = (view or {}).get("lifetime") or {}
            return bool(view and view["state"] == "healthy" and lifetime.get("judged_s", 0) >= seconds)

        await wait_until(lambda: judged_healthy_for(15), timeout_s=60, interval_s=0.5,
                         what=lambda: f"15 s judged healthy: {daemon.tail()}")
        await app.acontrol(error_rate=0.38)

        async def verified() -> dict[str, Any] | None:
            view = await target_view(port, KEY)
            rollback = (view or {}).get("rollback") or {}
            return view if rollback.get("phase") == "verified" else None

        async def is_verified() -> bool:
            return await verified() is not None

        await wait_until(is_verified, timeout_s=90, interval_s=0.5,
                         what=lambda: f"rolled back by the command and verified: {daemon.tail()}")
        view = await verified()
        assert view is not None
        assert view["rollback"]["action"]["action"] == "command"
        assert view["rollback"]["action"]["outcome"] == "done"
        assert (await app.acontrol())["error_rate"] == 0.0  # the command put it back
    finally:
        assert await daemon.stop() == 0, daemon.tail()
