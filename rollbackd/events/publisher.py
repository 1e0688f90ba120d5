"""Publishing events: into the store's outbox, in the transaction of their audit record.

:class:`EventPublisher` is the daemon's one door for events. It writes an audit entry and the
events it announces together (:meth:`~rollbackd.store.base.Store.record`), then nudges the
dispatcher, which delivers them to every sink. An event is therefore never published for
something that was not recorded, and never lost once recorded: a crash before delivery leaves it
in the outbox, and the dispatcher delivers it after the restart.

Every value is made storable first (:func:`~rollbackd.store.storable.storable`: non-finite
numbers, lone surrogates and NUL characters replaced), for audit details and event payloads alike.

Code that cannot await (a synchronous callback) uses :meth:`EventPublisher.submit`: entries are
recorded in submission order by the publisher's own writer task, which exists while the publisher
is open (``async with``). The writer tells two failures apart:

- *the store is down* (:class:`~rollbackd.store.base.TemporaryStoreError`, or a refusal while the
  store does not answer a ping): the entry is retried with backoff, everything behind it waits,
  and ``on_health`` hears the reason (the daemon is then not ready and does not act);
- *the store refuses this record* (:class:`~rollbackd.store.base.PermanentStoreError` while the
  store answers): the record is *set aside as poison*, never blocking the ones behind it. It is
  kept, as it was queued, as one JSON line in ``<spool_dir>/poison.jsonl``; ``on_poison`` hears
  of it (the daemon counts ``rollbackd_poison_records_total``); a ``poison.set_aside`` audit entry
  says what was set aside and why; and, for a record about a target, an ``escalation.raised``
  event (cause ``poison-record``) asks a human to look.

On close, entries still queued (the store being down, or slow) are spilled to
``<spool_dir>/spool.jsonl``; the next publisher on the same directory records them first, before
anything new. An entry whose write was under way when the stop came may so be written twice: one
with events is then refused by the outbox (:class:`~rollbackd.store.base.DuplicateEventError`) and
taken as recorded, never as poison; one without events appears twice in the audit log.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from rollbackd.aiotasks import stop_tasks
from rollbackd.backoff import Backoff
from rollbackd.events.build import Clock, EventFactory
from rollbackd.events.model import CloudEvent, split_subject
from rollbackd.store.base import (
    AuditEntry,
    DuplicateEventError,
    OutboxEvent,
    PermanentStoreError,
    Store,
    TemporaryStoreError,
    answers,
)
from rollbackd.store.storable import storable, storable_text

logger = logging.getLogger(__name__)

DEFAULT_BACKOFF = Backoff(initial_s=0.5, max_s=30.0)

#: The file of the records the store refused, in the spool directory.
POISON_FILE = "poison.jsonl"
#: The file of the entries not recorded at the last close, in the spool directory.
SPOOL_FILE = "spool.jsonl"
#: Attempts at an entry failing with an error that is not the store's (a bug) before it is set aside.
MAX_UNKNOWN_ATTEMPTS = 5
#: How long a refused record waits for the store to answer a ping, to tell a refusal from an outage.
PING_TIMEOUT_S = 5.0


def audit_entry_for(event: CloudEvent) -> AuditEntry:
    """The audit record of one event: its short type as ``kind``, its summary, its data."""
    return AuditEntry(
        kind=event.short_type,
        summary=event.summary,
        target=event.subject,
        details={"event_id": event.id, **event.data.model_dump(mode="json")},
    )


def storable_entry(entry: AuditEntry) -> AuditEntry:
    """``entry`` with storable text and details (see :mod:`rollbackd.store.storable`)."""
    return AuditEntry(
        kind=storable_text(entry.kind),
        summary=storable_text(entry.summary),
        target=None if entry.target is None else storable_text(entry.target),
        details=storable(entry.details),
        at=entry.at,
        seq=entry.seq,
    )


def storable_event(event: OutboxEvent) -> OutboxEvent:
    """``event`` with a storable payload, id, type and subject."""
    return OutboxEvent(
        event_id=storable_text(event.event_id),
        type=storable_text(event.type),
        subject=None if event.subject is None else storable_text(event.subject),
        payload=storable(event.payload),
        seq=event.seq,
        created_at=event.created_at,
    )


@dataclass(frozen=True, slots=True)
class _Queued:
    entry: AuditEntry
    events: tuple[OutboxEvent, ...]
    #: Read from the spool file of an earlier close.
    spooled: bool = False
    #: Says that another record was set aside: never itself followed up.
    follow_up: bool = False


def _line(entry: AuditEntry, events: Sequence[OutboxEvent], **extra: Any) -> str:
    """One JSON line keeping ``entry`` and ``events`` exactly (ASCII escapes keep lone surrogates,
    ``NaN`` and ``Infinity`` stay as Python writes them)."""
    document = {
        "kind": entry.kind,
        "summary": entry.summary,
        "target": entry.target,
        "details": entry.details,
        "at": entry.at.isoformat() if entry.at is not None else None,
        "events": [
            {"event_id": e.event_id, "type": e.type, "subject": e.subject, "payload": e.payload}
            for e in events
        ],
        **extra,
    }
    return json.dumps(document, ensure_ascii=True, default=str) + "\n"


def _from_line(line: str) -> tuple[AuditEntry, tuple[OutboxEvent, ...]]:
    document = json.loads(line)
    at = document.get("at")
    entry = AuditEntry(
        kind=str(document["kind"]),
        summary=str(document["summary"]),
        target=document.get("target"),
        details=dict(document.get("details") or {}),
        at=datetime.fromisoformat(at) if at else None,
    )
    events = tuple(
        OutboxEvent(
            event_id=str(e["event_id"]),
            type=str(e["type"]),
            subject=e.get("subject"),
            payload=dict(e["payload"]),
        )
        for e in document.get("events", ())
    )
    return entry, events


class EventPublisher:
    """Records audit entries with their events and wakes the dispatcher.

    Keyword-only arguments:

    - ``store``: where the audit log and the outbox live;
    - ``on_recorded``: called after every successful record (the dispatcher's ``nudge``);
    - ``backoff``: delays between retries of :meth:`submit`'s writes when the store fails;
    - ``close_timeout_s``: how long closing waits for submitted entries still being written;
    - ``spool_dir``: where poison records are kept and the unrecorded queue is spilled on close
      (``store.data_dir``); ``None`` keeps nothing (the queue left on close is lost, logged);
    - ``on_health``: hears ``None`` when a write succeeds, the reason when the store is down;
    - ``on_poison``: hears the kind of each record set aside as poison;
    - ``factory``: makes the ``escalation.raised`` event of a poison record (none without).
    """

    def __init__(
        self,
        *,
        store: Store,
        on_recorded: Callable[[], None] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        close_timeout_s: float = 10.0,
        spool_dir: Path | None = None,
        on_health: Callable[[str | None], None] | None = None,
        on_poison: Callable[[str], None] | None = None,
        factory: EventFactory | None = None,
    ) -> None:
        self._store = store
        self._on_recorded = on_recorded
        self._backoff = backoff
        self._close_timeout_s = close_timeout_s
        self._spool_dir = spool_dir
        self._on_health = on_health
        self._on_poison = on_poison
        self._factory = factory
        self._queue: collections.deque[_Queued] = collections.deque()
        self._more = asyncio.Event()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._outage: str | None = None
        #: Why the last write failed while the store was down; ``None`` once a write succeeds.
        self.problem: str | None = None
        self._spooled_left = 0
        self._writer: asyncio.Task[None] | None = None

    async def publish(self, entry: AuditEntry, events: Sequence[CloudEvent] = ()) -> AuditEntry:
        """Record ``entry`` and ``events`` in one transaction; returns the stored entry. Store errors
        are raised (nothing was recorded)."""
        return await self._record(storable_entry(entry), tuple(storable_event(e.to_outbox()) for e in events))

    async def announce(self, event: CloudEvent) -> AuditEntry:
        """Record ``event`` with an audit entry made from it (:func:`audit_entry_for`)."""
        return await self.publish(audit_entry_for(event), (event,))

    def submit(self, entry: AuditEntry, events: Sequence[CloudEvent] = ()) -> None:
        """Queue ``entry`` and ``events`` for recording, in order, without waiting (retried with
        backoff while the store is down, set aside when it refuses them). Only while the publisher
        is open."""
        if self._writer is None or self._writer.done():
            raise RuntimeError("EventPublisher.submit() needs an open publisher (async with)")
        outbox = tuple(storable_event(event.to_outbox()) for event in events)
        if entry.at is None:  # when it happened, not when the store took it (after an outage)
            entry = dataclasses.replace(entry, at=datetime.now(UTC))
        self._put(_Queued(storable_entry(entry), outbox))

    def retry_now(self) -> None:
        """Cut the backoff short: the store answers again."""
        self._outage = None
        self._wake.set()

    def store_down(self, problem: str) -> None:
        """The store does not answer (its health check says ``problem``): closing will not wait
        for writes, and spills the queue at once."""
        self._outage = problem

    async def flush(self) -> None:
        """Wait until no submitted entry waits any more: every one is recorded (or set aside as
        poison), however long the store takes."""
        await self._idle.wait()

    @property
    def backlog(self) -> int:
        """Submitted entries not recorded yet."""
        return len(self._queue)

    async def _record(self, entry: AuditEntry, outbox: Sequence[OutboxEvent]) -> AuditEntry:
        stored = await self._store.record(entry, outbox)
        if outbox and self._on_recorded is not None:
            self._on_recorded()
        return stored

    def _put(self, item: _Queued, *, first: bool = False) -> None:
        if first:
            self._queue.appendleft(item)
        else:
            self._queue.append(item)
        self._idle.clear()
        self._more.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._closing = False
        self._load_spool()
        self._writer = asyncio.create_task(self._write(), name="rollbackd:events:publisher")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        down = self.problem is not None or self._outage is not None
        if not down:  # the store works: give the queue a bounded moment
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._close_timeout_s):
                    await self._idle.wait()
        self._closing = True
        self._wake.set()
        self._more.set()
        if not down:  # a write under way ends (or times out); none is waited for in an outage
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), self._close_timeout_s)
        await stop_tasks([writer])
        self._spill()

    def _load_spool(self) -> None:
        """Queue the entries the last close spilled, first."""
        if self._spool_dir is None:
            return
        path = self._spool_dir / SPOOL_FILE
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            logger.error("cannot read the spooled audit entries in %s: %s", path, exc)
            return
        loaded: list[_Queued] = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                entry, events = _from_line(line)
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("%s line %d cannot be read, set aside in %s: %s", path, number, POISON_FILE, exc)
                self._keep_poison_line(json.dumps({"unreadable_spool_line": line, "error": str(exc)}) + "\n")
                continue
            loaded.append(
                _Queued(storable_entry(entry), tuple(storable_event(e) for e in events), spooled=True)
            )
        for item in reversed(loaded):
            self._put(item, first=True)
        self._spooled_left = len(loaded)
        if loaded:
            logger.warning(
                "recording %d audit entries spooled at the last stop (%s) first", len(loaded), path
            )
        elif lines:
            path.unlink(missing_ok=True)

    def _spill(self) -> None:
        """Write what is still queued to the spool file (replacing it), or say what is lost."""
        left = list(self._queue)
        self._queue.clear()
        self._idle.set()
        if self._spool_dir is None:
            if left:
                logger.error("closing the event publisher: %d submitted entries were not recorded", len(left))
            return
        path = self._spool_dir / SPOOL_FILE
        if not left:
            if self._spooled_left == 0:
                path.unlink(missing_ok=True)
            return
        temporary = path.with_name(f".{SPOOL_FILE}.tmp")
        try:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            with temporary.open("w", encoding="utf-8") as out:
                out.writelines(_line(item.entry, item.events) for item in left)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            logger.error("%d audit entries not recorded and not spooled to %s: %s", len(left), path, exc)
            return
        logger.warning(
            "%d audit entries not recorded yet: spooled to %s, recorded at the next start", len(left), path
        )

    # --- the writer ------------------------------------------------------------------------

    def _health(self, problem: str | None) -> None:
        if problem == self.problem:
            return
        self.problem = problem
        if self._on_health is not None:
            self._on_health(problem)

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or until :meth:`retry_now` or a close."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)

    async def _write(self) -> None:
        while not self._closing:
            if not self._queue:
                self._idle.set()
                self._more.clear()
                await self._more.wait()
                continue
            item = self._queue[0]
            attempt = 0
            unknown = 0
            while not self._closing:
                try:
                    await self._record(item.entry, item.events)
                except TemporaryStoreError as exc:
                    self._health(f"the audit trail cannot be written: {exc}")
                except PermanentStoreError as exc:
                    if item.spooled and isinstance(exc, DuplicateEventError):
                        # Its write was under way at the stop that spooled it, and went through.
                        logger.info(
                            "%s was recorded before the last stop: not recorded again",
                            item.entry.kind,
                            extra={"target": item.entry.target},
                        )
                        self._queue.popleft()
                        self._recorded_spooled(item)
                        break
                    if await answers(self._store, timeout_s=PING_TIMEOUT_S):
                        self._queue.popleft()
                        self._set_aside(item, exc)
                        break
                    self._health(f"the audit trail cannot be written (the store does not answer): {exc}")
                except Exception as exc:
                    unknown += 1
                    if unknown >= MAX_UNKNOWN_ATTEMPTS:
                        self._queue.popleft()
                        self._set_aside(item, exc)
                        break
                    self._health(f"the audit trail cannot be written: {exc}")
                else:
                    self._queue.popleft()
                    self._health(None)
                    self._recorded_spooled(item)
                    break
                delay = self._backoff.delay(attempt)
                attempt += 1
                logger.warning(
                    "could not record %s (attempt %d), retrying in %.1fs",
                    item.entry.kind,
                    attempt,
                    delay,
                    extra={"target": item.entry.target},
                )
                await self._pause(delay)

    def _recorded_spooled(self, item: _Queued) -> None:
        if not item.spooled or self._spool_dir is None:
            return
        self._spooled_left -= 1
        if self._spooled_left == 0:
            (self._spool_dir / SPOOL_FILE).unlink(missing_ok=True)
            logger.info("the audit entries spooled at the last stop are recorded")

    def _set_aside(self, item: _Queued, error: Exception) -> None:
        """Keep ``item`` as a poison record, count it, and queue its follow-up first."""
        self._recorded_spooled(item)
        reason = storable_text(str(error)) or type(error).__name__
        where = self._spool_dir / POISON_FILE if self._spool_dir is not None else None
        kept = self._keep_poison_line(_line(item.entry, item.events, error=reason))
        logger.error(
            "the store refused the %s record; set aside as poison%s: %s",
            item.entry.kind,
            f" in {where}" if kept else " (not kept: no spool directory)",
            reason,
            extra={"target": item.entry.target},
        )
        if self._on_poison is not None:
            self._on_poison(item.entry.kind)
        if item.follow_up:
            return
        summary = f"a {item.entry.kind!r} record the store refused was set aside: {reason}"
        details: Mapping[str, Any] = {
            "kind": item.entry.kind,
            "summary": item.entry.summary,
            "event_ids": [event.event_id for event in item.events],
            "event_types": [event.type for event in item.events],
            "error": reason,
            "kept_in": str(where) if kept and where is not None else None,
        }
        events: tuple[OutboxEvent, ...] = ()
        if self._factory is not None and item.entry.target is not None:
            with contextlib.suppress(ValueError):  # not a namespace/name subject
                split_subject(item.entry.target)
                escalation = self._factory.escalation_raised(
                    item.entry.target,
                    cause="poison-record",
                    reasons=(summary, "the record is kept in the poison file; see docs/operations.md"),
                    clock=Clock.now(),
                )
                events = (storable_event(escalation.to_outbox()),)
        follow_up = AuditEntry(
            kind="poison.set_aside", summary=summary, target=item.entry.target, details=details
        )
        self._put(_Queued(storable_entry(follow_up), events, follow_up=True), first=True)

    def _keep_poison_line(self, line: str) -> bool:
        if self._spool_dir is None:
            return False
        path = self._spool_dir / POISON_FILE
        try:
            self._spool_dir.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as out:
                out.write(line)
                out.flush()
                os.fsync(out.fileno())
        except OSError as exc:
            logger.error("cannot keep a poison record in %s: %s", path, exc)
            return False
        return True
