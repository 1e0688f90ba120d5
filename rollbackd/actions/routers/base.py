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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rollbackd.actions.steps import ActionRun, Refusal, Step
from rollbackd.kube import objects


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
