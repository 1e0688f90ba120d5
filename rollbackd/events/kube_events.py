"""The Kubernetes Events sink: each event recorded on the target's Deployment (or Rollout).

``kubectl describe deployment <name>`` then tells the story next to the rollout's own events:
``Warning  RollbackStarted  rollbackd.io/rollbackd  rolling back shop/checkout (immediate, ...)``.
The Deployment is the target's candidate (the version judged); the Event's ``note`` is the
event's one-line summary, its ``reason`` a CamelCase word per type (:data:`REASONS`). The events
of an ``argo-rollout`` target are recorded on its Rollout (``kubectl argo rollouts get`` /
``kubectl describe rollout`` show them).

The Event's name is derived from the CloudEvent's id, so a redelivery after a lost answer finds
the Event already there (409) and counts as delivered: one Kubernetes Event per CloudEvent. An
event about a target whose Deployment does not exist (deleted, or not a configured target) has
nothing to be recorded on and is passed over; API errors are retried by the dispatcher.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from rollbackd.config.settings import Settings
from rollbackd.events.dispatcher import DeliveryError
from rollbackd.events.model import EventType, short_type, split_subject
from rollbackd.kube import KubeClient, KubeConflict, KubeError, KubeNotFound, objects, rollouts
from rollbackd.store.base import OutboxEvent

logger = logging.getLogger(__name__)

EventKind = Literal["Normal", "Warning"]

#: Per event type: the Kubernetes Event's ``reason``, ``type`` and ``action``.
REASONS: Mapping[EventType, tuple[str, EventKind, str]] = {
    EventType.TARGET_DEGRADED: ("TargetDegraded", "Warning", "Observe"),
    EventType.DECISION_MADE: ("DecisionMade", "Normal", "Decide"),
    EventType.ROLLBACK_STARTED: ("RollbackStarted", "Warning", "Rollback"),
    EventType.ROLLBACK_COMPLETED: ("RollbackCompleted", "Normal", "Rollback"),
    EventType.ROLLBACK_FAILED: ("RollbackFailed", "Warning", "Rollback"),
    EventType.ROLLBACK_VERIFIED: ("RollbackVerified", "Normal", "Verify"),
    EventType.VERIFICATION_FAILED: ("VerificationFailed", "Warning", "Verify"),
    EventType.ESCALATION_RAISED: ("Escalated", "Warning", "Escalate"),
    EventType.HOLD_SET: ("HoldSet", "Normal", "Hold"),
    EventType.HOLD_EXPIRED: ("HoldExpired", "Warning", "Hold"),
    EventType.GITOPS_SUSPENDED: ("GitOpsSuspended", "Warning", "Suspend"),
    EventType.RELEASE_ACCEPTED: ("ReleaseAccepted", "Normal", "Accept"),
    EventType.RELEASE_STARTED: ("ReleaseStarted", "Normal", "Release"),
}


def deployments_of(settings: Settings) -> dict[str, str]:
    """Target key (``namespace/name``) -> the Deployment its events are recorded on (the candidate)."""
    return {
        target.key: target.candidate.deployment
        for target in settings.targets
        if target.candidate.deployment is not None
    }


def rollouts_of(settings: Settings) -> dict[str, str]:
    """Target key -> the Rollout its events are recorded on (``argo-rollout`` targets)."""
    return {target.key: target.rollout for target in settings.targets if target.rollout is not None}


def reason_of(event: OutboxEvent) -> tuple[str, EventKind, str]:
    """The Kubernetes ``reason``, ``type`` and ``action`` of ``event``; a rollback decision is a
    Warning (``RollbackDecided``), other verdicts Normal."""
    try:
        kind = EventType.parse(event.type)
    except ValueError:
        return "RollbackdEvent", "Normal", "Notify"
    if kind is EventType.DECISION_MADE:
        decision = _data(event).get("decision") or {}
        if isinstance(decision, Mapping) and decision.get("rollback"):
            return "RollbackDecided", "Warning", "Decide"
    return REASONS[kind]


def _data(event: OutboxEvent) -> Mapping[str, Any]:
    data = event.payload.get("data")
    return data if isinstance(data, Mapping) else {}


def event_name(deployment: str, event_id: str) -> str:
    """The Kubernetes Event's name: stable per CloudEvent (a DNS subdomain of at most 253 chars)."""
    return f"{deployment}.rollbackd-{event_id}".lower()[:253]


class KubeEventsSink:
    """Records events on the targets' Deployments (cursor ``kubernetes``).

    Keyword-only arguments:

    - ``kube``: an open :class:`~rollbackd.kube.KubeClient`;
    - ``deployments``: target key -> Deployment name (:func:`deployments_of`);
    - ``rollouts``: target key -> Rollout name (:func:`rollouts_of`), for ``argo-rollout`` targets;
    - ``instance``: the Events' ``reportingInstance`` (this daemon);
    - ``name``: the sink's outbox cursor.
    """

    def __init__(
        self,
        *,
        kube: KubeClient,
        deployments: Mapping[str, str],
        rollouts: Mapping[str, str] | None = None,
        instance: str = "rollbackd",
        name: str = "kubernetes",
    ) -> None:
        self._kube = kube
        self._deployments = dict(deployments)
        self._rollouts = dict(rollouts or {})
        self._instance = instance
        self._name = name
        self.passed_over = 0  # events with no Deployment to be recorded on

    @property
    def name(self) -> str:
        return self._name

    async def deliver(self, event: OutboxEvent) -> None:
        """Create the Kubernetes Event of ``event`` on its target's Deployment (or Rollout)."""
        subject = event.subject or ""
        kind_name, deployment_name = "Deployment", self._deployments.get(subject)
        if deployment_name is None and subject in self._rollouts:
            kind_name, deployment_name = "Rollout", self._rollouts[subject]
        if event.subject is None or deployment_name is None:
            self.passed_over += 1
            return
        namespace, _ = split_subject(event.subject)
        reason, kind, action = reason_of(event)
        summary = str(_data(event).get("summary") or short_type(event.type))
        try:
            if kind_name == "Rollout":
                regarding = await rollouts.get_rollout(self._kube, namespace=namespace, name=deployment_name)
            else:
                regarding = await objects.get_deployment(self._kube, namespace=namespace,
                                                         name=deployment_name)
            body = objects.new_event(
                regarding=regarding,
                reason=reason,
                note=summary,
                action=action,
                type=kind,
                reporting_instance=self._instance,
                now=_time_of(event),
            )
            body["metadata"]["name"] = event_name(deployment_name, event.event_id)
            await objects.create_event(self._kube, namespace=namespace, event=body)
        except KubeNotFound:
            self.passed_over += 1
            logger.info(
                "kubernetes events: %s %s/%s not found; %s not recorded there",
                kind_name,
                namespace,
                deployment_name,
                event.type,
                extra={"target": event.subject},
            )
        except KubeConflict:
            return  # delivered before (the answer was lost): the Event is there already
        except KubeError as exc:
            raise DeliveryError(
                f"cannot record {short_type(event.type)} on {kind_name} {namespace}/{deployment_name}: {exc}"
            ) from exc


def _time_of(event: OutboxEvent) -> datetime | None:
    raw = event.payload.get("time")
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        return None
