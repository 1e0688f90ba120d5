"""A load generator that routes its requests the way the (emulated) cluster says.

:class:`LoadGenerator` sends ``rps`` ``GET /work`` requests per second, evenly spaced, to the
sample apps standing in for the pods of each version (its *backends*). Every
``routing_interval_s`` it reads the routing from the Kubernetes API through the real client, as an
ingress controller or kube-proxy would, and splits the next requests accordingly:

- :class:`RouterRouting`: a canary's traffic router, read as rollbackd reads it -- an ingress-nginx
  canary Ingress (``canary-weight`` out of ``canary-weight-total``), a Gateway API route or an
  Istio VirtualService (the canary's weight over the rule's): that share goes to the canary, the
  rest to the stable version;
- :class:`ServiceSelectorRouting`: a Service's ``spec.selector`` -- every Deployment whose pod
  template labels it picks (a blue-green colour) shares the traffic;
- :class:`PodTemplateRouting`: a Deployment's current pod template -- the image of its first
  container says which version serves.

The split is deterministic (smooth weighted round robin: at 20% the canary gets exactly every fifth
request). Every request is counted per second and per backend, with its outcome; every change of
routing is kept with the loop time it was read at, and reported to ``on_change``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, Self

import aiohttp

from rollbackd.actions.routers.select import route_source, router_for
from rollbackd.aiotasks import stop_tasks
from rollbackd.config.settings import RouterSettings
from rollbackd.kube import KubeClient, KubeError, KubeNotFound, objects
from rollbackd.sources.session import OwnsSession

logger = logging.getLogger(__name__)

#: Where requests are counted when the routing sends them nowhere (no backend selected).
UNROUTED = "(unrouted)"

#: backend name -> fraction of the requests it gets (the fractions sum to 1, or the map is empty).
Shares = dict[str, float]


class Routing(Protocol):
    """Reads where traffic goes now."""

    @property
    def source(self) -> str:
        """The object the routing is read from, e.g. ``Ingress shop/web-canary``."""
        ...

    async def read(self, kube: KubeClient) -> Shares:
        """The backends' shares as the cluster shows them now (empty: traffic goes nowhere)."""
        ...


def _normalised(weights: Mapping[str, float]) -> Shares:
    total = sum(weight for weight in weights.values() if weight > 0)
    if total <= 0:
        return {}
    return {name: weight / total for name, weight in weights.items() if weight > 0}


@dataclass(frozen=True, slots=True)
class RouterRouting:
    """A canary's traffic router (``router``: an ingress-nginx canary Ingress, a Gateway API route,
    an Istio VirtualService), read the way rollbackd reads it
    (:meth:`~rollbackd.actions.routers.base.Router.read_split`): the canary's share (the largest
    any rule of the route gives it) goes to ``canary``, the rest to ``stable``. A route that does
    not exist sends the canary nothing."""

    namespace: str
    router: RouterSettings
    stable: str
    canary: str

    @property
    def source(self) -> str:
        return route_source(self.router, namespace=self.namespace)

    async def read(self, kube: KubeClient) -> Shares:
        try:
            split = await router_for(self.router, kube=kube, namespace=self.namespace).read_split()
        except KubeNotFound:
            return {self.stable: 1.0}
        canary = split.canary_percent / 100.0
        return _normalised({self.stable: 1.0 - canary, self.canary: canary})


@dataclass(frozen=True, slots=True)
class ServiceSelectorRouting:
    """A Service's selector: the Deployments (``deployment name -> backend``) whose pod template
    labels it picks share the traffic equally."""

    namespace: str
    service: str
    backends: Mapping[str, str]

    @property
    def source(self) -> str:
        return f"Service {self.namespace}/{self.service}"

    async def read(self, kube: KubeClient) -> Shares:
        service = await objects.get_service(kube, namespace=self.namespace, name=self.service)
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector:
            return {}
        picked: dict[str, float] = {}
        for deployment_name, backend in self.backends.items():
            try:
                deployment = await objects.get_deployment(kube, namespace=self.namespace,
                                                          name=deployment_name)
            except KubeNotFound:
                continue
            template = (deployment.get("spec") or {}).get("template") or {}
            labels = (template.get("metadata") or {}).get("labels") or {}
            if all(labels.get(key) == value for key, value in selector.items()):
                picked[backend] = 1.0
        return _normalised(picked)


@dataclass(frozen=True, slots=True)
class PodTemplateRouting:
    """A Deployment's current pod template: the image of its first container
    (``image -> backend``) says which version serves."""

    namespace: str
    deployment: str
    backends: Mapping[str, str]

    @property
    def source(self) -> str:
        return f"Deployment {self.namespace}/{self.deployment}"

    async def read(self, kube: KubeClient) -> Shares:
        deployment = await objects.get_deployment(kube, namespace=self.namespace, name=self.deployment)
        containers = ((((deployment.get("spec") or {}).get("template") or {}).get("spec") or {})
                      .get("containers") or [])
        image = containers[0].get("image") if containers else None
        backend = self.backends.get(image) if isinstance(image, str) else None
        return {backend: 1.0} if backend is not None else {}


@dataclass(frozen=True, slots=True)
class RoutingChange:
    """The routing as read at loop time ``t``, different from the one before."""

    t: float
    shares: Mapping[str, float]

    def describe(self) -> str:
        if not self.shares:
            return "no backend selected"
        return ", ".join(f"{name} {share:.0%}" for name, share in sorted(self.shares.items()))


@dataclass(slots=True)
class Tally:
    """Requests sent to one backend, by outcome (``failed``: 5xx, or no answer)."""

    sent: int = 0
    ok: int = 0
    failed: int = 0

    def add(self, other: Tally) -> None:
        self.sent += other.sent
        self.ok += other.ok
        self.failed += other.failed


@dataclass(slots=True)
class _Second:
    by_backend: dict[str, Tally] = field(default_factory=dict)


class LoadGenerator(OwnsSession):
    """Sends traffic to the backends as the cluster's routing says, and counts it.

    Keyword arguments:

    - ``kube``: an open client of the (emulated) Kubernetes API;
    - ``routing``: how to read the routing (see the module docstring);
    - ``backends``: backend name -> base URL of its sample app;
    - ``rps``: requests per second, in all;
    - ``routing_interval_s``: how often the routing is read;
    - ``timeout_s``: limit for one request (a request without an answer counts as failed);
    - ``max_in_flight``: most requests in flight; beyond it requests are skipped (and counted);
    - ``on_change``: called with every :class:`RoutingChange`, the first reading included.

    Use as ``async with LoadGenerator(...) as load:``: entering reads the routing once and starts
    the traffic; leaving stops it and waits for the requests in flight.
    """

    def __init__(
        self,
        *,
        kube: KubeClient,
        routing: Routing,
        backends: Mapping[str, str],
        rps: float,
        routing_interval_s: float = 1.0,
        timeout_s: float = 5.0,
        max_in_flight: int = 1000,
        on_change: Callable[[RoutingChange], None] | None = None,
    ) -> None:
        if not rps > 0:
            raise ValueError(f"rps must be positive, not {rps!r}")
        if not routing_interval_s > 0:
            raise ValueError(f"routing_interval_s must be positive, not {routing_interval_s!r}")
        self.kube = kube
        self.routing = routing
        self.backends = dict(backends)
        self.rps = rps
        self.routing_interval_s = routing_interval_s
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self._on_change = on_change
        #: The routing in force now.
        self.shares: Shares = {}
        #: Every change of routing, the first reading included.
        self.changes: list[RoutingChange] = []
        #: Requests not sent because too many were in flight.
        self.skipped = 0
        #: Failed readings of the routing (the previous routing stays in force).
        self.routing_errors = 0
        self._started_at: float | None = None
        self._seconds: dict[int, _Second] = {}
        self._last_sent: dict[str, float] = {}
        self._credits: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()

    # --- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._started_at = loop.time()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.max_in_flight),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
        )
        try:
            await self.refresh_routing()
        except BaseException:
            await self._session.close()
            raise
        self._tasks = [
            loop.create_task(self._follow_routing(), name="rollbackd:demo:routing"),
            loop.create_task(self._send_forever(), name="rollbackd:demo:traffic"),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        tasks, self._tasks = self._tasks, []
        await stop_tasks([*tasks, *self._in_flight], failures="drop")
        await super().__aexit__(*exc_info)

    # --- counts ------------------------------------------------------------------------------

    def _second_of(self, t: float) -> int:
        assert self._started_at is not None
        return math.floor(t - self._started_at)

    def totals(self, *, since: float | None = None, until: float | None = None) -> dict[str, Tally]:
        """Requests per backend sent in ``[since, until)`` (loop times, rounded down to the whole
        second of traffic they fall in; ``None``: from the start / up to now)."""
        first = self._second_of(since) if since is not None else None
        last = self._second_of(until) if until is not None else None
        result: dict[str, Tally] = {}
        for second, tallies in self._seconds.items():
            if (first is not None and second < first) or (last is not None and second >= last):
                continue
            for backend, tally in tallies.by_backend.items():
                result.setdefault(backend, Tally()).add(tally)
        return result

    def first_clean_second(self, backend: str, *, since: float, max_failed_share: float) -> float | None:
        """Loop time at which the first whole second of traffic from ``since`` on begins in which
        ``backend`` got requests and failed at most ``max_failed_share`` of them; ``None``: none yet
        (a second counts once it is over and all its requests are answered)."""
        assert self._started_at is not None
        now = self._second_of(asyncio.get_running_loop().time())
        for second in sorted(self._seconds):
            tally = self._seconds[second].by_backend.get(backend)
            if second < self._second_of(since) or tally is None or tally.sent == 0:
                continue
            if second >= now or tally.ok + tally.failed < tally.sent:
                return None
            if tally.failed <= max_failed_share * tally.sent:
                return self._started_at + second
        return None

    def last_sent(self, backend: str) -> float | None:
        """Loop time of the latest request sent to ``backend``."""
        return self._last_sent.get(backend)

    # --- routing -----------------------------------------------------------------------------

    async def refresh_routing(self) -> None:
        """Read the routing now; a reading that differs from the one in force takes over."""
        try:
            shares = await self.routing.read(self.kube)
        except KubeError as exc:
            self.routing_errors += 1
            logger.warning("cannot read the routing from %s: %s", self.routing.source, exc)
            return
        unknown = set(shares) - set(self.backends)
        if unknown:
            logger.warning("routing names unknown backends %s; sending them nothing", sorted(unknown))
            shares = _normalised({name: share for name, share in shares.items() if name in self.backends})
        if self.changes and _same(shares, self.shares):
            return
        self.shares = shares
        self._credits = {}
        change = RoutingChange(t=asyncio.get_running_loop().time(), shares=dict(shares))
        self.changes.append(change)
        logger.info("routing from %s: %s", self.routing.source, change.describe())
        if self._on_change is not None:
            self._on_change(change)

    async def _follow_routing(self) -> None:
        while True:
            await asyncio.sleep(self.routing_interval_s)
            try:
                await self.refresh_routing()
            except Exception:  # a defect must not freeze the routing for the rest of the run
                self.routing_errors += 1
                logger.exception("reading the routing from %s failed", self.routing.source)

    def _pick(self) -> str:
        """Smooth weighted round robin over the shares in force."""
        if not self.shares:
            return UNROUTED
        for name, share in self.shares.items():
            self._credits[name] = self._credits.get(name, 0.0) + share
        chosen = max(self.shares, key=lambda name: (self._credits[name], name))
        self._credits[chosen] -= 1.0
        return chosen

    # --- traffic -----------------------------------------------------------------------------

    async def _send_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        step = 1.0 / self.rps
        while True:
            now = loop.time()
            if next_at > now:
                await asyncio.sleep(next_at - now)
                now = loop.time()
            if now - next_at > 1.0:
                next_at = now  # after a stall, do not burst to catch up
            while next_at <= now:
                self._spawn(now)
                next_at += step

    def _spawn(self, now: float) -> None:
        if len(self._in_flight) >= self.max_in_flight:
            self.skipped += 1
            return
        backend = self._pick()
        second = self._seconds.setdefault(self._second_of(now), _Second())
        tally = second.by_backend.setdefault(backend, Tally())
        tally.sent += 1
        if backend == UNROUTED:
            tally.failed += 1
            return
        self._last_sent[backend] = now
        task = asyncio.get_running_loop().create_task(self._send(self.backends[backend], tally))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _send(self, url: str, tally: Tally) -> None:
        assert self._session is not None
        ok = False
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with self._session.get(f"{url}/work") as response:
                await response.read()
                ok = response.status < 500
        if ok:
            tally.ok += 1
        else:
            tally.failed += 1


def _same(a: Mapping[str, float], b: Mapping[str, float]) -> bool:
    return set(a) == set(b) and all(abs(a[name] - b[name]) < 1e-9 for name in a)
