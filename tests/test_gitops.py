"""Rollbacks that stay rolled back under GitOps: the guard around every rollback action, against the
emulated API server through the real client, with an emulated reconciler that puts back what Git
declares, and what rollbackd writes validated against the published CRD schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import kmock
import pytest
import yaml

from rollbackd.actions.base import ActionOutcome, Change
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.deployment_undo import DeploymentUndo
from rollbackd.actions.gitops import GitOpsGuard
from rollbackd.actions.reconcilers import (
    APPLICATION,
    REVERT_IN_GIT,
    Reconciler,
    Tracking,
    reconcilers_of,
    resume_command,
)
from rollbackd.actions.rollout_abort import RolloutAbort
from rollbackd.actions.routers.gateway_api import GatewayApiRouter
from rollbackd.actions.routers.ingress_nginx import IngressNginxRouter
from rollbackd.actions.steps import ActionSettings
from rollbackd.actions.targets import KubeTargets
from rollbackd.backoff import Backoff
from rollbackd.config.settings import (
    EventsSettings,
    GitOpsMode,
    HttpSettings,
    Settings,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.wiring import open_daemon
from rollbackd.demo.argo_rollouts import RolloutsController, seed_rollout
from rollbackd.demo.emulator import APPLICATIONS, HELMRELEASES, HTTPROUTES, KUSTOMIZATIONS, ROLLOUTS
from rollbackd.demo.reconciler import (
    Declared,
    GitOpsReconciler,
    label_for_flux,
    seed_application,
    seed_helmrelease,
    seed_kustomization,
    track_by_argocd,
)
from rollbackd.kube import KubeClient
from rollbackd.kube.objects import CANARY_WEIGHT_ANNOTATION
from rollbackd.run import Phase
from rollbackd.store import open_store
from rollbackd.store.base import AuditEntry
from tests.kubefixtures import (
    DEPLOYMENTS,
    INGRESSES,
    ClusterEmulator,
    Controllers,
    seed_deployment,
    seed_ingress,
    seed_route,
    seed_service,
    status_body,
    wait_until,
)
from tests.test_daemon import SEVERE, Api, ScriptedHealth, ScriptedMetrics, canary

NS = "shop"
FAST = ActionSettings(backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=4,
                      availability_timeout_s=10.0, poll_s=0.02)
CRDS = Path(__file__).parent / "crds"
AUTOMATED = {"prune": True, "selfHeal": True}


def crd_validator(file: str) -> jsonschema.Draft202012Validator:
    crd = yaml.safe_load((CRDS / file).read_text())
    (version,) = crd["spec"]["versions"]
    return jsonschema.Draft202012Validator(version["schema"]["openAPIV3Schema"])


APPLICATION_SCHEMA = crd_validator("argocd-application.yaml")
KUSTOMIZATION_SCHEMA = crd_validator("flux-kustomization.yaml")
HELMRELEASE_SCHEMA = crd_validator("flux-helmrelease.yaml")


class Recorder:
    """A change recorder that notes, at each change intended, whether Argo CD still syncs and what
    the canary weight is: the suspension must be written down and made before the first change."""

    def __init__(self, emu: ClusterEmulator) -> None:
        self.emu = emu
        self.intended: list[tuple[tuple[Change, ...], bool, str | None]] = []

    async def intend(self, changes: Any) -> bool:
        app = self.emu.read(APPLICATIONS, "argocd", "shop-web") or {}
        automated = "automated" in ((app.get("spec") or {}).get("syncPolicy") or {})
        ingress = self.emu.read(INGRESSES, NS, "web-canary") or {}
        weight = (ingress.get("metadata") or {}).get("annotations", {}).get(CANARY_WEIGHT_ANNOTATION)
        self.intended.append((tuple(changes), automated, weight))
        return True

    async def made(self, intended: Any, made: Any) -> None:
        pass


def seed_canary(emu: ClusterEmulator) -> None:
    seed_deployment(emu, NS, "web", replicas=3, image="shop/web:1.1",
                    labels={"app": "web", "track": "stable"})
    seed_deployment(emu, NS, "web-canary", replicas=1, image="shop/web:1.2",
                    labels={"app": "web", "track": "canary"})
    seed_service(emu, NS, "web", selector={"app": "web", "track": "stable"})
    seed_ingress(emu, NS, "web", service="web", host="shop.example.com")
    seed_ingress(emu, NS, "web-canary", service="web", host="shop.example.com", canary_weight=20)


def seed_argocd_canary(emu: ClusterEmulator, *, automated: dict[str, Any] | None = None) -> None:
    """The canary, with its Ingress and canary Deployment synced by the Application argocd/shop-web."""
    seed_canary(emu)
    seed_application(emu, "shop-web", destination_namespace=NS,
                     automated=AUTOMATED if automated is None else automated)
    track_by_argocd(emu, INGRESSES, NS, "web-canary", application="shop-web")
    track_by_argocd(emu, DEPLOYMENTS, NS, "web-canary", application="shop-web")


WEIGHT_20 = {"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: "20"}}}


def git_declares_the_canary(reconciler: GitOpsReconciler) -> None:
    reconciler.declare(APPLICATIONS, "argocd", "shop-web", [
        Declared(INGRESSES, NS, "web-canary", WEIGHT_20),
        Declared(DEPLOYMENTS, NS, "web-canary", {"spec": {"replicas": 1}}),
    ])


def guarded_abort(kube: KubeClient, mode: GitOpsMode, tracking: Tracking | None = None) -> GitOpsGuard:
    abort = CanaryAbort(kube=kube, target=f"{NS}/web", namespace=NS,
                        router=IngressNginxRouter(kube=kube, namespace=NS, ingress="web-canary"),
                        canary="web-canary", stable="web", settings=FAST)
    return GitOpsGuard(abort, kube=kube, target=f"{NS}/web", mode=mode, tracking=tracking or Tracking(),
                       settings=FAST)


def weight(emu: ClusterEmulator) -> str | None:
    ingress = emu.read(INGRESSES, NS, "web-canary")
    assert ingress is not None
    value = ingress["metadata"]["annotations"].get(CANARY_WEIGHT_ANNOTATION)
    return None if value is None else str(value)


def application(emu: ClusterEmulator) -> dict[str, Any]:
    app = emu.read(APPLICATIONS, "argocd", "shop-web")
    assert app is not None
    return app


def writes(emu: ClusterEmulator, resource: kmock.resource) -> int:
    return len(list(emu[resource][kmock.method.PATCH]))


# --- who reconciles an object ---------------------------------------------------------------------


def obj(kind_ns_name: str, *, annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None) -> dict[str, Any]:
    _, namespace, name = kind_ns_name.split("/")
    return {"metadata": {"namespace": namespace, "name": name, "annotations": annotations or {},
                         "labels": labels or {}}}


def test_an_argocd_tracking_id_names_the_application_in_argocds_namespace_or_another() -> None:
    tracked = obj("Deployment/shop/web",
                  annotations={"argocd.argoproj.io/tracking-id": "shop-web:apps/Deployment:shop/web"})
    assert reconcilers_of(tracked, kind="Deployment", tracking=Tracking()) == (
        Reconciler("argocd", APPLICATION, "argocd", "shop-web"),
    )
    tracking_id = "team-a_shop-web:apps/Deployment:shop/web"
    elsewhere = obj("Deployment/shop/web", annotations={"argocd.argoproj.io/tracking-id": tracking_id})
    assert reconcilers_of(elsewhere, kind="Deployment", tracking=Tracking(argocd_namespace="gitops")) == (
        Reconciler("argocd", APPLICATION, "team-a", "shop-web"),
    )


def test_a_tracking_id_copied_from_another_object_and_a_bare_instance_label_mean_no_argocd() -> None:
    copied = obj("Deployment/shop/web-copy",
                 annotations={"argocd.argoproj.io/tracking-id": "shop-web:apps/Deployment:shop/web"})
    assert reconcilers_of(copied, kind="Deployment", tracking=Tracking()) == ()
    helm_chart = obj("Deployment/shop/web", labels={"app.kubernetes.io/instance": "web"})
    assert reconcilers_of(helm_chart, kind="Deployment", tracking=Tracking()) == ()


def test_with_label_tracking_the_instance_label_names_the_application() -> None:
    labelled = obj("Service/shop/web", labels={"argocd.argoproj.io/instance": "shop-web"})
    tracking = Tracking(method="label", instance_label="argocd.argoproj.io/instance")
    (found,) = reconcilers_of(labelled, kind="Service", tracking=tracking)
    assert (found.tool, found.object) == ("argocd", "Application/argocd/shop-web")


def test_flux_labels_name_the_kustomization_or_the_helmrelease() -> None:
    both = obj("Deployment/shop/web", labels={
        "kustomize.toolkit.fluxcd.io/name": "apps", "kustomize.toolkit.fluxcd.io/namespace": "flux-system",
        "helm.toolkit.fluxcd.io/name": "web", "helm.toolkit.fluxcd.io/namespace": "shop",
    })
    found = reconcilers_of(both, kind="Deployment", tracking=Tracking())
    assert [(r.tool, r.object, r.field) for r in found] == [
        ("flux", "Kustomization/flux-system/apps", "spec.suspend"),
        ("flux", "HelmRelease/shop/web", "spec.suspend"),
    ]
    half = obj("Deployment/shop/web", labels={"kustomize.toolkit.fluxcd.io/name": "apps"})
    assert reconcilers_of(half, kind="Deployment", tracking=Tracking()) == ()


def test_the_resume_command_puts_the_previous_automated_policy_back() -> None:
    app = Reconciler("argocd", APPLICATION, "argocd", "shop-web")
    assert resume_command(app, {"prune": True, "selfHeal": True}) == (
        "kubectl -n argocd patch applications.argoproj.io shop-web --type merge "
        """-p '{"spec":{"syncPolicy":{"automated":{"prune":true,"selfHeal":true}}}}'"""
    )


# --- suspend, refuse, ignore ------------------------------------------------------------------------


async def test_suspend_turns_argocd_automated_sync_off_before_the_first_change_and_the_rollback_holds(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_argocd_canary(kube_cluster)
    recorder = Recorder(kube_cluster)
    result = await guarded_abort(kube, "suspend").run(dry_run=False, recorder=recorder)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert "automated" not in application(kube_cluster)["spec"]["syncPolicy"]
    APPLICATION_SCHEMA.validate(application(kube_cluster))
    suspended = Change("Application/argocd/shop-web", "spec.syncPolicy.automated", AUTOMATED, None)
    assert result.changes[0] == suspended
    # Written down while Argo CD still synced and the canary still had its weight, then made first.
    assert recorder.intended[0] == ((suspended,), True, "20")
    assert all(not automated for _, automated, _ in recorder.intended[1:])
    (hold,) = result.gitops
    assert (hold.object, hold.reconciles, hold.previous, hold.suspended) == (
        "Application/argocd/shop-web",
        ("Ingress/shop/web-canary", "Deployment/shop/web-canary"),
        AUTOMATED,
        True,
    )
    assert result.reason.endswith(REVERT_IN_GIT)

    reconciler = GitOpsReconciler(kube_cluster)
    git_declares_the_canary(reconciler)
    await reconciler.reconcile()
    assert (weight(kube_cluster), reconciler.reverts) == ("0", 0)


async def test_with_ignore_the_reconciler_puts_the_bad_version_back(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_argocd_canary(kube_cluster)
    result = await guarded_abort(kube, "ignore").run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE
    assert (weight(kube_cluster), result.gitops) == ("0", ())
    assert application(kube_cluster)["spec"]["syncPolicy"]["automated"] == AUTOMATED
    async with GitOpsReconciler(kube_cluster, poll_s=0.05) as reconciler:
        git_declares_the_canary(reconciler)
        await wait_until(lambda: weight(kube_cluster) == "20", what="the reconciler to put the weight back")
    canary = kube_cluster.read(DEPLOYMENTS, NS, "web-canary")
    assert canary is not None
    assert canary["spec"]["replicas"] == 1


async def test_suspend_holds_against_a_running_reconciler(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_argocd_canary(kube_cluster)
    async with GitOpsReconciler(kube_cluster, poll_s=0.02) as reconciler:
        git_declares_the_canary(reconciler)
        passes = 0

        async def reconciled_again() -> bool:
            nonlocal passes
            await reconciler.reconcile()
            passes += 1
            return passes >= 5

        result = await guarded_abort(kube, "suspend").run(dry_run=False)
        await wait_until(reconciled_again, what="five more passes of the reconciler")
    assert result.outcome is ActionOutcome.DONE
    assert (weight(kube_cluster), reconciler.reverts) == ("0", 0)


async def test_refuse_changes_nothing_and_says_what_to_do(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_argocd_canary(kube_cluster)
    result = await guarded_abort(kube, "refuse").run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert result.changes == ()
    assert writes(kube_cluster, INGRESSES) == writes(kube_cluster, APPLICATIONS) == 0
    assert "reconciled from Git by the Argo CD Application argocd/shop-web" in result.reason
    assert "gitops is refuse for this target" in result.reason
    assert result.reason.endswith(REVERT_IN_GIT)
    (hold,) = result.gitops
    assert (hold.suspended, hold.previous) == (False, AUTOMATED)


async def test_an_application_without_automated_sync_is_left_alone(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_argocd_canary(kube_cluster, automated={"selfHeal": True, "enabled": False})
    for mode in ("suspend", "refuse"):
        kube_cluster.update(INGRESSES, NS, "web-canary", WEIGHT_20)
        result = await guarded_abort(kube, mode).run(dry_run=False)
        assert result.outcome in (ActionOutcome.DONE, ActionOutcome.ALREADY_DONE), (mode, result.reason)
        assert weight(kube_cluster) == "0"
        assert writes(kube_cluster, APPLICATIONS) == 0
        (hold,) = result.gitops
        assert hold.suspended


async def test_dry_run_plans_the_suspension_and_writes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_argocd_canary(kube_cluster)
    plan = await guarded_abort(kube, "suspend").run(dry_run=True)
    assert plan.outcome is ActionOutcome.PLANNED
    assert plan.changes[0].object == "Application/argocd/shop-web"
    assert "after suspending the Argo CD Application argocd/shop-web" in plan.reason
    assert writes(kube_cluster, INGRESSES) == writes(kube_cluster, APPLICATIONS) == 0


async def test_flux_kustomization_and_helmrelease_are_suspended_for_a_deployment_undo(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.2",
                    revision_history=["shop/web:1.1"])
    seed_kustomization(kube_cluster, "apps")
    seed_helmrelease(kube_cluster, "web", namespace=NS)
    label_for_flux(kube_cluster, DEPLOYMENTS, NS, "web", owner=KUSTOMIZATIONS, owner_name="apps")
    label_for_flux(kube_cluster, DEPLOYMENTS, NS, "web", owner=HELMRELEASES, owner_name="web",
                   owner_namespace=NS)
    undo = DeploymentUndo(kube=kube, target=f"{NS}/web", namespace=NS, deployment="web", settings=FAST)
    guard = GitOpsGuard(undo, kube=kube, target=f"{NS}/web", mode="suspend", tracking=Tracking(),
                        settings=FAST)

    result = await guard.run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert [c.describe() for c in result.changes[:2]] == [
        "Kustomization/flux-system/apps spec.suspend: False -> True",
        "HelmRelease/shop/web spec.suspend: False -> True",
    ]
    kustomization = kube_cluster.read(KUSTOMIZATIONS, "flux-system", "apps")
    helmrelease = kube_cluster.read(HELMRELEASES, NS, "web")
    assert kustomization is not None
    assert helmrelease is not None
    assert kustomization["spec"]["suspend"] is helmrelease["spec"]["suspend"] is True
    KUSTOMIZATION_SCHEMA.validate(kustomization)
    HELMRELEASE_SCHEMA.validate(helmrelease)
    assert [hold.resume for hold in result.gitops] == [
        "flux resume kustomization apps -n flux-system", "flux resume helmrelease web -n shop",
    ]


# --- faults: nothing is rolled back that the reconciler would undo -------------------------------------


async def test_a_forbidden_suspension_changes_nothing_and_names_verb_resource_and_namespace(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_argocd_canary(kube_cluster)
    kube_cluster.forbid("patch", APPLICATIONS, namespace="argocd")
    result = await guarded_abort(kube, "suspend").run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert weight(kube_cluster) == "20"
    assert 'may not patch applications in API group "argoproj.io" in namespace "argocd"' in result.reason
    assert "(nothing was changed)" in result.reason
    (hold,) = result.gitops
    assert not hold.suspended


@pytest.mark.parametrize("missing", ["application", "crd"])
async def test_a_missing_application_or_crd_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, missing: str
) -> None:
    seed_argocd_canary(kube_cluster)
    if missing == "application":
        del kube_cluster.objects[(APPLICATIONS, "argocd", "shop-web")]
    else:
        kube_cluster.fail("get", APPLICATIONS, status=404, times=None, body=status_body(
            404, "NotFound", "the server could not find the requested resource"))
    result = await guarded_abort(kube, "suspend").run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert weight(kube_cluster) == "20"
    assert result.reason.startswith(
        "the Argo CD Application argocd/shop-web, which reconciles Ingress/shop/web-canary and "
        "Deployment/shop/web-canary from Git, does not exist"
    )


async def test_a_conflict_while_suspending_is_read_again_and_applied(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_argocd_canary(kube_cluster)
    kube_cluster.conflict("patch", APPLICATIONS, namespace="argocd", name="shop-web")
    result = await guarded_abort(kube, "suspend").run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert "automated" not in application(kube_cluster)["spec"]["syncPolicy"]


async def test_a_run_after_a_failure_finds_the_suspension_done_and_finishes(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_argocd_canary(kube_cluster)
    kube_cluster.fail("patch", INGRESSES, status=403, namespace=NS, name="web-canary")
    first = await guarded_abort(kube, "suspend").run(dry_run=False)
    assert first.outcome is ActionOutcome.FAILED
    assert [c.object for c in first.changes] == ["Application/argocd/shop-web"]
    assert weight(kube_cluster) == "20"

    second = await guarded_abort(kube, "suspend").run(dry_run=False)
    assert second.outcome is ActionOutcome.DONE, second.reason
    assert "Application/argocd/shop-web" not in [c.object for c in second.changes]
    assert weight(kube_cluster) == "0"
    assert writes(kube_cluster, APPLICATIONS) == 1


# --- the daemon: events, audit trail and status page ---------------------------------------------


def daemon_settings(tmp_path: Path, mode: GitOpsMode) -> Settings:
    return Settings(
        interval_s=0.1,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        verification=VerificationSettings(window_s=0.5),
        events=EventsSettings(kubernetes_events=False),
        targets=(canary("checkout").model_copy(update={"gitops": mode}),),
    )


def seed_checkout(emu: ClusterEmulator) -> None:
    seed_deployment(emu, NS, "checkout-stable", replicas=2, image="shop/checkout:1.1",
                    labels={"app": "checkout", "track": "stable"})
    seed_deployment(emu, NS, "checkout-canary", replicas=1, image="shop/checkout:1.2",
                    labels={"app": "checkout", "track": "canary"})
    seed_ingress(emu, NS, "checkout-canary", service="checkout-canary", host="shop.example.com",
                 canary_weight=20)
    seed_application(emu, "checkout", destination_namespace=NS)
    track_by_argocd(emu, INGRESSES, NS, "checkout-canary", application="checkout")


async def run_daemon(
    emu: ClusterEmulator, kube: KubeClient, config: Settings
) -> tuple[Phase, list[AuditEntry], str]:
    """Run the daemon on a severe breach until its rollback ends: the run's phase, the audit log,
    the status page."""
    key = "shop/checkout"
    cluster = KubeTargets(kube=kube, settings=config, action_settings=FAST)
    async with (
        open_daemon(config, metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
                    targets=cluster) as daemon,
        aiohttp.ClientSession() as session,
    ):
        await wait_until(lambda: (run := daemon.rollbacks.runs.get(key)) is not None and not run.phase.active,
                         timeout_s=20, what="the rollback's verdict")  # fmt: skip
        phase = daemon.rollbacks.runs[key].phase
        status, page = await Api(session, daemon).call("GET", "/")
        assert status == 200
    store = open_store(config.store.url, data_dir=Path(config.store.data_dir))
    await store.open()
    try:
        history = await store.history(target=key)
    finally:
        await store.close()
    return phase, history, str(page)


async def test_the_daemon_tells_the_suspension_and_what_to_do(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, tmp_path: Path
) -> None:
    seed_checkout(kube_cluster)
    phase, history, page = await run_daemon(kube_cluster, kube, daemon_settings(tmp_path, "suspend"))

    assert phase is Phase.VERIFIED
    kinds = [entry.kind for entry in history]
    assert kinds.index("rollback.started") < kinds.index("gitops.suspended")
    assert kinds.index("gitops.suspended") < kinds.index("rollback.completed")
    (suspended,) = [entry.details for entry in history if entry.kind == "gitops.suspended"]
    (completed,) = [entry.details for entry in history if entry.kind == "rollback.completed"]
    assert (suspended["object"], suspended["previous"]) == ("Application/argocd/checkout", AUTOMATED)
    assert suspended["reconciles"] == ["Ingress/shop/checkout-canary"]
    assert completed["next_step"] == REVERT_IN_GIT
    assert REVERT_IN_GIT in page
    assert "automated" not in application_of(kube_cluster, "checkout")["spec"]["syncPolicy"]


async def test_the_daemon_refusing_under_gitops_escalates_and_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, tmp_path: Path
) -> None:
    seed_checkout(kube_cluster)
    phase, history, page = await run_daemon(kube_cluster, kube, daemon_settings(tmp_path, "refuse"))

    assert phase is Phase.REFUSED
    escalations = [entry.details for entry in history if entry.kind == "escalation.raised"]
    (gitops,) = [e for e in escalations if e["cause"] == "gitops"]
    assert gitops["reasons"][0].endswith(REVERT_IN_GIT)
    assert "gitops.suspended" not in [entry.kind for entry in history]
    ingress = kube_cluster.read(INGRESSES, NS, "checkout-canary")
    assert ingress is not None
    assert ingress["metadata"]["annotations"][CANARY_WEIGHT_ANNOTATION] == "20"
    assert REVERT_IN_GIT in page


def application_of(emu: ClusterEmulator, name: str) -> dict[str, Any]:
    app = emu.read(APPLICATIONS, "argocd", name)
    assert app is not None
    return app


async def test_a_rollout_abort_is_a_status_git_does_not_declare_so_argocd_is_left_alone(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2")
    seed_application(kube_cluster, "shop-web", destination_namespace=NS)
    track_by_argocd(kube_cluster, ROLLOUTS, NS, "web", application="shop-web")
    async with RolloutsController(kube_cluster):
        abort = RolloutAbort(kube=kube, target=f"{NS}/web", namespace=NS, rollout="web", settings=FAST)
        guard = GitOpsGuard(abort, kube=kube, target=f"{NS}/web", mode="refuse", tracking=Tracking(),
                            settings=FAST)
        result = await guard.run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes == (Change("Rollout/shop/web", "status.abort", None, True),)
    assert result.gitops == ()
    assert writes(kube_cluster, APPLICATIONS) == 0


async def test_an_httproute_synced_by_argocd_is_guarded_like_an_ingress(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=3, image="shop/web:1.1",
                    labels={"app": "web", "track": "stable"})
    seed_deployment(kube_cluster, NS, "web-canary", replicas=1, image="shop/web:1.2",
                    labels={"app": "web", "track": "canary"})
    seed_service(kube_cluster, NS, "web-stable", selector={"app": "web", "track": "stable"})
    seed_service(kube_cluster, NS, "web-canary", selector={"app": "web", "track": "canary"})
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])
    seed_application(kube_cluster, "shop-web", destination_namespace=NS)
    track_by_argocd(kube_cluster, HTTPROUTES, NS, "web", application="shop-web")
    router = GatewayApiRouter(kube=kube, namespace=NS, route="web", route_kind="HTTPRoute",
                              canary_service="web-canary", stable_service="web-stable")
    abort = CanaryAbort(kube=kube, target=f"{NS}/web", namespace=NS, router=router, canary="web-canary",
                        stable="web", settings=FAST)

    refused = await GitOpsGuard(abort, kube=kube, target=f"{NS}/web", mode="refuse", tracking=Tracking(),
                                settings=FAST).run(dry_run=False)
    assert refused.outcome is ActionOutcome.REFUSED
    assert "HTTPRoute/shop/web is reconciled from Git by the Argo CD Application argocd/shop-web" in (
        refused.reason
    )

    result = await GitOpsGuard(abort, kube=kube, target=f"{NS}/web", mode="suspend", tracking=Tracking(),
                               settings=FAST).run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes[0].object == "Application/argocd/shop-web"
    (hold,) = result.gitops
    assert hold.reconciles == ("HTTPRoute/shop/web",)
