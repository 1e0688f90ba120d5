"""The feature-flag closed loop, end to end on one machine: ``rollbackd demo --scenario flag``, its
benchmark (``python -m bench.flags``) and its tests run this.

A real sample-app process serves its own traffic (100 requests per second) and has a feature flag
(``new_checkout``) whose state it follows: off, it fails 0.2% of its requests; on, 30%. The flag
is kept in a real PostgreSQL table (``store="sql"``: the app reads the table every 0.2 s) or behind
the app's own admin API (``store="http"``: ``POST /api/admin/features`` with a bearer token). The
daemon watches it as a ``feature-flag`` target, with its SQLite store, reading the app's
``/metrics`` every second (the demo's stand-in for a 1 s scrape, see
:mod:`rollbackd.demo.direct`) and the emulated Kubernetes API for the target's facts.

The story: healthy ticks with the flag off; the flag goes on and a pipeline announces the release
(``release.started``); the errors begin; rollbackd decides, turns the flag off through the
target's flag store and verifies. Measured on the event loop's clock: flag on -> rollback decision
-> lever done (the flag off in its store) -> verified, and the lever's own time (``api_s``).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import kmock
import psycopg
from psycopg import sql

from rollbackd.actions.targets import KubeTargets
from rollbackd.config.settings import (
    ApiSettings,
    FlagHttpStore,
    FlagReadSettings,
    FlagSettings,
    FlagSqlStore,
    HttpSettings,
    Settings,
    Side,
    StoreSettings,
    TargetSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.wiring import open_daemon
from rollbackd.demo.direct import DirectMetricsSource
from rollbackd.demo.emulator import ClusterEmulator, seed_deployment
from rollbackd.demo.processes import SampleAppProcess, astart_sample_app
from rollbackd.kube import KubeClient
from rollbackd.model import Strategy
from rollbackd.releases import Release
from rollbackd.run import Phase, RollbackRun
from rollbackd.sources.health import HealthProber
from rollbackd.store.base import AuditEntry

NAMESPACE = "shop"
TARGET = "checkout"
KEY = f"{NAMESPACE}/{TARGET}"
FLAG = "new_checkout"
#: The PostgreSQL the sql store's table is made in, when none is given.
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"

FlagStoreKind = Literal["sql", "http"]


class FlagLoopFailed(Exception):
    """The loop did not end in a verified rollback with the flag off; the message says why."""


@dataclass(frozen=True, slots=True)
class FlagLoopOptions:
    """How the loop runs: ``store`` (sql or http), ``dsn`` (the sql store's PostgreSQL; a table of
    its own is made there and dropped after), ``work_dir`` (the daemon's store, files of secrets,
    logs), the daemon's ``interval_s``, the app's ``rps`` and ``error_rate`` with the flag on,
    ``healthy_ticks`` before the flag goes on, ``verification_window_s``, ``timeout_s``."""

    work_dir: Path
    store: FlagStoreKind = "sql"
    dsn: str = DEFAULT_DSN
    interval_s: float = 1.0
    rps: float = 100.0
    error_rate: float = 0.3
    healthy_ticks: int = 5
    verification_window_s: float = 5.0
    timeout_s: float = 90.0


@dataclass(slots=True)
class FlagLoopResult:
    """What happened, on the event loop's clock (``None``: it did not happen)."""

    store: FlagStoreKind
    flag_on_at: float
    decided_at: float | None = None
    lever_done_at: float | None = None
    verified_at: float | None = None
    run: RollbackRun | None = None
    #: The audit log of the target, oldest first.
    history: list[AuditEntry] = field(default_factory=list)
    #: The flag's value in its store at the end.
    flag_after: Any = None

    @property
    def on_to_off_s(self) -> float | None:
        """Flag on -> the lever turned it off."""
        return None if self.lever_done_at is None else self.lever_done_at - self.flag_on_at

    @property
    def decision_to_lever_done_s(self) -> float | None:
        if self.decided_at is None or self.lever_done_at is None:
            return None
        return self.lever_done_at - self.decided_at


class FlagTable:
    """A flags table of the loop's own in the PostgreSQL ``dsn``."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.name = f"feature_flags_{uuid.uuid4().hex[:12]}"

    async def _execute(self, statement: sql.Composed, params: tuple[Any, ...] = ()) -> Any:
        async with await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=5
        ) as conn:
            cursor = await conn.execute(statement, params)
            return await cursor.fetchone() if cursor.description else None

    async def create(self) -> None:
        table = sql.Identifier(self.name)
        await self._execute(
            sql.SQL("CREATE TABLE {} (name TEXT PRIMARY KEY, enabled BOOLEAN NOT NULL)").format(table)
        )
        await self._execute(sql.SQL("INSERT INTO {} VALUES (%s, false)").format(table), (FLAG,))

    async def drop(self) -> None:
        await self._execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(self.name)))

    async def set(self, on: bool) -> None:
        await self._execute(
            sql.SQL("UPDATE {} SET enabled = %s WHERE name = %s").format(sql.Identifier(self.name)),
            (on, FLAG),
        )

    async def get(self) -> Any:
        row = await self._execute(
            sql.SQL("SELECT enabled FROM {} WHERE name = %s").format(sql.Identifier(self.name)), (FLAG,)
        )
        return None if row is None else row[0]


class AdminApi:
    """The app's admin API, with its token."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}

    async def set(self, on: bool) -> None:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.url}/api/admin/features",
                json={"feature_name": FLAG, "enabled": on},
                headers=self._headers,
            ) as response,
        ):
            if response.status != 200:
                raise FlagLoopFailed(f"the app's admin API answered {response.status} to turning {FLAG} on")

    async def get(self) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{self.url}/api/admin/features/{FLAG}", headers=self._headers) as response,
        ):
            return (await response.json()).get("enabled")


def flag_settings(options: FlagLoopOptions, store: FlagHttpStore | FlagSqlStore) -> Settings:
    """The daemon's settings: one feature-flag target, its SQLite store in the work directory."""
    target = TargetSettings(
        name=TARGET,
        namespace=NAMESPACE,
        strategy=Strategy.FEATURE_FLAG,
        candidate=Side(deployment=TARGET),
        flag=FlagSettings(name=FLAG, store=store, backoff_initial_s=0.1),
    )
    return Settings(
        interval_s=options.interval_s,
        http=HttpSettings(host="127.0.0.1", port=0),
        api=ApiSettings(allow_unauthenticated_writes=True),
        store=StoreSettings(data_dir=str(options.work_dir / "data")),
        verification=VerificationSettings(window_s=options.verification_window_s),
        targets=(target,),
    )


@contextlib.asynccontextmanager
async def flag_store(
    options: FlagLoopOptions,
) -> AsyncIterator[tuple[SampleAppProcess, FlagHttpStore | FlagSqlStore, FlagTable | AdminApi]]:
    """The sample app with its flag, where the flag is kept, and the flag store's settings."""
    work = options.work_dir
    work.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "deployment": TARGET,
        "namespace": NAMESPACE,
        "rps": options.rps,
        "error_rate": 0.002,
        "flag": FLAG,
        "flag_error_rate": options.error_rate,
        "log_dir": work,
    }
    if options.store == "sql":
        table = FlagTable(options.dsn)
        await table.create()
        dsn_file = work / "flags-dsn"
        dsn_file.write_text(options.dsn)
        try:
            app = await astart_sample_app(flag_dsn_file=dsn_file, flag_table=table.name, **common)
            quoted = f'"{table.name}"'
            store: FlagHttpStore | FlagSqlStore = FlagSqlStore(
                kind="sql",
                dsn_file=str(dsn_file),
                update=f"UPDATE {quoted} SET enabled = false WHERE name = %(flag)s",
                select=f"SELECT enabled FROM {quoted} WHERE name = %(flag)s",
            )
            try:
                yield app, store, table
            finally:
                app.stop()
        finally:
            await table.drop()
        return
    token = uuid.uuid4().hex
    token_file = work / "admin-token"
    token_file.write_text(token)
    app = await astart_sample_app(admin_token_file=token_file, **common)
    try:
        store = FlagHttpStore(
            kind="http",
            url=f"{app.url}/api/admin/features",
            token_file=str(token_file),
            read=FlagReadSettings(url=f"{app.url}/api/admin/features/{{flag}}", json_path="enabled"),
        )
        yield app, store, AdminApi(app.url, token)
    finally:
        app.stop()


async def run_flag_loop(
    options: FlagLoopOptions, *, say: Callable[[str], None] = lambda _: None
) -> FlagLoopResult:
    """Run the loop once (see the module); :class:`FlagLoopFailed` when it does not end verified."""
    loop = asyncio.get_running_loop()
    async with contextlib.AsyncExitStack() as stack:
        app, store, flag = await stack.enter_async_context(flag_store(options))
        where = "behind its admin API"
        if isinstance(flag, FlagTable):
            where = f"in the PostgreSQL table {flag.name}"
        say(
            f"sample app {KEY} on {app.url}: flag {FLAG} off (0.2% errors), on: {options.error_rate:.0%} "
            f"errors; the flag is kept {where}"
        )
        emu = await stack.enter_async_context(ClusterEmulator())
        await stack.enter_async_context(kmock.Server(emu))
        seed_deployment(emu, NAMESPACE, TARGET, replicas=2, image="shop/checkout:2.0", container="web")
        kube = await stack.enter_async_context(KubeClient.for_host(str(emu.url), request_timeout_s=10.0))
        settings = flag_settings(options, store)
        metrics = await stack.enter_async_context(DirectMetricsSource(urls=[f"{app.url}/metrics"]))
        prober = await stack.enter_async_context(HealthProber(timeout_s=2.0, concurrency=4))
        daemon: Daemon = await stack.enter_async_context(
            open_daemon(
                settings,
                metrics_source=metrics,
                health_source=prober,
                targets=KubeTargets(kube=kube, settings=settings),
            )
        )
        say(
            f"rollbackd watching {KEY} (strategy feature-flag, flag store {options.store}), every "
            f"{options.interval_s:g}s"
        )
        deadline = loop.time() + options.timeout_s
        await _until(
            deadline,
            "the store open and healthy ticks",
            lambda: daemon.journal.attached and daemon.ticks >= options.healthy_ticks,
        )
        await flag.set(True)
        result = FlagLoopResult(store=options.store, flag_on_at=loop.time())
        await daemon.releases.announce(
            Release.from_json(
                {
                    "target": KEY,
                    "kind": "flag",
                    "description": f"{FLAG} turned on",
                    "details": {"flag": FLAG},
                },
                who="pipeline",
            )
        )
        say(f"RELEASE: flag {FLAG} turned on, announced to rollbackd (release.started)")
        await _until(deadline, "a rollback decision", lambda: KEY in daemon.rollbacks.runs)
        run = result.run = daemon.rollbacks.runs[KEY]
        result.decided_at = run.decided_at
        say(
            f"rollback decided {run.decided_at - result.flag_on_at:.1f}s after the flag went on: "
            f"{'; '.join(run.reasons)}"
        )
        await _until(deadline, "the lever done", lambda: run.acted_at is not None or not run.phase.active)
        result.lever_done_at = run.acted_at
        if run.action is not None:
            say(f"lever: {run.action.reason} ({run.action.outcome.value}, {run.action.api_s * 1000:.0f} ms)")
        await _until(deadline, "the rollback's verdict", lambda: not run.phase.active)
        if run.phase is Phase.VERIFIED:
            result.verified_at = loop.time()
            reasons = run.verification.reasons if run.verification is not None else ()
            say(f"verified: {reasons[0] if reasons else 'the SLO kept over the validation window'}")
        entries = await daemon.journal.history(target=KEY, limit=200) or []
        result.history = entries
        result.flag_after = await flag.get()
    if run.phase is not Phase.VERIFIED:
        raise FlagLoopFailed(
            f"the rollback ended {run.phase.value}: "
            f"{run.action.reason if run.action is not None else 'no action'}"
        )
    return result


async def _until(deadline: float, what: str, condition: Callable[[], bool]) -> None:
    loop = asyncio.get_running_loop()
    while not condition():
        if loop.time() > deadline:
            raise FlagLoopFailed(f"{what}: not within the time limit")
        await asyncio.sleep(0.02)
