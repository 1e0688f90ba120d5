"""The audit trail never stops: values no store takes are made storable, a record the store still
refuses is set aside (kept, counted, audited, escalated) without blocking the ones behind it, and
while the store is down the daemon is not ready and does not act, losing nothing (also across a
stop). The real daemon, real SQLite and PostgreSQL stores (PostgreSQL cut through a TCP proxy)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollbackd.config.settings import (
    ApiSettings,
    EventsSettings,
    HttpSettings,
    MqttSettings,
    Settings,
    StoreSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.journal import Journal
from rollbackd.daemon.wiring import open_daemon
from rollbackd.events.build import Clock, EventFactory
from rollbackd.events.publisher import POISON_FILE, SPOOL_FILE, audit_entry_for
from rollbackd.model import Evidence, Finding, Impact
from rollbackd.store import open_store
from rollbackd.store.base import AuditEntry, OutboxEvent
from rollbackd.store.storable import MAX_FLOAT, storable
from tests.faultledger import FaultLedger
from tests.kubefixtures import wait_until
from tests.mqttfixtures import free_port
from tests.tcpproxy import TcpProxy
from tests.test_daemon import HEALTHY, SEVERE, ScriptedHealth, ScriptedMetrics, canary
from tests.test_daemon_rollbacks import ScriptedTargets
from tests.test_store import POSTGRES_DSN, postgres_schema  # noqa: F401 (fixture)

INTERVAL_S = 0.2
SCHEMAS = Path(__file__).parent.parent / "docs" / "schemas"
TARGET = "shop/checkout"


def make_settings(data_dir: Path, url: str | None) -> Settings:
    return Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        api=ApiSettings(allow_unauthenticated_writes=True),
        store=StoreSettings(url=url, data_dir=str(data_dir), health_interval_s=0.2),
        events=EventsSettings(mqtt=MqttSettings(enabled=False), kubernetes_events=False),
        targets=(canary("checkout"),),
    )


@dataclass
class Running:
    daemon: Daemon
    journal: Journal
    session: aiohttp.ClientSession
    metrics: ScriptedMetrics
    cluster: ScriptedTargets
    data_dir: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.daemon.port}"

    async def call(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        async with self.session.request(method, self.base + path, json=body) as response:
            text = await response.text()
            return response.status, json.loads(text) if response.content_type == "application/json" else text

    async def history(self) -> list[AuditEntry]:
        return await self.journal.history(target=None) or []

    async def kinds(self) -> list[str]:
        return [entry.kind for entry in await self.history()]


@asynccontextmanager
async def running(config: Settings, *, metrics: ScriptedMetrics | None = None) -> AsyncIterator[Running]:
    """The daemon with its store keeper, ready (store open, every target evaluated)."""
    metrics = metrics or ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets(action_s=0.05)
    async with (
        aiohttp.ClientSession() as session,
        open_daemon(
            config, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
        ) as daemon,
    ):
        await wait_until(lambda: daemon.ready, timeout_s=20, what="the daemon is ready")
        yield Running(daemon, daemon.journal, session, metrics, cluster, Path(config.store.data_dir))


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("postgres_schema"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_schema"))


def validate(payload: dict[str, Any]) -> None:
    schema = json.loads((SCHEMAS / f"{payload['type'].removeprefix('io.rollbackd.')}.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(payload)


# --- values no store takes ------------------------------------------------------------------------


@pytest.mark.faults
@pytest.mark.parametrize("reason", ["\ud800x", "before\x00after"], ids=["lone-surrogate", "nul"])
async def test_a_hold_reason_no_store_takes_is_recorded_storable_and_nothing_waits_behind_it(
    tmp_path: Path, store_url: str | None, reason: str, fault_ledger: FaultLedger
) -> None:
    fault_ledger.inputs(1)
    async with running(make_settings(tmp_path / "data", store_url)) as run:
        status, _ = await run.call("POST", f"/api/v1/targets/{TARGET}/hold", {"eta_s": 300, "reason": reason})
        assert status == 200
        assert (await run.call("POST", "/api/v1/freeze"))[0] == 200  # recorded after the hold

        async def both_recorded() -> bool:
            kinds = await run.kinds()
            return "freeze" in kinds and "hold.set" in kinds

        await wait_until(both_recorded, timeout_s=20, what="the hold and the freeze behind it are recorded")
        stored = "\ufffdx" if reason.startswith("\ud800") else "before\ufffdafter"
        hold = next(entry for entry in await run.history() if entry.kind == "hold.set")
        assert hold.details["hold"]["reason"] == stored
        for path in ("/", "/api/v1/targets", f"/api/v1/targets/{TARGET}"):
            assert (await run.call("GET", path))[0] == 200, path
        status, body = await run.call("GET", "/readyz")
        assert (status, body["status"]) == (200, "ready")
    events = await _outbox(store_url, tmp_path / "data")
    (hold_set,) = [e for e in events if e.type.endswith("hold.set")]
    assert hold_set.payload["data"]["hold"]["reason"] == stored
    validate(dict(hold_set.payload))
    assert not (tmp_path / "data" / POISON_FILE).exists()
    fault_ledger.observe(records_lost=0)


def _evidence_of_infinity() -> Evidence:
    """What the judge made of a Prometheus answer of 1e308: non-finite values and counts."""
    finding = Finding(
        signal="p95",
        value=math.inf,
        threshold=300.0,
        baseline_value=math.nan,
        breached=True,
        severe=True,
        attributable=True,
        confidence=1.0,
        detail="p95 inf ms",
    )
    return Evidence(
        target=TARGET,
        t=10.0,
        impact=Impact.SEVERE,
        attributable=True,
        inconclusive=False,
        findings=(finding,),
        candidate_requests=math.inf,
        baseline_requests=1e308,
        reasons=("p95 inf ms >= 600 ms",),
    )


@pytest.mark.faults
async def test_a_degraded_event_carrying_infinity_is_recorded_as_a_valid_event(
    tmp_path: Path, store_url: str | None, fault_ledger: FaultLedger
) -> None:
    fault_ledger.inputs(1)
    async with running(make_settings(tmp_path / "data", store_url)) as run:
        events = run.journal.events
        assert events is not None
        degraded = EventFactory().target_degraded(_evidence_of_infinity(), clock=Clock.now())
        events.publisher.submit(audit_entry_for(degraded), [degraded])
        run.journal.audit("note", "behind the degraded event", target=TARGET)

        async def recorded() -> bool:
            kinds = await run.kinds()
            return "target.degraded" in kinds and "note" in kinds

        await wait_until(recorded, timeout_s=20, what="the degraded event and the entry behind it")
        for path in ("/", "/api/v1/targets"):
            assert (await run.call("GET", path))[0] == 200, path
    (event,) = [e for e in await _outbox(store_url, tmp_path / "data") if e.event_id == degraded.id]
    validate(dict(event.payload))
    evidence = event.payload["data"]["evidence"]
    # PostgreSQL's jsonb gives the largest double back in all its digits: the same number.
    assert float(evidence["candidate_requests"]) == MAX_FLOAT
    assert float(evidence["findings"][0]["value"]) == MAX_FLOAT
    assert evidence["findings"][0]["baseline_value"] is None
    fault_ledger.observe(records_lost=0)


# --- poison records -------------------------------------------------------------------------------


@pytest.mark.faults
async def test_a_record_the_store_refuses_is_set_aside_counted_audited_and_escalated(
    tmp_path: Path, store_url: str | None, fault_ledger: FaultLedger
) -> None:
    fault_ledger.fault("the store refuses a record (its event id is taken)")
    async with running(make_settings(tmp_path / "data", store_url)) as run:
        events = run.journal.events
        assert events is not None
        factory = EventFactory()
        first = factory.escalation_raised(TARGET, cause="freeze", reasons=("first",), clock=Clock.now())
        events.publisher.submit(audit_entry_for(first), [first])
        # The same event again: the outbox refuses its id, whatever is retried.
        events.publisher.submit(
            AuditEntry(kind="again", summary="the same event again", target=TARGET), [first]
        )
        run.journal.audit("behind", "recorded behind the refused record", target=TARGET)

        async def set_aside() -> bool:
            kinds = await run.kinds()
            return "poison.set_aside" in kinds and "behind" in kinds

        await wait_until(set_aside, timeout_s=20, what="the refused record set aside, the next one recorded")
        kinds = await run.kinds()
        assert "again" not in kinds
        follow_up = next(entry for entry in await run.history() if entry.kind == "poison.set_aside")
        assert follow_up.target == TARGET
        assert follow_up.details["kind"] == "again"
        assert follow_up.details["event_ids"] == [first.id]
        assert "again" in follow_up.summary
        kept = [json.loads(line) for line in (run.data_dir / POISON_FILE).read_text().splitlines()]
        assert [(line["kind"], line["events"][0]["event_id"]) for line in kept] == [("again", first.id)]
        _, metrics = await run.call("GET", "/metrics")
        assert "rollbackd_poison_records_total 1.0" in metrics
        assert (await run.call("GET", "/readyz"))[0] == 200
    escalations = [
        e.payload for e in await _outbox(store_url, tmp_path / "data") if e.type.endswith("escalation.raised")
    ]
    poison = [e for e in escalations if e["data"]["cause"] == "poison-record"]
    assert len(poison) == 1
    validate(dict(poison[0]))
    fault_ledger.observe(records_lost=0, crashes=0)


# --- a store outage after start-up ----------------------------------------------------------------


async def _kinds_in(url: str | None, data_dir: Path) -> list[str]:
    store = open_store(url, data_dir=data_dir)
    await store.open()
    try:
        return [entry.kind for entry in await store.history(limit=100_000)]
    finally:
        await store.close()


async def _outbox(url: str | None, data_dir: Path) -> list[OutboxEvent]:
    store = open_store(url, data_dir=data_dir)
    await store.open()
    try:
        return await store.pending("test-reader")
    finally:
        await store.close()


@pytest.mark.faults
async def test_while_postgresql_is_cut_the_daemon_is_not_ready_does_not_act_and_loses_nothing(
    tmp_path: Path,
    postgres_url: str,
    fault_ledger: FaultLedger,
) -> None:
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        url = postgres_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        assert url != postgres_url
        config = make_settings(tmp_path / "data", url)
        async with running(config) as run:
            await proxy.cut()
            fault_ledger.fault("postgresql cut mid-run")

            async def not_ready() -> bool:
                status, body = await run.call("GET", "/readyz")
                return status == 503 and "store" in body["status"]

            await wait_until(not_ready, timeout_s=20, what="/readyz 503 while the store is cut")
            # During the outage: a steering action to record, and a release the judge wants rolled back.
            assert (await run.call("POST", "/api/v1/freeze"))[0] == 200
            assert (await run.call("DELETE", "/api/v1/freeze"))[0] == 200
            run.metrics.pair = SEVERE

            async def held_back() -> bool:
                _, target = await run.call("GET", f"/api/v1/targets/{TARGET}")
                decision = target["decision"] or {}
                return decision.get("blocked_by") == "store"

            await wait_until(held_back, timeout_s=20, what="the rollback held back because of the store")
            _, target = await run.call("GET", f"/api/v1/targets/{TARGET}")
            assert any(
                "not acting until the audit trail can be written" in r for r in target["decision"]["reasons"]
            )
            assert target["decision"]["rollback"] is False
            status, page = await run.call("GET", "/")
            assert status == 200
            assert "Not acting: " in page
            assert "audit trail cannot be written" in page
            ticks = run.daemon.ticks
            await wait_until(lambda: run.daemon.ticks >= ticks + 5, what="five ticks wanting a rollback")
            actions_while_cut = len(run.cluster.runs)
            assert (await run.call("GET", "/readyz"))[0] == 503
            fault_ledger.observe(actions_on_bad_data=actions_while_cut)
            assert actions_while_cut == 0

            proxy.restore()
            await wait_until(
                lambda: run.daemon.ready, timeout_s=30, what="ready again once the store is back"
            )

            def held_back_entry(entry: AuditEntry) -> bool:
                decision = entry.details.get("decision") or {}
                return bool(decision.get("blocked_by") == "store")

            async def recorded() -> bool:
                history = await run.history()
                freezes = [e for e in history if e.kind == "freeze"]
                escalated = any(held_back_entry(e) and e.kind == "escalation.raised" for e in history)
                return len(freezes) >= 2 and escalated

            await wait_until(recorded, timeout_s=30, what="what was queued during the outage is recorded")
            history = await run.history()
            escalation = next(e for e in history if held_back_entry(e) and e.kind == "escalation.raised")
            assert escalation.details["cause"] == "store"
            fault_ledger.observe(records_lost=2 - min(2, [e.kind for e in history].count("freeze")))
            await wait_until(lambda: len(run.cluster.runs) > 0, timeout_s=30, what="acting resumes")


@pytest.mark.faults
async def test_a_stop_during_a_store_outage_spools_the_queue_and_the_next_start_records_it(
    tmp_path: Path,
    postgres_url: str,
    fault_ledger: FaultLedger,
) -> None:
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        url = postgres_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")
        config = make_settings(tmp_path / "data", url)
        async with running(config) as run:
            await proxy.cut()
            fault_ledger.fault("postgresql cut, then the daemon stopped")
            await wait_until(lambda: not run.daemon.ready, timeout_s=20, what="not ready while cut")
            for n in range(5):
                run.journal.audit("during-outage", f"entry {n}", target=TARGET, details={"n": n})
        # The daemon stopped (as on SIGTERM) with the store still cut.
        spool = tmp_path / "data" / SPOOL_FILE
        spooled = [json.loads(line)["kind"] for line in spool.read_text().splitlines()]
        assert spooled.count("during-outage") == 5
        assert "daemon.stop" in spooled
        proxy.restore()
        async with running(config) as run:

            async def all_there() -> bool:
                history = await run.history()
                numbers = {e.details["n"] for e in history if e.kind == "during-outage"}
                return numbers == set(range(5)) and "daemon.stop" in [e.kind for e in history]

            await wait_until(all_there, timeout_s=30, what="the spooled entries recorded at the next start")
            kinds = await run.kinds()  # in the order things happened
            assert kinds.index("daemon.stop") > max(
                i for i, kind in enumerate(kinds) if kind == "during-outage"
            )
            # In the order they happened; the one whose write was under way at the stop may be
            # there twice (documented: at least once).
            numbers = [e.details["n"] for e in await run.history() if e.kind == "during-outage"]
            assert numbers == sorted(numbers)
            assert set(numbers) == set(range(5))
            await wait_until(lambda: not spool.exists(), timeout_s=60, what="the spool file removed")
        lost = 5 - len(set(numbers))
        fault_ledger.observe(records_lost=lost)
        assert lost == 0


async def test_a_spooled_record_written_before_the_stop_is_taken_as_recorded_not_as_poison(
    tmp_path: Path, store_url: str | None
) -> None:
    """The write under way when the stop came went through, and the record was spooled too: at the
    next start the outbox already holds its event, so it is recorded once and nobody is paged."""
    config = make_settings(tmp_path / "data", store_url)
    event = EventFactory().escalation_raised(TARGET, cause="freeze", reasons=("once",), clock=Clock.now())
    async with running(config) as run:
        assert run.journal.events is not None
        await run.journal.events.publisher.announce(event)
    entry = audit_entry_for(event)
    spool = tmp_path / "data" / SPOOL_FILE
    spool.parent.mkdir(parents=True, exist_ok=True)
    spool.write_text(
        json.dumps(
            {
                "kind": entry.kind,
                "summary": entry.summary,
                "target": entry.target,
                "details": dict(entry.details),
                "at": None,
                "events": [
                    {"event_id": o.event_id, "type": o.type, "subject": o.subject, "payload": dict(o.payload)}
                    for o in [event.to_outbox()]
                ],
            }
        )
        + "\n"
    )
    async with running(config) as run:
        await wait_until(lambda: not spool.exists(), timeout_s=20, what="the spooled record taken")
        kinds = await run.kinds()
        assert kinds.count(entry.kind) == 1
        assert "poison.set_aside" not in kinds
        assert not (tmp_path / "data" / POISON_FILE).exists()
        _, metrics = await run.call("GET", "/metrics")
        assert "rollbackd_poison_records_total 0.0" in metrics
    ids = [e.event_id for e in await _outbox(store_url, tmp_path / "data")]
    assert ids.count(event.id) == 1


# --- storable values: a property of both stores ---------------------------------------------------

#: Any code point, lone surrogates and NUL included.
_text = st.text(
    alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=()), max_size=20
)
_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | _text
_jsonish = st.recursive(
    _leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.faults
@pytest.mark.parametrize("backend_kind", ["sqlite", "postgresql"])
def test_any_jsonish_value_made_storable_is_accepted_by_both_stores(
    tmp_path: Path, backend_kind: str, request: pytest.FixtureRequest, fault_ledger: FaultLedger
) -> None:
    url = None if backend_kind == "sqlite" else str(request.getfixturevalue("postgres_schema"))
    runner = asyncio.Runner()
    store = open_store(url, data_dir=tmp_path / "prop")
    runner.run(store.open())
    try:

        @settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
        @given(details=_jsonish, text=_text)
        def accepted(details: object, text: str) -> None:
            fault_ledger.inputs(1)
            entry = AuditEntry(
                kind=storable(text), summary=storable(text), details={"value": storable(details)}
            )
            event = OutboxEvent(
                event_id=str(uuid.uuid4()),
                type="io.rollbackd.decision.made",
                subject=storable(text),
                payload={"data": storable(details), storable(text): storable(text)},
            )
            stored = runner.run(store.record(entry, [event]))
            assert stored.seq is not None

        accepted()
    finally:
        runner.run(store.close())
        runner.close()


# --- the real process: SIGTERM during an outage ---------------------------------------------------


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}


async def _rollbackd_run(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rollbackd",
        "run",
        "--config",
        str(config),
        cwd=Path(__file__).parent.parent,
        env=_child_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.faults
async def test_sigterm_during_a_postgresql_outage_loses_nothing(
    tmp_path: Path, postgres_url: str, fault_ledger: FaultLedger
) -> None:
    async with TcpProxy("127.0.0.1", 5432) as proxy, aiohttp.ClientSession() as session:
        port = free_port()
        config = tmp_path / "rollbackd.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "interval_s": 0.5,
                    # Nothing listens there: every decision is inconclusive.
                    "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 0.5, "retries": 0},
                    "http": {"host": "127.0.0.1", "port": port},
                    "api": {"allow_unauthenticated_writes": True},
                    "log": {"level": "INFO", "format": "json"},
                    "store": {
                        "url": postgres_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/"),
                        "data_dir": str(tmp_path / "data"),
                        "health_interval_s": 0.5,
                    },
                    "targets": [canary("checkout").model_dump(mode="json", exclude_defaults=True)],
                }
            )
        )
        base = f"http://127.0.0.1:{port}"

        async def readyz() -> int:
            try:
                async with session.get(base + "/readyz") as response:
                    return response.status
            except aiohttp.ClientError:
                return 0

        process = await _rollbackd_run(config)
        try:
            await wait_until(lambda: _is(readyz(), 200), timeout_s=30, what="the first daemon ready")
            await proxy.cut()
            fault_ledger.fault("postgresql cut, then SIGTERM")
            await wait_until(lambda: _is(readyz(), 503), timeout_s=30, what="not ready while cut")
            async with session.post(base + "/api/v1/freeze") as response:
                assert response.status == 200
            process.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0, stderr.decode()[-3000:]
        spooled = [
            json.loads(line)["kind"] for line in (tmp_path / "data" / SPOOL_FILE).read_text().splitlines()
        ]
        assert "freeze" in spooled

        proxy.restore()
        process = await _rollbackd_run(config)
        try:

            async def freeze_recorded() -> bool:
                return "freeze" in await _kinds_in(postgres_url, tmp_path / "data")

            await wait_until(
                freeze_recorded, timeout_s=30, what="the spooled freeze recorded after the restart"
            )
            await wait_until(lambda: _is(readyz(), 200), timeout_s=30, what="the second daemon ready")
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.communicate(), timeout=30)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        assert process.returncode == 0
        kinds = await _kinds_in(postgres_url, tmp_path / "data")
        lost = sum(1 for kind in set(spooled) if kind not in kinds)
        fault_ledger.observe(records_lost=lost)
        assert lost == 0
        assert not (tmp_path / "data" / SPOOL_FILE).exists()


async def _is(status: Awaitable[int], expected: int) -> bool:
    return await status == expected
