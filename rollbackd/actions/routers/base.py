"""What every traffic router does: read the current split, and plan the abort of the canary.

A router is bound to one target's route object (an ingress-nginx canary Ingress, a Gateway API
HTTPRoute or GRPCRoute, an Istio VirtualService) and knows which backend is the canary and which
the stable version. It can

- :meth:`Router.read_split`: the canary's share of the requests as the route says now (a
  :class:`Split`, for the status page, the events' details and the demo's load generator);
- :meth:`Router.plan`: the steps (:class:`~rollbackd.actions.steps.Step`) that send every request
  to the stable backend, read from the route as it is now; none when that is already so. Each
  step re-reads the route and re-decides when applied, so a second run or a conflict never
  changes a field twice; every field it changes is a :class:`~rollbackd.actions.base.Change`.
  A route that cannot be aborted safely (another controller steers it, a rule sends traffic to
  the canary but not to the stable backend, the stable Service is missing) is refused with a
  :class:`~rollbackd.actions.steps.Refusal` before anything changes;
- :meth:`Router.confirm`: after the steps, whether the route as written took effect (a Gateway
  accepted it and resolved its backends); :class:`~rollbackd.actions.steps.ActionFailed` with
  the reason when it did not.

The canary abort (:mod:`rollbackd.actions.canary_abort`) runs a router's steps, then scales the
canary to zero and waits for the stable version to be available, whatever the router.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rollbackd.actions.base import Change
from rollbackd.actions.steps import ActionRun, Refusal, Step, object_name
from rollbackd.kube import KubeClient, Obj, objects
from rollbackd.kube.objects import CustomResource


@dataclass(frozen=True, slots=True)
class Split:
    """How a route splits the requests between the stable and the canary backends now.

    - ``source``: the route object, e.g. ``HTTPRoute shop/web``;
    - ``canary_percent``: the largest share of requests, in percent (0..100), that any rule of
      the route sends to the canary (0 once aborted);
    - ``rules``: the canary's percentage in each rule that routes to the canary or the stable
      backend, in the route's order (one value for an ingress-nginx canary Ingress).
    """

    source: str
    canary_percent: float
    rules: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not 0.0 <= self.canary_percent <= 100.0:
            raise ValueError(f"canary_percent must be within 0..100, not {self.canary_percent}")

    @property
    def stable_percent(self) -> float:
        """The rest of the requests (of the rule sending the canary the most)."""
        return 100.0 - self.canary_percent

    def as_dict(self) -> dict[str, Any]:
        """For events' details and JSON answers."""
        return {
            "source": self.source,
            "canary_percent": round(self.canary_percent, 3),
            "rules": [round(rule, 3) for rule in self.rules],
        }


def percent(canary: float, stable: float) -> float:
    """The canary's share, in percent, of a rule giving ``canary`` and ``stable`` weights (0 when
    both are 0: such a rule sends neither anything)."""
    total = canary + stable
    return 0.0 if total <= 0 else min(100.0, max(0.0, 100.0 * canary / total))


class Router(Protocol):
    """One target's route (see the module docstring)."""

    #: ``ingress-nginx``, ``gateway-api`` or ``istio``.
    kind: str

    @property
    def source(self) -> str:
        """The route object, for messages: ``HTTPRoute shop/web``."""
        ...

    async def read_split(self) -> Split:
        """The split as the route says now. Raises :class:`~rollbackd.kube.KubeError` when the
        route cannot be read (:class:`~rollbackd.kube.KubeNotFound` when it does not exist)."""
        ...

    async def plan(self, run: ActionRun) -> Sequence[Step]:
        """The steps that send every request to the stable backend (none when that is so already),
        read through ``run``; :class:`~rollbackd.actions.steps.Refusal` when that cannot be done
        safely (nothing is changed)."""
        ...

    async def confirm(self, run: ActionRun) -> None:
        """After the steps: wait (through ``run``) until the route as written is in effect;
        :class:`~rollbackd.actions.steps.ActionFailed` when it is refused."""
        ...


@dataclass(frozen=True, slots=True)
class Weights:
    """The weights one rule of a route gives (a Gateway API rule's ``backendRefs``, an Istio
    ``http`` route's ``route``): the positions of the canary's entries and of the stable's, the
    canary's weight and the weight of all the rule's entries."""

    canary_refs: tuple[int, ...]
    stable_refs: tuple[int, ...]
    canary: int
    total: int


def split_of(rules: Iterable[Weights], source: str) -> Split:
    """The split of a route whose rules weigh ``rules``: the canary's share in each rule naming
    either side, and the largest of them."""
    shares = [percent(w.canary, w.total - w.canary) for w in rules if w.canary_refs or w.stable_refs]
    return Split(source=source, canary_percent=max(shares, default=0.0), rules=tuple(shares))


def give_to_stable(
    entries: list[Any], effective: Sequence[int], weights: Weights, *, object_name: str, path: str
) -> list[Change]:
    """Set the canary's ``entries`` (one rule's) to weight 0 and add what they weighed to the
    first stable entry; ``effective`` is each entry's weight now, ``path`` the entries' field
    (``spec.rules[0].backendRefs``). The weights changed."""
    changes: list[Change] = []
    for position in weights.canary_refs:
        if effective[position]:
            entries[position]["weight"] = 0
            changes.append(Change(object_name, f"{path}[{position}].weight", effective[position], 0))
    first = weights.stable_refs[0]
    entries[first]["weight"] = effective[first] + weights.canary
    changes.append(
        Change(object_name, f"{path}[{first}].weight", effective[first], effective[first] + weights.canary)
    )
    return changes


def refuse_if_steered(route: Mapping[str, Any], source: str) -> None:
    """:class:`~rollbackd.actions.steps.Refusal` when another controller steers ``route`` (a
    controlling owner such as a Flagger Canary, or Argo Rollouts): it would put its weights back,
    and two controllers fighting over one route is worse than either alone."""
    owner = objects.controller_of(route)
    if owner is not None:
        raise Refusal(
            f"{source} is steered by {owner}: rollbackd leaves it alone rather than fight over the weights; "
            f"abort the canary there (or let that controller ask rollbackd's verdict)"
        )


class RouteObject:
    """What the routers of a custom route object (a Gateway API route, an Istio VirtualService)
    share: reading the object, and the one step that writes its rewritten weights.

    A subclass names the list of ``spec`` it rewrites (``spec_key``: ``rules``, ``http``) and
    implements :meth:`_aborted` (that list with every request sent to the stable backend, and the
    fields changed). The write is a merge patch of that list carrying the ``resourceVersion`` the
    step read: a write landing in between makes it a 409, and the step re-reads and re-decides.
    """

    spec_key: str

    def __init__(self, *, kube: KubeClient, namespace: str, name: str, resource: CustomResource,
                 object_kind: str) -> None:
        self.kube = kube
        self.namespace = namespace
        self.resource = resource
        self._name = name
        self._object = object_name(object_kind, namespace, name)
        self.source = f"{object_kind} {namespace}/{name}"

    async def _get(self) -> Obj:
        return await objects.get_custom(self.kube, self.resource, namespace=self.namespace, name=self._name)

    def _aborted(self, route: Obj) -> tuple[list[Any], tuple[Change, ...]]:
        """``spec[spec_key]`` as it must be for no request to reach the canary, and the changes."""
        raise NotImplementedError

    async def _abort(self) -> Sequence[Change]:
        route = await self._get()
        refuse_if_steered(route, self.source)
        rewritten, changes = self._aborted(route)
        if not changes:
            return ()
        version = objects.metadata_of(route).get("resourceVersion")
        await objects.patch_custom(
            self.kube,
            self.resource,
            namespace=self.namespace,
            name=self._name,
            patch={"metadata": {"resourceVersion": version}, "spec": {self.spec_key: rewritten}},
        )
        return changes

    async def _read_for_plan(self, run: ActionRun, *, installed: str) -> Obj:
        """The route, required (``installed``: what must be installed for it to exist), and not
        steered by another controller."""
        what = f"the {self.source} (is {installed} installed, and the name right?)"
        route = await run.required(what, self._get)
        refuse_if_steered(route, self.source)
        return route

    def _steps(self, route: Obj) -> list[Step]:
        _, changes = self._aborted(route)
        return [Step(changes=changes, apply=self._abort)] if changes else []
