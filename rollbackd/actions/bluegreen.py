"""Switch a blue-green Service back to the healthy colour, then scale the bad colour down.

The steps, in this order, each skipped when already so:

1. the healthy colour (the previous one, the target's baseline) scaled up when it is at 0
   replicas, to the bad colour's replica count, and awaited until fully available -- the Service
   is never pointed at a colour that cannot serve;
2. the Service's ``spec.selector`` set to the healthy colour's Deployment selector
   (``spec.selector.matchLabels``, or its pod template labels when it has none), by a JSON merge
   patch conditional on the Service's ``resourceVersion``; a selector that already picks the
   healthy colour's pods and not the bad colour's counts as switched back;
3. awaited: the Service's EndpointSlices list ready endpoints of the healthy colour's pods and
   none of the bad colour's (pods are told apart by their ReplicaSet's name, the prefix of theirs);
   the wait is logged when it starts (which ReplicaSets) and ends (how long it took), and the
   run's ``progress`` shows it (the status page and the API's target view, while it lasts);
4. the bad colour (the candidate) scaled to 0 through its ``scale`` subresource.

The action refuses when the Service or the healthy colour's Deployment does not exist, or when the
healthy colour's selector would also pick the bad colour's pods.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.steps import (
    ActionRun,
    KubeAction,
    Refusal,
    Step,
    merge_diff,
)
from rollbackd.kube import Obj, objects

ACTION = "blue-green-switch-back"


def pod_labels(deployment: Mapping[str, Any]) -> Mapping[str, str]:
    """The labels of a Deployment's pods (its pod template's)."""
    template = (deployment.get("spec") or {}).get("template") or {}
    labels = (template.get("metadata") or {}).get("labels")
    return labels if isinstance(labels, Mapping) else {}


def colour_selector(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The labels that pick a colour's pods: its ``spec.selector.matchLabels``, else its pod
    template labels."""
    selector = (deployment.get("spec") or {}).get("selector") or {}
    match_labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    return dict(match_labels or pod_labels(deployment))


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a Service selector picks pods labelled ``labels`` (an empty selector picks none)."""
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def service_selector(service: Mapping[str, Any]) -> dict[str, str]:
    return dict((service.get("spec") or {}).get("selector") or {})


def replicas_of(deployment: Mapping[str, Any] | None) -> int:
    if deployment is None:
        return 0
    return int((deployment.get("spec") or {}).get("replicas", 1) or 0)


def _sets(names: Sequence[str]) -> str:
    if not names:
        return "no ReplicaSet"
    return ("ReplicaSet " if len(names) == 1 else "ReplicaSets ") + ", ".join(names)


@dataclass(frozen=True, kw_only=True, eq=False)
class BlueGreenSwitchBack(KubeAction):
    """Point a blue-green Service back at the healthy colour and scale the bad one down.

    Besides :class:`~rollbackd.actions.steps.KubeAction`'s ``kube``, ``target``, ``namespace``
    and ``settings``:

    - ``service``: the Service whose selector picks the colour;
    - ``healthy``: the previous colour's Deployment (goes back into service);
    - ``bad``: the new colour's Deployment (scaled to 0 once the healthy one serves).
    """

    name = ACTION

    service: str
    healthy: str
    bad: str

    # -- reading --

    async def _get_service(self) -> Obj:
        return await objects.get_service(self.kube, namespace=self.namespace, name=self.service)

    async def _get_healthy(self) -> Obj:
        return await self._deployment(self.healthy)

    async def _get_bad(self) -> Obj:
        return await self._deployment(self.bad)

    async def _get_bad_or_none(self) -> Obj | None:
        return await self._deployment_or_none(self.bad)

    # -- what each step would change --

    def _scale_up_change(self, healthy: Obj, bad: Obj | None) -> Change | None:
        if replicas_of(healthy) > 0:
            return None
        return Change(self._named("Deployment", self.healthy), "spec.replicas", 0, max(1, replicas_of(bad)))

    def _switch_change(self, service: Obj, healthy: Obj, bad: Obj | None) -> Change | None:
        current = service_selector(service)
        picks_bad = bad is not None and selects(current, pod_labels(bad))
        if selects(current, pod_labels(healthy)) and not picks_bad:
            return None  # already picks the healthy colour only
        return Change(self._named("Service", self.service), "spec.selector", current,
                      colour_selector(healthy))

    def _scale_down_change(self, bad: Obj | None) -> Change | None:
        replicas = replicas_of(bad)
        if not replicas:
            return None
        return Change(self._named("Deployment", self.bad), "spec.replicas", replicas, 0)

    # -- applying them: re-read, re-decide, write --

    async def _scale_up(self) -> Sequence[Change]:
        change = self._scale_up_change(await self._get_healthy(), await self._get_bad_or_none())
        if change is None:
            return ()
        await objects.scale_deployment(self.kube, namespace=self.namespace, name=self.healthy,
                                       replicas=int(change.after))
        return (change,)

    async def _switch(self) -> Sequence[Change]:
        service = await self._get_service()
        change = self._switch_change(service, await self._get_healthy(), await self._get_bad_or_none())
        if change is None:
            return ()
        patch = {
            "metadata": {"resourceVersion": service["metadata"]["resourceVersion"]},  # else 409: re-read
            "spec": {"selector": merge_diff(change.before, change.after)},
        }
        await objects.patch_service(self.kube, namespace=self.namespace, name=self.service,
                                    patch=patch, patch_type="merge")
        return (change,)

    async def _scale_down(self) -> Sequence[Change]:
        return await self._scale_to_zero(self.bad, self._scale_down_change)

    # -- the run --

    async def _run(self, run: ActionRun, fields: dict[str, Any], *, dry_run: bool) -> ActionResult:
        service = await run.required(f"the Service {self.namespace}/{self.service}", self._get_service)
        healthy = await run.required(
            f"the previous colour's Deployment {self.namespace}/{self.healthy} (nothing to go back to)",
            self._get_healthy,
        )
        bad = await run.optional(self._get_bad)
        wanted = colour_selector(healthy)
        if not wanted:
            raise Refusal(f"the Deployment {self.namespace}/{self.healthy} has neither a selector nor pod "
                          f"labels to point the Service at")
        if bad is not None and selects(wanted, pod_labels(bad)):
            raise Refusal(f"the selector of {self.namespace}/{self.healthy} "
                          f"({objects.selector_string(wanted)}) also picks the pods of "
                          f"{self.namespace}/{self.bad}: the colours must differ in a label")
        steps: dict[str, Step] = {}
        scale_up = self._scale_up_change(healthy, bad)
        if scale_up is not None:
            steps["scale-up"] = Step(changes=(scale_up,), apply=self._scale_up)
        switch = self._switch_change(service, healthy, bad)
        if switch is not None:
            steps["switch"] = Step(changes=(switch,), apply=self._switch)
        scale_down = self._scale_down_change(bad)
        if scale_down is not None:
            steps["scale-down"] = Step(changes=(scale_down,), apply=self._scale_down)
        details: dict[str, Any] = {"selector": wanted}
        if dry_run:
            if not steps:
                return run.result(ActionOutcome.ALREADY_DONE, "the Service is already switched back and "
                                  "the bad colour scaled down", details=details)
            planned = tuple(change for step in steps.values() for change in step.changes)
            return run.result(ActionOutcome.PLANNED, f"would make {len(planned)} change(s) to switch back to "
                              f"{self.healthy}", changes=planned, details=details)

        if "scale-up" in steps:
            await run.apply(steps["scale-up"])
        await run.wait_until(f"the Deployment {self.namespace}/{self.healthy} to be fully available",
                             self._healthy_available)
        if "switch" in steps:
            await run.apply(steps["switch"])
        healthy_sets = await run.call(lambda: self._replicaset_names(self.healthy))
        bad_sets = await run.call(lambda: self._replicaset_names(self.bad))
        await run.wait_until(
            f"the Service {self.namespace}/{self.service} to serve from {self.healthy}'s pods only "
            f"(its EndpointSlices listing ready endpoints of {_sets(healthy_sets)} and none of "
            f"{_sets(bad_sets)})",
            lambda: self._serving(healthy_sets, bad_sets),
        )
        if "scale-down" in steps:
            await run.apply(steps["scale-down"])
        if not run.changes:
            return run.result(ActionOutcome.ALREADY_DONE, f"the Service already serves from {self.healthy} "
                              f"and {self.bad} is scaled down", details=details)
        return run.result(
            ActionOutcome.DONE,
            f"the Service {self.namespace}/{self.service} serves from {self.healthy} "
            f"({objects.selector_string(wanted)}); {self.bad} is scaled to 0",
            details=details,
        )

    async def _healthy_available(self) -> bool:
        return objects.rollout_complete(await self._get_healthy())

    async def _replicaset_names(self, deployment: str) -> list[str]:
        """Names of the ReplicaSets of a Deployment (the prefixes of its pods' names); none when
        it does not exist."""
        found = await self._deployment_or_none(deployment)
        if found is None:
            return []
        owned = await objects.owned_replicasets(self.kube, deployment=found)
        return [str(rs["metadata"]["name"]) for rs in owned]

    async def _serving(self, healthy_sets: Sequence[str], bad_sets: Sequence[str]) -> bool:
        """Ready endpoints of the healthy colour's pods, none of the bad colour's. Endpoints without
        a pod reference cannot be told apart: when no endpoint has one, any ready one will do."""
        slices = await objects.list_endpointslices(self.kube, namespace=self.namespace, service=self.service)
        healthy_ready = bad_ready = anonymous_ready = 0
        attributed = False
        for item in slices:
            for endpoint in item.get("endpoints") or []:
                if (endpoint.get("conditions") or {}).get("ready") is False:
                    continue
                pod = (endpoint.get("targetRef") or {}).get("name")
                attributed = attributed or isinstance(pod, str)
                if not isinstance(pod, str):
                    anonymous_ready += 1
                elif any(pod.startswith(f"{rs}-") for rs in healthy_sets):
                    healthy_ready += 1
                elif any(pod.startswith(f"{rs}-") for rs in bad_sets):
                    bad_ready += 1
        if bad_ready:
            return False
        return healthy_ready > 0 or (not attributed and anonymous_ready > 0)
