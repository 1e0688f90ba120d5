"""Argo Rollouts' ``Rollout`` (``argoproj.io/v1alpha1``), as rollbackd reads and aborts it.

A Rollout runs its versions as ReplicaSets it owns, told apart by the label
``rollouts-pod-template-hash``: ``status.stableRS`` is the hash of the stable version (the one to go
back to), ``status.currentPodHash`` the hash of the version being rolled out; once they are equal
the Rollout is fully promoted. Its revision is the annotation ``rollout.argoproj.io/revision``.

Aborting is what ``kubectl argo rollouts abort`` does: a JSON merge patch ``{"status": {"abort":
true}}`` through the ``status`` subresource (RBAC: ``patch`` on ``rollouts/status``). The Argo
Rollouts controller then sends all traffic back to the stable ReplicaSet, scales the canary (or
the blue-green preview) down, and reports it: ``status.abort: true``, a ``Progressing`` condition
with reason ``RolloutAborted``, ``status.phase: Degraded`` with a message starting with
``RolloutAborted``.

A cluster without Argo Rollouts answers any request on Rollouts 404 "the server could not find the
requested resource": :func:`get_rollout` raises :class:`RolloutsNotInstalled` for it, with a message
that says so, where a missing Rollout is an ordinary :class:`~rollbackd.kube.errors.KubeNotFound`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollbackd.kube import objects
from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import KubeCall, KubeNotFound

GROUP = "argoproj.io"
VERSION = "v1alpha1"
PLURAL = "rollouts"
KIND = "Rollout"
API_VERSION = f"{GROUP}/{VERSION}"
#: The label Argo Rollouts gives each version's ReplicaSet and pods.
POD_HASH_LABEL = "rollouts-pod-template-hash"
#: The Rollout's revision, on the Rollout and on each of its ReplicaSets.
REVISION_ANNOTATION = "rollout.argoproj.io/revision"
#: The reason of the ``Progressing`` condition (and the start of the phase message) of an aborted Rollout.
ABORTED_REASON = "RolloutAborted"
#: What the API server says about a resource type it does not serve (the CRD is not installed).
UNKNOWN_RESOURCE = "the server could not find the requested resource"
#: The patch ``kubectl argo rollouts abort`` sends.
ABORT_PATCH: Obj = {"status": {"abort": True}}


class RolloutsNotInstalled(KubeNotFound):
    """The cluster does not serve ``rollouts.argoproj.io``: Argo Rollouts (its CRDs) is not installed."""


def _not_installed(exc: KubeNotFound) -> KubeNotFound:
    if exc.server_message is None or UNKNOWN_RESOURCE not in exc.server_message:
        return exc
    return RolloutsNotInstalled(
        f"{exc.call.describe()}: the cluster does not serve rollouts.{GROUP}/{VERSION}; Argo Rollouts "
        "(its CRDs) is not installed: install it, or give this target another strategy",
        call=exc.call, status=exc.status, reason=exc.reason, server_message=exc.server_message,
    )


async def get_rollout(kube: KubeClient, *, namespace: str, name: str) -> Obj:
    """Read a Rollout. Raises :class:`~rollbackd.kube.errors.KubeNotFound` if it does not exist and
    :class:`RolloutsNotInstalled` if the cluster has no Rollouts at all."""
    call = KubeCall("get", "rollouts", "argoproj.io", namespace, name)
    try:
        return await kube.request(call, kube.custom.get_namespaced_custom_object, GROUP, VERSION, namespace,
                                  PLURAL, name)
    except KubeNotFound as exc:
        raise _not_installed(exc) from exc


async def abort_rollout(kube: KubeClient, *, namespace: str, name: str) -> Obj:
    """Abort a Rollout the way ``kubectl argo rollouts abort`` does (see the module docstring);
    returns the Rollout as stored after the patch."""
    call = KubeCall("patch", "rollouts", "argoproj.io", namespace, name, subresource="status")
    try:
        return await kube.request(call, kube.custom.patch_namespaced_custom_object_status, GROUP, VERSION,
                                  namespace, PLURAL, name, dict(ABORT_PATCH),
                                  _content_type="application/merge-patch+json")
    except KubeNotFound as exc:
        raise _not_installed(exc) from exc


# --- small pure helpers --------------------------------------------------------------------------

def _status(rollout: Mapping[str, Any]) -> Mapping[str, Any]:
    status = rollout.get("status")
    return status if isinstance(status, Mapping) else {}


def revision(rollout: Mapping[str, Any] | None) -> int | None:
    """The Rollout's (or one of its ReplicaSets') revision; ``None`` if absent or not a number."""
    value = objects.annotations_of(rollout or {}).get(REVISION_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def stable_hash(rollout: Mapping[str, Any]) -> str | None:
    """``status.stableRS``: the pod-template hash of the version to go back to (``None`` if none)."""
    value = _status(rollout).get("stableRS")
    return value if isinstance(value, str) and value else None


def current_hash(rollout: Mapping[str, Any]) -> str | None:
    """``status.currentPodHash``: the pod-template hash of the version being rolled out."""
    value = _status(rollout).get("currentPodHash")
    return value if isinstance(value, str) and value else None


def abort_requested(rollout: Mapping[str, Any]) -> bool:
    """``status.abort`` is set: the abort is asked for (the controller may not have acted yet)."""
    return _status(rollout).get("abort") is True


def reports_aborted(rollout: Mapping[str, Any]) -> bool:
    """The controller has acted on the abort: ``status.abort`` and a ``RolloutAborted`` condition
    or phase message."""
    if not abort_requested(rollout):
        return False
    status = _status(rollout)
    for condition in status.get("conditions") or []:
        if isinstance(condition, Mapping) and condition.get("reason") == ABORTED_REASON:
            return True
    return status.get("phase") == "Degraded" and str(status.get("message") or "").startswith(ABORTED_REASON)


def desired_replicas(rollout: Mapping[str, Any]) -> int:
    """``spec.replicas`` (1 when unset, as the controller defaults it)."""
    value = (rollout.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def strategy_of(rollout: Mapping[str, Any]) -> str | None:
    """``canary`` or ``blueGreen``: which of the two the Rollout's ``spec.strategy`` declares."""
    strategy = (rollout.get("spec") or {}).get("strategy") or {}
    for name in ("canary", "blueGreen"):
        if strategy.get(name) is not None:
            return name
    return None


def replicaset_available(replica_set: Mapping[str, Any] | None, desired: int) -> bool:
    """The ReplicaSet has at least ``desired`` replicas available."""
    if not replica_set:
        return False
    available = int((replica_set.get("status") or {}).get("availableReplicas", 0) or 0)
    return available >= max(1, desired)


async def stable_replicaset(kube: KubeClient, *, rollout: Mapping[str, Any]) -> Obj | None:
    """The ReplicaSet of the Rollout's stable version (owned by the Rollout, labelled with
    ``status.stableRS``); ``None`` when the Rollout has no stable version or it is gone."""
    wanted = stable_hash(rollout)
    namespace = objects.metadata_of(rollout).get("namespace")
    if wanted is None or not isinstance(namespace, str):
        return None
    listed = await objects.list_replicasets(kube, namespace=namespace, match_labels={POD_HASH_LABEL: wanted})
    owned = [rs for rs in listed if objects.owned_by(rs, rollout)]
    return owned[0] if owned else None
