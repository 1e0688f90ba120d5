"""Abort an ingress-nginx canary: no more traffic to the canary, canary scaled to zero, stable serving.

The steps, in this order, each skipped when already so:

1. the canary Ingress' ``nginx.ingress.kubernetes.io/canary-weight`` to ``"0"``: weighted traffic
   to the canary stops with one small write;
2. the canary routing annotations removed (JSON merge patch, ``null`` values):
   ``canary-by-header``, ``canary-by-header-value``, ``canary-by-header-pattern``,
   ``canary-by-cookie`` (these send matching requests to the canary whatever the weight) and
   ``canary-weight-total``. With ``remove_canary_marker=True``, ``canary`` and ``canary-weight``
   go too. That is off by default, on purpose: an Ingress that is no longer marked canary is a
   second main Ingress for the same host and path, which ingress-nginx's admission webhook rejects
   and which, without the webhook, may take the main Ingress' traffic. Kept at weight 0 with no
   routing rule, the canary Ingress receives nothing, and the next release can reuse it;
3. the canary Deployment scaled to 0 through its ``scale`` subresource (a canary Deployment that
   no longer exists counts as scaled down);

then the run waits until the stable Deployment has all its replicas available before it reports
``done``. The canary Ingress and the stable Deployment must exist, else the action refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.steps import (
    DEFAULT_SETTINGS,
    ActionRun,
    ActionSettings,
    KubeAction,
    Step,
    object_name,
)
from rollbackd.kube import KubeClient, Obj, objects

ACTION = "canary-abort"

PREFIX = "nginx.ingress.kubernetes.io/"
CANARY = objects.CANARY_ANNOTATION
WEIGHT = objects.CANARY_WEIGHT_ANNOTATION
#: Annotations that route requests to the canary whatever its weight, or scale the weight.
ROUTING_ANNOTATIONS = tuple(
    PREFIX + suffix
    for suffix in (
        "canary-by-header",
        "canary-by-header-value",
        "canary-by-header-pattern",
        "canary-by-cookie",
        "canary-weight-total",
    )
)


def annotation_field(key: str) -> str:
    return f"metadata.annotations[{key}]"


class CanaryAbort(KubeAction):
    """Abort a canary behind an ingress-nginx canary Ingress.

    Besides :class:`~rollbackd.actions.steps.KubeAction`'s ``kube``, ``target``, ``namespace``
    and ``settings``:

    - ``ingress``: the canary Ingress (the one annotated ``canary: "true"``);
    - ``canary``: the canary Deployment; ``stable``: the stable Deployment;
    - ``remove_canary_marker``: also remove ``canary`` and ``canary-weight`` (see the module
      docstring for why that is off by default).
    """

    name = ACTION

    def __init__(
        self,
        *,
        kube: KubeClient,
        target: str,
        namespace: str,
        ingress: str,
        canary: str,
        stable: str,
        remove_canary_marker: bool = False,
        settings: ActionSettings = DEFAULT_SETTINGS,
    ) -> None:
        super().__init__(kube=kube, target=target, namespace=namespace, settings=settings)
        self.ingress = ingress
        self.canary = canary
        self.stable = stable
        self.remove_canary_marker = remove_canary_marker
        self._ingress_object = object_name("Ingress", namespace, ingress)
        self._canary_object = object_name("Deployment", namespace, canary)

    @property
    def removed_annotations(self) -> tuple[str, ...]:
        """The annotations step 2 removes."""
        return (*ROUTING_ANNOTATIONS, CANARY, WEIGHT) if self.remove_canary_marker else ROUTING_ANNOTATIONS

    # -- reading --

    async def _get_ingress(self) -> Obj:
        return await objects.get_ingress(self.kube, namespace=self.namespace, name=self.ingress)

    async def _get_canary(self) -> Obj:
        return await objects.get_deployment(self.kube, namespace=self.namespace, name=self.canary)

    async def _get_stable(self) -> Obj:
        return await objects.get_deployment(self.kube, namespace=self.namespace, name=self.stable)

    # -- what each step would change, from an object as read --

    def _weight_change(self, ingress: Obj) -> Change | None:
        weight = objects.annotations_of(ingress).get(WEIGHT)
        if weight is None or weight.strip() == "0":
            return None
        return Change(self._ingress_object, annotation_field(WEIGHT), weight, "0")

    def _removal_changes(self, ingress: Obj, *, weight_zeroed: bool = False) -> tuple[Change, ...]:
        annotations = dict(objects.annotations_of(ingress))
        if weight_zeroed:  # planned after step 1: the weight will be "0" by then
            annotations[WEIGHT] = "0"
        return tuple(
            Change(self._ingress_object, annotation_field(key), annotations[key], None)
            for key in self.removed_annotations
            if key in annotations
        )

    def _scale_change(self, canary: Obj | None) -> Change | None:
        if canary is None:
            return None  # gone: nothing left to scale down
        replicas = (canary.get("spec") or {}).get("replicas", 1)
        if not replicas:
            return None
        return Change(self._canary_object, "spec.replicas", replicas, 0)

    # -- applying them: re-read, re-decide, write --

    async def _set_weight_zero(self) -> Sequence[Change]:
        change = self._weight_change(await self._get_ingress())
        if change is None:
            return ()
        await objects.patch_ingress(self.kube, namespace=self.namespace, name=self.ingress,
                                    patch={"metadata": {"annotations": {WEIGHT: "0"}}})
        return (change,)

    async def _remove_annotations(self) -> Sequence[Change]:
        changes = self._removal_changes(await self._get_ingress())
        if not changes:
            return ()
        fields = {change.field for change in changes}
        keys = [key for key in self.removed_annotations if annotation_field(key) in fields]
        await objects.patch_ingress(self.kube, namespace=self.namespace, name=self.ingress,
                                    patch={"metadata": {"annotations": dict.fromkeys(keys)}})
        return changes

    async def _scale_down(self) -> Sequence[Change]:
        return await self._scale_to_zero(self.canary, self._scale_change)

    async def _run(self, run: ActionRun, fields: dict[str, Any], *, dry_run: bool) -> ActionResult:
        ingress = await run.required(f"the canary Ingress {self.namespace}/{self.ingress}", self._get_ingress)
        await run.required(f"the stable Deployment {self.namespace}/{self.stable} (nothing to go back to)",
                           self._get_stable)
        canary = await run.optional(self._get_canary)
        plan: list[Step] = []
        weight = self._weight_change(ingress)
        if weight is not None:
            plan.append(Step(changes=(weight,), apply=self._set_weight_zero))
        removals = self._removal_changes(ingress, weight_zeroed=weight is not None)
        if removals:
            plan.append(Step(changes=removals, apply=self._remove_annotations))
        scale = self._scale_change(canary)
        if scale is not None:
            plan.append(Step(changes=(scale,), apply=self._scale_down))
        details: dict[str, Any] = {"canary_deployment_exists": canary is not None}
        planned = tuple(change for step in plan for change in step.changes)
        if dry_run:
            if not plan:
                return run.result(ActionOutcome.ALREADY_DONE, "the canary is already aborted",
                                  details=details)
            return run.result(ActionOutcome.PLANNED,
                              f"would make {len(planned)} change(s) to abort the canary",
                              changes=planned, details=details)
        for step in plan:
            await run.apply(step)
        await run.wait_until(f"the stable Deployment {self.namespace}/{self.stable} to have all its replicas "
                             f"available", self._stable_available)
        if not plan:
            return run.result(ActionOutcome.ALREADY_DONE,
                              "the canary was already aborted; the stable Deployment is fully available",
                              details=details)
        return run.result(ActionOutcome.DONE,
                          "canary aborted: no traffic to it, scaled to 0; the stable Deployment is fully "
                          "available", details=details)

    async def _stable_available(self) -> bool:
        return objects.rollout_complete(await self._get_stable())
