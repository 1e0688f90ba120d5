"""One writer per store, with real ``rollbackd run`` processes.

- Two daemons on one SQLite file: the second refuses to start (exit 3), saying which file and
  what to do, without a traceback; the first goes on.
- Two daemons on one PostgreSQL schema, no Kubernetes: exactly one leads (``/readyz``), only the
  leader's events reach the broker, and when the leader is killed the other takes over and
  publishes.
- The store's advisory lock in-process: a lost connection means a lost lead, and a new holder
  waits until the old one has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
import yaml

from rollbackd.config.settings import EventsSettings, Settings, StoreSettings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.leader import LeaderElector
from rollbackd.daemon.store_leader import StoreLeader
from rollbackd.daemon.wiring import open_daemon
from rollbackd.events.dispatcher import Dispatcher
from rollbackd.events.publisher import audit_entry_for
from rollbackd.store.lock import SQLiteLock, StoreInUseError
from rollbackd.store.sqlite import SQLiteStore
from tests.eventstory import rollback_story
from tests.faultledger import FaultLedger
from tests.kubefixtures import ClusterEmulator, wait_until
from tests.mqttfixtures import Mosquitto, free_port, mosquitto, subscribed  # noqa: F401
from tests.test_daemon import SEVERE, ScriptedHealth, ScriptedMetrics, canary, make_settings
from tests.test_events_dispatcher import FAST, RecordingSink
from tests.test_leader import client, elector
from tests.test_store import POSTGRES_DSN, postgres_schema, with_search_path  # noqa: F401


def write_config(
    path: Path, *, store: dict[str, Any], port: int, source: str, mqtt: dict[str, Any] | None
) -> Path:
    """A daemon that decides (Prometheus does not answer: "inconclusive", an event) and acts on
    nothing (no Kubernetes)."""
    events: dict[str, Any] = {"kubernetes_events": False, "source": source}
    if mqtt is not None:
        events["mqtt"] = mqtt
    path.write_text(
        yaml.safe_dump(
            {
                "interval_s": 0.5,
                "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 0.5, "retries": 0},
                "http": {"host": "127.0.0.1", "port": port},
                "kubernetes": {"enabled": False},
                "store": store,
                "events": events,
                "targets": [canary("checkout").model_dump(mode="json", exclude_defaults=True)],
            }
        ),
        encoding="utf-8",
    )
    return path


@contextlib.asynccontextmanager
async def daemon(config: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``rollbackd run --config config``, killed at the end if still running."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollbackd", "run", "--config", str(config),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()


async def decisions(session: aiohttp.ClientSession, port: int) -> float:
    """The daemon's decisions so far (``rollbackd_decisions_total``, all outcomes)."""
    async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
        text = await response.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("rollbackd_decisions_total")
    )


async def decisions_at_least(session: aiohttp.ClientSession, port: int, count: float) -> bool:
    return await decisions(session, port) >= count


async def answers(session: aiohttp.ClientSession, port: int) -> bool:
    return await readyz(session, port) is not None


async def readyz(session: aiohttp.ClientSession, port: int) -> dict[str, Any] | None:
    try:
        async with session.get(f"http://127.0.0.1:{port}/readyz") as response:
            if response.status != 200:
                return None
            body: dict[str, Any] = await response.json()
            return body
    except aiohttp.ClientError:
        return None


# --- SQLite ---------------------------------------------------------------------------------------


@pytest.mark.faults
async def test_a_second_daemon_on_one_sqlite_file_refuses_to_start(
    tmp_path: Path, fault_ledger: FaultLedger
) -> None:
    data_dir = tmp_path / "data"
    first_port, second_port = free_port(), free_port()
    store = {"data_dir": str(data_dir)}
    first_config = write_config(tmp_path / "a.yaml", store=store, port=first_port, source="/a", mqtt=None)
    second_config = write_config(tmp_path / "b.yaml", store=store, port=second_port, source="/b", mqtt=None)
    fault_ledger.fault("a second daemon started on the same SQLite file")
    async with aiohttp.ClientSession() as session, daemon(first_config) as first:
        await wait_until(
            lambda: answers(session, first_port), timeout_s=30, interval_s=0.1, what="the first ready"
        )
        async with daemon(second_config) as second:
            _, stderr = await asyncio.wait_for(second.communicate(), timeout=30)
        assert second.returncode == 3
        message = stderr.decode()
        assert (
            f"the store {data_dir / 'rollbackd.db'} is in use by another rollbackd (pid {first.pid} on "
            in message
        )
        assert "Stop the other one, or give this one its own store.data_dir" in message
        assert "Traceback" not in message
        assert await answers(session, first_port)  # the first one goes on
        first.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(first.wait(), timeout=30) == 0
    # Once the first has stopped, the file is free again.
    with SQLiteLock(data_dir / "rollbackd.db") as lock:
        assert lock.held
    fault_ledger.observe(crashes=0)


def test_the_sqlite_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    database = tmp_path / "sub" / "rollbackd.db"
    with SQLiteLock(database), pytest.raises(StoreInUseError, match=str(database)):
        SQLiteLock(database).acquire()
    with SQLiteLock(database):  # released on exit
        pass


# --- PostgreSQL without Kubernetes -----------------------------------------------------------------


@pytest.mark.faults
async def test_of_two_daemons_on_one_postgresql_store_only_the_leader_publishes_and_the_other_takes_over(
    postgres_schema: str,  # noqa: F811
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
    fault_ledger: FaultLedger,
) -> None:
    prefix = f"w{tmp_path.name[-8:]}"
    mqtt = {"enabled": True, "url": mosquitto.url, "topic_prefix": prefix}
    ports = {"a": free_port(), "b": free_port()}
    configs = {
        name: write_config(
            tmp_path / f"{name}.yaml",
            store={"url": postgres_schema, "data_dir": str(tmp_path / name)},
            port=port,
            source=f"/rollbackd/{name}",
            mqtt={**mqtt, "instance": name},
        )
        for name, port in ports.items()
    }
    async with (
        aiohttp.ClientSession() as session,
        subscribed(mosquitto.options, f"{prefix}/v1/shop/checkout/events/#") as subscriber,
    ):

        def sources() -> list[str]:
            return [str(json.loads(message.payload)["source"]) for message in subscriber.messages]

        async def leads(name: str) -> bool:
            body = await readyz(session, ports[name])
            return body is not None and body.get("leader") is True

        async def standby(name: str) -> bool:
            body = await readyz(session, ports[name])
            return body is not None and body.get("leader") is False

        async with daemon(configs["a"]) as a:
            await wait_until(lambda: leads("a"), timeout_s=40, interval_s=0.2, what="a leading")
            async with daemon(configs["b"]) as b:
                await wait_until(
                    lambda: standby("b"), timeout_s=40, interval_s=0.2, what="b ready as a standby"
                )
                await wait_until(
                    lambda: "/rollbackd/a" in sources(), timeout_s=20, interval_s=0.1, what="a's event"
                )
                # b decides six more times meanwhile: anything it published would show.
                seen = await decisions(session, ports["b"])
                await wait_until(
                    lambda: decisions_at_least(session, ports["b"], seen + 6), timeout_s=30, interval_s=0.2,
                    what="b deciding",
                )  # fmt: skip
                assert await leads("a")
                assert await standby("b")
                assert set(sources()) == {"/rollbackd/a"}
                ids = [json.loads(message.payload)["id"] for message in subscriber.messages]
                assert len(ids) == len(set(ids)), "an event was delivered twice: b's dispatcher delivered too"
                fault_ledger.fault("the leader killed (SIGKILL)")
                a.send_signal(signal.SIGKILL)
                await a.wait()
                await wait_until(lambda: leads("b"), timeout_s=30, interval_s=0.2, what="b taking over")
                await wait_until(
                    lambda: "/rollbackd/b" in sources(), timeout_s=20, interval_s=0.1, what="b's event"
                )
                b.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(b.wait(), timeout=30) == 0
    fault_ledger.observe(crashes=0)


# --- the store's advisory lock, in-process -----------------------------------------------------------


@contextlib.asynccontextmanager
async def never_two_leaders(*leaders: StoreLeader) -> AsyncIterator[list[int]]:
    """Watch ``leaders`` every 10 ms; the list yielded counts the moments two led at once."""
    overlaps: list[int] = []

    async def watch() -> None:
        while True:
            if sum(leader.is_leader for leader in leaders) > 1:
                overlaps.append(1)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(watch())
    try:
        yield overlaps
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.faults
async def test_a_leader_whose_lock_connection_is_cut_stops_before_the_other_starts(
    postgres_schema: str,  # noqa: F811
    fault_ledger: FaultLedger,
) -> None:
    period = 0.2
    a = StoreLeader(dsn=postgres_schema, identity="a", check_period_s=period)
    b = StoreLeader(dsn=postgres_schema, identity="b", check_period_s=period)
    async with a, never_two_leaders(a, b) as overlaps:
        await wait_until(lambda: a.is_leader, timeout_s=10, what="a leading")
        async with b, await psycopg.AsyncConnection.connect(postgres_schema, autocommit=True) as admin:

            async def session_of(name: str) -> bool:
                cur = await admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (f"rollbackd leader lock {name}",),
                )
                row = await cur.fetchone()
                return row is not None and row[0] > 0

            await wait_until(lambda: session_of("b"), timeout_s=10, what="b competing")
            assert a.is_leader
            assert not b.is_leader
            fault_ledger.fault("the leader's lock connection terminated by the server")
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                ("rollbackd leader lock a",),
            )
            await wait_until(lambda: not a.is_leader, timeout_s=5, what="a stepping down")
            await wait_until(lambda: b.is_leader, timeout_s=10, what="b taking over")
    assert overlaps == []
    fault_ledger.observe(crashes=len(overlaps))


async def test_leaders_on_different_schemas_do_not_compete(postgres_schema: str) -> None:  # noqa: F811
    other_schema = f"other_{uuid.uuid4().hex[:12]}"
    other = with_search_path(POSTGRES_DSN, other_schema)
    async with await psycopg.AsyncConnection.connect(postgres_schema, autocommit=True) as admin:
        await admin.execute(f"CREATE SCHEMA {other_schema}")
        try:
            async with (
                StoreLeader(dsn=postgres_schema, identity="a", check_period_s=0.1) as a,
                StoreLeader(dsn=other, identity="b", check_period_s=0.1) as b,
            ):
                await wait_until(lambda: a.is_leader and b.is_leader, timeout_s=10, what="both leading")
        finally:
            await admin.execute(f"DROP SCHEMA {other_schema}")


# --- a standby publishes nothing ---------------------------------------------------------------------


@pytest.mark.looptime
async def test_a_lease_standby_records_no_event(kube_cluster: ClusterEmulator, tmp_path: Path) -> None:
    """Two replicas with Lease election, each with a store of its own (a pod each): the leader's
    decisions are announced (events in its outbox), the standby's are not."""
    metrics = ScriptedMetrics()

    def config(name: str) -> Settings:
        return make_settings().model_copy(
            update={
                "store": StoreSettings(data_dir=str(tmp_path / name)),
                "events": EventsSettings(kubernetes_events=False),
            }
        )

    @contextlib.asynccontextmanager
    async def replica(name: str, leader: LeaderElector) -> AsyncIterator[Daemon]:
        async with open_daemon(
            config(name), metrics_source=metrics, health_source=ScriptedHealth(), leader=leader
        ) as daemon:
            yield daemon

    async with client(kube_cluster) as ka, client(kube_cluster) as kb, elector(ka, "a") as a:
        await a.wait_leader()
        async with elector(kb, "b") as b, replica("a", a) as daemon_a, replica("b", b) as daemon_b:
            await wait_until(lambda: daemon_a.ready and daemon_b.ready, timeout_s=60, what="both ready")
            metrics.pair = SEVERE  # a rollback decision (blocked on b), announced by a
            seen = daemon_b.ticks
            await wait_until(lambda: daemon_b.ticks >= seen + 5, timeout_s=60, what="b deciding")
            assert a.is_leader
            assert not b.is_leader
    outboxes = {}
    for name in ("a", "b"):
        async with SQLiteStore(tmp_path / name / "rollbackd.db") as store:
            outboxes[name] = [event.type for event in await store.pending("anyone")]
    assert outboxes["a"], "the leader announced nothing"
    assert outboxes["b"] == []


async def test_a_standby_dispatcher_delivers_nothing_until_it_leads(tmp_path: Path) -> None:
    leading = False
    async with SQLiteStore(tmp_path / "rollbackd.db") as store:
        story = rollback_story()
        for event in story:
            await store.record(audit_entry_for(event), [event.to_outbox()])
        sink = RecordingSink("mqtt")
        async with Dispatcher(
            store=store, sinks=[sink], backoff=FAST, poll_interval_s=0.05, active=lambda: leading
        ) as dispatcher:
            assert await dispatcher.drain(timeout_s=5)  # it looked, as a standby
            assert sink.delivered == []
            assert len(await store.pending("mqtt")) == len(story)
            leading = True
            await wait_until(lambda: len(sink.delivered) == len(story), what="delivery once leading")
