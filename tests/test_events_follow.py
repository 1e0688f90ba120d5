"""``rollbackd events``: the live view of the stream, and the targets' retained statuses."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
from pathlib import Path

import aiomqtt

from rollbackd.backoff import Backoff
from rollbackd.events.dispatcher import Dispatcher
from rollbackd.events.follow import Dedupe, follow, format_line
from rollbackd.events.model import CloudEvent
from rollbackd.events.mqtt import MqttSink, Topics
from rollbackd.events.publisher import EventPublisher
from rollbackd.store import open_store
from tests.eventstory import rollback_story
from tests.mqttfixtures import Mosquitto, mosquitto, topics

__all__ = ["mosquitto", "topics"]  # fixtures

FAST = Backoff(initial_s=0.05, max_s=0.5)
REPO = Path(__file__).resolve().parents[1]


async def publish_raw(broker: Mosquitto, topic: str, payload: bytes) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, timeout=5) as client:
        await client.publish(topic, payload, qos=1)


async def deliver(broker: Mosquitto, topics: Topics, tmp_path: Path, *stories: list[CloudEvent]) -> None:
    store = open_store(None, data_dir=tmp_path / "store")
    await store.open()
    try:
        async with (
            MqttSink(options=broker.options, instance="t", topics=topics, reconnect=FAST) as sink,
            Dispatcher(store=store, sinks=[sink], backoff=FAST) as dispatcher,
        ):
            publisher = EventPublisher(store=store, on_recorded=dispatcher.nudge)
            for story in stories:
                for event in story:
                    await publisher.announce(event)
            assert await dispatcher.drain(timeout_s=20)
    finally:
        await store.close()


def test_one_readable_line_per_event() -> None:
    started = rollback_story()[2]
    assert format_line(started) == (
        "2026-11-24T03:00:00Z  shop/checkout  rollback.started     " + started.summary
    )


def test_dedupe_remembers_a_bounded_window() -> None:
    dedupe = Dedupe(size=2)
    assert [dedupe.seen(i) for i in ("a", "b", "a", "c", "d", "a")] == [
        False,
        False,
        True,
        False,
        False,
        False,
    ]


async def test_follow_prints_each_event_once_filtered_by_target_and_type(
    mosquitto: Mosquitto, topics: Topics, tmp_path: Path
) -> None:
    checkout, payments = rollback_story("shop/checkout"), rollback_story("shop/payments")
    out = io.StringIO()
    ready = asyncio.Event()
    watching = asyncio.create_task(
        follow(
            options=mosquitto.options,
            topics=topics,
            out=out,
            target="shop/checkout",
            types=["rollback.*"],
            limit=3,
            subscribed=ready,
            notes=io.StringIO(),
        )
    )
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        # A duplicate delivery (at least once) comes first: it must be shown once.
        started = checkout[2]
        await publish_raw(
            mosquitto, topics.event(started.subject, started.type), json.dumps(started.to_json()).encode()
        )
        await publish_raw(mosquitto, topics.event(started.subject, started.type), b"not json at all")
        await deliver(mosquitto, topics, tmp_path, payments, checkout)
        async with asyncio.timeout(20):
            printed = await watching
    finally:
        watching.cancel()
    assert printed == 3
    assert out.getvalue().splitlines() == [format_line(e) for e in checkout[2:]]


async def test_the_command_follows_the_stream_and_shows_statuses(
    mosquitto: Mosquitto, topics: Topics, tmp_path: Path
) -> None:
    config = tmp_path / "rollbackd.yaml"
    config.write_text(f"events:\n  mqtt:\n    url: mqtt://127.0.0.1:1\n    topic_prefix: {topics.prefix}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
    command = [
        sys.executable,
        "-m",
        "rollbackd",
        "events",
        "--config",
        str(config),
        "--mqtt-url",
        mosquitto.url,
    ]
    follower = await asyncio.create_subprocess_exec(
        *command,
        "--follow",
        "--type",
        "rollback.*",
        "--type",
        "target.degraded",
        "--count",
        "4",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        story = rollback_story("shop/checkout")
        assert follower.stderr is not None
        async with asyncio.timeout(30):
            note = await follower.stderr.readline()  # subscribed
        assert note.decode().startswith(f"# following {topics.events_filter()} on 127.0.0.1:{mosquitto.port}")
        await deliver(mosquitto, topics, tmp_path, story)
        async with asyncio.timeout(30):
            stdout, stderr = await follower.communicate()
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    assert follower.returncode == 0, stderr.decode()
    assert (
        stdout.decode().splitlines() == [format_line(e) for e in story if e.short_type != "decision.made"][:4]
    )

    snapshot = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(30):
        stdout, stderr = await snapshot.communicate()
    assert snapshot.returncode == 0, stderr.decode()
    (line,) = stdout.decode().splitlines()
    assert line.startswith("shop/checkout  rolled-back ")
    assert line.endswith(story[-1].summary)


async def test_the_example_subscriber_prints_each_event_once(
    mosquitto: Mosquitto, topics: Topics, tmp_path: Path
) -> None:
    story = rollback_story("shop/checkout")
    example = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO / "examples" / "subscriber.py"),
        "--url",
        mosquitto.url,
        "--prefix",
        topics.prefix,
        "--client-id",
        f"{topics.prefix}-example",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert example.stdout is not None
        async with asyncio.timeout(30):
            assert (await example.stdout.readline()).startswith(b"# subscribed to ")
        degraded = story[0]
        await publish_raw(
            mosquitto, topics.event(degraded.subject, degraded.type), json.dumps(degraded.to_json()).encode()
        )  # delivered twice: printed once
        await deliver(mosquitto, topics, tmp_path, story)
        lines: list[str] = []
        async with asyncio.timeout(30):
            while len(lines) < len(story):
                lines.append((await example.stdout.readline()).decode().rstrip("\n"))
    finally:
        example.terminate()
        await example.wait()
    assert [line.split()[2] for line in lines] == [e.short_type for e in story]
    assert [line.split("  ", 3)[-1].strip() for line in lines] == [e.summary for e in story]
