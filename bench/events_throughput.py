"""Benchmark: events from the outbox to MQTT, with SQLite and with PostgreSQL (issue 4).

The real pieces, wired as the daemon wires them (:func:`rollbackd.events.service.open_events`
with the default events settings): an :class:`~rollbackd.events.EventPublisher` records each
event with its audit entry in the store, a :class:`~rollbackd.events.Dispatcher` delivers the
outbox to the :class:`~rollbackd.events.mqtt.MqttSink` at QoS 1. The events are rollback stories
(``target.degraded``, ``decision.made``, ``rollback.started``, ``rollback.completed``,
``rollback.verified``) built by the real builders from domain values, over 50 targets. The
broker is a private ``mosquitto`` on a free loopback port, which the benchmark stops and starts.
The subscriber is an aiomqtt client in a process of its own (so that it does not share the
daemon's event loop) with a persistent session; it stamps each event with the monotonic clock
(the event loop's, the same in every process) as it arrives.

For each backend (SQLite in a temporary directory, PostgreSQL in a fresh schema):

1. throughput: 5,000 events recorded by 8 concurrent producers (each target's events by one of
   them, in order) while the dispatcher delivers; events/s from the first record call to the
   last arrival at the subscriber (unique ids), and the recording rate alone;
2. latency: one ``decision.made`` at a time, 50 a second for 10 s; from the decision (before its
   event is built) to the subscriber receiving it: p50, p99, max;
3. outage: the broker is down for 35 s -- long enough for the sink's reconnection backoff to reach
   its ceiling, as it has after a 10-minute outage -- while 600 events are recorded (12 rollback
   stories a minute for 10 minutes); then it starts again: time until the sink is reconnected and
   until the subscriber has every event;
4. backlog: 10,000 events recorded while the broker is down, then delivered: events/s from the
   outbox to MQTT, from the sink's reconnection to the last arrival.

Every phase checks that nothing was lost and that each target's events arrived in order (the
first arrival of each id; duplicates, allowed by at-least-once delivery, are counted).

Targets: at least 1,000 events/s from the outbox to MQTT with either backend (phases 1 and 4),
decision-to-subscriber p99 under 100 ms while the broker is up, and the backlog of a 10-minute
outage drained in seconds (phase 3: within 10 s of the sink's reconnection; the reconnection itself
comes at most ``events.mqtt.reconnect_max_s``, 30 s by default, after the broker is back).

Run from the repository root: ``python -m bench.events_throughput`` (about two and a half
minutes). Results go to ``bench/results/events_throughput.json`` and ``.md``. PostgreSQL is the
server at ``--postgres-dsn`` (default ``$ROLLBACKD_TEST_POSTGRES_DSN``, else the local ``test``
database); when it cannot be reached, its rows say so. The exit status is 1 when a target was
missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import aiomqtt
import psycopg

from bench.stats import percentile
from rollbackd.config.settings import EventsSettings, MqttSettings, Settings
from rollbackd.demo.processes import free_port
from rollbackd.events.build import Clock, EventFactory
from rollbackd.events.model import CloudEvent
from rollbackd.events.mqtt import MqttSink
from rollbackd.events.service import Events, open_events
from rollbackd.store import AuditEntry, Store, open_store, redact_url
from tests.eventstory import immediate_decision, rollback_story

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"

TARGETS = 50
STORY_EVENTS = 5
THROUGHPUT_EVENTS = 5_000
PRODUCERS = 8
LATENCY_RATE_PER_S = 50.0
LATENCY_EVENTS = 500
LATENCY_WARMUP = 25
#: 12 rollback stories a minute for 10 minutes.
OUTAGE_EVENTS = 600
#: Long enough for the sink's reconnection backoff (0.5 s doubling, jittered, capped at 30 s) to be
#: at its ceiling when the broker comes back, as after a 10-minute outage.
OUTAGE_S = 35.0
BACKLOG_EVENTS = 10_000
BACKLOG_OUTAGE_S = 2.0

MIN_EVENTS_PER_S = 1_000.0
MAX_P99_MS = 100.0
MAX_DRAIN_S = 10.0
#: Longest wait for a phase's events at the subscriber.
ARRIVAL_TIMEOUT_S = 120.0


# --- the broker --------------------------------------------------------------------------------


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def find_mosquitto() -> str | None:
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


@dataclass
class Broker:
    """A private ``mosquitto`` on ``127.0.0.1:port`` with persistence (sessions and their queued
    messages survive a restart), logging only problems, queueing up to ``queue`` messages for a
    subscriber that is behind or away (the default 1,000 would drop part of a large backlog), and
    sending a subscriber up to ``inflight`` messages ahead of its acknowledgements (the default 20
    makes one subscriber, not the daemon, the bottleneck past about 1,200 events/s here)."""

    binary: str
    directory: Path
    port: int = field(default_factory=free_port)
    queue: int = 100_000
    inflight: int = 100
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{HOST}:{self.port}"

    def _config(self) -> Path:
        lines = [
            f"listener {self.port} {HOST}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.directory / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            f"max_queued_messages {self.queue}",
            f"max_inflight_messages {self.inflight}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', who cannot write here
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_blocking(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self._config())], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10.0
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop_blocking()
                log = self.directory / "mosquitto.log"
                raise RuntimeError(
                    f"mosquitto did not start on port {self.port}: "
                    f"{log.read_text(errors='replace')[-500:] if log.exists() else ''}"
                )
            time.sleep(0.01)

    def stop_blocking(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    async def start(self) -> None:
        await asyncio.to_thread(self.start_blocking)

    async def stop(self) -> None:
        await asyncio.to_thread(self.stop_blocking)


# --- the subscriber (a process of its own) -----------------------------------------------------


async def subscribe(*, port: int, topic_filter: str, client_id: str, out: TextIO) -> None:
    """The subscriber process: print ``subscribed T`` after each (re)subscription and ``ID T`` for
    every event received, ``T`` on the monotonic clock; reconnect whenever the broker goes away."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            async with aiomqtt.Client(
                HOST, port, identifier=client_id, clean_session=False, timeout=5,
                socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
            ) as client:
                await client.subscribe(topic_filter, qos=1)
                out.write(f"subscribed {loop.time():.6f}\n")
                out.flush()
                async for message in client.messages:
                    received = loop.time()
                    payload = message.payload if isinstance(message.payload, bytes) else b"{}"
                    out.write(f"{json.loads(payload)['id']} {received:.6f}\n")
                    out.flush()
        except aiomqtt.MqttError:
            await asyncio.sleep(0.05)


class Subscriber:
    """Runs :func:`subscribe` as a child process and keeps what it reports: the first arrival of
    each event id (in order), duplicates, and the times it (re)subscribed."""

    def __init__(self, *, port: int, topic_filter: str) -> None:
        self._command = [
            sys.executable, "-m", "bench.events_throughput", "--subscriber", "--port", str(port),
            "--topic-filter", topic_filter, "--client-id", f"bench-{uuid.uuid4().hex[:8]}",
        ]
        self.arrivals: dict[str, float] = {}
        self.order: list[str] = []
        self.duplicates = 0
        self.subscribed: list[float] = []
        self._changed = asyncio.Event()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        self._process = await asyncio.create_subprocess_exec(
            *self._command, cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE
        )
        self._reader = asyncio.create_task(self._read(self._process), name="bench:subscriber-reader")
        async with asyncio.timeout(20):
            while not self.subscribed:
                await self._next_change()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            await process.wait()
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for raw in process.stdout:
            what, _, stamp = raw.decode().strip().partition(" ")
            if what == "subscribed":
                self.subscribed.append(float(stamp))
            elif what in self.arrivals:
                self.duplicates += 1
            else:
                self.arrivals[what] = float(stamp)
                self.order.append(what)
            self._changed.set()

    async def _next_change(self) -> None:
        self._changed.clear()
        await self._changed.wait()

    async def wait_for(self, ids: Collection[str], *, timeout_s: float = ARRIVAL_TIMEOUT_S) -> bool:
        """Whether every one of ``ids`` arrives within ``timeout_s``."""
        missing = set(ids) - self.arrivals.keys()
        seen = len(self.order)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while missing:
                    await self._next_change()
                    missing.difference_update(self.order[seen:])
                    seen = len(self.order)
        return not missing


# --- what each phase checks --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """What arrived of ``events``: how many, lost, duplicated, and whether each target's events
    came in the order they were recorded."""

    events: int
    arrived: int
    lost: int
    duplicates: int
    in_order: bool
    first_s: float | None
    last_s: float | None

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.in_order


def delivery_of(events: Sequence[CloudEvent], subscriber: Subscriber, duplicates_before: int) -> Delivery:
    ids = [event.id for event in events]
    arrived = [subscriber.arrivals[i] for i in ids if i in subscriber.arrivals]
    position = {event_id: n for n, event_id in enumerate(subscriber.order)}
    in_order = True
    by_target: dict[str | None, list[int]] = {}
    for event in events:
        if event.id in position:
            by_target.setdefault(event.subject, []).append(position[event.id])
    for positions in by_target.values():
        in_order = in_order and positions == sorted(positions)
    return Delivery(
        events=len(ids),
        arrived=len(arrived),
        lost=len(ids) - len(arrived),
        duplicates=subscriber.duplicates - duplicates_before,
        in_order=in_order,
        first_s=min(arrived) if arrived else None,
        last_s=max(arrived) if arrived else None,
    )


def stories(count: int, factory: EventFactory) -> list[list[CloudEvent]]:
    """``count`` events: rollback stories over :data:`TARGETS` targets, in story order."""
    return [
        rollback_story(f"bench/svc-{n % TARGETS:02d}", factory=factory) for n in range(count // STORY_EVENTS)
    ]


def flat(groups: Sequence[Sequence[CloudEvent]]) -> list[CloudEvent]:
    return [event for group in groups for event in group]


# --- the phases --------------------------------------------------------------------------------


async def throughput(events: Events, subscriber: Subscriber) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    groups = stories(THROUGHPUT_EVENTS, events.factory)
    # Each target's stories go to one producer, so its events are recorded in story order.
    lanes: list[list[CloudEvent]] = [[] for _ in range(PRODUCERS)]
    for n, story in enumerate(groups):
        lanes[(n % TARGETS) % PRODUCERS].extend(story)
    duplicates_before = subscriber.duplicates

    async def produce(lane: list[CloudEvent]) -> None:
        for event in lane:
            await events.publisher.announce(event)

    cpu_before = time.process_time()
    started = loop.time()
    async with asyncio.TaskGroup() as group:
        for lane in lanes:
            group.create_task(produce(lane))
    recorded = loop.time()
    everything = flat(groups)
    await subscriber.wait_for([e.id for e in everything])
    delivery = delivery_of(everything, subscriber, duplicates_before)
    cpu_s = time.process_time() - cpu_before
    end_to_end_s = (delivery.last_s or recorded) - started
    return {
        "events": len(everything),
        "producers": PRODUCERS,
        "record_s": recorded - started,
        "record_events_per_s": len(everything) / (recorded - started),
        "end_to_end_s": end_to_end_s,
        "events_per_s": delivery.arrived / end_to_end_s,
        # This process's CPU (publisher, store client, dispatcher, sink), per event.
        "cpu_ms_per_event": 1000.0 * cpu_s / len(everything),
        "delivery": delivery,
    }


async def latency(events: Events, subscriber: Subscriber) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    decision = immediate_decision("bench/latency", 1000.0)
    interval = 1.0 / LATENCY_RATE_PER_S
    starts: dict[str, float] = {}
    sent: list[CloudEvent] = []
    duplicates_before = subscriber.duplicates
    next_at = loop.time()
    for _ in range(LATENCY_WARMUP + LATENCY_EVENTS):
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        next_at += interval
        decided = loop.time()
        event = events.factory.decision_made(decision, clock=Clock.now())
        await events.publisher.announce(event)
        starts[event.id] = decided
        sent.append(event)
    await subscriber.wait_for(starts)
    measured = sent[LATENCY_WARMUP:]
    latencies_ms = [
        (subscriber.arrivals[e.id] - starts[e.id]) * 1000.0 for e in measured if e.id in subscriber.arrivals
    ]
    return {
        "rate_per_s": LATENCY_RATE_PER_S,
        "events": len(measured),
        "warmup_events": LATENCY_WARMUP,
        "p50_ms": statistics.median(latencies_ms),
        "p99_ms": percentile(latencies_ms, 0.99),
        "max_ms": max(latencies_ms),
        "delivery": delivery_of(sent, subscriber, duplicates_before),
    }


async def _acknowledged(events: Events, name: str, count: int) -> float:
    """Loop time at which the sink ``name`` has had ``count`` more deliveries acknowledged."""
    loop = asyncio.get_running_loop()
    status = events.dispatcher.status()[name]
    target = status.delivered + count
    while status.delivered < target:  # noqa: ASYNC110 -- a counter, polled finely
        await asyncio.sleep(0.002)
    return loop.time()


async def _reconnection(sink: MqttSink, before: int) -> float:
    """Loop time at which ``sink`` has connected more than ``before`` times."""
    loop = asyncio.get_running_loop()
    while sink.connections <= before:  # noqa: ASYNC110 -- a counter, polled finely
        await asyncio.sleep(0.002)
    return loop.time()


async def outage(
    events: Events, subscriber: Subscriber, broker: Broker, *, count: int, outage_s: float, one_by_one: bool
) -> dict[str, Any]:
    """Stop the broker, record ``count`` events (each with its own audit entry when
    ``one_by_one``, else a story per transaction), keep it down for ``outage_s`` in all, start it
    again, and follow the backlog to the subscriber."""
    loop = asyncio.get_running_loop()
    sink = events.dispatcher.sinks[0]
    assert isinstance(sink, MqttSink)
    groups = stories(count, events.factory)
    everything = flat(groups)
    duplicates_before = subscriber.duplicates

    await broker.stop()
    down_at = loop.time()
    connections = sink.connections
    for story in groups:
        if one_by_one:
            for event in story:
                await events.publisher.announce(event)
        else:
            entry = AuditEntry(kind="rollback", summary=story[0].summary, target=story[0].subject)
            await events.publisher.publish(entry, story)
    recorded_s = loop.time() - down_at
    await asyncio.sleep(max(0.0, down_at + outage_s - loop.time()))
    reconnected = asyncio.create_task(_reconnection(sink, connections))
    acknowledged = asyncio.create_task(_acknowledged(events, sink.name, len(everything)))
    up_at = loop.time()
    cpu_before = time.process_time()
    await broker.start()
    listening_at = loop.time()
    complete = await subscriber.wait_for([e.id for e in everything])
    reconnected_at = await reconnected if complete else None
    acknowledged_at = await acknowledged if complete else None
    for watcher in (reconnected, acknowledged):
        watcher.cancel()
    delivery = delivery_of(everything, subscriber, duplicates_before)
    cpu_s = time.process_time() - cpu_before
    last = delivery.last_s
    status = events.dispatcher.status()[sink.name]
    drain_s = None if last is None or reconnected_at is None else last - reconnected_at
    return {
        "events": len(everything),
        "outage_s": up_at - down_at,
        "record_s": recorded_s,
        "broker_start_s": listening_at - up_at,
        "reconnect_s": None if reconnected_at is None else reconnected_at - up_at,
        "drain_s": drain_s,
        "total_s": None if last is None else last - up_at,
        "events_per_s": None if not drain_s else delivery.arrived / drain_s,
        # The same, up to the broker's acknowledgement of the last one (the sink's side).
        "acknowledged_events_per_s": (
            None if acknowledged_at is None or reconnected_at is None
            else len(everything) / (acknowledged_at - reconnected_at)
        ),
        "cpu_ms_per_event": 1000.0 * cpu_s / len(everything),
        "failed_attempts": status.failures,
        "delivery": delivery,
    }


# --- one backend -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def backend_store(kind: str, *, work_dir: Path, postgres_dsn: str) -> AsyncIterator[Store]:
    """An open, empty store: SQLite in ``work_dir``, or PostgreSQL in a fresh schema (dropped
    afterwards)."""
    if kind == "sqlite":
        store = open_store(None, data_dir=work_dir / "sqlite")
        await store.open()
        try:
            yield store
        finally:
            await store.close()
        return
    schema = f"rollbackd_bench_{uuid.uuid4().hex[:12]}"
    admin = await psycopg.AsyncConnection.connect(postgres_dsn, autocommit=True, connect_timeout=5)
    async with admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
        try:
            separator = "&" if "?" in postgres_dsn else "?"
            dsn = f"{postgres_dsn}{separator}options=-csearch_path%3D{schema}"
            store = open_store(dsn, data_dir=work_dir)
            await store.open()
            try:
                yield store
            finally:
                await store.close()
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")


def settings_for(broker: Broker, prefix: str) -> Settings:
    """The daemon's default events settings, MQTT on ``broker`` under ``prefix``."""
    return Settings(
        events=EventsSettings(
            mqtt=MqttSettings(enabled=True, url=broker.url, topic_prefix=prefix, instance="bench"),
            kubernetes_events=False,
        )
    )


async def run_backend(kind: str, *, broker: Broker, work_dir: Path, postgres_dsn: str) -> dict[str, Any]:
    prefix = f"bench-{kind}-{uuid.uuid4().hex[:6]}"
    settings = settings_for(broker, prefix)
    result: dict[str, Any] = {"backend": kind}
    async with (
        backend_store(kind, work_dir=work_dir, postgres_dsn=postgres_dsn) as store,
        Subscriber(port=broker.port, topic_filter=f"{prefix}/v1/+/+/events/+") as subscriber,
        open_events(settings, store=store, environ={}, instance="bench") as events,
    ):
        sink = events.dispatcher.sinks[0]
        assert isinstance(sink, MqttSink)
        if not await sink.wait_connected(timeout_s=10):
            raise RuntimeError(f"the MQTT sink did not connect to {broker.url}")
        print(f"  {kind}: throughput ({THROUGHPUT_EVENTS} events) ...", flush=True)
        result["throughput"] = await throughput(events, subscriber)
        print(f"  {kind}: latency ({LATENCY_EVENTS} events at {LATENCY_RATE_PER_S:g}/s) ...", flush=True)
        result["latency"] = await latency(events, subscriber)
        print(f"  {kind}: outage ({OUTAGE_S:g}s, {OUTAGE_EVENTS} events) ...", flush=True)
        result["outage"] = await outage(
            events, subscriber, broker, count=OUTAGE_EVENTS, outage_s=OUTAGE_S, one_by_one=True
        )
        print(f"  {kind}: backlog ({BACKLOG_EVENTS} events) ...", flush=True)
        result["backlog"] = await outage(
            events, subscriber, broker, count=BACKLOG_EVENTS, outage_s=BACKLOG_OUTAGE_S, one_by_one=False
        )
    return result


# --- the report ----------------------------------------------------------------------------------


def _jsonable(value: Any) -> Any:
    if isinstance(value, Delivery):
        return {name: getattr(value, name) for name in Delivery.__slots__ if not name.endswith("_s")} | {
            "ok": value.ok
        }
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, float):
        return round(value, 6)
    return value


def checks(result: dict[str, Any]) -> dict[str, bool]:
    """Each target, met or not, for one backend's results."""
    if "error" in result:
        return {}
    drain = result["outage"]["drain_s"]
    end_to_end = result["throughput"]["events_per_s"]
    backlog = result["backlog"]["events_per_s"] or 0.0
    return {
        "throughput >= 1000/s (publisher -> subscriber)": end_to_end >= MIN_EVENTS_PER_S,
        "outbox -> MQTT >= 1000/s (10,000 backlog)": backlog >= MIN_EVENTS_PER_S,
        "p99 < 100 ms": result["latency"]["p99_ms"] < MAX_P99_MS,
        "600-event backlog drained within 10 s of reconnecting": drain is not None and drain <= MAX_DRAIN_S,
        "nothing lost, each target in order": all(
            result[phase]["delivery"].ok for phase in ("throughput", "latency", "outage", "backlog")
        ),
    }


def _f(value: float | None, digits: int = 1, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}{unit}"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Events: outbox to MQTT",
        "",
        f"{report['setup']}",
        "",
        "| backend | throughput (record -> subscriber) | recording alone | p50 | p99 | max "
        "| 600 after 35 s down: reconnect / drain / total | 10,000 backlog: drain, rate "
        "| CPU / event | lost | dup | in order |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in report["backends"]:
        if "error" in result:
            lines.append(f"| {result['backend']} | not measured: {result['error']} |" + " |" * 10)
            continue
        t, lat, o, b = result["throughput"], result["latency"], result["outage"], result["backlog"]
        deliveries = [result[p]["delivery"] for p in ("throughput", "latency", "outage", "backlog")]
        lines.append(
            f"| {result['backend']} | {_f(t['events_per_s'], 0)}/s | {_f(t['record_events_per_s'], 0)}/s "
            f"| {_f(lat['p50_ms'])} ms | {_f(lat['p99_ms'])} ms | {_f(lat['max_ms'])} ms "
            f"| {_f(o['reconnect_s'])} s / {_f(o['drain_s'], 2)} s / {_f(o['total_s'])} s "
            f"| {_f(b['drain_s'])} s, {_f(b['events_per_s'], 0)}/s "
            f"| {_f(t['cpu_ms_per_event'], 2)} / {_f(b['cpu_ms_per_event'], 2)} ms "
            f"| {sum(d.lost for d in deliveries)} | {sum(d.duplicates for d in deliveries)} "
            f"| {'yes' if all(d.in_order for d in deliveries) else 'NO'} |"
        )
    lines += ["", "Targets:", ""]
    for result in report["backends"]:
        for name, ok in checks(result).items():
            lines.append(f"- {result['backend']}: {name}: {'met' if ok else 'MISSED'}")
    lines += [
        "",
        "- throughput: 5,000 events (rollback stories over 50 targets) recorded one per transaction "
        "with their audit entries by 8 concurrent producers while the dispatcher delivers; from the "
        "first record call to the last arrival (unique ids). Recording alone: the same span until "
        "the last record call returned.",
        "- latency: one `decision.made` at a time, 50/s, 500 measured after 25 warm-up events; from "
        "the decision (before its event is built) to the subscriber receiving it.",
        "- outage: the broker is stopped for 35 s (the sink's reconnection backoff, 0.5 s doubling "
        "to `reconnect_max_s` = 30 s with jitter, is at its ceiling, as after a 10-minute outage) "
        "while 600 events are recorded (12 rollback stories a minute for 10 minutes); reconnect: "
        "broker restarted -> sink connected (at most `reconnect_max_s` after the broker is back); "
        "drain: sink connected -> last event at the subscriber.",
        "- backlog: 10,000 events recorded (a story per transaction) while the broker is down, "
        "then delivered: the outbox -> MQTT rate from the sink's reconnection to the last arrival.",
        "- CPU / event: this process's CPU time (publisher, store client, dispatcher, MQTT sink) "
        "per event, in the throughput phase (recording and delivering) / the backlog phase "
        "(delivering only).",
        "- The subscriber is an aiomqtt client in its own process with a persistent session "
        "(QoS 1); times are on the monotonic clock shared by both processes. The private broker "
        "runs mosquitto's defaults but two: it queues up to 100,000 messages per client (the "
        "default 1,000 would drop part of a large backlog for a subscriber that is behind) and "
        "sends a subscriber up to 100 messages ahead of its acknowledgements (with the default 20, "
        "the one subscriber, not the daemon, caps the rate at about 1,200 events/s here).",
    ]
    return "\n".join(lines) + "\n"


def setup_text(postgres_dsn: str) -> str:
    version = subprocess.run(
        [find_mosquitto() or "mosquitto", "-h"], capture_output=True, text=True, check=False
    ).stdout.splitlines()
    mosquitto = version[0] if version else "mosquitto"
    return (
        f"{mosquitto} on 127.0.0.1 (a private instance); SQLite {sqlite3.sqlite_version} "
        f"(WAL, synchronous=FULL) in a temporary directory; PostgreSQL at {redact_url(postgres_dsn)} "
        f"in a fresh schema; default events settings (QoS 1, retries 1 s doubling to 60 s, "
        f"reconnection 0.5 s doubling to 30 s). Machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. Run at {datetime.now(UTC).isoformat(timespec='seconds')}."
    )


async def run(args: argparse.Namespace) -> dict[str, Any]:
    binary = find_mosquitto()
    if binary is None:
        raise SystemExit("the mosquitto binary is not installed (apt-get install mosquitto)")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="rollbackd-bench-events-") as tmp:
        work_dir = Path(tmp)
        (work_dir / "broker").mkdir()
        broker = Broker(binary=binary, directory=work_dir / "broker")
        await broker.start()
        try:
            for kind in args.backends:
                print(f"backend {kind}", flush=True)
                try:
                    result = await run_backend(
                        kind, broker=broker, work_dir=work_dir, postgres_dsn=args.postgres_dsn
                    )
                    results.append(result)
                except (psycopg.OperationalError, OSError) as exc:
                    if kind != "postgresql":
                        raise
                    reason = f"PostgreSQL at {redact_url(args.postgres_dsn)} cannot be reached: {exc}"
                    print(f"  {reason}", flush=True)
                    results.append({"backend": kind, "error": " ".join(reason.split())})
                if broker.process is None:
                    await broker.start()
        finally:
            await broker.stop()
    return {"setup": setup_text(args.postgres_dsn), "backends": results}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.events_throughput", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    parser.add_argument(
        "--postgres-dsn",
        default=os.environ.get("ROLLBACKD_TEST_POSTGRES_DSN") or DEFAULT_POSTGRES_DSN,
        help="the PostgreSQL server (a fresh schema is made and dropped there)",
    )
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    # The subscriber process (started by the benchmark itself).
    parser.add_argument("--subscriber", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--topic-filter", help=argparse.SUPPRESS)
    parser.add_argument("--client-id", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.subscriber:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(subscribe(port=args.port, topic_filter=args.topic_filter, client_id=args.client_id,
                                  out=sys.stdout))
        return 0
    # The sink's and the dispatcher's warnings during the outages are expected: they show it.
    logging.basicConfig(level=logging.WARNING, format="  %(levelname)s %(name)s: %(message)s")
    report = asyncio.run(run(args))
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    verdicts = {r["backend"]: checks(r) for r in report["backends"]}
    document = _jsonable({**report, "targets": verdicts})
    (out / "events_throughput.json").write_text(json.dumps(document, indent=2) + "\n")
    text = markdown(report)
    (out / "events_throughput.md").write_text(text)
    print()
    print(text)
    return 0 if all(ok for checked in verdicts.values() for ok in checked.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
