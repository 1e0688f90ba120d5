"""The store: per-target state, the audit log and the event outbox (see :mod:`rollbackd.store.base`).

:func:`open_store` picks the backend from ``store.url`` (read as :mod:`rollbackd.store.dsn`
says): nothing, a ``sqlite://`` URL or a plain path is the embedded SQLite file (by default
``<data_dir>/rollbackd.db``); a ``postgresql://`` DSN or a libpq ``key=value`` string is
PostgreSQL. The factory lives in :mod:`rollbackd.store.backends`, above both backends, which know
only the layers below them (:mod:`~rollbackd.store.base`, :mod:`~rollbackd.store.sql`, ...).
"""

from __future__ import annotations

from typing import Literal

from rollbackd.store.backends import DEFAULT_SQLITE_FILE, open_store, sqlite_path
from rollbackd.store.base import (
    AuditEntry,
    OutboxEvent,
    PermanentStoreError,
    Store,
    StoreError,
    TemporaryStoreError,
)
from rollbackd.store.dsn import DsnError, StoreUrl, parse_store_url

__all__ = [
    "DEFAULT_SQLITE_FILE",
    "AuditEntry",
    "DsnError",
    "OutboxEvent",
    "PermanentStoreError",
    "Store",
    "StoreError",
    "StoreUrl",
    "TemporaryStoreError",
    "open_store",
    "parse_store_url",
    "redact_url",
    "sqlite_path",
    "store_kind",
]

def store_kind(url: str | None) -> Literal["sqlite", "postgresql"]:
    """Which backend ``url`` means (see :mod:`rollbackd.store.dsn`); :class:`ValueError`, with a
    message that does not echo ``url``, for one that is neither."""
    return parse_store_url(url).kind


def redact_url(url: str) -> str:
    """``url`` (a DSN, a ``key=value`` connection string or a path) as it may be shown in logs and
    messages: passwords replaced by ``***``, split as libpq splits them; a value that cannot be
    parsed is not shown at all."""
    try:
        return parse_store_url(url).description
    except DsnError:
        return "(store.url not shown: it cannot be parsed)"
