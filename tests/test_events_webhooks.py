"""Webhooks against a real aiohttp receiver on loopback: signed CloudEvents, retries after errors,
type filters, and a dead endpoint that holds back nobody else."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from rollbackd.backoff import Backoff
from rollbackd.config.settings import Settings
from rollbackd.events.dispatcher import DeliveryError, Dispatcher
from rollbackd.events.model import CloudEvent
from rollbackd.events.mqtt import MqttSink, Topics
from rollbackd.events.publisher import EventPublisher
from rollbackd.events.secrets import SecretError
from rollbackd.events.service import open_events
from rollbackd.events.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookSink,
    sign,
    type_matches,
    verify,
)
from rollbackd.store import Store, open_store
from tests.eventstory import clock, immediate_decision, rollback_story
from tests.kubefixtures import wait_until
from tests.mqttfixtures import Mosquitto, free_port, mosquitto, subscribed, topics

__all__ = ["mosquitto", "topics"]  # fixtures

FAST = Backoff(initial_s=0.02, max_s=0.2)
SECRET = "webhook-secret-123"


@dataclass
class Receiver:
    """A webhook endpoint: checks each request's signature as docs/events.md tells receivers to,
    answers with the next of ``answers`` (then 200), and keeps what it accepted."""

    secret: str | None = SECRET
    answers: list[int] = field(default_factory=list)
    delay_s: float = 0.0
    requests: list[tuple[int, str]] = field(default_factory=list)  # (status answered, event id)
    accepted: list[dict[str, object]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        assert request.content_type == "application/cloudevents+json"
        if self.secret is not None:
            stamp = request.headers[TIMESTAMP_HEADER]
            assert abs(time.time() - int(stamp)) < 300, "stale timestamp"
            mac = hmac.new(self.secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(request.headers[SIGNATURE_HEADER], f"sha256={mac}"):
                self.requests.append((401, "?"))
                return web.Response(status=401)
        event = json.loads(body)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.answers.pop(0) if self.answers else 200
        self.requests.append((status, event["id"]))
        if status == 200:
            self.accepted.append(event)
        return web.Response(status=status)


@pytest.fixture
async def receiver(no_leftover_tasks: None) -> AsyncIterator[Receiver]:
    """The receiver, served on a free loopback port (inside the leftover-task guard, which checks
    after the server has shut down)."""
    found = Receiver()
    app = web.Application()
    app.router.add_post("/hooks/T0KEN-in-path", found.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    found.url = f"http://127.0.0.1:{port}/hooks/T0KEN-in-path"
    yield found
    await runner.cleanup()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = open_store(None, data_dir=tmp_path / "store")
    await db.open()
    yield db
    await db.close()


async def announce_all(store: Store, dispatcher: Dispatcher, events: list[CloudEvent]) -> None:
    publisher = EventPublisher(store=store, on_recorded=dispatcher.nudge)
    for event in events:
        await publisher.announce(event)


async def test_signed_events_are_retried_after_a_server_error_until_accepted(
    receiver: Receiver, store: Store
) -> None:
    receiver.answers = [500, 503]
    story = rollback_story()
    async with (
        WebhookSink(name="chatops", url=receiver.url, secret=SECRET) as hook,
        Dispatcher(store=store, sinks=[hook], backoff=FAST) as dispatcher,
    ):
        await announce_all(store, dispatcher, story)
        assert await dispatcher.drain(timeout_s=20)
        assert dispatcher.status()["webhook:chatops"].failures == 2
    first = story[0].id
    assert receiver.requests[:3] == [(500, first), (503, first), (200, first)]
    assert [e["id"] for e in receiver.accepted] == [e.id for e in story]
    assert receiver.accepted[0] == story[0].to_json()


async def test_a_wrong_secret_is_refused_by_the_receiver_and_dead_lettered_not_retried(
    receiver: Receiver, store: Store
) -> None:
    story = rollback_story()[:2]
    async with (
        WebhookSink(name="chatops", url=receiver.url, secret="not-the-secret") as hook,
        Dispatcher(store=store, sinks=[hook], backoff=FAST) as dispatcher,
    ):
        await announce_all(store, dispatcher, story)
        assert await dispatcher.drain(timeout_s=20)  # a 401 is not retried: nothing waits
        status = dispatcher.status()["webhook:chatops"]
    assert receiver.accepted == []
    assert receiver.requests == [(401, "?")] * len(story)  # once each, never again
    assert status.dead_lettered == len(story)
    assert "HTTP 401" in (status.last_error or "")
    letters = [entry for entry in await store.history() if entry.kind == "event.dead-lettered"]
    assert [entry.details["event_id"] for entry in letters] == [e.id for e in story]
    assert all("T0KEN" not in entry.summary for entry in letters)  # URLs carry tokens: the host only


async def test_only_the_types_a_webhook_asks_for_are_sent(receiver: Receiver, store: Store) -> None:
    story = rollback_story()
    async with (
        WebhookSink(
            name="pager",
            url=receiver.url,
            secret=SECRET,
            types=["rollback.verified", "io.rollbackd.rollback.start*"],
        ) as hook,
        Dispatcher(store=store, sinks=[hook], backoff=FAST) as dispatcher,
    ):
        await announce_all(store, dispatcher, story)
        assert await dispatcher.drain(timeout_s=20)
    assert [e["type"] for e in receiver.accepted] == [
        "io.rollbackd.rollback.started",
        "io.rollbackd.rollback.verified",
    ]
    assert hook.skipped == 3
    assert await store.pending("webhook:pager") == []


async def test_a_dead_webhook_does_not_delay_the_mqtt_sink(
    mosquitto: Mosquitto, topics: Topics, store: Store
) -> None:
    story = rollback_story()
    dead_url = f"http://127.0.0.1:{free_port()}/nobody-listens"
    async with (
        subscribed(mosquitto.options, topics.events_filter()) as subscriber,
        MqttSink(options=mosquitto.options, instance="t", topics=topics, reconnect=FAST) as mqtt,
        WebhookSink(name="dead", url=dead_url, secret=SECRET, timeout_s=1.0) as hook,
        Dispatcher(store=store, sinks=[hook, mqtt], backoff=Backoff(initial_s=1.0, max_s=60.0)) as dispatcher,
    ):
        await announce_all(store, dispatcher, story)
        received = await subscriber.wait_for(len(story), timeout_s=30)
        # The dead sink's first failure is waited for: MQTT may deliver everything before it.
        await wait_until(lambda: dispatcher.status()["webhook:dead"].failures >= 1, what="a failed delivery")
        status = dispatcher.status()["webhook:dead"]
    assert [m.json()["id"] for m in received] == [e.id for e in story]
    assert status.delivered == 0
    assert "ClientConnectorError" in (status.last_error or "")
    assert [e.event_id for e in await store.pending("webhook:dead")] == [e.id for e in story]


async def test_a_slow_receiver_times_out_and_the_event_is_tried_again(receiver: Receiver) -> None:
    receiver.delay_s = 0.8
    async with WebhookSink(name="slow", url=receiver.url, secret=SECRET, timeout_s=0.2) as hook:
        with pytest.raises(DeliveryError, match="TimeoutError"):
            await hook.deliver(rollback_story()[0].to_outbox())


def test_signature_scheme_and_verification() -> None:
    body = b'{"id":"1"}'
    signature = sign("k", timestamp=1700000000, body=body)
    expected = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"

    def check(secret: str = "k", *, body: bytes = body, stamp: str | None = "1700000000", now: float) -> bool:
        return verify(secret, body=body, timestamp=stamp, signature=signature, now=now)

    assert check(now=1700000100)
    assert not check("other", now=1700000100)
    assert not check(body=b'{"id":"2"}', now=1700000100)
    assert not check(now=1700000000 + 301)  # a replay, too late
    assert not check(stamp=None, now=1700000000)
    assert not check(stamp="17e8", now=1700000000)


def test_unsigned_webhooks_send_no_signature_headers() -> None:
    headers = WebhookSink(name="open", url="http://127.0.0.1:1/", secret=None).headers(b"{}")
    assert headers == {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    signed = WebhookSink(name="s", url="http://127.0.0.1:1/", secret="k", wall_clock=lambda: 1700000000.7)
    assert signed.headers(b"{}")[TIMESTAMP_HEADER] == "1700000000"


def test_type_globs_match_short_or_full_types() -> None:
    assert type_matches(["*"], "io.rollbackd.hold.set")
    assert type_matches(["hold.*"], "io.rollbackd.hold.set")
    assert type_matches(["io.rollbackd.hold.*"], "io.rollbackd.hold.expired")
    assert not type_matches(["rollback.*"], "io.rollbackd.hold.set")
    assert not type_matches(["rollback.started"], "io.rollbackd.rollback.startedx")


def test_webhook_secrets_come_from_the_environment_or_a_file(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "events": {
                "webhooks": [
                    {"name": "from-env", "url": "http://127.0.0.1:9/a", "secret_env": "HOOK_SECRET"},
                    {
                        "name": "from-file",
                        "url": "http://127.0.0.1:9/b",
                        "secret_file": str(tmp_path / "secret"),
                    },
                ]
            }
        }
    )
    env_hook, file_hook = settings.events.webhooks
    (tmp_path / "secret").write_text("from-a-file\n")
    headers = WebhookSink.from_settings(env_hook, environ={"HOOK_SECRET": "from-env"}).headers(b"x")
    assert verify(
        "from-env",
        body=b"x",
        timestamp=headers[TIMESTAMP_HEADER],
        signature=headers[SIGNATURE_HEADER],
        now=time.time(),
    )
    headers = WebhookSink.from_settings(file_hook, environ={}).headers(b"x")
    assert verify(
        "from-a-file",
        body=b"x",
        timestamp=headers[TIMESTAMP_HEADER],
        signature=headers[SIGNATURE_HEADER],
        now=time.time(),
    )
    assert WebhookSink.from_settings(file_hook, environ={}).name == "webhook:from-file"
    with pytest.raises(SecretError, match="HOOK_SECRET is not set"):
        WebhookSink.from_settings(env_hook, environ={})
    (tmp_path / "secret").unlink()
    with pytest.raises(SecretError, match="cannot read"):
        WebhookSink.from_settings(file_hook, environ={})


async def test_open_events_delivers_to_every_configured_sink(
    mosquitto: Mosquitto, topics: Topics, receiver: Receiver, store: Store
) -> None:
    settings = Settings.model_validate(
        {
            "events": {
                "source": "/clusters/test/rollbackd",
                "retry_initial_s": 0.02,
                "retry_max_s": 0.2,
                "mqtt": {
                    "enabled": True,
                    "url": mosquitto.url,
                    "topic_prefix": topics.prefix,
                    "instance": "pod-0",
                },
                "webhooks": [{"name": "chatops", "url": receiver.url, "secret_env": "CHATOPS_SECRET"}],
            }
        }
    )
    async with (
        subscribed(mosquitto.options, topics.events_filter()) as subscriber,
        open_events(settings, store=store, environ={"CHATOPS_SECRET": SECRET}) as events,
    ):
        assert sorted(s.name for s in events.dispatcher.sinks) == ["mqtt", "webhook:chatops"]
        announcer = events.announcer("shop/checkout")
        for event in announcer.on_decision(
            immediate_decision("shop/checkout", 1000.0), hold=None, clock=clock(1000.0)
        ):
            await events.publisher.announce(event)
        received = await subscriber.wait_for(2)
        await wait_until(lambda: len(receiver.accepted) == 2, what="webhook delivery")
    assert [m.json()["type"] for m in received] == [
        "io.rollbackd.target.degraded",
        "io.rollbackd.decision.made",
    ]
    assert [e["id"] for e in receiver.accepted] == [m.json()["id"] for m in received]
    assert {m.json()["source"] for m in received} == {"/clusters/test/rollbackd"}
    (entry_degraded, entry_decision) = await store.history(target="shop/checkout")
    assert (entry_degraded.kind, entry_decision.kind) == ("target.degraded", "decision.made")
