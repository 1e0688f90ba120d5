"""The daemon's ``/metrics`` over real HTTP: what Grafana and the alert rules read.

Content negotiation (text or OpenMetrics) and gzip; no ``_created`` series; the process, platform
and garbage-collector metrics; the build, the leadership, the metrics source's answers; each
target's state and latest decision time, whose series go away with the target; configuration
reloads applied and refused. The state a target is in, worked out from its latest decision and
rollback, is tested on its own at the end (pure).
"""

from __future__ import annotations

import asyncio
import gzip
import re
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily

from rollbackd import __version__
from rollbackd.config.loader import ConfigError, Problem
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.target_state import current_state
from rollbackd.events.model import TargetState
from rollbackd.model import Attribution, Decision, Episode, Impact, Outcome
from rollbackd.run import Phase, RollbackRun
from rollbackd.sources.base import SidePair, SourceTarget
from tests.kubefixtures import wait_until
from tests.test_daemon_http import HEALTHY, HOST, OkHealth, checkout, make_settings

OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
STATE = "rollbackd_target_state"
DECIDED = "rollbackd_last_decision_timestamp_seconds"


class SwitchableMetrics:
    """Serves ``HEALTHY`` while ``up``, fails (a refused connection) otherwise."""

    def __init__(self) -> None:
        self.up = True

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        if not self.up:
            raise ConnectionRefusedError("Prometheus is down")
        return {target.key: HEALTHY for target in targets}


class Switch:
    """A leader election whose answer the test sets."""

    def __init__(self) -> None:
        self.leading = True

    @property
    def is_leader(self) -> bool:
        return self.leading


def daemon_on(source: SwitchableMetrics, *, leader: Switch | None = None) -> Daemon:
    """A daemon on ``source`` with one target, ``shop/checkout``; enter it with ``async with``."""
    return Daemon(make_settings(), metrics_source=source, health_source=OkHealth(), leader=leader)


async def scrape(daemon: Daemon, *, headers: Mapping[str, str] | None = None) -> str:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://{HOST}:{daemon.port}/metrics", headers=headers
    ) as response:
        assert response.status == 200
        return await response.text()


def value(text: str, name: str, **labels: str) -> float | None:
    """The sample ``name{labels}`` of a text exposition (labels in any order), or ``None``."""
    for line in text.splitlines():
        found = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$", line)
        if found is None or found.group(1) != name:
            continue
        shown = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"', found.group(3) or ""))
        if shown == labels:
            return float(found.group(4))
    return None


async def test_openmetrics_on_request_and_gzip_when_accepted() -> None:
    async with daemon_on(SwitchableMetrics()) as daemon:
        await wait_until(lambda: daemon.ticks > 0)
        url = f"http://{HOST}:{daemon.port}/metrics"
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            async with session.get(url, headers={"Accept-Encoding": "identity"}) as response:
                plain = await response.read()
                assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert "Content-Encoding" not in response.headers
            async with session.get(
                url, headers={"Accept": "application/openmetrics-text; version=1.0.0",
                              "Accept-Encoding": "gzip"}
            ) as response:
                assert response.headers["Content-Type"].startswith(OPENMETRICS)
                assert response.headers["Content-Encoding"] == "gzip"
                openmetrics = gzip.decompress(await response.read()).decode()
    assert b"# TYPE rollbackd_evaluations_total counter" in plain
    assert openmetrics.endswith("# EOF\n")
    assert "# TYPE rollbackd_evaluations counter" in openmetrics
    assert "# TYPE rollbackd_build info" in openmetrics


async def test_a_scraper_can_ask_for_some_metrics_only() -> None:
    async with daemon_on(SwitchableMetrics()) as daemon:
        await wait_until(lambda: daemon.ticks > 0)
        url = f"http://{HOST}:{daemon.port}/metrics?name[]={STATE}&name[]=rollbackd_leader"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            assert response.status == 200
            text = await response.text()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    assert names == {STATE, "rollbackd_leader"}
    assert value(text, STATE, namespace="shop", target="checkout", state="healthy") == 1
    assert value(text, "rollbackd_leader") == 1


async def test_the_exposition_has_the_build_the_process_and_no_created_series() -> None:
    leak = Counter("rollbackd_test_global_registry_leak", "Registered globally: must not show.")
    try:
        leak.inc()
        async with daemon_on(SwitchableMetrics()) as daemon:
            await wait_until(lambda: daemon.ticks > 0)
            text = await scrape(daemon)
            openmetrics = await scrape(daemon, headers={"Accept": "application/openmetrics-text"})
    finally:
        REGISTRY.unregister(leak)
    assert "_created" not in text
    assert "_created" not in openmetrics
    assert "rollbackd_test_global_registry_leak" not in text
    build = [line for line in text.splitlines() if line.startswith("rollbackd_build_info{")]
    assert len(build) == 1
    assert build[0].endswith(" 1.0")
    assert f'version="{__version__}"' in build[0]
    assert 'python_version="' in build[0]
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"):
        assert (value(text, name) or 0) > 0, name
    assert "python_info{" in text
    assert "python_gc_objects_collected_total{" in text


async def test_leadership_and_the_metrics_source_answering_are_exported() -> None:
    source, leader = SwitchableMetrics(), Switch()
    async with daemon_on(source, leader=leader) as daemon:
        await wait_until(lambda: daemon.ticks > 0)
        text = await scrape(daemon)
        assert value(text, "rollbackd_leader") == 1
        assert value(text, "rollbackd_metrics_source_up") == 1
        leader.leading = False
        source.up = False
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks > ticks + 1)
        text = await scrape(daemon)
        assert value(text, "rollbackd_leader") == 0
        assert value(text, "rollbackd_metrics_source_up") == 0
        assert (value(text, "rollbackd_source_errors_total", source="prometheus", kind="connection") or 0) > 0
        source.up = True
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks > ticks + 1)
        assert value(await scrape(daemon), "rollbackd_metrics_source_up") == 1


async def test_each_target_has_its_state_and_decision_time_until_a_reload_removes_it(tmp_path: Path) -> None:
    settings = make_settings()
    async with Daemon(settings, metrics_source=SwitchableMetrics(), health_source=OkHealth()) as daemon:
        await wait_until(lambda: daemon.ticks > 1)
        text = await scrape(daemon)
        states = {
            state.value: value(text, STATE, namespace="shop", target="checkout", state=state.value)
            for state in TargetState
        }
        assert states == {state.value: 1.0 if state is TargetState.HEALTHY else 0.0 for state in TargetState}
        decided = value(text, DECIDED, namespace="shop", target="checkout")
        assert decided is not None
        assert abs(decided - time.time()) < 30
        assert value(text, "rollbackd_config_reloads_total", result="success") == 0
        assert value(text, "rollbackd_config_last_reload_successful") == 1
        started = value(text, "rollbackd_config_last_reload_success_timestamp_seconds")
        assert started is not None
        assert abs(started - time.time()) < 30

        renamed = checkout().model_copy(update={"name": "payments"})
        daemon.apply_settings(settings.model_copy(update={"targets": (renamed,)}))
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks > ticks + 1)
        text = await scrape(daemon)
        assert 'target="checkout"' not in text, "the removed target's series went away"
        assert value(text, STATE, namespace="shop", target="payments", state="healthy") == 1
        assert value(text, "rollbackd_config_reloads_total", result="success") == 1
        reloaded = value(text, "rollbackd_config_last_reload_success_timestamp_seconds")
        assert reloaded is not None
        assert reloaded >= started

        refused = Problem(origin="rollbackd.yaml", message="not a number", path="interval_s")
        daemon.refuse_settings(ConfigError([refused]))
        text = await scrape(daemon)
        assert value(text, "rollbackd_config_reloads_total", result="failure") == 1
        assert value(text, "rollbackd_config_last_reload_successful") == 0
        assert value(text, "rollbackd_config_last_reload_success_timestamp_seconds") == reloaded


# --- the state of a target (pure) ----------------------------------------------------------------


def decision(t: float, outcome: Outcome = Outcome.NONE, **fields: object) -> Decision:
    return Decision(target="shop/checkout", t=t, outcome=outcome, rollback=False, reasons=(), **fields)  # type: ignore[arg-type]


def run(phase: Phase, *, finished_at: float | None = None) -> RollbackRun:
    return RollbackRun(
        key="shop/checkout", mode="immediate", decided_at=10.0, phase=phase, finished_at=finished_at
    )


EPISODE = Episode(
    opened_at=5.0, onset=5.0, impact=Impact.SEVERE, attribution=Attribution.ATTRIBUTABLE, proven_at=5.0
)


@pytest.mark.parametrize(
    ("latest", "last_run", "expected"),
    [
        (None, None, TargetState.INCONCLUSIVE),
        (decision(1.0), None, TargetState.HEALTHY),
        (decision(1.0, Outcome.INCONCLUSIVE), None, TargetState.INCONCLUSIVE),
        (decision(1.0, Outcome.IMMEDIATE, episode=EPISODE, blocked_by="unproven"), None,
         TargetState.DEGRADED),
        (decision(1.0, Outcome.CONTROLLED), None, TargetState.WAITING),
        (decision(1.0, Outcome.IMMEDIATE, escalate=True, blocked_by="freeze"), None, TargetState.ESCALATED),
        (decision(1.0, Outcome.IMMEDIATE, blocked_by="hold"), None, TargetState.HELD),
        (decision(11.0), run(Phase.ACTING), TargetState.ROLLING_BACK),
        (decision(12.0), run(Phase.VERIFYING), TargetState.VERIFYING),
        # After the run, its verdict stands through the inconclusive decisions that follow ...
        (decision(30.0, Outcome.INCONCLUSIVE), run(Phase.VERIFIED, finished_at=20.0),
         TargetState.ROLLED_BACK),
        (decision(20.0), run(Phase.VERIFICATION_FAILED, finished_at=20.0), TargetState.VERIFICATION_FAILED),
        (decision(15.0), run(Phase.ACTION_FAILED, finished_at=20.0), TargetState.ROLLBACK_FAILED),
        (None, run(Phase.REFUSED, finished_at=20.0), TargetState.ROLLBACK_FAILED),
        # ... until a conclusive one taken after it.
        (decision(30.0), run(Phase.VERIFIED, finished_at=20.0), TargetState.HEALTHY),
    ],
)
def test_the_state_of_a_target(
    latest: Decision | None, last_run: RollbackRun | None, expected: TargetState
) -> None:
    assert current_state(latest, last_run) is expected


def test_every_state_of_a_run_is_told() -> None:
    assert {current_state(None, run(phase, finished_at=20.0)) for phase in Phase} == {
        TargetState.ROLLING_BACK, TargetState.VERIFYING, TargetState.ROLLED_BACK,
        TargetState.VERIFICATION_FAILED, TargetState.ROLLBACK_FAILED,
    }


class Slow:
    """A collector that takes as long as the test says: it waits for ``done`` (a thread event)."""

    def __init__(self) -> None:
        self.building = threading.Event()
        self.done = threading.Event()

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("slow_collector", "A collector that took long.")]

    def collect(self) -> list[GaugeMetricFamily]:
        self.building.set()
        assert self.done.wait(timeout=60), "the test never let the exposition finish"
        return [GaugeMetricFamily("slow_collector", "A collector that took long.", value=1)]


async def test_the_daemon_answers_its_probes_while_it_builds_the_exposition() -> None:
    """Building ``/metrics`` (70-240 ms at 1,000 targets) does not hold up the event loop: a
    ``/healthz`` probe and the next ticks go on meanwhile, and the exposition, once built, has
    each target's state and decision time, read on the loop."""
    slow = Slow()
    async with daemon_on(SwitchableMetrics()) as daemon, aiohttp.ClientSession() as session:
        await wait_until(lambda: daemon.ticks > 0)
        daemon.metrics.registry.register(slow)
        url = f"http://{HOST}:{daemon.port}"
        scraping = asyncio.ensure_future(scrape(daemon))
        try:
            await wait_until(slow.building.is_set, timeout_s=30, what="the exposition being built")
            ticks = daemon.ticks
            async with session.get(f"{url}/healthz") as response:
                assert response.status == 200
            await wait_until(lambda: daemon.ticks > ticks, timeout_s=30, what="a tick meanwhile")
            assert not scraping.done()
        finally:
            slow.done.set()
        text = await scraping
    assert value(text, "slow_collector") == 1
    assert value(text, STATE, namespace="shop", target="checkout", state="healthy") == 1
    decided = value(text, DECIDED, namespace="shop", target="checkout")
    assert decided is not None
    assert abs(decided - time.time()) < 60
