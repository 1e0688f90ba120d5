"""The shared store: PostgreSQL through psycopg 3, connections from a psycopg_pool pool.

:meth:`PostgresStore.open` connects once on its own first, so that a database that is down or
refuses the login gives its real reason (not a pool timeout), applies the migrations on that
connection, then opens the pool. Connections are checked before use, so a database restart costs
the calls made while it is down (they raise :class:`TemporaryStoreError`), nothing more.

Outbox order is commit order: :meth:`PostgresStore.record` locks the outbox against other writers
for the rest of its transaction before it inserts events, so an event can never appear *behind*
a sink's cursor by committing after a later one was delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from rollbackd.config.storeurl import DsnError, StoreUrl, parse_store_url
from rollbackd.model import ConfigMapVersion
from rollbackd.releases import Release
from rollbackd.store import migrations, sql
from rollbackd.store.base import (
    AuditEntry,
    DuplicateEventError,
    OutboxEvent,
    PermanentStoreError,
    StoreError,
    TemporaryStoreError,
)
from rollbackd.store.group import GroupCommit, PendingRecord, recording

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

#: Key of the advisory lock that keeps two starting daemons from migrating at once.
MIGRATION_LOCK_KEY = 0x726F6C6C  # "roll"

_LOCK_OUTBOX = "LOCK TABLE outbox IN EXCLUSIVE MODE"  # readers (SELECT) still pass


def _reason(exc: BaseException, url: StoreUrl) -> str:
    """A psycopg error as one line, without the secrets of ``url`` (libpq may quote the
    connection string)."""
    return url.scrub(" ".join(str(exc).split())) or type(exc).__name__


def safe_cause(cause: BaseException, url: StoreUrl) -> BaseException | None:
    """``cause`` to chain an error to (shown in tracebacks), or ``None`` when it quotes a secret
    of ``url``: ``raise StoreError(...) from safe_cause(exc, url)``."""
    return cause if url.hides_secrets(str(cause)) else None


class PostgresStore:
    """The :class:`~rollbackd.store.base.Store` in a PostgreSQL database.

    :param dsn: a libpq connection URL (``postgresql://user:password@host:port/dbname?...``) or
        ``key=value`` string; the schema is the first of the connection's ``search_path``. Never
        shown with its password (:mod:`rollbackd.config.storeurl`).
    :param min_size: connections the pool keeps open.
    :param max_size: most connections the pool opens.
    :param connect_timeout_s: how long one connection attempt may take.
    :param timeout_s: how long a call waits for a free (or new) connection before failing.
    :param close_timeout_s: how long :meth:`close` waits for connections in use.
    :param ping_timeout_s: how long :meth:`ping` waits for a connection before answering no.
    """

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        connect_timeout_s: float = 10.0,
        timeout_s: float = 30.0,
        close_timeout_s: float = 5.0,
        ping_timeout_s: float = 2.0,
    ) -> None:
        try:
            self.url = parse_store_url(dsn)
        except DsnError as exc:
            raise PermanentStoreError(f"store.url: {exc}") from None
        if self.url.kind != "postgresql":
            raise PermanentStoreError("store.url: not a PostgreSQL DSN (postgresql://... or key=value)")
        self.dsn = dsn
        self.min_size = min_size
        self.max_size = max_size
        self.connect_timeout_s = connect_timeout_s
        self.timeout_s = timeout_s
        self.close_timeout_s = close_timeout_s
        self.ping_timeout_s = ping_timeout_s
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._records: GroupCommit[PendingRecord, int] = GroupCommit(self._write_records, name="postgresql")

    @property
    def description(self) -> str:
        """The store as it may be shown in logs and messages: the DSN without its password."""
        return self.url.description

    def __repr__(self) -> str:
        return f"<PostgresStore {self.description}>"

    async def __aenter__(self) -> PostgresStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _reason(self, exc: BaseException) -> str:
        return _reason(exc, self.url)

    def _cause(self, exc: BaseException) -> BaseException | None:
        return safe_cause(exc, self.url)

    # -- lifecycle --------------------------------------------------------------------------

    def _connect_kwargs(self) -> dict[str, Any]:
        # libpq counts whole seconds and treats less than 2 as 2.
        return {"autocommit": True, "connect_timeout": max(2, math.ceil(self.connect_timeout_s))}

    async def open(self) -> None:
        if self._pool is not None:
            raise PermanentStoreError(f"the store {self.description} is already open")
        try:
            conn = await psycopg.AsyncConnection.connect(self.dsn, **self._connect_kwargs())
        except psycopg.Error as exc:
            raise TemporaryStoreError(
                f"cannot connect to the PostgreSQL store {self.description}: {self._reason(exc)}; "
                "check store.url and that the database is up"
            ) from self._cause(exc)
        try:
            async with conn:
                await self._migrate(conn)
        except StoreError:
            raise
        except psycopg.OperationalError as exc:
            raise TemporaryStoreError(
                f"cannot migrate the PostgreSQL store {self.description}: {self._reason(exc)}"
            ) from self._cause(exc)
        except psycopg.Error as exc:
            raise PermanentStoreError(
                f"cannot migrate the PostgreSQL store {self.description}: {self._reason(exc)}"
            ) from self._cause(exc)

        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs=self._connect_kwargs(),
            check=AsyncConnectionPool.check_connection,
            timeout=self.timeout_s,
            name="rollbackd-store",
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout_s)
        except BaseException as exc:
            await pool.close(timeout=self.close_timeout_s)
            if isinstance(exc, PoolTimeout):
                raise TemporaryStoreError(
                    f"cannot open connections to the PostgreSQL store {self.description} within "
                    f"{self.connect_timeout_s:g}s: {self._reason(exc)}"
                ) from self._cause(exc)
            raise
        self._pool = pool
        logger.info("store opened: %s (schema version %d)", self.description, migrations.LATEST_VERSION)

    async def close(self) -> None:
        """Close the pool (records under way are written first). Closing a closed store does
        nothing."""
        if self._pool is not None and not await self._records.wait_idle(self.close_timeout_s):
            logger.error(
                "store %s: closing: records still being written after %gs (the database does not "
                "answer) were given up",
                self.description,
                self.close_timeout_s,
            )
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close(timeout=self.close_timeout_s)

    async def _migrate(self, conn: psycopg.AsyncConnection[Any]) -> None:
        where = self.description
        if not migrations.pending(await self._version(conn), where=where):
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))
            await conn.execute(migrations.POSTGRES.format(migrations.CREATE_VERSION_TABLE))
            for step in migrations.pending(await self._version(conn), where=where):
                for statement in step.sql(migrations.POSTGRES):
                    await conn.execute(statement)
                applied = (step.version, step.description, datetime.now(UTC))
                await conn.execute(migrations.INSERT_VERSION, applied)
                logger.info("store %s: applied schema migration %d (%s)", where, *applied[:2])

    @staticmethod
    async def _version(conn: psycopg.AsyncConnection[Any]) -> int:
        cur = await conn.execute(migrations.POSTGRES.table_exists, ("schema_version",))
        if await cur.fetchone() is None:
            return 0
        row = await (await conn.execute(migrations.SELECT_VERSION)).fetchone()
        return int(row[0]) if row is not None else 0

    @contextlib.asynccontextmanager
    async def _connection(
        self, what: str, *, timeout_s: float | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (waiting up to ``timeout_s``, default :attr:`timeout_s`); database
        errors become :class:`StoreError`, classified by whether a retry may help."""
        pool = self._pool
        if pool is None:
            raise PermanentStoreError(f"the store {self.description} is not open")
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            async with pool.connection(timeout=timeout_s) as conn:
                yield conn
        except StoreError:
            raise
        except PoolTimeout as exc:
            raise TemporaryStoreError(
                f"store {self.description}: cannot {what}: no connection within {timeout_s:g}s "
                f"({self._reason(exc)})"
            ) from self._cause(exc)
        except psycopg.OperationalError as exc:  # connection lost, server shutting down, deadlock
            raise TemporaryStoreError(
                f"store {self.description}: cannot {what}: {self._reason(exc)}"
            ) from self._cause(exc)
        except psycopg.errors.UniqueViolation as exc:
            duplicate = "event_id" in (exc.diag.constraint_name or "")
            refused = DuplicateEventError if duplicate else PermanentStoreError
            raise refused(
                f"store {self.description}: cannot {what}: {self._reason(exc)}"
            ) from self._cause(exc)
        except psycopg.Error as exc:  # other constraint violations, bad data
            raise PermanentStoreError(
                f"store {self.description}: cannot {what}: {self._reason(exc)}"
            ) from self._cause(exc)

    # -- the audit log and the outbox -------------------------------------------------------

    async def record(self, entry: AuditEntry, events: Sequence[OutboxEvent] = ()) -> AuditEntry:
        """See :meth:`~rollbackd.store.base.Store.record`. Records made at the same time share a
        transaction (:mod:`rollbackd.store.group`), each in a savepoint of its own."""
        now = datetime.now(UTC)
        at = sql.aware(entry.at, "AuditEntry.at") if entry.at is not None else now
        record = PendingRecord(
            kind=entry.kind,
            audit=sql.audit_params(entry, at),
            events=tuple(sql.event_params(event, now) for event in events),
        )
        seq = await self._records.submit(record)
        return AuditEntry(
            kind=entry.kind, summary=entry.summary, target=entry.target, details=entry.details, at=at, seq=seq
        )

    async def _write_records(self, records: Sequence[PendingRecord]) -> list[int | StoreError]:
        """Write ``records`` in one transaction, their statements pipelined (sent back to back,
        one wait for all their results). When the database refuses one of them (a duplicate event
        id), nothing of the group is kept, and each is written again in a transaction of its own,
        so that only that one fails."""
        try:
            async with self._connection(recording([r.kind for r in records])) as conn, conn.transaction():
                async with conn.pipeline():
                    if any(record.events for record in records):
                        await conn.execute(_LOCK_OUTBOX)
                    cursors = []
                    for record in records:
                        cursors.append(await conn.execute(sql.INSERT_AUDIT, record.audit))
                        for params in record.events:
                            await conn.execute(sql.INSERT_EVENT, params)
                rows = [await cursor.fetchone() for cursor in cursors]
        except PermanentStoreError:
            if len(records) == 1:
                raise
            return [await self._write_alone(record) for record in records]
        assert all(row is not None for row in rows)  # INSERT ... RETURNING
        return [int(row[0]) for row in rows if row is not None]

    async def _write_alone(self, record: PendingRecord) -> int | StoreError:
        """Write one record in a transaction of its own; the error it alone fails with."""
        try:
            (seq,) = await self._write_records([record])
        except PermanentStoreError as exc:
            return exc
        return seq

    async def history(
        self, *, target: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        query, params = sql.history_query(target=target, since=since, limit=limit)
        async with self._connection("read the history") as conn:
            cur = await conn.execute(query, params)
            return [sql.entry_from_row(row) for row in await cur.fetchall()]

    async def pending(self, sink: str, *, limit: int = 500) -> list[OutboxEvent]:
        async with self._connection(f"read the outbox for {sink}") as conn:
            cur = await conn.execute(sql.PENDING, (sink, limit))
            return [sql.event_from_row(row) for row in await cur.fetchall()]

    async def mark_delivered(self, sink: str, through_seq: int) -> None:
        async with self._connection(f"mark events delivered to {sink}") as conn:
            await conn.execute(sql.MARK_DELIVERED, (sink, through_seq, datetime.now(UTC)))

    async def prune(self, *, delivered_before: datetime, sinks: Sequence[str]) -> int:
        async with self._connection("prune the outbox") as conn, conn.transaction():
            cur = await conn.execute(sql.SELECT_CURSORS)
            cursors = {sink: int(seq) for sink, seq in await cur.fetchall()}
            query = sql.prune_query(cursors, sinks=sinks, before=delivered_before)
            if query is None:
                return 0
            cur = await conn.execute(*query)
            return cur.rowcount

    # -- releases ---------------------------------------------------------------------------

    async def add_release(
        self, release: Release, entry: AuditEntry, events: Sequence[OutboxEvent] = ()
    ) -> tuple[Release, bool]:
        """See :meth:`~rollbackd.store.base.Store.add_release`."""
        now = datetime.now(UTC)
        at = sql.aware(entry.at, "AuditEntry.at") if entry.at is not None else now
        values = sql.release_params(release, now)
        audit = sql.audit_params(entry, at)
        outbox = [sql.event_params(event, now) for event in events]
        async with self._connection(f"store the release {release.id}") as conn, conn.transaction():
            inserted = await (await conn.execute(sql.INSERT_RELEASE, values)).fetchone()
            if inserted is None:
                row = await (await conn.execute(sql.SELECT_RELEASE, (release.id,))).fetchone()
                assert row is not None  # the conflict was on it
                return sql.release_from_row(row), False
            if outbox:
                await conn.execute(_LOCK_OUTBOX)
            await conn.execute(sql.INSERT_AUDIT, audit)
            for params in outbox:
                await conn.execute(sql.INSERT_EVENT, params)
        return release, True

    async def releases(
        self,
        *,
        target: str | None = None,
        since: datetime | None = None,
        recorded_since: datetime | None = None,
        limit: int = 1000,
    ) -> list[Release]:
        query, params = sql.releases_query(
            target=target, since=since, recorded_since=recorded_since, limit=limit
        )
        async with self._connection("read the releases") as conn:
            cur = await conn.execute(query, params)
            return [sql.release_from_row(row) for row in await cur.fetchall()]

    # -- per-target state -------------------------------------------------------------------

    async def get_state(self, key: str) -> Mapping[str, Any] | None:
        async with self._connection(f"read the state of {key}") as conn:
            row = await (await conn.execute(sql.GET_STATE, (key,))).fetchone()
        return sql.decode_json(row[0]) if row is not None else None

    async def put_state(self, key: str, value: Mapping[str, Any] | None) -> None:
        if value is None:
            async with self._connection(f"delete the state of {key}") as conn:
                await conn.execute(sql.DELETE_STATE, (key,))
            return
        encoded = sql.encode_json(value, f"the state of {key}")
        async with self._connection(f"write the state of {key}") as conn:
            await conn.execute(sql.PUT_STATE, (key, encoded, datetime.now(UTC)))

    async def add_config_version(
        self, version: ConfigMapVersion, *, keep_versions: int, keep_age_s: float
    ) -> bool:
        """See :meth:`~rollbackd.store.base.Store.add_config_version`."""
        where = (version.namespace, version.name)
        now = datetime.now(UTC)
        data = sql.encode_json(version.data, f"the ConfigMap {'/'.join(where)}")
        async with self._connection(f"keep a version of the ConfigMap {'/'.join(where)}") as conn, \
                conn.transaction():
            newest = await (await conn.execute(sql.CONFIG_VERSIONS, (*where, 1))).fetchall()
            if sql.kept_data(newest) == dict(version.data):
                return False
            added = (await conn.execute(
                sql.INSERT_CONFIG_VERSION, (*where, version.resource_version, data, version.seen_at or now)
            )).rowcount > 0
            await conn.execute(sql.PRUNE_CONFIG_COUNT, (*where, *where, keep_versions))
            await conn.execute(sql.PRUNE_CONFIG_AGE, (*where, now - timedelta(seconds=keep_age_s), *where,
                                                      sql.CONFIG_ALWAYS_KEPT))
            return added

    async def config_versions(self, namespace: str, name: str, *, limit: int = 2) -> list[ConfigMapVersion]:
        """See :meth:`~rollbackd.store.base.Store.config_versions`."""
        async with self._connection(f"read the versions of the ConfigMap {namespace}/{name}") as conn:
            rows = await (await conn.execute(sql.CONFIG_VERSIONS, (namespace, name, limit))).fetchall()
        return [sql.config_version(namespace, name, row) for row in rows]

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(2 * self.ping_timeout_s):  # a connection, then an answer
                async with self._connection("answer", timeout_s=self.ping_timeout_s) as conn:
                    await conn.execute(sql.PING)
        except (StoreError, TimeoutError):
            return False
        return True

    async def schema_version(self) -> int:
        """The schema version of the open database."""
        async with self._connection("read the schema version") as conn:
            return await self._version(conn)
