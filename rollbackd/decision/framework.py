"""The rollback decision framework of the operations runbook, as a pure function.

| outcome             | when                                                                   |
| ------------------- | ---------------------------------------------------------------------- |
| immediate rollback  | impact severe, attributable to the new version, rollback risk low      |
| controlled rollback | impact manageable, attributable, risk low: after ``controlled_grace_s`` |
| no rollback         | risk high / nothing to go back to, a fix imminent, or not attributable |
| inconclusive        | not enough data: never roll back on missing data                       |

Safety rails (freeze, cooldown, hourly cap) can stop an action the framework wants; dry-run
keeps the verdict but marks it so nothing acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rollbackd.model import Context, Decision, Evidence, Impact, Outcome, Risk
from rollbackd.params import TargetParams


@dataclass(frozen=True, slots=True)
class DecisionState:
    """What the framework remembers between ticks for one target."""

    breach_since: float | None = None
    clear_ticks: int = 0


def _fmt_t(t: float) -> str:
    return f"t={t:g}s"


def _track(evidence: Evidence, state: DecisionState, params: TargetParams) -> DecisionState:
    """Breach onset tracking with symmetric noise tolerance: a breach starts on the first proven
    bad tick, and ends only after ``confirm_intervals`` consecutive ticks back within the SLO."""
    if evidence.breached:
        # The detectors re-estimate the onset from all the data each tick; trust the latest.
        if evidence.since is not None:
            return DecisionState(breach_since=evidence.since)
        return DecisionState(breach_since=state.breach_since if state.breach_since is not None else evidence.t)
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
    if ctx.frozen:
        reasons.append("global freeze is on: not rolling back, escalating")
        return replace(decision, rollback=False, escalate=True, blocked_by="freeze", reasons=tuple(reasons))
    if ctx.cooldown_until is not None and t < ctx.cooldown_until:
        reasons.append(f"target in cooldown until {_fmt_t(ctx.cooldown_until)} after its last rollback: escalating")
        return replace(decision, rollback=False, escalate=True, blocked_by="cooldown", reasons=tuple(reasons))
    if ctx.rollbacks_last_hour >= ctx.max_rollbacks_per_hour:
        reasons.append(
            f"{ctx.rollbacks_last_hour} rollbacks in the last hour reached the cap of "
            f"{ctx.max_rollbacks_per_hour}: escalating"
        )
        return replace(decision, rollback=False, escalate=True, blocked_by="rate-limit", reasons=tuple(reasons))
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
    base = Decision(target=evidence.target, t=t, outcome=Outcome.NONE, rollback=False, reasons=(), evidence=evidence)

    def done(decision: Decision) -> tuple[Decision, DecisionState]:
        return _apply_rails(decision, ctx, t), state

    if not evidence.breached:
        if evidence.inconclusive:
            return done(replace(
                base,
                outcome=Outcome.INCONCLUSIVE,
                reasons=("not enough data to judge; never rolling back on missing data", *evidence.reasons),
            ))
        return done(replace(base, reasons=("no SLO breach", *evidence.reasons)))

    level = "severe" if evidence.impact is Impact.SEVERE else "manageable"
    if not evidence.attributable:
        return done(replace(
            base,
            escalate=True,
            blocked_by="not-attributable",
            reasons=(
                f"{level} SLO breach, but not attributable to the new version (the baseline is as bad, "
                "or there is no baseline to compare with): likely a platform incident, escalating",
                *evidence.reasons,
            ),
        ))
    if ctx.rollback_risk is Risk.HIGH or not ctx.has_rollback_target:
        why = ctx.risk_reason or (
            "no healthy revision to go back to" if not ctx.has_rollback_target else "release marked high-risk"
        )
        return done(replace(
            base,
            escalate=True,
            blocked_by="rollback-risk",
            reasons=(f"{level} breach attributable to the new version, but rollback risk exceeds impact ({why}): "
                     "escalating instead of rolling back", *evidence.reasons),
        ))
    if ctx.newer_rollout_in_progress:
        return done(replace(
            base,
            blocked_by="newer-rollout",
            reasons=(f"{level} breach, but a newer rollout is already progressing: holding", *evidence.reasons),
        ))
    if ctx.hold is not None:
        if t < ctx.hold.until:
            return done(replace(
                base,
                blocked_by="hold",
                waiting_since=state.breach_since,
                reasons=(f"{level} breach, but a {ctx.hold.reason} hold is set until {_fmt_t(ctx.hold.until)}: "
                         "holding", *evidence.reasons),
            ))
        return done(replace(
            base,
            outcome=Outcome.CONTROLLED,
            rollback=True,
            waiting_since=state.breach_since,
            reasons=(f"{ctx.hold.reason} hold expired at {_fmt_t(ctx.hold.until)} with the {level} breach still "
                     "there: controlled rollback", *evidence.reasons),
        ))
    if evidence.impact is Impact.SEVERE:
        return done(replace(
            base,
            outcome=Outcome.IMMEDIATE,
            rollback=True,
            waiting_since=state.breach_since,
            reasons=("severe breach attributable to the new version, rollback risk low: immediate rollback",
                     *evidence.reasons),
        ))
    since = state.breach_since if state.breach_since is not None else t
    grace = params.policy.controlled_grace_s
    # The grace runs from the end of the first bad interval: an onset estimate one interval early
    # must never make a controlled rollback come before its grace is over.
    if t - since >= grace + params.interval_s:
        return done(replace(
            base,
            outcome=Outcome.CONTROLLED,
            rollback=True,
            waiting_since=since,
            reasons=(f"manageable breach attributable to the new version since {_fmt_t(since)}, still there after "
                     f"the {grace:g}s grace: controlled rollback", *evidence.reasons),
        ))
    return done(replace(
        base,
        outcome=Outcome.CONTROLLED,
        waiting_since=since,
        reasons=(f"manageable breach attributable to the new version since {_fmt_t(since)}: waiting up to "
                 f"{grace:g}s (until {_fmt_t(since + grace + params.interval_s)}) for recovery or a fix", *evidence.reasons),
    ))
