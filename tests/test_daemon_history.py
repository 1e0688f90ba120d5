"""The daemon reads the past of the targets it starts watching from its metrics source, on fake
(fast-forwarded) loop time with a scripted source: one batched read for all of them, put on the
event loop's clock, taken before they are judged; a failing read is counted and tried again a few
times, never holding the ticks back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence

import aiohttp
import pytest

from rollbackd.config.settings import Side, TargetSettings
from rollbackd.daemon.app import HISTORY_ATTEMPTS, Daemon
from rollbackd.errors import PrometheusUnavailableError
from rollbackd.model import Sample, Strategy
from rollbackd.sources.base import History, SidePair, SourceTarget
from tests.test_daemon import INTERVAL_S, Api, ScriptedHealth, ScriptedMetrics, make_settings

GOOD = Sample(requests=100, errors=0)
#: A bad image: 38% errors, from the very first interval the process sees.
BAD: SidePair = (None, Sample(requests=100, errors=38))


def deployment(name: str) -> TargetSettings:
    return TargetSettings(name=name, namespace="shop", strategy=Strategy.DEPLOYMENT,
                          candidate=Side(deployment=name))


class ScriptedPast(ScriptedMetrics):
    """A scripted source that also gives history: ``GOOD`` every step of the range asked for,
    or raises ``history_failures`` first."""

    def __init__(self, pair: SidePair) -> None:
        super().__init__(pair)
        self.history_failures: list[Exception] = []
        self.reads: list[tuple[tuple[str, ...], float, float, float]] = []

    async def history(
        self, targets: Sequence[SourceTarget], *, step_s: float, range_s: float, end_s: float
    ) -> History:
        self.reads.append((tuple(t.key for t in targets), step_s, range_s, end_s))
        if self.history_failures:
            raise self.history_failures.pop(0)
        count = int(range_s / step_s)
        past = tuple((end_s - step_s * i, (None, GOOD)) for i in reversed(range(count)))
        found: Mapping[str, tuple[tuple[float, SidePair], ...]] = {t.key: past for t in targets}
        return found


@pytest.mark.looptime
async def test_a_deployment_bad_from_the_first_tick_after_a_start_is_judged_against_its_past() -> None:
    source = ScriptedPast(BAD)
    before = time.time()
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(deployment("web"), deployment("api")), metrics_source=source,
        health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        await asyncio.sleep(2.5 * INTERVAL_S)
        target = await api.target("shop/web")
        assert target["evidence"]["attributable"] is True, target["evidence"]["reasons"]
        # Decided on the second bad interval, the first one that can prove a breach.
        assert target["last_rollback"] is not None
        assert target["last_rollback"]["outcome"] == "immediate"
        # At the second tick (loop time INTERVAL_S), seen 2.5 intervals after the start.
        assert target["last_rollback"]["age_s"] == pytest.approx(1.5 * INTERVAL_S, abs=0.5)
    # One batched read for both targets: their baseline and detection windows, at the interval.
    ((keys, step_s, range_s, end_s),) = source.reads
    assert keys == ("shop/web", "shop/api")
    assert (step_s, range_s) == (INTERVAL_S, 1200.0)
    assert before - INTERVAL_S <= end_s <= time.time() - INTERVAL_S


@pytest.mark.looptime
async def test_without_its_past_the_same_deployment_is_not_blamed() -> None:
    # The guard of the test above: a source without history leaves nothing to compare with.
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(deployment("web")), metrics_source=ScriptedMetrics(BAD), health_source=ScriptedHealth(),
    ) as daemon:
        await asyncio.sleep(2.5 * INTERVAL_S)
        target = await Api(session, daemon).target("shop/web")
        assert target["last_rollback"] is None
        assert any("no baseline" in reason for reason in target["evidence"]["reasons"])


@pytest.mark.looptime
async def test_a_failed_read_of_the_past_is_counted_and_tried_again_without_holding_ticks() -> None:
    source = ScriptedPast(BAD)
    source.history_failures = [PrometheusUnavailableError("connection refused", kind="connection")] * 2
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(deployment("web")), metrics_source=source, health_source=ScriptedHealth(),
    ) as daemon:
        api = Api(session, daemon)
        await asyncio.sleep(4.5 * INTERVAL_S)
        assert daemon.ticks == 5
        assert len(source.reads) == 3  # two failures, then the read that worked
        assert await api.metric("rollbackd_source_errors_total", source="prometheus", kind="connection") == 2
        target = await api.target("shop/web")
        assert target["evidence"]["attributable"] is True, target["evidence"]["reasons"]
        assert target["last_rollback"] is not None


@pytest.mark.looptime
async def test_a_past_that_cannot_be_read_is_given_up_after_a_few_attempts() -> None:
    source = ScriptedPast(BAD)
    source.history_failures = [PrometheusUnavailableError("timed out", kind="timeout")] * 10
    async with Daemon(
        make_settings(deployment("web")), metrics_source=source, health_source=ScriptedHealth(),
    ) as daemon:
        await asyncio.sleep(8.5 * INTERVAL_S)
        assert daemon.ticks == 9
    assert len(source.reads) == HISTORY_ATTEMPTS


@pytest.mark.looptime
async def test_a_target_added_by_a_reload_gets_its_past_read_alone() -> None:
    source = ScriptedPast((None, GOOD))
    settings = make_settings(deployment("web"))
    async with Daemon(settings, metrics_source=source, health_source=ScriptedHealth()) as daemon:
        await asyncio.sleep(1.5 * INTERVAL_S)
        source.pair = BAD
        daemon.apply_settings(make_settings(deployment("web"), deployment("api")))
        await asyncio.sleep(2 * INTERVAL_S)
        latest = daemon.state.targets["shop/api"].latest
        assert latest is not None
        assert latest.rollback, latest.reasons
    assert [keys for keys, *_ in source.reads] == [("shop/web",), ("shop/api",)]
