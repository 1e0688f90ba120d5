"""Benchmark: each rollback action's own API work against the emulated API server (issue 3).

The rollback actions -- :class:`~rollbackd.actions.canary_abort.CanaryAbort`,
:class:`~rollbackd.actions.bluegreen.BlueGreenSwitchBack`,
:class:`~rollbackd.actions.deployment_undo.DeploymentUndo` and
:class:`~rollbackd.actions.rollout_abort.RolloutAbort` (an Argo Rollouts Rollout), and the canary
abort guarded against GitOps reconcilers (:class:`~rollbackd.actions.gitops.GitOpsGuard`,
suspending an Argo CD Application and a Flux Kustomization first), the command lever
(:class:`~rollbackd.actions.command.CommandAction`, a real subprocess) and the configuration lever
(:class:`~rollbackd.actions.config_restore.ConfigRestore`: a ConfigMap's previous data put back,
then its Deployment restarted like ``kubectl rollout restart``) -- run against the
emulated API server (:class:`~rollbackd.demo.emulator.ClusterEmulator`, served over real HTTP by
kmock, with the emulated deployment, EndpointSlice and Argo Rollouts controllers running), through
the real
``kubernetes_asyncio`` client (:meth:`~rollbackd.kube.KubeClient.for_host`), with the settings the
daemon uses by default (``kubernetes.retries`` 4, retries 0.2 s doubling, availability polled
every second).

Each action runs 20 times, each time on a fresh emulated cluster seeded with the bad release and a
fresh client (so ``api_s`` includes opening the client's connection, which the daemon's
long-lived client has done already). Then 20 more runs with faults injected: a 409 conflict on
the main write and 500/503 answers to other reads and writes, retried by the action. Every run
must end ``done`` with the cluster rolled back.

Reported per action: ``ActionResult.api_s`` (the action's own API requests, retries and their
backoff pauses included) as median, p95 and max, and ``wait_s`` (waiting for the rolled-back-to
version to be available) separately. The target: the action's own API work (``api_s``) under 1 s
without faults (p95 and max shown too; with faults the backoff pauses are part of ``api_s``).

Run from the repository root: ``python -m bench.actions`` (about two minutes). Results go
to ``bench/results/actions.json`` and ``.md``. The exit status is 1 when the target was missed or
a run did not roll back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kmock

from bench.stats import percentile
from rollbackd.actions.base import ActionOutcome, ActionResult, RollbackAction, RollbackWhy
from rollbackd.actions.bluegreen import BlueGreenSwitchBack
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.command import CommandAction
from rollbackd.actions.config_restore import RESTARTED_AT, ConfigRestore
from rollbackd.actions.deployment_undo import DeploymentUndo
from rollbackd.actions.gitops import GitOpsGuard
from rollbackd.actions.reconcilers import Tracking
from rollbackd.actions.rollout_abort import RolloutAbort
from rollbackd.actions.routers.base import Router
from rollbackd.actions.routers.gateway_api import GatewayApiRouter
from rollbackd.actions.routers.ingress_nginx import IngressNginxRouter
from rollbackd.actions.routers.istio import Destination, IstioRouter
from rollbackd.actions.steps import ActionSettings
from rollbackd.config.settings import CommandSettings, KubernetesSettings
from rollbackd.demo.argo_rollouts import RolloutsController, seed_rollout
from rollbackd.demo.emulator import (
    APPLICATIONS,
    CONFIGMAPS,
    DEPLOYMENTS,
    ENDPOINTSLICES,
    HTTPROUTES,
    INGRESSES,
    KUSTOMIZATIONS,
    REPLICASETS,
    ROLLOUTS,
    SERVICES,
    VIRTUALSERVICES,
    ClusterEmulator,
    Controllers,
    ResourceLike,
    rollout_settled,
    seed_deployment,
    seed_ingress,
    seed_route,
    seed_service,
    seed_virtual_service,
)
from rollbackd.demo.reconciler import label_for_flux, seed_application, seed_kustomization, track_by_argocd
from rollbackd.kube import KubeClient
from rollbackd.kube.objects import CANARY_WEIGHT_ANNOTATION
from rollbackd.model import ConfigMapVersion

RESULTS_DIR = Path(__file__).resolve().parent / "results"

RUNS = 20
MAX_API_S = 1.0
#: What the daemon uses when nothing is configured (``KubeTargets`` builds it the same way).
SETTINGS = ActionSettings.from_kubernetes(KubernetesSettings())


@dataclass(frozen=True, slots=True)
class Case:
    """One action: how to seed a namespace with its bad release, how to make the action, how to
    inject faults into that namespace (returning the views that count the faulted requests), and
    whether the cluster ended rolled back."""

    name: str
    seed: Callable[[ClusterEmulator, str], None]
    action: Callable[[KubeClient, str], RollbackAction]
    faults: Callable[[ClusterEmulator, str], list[kmock.View]]
    rolled_back: Callable[[ClusterEmulator, str], bool]


def _replicas(emu: ClusterEmulator, namespace: str, name: str) -> int:
    deployment = emu.read(DEPLOYMENTS, namespace, name)
    return -1 if deployment is None else int(deployment["spec"]["replicas"])


# --- canary abort (ingress-nginx) ---------------------------------------------------------------


def seed_canary_workloads(emu: ClusterEmulator, ns: str) -> None:
    """The stable ``web`` and the canary ``web-canary``, each a Deployment behind its Service."""
    seed_deployment(emu, ns, "web", replicas=3, image="shop/web:1.1",
                    labels={"app": "web", "track": "stable"}, revision_history=["shop/web:1.0"])
    seed_deployment(emu, ns, "web-canary", replicas=1, image="shop/web:1.2",
                    labels={"app": "web", "track": "canary"})
    seed_service(emu, ns, "web", selector={"app": "web", "track": "stable"})
    seed_service(emu, ns, "web-canary", selector={"app": "web", "track": "canary"})


def router_faults(resource: ResourceLike, route: str) -> Callable[[ClusterEmulator, str], list[kmock.View]]:
    """The faults of a canary abort through the router's object ``route`` (of ``resource``): its
    write conflicts once, one read of it fails (503), and scaling the canary down fails twice (500)."""

    def faults(emu: ClusterEmulator, ns: str) -> list[kmock.View]:
        return [
            emu.conflict("patch", resource, namespace=ns, name=route),
            emu.fail("get", resource, status=503, namespace=ns, name=route, times=1),
            emu.fail("patch", DEPLOYMENTS, status=500, namespace=ns, name="web-canary", subresource="scale",
                     times=2),
        ]

    return faults


def canary_abort(router: Callable[[KubeClient, str], Router]) -> Callable[[KubeClient, str], RollbackAction]:
    """The abort of the canary ``web-canary`` (stable ``web``) through the router ``router`` makes."""
    return lambda kube, ns: CanaryAbort(kube=kube, target=f"{ns}/web", namespace=ns, router=router(kube, ns),
                                        canary="web-canary", stable="web", settings=SETTINGS)


def seed_canary(emu: ClusterEmulator, ns: str) -> None:
    seed_canary_workloads(emu, ns)
    seed_ingress(emu, ns, "web", service="web", host="shop.example.com")
    seed_ingress(emu, ns, "web-canary", service="web-canary", host="shop.example.com", canary_weight=20)


def canary_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    ingress = emu.read(INGRESSES, ns, "web-canary") or {}
    weight = (ingress.get("metadata", {}).get("annotations") or {}).get(CANARY_WEIGHT_ANNOTATION)
    return weight == "0" and _replicas(emu, ns, "web-canary") == 0


CANARY = Case(
    name="canary-abort",
    seed=seed_canary,
    action=canary_abort(lambda kube, ns: IngressNginxRouter(kube=kube, namespace=ns, ingress="web-canary")),
    faults=router_faults(INGRESSES, "web-canary"),
    rolled_back=canary_rolled_back,
)


# --- canary abort (Gateway API HTTPRoute, Istio VirtualService) ---------------------------------


def seed_gateway(emu: ClusterEmulator, ns: str) -> None:
    seed_canary_workloads(emu, ns)
    seed_route(emu, ns, "web", rules=[{"web": 80, "web-canary": 20}, {"web": 90, "web-canary": 10}])


def gateway_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    route = emu.read(HTTPROUTES, ns, "web") or {}
    weights = [ref.get("weight") for rule in (route.get("spec") or {}).get("rules") or []
               for ref in rule.get("backendRefs") or [] if ref.get("name") == "web-canary"]
    return weights == [0, 0] and _replicas(emu, ns, "web-canary") == 0


GATEWAY = Case(
    name="canary-abort/gateway-api",
    seed=seed_gateway,
    action=canary_abort(lambda kube, ns: GatewayApiRouter(kube=kube, namespace=ns, route="web",
                                                          canary_service="web-canary", stable_service="web")),
    faults=router_faults(HTTPROUTES, "web"),
    rolled_back=gateway_rolled_back,
)


def seed_istio(emu: ClusterEmulator, ns: str) -> None:
    seed_canary_workloads(emu, ns)
    seed_virtual_service(emu, ns, "web", http=[
        [{"host": "web", "subset": "stable", "weight": 80},
         {"host": "web", "subset": "canary", "weight": 20}],
    ])


def istio_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    vs = emu.read(VIRTUALSERVICES, ns, "web") or {}
    weights = [item.get("weight") for http in (vs.get("spec") or {}).get("http") or []
               for item in http.get("route") or []
               if (item.get("destination") or {}).get("subset") == "canary"]
    return weights == [0] and _replicas(emu, ns, "web-canary") == 0


ISTIO = Case(
    name="canary-abort/istio",
    seed=seed_istio,
    action=canary_abort(lambda kube, ns: IstioRouter(kube=kube, namespace=ns, virtual_service="web",
                                                     canary=Destination("web", "canary"),
                                                     stable=Destination("web", "stable"))),
    faults=router_faults(VIRTUALSERVICES, "web"),
    rolled_back=istio_rolled_back,
)


# --- blue-green switch-back ---------------------------------------------------------------------

BLUE = {"app": "web", "version": "blue"}
GREEN = {"app": "web", "version": "green"}


def seed_bluegreen(emu: ClusterEmulator, ns: str) -> None:
    seed_deployment(emu, ns, "web-blue", replicas=3, image="shop/web:1.1", labels=BLUE, container="web")
    seed_deployment(emu, ns, "web-green", replicas=3, image="shop/web:1.2", labels=GREEN, container="web")
    seed_service(emu, ns, "web", selector=GREEN)


def bluegreen_faults(emu: ClusterEmulator, ns: str) -> list[kmock.View]:
    return [
        emu.conflict("patch", SERVICES, namespace=ns, name="web"),
        emu.fail("list", ENDPOINTSLICES, status=500, namespace=ns, times=2),
        emu.fail("patch", DEPLOYMENTS, status=503, namespace=ns, name="web-green", subresource="scale",
                 times=1),
    ]


def bluegreen_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    service = emu.read(SERVICES, ns, "web") or {}
    return (service.get("spec") or {}).get("selector") == BLUE and _replicas(emu, ns, "web-green") == 0


BLUEGREEN = Case(
    name="blue-green-switch-back",
    seed=seed_bluegreen,
    action=lambda kube, ns: BlueGreenSwitchBack(kube=kube, target=f"{ns}/web", namespace=ns, service="web",
                                                healthy="web-blue", bad="web-green", settings=SETTINGS),
    faults=bluegreen_faults,
    rolled_back=bluegreen_rolled_back,
)


# --- deployment undo ----------------------------------------------------------------------------


def seed_undo(emu: ClusterEmulator, ns: str) -> None:
    seed_deployment(emu, ns, "web", replicas=3, image="shop/web:1.2",
                    revision_history=["shop/web:1.0", "shop/web:1.1"])


def undo_faults(emu: ClusterEmulator, ns: str) -> list[kmock.View]:
    return [
        emu.fail("get", DEPLOYMENTS, status=503, namespace=ns, name="web", times=1),
        emu.fail("list", REPLICASETS, status=500, namespace=ns, times=1),
        emu.conflict("patch", DEPLOYMENTS, namespace=ns, name="web"),
        emu.fail("patch", DEPLOYMENTS, status=500, namespace=ns, name="web", times=1),
    ]


def undo_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    deployment = emu.read(DEPLOYMENTS, ns, "web") or {}
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or [{}]
    return containers[0].get("image") == "shop/web:1.1" and rollout_settled(deployment)


UNDO = Case(
    name="deployment-undo",
    seed=seed_undo,
    action=lambda kube, ns: DeploymentUndo(kube=kube, target=f"{ns}/web", namespace=ns, deployment="web",
                                           bad_revision=3, settings=SETTINGS),
    faults=undo_faults,
    rolled_back=undo_rolled_back,
)

# --- Argo Rollouts Rollout abort -----------------------------------------------------------------


def seed_argo_rollout(emu: ClusterEmulator, ns: str) -> None:
    seed_rollout(emu, ns, "web", stable_image="shop/web:1.1", image="shop/web:1.2", replicas=4)


def argo_rollout_faults(emu: ClusterEmulator, ns: str) -> list[kmock.View]:
    return [
        emu.fail("get", ROLLOUTS, status=503, namespace=ns, name="web", times=1),
        emu.conflict("patch", ROLLOUTS, namespace=ns, name="web", subresource="status"),
        emu.fail("list", REPLICASETS, status=500, namespace=ns, times=1),
    ]


def argo_rollout_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    rollout = emu.read(ROLLOUTS, ns, "web") or {}
    status = rollout.get("status") or {}
    stable = emu.read(REPLICASETS, ns, f"web-{status.get('stableRS')}") or {}
    return status.get("abort") is True and (stable.get("status") or {}).get("availableReplicas") == 4


ARGO_ROLLOUT = Case(
    name="argo-rollout-abort",
    seed=seed_argo_rollout,
    action=lambda kube, ns: RolloutAbort(kube=kube, target=f"{ns}/web", namespace=ns, rollout="web",
                                         settings=SETTINGS),
    faults=argo_rollout_faults,
    rolled_back=argo_rollout_rolled_back,
)

# --- canary abort under GitOps: Argo CD and Flux suspended first --------------------------------


def seed_canary_gitops(emu: ClusterEmulator, ns: str) -> None:
    seed_canary(emu, ns)
    seed_application(emu, "shop-web", destination_namespace=ns)
    track_by_argocd(emu, INGRESSES, ns, "web-canary", application="shop-web")
    seed_kustomization(emu, "shop-canary")
    label_for_flux(emu, DEPLOYMENTS, ns, "web-canary", owner=KUSTOMIZATIONS, owner_name="shop-canary")


def canary_gitops_faults(emu: ClusterEmulator, ns: str) -> list[kmock.View]:
    return [
        *CANARY.faults(emu, ns),
        emu.conflict("patch", APPLICATIONS, namespace="argocd", name="shop-web"),
        emu.fail("get", KUSTOMIZATIONS, status=503, namespace="flux-system", name="shop-canary", times=1),
    ]


def canary_gitops_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    application = emu.read(APPLICATIONS, "argocd", "shop-web") or {}
    kustomization = emu.read(KUSTOMIZATIONS, "flux-system", "shop-canary") or {}
    return (
        canary_rolled_back(emu, ns)
        and "automated" not in (application.get("spec") or {}).get("syncPolicy", {})
        and (kustomization.get("spec") or {}).get("suspend") is True
    )


CANARY_GITOPS = Case(
    name="canary-abort, gitops suspend",
    seed=seed_canary_gitops,
    action=lambda kube, ns: GitOpsGuard(CANARY.action(kube, ns), kube=kube, target=f"{ns}/web",
                                        mode="suspend", tracking=Tracking(), settings=SETTINGS),
    faults=canary_gitops_faults,
    rolled_back=canary_gitops_rolled_back,
)

# The command lever: no API request at all; its own work is starting the command and collecting
# its end and output (api_s), the command's own run time is wait_s. The command writes a marker.
COMMAND_MARKER = Path(tempfile.gettempdir()) / f"rollbackd-bench-command-{os.getpid()}"


def seed_command(emu: ClusterEmulator, ns: str) -> None:
    COMMAND_MARKER.unlink(missing_ok=True)


def command_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    done = COMMAND_MARKER.exists()
    COMMAND_MARKER.unlink(missing_ok=True)
    return done


COMMAND = Case(
    name="command",
    seed=seed_command,
    action=lambda kube, ns: CommandAction(
        target=f"{ns}/checkout",
        settings=CommandSettings(argv=("/bin/sh", "-c", f"echo rolled back > {COMMAND_MARKER}")),
        why=RollbackWhy(decision="immediate", reason="benchmark"),
    ),
    faults=lambda emu, ns: [],
    rolled_back=command_rolled_back,
)


# --- the configuration lever: a ConfigMap's previous data, then a rolling restart ---------------

CONFIG_GOOD = {"payments.timeout_ms": "800", "payments.url": "http://payments.shop"}
CONFIG_BAD = {"payments.timeout_ms": "60"}


class KeptVersions:
    """The versions of the ConfigMaps the daemon's watch kept, newest first (in the daemon they are
    read from its store before the action's first request; that read is not part of ``api_s``)."""

    def __init__(self) -> None:
        self.versions: list[ConfigMapVersion] = []

    def keep(self, obj: dict[str, Any]) -> None:
        metadata = obj["metadata"]
        self.versions.insert(0, ConfigMapVersion(namespace=metadata["namespace"], name=metadata["name"],
                                                 resource_version=str(metadata["resourceVersion"]),
                                                 data=dict(obj["data"])))

    async def config_versions(self, namespace: str, name: str, *, limit: int = 2) -> list[ConfigMapVersion]:
        return [v for v in self.versions if (v.namespace, v.name) == (namespace, name)][:limit]


CONFIG_KEPT = KeptVersions()


def seed_config(emu: ClusterEmulator, ns: str) -> None:
    """The ConfigMap at its good data, then changed (both versions seen and kept), and the
    Deployment that reads it."""
    CONFIG_KEPT.versions.clear()
    seeded = {"metadata": {"name": "checkout-config"}, "data": CONFIG_GOOD}
    CONFIG_KEPT.keep(emu.store(CONFIGMAPS, ns, seeded))
    CONFIG_KEPT.keep(emu.update(CONFIGMAPS, ns, "checkout-config", {"data": CONFIG_BAD}))
    seed_deployment(emu, ns, "checkout", replicas=3, image="shop/checkout:2.3")


def config_faults(emu: ClusterEmulator, ns: str) -> list[kmock.View]:
    """A 503 reading the ConfigMap, a 409 on its patch (re-read, re-decided, re-applied), a 500
    reading the Deployment and a 500 on its restart patch."""
    return [
        emu.fail("get", CONFIGMAPS, status=503, namespace=ns, name="checkout-config", times=1),
        emu.conflict("patch", CONFIGMAPS, namespace=ns, name="checkout-config"),
        emu.fail("get", DEPLOYMENTS, status=500, namespace=ns, name="checkout", times=1),
        emu.fail("patch", DEPLOYMENTS, status=500, namespace=ns, name="checkout", times=1),
    ]


def config_rolled_back(emu: ClusterEmulator, ns: str) -> bool:
    configmap = emu.read(CONFIGMAPS, ns, "checkout-config") or {}
    deployment = emu.read(DEPLOYMENTS, ns, "checkout") or {}
    template = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return (configmap.get("data") == CONFIG_GOOD and RESTARTED_AT in (template.get("annotations") or {})
            and rollout_settled(deployment))


CONFIG = Case(
    name="config-restore",
    seed=seed_config,
    action=lambda kube, ns: ConfigRestore(kube=kube, target=f"{ns}/checkout", namespace=ns,
                                          configmaps=("checkout-config",), history=CONFIG_KEPT,
                                          restart=("checkout",), settings=SETTINGS),
    faults=config_faults,
    rolled_back=config_rolled_back,
)


CASES = (CANARY, GATEWAY, ISTIO, BLUEGREEN, UNDO, ARGO_ROLLOUT, CANARY_GITOPS, COMMAND, CONFIG)


# --- running them -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """One run: what the action said, whether the cluster is rolled back, faults hit."""

    result: ActionResult
    rolled_back: bool
    faults_hit: int


async def run_once(case: Case, *, faults: bool) -> Outcome:
    """One run on a fresh emulated cluster (its own server, controllers and client: the
    emulator keeps every request it answered, and would slow down as they pile up)."""
    ns = "shop"
    async with (
        ClusterEmulator() as emu,
        kmock.Server(emu),
        Controllers(emu),
        RolloutsController(emu),
        KubeClient.for_host(str(emu.url), request_timeout_s=10.0) as kube,
    ):
        case.seed(emu, ns)
        views = case.faults(emu, ns) if faults else []
        result = await case.action(kube, ns).run(dry_run=False)
        return Outcome(result, case.rolled_back(emu, ns), sum(len(view) for view in views))


async def run_case(case: Case, *, runs: int) -> dict[str, list[Outcome]]:
    """``runs`` clean runs, then ``runs`` runs with faults."""
    clean = [await run_once(case, faults=False) for _ in range(runs)]
    faulted = [await run_once(case, faults=True) for _ in range(runs)]
    return {"clean": clean, "faults": faulted}


def summary(outcomes: Sequence[Outcome]) -> dict[str, Any]:
    api = [o.result.api_s for o in outcomes]
    wait = [o.result.wait_s for o in outcomes]
    failures = [
        f"{o.result.outcome}: {o.result.reason}" for o in outcomes
        if o.result.outcome is not ActionOutcome.DONE or not o.rolled_back
    ]
    return {
        "runs": len(outcomes),
        "api_s": {"median": statistics.median(api), "p95": percentile(api, 0.95), "max": max(api)},
        "wait_s": {"median": statistics.median(wait), "p95": percentile(wait, 0.95), "max": max(wait)},
        "changes": sorted({len(o.result.changes) for o in outcomes}),
        "faults_hit_per_run": sorted({o.faults_hit for o in outcomes}),
        "not_rolled_back": failures,
    }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Rollback actions: their own API work",
        "",
        report["setup"],
        "",
        "| action | runs | faults | api_s median | api_s p95 | api_s max | wait_s median | wait_s max "
        "| faulted requests / run | rolled back |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, entry in report["actions"].items():
        for label, key in (("clean", "clean"), ("409/500/503", "faults")):
            s = entry[key]
            ok = s["runs"] - len(s["not_rolled_back"])
            lines.append(
                f"| {name} | {s['runs']} | {label} | {_ms(s['api_s']['median'])} | {_ms(s['api_s']['p95'])} "
                f"| {_ms(s['api_s']['max'])} | {_ms(s['wait_s']['median'])} | {_ms(s['wait_s']['max'])} "
                f"| {', '.join(map(str, s['faults_hit_per_run']))} | {ok}/{s['runs']} |"
            )
    lines += ["", "Target: each action's own API work under 1 s against the emulator (clean runs, max):", ""]
    for name, met in report["targets"].items():
        lines.append(f"- {name}: **{'met' if met else 'MISSED'}**")
    lines += [
        "",
        "- api_s: `ActionResult.api_s`, the time of the action's own API requests (reads and "
        "writes; a fresh client each run, its connection opened on the first request), retries "
        "and the backoff pauses between them included; wait_s: waiting for the "
        "rolled-back-to version to be available / serving (polled every second, the daemon's "
        "default; the emulated rollouts complete 0.05 s after a change).",
        "- Faults: canary-abort: a 409 on the canary Ingress patch, a 503 on its read, two 500s on "
        "the canary's scale; canary-abort/gateway-api and canary-abort/istio: the same on the HTTPRoute "
        "(two rules, 80/20 and 90/10; its Gateway's status confirmed after the write) or the VirtualService "
        "(subsets, 80/20); blue-green: a 409 on the Service patch, two 500s listing "
        "EndpointSlices, a 503 on green's scale; deployment-undo: a 503 reading the Deployment, a "
        "500 listing ReplicaSets, a 409 and a 500 on the Deployment patch; argo-rollout-abort: a 503 "
        "reading the Rollout, a 409 on its status patch, a 500 listing ReplicaSets. A 409 is retried "
        "at once after a re-read; 5xx answers after a backoff of 0.1-0.2 s, then 0.2-0.4 s "
        "(jittered). Blue-green lists EndpointSlices while it waits for blue to serve, and the "
        "Rollout abort lists ReplicaSets while it waits for the stable one, so those failures show "
        "in their wait_s (another poll a second later), not in api_s.",
        "- canary-abort, gitops suspend: the same canary with its Ingress synced by an Argo CD "
        "Application and its canary Deployment by a Flux Kustomization: the action's plan, reading "
        "both objects and both reconcilers, removing the Application's automated sync and "
        "suspending the Kustomization, then the abort (all in api_s); faults: the canary's, plus a "
        "409 on the Application patch and a 503 reading the Kustomization.",
        "- command: `/bin/sh -c 'echo rolled back > FILE'` as a command target's rollback; it sends no "
        "API request, so its faulted runs are clean runs too. api_s is rollbackd's own work: starting "
        "the process (its own session, its environment), reading its output and its end, ending what it "
        "left in its process group; wait_s is the command's own run time.",
        "- config-restore: a ConfigMap (`payments.timeout_ms` changed from 800 to 60, both versions kept) "
        "put back to its previous data with a merge patch carrying the resourceVersion judged bad, then "
        "its Deployment (3 replicas) restarted the way `kubectl rollout restart` does (the restartedAt "
        "annotation); api_s: reading the ConfigMap and the Deployment, the two patches; wait_s: the "
        "restarted Deployment rolled out and fully available. The kept versions are given from memory "
        "(the daemon reads them from its store first, outside api_s). Faults: a 503 reading the "
        "ConfigMap, a 409 on its patch (re-read, checked still the version judged bad, re-applied), a "
        "500 reading the Deployment and a 500 on its restart patch.",
    ]
    return "\n".join(lines) + "\n"


def _result_json(result: ActionResult) -> dict[str, Any]:
    return {
        "outcome": str(result.outcome),
        "api_s": round(result.api_s, 6),
        "wait_s": round(result.wait_s, 6),
        "changes": len(result.changes),
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.actions", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of each action, clean and with faults")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # The retries' warnings are expected here (faults are injected on purpose).
    logging.basicConfig(level=logging.ERROR)
    actions: dict[str, Any] = {}
    targets: dict[str, bool] = {}
    all_rolled_back = True
    for case in CASES:
        print(f"{case.name}: {args.runs} clean runs and {args.runs} with faults ...", flush=True)
        outcomes = asyncio.run(run_case(case, runs=args.runs))
        clean, faulted = summary(outcomes["clean"]), summary(outcomes["faults"])
        actions[case.name] = {
            "clean": clean,
            "faults": faulted,
            "runs": {key: [_result_json(o.result) for o in outcomes[key]] for key in ("clean", "faults")},
        }
        targets[case.name] = clean["api_s"]["max"] < MAX_API_S
        all_rolled_back = all_rolled_back and not clean["not_rolled_back"] and not faulted["not_rolled_back"]
    report = {
        "setup": (
            "ClusterEmulator served by kmock on 127.0.0.1 with the emulated controllers, the real "
            f"kubernetes_asyncio client; action settings as the daemon's defaults (attempts "
            f"{SETTINGS.attempts}, backoff {SETTINGS.backoff.initial_s:g} s doubling to "
            f"{SETTINGS.backoff.max_s:g} s, availability polled every {SETTINGS.poll_s:g} s). "
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
            f"Run at {datetime.now(UTC).isoformat(timespec='seconds')}."
        ),
        "actions": actions,
        "targets": targets,
        "target_api_s": MAX_API_S,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "actions.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (out / "actions.md").write_text(text)
    print()
    print(text)
    return 0 if all(targets.values()) and all_rolled_back else 1


if __name__ == "__main__":
    raise SystemExit(main())
