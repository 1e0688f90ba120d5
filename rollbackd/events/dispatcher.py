"""Delivering the outbox to the sinks: at least once, in order, each sink at its own pace.

One loop per sink reads the events that sink has not delivered yet (``store.pending(sink)``, in
outbox order), delivers them in order and moves the sink's cursor as deliveries succeed
(``store.mark_delivered``). A sink that keeps call order on the wire (MQTT: one TCP connection)
may have several deliveries in flight at once (its ``max_in_flight``): they complete in order, and
one cursor move covers every delivery that completed meanwhile. A failed delivery is retried, the
same event again, after a jittered backoff -- cut short when a sink that had lost its connection
gets it back: an event is never skipped, so the order per target holds, and a sink that is down
only holds back its own cursor, never the other sinks'. A delivery that succeeded but whose cursor
move was lost (a crash, a store error) is delivered again: subscribers dedupe by event id.

The loops wake at once when events are recorded (:meth:`Dispatcher.nudge`) and also poll every
``poll_interval_s``, so events recorded by another process or before a restart are delivered
too. Events every sink has delivered are pruned after ``retention_s``.

A sink never keeps events in the outbox for ever (:mod:`rollbackd.events.deadletter`): an event it
refuses for good (:class:`RejectedDelivery`, e.g. HTTP 410) is dead-lettered at once, and one it
keeps failing on is dead-lettered once older than ``dead_letter_after_s`` or once more than
``dead_letter_after_events`` newer events wait behind it. Its cursor then moves past the event,
so the sink goes on with the next one and pruning, which keeps what the slowest sink has not
delivered, goes on too.

Of several replicas, only the leader delivers (and prunes): a dispatcher whose ``active()`` says
no reads nothing and delivers nothing; it looks again every ``poll_interval_s``. A batch under way
when the lead is lost is finished (a delivery at least once, which subscribers dedupe by id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

from rollbackd.aiotasks import stop_tasks
from rollbackd.backoff import Backoff
from rollbackd.errors import PermanentError, TemporaryError
from rollbackd.events.build import EventFactory
from rollbackd.events.deadletter import SINK_OVERDUE, SINK_REJECTED, DeadLetters, escalation_about
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


@runtime_checkable
class PipelinedSink(Sink, Protocol):
    """A sink that may have several deliveries under way at once: it sends events in the order
    :meth:`deliver` is called (the dispatcher starts them in outbox order) over a transport that
    keeps that order. The cursor still moves only over an unbroken run of completed deliveries
    from the oldest, and a failed one is delivered again with everything started after it."""

    @property
    def max_in_flight(self) -> int:
        """How many deliveries the dispatcher may have under way at once (1: one by one)."""
        ...


@runtime_checkable
class ConnectedSink(Sink, Protocol):
    """A sink holding a connection (MQTT): a retry waits no longer than its reconnection."""

    @property
    def connected(self) -> bool: ...

    async def wait_connected(self, *, timeout_s: float) -> bool:
        """Whether the sink is (or gets, within ``timeout_s``) connected."""
        ...


class DeliveryError(TemporaryError):
    """A sink could not deliver an event now; the dispatcher retries it."""


class RejectedDelivery(PermanentError):
    """A sink refused an event for good (e.g. a webhook answering 410 Gone): the dispatcher
    dead-letters it instead of retrying."""


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
    #: Events the sink gave up on (refused for good, or kept past the bound): see deadletter.
    dead_lettered: int = 0


class Dispatcher:
    """Delivers the store's outbox to ``sinks``; an async context manager owning one task per sink
    and one pruning task, all cancelled (and awaited) on exit.

    Keyword-only arguments:

    - ``store``: the store holding the outbox;
    - ``sinks``: the sinks, each with a unique ``name``;
    - ``backoff``: delays between retries of a failed delivery (and of store reads);
    - ``poll_interval_s``: the longest a loop sleeps without a :meth:`nudge`;
    - ``batch``: events read from the outbox at once;
    - ``retention_s``: delivered events older than this are pruned; ``prune_interval_s``: how often;
    - ``active``: whether this process may deliver now (the leader); ``None``: always;
    - ``dead_letter_after_s``, ``dead_letter_after_events``: a failing sink gives up on an event
      older than this, or with more than this many newer events waiting behind it (``None``: no
      such bound);
    - ``factory``: makes the ``escalation.raised`` of a sink that gives up (its ``source``);
    - ``wall_clock``: the time events' ages are measured against (their ``created_at``).
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
        active: Callable[[], bool] | None = None,
        dead_letter_after_s: float | None = None,
        dead_letter_after_events: int | None = None,
        factory: EventFactory | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        names = [sink.name for sink in sinks]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"sink names must be unique; repeated: {', '.join(duplicates)}")
        if poll_interval_s <= 0 or batch < 1 or retention_s < 0 or prune_interval_s <= 0:
            raise ValueError("poll_interval_s and prune_interval_s must be positive, batch at least 1")
        if (dead_letter_after_s is not None and dead_letter_after_s < 0) or (
            dead_letter_after_events is not None and dead_letter_after_events < 1
        ):
            raise ValueError("dead_letter_after_s must be at least 0, dead_letter_after_events at least 1")
        self._store = store
        self._sinks = tuple(sinks)
        self._backoff = backoff
        self._poll_interval_s = poll_interval_s
        self._batch = batch
        self._retention_s = retention_s
        self._prune_interval_s = prune_interval_s
        self._active = active if active is not None else _always
        self._wake = {sink.name: asyncio.Event() for sink in self._sinks}
        self._idle = {sink.name: asyncio.Event() for sink in self._sinks}
        self._status = {sink.name: SinkStatus(sink.name) for sink in self._sinks}
        self._tasks: list[asyncio.Task[None]] = []
        self._dead_letter_after_s = dead_letter_after_s
        self._dead_letter_after_events = dead_letter_after_events
        self._dead_letters = DeadLetters(store=store, factory=factory or EventFactory())
        self._wall_clock = wall_clock
        #: The newest outbox seq any sink has read: how far ahead of a stuck sink the outbox is.
        self._newest_seq = 0

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
        await stop_tasks(tasks)

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
            if not self._active():  # a standby: the leader delivers
                status.backlog = 0
                self._idle[name].set()
                await self._wait(name, self._poll_interval_s)
                continue
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
            if events and events[-1].seq is not None:
                self._newest_seq = max(self._newest_seq, events[-1].seq)
            if not events:
                self._idle[name].set()
                await self._wait(name, self._poll_interval_s)
                continue
            await self._deliver_all(sink, events, status)

    async def _deliver_all(self, sink: Sink, events: Sequence[OutboxEvent], status: SinkStatus) -> None:
        """Deliver ``events`` in order and move the cursor as they are delivered: after each one
        when they go one by one (so a restart redelivers as little as possible); with several in
        flight (up to the sink's ``max_in_flight``), one store write at a time, each to the newest
        delivered event, while deliveries go on. Returns early, to read the outbox again, when a
        cursor move fails."""
        window = max(1, sink.max_in_flight) if isinstance(sink, PipelinedSink) else 1
        if window == 1:
            for event in events:
                await self._settle(sink, event, status)
                if not await self._move_cursor(sink.name, event):
                    return await self._after_lost_move()
            return
        in_flight: deque[tuple[int, asyncio.Task[None]]] = deque()
        moving: asyncio.Task[bool] | None = None
        unmarked: OutboxEvent | None = None
        sent = 0
        try:
            while sent < len(events) or in_flight:
                while sent < len(events) and len(in_flight) < window:
                    in_flight.append((sent, self._start(sink, events[sent])))
                    sent += 1
                index, task = in_flight[0]
                await asyncio.wait((task,))
                in_flight.popleft()
                if _failed(task):
                    # What was started after it is delivered again, after it.
                    await _cancel_all(task for _, task in in_flight)
                    in_flight.clear()
                    sent = index + 1
                await self._settle(sink, events[index], status, started=task)
                unmarked = events[index]
                while in_flight and in_flight[0][1].done() and not _failed(in_flight[0][1]):
                    index, _ = in_flight.popleft()
                    self._delivered(status)
                    unmarked = events[index]
                if moving is not None and moving.done():
                    if not moving.result():
                        return await self._after_lost_move()
                    moving = None
                if moving is None:
                    moving = asyncio.create_task(self._move_cursor(sink.name, unmarked))
                    unmarked = None
            if moving is not None and not await moving:
                return await self._after_lost_move()
            if unmarked is not None and not await self._move_cursor(sink.name, unmarked):
                return await self._after_lost_move()
        finally:
            await _cancel_all(task for _, task in in_flight)
            if moving is not None:
                await _cancel_all((moving,))

    async def _move_cursor(self, name: str, event: OutboxEvent) -> bool:
        """Move the cursor of sink ``name`` through ``event``; ``False`` when the store failed."""
        if event.seq is None:
            raise ValueError(f"outbox event {event.event_id} has no seq")
        try:
            await self._store.mark_delivered(name, event.seq)
        except Exception as exc:
            logger.warning("events: cannot move the cursor of %s: %s", name, exc)
            return False
        self._status[name].last_delivered_seq = event.seq
        return True

    async def _after_lost_move(self) -> None:
        """Delivered but not marked: pause, then read the outbox again; what follows the last
        cursor move is delivered again (at least once)."""
        await asyncio.sleep(self._backoff.delay(0))

    @staticmethod
    def _start(sink: Sink, event: OutboxEvent) -> asyncio.Task[None]:
        return asyncio.create_task(sink.deliver(event), name=f"rollbackd:events:{sink.name}:deliver")

    async def _settle(
        self, sink: Sink, event: OutboxEvent, status: SinkStatus, *, started: asyncio.Task[None] | None = None
    ) -> None:
        """Deliver ``event`` -- or wait for ``started``, its delivery already under way -- and
        when that fails, deliver it again, with backoff, until it is accepted -- or given up on
        (dead-lettered) when refused for good or kept past the bound."""
        if escalation_about(event, sink.name):  # it could not deliver it either
            if started is not None:
                await _cancel_all((started,))
            status.backlog -= 1
            return
        attempt = started
        while True:
            try:
                if attempt is None:
                    await sink.deliver(event)
                else:
                    await attempt
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self._backoff.delay(status.retrying)
                status.failures += 1
                status.retrying += 1
                status.last_error = f"{type(exc).__name__}: {exc}"
                cause = self._dead_letter_cause(exc, event)
                if cause is not None and await self._dead_letters.record(
                    sink=sink.name, event=event, cause=cause, error=str(exc) or type(exc).__name__
                ):
                    status.retrying = 0
                    status.dead_lettered += 1
                    status.backlog -= 1
                    self.nudge()  # an escalation for the other sinks, the first time
                    return
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
                await self._pause(sink, delay)
                attempt = None
                continue
            self._delivered(status)
            return

    def _dead_letter_cause(self, exc: Exception, event: OutboxEvent) -> str | None:
        """Why to give up on ``event`` after its delivery failed with ``exc``, if at all."""
        if isinstance(exc, RejectedDelivery):
            return SINK_REJECTED
        if self._dead_letter_after_s is not None and event.created_at is not None:
            age_s = (self._wall_clock() - event.created_at).total_seconds()
            if age_s > self._dead_letter_after_s:
                return SINK_OVERDUE
        behind = self._dead_letter_after_events
        if behind is not None and event.seq is not None and self._newest_seq - event.seq > behind:
            return SINK_OVERDUE
        return None

    @staticmethod
    async def _pause(sink: Sink, delay_s: float) -> None:
        """The backoff before a retry; a sink that has lost its connection ends it by reconnecting
        (its own reconnection backoff bounds how often that happens)."""
        if isinstance(sink, ConnectedSink) and not sink.connected:
            await sink.wait_connected(timeout_s=delay_s)
        else:
            await asyncio.sleep(delay_s)

    @staticmethod
    def _delivered(status: SinkStatus) -> None:
        if status.retrying:
            logger.info("events: %s delivers again", status.name, extra={"sink": status.name})
        status.retrying = 0
        status.delivered += 1
        status.backlog -= 1

    async def _prune_loop(self) -> None:
        names = [sink.name for sink in self._sinks]
        while True:
            await asyncio.sleep(self._prune_interval_s)
            if not self._active():
                continue
            before = datetime.now(UTC) - timedelta(seconds=self._retention_s)
            try:
                pruned = await self._store.prune(delivered_before=before, sinks=names)
            except Exception as exc:
                logger.warning("events: cannot prune the outbox: %s", exc)
                continue
            if pruned:
                logger.info("events: pruned %d delivered events older than %s", pruned, before.isoformat())


def _always() -> bool:
    return True


def _failed(task: asyncio.Task[Any]) -> bool:
    """Whether ``task`` (done) ended otherwise than by succeeding."""
    return task.cancelled() or task.exception() is not None


async def _cancel_all(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them to end, whatever they end with (their outcome is not
    needed: each of their events is delivered again)."""
    await stop_tasks(tasks, failures="drop")
