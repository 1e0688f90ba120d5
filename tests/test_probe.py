"""``rollbackd check-config --probe`` and the daemon's start-up probe: does each target's query find
its series, and when not, what is probably wrong and which preset fits.

Real sample apps expose their metrics the way a ServiceMonitor scrape labels them (namespace,
service, pod, job: no deployment label) or as Istio's proxies do, a real Prometheus scrapes them,
and the real command is run as a process.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rollbackd.config.settings import HttpSettings, Settings, StoreSettings, TargetSettings
from rollbackd.daemon.wiring import open_daemon
from rollbackd.sources.prometheus import PrometheusClient, QueryResult
from tests.kubefixtures import wait_until
from tests.promfixtures import PrometheusFactory, PrometheusServer, SampleAppFactory
from tests.test_daemon import ScriptedHealth
from tests.test_daemon_episodes import Intervals

NAMESPACE = "shop"


def _target(name: str, *, preset: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name, "namespace": NAMESPACE, "strategy": "canary", "ingress": f"{name}-canary",
        "baseline": {"deployment": name}, "candidate": {"deployment": f"{name}-canary"},
    }
    if preset is not None:
        doc["queries"] = {"preset": preset}
    return doc


def _config(tmp_path: Path, prometheus: PrometheusServer, targets: list[dict[str, Any]]) -> Path:
    path = tmp_path / "rollbackd.yaml"
    path.write_text(yaml.safe_dump({
        "prometheus": {"url": prometheus.url, "scrape_interval_s": 0.5, "retries": 0},
        "targets": targets,
    }))
    return path


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rollbackd", "check-config", "--ignore-env", "--probe", str(path)],
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture
def cluster(sample_apps: SampleAppFactory, prometheus_factory: PrometheusFactory) -> PrometheusServer:
    """``checkout`` and ``checkout-canary`` scraped as kube-prometheus labels them, ``search`` and
    ``search-canary`` as Istio's proxies report them."""
    apps = [
        sample_apps(deployment=name, namespace=NAMESPACE, rps=20.0, shape=shape, seed=index)
        for index, (name, shape) in enumerate([
            ("checkout", "kube-prometheus"), ("checkout-canary", "kube-prometheus"),
            ("search", "istio"), ("search-canary", "istio"),
        ])
    ]
    return prometheus_factory(targets=[app.address for app in apps], scrape_interval_s=0.5)


def test_a_mislabelled_target_is_found_and_the_fitting_preset_named(
    cluster: PrometheusServer, tmp_path: Path
) -> None:
    path = _config(tmp_path, cluster, [_target("checkout"), _target("search")])
    done = _check(path)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"{path}: OK (2 targets)"
    assert (
        'shop/checkout candidate: BLIND: no series of http_requests_total{namespace="shop",'
        'deployment="checkout-canary"} in the last 5m; series of http_requests_total in namespace shop'
        " carry labels code, instance, job, namespace, pod, service (no deployment)"
        " — try the kube-prometheus preset"
    ) in lines
    assert any(line.startswith("shop/checkout baseline: BLIND: ") for line in lines)
    assert (
        'shop/search candidate: BLIND: no series of http_requests_total{namespace="shop",'
        'deployment="search-canary"} in the last 5m; series of http_requests_total in namespace shop'
        " carry labels code, instance, job, namespace, pod, service (no deployment)"
        " — try the istio preset"
    ) in lines
    assert "2 of 2 targets would be blind: shop/checkout, shop/search" in done.stderr


def test_targets_with_the_fitting_presets_see_their_series(cluster: PrometheusServer, tmp_path: Path) -> None:
    path = _config(tmp_path, cluster, [_target("checkout", preset="kube-prometheus"),
                                        _target("search", preset="istio")])
    done = _check(path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()[1:]
    assert len(lines) == 4
    checkout = next(line for line in lines if line.startswith("shop/checkout candidate: "))
    pods = 'pod=~"checkout-canary-[a-z0-9]+-[a-z0-9]+"'
    assert f'series (http_requests_total{{namespace="shop",{pods}}})' in checkout
    assert checkout.endswith("with labels code, instance, job, namespace, pod, service")
    search = next(line for line in lines if line.startswith("shop/search baseline: "))
    assert search.startswith("shop/search baseline: 1 series (istio_requests_total{reporter=\"destination\",")
    assert search.endswith(
        "with labels destination_workload, destination_workload_namespace, instance, job, reporter,"
        " response_code"
    )


def test_an_unreachable_prometheus_makes_every_target_blind(tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text(yaml.safe_dump({
        "prometheus": {"url": "http://127.0.0.1:9", "retries": 0, "timeout_s": 2},
        "targets": [_target("checkout")],
    }))
    done = _check(path)
    assert done.returncode == 1
    assert "shop/checkout: not probed: cannot reach Prometheus at http://127.0.0.1:9" in done.stdout


# --- at daemon start-up ------------------------------------------------------------------------


def _settings(tmp_path: Path, targets: Sequence[TargetSettings]) -> Settings:
    return Settings(
        interval_s=0.1,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        targets=tuple(targets),
    )


async def test_the_daemon_shows_a_blind_target_on_its_status_page(
    cluster: PrometheusServer, tmp_path: Path
) -> None:
    settings = _settings(tmp_path, [TargetSettings.model_validate(_target("checkout"))])
    async with (
        PrometheusClient(base_url=cluster.url) as client,
        open_daemon(settings, metrics_source=Intervals(lambda i: (None, None)),
                    health_source=ScriptedHealth(), probe=client) as daemon,
        aiohttp.ClientSession() as session,
    ):
        async def page() -> str:
            async with session.get(f"http://127.0.0.1:{daemon.port}/") as response:
                return await response.text()

        async def shown() -> bool:
            return "would be blind" in await page()

        await wait_until(shown, timeout_s=30, what="the probe's alert on the status page")
        text = await page()
        assert "1 target would be blind (no series found at " in text
        assert "UTC):" in text
        assert "try the kube-prometheus preset" in text


class Stuck:
    """A Prometheus that never answers the probe."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def query(self, promql_text: str, *, max_answer_bytes: int | None = None) -> QueryResult:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_probe_that_never_ends_does_not_hold_the_ticks(tmp_path: Path) -> None:
    settings = _settings(tmp_path, [TargetSettings.model_validate(_target("checkout"))])
    stuck = Stuck()
    metrics = Intervals(lambda i: (None, None))
    async with open_daemon(settings, metrics_source=metrics, health_source=ScriptedHealth(),
                           probe=stuck) as daemon:
        await wait_until(stuck.asked.is_set, timeout_s=30, what="the probe asking")
        await wait_until(lambda: daemon.ticks >= 5, timeout_s=30, what="five ticks beside the probe")
        assert daemon.state.probe is None
    # Leaving the daemon stopped the probe with it (the test's task guard would see it left over).
