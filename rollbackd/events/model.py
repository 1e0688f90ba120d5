"""The events rollbackd publishes: CloudEvents 1.0 in structured JSON, one ``data`` model per type.

Every step of a release's story is one event type, ``io.rollbackd.<noun>.<verb>``:

=========================  =====================================================================
``target.degraded``        a breach of the SLO began (the evidence: values against thresholds)
``decision.made``          the decision framework changed its verdict for the target
``rollback.started``       rollbackd is rolling the target back now
``rollback.completed``     the rollback action is done; verification starts
``rollback.failed``        the action failed or was refused; nothing more is tried
``rollback.verified``      the version traffic went back to meets the SLO for the whole window
``verification.failed``    it does not: a human is needed (never a second automatic rollback)
``escalation.raised``      a human should look: rollback blocked, not attributable, failed, ...
``hold.set``               a fix-forward hold defers any rollback until its ETA
``hold.expired``           the hold's ETA passed
``gitops.suspended``       a GitOps reconciler was stopped so that it does not undo the rollback
``release.accepted``       the release is accepted (after a time, or by an operator): not judged
``release.started``        a release was announced (a flag flip, a configuration change): judged from then
=========================  =====================================================================

The ``data`` models here are the contract with subscribers: the JSON Schemas under docs/schemas
are generated from them (``python -m rollbackd.events.schemas --write docs/schemas``). Fields are
only ever added within a version, so subscribers must ignore fields they do not know.

Times are RFC 3339 wall-clock times in UTC; durations are seconds; error rates are fractions
(0.01 = 1%), latencies milliseconds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError

from rollbackd.store.base import OutboxEvent

#: Every event type is this prefix followed by the short type, e.g. ``io.rollbackd.rollback.started``.
TYPE_PREFIX = "io.rollbackd."
#: The CloudEvents ``datacontenttype`` of every event, and the media type of a structured event.
DATA_CONTENT_TYPE = "application/json"
CLOUDEVENTS_JSON = "application/cloudevents+json"


class EventType(enum.StrEnum):
    """The short type (``rollback.started``); :attr:`full` is the CloudEvents ``type``."""

    TARGET_DEGRADED = "target.degraded"
    DECISION_MADE = "decision.made"
    ROLLBACK_STARTED = "rollback.started"
    ROLLBACK_COMPLETED = "rollback.completed"
    ROLLBACK_FAILED = "rollback.failed"
    ROLLBACK_VERIFIED = "rollback.verified"
    VERIFICATION_FAILED = "verification.failed"
    ESCALATION_RAISED = "escalation.raised"
    HOLD_SET = "hold.set"
    HOLD_EXPIRED = "hold.expired"
    GITOPS_SUSPENDED = "gitops.suspended"
    RELEASE_ACCEPTED = "release.accepted"
    RELEASE_STARTED = "release.started"

    @property
    def full(self) -> str:
        return TYPE_PREFIX + self.value

    @classmethod
    def parse(cls, value: str) -> EventType:
        """The type of a full (``io.rollbackd.hold.set``) or short (``hold.set``) name."""
        return cls(value.removeprefix(TYPE_PREFIX))


def short_type(full_type: str) -> str:
    """``io.rollbackd.rollback.started`` -> ``rollback.started`` (other names unchanged)."""
    return full_type.removeprefix(TYPE_PREFIX)


class _Model(BaseModel):
    # Unknown fields are ignored when parsing, so an older subscriber reads a newer event.
    # Every field is always sent (null when unknown): the schemas say so.
    model_config = ConfigDict(frozen=True, extra="ignore", json_schema_serialization_defaults_required=True)


# --- pieces shared by several types --------------------------------------------------------------

#: Who a proven breach is blamed on (see :class:`rollbackd.model.Attribution`).
Attribution = Literal["attributable", "pending", "baseline-degraded", "no-baseline"]


class FindingData(_Model):
    """One measured signal of the new version against its SLO threshold."""

    signal: str = Field(
        description="error_rate (a fraction), p95 (milliseconds) or health (failing endpoints)."
    )
    unit: str = Field(description="Unit of value, threshold and baseline_value: ratio, ms or endpoints.")
    value: float | None = Field(
        description="The new version's value over the judged window; null if unknown."
    )
    threshold: float = Field(description="The SLO threshold the value is judged against.")
    baseline_value: float | None = Field(
        None, description="The same signal of the baseline it was compared with, if any."
    )
    breached: bool = Field(description="The threshold is breached with statistical confidence.")
    severe: bool = Field(description="The breach reaches the severe level (immediate rollback).")
    attributable: bool = Field(
        description="Significantly worse than the baseline: the new version is to blame."
    )
    confidence: float = Field(ge=0, le=1, description="Confidence of the conclusion, 0..1.")
    conclusion: str | None = Field(
        None,
        description="What the finding concludes, which confidence is the confidence of: breach (above "
        "the SLO, proven), unproven (the latest intervals above the SLO, not proven: the confidence "
        "that they are above it is below the required level), within-lately (the latest intervals "
        "within the SLO, the window as a whole above it) or within (the window within the SLO).",
    )
    detail: str = Field("", description="The detector's own explanation, with counts.")
    since: datetime | None = Field(None, description="Estimated start of the breach.")
    attribution: Attribution | None = Field(
        None,
        description="Who the breach is blamed on, if breached: attributable (the new version), pending "
        "(the baseline is within the SLO, the new version not yet significantly worse), "
        "baseline-degraded (the baseline is beyond the SLO too) or no-baseline.",
    )


class EvidenceData(_Model):
    """What the detectors concluded from the metrics and health probes."""

    impact: Literal["none", "manageable", "severe"] = Field(description="How badly users are hurt.")
    breached: bool = Field(description="The SLO is breached (impact is not none).")
    attributable: bool = Field(description="The breach is the new version's fault, not the platform's.")
    inconclusive: bool = Field(description="Too little data to judge: never a reason to roll back.")
    within_slo: bool = Field(description="Every conclusive signal is back within the SLO.")
    candidate_requests: float = Field(description="Requests the new version served in the judged window.")
    baseline_requests: float = Field(description="Requests the baseline served in the judged window.")
    since: datetime | None = Field(None, description="Estimated start of the breach.")
    findings: tuple[FindingData, ...] = Field((), description="Each signal against its threshold.")
    reasons: tuple[str, ...] = Field((), description="The detectors' reasons, human-readable.")
    attribution: Attribution | None = Field(
        None,
        description="Who the breach is blamed on, if breached: attributable, pending, baseline-degraded "
        "or no-baseline.",
    )
    recovered: bool = Field(
        False,
        description="Recovery from the latest proven breach is proven: since it was last proven, every "
        "metric signal with data is within the SLO at the configured confidence.",
    )


class EpisodeData(_Model):
    """A breach episode: it opens on a proven breach and closes only when recovery is proven."""

    opened_at: datetime = Field(description="When the episode opened (the breach was first proven).")
    onset: datetime = Field(description="Estimated start of the breach.")
    impact: Literal["manageable", "severe"] = Field(description="The worst level proven in the episode.")
    attribution: Attribution = Field(description="Who the episode's breach is blamed on.")
    proven_at: datetime = Field(description="The latest time the breach was proven.")


class DecisionData(_Model):
    """The verdict of the decision framework (the rollback runbook)."""

    outcome: Literal["immediate", "controlled", "none", "inconclusive"] = Field(
        description="immediate / controlled rollback, no rollback, or not enough data."
    )
    rollback: bool = Field(description="Roll back now (in dry-run: would roll back now).")
    escalate: bool = Field(False, description="A human should look at it.")
    dry_run: bool = Field(False, description="Taken in dry-run mode: nothing is changed.")
    blocked_by: str | None = Field(
        None,
        description="What stops a rollback: hold, rollback-risk, not-attributable (the baseline is "
        "degraded too), no-baseline, attribution-pending, unproven (the breach episode is open but this "
        "interval's breach is not proven), newer-rollout, rollback-in-progress, freeze, cooldown, "
        "rate-limit, standby or store (the audit trail cannot be written).",
    )
    waiting_since: datetime | None = Field(
        None, description="A controlled rollback's grace runs from this time."
    )
    reasons: tuple[str, ...] = Field(description="Why, with values and thresholds, most important first.")
    episode: EpisodeData | None = Field(None, description="The breach episode open at the decision, if any.")


class ChangeData(_Model):
    """One field of one Kubernetes object, before and after."""

    object: str = Field(description="kind/namespace/name, e.g. Deployment/shop/checkout-canary.")
    field: str = Field(description="The field, e.g. spec.replicas.")
    before: Any = Field(description="The value before the change.")
    after: Any = Field(description="The value after the change.")


class GitOpsData(_Model):
    """A GitOps reconciler (an Argo CD Application, a Flux Kustomization or HelmRelease) of objects
    the rollback changes."""

    reconciler: Literal["argocd", "flux"] = Field(description="Which GitOps tool: argocd or flux.")
    object: str = Field(description="Its object: kind/namespace/name, e.g. Application/argocd/shop.")
    api_version: str = Field(description="Its object's apiVersion, e.g. argoproj.io/v1alpha1.")
    reconciles: tuple[str, ...] = Field(
        description="The objects of the rollback it reconciles from Git (kind/namespace/name)."
    )
    field: str = Field(
        description="The field that turns its reconciliation off: spec.syncPolicy.automated (Argo CD, "
        "removed) or spec.suspend (Flux, set to true)."
    )
    previous: Any = Field(description="That field's value before the rollback (null: absent).")
    suspended: bool = Field(
        description="Its reconciliation is off now; false when the rollback was refused (gitops: refuse) "
        "or the suspension failed."
    )
    resume: str = Field(description="The command that resumes it as it was, once Git is reverted.")


class SplitData(_Model):
    """How a canary's route split the requests, as its traffic router read it."""

    source: str = Field(description="The route object, e.g. HTTPRoute shop/checkout.")
    canary_percent: float = Field(
        ge=0, le=100, description="The largest share of requests, in percent, any rule sends the canary."
    )
    rules: tuple[float, ...] = Field(
        (), description="The canary's percentage in each rule naming the canary or the stable backend."
    )


class CommandData(_Model):
    """What a rollback command did: how it ended and the tail of what it wrote."""

    argv: tuple[str, ...] = Field(description="The program and its arguments, as configured.")
    cwd: str | None = Field(None, description="Its working directory (null: the daemon's).")
    exit_code: int | None = Field(description="Its exit code (null when it ended by a signal).")
    signal: str | None = Field(None, description="The signal that ended it (e.g. SIGKILL), if one did.")
    timed_out: bool = Field(
        description="It was still running at its timeout and was ended with its process group."
    )
    duration_s: float = Field(description="Seconds from its start to its end.")
    stdout_tail: str = Field(description="The last 64 KiB of its standard output.")
    stderr_tail: str = Field(description="The last 64 KiB of its standard error.")
    stdout_bytes: int = Field(description="Bytes it wrote to standard output in all.")
    stderr_bytes: int = Field(description="Bytes it wrote to standard error in all.")


class FlagData(_Model):
    """The feature flag a ``feature-flag-off`` action turned off (or found off already)."""

    name: str = Field(description="The flag's name.")
    store: Literal["http", "sql"] = Field(description="Where it is kept: the admin API or a SQL table.")
    where: str = Field(description="The request or the UPDATE statement (no secret).")
    before: Any = Field(description="Its value read before (null: not read, without flag.store.read).")
    after: Any = Field(description="Its value read after (null: not read).")
    rows: int | None = Field(None, description="Rows the UPDATE changed (sql only).")


class ActionData(_Model):
    """What the rollback action did."""

    action: str = Field(
        description="canary-abort, blue-green-switch-back, deployment-undo, argo-rollout-abort, "
        "feature-flag-off, config-restore or command."
    )
    outcome: str = Field(
        description="done, already-done (nothing left to change), planned (dry-run), refused or failed."
    )
    reason: str = Field(description="What happened, human-readable.")
    changes: tuple[ChangeData, ...] = Field(
        (), description="Every field changed (or, if failed, changed so far)."
    )
    from_revision: int | None = Field(None, description="The Deployment revision rolled back from.")
    to_revision: int | None = Field(None, description="The Deployment revision rolled back to.")
    api_s: float = Field(0.0, description="Seconds spent in Kubernetes API requests.")
    wait_s: float = Field(0.0, description="Seconds spent waiting for the old version to be available.")
    gitops: tuple[GitOpsData, ...] = Field(
        (), description="The GitOps reconcilers of the changed objects (suspended first, or why it refused)."
    )
    flag: FlagData | None = Field(None, description="feature-flag-off: the flag, its value before and after.")
    router: str | None = Field(
        None, description="canary-abort: the traffic router (ingress-nginx, gateway-api or istio)."
    )
    split_before: SplitData | None = Field(
        None, description="canary-abort: the split as read before the abort (absent if it could not be read)."
    )
    split_after: SplitData | None = Field(
        None, description="canary-abort: the split as read after the route was changed."
    )
    command: CommandData | None = Field(
        None, description="command: how the command ended and the tail of its output."
    )


class SloData(_Model):
    """The target's service level objective."""

    max_error_rate: float = Field(description="Highest acceptable fraction of failed requests.")
    max_p95_ms: float = Field(description="Highest acceptable P95 latency, in milliseconds.")


class VerificationData(_Model):
    """The runbook's success criteria, measured on the version traffic went back to."""

    status: Literal["pending", "verified", "failed"] = Field(description="The verdict.")
    reasons: tuple[str, ...] = Field(description="Why, with values and thresholds.")
    error_rate: float | None = Field(None, description="Error rate over the validation window (fraction).")
    p95_ms: float | None = Field(None, description="P95 latency over the validation window.")
    requests: float = Field(0.0, description="Requests served during the validation window.")
    health_ok: bool | None = Field(None, description="The latest health probes answered 2xx (null: none).")
    available: bool | None = Field(None, description="The Deployment is fully available (null: unknown).")
    elapsed_s: float = Field(0.0, description="Seconds of validation so far.")
    slo: SloData | None = Field(None, description="The thresholds the values are judged against.")


class HoldData(_Model):
    """A fix-forward hold: no rollback of the target before ``until``."""

    reason: str = Field(description="Why the rollback is held, e.g. fix-forward.")
    until: datetime = Field(description="The hold's end (the fix's ETA).")
    set_at: datetime | None = Field(None, description="When the hold was first seen.")


# --- the data of each type ------------------------------------------------------------------------

_RUN_ID = (
    "The rollback run: the same in every rollback.* event of one rollback, also when another process "
    "or replica finished it (after a restart or a fail-over)."
)
_DECIDED_AT = (
    "When the rollback was decided: the original decision, also in a run another process or replica "
    "finished."
)


class EventData(_Model):
    """Fields every event's ``data`` has."""

    target: str = Field(description="namespace/name of the rollbackd target (the CloudEvents subject).")
    namespace: str = Field(description="Kubernetes namespace of the target.")
    name: str = Field(description="Name of the target.")
    summary: str = Field(description="One human-readable line saying what happened.")


class TargetDegradedData(EventData):
    """``target.degraded``: the target breaches its SLO (start of a breach episode)."""

    impact: Literal["manageable", "severe"] = Field(description="How badly users are hurt.")
    evidence: EvidenceData


class DecisionMadeData(EventData):
    """``decision.made``: the framework's verdict changed (published on change, not every tick)."""

    decision: DecisionData
    evidence: EvidenceData | None = None


class RollbackStartedData(EventData):
    """``rollback.started``: the rollback action starts now."""

    run_id: str | None = Field(None, description=_RUN_ID)
    mode: str = Field(description="immediate or controlled rollback.")
    action: str | None = Field(
        None,
        description="The action about to run (canary-abort, blue-green-switch-back, deployment-undo, "
        "argo-rollout-abort, feature-flag-off, config-restore or command).",
    )
    decided_at: datetime = Field(description=_DECIDED_AT)
    from_revision: int | None = Field(None, description="The judged (bad) Deployment revision, if known.")
    reasons: tuple[str, ...] = Field(description="The decision's reasons.")
    evidence: EvidenceData | None = None


class RollbackCompletedData(EventData):
    """``rollback.completed``: the action is done; the validation window starts."""

    run_id: str | None = Field(None, description=_RUN_ID)
    mode: str = Field(description="immediate or controlled rollback.")
    decided_at: datetime = Field(description=_DECIDED_AT)
    duration_s: float = Field(description="Seconds from the decision to the end of the action.")
    action: ActionData
    next_step: str | None = Field(
        None,
        description="What people must do now, if anything: with GitOps reconciliation suspended, \"Git still "
        "declares the bad version; revert it in Git, then resume reconciliation\".",
    )


class RollbackFailedData(EventData):
    """``rollback.failed``: the action failed (API errors, timeout) or was refused as unsafe."""

    run_id: str | None = Field(None, description=_RUN_ID)
    mode: str = Field(description="immediate or controlled rollback.")
    decided_at: datetime = Field(description=_DECIDED_AT)
    duration_s: float = Field(description="Seconds from the decision to the failure.")
    refused: bool = Field(description="The action refused to act (nothing was changed).")
    action: ActionData


class RollbackVerdictData(EventData):
    """A rollback's verification verdict."""

    run_id: str | None = Field(None, description=_RUN_ID)
    mode: str = Field(description="immediate or controlled rollback.")
    decided_at: datetime = Field(description=_DECIDED_AT)
    duration_s: float = Field(description="Seconds from the decision to the verdict.")
    runbook_target_s: float = Field(description="The runbook's target for a whole rollback (600 s).")
    within_runbook_target: bool = Field(description="duration_s is within runbook_target_s.")
    action: ActionData | None = None
    verification: VerificationData


class RollbackVerifiedData(RollbackVerdictData):
    """``rollback.verified``: the version traffic went back to met the SLO for the whole window."""


class VerificationFailedData(RollbackVerdictData):
    """``verification.failed``: it did not; escalated, never rolled back a second time."""


class EscalationRaisedData(EventData):
    """``escalation.raised``: a human should look at the target."""

    cause: str = Field(
        description="rollback-risk, not-attributable, no-baseline, attribution-pending, freeze, cooldown, "
        "rate-limit, store (the decision's blocked_by), or rollback-failed, rollback-refused, gitops (the "
        "rollback was refused because Git would put the bad version back: gitops: refuse), "
        "verification-failed, poison-record (a record about the target the store refused, set aside), "
        "or, about a notification, sink-rejected (a sink refused an event about the target for good: "
        "HTTP 400, 401, 403, 404, 410, 413 or 422) or sink-overdue (a failing sink kept an event past "
        "its bound); those two are raised once per sink and cause, and sent to the other sinks."
    )
    reasons: tuple[str, ...] = Field(description="Why, human-readable.")
    sink: str | None = Field(
        None,
        description="sink-rejected, sink-overdue: the sink that could not deliver (webhook:NAME, mqtt, "
        "kubernetes); it is not sent this event.",
    )
    decision: DecisionData | None = None
    evidence: EvidenceData | None = None


class HoldSetData(EventData):
    """``hold.set``: a fix-forward hold defers any rollback of the target until its ETA."""

    hold: HoldData
    remaining_s: float = Field(description="Seconds until the hold ends, when it was seen.")


class HoldExpiredData(EventData):
    """``hold.expired``: the hold's ETA passed."""

    hold: HoldData
    still_breaching: bool = Field(
        description="The breach the hold covered is still there (a controlled rollback follows)."
    )
    evidence: EvidenceData | None = None


class GitOpsSuspendedData(EventData):
    """``gitops.suspended``: a GitOps reconciler of the objects the rollback changed was stopped
    before the first change, so that it does not put the bad version back; Git still declares it."""

    run_id: str | None = Field(None, description=_RUN_ID)
    reconciler: Literal["argocd", "flux"] = Field(description="Which GitOps tool: argocd or flux.")
    object: str = Field(
        description="The object suspended: kind/namespace/name, e.g. Application/argocd/shop."
    )
    api_version: str = Field(description="Its apiVersion, e.g. argoproj.io/v1alpha1.")
    reconciles: tuple[str, ...] = Field(
        description="The objects of the rollback it reconciles from Git (kind/namespace/name)."
    )
    field: str = Field(
        description="The field changed: spec.syncPolicy.automated (Argo CD: removed) or spec.suspend (Flux: "
        "set to true)."
    )
    previous: Any = Field(description="The field's value before (what resuming puts back; null: absent).")
    resume: str = Field(description="The command that resumes it as it was.")
    next_step: str = Field(
        description="\"Git still declares the bad version; revert it in Git, then resume reconciliation\"."
    )


class ReleaseAcceptedData(EventData):
    """``release.accepted``: the release is accepted (``policy.accept_after_s`` passed without a
    breach episode, or an operator accepted it): it is not judged any more, the target is watched
    for the next release (a newer revision starts a new judgement)."""

    how: Literal["accepted-after", "accepted-by"] = Field(
        description="accepted-after: policy.accept_after_s passed without an open breach episode; "
        "accepted-by: an operator accepted it (the accept action)."
    )
    text: str = Field(description='How, in words: "accepted after 1h", "accepted by alice".')
    by: str | None = Field(None, description="accepted-by: who (the API token's name).")
    reason: str = Field("", description="accepted-by: why, as the operator said.")
    revision: int | None = Field(
        None, description="The candidate revision accepted, when the cluster showed it."
    )
    release: str | None = Field(
        None, description="The announced release accepted (its id), when it is one (release.started)."
    )
    started_at: datetime = Field(
        description="When the release's judgement started: an announced release's start, else when the "
        "revision was first judged."
    )
    judged_s: float = Field(description="Seconds the release was judged before it was accepted.")
class ReleaseData(_Model):
    """A release announced from outside (``POST /api/v1/releases``, ``rollbackd release start``)."""

    id: str = Field(description="The release's id (its idempotency key: announced twice, it is one release).")
    kind: str = Field(
        description="What changed: flag, config, command, deployment, other, or a pipeline's own word."
    )
    description: str = Field(description="What the announcer said about it.")
    started_at: datetime = Field(description="When the change took effect (RFC 3339, UTC).")
    details: dict[str, Any] = Field(
        description="What changed, as the announcer said (a flag's name, a change id)."
    )
    who: str = Field(description="Who announced it (the API token's name, or the component that saw it).")


class ReleaseStartedData(EventData):
    """``release.started``: a release of the target was announced; from ``started_at`` on it is
    judged against its own history before it, with the same SLOs."""

    release: ReleaseData


#: The ``data`` model of each event type.
DATA_MODELS: Mapping[EventType, type[EventData]] = {
    EventType.TARGET_DEGRADED: TargetDegradedData,
    EventType.DECISION_MADE: DecisionMadeData,
    EventType.ROLLBACK_STARTED: RollbackStartedData,
    EventType.ROLLBACK_COMPLETED: RollbackCompletedData,
    EventType.ROLLBACK_FAILED: RollbackFailedData,
    EventType.ROLLBACK_VERIFIED: RollbackVerifiedData,
    EventType.VERIFICATION_FAILED: VerificationFailedData,
    EventType.ESCALATION_RAISED: EscalationRaisedData,
    EventType.HOLD_SET: HoldSetData,
    EventType.HOLD_EXPIRED: HoldExpiredData,
    EventType.GITOPS_SUSPENDED: GitOpsSuspendedData,
    EventType.RELEASE_ACCEPTED: ReleaseAcceptedData,
    EventType.RELEASE_STARTED: ReleaseStartedData,
}


class EventFormatError(ValueError):
    """A payload that is not a rollbackd CloudEvent (or not one of a known type)."""


class CloudEvent(_Model):
    """A CloudEvents 1.0 event as rollbackd publishes it (structured JSON mode)."""

    specversion: Literal["1.0"] = Field("1.0", description="CloudEvents version.")
    id: str = Field(min_length=1, description="Unique per event: delivery is at least once, dedupe by id.")
    source: str = Field(
        min_length=1, description="URI reference of the publishing daemon (default /rollbackd)."
    )
    type: str = Field(description="io.rollbackd.<noun>.<verb>.")
    subject: str = Field(description="namespace/target.")
    time: datetime = Field(description="When it happened (RFC 3339, UTC).")
    datacontenttype: Literal["application/json"] = Field("application/json", description="Always JSON.")
    data: SerializeAsAny[EventData]

    @property
    def event_type(self) -> EventType:
        return EventType.parse(self.type)

    @property
    def short_type(self) -> str:
        return short_type(self.type)

    @property
    def summary(self) -> str:
        return self.data.summary

    def to_json(self) -> dict[str, Any]:
        """The structured-mode JSON object (what MQTT and webhooks carry)."""
        return self.model_dump(mode="json")

    def to_outbox(self) -> OutboxEvent:
        """The outbox row for this event."""
        return OutboxEvent(event_id=self.id, type=self.type, subject=self.subject, payload=self.to_json())

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> CloudEvent:
        """Parse a structured-mode event, its ``data`` with the model of its type.

        Raises :class:`EventFormatError` for anything else.
        """
        try:
            kind = EventType.parse(str(payload.get("type", "")))
        except ValueError:
            raise EventFormatError(f"not a rollbackd event type: {payload.get('type')!r}") from None
        try:
            data = DATA_MODELS[kind].model_validate(payload.get("data"))
            return cls.model_validate({**payload, "data": data})
        except ValidationError as exc:
            raise EventFormatError(f"invalid {kind.full} event: {exc}") from None


def split_subject(subject: str) -> tuple[str, str]:
    """``shop/checkout`` -> ``("shop", "checkout")``."""
    namespace, sep, name = subject.partition("/")
    if not sep or not namespace or not name or "/" in name:
        raise ValueError(f"a subject is namespace/name, not {subject!r}")
    return namespace, name


# --- the retained per-target status -----------------------------------------------------------------


class TargetState(enum.StrEnum):
    """The state a target is in after an event (the retained status topic's ``state``)."""

    HEALTHY = "healthy"
    INCONCLUSIVE = "inconclusive"
    DEGRADED = "degraded"
    WAITING = "waiting"  # a controlled rollback's grace runs
    HELD = "held"
    ESCALATED = "escalated"
    ROLLING_BACK = "rolling-back"
    VERIFYING = "verifying"
    ROLLED_BACK = "rolled-back"
    ROLLBACK_FAILED = "rollback-failed"
    VERIFICATION_FAILED = "verification-failed"
    #: The release is accepted: not judged, watched for the next release.
    ACCEPTED = "accepted"


def decision_state(
    *,
    outcome: str,
    rollback: bool,
    dry_run: bool,
    escalate: bool,
    blocked_by: str | None,
    episode_open: bool,
    breached: bool,
) -> TargetState:
    """The target's state once a decision of this shape was taken (``outcome`` immediate /
    controlled / none / inconclusive; ``episode_open``: a breach episode is open;
    ``breached``: this interval's evidence breaches the SLO)."""
    if rollback:
        # In dry-run nothing is rolled back: the target stays degraded.
        return TargetState.DEGRADED if dry_run else TargetState.ROLLING_BACK
    if escalate:
        return TargetState.ESCALATED
    if blocked_by in ("hold", "newer-rollout"):
        return TargetState.HELD
    if blocked_by == "rollback-in-progress":
        return TargetState.ROLLING_BACK
    if blocked_by == "accepted":
        return TargetState.ACCEPTED
    if outcome == "controlled":
        return TargetState.WAITING
    if episode_open:  # never healthy while a breach episode is open
        return TargetState.DEGRADED
    if outcome == "inconclusive":
        return TargetState.INCONCLUSIVE
    if breached:
        return TargetState.DEGRADED
    return TargetState.HEALTHY


def state_after(event: CloudEvent) -> TargetState:
    """The target's state once ``event`` happened."""
    data = event.data
    kind = event.event_type
    if isinstance(data, DecisionMadeData):
        decision = data.decision
        return decision_state(
            outcome=decision.outcome,
            rollback=decision.rollback,
            dry_run=decision.dry_run,
            escalate=decision.escalate,
            blocked_by=decision.blocked_by,
            episode_open=decision.episode is not None,
            breached=data.evidence is not None and data.evidence.breached,
        )
    if isinstance(data, HoldExpiredData):
        return TargetState.DEGRADED if data.still_breaching else TargetState.HEALTHY
    return {
        EventType.TARGET_DEGRADED: TargetState.DEGRADED,
        EventType.ROLLBACK_STARTED: TargetState.ROLLING_BACK,
        EventType.ROLLBACK_COMPLETED: TargetState.VERIFYING,
        EventType.ROLLBACK_FAILED: TargetState.ROLLBACK_FAILED,
        EventType.ROLLBACK_VERIFIED: TargetState.ROLLED_BACK,
        EventType.VERIFICATION_FAILED: TargetState.VERIFICATION_FAILED,
        EventType.ESCALATION_RAISED: TargetState.ESCALATED,
        EventType.HOLD_SET: TargetState.HELD,
        EventType.GITOPS_SUSPENDED: TargetState.ROLLING_BACK,
        EventType.RELEASE_ACCEPTED: TargetState.ACCEPTED,
        EventType.RELEASE_STARTED: TargetState.HEALTHY,
    }.get(kind, TargetState.DEGRADED)


def status_of(event: CloudEvent) -> dict[str, Any]:
    """The retained status message of the event's target: its state and the latest event."""
    return {
        "subject": event.subject,
        "state": state_after(event).value,
        "summary": event.summary,
        "time": event.to_json()["time"],
        "last_event": {"id": event.id, "type": event.type},
    }
