"""Giving up on one event for one sink: recorded in the audit trail, escalated once, never silent.

A sink gives up on an event (the dispatcher moves its cursor past it) in two cases:

- ``sink-rejected``: the sink refused the event for good (a webhook answering 400, 401, 403, 404,
  410, 413 or 422): sending it again would be refused again;
- ``sink-overdue``: the sink kept failing on an event for longer than its bound
  (``events.dead_letter_after_s``) or while more than ``events.dead_letter_after_events`` newer
  events waited behind it: without the bound a dead sink would keep every event in the outbox.

Each dead-lettered event is an ``event.dead-lettered`` audit record (the sink, the event, the
cause, the error). The first one of each sink and cause also records an ``escalation.raised``
event about the event's target, in the same transaction, for the other sinks (the sink it is
about is not sent it): one escalation per sink and cause while the daemon runs, not one per event.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rollbackd.events.build import Clock, EventFactory
from rollbackd.events.model import EventType, split_subject
from rollbackd.events.publisher import storable_entry, storable_event
from rollbackd.store.base import AuditEntry, OutboxEvent, Store

logger = logging.getLogger(__name__)

#: The audit record of an event a sink gave up on.
DEAD_LETTER_KIND = "event.dead-lettered"
SINK_REJECTED = "sink-rejected"
SINK_OVERDUE = "sink-overdue"


def escalation_about(event: OutboxEvent, sink: str) -> bool:
    """Whether ``event`` is the escalation raised because ``sink`` could not deliver: that sink
    is not sent it (it could not deliver it either, and would raise it again)."""
    if event.type != EventType.ESCALATION_RAISED.full:
        return False
    data = event.payload.get("data")
    return isinstance(data, Mapping) and data.get("sink") == sink


@dataclass(slots=True)
class DeadLetters:
    """Records dead-lettered events in ``store``, with an escalation made by ``factory`` the first
    time for each sink and cause."""

    store: Store
    factory: EventFactory = field(default_factory=EventFactory)
    _escalated: set[tuple[str, str]] = field(default_factory=set)

    async def record(self, *, sink: str, event: OutboxEvent, cause: str, error: str) -> bool:
        """Record that ``sink`` gave up on ``event`` because of ``cause``; ``True`` when recorded
        (and an escalation with it, the first time), ``False`` when the store failed (the caller
        tries again later, and until then does not move past the event)."""
        details: dict[str, Any] = {
            "sink": sink,
            "cause": cause,
            "error": error,
            "event_id": event.event_id,
            "event_type": event.type,
            "seq": event.seq,
        }
        entry = AuditEntry(
            kind=DEAD_LETTER_KIND,
            summary=f"{sink} gave up on {event.type} {event.event_id} ({cause}): {error}",
            target=event.subject,
            details=details,
        )
        key = (sink, cause)
        escalation = None
        if key not in self._escalated and event.subject is not None and _is_target(event.subject):
            escalation = self.factory.sink_escalation(
                event.subject, sink=sink, cause=cause, reason=error, event_type=event.type, clock=Clock.now()
            )
        outbox = () if escalation is None else (storable_event(escalation.to_outbox()),)
        try:
            await self.store.record(storable_entry(entry), outbox)
        except Exception as exc:
            logger.warning("events: cannot record that %s gave up on %s: %s", sink, event.event_id, exc)
            return False
        if escalation is not None:
            self._escalated.add(key)
        logger.error(
            "events: %s gave up on %s %s (%s): %s",
            sink,
            event.type,
            event.event_id,
            cause,
            error,
            extra={"target": event.subject, "sink": sink, "event_id": event.event_id},
        )
        return True


def _is_target(subject: str) -> bool:
    try:
        split_subject(subject)
    except ValueError:
        return False
    return True
