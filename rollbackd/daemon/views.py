"""How the daemon's state looks from the outside: the JSON documents of the API.

Every time in them is a wall-clock time in UTC (``"2026-12-06T17:03:12.345Z"``), converted from
the daemon's event-loop clock by one :class:`~rollbackd.daemon.wallclock.WallClock`; durations
(``age_s``, ``remaining_s``, ``elapsed_s``) are seconds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from rollbackd.actions.base import ActionResult
from rollbackd.actions.targets import action_name
from rollbackd.daemon.jsonify import JsonValue, to_json_value
from rollbackd.daemon.series import Point, Side, point_of, pooled
from rollbackd.daemon.state import DaemonState, RuntimeFlags, TargetState
from rollbackd.daemon.switches import DRY_RUN, FREEZE, SwitchBoard, accept_key, hold_key
from rollbackd.daemon.target_state import current_state
from rollbackd.daemon.wallclock import WallClock, utc_iso
from rollbackd.decision.lifetime import Accepted, Lifetime
from rollbackd.decision.verdict import PartnerVerdict, partner_verdict
from rollbackd.events.build import decided_at as run_decided_at
from rollbackd.events.build import next_step
from rollbackd.model import Decision, Episode, Evidence
from rollbackd.run import RollbackRun
from rollbackd.verification import RUNBOOK_ROLLBACK_TARGET_S


def evidence_view(
    evidence: Evidence | None, *, wall: WallClock, confidence_required: float | None = None
) -> JsonValue:
    """The detectors' evidence; each finding's ``confidence`` is that of its ``conclusion``
    (``breach``, ``unproven``, ``within-lately``, ``within``), ``confidence_required`` the level a
    breach must be proven at."""
    if evidence is None:
        return None
    return {
        "t": wall.iso(evidence.t),
        "confidence_required": to_json_value(confidence_required),
        "impact": evidence.impact.value,
        "attributable": evidence.attributable,
        "attribution": None if evidence.attribution is None else evidence.attribution.value,
        "recovered": evidence.recovered,
        "inconclusive": evidence.inconclusive,
        "candidate_requests": to_json_value(evidence.candidate_requests),
        "baseline_requests": to_json_value(evidence.baseline_requests),
        "findings": [
            {**finding_fields, "since": wall.iso(finding.since)}
            for finding in evidence.findings
            if isinstance(finding_fields := to_json_value(finding), dict)
        ],
        "reasons": list(evidence.reasons),
    }


def episode_view(episode: Episode | None, *, wall: WallClock) -> JsonValue:
    """The breach episode open at a decision."""
    if episode is None:
        return None
    return {
        "opened_at": wall.iso(episode.opened_at),
        "onset": wall.iso(episode.onset),
        "impact": episode.impact.value,
        "attribution": episode.attribution.value,
        "proven_at": wall.iso(episode.proven_at),
    }


def decision_view(decision: Decision | None, *, now: float, wall: WallClock) -> JsonValue:
    if decision is None:
        return None
    return {
        "t": wall.iso(decision.t),
        "age_s": to_json_value(now - decision.t),
        "outcome": decision.outcome.value,
        "rollback": decision.rollback,
        "dry_run": decision.dry_run,
        "escalate": decision.escalate,
        "blocked_by": decision.blocked_by,
        "waiting_since": wall.iso(decision.waiting_since),
        "reasons": list(decision.reasons),
        "episode": episode_view(decision.episode, wall=wall),
        "extra": to_json_value(decision.extra),
    }


def action_view(result: ActionResult | None) -> JsonValue:
    if result is None:
        return None
    return {
        "action": result.action,
        "outcome": result.outcome.value,
        "reason": result.reason,
        "changes": [
            {
                "object": c.object,
                "field": c.field,
                "before": to_json_value(c.before),
                "after": to_json_value(c.after),
            }
            for c in result.changes
        ],
        "api_s": to_json_value(result.api_s),
        "wait_s": to_json_value(result.wait_s),
        "from_revision": result.from_revision,
        "to_revision": result.to_revision,
        # A canary abort: its traffic router, and the split it read before and after the abort.
        "router": to_json_value(result.details.get("router")),
        "split_before": to_json_value(result.details.get("split_before")),
        "split_after": to_json_value(result.details.get("split_after")),
        "gitops": [
            {
                "reconciler": hold.reconciler,
                "object": hold.object,
                "reconciles": list(hold.reconciles),
                "field": hold.field,
                "previous": to_json_value(hold.previous),
                "suspended": hold.suspended,
                "resume": hold.resume,
            }
            for hold in result.gitops
        ],
        "next_step": next_step(result),
    }


def rollback_view(run: RollbackRun | None, *, now: float, wall: WallClock) -> JsonValue:
    """A rollback from decision to verdict: the action's changes, the verification, timings
    against the runbook's 10-minute target."""
    if run is None:
        return None
    verification = run.verification
    return {
        "phase": run.phase.value,
        "mode": run.mode,
        # As the events say it: the time the run recorded (the same after a restart), else converted.
        "decided_at": utc_iso(run_decided_at(run, wall.clock)),
        "age_s": to_json_value(now - run.decided_at),
        "action": action_view(run.action),
        "waiting": None
        if run.waiting is None
        else {
            "for": run.waiting.what,
            "since": wall.iso(run.waiting.since),
            "elapsed_s": to_json_value(max(0.0, now - run.waiting.since)),
        },
        "verification": None
        if verification is None
        else {
            "status": verification.status.value,
            "reasons": list(verification.reasons),
            "error_rate": to_json_value(verification.error_rate),
            "p95_ms": to_json_value(verification.p95_ms),
            "requests": to_json_value(verification.requests),
            "health_ok": verification.health_ok,
            "available": verification.available,
            "elapsed_s": to_json_value(verification.elapsed_s),
        },
        "duration_s": to_json_value(run.duration_s),
        "runbook_target_s": RUNBOOK_ROLLBACK_TARGET_S,
        "within_runbook_target": run.within_runbook_target,
    }


def _side_view(side: Side | None) -> JsonValue:
    if side is None:
        return None
    return {
        "requests": to_json_value(side.requests),
        "error_rate": to_json_value(side.error_rate),
        "p95_ms": to_json_value(side.p95_ms),
    }


def point_view(point: Point, *, wall: WallClock | None = None) -> JsonValue:
    """One point of the charts: its times in wall-clock UTC with ``wall`` (the API), else as the
    seconds they are (a backtest's recording, timed from its start)."""
    return {
        "start": to_json_value(point.start) if wall is None else wall.iso(point.start),
        "t": to_json_value(point.t) if wall is None else wall.iso(point.t),
        "candidate": _side_view(point.candidate),
        "baseline": _side_view(point.baseline),
    }


def marks_view(target: TargetState, run: RollbackRun | None, *, wall: WallClock) -> list[JsonValue]:
    """What the charts mark, oldest first (wall-clock UTC, like the points): the breach's first
    bad interval (the episode's onset), the rollback decision, the action done, the
    verification's verdict."""
    marks: list[JsonValue] = []
    decided = target.last_rollback
    episode = decided.episode if decided is not None else None
    if episode is None and target.latest is not None:
        episode = target.latest.episode
    if episode is not None:
        marks.append({"kind": "first-bad", "t": wall.iso(episode.onset), "label": "first bad interval"})
    if decided is not None:
        label = f"rollback decided ({decided.outcome.value})"
        if decided.dry_run:
            label = "would roll back (dry-run)"
        marks.append({"kind": "decision", "t": wall.iso(decided.t), "label": label})
    if run is not None:
        if run.acted_at is not None and run.action is not None:
            marks.append({
                "kind": "action",
                "t": wall.iso(run.acted_at),
                "label": f"{run.action.action}: {run.action.outcome.value}",
            })
        if run.finished_at is not None:
            marks.append({"kind": "verdict", "t": wall.iso(run.finished_at), "label": run.phase.value})
    return marks


def window_view(target: TargetState) -> JsonValue:
    """Each side's error rate and P95 over the whole detection window (every interval the
    detection window chart draws, pooled: errors over requests, the P95 of the merged latency
    histograms): what the evidence table shows as the baseline when a finding has none of its own."""
    observations = target.observations
    return {
        "candidate": _side_view(pooled(obs.candidate for obs in observations)),
        "baseline": _side_view(pooled(obs.baseline for obs in observations)),
    }


def series_view(target: TargetState, run: RollbackRun | None, *, now: float, wall: WallClock) -> JsonValue:
    """The charts' data: the SLO, every interval of the detection window, the release's series
    (downsampled, at most ``max_points``) and the marks; times in wall-clock UTC, ``now`` the
    time of the answer."""
    interval_s = target.params.interval_s
    return {
        "now": wall.iso(now),
        "interval_s": to_json_value(interval_s),
        "max_points": target.series.max_points,
        "slo": {
            "error_rate": to_json_value(target.params.slo.max_error_rate),
            "p95_ms": to_json_value(target.params.slo.max_p95_ms),
        },
        "window": [
            point_view(point_of(obs, interval_s=interval_s), wall=wall) for obs in target.observations
        ],
        "window_pooled": window_view(target),
        "release": [point_view(point, wall=wall) for point in target.series.points],
        "marks": marks_view(target, run, wall=wall),
    }


def _ending_view(ended: Accepted, *, wall: WallClock) -> dict[str, JsonValue]:
    return {
        "how": ended.how.value,
        "text": ended.text,
        "at": wall.iso(ended.at),
        "judged_s": to_json_value(round(ended.judged_s, 6)),
        "by": ended.by,
        "reason": ended.reason,
        "superseded_by": ended.revision,
        "superseded_by_release": ended.release,
    }


def lifetime_view(release: Lifetime | None, *, now: float, wall: WallClock) -> JsonValue:
    """The release judged now (see :mod:`rollbackd.decision.lifetime`): since when, which
    revision or announced release (``release``: its id), whether it is still judged (``state``
    ``judged``) or ``accepted`` and how, and how the release before it ended (``previous``:
    superseded by this one)."""
    if release is None:
        return None
    return {
        "state": "judged" if release.accepted is None else "accepted",
        "revision": release.revision,
        "release": release.release,
        "started_at": wall.iso(release.started_at),
        "judged_s": to_json_value(round(
            (release.accepted.at if release.accepted is not None else now) - release.started_at, 6
        )),
        "accepted": None if release.accepted is None else _ending_view(release.accepted, wall=wall),
        "previous": None if release.previous is None else {
            "revision": release.previous_revision, **_ending_view(release.previous, wall=wall),
        },
    }


def target_view(
    state: DaemonState,
    target: TargetState,
    *,
    now: float,
    wall: WallClock,
    switches: SwitchBoard | None = None,
) -> JsonValue:
    """One target: what it is, the latest evidence and decision, its last rollback decision, and
    what currently restrains it (hold, cooldown, the post-rollback watch)."""
    latest = target.latest
    run = state.rollbacks.runs.get(target.key) if state.rollbacks else None
    hold = state.holds.get(target.key)
    stored_hold = switches.who(hold_key(target.key)) if switches is not None else None
    accepted = switches.who(accept_key(target.key)) if switches is not None else None
    cooldown_until = state.ledger.cooldown_until(target.key)
    if cooldown_until is not None and cooldown_until <= now:
        cooldown_until = None
    watch = state.ledger.watch_of(target.key, now)
    return {
        "key": target.key,
        "namespace": target.settings.namespace,
        "name": target.settings.name,
        "strategy": target.params.strategy.value,
        **origin_view(state, target.key),
        # Where the target stands (as rollbackd_target_state and the retained status say it): a
        # rollback's phase while it runs, its verdict until a conclusive decision after it.
        "state": current_state(latest, run).value,
        "evidence": evidence_view(
            latest.evidence if latest is not None else None,
            wall=wall,
            confidence_required=target.params.detection.confidence,
        ),
        "decision": decision_view(latest, now=now, wall=wall),
        "last_rollback": decision_view(target.last_rollback, now=now, wall=wall),
        "rollback": rollback_view(run, now=now, wall=wall),
        "dry_run_plan": action_view(state.rollbacks.dry_run_plan(target.key) if state.rollbacks else None),
        "hold": None
        if hold is None
        else {
            "until": wall.iso(hold.until),
            # To the microsecond: a hold of 120.5 s shows 120.5, not the float noise of loop times.
            "remaining_s": to_json_value(round(max(0.0, hold.until - now), 6)),
            "expired": hold.until <= now,
            "reason": hold.reason,
            "set_at": wall.iso(hold.set_at),
            # Who set it, why, when and until when (UTC), as stored for every replica.
            **({} if stored_hold is None else {"set": stored_hold.view()}),
        },
        "accepted": accepted.view() if accepted is not None else None,
        "release": to_json_value(target.release.to_json()) if target.release is not None else None,
        "lifetime": lifetime_view(target.lifetime, now=now, wall=wall),
        "cooldown": None
        if cooldown_until is None
        else {
            "until": wall.iso(cooldown_until),
            "remaining_s": to_json_value(round(cooldown_until - now, 6)),
        },
        # After a verified rollback: a new degradation until then escalates, never rolls back again.
        "watch": None
        if watch is None
        else {
            "since": wall.iso(watch.since),
            "until": wall.iso(watch.until),
            "remaining_s": to_json_value(round(watch.until - now, 6)),
        },
        "series": series_view(target, run, now=now, wall=wall),
    }


def origin_view(state: DaemonState, key: str) -> dict[str, JsonValue]:
    """Where a target came from: ``source`` ``file`` or ``annotation``, and for an annotation the
    ``object`` (kind, namespace, name) that carries it."""
    ref = state.origins.get(key)
    if ref is None:
        return {"source": "file", "object": None}
    return {
        "source": "annotation",
        "object": {"kind": ref.kind, "namespace": ref.namespace, "name": ref.name},
    }


def opt_ins_view(state: DaemonState) -> JsonValue:
    """What is wrong with opt-in by annotation: annotations that cannot be used, annotated
    releases the file's targets win over, and namespaces that cannot be watched."""
    return {
        "problems": [
            {"object": ref, "problems": list(problems)}
            for ref, problems in sorted(state.opt_in_problems.items())
        ],
        "conflicts": [{"object": ref, "reason": why} for ref, why in sorted(state.conflicts.items())],
        "watch_problems": list(state.watch_problems),
    }


def flags_view(flags: RuntimeFlags, switches: SwitchBoard | None = None) -> JsonValue:
    """The global switches, who set each last through the API, why and when (``freeze_set`` /
    ``dry_run_set``; ``null`` when set by the configuration file), and where the switches are kept
    for every replica (``switches_kept_in``: the store, or the ConfigMap every replica watches)."""
    freeze = switches.who(FREEZE) if switches is not None else None
    dry_run = switches.who(DRY_RUN) if switches is not None else None
    return {
        "freeze": flags.freeze,
        "dry_run": flags.dry_run,
        "freeze_set": None if freeze is None else freeze.view(),
        "dry_run_set": None if dry_run is None else dry_run.view(),
        "switches_kept_in": "this process only" if switches is None else switches.where,
    }


def targets_view(
    state: DaemonState, *, now: float, wall: WallClock, switches: SwitchBoard | None = None
) -> JsonValue:
    """All targets by key, plus the global switches."""
    flags = flags_view(state.flags, switches)
    assert isinstance(flags, dict)
    return {
        **flags,
        "targets": {
            key: target_view(state, target, now=now, wall=wall, switches=switches)
            for key, target in state.targets.items()
        },
        "opt_ins": opt_ins_view(state),
    }


def target_verdict(target: TargetState, *, now: float) -> PartnerVerdict:
    """The partner's verdict on ``target`` at loop time ``now`` (see
    :mod:`rollbackd.decision.verdict`)."""
    return partner_verdict(target.latest, now=now, interval_s=target.params.interval_s)


def verdict_view(
    target: TargetState, verdict: PartnerVerdict, *, now: float, wall_now: datetime
) -> JsonValue:
    """The judgement document of ``GET /api/v1/targets/{namespace}/{name}/verdict`` (its fields are
    a stable contract, described in docs/partners.md): ``wall_now`` is the wall-clock time of loop
    time ``now``, to place the decision in RFC 3339."""
    decided_at: str | None = None
    age_s: float | None = None
    if verdict.decision_t is not None:
        age_s = max(0.0, now - verdict.decision_t)
        decided_at = (wall_now - timedelta(seconds=age_s)).isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        )
    revision = target.judged_revision
    if revision is None and target.facts is not None:
        revision = target.facts.candidate_revision
    return {
        "target": target.key,
        "verdict": verdict.verdict.value,
        "rollback": verdict.would_roll_back,
        "reasons": list(verdict.reasons),
        "decided_at": decided_at,
        "age_s": to_json_value(age_s),
        "revision": revision,
        "strategy": target.params.strategy.value,
        "action": action_name(target.params.strategy),
        "decision": None
        if verdict.outcome is None
        else {"outcome": verdict.outcome, "blocked_by": verdict.blocked_by, "rollback": verdict.rollback},
    }
