"""Query presets: each metric shape read end to end, and the batching they share.

For every preset, real sample apps expose their metrics in that shape (names and labels of
kube-prometheus' ServiceMonitor scrapes, Istio's standard metrics, OpenTelemetry's semantic
conventions), a real Prometheus (and a real VictoriaMetrics) scrapes them, and the real daemon
reads them with the preset alone: the canary failing 30% of its requests is judged immediate, the
healthy one not, and the latencies come out in milliseconds whatever the buckets' unit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rollbackd.config.loader import ConfigError, load_settings
from rollbackd.config.presets import PRESETS, preset_names
from rollbackd.config.settings import (
    HttpSettings,
    PrometheusSettings,
    QueryOverride,
    QuerySettings,
    Settings,
    Side,
    StoreSettings,
    TargetSettings,
)
from rollbackd.daemon.wiring import open_daemon
from rollbackd.sources import promql
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource
from rollbackd.sources.targets import source_target, source_targets
from tests.kubefixtures import wait_until
from tests.promfixtures import PrometheusFactory, SampleAppFactory
from tests.test_daemon import ScriptedHealth
from tests.vmfixtures import VictoriaMetricsServer, require_victoria_metrics

NAMESPACE = "shop"
#: Requests per second each app serves itself: a 30% failure rate stands out within two intervals.
RPS = 60.0


def canary(name: str, *, preset: str | None = None, stable: str = "checkout") -> TargetSettings:
    queries = QueryOverride(preset=preset) if preset is not None else QueryOverride()
    return TargetSettings(
        name=name,
        namespace=NAMESPACE,
        strategy="canary",
        ingress=f"{name}-canary",
        baseline=Side(deployment=stable),
        candidate=Side(deployment=name),
        queries=queries,
    )


# --- the presets as data ----------------------------------------------------------------------


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_plans_its_three_queries_per_shard(name: str) -> None:
    settings = Settings(
        defaults={"queries": QuerySettings(preset=name)},
        targets=tuple(canary(f"app-{i}", stable=f"app-{i}-stable") for i in range(10)),
    )
    plan = promql.plan(source_targets(settings), window_s=10.0, shards=2)
    assert plan.invalid == {}
    assert plan.query_count == 6  # 3 queries x 2 shards, whatever the number of targets
    preset = PRESETS[name]
    for batch in plan.batches:
        for text in batch.queries.values():
            for label in preset.required_labels:
                assert f"{label}=" in text or f"{label}=~" in text, (label, text)


def test_targets_of_four_presets_are_four_groups_of_batches() -> None:
    settings = Settings(
        targets=tuple(
            canary(f"{name}-{i}", preset=None if name == "default" else name, stable=f"{name}-{i}-stable")
            for name in preset_names()
            for i in range(5)
        ),
    )
    plan = promql.plan(source_targets(settings), window_s=10.0, shards=2)
    assert plan.query_count == 4 * 3 * 2
    assert len({batch.templates for batch in plan.batches}) == 4


def test_kube_prometheus_selects_a_deployment_by_its_pods_names() -> None:
    settings = Settings(
        defaults={"queries": QuerySettings(preset="kube-prometheus")},
        targets=(canary("checkout-canary"),),
    )
    plan = promql.plan(source_targets(settings), window_s=10.0, shards=1)
    (batch,) = plan.batches
    assert batch.queries[promql.Metric.REQUESTS] == (
        'sum by (namespace, deployment) (label_replace(increase(http_requests_total{namespace="shop",'
        'pod=~"(?:checkout|checkout-canary)-[a-z0-9]+-[a-z0-9]+"}[10s]), '
        '"deployment", "$1", "pod", "(.+)-[a-z0-9]+-[a-z0-9]+"))'
    )


def test_istio_reads_the_sides_from_destination_workload() -> None:
    settings = Settings(targets=(canary("checkout-canary", preset="istio"),))
    source = source_target(settings, settings.targets[0])
    assert source.candidate.labels == (
        ("destination_workload_namespace", "shop"), ("destination_workload", "checkout-canary"),
    )
    assert source.queries.bucket_unit_s == 0.001


def test_explicit_keys_replace_the_presets(tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text(yaml.safe_dump({
        "defaults": {"queries": {"preset": "kube-prometheus", "group_labels": ["namespace", "service"]}},
        "targets": [
            {**_canary_doc("checkout"), "baseline": {"deployment": "checkout", "labels": {"service": "co"}},
             "candidate": {"deployment": "checkout-canary", "labels": {"service": "co-canary"}}},
            {**_canary_doc("search"), "queries": {"preset": "istio"}},
        ],
    }))
    settings = load_settings(path, environ={})
    by_service, istio = (source_target(settings, target) for target in settings.targets)
    # Told apart by their Services: kube-prometheus' templates, the target's labels.
    assert by_service.queries.requests == PRESETS["kube-prometheus"].requests
    assert by_service.candidate.labels == (("namespace", "shop"), ("service", "co-canary"))
    assert by_service.queries.pod_prefix is None
    # A target naming its own preset starts from that preset alone.
    assert istio.queries.group_labels == PRESETS["istio"].group_labels


def _canary_doc(name: str) -> dict[str, Any]:
    return {
        "name": name, "namespace": NAMESPACE, "strategy": "canary", "ingress": f"{name}-canary",
        "baseline": {"deployment": name}, "candidate": {"deployment": f"{name}-canary"},
    }


def test_an_unknown_preset_is_named_with_the_known_ones(tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text("defaults:\n  queries:\n    preset: prometheus-operator\n")
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    message = str(raised.value)
    assert f"{path}:3: defaults.queries.preset" in message
    assert "expected one of 'default', 'kube-prometheus', 'istio', 'otel', got 'prometheus-operator'" in (
        message
    )


def test_a_side_cannot_set_the_label_its_deployment_fills(tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.yaml"
    doc = _canary_doc("checkout")
    doc["queries"] = {"preset": "istio"}
    doc["candidate"] = {"deployment": "checkout-canary", "labels": {"destination_workload": "x"}}
    path.write_text(yaml.safe_dump({"targets": [doc]}))
    with pytest.raises(ConfigError) as raised:
        load_settings(path, environ={})
    assert (
        "targets[0].candidate.labels.destination_workload (target checkout): label"
        " 'destination_workload' cannot be set here: its value is the side's 'deployment'"
    ) in str(raised.value)


# --- each preset end to end -------------------------------------------------------------------


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[Callable[[Sequence[str]], VictoriaMetricsServer]]:
    """Starts a VictoriaMetrics scraping the given targets every half second, answering at once
    (no latency offset); stopped at teardown."""
    started: list[VictoriaMetricsServer] = []

    def start(targets: Sequence[str]) -> VictoriaMetricsServer:
        server = VictoriaMetricsServer(binary=require_victoria_metrics(), targets=targets,
                                       data_dir=tmp_path / "vm", latency_offset="0s", scrape_interval_s=0.5)
        started.append(server.start())
        server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.mark.parametrize(
    ("shape", "backend"),
    [
        *((shape, "prometheus") for shape in ("kube-prometheus", "istio", "otel", "default")),
        # The second implementation of the query API: label_replace, the millisecond buckets.
        *((shape, "victoria-metrics") for shape in ("kube-prometheus", "istio", "otel")),
    ],
)
async def test_a_preset_reads_its_shape_and_the_failing_canary_is_judged(
    shape: str,
    backend: str,
    sample_apps: SampleAppFactory,
    prometheus_factory: PrometheusFactory,
    victoria_metrics: Callable[[Sequence[str]], VictoriaMetricsServer],
    tmp_path: Path,
) -> None:
    apps = {
        name: sample_apps(deployment=name, namespace=NAMESPACE, rps=RPS, shape=shape, seed=index,
                          error_rate=0.3 if name == "spike-canary" else 0.002, latency_ms=20.0)
        for index, name in enumerate(("checkout", "steady-canary", "spike-canary"))
    }
    addresses = [app.address for app in apps.values()]
    server = (
        prometheus_factory(targets=addresses, scrape_interval_s=0.5) if backend == "prometheus"
        else victoria_metrics(addresses)
    )
    settings = Settings(
        interval_s=1.0,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        prometheus=PrometheusSettings(url=server.url, scrape_interval_s=0.5),
        defaults={
            "queries": QuerySettings(preset=shape),
            "detection": {"confirm_intervals": 2, "min_requests": 20, "min_latency_samples": 20},
        },
        targets=(canary("steady-canary"), canary("spike-canary")),
    )
    async with (
        PrometheusClient(base_url=server.url) as client,
        open_daemon(
            settings, metrics_source=PrometheusSource(client=client), health_source=ScriptedHealth()
        ) as daemon,
        aiohttp.ClientSession() as session,
    ):
        async def targets() -> dict[str, Any]:
            async with session.get(f"http://127.0.0.1:{daemon.port}/api/v1/targets") as response:
                listing: dict[str, Any] = await response.json()
            return {key.split("/")[1]: value for key, value in listing["targets"].items()}

        async def judged() -> bool:
            shown = await targets()
            decisions = [shown[name]["decision"] for name in ("steady-canary", "spike-canary")]
            return all(d is not None and d["outcome"] != "inconclusive" for d in decisions) and (
                decisions[1]["outcome"] == "immediate"
            )

        await wait_until(judged, timeout_s=90, what=f"both canaries judged through the {shape} preset")
        shown = await targets()
        assert shown["steady-canary"]["decision"]["outcome"] == "none"
        evidence = shown["spike-canary"]["evidence"]
        assert evidence["impact"] == "severe"
        assert evidence["attributable"]
        latencies = _p95s(shown["steady-canary"])
        assert latencies
        assert all(5.0 < p95 < 200.0 for p95 in latencies), latencies


def _p95s(target: dict[str, Any]) -> list[float]:
    """The P95 latencies (milliseconds) of both sides the target's p95 finding reports."""
    found: list[float] = []
    for finding in target["evidence"]["findings"]:
        if finding["signal"] == "p95":
            found += [float(v) for v in (finding["value"], finding["baseline_value"]) if v is not None]
    return found
