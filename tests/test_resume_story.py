"""A rollback taken over tells one story: the run's record in the store, the resumed run and its
events.

In process, with a real store (SQLite, and PostgreSQL as replicas share it), the real canary
abort against kmock's emulated API server over HTTP, and a daemon that is stopped while its
action's scale-down is held by the API server: the record has the weight change (made) and the
scale-down (being made). The held write then goes through, as a real API server may apply it after
its client is gone; the next daemon on the same store finds both changes done, makes none, and
its events continue the first one's story.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kmock
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rollbackd.actions.base import ActionOutcome, ActionResult, Change, ChangeRecorder, merge_changes
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.routers.ingress_nginx import IngressNginxRouter
from rollbackd.actions.steps import ActionSettings
from rollbackd.actions.targets import KubeTargets
from rollbackd.backoff import Backoff
from rollbackd.config.settings import (
    EventsSettings,
    HttpSettings,
    Settings,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.rollbacks import with_prior_changes
from rollbackd.daemon.wiring import open_daemon
from rollbackd.events.build import Announcer, Clock, EventFactory
from rollbackd.events.model import EventType
from rollbackd.kube import KubeClient
from rollbackd.model import Strategy
from rollbackd.run import Phase, RollbackRun
from rollbackd.runrecord import RecordedChange, RunRecord
from rollbackd.store import open_store
from rollbackd.store.base import AuditEntry
from rollbackd.verification import VerificationResult, VerificationStatus
from tests.eventstory import SLO, WALL0, clock, immediate_decision, severe_evidence
from tests.kubefixtures import DEPLOYMENTS, INGRESSES, seed_deployment, seed_ingress, wait_until
from tests.test_daemon import HEALTHY, SEVERE, ScriptedHealth, ScriptedMetrics, canary
from tests.test_events_model import TARGET, decision
from tests.test_faults_restart import WEIGHT, Gate, GatedCluster
from tests.test_store import postgres_schema

__all__ = ["postgres_schema"]  # fixture

NS = "shop"
WEIGHT_FIELD = f"metadata.annotations[{WEIGHT}]"
INGRESS = f"Ingress/{NS}/checkout-canary"
CANARY = f"Deployment/{NS}/checkout-canary"
FAST = ActionSettings(backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=3, availability_timeout_s=10.0,
                      poll_s=0.02)  # fmt: skip


# --- the record and the merge, as values -----------------------------------------------------------


def test_a_field_changed_by_two_processes_is_listed_once_from_first_before_to_last_after() -> None:
    weight_a = Change(INGRESS, WEIGHT_FIELD, "20", "0")
    removal = Change(INGRESS, "metadata.annotations[canary-by-header]", "x", None)
    weight_b = Change(INGRESS, WEIGHT_FIELD, "0", None)
    scale = Change(CANARY, "spec.replicas", 1, 0)

    merged = merge_changes([weight_a, removal], [scale, weight_b, scale])

    assert merged == (Change(INGRESS, WEIGHT_FIELD, "20", None), removal, scale)
    assert merge_changes() == ()


def test_a_run_record_survives_the_store_and_keeps_every_change_in_order() -> None:
    decided = datetime(2026, 12, 6, 14, 0, 0, 123456, tzinfo=UTC)
    run = RollbackRun(
        key="shop/checkout",
        mode="immediate",
        decided_at=1000.0,
        decided_wall=decided,
        reasons=("error rate 30.00% vs SLO 1.00%",),
        bad_revision=7,
        started_event_id="ev-1",
        started_event={"id": "ev-1", "type": "io.rollbackd.rollback.started"},
        prior_changes=(RecordedChange(Change(INGRESS, WEIGHT_FIELD, "20", "0"), made=False),),
    )
    run.changes_made.append(Change(CANARY, "spec.replicas", 1, 0))
    run.changes_pending = (Change(INGRESS, "metadata.annotations[canary-by-header]", "x", None),)

    state = run.record().to_state()
    back = RunRecord.from_state(state, now=decided + timedelta(hours=1), new_id="unused")

    assert back == run.record()
    assert (back.run_id, back.decided_at, back.reasons, back.bad_revision) == (
        run.run_id,
        decided,
        run.reasons,
        7,
    )
    assert [(r.change.field, r.made) for r in back.changes] == [
        (WEIGHT_FIELD, False),
        ("spec.replicas", True),
        ("metadata.annotations[canary-by-header]", False),
    ]
    assert back.active
    assert back.started_event_id == "ev-1"


def test_a_record_from_before_run_ids_is_resumed_as_a_run_decided_now() -> None:
    now = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)
    record = RunRecord.from_state({"phase": "verifying", "mode": "controlled", "bad_revision": 3}, now=now,
                                  new_id="fresh")  # fmt: skip
    assert (record.run_id, record.decided_at, record.mode, record.bad_revision) == (
        "fresh",
        now,
        "controlled",
        3,
    )
    assert record.changes == ()
    assert record.started_event is None
    with pytest.raises(ValueError, match="time zone"):
        RunRecord.from_state({"run_id": "r", "phase": "acting", "decided_at": "2026-12-06T14:00:00"}, now=now,
                             new_id="x")  # fmt: skip


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_RECORD_KEYS = ("run_id", "phase", "decided_at", "mode", "reasons", "bad_revision", "started_event_id",
                "started_event", "changes")


_DECIDED_AT = st.sampled_from(
    ["2026-12-06T14:00:00+00:00", "9999-12-31T23:59:59+14:00", "0001-01-01T00:00:00-12:00", ""]
)


@given(
    st.dictionaries(st.sampled_from(_RECORD_KEYS) | st.text(max_size=12), _JSON, max_size=10)
    | st.fixed_dictionaries(
        {"run_id": st.text(max_size=8), "phase": st.text(max_size=8), "decided_at": _DECIDED_AT},
        optional=dict.fromkeys(_RECORD_KEYS[3:], _JSON),
    )
)
def test_a_damaged_record_is_read_back_or_refused_never_anything_else(state: dict[str, Any]) -> None:
    """The daemon resumes from what the store holds; a damaged record is refused with one of the
    errors the resume path reports (ValueError, KeyError, TypeError), never a crash of the tick."""
    now = datetime(2026, 12, 6, 15, 0, tzinfo=UTC)
    try:
        record = RunRecord.from_state(state, now=now, new_id="fresh")
    except (ValueError, KeyError, TypeError):
        return
    assert record.decided_at.tzinfo is not None
    record.merged_changes()
    RunRecord.from_state(record.to_state(), now=now, new_id="unused")


def test_a_resumed_action_that_found_everything_done_reports_the_whole_run() -> None:
    prior = (
        RecordedChange(Change(INGRESS, WEIGHT_FIELD, "20", "0"), made=True),
        RecordedChange(Change(CANARY, "spec.replicas", 1, 0), made=False),
    )
    found_done = ActionResult("canary-abort", "shop/checkout", ActionOutcome.ALREADY_DONE, "already aborted")

    told = with_prior_changes(found_done, prior)

    assert told.outcome is ActionOutcome.DONE
    assert told.changes == (Change(INGRESS, WEIGHT_FIELD, "20", "0"), Change(CANARY, "spec.replicas", 1, 0))
    assert "the 2 changes it recorded are listed too" in told.reason
    refused = ActionResult("canary-abort", "shop/checkout", ActionOutcome.REFUSED, "the Ingress is gone")
    assert with_prior_changes(refused, prior).outcome is ActionOutcome.FAILED  # something was changed
    assert with_prior_changes(found_done, ()) is found_done


# --- the action writes each change down before making it ---------------------------------------------


class Recorder:
    """A :class:`ChangeRecorder` that looks at the emulated cluster whenever it is told."""

    def __init__(self, emu: GatedCluster, *, refuse_after: int | None = None) -> None:
        self.emu = emu
        self.refuse_after = refuse_after
        self.told: list[tuple[str, tuple[Change, ...], dict[str, Any]]] = []

    def _world(self) -> dict[str, Any]:
        ingress = self.emu.read(INGRESSES, NS, "checkout-canary") or {}
        deployment = self.emu.read(DEPLOYMENTS, NS, "checkout-canary") or {}
        return {
            "weight": ingress["metadata"]["annotations"].get(WEIGHT),
            "replicas": deployment["spec"]["replicas"],
        }

    async def intend(self, changes: Any) -> bool:
        intents = sum(1 for what, _, _ in self.told if what == "intend")
        self.told.append(("intend", tuple(changes), self._world()))
        return self.refuse_after is None or intents < self.refuse_after

    async def made(self, intended: Any, made: Any) -> None:
        self.told.append(("made", tuple(made), self._world()))


@pytest.fixture
async def emu() -> AsyncIterator[GatedCluster]:
    async with GatedCluster() as cluster, kmock.Server(cluster):
        seed_deployment(cluster, NS, "checkout-stable", replicas=3, image="shop/web:1.4")
        seed_deployment(cluster, NS, "checkout-canary", replicas=1, image="shop/web:1.5",
                        labels={"app": "checkout-canary"})  # fmt: skip
        seed_ingress(cluster, NS, "checkout-canary", service="checkout-canary", host="shop.example.com",
                     canary_weight=20)  # fmt: skip
        yield cluster


@contextlib.asynccontextmanager
async def client(emu: GatedCluster) -> AsyncIterator[KubeClient]:
    async with KubeClient.for_host(str(emu.url), request_timeout_s=30.0) as kube:
        yield kube


def abort(kube: KubeClient) -> CanaryAbort:
    router = IngressNginxRouter(kube=kube, namespace=NS, ingress="checkout-canary")
    return CanaryAbort(kube=kube, target="shop/checkout", namespace=NS, router=router,
                       canary="checkout-canary", stable="checkout-stable", settings=FAST)  # fmt: skip


async def test_each_step_is_recorded_before_the_api_server_sees_it(emu: GatedCluster) -> None:
    recorder: ChangeRecorder = (watcher := Recorder(emu))
    async with client(emu) as kube:
        result = await abort(kube).run(dry_run=False, recorder=recorder)

    assert result.outcome is ActionOutcome.DONE, result.reason
    weight, scale = Change(INGRESS, WEIGHT_FIELD, "20", "0"), Change(CANARY, "spec.replicas", 1, 0)
    assert watcher.told == [
        ("intend", (weight,), {"weight": "20", "replicas": 1}),  # told before the write
        ("made", (weight,), {"weight": "0", "replicas": 1}),
        ("intend", (scale,), {"weight": "0", "replicas": 1}),
        ("made", (scale,), {"weight": "0", "replicas": 0}),
    ]


async def test_a_change_that_cannot_be_recorded_is_not_made(emu: GatedCluster) -> None:
    async with client(emu) as kube:
        result = await abort(kube).run(dry_run=False, recorder=Recorder(emu, refuse_after=1))

    assert result.outcome is ActionOutcome.FAILED
    assert "could not record the next change before making it" in result.reason
    assert result.changes == (Change(INGRESS, WEIGHT_FIELD, "20", "0"),)  # the first step only
    assert (emu.read(DEPLOYMENTS, NS, "checkout-canary") or {})["spec"]["replicas"] == 1
    assert [change[1:] for change in emu.changes] == [("weight", "20", "0")]


# --- a daemon stopped mid-action, the next one on the same store ------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    """The store both daemons share: SQLite (a restart) or PostgreSQL (as replicas share it)."""
    return None if request.param == "sqlite" else str(request.getfixturevalue("postgres_schema"))


@contextlib.asynccontextmanager
async def daemon(config: Settings, emu: GatedCluster, metrics: ScriptedMetrics) -> AsyncIterator[Daemon]:
    async with (
        client(emu) as kube,
        open_daemon(
            config,
            metrics_source=metrics,
            health_source=ScriptedHealth(),
            targets=KubeTargets(kube=kube, settings=config, action_settings=FAST),
        ) as running,
    ):
        yield running


async def stored(config: Settings, key: str) -> tuple[list[AuditEntry], Mapping[str, Any] | None]:
    store = open_store(config.store.url, data_dir=Path(config.store.data_dir))
    await store.open()
    try:
        return await store.history(target=key), await store.get_state(f"rollback:{key}")
    finally:
        await store.close()


async def test_a_rollback_resumed_from_its_record_continues_the_same_story(
    emu: GatedCluster, store_url: str | None, tmp_path: Path
) -> None:
    config = Settings(
        interval_s=0.1,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(url=store_url, data_dir=str(tmp_path / "data")),
        verification=VerificationSettings(window_s=0.5),
        events=EventsSettings(kubernetes_events=False),
        targets=(canary("checkout"),),
    )
    key = "shop/checkout"
    held = Gate("PATCH", DEPLOYMENTS, "checkout-canary", subresource="scale")
    emu.gates.append(held)

    # The first daemon decides, sets the weight to 0 and is stopped while the scale-down is held.
    async with daemon(config, emu, ScriptedMetrics(SEVERE)) as first:
        await wait_until(held.arrived.is_set, timeout_s=20, what="the scale-down")
        first_run = first.rollbacks.runs[key]
    _, record = await stored(config, key)
    assert record is not None
    assert record["run_id"] == first_run.run_id
    assert [(c["field"], c["before"], c["after"], c["made"]) for c in record["changes"]] == [
        (WEIGHT_FIELD, "20", "0", True),
        ("spec.replicas", 1, 0, False),  # being made when the daemon stopped
    ]
    # The held write went through after all, as an API server may apply one whose client is gone.
    held.released.set()
    emu.update(DEPLOYMENTS, NS, "checkout-canary", {"spec": {"replicas": 0}})
    restarted = datetime.now(UTC)

    # The next one (traffic is back on the stable: no new decision) takes the run over.
    async with daemon(config, emu, ScriptedMetrics(HEALTHY)) as second:
        await wait_until(lambda: (run := second.rollbacks.runs.get(key)) is not None and not run.phase.active,
                         timeout_s=20, what="the resumed rollback's verdict")  # fmt: skip
        run = second.rollbacks.runs[key]
    assert run.resumed
    assert run.phase is Phase.VERIFIED
    assert run.run_id == first_run.run_id

    history, record = await stored(config, key)
    assert record is None  # the run is over
    assert [c[1:] for c in emu.changes] == [("weight", "20", "0")]  # the second daemon changed nothing

    def of(kind: str) -> list[Mapping[str, Any]]:
        return [entry.details for entry in history if entry.kind == kind]

    (started,) = of("rollback.started")  # the first daemon's, not published again
    (completed,) = of("rollback.completed")
    (verified,) = of("rollback.verified")
    assert started["reasons"]
    assert started["run_id"] == first_run.run_id
    decided_at = datetime.fromisoformat(started["decided_at"])
    assert decided_at < restarted
    expected = [
        {"object": INGRESS, "field": WEIGHT_FIELD, "before": "20", "after": "0"},
        {"object": CANARY, "field": "spec.replicas", "before": 1, "after": 0},
    ]
    for event in (completed, verified):
        assert event["run_id"] == first_run.run_id
        assert datetime.fromisoformat(event["decided_at"]) == decided_at
        assert event["duration_s"] >= (restarted - decided_at).total_seconds()
        assert event["action"]["outcome"] == "done"
        assert event["action"]["changes"] == expected


# --- the events of a run taken over ---------------------------------------------------------------


def taken_over(original: RollbackRun, *, loop_now: float, elapsed_s: float) -> RollbackRun:
    """``original`` as another process (another loop clock) resumes it ``elapsed_s`` after the
    decision, its action found done."""
    run = RollbackRun(
        key=original.key,
        mode=original.mode,
        decided_at=loop_now - elapsed_s,
        resumed=True,
        run_id=original.run_id,
        decided_wall=original.decided_wall,
        reasons=original.reasons,
        bad_revision=original.bad_revision,
    )
    run.action = with_prior_changes(
        ActionResult("canary-abort", original.key, ActionOutcome.ALREADY_DONE, "already aborted"),
        (RecordedChange(Change(INGRESS, WEIGHT_FIELD, "20", "0"), made=True),),
    )
    run.acted_at, run.phase = loop_now, Phase.VERIFYING
    return run


def test_a_run_taken_over_is_announced_as_the_same_run_from_the_original_decision() -> None:
    factory = EventFactory()
    # The first process: decided at loop time 1000 (WALL0 on the wall clock), announced the start.
    original = RollbackRun(
        key=TARGET,
        mode="immediate",
        decided_at=1000.0,
        decided_wall=WALL0,
        reasons=("30% errors",),
        bad_revision=4,
    )
    (started,) = Announcer(factory=factory, target=TARGET).on_run(
        original, clock=clock(1000.0), decision=immediate_decision(TARGET, 1000.0), strategy=Strategy.CANARY
    )
    # The next process, whose loop clock reads 50 when the wall clock reads WALL0 + 30 s.
    later = Clock(wall=WALL0 + timedelta(seconds=30), loop=50.0)
    run = taken_over(original, loop_now=50.0, elapsed_s=30.0)

    told = Announcer(factory=factory, target=TARGET, slo=SLO)
    told.resume(run.run_id, announced={EventType.ROLLBACK_STARTED}, started=started)
    in_progress = decision(50.0, severe_evidence(TARGET, 50.0), blocked_by="rollback-in-progress")
    assert told.on_decision(in_progress, hold=None, clock=later) == []  # the run tells the story
    (completed,) = told.on_run(run, clock=later)  # rollback.started is not told again
    data = completed.to_json()["data"]
    assert completed.short_type == "rollback.completed"
    assert (data["run_id"], data["decided_at"], data["duration_s"]) == (
        original.run_id,
        started.to_json()["data"]["decided_at"],
        30.0,
    )
    assert [(c["field"], c["before"], c["after"]) for c in data["action"]["changes"]] == [
        (WEIGHT_FIELD, "20", "0")
    ]

    run.verification = VerificationResult(VerificationStatus.VERIFIED, ("rollback verified: fine",))
    run.phase, run.finished_at = Phase.VERIFIED, 60.0
    (verified,) = told.on_run(run, clock=Clock(wall=WALL0 + timedelta(seconds=40), loop=60.0))
    assert verified.to_json()["data"]["duration_s"] == 40.0
    assert verified.to_json()["data"]["decided_at"] == started.to_json()["data"]["decided_at"]

    # Had the start not been found in the audit log, it is told once, as it was: the same id.
    again = Announcer(factory=factory, target=TARGET, slo=SLO)
    again.resume(run.run_id, announced=set(), started=started)
    fresh = taken_over(original, loop_now=50.0, elapsed_s=30.0)
    events = again.on_run(fresh, clock=later)
    assert [e.short_type for e in events] == ["rollback.started", "rollback.completed"]
    assert events[0] == started
    assert again.on_run(fresh, clock=later) == []
    # From a record without the event (written before run ids), a new one tells the record's reasons.
    bare = Announcer(factory=factory, target=TARGET)
    bare.resume(run.run_id, announced=set())
    rebuilt = bare.on_run(taken_over(original, loop_now=50.0, elapsed_s=30.0), clock=later)[0].to_json()[
        "data"
    ]
    assert (rebuilt["reasons"], rebuilt["from_revision"], rebuilt["run_id"]) == (
        ["30% errors"],
        4,
        original.run_id,
    )
