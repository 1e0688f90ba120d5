"""Versioned schema migrations, the same steps for SQLite and PostgreSQL.

The database remembers which steps it has in ``schema_version`` (one row per applied step).
When a store opens, it applies the steps it lacks, in order, in one transaction, and records
each; a database already at :data:`LATEST_VERSION` is left alone (re-running is a no-op), and
one *newer* than this code is refused, since this rollbackd cannot know what changed.

A step's SQL is written once, with the column types that differ between the backends as
placeholders (``{serial_key}``, ``{bigint}``, ``{timestamp}``, ``{json}``) filled in from the
backend's :class:`Dialect`; a step whose SQL differs beyond types gives each backend its own.
Steps are only ever appended: a released step never changes.

Schema at version 1:

``audit_log``
    ``seq`` (increasing id), ``at`` (timestamp, UTC), ``target`` (``namespace/name`` or NULL for
    daemon-wide entries), ``kind``, ``summary``, ``details`` (JSON object).
``outbox``
    ``seq`` (the global delivery order; never reused, even after pruning), ``event_id``
    (unique), ``type``, ``subject``, ``payload`` (the CloudEvent as a JSON object), ``created_at``.
``outbox_cursor``
    ``sink``, ``delivered_seq`` (every event up to it is delivered to that sink), ``updated_at``.
``target_state``
    ``key``, ``value`` (JSON object), ``updated_at``.

Version 2 adds:

``releases``
    ``id`` (the idempotency key), ``target``, ``kind``, ``description``, ``started_at`` (when the
    change took effect, UTC), ``details`` (JSON object), ``who``, ``recorded_at``.

Version 3 adds:

``config_versions``
    ``seq``, ``namespace``, ``name``, ``resource_version`` (unique per ConfigMap), ``data`` (JSON
    object), ``seen_at``: each version of the data of the ConfigMaps config targets name.
"""

from __future__ import annotations

from dataclasses import dataclass

from rollbackd.store.base import PermanentStoreError


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends' SQL: column types, and how to ask whether a table exists."""

    name: str
    serial_key: str  # an auto-increasing integer primary key whose values are never reused
    bigint: str
    timestamp: str
    json: str
    table_exists: str  # one parameter (the table name); returns a row when the table exists

    def format(self, sql: str) -> str:
        return sql.format(
            serial_key=self.serial_key, bigint=self.bigint, timestamp=self.timestamp, json=self.json
        )


SQLITE = Dialect(
    name="sqlite",
    serial_key="INTEGER PRIMARY KEY AUTOINCREMENT",  # AUTOINCREMENT: no reuse after deletes
    bigint="INTEGER",
    timestamp="TEXT",  # ISO 8601 in UTC, fixed width, so text order is time order
    json="TEXT",
    table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = %s",
)

POSTGRES = Dialect(
    name="postgresql",
    serial_key="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
    bigint="BIGINT",
    timestamp="TIMESTAMPTZ",
    json="JSONB",
    table_exists="SELECT 1 WHERE to_regclass(%s) IS NOT NULL",  # in the search path
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered step. ``statements`` serve both backends; ``sqlite`` / ``postgres``, when
    given, replace them for that backend."""

    version: int
    description: str
    statements: tuple[str, ...] = ()
    sqlite: tuple[str, ...] | None = None
    postgres: tuple[str, ...] | None = None

    def sql(self, dialect: Dialect) -> tuple[str, ...]:
        """The statements of this step for ``dialect``, types filled in."""
        own = self.sqlite if dialect is SQLITE else self.postgres if dialect is POSTGRES else None
        return tuple(dialect.format(statement) for statement in (own if own is not None else self.statements))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="audit log, event outbox with per-sink cursors, per-target state",
        statements=(
            """CREATE TABLE audit_log (
                seq {serial_key},
                at {timestamp} NOT NULL,
                target TEXT,
                kind TEXT NOT NULL,
                summary TEXT NOT NULL,
                details {json} NOT NULL
            )""",
            "CREATE INDEX audit_log_at ON audit_log (at, seq)",
            "CREATE INDEX audit_log_target_at ON audit_log (target, at, seq)",
            """CREATE TABLE outbox (
                seq {serial_key},
                event_id TEXT NOT NULL UNIQUE,
                type TEXT NOT NULL,
                subject TEXT,
                payload {json} NOT NULL,
                created_at {timestamp} NOT NULL
            )""",
            "CREATE INDEX outbox_created_at ON outbox (created_at)",
            """CREATE TABLE outbox_cursor (
                sink TEXT PRIMARY KEY,
                delivered_seq {bigint} NOT NULL,
                updated_at {timestamp} NOT NULL
            )""",
            """CREATE TABLE target_state (
                key TEXT PRIMARY KEY,
                value {json} NOT NULL,
                updated_at {timestamp} NOT NULL
            )""",
        ),
    ),
    Migration(
        version=2,
        description="releases announced from outside (flag flips, configuration changes, commands)",
        statements=(
            """CREATE TABLE releases (
                id TEXT PRIMARY KEY,
                target TEXT NOT NULL,
                kind TEXT NOT NULL,
                description TEXT NOT NULL,
                started_at {timestamp} NOT NULL,
                details {json} NOT NULL,
                who TEXT NOT NULL,
                recorded_at {timestamp} NOT NULL
            )""",
            "CREATE INDEX releases_target_started ON releases (target, started_at)",
            "CREATE INDEX releases_recorded ON releases (recorded_at)",
        ),
    ),
    Migration(
        version=3,
        description="the versions of ConfigMaps' data config targets name (Kubernetes keeps none)",
        statements=(
            """CREATE TABLE config_versions (
                seq {serial_key},
                namespace TEXT NOT NULL,
                name TEXT NOT NULL,
                resource_version TEXT NOT NULL,
                data {json} NOT NULL,
                seen_at {timestamp} NOT NULL,
                UNIQUE (namespace, name, resource_version)
            )""",
            "CREATE INDEX config_versions_object ON config_versions (namespace, name, seq)",
        ),
    ),
)

#: The schema version this code writes and reads.
LATEST_VERSION = MIGRATIONS[-1].version

#: The bookkeeping table, created (if missing) in the same transaction as the first step.
CREATE_VERSION_TABLE = """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER PRIMARY KEY,
    description TEXT NOT NULL,
    applied_at {timestamp} NOT NULL
)"""
SELECT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_version"
INSERT_VERSION = "INSERT INTO schema_version (version, description, applied_at) VALUES (%s, %s, %s)"


def _check_numbering(migrations: tuple[Migration, ...]) -> None:
    numbers = [migration.version for migration in migrations]
    if numbers != list(range(1, len(numbers) + 1)):
        raise AssertionError(f"migrations must be numbered 1, 2, 3, ... in order; they are {numbers}")


_check_numbering(MIGRATIONS)


def pending(current: int, *, where: str) -> tuple[Migration, ...]:
    """The steps a database at schema version ``current`` lacks, in order.

    :param current: the database's version (0: empty).
    :param where: the database, as it may be shown in messages (a path or a redacted DSN).
    :raises PermanentStoreError: when the database is newer than this code.
    """
    if current > LATEST_VERSION:
        raise PermanentStoreError(
            f"the store {where} has schema version {current}, newer than this rollbackd understands "
            f"(up to {LATEST_VERSION}): run a newer rollbackd, or point store.url at another database"
        )
    return tuple(migration for migration in MIGRATIONS if migration.version > current)
