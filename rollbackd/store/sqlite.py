"""The embedded store: one SQLite file, zero set-up.

The connection lives in one dedicated thread, and every call runs there, so the event loop never
waits on the disk and the connection is only ever used by the thread that opened it. The file is
in WAL mode (``rollbackd history`` can read while the daemon writes) with full synchronous
commits: what :meth:`SQLiteStore.record` returned is on disk. Write transactions start with
``BEGIN IMMEDIATE``, so writers (another process included) queue instead of failing halfway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

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

__all__ = ["SQLiteStore"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: RETURNING (3.35) is used by the shared statements.
MIN_SQLITE_VERSION = (3, 35, 0)

# Statements prepared once, with SQLite's placeholders.
_INSERT_AUDIT = sql.qmark(sql.INSERT_AUDIT)
_INSERT_EVENT = sql.qmark(sql.INSERT_EVENT)
_PENDING = sql.qmark(sql.PENDING)
_MARK_DELIVERED = sql.qmark(sql.MARK_DELIVERED)
_GET_STATE = sql.qmark(sql.GET_STATE)
_PUT_STATE = sql.qmark(sql.PUT_STATE)
_INSERT_CONFIG_VERSION = sql.qmark(sql.INSERT_CONFIG_VERSION)
_CONFIG_VERSIONS = sql.qmark(sql.CONFIG_VERSIONS)
_PRUNE_CONFIG_COUNT = sql.qmark(sql.PRUNE_CONFIG_COUNT)
_PRUNE_CONFIG_AGE = sql.qmark(sql.PRUNE_CONFIG_AGE)
_DELETE_STATE = sql.qmark(sql.DELETE_STATE)
_INSERT_RELEASE = sql.qmark(sql.INSERT_RELEASE)
_SELECT_RELEASE = sql.qmark(sql.SELECT_RELEASE)
_TABLE_EXISTS = sql.qmark(migrations.SQLITE.table_exists)
_INSERT_VERSION = sql.qmark(migrations.INSERT_VERSION)


def _duplicate_event(exc: Exception) -> bool:
    """Whether SQLite refused a record because one of its event ids is in the outbox already."""
    return isinstance(exc, sqlite3.IntegrityError) and "event_id" in str(exc)


def _params(values: Iterable[Any]) -> tuple[Any, ...]:
    """Parameters as SQLite stores them: datetimes as fixed-width ISO 8601 text in UTC."""
    return tuple(sql.sqlite_time(value) if isinstance(value, datetime) else value for value in values)


class SQLiteStore:
    """The :class:`~rollbackd.store.base.Store` in a SQLite file.

    :param path: the database file; its directory is created when missing (unless ``create`` is
        false).
    :param create: create the file (and its directory) when it does not exist; with ``False``,
        :meth:`open` refuses a missing file (for readers such as ``rollbackd history``).
    :param busy_timeout_s: how long a statement waits for another writer's lock before failing.
    """

    def __init__(self, path: Path, *, create: bool = True, busy_timeout_s: float = 30.0) -> None:
        self.path = path
        self.create = create
        self.busy_timeout_s = busy_timeout_s
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._records: GroupCommit[PendingRecord, int] = GroupCommit(self._write_records, name="sqlite")

    @property
    def description(self) -> str:
        """The store as it may be shown in logs and messages."""
        return f"sqlite:{self.path}"

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path}>"

    async def __aenter__(self) -> SQLiteStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        if self._executor is not None:
            raise PermanentStoreError(f"the store {self.description} is already open")
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            raise PermanentStoreError(
                f"SQLite {sqlite3.sqlite_version} is too old for the store {self.description}: "
                f"rollbackd needs {'.'.join(map(str, MIN_SQLITE_VERSION))} or newer"
            )
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollbackd-sqlite")
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._connect)
        except BaseException:
            # Also when cancelled while connecting: the thread finishes, then closes what it opened.
            executor.submit(self._discard)
            executor.shutdown(wait=False)
            raise
        self._executor = executor
        logger.info("store opened: %s (schema version %d)", self.description, migrations.LATEST_VERSION)

    async def close(self) -> None:
        """Close the connection and stop the thread. Closing a closed store does nothing."""
        executor = self._executor
        if executor is None:
            return
        await self._records.wait_idle()  # records under way are written first
        if self._executor is not executor:  # closed meanwhile
            return
        self._executor = None
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=False)  # idle now: its thread ends by itself

    def _discard(self) -> None:
        """In the store's thread: close the connection, if :meth:`_connect` got that far."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connect(self) -> None:
        """In the store's thread: open the file, set it up, migrate it, keep the connection."""
        if not self.create and not self.path.is_file():
            raise PermanentStoreError(
                f"no store at {self.path}: rollbackd has not run with this store.data_dir "
                "(or store.url) yet, or the path is wrong"
            )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PermanentStoreError(
                f"cannot create the directory of the store {self.path}: {exc.strerror or exc}; "
                "set store.data_dir (or store.url) to a writable directory"
            ) from exc
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            self._migrate(conn)
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise PermanentStoreError(
                f"cannot open the store {self.path}: {exc}; check that the file is a rollbackd "
                "database and that its directory is writable (store.data_dir, store.url)"
            ) from exc
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        self._conn = conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        current = self._version(conn)
        if not migrations.pending(current, where=str(self.path)):
            return
        with self._transaction(conn):
            conn.execute(migrations.SQLITE.format(migrations.CREATE_VERSION_TABLE))
            current = self._version(conn)  # another process may have migrated meanwhile
            for step in migrations.pending(current, where=str(self.path)):
                for statement in step.sql(migrations.SQLITE):
                    conn.execute(statement)
                conn.execute(_INSERT_VERSION, _params((step.version, step.description, datetime.now(UTC))))
                logger.info(
                    "store %s: applied schema migration %d (%s)",
                    self.description,
                    step.version,
                    step.description,
                )

    @staticmethod
    def _version(conn: sqlite3.Connection) -> int:
        if conn.execute(_TABLE_EXISTS, ("schema_version",)).fetchone() is None:
            return 0
        row = conn.execute(migrations.SELECT_VERSION).fetchone()
        return int(row[0]) if row is not None else 0

    @staticmethod
    @contextlib.contextmanager
    def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    async def _run(self, what: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` with the connection in the store's thread; database errors become
        :class:`StoreError`, classified by whether a retry may help."""
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            raise PermanentStoreError(f"the store {self.description} is not open")
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, work, conn)
        except StoreError:
            raise
        except sqlite3.OperationalError as exc:  # locked, busy, disk I/O
            raise TemporaryStoreError(f"store {self.description}: cannot {what}: {exc}") from exc
        except sqlite3.Error as exc:  # constraint violations, corrupt file, misuse
            raise PermanentStoreError(f"store {self.description}: cannot {what}: {exc}") from exc

    # -- the audit log and the outbox -------------------------------------------------------

    async def record(self, entry: AuditEntry, events: Sequence[OutboxEvent] = ()) -> AuditEntry:
        """See :meth:`~rollbackd.store.base.Store.record`. Records made at the same time share a
        transaction (:mod:`rollbackd.store.group`), each in a savepoint of its own."""
        now = datetime.now(UTC)
        at = sql.aware(entry.at, "AuditEntry.at") if entry.at is not None else now
        record = PendingRecord(
            kind=entry.kind,
            audit=_params(sql.audit_params(entry, at)),
            events=tuple(_params(sql.event_params(event, now)) for event in events),
        )
        seq = await self._records.submit(record)
        return AuditEntry(
            kind=entry.kind, summary=entry.summary, target=entry.target, details=entry.details, at=at, seq=seq
        )

    async def _write_records(self, records: Sequence[PendingRecord]) -> list[int | StoreError]:
        """Write ``records`` in one transaction, each in a savepoint: one whose values the database
        refuses (a duplicate event id) fails alone, leaving nothing behind."""

        def work(conn: sqlite3.Connection) -> list[int | StoreError]:
            outcomes: list[int | StoreError] = []
            with self._transaction(conn):
                for record in records:
                    conn.execute("SAVEPOINT record")
                    try:
                        seq = int(conn.execute(_INSERT_AUDIT, record.audit).fetchone()[0])
                        conn.executemany(_INSERT_EVENT, record.events)
                    except (sqlite3.IntegrityError, sqlite3.DataError, ValueError) as exc:
                        # ValueError: a value the driver cannot bind (text that is not UTF-8).
                        conn.execute("ROLLBACK TO record")
                        refused = DuplicateEventError if _duplicate_event(exc) else PermanentStoreError
                        outcomes.append(
                            refused(
                                f"store {self.description}: cannot record the {record.kind!r} entry: {exc}"
                            )
                        )
                    else:
                        outcomes.append(seq)
                    conn.execute("RELEASE record")
            return outcomes

        return await self._run(recording([record.kind for record in records]), work)

    async def history(
        self, *, target: str | None = None, since: datetime | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        query, params = sql.history_query(target=target, since=since, limit=limit)

        def work(conn: sqlite3.Connection) -> list[AuditEntry]:
            return [sql.entry_from_row(row) for row in conn.execute(sql.qmark(query), _params(params))]

        return await self._run("read the history", work)

    async def pending(self, sink: str, *, limit: int = 500) -> list[OutboxEvent]:
        def work(conn: sqlite3.Connection) -> list[OutboxEvent]:
            return [sql.event_from_row(row) for row in conn.execute(_PENDING, (sink, limit))]

        return await self._run(f"read the outbox for {sink}", work)

    async def mark_delivered(self, sink: str, through_seq: int) -> None:
        params = _params((sink, through_seq, datetime.now(UTC)))
        await self._run(f"mark delivered to {sink}", lambda conn: conn.execute(_MARK_DELIVERED, params))

    async def prune(self, *, delivered_before: datetime, sinks: Sequence[str]) -> int:
        def work(conn: sqlite3.Connection) -> int:
            with self._transaction(conn):
                cursors = {sink: int(seq) for sink, seq in conn.execute(sql.SELECT_CURSORS)}
                query = sql.prune_query(cursors, sinks=sinks, before=delivered_before)
                if query is None:
                    return 0
                return conn.execute(sql.qmark(query[0]), _params(query[1])).rowcount

        return await self._run("prune the outbox", work)

    # -- releases ---------------------------------------------------------------------------

    async def add_release(
        self, release: Release, entry: AuditEntry, events: Sequence[OutboxEvent] = ()
    ) -> tuple[Release, bool]:
        """See :meth:`~rollbackd.store.base.Store.add_release`."""
        now = datetime.now(UTC)
        at = sql.aware(entry.at, "AuditEntry.at") if entry.at is not None else now
        values = _params(sql.release_params(release, now))
        audit = _params(sql.audit_params(entry, at))
        outbox = [_params(sql.event_params(event, now)) for event in events]

        def work(conn: sqlite3.Connection) -> tuple[Release, bool]:
            with self._transaction(conn):
                if conn.execute(_INSERT_RELEASE, values).fetchone() is None:
                    known = conn.execute(_SELECT_RELEASE, (release.id,)).fetchone()
                    return sql.release_from_row(known), False
                conn.execute(_INSERT_AUDIT, audit).fetchone()
                conn.executemany(_INSERT_EVENT, outbox)
            return release, True

        return await self._run(f"store the release {release.id}", work)

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

        def work(conn: sqlite3.Connection) -> list[Release]:
            return [sql.release_from_row(row) for row in conn.execute(sql.qmark(query), _params(params))]

        return await self._run("read the releases", work)

    # -- per-target state -------------------------------------------------------------------

    async def get_state(self, key: str) -> Mapping[str, Any] | None:
        def work(conn: sqlite3.Connection) -> dict[str, Any] | None:
            row = conn.execute(_GET_STATE, (key,)).fetchone()
            return sql.decode_json(row[0]) if row is not None else None

        return await self._run(f"read the state of {key}", work)

    async def put_state(self, key: str, value: Mapping[str, Any] | None) -> None:
        if value is None:
            await self._run(f"delete the state of {key}", lambda conn: conn.execute(_DELETE_STATE, (key,)))
            return
        params = _params((key, sql.encode_json(value, f"the state of {key}"), datetime.now(UTC)))
        await self._run(f"write the state of {key}", lambda conn: conn.execute(_PUT_STATE, params))

    async def add_config_version(
        self, version: ConfigMapVersion, *, keep_versions: int, keep_age_s: float
    ) -> bool:
        """See :meth:`~rollbackd.store.base.Store.add_config_version`."""
        where = (version.namespace, version.name)
        now = datetime.now(UTC)
        row = _params((*where, version.resource_version,
                       sql.encode_json(version.data, f"the ConfigMap {'/'.join(where)}"),
                       version.seen_at or now))
        oldest = _params((now - timedelta(seconds=keep_age_s),))[0]

        def work(conn: sqlite3.Connection) -> bool:
            with self._transaction(conn):
                newest = conn.execute(_CONFIG_VERSIONS, (*where, 1)).fetchall()
                if sql.kept_data(newest) == dict(version.data):
                    return False
                added = conn.execute(_INSERT_CONFIG_VERSION, row).rowcount > 0
                conn.execute(_PRUNE_CONFIG_COUNT, (*where, *where, keep_versions))
                conn.execute(_PRUNE_CONFIG_AGE, (*where, oldest, *where, sql.CONFIG_ALWAYS_KEPT))
                return added

        return await self._run(f"keep a version of the ConfigMap {'/'.join(where)}", work)

    async def config_versions(self, namespace: str, name: str, *, limit: int = 2) -> list[ConfigMapVersion]:
        """See :meth:`~rollbackd.store.base.Store.config_versions`."""
        rows = await self._run(
            f"read the versions of the ConfigMap {namespace}/{name}",
            lambda conn: conn.execute(_CONFIG_VERSIONS, (namespace, name, limit)).fetchall(),
        )
        return [sql.config_version(namespace, name, row) for row in rows]

    async def ping(self) -> bool:
        try:
            await self._run("answer", lambda conn: conn.execute(sql.PING).fetchone())
        except StoreError:
            return False
        return True

    async def schema_version(self) -> int:
        """The schema version of the open database."""
        return await self._run("read the schema version", self._version)
