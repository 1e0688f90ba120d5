"""``rollbackd events``: a readable live view of the event stream, over MQTT.

``--follow`` subscribes to the events topics and prints one line per event, duplicates (the same
id delivered twice) dropped::

    2026-11-24T03:02:10Z  shop/checkout  rollback.started     rolling back shop/checkout (immediate, ...)

Without ``--follow`` it prints each target's retained status (its state and latest event) and
exits. The broker and its credentials come from ``events.mqtt`` of the configuration, ``--mqtt-url``
overriding the URL.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import aiomqtt

from rollbackd.backoff import Backoff
from rollbackd.config.settings import Settings
from rollbackd.errors import PermanentError
from rollbackd.events.model import CloudEvent, EventFormatError
from rollbackd.events.mqtt import MqttOptions, Topics
from rollbackd.events.webhooks import type_matches

logger = logging.getLogger(__name__)

#: How many event ids are remembered to drop duplicates.
DEDUPE_WINDOW = 10_000
#: Width of the type column (the longest type, verification.failed, fits).
TYPE_WIDTH = 20


def format_line(event: CloudEvent) -> str:
    """One line for an event: time (UTC), subject, short type, summary."""
    when = event.time.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{when}  {event.subject}  {event.short_type:<{TYPE_WIDTH}} {event.summary}"


def format_status(status: Mapping[str, Any]) -> str:
    """One line for a retained status: subject, state, time of the latest event, its summary."""
    time = str(status.get("time", ""))[:19] + ("Z" if status.get("time") else "")
    return f"{status.get('subject', '?')}  {status.get('state', '?'):<20} {time}  {status.get('summary', '')}"


class Dedupe:
    """Remembers the latest ``size`` ids; :meth:`seen` says whether an id came before."""

    def __init__(self, size: int = DEDUPE_WINDOW) -> None:
        self._ids: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._size = size

    def seen(self, event_id: str) -> bool:
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return False


async def _client(options: MqttOptions) -> aiomqtt.Client:
    return aiomqtt.Client(
        options.hostname,
        options.port,
        username=options.username,
        password=options.password,
        identifier=options.client_id,
        keepalive=options.keepalive_s,
        timeout=options.timeout_s,
        tls_context=await asyncio.to_thread(options.ssl_context),
        logger=logger,
    )


async def follow(
    *,
    options: MqttOptions,
    topics: Topics,
    out: TextIO,
    target: str | None = None,
    types: Sequence[str] = ("*",),
    limit: int | None = None,
    subscribed: asyncio.Event | None = None,
    notes: TextIO | None = None,
    reconnect: Backoff = Backoff(initial_s=0.5, max_s=10.0),  # noqa: B008 - a frozen value
) -> int:
    """Print events of ``target`` (all targets if ``None``) whose type matches ``types`` to
    ``out`` until ``limit`` were printed (forever if ``None``); reconnects when the broker goes
    away. ``subscribed`` is set once the subscription is in place; ``notes`` (default: stderr)
    gets a line then, and when the connection is lost. Returns the count printed."""
    notes = notes or sys.stderr
    dedupe = Dedupe()
    printed = 0
    attempt = 0
    while limit is None or printed < limit:
        connected = False
        try:
            async with await _client(options) as client:
                await client.subscribe(topics.events_filter(target), qos=1)
                attempt = 0
                connected = True
                print(
                    f"# following {topics.events_filter(target)} on {options.hostname}:{options.port}",
                    file=notes,
                    flush=True,
                )
                if subscribed is not None:
                    subscribed.set()
                async for message in client.messages:
                    event = _parse(message.payload)
                    if event is None or dedupe.seen(event.id) or not type_matches(types, event.type):
                        continue
                    print(format_line(event), file=out, flush=True)
                    printed += 1
                    if limit is not None and printed >= limit:
                        break
        except aiomqtt.MqttError as exc:
            delay = reconnect.delay(attempt)
            attempt += 1
            # "Lost" only what it had: a broker never reached is said to be unreachable.
            broker = f"{options.hostname}:{options.port}"
            what = "lost the broker" if connected else f"cannot reach the broker {broker}"
            print(f"# {what} ({exc}); trying again in {delay:.1f}s", file=notes, flush=True)
            await asyncio.sleep(delay)
    return printed


def _parse(payload: Any) -> CloudEvent | None:
    try:
        return CloudEvent.from_json(json.loads(payload))
    except (ValueError, TypeError, EventFormatError):
        return None


async def statuses(*, options: MqttOptions, topics: Topics, quiet_s: float = 1.0) -> list[dict[str, Any]]:
    """Every target's retained status, sorted by subject: collected until nothing arrived for
    ``quiet_s``."""
    found: dict[str, dict[str, Any]] = {}
    async with await _client(options) as client:
        await client.subscribe(topics.status_filter(), qos=1)
        while True:
            try:
                async with asyncio.timeout(quiet_s):
                    message = await anext(aiter(client.messages))
            except TimeoutError:
                break
            if topics.is_daemon_topic(str(message.topic)):
                continue
            try:
                status = json.loads(message.payload)
            except (ValueError, TypeError):
                continue
            if isinstance(status, dict):
                found[str(status.get("subject", message.topic))] = status
    return [found[key] for key in sorted(found)]


def run(args: argparse.Namespace, *, settings: Settings, environ: Mapping[str, str], out: TextIO) -> int:
    """``rollbackd events`` with parsed ``args``; returns the exit status."""
    mqtt = settings.events.mqtt
    if not mqtt.enabled and not args.mqtt_url:
        print(
            "rollbackd events: MQTT is off in this configuration (events.mqtt.enabled is false), so there "
            "is no broker to follow: pass the broker the daemon publishes to, e.g. "
            "--mqtt-url mqtt://127.0.0.1:1883, or set events.mqtt.enabled: true and events.mqtt.url",
            file=sys.stderr,
        )
        return 2
    try:
        options = MqttOptions.from_settings(mqtt, environ=environ, instance="cli")
        if args.mqtt_url:
            url = MqttOptions.from_url(args.mqtt_url)
            options = dataclasses.replace(options, hostname=url.hostname, port=url.port, tls=url.tls)
        if args.target:
            Topics().events_filter(args.target)  # validates NS/NAME
    except (PermanentError, ValueError) as exc:
        print(f"rollbackd events: {exc}", file=sys.stderr)
        return 2
    options = dataclasses.replace(options, client_id=None)
    topics = Topics(mqtt.topic_prefix)
    try:
        if args.follow:
            asyncio.run(
                follow(
                    options=options,
                    topics=topics,
                    out=out,
                    target=args.target,
                    types=args.types or ("*",),
                    limit=args.count,
                )
            )
        else:
            for status in asyncio.run(statuses(options=options, topics=topics)):
                if args.target and status.get("subject") != args.target:
                    continue
                print(format_status(status), file=out)
    except KeyboardInterrupt:
        return 0
    except aiomqtt.MqttError as exc:
        print(
            f"rollbackd events: cannot reach the broker {options.hostname}:{options.port}: {exc}",
            file=sys.stderr,
        )
        return 1
    return 0
