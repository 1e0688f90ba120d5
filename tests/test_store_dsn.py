"""``store.url`` as libpq reads it: which store it names, and no password in anything shown.

Passwords holding ``?`` or ``#`` (which a URL parser takes for the query or the fragment), a
libpq ``key=value`` DSN (once taken for an SQLite file name), DSNs libpq cannot parse (its error
quotes them), and driver errors that quote the connection string: the password appears in no
description, error, configuration message or log line.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import traceback
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg.conninfo import make_conninfo

from rollbackd.config.loader import ConfigError, load_settings
from rollbackd.config.settings import Settings, StoreSettings
from rollbackd.daemon.journal import Journal
from rollbackd.daemon.storekeeper import keep_store
from rollbackd.store import (
    DsnError,
    PermanentStoreError,
    StoreError,
    TemporaryStoreError,
    open_store,
    parse_store_url,
    redact_url,
)
from rollbackd.store.postgres import PostgresStore
from rollbackd.store.sqlite import SQLiteStore
from tests.faultledger import FaultLedger
from tests.kubefixtures import wait_until


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def everything_shown(exc: BaseException) -> str:
    """What a traceback of ``exc`` would print, causes included."""
    return "".join(traceback.format_exception(exc))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        # libpq ends the user part at the first '@' before a '/': '?' and '#' belong to the password.
        ("postgresql://u:s3cr?t#pw@db:5432/rollbackd", "postgresql://u:***@db:5432/rollbackd"),
        (
            "postgresql://u:s3cr#t?pw@db/rollbackd?sslmode=require",
            "postgresql://u:***@db/rollbackd?sslmode=require",
        ),
        (
            "postgres://db/rollbackd?sslpassword=s3cr%23t&password=s3cr%3Ft",
            "postgres://db/rollbackd?sslpassword=***&password=***",
        ),
        ("host=db user=u password='s3cr?t #pw' dbname=x", "user=u password=*** dbname=x host=db"),
        ("host=db password=s3cr\\ t", "password=*** host=db"),
    ],
)
def test_passwords_holding_url_delimiters_are_hidden(url: str, shown: str) -> None:
    parsed = parse_store_url(url)
    assert parsed.kind == "postgresql"
    assert parsed.description == shown
    assert redact_url(url) == shown
    store = open_store(url, data_dir=Path("/nonexistent"))
    assert isinstance(store, PostgresStore)
    assert store.description == shown
    for secret in ("s3cr", "t#pw", "t?pw"):
        assert secret not in repr(store)
        assert secret not in repr(parsed)


def test_a_key_value_dsn_is_postgresql_not_an_sqlite_file(tmp_path: Path) -> None:
    store = open_store("host=db password=s3cret dbname=rollbackd", data_dir=tmp_path)
    assert isinstance(store, PostgresStore)
    assert "s3cret" not in store.description
    assert not list(tmp_path.iterdir())  # no SQLite file named after the DSN


@pytest.mark.parametrize(
    "url",
    [
        "host=db password=s3cretpw dbname",  # a key without '='
        "host=db password='s3cretpw",  # an unterminated quote
        "host=db pasword=s3cretpw",  # not a libpq parameter
        "postgresql://u:s3cretpw@db/x?foo=s3cretpw",  # not a libpq parameter
        "postgresql://u:s3cretpw%zz@db/x",  # a broken percent escape
        "postgresql://u:s3cretpw%00@db/x",  # NUL, which libpq refuses quoting the value
        "postgresql://u:s3cret/pw@db/x",  # an unencoded '/' in the password
        "postgresql://u:s3cret@pw@db/x",  # an unencoded '@' in the password
        "u:s3cretpw@db:5432/rollbackd",  # a URL without its scheme
        "my sql:s3cretpw://db",  # not a scheme
        "s3cretpw\nx.db",  # a line break in a path
    ],
)
def test_what_cannot_be_parsed_is_refused_without_echoing_it(url: str, tmp_path: Path) -> None:
    with pytest.raises(DsnError) as parsing:
        parse_store_url(url)
    with pytest.raises(PermanentStoreError) as opening:
        open_store(url, data_dir=tmp_path)
    config = tmp_path / "rollbackd.yaml"
    config.write_text("store:\n  url: " + _yaml_string(url) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as loading:
        load_settings(config, environ={})
    for shown in (str(parsing.value), everything_shown(opening.value), str(loading.value)):
        assert "s3cret" not in shown
    assert "store.url" in str(loading.value)
    assert str(opening.value).startswith("store.url: ")
    assert redact_url(url) == "(store.url not shown: it cannot be parsed)"
    assert not list(tmp_path.glob("*s3cret*"))


def _yaml_string(text: str) -> str:
    """``text`` as a double-quoted YAML scalar."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def test_sqlite_forms_are_kept() -> None:
    for url in (None, "", "sqlite:///var/lib/rollbackd/a.db", "audit.db", "/srv/rollbackd/a.db"):
        assert parse_store_url(url).kind == "sqlite"
    assert isinstance(open_store("sqlite:///tmp/with=equals@and-at.db", data_dir=Path("/x")), SQLiteStore)


async def test_a_driver_error_quoting_the_password_is_scrubbed() -> None:
    """libpq's messages quote parts of the connection string (here the database name, which is
    also the password): the store's error hides it and does not chain the driver's error."""
    secret = "hunter2pw"
    dsn = make_conninfo("", host="127.0.0.1", port=closed_port(), user="u", password=secret, dbname=secret)
    store = PostgresStore(dsn)
    assert "hunter2pw" not in store.description
    with pytest.raises(StoreError) as info:
        await store.open()
    assert "hunter2pw" not in everything_shown(info.value)


# --- the property: no generated password is ever shown ------------------------------------------

PASSWORDS = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), min_size=1, max_size=24
).map(lambda text: "Pw9" + text)


def _forms(password: str, port: int) -> list[tuple[str, bool]]:
    """``(dsn, well_formed)``: the password percent-encoded in a URL's user part and in its query,
    quoted by libpq's rules in a key=value string, and pasted as is (which libpq may refuse)."""
    encoded = quote(password, safe="")
    return [
        (f"postgresql://u:{encoded}@127.0.0.1:{port}/rollbackd", True),
        (f"postgresql://127.0.0.1:{port}/rollbackd?user=u&password={encoded}", True),
        (make_conninfo("", host="127.0.0.1", port=port, user="u", password=password, dbname="x"), True),
        (f"postgresql://u:{password}@127.0.0.1:{port}/rollbackd", False),
        (f"host=127.0.0.1 port={port} password={password} dbname=rollbackd", False),
    ]


@pytest.mark.faults
@settings(max_examples=60)
@given(password=PASSWORDS)
async def test_no_password_is_shown_in_descriptions_errors_or_logs(
    password: str, fault_ledger: FaultLedger, caplog: pytest.LogCaptureFixture
) -> None:
    port = closed_port()
    for dsn, well_formed in _forms(password, port):
        fault_ledger.inputs(1)
        hidden = (password, quote(password, safe=""))
        caplog.clear()
        with caplog.at_level(logging.DEBUG):
            refused: PermanentStoreError | None = None
            try:
                store = open_store(dsn, data_dir=Path("/nonexistent"))
            except PermanentStoreError as exc:
                refused = exc
            if refused is not None:
                assert not well_formed, f"refused a well-formed DSN: {refused}"
                shown = [everything_shown(refused)]
            else:
                assert isinstance(store, PostgresStore)
                with pytest.raises(TemporaryStoreError) as info:  # nothing listens on that port
                    await store.open()
                shown = [store.description, repr(store), everything_shown(info.value)]
            shown.append(redact_url(dsn))
            shown.extend(record.getMessage() for record in caplog.records)
        for text in shown:
            for secret in hidden:
                assert secret not in text
    fault_ledger.observe(crashes=0)


async def test_a_store_that_cannot_be_opened_is_reported_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """What the daemon says while its store is down (``/readyz``'s reason, the log) hides it."""
    secret = "s3cr?t#pw"
    dsn = f"postgresql://rollbackd:{secret}@127.0.0.1:{closed_port()}/rollbackd"
    settings = Settings(store=StoreSettings(url=dsn))
    journal = Journal(required=True)
    stopping = asyncio.Event()
    with caplog.at_level(logging.DEBUG):
        keeper = asyncio.create_task(
            keep_store(settings, journal=journal, environ={}, kube=None, stopping=stopping, retry_s=0.05)
        )
        await wait_until(
            lambda: "store unavailable" in (journal.problem or ""), what="the store reported down"
        )
        stopping.set()
        await keeper
    assert journal.problem is not None
    assert "postgresql://rollbackd:***@127.0.0.1" in journal.problem
    for text in [journal.problem, *(record.getMessage() for record in caplog.records)]:
        assert "s3cr" not in text
