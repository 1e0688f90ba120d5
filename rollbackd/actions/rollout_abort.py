"""Abort an Argo Rollouts ``Rollout`` (strategy canary or blueGreen) the way ``kubectl argo rollouts
abort`` does, and wait until the stable version serves.

One step, skipped when already so: ``status.abort`` set to ``true`` with a JSON merge patch through
the Rollout's ``status`` subresource (see :mod:`rollbackd.kube.rollouts`). The Argo Rollouts
controller does the rest: all traffic back to the stable ReplicaSet, the canary (or the blue-green
preview) scaled down. The run then waits until the Rollout reports the abort (a ``RolloutAborted``
condition) and the stable ReplicaSet (``status.stableRS``) has all the Rollout's replicas
available, and reports ``done``.

It is not a Deployment undo: the Rollout's ``spec.template`` still names the bad version, and the
Rollout stays aborted (``Degraded``) until someone ships a fix or runs ``kubectl argo rollouts
retry``; rollbackd does not touch the spec.

The action refuses, changing nothing, when the Rollout does not exist, when the cluster has no
Rollouts at all (Argo Rollouts not installed), when it has no stable version to go back to, or when
it is fully promoted (the stable version is the new one: an abort would change nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.steps import (
    ActionRun,
    KubeAction,
    Refusal,
    Step,
)
from rollbackd.kube import KubeClient, Obj, rollouts
from rollbackd.kube.rollouts import RolloutsNotInstalled

ACTION = "argo-rollout-abort"

#: The field the abort changes, as the audit trail names it.
ABORT_FIELD = "status.abort"


@dataclass(frozen=True, kw_only=True, eq=False)
class RolloutAbort(KubeAction):
    """Abort an Argo Rollouts Rollout.

    Besides :class:`~rollbackd.actions.steps.KubeAction`'s ``kube``, ``target``, ``namespace`` and
    ``settings``: ``rollout``, the Rollout's name.
    """

    name = ACTION

    rollout: str

    async def _get(self) -> Obj:
        return await rollouts.get_rollout(self.kube, namespace=self.namespace, name=self.rollout)

    def _abort_change(self, rollout: Obj) -> Change | None:
        if rollouts.abort_requested(rollout):
            return None
        before = (rollout.get("status") or {}).get("abort")
        return Change(self._named("Rollout", self.rollout), ABORT_FIELD, before, True)

    async def _abort(self) -> Sequence[Change]:
        change = self._abort_change(await self._get())
        if change is None:
            return ()
        await rollouts.abort_rollout(self.kube, namespace=self.namespace, name=self.rollout)
        return (change,)

    def _fields(self) -> dict[str, Any]:
        return {"from_revision": None}

    async def _run(self, run: ActionRun, fields: dict[str, Any], *, dry_run: bool) -> ActionResult:
        what = f"the Rollout {self.namespace}/{self.rollout}"
        try:
            rollout = await run.required(what, self._get)
        except RolloutsNotInstalled as exc:
            raise Refusal(str(exc)) from exc
        fields["from_revision"] = rollouts.revision(rollout)
        stable, current = rollouts.stable_hash(rollout), rollouts.current_hash(rollout)
        details: dict[str, Any] = {"stable_rs": stable, "current_pod_hash": current,
                                   "rollout_strategy": rollouts.strategy_of(rollout)}
        change = self._abort_change(rollout)
        if stable is None:
            raise Refusal(f"{what} has no stable version to go back to (status.stableRS is empty)")
        if change is not None and stable == current:
            raise Refusal(f"{what} is fully promoted (its stable version {stable} is the new one): an abort "
                          "would change nothing; roll back with a new release")
        if dry_run:
            if change is None:
                return run.result(ActionOutcome.ALREADY_DONE, f"{what} is already aborted", details=details,
                                  **fields)
            return run.result(ActionOutcome.PLANNED, f"would abort {what}", changes=(change,),
                              details=details, **fields)
        if change is not None:
            await run.apply(Step(changes=(change,), apply=self._abort))
        await run.wait_until(f"{what} to report the abort and its stable ReplicaSet ({stable}) to have all "
                             "its replicas available", self._stable_serving)
        if change is None:
            return run.result(ActionOutcome.ALREADY_DONE,
                              f"{what} was already aborted; its stable version is fully available",
                              details=details, **fields)
        return run.result(ActionOutcome.DONE,
                          f"{what} aborted: traffic back to its stable version {stable}, which is fully "
                          "available", details=details, **fields)

    async def _stable_serving(self) -> bool:
        return await stable_serving(self.kube, namespace=self.namespace, name=self.rollout)


async def stable_serving(kube: KubeClient, *, namespace: str, name: str) -> bool:
    """The Rollout reports its abort and its stable ReplicaSet has all its replicas available."""
    rollout = await rollouts.get_rollout(kube, namespace=namespace, name=name)
    if not rollouts.reports_aborted(rollout):
        return False
    stable = await rollouts.stable_replicaset(kube, rollout=rollout)
    return rollouts.replicaset_available(stable, rollouts.desired_replicas(rollout))
