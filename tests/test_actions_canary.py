"""Canary abort (ingress-nginx) against the emulated API server, through the real client, over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses

import kmock
import pytest

from rollbackd.actions.base import ActionOutcome, ActionResult, Change, Waiting
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.routers.ingress_nginx import ROUTING_ANNOTATIONS, IngressNginxRouter
from rollbackd.actions.steps import ActionSettings
from rollbackd.backoff import Backoff
from rollbackd.kube import KubeClient
from rollbackd.kube.objects import CANARY_ANNOTATION, CANARY_WEIGHT_ANNOTATION
from tests.kubefixtures import (
    DEPLOYMENTS,
    INGRESSES,
    ClusterEmulator,
    Controllers,
    rollout_settled,
    seed_deployment,
    seed_ingress,
    seed_service,
    wait_until,
)

NS = "shop"
FAST = ActionSettings(backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=4,
                      availability_timeout_s=10.0, poll_s=0.02)
BY_HEADER = "nginx.ingress.kubernetes.io/canary-by-header"
BY_HEADER_VALUE = "nginx.ingress.kubernetes.io/canary-by-header-value"
INGRESS = "Ingress/shop/web-canary"
SCALE = kmock.subresource("scale")


def abort(
    kube: KubeClient, *, settings: ActionSettings = FAST, remove_canary_marker: bool = False
) -> CanaryAbort:
    router = IngressNginxRouter(kube=kube, namespace=NS, ingress="web-canary",
                                remove_canary_marker=remove_canary_marker)
    return CanaryAbort(kube=kube, target=f"{NS}/web", namespace=NS, router=router,
                       canary="web-canary", stable="web", settings=settings)


def report(result: ActionResult) -> None:
    """The action's own API time, for the benchmark to quote (never asserted on)."""
    print(f"\n[timing] {result.action} {result.outcome}: api_s={result.api_s:.4f} wait_s={result.wait_s:.4f} "
          f"changes={len(result.changes)}")


def writes(emu: ClusterEmulator) -> list[kmock.Request]:
    """Every write the API server received for the canary's objects (failed ones included)."""
    return list(emu[kmock.method.PATCH]) + list(emu[kmock.method.PUT]) + list(emu[kmock.method.POST])


def canary_annotations(emu: ClusterEmulator) -> dict[str, str]:
    ingress = emu.read(INGRESSES, NS, "web-canary")
    assert ingress is not None
    return dict(ingress["metadata"].get("annotations") or {})


def replicas(emu: ClusterEmulator, name: str) -> int:
    deployment = emu.read(DEPLOYMENTS, NS, name)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


def seed_canary(emu: ClusterEmulator, *, weight: int = 20, canary_replicas: int = 1, header: bool = True,
                stable_ready: bool = True) -> None:
    """A stable release (3 replicas) with a canary (1 replica) taking ``weight`` % of the traffic, and
    with ``header``, also every request carrying ``X-Canary: always``."""
    seed_deployment(emu, NS, "web", replicas=3, image="shop/web:1.1",
                    labels={"app": "web", "track": "stable"}, revision_history=["shop/web:1.0"],
                    ready=stable_ready)
    seed_deployment(emu, NS, "web-canary", replicas=canary_replicas, image="shop/web:1.2",
                    labels={"app": "web", "track": "canary"})
    seed_service(emu, NS, "web", selector={"app": "web", "track": "stable"})
    seed_service(emu, NS, "web-canary", selector={"app": "web", "track": "canary"})
    seed_ingress(emu, NS, "web", service="web", host="shop.example.com")
    seed_ingress(emu, NS, "web-canary", service="web-canary", host="shop.example.com", canary_weight=weight)
    if header:
        emu.update(INGRESSES, NS, "web-canary", {"metadata": {"annotations": {
            BY_HEADER: "X-Canary", BY_HEADER_VALUE: "always",
            "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
        }}})


async def test_abort_stops_traffic_then_scales_the_canary_down(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster)
    main_before = kube_cluster.read(INGRESSES, NS, "web")

    result = await abort(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes == (
        Change(INGRESS, f"metadata.annotations[{CANARY_WEIGHT_ANNOTATION}]", "20", "0"),
        Change(INGRESS, f"metadata.annotations[{BY_HEADER}]", "X-Canary", None),
        Change(INGRESS, f"metadata.annotations[{BY_HEADER_VALUE}]", "always", None),
        Change("Deployment/shop/web-canary", "spec.replicas", 1, 0),
    )
    assert result.api_s > 0
    # No weighted traffic, no routing by header; the Ingress stays a (silent) canary.
    assert canary_annotations(kube_cluster) == {
        CANARY_ANNOTATION: "true", CANARY_WEIGHT_ANNOTATION: "0",
        "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
    }
    assert replicas(kube_cluster, "web-canary") == 0
    assert rollout_settled(kube_cluster.read(DEPLOYMENTS, NS, "web") or {})
    assert kube_cluster.read(INGRESSES, NS, "web") == main_before
    # The weight went to 0 first, in a write of its own; the removals came next, as null values.
    ingress_patches = [request.data for request in kube_cluster[kmock.method.PATCH, INGRESSES]]
    assert ingress_patches == [
        {"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: "0"}}},
        {"metadata": {"annotations": {BY_HEADER: None, BY_HEADER_VALUE: None}}},
    ]
    assert len(kube_cluster[kmock.method.PATCH, DEPLOYMENTS][SCALE]) == 1


async def test_removing_the_canary_marker_too(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster)

    result = await abort(kube, remove_canary_marker=True).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert canary_annotations(kube_cluster) == {"nginx.ingress.kubernetes.io/proxy-body-size": "8m"}
    fields = [change.field for change in result.changes]
    assert fields[0] == f"metadata.annotations[{CANARY_WEIGHT_ANNOTATION}]"
    assert result.changes[0].after == "0"
    assert set(fields[1:4]) == {f"metadata.annotations[{key}]"
                                for key in (BY_HEADER, BY_HEADER_VALUE, CANARY_ANNOTATION)}
    assert fields[4] == f"metadata.annotations[{CANARY_WEIGHT_ANNOTATION}]"
    assert result.changes[4].before == "0"  # removed after it had gone to 0
    ingress_patches = [request.data for request in kube_cluster[kmock.method.PATCH, INGRESSES]]
    assert ingress_patches[0] == {"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: "0"}}}


async def test_the_plan_removing_the_marker_shows_the_weight_as_it_will_be(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster, header=False)

    planned = await abort(kube, remove_canary_marker=True).run(dry_run=True)

    assert [change.describe() for change in planned.changes] == [
        f"{INGRESS} metadata.annotations[{CANARY_WEIGHT_ANNOTATION}]: '20' -> '0'",
        f"{INGRESS} metadata.annotations[{CANARY_ANNOTATION}]: 'true' -> None",
        f"{INGRESS} metadata.annotations[{CANARY_WEIGHT_ANNOTATION}]: '0' -> None",
        "Deployment/shop/web-canary spec.replicas: 1 -> 0",
    ]


async def test_a_canary_already_aborted_is_left_alone(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster, weight=0, canary_replicas=0, header=False)

    result = await abort(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.ALREADY_DONE, result.reason
    assert result.changes == ()
    assert "stable Deployment is fully available" in result.reason
    assert writes(kube_cluster) == []


async def test_only_what_is_left_is_planned(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster, weight=0)

    planned = await abort(kube).run(dry_run=True)

    assert planned.outcome is ActionOutcome.PLANNED
    assert [change.field for change in planned.changes] == [
        f"metadata.annotations[{BY_HEADER}]", f"metadata.annotations[{BY_HEADER_VALUE}]", "spec.replicas",
    ]


async def test_dry_run_lists_the_plan_and_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster)
    ingress_before = kube_cluster.read(INGRESSES, NS, "web-canary")

    result = await abort(kube).run(dry_run=True)
    report(result)

    assert result.outcome is ActionOutcome.PLANNED
    assert result.reason == "would make 4 change(s) to abort the canary"
    assert [change.describe() for change in result.changes] == [
        f"{INGRESS} metadata.annotations[{CANARY_WEIGHT_ANNOTATION}]: '20' -> '0'",
        f"{INGRESS} metadata.annotations[{BY_HEADER}]: 'X-Canary' -> None",
        f"{INGRESS} metadata.annotations[{BY_HEADER_VALUE}]: 'always' -> None",
        "Deployment/shop/web-canary spec.replicas: 1 -> 0",
    ]
    assert writes(kube_cluster) == []
    assert kube_cluster.read(INGRESSES, NS, "web-canary") == ingress_before
    assert replicas(kube_cluster, "web-canary") == 1


def interrupt_after(emu: ClusterEmulator, steps: int) -> None:
    """What the first ``steps`` steps of an abort write, written straight into the store."""
    if steps >= 1:
        emu.update(INGRESSES, NS, "web-canary",
                   {"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: "0"}}})
    if steps >= 2:
        emu.update(INGRESSES, NS, "web-canary",
                   {"metadata": {"annotations": {BY_HEADER: None, BY_HEADER_VALUE: None}}})
    if steps >= 3:
        emu.update(DEPLOYMENTS, NS, "web-canary", {"spec": {"replicas": 0}})


@pytest.mark.parametrize("done_steps", [1, 2, 3])
async def test_running_again_after_an_interruption_ends_in_the_same_state(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, done_steps: int
) -> None:
    seed_canary(kube_cluster)
    interrupt_after(kube_cluster, done_steps)

    result = await abort(kube).run(dry_run=False)

    expected = {
        1: (ActionOutcome.DONE, [f"metadata.annotations[{BY_HEADER}]",
                                 f"metadata.annotations[{BY_HEADER_VALUE}]", "spec.replicas"]),
        2: (ActionOutcome.DONE, ["spec.replicas"]),
        3: (ActionOutcome.ALREADY_DONE, []),
    }[done_steps]
    assert result.outcome is expected[0], result.reason
    assert [change.field for change in result.changes] == expected[1]
    assert canary_annotations(kube_cluster) == {
        CANARY_ANNOTATION: "true", CANARY_WEIGHT_ANNOTATION: "0",
        "nginx.ingress.kubernetes.io/proxy-body-size": "8m",
    }
    assert replicas(kube_cluster, "web-canary") == 0


async def test_cancelled_while_waiting_for_the_stable_then_run_again(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster, stable_ready=False)  # the stable pods are still starting
    waits: list[Waiting | None] = []
    task = asyncio.create_task(abort(kube).run(dry_run=False, progress=waits.append))
    await wait_until(lambda: replicas(kube_cluster, "web-canary") == 0, what="the canary scale-down")
    await wait_until(lambda: bool(waits) and waits[-1] is not None, what="the wait for the stable Deployment")
    assert not task.done()  # still waiting for the stable Deployment
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    kube_cluster.update(DEPLOYMENTS, NS, "web", {"status": {"readyReplicas": 3, "availableReplicas": 3,
                                                            "unavailableReplicas": 0}})
    result = await abort(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.ALREADY_DONE, result.reason
    assert result.changes == ()
    assert len(kube_cluster[kmock.method.PATCH, INGRESSES]) == 2


async def test_conflicts_and_server_errors_are_retried_and_each_change_applied_once(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster)
    conflicted = kube_cluster.conflict("patch", INGRESSES, namespace=NS, name="web-canary")
    failed_scale = kube_cluster.fail("patch", DEPLOYMENTS, status=500, namespace=NS, name="web-canary",
                                     subresource="scale", times=2)
    failed_read = kube_cluster.fail("get", INGRESSES, status=503, namespace=NS, name="web-canary", times=1)

    result = await abort(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert (len(conflicted), len(failed_scale), len(failed_read)) == (1, 2, 1)
    assert len(result.changes) == 4
    assert len(kube_cluster[kmock.method.PATCH, INGRESSES]) == 3  # 2 writes + 1 conflict
    assert len(kube_cluster[kmock.method.PATCH, DEPLOYMENTS][SCALE]) == 3
    ingress = kube_cluster.read(INGRESSES, NS, "web-canary")
    assert ingress is not None
    assert ingress["metadata"]["generation"] == 1  # annotations only: no spec change
    assert canary_annotations(kube_cluster)[CANARY_WEIGHT_ANNOTATION] == "0"
    assert replicas(kube_cluster, "web-canary") == 0


async def test_forbidden_scale_is_reported_with_what_was_changed(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster)
    kube_cluster.forbid("patch", DEPLOYMENTS, namespace=NS, name="web-canary", subresource="scale")

    result = await abort(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.FAILED
    assert "may not patch deployments/scale" in result.reason
    assert 'in namespace "shop"' in result.reason
    assert 'resources: ["deployments/scale"]' in result.reason
    # Traffic to the canary did stop before the refusal, and the result says so.
    assert [change.field for change in result.changes] == [
        f"metadata.annotations[{CANARY_WEIGHT_ANNOTATION}]", f"metadata.annotations[{BY_HEADER}]",
        f"metadata.annotations[{BY_HEADER_VALUE}]",
    ]
    assert "changed before the failure" in result.reason
    assert replicas(kube_cluster, "web-canary") == 1


async def test_forbidden_ingress_patch_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster)
    kube_cluster.forbid("patch", INGRESSES, namespace=NS, name="web-canary")

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert "may not patch ingresses" in result.reason
    assert 'in API group "networking.k8s.io" in namespace "shop"' in result.reason
    assert "(nothing was changed)" in result.reason
    assert result.changes == ()
    assert replicas(kube_cluster, "web-canary") == 1


@pytest.mark.parametrize(("missing", "what"), [
    ("stable", "the stable Deployment shop/web"),
    ("ingress", "the canary Ingress shop/web-canary"),
])
async def test_missing_objects_are_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient, missing: str, what: str
) -> None:
    seed_canary(kube_cluster)
    resource, name = (DEPLOYMENTS, "web") if missing == "stable" else (INGRESSES, "web-canary")
    del kube_cluster.objects[resource, NS, name]

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert result.reason.startswith(what)
    assert "does not exist" in result.reason
    assert writes(kube_cluster) == []


async def test_a_deleted_canary_deployment_counts_as_scaled_down(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_canary(kube_cluster, header=False)
    del kube_cluster.objects[DEPLOYMENTS, NS, "web-canary"]

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert [change.field for change in result.changes] == [
        f"metadata.annotations[{CANARY_WEIGHT_ANNOTATION}]",
    ]
    assert result.details["canary_deployment_exists"] is False


async def test_an_unavailable_stable_fails_after_the_timeout(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster, stable_ready=False)
    settings = dataclasses.replace(FAST, availability_timeout_s=0.2)

    result = await abort(kube, settings=settings).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert "the stable Deployment shop/web to have all its replicas available did not happen" in result.reason
    assert len(result.changes) == 4


def test_routing_annotations_are_the_nginx_ones() -> None:
    assert all(key.startswith("nginx.ingress.kubernetes.io/canary-by-") or key.endswith("canary-weight-total")
               for key in ROUTING_ANNOTATIONS)
    assert CANARY_ANNOTATION not in ROUTING_ANNOTATIONS
