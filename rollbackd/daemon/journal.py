"""Telling everyone what happened: the daemon's audit entries and events, through one object.

The daemon calls :class:`Journal` from its tick and from rollback phase changes; the journal turns
decisions and runs into CloudEvents (only when something changes, through one
:class:`~rollbackd.events.build.Announcer` per target) and submits them with their audit entries
to the store in order, without making the tick wait for the database. Without an open store (it
is down, or being opened) nothing is recorded and :attr:`problem` says why; the daemon then does
not act, since it could not account for what it did. Once open, the store's health is watched
(:meth:`store_health`: the keeper's pings, the publisher's writes); while either says the audit
trail cannot be written, :attr:`problem` says so too, and entries wait in the publisher's queue.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from rollbackd.decision.lifetime import Lifetime
from rollbackd.events.build import Announcer, Clock
from rollbackd.events.dispatcher import SinkStatus
from rollbackd.events.model import CloudEvent, EventFormatError, EventType
from rollbackd.events.publisher import audit_entry_for, storable_entry, storable_event
from rollbackd.events.service import Events
from rollbackd.model import Decision, Hold
from rollbackd.params import TargetParams
from rollbackd.releases import Release
from rollbackd.run import RollbackRun
from rollbackd.runrecord import RunRecord
from rollbackd.store.base import AuditEntry, Store, TemporaryStoreError

logger = logging.getLogger(__name__)

#: Audit entries of a target read back to find what a rollback left under way had announced.
RESUME_LOOKBACK = 100
#: Audit entries read back (all targets) to recall the recent rollbacks: their cooldowns, the
#: hourly cap and the post-rollback watches survive a restart and a change of leader.
RECALL_LOOKBACK = 20000
#: Audit kinds of a rollback run's own events.
_RUN_EVENTS = frozenset(
    {
        EventType.ROLLBACK_STARTED,
        EventType.ROLLBACK_COMPLETED,
        EventType.ROLLBACK_FAILED,
        EventType.ROLLBACK_VERIFIED,
        EventType.VERIFICATION_FAILED,
        EventType.GITOPS_SUSPENDED,
    }
)
#: What is recalled of a rollback: that it started (cooldown, hourly cap) and that it was verified
#: (the post-rollback watch).
_RECALLED = frozenset({EventType.ROLLBACK_STARTED, EventType.ROLLBACK_VERIFIED})
#: Audit kinds that end a rollback run.
RUN_OVER = frozenset(
    {
        EventType.ROLLBACK_VERIFIED,
        EventType.VERIFICATION_FAILED,
        EventType.ROLLBACK_FAILED,
    }
)


class Journal:
    """Audit log and events for the daemon; a no-op until :meth:`attach` gives it open events."""

    def __init__(self, *, required: bool) -> None:
        self._events: Events | None = None
        self._store: Store | None = None
        self._saving = asyncio.Lock()
        #: Order of the run states handed to :meth:`save_run`, and the latest written per key.
        self._state_order = itertools.count()
        self._state_written: dict[str, int] = {}
        self._announcers: dict[str, Announcer] = {}
        self._required = required
        self._lifecycle: str | None = "the store is not open yet" if required else None
        self._outages: dict[str, str] = {}
        self._poison_listeners: list[Callable[[str], None]] = []
        self._event_listeners: list[Callable[[CloudEvent], None]] = []

    @property
    def problem(self) -> str | None:
        """Why the audit trail cannot be written now (``None`` when it can)."""
        if self._lifecycle is not None:
            return self._lifecycle
        return next(iter(self._outages.values()), None)

    @problem.setter
    def problem(self, value: str | None) -> None:
        self._lifecycle = value

    def store_health(self, source: str, problem: str | None) -> None:
        """What ``source`` (``ping``, ``write``) says now: ``None`` when the store works for it,
        else why the audit trail cannot be written."""
        previous = self.problem
        if problem is None:
            self._outages.pop(source, None)
        else:
            self._outages[source] = problem
        now = self.problem
        if now != previous and self._events is not None:
            if now is None:
                logger.warning("the audit trail can be written again: acting resumes")
            elif previous is None:
                logger.error("%s: not ready, and not acting until it can be written", now)

    def add_poison_listener(self, listener: Callable[[str], None]) -> None:
        """``listener(kind)`` hears of every record the store refused and that was set aside."""
        self._poison_listeners.append(listener)

    def add_event_listener(self, listener: Callable[[CloudEvent], None]) -> None:
        """``listener(event)`` hears of every event the journal submits to the outbox."""
        self._event_listeners.append(listener)

    def _submit(self, events: Events, event: CloudEvent) -> None:
        events.publisher.submit(audit_entry_for(event), (event,))
        for listener in self._event_listeners:
            listener(event)

    def poisoned(self, kind: str) -> None:
        """A record of ``kind`` was set aside as poison (see :mod:`rollbackd.events.publisher`)."""
        for listener in self._poison_listeners:
            listener(kind)

    @property
    def attached(self) -> bool:
        return self._events is not None

    @property
    def events(self) -> Events | None:
        return self._events

    @property
    def store(self) -> Store | None:
        """The open store (``None`` while it is not open, or without one)."""
        return self._store

    @property
    def required(self) -> bool:
        """Whether a store is configured (and so nothing may be done that it cannot record)."""
        return self._required

    def attach(self, events: Events, store: Store | None = None) -> None:
        self._events = events
        self._store = store
        self._announcers.clear()
        self._outages.clear()
        self._lifecycle = None

    def sink_status(self) -> Mapping[str, SinkStatus]:
        """Each event sink's delivery (none while the store is not open)."""
        return {} if self._events is None else self._events.dispatcher.status()

    def detach(self, problem: str | None = None) -> None:
        self._events = None
        self._store = None
        self._outages.clear()
        if self._required:
            self._lifecycle = problem or "the store is closed"

    def forget_announced(self) -> None:
        """Announce every target afresh from the next decision on (a replica that starts leading:
        what it announced before it was a standby may be stale)."""
        self._announcers.clear()

    def _announcer(self, params: TargetParams) -> Announcer | None:
        if self._events is None:
            return None
        announcer = self._announcers.get(params.key)
        if announcer is None:
            announcer = self._events.announcer(params.key, slo=params.slo)
            self._announcers[params.key] = announcer
        return announcer

    def decision(self, params: TargetParams, decision: Decision, *, hold: Hold | None) -> None:
        """A tick's decision: announced (and audited) only when it says something new."""
        announcer = self._announcer(params)
        if announcer is None or self._events is None:
            return
        for event in announcer.on_decision(decision, hold=hold, clock=Clock.now()):
            self._submit(self._events, event)

    def release_accepted(self, params: TargetParams, release: Lifetime) -> None:
        """The target's release was accepted: ``release.accepted`` (and its audit entry)."""
        if self._events is None:
            return
        event = self._events.factory.release_accepted(params.key, release, clock=Clock.now())
        self._submit(self._events, event)

    def run(
        self, params: TargetParams, run: RollbackRun, *, decision: Decision | None, bad_revision: int | None
    ) -> None:
        """A rollback run changed phase: rollback.started / completed / verified / failed, ...
        The run keeps its ``rollback.started`` (its record holds it, for a process that takes the
        run over)."""
        announcer = self._announcer(params)
        if announcer is None or self._events is None:
            return
        for event in announcer.on_run(
            run, clock=Clock.now(), decision=decision, strategy=params.strategy, bad_revision=bad_revision
        ):
            if event.event_type is EventType.ROLLBACK_STARTED:
                run.started_event, run.started_event_id = event.to_json(), event.id
            self._submit(self._events, event)

    async def save_run(self, key: str, state: Mapping[str, Any] | None) -> bool:
        """Keep (or, with ``None``, forget) the rollback under way for ``key`` in the store, so a
        restarted daemon or a new leader finishes it. Whether it was kept (without a store: whether
        none is required). Writes are done in the order of the calls; one that comes after a
        later state of the same key was written is not done (that state is newer)."""
        store = self._store
        if store is None:
            return not self._required
        order = next(self._state_order)
        async with self._saving:
            if self._state_written.get(key, -1) > order:
                return True
            try:
                await store.put_state(f"rollback:{key}", state)
            except Exception as exc:
                logger.error("could not save the rollback state: %s", exc, extra={"target": key})
                return False
            self._state_written[key] = order
        return True

    async def flushed(self) -> bool:
        """Wait until every entry submitted so far is in the store (however long the store takes);
        ``False`` when there is no open store and one is required."""
        events = self._events
        if events is None:
            return not self._required
        await events.publisher.flush()
        return True

    async def announced_run_events(self, key: str, record: RunRecord) -> set[EventType]:
        """The events of the rollback of ``key`` left under way (``record``) already in the audit
        log (``rollback.started``, and ``rollback.completed`` once its action had completed),
        found by the run's id; empty when none is found or the store cannot say (then
        ``rollback.started`` is published again with its original id, which subscribers dedupe)."""
        store = self._store
        if store is None:
            return set()
        try:
            entries = await store.history(target=key, limit=RESUME_LOOKBACK)
        except Exception as exc:
            logger.warning("could not read the audit log before resuming: %s", exc, extra={"target": key})
            return set()
        if record.started_event_id is not None:
            return {
                EventType.parse(entry.kind)
                for entry in entries
                if entry.kind in _RUN_EVENTS
                and (
                    entry.details.get("run_id") == record.run_id
                    or entry.details.get("event_id") == record.started_event_id
                )
            }
        # A record from before run ids: the latest rollback's events, if it did not end.
        announced: set[EventType] = set()
        for entry in reversed(entries):
            if entry.kind in RUN_OVER:
                return set()  # the latest rollback ended; the one under way was never announced
            if entry.kind == EventType.ROLLBACK_COMPLETED:
                announced.add(EventType.ROLLBACK_COMPLETED)
            elif entry.kind == EventType.ROLLBACK_STARTED:
                announced.add(EventType.ROLLBACK_STARTED)
                return announced
        return set()

    async def recent_rollbacks(self, since: datetime) -> list[AuditEntry]:
        """The ``rollback.started`` and ``rollback.verified`` entries of every target since
        ``since``, oldest first (of the latest :data:`RECALL_LOOKBACK` audit entries): what a new
        leader, or a restarted process, recalls of the rollbacks before it. Raises
        :class:`~rollbackd.store.base.StoreError` when the store cannot say."""
        store = self._store
        if store is None:
            return []
        entries = await store.history(since=since, limit=RECALL_LOOKBACK)
        return [entry for entry in entries if entry.kind in _RECALLED and entry.target is not None]

    def resuming(self, params: TargetParams, record: RunRecord, *, announced: set[EventType]) -> None:
        """The run of ``record`` is about to finish a rollback a previous process left under way:
        its ``announced`` events are not announced again, and its ``rollback.started``, if not
        among them, is announced as the record has it (same id)."""
        announcer = self._announcer(params)
        if announcer is None:
            return
        started = None
        if record.started_event is not None:
            try:
                started = CloudEvent.from_json(record.started_event)
            except EventFormatError as exc:
                logger.warning(
                    "the record's rollback.started cannot be read: %s", exc, extra={"target": params.key}
                )
        announcer.resume(record.run_id, announced=announced, started=started)

    async def release_started(self, release: Release) -> tuple[Release, bool]:
        """Store ``release`` with its audit record and ``release.started`` event, in one
        transaction, unless its id is stored already; returns the stored release and whether this
        call stored it. Without a store configured, nothing is stored (the caller keeps it) and
        the event is published through the publisher. :class:`StoreError` when a store is
        configured but not open, or does not answer."""
        events = self._events
        if events is None:
            if self._required:
                raise TemporaryStoreError(f"{self.problem or 'the store is not open'}: try again once it "
                                          "answers (see /readyz)")
            return release, True
        event = events.factory.release_started(release, clock=Clock.now())
        store = self._store
        if store is None:
            self._submit(events, event)
            return release, True
        stored, created = await store.add_release(
            release, storable_entry(audit_entry_for(event)), (storable_event(event.to_outbox()),)
        )
        if created:
            for listener in self._event_listeners:
                listener(event)
        return stored, created

    async def releases(
        self,
        *,
        target: str | None = None,
        since: datetime | None = None,
        recorded_since: datetime | None = None,
        limit: int,
    ) -> list[Release] | None:
        """The latest ``limit`` releases stored (of ``target``, started since ``since``, stored
        since ``recorded_since``), oldest first (``None`` while the store is not open)."""
        store = self._store
        if store is None:
            return None
        return await store.releases(target=target, since=since, recorded_since=recorded_since, limit=limit)

    async def history(
        self, *, target: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry] | None:
        """The audit log (``None`` while the store is not open)."""
        store = self._store
        if store is None:
            return None
        return await store.history(target=target, since=since, limit=limit)

    async def runs_in_flight(self, keys: list[str]) -> dict[str, Mapping[str, Any]]:
        """The rollbacks under way that the store remembers, for the given targets."""
        store = self._store
        if store is None:
            return {}
        found: dict[str, Mapping[str, Any]] = {}
        for key in keys:
            state = await store.get_state(f"rollback:{key}")
            if state is not None:
                found[key] = state
        return found

    def audit(
        self, kind: str, summary: str, *, target: str | None = None, details: Mapping[str, Any] | None = None
    ) -> None:
        """An audit entry with no event (freeze, dry-run switch, config reload, daemon start/stop)."""
        logger.info("audit: %s", summary, extra={"kind": kind, "target": target})
        if self._events is None:
            return
        self._events.publisher.submit(
            AuditEntry(kind=kind, summary=summary, target=target, details=dict(details or {}))
        )
