"""The whole story of a rollback, as a subscriber sees it: the real daemon, a real SQLite store, a
real Mosquitto; a scripted metrics source and a scripted cluster behind their protocols."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rollbackd.config.settings import (
    ApiSettings,
    EventsSettings,
    HttpSettings,
    MqttSettings,
    SafetySettings,
    Settings,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.wiring import open_daemon
from rollbackd.run import Phase
from rollbackd.store import open_store
from tests.kubefixtures import wait_until
from tests.mqttfixtures import Mosquitto, free_port, mosquitto, subscribed  # noqa: F401 (fixture)
from tests.test_daemon import HEALTHY, SEVERE, ScriptedHealth, ScriptedMetrics, canary
from tests.test_daemon_rollbacks import ScriptedTargets

INTERVAL_S = 0.2


def phase(daemon: Daemon) -> Phase | None:
    """The phase of the target's rollback run, if there is one."""
    run = daemon.rollbacks.runs.get("shop/checkout")
    return None if run is None else run.phase


def settings(broker: Mosquitto, data_dir: Path, prefix: str) -> Settings:
    return Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        safety=SafetySettings(),
        store=StoreSettings(data_dir=str(data_dir)),
        verification=VerificationSettings(window_s=1.0),
        events=EventsSettings(
            mqtt=MqttSettings(enabled=True, url=broker.url, topic_prefix=prefix, instance="test"),
            kubernetes_events=False,
        ),
        targets=(canary("checkout"),),
    )


async def test_a_subscriber_sees_the_whole_rollback_in_order(mosquitto: Mosquitto, tmp_path: Path) -> None:  # noqa: F811
    prefix = f"t{tmp_path.name[-8:]}"
    config = settings(mosquitto, tmp_path / "data", prefix)
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets(action_s=0.1)
    topic = f"{prefix}/v1/shop/checkout/events/#"
    async with subscribed(mosquitto.options, topic) as subscriber, open_daemon(
        config, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
    ) as daemon:
        await wait_until(lambda: daemon.journal.attached and daemon.ready, what="the daemon ready")
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 5, what="five healthy ticks")
        metrics.pair = SEVERE
        await wait_until(
            lambda: phase(daemon) is Phase.VERIFYING, timeout_s=20, what="the rollback verifying"
        )
        metrics.pair = HEALTHY
        await wait_until(
            lambda: phase(daemon) not in (None, Phase.ACTING, Phase.VERIFYING),
            timeout_s=20,
            what="the rollback's verdict",
        )
        assert phase(daemon) is Phase.VERIFIED
        # The first verdict (healthy) is announced too, then the rollback's story.
        received = await subscriber.wait_for(6, timeout_s=20)

    events = [message.json() for message in received]
    types = [event["type"] for event in events]
    assert types[0] == "io.rollbackd.decision.made"
    assert events[0]["data"]["decision"]["outcome"] == "none"
    assert types[1:6] == [
        "io.rollbackd.target.degraded",
        "io.rollbackd.decision.made",
        "io.rollbackd.rollback.started",
        "io.rollbackd.rollback.completed",
        "io.rollbackd.rollback.verified",
    ]
    for message, event in zip(received, events, strict=True):
        assert event["specversion"] == "1.0"
        assert event["subject"] == "shop/checkout"
        assert event["id"]
        assert event["time"]
        assert message.topic.endswith("/events/" + event["type"].removeprefix("io.rollbackd."))
    assert len({event["id"] for event in events}) == len(events)
    decision = events[2]["data"]
    assert decision["decision"]["outcome"] == "immediate"

    # The audit trail holds the same story, with the daemon's start and stop around it.
    store = open_store(None, data_dir=tmp_path / "data")
    async with contextlib.AsyncExitStack() as stack:
        await store.open()
        stack.push_async_callback(store.close)
        history = await store.history()
    kinds = [entry.kind for entry in history]
    assert kinds[0] == "daemon.start"
    assert kinds[-1] == "daemon.stop"
    for wanted in ("target.degraded", "decision.made", "rollback.started", "rollback.verified"):
        assert any(wanted in kind for kind in kinds), (wanted, kinds)


async def test_without_a_store_the_daemon_is_not_ready_and_does_not_act(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    config = Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(blocker)),
        targets=(canary("checkout"),),
    )
    metrics = ScriptedMetrics(SEVERE)
    cluster = ScriptedTargets(action_s=0.1)
    async with open_daemon(
        config, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster, store_retry_s=0.2
    ) as daemon:
        await wait_until(lambda: daemon.ticks >= 10, what="ten ticks")
        assert not daemon.ready
        problem = daemon.journal.problem
        assert problem is not None
        assert "store unavailable" in problem
        assert str(blocker) in problem
        decision = daemon.state.targets["shop/checkout"].latest
        assert decision is not None
        assert decision.blocked_by == "store"  # judged, held back...
        assert "not acting until the audit trail can be written" in decision.reason
        assert cluster.runs == []  # ...doing nothing it could not record


@pytest.fixture(autouse=True)
def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING")


async def test_a_rollback_left_unfinished_is_finished_after_a_restart(tmp_path: Path) -> None:
    config = Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        verification=VerificationSettings(window_s=1.0),
        events=EventsSettings(kubernetes_events=False),
        targets=(canary("checkout"),),
    )

    async def run_daemon(metrics: ScriptedMetrics, cluster: ScriptedTargets, until: str) -> Daemon:
        async with open_daemon(
            config, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
        ) as daemon:
            if until == "acting":
                await wait_until(
                    lambda: phase(daemon) is Phase.ACTING and cluster.runs == [False],
                    what="the rollback's action under way",
                )
            else:
                await wait_until(
                    lambda: phase(daemon) not in (None, Phase.ACTING, Phase.VERIFYING),
                    timeout_s=40,
                    what="the rollback's verdict",
                )
        return daemon

    # The first process decides and starts acting, then stops before the action completes.
    first_cluster = ScriptedTargets(action_s=60.0)
    await run_daemon(ScriptedMetrics(SEVERE), first_cluster, until="acting")
    assert first_cluster.runs == [False]

    # The next one finds the rollback under way in the store, finishes it and verifies it, even
    # though the metrics it sees now (traffic back on the stable) alone would not call for one.
    second_cluster = ScriptedTargets(action_s=0.1)
    daemon = await run_daemon(ScriptedMetrics(HEALTHY), second_cluster, until="done")
    run = daemon.rollbacks.runs["shop/checkout"]
    assert run.resumed
    assert run.phase is Phase.VERIFIED
    assert second_cluster.runs == [False]

    # And a third start has nothing left to resume.
    third_cluster = ScriptedTargets(action_s=0.1)
    async with open_daemon(
        config, metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth(), targets=third_cluster
    ) as daemon:
        await wait_until(lambda: daemon.ticks >= 10, what="ten ticks")
        assert daemon.rollbacks.runs == {}
    assert third_cluster.runs == []


async def test_steering_through_the_api_is_audited(tmp_path: Path) -> None:
    config = Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        api=ApiSettings(allow_unauthenticated_writes=True),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        events=EventsSettings(kubernetes_events=False),
        targets=(canary("checkout"),),
    )
    async with (
        open_daemon(
            config, metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
        ) as daemon,
        aiohttp.ClientSession() as session,
    ):
        await wait_until(lambda: daemon.journal.attached, what="the store attached")
        base = f"http://127.0.0.1:{daemon.port}"
        async with session.post(base + "/api/v1/freeze") as response:
            assert response.status == 200
        hold = {"eta_s": 300, "reason": "hotfix 2.3.1 rolling out"}
        async with session.post(base + "/api/v1/targets/shop/checkout/hold", json=hold) as response:
            assert response.status == 200
        shown: list[dict[str, Any]] = []

        async def hold_in_history() -> bool:
            nonlocal shown
            url = base + "/api/v1/history?target=shop/checkout&since=1h"
            async with session.get(url) as response:
                assert response.status == 200
                shown = (await response.json())["entries"]
            return "hold" in [entry["kind"] for entry in shown]

        await wait_until(hold_in_history, what="the hold in the history")
        assert all(entry["target"] == "shop/checkout" for entry in shown)
        async with session.get(base + "/api/v1/history?since=soon") as response:
            assert response.status == 400
    store = open_store(None, data_dir=tmp_path / "data")
    await store.open()
    try:
        history = await store.history()
    finally:
        await store.close()
    by_kind = {entry.kind: entry for entry in history}
    freeze = "global freeze on: no automatic rollback (by anonymous: no reason given)"
    assert by_kind["freeze"].summary == freeze
    assert by_kind["freeze"].details["by"] == "anonymous"
    assert by_kind["hold"].target == "shop/checkout"
    assert "hotfix 2.3.1" in by_kind["hold"].summary


async def test_events_recorded_before_a_sigkill_are_delivered_after_the_restart(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The real process: it records a decision (and its event) while the broker is down, is killed
    with SIGKILL before it can deliver, and the restarted process delivers that same event."""
    prefix = f"k{tmp_path.name[-8:]}"
    config = tmp_path / "rollbackd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "interval_s": 0.5,
                # Nothing answers there: the first decision is "inconclusive", announced as an event.
                "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 0.5, "retries": 0},
                "http": {"host": "127.0.0.1", "port": free_port()},
                "kubernetes": {"enabled": False},
                "store": {"data_dir": str(tmp_path / "data")},
                "events": {
                    "kubernetes_events": False,
                    "mqtt": {"enabled": True, "url": mosquitto.url, "topic_prefix": prefix, "instance": "k"},
                },
                "targets": [canary("checkout").model_dump(mode="json", exclude_defaults=True)],
            }
        ),
        encoding="utf-8",
    )
    database = tmp_path / "data" / "rollbackd.db"

    def outbox() -> list[tuple[str, str]]:
        if not database.exists():
            return []
        with contextlib.closing(sqlite3.connect(database)) as conn:
            try:
                return [
                    (str(i), str(t))
                    for i, t in conn.execute("SELECT event_id, type FROM outbox ORDER BY seq")
                ]
            except sqlite3.OperationalError:  # not migrated yet
                return []

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollbackd", "run", "--config", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    await mosquitto.stop()  # the broker is down while the first process runs
    first = await start()
    try:
        await wait_until(lambda: bool(outbox()), timeout_s=20, interval_s=0.1, what="an event recorded")
        recorded = outbox()
        assert recorded, "the daemon recorded no event"
        first.send_signal(signal.SIGKILL)
        assert await asyncio.wait_for(first.wait(), timeout=10) == -signal.SIGKILL
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()

    await mosquitto.start()
    async with subscribed(mosquitto.options, f"{prefix}/v1/shop/checkout/events/#") as subscriber:
        second = await start()
        try:
            received = await subscriber.wait_for(1, timeout_s=30)
        finally:
            second.terminate()
            await asyncio.wait_for(second.wait(), timeout=20)
    first_event_id, first_type = recorded[0]
    assert received[0].json()["id"] == first_event_id
    assert received[0].json()["type"] == first_type
