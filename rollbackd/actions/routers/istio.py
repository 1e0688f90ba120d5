"""Istio: a VirtualService (``networking.istio.io/v1``) whose ``http`` routes send weighted
shares to the canary and the stable destinations, told apart by host (two Services) or by subset
(one host, two subsets of its DestinationRule).

A destination's ``host`` matches the configured one written short (``web``) or qualified in the
route's namespace (``web.shop``, ``web.shop.svc``, ``web.shop.svc.cluster.local``); its
``subset`` must be the configured one (none when none is configured). As Istio says, a route with
a single destination sends it everything, whatever its ``weight``; otherwise a destination without
``weight`` gets nothing.

The split: in each ``http`` route naming either destination, the canary's weight over the weights
of all the route's destinations.

The abort is one conditional write (a JSON merge patch carrying the ``resourceVersion`` it was
planned from: a VirtualService changed in between is re-read and re-planned): in every ``http``
route that names both destinations the canary's weight goes to 0 and what it weighed is added to
the stable destination's. Refused before anything changes: a VirtualService another controller
steers (a controlling owner such as a Flagger Canary, Argo Rollouts' annotation), an ``http``
route that sends traffic to the canary without naming the stable destination, a VirtualService
that names the canary or the stable destination nowhere. Istio validates a VirtualService when it
is written (a refused write is an API error); there is no per-route acceptance to wait for.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollbackd.actions.base import Change
from rollbackd.actions.routers.base import RouteObject, Split, Weights, give_to_stable, split_of
from rollbackd.actions.steps import ActionRun, Refusal, Step
from rollbackd.kube import KubeClient, Obj, objects

KIND = "istio"


@dataclass(frozen=True, slots=True)
class Destination:
    """A destination as the configuration names it: a ``host`` and, optionally, a ``subset``."""

    host: str
    subset: str | None = None

    def describe(self) -> str:
        return self.host + (f" subset {self.subset}" if self.subset else "")

    def matches(self, destination: Mapping[str, Any], namespace: str) -> bool:
        host = destination.get("host")
        forms = {self.host}
        if "." not in self.host:
            forms |= {
                f"{self.host}.{namespace}",
                f"{self.host}.{namespace}.svc",
                f"{self.host}.{namespace}.svc.cluster.local",
            }
        return host in forms and destination.get("subset") == self.subset


def weights_of(route: Sequence[Mapping[str, Any]]) -> list[int]:
    """The effective weight of each destination of one ``http`` route's ``route`` list."""
    if len(route) == 1:
        return [100]
    weights = []
    for item in route:
        value = item.get("weight", 0)
        weights.append(value if isinstance(value, int) and value > 0 else 0)
    return weights


def http_weights(
    http: Mapping[str, Any], *, canary: Destination, stable: Destination, namespace: str
) -> Weights:
    route = [item for item in http.get("route") or [] if isinstance(item, Mapping)]
    weights = weights_of(route)
    canary_refs = tuple(
        i for i, item in enumerate(route) if canary.matches(item.get("destination") or {}, namespace)
    )
    stable_refs = tuple(
        i for i, item in enumerate(route) if stable.matches(item.get("destination") or {}, namespace)
    )
    return Weights(
        canary_refs=canary_refs,
        stable_refs=stable_refs,
        canary=sum(weights[i] for i in canary_refs),
        total=sum(weights),
    )


def virtual_service_split(
    vs: Mapping[str, Any], *, source: str, canary: Destination, stable: Destination, namespace: str
) -> Split:
    https = (vs.get("spec") or {}).get("http") or []
    return split_of((http_weights(http, canary=canary, stable=stable, namespace=namespace) for http in https),
                    source)


def aborted_http(
    vs: Mapping[str, Any], *, object_name: str, canary: Destination, stable: Destination, namespace: str
) -> tuple[list[Any], tuple[Change, ...]]:
    """The VirtualService's ``http`` routes with every request of the canary given to the stable
    destination, and the weights changed; :class:`~rollbackd.actions.steps.Refusal` when that
    cannot be done safely. No changes: aborted already."""
    https = copy.deepcopy(list((vs.get("spec") or {}).get("http") or []))
    changes: list[Change] = []
    names_canary = names_stable = False
    for index, http in enumerate(https):
        weights = http_weights(http, canary=canary, stable=stable, namespace=namespace)
        names_canary = names_canary or bool(weights.canary_refs)
        names_stable = names_stable or bool(weights.stable_refs)
        if weights.canary == 0:
            continue
        if not weights.stable_refs:
            raise Refusal(
                f"http route {index} of {object_name} sends {weights.canary} of {weights.total} weight "
                f"to the canary ({canary.describe()}) but does not name the stable destination "
                f"({stable.describe()}), so its requests would have nowhere to go; add the stable "
                "destination to that route (weight 0), or point the target's router at the right "
                "VirtualService"
            )
        route = http["route"]
        changes += give_to_stable(route, weights_of(route), weights, object_name=object_name,
                                  path=f"spec.http[{index}].route")
    for named, destination, role in ((names_canary, canary, "canary"), (names_stable, stable, "stable")):
        if not named:
            raise Refusal(
                f"{object_name} names the {role} destination ({destination.describe()}) in none of its http "
                f"routes; check the target's router.{role} (host and subset), or the VirtualService's name"
            )
    return https, tuple(changes)


class IstioRouter(RouteObject):
    """The VirtualService ``virtual_service`` in ``namespace``, whose ``http`` routes split requests
    between the destinations ``canary`` and ``stable``."""

    kind = KIND
    spec_key = "http"

    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        virtual_service: str,
        canary: Destination,
        stable: Destination,
    ) -> None:
        if canary == stable:
            raise ValueError("the canary and the stable destinations must differ")
        super().__init__(kube=kube, namespace=namespace, name=virtual_service,
                         resource=objects.VIRTUALSERVICES, object_kind="VirtualService")
        self.virtual_service = virtual_service
        self.canary = canary
        self.stable = stable

    async def read_split(self) -> Split:
        return virtual_service_split(
            await self._get(),
            source=self.source,
            canary=self.canary,
            stable=self.stable,
            namespace=self.namespace,
        )

    def _aborted(self, route: Obj) -> tuple[list[Any], tuple[Change, ...]]:
        return aborted_http(
            route, object_name=self._object, canary=self.canary, stable=self.stable, namespace=self.namespace
        )

    async def plan(self, run: ActionRun) -> Sequence[Step]:
        return self._steps(await self._read_for_plan(run, installed="Istio"))

    async def confirm(self, run: ActionRun) -> None:
        return None  # Istio validates a VirtualService when it is written
