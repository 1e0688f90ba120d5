"""The MQTT sink: events to a broker at QoS 1, a retained status per target, a liveness topic.

Topics (``<prefix>`` is ``events.mqtt.topic_prefix``, ``rollbackd`` by default; ``<type>`` is
the short event type, e.g. ``rollback.started``; MQTT levels are split on ``/`` only, so the dot
stays inside one level):

- ``<prefix>/v1/<namespace>/<target>/events/<type>``: every event, QoS 1, not retained;
- ``<prefix>/v1/<namespace>/<target>/status``: retained, the target's latest state
  (``{"subject", "state", "summary", "time", "last_event": {"id", "type"}}``), updated after each
  of its events;
- ``<prefix>/v1/daemon/<instance>/status``: retained, ``online`` once connected; ``offline``
  published on a clean shutdown, and by the broker (the last will, set at connect) when the
  daemon vanishes without one.

:class:`MqttSink` is an async context manager: it owns one task that keeps the connection up,
reconnecting with jittered backoff, and cancels only that task on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import aiomqtt

from rollbackd.aiotasks import stop_tasks
from rollbackd.backoff import Backoff
from rollbackd.config.settings import MqttSettings
from rollbackd.errors import PermanentError
from rollbackd.events.dispatcher import DeliveryError
from rollbackd.events.model import CloudEvent, EventFormatError, short_type, split_subject, status_of
from rollbackd.events.secrets import read_secret
from rollbackd.store.base import OutboxEvent

logger = logging.getLogger(__name__)

#: The payloads of the liveness topic.
ONLINE = b"online"
OFFLINE = b"offline"
#: The topics' version level: a change of the payloads' meaning gets a new one.
TOPIC_VERSION = "v1"


class MqttConfigError(PermanentError):
    """The MQTT settings cannot be used (a bad URL, an unreadable certificate or secret)."""


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic layout under ``prefix``."""

    prefix: str = "rollbackd"

    @property
    def root(self) -> str:
        return f"{self.prefix}/{TOPIC_VERSION}"

    def event(self, subject: str, event_type: str) -> str:
        """Where an event of ``subject`` (``namespace/name``) and type ``event_type`` (short or full)
        is published."""
        namespace, name = split_subject(subject)
        return f"{self.root}/{namespace}/{name}/events/{short_type(event_type)}"

    def status(self, subject: str) -> str:
        namespace, name = split_subject(subject)
        return f"{self.root}/{namespace}/{name}/status"

    def liveness(self, instance: str) -> str:
        return f"{self.root}/daemon/{instance}/status"

    def daemon_event(self, instance: str, event_type: str) -> str:
        """Where an event without a subject (daemon-wide) is published."""
        return f"{self.root}/daemon/{instance}/events/{short_type(event_type)}"

    def events_filter(self, subject: str | None = None) -> str:
        """A subscription to every target's events, or to those of ``subject``."""
        if subject is None:
            return f"{self.root}/+/+/events/+"
        namespace, name = split_subject(subject)
        return f"{self.root}/{namespace}/{name}/events/+"

    def status_filter(self) -> str:
        """A subscription to every target's retained status (it also matches the daemons'
        liveness topics: tell them apart with :meth:`is_daemon_topic`)."""
        return f"{self.root}/+/+/status"

    def is_daemon_topic(self, topic: str) -> bool:
        """Whether ``topic`` is a daemon's (liveness, daemon-wide events), not a target's."""
        return topic.startswith(f"{self.root}/daemon/")


@dataclass(frozen=True, slots=True)
class MqttOptions:
    """How to reach the broker, with secrets resolved (``password`` is never shown in a repr)."""

    hostname: str
    port: int = 1883
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    keepalive_s: int = 30
    timeout_s: float = 10.0

    @classmethod
    def from_url(cls, url: str) -> MqttOptions:
        """Options for ``mqtt://host[:port]`` or ``mqtts://host[:port]`` (derive the rest with
        :func:`dataclasses.replace`)."""
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise MqttConfigError(f"not an MQTT URL (mqtt://host[:port] or mqtts://host[:port]): {url!r}")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError:
            raise MqttConfigError(f"bad port in MQTT URL {url!r}") from None
        return cls(hostname=parts.hostname, port=port, tls=tls)

    @classmethod
    def from_settings(
        cls, settings: MqttSettings, *, environ: Mapping[str, str], instance: str
    ) -> MqttOptions:
        """Options from ``events.mqtt``; the password is read from the variable or file it names."""
        password = read_secret(
            what="events.mqtt password",
            env=settings.password_env,
            file=settings.password_file,
            environ=environ,
        )
        return dataclasses.replace(
            cls.from_url(settings.url),
            ca_file=settings.tls.ca_file,
            cert_file=settings.tls.cert_file,
            key_file=settings.tls.key_file,
            insecure=settings.tls.insecure,
            username=settings.username,
            password=password,
            client_id=settings.client_id or f"rollbackd-{instance}",
            keepalive_s=settings.keepalive_s,
            timeout_s=settings.timeout_s,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for ``mqtts://`` (reads the CA and client certificate files: blocking)."""
        if not self.tls:
            return None
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file:
                context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise MqttConfigError(f"events.mqtt.tls: cannot load the certificates: {exc}") from None
        if self.insecure:
            context.check_hostname = False
        return context


DEFAULT_TOPICS = Topics()
DEFAULT_RECONNECT = Backoff(initial_s=0.5, max_s=30.0)
#: Publications awaiting the broker's acknowledgement at once: enough to keep a loopback or LAN
#: connection busy while the acknowledgements come back.
DEFAULT_MAX_IN_FLIGHT = 64


def default_instance() -> str:
    """This daemon's name when none is configured: the host name (the pod name in Kubernetes)."""
    return socket.gethostname() or "rollbackd"


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class MqttSink:
    """Publishes events to an MQTT broker (see the module's documentation for the topics).

    Keyword-only arguments:

    - ``options``: the broker and credentials (:meth:`MqttOptions.from_settings`);
    - ``instance``: this daemon's name in the liveness topic;
    - ``topics``: the topic layout (its prefix);
    - ``reconnect``: delays between connection attempts;
    - ``name``: the sink's outbox cursor (default ``mqtt``);
    - ``max_in_flight``: deliveries the dispatcher may have under way at once (they publish in
      the order they were called, on the one connection, which keeps that order).

    :meth:`deliver` waits up to ``options.timeout_s`` for a connection, then raises
    :class:`~rollbackd.events.dispatcher.DeliveryError`, as it does when the broker does not
    acknowledge the publication in time: the dispatcher retries.
    """

    def __init__(
        self,
        *,
        options: MqttOptions,
        instance: str,
        topics: Topics = DEFAULT_TOPICS,
        reconnect: Backoff = DEFAULT_RECONNECT,
        name: str = "mqtt",
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self._options = options
        self._instance = instance
        self._topics = topics
        self._reconnect = reconnect
        self._name = name
        self._max_in_flight = max_in_flight
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ssl: ssl.SSLContext | None = None
        self.connections = 0  # successful connections so far (reconnects included)

    @property
    def name(self) -> str:
        return self._name

    @property
    def max_in_flight(self) -> int:
        return self._max_in_flight

    @property
    def topics(self) -> Topics:
        return self._topics

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def wait_connected(self, *, timeout_s: float) -> bool:
        """Whether the sink is (or gets, within ``timeout_s``) connected to the broker."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._connected.wait()
        return self.connected

    async def __aenter__(self) -> Self:
        self._ssl = await asyncio.to_thread(self._options.ssl_context)
        self._task = asyncio.create_task(self._maintain(), name=f"rollbackd:events:{self._name}:connection")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        client = self._client
        if client is not None:
            # A clean shutdown: say so (the broker only sends the last will when we vanish).
            try:
                await client.publish(
                    self._topics.liveness(self._instance),
                    OFFLINE,
                    qos=1,
                    retain=True,
                    timeout=min(self._options.timeout_s, 5.0),
                )
            except aiomqtt.MqttError as error:
                logger.warning("mqtt: could not publish offline before disconnecting: %s", error)
        task, self._task = self._task, None
        await stop_tasks([task])  # the connection task disconnects cleanly on its way out

    def _new_client(self) -> aiomqtt.Client:
        options = self._options
        client = aiomqtt.Client(
            options.hostname,
            options.port,
            username=options.username,
            password=options.password,
            identifier=options.client_id,
            will=aiomqtt.Will(self._topics.liveness(self._instance), OFFLINE, qos=1, retain=True),
            keepalive=options.keepalive_s,
            timeout=options.timeout_s,
            tls_context=self._ssl,
            clean_session=True,
            logger=logger,
            # Room for every delivery in flight, an event and its status each.
            max_inflight_messages=2 * self._max_in_flight,
            # Small packets go out at once: Nagle's algorithm would hold a publication back until
            # the previous one is acknowledged, which is what pipelined deliveries avoid.
            socket_options=((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),),
        )
        # So many publications awaiting their acknowledgement are expected, not a warning sign.
        client.pending_calls_threshold = 2 * self._max_in_flight + 1
        return client

    async def _maintain(self) -> None:
        """Connect, announce ``online``, wait for the connection to drop; again, with backoff."""
        attempt = 0
        where = f"{self._options.hostname}:{self._options.port}"
        while True:
            try:
                async with self._new_client() as client:
                    await client.publish(self._topics.liveness(self._instance), ONLINE, qos=1, retain=True)
                    self._client = client
                    self._connected.set()
                    self.connections += 1
                    attempt = 0
                    logger.info("mqtt: connected to %s as %s", where, client.identifier)
                    async for _ in client.messages:  # returns only by raising, when disconnected
                        pass
            except aiomqtt.MqttError as exc:
                level = logging.WARNING if self._client is not None or attempt == 0 else logging.DEBUG
                logger.log(
                    level, "mqtt: %s %s: %s", "lost" if self._client else "cannot connect to", where, exc
                )
            finally:
                self._client = None
                self._connected.clear()
            delay = self._reconnect.delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    async def deliver(self, event: OutboxEvent) -> None:
        """Publish ``event`` (QoS 1, acknowledged by the broker) and then its target's status."""
        client = self._client
        if client is None:
            if not await self.wait_connected(timeout_s=self._options.timeout_s):
                raise DeliveryError(
                    f"not connected to the MQTT broker {self._options.hostname}:{self._options.port}"
                )
            client = self._client
            assert client is not None
        if event.subject is None:
            topic = self._topics.daemon_event(self._instance, event.type)
        else:
            topic = self._topics.event(event.subject, event.type)
        status = None if event.subject is None else self._status(event)
        publications = [client.publish(topic, _dumps(dict(event.payload)), qos=1)]
        if event.subject is not None and status is not None:
            publications.append(
                client.publish(self._topics.status(event.subject), _dumps(status), qos=1, retain=True)
            )
        # Both go out at once, the event first (tasks start in the order they are made, so the
        # deliveries under way keep their order too): one wait for the broker's acknowledgements
        # instead of two in a row.
        outcomes = await asyncio.gather(*publications, return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise DeliveryError(f"MQTT publish of {event.event_id} failed: {failures[0]}") from failures[0]

    @staticmethod
    def _status(event: OutboxEvent) -> dict[str, object] | None:
        try:
            return status_of(CloudEvent.from_json(event.payload))
        except EventFormatError as exc:
            logger.warning("mqtt: no status for event %s: %s", event.event_id, exc)
            return None


async def clear_retained(options: MqttOptions, topics: Sequence[str]) -> None:
    """Remove the retained messages on ``topics`` from the broker (an empty retained message
    clears one): what a short-lived publisher (the demo) leaves behind otherwise stays there for
    every later subscriber. :class:`aiomqtt.MqttError` when the broker cannot be reached."""
    async with aiomqtt.Client(
        options.hostname,
        options.port,
        username=options.username,
        password=options.password,
        timeout=options.timeout_s,
        tls_context=await asyncio.to_thread(options.ssl_context),
        logger=logger,
    ) as client:
        for topic in topics:
            await client.publish(topic, b"", qos=1, retain=True)
