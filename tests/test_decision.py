"""The decision framework, row by row of the runbook table, plus the safety rails."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from rollbackd.decision.annotations import AnnotationError, context_from_annotations, parse_duration
from rollbackd.decision.framework import DecisionState, decide
from rollbackd.decision.rails import HoldBook, RollbackLedger
from rollbackd.model import Context, Evidence, Hold, Impact, Outcome, Risk, Strategy, Watch
from rollbackd.params import Policy, TargetParams

PARAMS = TargetParams(
    key="shop/checkout", strategy=Strategy.CANARY, interval_s=10.0, policy=Policy(controlled_grace_s=120)
)


def ev(t: float, impact: Impact = Impact.NONE, *, attributable: bool = True, **kw: object) -> Evidence:
    defaults: dict[str, object] = {
        "inconclusive": False,
        "within_slo": impact is Impact.NONE,
        "recovered": impact is Impact.NONE,
        "since": None,
    }
    defaults.update(kw)
    return Evidence(
        target="shop/checkout",
        t=t,
        impact=impact,
        attributable=attributable and impact is not Impact.NONE,
        reasons=("evidence",),
        **defaults,  # type: ignore[arg-type]
    )


def run(evidences: list[Evidence], ctx: Context | None = None) -> list[tuple[Outcome, bool]]:
    ctx = ctx or Context()
    state = DecisionState()
    out = []
    for e in evidences:
        decision, state = decide(e, ctx, PARAMS, state)
        out.append((decision.outcome, decision.rollback))
    return out


def test_severe_and_attributable_is_an_immediate_rollback() -> None:
    decision, _ = decide(ev(190, Impact.SEVERE, since=180), Context(), PARAMS, DecisionState())
    assert decision.outcome is Outcome.IMMEDIATE
    assert decision.rollback
    assert "immediate rollback" in decision.reason
    assert decision.reasons[-1] == "evidence"  # the evidence's own numbers follow the verdict


def test_manageable_waits_for_the_grace_then_rolls_back() -> None:
    ticks = [ev(t, Impact.MANAGEABLE, since=180) for t in range(200, 330, 10)]
    outcomes = run(ticks)
    waiting = [
        t
        for (o, rb), t in zip(outcomes, range(200, 330, 10), strict=True)
        if o is Outcome.CONTROLLED and not rb
    ]
    acted = [t for (o, rb), t in zip(outcomes, range(200, 330, 10), strict=True) if rb]
    # grace 120 s from the end of the first bad interval (180 + 10): due at 310.
    assert waiting == list(range(200, 310, 10))
    assert acted[0] == 310
    assert all(o is Outcome.CONTROLLED for o, _ in outcomes)


def test_recovery_within_the_grace_means_no_rollback() -> None:
    ticks = [ev(t, Impact.MANAGEABLE, since=180) for t in range(190, 260, 10)]
    ticks += [ev(t) for t in range(260, 400, 10)]
    assert not any(rb for _, rb in run(ticks))
    assert run(ticks)[-1] == (Outcome.NONE, False)


def test_not_attributable_escalates_without_rollback() -> None:
    decision, _ = decide(ev(190, Impact.SEVERE, attributable=False), Context(), PARAMS, DecisionState())
    assert decision.outcome is Outcome.NONE
    assert not decision.rollback
    assert decision.escalate
    assert decision.blocked_by == "not-attributable"


@pytest.mark.parametrize(
    ("ctx", "blocked"),
    [
        (Context(rollback_risk=Risk.HIGH, risk_reason="irreversible migration"), "rollback-risk"),
        (Context(has_rollback_target=False), "rollback-risk"),
        (Context(newer_rollout_in_progress=True), "newer-rollout"),
        (Context(hold=Hold(until=400.0)), "hold"),
        (Context(rollback_in_progress=True), "rollback-in-progress"),
    ],
)
def test_no_rollback_when_risk_exceeds_impact_or_a_fix_is_imminent(ctx: Context, blocked: str) -> None:
    decision, _ = decide(ev(190, Impact.SEVERE, since=180), ctx, PARAMS, DecisionState())
    assert decision.outcome is Outcome.NONE
    assert not decision.rollback
    assert decision.blocked_by == blocked


def test_high_risk_reason_is_reported() -> None:
    ctx = Context(rollback_risk=Risk.HIGH, risk_reason="irreversible migration")
    decision, _ = decide(ev(190, Impact.MANAGEABLE), ctx, PARAMS, DecisionState())
    assert decision.escalate
    assert "irreversible migration" in decision.reason


def test_hold_expiring_with_the_breach_still_there_is_a_controlled_rollback() -> None:
    ctx = Context(hold=Hold(until=330.0))
    outcomes = [(t, *run([ev(t, Impact.MANAGEABLE, since=180)], ctx)[0]) for t in (300, 320, 330)]
    assert outcomes == [
        (300, Outcome.NONE, False),
        (320, Outcome.NONE, False),
        (330, Outcome.CONTROLLED, True),
    ]


def test_inconclusive_never_rolls_back() -> None:
    decision, _ = decide(ev(190, inconclusive=True, within_slo=False), Context(), PARAMS, DecisionState())
    assert decision.outcome is Outcome.INCONCLUSIVE
    assert not decision.rollback
    assert "missing data" in decision.reason


def test_freeze_cooldown_and_rate_cap_block_and_escalate() -> None:
    severe = ev(190, Impact.SEVERE)
    for ctx, blocked in [
        (Context(frozen=True), "freeze"),
        (Context(cooldown_until=500.0), "cooldown"),
        (Context(rollbacks_last_hour=3, max_rollbacks_per_hour=3), "rate-limit"),
    ]:
        decision, _ = decide(severe, ctx, PARAMS, DecisionState())
        assert decision.outcome is Outcome.IMMEDIATE
        assert not decision.rollback
        assert decision.escalate
        assert decision.blocked_by == blocked
    # An expired cooldown does not block.
    decision, _ = decide(severe, Context(cooldown_until=100.0), PARAMS, DecisionState())
    assert decision.rollback


def test_the_post_rollback_watch_escalates_a_new_rollback_while_it_lasts() -> None:
    watch = Watch(since=1000.0, until=2800.0)
    inside, _ = decide(ev(2000, Impact.SEVERE), Context(watch=watch), PARAMS, DecisionState())
    assert inside.outcome is Outcome.IMMEDIATE
    assert not inside.rollback
    assert inside.escalate
    assert inside.blocked_by == "post-rollback-watch"
    assert "degraded again 16m40s after its rollback was verified" in inside.reasons[-1]
    assert "(13m20s left)" in inside.reasons[-1]
    after, _ = decide(ev(2800, Impact.SEVERE), Context(watch=watch), PARAMS, DecisionState())
    assert after.rollback
    # Within both, the watch is the one named: it is the news (a release bad again after a rollback).
    both, _ = decide(ev(2000, Impact.SEVERE), Context(watch=watch, cooldown_until=2100.0), PARAMS,
                     DecisionState())
    assert both.blocked_by == "post-rollback-watch"


def test_ledger_keeps_a_watch_until_it_ends() -> None:
    ledger = RollbackLedger(max_per_hour=3)
    assert ledger.watch("shop/checkout", since=100.0, watch_s=0) is None
    assert ledger.watch_of("shop/checkout", 100.0) is None
    ledger.watch("shop/checkout", since=100.0, watch_s=1800.0)
    assert ledger.watch_of("shop/checkout", 1899.0) == Watch(since=100.0, until=1900.0)
    assert ledger.watch_of("shop/checkout", 1900.0) is None
    assert ledger.watch_of("shop/cart", 500.0) is None


def test_dry_run_keeps_the_verdict_and_marks_it() -> None:
    decision, _ = decide(ev(190, Impact.SEVERE), Context(dry_run=True), PARAMS, DecisionState())
    assert decision.rollback
    assert decision.dry_run
    assert "dry-run" in decision.reason


def test_one_good_interval_inside_a_breach_does_not_restart_the_grace() -> None:
    state = DecisionState()
    _, state = decide(ev(200, Impact.MANAGEABLE, since=180), Context(), PARAMS, state)
    # Two intervals within the SLO, but recovery not proven: the episode stays open.
    for t in (210, 220):
        decision, state = decide(ev(t, recovered=False), Context(), PARAMS, state)
        assert state.breach_since == 180
        assert decision.outcome is Outcome.CONTROLLED
        assert decision.episode is not None
        assert decision.episode.onset == 180
    decision, state = decide(ev(230), Context(), PARAMS, state)  # recovery proven
    assert state.breach_since is None
    assert decision.episode is None
    assert decision.outcome is Outcome.NONE


def test_ledger_counts_the_last_hour_and_cooldowns() -> None:
    ledger = RollbackLedger(max_per_hour=2)
    ledger.record("a/x", 0.0, cooldown_s=600)
    ledger.record("a/y", 100.0, cooldown_s=600)
    assert ledger.rollbacks_last_hour(200.0) == 2
    assert ledger.cooldown_until("a/x") == 600.0
    assert ledger.rollbacks_last_hour(3650.0) == 1
    assert ledger.cooldown_until("a/x") is None


def test_hold_book_keeps_an_expired_hold_until_cleared() -> None:
    book = HoldBook()
    book.set("a/x", until=10.0, reason="fix-forward", set_at=0.0)
    assert book.get("a/x") == Hold(until=10.0, reason="fix-forward", set_at=0.0)
    assert book.clear("a/x") is not None
    assert book.get("a/x") is None


def test_annotations_give_risk_and_hold() -> None:
    wall = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    eta = (wall + timedelta(minutes=15)).isoformat().replace("+00:00", "Z")
    got = context_from_annotations(
        {"rollbackd.io/rollback-risk": "high: drops a column", "rollbackd.io/fix-forward-eta": eta},
        wall_now=wall,
        loop_now=1000.0,
    )
    assert got.risk is Risk.HIGH
    assert "drops a column" in got.risk_reason
    assert got.hold is not None
    assert got.hold.until == pytest.approx(1900.0)
    relative = context_from_annotations(
        {"rollbackd.io/fix-forward-eta": "10m"}, wall_now=wall, loop_now=1000.0, eta_first_seen=400.0
    )
    assert relative.hold is not None
    assert relative.hold.until == 1000.0
    assert context_from_annotations({}, wall_now=wall, loop_now=0.0).risk is None


def test_bad_annotations_name_the_annotation_and_the_fix() -> None:
    wall = datetime(2026, 11, 24, tzinfo=UTC)
    with pytest.raises(AnnotationError, match="rollback-risk: expected 'low' or 'high'"):
        context_from_annotations({"rollbackd.io/rollback-risk": "medium"}, wall_now=wall, loop_now=0.0)
    with pytest.raises(AnnotationError, match="fix-forward-eta: expected an RFC 3339 time"):
        context_from_annotations({"rollbackd.io/fix-forward-eta": "soon"}, wall_now=wall, loop_now=0.0)
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("") is None


def test_context_is_a_frozen_value() -> None:
    ctx = Context()
    with pytest.raises(AttributeError):
        ctx.frozen = True  # type: ignore[misc]
    assert replace(ctx, frozen=True).frozen
