"""What a rollback restrains outlives the process that took it: a restarted daemon (or a new
leader sharing the store) recalls the recent rollbacks from the audit log, so a target that
degrades again within its cooldown and post-rollback watch is escalated, not rolled back a second
time. The real daemon and a real SQLite store; scripted metrics and cluster behind their
protocols."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from rollbackd.config.settings import (
    EventsSettings,
    HttpSettings,
    Settings,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.wiring import open_daemon
from rollbackd.run import Phase
from tests.kubefixtures import wait_until
from tests.test_daemon import HEALTHY, SEVERE, Api, ScriptedHealth, ScriptedMetrics, canary
from tests.test_daemon_rollbacks import ScriptedTargets

KEY = "shop/checkout"


def config(data_dir: Path) -> Settings:
    return Settings(
        interval_s=0.2,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(data_dir)),
        verification=VerificationSettings(window_s=1.0, watch_s=1800.0),
        events=EventsSettings(kubernetes_events=False),
        targets=(canary("checkout"),),
    )


async def test_a_restarted_daemon_keeps_the_cooldown_and_watch_of_the_rollback_before_it(
    tmp_path: Path,
) -> None:
    settings = config(tmp_path / "data")
    metrics, first = ScriptedMetrics(SEVERE), ScriptedTargets(action_s=0.1)
    async with open_daemon(
        settings, metrics_source=metrics, health_source=ScriptedHealth(), targets=first
    ) as daemon:
        await wait_until(lambda: first.runs == [False], what="the rollback's action")
        metrics.pair = HEALTHY  # the rollback worked
        await wait_until(
            lambda: (run := daemon.rollbacks.runs.get(KEY)) is not None and run.phase is Phase.VERIFIED,
            timeout_s=60,
            what="the rollback verified",
        )

    # The next process finds the target failing again, within the cooldown and the watch.
    second = ScriptedTargets(action_s=0.1)
    async with (
        open_daemon(
            settings, metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(), targets=second
        ) as daemon,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, daemon)
        shown: dict[str, Any] = {}

        async def escalated() -> bool:
            nonlocal shown
            shown = await api.target()
            decision = shown.get("decision") or {}
            return bool(decision.get("escalate")) and decision.get("blocked_by") == "post-rollback-watch"

        await wait_until(escalated, timeout_s=60, what="the new breach escalated by the recalled watch")
        assert shown["watch"] is not None
        assert 1700 < shown["watch"]["remaining_s"] <= 1800
        assert shown["cooldown"] is not None
        await wait_until(lambda: daemon.ticks >= 15, what="more ticks of the breach")
        assert second.runs == []  # escalated, never rolled back a second time
