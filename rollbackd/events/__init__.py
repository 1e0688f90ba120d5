"""Events: every step of a release's story as a CloudEvent, delivered at least once, in order.

The layer, from the domain values to the subscribers:

- :mod:`.model` -- :class:`CloudEvent` and one ``data`` model per :class:`EventType` (the contract
  with subscribers; :mod:`.schemas` generates the JSON Schemas in docs/schemas from them);
- :mod:`.build` -- :class:`EventFactory` (evidence, decisions, holds, rollback runs -> events)
  and :class:`Announcer` (which of a target's ticks are news);
- :mod:`.publisher` -- :class:`EventPublisher`: an audit entry and its events into the store's
  outbox in one transaction, then a nudge to the dispatcher;
- :mod:`.dispatcher` -- :class:`Dispatcher`: one loop per sink, delivering the outbox in order
  with retries, each sink with its own cursor;
- sinks: :mod:`.mqtt` (topics, retained status, liveness with a last will), :mod:`.webhooks`
  (signed POSTs), :mod:`.kube_events` (Kubernetes Events on the target's Deployment);
- :mod:`.service` -- :func:`open_events`: all of the above from the settings;
- :mod:`.follow` -- ``rollbackd events --follow``, a live view of the stream.

See docs/events.md for subscribers.
"""

from rollbackd.events.build import Announcer, Clock, EventFactory
from rollbackd.events.dispatcher import DeliveryError, Dispatcher, Sink, SinkStatus
from rollbackd.events.model import (
    CloudEvent,
    EventFormatError,
    EventType,
    TargetState,
    decision_state,
    state_after,
    status_of,
)
from rollbackd.events.publisher import EventPublisher, audit_entry_for

__all__ = [
    "Announcer",
    "Clock",
    "CloudEvent",
    "DeliveryError",
    "Dispatcher",
    "EventFactory",
    "EventFormatError",
    "EventPublisher",
    "EventType",
    "Sink",
    "SinkStatus",
    "TargetState",
    "audit_entry_for",
    "decision_state",
    "state_after",
    "status_of",
]
