"""The demo's three releases: what is seeded into the emulated cluster, which sample apps stand in for
which version's pods, how traffic is routed, and what rollbackd is told to watch.

- ``canary``: a stable and a canary Deployment, their Services, a main Ingress and an ingress-nginx
  canary Ingress at 20% weight (another weight: :func:`canary_scenario`); the canary turns bad;
  rollbackd aborts the canary.
- ``bluegreen``: a blue and a green Deployment behind one Service; the release switches the Service
  from blue to green; green turns bad; rollbackd switches the Service back to blue.
- ``deployment``: one Deployment whose current revision runs the new image; it turns bad; rollbackd
  undoes the Deployment to the previous revision.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from rollbackd.config.settings import IngressNginxRouterSettings, Side, TargetSettings
from rollbackd.demo.emulator import ClusterEmulator, seed_deployment, seed_ingress, seed_service
from rollbackd.demo.traffic import PodTemplateRouting, RouterRouting, Routing, ServiceSelectorRouting
from rollbackd.kube import KubeClient, objects
from rollbackd.model import Strategy

NAMESPACE = "shop"
HOST_NAME = "shop.example.com"
OLD_IMAGE = "shop/web:1.4"
NEW_IMAGE = "shop/web:1.5"
CANARY_WEIGHT = 20


@dataclass(frozen=True, slots=True)
class App:
    """One sample-app process standing in for the pods of one version.

    ``backend`` names it for the load generator; ``deployment`` is its series' ``deployment``
    label (two apps of one Deployment share it, and their series add up); ``role`` says what it is.
    """

    backend: str
    deployment: str
    role: str


#: A release step the demo takes before the fault (as a pipeline would); returns what it did.
Release = Callable[[KubeClient], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One demo release.

    - ``apps``: the sample apps to start;
    - ``good`` / ``bad``: the backends traffic must end on / the one that turns bad;
    - ``seed``: fills the emulated cluster; returns one line per object seeded;
    - ``target``: rollbackd's target, given each backend's base URL (for health endpoints);
    - ``routing``: how the load generator reads where traffic goes;
    - ``release``: a step taken once the old version has served a while (blue-green only).
    """

    name: str
    title: str
    strategy: Strategy
    apps: tuple[App, ...]
    good: str
    bad: str
    seed: Callable[[ClusterEmulator], list[str]]
    target: Callable[[Mapping[str, str]], TargetSettings]
    routing: Routing
    release: Release | None = None

    def app(self, backend: str) -> App:
        return next(app for app in self.apps if app.backend == backend)


def _deployment_line(name: str, replicas: int, image: str, labels: Mapping[str, str], revision: int) -> str:
    shown = ", ".join(f"{key}={value}" for key, value in labels.items())
    plural = "" if replicas == 1 else "s"
    return (f"Deployment {NAMESPACE}/{name}: {replicas} replica{plural} of {image} (revision {revision}), "
            f"pods labelled {shown}, with its ReplicaSets")


# --- canary --------------------------------------------------------------------------------------

_STABLE_LABELS = {"app": "web", "track": "stable"}
_CANARY_LABELS = {"app": "web", "track": "canary"}


def _seed_canary(emu: ClusterEmulator, weight: int) -> list[str]:
    seed_deployment(emu, NAMESPACE, "web", replicas=3, image=OLD_IMAGE, revision_history=("shop/web:1.3",),
                    labels=_STABLE_LABELS, container="web")
    seed_deployment(emu, NAMESPACE, "web-canary", replicas=1, image=NEW_IMAGE, labels=_CANARY_LABELS,
                    container="web")
    seed_service(emu, NAMESPACE, "web", selector=_STABLE_LABELS)
    seed_service(emu, NAMESPACE, "web-canary", selector=_CANARY_LABELS)
    seed_ingress(emu, NAMESPACE, "web", service="web", host=HOST_NAME)
    seed_ingress(emu, NAMESPACE, "web-canary", service="web-canary", host=HOST_NAME,
                 canary_weight=weight)
    return [
        _deployment_line("web", 3, OLD_IMAGE, _STABLE_LABELS, 2),
        _deployment_line("web-canary", 1, NEW_IMAGE, _CANARY_LABELS, 1),
        f"Services {NAMESPACE}/web (track=stable) and {NAMESPACE}/web-canary (track=canary), "
        "with their EndpointSlices",
        f"Ingress {NAMESPACE}/web: {HOST_NAME} -> Service web",
        f"Ingress {NAMESPACE}/web-canary: {HOST_NAME} -> Service web-canary, "
        f"canary: \"true\", canary-weight: \"{weight}\"",
    ]


def _canary_target(urls: Mapping[str, str]) -> TargetSettings:
    return TargetSettings(
        name="web",
        namespace=NAMESPACE,
        strategy=Strategy.CANARY,
        ingress="web-canary",
        baseline=Side(deployment="web", health=(f"{urls['stable']}/readyz",)),
        candidate=Side(deployment="web-canary", health=(f"{urls['canary']}/readyz",)),
    )


def canary_scenario(weight: int = CANARY_WEIGHT) -> Scenario:
    """The canary scenario with the canary Ingress at ``weight`` percent (1 to 99)."""
    if not 1 <= weight <= 99:
        raise ValueError(f"a canary weight is a percentage from 1 to 99, not {weight!r}")
    return Scenario(
        name="canary",
        title=f"an ingress-nginx canary at {weight}% weight turns bad; rollbackd aborts the canary",
        strategy=Strategy.CANARY,
        apps=(
            App("stable", "web", f"the stable pods, {OLD_IMAGE}"),
            App("canary", "web-canary", f"the canary pods, {NEW_IMAGE}"),
        ),
        good="stable",
        bad="canary",
        seed=lambda emu: _seed_canary(emu, weight),
        target=_canary_target,
        routing=RouterRouting(
            namespace=NAMESPACE, stable="stable", canary="canary",
            router=IngressNginxRouterSettings(kind="ingress-nginx", ingress="web-canary"),
        ),
    )


CANARY = canary_scenario()


# --- blue-green ----------------------------------------------------------------------------------

_BLUE_LABELS = {"app": "web", "colour": "blue"}
_GREEN_LABELS = {"app": "web", "colour": "green"}


def _seed_bluegreen(emu: ClusterEmulator) -> list[str]:
    seed_deployment(emu, NAMESPACE, "web-blue", replicas=3, image=OLD_IMAGE, labels=_BLUE_LABELS,
                    container="web")
    seed_deployment(emu, NAMESPACE, "web-green", replicas=3, image=NEW_IMAGE, labels=_GREEN_LABELS,
                    container="web")
    seed_service(emu, NAMESPACE, "web", selector=_BLUE_LABELS)
    seed_ingress(emu, NAMESPACE, "web", service="web", host=HOST_NAME)
    return [
        _deployment_line("web-blue", 3, OLD_IMAGE, _BLUE_LABELS, 1),
        _deployment_line("web-green", 3, NEW_IMAGE, _GREEN_LABELS, 1),
        f"Service {NAMESPACE}/web: selector app=web, colour=blue, with its EndpointSlice",
        f"Ingress {NAMESPACE}/web: {HOST_NAME} -> Service web",
    ]


def _bluegreen_target(urls: Mapping[str, str]) -> TargetSettings:
    return TargetSettings(
        name="web",
        namespace=NAMESPACE,
        strategy=Strategy.BLUE_GREEN,
        service="web",
        baseline=Side(deployment="web-blue", health=(f"{urls['blue']}/readyz",)),
        candidate=Side(deployment="web-green", health=(f"{urls['green']}/readyz",)),
    )


async def _switch_to_green(kube: KubeClient) -> str:
    await objects.patch_service(kube, namespace=NAMESPACE, name="web",
                                patch={"spec": {"selector": _GREEN_LABELS}})
    return f"RELEASE: Service {NAMESPACE}/web switched to green: selector colour=green ({NEW_IMAGE})"


BLUEGREEN = Scenario(
    name="bluegreen",
    title="a blue-green switch to green turns bad; rollbackd switches the Service back to blue",
    strategy=Strategy.BLUE_GREEN,
    apps=(
        App("blue", "web-blue", f"the blue pods, {OLD_IMAGE}"),
        App("green", "web-green", f"the green pods, {NEW_IMAGE}"),
    ),
    good="blue",
    bad="green",
    seed=_seed_bluegreen,
    target=_bluegreen_target,
    routing=ServiceSelectorRouting(namespace=NAMESPACE, service="web",
                                   backends={"web-blue": "blue", "web-green": "green"}),
    release=_switch_to_green,
)


# --- deployment ----------------------------------------------------------------------------------

_WEB_LABELS = {"app": "web"}


def _seed_deployment(emu: ClusterEmulator) -> list[str]:
    seed_deployment(emu, NAMESPACE, "web", replicas=3, image=NEW_IMAGE, revision_history=(OLD_IMAGE,),
                    labels=_WEB_LABELS, container="web")
    seed_service(emu, NAMESPACE, "web", selector=_WEB_LABELS)
    return [
        _deployment_line("web", 3, NEW_IMAGE, _WEB_LABELS, 2)
        + f"; revision 1 ({OLD_IMAGE}) kept at 0 replicas",
        f"Service {NAMESPACE}/web: selector app=web, with its EndpointSlice",
    ]


def _deployment_target(urls: Mapping[str, str]) -> TargetSettings:
    return TargetSettings(name="web", namespace=NAMESPACE, strategy=Strategy.DEPLOYMENT,
                          candidate=Side(deployment="web"))


DEPLOYMENT = Scenario(
    name="deployment",
    title="a Deployment's new revision turns bad; rollbackd undoes it to the previous revision",
    strategy=Strategy.DEPLOYMENT,
    apps=(
        App("v1.4", "web", f"the pods of revision 1, {OLD_IMAGE}"),
        App("v1.5", "web", f"the pods of revision 2, {NEW_IMAGE}"),
    ),
    good="v1.4",
    bad="v1.5",
    seed=_seed_deployment,
    target=_deployment_target,
    routing=PodTemplateRouting(namespace=NAMESPACE, deployment="web",
                               backends={OLD_IMAGE: "v1.4", NEW_IMAGE: "v1.5"}),
)

SCENARIOS: Mapping[str, Scenario] = {scenario.name: scenario for scenario in (CANARY, BLUEGREEN, DEPLOYMENT)}
