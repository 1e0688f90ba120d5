"""The store: per-target state, the audit log and the event outbox (see :mod:`rollbackd.store.base`).

:func:`open_store` picks the backend from ``store.url`` (read as :mod:`rollbackd.config.storeurl`
says): nothing, a ``sqlite://`` URL or a plain path is the embedded SQLite file (by default
``<data_dir>/rollbackd.db``); a ``postgresql://`` DSN or a libpq ``key=value`` string is
PostgreSQL. The factory lives in :mod:`rollbackd.store.backends`, above both backends, which know
only the layers below them (:mod:`~rollbackd.store.base`, :mod:`~rollbackd.store.sql`, ...).
"""

from __future__ import annotations

from rollbackd.config.storeurl import DsnError, StoreUrl, parse_store_url, redact_url, store_kind
from rollbackd.store.backends import DEFAULT_SQLITE_FILE, open_store, sqlite_path
from rollbackd.store.base import (
    AuditEntry,
    OutboxEvent,
    PermanentStoreError,
    Store,
    StoreError,
    TemporaryStoreError,
)

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
