"""Abort a canary: no more traffic to the canary, canary scaled to zero, stable serving.

How traffic reaches the canary is its router's business (:mod:`rollbackd.actions.routers`: an
ingress-nginx canary Ingress, a Gateway API route, an Istio VirtualService). The steps, in this
order, each skipped when already so:

1. the router's steps: every request to the stable backend (e.g. the canary Ingress' weight to
   ``"0"`` and its routing annotations removed; the canary's weight in a route given to the stable
   backend), then the router's confirmation that the route as written is in effect (a Gateway
   that refuses it fails the action here, before the canary is touched);
2. the canary Deployment scaled to 0 through its ``scale`` subresource (a canary Deployment that
   no longer exists counts as scaled down);

then the run waits until the stable Deployment has all its replicas available before it reports
``done``. The route and the stable Deployment must exist, else the action refuses. The result's
details carry the split as it was read before the abort (``split_before``) and after it
(``split_after``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.routers.base import Router
from rollbackd.actions.steps import (
    ActionRun,
    KubeAction,
    Step,
)
from rollbackd.kube import KubeError, Obj, objects

ACTION = "canary-abort"


@dataclass(frozen=True, kw_only=True, eq=False)
class CanaryAbort(KubeAction):
    """Abort a canary behind a traffic router.

    Besides :class:`~rollbackd.actions.steps.KubeAction`'s ``kube``, ``target``, ``namespace``
    and ``settings``:

    - ``router``: how traffic reaches the canary (a :class:`~rollbackd.actions.routers.base.Router`
      on the same client);
    - ``canary``: the canary Deployment; ``stable``: the stable Deployment.
    """

    name = ACTION

    router: Router
    canary: str
    stable: str

    async def _get_canary(self) -> Obj:
        return await self._deployment(self.canary)

    async def _get_stable(self) -> Obj:
        return await self._deployment(self.stable)

    def _scale_change(self, canary: Obj | None) -> Change | None:
        if canary is None:
            return None  # gone: nothing left to scale down
        replicas = (canary.get("spec") or {}).get("replicas", 1)
        if not replicas:
            return None
        return Change(self._named("Deployment", self.canary), "spec.replicas", replicas, 0)

    async def _scale_down(self) -> Sequence[Change]:
        return await self._scale_to_zero(self.canary, self._scale_change)

    async def _split(self, run: ActionRun) -> dict[str, Any] | None:
        """The router's split now, for the result's details (``None`` when it cannot be read)."""
        try:
            return (await run.call(self.router.read_split)).as_dict()
        except (KubeError, ValueError):
            return None

    async def _run(self, run: ActionRun, fields: dict[str, Any], *, dry_run: bool) -> ActionResult:
        routing = list(await self.router.plan(run))
        await run.required(f"the stable Deployment {self.namespace}/{self.stable} (nothing to go back to)",
                           self._get_stable)
        canary = await run.optional(self._get_canary)
        details: dict[str, Any] = {"canary_deployment_exists": canary is not None, "router": self.router.kind,
                                   "split_before": await self._split(run)}
        fields["details"] = details  # a failure further on reports them too
        plan: list[Step] = list(routing)
        scale = self._scale_change(canary)
        if scale is not None:
            plan.append(Step(changes=(scale,), apply=self._scale_down))
        planned = tuple(change for step in plan for change in step.changes)
        if dry_run:
            if not plan:
                return run.result(ActionOutcome.ALREADY_DONE, "the canary is already aborted",
                                  details=details)
            return run.result(ActionOutcome.PLANNED,
                              f"would make {len(planned)} change(s) to abort the canary",
                              changes=planned, details=details)
        for step in routing:
            await run.apply(step)
        await self.router.confirm(run)
        details["split_after"] = await self._split(run)
        if scale is not None:
            await run.apply(plan[-1])
        await run.wait_until(f"the stable Deployment {self.namespace}/{self.stable} to have all its replicas "
                             f"available", self._stable_available)
        if not plan:
            return run.result(ActionOutcome.ALREADY_DONE,
                              "the canary was already aborted; the stable Deployment is fully available",
                              details=details)
        return run.result(ActionOutcome.DONE,
                          f"canary aborted: no traffic to it ({self.router.source}), scaled to 0; the stable "
                          f"Deployment is fully available", details=details)

    async def _stable_available(self) -> bool:
        return objects.rollout_complete(await self._get_stable())
