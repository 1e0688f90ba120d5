"""Both store backends against the same suite (tests/store_suite.py), then what is particular to
each: choosing a backend from ``store.url``, unusable paths, a database that is down, and keeping
passwords out of messages.

PostgreSQL tests use ``$ROLLBACKD_TEST_POSTGRES_DSN`` (default: the local server's ``test``
database), each in a schema of its own that is dropped afterwards; they skip, saying why, when
that server cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from rollbackd.config.loader import ConfigError, load_settings
from rollbackd.config.settings import Settings, StoreSettings
from rollbackd.demo.processes import free_port
from rollbackd.store import (
    PermanentStoreError,
    Store,
    StoreError,
    TemporaryStoreError,
    migrations,
    open_store,
    redact_url,
    sqlite_path,
)
from rollbackd.store.postgres import PostgresStore
from rollbackd.store.sql import sqlite_time
from rollbackd.store.sqlite import SQLiteStore
from tests.store_suite import StoreSuite, entry

POSTGRES_DSN_ENV = "ROLLBACKD_TEST_POSTGRES_DSN"
POSTGRES_DSN = os.environ.get(POSTGRES_DSN_ENV) or "postgresql://postgres@127.0.0.1:5432/test"


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / "rollbackd.db"

    def new_store(self) -> Store:
        return open_store(None, data_dir=self.data_dir)

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            values = [sqlite_time(p) if isinstance(p, datetime) else p for p in params]
            with sqlite3.connect(self.path) as conn:
                return list(conn.execute(sql.replace("%s", "?"), values).fetchall())

        return await asyncio.to_thread(run)


class PostgresBackend:
    name = "postgresql"

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def new_store(self) -> Store:
        return open_store(self.dsn, data_dir=Path("/nonexistent"))

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        async with await psycopg.AsyncConnection.connect(self.dsn, autocommit=True) as conn:
            cur = await conn.execute(sql, params)
            return list(await cur.fetchall()) if cur.description is not None else []


def with_search_path(dsn: str, schema: str) -> str:
    """``dsn`` whose connections use ``schema`` (a libpq ``options`` parameter)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}options=-csearch_path%3D{schema}"


@pytest.fixture
async def postgres_schema() -> AsyncIterator[str]:
    """A DSN on a fresh, empty schema, dropped after the test."""
    schema = f"rollbackd_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.skip(f"PostgreSQL at {redact_url(POSTGRES_DSN)} ({POSTGRES_DSN_ENV}) cannot be reached: {exc}")
    async with admin:
        await admin.execute(f"CREATE SCHEMA {schema}")
        try:
            yield with_search_path(POSTGRES_DSN, schema)
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def backend(backend_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if backend_name == "sqlite":
        return SQLiteBackend(tmp_path / "data")
    return PostgresBackend(request.getfixturevalue("postgres_schema"))


class TestStore(StoreSuite):
    """The shared suite, once per backend."""


# --- choosing a backend ---------------------------------------------------------------------


def test_open_store_picks_the_backend_from_the_url(tmp_path: Path) -> None:
    default = open_store(None, data_dir=tmp_path)
    assert isinstance(default, SQLiteStore)
    assert default.path == tmp_path / "rollbackd.db"
    absolute = open_store(f"sqlite://{tmp_path}/elsewhere/audit.db", data_dir=tmp_path / "unused")
    assert isinstance(absolute, SQLiteStore)
    assert absolute.path == tmp_path / "elsewhere" / "audit.db"
    postgres = open_store("postgresql://rollbackd:s3cret@db.example:5432/rollbackd", data_dir=tmp_path)
    assert isinstance(postgres, PostgresStore)
    assert postgres.description == "postgresql://rollbackd:***@db.example:5432/rollbackd"
    assert "s3cret" not in repr(postgres)
    assert isinstance(open_store("postgres://db.example/rollbackd", data_dir=tmp_path), PostgresStore)
    with pytest.raises(PermanentStoreError, match=r"unsupported store scheme 'mysql://'"):
        open_store("mysql://root:pw@db/x", data_dir=tmp_path)


def test_sqlite_paths_relative_to_the_data_dir(tmp_path: Path) -> None:
    assert sqlite_path(None, data_dir=tmp_path) == tmp_path / "rollbackd.db"
    assert sqlite_path("", data_dir=tmp_path) == tmp_path / "rollbackd.db"
    assert sqlite_path("sqlite://", data_dir=tmp_path) == tmp_path / "rollbackd.db"
    assert sqlite_path("sqlite:///var/lib/x/audit.db", data_dir=tmp_path) == Path("/var/lib/x/audit.db")
    assert sqlite_path("/srv/audit.db", data_dir=tmp_path) == Path("/srv/audit.db")
    assert sqlite_path("audit.db", data_dir=tmp_path) == tmp_path / "audit.db"
    assert sqlite_path("sqlite://sub/audit.db", data_dir=tmp_path) == tmp_path / "sub" / "audit.db"


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("postgresql://u:p%40ss@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?password=pw&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
        ("postgresql://u:pw@h/db?options=-csearch_path%3Dx", "postgresql://u:***@h/db?options=-csearch_path%3Dx"),
        ("host=h user=u password='p w' dbname=d", "user=u password=*** dbname=d host=h"),
        ("host=h password=pw", "password=*** host=h"),
        ("sqlite:///var/lib/rollbackd/rollbackd.db", "sqlite:///var/lib/rollbackd/rollbackd.db"),
    ],
)
def test_redact_url_hides_passwords_only(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


# --- settings -------------------------------------------------------------------------------


def test_store_settings_defaults_and_redaction() -> None:
    settings = Settings()
    assert settings.store == StoreSettings()
    assert settings.store.url is None
    assert settings.store.redacted_url is None
    assert settings.store.data_dir == "/var/lib/rollbackd"
    assert settings.store.outbox_retention_s == 7 * 24 * 3600
    store = StoreSettings(url="postgresql://rollbackd:s3cret@db:5432/rollbackd")
    assert store.redacted_url == "postgresql://rollbackd:***@db:5432/rollbackd"
    assert "s3cret" not in repr(store)
    assert "s3cret" not in repr(Settings(store=store))


def test_store_settings_come_from_the_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text("store:\n  data_dir: /srv/rollbackd\n  outbox_retention_s: 3600\n", encoding="utf-8")
    settings = load_settings(path, environ={"ROLLBACKD_STORE__URL": "postgresql://db/rollbackd"})
    assert settings.store.data_dir == "/srv/rollbackd"
    assert settings.store.outbox_retention_s == 3600
    assert settings.store.url == "postgresql://db/rollbackd"


def test_store_settings_refuse_an_unknown_scheme(tmp_path: Path) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text("store:\n  url: mysql://db/rollbackd\n  outbox_retention_s: 0\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    message = str(info.value)
    assert "store.url" in message
    assert "unsupported store scheme 'mysql://'" in message
    assert "store.outbox_retention_s" in message


# --- SQLite in particular -------------------------------------------------------------------


async def test_sqlite_creates_its_directory_and_uses_wal(tmp_path: Path) -> None:
    store = open_store(None, data_dir=tmp_path / "a" / "b")
    await store.open()
    try:
        await store.record(entry("hello"))
    finally:
        await store.close()
    with sqlite3.connect(tmp_path / "a" / "b" / "rollbackd.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_sqlite_in_an_unusable_directory_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should be", encoding="utf-8")
    store = open_store(None, data_dir=blocker / "data")
    with pytest.raises(PermanentStoreError) as info:
        await store.open()
    assert str(blocker / "data" / "rollbackd.db") in str(info.value)
    assert "writable directory" in str(info.value)
    assert not await store.ping()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into read-only directories")
async def test_sqlite_in_a_read_only_directory_names_the_path(tmp_path: Path) -> None:
    data_dir = tmp_path / "read-only"
    data_dir.mkdir()
    data_dir.chmod(0o500)
    try:
        with pytest.raises(PermanentStoreError, match=str(data_dir / "rollbackd.db")):
            await open_store(None, data_dir=data_dir).open()
    finally:
        data_dir.chmod(0o700)


async def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / "rollbackd.db").write_bytes(b"this is not a database, just some text " * 100)
    with pytest.raises(PermanentStoreError) as info:
        await open_store(None, data_dir=tmp_path).open()
    assert str(tmp_path / "rollbackd.db") in str(info.value)
    assert "not a database" in str(info.value)


async def test_sqlite_reader_does_not_create_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PermanentStoreError, match=f"no store at {tmp_path / 'rollbackd.db'}"):
        await open_store(None, data_dir=tmp_path, create=False).open()
    assert not (tmp_path / "rollbackd.db").exists()


async def test_sqlite_schema_version(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "x.db") as store:
        assert await store.schema_version() == migrations.LATEST_VERSION


# --- PostgreSQL in particular ---------------------------------------------------------------


async def test_postgres_down_at_start_gives_a_clear_error_without_the_password() -> None:
    port = free_port()  # nothing listens there
    dsn = f"postgresql://rollbackd:s3cret@127.0.0.1:{port}/rollbackd"
    store = open_store(dsn, data_dir=Path("/nonexistent"))
    with pytest.raises(StoreError) as info:
        await store.open()
    message = str(info.value)
    assert isinstance(info.value, TemporaryStoreError)  # worth retrying: the database may come up
    redacted = f"postgresql://rollbackd:***@127.0.0.1:{port}/rollbackd"
    assert f"cannot connect to the PostgreSQL store {redacted}" in message
    assert "refused" in message.lower()
    assert "s3cret" not in message
    assert "\n" not in message
    assert not await store.ping()
    await store.close()


async def test_postgres_schema_version_and_reopen(postgres_schema: str) -> None:
    async with PostgresStore(postgres_schema) as store:
        assert await store.schema_version() == migrations.LATEST_VERSION
    async with PostgresStore(postgres_schema, min_size=1, max_size=1) as store:
        assert await store.schema_version() == migrations.LATEST_VERSION


# --- migrations -----------------------------------------------------------------------------


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert [m.version for m in migrations.MIGRATIONS] == list(range(1, migrations.LATEST_VERSION + 1))
    assert migrations.pending(0, where="x") == migrations.MIGRATIONS
    assert migrations.pending(migrations.LATEST_VERSION, where="x") == ()
    with pytest.raises(PermanentStoreError, match="newer than this rollbackd"):
        migrations.pending(migrations.LATEST_VERSION + 1, where="x")


def test_migration_sql_differs_only_where_the_backends_do() -> None:
    (first,) = migrations.MIGRATIONS[:1]
    sqlite_sql = "\n".join(first.sql(migrations.SQLITE))
    postgres_sql = "\n".join(first.sql(migrations.POSTGRES))
    assert "AUTOINCREMENT" in sqlite_sql
    assert "JSONB" not in sqlite_sql
    assert "GENERATED ALWAYS AS IDENTITY" in postgres_sql
    assert "TIMESTAMPTZ" in postgres_sql
    assert "{" not in sqlite_sql
    assert "{" not in postgres_sql
