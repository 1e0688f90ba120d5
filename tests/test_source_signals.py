"""Clear signals when a data source is down: ``/readyz``'s body and the status page say, per source,
whether it works, since when (UTC) and why; the log says it once per change and once a minute while
it lasts, never once per tick or per target.

The real daemon reads a real Prometheus scraping a sample app; Prometheus is stopped and started
again under it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollbackd.config.settings import (
    HttpSettings,
    PrometheusSettings,
    Settings,
    Side,
    StoreSettings,
    TargetSettings,
)
from rollbackd.daemon.sourcestatus import SUMMARY_EVERY_S, SourceBoard
from rollbackd.daemon.wiring import open_daemon
from rollbackd.model import Sample
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource
from tests.kubefixtures import wait_until
from tests.promfixtures import PrometheusFactory, SampleAppFactory
from tests.test_daemon import ScriptedHealth
from tests.test_daemon_episodes import Intervals

NAMESPACE = "shop"
INTERVAL_S = 0.2


def _targets(count: int) -> tuple[TargetSettings, ...]:
    return tuple(
        TargetSettings(
            name=f"app-{i}", namespace=NAMESPACE, strategy="canary", ingress=f"app-{i}-canary",
            baseline=Side(deployment="checkout"), candidate=Side(deployment=f"app-{i}-canary"),
        )
        for i in range(count)
    )


def _down_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_prometheus_going_away_is_told_once_and_shown_until_it_is_back(
    sample_apps: SampleAppFactory,
    prometheus_factory: PrometheusFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = sample_apps(deployment="checkout", namespace=NAMESPACE, rps=20.0)
    prometheus = prometheus_factory(targets=[app.address], scrape_interval_s=0.5)
    settings = Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        prometheus=PrometheusSettings(url=prometheus.url, scrape_interval_s=0.5),
        targets=_targets(5),
    )
    caplog.set_level(logging.DEBUG)
    async with (
        PrometheusClient(base_url=prometheus.url, retries=0, timeout_s=5.0) as client,
        open_daemon(settings, metrics_source=PrometheusSource(client=client),
                    health_source=ScriptedHealth()) as daemon,
        aiohttp.ClientSession() as session,
    ):
        base = f"http://127.0.0.1:{daemon.port}"

        async def readyz() -> tuple[int, dict[str, Any]]:
            async with session.get(f"{base}/readyz") as response:
                return response.status, await response.json()

        async def page() -> str:
            async with session.get(f"{base}/") as response:
                return await response.text()

        async def prometheus_is(status: str) -> bool:
            code, body = await readyz()
            return code == 200 and body["sources"].get("prometheus", {}).get("status") == status

        await wait_until(lambda: daemon.ready, timeout_s=30, what="the daemon ready (its store open)")
        await wait_until(lambda: prometheus_is("up"), timeout_s=30, what="Prometheus up in /readyz")

        async def store_up() -> bool:
            status: object = (await readyz())[1]["sources"].get("store", {}).get("status")
            return status == "up"

        await wait_until(store_up, timeout_s=30, what="the store up in /readyz")
        _, body = await readyz()
        assert body["sources"]["kubernetes"]["status"] == "off"
        assert body["sources"]["kubernetes"]["detail"] == (
            "no Kubernetes access: deciding only, nothing is rolled back"
        )
        assert body["sources"]["store"]["status"] == "up"
        assert "Kubernetes off: no Kubernetes access: deciding only" in await page()

        # The targets' past is read once at start (and retried); the outage comes after it.
        await wait_until(lambda: not any(t.history_wanted for t in daemon.state.targets.values()),
                         timeout_s=60, what="the targets' past read")
        caplog.clear()
        stopped_at = datetime.now(UTC)
        await asyncio.to_thread(prometheus.stop)
        await wait_until(lambda: prometheus_is("down"), timeout_s=30, what="Prometheus down in /readyz")
        ticks = daemon.ticks
        await wait_until(
            lambda: daemon.ticks >= ticks + 10, timeout_s=30, what="ten ticks without Prometheus"
        )

        code, body = await readyz()
        assert code == 200  # the loop is alive: still ready
        shown = body["sources"]["prometheus"]
        assert shown["error"].startswith(f"cannot reach Prometheus at {prometheus.url}")
        since = datetime.fromisoformat(shown["since"])
        assert stopped_at - timedelta(seconds=1) <= since <= datetime.now(UTC)
        assert shown["failures"] >= 10
        text = await page()
        assert f"Prometheus unreachable since {since:%Y-%m-%d %H:%M:%S} UTC" in text
        assert "nothing is rolled back on missing data" in text
        # One line for the outage, whatever the number of ticks, queries and targets.
        lines = _down_lines(caplog)
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"prometheus is down since {shown['since']}: cannot reach Prometheus")

        caplog.clear()
        prometheus.start()
        await prometheus.await_ready()
        await wait_until(lambda: prometheus_is("up"), timeout_s=30, what="Prometheus up again")
        assert "Prometheus unreachable" not in await page()
        back = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prometheus is back")]
        assert len(back) == 1, back


def test_an_outage_is_summarized_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    started = datetime(2026, 12, 6, 17, 0, tzinfo=UTC)
    board = SourceBoard(loop=lambda: now[0], wall=lambda t: started + timedelta(seconds=t - 1000.0))
    caplog.set_level(logging.INFO, logger="rollbackd.daemon.sourcestatus")
    board.report("prometheus", None)
    for tick in range(1, 1 + int(2.5 * SUMMARY_EVERY_S)):  # a tick a second for two and a half minutes
        now[0] = 1000.0 + tick
        board.report("prometheus", "cannot reach Prometheus at http://prometheus:9090: refused")
        board.summarize()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == (
        "prometheus is down since 2026-12-06T17:00:01.000Z: cannot reach Prometheus at"
        " http://prometheus:9090: refused"
    )
    summaries = [m for m in messages if m.startswith("still down: ")]
    assert summaries == [
        "still down: prometheus for 60s (since 2026-12-06T17:00:01.000Z, 61 failed uses): cannot reach"
        " Prometheus at http://prometheus:9090: refused",
        "still down: prometheus for 120s (since 2026-12-06T17:00:01.000Z, 121 failed uses): cannot reach"
        " Prometheus at http://prometheus:9090: refused",
    ]
    assert len(messages) == 3
    now[0] += 1
    board.report("prometheus", None)
    assert caplog.records[-1].getMessage() == "prometheus is back after 150s (150 failed uses)"
    view = board.view()
    assert isinstance(view, dict)
    assert view["prometheus"] == {
        "status": "up", "since": "2026-12-06T17:02:31.000Z", "for_s": 0.0, "error": None, "detail": None,
        "failures": 0,
    }


async def test_the_api_shows_times_on_the_wall_clock_in_utc(tmp_path: Path) -> None:
    healthy = Sample(requests=200, errors=0)
    settings = Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        targets=_targets(1),
    )
    before = datetime.now(UTC)
    async with (
        open_daemon(settings, metrics_source=Intervals(lambda i: (healthy, healthy)),
                    health_source=ScriptedHealth()) as daemon,
        aiohttp.ClientSession() as session,
    ):
        await wait_until(lambda: daemon.ticks >= 2, timeout_s=30, what="two ticks")
        async with session.get(f"http://127.0.0.1:{daemon.port}/api/v1/targets/shop/app-0") as response:
            target = await response.json()
    decided = target["decision"]["t"]
    assert decided.endswith("Z")
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(decided) <= datetime.now(UTC)
    assert target["evidence"]["t"] == decided


def test_a_store_still_opening_at_start_is_no_outage(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    board = SourceBoard(loop=lambda: now[0], wall=lambda t: datetime(2026, 1, 1, tzinfo=UTC))
    caplog.set_level(logging.INFO, logger="rollbackd.daemon.sourcestatus")
    board.report("store", "the store is not open yet", starting=True)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    now[0] = 1.0
    board.report("store", None)
    board.report("store", "database is locked")  # once it had worked, it is an outage
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == (
        "store is down since 2026-01-01T00:00:00.000Z: database is locked"
    )
