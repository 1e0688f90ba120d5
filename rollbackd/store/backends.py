"""Which store ``store.url`` names, opened as the backend it needs (see :mod:`rollbackd.store`)."""

from __future__ import annotations

from pathlib import Path

from rollbackd.config.storeurl import DsnError, parse_store_url
from rollbackd.store.base import PermanentStoreError, Store
from rollbackd.store.postgres import PostgresStore
from rollbackd.store.sqlite import SQLiteStore

#: The SQLite file in the data directory when ``store.url`` names none.
DEFAULT_SQLITE_FILE = "rollbackd.db"

_SQLITE_SCHEME = "sqlite://"


def sqlite_path(url: str | None, *, data_dir: Path) -> Path:
    """The SQLite file ``url`` names: ``sqlite:///abs/file.db`` or ``/abs/file.db`` as is, a
    relative path inside ``data_dir``, nothing (or ``sqlite://``) the default file there."""
    rest = url[len(_SQLITE_SCHEME) :] if url and url.startswith(_SQLITE_SCHEME) else (url or "")
    if not rest:
        return data_dir / DEFAULT_SQLITE_FILE
    path = Path(rest).expanduser()
    return path if path.is_absolute() else data_dir / path


def open_store(url: str | None, *, data_dir: Path, create: bool = True) -> Store:
    """The store ``url`` names (not opened yet: ``await store.open()``, or ``async with``).

    :param url: ``store.url``: ``None`` for the default SQLite file, ``sqlite:///path``, a plain
        path, a ``postgresql://`` DSN or a libpq ``key=value`` string.
    :param data_dir: ``store.data_dir``, where SQLite files with relative (or no) paths live.
    :param create: create a missing SQLite file; ``False`` for readers, which should rather say
        that there is nothing to read.
    :raises PermanentStoreError: for a URL that names no store (the message does not echo it).
    """
    try:
        parsed = parse_store_url(url)
    except DsnError as exc:
        raise PermanentStoreError(f"store.url: {exc}") from None
    if parsed.kind == "postgresql":
        return PostgresStore(parsed.text)
    return SQLiteStore(sqlite_path(url, data_dir=data_dir), create=create)
