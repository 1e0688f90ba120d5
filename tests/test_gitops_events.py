"""What people are told about GitOps: ``gitops.suspended`` before ``rollback.completed`` (which says
what to do next), the escalation of a refusal, and the same sentence on the status page."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from pathlib import Path

import jsonschema

from rollbackd.actions.base import ActionOutcome, ActionResult, Change, GitOpsHold
from rollbackd.actions.reconcilers import REVERT_IN_GIT
from rollbackd.daemon.page import render_status_page
from rollbackd.daemon.rollbacks import with_prior_changes
from rollbackd.daemon.views import rollback_view
from rollbackd.daemon.wallclock import WallClock
from rollbackd.events.build import Announcer, Clock, EventFactory
from rollbackd.events.chat import Fact, message_of
from rollbackd.events.model import EscalationRaisedData, EventType, GitOpsSuspendedData, RollbackCompletedData
from rollbackd.run import Phase, RollbackRun
from rollbackd.runrecord import RecordedChange
from tests.eventstory import clock

TARGET = "shop/web"
SCHEMAS = Path(__file__).resolve().parents[1] / "docs" / "schemas"
AUTOMATED = {"prune": True, "selfHeal": True}
APP_HOLD = GitOpsHold(
    reconciler="argocd", object="Application/argocd/shop-web", api_version="argoproj.io/v1alpha1",
    reconciles=("Ingress/shop/web-canary",), field="spec.syncPolicy.automated", previous=AUTOMATED,
    suspended=True, resume="kubectl -n argocd patch applications.argoproj.io shop-web --type merge -p '{}'",
)
SUSPENSION = Change("Application/argocd/shop-web", "spec.syncPolicy.automated", AUTOMATED, None)
WEIGHT = Change("Ingress/shop/web-canary", "metadata.annotations[nginx.ingress.kubernetes.io/canary-weight]",
                "20", "0")


def run_with(result: ActionResult, phase: Phase) -> RollbackRun:
    run = RollbackRun(key=TARGET, mode="immediate", decided_at=1000.0, phase=phase)
    run.action = result
    run.acted_at = 1003.0
    return run


def announced(run: RollbackRun) -> list[EventType]:
    announcer = Announcer(factory=EventFactory(), target=TARGET)
    return [event.event_type for event in announcer.on_run(run, clock=clock(1003.0))]


def test_a_suspension_is_told_before_the_completed_rollback_which_says_what_to_do() -> None:
    result = ActionResult(action="canary-abort", target=TARGET, outcome=ActionOutcome.DONE,
                          reason="canary aborted", changes=(SUSPENSION, WEIGHT), gitops=(APP_HOLD,))
    announcer = Announcer(factory=EventFactory(), target=TARGET)
    run = run_with(result, Phase.VERIFYING)
    events = announcer.on_run(run, clock=clock(1003.0))

    assert [e.event_type for e in events] == [
        EventType.ROLLBACK_STARTED, EventType.GITOPS_SUSPENDED, EventType.ROLLBACK_COMPLETED,
    ]
    suspended, completed = events[1], events[2]
    assert isinstance(suspended.data, GitOpsSuspendedData)
    assert (suspended.data.reconciler, suspended.data.object, suspended.data.previous) == (
        "argocd", "Application/argocd/shop-web", AUTOMATED,
    )
    assert suspended.data.next_step == REVERT_IN_GIT
    assert suspended.summary.endswith(REVERT_IN_GIT)
    schema = json.loads((SCHEMAS / "gitops.suspended.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(suspended.to_json())
    assert isinstance(completed.data, RollbackCompletedData)
    assert completed.data.next_step == REVERT_IN_GIT
    assert completed.data.action.gitops[0].object == "Application/argocd/shop-web"
    assert REVERT_IN_GIT in completed.summary
    # Told once per run.
    assert announcer.on_run(run, clock=clock(1004.0)) == []


def test_a_reconciler_already_off_is_no_suspension_event_but_still_a_next_step() -> None:
    result = ActionResult(action="canary-abort", target=TARGET, outcome=ActionOutcome.DONE,
                          reason="canary aborted", changes=(WEIGHT,), gitops=(APP_HOLD,))
    assert announced(run_with(result, Phase.VERIFYING)) == [
        EventType.ROLLBACK_STARTED, EventType.ROLLBACK_COMPLETED,
    ]


def test_a_refusal_by_gitops_escalates_with_its_own_cause_and_the_sentence() -> None:
    refused_hold = dataclasses.replace(APP_HOLD, suspended=False)
    reason = f"Ingress/shop/web-canary is reconciled from Git by ...: gitops is refuse. {REVERT_IN_GIT}"
    result = ActionResult(action="canary-abort", target=TARGET, outcome=ActionOutcome.REFUSED, reason=reason,
                          gitops=(refused_hold,))
    run = run_with(result, Phase.REFUSED)
    run.finished_at = 1003.0
    announcer = Announcer(factory=EventFactory(), target=TARGET)
    events = announcer.on_run(run, clock=clock(1003.0))
    assert [e.event_type for e in events] == [
        EventType.ROLLBACK_STARTED, EventType.ROLLBACK_FAILED, EventType.ESCALATION_RAISED,
    ]
    escalation = events[-1].data
    assert isinstance(escalation, EscalationRaisedData)
    assert escalation.cause == "gitops"
    assert escalation.reasons[0].endswith(REVERT_IN_GIT)


def test_the_status_page_says_to_revert_in_git() -> None:
    result = ActionResult(action="canary-abort", target=TARGET, outcome=ActionOutcome.DONE,
                          reason="canary aborted", changes=(SUSPENSION, WEIGHT), gitops=(APP_HOLD,))
    wall = WallClock(Clock(wall=datetime(2026, 1, 1, tzinfo=UTC), loop=1000.0))
    view = rollback_view(run_with(result, Phase.VERIFYING), now=1010.0, wall=wall)
    assert isinstance(view, dict)
    page = render_status_page(
        {"targets": {TARGET: {"key": TARGET, "namespace": "shop", "name": "web", "rollback": view}}},
        version="test", ready=True, alive=True, ticks=1, refresh_s=5, generated_at=datetime.now(UTC),
    )
    assert REVERT_IN_GIT in page
    assert "Application/argocd/shop-web" in page


def test_a_run_taken_over_tells_the_suspension_the_stopped_process_made() -> None:
    # The stopped process suspended Argo CD and set the weight; the resumed action finds all done.
    prior = (RecordedChange(SUSPENSION, made=True), RecordedChange(WEIGHT, made=True))
    resumed = ActionResult(action="canary-abort", target=TARGET, outcome=ActionOutcome.ALREADY_DONE,
                           reason="the canary was already aborted")
    result = with_prior_changes(resumed, prior)

    assert result.outcome is ActionOutcome.DONE
    (hold,) = result.gitops
    assert (hold.object, hold.previous, hold.suspended) == ("Application/argocd/shop-web", AUTOMATED, True)
    assert result.reason.endswith(REVERT_IN_GIT)
    events = Announcer(factory=EventFactory(), target=TARGET).on_run(
        run_with(result, Phase.VERIFYING), clock=clock(1003.0))
    suspended = next(e for e in events if e.event_type is EventType.GITOPS_SUSPENDED)
    assert isinstance(suspended.data, GitOpsSuspendedData)
    assert suspended.data.previous == AUTOMATED
    assert "prune" in suspended.data.resume


def test_a_chat_message_of_a_suspension_says_to_revert_in_git() -> None:
    result = ActionResult(action="canary-abort", target=TARGET, outcome=ActionOutcome.DONE,
                          reason="canary aborted", changes=(SUSPENSION, WEIGHT), gitops=(APP_HOLD,))
    events = Announcer(factory=EventFactory(), target=TARGET).on_run(
        run_with(result, Phase.VERIFYING), clock=clock(1003.0))
    suspended = message_of(next(e for e in events if e.event_type is EventType.GITOPS_SUSPENDED),
                           status_url=None)
    completed = message_of(next(e for e in events if e.event_type is EventType.ROLLBACK_COMPLETED),
                           status_url=None)
    assert suspended.title == "Argo CD reconciliation of shop/web suspended: revert in Git"
    assert suspended.severity == "warning"
    assert Fact("Next", REVERT_IN_GIT) in suspended.facts
    assert Fact("Next", REVERT_IN_GIT) in completed.facts
