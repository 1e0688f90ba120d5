"""The post-rollback watch: after a verified rollback the target is watched for ``verification.watch_s``
(the runbook's 30 minutes); degrading again within it escalates, never rolls back a second time.
The loop clock is fast-forwarded (looptime) through the half hour."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from rollbackd.config.settings import Settings, VerificationSettings
from rollbackd.daemon.app import Daemon
from rollbackd.decision.framework import DecisionState, decide
from rollbackd.events.build import Announcer, EventFactory
from rollbackd.model import Context, Strategy, Watch
from rollbackd.params import TargetParams
from rollbackd.run import Phase
from tests.eventstory import SLO, clock, rollback_story, severe_evidence
from tests.test_daemon import HEALTHY, INTERVAL_S, SEVERE, Api, ScriptedHealth, ScriptedMetrics, make_settings
from tests.test_daemon_rollbacks import ScriptedTargets

KEY = "shop/checkout"
WATCH_S = 1800.0
COOLDOWN_S = 600.0  # the default policy.cooldown_s: the watch outlasts it


def settings(watch_s: float = WATCH_S) -> Settings:
    return make_settings().model_copy(
        update={"verification": VerificationSettings(window_s=60.0, watch_s=watch_s)}
    )


@contextlib.asynccontextmanager
async def watched(
    watch_s: float = WATCH_S,
) -> AsyncIterator[tuple[Daemon, Api, ScriptedMetrics, ScriptedTargets]]:
    """A daemon over scripted metrics and cluster, with its API."""
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets()
    async with (
        aiohttp.ClientSession() as session,
        Daemon(
            settings(watch_s), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
        ) as daemon,
    ):
        yield daemon, Api(session, daemon), metrics, cluster


async def roll_back_and_verify(daemon: Daemon, metrics: ScriptedMetrics) -> float:
    """A severe breach, a rollback, its verification; the loop time it was verified at."""
    await asyncio.sleep(3 * INTERVAL_S)
    metrics.pair = SEVERE
    await asyncio.sleep(3 * INTERVAL_S)
    metrics.pair = HEALTHY
    await asyncio.sleep(8 * INTERVAL_S)
    run = daemon.rollbacks.runs[KEY]
    assert run.phase is Phase.VERIFIED
    assert run.finished_at is not None
    return run.finished_at


@pytest.mark.looptime
async def test_degrading_again_within_the_watch_escalates_and_never_rolls_back_twice() -> None:
    async with watched() as (daemon, api, metrics, cluster):
        verified_at = await roll_back_and_verify(daemon, metrics)
        shown = (await api.target())["watch"]
        assert shown is not None
        assert WATCH_S - 3 * INTERVAL_S <= shown["remaining_s"] <= WATCH_S
        status, page = await api.call("GET", "/")
        assert status == 200
        assert "Watching after the rollback" in page

        # Past the cooldown, well within the watch: the release goes bad again.
        await asyncio.sleep(verified_at + COOLDOWN_S + 100 - asyncio.get_running_loop().time())
        metrics.pair = SEVERE
        await asyncio.sleep(6 * INTERVAL_S)
        assert cluster.runs == [False]  # one rollback, not two
        decision = (await api.target())["decision"]
        assert decision["blocked_by"] == "post-rollback-watch"
        assert decision["escalate"] is True
        assert any("degraded again" in reason and "no second automatic rollback" in reason
                   for reason in decision["reasons"])
        status, page = await api.call("GET", "/")
        assert "escalated: degraded again after its rollback" in page


@pytest.mark.looptime
async def test_after_the_watch_a_new_breach_is_rolled_back_again() -> None:
    async with watched() as (daemon, api, metrics, cluster):
        verified_at = await roll_back_and_verify(daemon, metrics)
        await asyncio.sleep(verified_at + WATCH_S + INTERVAL_S - asyncio.get_running_loop().time())
        assert (await api.target())["watch"] is None
        metrics.pair = SEVERE
        await asyncio.sleep(4 * INTERVAL_S)
        assert cluster.runs == [False, False]


@pytest.mark.looptime
async def test_watch_s_zero_means_no_watch() -> None:
    async with watched(watch_s=0) as (daemon, api, metrics, _):
        await roll_back_and_verify(daemon, metrics)
        assert (await api.target())["watch"] is None


def test_degrading_again_within_the_watch_is_told_as_an_escalation() -> None:
    announcer = Announcer(factory=EventFactory(), target=KEY, slo=SLO)
    rollback_story(KEY, announcer=announcer)  # verified at 1305
    watch = Watch(since=1305.0, until=1305.0 + WATCH_S)
    params = TargetParams(key=KEY, strategy=Strategy.CANARY, interval_s=INTERVAL_S)
    decision, state = decide(severe_evidence(KEY, 2000.0), Context(watch=watch), params, DecisionState())
    events = announcer.on_decision(decision, hold=None, clock=clock(2000.0))
    escalations = [event for event in events if event.type == "io.rollbackd.escalation.raised"]
    assert len(escalations) == 1
    data = escalations[0].data.model_dump()
    assert data["cause"] == "post-rollback-watch"
    assert "escalation (post-rollback-watch)" in data["summary"]
    assert any("within the post-rollback watch" in reason for reason in data["reasons"])
    # Told once: the next tick of the same episode is no news.
    again, _ = decide(severe_evidence(KEY, 2010.0), Context(watch=watch), params, state)
    assert not [e for e in announcer.on_decision(again, hold=None, clock=clock(2010.0))
                if e.type == "io.rollbackd.escalation.raised"]
