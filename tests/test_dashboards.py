"""The chart's Grafana dashboard against a real Prometheus scraping a running daemon.

``rollbackd run`` runs as a real process against the emulated cluster (a canary behind an
ingress-nginx canary Ingress, emulated deployment and EndpointSlice controllers), reading real
sample apps through a real Prometheus, which also scrapes the daemon's ``/metrics`` every second.
The daemon starts before Prometheus answers (its first collections fail), judges the canary
healthy, then bad; aborts it (the canary app then serves no more traffic, as the abort routes none
to it); verifies the rollback; then its configuration file is changed three
times: a target added (applied), a mistake (refused), the original back (applied; the added
target's series go away).

Then every query of the dashboard (panels, annotation) is run as Grafana would, with its variables
given values (``$job`` the scrape job, ``$namespace`` and ``$target`` the canary's, the intervals
fitting one-second scrapes): each returns data, over the test's time range (a range query) or at
its end (the panels' instant queries); the variables' own queries find the job, the namespace and
the target. A few panels are checked for what they must show after this story.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rollbackd.demo.emulator import ClusterEmulator, Controllers
from rollbackd.demo.scenarios import NAMESPACE, canary_scenario
from tests.kubefixtures import wait_until
from tests.promfixtures import (
    HOST,
    PrometheusServer,
    SampleAppProcess,
    astart_sample_app,
    free_port,
    require_prometheus,
)
from tests.test_chart_monitoring import DASHBOARD, dashboard_exprs

pytestmark = pytest.mark.e2e

JOB = "rollbackd"
TARGET = "web"
STORY_TIMEOUT_S = 120.0


@dataclass
class Story:
    """What the test ran, and the time range it covers."""

    prometheus: PrometheusServer
    api: str
    started: float
    ended: float
    config: Path


def daemon_config(*, tmp_path: Path, kubeconfig: Path, prometheus_port: int, port: int,
                  stable: SampleAppProcess, canary: SampleAppProcess) -> dict[str, Any]:
    target = canary_scenario().target({"stable": stable.url, "canary": canary.url})
    return {
        "interval_s": 1,
        # Room for a loaded machine: a health probe timing out on two ticks running is a severe
        # breach, a rollback before the story's healthy decision.
        "prometheus": {"url": f"http://{HOST}:{prometheus_port}", "timeout_s": 5, "retries": 0,
                       "scrape_interval_s": 1},
        "health": {"timeout_s": 5},
        "http": {"host": HOST, "port": port},
        "log": {"format": "json", "level": "INFO"},
        "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "availability_timeout_s": 30},
        "store": {"data_dir": str(tmp_path / "data")},
        "events": {"kubernetes_events": True},
        "verification": {"window_s": 5, "max_wait_s": 30},
        "defaults": {
            "detection": {"window_s": 5, "baseline_window_s": 120},
            "policy": {"controlled_grace_s": 5, "cooldown_s": 300},
        },
        "targets": [target.model_dump(mode="json", exclude_defaults=True)],
    }


async def api_target(session: aiohttp.ClientSession, api: str) -> dict[str, Any]:
    async with session.get(f"{api}/api/v1/targets/{NAMESPACE}/{TARGET}") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def query(session: aiohttp.ClientSession, prometheus: PrometheusServer, path: str,
                params: dict[str, str]) -> list[dict[str, Any]]:
    async with session.post(f"{prometheus.url}/api/v1/{path}", data=params) as response:
        document = await response.json()
    assert response.status == 200, f"{path} {params}: {document}"
    assert document["status"] == "success", document
    result: list[dict[str, Any]] = document["data"]["result"] if path != "series" else document["data"]
    return result


async def value_now(
    session: aiohttp.ClientSession, prometheus: PrometheusServer, promql: str
) -> float | None:
    found = await query(session, prometheus, "query", {"query": promql})
    return float(found[0]["value"][1]) if found else None


@pytest.fixture
async def story(kube_cluster: ClusterEmulator, tmp_path: Path) -> AsyncIterator[Story]:
    binary = require_prometheus()
    scenario = canary_scenario()
    scenario.seed(kube_cluster)
    stable, canary = await asyncio.gather(
        astart_sample_app(deployment="web", namespace=NAMESPACE, rps=100.0, error_rate=0.002, latency_ms=20.0,
                          seed=1, log_dir=tmp_path),
        astart_sample_app(deployment="web-canary", namespace=NAMESPACE, rps=60.0, error_rate=0.002,
                          latency_ms=20.0, seed=2, log_dir=tmp_path),
    )
    prometheus_port, port = free_port(), free_port()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
        "clusters": [{"name": "emulated", "cluster": {"server": str(kube_cluster.url).rstrip("/")}}],
        "users": [{"name": "rollbackd", "user": {"token": "t"}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "rollbackd"}}],
    }))
    config = daemon_config(tmp_path=tmp_path, kubeconfig=kubeconfig, prometheus_port=prometheus_port,
                           port=port, stable=stable, canary=canary)
    path = tmp_path / "rollbackd.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    prometheus = PrometheusServer(
        targets=[stable.address, canary.address, f"{HOST}:{port}"], data_dir=tmp_path / "prometheus",
        port=prometheus_port, scrape_interval_s=1.0, binary=binary, job=JOB,
    )
    api = f"http://{HOST}:{port}"
    log = tmp_path / "rollbackd.log"
    started = time.time()
    controllers = Controllers(kube_cluster, rollout_delay_s=1.0, poll_s=0.05)
    async with controllers, aiohttp.ClientSession() as session:
        with log.open("wb") as out:
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rollbackd", "run", "--config", str(path), stdout=out, stderr=out,
            )
        try:
            await wait_until(lambda: _answers(api), timeout_s=30, interval_s=0.2, what="the daemon answering")

            async def source_down() -> bool:  # the first ticks, before Prometheus answers
                async with session.get(f"{api}/metrics") as response:
                    return "rollbackd_metrics_source_up 0.0" in (await response.text()).splitlines()

            await wait_until(source_down, timeout_s=30, interval_s=0.2, what="a collection failing")
            prometheus.start()
            await prometheus.await_ready(timeout_s=60)
            await prometheus.await_scrapes(scrapes=2, timeout_s=60)

            async def scraped(promql: str) -> bool:
                return (await value_now(session, prometheus, promql)) is not None

            async def healthy() -> bool:
                target = await api_target(session, api)
                decision = target["decision"]
                return decision is not None and decision["outcome"] == "none" and not decision["escalate"]

            await wait_until(healthy, timeout_s=60, interval_s=0.2, what="a healthy decision")
            await wait_until(lambda: scraped('rollbackd_target_state{state="healthy"} == 1'),
                             timeout_s=30, interval_s=0.2, what="the healthy state scraped")
            await canary.acontrol(error_rate=0.3)

            async def aborted() -> bool:
                rollback = (await api_target(session, api))["rollback"]
                return rollback is not None and rollback["phase"] != "acting"

            await wait_until(aborted, timeout_s=STORY_TIMEOUT_S, interval_s=0.2, what="the canary aborted")
            await canary.acontrol(rps=0)  # the canary gets no traffic any more: its side has no data

            async def verified() -> bool:
                rollback = (await api_target(session, api))["rollback"]
                return rollback is not None and rollback["phase"] == "verified"

            async def until_scraped(promql: str) -> None:
                await wait_until(lambda: scraped(promql), timeout_s=30, interval_s=0.2, what=promql)

            await wait_until(verified, timeout_s=STORY_TIMEOUT_S, interval_s=0.2, what="a verified rollback")
            await until_scraped('rollbackd_target_state{state="rolled-back"} == 1')
            # The configuration file: a target added, a mistake, then as it was.
            added = dict(config, targets=[*config["targets"], {**config["targets"][0], "name": "ghost"}])
            path.write_text(yaml.safe_dump(added, sort_keys=False), encoding="utf-8")
            await until_scraped('rollbackd_target_state{target="ghost"}')
            path.write_text(yaml.safe_dump(dict(config, interval_s=-1), sort_keys=False), encoding="utf-8")
            await until_scraped('rollbackd_config_reloads_total{result="failure"} > 0')
            path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
            await until_scraped('rollbackd_config_reloads_total{result="success"} > 1')
            await until_scraped("rollbackd_config_last_reload_successful == 1")
            yield Story(prometheus=prometheus, api=api, started=started, ended=time.time(), config=path)
        finally:
            if daemon.returncode is None:
                daemon.terminate()
                await daemon.wait()
            await prometheus.astop()
            await asyncio.gather(stable.astop(), canary.astop())


async def _answers(api: str) -> bool:
    try:
        async with aiohttp.ClientSession() as session, session.get(f"{api}/healthz") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


def grafana(expr: str, *, range_s: float) -> str:
    """``expr`` with the dashboard's variables as Grafana would fill them in for this test."""
    for name, value in (("$__rate_interval", "5s"), ("$__interval", "2s"), ("$__range", f"{round(range_s)}s"),
                        ("$job", JOB), ("$namespace", NAMESPACE), ("$target", TARGET)):
        expr = expr.replace(name, value)
    assert "$" not in expr, f"a variable left in {expr}"
    return expr


async def test_every_dashboard_query_returns_data(story: Story) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    prometheus = story.prometheus
    range_s = story.ended - story.started
    empty: list[str] = []
    at = {"time": f"{story.ended:.3f}"}
    over = {"start": f"{story.started:.3f}", "end": f"{story.ended:.3f}", "step": "1"}
    async with aiohttp.ClientSession() as session:
        for title, expr, instant in dashboard_exprs(dashboard):
            promql = grafana(expr, range_s=range_s)
            if instant:
                found = await query(session, prometheus, "query", {"query": promql, **at})
            else:
                found = await query(session, prometheus, "query_range", {"query": promql, **over})
            if not found:
                empty.append(f"{title}: {promql}")
        assert not empty, "queries that returned no data:\n" + "\n".join(empty)

        # The variables' queries (label_values(selector, label)) find this daemon's job and target.
        for variable in dashboard["templating"]["list"]:
            if variable["type"] != "query":
                continue
            definition = variable["definition"].removeprefix("label_values(").removesuffix(")")
            selector, label = definition.rsplit(", ", 1)
            series = await query(session, prometheus, "series", {
                "match[]": grafana(selector, range_s=range_s), "start": f"{story.started:.3f}",
                "end": f"{story.ended:.3f}",
            })
            values = {item[label] for item in series}
            wanted = {"job": JOB, "namespace": NAMESPACE, "target": TARGET}[variable["name"]]
            assert wanted in values, variable

        # What some panels show after this story.
        [state] = await query(session, prometheus, "query", {
            "query": grafana(_panel(dashboard, "Targets now"), range_s=range_s), **at})
        assert (state["metric"]["namespace"], state["metric"]["target"], state["metric"]["state"]) == (
            NAMESPACE, TARGET, "rolled-back")
        results = await query(session, prometheus, "query", {
            "query": grafana(_panel(dashboard, "Rollbacks by result"), range_s=range_s), **at})
        assert {item["metric"]["result"] for item in results if float(item["value"][1]) > 0} == {"verified"}
        events = await query(session, prometheus, "query", {
            "query": f'rollbackd_events_recorded_total{{job="{JOB}", type=~"rollback[.](started|verified)"}}',
            **at})
        assert {item["metric"]["type"]: float(item["value"][1]) for item in events} == {
            "rollback.started": 1.0, "rollback.verified": 1.0}
        ghost = await query(session, prometheus, "query", {"query": 'rollbackd_target_state{target="ghost"}',
                                                           **at})
        assert not ghost, "the series of a removed target went away"
        answering = await query(session, prometheus, "query_range", {
            "query": grafana(_panel(dashboard, "Prometheus answering"), range_s=range_s),
            **over})
        assert [float(v) for _, v in answering[0]["values"]][-1] == 1.0


def _panel(dashboard: dict[str, Any], title: str) -> str:
    [panel] = [panel for panel in dashboard["panels"] if panel["title"] == title]
    expr: str = panel["targets"][0]["expr"]
    return expr
