"""Argo Rollouts on the emulated cluster: a Rollout in the middle of a release, and what its
controller does when the Rollout is aborted.

- :func:`seed_rollout`: a ``Rollout`` (strategy canary or blueGreen) rolling out a new image, with
  the two ReplicaSets Argo Rollouts makes (named ``<rollout>-<hash>``, labelled
  ``rollouts-pod-template-hash``, owned by the Rollout, annotated with their revision) and its status
  as the controller reports it mid-release: ``stableRS`` the old version's hash, ``currentPodHash``
  the new one's, paused at a canary step (or awaiting the blue-green promotion);
- :class:`RolloutsController`: when a Rollout's ``status.abort`` is set and the controller has not yet
  acted on it, it does what Argo Rollouts does (see its ``rollout`` package): the new version's
  ReplicaSet is scaled to 0, the stable one to the Rollout's replicas, and the Rollout reports the
  abort: a ``Progressing`` condition ``False`` with reason ``RolloutAborted``, ``phase: Degraded``,
  ``message: "RolloutAborted: Rollout aborted update to revision N"``, ``abortedAt``. The stable
  pods become available ``ready_delay_s`` later (never, for a Rollout in ``stalled``).

Not emulated: steps, analysis, traffic routers, promotion, retries; the Rollout's spec is never
changed (an abort leaves it naming the new version, as in a real cluster).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from rollbackd.demo.emulator import REPLICASETS, ROLLOUTS, ClusterEmulator, Obj, Polling, template_hash
from rollbackd.kube.rollouts import ABORTED_REASON, POD_HASH_LABEL, REVISION_ANNOTATION

RolloutStrategy = Literal["canary", "blueGreen"]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _template(name: str, image: str) -> Obj:
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": [{"name": name, "image": image, "ports": [{"containerPort": 8080}]}]},
    }


def _strategy(kind: RolloutStrategy, name: str) -> Obj:
    if kind == "canary":
        return {"canary": {
            "canaryMetadata": {"labels": {"role": "canary"}},
            "stableMetadata": {"labels": {"role": "stable"}},
            "steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {"duration": "10m"}}],
        }}
    return {"blueGreen": {
        "activeService": f"{name}-active",
        "previewService": f"{name}-preview",
        "autoPromotionEnabled": False,
        "activeMetadata": {"labels": {"role": "stable"}},
        "previewMetadata": {"labels": {"role": "canary"}},
    }}


def _replicaset(rollout: Mapping[str, Any], template: Obj, pod_hash: str, revision: int, replicas: int,
                ready: int) -> Obj:
    metadata = rollout["metadata"]
    labels = {**template["metadata"]["labels"], POD_HASH_LABEL: pod_hash}
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{metadata['name']}-{pod_hash}",
            "labels": labels,
            "annotations": {REVISION_ANNOTATION: str(revision)},
            "ownerReferences": [{
                "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": metadata["name"],
                "uid": metadata["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {**template, "metadata": {"labels": labels}},
        },
        "status": {"replicas": replicas, "readyReplicas": ready, "availableReplicas": ready,
                   "observedGeneration": 1},
    }


def seed_rollout(
    emu: ClusterEmulator,
    namespace: str,
    name: str,
    *,
    strategy: RolloutStrategy = "canary",
    replicas: int = 4,
    stable_image: str,
    image: str,
    revision: int = 2,
    promoted: bool = False,
) -> Obj:
    """A Rollout releasing ``image`` (revision ``revision``) over ``stable_image`` (the revision
    before), with both ReplicaSets; the stable one has all ``replicas`` available, the new one one
    pod (canary) or ``replicas`` (blueGreen preview). With ``promoted``, the release is over: the new
    version is the stable one. Returns the stored Rollout."""
    stable_template, template = _template(name, stable_image), _template(name, image)
    stable_hash, new_hash = template_hash(stable_template), template_hash(template)
    rollout = emu.store(ROLLOUTS, namespace, {
        "metadata": {"name": name, "annotations": {REVISION_ANNOTATION: str(revision)}},
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": {"app": name}},
            "template": template,
            "strategy": _strategy(strategy, name),
        },
    })
    # A basic canary at its first step runs one new pod in place of a stable one; a blue-green
    # preview runs beside the whole active version.
    new_replicas = replicas if strategy == "blueGreen" or promoted else 1
    old_replicas = 0 if promoted else replicas if strategy == "blueGreen" else max(1, replicas - new_replicas)
    emu.store(REPLICASETS, namespace, _replicaset(rollout, stable_template, stable_hash, revision - 1,
                                                    old_replicas, old_replicas))
    emu.store(REPLICASETS, namespace, _replicaset(rollout, template, new_hash, revision, new_replicas,
                                                    new_replicas))
    status: Obj = {
        "observedGeneration": "1",
        "currentPodHash": new_hash,
        "stableRS": new_hash if promoted else stable_hash,
        "replicas": old_replicas + new_replicas,
        "updatedReplicas": new_replicas,
        "readyReplicas": old_replicas + new_replicas,
        "availableReplicas": old_replicas + new_replicas,
        "selector": f"app={name}",
        "phase": "Healthy" if promoted else "Paused",
        "message": "" if promoted else ("CanaryPauseStep" if strategy == "canary" else "BlueGreenPause"),
        "conditions": [
            {"type": "Available", "status": "True", "reason": "AvailableReason",
             "message": "Rollout has minimum availability", "lastTransitionTime": _now(),
             "lastUpdateTime": _now()},
            {"type": "Progressing", "status": "True",
             "reason": "NewReplicaSetAvailable" if promoted else "RolloutPaused",
             "message": "Rollout is progressing", "lastTransitionTime": _now(), "lastUpdateTime": _now()},
        ],
    }
    if strategy == "canary":
        status["canary"] = {}
        status["currentStepIndex"] = 4 if promoted else 1
    else:
        status["blueGreen"] = {"activeSelector": new_hash if promoted else stable_hash,
                               "previewSelector": new_hash}
    return emu.update(ROLLOUTS, namespace, name, {"status": status})


@dataclass
class RolloutsController(Polling):
    """What the Argo Rollouts controller does on an abort (see the module docstring), run as one
    task while entered; every ``poll_s`` it looks at every Rollout of the emulator."""

    task_name: ClassVar[str] = "emulated argo rollouts controller"
    emu: ClusterEmulator
    ready_delay_s: float = 0.05
    poll_s: float = 0.01
    stalled: set[tuple[str, str]] = field(default_factory=set)
    #: (namespace, name) -> loop time when the stable pods are available again.
    _pending: dict[tuple[str, str], float] = field(default_factory=dict, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def reconcile(self) -> None:
        """One pass over the Rollouts."""
        now = asyncio.get_running_loop().time()
        for rollout in self.emu.read_all(ROLLOUTS):
            status = rollout.get("status") or {}
            key = (rollout["metadata"]["namespace"], rollout["metadata"]["name"])
            if status.get("abort") is not True:
                continue
            if not any(c.get("reason") == ABORTED_REASON for c in status.get("conditions") or []):
                await self._abort(rollout)
                self._pending[key] = now + self.ready_delay_s
            elif key in self._pending and now >= self._pending[key] and key not in self.stalled:
                del self._pending[key]
                await self._stable_ready(rollout)

    def _replicaset(self, rollout: Obj, pod_hash: str | None) -> Obj | None:
        if pod_hash is None:
            return None
        namespace, name = rollout["metadata"]["namespace"], rollout["metadata"]["name"]
        return self.emu.read(REPLICASETS, namespace, f"{name}-{pod_hash}")

    async def _write(self, resource: Any, namespace: str, name: str, patch: Obj) -> None:
        stored = self.emu.update(resource, namespace, name, patch)
        await self.emu.publish(resource, "MODIFIED", stored)

    async def _abort(self, rollout: Obj) -> None:
        namespace, name = rollout["metadata"]["namespace"], rollout["metadata"]["name"]
        status = rollout["status"]
        replicas = int(rollout["spec"].get("replicas", 1))
        stable, current = status.get("stableRS"), status.get("currentPodHash")
        revision = (rollout["metadata"].get("annotations") or {}).get(REVISION_ANNOTATION, "?")
        new = self._replicaset(rollout, current) if current != stable else None
        if new is not None:
            await self._write(REPLICASETS, namespace, new["metadata"]["name"], {
                "spec": {"replicas": 0},
                "status": {"replicas": 0, "readyReplicas": 0, "availableReplicas": 0},
            })
        old = self._replicaset(rollout, stable)
        available = int((old or {}).get("status", {}).get("availableReplicas") or 0)
        if old is not None:
            await self._write(REPLICASETS, namespace, old["metadata"]["name"],
                              {"spec": {"replicas": replicas}})
        message = f"Rollout aborted update to revision {revision}"
        conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Progressing"]
        conditions.append({"type": "Progressing", "status": "False", "reason": ABORTED_REASON,
                           "message": message, "lastTransitionTime": _now(), "lastUpdateTime": _now()})
        patch: Obj = {"status": {
            "abortedAt": _now(), "phase": "Degraded", "message": f"{ABORTED_REASON}: {message}",
            "conditions": conditions, "replicas": available, "readyReplicas": available,
            "availableReplicas": available, "updatedReplicas": 0,
        }}
        if "canary" in status:
            patch["status"]["canary"] = {"weights": {
                "canary": {"podTemplateHash": current, "weight": 0},
                "stable": {"podTemplateHash": stable, "weight": 100},
            }}
        if "blueGreen" in status:
            patch["status"]["blueGreen"] = {"activeSelector": stable, "previewSelector": current}
        await self._write(ROLLOUTS, namespace, name, patch)

    async def _stable_ready(self, rollout: Obj) -> None:
        namespace, name = rollout["metadata"]["namespace"], rollout["metadata"]["name"]
        replicas = int(rollout["spec"].get("replicas", 1))
        old = self._replicaset(rollout, (rollout.get("status") or {}).get("stableRS"))
        if old is not None:
            await self._write(REPLICASETS, namespace, old["metadata"]["name"], {
                "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas},
            })
        await self._write(ROLLOUTS, namespace, name, {"status": {
            "replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        }})
