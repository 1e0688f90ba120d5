"""Delivering the outbox to the sinks: at least once, in order, each sink at its own pace.

One loop per sink reads the events that sink has not delivered yet (``store.pending(sink)``, in
outbox order), delivers them one by one and moves the sink's cursor after each success
(``store.mark_delivered``). A failed delivery is retried, the same event again, after a jittered
backoff: an event is never skipped, so the order per target holds, and a sink that is down only
holds back its own cursor, never the other sinks'. A delivery that succeeded but whose cursor
move was lost (a crash, a store error) is delivered again: subscribers dedupe by event id.

The loops wake at once when events are recorded (:meth:`Dispatcher.nudge`) and also poll every
``poll_interval_s``, so events recorded by another process or before a restart are delivered
too. Events every sink has delivered are pruned after ``retention_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Protocol, Self

from rollbackd.backoff import Backoff
from rollbackd.errors import TemporaryError
from rollbackd.store.base import OutboxEvent, Store

logger = logging.getLogger(__name__)

DEFAULT_BACKOFF = Backoff(initial_s=1.0, max_s=60.0)


class Sink(Protocol):
    """Somewhere events go: an MQTT broker, a webhook, Kubernetes Events."""

    @property
    def name(self) -> str:
        """The sink's stable name: its cursor in the outbox (``mqtt``, ``webhook:NAME``, ...)."""
        ...

    async def deliver(self, event: OutboxEvent) -> None:
        """Deliver one event; return only once it is accepted. Raise (any exception) to have it
        retried after a backoff."""
        ...


class DeliveryError(TemporaryError):
    """A sink could not deliver an event now; the dispatcher retries it."""


@dataclass(slots=True)
class SinkStatus:
    """How one sink is doing (for logs, ``/metrics`` and ``/readyz``)."""

    name: str
    delivered: int = 0
    failures: int = 0
    #: Consecutive failures of the current event (0 when the latest delivery succeeded).
    retrying: int = 0
    last_error: str | None = None
    last_delivered_seq: int | None = None
    #: Events read from the outbox and not delivered yet (as of the last read).
    backlog: int = 0


class Dispatcher:
    """Delivers the store's outbox to ``sinks``; an async context manager owning one task per sink
    and one pruning task, all cancelled (and awaited) on exit.

    Keyword-only arguments:

    - ``store``: the store holding the outbox;
    - ``sinks``: the sinks, each with a unique ``name``;
    - ``backoff``: delays between retries of a failed delivery (and of store reads);
    - ``poll_interval_s``: the longest a loop sleeps without a :meth:`nudge`;
    - ``batch``: events read from the outbox at once;
    - ``retention_s``: delivered events older than this are pruned; ``prune_interval_s``: how often.
    """

    def __init__(
        self,
        *,
        store: Store,
        sinks: Sequence[Sink],
        backoff: Backoff = DEFAULT_BACKOFF,
        poll_interval_s: float = 5.0,
        batch: int = 100,
        retention_s: float = 7 * 24 * 3600.0,
        prune_interval_s: float = 600.0,
    ) -> None:
        names = [sink.name for sink in sinks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"sink names must be unique; repeated: {', '.join(duplicates)}")
        if poll_interval_s <= 0 or batch < 1 or retention_s < 0 or prune_interval_s <= 0:
            raise ValueError("poll_interval_s and prune_interval_s must be positive, batch at least 1")
        self._store = store
        self._sinks = tuple(sinks)
        self._backoff = backoff
        self._poll_interval_s = poll_interval_s
        self._batch = batch
        self._retention_s = retention_s
        self._prune_interval_s = prune_interval_s
        self._wake = {sink.name: asyncio.Event() for sink in self._sinks}
        self._idle = {sink.name: asyncio.Event() for sink in self._sinks}
        self._status = {sink.name: SinkStatus(sink.name) for sink in self._sinks}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def sinks(self) -> tuple[Sink, ...]:
        return self._sinks

    def nudge(self) -> None:
        """New events were recorded: every sink loop looks at the outbox now."""
        for name, wake in self._wake.items():
            self._idle[name].clear()
            wake.set()

    def status(self) -> Mapping[str, SinkStatus]:
        """Each sink's counters, by name."""
        return dict(self._status)

    async def drain(self, *, timeout_s: float) -> bool:
        """Wait until every sink has delivered everything in the outbox (e.g. before a graceful
        shutdown); ``False`` if that did not happen within ``timeout_s``."""
        self.nudge()
        try:
            async with asyncio.timeout(timeout_s):
                for idle in self._idle.values():
                    await idle.wait()
        except TimeoutError:
            return False
        return True

    async def __aenter__(self) -> Self:
        for sink in self._sinks:
            self._tasks.append(
                asyncio.create_task(self._run(sink), name=f"rollbackd:events:sink:{sink.name}")
            )
        self._tasks.append(asyncio.create_task(self._prune_loop(), name="rollbackd:events:prune"))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wait(self, name: str, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake[name].wait()

    async def _run(self, sink: Sink) -> None:
        name = sink.name
        status = self._status[name]
        store_attempt = 0
        while True:
            self._wake[name].clear()
            try:
                events = await self._store.pending(name, limit=self._batch)
            except Exception as exc:
                delay = self._backoff.delay(store_attempt)
                store_attempt += 1
                logger.warning(
                    "events: cannot read the outbox for %s, retrying in %.1fs: %s", name, delay, exc
                )
                await asyncio.sleep(delay)
                continue
            store_attempt = 0
            status.backlog = len(events)
            if not events:
                self._idle[name].set()
                await self._wait(name, self._poll_interval_s)
                continue
            for event in events:
                await self._deliver(sink, event, status)
                status.backlog -= 1
                try:
                    # The cursor moves after every event, so a restart redelivers as little as possible.
                    await self._mark(name, event)
                except Exception as exc:
                    # Delivered but not marked: read the outbox again; what follows the last mark is
                    # delivered again (at least once).
                    logger.warning("events: cannot move the cursor of %s: %s", name, exc)
                    await asyncio.sleep(self._backoff.delay(0))
                    break

    async def _mark(self, name: str, event: OutboxEvent) -> None:
        if event.seq is None:
            raise ValueError(f"outbox event {event.event_id} has no seq")
        await self._store.mark_delivered(name, event.seq)
        self._status[name].last_delivered_seq = event.seq

    async def _deliver(self, sink: Sink, event: OutboxEvent, status: SinkStatus) -> None:
        """Deliver ``event``, retrying with backoff until it is accepted."""
        while True:
            try:
                await sink.deliver(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._backoff.delay(status.retrying)
                status.failures += 1
                status.retrying += 1
                status.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "events: %s could not deliver %s %s (attempt %d), retrying in %.1fs: %s",
                    sink.name,
                    event.type,
                    event.event_id,
                    status.retrying,
                    delay,
                    exc,
                    extra={"target": event.subject, "sink": sink.name, "event_id": event.event_id},
                )
                await asyncio.sleep(delay)
                continue
            if status.retrying:
                logger.info("events: %s delivers again", sink.name, extra={"sink": sink.name})
            status.retrying = 0
            status.delivered += 1
            return

    async def _prune_loop(self) -> None:
        names = [sink.name for sink in self._sinks]
        while True:
            await asyncio.sleep(self._prune_interval_s)
            before = datetime.now(UTC) - timedelta(seconds=self._retention_s)
            try:
                pruned = await self._store.prune(delivered_before=before, sinks=names)
            except Exception as exc:
                logger.warning("events: cannot prune the outbox: %s", exc)
                continue
            if pruned:
                logger.info("events: pruned %d delivered events older than %s", pruned, before.isoformat())
