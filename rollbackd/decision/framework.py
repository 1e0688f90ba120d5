"""The rollback decision framework of the operations runbook, as a pure function.

| outcome             | when                                                                   |
| ------------------- | ---------------------------------------------------------------------- |
| immediate rollback  | impact severe, attributable to the new version, rollback risk low      |
| controlled rollback | impact manageable, attributable, risk low: after ``controlled_grace_s`` |
| no rollback         | risk high / nothing to go back to, a fix imminent, or not attributable |
| inconclusive        | not enough data: never roll back on missing data                       |

Safety rails (freeze, cooldown, hourly cap) can stop an action the framework wants; dry-run
keeps the verdict but marks it so nothing acts on it. A standby replica (leader election) decides
like the leader but never acts: its rollback decisions are blocked by ``standby``. While the audit
trail cannot be written (the store is down), rollback decisions are blocked by ``store``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rollbackd.model import Context, Decision, Evidence, Impact, Outcome, Risk
from rollbackd.params import TargetParams


@dataclass(frozen=True, slots=True)
class DecisionState:
    """What the framework remembers between ticks for one target."""

    breach_since: float | None = None
    clear_ticks: int = 0


def _fmt_t(t: float) -> str:
    return f"t={t:g}s"


def _fmt_d(seconds: float) -> str:
    """A duration for people: 45s, 2m, 1m30s, 1h5m."""
    total = max(0, round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m" if m else f"{h}h"
    if m:
        return f"{m}m{s}s" if s else f"{m}m"
    return f"{s}s"


def _track(evidence: Evidence, state: DecisionState, params: TargetParams) -> DecisionState:
    """Breach onset tracking with symmetric noise tolerance: a breach starts on the first proven
    bad tick, and ends only after ``confirm_intervals`` consecutive ticks back within the SLO."""
    if evidence.breached:
        # The detectors re-estimate the onset from all the data each tick; trust the latest.
        if evidence.since is not None:
            return DecisionState(breach_since=evidence.since)
        return DecisionState(
            breach_since=state.breach_since if state.breach_since is not None else evidence.t
        )
    if evidence.within_slo:
        clear = state.clear_ticks + 1
        if clear >= params.detection.confirm_intervals:
            return DecisionState()
        return replace(state, clear_ticks=clear)
    return state


def _apply_rails(decision: Decision, ctx: Context, t: float) -> Decision:
    if not decision.rollback:
        return decision
    reasons = list(decision.reasons)
    if ctx.standby:
        # Another replica leads and acts on its own decision: no action, no escalation here.
        reasons.append("standby replica (not the leader): not acting")
        return replace(decision, rollback=False, blocked_by="standby", reasons=tuple(reasons))
    if ctx.audit_problem is not None:
        # Nothing may be done that cannot be recorded; acting resumes once the store is back.
        reasons.append(f"{ctx.audit_problem}: not acting until the audit trail can be written, escalating")
        return replace(decision, rollback=False, escalate=True, blocked_by="store", reasons=tuple(reasons))
    if ctx.frozen:
        reasons.append("global freeze is on: not rolling back, escalating")
        return replace(decision, rollback=False, escalate=True, blocked_by="freeze", reasons=tuple(reasons))
    if ctx.cooldown_until is not None and t < ctx.cooldown_until:
        reasons.append(
            f"target in cooldown for {_fmt_d(ctx.cooldown_until - t)} more after its last rollback: "
            "escalating"
        )
        return replace(decision, rollback=False, escalate=True, blocked_by="cooldown", reasons=tuple(reasons))
    if ctx.rollbacks_last_hour >= ctx.max_rollbacks_per_hour:
        reasons.append(
            f"{ctx.rollbacks_last_hour} rollbacks in the last hour reached the cap of "
            f"{ctx.max_rollbacks_per_hour}: escalating"
        )
        return replace(
            decision, rollback=False, escalate=True, blocked_by="rate-limit", reasons=tuple(reasons)
        )
    if ctx.dry_run:
        reasons.append("dry-run: would roll back, acting on nothing")
        return replace(decision, dry_run=True, reasons=tuple(reasons))
    return decision


def decide(
    evidence: Evidence, ctx: Context, params: TargetParams, state: DecisionState
) -> tuple[Decision, DecisionState]:
    """One tick of the framework: evidence + context → decision, and the state for the next tick."""
    t = evidence.t
    state = _track(evidence, state, params)
    since = state.breach_since

    def verdict(
        outcome: Outcome, why: str, *, rollback: bool = False, **extra: Any
    ) -> tuple[Decision, DecisionState]:
        decision = Decision(
            target=evidence.target,
            t=t,
            outcome=outcome,
            rollback=rollback,
            reasons=(why, *evidence.reasons),
            evidence=evidence,
            **extra,
        )
        return _apply_rails(decision, ctx, t), state

    if not evidence.breached:
        if evidence.inconclusive:
            return verdict(
                Outcome.INCONCLUSIVE, "not enough data to judge; never rolling back on missing data"
            )
        return verdict(Outcome.NONE, "no SLO breach")

    level = "severe" if evidence.impact is Impact.SEVERE else "manageable"
    if ctx.rollback_in_progress:
        return verdict(
            Outcome.NONE,
            f"{level} breach, but a rollback of this target is already under way: not acting twice",
            blocked_by="rollback-in-progress",
        )
    if not evidence.attributable:
        return verdict(
            Outcome.NONE,
            f"{level} SLO breach, but not attributable to the new version (the baseline is as bad, or there "
            "is no baseline to compare with): likely a platform incident, escalating",
            escalate=True,
            blocked_by="not-attributable",
        )
    if ctx.rollback_risk is Risk.HIGH or not ctx.has_rollback_target:
        why = ctx.risk_reason or (
            "no healthy revision to go back to" if not ctx.has_rollback_target else "release marked high-risk"
        )
        return verdict(
            Outcome.NONE,
            f"{level} breach attributable to the new version, but rollback risk exceeds impact ({why}): "
            "escalating instead of rolling back",
            escalate=True,
            blocked_by="rollback-risk",
        )
    if ctx.newer_rollout_in_progress:
        return verdict(
            Outcome.NONE,
            f"{level} breach, but a newer rollout is already progressing: holding",
            blocked_by="newer-rollout",
        )
    if ctx.hold is not None:
        hold = ctx.hold
        if t < hold.until:
            return verdict(
                Outcome.NONE,
                f"{level} breach, but a {hold.reason} hold runs {_fmt_d(hold.until - t)} more "
                f"(until {_fmt_t(hold.until)}): holding",
                blocked_by="hold",
                waiting_since=since,
            )
        return verdict(
            Outcome.CONTROLLED,
            f"{hold.reason} hold expired {_fmt_d(t - hold.until)} ago ({_fmt_t(hold.until)}) with the "
            f"{level} breach still there: controlled rollback",
            rollback=True,
            waiting_since=since,
        )
    if evidence.impact is Impact.SEVERE:
        return verdict(
            Outcome.IMMEDIATE,
            "severe breach attributable to the new version, rollback risk low: immediate rollback",
            rollback=True,
            waiting_since=since,
        )
    since = since if since is not None else t
    grace = params.policy.controlled_grace_s
    # The grace runs from the end of the first bad interval: an onset estimate one interval early
    # must never make a controlled rollback come before its grace is over.
    due = since + grace + params.interval_s
    if t >= due:
        return verdict(
            Outcome.CONTROLLED,
            f"manageable breach attributable to the new version for {_fmt_d(t - since)} "
            f"(since {_fmt_t(since)}), still there after the {grace:g}s grace: controlled rollback",
            rollback=True,
            waiting_since=since,
        )
    return verdict(
        Outcome.CONTROLLED,
        f"manageable breach attributable to the new version for {_fmt_d(t - since)} (since {_fmt_t(since)}): "
        f"waiting {_fmt_d(due - t)} more of the {grace:g}s grace for recovery or a fix",
        waiting_since=since,
    )
