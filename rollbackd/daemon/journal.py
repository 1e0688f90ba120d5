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
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from rollbackd.daemon.rollbacks import RollbackRun
from rollbackd.events.build import Announcer, Clock
from rollbackd.events.publisher import audit_entry_for
from rollbackd.events.service import Events
from rollbackd.model import Decision, Hold
from rollbackd.params import TargetParams
from rollbackd.store.base import AuditEntry, Store

logger = logging.getLogger(__name__)


class Journal:
    """Audit log and events for the daemon; a no-op until :meth:`attach` gives it open events."""

    def __init__(self, *, required: bool) -> None:
        self._events: Events | None = None
        self._store: Store | None = None
        self._saving = asyncio.Lock()
        self._announcers: dict[str, Announcer] = {}
        self._required = required
        self._lifecycle: str | None = "the store is not open yet" if required else None
        self._outages: dict[str, str] = {}
        self._poison_listeners: list[Callable[[str], None]] = []

    @property
    def problem(self) -> str | None:
        """Why the audit trail cannot be written now (``None`` when it can)."""
        if self._lifecycle is not None:
            return self._lifecycle
        for reason in self._outages.values():
            return reason
        return None

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

    def attach(self, events: Events, store: Store | None = None) -> None:
        self._events = events
        self._store = store
        self._announcers.clear()
        self._outages.clear()
        self._lifecycle = None

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
            self._events.publisher.submit(audit_entry_for(event), (event,))

    def run(
        self, params: TargetParams, run: RollbackRun, *, decision: Decision | None, bad_revision: int | None
    ) -> None:
        """A rollback run changed phase: rollback.started / completed / verified / failed, ..."""
        announcer = self._announcer(params)
        if announcer is None or self._events is None:
            return
        for event in announcer.on_run(
            run, clock=Clock.now(), decision=decision, strategy=params.strategy, bad_revision=bad_revision
        ):
            self._events.publisher.submit(audit_entry_for(event), (event,))

    async def save_run(self, key: str, state: Mapping[str, Any] | None) -> None:
        """Keep (or, with ``None``, forget) the rollback under way for ``key`` in the store, so a
        restarted daemon or a new leader finishes it."""
        store = self._store
        if store is None:
            return
        async with self._saving:
            try:
                await store.put_state(f"rollback:{key}", state)
            except Exception as exc:
                logger.error("could not save the rollback state: %s", exc, extra={"target": key})

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
