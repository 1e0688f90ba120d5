"""Canary abort through an Istio VirtualService, against the emulated API server through the real
client; every VirtualService written is checked against Istio's published CRD schema."""

from __future__ import annotations

from typing import Any

import kmock
import pytest

from rollbackd.actions.base import ActionOutcome, Change
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.routers.istio import Destination, IstioRouter, virtual_service_split
from rollbackd.actions.steps import ActionSettings
from rollbackd.backoff import Backoff
from rollbackd.kube import KubeClient
from tests import crdschemas
from tests.kubefixtures import (
    DEPLOYMENTS,
    VIRTUALSERVICES,
    ClusterEmulator,
    Controllers,
    Obj,
    seed_deployment,
    seed_virtual_service,
)

NS = "shop"
FAST = ActionSettings(
    backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=4, availability_timeout_s=5.0, poll_s=0.02
)
VS = "VirtualService/shop/web"
BY_SUBSET = (Destination("web", "canary"), Destination("web", "stable"))
BY_HOST = (Destination("web-canary"), Destination("web-stable"))


def abort(kube: KubeClient, destinations: tuple[Destination, Destination] = BY_SUBSET) -> CanaryAbort:
    router = IstioRouter(
        kube=kube, namespace=NS, virtual_service="web", canary=destinations[0], stable=destinations[1]
    )
    return CanaryAbort(
        kube=kube,
        target=f"{NS}/web",
        namespace=NS,
        router=router,
        canary="web-canary",
        stable="web",
        settings=FAST,
    )


def seed_release(emu: ClusterEmulator) -> None:
    seed_deployment(
        emu, NS, "web", replicas=3, image="shop/web:1.1", labels={"app": "web", "track": "stable"}
    )
    seed_deployment(
        emu, NS, "web-canary", replicas=1, image="shop/web:1.2", labels={"app": "web", "track": "canary"}
    )


def virtual_service(emu: ClusterEmulator) -> Obj:
    stored = emu.read(VIRTUALSERVICES, NS, "web")
    assert stored is not None
    return stored


def weights(emu: ClusterEmulator) -> list[list[tuple[str, str | None, Any]]]:
    return [
        [
            (item["destination"]["host"], item["destination"].get("subset"), item.get("weight"))
            for item in http["route"]
        ]
        for http in virtual_service(emu)["spec"]["http"]
    ]


def replicas(emu: ClusterEmulator, name: str) -> int:
    deployment = emu.read(DEPLOYMENTS, NS, name)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


async def test_subsets_of_one_host_every_http_route_that_names_both(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_virtual_service(
        kube_cluster,
        NS,
        "web",
        gateways=["shop-gateway"],
        http=[
            [
                {"host": "web", "subset": "stable", "weight": 75},
                {"host": "web", "subset": "canary", "weight": 25},
            ],
            [
                {"host": "web.shop.svc.cluster.local", "subset": "stable", "weight": 90},
                {"host": "web.shop.svc.cluster.local", "subset": "canary", "weight": 10},
            ],
            [{"host": "web", "subset": "stable"}],  # one destination: everything, untouched
        ],
    )

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes == (
        Change(VS, "spec.http[0].route[1].weight", 25, 0),
        Change(VS, "spec.http[0].route[0].weight", 75, 100),
        Change(VS, "spec.http[1].route[1].weight", 10, 0),
        Change(VS, "spec.http[1].route[0].weight", 90, 100),
        Change("Deployment/shop/web-canary", "spec.replicas", 1, 0),
    )
    assert weights(kube_cluster) == [
        [("web", "stable", 100), ("web", "canary", 0)],
        [("web.shop.svc.cluster.local", "stable", 100), ("web.shop.svc.cluster.local", "canary", 0)],
        [("web", "stable", None)],
    ]
    assert (
        result.details["split_before"]["canary_percent"],
        result.details["split_after"]["canary_percent"],
    ) == (25.0, 0.0)
    crdschemas.validate(virtual_service(kube_cluster))
    [patch] = list(kube_cluster[kmock.method.PATCH, VIRTUALSERVICES])
    assert patch.data["metadata"]["resourceVersion"]

    again = await abort(kube).run(dry_run=False)
    assert (again.outcome, again.changes) == (ActionOutcome.ALREADY_DONE, ())
    assert len(kube_cluster[kmock.method.PATCH, VIRTUALSERVICES]) == 1


async def test_two_hosts(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_virtual_service(
        kube_cluster,
        NS,
        "web",
        http=[
            [{"host": "web-stable", "weight": 60}, {"host": "web-canary", "weight": 40}],
        ],
    )
    assert (await abort(kube, BY_HOST).router.read_split()).canary_percent == 40.0

    result = await abort(kube, BY_HOST).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert weights(kube_cluster) == [[("web-stable", None, 100), ("web-canary", None, 0)]]
    crdschemas.validate(virtual_service(kube_cluster))


async def test_an_http_route_to_the_canary_alone_is_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_release(kube_cluster)
    seed_virtual_service(
        kube_cluster,
        NS,
        "web",
        http=[
            [
                {"host": "web", "subset": "stable", "weight": 100},
                {"host": "web", "subset": "canary", "weight": 0},
            ],
            [{"host": "web", "subset": "canary"}],  # e.g. a header match sending testers to the canary
        ],
    )
    before = virtual_service(kube_cluster)

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert (
        "http route 1 of VirtualService/shop/web sends 100 of 100 weight to the canary (web subset "
        "canary) but does not name the stable destination (web subset stable)" in result.reason
    )
    assert virtual_service(kube_cluster) == before
    assert replicas(kube_cluster, "web-canary") == 1


async def test_a_virtual_service_flagger_owns_is_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_release(kube_cluster)
    seed_virtual_service(
        kube_cluster,
        NS,
        "web",
        http=[
            [
                {"host": "web", "subset": "stable", "weight": 90},
                {"host": "web", "subset": "canary", "weight": 10},
            ],
        ],
    )
    kube_cluster.update(
        VIRTUALSERVICES,
        NS,
        "web",
        {
            "metadata": {
                "ownerReferences": [
                    {
                        "apiVersion": "flagger.app/v1beta1",
                        "kind": "Canary",
                        "name": "web",
                        "uid": "u1",
                        "controller": True,
                    }
                ]
            }
        },
    )

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert "VirtualService shop/web is steered by Canary web (flagger.app/v1beta1)" in result.reason
    assert weights(kube_cluster)[0] == [("web", "stable", 90), ("web", "canary", 10)]


async def test_a_conflict_while_patching_re_reads_and_re_applies(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_virtual_service(
        kube_cluster,
        NS,
        "web",
        http=[
            [
                {"host": "web", "subset": "stable", "weight": 90},
                {"host": "web", "subset": "canary", "weight": 10},
            ],
        ],
    )
    kube_cluster.conflict("patch", VIRTUALSERVICES, namespace=NS, name="web", times=2)

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert len(kube_cluster[kmock.method.PATCH, VIRTUALSERVICES]) == 3
    assert weights(kube_cluster)[0] == [("web", "stable", 100), ("web", "canary", 0)]


async def test_a_403_names_the_verb_resource_and_namespace(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_release(kube_cluster)
    seed_virtual_service(
        kube_cluster,
        NS,
        "web",
        http=[
            [
                {"host": "web", "subset": "stable", "weight": 90},
                {"host": "web", "subset": "canary", "weight": 10},
            ],
        ],
    )
    kube_cluster.forbid("get", VIRTUALSERVICES, namespace=NS, name="web")

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert (
        'cannot get resource "virtualservices" in API group "networking.istio.io" in the namespace "shop"'
        in result.reason
    )


@pytest.mark.parametrize(
    ("host", "matches"),
    [
        ("web", True),
        ("web.shop", True),
        ("web.shop.svc", True),
        ("web.shop.svc.cluster.local", True),
        ("web.other.svc.cluster.local", False),
        ("web-2", False),
    ],
)
def test_a_short_host_matches_its_qualified_forms_in_the_namespace(host: str, matches: bool) -> None:
    vs = {
        "spec": {
            "http": [
                {
                    "route": [
                        {"destination": {"host": host}, "weight": 30},
                        {"destination": {"host": "web-stable"}, "weight": 70},
                    ]
                }
            ]
        }
    }
    split = virtual_service_split(
        vs, source="vs", canary=Destination("web"), stable=Destination("web-stable"), namespace=NS
    )
    assert split.canary_percent == (30.0 if matches else 0.0)
