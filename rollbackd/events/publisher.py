"""Publishing events: into the store's outbox, in the transaction of their audit record.

:class:`EventPublisher` is the daemon's one door for events. It writes an audit entry and the
events it announces together (:meth:`~rollbackd.store.base.Store.record`), then nudges the
dispatcher, which delivers them to every sink. An event is therefore never published for
something that was not recorded, and never lost once recorded: a crash before delivery leaves it
in the outbox, and the dispatcher delivers it after the restart.

Code that cannot await (a synchronous callback) uses :meth:`EventPublisher.submit`: entries are
recorded in submission order by the publisher's own writer task, which exists while the publisher
is open (``async with``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Self

from rollbackd.backoff import Backoff
from rollbackd.events.model import CloudEvent
from rollbackd.store.base import AuditEntry, Store

logger = logging.getLogger(__name__)

DEFAULT_BACKOFF = Backoff(initial_s=0.5, max_s=30.0)


def audit_entry_for(event: CloudEvent) -> AuditEntry:
    """The audit record of one event: its short type as ``kind``, its summary, its data."""
    return AuditEntry(
        kind=event.short_type,
        summary=event.summary,
        target=event.subject,
        details={"event_id": event.id, **event.data.model_dump(mode="json")},
    )


class EventPublisher:
    """Records audit entries with their events and wakes the dispatcher.

    Keyword-only arguments:

    - ``store``: where the audit log and the outbox live;
    - ``on_recorded``: called after every successful record (the dispatcher's ``nudge``);
    - ``backoff``: delays between retries of :meth:`submit`'s writes when the store fails;
    - ``close_timeout_s``: how long closing waits for submitted entries still being written.
    """

    def __init__(
        self,
        *,
        store: Store,
        on_recorded: Callable[[], None] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        close_timeout_s: float = 10.0,
    ) -> None:
        self._store = store
        self._on_recorded = on_recorded
        self._backoff = backoff
        self._close_timeout_s = close_timeout_s
        self._queue: asyncio.Queue[tuple[AuditEntry, tuple[CloudEvent, ...]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def publish(self, entry: AuditEntry, events: Sequence[CloudEvent] = ()) -> AuditEntry:
        """Record ``entry`` and ``events`` in one transaction; returns the stored entry. Store errors
        are raised (nothing was recorded)."""
        stored = await self._store.record(entry, [event.to_outbox() for event in events])
        if events and self._on_recorded is not None:
            self._on_recorded()
        return stored

    async def announce(self, event: CloudEvent) -> AuditEntry:
        """Record ``event`` with an audit entry made from it (:func:`audit_entry_for`)."""
        return await self.publish(audit_entry_for(event), (event,))

    def submit(self, entry: AuditEntry, events: Sequence[CloudEvent] = ()) -> None:
        """Queue ``entry`` and ``events`` for recording, in order, without waiting (retried with
        backoff while the store fails). Only while the publisher is open."""
        if self._writer is None or self._writer.done():
            raise RuntimeError("EventPublisher.submit() needs an open publisher (async with)")
        self._queue.put_nowait((entry, tuple(events)))

    async def flush(self) -> None:
        """Wait until every entry submitted so far (and since) is recorded."""
        await self._queue.join()

    @property
    def backlog(self) -> int:
        """Submitted entries not recorded yet."""
        return self._queue.qsize()

    async def __aenter__(self) -> Self:
        self._writer = asyncio.create_task(self._write(), name="rollbackd:events:publisher")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        try:
            async with asyncio.timeout(self._close_timeout_s):
                await self._queue.join()
        except TimeoutError:
            logger.error(
                "closing the event publisher: %d submitted entries were not recorded", self._queue.qsize()
            )
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer

    async def _write(self) -> None:
        while True:
            entry, events = await self._queue.get()
            attempt = 0
            try:
                while True:
                    try:
                        await self.publish(entry, events)
                        break
                    except Exception as exc:
                        delay = self._backoff.delay(attempt)
                        attempt += 1
                        logger.warning(
                            "could not record %s (attempt %d), retrying in %.1fs: %s",
                            entry.kind,
                            attempt,
                            delay,
                            exc,
                            extra={"target": entry.target},
                        )
                        await asyncio.sleep(delay)
            finally:
                self._queue.task_done()
