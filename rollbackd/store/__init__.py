"""The store: per-target state, the audit log and the event outbox (see :mod:`rollbackd.store.base`).

:func:`open_store` picks the backend from ``store.url``: nothing, a ``sqlite://`` URL or a plain
path is the embedded SQLite file (by default ``<data_dir>/rollbackd.db``); a ``postgresql://``
DSN is PostgreSQL. Backends are imported only when chosen, so SQLite needs no database driver.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

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
    "OutboxEvent",
    "PermanentStoreError",
    "Store",
    "StoreError",
    "TemporaryStoreError",
    "open_store",
    "redact_url",
    "sqlite_path",
    "store_kind",
]

#: The SQLite file in the data directory when ``store.url`` names none.
DEFAULT_SQLITE_FILE = "rollbackd.db"

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"
_PASSWORD_PARAM = re.compile(r"(?i)(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)")


def store_kind(url: str | None) -> Literal["sqlite", "postgresql"]:
    """Which backend ``url`` means; :class:`ValueError` for a URL of any other scheme."""
    if url is None or url == "" or url.startswith(_SQLITE_SCHEME):
        return "sqlite"
    if url.startswith(_POSTGRES_SCHEMES):
        return "postgresql"
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ValueError(
            f"unsupported store scheme '{scheme}://': use a postgresql:// DSN, a sqlite:// URL or a file path"
        )
    return "sqlite"


def sqlite_path(url: str | None, *, data_dir: Path) -> Path:
    """The SQLite file ``url`` names: ``sqlite:///abs/file.db`` or ``/abs/file.db`` as is, a
    relative path inside ``data_dir``, nothing (or ``sqlite://``) the default file there."""
    rest = url[len(_SQLITE_SCHEME) :] if url and url.startswith(_SQLITE_SCHEME) else (url or "")
    if not rest:
        return data_dir / DEFAULT_SQLITE_FILE
    path = Path(rest).expanduser()
    return path if path.is_absolute() else data_dir / path


def redact_url(url: str) -> str:
    """``url`` (a DSN, a ``key=value`` connection string or a path) with any password replaced
    by ``***``, for logs and messages."""
    if "://" not in url:
        return _PASSWORD_PARAM.sub(r"\1***", url)
    netloc = urlsplit(url).netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        url = url.replace(netloc, f"{userinfo.split(':', 1)[0]}:***@{host}", 1)
    base, question, query = url.partition("?")
    return base + question + _PASSWORD_PARAM.sub(r"\1***", query)


def open_store(url: str | None, *, data_dir: Path, create: bool = True) -> Store:
    """The store ``url`` names (not opened yet: ``await store.open()``, or ``async with``).

    :param url: ``store.url``: ``None`` for the default SQLite file, ``sqlite:///path``, a plain
        path, or a ``postgresql://`` DSN.
    :param data_dir: ``store.data_dir``, where SQLite files with relative (or no) paths live.
    :param create: create a missing SQLite file; ``False`` for readers, which should rather say
        that there is nothing to read.
    :raises PermanentStoreError: for a URL of an unsupported scheme.
    """
    try:
        kind = store_kind(url)
    except ValueError as exc:
        raise PermanentStoreError(f"store.url {redact_url(url or '')}: {exc}") from exc
    if kind == "postgresql":
        assert url is not None
        from rollbackd.store.postgres import PostgresStore

        return PostgresStore(url)
    from rollbackd.store.sqlite import SQLiteStore

    return SQLiteStore(sqlite_path(url, data_dir=data_dir), create=create)
