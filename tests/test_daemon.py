"""The daemon's wiring, on fake (fast-forwarded) loop time with scripted sources: ticks, decisions,
metrics, the API switches that restrain rollbacks, and the structured logs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import aiohttp
import pytest

from rollbackd.config.settings import (
    ApiSettings,
    HttpSettings,
    LogSettings,
    SafetySettings,
    Settings,
    Side,
    TargetSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.logs import configure_logging
from rollbackd.errors import PrometheusUnavailableError
from rollbackd.model import HealthCheck, Sample, Strategy
from rollbackd.sources.base import SidePair, SourceTarget
from tests.kubefixtures import wait_until

INTERVAL_S = 10.0

HEALTHY: SidePair = (Sample(requests=1000, errors=5), Sample(requests=1000, errors=5))
#: 30% errors on the candidate against a 1% SLO, baseline fine: severe and attributable.
SEVERE: SidePair = (Sample(requests=1000, errors=5), Sample(requests=1000, errors=300))


class ScriptedMetrics:
    """A metrics source serving whatever the test sets, recording every call."""

    def __init__(self, pair: SidePair = HEALTHY) -> None:
        self.pair = pair
        self.failure: Exception | None = None
        self.delays: list[float] = []
        self.calls: list[tuple[float, float, tuple[str, ...]]] = []

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        self.calls.append((asyncio.get_running_loop().time(), window_s, tuple(t.key for t in targets)))
        if self.delays:
            await asyncio.sleep(self.delays.pop(0))
        if self.failure is not None:
            raise self.failure
        return {target.key: self.pair for target in targets}


class ScriptedHealth:
    """A health source answering ``status`` for every URL, or raising ``failure``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.failure: Exception | None = None
        self.probed: list[tuple[str, ...]] = []

    async def probe(self, urls: Sequence[str]) -> tuple[HealthCheck, ...]:
        self.probed.append(tuple(urls))
        if self.failure is not None:
            raise self.failure
        return tuple(HealthCheck(path="/readyz", status=self.status) for _ in urls)


def canary(name: str, *, namespace: str = "shop", health: tuple[str, ...] = ()) -> TargetSettings:
    return TargetSettings(
        name=name,
        namespace=namespace,
        strategy=Strategy.CANARY,
        baseline=Side(deployment=f"{name}-stable"),
        candidate=Side(deployment=f"{name}-canary", health=health),
        ingress=f"{name}-canary",
    )


def make_settings(*targets: TargetSettings, dry_run: bool = False, freeze: bool = False) -> Settings:
    return Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        safety=SafetySettings(dry_run=dry_run, freeze=freeze),
        # These tests steer the daemon without a token (tests/test_api_auth.py covers tokens).
        api=ApiSettings(allow_unauthenticated_writes=True),
        targets=targets or (canary("checkout"),),
    )


@contextlib.contextmanager
def logs_into(stream: io.StringIO, settings: LogSettings) -> Iterator[None]:
    """Route all logging to ``stream`` as the daemon would, then restore pytest's handlers."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging(settings, stream=stream)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


class Api:
    """Talks to a running daemon over real HTTP."""

    def __init__(self, session: aiohttp.ClientSession, daemon: Daemon) -> None:
        self._session = session
        self._base = f"http://127.0.0.1:{daemon.port}"

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self._session.request(method, self._base + path, json=body) as response:
            if response.content_type == "application/json":
                return response.status, await response.json()
            return response.status, await response.text()

    async def target(self, key: str = "shop/checkout") -> dict[str, Any]:
        status, body = await self.call("GET", f"/api/v1/targets/{key}")
        assert status == 200
        assert isinstance(body, dict)
        return body

    async def metric(self, name: str, **labels: str) -> float:
        status, text = await self.call("GET", "/metrics")
        assert status == 200
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = "^" + re.escape(name) + (r"\{" + re.escape(wanted) + r"\}" if labels else "") + r" (\S+)$"
        match = re.search(pattern, text, re.MULTILINE)
        assert match is not None, f"{name}{labels} not in /metrics"
        return float(match.group(1))


@pytest.fixture(autouse=True)
async def _no_leftover_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    leftover = asyncio.all_tasks() - before - {asyncio.current_task()}
    assert not leftover, f"tasks left running: {sorted(t.get_name() for t in leftover)}"


@pytest.mark.looptime
async def test_ticks_follow_the_interval_without_drift() -> None:
    metrics = ScriptedMetrics()
    metrics.delays = [3.0] * 10  # every collection takes 3 s of loop time
    async with Daemon(make_settings(canary("checkout"), canary("cart")), metrics_source=metrics,
                      health_source=ScriptedHealth()) as daemon:
        await asyncio.sleep(45)
        assert daemon.ticks == 5

    start = metrics.calls[0][0]
    assert [t - start for t, _, _ in metrics.calls] == pytest.approx([0, 10, 20, 30, 40])
    # One batched call per tick for all targets, over the interval.
    expected = (INTERVAL_S, ("shop/checkout", "shop/cart"))
    assert {(window, keys) for _, window, keys in metrics.calls} == {expected}


@pytest.mark.looptime
async def test_an_overrunning_tick_skips_the_missed_ticks() -> None:
    metrics = ScriptedMetrics()
    metrics.delays = [0.0, 25.0]  # the second tick (at 10 s) ends at 35 s
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=metrics, health_source=ScriptedHealth(),
    ) as daemon:
        await asyncio.sleep(55)
        skipped = await Api(session, daemon).metric("rollbackd_ticks_skipped_total")

    start = metrics.calls[0][0]
    assert [t - start for t, _, _ in metrics.calls] == pytest.approx([0, 10, 40, 50])
    assert skipped == 2


@pytest.mark.looptime
async def test_a_severe_regression_gives_an_immediate_rollback_decision() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=metrics, health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        await asyncio.sleep(35)
        healthy = await api.target()
        assert healthy["decision"]["outcome"] == "none"
        assert healthy["last_rollback"] is None
        assert await api.metric("rollbackd_rollback_decisions_total", mode="immediate") == 0

        metrics.pair = SEVERE

        async def decided() -> bool:
            return (await api.target())["last_rollback"] is not None

        await wait_until(decided, timeout_s=4 * INTERVAL_S, interval_s=1.0, what="a rollback decision")
        target = await api.target()
        rollback = target["last_rollback"]
        assert rollback is not None, target["decision"]
        assert rollback["outcome"] == "immediate"
        assert rollback["rollback"] is True
        assert rollback["dry_run"] is False
        assert any("immediate rollback" in reason for reason in rollback["reasons"])
        assert target["evidence"]["impact"] == "severe"
        assert target["evidence"]["attributable"] is True
        error_findings = [f for f in target["evidence"]["findings"] if f["signal"] == "error_rate"]
        assert error_findings
        assert error_findings[0]["value"] == pytest.approx(0.3, abs=0.05)
        assert error_findings[0]["threshold"] > 0
        assert target["cooldown"] is not None
        assert target["cooldown"]["remaining_s"] > 0

        assert await api.metric("rollbackd_rollback_decisions_total", mode="immediate") == 1
        assert await api.metric("rollbackd_decisions_total", outcome="immediate") >= 1
        assert await api.metric("rollbackd_evaluations_total") == daemon.ticks
        assert await api.metric("rollbackd_targets") == 1

        # The cooldown holds back a second rollback of the same target while the breach lasts.
        await asyncio.sleep(3 * INTERVAL_S)
        assert await api.metric("rollbackd_rollback_decisions_total", mode="immediate") == 1
        assert (await api.target())["decision"]["blocked_by"] == "cooldown"


@pytest.mark.looptime
async def test_a_failing_source_gives_inconclusive_decisions_and_counted_errors() -> None:
    metrics = ScriptedMetrics(SEVERE)
    metrics.failure = PrometheusUnavailableError("connection refused", kind="connection")
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=metrics, health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        await asyncio.sleep(55)
        assert daemon.ticks == 6
        target = await api.target()
        assert target["decision"]["outcome"] == "inconclusive"
        assert target["decision"]["rollback"] is False
        assert target["last_rollback"] is None
        assert await api.metric("rollbackd_source_errors_total", source="prometheus", kind="connection") == 6
        assert await api.metric("rollbackd_decisions_total", outcome="inconclusive") == 6
        status, _ = await api.call("GET", "/healthz")
        assert status == 200

        # The loop survived: once the source answers again, the regression is caught.
        metrics.failure = None
        await asyncio.sleep(4 * INTERVAL_S)
        assert (await api.target())["last_rollback"]["outcome"] == "immediate"


@pytest.mark.looptime
async def test_a_failing_health_prober_is_counted_and_not_fatal() -> None:
    health = ScriptedHealth()
    health.failure = RuntimeError("prober broke")
    settings = make_settings(canary("checkout", health=("http://127.0.0.1:9/readyz",)))
    async with aiohttp.ClientSession() as session, Daemon(
        settings, metrics_source=ScriptedMetrics(HEALTHY), health_source=health,
    ) as daemon:
        api = Api(session, daemon)
        await asyncio.sleep(25)
        assert health.probed == [("http://127.0.0.1:9/readyz",)] * 3
        assert await api.metric("rollbackd_source_errors_total", source="health", kind="unexpected") == 3
        assert (await api.target())["decision"]["outcome"] == "none"


@pytest.mark.looptime
async def test_a_fix_forward_hold_set_through_the_api_suppresses_the_rollback() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=metrics, health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        status, body = await api.call("POST", "/api/v1/targets/shop/checkout/hold",
                                      {"eta_s": 300, "reason": "hotfix 1.2.4 is rolling out"})
        assert status == 200
        assert body["hold"]["reason"] == "hotfix 1.2.4 is rolling out"
        assert body["hold"]["remaining_s"] == pytest.approx(300, abs=INTERVAL_S)

        metrics.pair = SEVERE
        await asyncio.sleep(6 * INTERVAL_S)
        target = await api.target()
        assert target["last_rollback"] is None
        assert target["decision"]["outcome"] == "none"
        assert target["decision"]["blocked_by"] == "hold"
        assert await api.metric("rollbackd_rollback_decisions_total", mode="immediate") == 0
        assert await api.metric("rollbackd_rollback_decisions_total", mode="controlled") == 0

        status, body = await api.call("DELETE", "/api/v1/targets/shop/checkout/hold")
        assert status == 200
        assert body["hold"] is None
        await asyncio.sleep(2 * INTERVAL_S)
        assert (await api.target())["last_rollback"]["outcome"] == "immediate"


@pytest.mark.looptime
async def test_an_expired_hold_with_the_breach_still_there_gives_a_controlled_rollback() -> None:
    metrics = ScriptedMetrics(SEVERE)
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=metrics, health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        status, _ = await api.call("POST", "/api/v1/targets/shop/checkout/hold", {"eta_s": 45})
        assert status == 200
        await asyncio.sleep(30)
        assert (await api.target())["last_rollback"] is None
        await asyncio.sleep(30)
        target = await api.target()
        assert target["last_rollback"]["outcome"] == "controlled"
        assert "hold expired" in target["last_rollback"]["reasons"][0]
        assert target["hold"] is None  # the hold is spent once the rollback is decided


@pytest.mark.looptime
async def test_an_expired_hold_is_dropped_once_its_breach_is_over() -> None:
    metrics = ScriptedMetrics(SEVERE)
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=metrics, health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        status, _ = await api.call("POST", "/api/v1/targets/shop/checkout/hold", {"eta_s": 45})
        assert status == 200
        await asyncio.sleep(20)
        metrics.pair = HEALTHY  # the fix landed before its ETA
        await asyncio.sleep(80)
        target = await api.target()
        assert target["last_rollback"] is None
        assert target["hold"] is None


@pytest.mark.looptime
async def test_the_global_freeze_suppresses_rollbacks_until_lifted() -> None:
    metrics = ScriptedMetrics(SEVERE)
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=metrics, health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        status, body = await api.call("POST", "/api/v1/freeze")
        assert (status, body["freeze"], body["dry_run"]) == (200, True, False)
        await asyncio.sleep(5 * INTERVAL_S)
        target = await api.target()
        assert target["last_rollback"] is None
        assert target["decision"]["blocked_by"] == "freeze"
        assert target["decision"]["escalate"] is True
        assert await api.metric("rollbackd_rollback_decisions_total", mode="immediate") == 0

        status, body = await api.call("DELETE", "/api/v1/freeze")
        assert (status, body["freeze"], body["dry_run"]) == (200, False, False)
        await asyncio.sleep(INTERVAL_S)
        assert (await api.target())["last_rollback"]["outcome"] == "immediate"


@pytest.mark.looptime
async def test_freeze_from_the_settings_is_on_at_start() -> None:
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(freeze=True), metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        await asyncio.sleep(5 * INTERVAL_S)
        _, listing = await api.call("GET", "/api/v1/targets")
        assert listing["freeze"] is True
        assert listing["targets"]["shop/checkout"]["last_rollback"] is None


@pytest.mark.looptime
async def test_dry_run_marks_the_decision_and_starts_no_cooldown() -> None:
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        status, body = await api.call("POST", "/api/v1/dry-run", {"enabled": True})
        assert (status, body["freeze"], body["dry_run"]) == (200, False, True)
        await asyncio.sleep(5 * INTERVAL_S)
        target = await api.target()
        rollback = target["last_rollback"]
        assert rollback["outcome"] == "immediate"
        assert rollback["dry_run"] is True
        assert any("dry-run" in reason for reason in rollback["reasons"])
        # Nothing was rolled back, so nothing is in cooldown and the decision repeats.
        assert target["cooldown"] is None
        assert await api.metric("rollbackd_rollback_decisions_total", mode="immediate") >= 2

        status, body = await api.call("POST", "/api/v1/dry-run", {"enabled": False})
        assert (status, body["freeze"], body["dry_run"]) == (200, False, False)
        await asyncio.sleep(INTERVAL_S)
        target = await api.target()
        assert target["last_rollback"]["dry_run"] is False
        assert target["cooldown"] is not None


@pytest.mark.looptime
async def test_dry_run_from_the_settings_is_on_at_start() -> None:
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(dry_run=True), metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
    ) as daemon:
        await asyncio.sleep(5 * INTERVAL_S)
        assert (await Api(session, daemon).target())["last_rollback"]["dry_run"] is True


@pytest.mark.looptime
async def test_each_target_is_judged_on_its_own_data() -> None:
    class PerTarget(ScriptedMetrics):
        async def collect(
            self, targets: Sequence[SourceTarget], *, window_s: float,
        ) -> Mapping[str, SidePair]:
            return {t.key: SEVERE if t.key == "shop/cart" else HEALTHY for t in targets}

    settings = make_settings(canary("checkout"), canary("cart"))
    async with aiohttp.ClientSession() as session, Daemon(
        settings, metrics_source=PerTarget(), health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        await asyncio.sleep(5 * INTERVAL_S)
        assert (await api.target("shop/cart"))["last_rollback"]["outcome"] == "immediate"
        assert (await api.target("shop/checkout"))["last_rollback"] is None
        assert await api.metric("rollbackd_targets") == 2


@pytest.mark.looptime
async def test_rollback_decisions_are_logged_as_structured_warnings() -> None:
    stream = io.StringIO()
    with logs_into(stream, LogSettings(level="INFO", format="json")):
        async with Daemon(
            make_settings(), metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
        ):
            await asyncio.sleep(5 * INTERVAL_S)
    entries = [json.loads(line) for line in stream.getvalue().splitlines()]
    rollbacks = [e for e in entries if e["msg"].startswith("rollback decision")]
    assert rollbacks, entries
    entry = rollbacks[0]
    assert entry["level"] == "WARNING"
    assert entry["logger"] == "rollbackd.daemon.app"
    assert entry["target"] == "shop/checkout"
    assert entry["outcome"] == "immediate"
    assert entry["rollback"] is True
    assert entry["impact"] == "severe"
    assert entry["reasons"]
    assert all(isinstance(r, str) for r in entry["reasons"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"])


def test_json_logs_carry_extra_fields_and_tracebacks() -> None:
    stream = io.StringIO()
    with logs_into(stream, LogSettings(level="DEBUG", format="json")):
        log = logging.getLogger("rollbackd.test")
        log.info("hello %s", "world", extra={"target": "shop/checkout", "value": float("nan")})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("it failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["msg"] == "hello world"
    assert first["level"] == "INFO"
    assert first["logger"] == "rollbackd.test"
    assert first["target"] == "shop/checkout"
    assert first["value"] is None
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exc"]


def test_text_logs_are_plain_lines() -> None:
    stream = io.StringIO()
    with logs_into(stream, LogSettings(level="INFO", format="text")):
        logging.getLogger("rollbackd.test").warning("careful", extra={"target": "shop/checkout"})
        logging.getLogger("rollbackd.test").debug("not shown")
    (line,) = stream.getvalue().splitlines()
    assert not line.startswith("{")
    assert "WARNING rollbackd.test: careful" in line
    assert 'target="shop/checkout"' in line


@pytest.mark.looptime
async def test_a_task_that_does_not_stop_in_time_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    class Stubborn(ScriptedMetrics):
        async def collect(
            self, targets: Sequence[SourceTarget], *, window_s: float,
        ) -> Mapping[str, SidePair]:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                await asyncio.sleep(30)  # cleans up for far too long before it gives in
                raise
            return {}

    loop = asyncio.get_running_loop()
    caplog.set_level(logging.INFO, logger="rollbackd")
    daemon = Daemon(make_settings(), metrics_source=Stubborn(), health_source=ScriptedHealth(),
                    shutdown_timeout_s=5)
    async with daemon:
        await asyncio.sleep(1)
        stopping_at = loop.time()
    assert loop.time() - stopping_at == pytest.approx(30)
    message = "task did not stop within the shutdown timeout"
    (record,) = [r for r in caplog.records if r.getMessage() == message]
    assert record.levelno == logging.ERROR
    assert record.__dict__["task"] == "rollbackd:evaluation-loop"
    assert not daemon.alive
