"""Everything events need in the daemon, from settings, in one ``async with``.

::

    async with open_events(settings, store=store, environ=os.environ, kube=kube) as events:
        announcer = events.announcer("shop/checkout", slo=params.slo)
        for event in announcer.on_decision(decision, hold=context.hold, clock=Clock.now()):
            await events.publisher.announce(event)

On exit, entries still queued by :meth:`EventPublisher.submit` are recorded, the sinks get a
bounded moment to deliver what is pending (the rest waits in the outbox for the next start), and
the sinks close (the MQTT sink publishes ``offline``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from rollbackd import __version__
from rollbackd.backoff import Backoff
from rollbackd.config.settings import EventsSettings, Settings
from rollbackd.events.build import Announcer, EventFactory
from rollbackd.events.dispatcher import Dispatcher, Sink
from rollbackd.events.kube_events import KubeEventsSink, deployments_of, rollouts_of
from rollbackd.events.mqtt import MqttOptions, MqttSink, Topics, default_instance
from rollbackd.events.publisher import EventPublisher
from rollbackd.events.webhooks import WebhookSink
from rollbackd.kube import KubeClient
from rollbackd.model import Slo
from rollbackd.store.base import Store

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Events:
    """The open events machinery: make events (``factory``), record them (``publisher``), and
    watch their delivery (``dispatcher.status()``)."""

    factory: EventFactory
    publisher: EventPublisher
    dispatcher: Dispatcher

    def announcer(self, target: str, *, slo: Slo | None = None) -> Announcer:
        """A fresh :class:`Announcer` for ``target`` (keep one per target)."""
        return Announcer(factory=self.factory, target=target, slo=slo)


@contextlib.asynccontextmanager
async def open_sinks(
    settings: EventsSettings,
    *,
    environ: Mapping[str, str],
    kube: KubeClient | None = None,
    deployments: Mapping[str, str] | None = None,
    rollouts: Mapping[str, str] | None = None,
    instance: str | None = None,
) -> AsyncIterator[list[Sink]]:
    """The configured sinks, open: MQTT (if enabled), each webhook, Kubernetes Events (if enabled
    and ``kube`` is given). Secrets are read from ``environ`` or files now, so a missing one fails
    at start-up with a :class:`~rollbackd.events.secrets.SecretError`."""
    instance = instance or settings.mqtt.instance or default_instance()
    async with contextlib.AsyncExitStack() as stack:
        sinks: list[Sink] = []
        if settings.mqtt.enabled:
            options = MqttOptions.from_settings(settings.mqtt, environ=environ, instance=instance)
            mqtt = MqttSink(
                options=options,
                instance=instance,
                topics=Topics(settings.mqtt.topic_prefix),
                reconnect=Backoff(initial_s=0.5, max_s=settings.mqtt.reconnect_max_s),
            )
            sinks.append(await stack.enter_async_context(mqtt))
        if settings.webhooks:
            session = await stack.enter_async_context(
                aiohttp.ClientSession(headers={"User-Agent": f"rollbackd/{__version__}"})
            )
            for hook in settings.webhooks:
                sinks.append(
                    WebhookSink.from_settings(
                        hook, environ=environ, session=session, status_url=settings.status_url
                    )
                )
        if settings.kubernetes_events and kube is not None:
            sinks.append(KubeEventsSink(kube=kube, deployments=deployments or {}, rollouts=rollouts or {},
                                        instance=instance))
        yield sinks


@contextlib.asynccontextmanager
async def open_events(
    settings: Settings,
    *,
    store: Store,
    environ: Mapping[str, str],
    kube: KubeClient | None = None,
    instance: str | None = None,
    drain_timeout_s: float = 5.0,
    active: Callable[[], bool] | None = None,
    on_health: Callable[[str | None], None] | None = None,
    on_poison: Callable[[str], None] | None = None,
) -> AsyncIterator[Events]:
    """Sinks, dispatcher and publisher for ``settings.events``, delivering ``store``'s outbox
    while ``active()`` (the leader of several replicas; always when ``None``). The publisher keeps
    poison records and spills its queue on close in ``store.data_dir``, and reports the store's
    health to ``on_health`` and poison records to ``on_poison``."""
    events = settings.events
    async with open_sinks(
        events,
        environ=environ,
        kube=kube,
        deployments=deployments_of(settings),
        rollouts=rollouts_of(settings),
        instance=instance,
    ) as sinks:
        factory = EventFactory(source=events.source)
        dispatcher = Dispatcher(
            store=store,
            sinks=sinks,
            backoff=Backoff(initial_s=events.retry_initial_s, max_s=events.retry_max_s),
            poll_interval_s=events.poll_interval_s,
            retention_s=settings.store.outbox_retention_s,
            active=active,
            dead_letter_after_s=events.dead_letter_after_s,
            dead_letter_after_events=events.dead_letter_after_events,
            factory=factory,
        )
        logger.info("events: delivering to %s", ", ".join(s.name for s in sinks) or "no sink")
        async with dispatcher:
            publisher = EventPublisher(
                store=store,
                on_recorded=dispatcher.nudge,
                spool_dir=Path(settings.store.data_dir),
                on_health=on_health,
                on_poison=on_poison,
                factory=factory,
            )
            async with publisher:
                yield Events(factory=factory, publisher=publisher, dispatcher=dispatcher)
            if sinks and not await dispatcher.drain(timeout_s=drain_timeout_s):
                logger.warning(
                    "events: some events were not delivered before shutdown; they stay in the outbox"
                )
