"""Gateway API: an HTTPRoute or a GRPCRoute (``gateway.networking.k8s.io/v1``) whose rules name
the canary and the stable Services as weighted ``backendRefs``.

The split: in each rule naming either Service, the canary's weight over the weights of all the
rule's backends (a ``backendRef`` without ``weight`` weighs 1, as the Gateway API says).

The abort is one conditional write of the route (a JSON merge patch carrying the
``resourceVersion`` it was planned from: a route changed in between is re-read and re-planned):
in every rule that names both Services the canary's weight goes to 0 and what it weighed is added
to the stable backend's, so that the rule's other backends keep their share. Every weight changed
is a :class:`~rollbackd.actions.base.Change` (``spec.rules[0].backendRefs[1].weight``).

Refused before anything changes: a route another controller steers (a controlling owner, Argo
Rollouts' annotation), a rule that sends traffic to the canary without naming the stable Service
(its traffic would have nowhere to go), a route that names the canary or the stable Service
nowhere (the configuration points at the wrong route), a stable Service that does not exist.

Confirmed after the write: each parent (Gateway) the route names must report, for the route's new
generation, ``Accepted`` and ``ResolvedRefs`` true; a parent that refuses the route fails the
action with its reason (and the canary keeps running: the Gateway may still send it traffic
under the route it had accepted before). ``ResolvedRefs`` false because a backend is not found is
accepted when the canary Service is the one missing: its weight is 0 now.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollbackd.actions.base import Change
from rollbackd.actions.routers.base import RouteObject, Split, Weights, give_to_stable, split_of
from rollbackd.actions.steps import ActionFailed, ActionRun, Refusal, Step
from rollbackd.kube import KubeClient, Obj, objects
from rollbackd.kube.objects import CustomResource

KIND = "gateway-api"
#: The route kinds this router handles.
ROUTES: Mapping[str, CustomResource] = {"HTTPRoute": objects.HTTPROUTES, "GRPCRoute": objects.GRPCROUTES}
#: A ``backendRef`` without ``weight`` weighs this much.
DEFAULT_WEIGHT = 1
#: The reason of a ``ResolvedRefs`` condition that is false because a backend does not exist.
BACKEND_NOT_FOUND = "BackendNotFound"


# --- pure: reading and rewriting the rules -------------------------------------------------------


def names_service(ref: Mapping[str, Any], service: str, namespace: str) -> bool:
    """Whether a ``backendRef`` points at the Service ``service`` in ``namespace`` (the route's)."""
    return (
        ref.get("name") == service
        and ref.get("kind", "Service") == "Service"
        and ref.get("group", "") in ("", None)
        and ref.get("namespace", namespace) == namespace
    )


def weight_of(ref: Mapping[str, Any]) -> int:
    value = ref.get("weight", DEFAULT_WEIGHT)
    return value if isinstance(value, int) and value > 0 else 0


def rule_weights(rule: Mapping[str, Any], *, canary: str, stable: str, namespace: str) -> Weights:
    refs = [ref for ref in rule.get("backendRefs") or [] if isinstance(ref, Mapping)]
    canary_refs = tuple(i for i, ref in enumerate(refs) if names_service(ref, canary, namespace))
    stable_refs = tuple(i for i, ref in enumerate(refs) if names_service(ref, stable, namespace))
    return Weights(
        canary_refs=canary_refs,
        stable_refs=stable_refs,
        canary=sum(weight_of(refs[i]) for i in canary_refs),
        total=sum(weight_of(ref) for ref in refs),
    )


def route_split(route: Mapping[str, Any], *, source: str, canary: str, stable: str, namespace: str) -> Split:
    """The split of ``route`` (see the module docstring)."""
    rules = (route.get("spec") or {}).get("rules") or []
    return split_of((rule_weights(rule, canary=canary, stable=stable, namespace=namespace) for rule in rules),
                    source)


def aborted_rules(
    route: Mapping[str, Any], *, object_name: str, canary: str, stable: str, namespace: str
) -> tuple[list[Any], tuple[Change, ...]]:
    """The route's rules with every request of the canary given to the stable backend, and the
    weights changed; :class:`~rollbackd.actions.steps.Refusal` for a route that cannot be aborted
    safely (see the module docstring). No changes: the route is aborted already."""
    rules = copy.deepcopy(list((route.get("spec") or {}).get("rules") or []))
    changes: list[Change] = []
    names_canary = names_stable = False
    for index, rule in enumerate(rules):
        weights = rule_weights(rule, canary=canary, stable=stable, namespace=namespace)
        names_canary = names_canary or bool(weights.canary_refs)
        names_stable = names_stable or bool(weights.stable_refs)
        if weights.canary == 0:
            continue
        if not weights.stable_refs:
            raise Refusal(
                f"rule {index} of {object_name} sends {weights.canary} of {weights.total} weight to the "
                f"canary Service {canary} but does not name the stable Service {stable}, so its requests "
                f"would have nowhere to go; add {stable} to that rule's backendRefs (weight 0), or point "
                f"the target's router at the right route"
            )
        refs = rule["backendRefs"]
        effective = [weight_of(ref) if isinstance(ref, Mapping) else 0 for ref in refs]
        changes += give_to_stable(refs, effective, weights, object_name=object_name,
                                  path=f"spec.rules[{index}].backendRefs")
    for named, service, role, key in (
        (names_canary, canary, "canary", "canary_service"),
        (names_stable, stable, "stable", "stable_service"),
    ):
        if not named:
            raise Refusal(
                f"{object_name} names the {role} Service {service} in none of its rules' backendRefs; "
                f"check the target's router.{key} (or the route's name)"
            )
    return rules, tuple(changes)


def _parent_key(ref: Mapping[str, Any], namespace: str) -> tuple[str, str, str]:
    return (str(ref.get("name")), str(ref.get("namespace", namespace)), str(ref.get("sectionName", "")))


@dataclass(frozen=True, slots=True)
class RouteStatus:
    """What the route's parents say of a generation: ``accepted`` by all, ``refused`` (with the
    reasons), or neither yet (some parent has not reported on that generation)."""

    accepted: bool
    refused: tuple[str, ...] = ()


def route_status(
    route: Mapping[str, Any], *, generation: int, namespace: str, tolerate_backend_not_found: bool = False
) -> RouteStatus:
    """The verdict of the route's parents on ``generation`` (see :class:`RouteStatus`). With
    ``tolerate_backend_not_found``, ``ResolvedRefs`` false for a missing backend does not count."""
    wanted = [ref for ref in (route.get("spec") or {}).get("parentRefs") or [] if isinstance(ref, Mapping)]
    reports: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for parent in (route.get("status") or {}).get("parents") or []:
        if isinstance(parent, Mapping) and isinstance(parent.get("parentRef"), Mapping):
            reported = [c for c in parent.get("conditions") or [] if isinstance(c, Mapping)]
            reports.setdefault(_parent_key(parent["parentRef"], namespace), []).extend(reported)
    refused: list[str] = []
    pending = False
    for ref in wanted:
        key = _parent_key(ref, namespace)
        conditions = {
            c.get("type"): c
            for c in reports.get(key, [])
            if int(c.get("observedGeneration") or 0) >= generation
        }
        parent = f"Gateway {key[1]}/{key[0]}" + (f" (listener {key[2]})" if key[2] else "")
        for kind in ("Accepted", "ResolvedRefs"):
            condition = conditions.get(kind)
            if condition is None:
                pending = True
            elif condition.get("status") != "True":
                if (
                    kind == "ResolvedRefs"
                    and tolerate_backend_not_found
                    and condition.get("reason") == BACKEND_NOT_FOUND
                ):
                    continue
                refused.append(
                    f"{parent}: {kind} is {condition.get('status')} ({condition.get('reason')}: "
                    f"{condition.get('message')})"
                )
    if refused:
        return RouteStatus(accepted=False, refused=tuple(refused))
    return RouteStatus(accepted=not pending)


# --- the router ----------------------------------------------------------------------------------


class GatewayApiRouter(RouteObject):
    """The route ``route`` (of kind ``route_kind``: ``HTTPRoute`` or ``GRPCRoute``) in ``namespace``,
    whose rules split requests between the Services ``canary_service`` and ``stable_service``."""

    kind = KIND
    spec_key = "rules"

    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        route: str,
        route_kind: str = "HTTPRoute",
        canary_service: str,
        stable_service: str,
    ) -> None:
        if route_kind not in ROUTES:
            raise ValueError(f"route_kind must be one of {', '.join(ROUTES)}, not {route_kind!r}")
        super().__init__(kube=kube, namespace=namespace, name=route, resource=ROUTES[route_kind],
                         object_kind=route_kind)
        self.route = route
        self.route_kind = route_kind
        self.canary_service = canary_service
        self.stable_service = stable_service

    async def read_split(self) -> Split:
        return route_split(
            await self._get(),
            source=self.source,
            canary=self.canary_service,
            stable=self.stable_service,
            namespace=self.namespace,
        )

    def _aborted(self, route: Obj) -> tuple[list[Any], tuple[Change, ...]]:
        return aborted_rules(
            route,
            object_name=self._object,
            canary=self.canary_service,
            stable=self.stable_service,
            namespace=self.namespace,
        )

    async def plan(self, run: ActionRun) -> Sequence[Step]:
        route = await self._read_for_plan(run, installed="the Gateway API")
        await run.required(
            f"the stable Service {self.namespace}/{self.stable_service}, where the {self.source} should send "
            f"every request,",
            lambda: objects.get_service(self.kube, namespace=self.namespace, name=self.stable_service),
        )
        return self._steps(route)

    async def confirm(self, run: ActionRun) -> None:
        route = await run.call(self._get)
        if not (route.get("spec") or {}).get("parentRefs"):
            return  # attached to nothing: no one to accept it
        generation = int(objects.metadata_of(route).get("generation") or 1)
        canary_missing = (
            await run.optional(
                lambda: objects.get_service(self.kube, namespace=self.namespace, name=self.canary_service)
            )
            is None
        )

        async def accepted() -> bool:
            status = route_status(
                await self._get(),
                generation=generation,
                namespace=self.namespace,
                tolerate_backend_not_found=canary_missing,
            )
            if status.refused:
                raise ActionFailed(
                    f"the {self.source} was written (generation {generation}) but is refused: "
                    + "; ".join(status.refused)
                    + "; the canary is left running, since the Gateway may still route to it as before"
                )
            return status.accepted

        await run.wait_until(f"the Gateways of the {self.source} to accept generation {generation}", accepted)
