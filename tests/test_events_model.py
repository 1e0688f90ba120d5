"""The events subscribers read: CloudEvents fields, one data model per type, the checked-in JSON
Schemas (and their drift from the code), and which ticks are news (the announcer)."""

from __future__ import annotations

import importlib
import json
import pkgutil
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import rollbackd.actions
from rollbackd.actions.base import ActionOutcome, ActionResult, GitOpsHold
from rollbackd.decision.lifetime import Lifetime, Operator, advance
from rollbackd.events import schemas
from rollbackd.events.build import Announcer, Clock, EventFactory
from rollbackd.events.model import (
    CloudEvent,
    EventFormatError,
    EventType,
    TargetState,
    state_after,
    status_of,
)
from rollbackd.events.publisher import audit_entry_for
from rollbackd.model import Decision, Evidence, Hold, Impact, Outcome, Strategy
from rollbackd.releases import Release
from rollbackd.run import Phase, RollbackRun
from rollbackd.verification import VerificationResult, VerificationStatus
from tests.eventstory import SLO, clock, healthy_evidence, immediate_decision, rollback_story, severe_evidence

SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
TARGET = "shop/checkout"
SUSPENDED = GitOpsHold(
    reconciler="argocd", object="Application/argocd/shop", api_version="argoproj.io/v1alpha1",
    reconciles=("Deployment/shop/checkout",), field="spec.syncPolicy.automated",
    previous={"prune": True, "selfHeal": True}, suspended=True,
    resume="kubectl -n argocd patch applications.argoproj.io shop --type merge -p '...'",
)


def every_type() -> list[CloudEvent]:
    """One event of each type, from the real builders."""
    factory = EventFactory(source="/rollbackd/test")
    story = rollback_story(TARGET, factory=factory)
    c = clock(1400.0)
    failed_run = RollbackRun(key=TARGET, mode="controlled", decided_at=1300.0, phase=Phase.ACTION_FAILED)
    failed_run.action = ActionResult(
        action="deployment-undo",
        target=TARGET,
        outcome=ActionOutcome.FAILED,
        reason="PATCH deployments/checkout: 500 InternalError",
        from_revision=7,
        to_revision=6,
    )
    failed_run.finished_at = 1302.0
    verify_failed = RollbackRun(
        key=TARGET, mode="immediate", decided_at=1000.0, phase=Phase.VERIFICATION_FAILED
    )
    verify_failed.verification = VerificationResult(
        VerificationStatus.FAILED,
        ("error rate still breaches the SLO after the rollback",),
        error_rate=0.08,
        requests=5000.0,
        elapsed_s=60.0,
    )
    verify_failed.finished_at = 1065.0
    hold = Hold(until=1600.0, reason="fix-forward", set_at=1390.0)
    accepted, _ = advance(Lifetime(started_at=100.0, revision=7), 1700.0, accept_after_s=0.0, quiet=True,
                          operator=Operator(by="alice", reason="known slow migration"))
    blocked = Decision(
        target=TARGET,
        t=1400.0,
        outcome=Outcome.NONE,
        rollback=False,
        escalate=True,
        blocked_by="rollback-risk",
        reasons=("severe breach, but rollback risk exceeds impact (release marked high-risk)",),
        evidence=severe_evidence(TARGET, 1400.0),
    )
    return [
        *story,
        factory.rollback_failed(failed_run, clock=c),
        factory.verification_failed(verify_failed, clock=c, slo=SLO),
        factory.escalation_raised(
            TARGET, cause="rollback-risk", reasons=blocked.reasons, decision=blocked, clock=c
        ),
        factory.hold_set(TARGET, hold, clock=c),
        factory.gitops_suspended(failed_run, SUSPENDED, previous={"prune": True, "selfHeal": True}, clock=c),
        factory.hold_expired(
            TARGET, hold, still_breaching=True, evidence=severe_evidence(TARGET, 1600.0), clock=clock(1600.0)
        ),
        factory.release_accepted(TARGET, accepted, clock=clock(1700.0)),
        factory.release_started(
            Release(id="new-checkout-on", target=TARGET, kind="flag", started_at=c.at(1390.0),
                    description="new_checkout turned on", details={"flag": "new_checkout"}, who="ci"),
            clock=c,
        ),
    ]


def test_one_event_of_every_type_is_built() -> None:
    assert sorted(e.short_type for e in every_type()) == sorted(t.value for t in EventType)


def test_events_carry_valid_cloudevents_attributes() -> None:
    events = every_type()
    assert len({e.id for e in events}) == len(events)  # unique ids
    for event in events:
        body = event.to_json()
        assert body["specversion"] == "1.0"
        assert body["source"] == "/rollbackd/test"
        assert re.fullmatch(r"io\.rollbackd\.[a-z]+\.[a-z]+", body["type"])
        assert body["subject"] == TARGET
        assert body["datacontenttype"] == "application/json"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["time"])
        assert body["data"]["target"] == TARGET
        assert (body["data"]["namespace"], body["data"]["name"]) == ("shop", "checkout")
        assert body["data"]["summary"]
        json.dumps(body, allow_nan=False)  # strictly valid JSON


def test_every_event_validates_against_its_checked_in_schema() -> None:
    for event in every_type():
        schema = json.loads((SCHEMAS_DIR / f"{event.short_type}.json").read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.Draft202012Validator(schema).validate(event.to_json())


def test_a_schema_rejects_an_event_of_another_type_or_without_its_data() -> None:
    started, completed = rollback_story()[2:4]
    schema = json.loads((SCHEMAS_DIR / "rollback.started.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(completed.to_json(), schema)
    broken = started.to_json()
    del broken["data"]["decided_at"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_checked_in_schemas_match_the_models() -> None:
    problems = schemas.drift(SCHEMAS_DIR)
    assert problems == [], "regenerate with: python -m rollbackd.events.schemas --write docs/schemas"


def test_drift_is_detected(tmp_path: Path) -> None:
    schemas.write(tmp_path)
    assert schemas.drift(tmp_path) == []
    stale = tmp_path / "hold.set.json"
    stale.write_text(stale.read_text().replace('"remaining_s"', '"remaining"'))
    (tmp_path / "rollback.exploded.json").write_text("{}")
    (tmp_path / "hold.expired.json").unlink()
    assert sorted(schemas.drift(tmp_path)) == sorted(
        [
            f"{tmp_path / 'hold.set.json'}: differs from the models",
            f"{tmp_path / 'hold.expired.json'}: missing",
            f"{tmp_path / 'rollback.exploded.json'}: no such event type",
        ]
    )
    assert schemas.main(["--check", str(tmp_path)]) == 1
    assert schemas.main(["--write", str(tmp_path)]) == 0
    assert schemas.main(["--check", str(tmp_path)]) == 1  # the extra file is still there
    (tmp_path / "rollback.exploded.json").unlink()
    assert schemas.main(["--check", str(tmp_path)]) == 0


def test_events_round_trip_through_json() -> None:
    for event in every_type():
        parsed = CloudEvent.from_json(json.loads(json.dumps(event.to_json())))
        assert parsed == event
        assert type(parsed.data) is type(event.data)


def test_parsing_ignores_unknown_fields_and_rejects_foreign_events() -> None:
    body = rollback_story()[0].to_json()
    body["data"]["added_in_a_later_version"] = 1
    body["traceparent"] = "00-abc-def-01"
    assert CloudEvent.from_json(body).short_type == "target.degraded"
    with pytest.raises(EventFormatError, match="not a rollbackd event type"):
        CloudEvent.from_json({**body, "type": "com.example.other"})
    with pytest.raises(EventFormatError, match="invalid"):
        CloudEvent.from_json({**body, "data": {"summary": "no target"}})


def test_degraded_event_carries_values_against_thresholds() -> None:
    degraded = rollback_story()[0]
    data = degraded.to_json()["data"]
    assert data["impact"] == "severe"
    error_rate = next(f for f in data["evidence"]["findings"] if f["signal"] == "error_rate")
    assert error_rate | {"detail": ""} == {
        "signal": "error_rate",
        "unit": "ratio",
        "value": 0.12,
        "threshold": 0.01,
        "baseline_value": 0.002,
        "breached": True,
        "severe": True,
        "attributable": True,
        "confidence": 0.999,
        "conclusion": "breach",
        "detail": "",
        "since": "2026-11-24T02:59:50Z",
        "attribution": "attributable",
    }
    assert data["evidence"]["attribution"] == "attributable"
    assert "error rate 12.00% vs SLO 1.00%" in degraded.summary


def test_rollback_story_is_announced_in_order_with_durations_and_revisions() -> None:
    events = rollback_story()
    assert [e.short_type for e in events] == [
        "target.degraded",
        "decision.made",
        "rollback.started",
        "rollback.completed",
        "rollback.verified",
    ]
    started, completed, verified = (e.to_json()["data"] for e in events[2:])
    assert started["mode"] == "immediate"
    assert started["from_revision"] == 7
    assert started["decided_at"] == "2026-11-24T03:00:00Z"
    assert completed["duration_s"] == 5.0
    assert completed["action"]["changes"][1] == {
        "object": "Deployment/shop/checkout-canary",
        "field": "spec.replicas",
        "before": 2,
        "after": 0,
    }
    assert verified["duration_s"] == 305.0
    assert verified["within_runbook_target"] is True
    assert verified["verification"]["slo"] == {"max_error_rate": 0.01, "max_p95_ms": 500.0}
    assert [state_after(e) for e in events] == [
        TargetState.DEGRADED,
        TargetState.ROLLING_BACK,
        TargetState.ROLLING_BACK,
        TargetState.VERIFYING,
        TargetState.ROLLED_BACK,
    ]


def test_status_is_the_state_after_the_latest_event() -> None:
    verified = rollback_story()[-1]
    assert status_of(verified) == {
        "subject": TARGET,
        "state": "rolled-back",
        "summary": verified.summary,
        "time": "2026-11-24T03:05:05Z",
        "last_event": {"id": verified.id, "type": "io.rollbackd.rollback.verified"},
    }


def test_audit_entry_of_an_event_keeps_its_id_and_data() -> None:
    event = rollback_story()[2]
    entry = audit_entry_for(event)
    assert (entry.kind, entry.target, entry.summary) == ("rollback.started", TARGET, event.summary)
    assert entry.details["event_id"] == event.id
    assert entry.details["mode"] == "immediate"


def test_clock_maps_loop_time_to_wall_time() -> None:
    c = Clock(wall=datetime(2026, 1, 1, 12, 0, tzinfo=UTC), loop=500.0)
    assert c.at(560.0) == datetime(2026, 1, 1, 12, 1, tzinfo=UTC)
    assert c.at(440.0) == datetime(2026, 1, 1, 11, 59, tzinfo=UTC)
    assert c.maybe(None) is None
    with pytest.raises(ValueError, match="timezone"):
        Clock(wall=datetime(2026, 1, 1), loop=0.0)


# --- the announcer: news only ---------------------------------------------------------------------


def decision(
    t: float, evidence: Evidence, *, outcome: Outcome = Outcome.NONE, rollback: bool = False, **extra: Any
) -> Decision:
    return Decision(
        target=TARGET,
        t=t,
        outcome=outcome,
        rollback=rollback,
        reasons=(f"reason at {t:g}",),
        evidence=evidence,
        **extra,
    )


def inconclusive(t: float) -> Evidence:
    return Evidence(target=TARGET, t=t, impact=Impact.NONE, attributable=False, inconclusive=True)


def kinds(events: list[CloudEvent]) -> list[str]:
    return [e.short_type for e in events]


def test_announcer_tells_only_what_changed() -> None:
    a = Announcer(factory=EventFactory(), target=TARGET)
    assert kinds(a.on_decision(decision(10, healthy_evidence(TARGET, 10)), hold=None, clock=clock(10))) == [
        "decision.made"
    ]
    assert a.on_decision(decision(20, healthy_evidence(TARGET, 20)), hold=None, clock=clock(20)) == []
    waiting = decision(30, severe_evidence(TARGET, 30), outcome=Outcome.CONTROLLED, waiting_since=25.0)
    assert kinds(a.on_decision(waiting, hold=None, clock=clock(30))) == ["target.degraded", "decision.made"]
    # Still waiting (other reasons, same verdict), then a gap in the data: nothing new.
    assert (
        a.on_decision(
            decision(40, severe_evidence(TARGET, 40), outcome=Outcome.CONTROLLED), hold=None, clock=clock(40)
        )
        == []
    )
    gap = decision(50, inconclusive(50), outcome=Outcome.INCONCLUSIVE)
    assert kinds(a.on_decision(gap, hold=None, clock=clock(50))) == ["decision.made"]
    # The breach goes on after the gap: the same episode, not a new degradation.
    assert kinds(a.on_decision(immediate_decision(TARGET, 60), hold=None, clock=clock(60))) == [
        "decision.made"
    ]
    # Recovery, then a new breach: a new episode.
    a.on_decision(decision(70, healthy_evidence(TARGET, 70)), hold=None, clock=clock(70))
    assert kinds(a.on_decision(immediate_decision(TARGET, 80), hold=None, clock=clock(80))) == [
        "target.degraded",
        "decision.made",
    ]


def test_announcer_raises_an_escalation_once_per_cause() -> None:
    a = Announcer(factory=EventFactory(), target=TARGET)
    risky = decision(10, severe_evidence(TARGET, 10), escalate=True, blocked_by="rollback-risk")
    events = a.on_decision(risky, hold=None, clock=clock(10))
    assert kinds(events) == ["target.degraded", "decision.made", "escalation.raised"]
    data = events[-1].to_json()["data"]
    assert data["cause"] == "rollback-risk"
    assert data["decision"]["blocked_by"] == "rollback-risk"
    assert data["evidence"]["impact"] == "severe"
    assert (
        a.on_decision(
            decision(20, severe_evidence(TARGET, 20), escalate=True, blocked_by="rollback-risk"),
            hold=None,
            clock=clock(20),
        )
        == []
    )
    frozen = decision(30, severe_evidence(TARGET, 30), escalate=True, blocked_by="freeze")
    assert kinds(a.on_decision(frozen, hold=None, clock=clock(30))) == ["decision.made", "escalation.raised"]


def test_announcer_tells_when_a_hold_is_set_and_when_it_expires() -> None:
    a = Announcer(factory=EventFactory(), target=TARGET)
    hold = Hold(until=100.0, reason="fix-forward", set_at=10.0)
    held = decision(10, severe_evidence(TARGET, 10), blocked_by="hold")
    events = a.on_decision(held, hold=hold, clock=clock(10))
    assert kinds(events) == ["target.degraded", "hold.set", "decision.made"]
    hold_data = events[1].to_json()["data"]
    assert hold_data["remaining_s"] == 90.0
    assert hold_data["hold"]["until"] == (clock(10).wall + timedelta(seconds=90)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    # Re-read from an RFC 3339 annotation, the same hold comes back a few milliseconds off.
    same = Hold(until=100.0004, reason="fix-forward", set_at=10.0)
    assert (
        a.on_decision(
            decision(20, severe_evidence(TARGET, 20), blocked_by="hold"), hold=same, clock=clock(20)
        )
        == []
    )
    expired = decision(100, severe_evidence(TARGET, 100), outcome=Outcome.CONTROLLED, rollback=True)
    events = a.on_decision(expired, hold=same, clock=clock(100))
    assert kinds(events) == ["hold.expired", "decision.made"]
    assert events[0].to_json()["data"]["still_breaching"] is True
    assert state_after(events[0]) is TargetState.DEGRADED
    assert (
        a.on_decision(
            decision(110, severe_evidence(TARGET, 110), outcome=Outcome.CONTROLLED, rollback=True),
            hold=same,
            clock=clock(110),
        )
        == []
    )
    # A later ETA is a new hold.
    later = Hold(until=400.0, reason="fix-forward", set_at=120.0)
    assert kinds(
        a.on_decision(
            decision(120, severe_evidence(TARGET, 120), outcome=Outcome.CONTROLLED, rollback=True),
            hold=later,
            clock=clock(120),
        )
    ) == ["hold.set"]


def test_a_hold_first_seen_after_its_eta_is_told_as_expired() -> None:
    a = Announcer(factory=EventFactory(), target=TARGET)
    past = Hold(until=100.0)
    events = a.on_decision(
        decision(150, severe_evidence(TARGET, 150), outcome=Outcome.CONTROLLED, rollback=True),
        hold=past,
        clock=clock(150),
    )
    assert kinds(events) == ["target.degraded", "hold.expired", "decision.made"]


def test_a_dry_run_rollback_leaves_the_target_degraded() -> None:
    dry = decision(10, severe_evidence(TARGET, 10), outcome=Outcome.IMMEDIATE, rollback=True, dry_run=True)
    made = EventFactory().decision_made(dry, clock=clock(10))
    assert "dry-run" in made.summary
    assert state_after(made) is TargetState.DEGRADED


def test_a_hold_that_ends_after_the_breach_is_told_as_expired_with_the_breach_over() -> None:
    a = Announcer(factory=EventFactory(), target=TARGET)
    hold = Hold(until=100.0)
    a.on_decision(decision(10, severe_evidence(TARGET, 10), blocked_by="hold"), hold=hold, clock=clock(10))
    a.on_decision(decision(50, healthy_evidence(TARGET, 50)), hold=hold, clock=clock(50))
    # The daemon drops an expired hold once the breach is over: the framework sees none.
    events = a.on_decision(decision(110, healthy_evidence(TARGET, 110)), hold=None, clock=clock(110))
    assert kinds(events) == ["hold.expired"]
    assert events[0].to_json()["data"]["still_breaching"] is False


def test_announcer_tells_every_phase_of_a_run_once_even_when_phases_are_skipped() -> None:
    a = Announcer(factory=EventFactory(), target=TARGET, slo=SLO)
    run = RollbackRun(key=TARGET, mode="immediate", decided_at=100.0)
    started = a.on_run(
        run, clock=clock(100), decision=immediate_decision(TARGET, 100), strategy=Strategy.CANARY
    )
    assert kinds(started) == ["rollback.started"]
    assert started[0].to_json()["data"]["action"] == "canary-abort"
    assert a.on_run(run, clock=clock(101)) == []
    # The action and the whole verification happened between two looks.
    run.action = ActionResult(action="canary-abort", target=TARGET, outcome=ActionOutcome.DONE, reason="done")
    run.acted_at = 103.0
    run.verification = VerificationResult(VerificationStatus.FAILED, ("P95 still breaches the SLO",))
    run.phase = Phase.VERIFICATION_FAILED
    run.finished_at = 400.0
    events = a.on_run(run, clock=clock(400))
    assert kinds(events) == ["rollback.completed", "verification.failed", "escalation.raised"]
    assert events[2].to_json()["data"]["cause"] == "verification-failed"
    assert events[1].to_json()["data"]["duration_s"] == 300.0
    assert a.on_run(run, clock=clock(401)) == []
    # A new run of the same target starts afresh.
    refused = RollbackRun(key=TARGET, mode="controlled", decided_at=900.0, phase=Phase.REFUSED)
    refused.action = ActionResult(
        action="deployment-undo",
        target=TARGET,
        outcome=ActionOutcome.REFUSED,
        reason="no earlier revision to go back to",
    )
    events = a.on_run(refused, clock=clock(900))
    assert kinds(events) == ["rollback.started", "rollback.failed", "escalation.raised"]
    assert events[1].to_json()["data"]["refused"] is True
    assert events[2].to_json()["data"]["cause"] == "rollback-refused"


def test_decisions_during_a_rollback_are_not_news_and_no_traffic_afterwards_neither() -> None:
    a = Announcer(factory=EventFactory(), target=TARGET, slo=SLO)
    decided = immediate_decision(TARGET, 100)
    assert kinds(a.on_decision(decided, hold=None, clock=clock(100))) == ["target.degraded", "decision.made"]
    run = RollbackRun(key=TARGET, mode="immediate", decided_at=100.0)
    assert kinds(a.on_run(run, clock=clock(100), decision=decided)) == ["rollback.started"]
    in_progress = decision(110, severe_evidence(TARGET, 110), blocked_by="rollback-in-progress")
    assert a.on_decision(in_progress, hold=None, clock=clock(110)) == []
    run.action = ActionResult(action="canary-abort", target=TARGET, outcome=ActionOutcome.DONE, reason="done")
    run.acted_at, run.phase = 112.0, Phase.VERIFYING
    assert kinds(a.on_run(run, clock=clock(112))) == ["rollback.completed"]
    assert a.on_decision(decision(120, healthy_evidence(TARGET, 120)), hold=None, clock=clock(120)) == []
    run.verification = VerificationResult(
        VerificationStatus.VERIFIED, ("rollback verified after 300s: fine",)
    )
    run.phase, run.finished_at = Phase.VERIFIED, 420.0
    assert kinds(a.on_run(run, clock=clock(420))) == ["rollback.verified"]
    # The aborted canary serves nothing now: inconclusive, and not news.
    no_traffic = decision(430, inconclusive(430), outcome=Outcome.INCONCLUSIVE)
    assert a.on_decision(no_traffic, hold=None, clock=clock(430)) == []
    # A new release breaches: a new episode.
    assert kinds(a.on_decision(immediate_decision(TARGET, 900), hold=None, clock=clock(900))) == [
        "target.degraded",
        "decision.made",
    ]


def every_action_kind() -> set[str]:
    """The ``ACTION`` of every lever module under rollbackd.actions: what ``action.action`` can be."""
    kinds = set()
    for module in pkgutil.walk_packages(rollbackd.actions.__path__, "rollbackd.actions."):
        action = getattr(importlib.import_module(module.name), "ACTION", None)
        if isinstance(action, str):
            kinds.add(action)
    return kinds


def test_the_action_field_names_every_action_the_daemon_can_run() -> None:
    kinds = every_action_kind()
    assert {"deployment-undo", "config-restore", "command", "feature-flag-off"} <= kinds, kinds
    events_doc = (Path(__file__).resolve().parents[1] / "docs" / "events.md").read_text()
    for event_type, path in (("rollback.completed", ("action", "action")), ("rollback.started", ("action",))):
        schema = json.loads((SCHEMAS_DIR / f"{event_type}.json").read_text())
        described = json.dumps(schema)
        for kind in sorted(kinds):
            assert kind in described, f"{event_type}'s schema ({'.'.join(path)}) does not name {kind}"
    for kind in sorted(kinds):
        assert f"`{kind}`" in events_doc, f"docs/events.md does not name the action {kind}"


def test_release_started_has_the_same_id_wherever_the_release_is_recorded() -> None:
    """Replicas without a shared store each record an announced release: the one that delivers it
    after a fail-over delivers the same event, which subscribers drop by its id."""
    c = clock(1390.0)

    def started(factory: EventFactory, release_id: str, target: str = TARGET) -> str:
        release = Release(id=release_id, target=target, kind="flag", started_at=c.at(1390.0), who="ci")
        return factory.release_started(release, clock=c).id

    leader, standby = EventFactory(source="/rollbackd"), EventFactory(source="/rollbackd")
    assert started(leader, "flag-1") == started(standby, "flag-1")
    assert len({started(leader, "flag-1"), started(leader, "flag-2"), started(leader, "flag-1", "shop/cart"),
                started(EventFactory(source="/other-cluster"), "flag-1")}) == 4
