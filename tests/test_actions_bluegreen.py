"""Blue-green switch-back against the emulated API server, through the real client, over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses

import kmock
import pytest

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.bluegreen import BlueGreenSwitchBack
from rollbackd.actions.steps import ActionSettings
from rollbackd.backoff import Backoff
from rollbackd.kube import KubeClient
from tests.kubefixtures import (
    DEPLOYMENTS,
    ENDPOINTSLICES,
    SERVICES,
    ClusterEmulator,
    Controllers,
    rollout_settled,
    seed_deployment,
    seed_service,
    wait_until,
)

NS = "shop"
FAST = ActionSettings(backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=4,
                      availability_timeout_s=10.0, poll_s=0.02)
BLUE = {"app": "web", "version": "blue"}
GREEN = {"app": "web", "version": "green"}
SCALE = kmock.subresource("scale")


def switch_back(kube: KubeClient, *, settings: ActionSettings = FAST) -> BlueGreenSwitchBack:
    return BlueGreenSwitchBack(kube=kube, target=f"{NS}/web", namespace=NS, service="web",
                               healthy="web-blue", bad="web-green", settings=settings)


def report(result: ActionResult) -> None:
    """The action's own API time, for the benchmark to quote (never asserted on)."""
    print(f"\n[timing] {result.action} {result.outcome}: api_s={result.api_s:.4f} wait_s={result.wait_s:.4f} "
          f"changes={len(result.changes)}")


def writes(emu: ClusterEmulator) -> list[kmock.Request]:
    return list(emu[kmock.method.PATCH]) + list(emu[kmock.method.PUT]) + list(emu[kmock.method.POST])


def replicas(emu: ClusterEmulator, name: str) -> int:
    deployment = emu.read(DEPLOYMENTS, NS, name)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


def selector(emu: ClusterEmulator) -> dict[str, str]:
    service = emu.read(SERVICES, NS, "web")
    assert service is not None
    return dict(service["spec"]["selector"])


def endpoint_pods(emu: ClusterEmulator) -> list[str]:
    return sorted(endpoint["targetRef"]["name"] for item in emu.read_all(ENDPOINTSLICES, NS)
                  for endpoint in item["endpoints"])


def seed_pair(emu: ClusterEmulator, *, blue_replicas: int = 3, serving: dict[str, str] = GREEN) -> None:
    """Blue (1.1, the previous colour) and green (1.2, the new one, 3 replicas); the Service serves
    ``serving``."""
    seed_deployment(emu, NS, "web-blue", replicas=blue_replicas, image="shop/web:1.1", labels=BLUE,
                    container="web")
    seed_deployment(emu, NS, "web-green", replicas=3, image="shop/web:1.2", labels=GREEN, container="web")
    seed_service(emu, NS, "web", selector=serving)


def assert_switched_back(emu: ClusterEmulator) -> None:
    assert selector(emu) == BLUE
    assert replicas(emu, "web-green") == 0
    assert rollout_settled(emu.read(DEPLOYMENTS, NS, "web-blue") or {})
    pods = endpoint_pods(emu)
    assert pods
    assert all(pod.startswith("web-blue-") for pod in pods)


async def test_the_service_goes_back_to_blue_then_green_scales_down(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster)

    result = await switch_back(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes == (
        Change("Service/shop/web", "spec.selector", GREEN, BLUE),
        Change("Deployment/shop/web-green", "spec.replicas", 3, 0),
    )
    assert result.api_s > 0
    assert result.details["selector"] == BLUE
    assert_switched_back(kube_cluster)
    # Only the selector's differing key was written, conditional on the version read.
    service_patches = [request.data for request in kube_cluster[kmock.method.PATCH, SERVICES]]
    assert len(service_patches) == 1
    assert service_patches[0]["spec"] == {"selector": {"version": "blue"}}
    assert "resourceVersion" in service_patches[0]["metadata"]


async def test_a_healthy_colour_at_zero_is_scaled_up_and_awaited_first(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster, blue_replicas=0)
    order: list[str] = []

    def note(request: kmock.Request) -> None:
        blue = kube_cluster.read(DEPLOYMENTS, NS, "web-blue") or {}
        order.append(f"{request.resource.plural if request.resource else '?'}:{request.name}:"
                     f"blue-ready={rollout_settled(blue) and replicas(kube_cluster, 'web-blue') > 0}")
        raise NotImplementedError  # kmock: "seen, nothing to answer": the emulator answers, every time

    kube_cluster[kmock.method.PATCH] << note

    result = await switch_back(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes == (
        Change("Deployment/shop/web-blue", "spec.replicas", 0, 3),
        Change("Service/shop/web", "spec.selector", GREEN, BLUE),
        Change("Deployment/shop/web-green", "spec.replicas", 3, 0),
    )
    assert result.wait_s > 0
    assert_switched_back(kube_cluster)
    assert replicas(kube_cluster, "web-blue") == 3
    # The Service moved only once blue was fully available.
    assert order == [
        "deployments:web-blue:blue-ready=False",
        "services:web:blue-ready=True",
        "deployments:web-green:blue-ready=True",
    ]


async def test_a_service_already_switched_back_is_not_patched(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster, serving=BLUE)

    result = await switch_back(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes == (Change("Deployment/shop/web-green", "spec.replicas", 3, 0),)
    assert len(kube_cluster[kmock.method.PATCH, SERVICES]) == 0
    assert_switched_back(kube_cluster)


async def test_a_narrower_selector_that_picks_blue_only_counts_as_switched_back(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster, serving={"version": "blue"})

    planned = await switch_back(kube).run(dry_run=True)

    assert [change.object for change in planned.changes] == ["Deployment/shop/web-green"]


async def test_all_done_already(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster, serving=BLUE)
    kube_cluster.update(DEPLOYMENTS, NS, "web-green", {"spec": {"replicas": 0}})
    await wait_until(lambda: rollout_settled(kube_cluster.read(DEPLOYMENTS, NS, "web-green") or {}),
                     what="green at 0")

    result = await switch_back(kube).run(dry_run=False)
    dry = await switch_back(kube).run(dry_run=True)

    assert result.outcome is ActionOutcome.ALREADY_DONE, result.reason
    assert dry.outcome is ActionOutcome.ALREADY_DONE
    assert result.changes == ()
    assert writes(kube_cluster) == []


async def test_dry_run_lists_the_plan_and_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster, blue_replicas=0)

    result = await switch_back(kube).run(dry_run=True)
    report(result)

    assert result.outcome is ActionOutcome.PLANNED
    assert [change.describe() for change in result.changes] == [
        "Deployment/shop/web-blue spec.replicas: 0 -> 3",
        "Service/shop/web spec.selector: "
        "{'app': 'web', 'version': 'green'} -> {'app': 'web', 'version': 'blue'}",
        "Deployment/shop/web-green spec.replicas: 3 -> 0",
    ]
    assert result.wait_s == 0
    assert writes(kube_cluster) == []
    assert selector(kube_cluster) == GREEN
    assert replicas(kube_cluster, "web-blue") == 0


def interrupt_after(emu: ClusterEmulator, steps: int) -> None:
    """What the first ``steps`` steps of a switch-back write, written straight into the store."""
    if steps >= 1:
        emu.update(DEPLOYMENTS, NS, "web-blue", {"spec": {"replicas": 3}})
    if steps >= 2:
        emu.update(SERVICES, NS, "web", {"spec": {"selector": {"version": "blue"}}})
    if steps >= 3:
        emu.update(DEPLOYMENTS, NS, "web-green", {"spec": {"replicas": 0}})


@pytest.mark.parametrize(("done_steps", "left"), [
    (1, ["Service/shop/web", "Deployment/shop/web-green"]),
    (2, ["Deployment/shop/web-green"]),
    (3, []),
])
async def test_running_again_after_an_interruption_ends_in_the_same_state(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, done_steps: int,
    left: list[str],
) -> None:
    seed_pair(kube_cluster, blue_replicas=0)
    interrupt_after(kube_cluster, done_steps)

    result = await switch_back(kube).run(dry_run=False)

    assert result.outcome is (ActionOutcome.DONE if left else ActionOutcome.ALREADY_DONE), result.reason
    assert [change.object for change in result.changes] == left
    assert_switched_back(kube_cluster)


async def test_cancelled_while_blue_starts_then_run_again(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_pair(kube_cluster, blue_replicas=0)
    # No deployment controller yet: blue's scale-up lands but never becomes available; the run waits.
    task = asyncio.create_task(switch_back(kube).run(dry_run=False))
    await wait_until(lambda: replicas(kube_cluster, "web-blue") == 3, what="the scale-up of blue")
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert selector(kube_cluster) == GREEN  # cancelled before the switch
    assert replicas(kube_cluster, "web-green") == 3

    async with Controllers(kube_cluster):
        result = await switch_back(kube).run(dry_run=False)
        report(result)

        assert result.outcome is ActionOutcome.DONE, result.reason
        assert [change.object for change in result.changes] == [
            "Service/shop/web", "Deployment/shop/web-green",
        ]
        assert_switched_back(kube_cluster)
    assert len(kube_cluster[kmock.method.PATCH, DEPLOYMENTS][kmock.name("web-blue")]) == 1


async def test_conflicts_and_server_errors_are_retried_and_each_change_applied_once(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster)
    conflicted = kube_cluster.conflict("patch", SERVICES, namespace=NS, name="web")
    failed_slices = kube_cluster.fail("list", ENDPOINTSLICES, status=500, namespace=NS, times=2)
    failed_scale = kube_cluster.fail("patch", DEPLOYMENTS, status=503, namespace=NS, name="web-green",
                                     subresource="scale", times=1)

    result = await switch_back(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert (len(conflicted), len(failed_slices), len(failed_scale)) == (1, 2, 1)
    assert len(result.changes) == 2
    assert len(kube_cluster[kmock.method.PATCH, SERVICES]) == 2  # 1 conflict + 1 write
    assert len(kube_cluster[kmock.method.PATCH, DEPLOYMENTS][SCALE]) == 2
    assert_switched_back(kube_cluster)


async def test_forbidden_service_patch_leaves_green_serving(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster)
    kube_cluster.forbid("patch", SERVICES, namespace=NS, name="web")

    result = await switch_back(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.FAILED
    assert "may not patch services" in result.reason
    assert 'in API group "" in namespace "shop"' in result.reason
    assert "(nothing was changed)" in result.reason
    assert result.changes == ()
    # The bad colour was not scaled down: it is still the one serving.
    assert replicas(kube_cluster, "web-green") == 3
    assert selector(kube_cluster) == GREEN


async def test_forbidden_scale_up_is_reported(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_pair(kube_cluster, blue_replicas=0)
    kube_cluster.forbid("patch", DEPLOYMENTS, namespace=NS, name="web-blue", subresource="scale")

    result = await switch_back(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert "may not patch deployments/scale" in result.reason
    assert 'in namespace "shop"' in result.reason
    assert selector(kube_cluster) == GREEN


async def test_a_selector_that_would_also_pick_green_is_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "web-blue", replicas=3, image="shop/web:1.1", labels={"app": "web"})
    seed_deployment(kube_cluster, NS, "web-green", replicas=3, image="shop/web:1.2", labels=GREEN)
    seed_service(kube_cluster, NS, "web", selector=GREEN)

    result = await switch_back(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert "(app=web) also picks the pods of shop/web-green" in result.reason
    assert writes(kube_cluster) == []


@pytest.mark.parametrize(("missing", "what"), [
    ((SERVICES, "web"), "the Service shop/web"),
    ((DEPLOYMENTS, "web-blue"), "the previous colour's Deployment shop/web-blue"),
])
async def test_missing_objects_are_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient, missing: tuple[kmock.resource, str], what: str
) -> None:
    seed_pair(kube_cluster)
    del kube_cluster.objects[missing[0], NS, missing[1]]

    result = await switch_back(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert result.reason.startswith(f"{what} (nothing to go back to) does not exist"
                                    if "colour" in what else f"{what} does not exist")
    assert writes(kube_cluster) == []


async def test_a_service_that_never_serves_blue_fails_after_the_timeout(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    """No EndpointSlice controller here: the switch is made but the endpoints never follow."""
    seed_pair(kube_cluster)
    settings = dataclasses.replace(FAST, availability_timeout_s=0.2)

    result = await switch_back(kube, settings=settings).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert "serve from web-blue's pods only (its EndpointSlices listing ready endpoints of ReplicaSet " \
        "web-blue-" in result.reason
    assert "did not happen within the availability timeout" in result.reason
    assert result.changes == (Change("Service/shop/web", "spec.selector", GREEN, BLUE),)
    assert replicas(kube_cluster, "web-green") == 3  # never scaled down while not proven
