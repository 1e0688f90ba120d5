"""A feature flag in a PostgreSQL table (the runbook's ``UPDATE feature_flags SET enabled = false
WHERE name = ...``), through psycopg 3.

The DSN is read from its file (a mounted Secret) for every rollback. One transaction reads the
flag (``select``), runs the parameterised ``update`` with the flag's name bound to ``%(flag)s``,
checks the rows it changed (none is a failed action, never "done"), reads the flag again and
commits only if it now reads off; anything else rolls back, so nothing half-done is kept. A flag
already off is left alone (and said so). A database that cannot be reached is a temporary error;
an SQL error (no such table, a syntax error) a permanent one. No message quotes the DSN's password.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from rollbackd.actions.flagstore import FlagFlip, PermanentFlagError, TemporaryFlagError, is_off
from rollbackd.config.settings import FlagSqlStore


class _Refused(Exception):
    """The transaction must not be committed: the message says why."""


class SqlFlag:
    """The flag ``flag`` in the table ``settings``' statements use."""

    kind = "sql"
    readable = True

    def __init__(self, settings: FlagSqlStore, *, flag: str) -> None:
        self._settings = settings
        self._flag = flag
        self.where = " ".join(settings.update.split())

    def _dsn(self) -> tuple[str, tuple[str, ...]]:
        """The DSN, and its secrets (to keep out of messages)."""
        path = self._settings.dsn_file
        try:
            dsn = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            why = getattr(exc, "strerror", None) or "not a UTF-8 text"
            raise PermanentFlagError(f"cannot read the flag database's DSN file {path}: {why} "
                                     "(flag.store.dsn_file)") from None
        try:
            secrets = tuple(v for k, v in conninfo_to_dict(dsn).items() if k == "password" and v)
        except psycopg.ProgrammingError:
            raise PermanentFlagError(f"the DSN in {path} is not a PostgreSQL connection string "
                                     "(flag.store.dsn_file)") from None
        return dsn, tuple(str(secret) for secret in secrets)

    @staticmethod
    def _scrubbed(text: str, secrets: tuple[str, ...]) -> str:
        for secret in secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    async def _transaction(self, work: str) -> FlagFlip:
        dsn, secrets = self._dsn()
        settings = self._settings
        try:
            async with asyncio.timeout(settings.timeout_s):
                conn = await psycopg.AsyncConnection.connect(
                    dsn, connect_timeout=max(1, int(settings.timeout_s))
                )
                async with conn:
                    return await self._run(conn, work)
        except TimeoutError:
            raise TemporaryFlagError(
                f"the flag database did not answer within {settings.timeout_s:g}s"
            ) from None
        except _Refused as exc:
            raise PermanentFlagError(str(exc)) from None
        except psycopg.OperationalError as exc:
            raise TemporaryFlagError(
                f"the flag database cannot be reached: {self._scrubbed(str(exc), secrets)}"
            ) from None
        except psycopg.Error as exc:
            raise PermanentFlagError(
                f"the flag database refused the statement: {self._scrubbed(str(exc), secrets)}"
            ) from None

    async def _select(self, conn: psycopg.AsyncConnection[Any]) -> Any:
        cursor = await conn.execute(self._settings.select, {"flag": self._flag})
        row = await cursor.fetchone()
        return None if row is None else row[0]

    async def _run(self, conn: psycopg.AsyncConnection[Any], work: str) -> FlagFlip:
        async with conn.transaction():
            before = await self._select(conn)
            if work == "read" or (before is not None and is_off(before)):
                return FlagFlip(before=before, after=before, changed=False)
            cursor = await conn.execute(self._settings.update, {"flag": self._flag})
            rows = cursor.rowcount
            if rows < 1:
                raise _Refused(
                    f"the UPDATE changed no row: no flag named {self._flag!r} in the table "
                    f"({self.where}); check flag.name and flag.store.update"
                )
            after = await self._select(conn)
            if not is_off(after):
                raise _Refused(f"the UPDATE changed {rows} row(s), but the flag still reads {after!r} "
                               "(flag.store.select): rolled back")
            return FlagFlip(before=before, after=after, changed=True, rows=rows)

    async def read(self) -> Any:
        return (await self._transaction("read")).before

    async def turn_off(self) -> FlagFlip:
        return await self._transaction("turn-off")
