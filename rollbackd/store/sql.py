"""The SQL both backends run, and the conversions between rows and store values.

Statements use ``%s`` placeholders (psycopg's); the SQLite backend turns them into ``?`` with
:func:`qmark`. Timestamps go in as timezone-aware datetimes (the SQLite backend stores them as
ISO 8601 text in UTC, which sorts like time) and come out in UTC. JSON goes in as text, encoded
strictly (no NaN, nothing that is not JSON) so that both backends accept exactly the same values;
for the same reason text holding a NUL character or a lone surrogate is refused by both
(:class:`PermanentStoreError`) before it reaches the database. The publisher makes every value
storable first (:mod:`rollbackd.store.storable`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from rollbackd.model import ConfigMapVersion
from rollbackd.releases import Release, ReleaseError
from rollbackd.store.base import AuditEntry, OutboxEvent, PermanentStoreError

INSERT_AUDIT = (
    "INSERT INTO audit_log (at, target, kind, summary, details) VALUES (%s, %s, %s, %s, %s) RETURNING seq"
)
INSERT_EVENT = "INSERT INTO outbox (event_id, type, subject, payload, created_at) VALUES (%s, %s, %s, %s, %s)"
_AUDIT_COLUMNS = "seq, at, target, kind, summary, details"

PENDING = (
    "SELECT seq, event_id, type, subject, payload, created_at FROM outbox"
    " WHERE seq > COALESCE((SELECT delivered_seq FROM outbox_cursor WHERE sink = %s), 0)"
    " ORDER BY seq LIMIT %s"
)
# A cursor only moves forward: a late or repeated acknowledgement never re-opens delivered events.
MARK_DELIVERED = (
    "INSERT INTO outbox_cursor (sink, delivered_seq, updated_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (sink) DO UPDATE"
    " SET delivered_seq = excluded.delivered_seq, updated_at = excluded.updated_at"
    " WHERE outbox_cursor.delivered_seq < excluded.delivered_seq"
)
SELECT_CURSORS = "SELECT sink, delivered_seq FROM outbox_cursor"
_PRUNE_OLD = "DELETE FROM outbox WHERE created_at < %s"
_PRUNE_OLD_DELIVERED = "DELETE FROM outbox WHERE created_at < %s AND seq <= %s"

GET_STATE = "SELECT value FROM target_state WHERE key = %s"
PUT_STATE = (
    "INSERT INTO target_state (key, value, updated_at) VALUES (%s, %s, %s)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
DELETE_STATE = "DELETE FROM target_state WHERE key = %s"

# ConfigMaps' versions: a replica that sees a version another recorded already adds nothing.
INSERT_CONFIG_VERSION = (
    "INSERT INTO config_versions (namespace, name, resource_version, data, seen_at)"
    " VALUES (%s, %s, %s, %s, %s)"
    " ON CONFLICT (namespace, name, resource_version) DO NOTHING"
)
CONFIG_VERSIONS = (
    "SELECT resource_version, data, seen_at FROM config_versions WHERE namespace = %s AND name = %s"
    " ORDER BY seq DESC LIMIT %s"
)
_NEWEST_CONFIG = (
    "SELECT seq FROM config_versions WHERE namespace = %s AND name = %s ORDER BY seq DESC LIMIT %s"
)
PRUNE_CONFIG_COUNT = (
    f"DELETE FROM config_versions WHERE namespace = %s AND name = %s AND seq NOT IN ({_NEWEST_CONFIG})"
)
PRUNE_CONFIG_AGE = (
    "DELETE FROM config_versions WHERE namespace = %s AND name = %s AND seen_at < %s"
    f" AND seq NOT IN ({_NEWEST_CONFIG})"
)
#: Versions kept whatever their age: the newest and the one a rollback goes back to.
CONFIG_ALWAYS_KEPT = 2

PING = "SELECT 1"

_RELEASE_COLUMNS = "id, target, kind, description, started_at, details, who"
# Idempotent by id: a release announced again (a retried pipeline step, two replicas asked at
# once) is not stored twice; RETURNING says whether this call stored it.
INSERT_RELEASE = (
    f"INSERT INTO releases ({_RELEASE_COLUMNS}, recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    " ON CONFLICT (id) DO NOTHING RETURNING id"
)
SELECT_RELEASE = f"SELECT {_RELEASE_COLUMNS} FROM releases WHERE id = %s"


def qmark(sql: str) -> str:
    """``sql`` with SQLite's ``?`` placeholders instead of ``%s``."""
    return sql.replace("%s", "?")


def aware(value: datetime, what: str) -> datetime:
    """``value`` in UTC; a naive datetime is a programming error (whose clock would it be?)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, not {value!r}")
    return value.astimezone(UTC)


def sqlite_time(value: datetime) -> str:
    """How the SQLite backend stores a timestamp: fixed-width ISO 8601 in UTC."""
    return aware(value, "timestamp").isoformat(timespec="microseconds")


def to_datetime(value: str | datetime) -> datetime:
    """A stored timestamp (SQLite text or a PostgreSQL timestamptz) as a UTC datetime."""
    parsed = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return aware(parsed, "stored timestamp")


#: A NUL character as a JSON text escapes it: ``\u0000`` after an even number of backslashes.
_JSON_NUL = re.compile(r"(?:^|[^\\])(?:\\\\)*\\u0000")
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_text(text: str, what: str) -> str:
    """``text`` if both backends can store it; :class:`PermanentStoreError` naming ``what`` when
    it holds a NUL character or a lone surrogate."""
    if "\x00" in text:
        raise PermanentStoreError(f"{what} cannot be stored: it holds a NUL character")
    if _SURROGATE.search(text):
        raise PermanentStoreError(f"{what} cannot be stored: it holds a lone surrogate (not UTF-8)")
    return text


def encode_json(value: Mapping[str, Any], what: str) -> str:
    """``value`` as JSON text; :class:`PermanentStoreError` naming ``what`` when it is not JSON
    or holds text no backend stores (see :func:`check_text`)."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise PermanentStoreError(f"{what} cannot be stored: it is not JSON ({exc})") from exc
    if _JSON_NUL.search(text):
        raise PermanentStoreError(f"{what} cannot be stored: it holds a NUL character")
    return check_text(text, what)


def kept_data(rows: Sequence[Sequence[Any]]) -> dict[str, Any] | None:
    """The data of the newest kept version (the first row of :data:`CONFIG_VERSIONS`), if any."""
    return decode_json(rows[0][1]) if rows else None


def config_version(namespace: str, name: str, row: Sequence[Any]) -> ConfigMapVersion:
    """A row of :data:`CONFIG_VERSIONS` as a version."""
    resource_version, data, seen_at = row
    return ConfigMapVersion(namespace=namespace, name=name, resource_version=str(resource_version),
                            data={str(k): str(v) for k, v in decode_json(data).items()},
                            seen_at=to_datetime(seen_at))


def decode_json(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """A stored JSON object (SQLite text or an already decoded PostgreSQL jsonb) as a dict."""
    decoded = json.loads(value) if isinstance(value, str) else value
    return dict(decoded)


def audit_params(entry: AuditEntry, at: datetime) -> tuple[Any, ...]:
    """Parameters of :data:`INSERT_AUDIT` (``at`` still a datetime)."""
    what = f"the {entry.kind!r} audit entry"
    details = encode_json(entry.details, f"the details of {what}")
    target = None if entry.target is None else check_text(entry.target, f"the target of {what}")
    kind = check_text(entry.kind, "an audit entry's kind")
    return (at, target, kind, check_text(entry.summary, f"the summary of {what}"), details)


def event_params(event: OutboxEvent, now: datetime) -> tuple[Any, ...]:
    """Parameters of :data:`INSERT_EVENT` (the time still a datetime: the event's own, else ``now``)."""
    what = f"event {event.event_id} ({event.type})"
    payload = encode_json(event.payload, f"the payload of {what}")
    check_text(event.event_id + event.type + (event.subject or ""), f"the id, type or subject of {what}")
    created_at = aware(event.created_at, "OutboxEvent.created_at") if event.created_at is not None else now
    return (event.event_id, event.type, event.subject, payload, created_at)


def _recent(
    table: str, columns: str, order: tuple[str, str], filters: Sequence[tuple[str, Any]], limit: int
) -> tuple[str, tuple[Any, ...]]:
    """The most recent ``limit`` rows of ``table`` in ``order`` (two columns) whose ``column >=
    value`` / ``column = value`` filters hold (``filters``: condition with one ``%s``, value;
    ``None`` values leave theirs out), oldest first."""
    if limit < 0:
        raise ValueError(f"limit must not be negative, not {limit}")
    given = [(condition, value) for condition, value in filters if value is not None]
    where = f" WHERE {' AND '.join(condition for condition, _ in given)}" if given else ""
    first, second = order
    sql = (
        f"SELECT {columns} FROM (SELECT {columns} FROM {table}{where}"
        f" ORDER BY {first} DESC, {second} DESC LIMIT %s) AS recent ORDER BY {first}, {second}"
    )
    return sql, (*(value for _, value in given), limit)


def _since(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else aware(value, what)


def history_query(*, target: str | None, since: datetime | None, limit: int) -> tuple[str, tuple[Any, ...]]:
    """The most recent ``limit`` audit entries matching the filters, oldest first."""
    filters = (("target = %s", target), ("at >= %s", _since(since, "since")))
    return _recent("audit_log", _AUDIT_COLUMNS, ("at", "seq"), filters, limit)


def prune_query(
    cursors: Mapping[str, int], *, sinks: Sequence[str], before: datetime
) -> tuple[str, tuple[Any, ...]] | None:
    """The deletion :meth:`Store.prune` runs, given every sink's cursor; ``None`` when a listed
    sink has delivered nothing yet (so nothing may go). With no sinks listed, age alone decides."""
    before = aware(before, "delivered_before")
    if not sinks:
        return _PRUNE_OLD, (before,)
    if any(sink not in cursors for sink in sinks):
        return None
    return _PRUNE_OLD_DELIVERED, (before, min(cursors[sink] for sink in sinks))


def entry_from_row(row: Sequence[Any]) -> AuditEntry:
    seq, at, target, kind, summary, details = row
    return AuditEntry(
        kind=kind, summary=summary, target=target, details=decode_json(details), at=to_datetime(at), seq=seq
    )


def event_from_row(row: Sequence[Any]) -> OutboxEvent:
    seq, event_id, type_, subject, payload, created_at = row
    return OutboxEvent(
        event_id=event_id,
        type=type_,
        subject=subject,
        payload=decode_json(payload),
        seq=seq,
        created_at=to_datetime(created_at),
    )


def release_params(release: Release, now: datetime) -> tuple[Any, ...]:
    """Parameters of :data:`INSERT_RELEASE` (the times still datetimes)."""
    what = f"release {release.id}"
    details = encode_json(release.details, f"the details of {what}")
    texts = (release.id, release.target, release.kind, release.description, release.who)
    check_text("".join(texts), f"the id, target, kind, description or author of {what}")
    return (*texts[:4], release.started_at, details, release.who, now)


def releases_query(
    *, target: str | None, since: datetime | None, recorded_since: datetime | None, limit: int
) -> tuple[str, tuple[Any, ...]]:
    """The most recent ``limit`` releases matching the filters (``since``: started then or later;
    ``recorded_since``: stored then or later), oldest first."""
    filters = (
        ("target = %s", target),
        ("started_at >= %s", _since(since, "since")),
        ("recorded_at >= %s", _since(recorded_since, "recorded_since")),
    )
    return _recent("releases", _RELEASE_COLUMNS, ("started_at", "id"), filters, limit)


def release_from_row(row: Sequence[Any]) -> Release:
    release_id, target, kind, description, started_at, details, who = row
    try:
        return Release(
            id=release_id,
            target=target,
            kind=kind,
            description=description,
            started_at=to_datetime(started_at),
            details=decode_json(details),
            who=who,
        )
    except ReleaseError as exc:
        raise PermanentStoreError(f"the stored release {release_id!r} cannot be read: {exc}") from exc
