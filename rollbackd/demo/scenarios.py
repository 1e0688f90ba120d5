"""The demo's releases: what is seeded into the emulated cluster, which sample apps stand in for
which version's pods, how traffic is routed, and what rollbackd is told to watch.

- ``canary``: a stable and a canary Deployment, their Services, a main Ingress and an ingress-nginx
  canary Ingress at 20% weight (another weight: :func:`canary_scenario`); the canary turns bad;
  rollbackd aborts the canary.
- ``bluegreen``: a blue and a green Deployment behind one Service; the release switches the Service
  from blue to green; green turns bad; rollbackd switches the Service back to blue.
- ``deployment``: one Deployment whose current revision runs the new image; it turns bad; rollbackd
  undoes the Deployment to the previous revision.
- ``gateway``: the canary's Deployments and Services behind a Gateway API Gateway, an HTTPRoute
  giving the canary Service 20% of the weight (another weight: :func:`gateway_scenario`); the
  canary turns bad; rollbackd sets its weight to 0 through the Gateway API router, and the Gateway
  accepts the route as written.
- ``gitops``: the canary, reconciled from Git: an Argo CD Application syncs the canary Ingress and a
  Flux Kustomization the canary Deployment, and an emulated reconciler puts back what Git declares
  (weight 20, one canary replica) unless they are suspended. With ``gitops: suspend`` (the default)
  rollbackd suspends both before aborting the canary and the rollback holds; with ``ignore`` the
  reconciler undoes it (:func:`gitops_scenario`).
- ``config``: one Deployment whose pods follow a ConfigMap (a payments timeout); a change of the
  ConfigMap's data is the release and the fault: the timeout goes from 800 ms to 60 ms and about
  30% of the requests fail. rollbackd sees the change as a release, decides, puts the previous data
  back and restarts the Deployment the way ``kubectl rollout restart`` does; the same pods recover
  in place (no traffic moves).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from rollbackd.actions.config_restore import RESTARTED_AT
from rollbackd.actions.routers.select import router_for
from rollbackd.config.settings import (
    ConfigLeverSettings,
    GatewayApiRouterSettings,
    GitOpsMode,
    IngressNginxRouterSettings,
    Side,
    TargetSettings,
)
from rollbackd.demo.emulator import (
    APPLICATIONS,
    CONFIGMAPS,
    DEPLOYMENTS,
    GATEWAYS,
    INGRESSES,
    KUSTOMIZATIONS,
    ClusterEmulator,
    seed_deployment,
    seed_gateway,
    seed_ingress,
    seed_route,
    seed_service,
)
from rollbackd.demo.reconciler import (
    ARGOCD_NAMESPACE,
    FLUX_NAMESPACE,
    Declared,
    GitOpsReconciler,
    label_for_flux,
    seed_application,
    seed_kustomization,
    track_by_argocd,
)
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
    label (two apps of one Deployment share it, and their series add up); ``role`` says what it is;
    ``configmap``: the ConfigMap (in :data:`NAMESPACE`) its pods follow, read through the API.
    """

    backend: str
    deployment: str
    role: str
    configmap: str | None = None


#: A release step the demo takes before the fault (as a pipeline would); returns what it did.
Release = Callable[[KubeClient], Awaitable[str]]
#: Reads the routing objects once the rollback is verified, from the emulated cluster's store and
#: through the client as rollbackd reads them; returns one line per object.
Aftermath = Callable[[ClusterEmulator, KubeClient], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Scenario:
    """One demo release.

    - ``apps``: the sample apps to start;
    - ``good`` / ``bad``: the backends traffic must end on / the one that turns bad;
    - ``seed``: fills the emulated cluster; returns one line per object seeded;
    - ``target``: rollbackd's target, given each backend's base URL (for health endpoints);
    - ``routing``: how the load generator reads where traffic goes;
    - ``release``: a step taken once the old version has served a while (blue-green only);
    - ``controllers``: the emulated controllers the scenario's objects need, for the timeline;
    - ``aftermath``: what the routing objects say once the rollback is verified (gateway only).
    - ``gitops``: what Git declares, for the emulated GitOps reconciler (the gitops scenario only):
      tells the reconciler, returns one line per declaration.
    - ``fault``: the bad change itself, made through the API (the config scenario): the same pods
      turn bad and recover in place, no traffic moves. ``None``: the ``bad`` backend turns bad
      through its ``/control``, and the rollback moves traffic off it.
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
    controllers: str = "deployment and EndpointSlice controllers"
    aftermath: Aftermath | None = None
    gitops: Callable[[GitOpsReconciler], list[str]] | None = None
    fault: Release | None = None

    def app(self, backend: str) -> App:
        return next(app for app in self.apps if app.backend == backend)


def _deployment_line(name: str, replicas: int, image: str, labels: Mapping[str, str], revision: int) -> str:
    shown = ", ".join(f"{key}={value}" for key, value in labels.items())
    plural = "" if replicas == 1 else "s"
    return (f"Deployment {NAMESPACE}/{name}: {replicas} replica{plural} of {image} (revision {revision}), "
            f"pods labelled {shown}, with its ReplicaSets")


def _seed_served(emu: ClusterEmulator, name: str, *, image: str, labels: Mapping[str, str],
                 revision_history: tuple[str, ...] = ()) -> list[str]:
    """One Deployment and the Service selecting its pods by ``labels``; its lines."""
    seed_deployment(emu, NAMESPACE, name, replicas=3, image=image, revision_history=revision_history,
                    labels=labels, container="web")
    seed_service(emu, NAMESPACE, name, selector=labels)
    shown = ", ".join(f"{key}={value}" for key, value in labels.items())
    kept = "".join(f"; revision {number} ({old}) kept at 0 replicas"
                   for number, old in enumerate(revision_history, start=1))
    return [_deployment_line(name, 3, image, labels, len(revision_history) + 1) + kept,
            f"Service {NAMESPACE}/{name}: selector {shown}, with its EndpointSlice"]


# --- canary --------------------------------------------------------------------------------------

_STABLE_LABELS = {"app": "web", "track": "stable"}
_CANARY_LABELS = {"app": "web", "track": "canary"}


def _seed_canary_workloads(emu: ClusterEmulator) -> list[str]:
    """The stable and canary Deployments and their Services (whatever routes to them)."""
    seed_deployment(emu, NAMESPACE, "web", replicas=3, image=OLD_IMAGE, revision_history=("shop/web:1.3",),
                    labels=_STABLE_LABELS, container="web")
    seed_deployment(emu, NAMESPACE, "web-canary", replicas=1, image=NEW_IMAGE, labels=_CANARY_LABELS,
                    container="web")
    seed_service(emu, NAMESPACE, "web", selector=_STABLE_LABELS)
    seed_service(emu, NAMESPACE, "web-canary", selector=_CANARY_LABELS)
    return [
        _deployment_line("web", 3, OLD_IMAGE, _STABLE_LABELS, 2),
        _deployment_line("web-canary", 1, NEW_IMAGE, _CANARY_LABELS, 1),
        f"Services {NAMESPACE}/web (track=stable) and {NAMESPACE}/web-canary (track=canary), "
        "with their EndpointSlices",
    ]


def _seed_canary(emu: ClusterEmulator, weight: int) -> list[str]:
    lines = _seed_canary_workloads(emu)
    seed_ingress(emu, NAMESPACE, "web", service="web", host=HOST_NAME)
    seed_ingress(emu, NAMESPACE, "web-canary", service="web-canary", host=HOST_NAME,
                 canary_weight=weight)
    return [
        *lines,
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
    return _seed_served(emu, "web", image=NEW_IMAGE, labels=_WEB_LABELS, revision_history=(OLD_IMAGE,))


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

# --- gateway --------------------------------------------------------------------------------------

GATEWAY_NAME = "shop-gateway"
ROUTE_NAME = "web"

_GATEWAY_ROUTER = GatewayApiRouterSettings(
    kind="gateway-api", route=ROUTE_NAME, canary_service="web-canary", stable_service="web"
)


def _seed_gateway(emu: ClusterEmulator, weight: int) -> list[str]:
    lines = _seed_canary_workloads(emu)
    seed_gateway(emu, NAMESPACE, GATEWAY_NAME)
    seed_route(emu, NAMESPACE, ROUTE_NAME, rules=[{"web": 100 - weight, "web-canary": weight}],
               gateway=GATEWAY_NAME, hostnames=(HOST_NAME,))
    return [
        *lines,
        f"Gateway {NAMESPACE}/{GATEWAY_NAME} (class emulated): listener http on port 80, routes from "
        f"namespace {NAMESPACE}",
        f"HTTPRoute {NAMESPACE}/{ROUTE_NAME}: {HOST_NAME} on Gateway {GATEWAY_NAME} -> backendRefs "
        f"web weight {100 - weight}, web-canary weight {weight}",
    ]


def _gateway_target(urls: Mapping[str, str]) -> TargetSettings:
    return TargetSettings(
        name="web",
        namespace=NAMESPACE,
        strategy=Strategy.CANARY,
        router=_GATEWAY_ROUTER,
        baseline=Side(deployment="web", health=(f"{urls['stable']}/readyz",)),
        candidate=Side(deployment="web-canary", health=(f"{urls['canary']}/readyz",)),
    )


def _conditions(conditions: object) -> str:
    if not isinstance(conditions, list):
        return "no conditions"
    return ", ".join(f"{c.get('type')} {c.get('status')}" for c in conditions if isinstance(c, Mapping))


async def _gateway_aftermath(emu: ClusterEmulator, kube: KubeClient) -> list[str]:
    """The HTTPRoute's weights and its Gateway's verdict on it, and the Gateway's own status."""
    route = await objects.get_custom(kube, objects.HTTPROUTES, namespace=NAMESPACE, name=ROUTE_NAME)
    split = await router_for(_GATEWAY_ROUTER, kube=kube, namespace=NAMESPACE).read_split()
    generation = objects.metadata_of(route).get("generation")
    weights = "; ".join(
        f"rule {index}: " + ", ".join(f"{ref.get('name')} weight {ref.get('weight', 1)}"
                                      for ref in rule.get("backendRefs") or [])
        for index, rule in enumerate((route.get("spec") or {}).get("rules") or [])
    )
    lines = [f"HTTPRoute {NAMESPACE}/{ROUTE_NAME} (generation {generation}): {weights} -- the canary gets "
             f"{split.canary_percent:g}% as rollbackd reads the split"]
    for parent in (route.get("status") or {}).get("parents") or []:
        ref = parent.get("parentRef") or {}
        observed = {c.get("observedGeneration") for c in parent.get("conditions") or []}
        lines.append(
            f"HTTPRoute status, parent Gateway {ref.get('namespace', NAMESPACE)}/{ref.get('name')}: "
            f"{_conditions(parent.get('conditions'))} (generation {', '.join(map(str, sorted(observed)))})"
        )
    gateway = emu.read(GATEWAYS, NAMESPACE, GATEWAY_NAME)  # rollbackd itself never reads Gateways
    status = (gateway or {}).get("status") or {}
    attached = ", ".join(
        f"listener {listener.get('name')}: {listener.get('attachedRoutes')} route(s) attached"
        for listener in status.get("listeners") or []
    )
    lines.append(f"Gateway {NAMESPACE}/{GATEWAY_NAME}: {_conditions(status.get('conditions'))}; {attached}")
    return lines


def gateway_scenario(weight: int = CANARY_WEIGHT) -> Scenario:
    """The gateway scenario with the HTTPRoute giving the canary ``weight`` of 100 (1 to 99)."""
    if not 1 <= weight <= 99:
        raise ValueError(f"a canary weight is a percentage from 1 to 99, not {weight!r}")
    return Scenario(
        name="gateway",
        title=f"a canary at {weight}% of a Gateway API HTTPRoute's weight turns bad; rollbackd sets its "
        "weight to 0",
        strategy=Strategy.CANARY,
        apps=(
            App("stable", "web", f"the stable pods, {OLD_IMAGE}"),
            App("canary", "web-canary", f"the canary pods, {NEW_IMAGE}"),
        ),
        good="stable",
        bad="canary",
        seed=lambda emu: _seed_gateway(emu, weight),
        target=_gateway_target,
        routing=RouterRouting(namespace=NAMESPACE, stable="stable", canary="canary", router=_GATEWAY_ROUTER),
        controllers="deployment, EndpointSlice and gateway controllers",
        aftermath=_gateway_aftermath,
    )


GATEWAY = gateway_scenario()



# --- gitops --------------------------------------------------------------------------------------

APPLICATION = "shop-web"
KUSTOMIZATION = "shop-canary"


def _seed_gitops(emu: ClusterEmulator) -> list[str]:
    lines = _seed_canary(emu, CANARY_WEIGHT)
    seed_application(emu, APPLICATION, destination_namespace=NAMESPACE, path="apps/web")
    track_by_argocd(emu, INGRESSES, NAMESPACE, "web-canary", application=APPLICATION)
    seed_kustomization(emu, KUSTOMIZATION, path="apps/web-canary")
    label_for_flux(emu, DEPLOYMENTS, NAMESPACE, "web-canary", owner=KUSTOMIZATIONS, owner_name=KUSTOMIZATION)
    return [
        *lines,
        f"Argo CD Application {ARGOCD_NAMESPACE}/{APPLICATION} (automated sync: prune, selfHeal) syncing "
        f"Ingress {NAMESPACE}/web-canary (annotation argocd.argoproj.io/tracking-id)",
        f"Flux Kustomization {FLUX_NAMESPACE}/{KUSTOMIZATION} applying Deployment {NAMESPACE}/web-canary "
        "(labels kustomize.toolkit.fluxcd.io/name and /namespace)",
    ]


def _git_declares(reconciler: GitOpsReconciler) -> list[str]:
    weight = {"metadata": {"annotations": {objects.CANARY_WEIGHT_ANNOTATION: str(CANARY_WEIGHT)}}}
    reconciler.declare(APPLICATIONS, ARGOCD_NAMESPACE, APPLICATION,
                       [Declared(INGRESSES, NAMESPACE, "web-canary", weight)])
    reconciler.declare(KUSTOMIZATIONS, FLUX_NAMESPACE, KUSTOMIZATION,
                       [Declared(DEPLOYMENTS, NAMESPACE, "web-canary", {"spec": {"replicas": 1}})])
    return [
        f"Git declares Ingress {NAMESPACE}/web-canary with canary-weight \"{CANARY_WEIGHT}\" "
        "(Argo CD self-heal puts it back unless automated sync is off)",
        f"Git declares Deployment {NAMESPACE}/web-canary with 1 replica (Flux puts it back unless the "
        "Kustomization is suspended)",
    ]


def gitops_scenario(mode: GitOpsMode = "suspend") -> Scenario:
    """The canary scenario reconciled from Git, with the target's ``gitops`` mode ``mode``."""
    canary = canary_scenario(CANARY_WEIGHT)
    what = {
        "suspend": "rollbackd suspends both, aborts the canary, and the rollback holds",
        "refuse": "rollbackd refuses to fight Git and escalates",
        "ignore": "rollbackd aborts the canary regardless, and the reconciler puts it back",
    }[mode]
    return Scenario(
        name="gitops",
        title=f"a canary synced by Argo CD and Flux turns bad; with gitops: {mode}, {what}",
        strategy=Strategy.CANARY,
        apps=canary.apps,
        good=canary.good,
        bad=canary.bad,
        seed=_seed_gitops,
        target=lambda urls: _canary_target(urls).model_copy(update={"gitops": mode}),
        routing=canary.routing,
        gitops=_git_declares,
    )


GITOPS = gitops_scenario()

# --- config ---------------------------------------------------------------------------------------

CONFIGMAP = "checkout-config"
CHECKOUT_IMAGE = "shop/checkout:2.3"
TIMEOUT_KEY = "payments.timeout_ms"
GOOD_TIMEOUT_MS = "800"
BAD_TIMEOUT_MS = "60"
_CHECKOUT_LABELS = {"app": "checkout"}


def _seed_config(emu: ClusterEmulator) -> list[str]:
    emu.store(CONFIGMAPS, NAMESPACE, {"metadata": {"name": CONFIGMAP}, "data": {
        TIMEOUT_KEY: GOOD_TIMEOUT_MS, "payments.url": "http://payments.shop.svc:8080"}})
    return [
        f"ConfigMap {NAMESPACE}/{CONFIGMAP}: {TIMEOUT_KEY}={GOOD_TIMEOUT_MS}, "
        "payments.url=http://payments.shop.svc:8080 (read by the checkout pods)",
        *_seed_served(emu, "checkout", image=CHECKOUT_IMAGE, labels=_CHECKOUT_LABELS),
    ]


def _config_target(urls: Mapping[str, str]) -> TargetSettings:
    return TargetSettings(name="checkout", namespace=NAMESPACE, strategy=Strategy.CONFIG,
                          candidate=Side(deployment="checkout", health=(f"{urls['checkout']}/readyz",)),
                          config=ConfigLeverSettings(configmaps=(CONFIGMAP,), restart=("checkout",)))


async def _shorten_the_timeout(kube: KubeClient) -> str:
    """The configuration release: the payments timeout cut to 60 ms, through the API."""
    await objects.patch_configmap(kube, namespace=NAMESPACE, name=CONFIGMAP,
                                  patch={"data": {TIMEOUT_KEY: BAD_TIMEOUT_MS}})
    return (f"ConfigMap {NAMESPACE}/{CONFIGMAP} changed through the API (as kubectl apply would): "
            f"{TIMEOUT_KEY} '{GOOD_TIMEOUT_MS}' -> '{BAD_TIMEOUT_MS}'; the checkout pods follow it, and "
            f"about 30% of their payments calls outlast {BAD_TIMEOUT_MS} ms and fail")


async def _config_aftermath(emu: ClusterEmulator, kube: KubeClient) -> list[str]:
    """The ConfigMap's data and the restarted Deployment, as the API shows them."""
    configmap = await objects.get_configmap(kube, namespace=NAMESPACE, name=CONFIGMAP)
    deployment = await objects.get_deployment(kube, namespace=NAMESPACE, name="checkout")
    data = ", ".join(f"{key}={value}" for key, value in sorted((configmap.get("data") or {}).items()))
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    restarted = (template.get("annotations") or {}).get(RESTARTED_AT)
    status = deployment.get("status") or {}
    return [
        f"ConfigMap {NAMESPACE}/{CONFIGMAP} (resourceVersion "
        f"{objects.metadata_of(configmap).get('resourceVersion')}): {data}",
        f"Deployment {NAMESPACE}/checkout: {RESTARTED_AT}={restarted}, "
        f"revision {objects.revision(deployment)}, "
        f"{status.get('availableReplicas', 0)}/{(deployment.get('spec') or {}).get('replicas')} replicas "
        f"available{' (rolled out)' if objects.rollout_complete(deployment) else ''}",
    ]


CONFIG = Scenario(
    name="config",
    title=f"a ConfigMap change ({TIMEOUT_KEY} {GOOD_TIMEOUT_MS} -> {BAD_TIMEOUT_MS}) turns bad; rollbackd "
          "restores the previous data and restarts the Deployment",
    strategy=Strategy.CONFIG,
    apps=(App("checkout", "checkout", f"the checkout pods, {CHECKOUT_IMAGE}, reading ConfigMap "
              f"{NAMESPACE}/{CONFIGMAP} through the API every 0.2s", configmap=CONFIGMAP),),
    good="checkout",
    bad="checkout",
    seed=_seed_config,
    target=_config_target,
    routing=PodTemplateRouting(namespace=NAMESPACE, deployment="checkout",
                               backends={CHECKOUT_IMAGE: "checkout"}),
    aftermath=_config_aftermath,
    fault=_shorten_the_timeout,
)

SCENARIOS: Mapping[str, Scenario] = {
    scenario.name: scenario for scenario in (CANARY, BLUEGREEN, DEPLOYMENT, GATEWAY, GITOPS, CONFIG)
}


def scenario_named(
    name: str, *, canary_weight: int = CANARY_WEIGHT, gitops: GitOpsMode = "suspend"
) -> Scenario:
    """The scenario ``name``, a canary's (``canary``, ``gateway``) at ``canary_weight`` percent, the
    gitops one with the target's ``gitops`` mode; :class:`ValueError` naming the known ones for
    another name."""
    if name == "canary":
        return canary_scenario(canary_weight)
    if name == "gateway":
        return gateway_scenario(canary_weight)
    if name == "gitops":
        return gitops_scenario(gitops)
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]
