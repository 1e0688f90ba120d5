"""The rollback decision framework of the operations runbook, as a pure function.

| outcome             | when                                                                   |
| ------------------- | ---------------------------------------------------------------------- |
| immediate rollback  | impact severe, attributable to the new version, rollback risk low      |
| controlled rollback | impact manageable, attributable, risk low: after ``controlled_grace_s`` |
| no rollback         | risk high / nothing to go back to, a fix imminent, or not attributable |
| inconclusive        | not enough data: never roll back on missing data                       |

Breach episodes: an episode opens on a proven breach and closes only when recovery is proven
(:attr:`~rollbackd.model.Evidence.recovered`), never because one tick fails to prove the breach
again, nor on missing data. While it is open, a tick whose breach is not proven keeps the
episode's verdict (the same outcome, blocker and escalation), so the verdict does not alternate
with "no SLO breach"; a rollback is only ever decided on a tick whose breach is proven, so a
controlled grace that ends on an unproven tick waits for the next proven one (``blocked_by``
``unproven``).

Attribution (:class:`~rollbackd.model.Attribution`): a breach the baseline shares (the baseline
itself beyond the SLO) is likely a platform incident and escalates; without a baseline to compare
with it escalates too; while the baseline is within the SLO and the new version not yet
significantly worse than it, attribution is pending: no rollback, no escalation, until the pending
state has lasted ``controlled_grace_s`` from the onset (then an on-call engineer must hear of it).

Safety rails (freeze, the post-rollback watch, cooldown, hourly cap) can stop an action the
framework wants; the watch (the runbook's 30 minutes of monitoring after a verified rollback) turns
a new rollback into an escalation, never a second automatic rollback. Dry-run
keeps the verdict but marks it so nothing acts on it. A standby replica (leader election) decides
like the leader but never acts: its rollback decisions are blocked by ``standby``. While the audit
trail cannot be written (the store is down), rollback decisions are blocked by ``store``. A release
accepted (:attr:`~rollbackd.model.Context.accepted`: by an operator, or after
``policy.accept_after_s``; see :mod:`rollbackd.decision.lifetime`) is neither rolled back nor
escalated: every decision is blocked by ``accepted``, until the next revision ends the acceptance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from rollbackd.model import Attribution, Context, Decision, Episode, Evidence, Impact, Outcome, Risk
from rollbackd.params import TargetParams


@dataclass(frozen=True, slots=True)
class DecisionState:
    """What the framework remembers between ticks for one target."""

    #: The latest estimate of the breach's start (a controlled rollback's grace runs from it).
    breach_since: float | None = None
    #: The breach episode open now, if any.
    episode: Episode | None = None


def duration_text(seconds: float) -> str:
    """A duration for people: 45s, 2m, 1m30s, 1h5m."""
    total = max(0, round(seconds))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m}m" if m else f"{h}h"
    if m:
        return f"{m}m{s}s" if s else f"{m}m"
    return f"{s}s"


_fmt_d = duration_text  # short, for the reasons' long f-strings


def _merged(known: Attribution, latest: Attribution) -> Attribution:
    """The episode's attribution after a proven tick: "pending" (the evidence is not in yet) does
    not take the place of an attribution already proven in the episode."""
    return known if latest is Attribution.PENDING else latest


def _track(evidence: Evidence, state: DecisionState) -> DecisionState:
    """Episode tracking: opened by a proven breach, updated by each proven tick, closed only by a
    proven recovery."""
    t = evidence.t
    episode = state.episode
    if evidence.breached:
        # The detectors re-estimate the onset from all the data each tick; trust the latest.
        since = evidence.since
        if since is None:
            since = state.breach_since if state.breach_since is not None else t
        attribution = evidence.attribution or (
            Attribution.ATTRIBUTABLE if evidence.attributable else Attribution.BASELINE_DEGRADED
        )
        if episode is None:
            episode = Episode(
                opened_at=t, onset=min(since, t), impact=evidence.impact, attribution=attribution, proven_at=t
            )
        else:
            worse = Impact.SEVERE in (episode.impact, evidence.impact)
            impact = Impact.SEVERE if worse else Impact.MANAGEABLE
            episode = Episode(
                opened_at=episode.opened_at,
                onset=min(episode.onset, since),
                impact=impact,
                attribution=_merged(episode.attribution, attribution),
                proven_at=t,
            )
        return DecisionState(breach_since=since, episode=episode)
    if episode is not None and evidence.recovered:
        return DecisionState()
    return state


def _apply_rails(decision: Decision, ctx: Context, t: float) -> Decision:
    if ctx.accepted is not None:
        # Accepted (by time or by an operator): watched for the next release, neither rolled back
        # nor escalated; every decision says so, so the target's state is "accepted".
        why = (*decision.reasons, f"release {ctx.accepted}: not judged until the next revision")
        return replace(decision, rollback=False, escalate=False, blocked_by="accepted", reasons=why)
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
    if ctx.watch is not None and ctx.watch.since <= t < ctx.watch.until:
        reasons.append(
            f"degraded again {_fmt_d(t - ctx.watch.since)} after its rollback was verified, within the "
            f"post-rollback watch ({_fmt_d(ctx.watch.until - t)} left): escalating, no second automatic "
            "rollback"
        )
        return replace(
            decision, rollback=False, escalate=True, blocked_by="post-rollback-watch", reasons=tuple(reasons)
        )
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


@dataclass(frozen=True, slots=True)
class _Verdict:
    outcome: Outcome
    why: str
    rollback: bool = False
    escalate: bool = False
    blocked_by: str | None = None
    waiting_since: float | None = None


def _breach_verdict(
    level: Impact,
    attribution: Attribution,
    *,
    t: float,
    since: float | None,
    onset: float,
    ctx: Context,
    params: TargetParams,
) -> _Verdict:
    """The runbook's verdict on a breach of ``level`` blamed as ``attribution``."""
    word = "severe" if level is Impact.SEVERE else "manageable"
    if ctx.rollback_in_progress:
        return _Verdict(
            Outcome.NONE,
            f"{word} breach, but a rollback of this target is already under way: not acting twice",
            blocked_by="rollback-in-progress",
        )
    grace = params.policy.controlled_grace_s
    if attribution is Attribution.BASELINE_DEGRADED:
        return _Verdict(
            Outcome.NONE,
            f"{word} SLO breach, but the baseline is beyond the SLO too: not attributable to the new "
            "version, likely a platform incident, escalating",
            escalate=True,
            blocked_by="not-attributable",
        )
    if attribution is Attribution.NO_BASELINE:
        return _Verdict(
            Outcome.NONE,
            f"{word} SLO breach, but there is no baseline with enough traffic to compare with: whether the "
            "new version is to blame cannot be told, escalating",
            escalate=True,
            blocked_by="no-baseline",
        )
    if attribution is Attribution.PENDING:
        ratio = params.detection.attribution_ratio
        lasted = t - onset
        if t >= onset + grace + params.interval_s:
            return _Verdict(
                Outcome.NONE,
                f"{word} SLO breach for {_fmt_d(lasted)} (since {ctx.time_text(onset)}), "
                f"longer than the {grace:g}s "
                f"grace: the baseline is within the SLO and the new version is not significantly worse "
                f"than {ratio:g}x it; not rolling back, escalating so someone looks",
                escalate=True,
                blocked_by="attribution-pending",
            )
        return _Verdict(
            Outcome.NONE,
            f"{word} SLO breach proven for {_fmt_d(lasted)} (since {ctx.time_text(onset)}), "
            "attribution pending: "
            f"the baseline is within the SLO and the new version is not yet significantly worse than "
            f"{ratio:g}x it; watching",
            blocked_by="attribution-pending",
        )
    if ctx.rollback_risk is Risk.HIGH or not ctx.has_rollback_target:
        why = ctx.risk_reason or (
            "no healthy revision to go back to" if not ctx.has_rollback_target else "release marked high-risk"
        )
        return _Verdict(
            Outcome.NONE,
            f"{word} breach attributable to the new version, but rollback risk exceeds impact ({why}): "
            "escalating instead of rolling back",
            escalate=True,
            blocked_by="rollback-risk",
        )
    if ctx.newer_rollout_in_progress:
        return _Verdict(
            Outcome.NONE,
            f"{word} breach, but a newer rollout is already progressing: holding",
            blocked_by="newer-rollout",
        )
    if ctx.hold is not None:
        hold = ctx.hold
        if t < hold.until:
            return _Verdict(
                Outcome.NONE,
                f"{word} breach, but a {hold.reason} hold runs {_fmt_d(hold.until - t)} more "
                f"(until {ctx.time_text(hold.until)}): holding",
                blocked_by="hold",
                waiting_since=since,
            )
        return _Verdict(
            Outcome.CONTROLLED,
            f"{hold.reason} hold expired {_fmt_d(t - hold.until)} ago ({ctx.time_text(hold.until)}) with the "
            f"{word} breach still there: controlled rollback",
            rollback=True,
            waiting_since=since,
        )
    if level is Impact.SEVERE:
        return _Verdict(
            Outcome.IMMEDIATE,
            "severe breach attributable to the new version, rollback risk low: immediate rollback",
            rollback=True,
            waiting_since=since,
        )
    since = since if since is not None else t
    # The grace runs from the end of the first bad interval: an onset estimate one interval early
    # must never make a controlled rollback come before its grace is over.
    due = since + grace + params.interval_s
    if t >= due:
        return _Verdict(
            Outcome.CONTROLLED,
            f"manageable breach attributable to the new version for {_fmt_d(t - since)} "
            f"(since {ctx.time_text(since)}), still there after the {grace:g}s grace: controlled rollback",
            rollback=True,
            waiting_since=since,
        )
    return _Verdict(
        Outcome.CONTROLLED,
        f"manageable breach attributable to the new version for {_fmt_d(t - since)} "
        f"(since {ctx.time_text(since)}): "
        f"waiting {_fmt_d(due - t)} more of the {grace:g}s grace for recovery or a fix",
        waiting_since=since,
    )


def decide(
    evidence: Evidence, ctx: Context, params: TargetParams, state: DecisionState
) -> tuple[Decision, DecisionState]:
    """One tick of the framework: evidence + context → decision, and the state for the next tick."""
    t = evidence.t
    state = _track(evidence, state)
    episode = state.episode

    def decision_of(v: _Verdict) -> Decision:
        decision = Decision(
            target=evidence.target,
            t=t,
            outcome=v.outcome,
            rollback=v.rollback,
            reasons=(v.why, *evidence.reasons),
            evidence=evidence,
            escalate=v.escalate,
            blocked_by=v.blocked_by,
            waiting_since=v.waiting_since,
            episode=episode,
        )
        return _apply_rails(decision, ctx, t)

    if episode is None:
        if evidence.inconclusive:
            why = "not enough data to judge; never rolling back on missing data"
            return decision_of(_Verdict(Outcome.INCONCLUSIVE, why)), state
        return decision_of(_Verdict(Outcome.NONE, "no SLO breach")), state

    if evidence.breached:
        # This tick's own verdict: the only one that may roll back.
        attribution = evidence.attribution or Attribution.ATTRIBUTABLE
        own = decision_of(
            _breach_verdict(
                evidence.impact,
                attribution,
                t=t,
                since=state.breach_since,
                onset=episode.onset,
                ctx=ctx,
                params=params,
            )
        )
        if own.rollback or (evidence.impact, attribution) == (episode.impact, episode.attribution):
            return own, state
    # The episode's verdict: the breach is not proven this tick (or proven at a lesser level or
    # blame than the episode's): the same verdict as the episode's, never a rollback.
    kept = decision_of(
        _breach_verdict(
            episode.impact,
            episode.attribution,
            t=t,
            since=state.breach_since,
            onset=episode.onset,
            ctx=ctx,
            params=params,
        )
    )
    if kept.rollback:
        if evidence.breached:
            gap = f"the breach is proven this interval as {evidence.impact.value}"
            if evidence.attribution is not Attribution.ATTRIBUTABLE:
                gap += ", not attributable to the new version"
        elif evidence.inconclusive:
            gap = "not enough data this interval"
        else:
            gap = "the breach is not proven this interval"
        why = (
            f"{episode.impact.value} breach episode open since {ctx.time_text(episode.onset)}, but {gap}: "
            "rolling back only on an interval whose breach is proven"
        )
        kept = replace(
            kept,
            rollback=False,
            blocked_by="unproven",
            reasons=(kept.reasons[0], why, *evidence.reasons),
        )
    elif not evidence.breached:
        note = "not enough data this interval" if evidence.inconclusive else "breach not proven this interval"
        kept = replace(
            kept,
            reasons=(
                kept.reasons[0],
                f"{note}; the episode stays open until recovery is proven",
                *evidence.reasons,
            ),
        )
    return kept, state
