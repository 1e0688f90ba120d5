"""Realistic events for the events tests: a whole rollback of one target, built by the real
builders from the real domain values (evidence, decision, rollback run, action, verification)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.events.build import Announcer, Clock, EventFactory
from rollbackd.events.model import CloudEvent
from rollbackd.model import Decision, Evidence, Finding, Impact, Outcome, Slo, Strategy
from rollbackd.run import Phase, RollbackRun
from rollbackd.verification import VerificationResult, VerificationStatus

#: Loop time 1000 is this wall-clock time in every story.
WALL0 = datetime(2026, 11, 24, 3, 0, 0, tzinfo=UTC)
SLO = Slo(max_error_rate=0.01, max_p95_ms=500.0)


def clock(t: float) -> Clock:
    """Both clocks at loop time ``t``."""
    return Clock(wall=WALL0 + timedelta(seconds=t - 1000.0), loop=t)


def severe_evidence(target: str, t: float) -> Evidence:
    return Evidence(
        target=target,
        t=t,
        impact=Impact.SEVERE,
        attributable=True,
        inconclusive=False,
        findings=(
            Finding(
                signal="error_rate",
                value=0.12,
                threshold=0.01,
                breached=True,
                severe=True,
                attributable=True,
                confidence=0.999,
                baseline_value=0.002,
                detail="error_rate 12.00% since t=990s over 2 intervals (120 of 1000 requests failed)",
                since=990.0,
            ),
            Finding(
                signal="p95",
                value=180.0,
                threshold=500.0,
                breached=False,
                severe=False,
                attributable=False,
                confidence=0.2,
            ),
        ),
        reasons=("error rate 12.00% vs SLO 1.00% (severe at 5.00%)",),
        candidate_requests=1000.0,
        baseline_requests=4000.0,
        since=990.0,
    )


def healthy_evidence(target: str, t: float) -> Evidence:
    return Evidence(
        target=target,
        t=t,
        impact=Impact.NONE,
        attributable=False,
        inconclusive=False,
        within_slo=True,
        candidate_requests=900.0,
        baseline_requests=3000.0,
    )


def immediate_decision(target: str, t: float) -> Decision:
    return Decision(
        target=target,
        t=t,
        outcome=Outcome.IMMEDIATE,
        rollback=True,
        reasons=(
            "severe breach attributable to the new version, rollback risk low: immediate rollback",
            "error rate 12.00% vs SLO 1.00% (severe at 5.00%)",
        ),
        evidence=severe_evidence(target, t),
        waiting_since=990.0,
    )


def rollback_story(
    target: str = "shop/checkout", *, factory: EventFactory | None = None, announcer: Announcer | None = None
) -> list[CloudEvent]:
    """The five events of a rollback that worked, in order: target.degraded, decision.made,
    rollback.started, rollback.completed, rollback.verified (verified at loop time 1305); told by
    ``announcer`` when given (it then knows the story)."""
    if announcer is None:
        announcer = Announcer(factory=factory or EventFactory(), target=target, slo=SLO)
    events: list[CloudEvent] = []
    decision = immediate_decision(target, 1000.0)
    events += announcer.on_decision(decision, hold=None, clock=clock(1000.0))
    run = RollbackRun(key=target, mode="immediate", decided_at=1000.0)
    events += announcer.on_run(
        run, clock=clock(1000.5), decision=decision, strategy=Strategy.CANARY, bad_revision=7
    )
    run.action = ActionResult(
        action="canary-abort",
        target=target,
        outcome=ActionOutcome.DONE,
        reason="canary weight set to 0 and the canary scaled to 0",
        changes=(
            Change(
                "Ingress/shop/checkout-canary",
                "metadata.annotations[nginx.ingress.kubernetes.io/canary-weight]",
                "20",
                "0",
            ),
            Change("Deployment/shop/checkout-canary", "spec.replicas", 2, 0),
        ),
        api_s=0.2,
        wait_s=4.1,
    )
    run.acted_at = 1005.0
    run.phase = Phase.VERIFYING
    events += announcer.on_run(run, clock=clock(1005.0))
    run.verification = VerificationResult(
        VerificationStatus.VERIFIED,
        ("rollback verified after 300s: error rate 0.20% (SLO 1.00%) and P95 120 ms (ceiling 500 ms)",),
        error_rate=0.002,
        p95_ms=120.0,
        requests=30000.0,
        health_ok=True,
        available=True,
        elapsed_s=300.0,
    )
    run.phase = Phase.VERIFIED
    run.finished_at = 1305.0
    events += announcer.on_run(run, clock=clock(1305.0))
    return events
