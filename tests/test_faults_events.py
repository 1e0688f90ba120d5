"""Event delivery under faults, with the daemon's real events machinery (store, outbox,
dispatcher, sinks) inside a running daemon: a private Mosquitto stopped and started again, and a
webhook that never accepts anything."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from rollbackd.backoff import Backoff
from rollbackd.config.settings import (
    EventsSettings,
    HttpSettings,
    MqttSettings,
    Settings,
    StoreSettings,
    WebhookSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.journal import Journal
from rollbackd.daemon.wiring import open_daemon
from rollbackd.events.dispatcher import Dispatcher
from rollbackd.events.model import CloudEvent
from rollbackd.events.mqtt import Topics
from rollbackd.events.publisher import EventPublisher
from rollbackd.events.webhooks import WebhookSink
from rollbackd.store import Store, open_store
from tests.eventstory import rollback_story
from tests.faultledger import FaultLedger
from tests.kubefixtures import wait_until
from tests.mqttfixtures import Mosquitto, free_port, mosquitto, subscribed
from tests.test_daemon import HEALTHY, Api, ScriptedHealth, ScriptedMetrics, canary

__all__ = ["mosquitto"]  # fixture

SUBJECTS = ("faults/a", "faults/b", "faults/c")
#: The sinks' retry pace in these tests (events.retry_initial_s, events.retry_max_s).
BACKOFF = Backoff(initial_s=0.05, max_s=0.4)


@dataclass
class Running:
    daemon: Daemon
    journal: Journal
    api: Api

    async def announce(self, events: list[CloudEvent]) -> None:
        assert self.journal.events is not None
        for event in events:
            await self.journal.events.publisher.announce(event)

    async def probes(self) -> tuple[int, int]:
        healthz, _ = await self.api.call("GET", "/healthz")
        readyz, _ = await self.api.call("GET", "/readyz")
        return healthz, readyz


def settings(tmp_path: Path, broker: Mosquitto, prefix: str, webhooks: list[WebhookSettings]) -> Settings:
    return Settings(
        interval_s=0.2,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        events=EventsSettings(
            mqtt=MqttSettings(
                enabled=True, url=broker.url, topic_prefix=prefix, instance="faults", reconnect_max_s=0.5
            ),
            webhooks=tuple(webhooks),
            kubernetes_events=False,
            retry_initial_s=BACKOFF.initial_s,
            retry_max_s=BACKOFF.max_s,
        ),
        targets=(canary("checkout"),),
    )


@contextlib.asynccontextmanager
async def running(config: Settings) -> AsyncIterator[Running]:
    """The daemon with its store kept open (as ``rollbackd run`` has it), ready."""
    async with (
        aiohttp.ClientSession() as session,
        open_daemon(
            config, metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
        ) as daemon,
    ):
        await wait_until(lambda: daemon.ready, timeout_s=20, what="the daemon ready")
        yield Running(daemon, daemon.journal, Api(session, daemon))


async def outbox(tmp_path: Path) -> list[tuple[str, str | None]]:
    """(event id, subject) of every event recorded, in outbox order."""
    store: Store = open_store(None, data_dir=tmp_path / "data")
    await store.open()
    try:
        return [(event.event_id, event.subject) for event in await store.pending("nobody", limit=100_000)]
    finally:
        await store.close()


@pytest.mark.faults
async def test_mosquitto_stopped_and_restarted_loses_nothing_and_keeps_the_order(
    mosquitto: Mosquitto, tmp_path: Path, fault_ledger: FaultLedger
) -> None:
    prefix = f"o{tmp_path.name[-10:]}"
    topics = Topics(prefix)
    stories = {subject: rollback_story(subject) for subject in SUBJECTS}
    async with subscribed(
        mosquitto.options, topics.events_filter(), session=f"{prefix}-watcher"
    ) as subscriber:
        async with running(settings(tmp_path, mosquitto, prefix, [])) as up:
            for subject in SUBJECTS:
                await up.announce(stories[subject][:2])
            await subscriber.wait_for(2 * len(SUBJECTS))

            await mosquitto.stop()
            fault_ledger.fault("mosquitto stopped and restarted")
            for subject in SUBJECTS:  # recorded while the broker is away
                await up.announce(stories[subject][2:4])
            await wait_until(
                lambda: up.journal.sink_status()["mqtt"].retrying > 0, timeout_s=20, what="a failed delivery"
            )
            # The broker is not the daemon's health: it stays alive and ready, as documented.
            assert await up.probes() == (200, 200)
            assert await up.api.metric("rollbackd_event_sink_retrying", sink="mqtt") > 0
            assert await up.api.metric("rollbackd_event_delivery_failures_total", sink="mqtt") > 0
            for subject in SUBJECTS:
                await up.announce(stories[subject][4:])

            await mosquitto.start()
            assert up.journal.events is not None
            assert await up.journal.events.dispatcher.drain(timeout_s=30)
            assert await up.probes() == (200, 200)
            assert await up.api.metric("rollbackd_event_sink_retrying", sink="mqtt") == 0
            recorded = await outbox(tmp_path)
            await wait_until(
                lambda: (
                    {event_id for event_id, _ in recorded} <= {m.json()["id"] for m in subscriber.messages}
                ),
                timeout_s=30,
                what="every recorded event received",
            )
        received = [m.json() for m in subscriber.messages]

    ids = list(dict.fromkeys(event["id"] for event in received))  # subscribers dedupe by id
    lost = [event_id for event_id, _ in recorded if event_id not in ids]
    fault_ledger.observe(records_lost=len(lost))
    assert lost == []
    for about in {of for _, of in recorded}:
        wanted = [event_id for event_id, of in recorded if of == about]
        got = [event_id for event_id in ids if event_id in wanted]
        assert got == wanted, about  # in order, per subject
    for subject, story in stories.items():
        assert [e["id"] for e in received if e["subject"] == subject and e["id"] in ids][-1] == story[-1].id

    # A subscriber arriving now learns each target's latest state from the retained status.
    async with subscribed(mosquitto.options, f"{prefix}/v1/faults/+/status") as late:
        statuses = {m.topic: m.json() for m in await late.wait_for(len(SUBJECTS))}
    for subject, story in stories.items():
        status = statuses[topics.status(subject)]
        assert status["state"] == "rolled-back"
        assert status["last_event"]["id"] == story[-1].id


@dataclass
class Refusing:
    """A webhook endpoint that never accepts: every request is answered ``status``."""

    status: int
    requests: list[str] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((await request.json())["id"])
        return web.Response(status=self.status)


@contextlib.asynccontextmanager
async def serving(handler: Callable[[web.Request], object]) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/hook"
    finally:
        await runner.cleanup()


@pytest.mark.faults
@pytest.mark.parametrize("failure", ["http-500", "http-429", "closed-port"])
async def test_a_webhook_that_fails_for_good_blocks_nobody_and_retries_at_the_documented_pace(
    failure: str,
    mosquitto: Mosquitto,
    tmp_path: Path,
    fault_ledger: FaultLedger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="rollbackd.events.dispatcher")
    prefix = f"w{tmp_path.name[-10:]}"
    accepted: list[str] = []

    async def accept(request: web.Request) -> web.Response:
        accepted.append((await request.json())["id"])
        return web.Response(status=204)

    refusing = Refusing(status=500 if failure == "http-500" else 429)
    story = [event for subject in SUBJECTS for event in rollback_story(subject)]
    async with serving(accept) as good_url, serving(refusing.handle) as bad_url:
        if failure == "closed-port":
            bad_url = f"http://127.0.0.1:{free_port()}/hook"
        hooks = [
            WebhookSettings(name="dead", url=bad_url, timeout_s=1.0),
            WebhookSettings(name="chatops", url=good_url),
        ]
        async with (
            subscribed(mosquitto.options, Topics(prefix).events_filter()) as subscriber,
            running(settings(tmp_path, mosquitto, prefix, hooks)) as up,
        ):
            fault_ledger.fault(f"webhook failing for good ({failure})")
            await up.announce(story)
            # MQTT and the other webhook get everything, in order, while the dead one fails.
            mine = {event.id for event in story}
            await wait_until(
                lambda: mine <= {m.json()["id"] for m in subscriber.messages}, timeout_s=20, what="MQTT"
            )
            await wait_until(lambda: mine <= set(accepted), timeout_s=20, what="the good webhook")
            received = list(subscriber.messages)
            dead = up.journal.sink_status()["webhook:dead"]
            # Backed off as documented: doubling from retry_initial_s up to retry_max_s, each
            # pause jittered down to half at most; a refused connection answers at once.
            started, first, attempt = asyncio.get_running_loop().time(), dead.failures, dead.retrying
            await wait_until(lambda: dead.failures >= first + 6, timeout_s=20, what="six more attempts")
            took_s = asyncio.get_running_loop().time() - started
            pauses = [BACKOFF.ceiling(a) for a in range(attempt, attempt + 6)]
            # (Beside the pauses, six attempts' own time: up to half a second each on a loaded machine.)
            assert sum(p / 2 for p in pauses[1:]) <= took_s <= sum(pauses) + 3.0, (took_s, pauses)
            # Visible: counted on /metrics, the daemon healthy and ready (a sink is not its
            # health), the event it is stuck on still waiting in the outbox.
            assert await up.api.metric("rollbackd_event_sink_retrying", sink="webhook:dead") >= 3
            assert (
                await up.api.metric("rollbackd_event_delivery_failures_total", sink="webhook:dead")
                == dead.failures
            )
            assert await up.api.metric("rollbackd_events_delivered_total", sink="mqtt") >= len(story)
            assert await up.probes() == (200, 200)
            assert dead.delivered == 0

    mine = {event.id for event in story}  # the daemon announces its own target's decisions too
    ids = list(dict.fromkeys(m.json()["id"] for m in received if m.json()["id"] in mine))
    assert ids == [event.id for event in story]
    assert [event_id for event_id in dict.fromkeys(accepted) if event_id in mine] == ids
    logged = [r for r in caplog.records if "webhook:dead could not deliver" in r.getMessage()]
    assert logged
    stuck = {getattr(r, "event_id", None) for r in logged}
    assert len(stuck) == 1  # the same first event, again and again: order is kept
    if failure != "closed-port":
        assert set(refusing.requests) == stuck
    assert all("/hook" not in r.getMessage() for r in logged)  # the URL (it may hold a token) is not
    fault_ledger.observe(records_lost=len(story) - len(set(ids)))


@pytest.mark.faults
async def test_a_webhook_that_refuses_for_good_is_dead_lettered_escalated_once_and_audited(
    mosquitto: Mosquitto, tmp_path: Path, fault_ledger: FaultLedger
) -> None:
    prefix = f"g{tmp_path.name[-10:]}"
    accepted: list[dict[str, object]] = []

    async def accept(request: web.Request) -> web.Response:
        accepted.append(await request.json())
        return web.Response(status=204)

    gone = Refusing(status=410)
    story = [event for subject in SUBJECTS for event in rollback_story(subject)]
    mine = [event.id for event in story]
    async with serving(accept) as good_url, serving(gone.handle) as gone_url:
        hooks = [WebhookSettings(name="gone", url=gone_url), WebhookSettings(name="chatops", url=good_url)]
        async with running(settings(tmp_path, mosquitto, prefix, hooks)) as up:
            fault_ledger.fault("webhook answering 410 Gone")
            await up.announce(story)
            await wait_until(lambda: set(mine) <= set(gone.requests), timeout_s=20, what="each event tried")
            await wait_until(
                lambda: any(e["type"] == "io.rollbackd.escalation.raised" for e in accepted),
                timeout_s=20,
                what="the escalation at the good webhook",
            )
            assert await up.api.metric("rollbackd_events_dead_lettered_total", sink="webhook:gone") >= len(
                story
            )
            status, history = await up.api.call("GET", "/api/v1/history")
            assert status == 200
    # Each event was tried once: a 410 is not retried; the escalation was not sent to it.
    assert [request for request in gone.requests if request in mine] == mine
    escalation_ids = {e["id"] for e in accepted if e["type"] == "io.rollbackd.escalation.raised"}
    assert not escalation_ids & set(gone.requests)
    escalations = [e for e in accepted if e["type"] == "io.rollbackd.escalation.raised"
                   and e["data"]["cause"] == "sink-rejected"]  # type: ignore[index]
    assert len(escalations) == 1  # once per sink and cause, not once per event
    assert escalations[0]["data"]["sink"] == "webhook:gone"  # type: ignore[index]
    assert [e["id"] for e in accepted if e["id"] in mine] == mine  # the other webhook got all, in order
    letters = [entry for entry in history["entries"] if entry["kind"] == "event.dead-lettered"]
    assert {entry["details"]["event_id"] for entry in letters} >= set(mine)
    fault_ledger.observe(records_lost=0)


@pytest.mark.faults
async def test_a_webhook_that_fails_for_good_does_not_grow_memory(
    tmp_path: Path, fault_ledger: FaultLedger, caplog: pytest.LogCaptureFixture
) -> None:
    # The retries' log lines are not what is measured here (pytest keeps every record).
    caplog.set_level(logging.CRITICAL, logger="rollbackd.events.dispatcher")
    store = open_store(None, data_dir=tmp_path / "data")
    await store.open()
    try:
        publisher = EventPublisher(store=store)
        for subject in SUBJECTS:
            for _ in range(20):
                for event in rollback_story(subject):
                    await publisher.announce(event)
        dead_url = f"http://127.0.0.1:{free_port()}/hook"
        async with (
            WebhookSink(name="dead", url=dead_url, secret="s", timeout_s=1.0) as hook,
            Dispatcher(
                store=store, sinks=[hook], backoff=Backoff(initial_s=0.001, max_s=0.002)
            ) as dispatcher,
        ):
            fault_ledger.fault("webhook failing for good (memory)")
            status = dispatcher.status()["webhook:dead"]
            await wait_until(lambda: status.failures >= 100, timeout_s=30, what="100 failed attempts")
            tracemalloc.start()
            try:
                await wait_until(lambda: status.failures >= 200, timeout_s=30, what="200 failed attempts")
                gc.collect()  # failed attempts leave reference cycles (exception, traceback, frames)
                before = tracemalloc.take_snapshot()
                await wait_until(lambda: status.failures >= 1700, timeout_s=60, what="1700 failed attempts")
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
    finally:
        await store.close()
    ignored = [tracemalloc.Filter(False, "*/_pytest/*"), tracemalloc.Filter(False, "*/tracemalloc.py")]
    grown = sum(
        stat.size_diff
        for stat in after.filter_traces(ignored).compare_to(before.filter_traces(ignored), "filename")
    )
    # 1,500 more failed attempts: what stays is a counter and the last error, not a trace of each
    # attempt (a log record or an exception kept per attempt would be 500 bytes and more each).
    # Measured: under 50 KiB whether after 1,000 or 4,000 attempts (caches filling, then flat).
    assert grown < 1500 * 64, grown
    assert status.delivered == 0
    fault_ledger.observe(records_lost=0)
