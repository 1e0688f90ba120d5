"""What the cluster says about a release, read from Kubernetes objects (plain JSON dicts), no I/O.

* rollback risk and fix-forward holds from the candidate Deployment's annotations;
* "a newer rollout is already progressing": the candidate Deployment's revision moved past the one
  that was being judged (someone shipped a fix on top);
* the rollback target: the version to go back to must exist and be healthy, else rolling back
  would make things worse, and the risk is high.

For an Argo Rollouts ``Rollout`` (strategy ``argo-rollout``) the candidate is the Rollout itself
(annotations, revision ``rollout.argoproj.io/revision``) and the version to go back to its stable
ReplicaSet (``status.stableRS``); a fully promoted Rollout (stable is the current version) has
nothing to go back to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rollbackd.decision.annotations import AnnotationError, context_from_annotations
from rollbackd.model import Hold, Risk, Strategy

REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
#: An Argo Rollouts Rollout's revision (as :mod:`rollbackd.kube.rollouts` reads it too).
ROLLOUT_REVISION_ANNOTATION = "rollout.argoproj.io/revision"

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    """The decision context the cluster contributes for one target at one tick."""

    risk: Risk | None = None
    risk_reason: str = ""
    hold: Hold | None = None
    candidate_revision: int | None = None
    has_rollback_target: bool = True
    rollback_target_reason: str = ""
    problems: tuple[str, ...] = ()


def revision_of(obj: Obj | None, annotation: str = REVISION_ANNOTATION) -> int | None:
    if not obj:
        return None
    raw = (obj.get("metadata") or {}).get("annotations", {}).get(annotation)
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _name(obj: Obj) -> str:
    meta = obj.get("metadata") or {}
    return f"{meta.get('namespace', '?')}/{meta.get('name', '?')}"


def availability(deployment: Obj) -> tuple[int, int]:
    """(desired replicas, available replicas) of a Deployment."""
    desired = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    available = int((deployment.get("status") or {}).get("availableReplicas", 0) or 0)
    return desired, available


def is_newer(judged_revision: int | None, current_revision: int | None) -> bool:
    """True when the current revision is past the one that was judged."""
    return judged_revision is not None and current_revision is not None and current_revision > judged_revision



def _rollback_target(
    strategy: Strategy, baseline: Obj | None, candidate: Obj | None, replica_sets: Sequence[Obj]
) -> tuple[bool, str]:
    if strategy is Strategy.CONFIG:
        return True, ""  # the earlier data is in rollbackd's store: the action refuses when it is not
    if strategy is Strategy.DEPLOYMENT:
        current = revision_of(candidate)
        older = [
            rs
            for rs in replica_sets
            if (r := revision_of(rs)) is not None and (current is None or r < current)
        ]
        if not older:
            return False, "no earlier revision of the Deployment to go back to"
        return True, ""
    if strategy is Strategy.ARGO_ROLLOUT:
        return _rollout_target(candidate, baseline)
    if strategy is Strategy.FEATURE_FLAG:
        return True, ""  # turning the flag off needs nothing of the cluster
    role = "stable Deployment" if strategy is Strategy.CANARY else "previous colour's Deployment"
    if baseline is None:
        return False, f"the {role} to go back to does not exist"
    desired, available = availability(baseline)
    if strategy is Strategy.BLUE_GREEN and desired == 0:
        return True, ""  # the switch-back scales it up first
    if available < max(1, desired):
        return False, f"the {role} {_name(baseline)} is unhealthy ({available}/{desired} replicas available)"
    return True, ""


def _rollout_target(rollout: Obj | None, stable: Obj | None) -> tuple[bool, str]:
    """A Rollout can be aborted to a healthy version: it has a stable version that is not the one
    being rolled out, and that version's ReplicaSet (``stable``) is available."""
    if rollout is None:
        return False, "the Rollout does not exist"
    status = rollout.get("status") or {}
    stable_hash = status.get("stableRS")
    if not stable_hash:
        return False, f"the Rollout {_name(rollout)} has no stable version to go back to"
    if stable_hash == status.get("currentPodHash"):
        return False, (f"the Rollout {_name(rollout)} is fully promoted: its stable version is the new one, "
                       "an abort would go back to nothing")
    if stable is None:
        return False, f"the stable ReplicaSet ({stable_hash}) of the Rollout {_name(rollout)} does not exist"
    desired, available = availability(stable)
    if available < max(1, desired):
        return False, (f"the stable ReplicaSet {_name(stable)} of the Rollout is unhealthy "
                       f"({available}/{desired} replicas available)")
    return True, ""


def cluster_facts(
    strategy: Strategy,
    *,
    candidate: Obj | None,
    baseline: Obj | None = None,
    replica_sets: Sequence[Obj] = (),
    wall_now: datetime,
    loop_now: float,
    eta_first_seen: float | None = None,
) -> ClusterFacts:
    """Everything the framework needs from the cluster, from the objects as read this tick:
    ``candidate`` is the candidate Deployment (the Rollout, for ``argo-rollout``), ``baseline`` the
    baseline Deployment (the Rollout's stable ReplicaSet), ``replica_sets`` the candidate's
    ReplicaSets (``deployment`` strategy)."""
    problems: list[str] = []
    risk: Risk | None = None
    risk_reason = ""
    hold: Hold | None = None
    annotations = ((candidate or {}).get("metadata") or {}).get("annotations") or {}
    try:
        annotated = context_from_annotations(
            annotations, wall_now=wall_now, loop_now=loop_now, eta_first_seen=eta_first_seen
        )
        risk, risk_reason, hold = annotated.risk, annotated.risk_reason, annotated.hold
    except AnnotationError as exc:
        problems.append(str(exc))
    ok, why = _rollback_target(strategy, baseline, candidate, replica_sets)
    if not ok:
        risk, risk_reason = Risk.HIGH, why
    return ClusterFacts(
        risk=risk,
        risk_reason=risk_reason,
        hold=hold,
        candidate_revision=revision_of(
            candidate,
            ROLLOUT_REVISION_ANNOTATION if strategy is Strategy.ARGO_ROLLOUT else REVISION_ANNOTATION,
        ),
        has_rollback_target=ok,
        rollback_target_reason=why,
        problems=tuple(problems),
    )
