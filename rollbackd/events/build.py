"""Building events from the domain values: evidence, decisions, holds and rollback runs.

Two layers, both free of I/O:

- :class:`EventFactory` makes one CloudEvent of each type from the domain objects
  (:class:`~rollbackd.model.Evidence`, :class:`~rollbackd.model.Decision`,
  :class:`~rollbackd.model.Hold`, :class:`~rollbackd.run.RollbackRun`), converting the
  event-loop times they carry to wall-clock times with a :class:`Clock`;
- :class:`Announcer` follows one target tick after tick and says which events are worth
  publishing: changes only (a breach beginning, a new verdict, a new hold, a rollback run moving
  to its next phase), never the same news twice.

In the daemon, per target::

    announcer = Announcer(factory=EventFactory(source=settings.events.source), target=key, slo=slo)
    ...
    events = announcer.on_decision(decision, hold=context.hold, clock=Clock.now())
    events += announcer.on_run(run, clock=Clock.now(), decision=decision)   # when a run exists
    for event in events:
        await publisher.announce(event)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from rollbackd.actions.base import ActionOutcome, ActionResult, GitOpsHold
from rollbackd.actions.reconcilers import REVERT_IN_GIT
from rollbackd.actions.targets import ACTIONS
from rollbackd.decision.lifetime import Ending, Lifetime
from rollbackd.events.model import (
    ActionData,
    ChangeData,
    CloudEvent,
    CommandData,
    DecisionData,
    DecisionMadeData,
    EpisodeData,
    EscalationRaisedData,
    EventData,
    EventType,
    EvidenceData,
    FindingData,
    FlagData,
    GitOpsData,
    GitOpsSuspendedData,
    HoldData,
    HoldExpiredData,
    HoldSetData,
    ReleaseAcceptedData,
    ReleaseData,
    ReleaseStartedData,
    RollbackCompletedData,
    RollbackFailedData,
    RollbackStartedData,
    RollbackVerifiedData,
    SloData,
    SplitData,
    TargetDegradedData,
    VerificationData,
    VerificationFailedData,
    short_type,
    split_subject,
)
from rollbackd.model import (
    Attribution,
    Decision,
    Episode,
    Evidence,
    Finding,
    Hold,
    Impact,
    Outcome,
    Slo,
    Strategy,
    percent,
)
from rollbackd.releases import Release
from rollbackd.run import RollbackRun
from rollbackd.verification import RUNBOOK_ROLLBACK_TARGET_S, VerificationResult

#: The action each strategy rolls back with (what ``rollback.started`` announces).
ACTION_OF_STRATEGY: Mapping[Strategy, str] = ACTIONS

_UNITS = {"error_rate": "ratio", "p95": "ms", "health": "endpoints"}


@dataclass(frozen=True, slots=True)
class Clock:
    """One instant on both clocks: the event loop's (what the core's ``t`` values are on) and the
    wall clock (what subscribers read)."""

    wall: datetime
    loop: float

    def __post_init__(self) -> None:
        if self.wall.tzinfo is None:
            raise ValueError("Clock.wall must be timezone-aware")

    @classmethod
    def now(cls) -> Clock:
        """Both clocks now (inside a running event loop)."""
        return cls(wall=datetime.now(UTC), loop=asyncio.get_running_loop().time())

    def at(self, t: float) -> datetime:
        """The wall-clock time of event-loop time ``t``."""
        return (self.wall + timedelta(seconds=t - self.loop)).astimezone(UTC)

    def maybe(self, t: float | None) -> datetime | None:
        return None if t is None else self.at(t)


def decided_at(run: RollbackRun, clock: Clock) -> datetime:
    """When ``run`` was decided, on the wall clock: as the run recorded it (the same after a
    restart or a fail-over), else its loop time converted with ``clock``."""
    return run.decided_wall if run.decided_wall is not None else clock.at(run.decided_at)


class _RunFields(TypedDict):
    target: str
    namespace: str
    name: str
    summary: str
    run_id: str | None
    mode: str
    decided_at: datetime


# --- formatting for summaries ---------------------------------------------------------------------


def _value(unit: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if unit == "ratio":
        return percent(value)
    if unit == "ms":
        return f"{value:.0f} ms"
    return f"{value:g}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s"


def _finding_text(finding: FindingData) -> str:
    if finding.signal == "health":
        return finding.detail or f"{finding.value:g} health endpoints failing"
    name = {"error_rate": "error rate", "p95": "P95"}.get(finding.signal, finding.signal)
    return f"{name} {_value(finding.unit, finding.value)} vs SLO {_value(finding.unit, finding.threshold)}"


#: How ``target.degraded`` says who a breach is blamed on.
_BLAME: dict[Attribution | None, str] = {
    Attribution.ATTRIBUTABLE: "the new version",
    Attribution.PENDING: "attribution pending: the baseline is within the SLO",
    Attribution.BASELINE_DEGRADED: "the baseline is degraded too: likely a platform incident",
    Attribution.NO_BASELINE: "no baseline to compare with",
}


def _first(reasons: Sequence[str], default: str = "") -> str:
    return reasons[0] if reasons else default


# --- domain -> data --------------------------------------------------------------------------------


def finding_data(finding: Finding, clock: Clock) -> FindingData:
    return FindingData(
        signal=finding.signal,
        unit=_UNITS.get(finding.signal, ""),
        value=finding.value,
        threshold=finding.threshold,
        baseline_value=finding.baseline_value,
        breached=finding.breached,
        severe=finding.severe,
        attributable=finding.attributable,
        confidence=min(1.0, max(0.0, finding.confidence)),
        conclusion=None if finding.conclusion is None else finding.conclusion.value,
        detail=finding.detail,
        since=clock.maybe(finding.since),
        attribution=None if finding.attribution is None else finding.attribution.value,
    )


def evidence_data(evidence: Evidence, clock: Clock) -> EvidenceData:
    return EvidenceData(
        impact=evidence.impact.value,
        breached=evidence.breached,
        attributable=evidence.attributable,
        inconclusive=evidence.inconclusive,
        within_slo=evidence.within_slo,
        candidate_requests=evidence.candidate_requests,
        baseline_requests=evidence.baseline_requests,
        since=clock.maybe(evidence.since),
        findings=tuple(finding_data(f, clock) for f in evidence.findings),
        reasons=evidence.reasons,
        attribution=None if evidence.attribution is None else evidence.attribution.value,
        recovered=evidence.recovered,
    )


def episode_data(episode: Episode, clock: Clock) -> EpisodeData:
    return EpisodeData(
        opened_at=clock.at(episode.opened_at),
        onset=clock.at(episode.onset),
        impact="severe" if episode.impact is Impact.SEVERE else "manageable",
        attribution=episode.attribution.value,
        proven_at=clock.at(episode.proven_at),
    )


def decision_data(decision: Decision, clock: Clock) -> DecisionData:
    return DecisionData(
        outcome=decision.outcome.value,
        rollback=decision.rollback,
        escalate=decision.escalate,
        dry_run=decision.dry_run,
        blocked_by=decision.blocked_by,
        waiting_since=clock.maybe(decision.waiting_since),
        reasons=decision.reasons,
        episode=None if decision.episode is None else episode_data(decision.episode, clock),
    )


def gitops_data(hold: GitOpsHold) -> GitOpsData:
    return GitOpsData(
        reconciler="argocd" if hold.reconciler == "argocd" else "flux",
        object=hold.object,
        api_version=hold.api_version,
        reconciles=hold.reconciles,
        field=hold.field,
        previous=hold.previous,
        suspended=hold.suspended,
        resume=hold.resume,
    )


def suspended_by_run(result: ActionResult) -> list[tuple[GitOpsHold, object]]:
    """The reconcilers the run of ``result`` suspended (its changes list the suspension, perhaps
    made by a process that stopped), each with its field's value before."""
    before = {(change.object, change.field): change.before for change in result.changes}
    return [
        (hold, before[(hold.object, hold.field)])
        for hold in result.gitops
        if hold.suspended and (hold.object, hold.field) in before
    ]


def next_step(result: ActionResult) -> str | None:
    """What people must do after ``result``: with reconciliation from Git off, revert in Git."""
    return REVERT_IN_GIT if any(hold.suspended for hold in result.gitops) else None


def action_data(result: ActionResult) -> ActionData:
    return ActionData(
        action=result.action,
        outcome=result.outcome.value,
        reason=result.reason,
        changes=tuple(
            ChangeData(object=c.object, field=c.field, before=c.before, after=c.after) for c in result.changes
        ),
        from_revision=result.from_revision,
        to_revision=result.to_revision,
        api_s=result.api_s,
        wait_s=result.wait_s,
        router=result.details.get("router"),
        split_before=_split_data(result.details.get("split_before")),
        split_after=_split_data(result.details.get("split_after")),
        gitops=tuple(gitops_data(hold) for hold in result.gitops),
        command=_command_data(result.details.get("command")),
        flag=_flag_data(result.details),
    )


def _command_data(command: Any) -> CommandData | None:
    """A command's record as the command action's details carry it."""
    if not isinstance(command, dict):
        return None
    return CommandData.model_validate(command)


def _flag_data(details: Mapping[str, Any]) -> FlagData | None:
    """The flag a ``feature-flag-off`` action's details describe (``None`` for other actions)."""
    if "flag" not in details or details.get("store") not in ("http", "sql"):
        return None
    return FlagData(name=str(details["flag"]), store=details["store"], where=str(details.get("where", "")),
                    before=details.get("before"), after=details.get("after"), rows=details.get("rows"))


def _split_data(split: Any) -> SplitData | None:
    """A router's split as the action's details carry it (``Split.as_dict``)."""
    if not isinstance(split, dict):
        return None
    return SplitData(source=str(split.get("source", "")),
                     canary_percent=float(split.get("canary_percent", 0.0)),
                     rules=tuple(float(rule) for rule in split.get("rules") or ()))


def verification_data(result: VerificationResult, slo: Slo | None) -> VerificationData:
    return VerificationData(
        status=result.status.value,
        reasons=result.reasons,
        error_rate=result.error_rate,
        p95_ms=result.p95_ms,
        requests=result.requests,
        health_ok=result.health_ok,
        available=result.available,
        elapsed_s=result.elapsed_s,
        slo=None if slo is None else SloData(max_error_rate=slo.max_error_rate, max_p95_ms=slo.max_p95_ms),
    )


def hold_data(hold: Hold, clock: Clock) -> HoldData:
    return HoldData(reason=hold.reason, until=clock.at(hold.until), set_at=clock.maybe(hold.set_at))


@dataclass(frozen=True, slots=True)
class EventFactory:
    """Makes rollbackd's CloudEvents, each with a fresh unique ``id``.

    ``source`` is the CloudEvents ``source`` of every event (``events.source`` in the settings).
    """

    source: str = "/rollbackd"

    def event(
        self, kind: EventType, target: str, data: EventData, *, clock: Clock, event_id: str | None = None
    ) -> CloudEvent:
        """Wrap ``data`` (the model of ``kind``) in a CloudEvent about ``target`` (its id
        ``event_id``, or a fresh one)."""
        return CloudEvent(
            id=event_id if event_id is not None else str(uuid.uuid4()),
            source=self.source,
            type=kind.full,
            subject=target,
            time=clock.wall,
            data=data,
        )

    @staticmethod
    def _common(target: str, summary: str) -> dict[str, str]:
        namespace, name = split_subject(target)
        return {"target": target, "namespace": namespace, "name": name, "summary": summary}

    @staticmethod
    def _run_common(run: RollbackRun, summary: str, clock: Clock) -> _RunFields:
        """The fields every ``rollback.*`` event's data has: the target's, the run's and its decision time."""
        namespace, name = split_subject(run.key)
        return _RunFields(
            target=run.key,
            namespace=namespace,
            name=name,
            summary=summary,
            run_id=run.run_id,
            mode=run.mode,
            decided_at=decided_at(run, clock),
        )

    def target_degraded(self, evidence: Evidence, *, clock: Clock) -> CloudEvent:
        """``target.degraded``: ``evidence`` shows a breach (impact manageable or severe)."""
        if evidence.impact is Impact.NONE:
            raise ValueError("target.degraded needs evidence of a breach")
        data = evidence_data(evidence, clock)
        breached = [f for f in data.findings if f.breached] or list(data.findings)
        what = "; ".join(_finding_text(f) for f in breached) or _first(evidence.reasons, "SLO breached")
        blame = _BLAME.get(evidence.attribution, "not attributable to the new version")
        summary = f"{evidence.target} degraded ({evidence.impact.value}, {blame}): {what}"
        return self.event(
            EventType.TARGET_DEGRADED,
            evidence.target,
            TargetDegradedData(
                **self._common(evidence.target, summary), impact=evidence.impact.value, evidence=data
            ),
            clock=clock,
        )

    def decision_made(self, decision: Decision, *, clock: Clock) -> CloudEvent:
        """``decision.made``: the framework's verdict."""
        if decision.rollback:
            verdict = f"{decision.outcome.value} rollback" + (
                " (dry-run: not acting)" if decision.dry_run else ""
            )
        elif decision.blocked_by:
            verdict = f"no rollback ({decision.blocked_by})"
        else:
            verdict = {"inconclusive": "inconclusive", "controlled": "waiting (controlled)"}.get(
                decision.outcome.value, "no rollback"
            )
        summary = f"{decision.target}: {verdict}: {_first(decision.reasons)}"
        evidence = None if decision.evidence is None else evidence_data(decision.evidence, clock)
        return self.event(
            EventType.DECISION_MADE,
            decision.target,
            DecisionMadeData(
                **self._common(decision.target, summary),
                decision=decision_data(decision, clock),
                evidence=evidence,
            ),
            clock=clock,
        )

    def rollback_started(
        self,
        run: RollbackRun,
        *,
        clock: Clock,
        decision: Decision | None = None,
        strategy: Strategy | None = None,
        bad_revision: int | None = None,
    ) -> CloudEvent:
        """``rollback.started``: ``run`` was just started from ``decision``; the run's own reasons
        and bad revision (kept in its record) win over those of ``decision`` and ``bad_revision``."""
        action = ACTION_OF_STRATEGY.get(strategy) if strategy is not None else None
        reasons = run.reasons or (decision.reasons if decision is not None else ())
        if run.bad_revision is not None:
            bad_revision = run.bad_revision
        summary = f"rolling back {run.key} ({run.mode}" + (f", {action}" if action else "") + ")"
        if reasons:
            summary += f": {reasons[0]}"
        evidence = (
            None if decision is None or decision.evidence is None else evidence_data(decision.evidence, clock)
        )
        return self.event(
            EventType.ROLLBACK_STARTED,
            run.key,
            RollbackStartedData(
                **self._run_common(run, summary, clock),
                action=action,
                from_revision=bad_revision,
                reasons=reasons,
                evidence=evidence,
            ),
            clock=clock,
        )

    def rollback_completed(self, run: RollbackRun, *, clock: Clock) -> CloudEvent:
        """``rollback.completed``: the action of ``run`` is done (verification follows)."""
        if run.action is None:
            raise ValueError("rollback.completed needs the run's action result")
        result = run.action
        acted_at = run.acted_at if run.acted_at is not None else clock.loop
        duration = acted_at - run.decided_at
        revisions = (
            f", revision {result.from_revision} -> {result.to_revision}"
            if result.from_revision is not None or result.to_revision is not None
            else ""
        )
        summary = (
            f"{run.key} rolled back with {result.action} in {_duration(duration)} "
            f"({len(result.changes)} change{'' if len(result.changes) == 1 else 's'}{revisions}); verifying"
        )
        step = next_step(result)
        if step is not None:
            summary += f". Reconciliation from Git is suspended: {step}"
        return self.event(
            EventType.ROLLBACK_COMPLETED,
            run.key,
            RollbackCompletedData(
                **self._run_common(run, summary, clock),
                duration_s=duration,
                action=action_data(result),
                next_step=step,
            ),
            clock=clock,
        )

    def release_started(self, release: Release, *, clock: Clock) -> CloudEvent:
        """``release.started``: ``release`` was announced; the target is judged from its start.
        Its id comes from the release's (and the source): replicas that do not share a store each
        record the release, and the one that delivers it after a fail-over delivers the same
        event again, which subscribers drop by its id."""
        what = release.description or ", ".join(f"{k}={v}" for k, v in release.details.items()) or release.id
        summary = f"{release.target}: {release.kind} release started by {release.who}: {what}"
        return self.event(
            EventType.RELEASE_STARTED,
            release.target,
            ReleaseStartedData(
                **self._common(release.target, summary),
                release=ReleaseData.model_validate(release.to_json()),
            ),
            clock=clock,
            event_id=str(uuid.uuid5(
                uuid.NAMESPACE_URL, f"{self.source}#release.started/{release.target}/{release.id}"
            )),
        )

    def gitops_suspended(
        self, run: RollbackRun, hold: GitOpsHold, *, previous: object, clock: Clock
    ) -> CloudEvent:
        """``gitops.suspended``: ``run`` stopped the reconciler ``hold`` (its field was ``previous``)."""
        namespace, name = split_subject(run.key)
        tool = "Argo CD" if hold.reconciler == "argocd" else "Flux"
        what = "automated sync turned off" if hold.reconciler == "argocd" else "suspended"
        summary = (
            f"{run.key}: {tool} {hold.object.replace('/', ' ', 1)} {what} before the rollback "
            f"(it reconciles {', '.join(hold.reconciles)}). {REVERT_IN_GIT}"
        )
        return self.event(
            EventType.GITOPS_SUSPENDED,
            run.key,
            GitOpsSuspendedData(
                target=run.key,
                namespace=namespace,
                name=name,
                summary=summary,
                run_id=run.run_id,
                reconciler="argocd" if hold.reconciler == "argocd" else "flux",
                object=hold.object,
                api_version=hold.api_version,
                reconciles=hold.reconciles,
                field=hold.field,
                previous=previous,
                resume=hold.resume,
                next_step=REVERT_IN_GIT,
            ),
            clock=clock,
        )

    def rollback_failed(self, run: RollbackRun, *, clock: Clock) -> CloudEvent:
        """``rollback.failed``: the action of ``run`` failed or was refused."""
        if run.action is None:
            raise ValueError("rollback.failed needs the run's action result")
        result = run.action
        refused = result.outcome is ActionOutcome.REFUSED
        end = run.finished_at if run.finished_at is not None else run.acted_at
        duration = (end if end is not None else clock.loop) - run.decided_at
        summary = (
            f"rollback of {run.key} {'refused' if refused else 'failed'} ({result.action}): {result.reason}"
        )
        return self.event(
            EventType.ROLLBACK_FAILED,
            run.key,
            RollbackFailedData(
                **self._run_common(run, summary, clock),
                duration_s=duration,
                refused=refused,
                action=action_data(result),
            ),
            clock=clock,
        )

    def _verdict(self, run: RollbackRun, *, slo: Slo | None, clock: Clock, verified: bool) -> CloudEvent:
        if run.verification is None:
            raise ValueError("a verification verdict needs the run's verification result")
        end = run.finished_at if run.finished_at is not None else clock.loop
        duration = end - run.decided_at
        within = duration <= RUNBOOK_ROLLBACK_TARGET_S
        reason = _first(run.verification.reasons)
        if reason.startswith("rollback verified"):  # the verifier's own headline: keep its numbers
            reason = reason.partition(": ")[2] or reason
        if verified:
            summary = (
                f"{run.key}: rollback verified {_duration(duration)} after the decision "
                f"({'within' if within else 'beyond'} the runbook's {_duration(RUNBOOK_ROLLBACK_TARGET_S)}): "
                f"{reason}"
            )
        else:
            summary = f"{run.key}: rollback verification failed, escalating: {reason}"
        fields = {
            **self._run_common(run, summary, clock),
            "duration_s": duration,
            "runbook_target_s": RUNBOOK_ROLLBACK_TARGET_S,
            "within_runbook_target": within,
            "action": None if run.action is None else action_data(run.action),
            "verification": verification_data(run.verification, slo),
        }
        if verified:
            return self.event(
                EventType.ROLLBACK_VERIFIED, run.key, RollbackVerifiedData(**fields), clock=clock
            )
        return self.event(
            EventType.VERIFICATION_FAILED, run.key, VerificationFailedData(**fields), clock=clock
        )

    def rollback_verified(self, run: RollbackRun, *, clock: Clock, slo: Slo | None = None) -> CloudEvent:
        """``rollback.verified``: ``run``'s verification passed (``slo``: the thresholds it used)."""
        return self._verdict(run, slo=slo, clock=clock, verified=True)

    def verification_failed(self, run: RollbackRun, *, clock: Clock, slo: Slo | None = None) -> CloudEvent:
        """``verification.failed``: ``run``'s verification failed."""
        return self._verdict(run, slo=slo, clock=clock, verified=False)

    def escalation_raised(
        self,
        target: str,
        *,
        cause: str,
        reasons: Sequence[str],
        clock: Clock,
        decision: Decision | None = None,
    ) -> CloudEvent:
        """``escalation.raised``: a human should look at ``target`` because of ``cause``."""
        summary = f"{target}: escalation ({cause}): {_first(reasons, cause)}"
        evidence = None
        if decision is not None and decision.evidence is not None:
            evidence = evidence_data(decision.evidence, clock)
        return self.event(
            EventType.ESCALATION_RAISED,
            target,
            EscalationRaisedData(
                **self._common(target, summary),
                cause=cause,
                reasons=tuple(reasons),
                decision=None if decision is None else decision_data(decision, clock),
                evidence=evidence,
            ),
            clock=clock,
        )

    def sink_escalation(
        self, target: str, *, sink: str, cause: str, reason: str, event_type: str, clock: Clock
    ) -> CloudEvent:
        """``escalation.raised`` about ``target`` because ``sink`` could not deliver an event of
        ``event_type`` about it (``cause``: sink-rejected or sink-overdue): sent to the other sinks."""
        what = "refused" if cause == "sink-rejected" else "could not deliver in time"
        summary = f"{target}: {sink} {what} the {short_type(event_type)} event: {reason}"
        return self.event(
            EventType.ESCALATION_RAISED,
            target,
            EscalationRaisedData(
                **self._common(target, summary),
                cause=cause,
                reasons=(reason,),
                sink=sink,
            ),
            clock=clock,
        )

    def hold_set(self, target: str, hold: Hold, *, clock: Clock) -> CloudEvent:
        """``hold.set``: ``hold`` defers any rollback of ``target``."""
        data = hold_data(hold, clock)
        remaining = hold.until - clock.loop
        summary = (
            f"{target}: {hold.reason} hold until {data.until:%Y-%m-%d %H:%M:%S}Z "
            f"({_duration(remaining)} from now): no rollback before then"
        )
        return self.event(
            EventType.HOLD_SET,
            target,
            HoldSetData(**self._common(target, summary), hold=data, remaining_s=remaining),
            clock=clock,
        )

    def release_accepted(self, target: str, release: Lifetime, *, clock: Clock) -> CloudEvent:
        """``release.accepted``: ``release`` of ``target`` is accepted (it must be)."""
        accepted = release.accepted
        if accepted is None:
            raise ValueError("release_accepted needs an accepted release")
        revision = (f" {release.release}" if release.release is not None
                    else f" (revision {release.revision})" if release.revision is not None else "")
        why = f": {accepted.reason}" if accepted.reason else ""
        summary = f"{target}: release{revision} {accepted.text}{why}; watched for the next release"
        return self.event(
            EventType.RELEASE_ACCEPTED,
            target,
            ReleaseAcceptedData(
                **self._common(target, summary),
                how="accepted-after" if accepted.how is Ending.AFTER else "accepted-by",
                text=accepted.text,
                by=accepted.by,
                reason=accepted.reason,
                revision=release.revision,
                release=release.release,
                started_at=clock.at(release.started_at),
                judged_s=accepted.judged_s,
            ),
            clock=clock,
        )

    def hold_expired(
        self,
        target: str,
        hold: Hold,
        *,
        still_breaching: bool,
        clock: Clock,
        evidence: Evidence | None = None,
    ) -> CloudEvent:
        """``hold.expired``: the ETA of ``hold`` passed."""
        after = "the breach is still there: controlled rollback" if still_breaching else "the breach is over"
        summary = f"{target}: {hold.reason} hold expired: {after}"
        return self.event(
            EventType.HOLD_EXPIRED,
            target,
            HoldExpiredData(
                **self._common(target, summary),
                hold=hold_data(hold, clock),
                still_breaching=still_breaching,
                evidence=None if evidence is None else evidence_data(evidence, clock),
            ),
            clock=clock,
        )


#: Seconds two sightings of a hold's ``until`` may differ and still be the same hold (an RFC 3339
#: ETA is converted to the loop clock afresh on every read).
HOLD_SAME_WITHIN_S = 1.0


@dataclass(slots=True)
class Announcer:
    """Which events one target's ticks are worth: changes only, in the order they happened.

    Feed it every decision (:meth:`on_decision`) and, while a rollback runs, the run
    (:meth:`on_run`); it remembers what it announced.

    A breach episode (:attr:`Decision.episode`) is told once: ``target.degraded`` when it opens,
    ``escalation.raised`` at most once per cause within it, and ``decision.made`` only when the
    verdict's shape changes. A tick that keeps the episode's rollback verdict without acting on it
    (``blocked_by`` ``unproven``: this interval's breach is not proven) is no news.

    While a rollback runs, the run's own events tell the story: the tick's decisions ("a rollback
    is already under way", or no breach once traffic went back) are not announced. After the
    run, "inconclusive" verdicts (the rolled-back version's side has no traffic any more) are not
    news either, until a conclusive verdict comes.
    """

    factory: EventFactory
    target: str
    #: The target's SLO, reported with verification verdicts.
    slo: Slo | None = None
    _breached: bool = False
    _verdict: tuple[object, ...] | None = None
    _escalation: str | None = None
    #: The episode announced (its ``opened_at``), while one is open.
    _episode: float | None = None
    #: The escalation causes already raised in the episode.
    _escalated: set[str] = field(default_factory=set)
    _hold: Hold | None = None
    _hold_expired: bool = False
    _run: RollbackRun | None = None
    #: The run whose events :attr:`_run_announced` lists (a run taken over is known by its id).
    _run_id: str | None = None
    _run_announced: set[EventType] = field(default_factory=set)
    #: The ``rollback.started`` of a run taken over, to publish as it was if it is not announced.
    _started: CloudEvent | None = None
    _after_run: bool = False

    def _run_active(self) -> bool:
        if self._run is None:
            return self._run_id is not None  # taken over, not seen yet: under way
        return str(self._run.phase) in ("acting", "verifying")

    def on_decision(self, decision: Decision, *, hold: Hold | None, clock: Clock) -> list[CloudEvent]:
        """The events of one tick's ``decision``; ``hold`` is the hold the framework weighed."""
        events: list[CloudEvent] = []
        if self._run_active():
            return events
        if self._after_run:
            if decision.outcome is Outcome.INCONCLUSIVE:
                return events
            self._after_run = False
        events.extend(self._episodes(decision, clock))
        events.extend(self._holds(decision, hold, clock))
        verdict = (
            decision.outcome,
            decision.rollback,
            decision.blocked_by,
            decision.escalate,
            decision.dry_run,
        )
        if verdict != self._verdict and not self._kept_rollback(decision):
            self._verdict = verdict
            events.append(self.factory.decision_made(decision, clock=clock))
        cause = (decision.blocked_by or "escalation") if decision.escalate else None
        if cause is not None and cause not in self._escalated:
            self._escalated.add(cause)
            events.append(
                self.factory.escalation_raised(
                    self.target, cause=cause, reasons=decision.reasons, decision=decision, clock=clock
                )
            )
        self._escalation = cause
        return events

    def _episodes(self, decision: Decision, clock: Clock) -> list[CloudEvent]:
        """``target.degraded`` when a breach episode opens; the episode's memory cleared when it
        closes (recovery proven). Without an episode on the decision (one not made by the
        framework), a breached tick opens one and a conclusive unbreached tick closes it."""
        evidence = decision.evidence
        episode = decision.episode
        if episode is not None or (evidence is not None and evidence.breached):
            key = episode.opened_at if episode is not None else self._episode
            if self._breached and (key is None or self._episode is None or key == self._episode):
                self._episode = key
                return []
            self._breached, self._episode = True, key
            self._escalated = set()
            if evidence is not None and evidence.breached:
                return [self.factory.target_degraded(evidence, clock=clock)]
            # First seen on a tick that does not prove it (a replica that starts leading): it was
            # opened, and told, before; the story goes on from here.
            return []
        if evidence is not None and not evidence.inconclusive:  # a gap in the data ends nothing
            self._breached, self._episode = False, None
            self._escalated = set()
        return []

    def _kept_rollback(self, decision: Decision) -> bool:
        """``decision`` keeps the rollback verdict last told, without acting on it this tick."""
        last = self._verdict
        return (
            decision.blocked_by == "unproven"
            and last is not None
            and last[0] == decision.outcome
            and last[1] is True
            and last[3] == decision.escalate
            and last[4] == decision.dry_run
        )

    def _holds(self, decision: Decision, hold: Hold | None, clock: Clock) -> list[CloudEvent]:
        events: list[CloudEvent] = []
        known = self._hold
        if hold is not None and (
            known is None or abs(hold.until - known.until) > HOLD_SAME_WITHIN_S or hold.reason != known.reason
        ):
            if decision.t < hold.until:
                events.append(self.factory.hold_set(self.target, hold, clock=clock))
            # A hold first seen after its ETA (e.g. after a restart) is told as expired below.
            self._hold, self._hold_expired = hold, False
            known = hold
        if known is not None and not self._hold_expired and decision.t >= known.until:
            breaching = decision.episode is not None or (
                decision.evidence is not None and decision.evidence.breached
            )
            events.append(
                self.factory.hold_expired(
                    self.target, known, still_breaching=breaching, evidence=decision.evidence, clock=clock
                )
            )
            self._hold_expired = True
        if hold is None and (known is None or self._hold_expired or decision.t < known.until):
            self._hold, self._hold_expired = None, False  # cleared (or never there)
        return events

    def resume(
        self, run_id: str, *, announced: Iterable[EventType], started: CloudEvent | None = None
    ) -> None:
        """The run ``run_id`` is a rollback a previous process (or leader) left under way, whose
        ``announced`` events are already in the audit log: they are not announced again. If its
        ``rollback.started`` is not among them, ``started`` (the event as it was first built, with
        its id: subscribers dedupe by id) is announced rather than a new one."""
        self._run, self._run_id, self._run_announced = None, run_id, set(announced)
        self._started = started
        self._breached = True

    def on_run(
        self,
        run: RollbackRun,
        *,
        clock: Clock,
        decision: Decision | None = None,
        strategy: Strategy | None = None,
        bad_revision: int | None = None,
    ) -> list[CloudEvent]:
        """The events of ``run``'s phases not announced yet (a jump from acting straight to
        verified still announces the completed action first). ``decision``, ``strategy`` and
        ``bad_revision`` enrich ``rollback.started``."""
        if run.run_id != self._run_id:
            self._run_id, self._run_announced, self._started = run.run_id, set(), None
        self._run = run
        events: list[CloudEvent] = []

        def once(kind: EventType, make: Callable[[], CloudEvent]) -> None:
            if kind not in self._run_announced:
                self._run_announced.add(kind)
                events.append(make())

        f = self.factory
        started = self._started
        once(
            EventType.ROLLBACK_STARTED,
            lambda: started
            if started is not None
            else f.rollback_started(
                run, clock=clock, decision=decision, strategy=strategy, bad_revision=bad_revision
            ),
        )
        phase = str(run.phase)  # a Phase (a StrEnum), compared by value
        if phase != "acting" and run.action is not None:
            result = run.action
            suspended = suspended_by_run(result)
            if suspended and EventType.GITOPS_SUSPENDED not in self._run_announced:
                self._run_announced.add(EventType.GITOPS_SUSPENDED)
                events.extend(f.gitops_suspended(run, hold, previous=previous, clock=clock)
                              for hold, previous in suspended)
        if phase in ("verifying", "verified", "verification-failed") and run.action is not None:
            once(EventType.ROLLBACK_COMPLETED, lambda: f.rollback_completed(run, clock=clock))
        if phase == "verified":
            once(EventType.ROLLBACK_VERIFIED, lambda: f.rollback_verified(run, clock=clock, slo=self.slo))
        elif phase == "verification-failed":
            once(EventType.VERIFICATION_FAILED, lambda: f.verification_failed(run, clock=clock, slo=self.slo))
            reasons = run.verification.reasons if run.verification is not None else ()
            once(
                EventType.ESCALATION_RAISED,
                lambda: f.escalation_raised(
                    run.key, cause="verification-failed", reasons=reasons, clock=clock
                ),
            )
        elif phase in ("action-failed", "refused") and run.action is not None:
            once(EventType.ROLLBACK_FAILED, lambda: f.rollback_failed(run, clock=clock))
            cause = "rollback-refused" if phase == "refused" else "rollback-failed"
            if phase == "refused" and any(not hold.suspended for hold in run.action.gitops):
                cause = "gitops"  # gitops: refuse: Git would put the bad version back
            reason = run.action.reason
            once(
                EventType.ESCALATION_RAISED,
                lambda: f.escalation_raised(run.key, cause=cause, reasons=(reason,), clock=clock),
            )
        if events and phase in ("verified", "verification-failed", "action-failed", "refused"):
            # The run is over and the target is judged afresh: a later breach is a new episode.
            self._after_run, self._breached = True, False
            self._verdict = self._escalation = None
        return events
