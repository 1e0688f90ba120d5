"""KubeTargets: decision context, actions and availability read from the emulated API server."""

from __future__ import annotations

from datetime import UTC, datetime

import kmock
import pytest

from rollbackd.actions.base import ActionOutcome
from rollbackd.actions.bluegreen import BlueGreenSwitchBack
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.deployment_undo import DeploymentUndo
from rollbackd.actions.gitops import GitOpsGuard
from rollbackd.actions.steps import ActionSettings
from rollbackd.actions.targets import KubeTargets
from rollbackd.backoff import Backoff
from rollbackd.config.resolve import target_params
from rollbackd.config.settings import (
    ArgoCdSettings,
    GitOpsSettings,
    KubernetesSettings,
    Settings,
    Side,
    TargetSettings,
)
from rollbackd.decision.annotations import ETA_ANNOTATION, RISK_ANNOTATION
from rollbackd.decision.facts import is_newer, revision_of
from rollbackd.kube import KubeClient, KubeTemporary, objects
from rollbackd.kube.objects import fully_available
from rollbackd.model import Risk, Strategy
from rollbackd.params import TargetParams
from rollbackd.run import TargetAccess
from tests.kubefixtures import (
    DEPLOYMENTS,
    ClusterEmulator,
    Controllers,
    rollout_settled,
    seed_deployment,
    seed_ingress,
    seed_service,
    wait_until,
)

NS = "shop"
WALL = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
FAST = ActionSettings(backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=3,
                      availability_timeout_s=10.0, poll_s=0.02)
SETTINGS = Settings(targets=(
    TargetSettings(name="checkout", namespace=NS, strategy=Strategy.CANARY, baseline=Side(deployment="web"),
                   candidate=Side(deployment="web-canary"), ingress="web-canary"),
    TargetSettings(name="storefront", namespace=NS, strategy=Strategy.BLUE_GREEN,
                   baseline=Side(deployment="web-blue"), candidate=Side(deployment="web-green"),
                   service="web"),
    TargetSettings(name="api", namespace=NS, strategy=Strategy.DEPLOYMENT, candidate=Side(deployment="api"),
                   gitops="refuse"),
), gitops=GitOpsSettings(argocd=ArgoCdSettings(namespace="gitops")))


def params(name: str) -> TargetParams:
    target = next(t for t in SETTINGS.targets if t.name == name)
    return target_params(SETTINGS, target)


def cluster_on(kube: KubeClient, *, facts_max_age_s: float = 0.0) -> KubeTargets:
    """Targets of SETTINGS; facts are read at every call unless ``facts_max_age_s`` says otherwise."""
    kubernetes = KubernetesSettings(facts_max_age_s=facts_max_age_s)
    return KubeTargets(kube=kube, settings=SETTINGS, kubernetes=kubernetes, action_settings=FAST,
                       wall_clock=lambda: WALL)


def seed_canary(emu: ClusterEmulator, *, annotations: dict[str, str] | None = None,
                stable: bool = True, stable_ready: bool = True) -> None:
    if stable:
        seed_deployment(emu, NS, "web", replicas=3, image="shop/web:1.1",
                        labels={"app": "web", "track": "stable"}, ready=stable_ready)
    seed_deployment(emu, NS, "web-canary", replicas=1, image="shop/web:1.2",
                    labels={"app": "web", "track": "canary"})
    if annotations:
        emu.update(DEPLOYMENTS, NS, "web-canary", {"metadata": {"annotations": annotations}})
    seed_ingress(emu, NS, "web-canary", service="web-canary", host="shop.example.com", canary_weight=10)


def annotate(emu: ClusterEmulator, name: str, annotations: dict[str, str | None]) -> None:
    emu.update(DEPLOYMENTS, NS, name, {"metadata": {"annotations": annotations}})


async def test_risk_and_a_fix_forward_hold_come_from_the_candidate(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster, annotations={RISK_ANNOTATION: "high: drops column orders.legacy_id",
                                           ETA_ANNOTATION: "15m"})
    cluster = cluster_on(kube)

    facts = await cluster.facts(params("checkout"), loop_now=100.0)

    assert facts.risk is Risk.HIGH
    assert "drops column orders.legacy_id" in facts.risk_reason
    assert facts.hold is not None
    assert facts.hold.until == 1000.0
    assert facts.candidate_revision == 1
    assert facts.has_rollback_target
    assert facts.problems == ()


async def test_a_duration_eta_counts_from_when_it_was_first_seen(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster, annotations={ETA_ANNOTATION: "15m"})
    cluster = cluster_on(kube)
    key = params("checkout")

    first = await cluster.facts(key, loop_now=100.0)
    later = await cluster.facts(key, loop_now=400.0)
    annotate(kube_cluster, "web-canary", {ETA_ANNOTATION: "30m"})  # a new promise counts from now
    renewed = await cluster.facts(key, loop_now=500.0)
    annotate(kube_cluster, "web-canary", {ETA_ANNOTATION: None})
    gone = await cluster.facts(key, loop_now=600.0)
    annotate(kube_cluster, "web-canary", {ETA_ANNOTATION: "15m"})
    again = await cluster.facts(key, loop_now=700.0)

    assert first.hold is not None
    assert later.hold is not None
    assert renewed.hold is not None
    assert again.hold is not None
    assert (first.hold.until, later.hold.until) == (1000.0, 1000.0)
    assert later.hold.set_at == 100.0
    assert renewed.hold.until == 2300.0
    assert gone.hold is None
    assert again.hold.until == 1600.0


async def test_facts_younger_than_max_age_are_reused_without_asking_the_api(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster)
    cluster = cluster_on(kube, facts_max_age_s=30.0)
    key = params("checkout")

    first = await cluster.facts(key, loop_now=100.0)
    annotate(kube_cluster, "web-canary", {RISK_ANNOTATION: "high"})
    reads = len(kube_cluster[kmock.method.GET, DEPLOYMENTS])
    kept = await cluster.facts(key, loop_now=129.0)
    assert len(kube_cluster[kmock.method.GET, DEPLOYMENTS]) == reads  # nothing asked
    assert kept is first
    assert kept.risk is None
    assert cluster.facts_read_at(key.key) == 100.0

    aged = await cluster.facts(key, loop_now=130.0)
    assert aged.risk is Risk.HIGH
    assert cluster.facts_read_at(key.key) == 130.0
    assert len(kube_cluster[kmock.method.GET, DEPLOYMENTS]) > reads

    annotate(kube_cluster, "web-canary", {RISK_ANNOTATION: None})
    now = await cluster.facts(key, loop_now=131.0, fresh=True)  # younger, but read now
    assert now.risk is None
    assert cluster.facts_read_at(key.key) == 131.0


async def test_an_eta_as_a_time_is_placed_on_the_loop_clock(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster, annotations={ETA_ANNOTATION: "2026-11-24T02:10:00Z"})

    facts = await cluster_on(kube).facts(params("checkout"), loop_now=50.0)

    assert facts.hold is not None
    assert facts.hold.until == 650.0


async def test_a_bad_annotation_is_a_problem_not_an_error(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster, annotations={RISK_ANNOTATION: "maybe"})

    facts = await cluster_on(kube).facts(params("checkout"), loop_now=0.0)

    assert facts.risk is None
    assert "expected 'low' or 'high'" in facts.problems[0]


async def test_a_missing_stable_means_high_risk(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_canary(kube_cluster, stable=False)

    facts = await cluster_on(kube).facts(params("checkout"), loop_now=0.0)

    assert facts.risk is Risk.HIGH
    assert not facts.has_rollback_target
    assert facts.risk_reason == "the stable Deployment to go back to does not exist"


async def test_an_unhealthy_stable_means_high_risk(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_canary(kube_cluster, stable_ready=False)

    facts = await cluster_on(kube).facts(params("checkout"), loop_now=0.0)

    assert facts.risk is Risk.HIGH
    assert "the stable Deployment shop/web is unhealthy (0/3 replicas available)" in facts.risk_reason


async def test_a_missing_candidate_is_reported(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=3, image="shop/web:1.1")

    canary = await cluster_on(kube).facts(params("checkout"), loop_now=0.0)
    undo = await cluster_on(kube).facts(params("api"), loop_now=0.0)

    assert canary.problems == ("the candidate Deployment shop/web-canary does not exist",)
    assert canary.candidate_revision is None
    assert undo.risk is Risk.HIGH
    assert not undo.has_rollback_target
    assert undo.rollback_target_reason == "the candidate Deployment shop/api does not exist"


async def test_a_deployment_needs_an_earlier_revision(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "api", replicas=2, image="shop/api:1.0")

    facts = await cluster_on(kube).facts(params("api"), loop_now=0.0)

    assert facts.risk is Risk.HIGH
    assert not facts.has_rollback_target
    assert facts.rollback_target_reason == "no earlier revision of the Deployment to go back to"


async def test_a_newer_rollout_shows_as_a_newer_revision(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_deployment(kube_cluster, NS, "api", replicas=2, image="shop/api:1.1",
                    revision_history=["shop/api:1.0"])
    cluster = cluster_on(kube)
    judged = await cluster.facts(params("api"), loop_now=0.0)
    assert judged.candidate_revision == 2
    assert judged.has_rollback_target
    assert judged.risk is None

    await objects.patch_deployment(kube, namespace=NS, name="api", patch={
        "spec": {"template": {"spec": {"containers": [{"name": "api", "image": "shop/api:1.1.1"}]}}},
    })
    await wait_until(lambda: rollout_settled(kube_cluster.read(DEPLOYMENTS, NS, "api") or {}),
                     what="the fix's rollout")
    now = await cluster.facts(params("api"), loop_now=10.0)

    assert now.candidate_revision == 3
    assert cluster.last_seen_revision(params("api").key) == 3
    assert is_newer(judged.candidate_revision, revision_of(kube_cluster.read(DEPLOYMENTS, NS, "api")))


async def test_a_blue_green_previous_colour_at_zero_is_a_rollback_target(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "web-blue", replicas=0, image="shop/web:1.1",
                    labels={"app": "web", "version": "blue"})
    seed_deployment(kube_cluster, NS, "web-green", replicas=3, image="shop/web:1.2",
                    labels={"app": "web", "version": "green"})

    facts = await cluster_on(kube).facts(params("storefront"), loop_now=0.0)

    assert facts.has_rollback_target
    assert facts.risk is None


async def test_an_api_that_keeps_failing_raises_after_the_retries(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster)
    failed = kube_cluster.fail("get", DEPLOYMENTS, status=500, namespace=NS, name="web-canary", times=None)

    with pytest.raises(KubeTemporary):
        await cluster_on(kube).facts(params("checkout"), loop_now=0.0)
    assert len(failed) == FAST.attempts


async def test_serving_available_looks_at_the_version_traffic_went_back_to(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster)
    seed_deployment(kube_cluster, NS, "web-blue", replicas=3, image="shop/web:1.1", ready=False,
                    labels={"app": "web", "version": "blue"})
    seed_deployment(kube_cluster, NS, "web-green", replicas=3, image="shop/web:1.2",
                    labels={"app": "web", "version": "green"})
    seed_deployment(kube_cluster, NS, "api", replicas=2, image="shop/api:1.1")
    cluster = cluster_on(kube)

    assert await cluster.serving_available(params("checkout")) is True  # the stable Deployment
    assert await cluster.serving_available(params("storefront")) is False  # blue, not ready
    assert await cluster.serving_available(params("api")) is True  # the Deployment itself

    kube_cluster.update(DEPLOYMENTS, NS, "web", {"status": {"availableReplicas": 1}})
    assert await cluster.serving_available(params("checkout")) is False
    del kube_cluster.objects[DEPLOYMENTS, NS, "api"]
    assert await cluster.serving_available(params("api")) is False
    kube_cluster.fail("get", DEPLOYMENTS, status=503, namespace=NS, name="web-green", times=None)
    kube_cluster.fail("get", DEPLOYMENTS, status=503, namespace=NS, name="web-blue", times=None)
    assert await cluster.serving_available(params("storefront")) is None


async def test_a_stalled_rollout_is_not_serving_even_with_the_old_pods_available(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_deployment(kube_cluster, NS, "api", replicas=2, image="shop/api:1.1",
                    revision_history=["shop/api:1.0"])
    kube_controllers.stalled.add((NS, "api"))
    await objects.patch_deployment(kube, namespace=NS, name="api", patch={
        "spec": {"template": {"spec": {"containers": [{"name": "api", "image": "shop/api:1.0"}]}}},
    })

    def stalled() -> bool:
        status = (kube_cluster.read(DEPLOYMENTS, NS, "api") or {}).get("status") or {}
        return bool(status.get("observedGeneration") == 2 and status.get("replicas") == 4)

    await wait_until(stalled, what="the stalled rollout")

    assert fully_available(kube_cluster.read(DEPLOYMENTS, NS, "api"))  # the old pods still count
    assert await cluster_on(kube).serving_available(params("api")) is False


async def test_actions_fit_each_strategy(kube: KubeClient) -> None:
    cluster: TargetAccess = cluster_on(kube)

    guarded = [cluster.action(params(name)) for name in ("checkout", "storefront", "api")]
    assert all(isinstance(action, GitOpsGuard) for action in guarded)
    # Every action is guarded against GitOps reconcilers: by the target's mode, else gitops.mode.
    assert [(g.mode, g.tracking.argocd_namespace) for g in guarded if isinstance(g, GitOpsGuard)] == [
        ("suspend", "gitops"), ("suspend", "gitops"), ("refuse", "gitops"),
    ]
    canary, blue_green, undo = (g.action if isinstance(g, GitOpsGuard) else g for g in guarded)

    assert isinstance(canary, CanaryAbort)
    assert (canary.router.source, canary.canary, canary.stable) == (
        "Ingress shop/web-canary", "web-canary", "web")
    assert isinstance(blue_green, BlueGreenSwitchBack)
    assert (blue_green.service, blue_green.healthy, blue_green.bad) == ("web", "web-blue", "web-green")
    assert isinstance(undo, DeploymentUndo)
    assert undo.deployment == "api"
    assert undo.bad_revision is None  # no facts read yet
    assert {a.settings for a in (canary, blue_green, undo)} == {FAST}
    with pytest.raises(LookupError, match="no target 'shop/nope'"):
        cluster.action(TargetParams(key="shop/nope", strategy=Strategy.CANARY, interval_s=10.0))


async def test_an_undo_takes_the_revision_facts_judged(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_deployment(kube_cluster, NS, "api", replicas=2, image="shop/api:1.1",
                    revision_history=["shop/api:1.0"])
    cluster = cluster_on(kube)
    judged = await cluster.facts(params("api"), loop_now=0.0)

    result = await cluster.action(params("api")).run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert (result.from_revision, result.to_revision) == (2, 1)
    assert await cluster.serving_available(params("api")) is True

    # The daemon passes the revision it judged: running the action again changes nothing.
    again = await cluster.action(params("api"), bad_revision=judged.candidate_revision).run(dry_run=False)
    assert again.outcome is ActionOutcome.ALREADY_DONE
    deployment = kube_cluster.read(DEPLOYMENTS, NS, "api")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "shop/api:1.0"


async def test_a_canary_rolled_back_through_the_cluster(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster)
    seed_service(kube_cluster, NS, "web", selector={"app": "web", "track": "stable"})
    cluster = cluster_on(kube)

    planned = await cluster.action(params("checkout")).run(dry_run=True)
    result = await cluster.action(params("checkout")).run(dry_run=False)

    assert planned.outcome is ActionOutcome.PLANNED
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes == planned.changes
    assert result.target == "shop/checkout"
    assert await cluster.serving_available(params("checkout")) is True


def test_action_settings_come_from_the_kubernetes_section() -> None:
    kubernetes = KubernetesSettings(retries=2, availability_timeout_s=90.0)
    derived = ActionSettings.from_kubernetes(kubernetes, poll_s=0.5)
    assert (derived.attempts, derived.availability_timeout_s, derived.poll_s) == (3, 90.0, 0.5)
    with pytest.raises(ValueError, match="attempts"):
        ActionSettings(attempts=0)


async def test_the_cluster_defaults_to_the_settings_kubernetes_section(kube: KubeClient) -> None:
    kubernetes = KubernetesSettings(retries=1, availability_timeout_s=30.0)
    settings = SETTINGS.model_copy(update={"kubernetes": kubernetes})
    cluster = KubeTargets(kube=kube, settings=settings)
    assert (cluster.action_settings.attempts, cluster.action_settings.availability_timeout_s) == (2, 30.0)


async def test_reloaded_targets_are_taken_over(kube: KubeClient) -> None:
    cluster = cluster_on(kube)
    only_api = Settings(targets=tuple(t for t in SETTINGS.targets if t.name == "api"))
    cluster.reconfigure(only_api)
    assert cluster.target(f"{NS}/api").name == "api"
    with pytest.raises(LookupError):
        cluster.target(f"{NS}/checkout")
