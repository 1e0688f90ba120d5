"""How fresh the metrics backend's answers are: rollbackd asks for the newest sample of the series it
judges and warns when it is more than one interval older than a scrape should make it.

Against real backends scraping real sample apps every second: Prometheus, VictoriaMetrics with its
default ``-search.latencyOffset`` (30 s: it answers instant queries from 30 s ago while stamping the
answer with the current time) and VictoriaMetrics with ``-search.latencyOffset=0s``; through the
source, and through ``rollbackd run`` as a real process (its log and ``/metrics``). The warning's
spells (once until fresh again) against a scripted backend."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rollbackd.sources import promql
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource, freshness_query
from tests.kubefixtures import wait_until
from tests.promfixtures import (
    HOST,
    PrometheusServer,
    SampleAppProcess,
    free_port,
    require_prometheus,
    start_prometheus,
    start_sample_app,
)
from tests.test_prometheus_source import FAST, TEMPLATES, FakePrometheus, fake_prometheus, success
from tests.vmfixtures import VictoriaMetricsServer, require_victoria_metrics

__all__ = ["fake_prometheus"]  # the fixture, used below

REPO = Path(__file__).resolve().parents[1]
SOURCE_LOGGER = "rollbackd.sources.prometheus"
STALE = "Prometheus answers are stale"
#: What a sample 1 s scrapes apart can be old without being stale, in these tests: one scrape plus
#: two seconds (the daemon's rule with a 2 s interval), room for a loaded machine.
MAX_LAG_S = 3.0
NEWEST = 'max(timestamp(http_requests_total{namespace="shop"}))'


def ref(deployment: str) -> SeriesRef:
    return SeriesRef(labels=(("namespace", "shop"), ("deployment", deployment)))


WEB = SourceTarget(key="shop/web", queries=TEMPLATES, candidate=ref("web-canary"), baseline=ref("web"))


@dataclass
class Backends:
    apps: list[SampleAppProcess]
    urls: Mapping[str, str]


@pytest.fixture(scope="module")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    """Two sample apps serving themselves, scraped every second by Prometheus, by VictoriaMetrics
    as it comes and by VictoriaMetrics with no latency offset. Skips without either binary."""
    prometheus_binary = require_prometheus()
    vm_binary = require_victoria_metrics()
    root = tmp_path_factory.mktemp("freshness")
    apps: list[SampleAppProcess] = []
    servers: list[PrometheusServer | VictoriaMetricsServer] = []
    try:
        apps.append(start_sample_app(deployment="web", namespace="shop", rps=20, seed=1, log_dir=root))
        apps.append(start_sample_app(deployment="web-canary", namespace="shop", rps=20, seed=2, log_dir=root))
        addresses = [app.address for app in apps]
        vm_default = VictoriaMetricsServer(binary=vm_binary, targets=addresses, data_dir=root / "vm-default")
        vm_zero = VictoriaMetricsServer(binary=vm_binary, targets=addresses, data_dir=root / "vm-zero",
                                        latency_offset="0s")
        for vm in (vm_default, vm_zero):
            servers.append(vm.start())
        for vm in (vm_default, vm_zero):
            vm.wait_ready()
        servers.append(start_prometheus(targets=addresses, data_dir=root / "prometheus",
                                        binary=prometheus_binary, scrapes=3, scrape_interval_s=1.0))
        vm_zero.wait_for_samples(NEWEST)
        # With its default offset, VictoriaMetrics shows a sample 30 s after it was scraped, and
        # increase() needs two of them.
        vm_default.wait_for_samples('count_over_time(http_requests_total{namespace="shop"}[1m]) >= 3')
        yield Backends(apps=apps, urls={
            "prometheus": servers[2].url,
            "victoria-metrics": vm_default.url,
            "victoria-metrics-0s": vm_zero.url,
        })
    finally:
        for server in servers:
            server.stop()
        for app in apps:
            app.stop()


@pytest.mark.e2e
@pytest.mark.parametrize(("backend", "stale"), [
    ("prometheus", False), ("victoria-metrics-0s", False), ("victoria-metrics", True),
])
async def test_the_source_measures_the_age_of_the_newest_sample(
    backends: Backends, backend: str, stale: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=SOURCE_LOGGER)
    lags: list[float] = []
    async with PrometheusClient(base_url=backends.urls[backend], timeout_s=5.0, backoff=FAST) as client:
        source = PrometheusSource(client=client, max_lag_s=MAX_LAG_S, on_lag=lags.append)
        for _ in range(3):
            found = await source.collect([WEB], window_s=3.0)
            baseline, candidate = found[WEB.key]
            assert baseline is not None
            assert candidate is not None  # the data are there either way: only their age differs
            assert candidate.requests > 0

    assert len(lags) == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and STALE in r.getMessage()]
    if stale:
        # 30 s behind, though the answers' own timestamps say "now".
        assert all(25.0 < lag < 40.0 for lag in lags), lags
        assert source.stale
        (warning,) = warnings  # once for the spell, not once per tick
        assert "-search.latencyOffset" in warning.getMessage()
        assert warning.__dict__["max_lag_s"] == MAX_LAG_S
    else:
        assert all(0.0 <= lag <= MAX_LAG_S for lag in lags), lags
        assert not source.stale
        assert warnings == []


# --- rollbackd run as a process --------------------------------------------------------------------

async def _metric(session: aiohttp.ClientSession, base: str, name: str) -> float | None:
    try:
        async with session.get(base + "/metrics") as response:
            text = await response.text()
    except aiohttp.ClientError:
        return None
    match = re.search("^" + re.escape(name) + r'\{source="prometheus"\} (\S+)$', text, re.MULTILINE)
    return None if match is None else float(match.group(1))


@pytest.mark.e2e
@pytest.mark.parametrize(("backend", "stale"), [
    ("prometheus", False), ("victoria-metrics-0s", False), ("victoria-metrics", True),
])
async def test_rollbackd_run_warns_once_when_its_backend_answers_from_the_past(
    backends: Backends, backend: str, stale: bool, tmp_path: Path
) -> None:
    port = free_port()
    config = tmp_path / "rollbackd.yaml"
    config.write_text(yaml.safe_dump({
        "interval_s": 2,
        "prometheus": {"url": backends.urls[backend], "scrape_interval_s": 1, "timeout_s": 5},
        "http": {"host": HOST, "port": port},
        "log": {"level": "INFO", "format": "json"},
        "store": {"data_dir": str(tmp_path / "data")},
        "targets": [{"name": "web", "namespace": "shop", "strategy": "canary", "ingress": "web-canary",
                     "baseline": {"deployment": "web"}, "candidate": {"deployment": "web-canary"}}],
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollbackd", "run", "--config", str(config), cwd=REPO, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    lags: list[float] = []
    try:
        base = f"http://{HOST}:{port}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

            async def three_lags() -> bool:  # three ticks' worth of lag, read as Prometheus would scrape it
                lag = await _metric(session, base, "rollbackd_source_lag_seconds")
                if lag is not None and (not lags or lag != lags[-1]):
                    lags.append(lag)
                return len(lags) >= 3

            await wait_until(three_lags, timeout_s=60, interval_s=0.2, what="three source lags")
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, stderr.decode()[-3000:]
    entries = [json.loads(line) for line in stderr.decode().splitlines()]
    warnings = [e for e in entries if e["level"] == "WARNING" and e["msg"].startswith(STALE)]
    if stale:
        assert all(25.0 < lag < 40.0 for lag in lags), lags
        (warning,) = warnings
        assert warning["source"] == "prometheus"
        assert 25.0 < warning["lag_s"] < 40.0
        assert warning["max_lag_s"] == MAX_LAG_S  # one scrape (1 s) and one interval (2 s)
    else:
        assert all(0.0 <= lag <= MAX_LAG_S for lag in lags), lags
        assert warnings == []


# --- spells, against a scripted backend ------------------------------------------------------------

async def test_stale_answers_are_told_once_per_spell_and_their_end_once(
    fake_prometheus: Callable[[Callable[[str], Any]], Awaitable[FakePrometheus]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=SOURCE_LOGGER)
    script = [1.0, 40.0, 45.0, 2.5, 1.0, 50.0]
    current: list[float] = []

    def respond(query: str) -> tuple[int, dict[str, Any]]:
        if query.startswith("max(timestamp("):
            now = time.time()
            return success({"metric": {}, "value": [now, repr(now - current[0])]})
        return success()

    fake = await fake_prometheus(respond)
    lags: list[float] = []
    states: list[bool] = []
    async with PrometheusClient(base_url=fake.url, backoff=FAST) as client:
        source = PrometheusSource(client=client, max_lag_s=3.0, on_lag=lags.append)
        for lag in script:
            current[:] = [lag]
            await source.collect([WEB], window_s=3.0)
            states.append(source.stale)

    assert states == [False, True, True, False, False, True]
    assert lags == pytest.approx(script, abs=0.5)
    told = [(r.levelname, r.getMessage().split(":")[0])
            for r in caplog.records if "answers are" in r.getMessage()]
    assert told == [
        ("WARNING", "Prometheus answers are stale"),
        ("INFO", "Prometheus answers are fresh again"),
        ("WARNING", "Prometheus answers are stale"),
    ]
    # One freshness query per tick, next to the three batched ones.
    assert sum(q.startswith("max(timestamp(") for q in fake.queries) == len(script)


async def test_no_sample_and_no_freshness_check_leave_the_lag_unknown(
    fake_prometheus: Callable[[Callable[[str], Any]], Awaitable[FakePrometheus]],
) -> None:
    fake = await fake_prometheus(lambda query: success())
    lags: list[float] = []
    async with PrometheusClient(base_url=fake.url, backoff=FAST) as client:
        await PrometheusSource(client=client, max_lag_s=3.0, on_lag=lags.append).collect([WEB], window_s=3)
        assert len(fake.queries) == 4  # three metrics (one target: one batch), and the freshness query
        assert lags == []  # no sample of these series: nothing to compare
        fake.queries.clear()
        await PrometheusSource(client=client).collect([WEB], window_s=3)
        assert not any(q.startswith("max(timestamp(") for q in fake.queries)
    with pytest.raises(ValueError, match="max_lag_s"):
        PrometheusSource(client=client, max_lag_s=math.nan)


def test_the_freshness_query_asks_for_the_raw_series_of_the_requests_template() -> None:
    (batch,) = promql.plan([WEB], window_s=10, shards=1).batches
    assert freshness_query(batch) == (
        'max(timestamp(http_requests_total{namespace="shop",deployment=~"web|web-canary"}))'
    )
    custom = QueryTemplates(requests="sum by ({by}) (rate(reqs{{{selector}}}[{window}]))",
                            errors=TEMPLATES.errors, latency_buckets=TEMPLATES.latency_buckets,
                            group_labels=TEMPLATES.group_labels)
    (batch,) = promql.plan([SourceTarget(key="a/b", queries=custom, candidate=ref("b"))], window_s=10).batches
    assert freshness_query(batch) == 'max(timestamp(reqs{namespace="shop",deployment="b"}))'
    opaque = QueryTemplates(requests="sum by ({by}) (my_recording_rule)", errors=TEMPLATES.errors,
                            latency_buckets=TEMPLATES.latency_buckets, group_labels=TEMPLATES.group_labels)
    (batch,) = promql.plan([SourceTarget(key="a/b", queries=opaque, candidate=ref("b"))], window_s=10).batches
    assert freshness_query(batch) is None

