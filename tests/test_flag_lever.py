"""The feature-flag lever against real components: a real PostgreSQL flags table (a table of its
own per test) and the sample app's admin API, in a real process whose errors follow the flag.

- the lever alone: turns the flag off and records its value before and after; a flag already off
  is left alone (already-done); the faults (401, 404, 500, an UPDATE matching no row, an SQL
  error, a database that is down) are failed actions with the reason, retried first when a retry
  may help, and no token or password appears in what they say;
- the closed loop, for each store: the flag goes on (announced as a release), the app fails 30%
  of its requests, rollbackd decides, turns the flag off, the errors stop, the rollback is verified.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from rollbackd.actions.base import ActionOutcome, RollbackAction
from rollbackd.actions.feature_flag import FeatureFlagOff
from rollbackd.actions.flag_http import HttpFlag
from rollbackd.actions.flag_sql import SqlFlag
from rollbackd.actions.targets import flag_action
from rollbackd.backoff import Backoff
from rollbackd.config.settings import (
    FlagHttpStore,
    FlagReadSettings,
    FlagSettings,
    FlagSqlStore,
    Side,
    TargetSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.demo import flagloop
from rollbackd.demo.flagloop import FlagLoopOptions, FlagStoreKind, FlagTable, run_flag_loop
from rollbackd.demo.processes import free_port
from rollbackd.model import Sample, Strategy
from rollbackd.params import TargetParams
from rollbackd.run import Phase
from tests.kubefixtures import wait_until
from tests.test_daemon import ScriptedHealth, ScriptedMetrics, make_settings
from tests.test_daemon_rollbacks import ScriptedTargets
from tests.test_store import POSTGRES_DSN

FLAG = "new_checkout"
TOKEN = "admin-token-7f3e9"
FAST = Backoff(initial_s=0.01, max_s=0.05)
NAMESPACE = "shop"
KEY = f"{NAMESPACE}/checkout"


async def require_postgres() -> None:
    try:
        conn = await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL cannot be reached: {exc}")
    await conn.close()


@pytest.fixture
async def flags_table() -> AsyncIterator[FlagTable]:
    """A flags table of this test's own (``name``, ``enabled``), holding ``new_checkout`` off."""
    await require_postgres()
    table = FlagTable(POSTGRES_DSN)
    await table.create()
    try:
        yield table
    finally:
        await table.drop()


def sql_store(
    tmp_path: Path, table: str, dsn: str = POSTGRES_DSN, *, update: str | None = None
) -> FlagSqlStore:
    dsn_file = tmp_path / "flags-dsn"
    dsn_file.write_text(dsn)
    quoted = f'"{table}"'
    return FlagSqlStore(
        kind="sql",
        dsn_file=str(dsn_file),
        timeout_s=2.0,
        update=update or f"UPDATE {quoted} SET enabled = false WHERE name = %(flag)s",
        select=f"SELECT enabled FROM {quoted} WHERE name = %(flag)s",
    )


def http_store(tmp_path: Path, base: str, *, token: str = TOKEN, read: bool = True) -> FlagHttpStore:
    token_file = tmp_path / "flags-token"
    token_file.write_text(token + "\n")
    return FlagHttpStore(
        kind="http",
        url=f"{base}/api/admin/features",
        token_file=str(token_file),
        timeout_s=2.0,
        read=FlagReadSettings(url=f"{base}/api/admin/features/{{flag}}", json_path="enabled")
        if read
        else None,
    )


def lever(store: HttpFlag | SqlFlag, *, flag: str = FLAG) -> FeatureFlagOff:
    return FeatureFlagOff(target=KEY, flag=flag, store=store, attempts=3, backoff=FAST)


# --- the lever alone, SQL ---------------------------------------------------------------------------


async def test_sql_turns_the_flag_off_once_and_records_before_and_after(
    tmp_path: Path, flags_table: FlagTable
) -> None:
    await flags_table.set(True)
    store = SqlFlag(sql_store(tmp_path, flags_table.name), flag=FLAG)
    planned = await lever(store).run(dry_run=True)
    assert planned.outcome is ActionOutcome.PLANNED
    assert await flags_table.get() is True  # a plan changes nothing

    result = await lever(store).run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    (change,) = result.changes
    assert (change.object, change.field, change.before, change.after) == (
        f"FeatureFlag/{KEY}/{FLAG}",
        "enabled",
        True,
        False,
    )
    assert result.details["rows"] == 1
    assert await flags_table.get() is False

    again = await lever(store).run(dry_run=False)
    assert again.outcome is ActionOutcome.ALREADY_DONE
    assert again.details["before"] is False
    assert "off already" in again.reason


async def test_sql_an_update_matching_no_row_is_a_failed_action(
    tmp_path: Path, flags_table: FlagTable
) -> None:
    store = SqlFlag(sql_store(tmp_path, flags_table.name), flag="no_such_flag")
    result = await lever(store, flag="no_such_flag").run(dry_run=False)
    assert result.outcome is ActionOutcome.FAILED
    assert "the UPDATE changed no row: no flag named 'no_such_flag'" in result.reason


async def test_sql_a_failing_statement_fails_at_once_without_retrying(
    tmp_path: Path, flags_table: FlagTable
) -> None:
    store = SqlFlag(
        sql_store(tmp_path, flags_table.name, update="UPDATE no_such_table SET x = 1 WHERE n = %(flag)s"),
        flag=FLAG,
    )
    await flags_table.set(True)
    result = await lever(store).run(dry_run=False)
    assert result.outcome is ActionOutcome.FAILED
    assert "refused the statement" in result.reason
    assert "no_such_table" in result.reason
    assert "attempts" not in result.reason  # permanent: not retried
    assert await flags_table.get() is True  # rolled back: nothing half-done


async def test_sql_a_database_that_is_down_is_retried_then_fails_without_its_password(tmp_path: Path) -> None:
    dsn = f"postgresql://flags:pa55-w0rd@127.0.0.1:{free_port()}/flags"  # nothing listens there
    store = SqlFlag(sql_store(tmp_path, "feature_flags", dsn), flag=FLAG)
    result = await lever(store).run(dry_run=False)
    assert result.outcome is ActionOutcome.FAILED
    assert "cannot be reached" in result.reason
    assert "after 3 attempts" in result.reason
    assert "pa55-w0rd" not in result.reason
    assert "pa55-w0rd" not in repr(result.details)


# --- the lever alone, HTTP --------------------------------------------------------------------------


class FlagApi:
    """An admin API answering what the test sets: counts requests, keeps the flag."""

    def __init__(self) -> None:
        self.enabled = True
        self.answer: int | None = None  # force this status on POST
        self.posts: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/admin/features", self.post)
        app.router.add_get("/api/admin/features/{name}", self.get)
        return app

    async def post(self, request: web.Request) -> web.Response:
        self.authorizations.append(request.headers.get("Authorization"))
        self.posts.append(await request.json())
        if self.answer is not None:
            return web.json_response({"error": "boom"}, status=self.answer)
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "unauthorized"}, status=401)
        self.enabled = bool(self.posts[-1]["enabled"])
        return web.json_response({"feature_name": FLAG, "enabled": self.enabled})

    async def get(self, request: web.Request) -> web.Response:
        if request.match_info["name"] != FLAG:
            return web.json_response({"error": "no such feature"}, status=404)
        return web.json_response({"feature_name": FLAG, "enabled": self.enabled})


@pytest.fixture
async def flag_api() -> AsyncIterator[tuple[FlagApi, str]]:
    api = FlagApi()
    async with TestServer(api.app(), host="127.0.0.1") as server:
        yield api, str(server.make_url("")).rstrip("/")


async def test_http_turns_the_flag_off_with_the_token_read_from_its_file(
    tmp_path: Path, flag_api: tuple[FlagApi, str]
) -> None:
    api, base = flag_api
    result = await lever(HttpFlag(http_store(tmp_path, base), flag=FLAG)).run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert api.posts == [{"feature_name": FLAG, "enabled": False}]
    assert api.authorizations == [f"Bearer {TOKEN}"]
    (change,) = result.changes
    assert (change.before, change.after) == (True, False)
    assert TOKEN not in repr(result)

    again = await lever(HttpFlag(http_store(tmp_path, base), flag=FLAG)).run(dry_run=False)
    assert again.outcome is ActionOutcome.ALREADY_DONE
    assert len(api.posts) == 1  # read back as off: no second request


async def test_http_401_and_404_fail_at_once_and_500_is_retried(
    tmp_path: Path, flag_api: tuple[FlagApi, str]
) -> None:
    api, base = flag_api
    refused = await lever(HttpFlag(http_store(tmp_path, base, token="wrong-token-123"), flag=FLAG)).run(
        dry_run=False
    )
    assert refused.outcome is ActionOutcome.FAILED
    assert "answered 401" in refused.reason
    assert "token was refused" in refused.reason
    assert "wrong-token-123" not in refused.reason
    assert len(api.posts) == 1

    missing = await lever(HttpFlag(http_store(tmp_path, base), flag="other_flag"), flag="other_flag").run(
        dry_run=False
    )
    assert missing.outcome is ActionOutcome.FAILED
    assert "answered 404" in missing.reason

    api.answer = 500
    posts = len(api.posts)
    broken = await lever(HttpFlag(http_store(tmp_path, base, read=False), flag=FLAG)).run(dry_run=False)
    assert broken.outcome is ActionOutcome.FAILED
    assert "answered 500" in broken.reason
    assert "after 3 attempts" in broken.reason
    assert len(api.posts) == posts + 3
    assert api.enabled is True


# --- the closed loop ----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize("store", ["sql", "http"])
async def test_closed_loop_flag_on_errors_decision_flag_off_verified(
    tmp_path: Path, store: FlagStoreKind
) -> None:
    """Healthy with the flag off; the flag goes on (announced as a release) and the app fails 30%;
    rollbackd turns the flag off in its store, the errors stop, and the rollback is verified."""
    await require_postgres()
    result = await run_flag_loop(
        FlagLoopOptions(work_dir=tmp_path, store=store, dsn=POSTGRES_DSN, timeout_s=120.0)
    )
    run = result.run
    assert run is not None
    assert run.phase is Phase.VERIFIED
    assert run.action is not None
    assert run.action.action == "feature-flag-off"
    assert run.action.outcome is ActionOutcome.DONE
    (change,) = run.action.changes
    assert (change.object, change.field, change.before, change.after) == (
        f"FeatureFlag/{flagloop.KEY}/{flagloop.FLAG}",
        "enabled",
        True,
        False,
    )
    assert result.flag_after is False
    assert result.decided_at is not None
    assert result.decided_at > result.flag_on_at  # not before the flag went on
    kinds = [entry.kind for entry in result.history]
    for kind in ("release.started", "rollback.started", "rollback.completed", "rollback.verified"):
        assert kind in kinds, kinds
    assert kinds.index("release.started") < kinds.index("rollback.started")
    completed = next(entry for entry in result.history if entry.kind == "rollback.completed")
    flag = completed.details["action"]["flag"]
    assert (flag["name"], flag["store"], flag["before"], flag["after"]) == (flagloop.FLAG, store, True, False)


class FlagTargets(ScriptedTargets):
    """The cluster side of the daemon, scripted; the rollback is the target's real flag lever."""

    def __init__(self, target: TargetSettings) -> None:
        super().__init__()
        self.target = target

    def action(  # type: ignore[override]  # the real lever, not the scripted one
        self, params: TargetParams, *, bad_revision: int | None = None, why: object = None
    ) -> RollbackAction:
        return flag_action(self.target)


async def test_a_flag_store_that_stays_down_fails_the_rollback_with_its_reason(tmp_path: Path) -> None:
    """The daemon decides, the lever cannot reach the flag database (tried again with backoff),
    and the rollback ends failed (which escalates) with the reason, never verified."""
    dsn = f"postgresql://flags:pa55-w0rd@127.0.0.1:{free_port()}/flags"
    target = TargetSettings(
        name="checkout",
        namespace="shop",
        strategy=Strategy.FEATURE_FLAG,
        candidate=Side(deployment="checkout"),
        flag=FlagSettings(name=FLAG, store=sql_store(tmp_path, "feature_flags", dsn), backoff_initial_s=0.05),
    )
    settings = make_settings(target).model_copy(update={"interval_s": 1.0})
    metrics = ScriptedMetrics((None, Sample(requests=1000, errors=2)))
    cluster = FlagTargets(target)
    async with Daemon(
        settings, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
    ) as daemon:
        await wait_until(lambda: daemon.ticks >= 4, timeout_s=30, what="healthy ticks")
        metrics.pair = (None, Sample(requests=1000, errors=300))
        await wait_until(
            lambda: KEY in daemon.rollbacks.runs and not daemon.rollbacks.runs[KEY].phase.active,
            timeout_s=60,
            what="the rollback's end",
        )
        run = daemon.rollbacks.runs[KEY]
    assert run.phase is Phase.ACTION_FAILED
    assert run.action is not None
    assert "the flag database cannot be reached" in run.action.reason
    assert "after 3 attempts" in run.action.reason
    assert "pa55-w0rd" not in run.action.reason
