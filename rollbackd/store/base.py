"""The store: per-target state, the audit log and the event outbox, behind one small interface.

Two backends implement :class:`Store`: SQLite (the embedded default, a file under the data
directory) and PostgreSQL (psycopg 3 with a psycopg_pool pool, when ``store.url`` is a
``postgresql://`` DSN). Both apply versioned schema migrations when opened.

The one rule that makes events trustworthy: an audit record and the events it announces are
written in the same transaction (:meth:`Store.record`), so an event is never published for
something that was not recorded, and never lost for something that was.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from rollbackd.errors import PermanentError, RollbackdError, TemporaryError
from rollbackd.model import ConfigMapVersion
from rollbackd.releases import Release


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One line of the audit trail.

    ``kind`` is what happened: ``decision``, ``action.step``, ``verification``, ``hold``,
    ``freeze``, ``config.reload``, ``daemon.start``, ``daemon.stop``, ...; ``target`` is
    ``namespace/name`` or ``None`` for daemon-wide entries; ``details`` holds the evidence,
    reasons, changes (object, field, before, after) as JSON-able values.
    """

    kind: str
    summary: str
    target: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | None = None  # set by the store when None
    seq: int | None = None  # assigned by the store


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event waiting in (or delivered from) the outbox: the CloudEvent as a JSON object."""

    event_id: str
    type: str
    subject: str | None
    payload: Mapping[str, Any]
    seq: int | None = None  # assigned by the store: the global delivery order
    created_at: datetime | None = None


class StoreError(RollbackdError):
    """The store cannot be reached or used; the message says which backend and what to do."""


class TemporaryStoreError(StoreError, TemporaryError):
    """The database cannot be reached now (down, restarting, locked, timed out): retry later."""


class PermanentStoreError(StoreError, PermanentError):
    """Retrying will not help: an unusable path, a schema newer than this rollbackd, a value that
    is not JSON, a duplicate event id."""


class DuplicateEventError(PermanentStoreError):
    """An event of the record is in the outbox already: the same record was written before (e.g. a
    write under way when the daemon stopped, spooled and written again at the next start)."""


class Store(Protocol):
    """What the daemon needs to remember, whichever database is behind it."""

    async def open(self) -> None:
        """Connect and apply pending migrations. Raises :class:`StoreError` with a clear reason."""
        ...

    async def close(self) -> None: ...

    async def record(self, entry: AuditEntry, events: Sequence[OutboxEvent] = ()) -> AuditEntry:
        """Append ``entry`` to the audit log and ``events`` to the outbox, in one transaction.
        Returns the entry with ``seq`` and ``at`` set."""
        ...

    async def history(
        self, *, target: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Audit entries, oldest first, filtered by target and time."""
        ...

    async def pending(self, sink: str, *, limit: int = 500) -> list[OutboxEvent]:
        """Events not yet delivered to ``sink``, in outbox order (each sink has its own cursor, so a
        dead sink never holds the others back)."""
        ...

    async def mark_delivered(self, sink: str, through_seq: int) -> None:
        """Every event of ``sink`` up to and including ``through_seq`` is delivered."""
        ...

    async def prune(self, *, delivered_before: datetime, sinks: Sequence[str]) -> int:
        """Delete outbox events older than ``delivered_before`` that every sink in ``sinks`` has
        delivered; returns how many went."""
        ...

    async def get_state(self, key: str) -> Mapping[str, Any] | None:
        """Per-target state (e.g. an in-flight rollback a new leader must finish)."""
        ...

    async def put_state(self, key: str, value: Mapping[str, Any] | None) -> None:
        """Set (or, with ``None``, delete) per-target state."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers now (for /readyz)."""
        ...

    async def add_config_version(
        self, version: ConfigMapVersion, *, keep_versions: int, keep_age_s: float
    ) -> bool:
        """Keep ``version`` of a ConfigMap unless its data is that of the newest version kept (a
        change of its metadata only is no new version), or it is kept already (another replica saw
        it); then drop its versions beyond the newest ``keep_versions`` and those older than
        ``keep_age_s`` (the 2 newest always stay). Whether it was kept as a new version."""
        ...

    async def config_versions(self, namespace: str, name: str, *, limit: int = 2) -> list[ConfigMapVersion]:
        """The newest ``limit`` kept versions of a ConfigMap, newest first."""
        ...

    async def add_release(
        self, release: Release, entry: AuditEntry, events: Sequence[OutboxEvent] = ()
    ) -> tuple[Release, bool]:
        """Store ``release`` unless one with its id is stored already, and then, in the same
        transaction, ``entry`` and ``events`` (its ``release.started``). Returns the stored
        release (the earlier one when the id was known: nothing else is written then) and
        whether this call stored it."""
        ...

    async def releases(
        self,
        *,
        target: str | None = None,
        since: datetime | None = None,
        recorded_since: datetime | None = None,
        limit: int = 1000,
    ) -> list[Release]:
        """Stored releases, oldest first: of ``target``, started at ``since`` or later, stored at
        ``recorded_since`` or later, the latest ``limit`` of them."""
        ...


async def answers(store: Store, *, timeout_s: float) -> bool:
    """Whether ``store`` answers a ping within ``timeout_s`` (a hung connection is no answer)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await store.ping()
    except TimeoutError:
        return False
