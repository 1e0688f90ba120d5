"""Canary abort through Gateway API routes (HTTPRoute, GRPCRoute), against the emulated API server
through the real client; every route written is checked against the published CRD schema."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import kmock
import pytest

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.routers.gateway_api import GatewayApiRouter, aborted_rules, route_split
from rollbackd.actions.steps import ActionSettings, Refusal
from rollbackd.backoff import Backoff
from rollbackd.daemon.page import render_status_page
from rollbackd.daemon.views import action_view
from rollbackd.events.build import action_data
from rollbackd.kube import KubeClient, KubeNotFound
from tests import crdschemas
from tests.kubefixtures import (
    DEPLOYMENTS,
    GATEWAYS,
    GRPCROUTES,
    HTTPROUTES,
    SERVICES,
    ClusterEmulator,
    Controllers,
    Obj,
    seed_deployment,
    seed_gateway,
    seed_route,
    seed_service,
    wait_until,
)

NS = "shop"
FAST = ActionSettings(
    backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=4, availability_timeout_s=5.0, poll_s=0.02
)
ROUTE = "HTTPRoute/shop/web"


def router(kube: KubeClient, *, kind: str = "HTTPRoute", name: str = "web") -> GatewayApiRouter:
    return GatewayApiRouter(
        kube=kube,
        namespace=NS,
        route=name,
        route_kind=kind,
        canary_service="web-canary",
        stable_service="web-stable",
    )


def abort(kube: KubeClient, *, kind: str = "HTTPRoute", settings: ActionSettings = FAST) -> CanaryAbort:
    return CanaryAbort(
        kube=kube,
        target=f"{NS}/web",
        namespace=NS,
        router=router(kube, kind=kind),
        canary="web-canary",
        stable="web",
        settings=settings,
    )


def seed_release(emu: ClusterEmulator, *, canary_service: bool = True, stable_service: bool = True) -> None:
    seed_deployment(
        emu, NS, "web", replicas=3, image="shop/web:1.1", labels={"app": "web", "track": "stable"}
    )
    seed_deployment(
        emu, NS, "web-canary", replicas=1, image="shop/web:1.2", labels={"app": "web", "track": "canary"}
    )
    if stable_service:
        seed_service(emu, NS, "web-stable", selector={"app": "web", "track": "stable"})
    if canary_service:
        seed_service(emu, NS, "web-canary", selector={"app": "web", "track": "canary"})


def route(emu: ClusterEmulator, kind: kmock.resource = HTTPROUTES, name: str = "web") -> Obj:
    stored = emu.read(kind, NS, name)
    assert stored is not None
    return stored


def weights(emu: ClusterEmulator, kind: kmock.resource = HTTPROUTES) -> list[dict[str, int | None]]:
    return [
        {ref["name"]: ref.get("weight") for ref in rule["backendRefs"]}
        for rule in route(emu, kind)["spec"]["rules"]
    ]


async def reported(emu: ClusterEmulator, kind: kmock.resource = HTTPROUTES) -> None:
    """Wait for the emulated gateway to report on the route's current generation."""

    def done() -> bool:
        stored = route(emu, kind)
        generation = stored["metadata"]["generation"]
        parents = (stored.get("status") or {}).get("parents") or []
        return bool(parents) and all(
            condition.get("observedGeneration") == generation
            for parent in parents for condition in parent["conditions"])

    await wait_until(done, what="the gateway's report on the route")


def replicas(emu: ClusterEmulator, name: str) -> int:
    deployment = emu.read(DEPLOYMENTS, NS, name)
    assert deployment is not None
    return int(deployment["spec"]["replicas"])


def route_patches(emu: ClusterEmulator, kind: kmock.resource = HTTPROUTES) -> list[kmock.Request]:
    return list(emu[kmock.method.PATCH, kind])


def report(result: ActionResult) -> None:
    print(f"\n[timing] {result.action} {result.outcome}: api_s={result.api_s:.4f} wait_s={result.wait_s:.4f}")


async def test_the_canary_weight_goes_to_the_stable_backend_in_every_rule_that_names_both(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_route(
        kube_cluster,
        NS,
        "web",
        rules=[
            {"web-stable": 80, "web-canary": 20},
            {"web-stable": 90, "web-canary": 10, "legacy": 5},  # another backend keeps its share
            {"web-stable": None},  # stable only: untouched
        ],
    )
    seed_service(kube_cluster, NS, "legacy", selector={"app": "legacy"})
    await wait_until(
        lambda: bool((route(kube_cluster).get("status") or {}).get("parents")),
        what="the gateway to report on the route",
    )
    split = await router(kube).read_split()
    assert (split.canary_percent, split.rules) == (20.0, (20.0, 10 / 105 * 100, 0.0))

    result = await abort(kube).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.changes == (
        Change(ROUTE, "spec.rules[0].backendRefs[1].weight", 20, 0),
        Change(ROUTE, "spec.rules[0].backendRefs[0].weight", 80, 100),
        Change(ROUTE, "spec.rules[1].backendRefs[1].weight", 10, 0),
        Change(ROUTE, "spec.rules[1].backendRefs[0].weight", 90, 100),
        Change("Deployment/shop/web-canary", "spec.replicas", 1, 0),
    )
    assert weights(kube_cluster) == [
        {"web-stable": 100, "web-canary": 0},
        {"web-stable": 100, "web-canary": 0, "legacy": 5},
        {"web-stable": None},
    ]
    assert replicas(kube_cluster, "web-canary") == 0
    # The events tell the split the router read before the abort and after it.
    told = action_data(result)
    assert told.router == "gateway-api"
    assert told.split_before is not None
    assert told.split_after is not None
    assert (told.split_before.source, told.split_before.canary_percent) == ("HTTPRoute shop/web", 20.0)
    assert (told.split_after.canary_percent, told.split_after.rules) == (0.0, (0.0, 0.0, 0.0))
    assert (await router(kube).read_split()).canary_percent == 0.0
    crdschemas.validate(route(kube_cluster))
    # One conditional write: the resourceVersion it was planned from travels with the new rules.
    [patch] = route_patches(kube_cluster)
    assert patch.data["metadata"]["resourceVersion"]
    assert patch.headers["Content-Type"].startswith("application/merge-patch+json")


async def test_a_second_run_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])
    await reported(kube_cluster)  # the gateway's first report lands before the action's writes
    assert (await abort(kube).run(dry_run=False)).outcome is ActionOutcome.DONE

    again = await abort(kube).run(dry_run=False)

    assert again.outcome is ActionOutcome.ALREADY_DONE, again.reason
    assert again.changes == ()
    assert len(route_patches(kube_cluster)) == 1
    crdschemas.validate(route(kube_cluster))


async def test_dry_run_plans_the_weights_and_writes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": None, "web-canary": None}])  # weight 1 each

    planned = await abort(kube).run(dry_run=True)

    assert planned.outcome is ActionOutcome.PLANNED
    assert planned.changes == (
        Change(ROUTE, "spec.rules[0].backendRefs[1].weight", 1, 0),
        Change(ROUTE, "spec.rules[0].backendRefs[0].weight", 1, 2),
        Change("Deployment/shop/web-canary", "spec.replicas", 1, 0),
    )
    assert route_patches(kube_cluster) == []


async def test_a_grpc_route_is_aborted_the_same_way(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", kind="GRPCRoute", rules=[{"web-stable": 3, "web-canary": 1}])

    result = await abort(kube, kind="GRPCRoute").run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert weights(kube_cluster, GRPCROUTES) == [{"web-stable": 4, "web-canary": 0}]
    assert result.changes[0] == Change("GRPCRoute/shop/web", "spec.rules[0].backendRefs[1].weight", 1, 0)
    crdschemas.validate(route(kube_cluster, GRPCROUTES))


async def test_a_route_the_gateway_refuses_fails_with_its_reason_and_leaves_the_canary_running(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])
    kube_controllers.refused_routes[(NS, "web")] = (
        "no listener of Gateway shop/gateway allows routes from shop"
    )

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert action_data(result).split_before is not None  # a failure tells the split it found too
    assert (
        "Gateway shop/gateway: Accepted is False (NotAllowedByListeners: no listener of Gateway"
        in result.reason
    )
    assert "the canary is left running" in result.reason
    assert [c.field for c in result.changes] == [
        "spec.rules[0].backendRefs[1].weight",
        "spec.rules[0].backendRefs[0].weight",
    ]
    assert replicas(kube_cluster, "web-canary") == 1
    crdschemas.validate(route(kube_cluster))


async def test_a_missing_canary_service_does_not_stop_the_abort(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster, canary_service=False)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])

    result = await abort(kube).run(dry_run=False)

    # The gateway still says BackendNotFound (for the canary, at weight 0 now): traffic is where it must be.
    conditions = route(kube_cluster)["status"]["parents"][0]["conditions"]
    assert {c["type"]: c["reason"] for c in conditions}["ResolvedRefs"] == "BackendNotFound"
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert weights(kube_cluster) == [{"web-stable": 100, "web-canary": 0}]


async def test_a_missing_stable_service_is_refused_before_anything_changes(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster, stable_service=False)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert "the stable Service shop/web-stable" in result.reason
    assert "does not exist" in result.reason
    assert result.changes == ()
    assert weights(kube_cluster) == [{"web-stable": 80, "web-canary": 20}]
    assert replicas(kube_cluster, "web-canary") == 1


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            [{"web-stable": 50}, {"web-canary": 50}],
            "rule 1 of HTTPRoute/shop/web sends 50 of 50 weight to the canary"
            " Service web-canary but does not name the stable Service",
        ),
        ([{"web-stable": 100, "other": 0}], "names the canary Service web-canary in none of its rules"),
        ([{"web-canary": 0, "other": 100}], "names the stable Service web-stable in none of its rules"),
    ],
)
async def test_a_route_not_naming_both_backends_is_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient, rules: list[dict[str, int | None]], expected: str
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=rules)
    before = route(kube_cluster)

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert expected in result.reason
    assert route(kube_cluster) == before
    assert replicas(kube_cluster, "web-canary") == 1


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        (
            {
                "ownerReferences": [
                    {
                        "apiVersion": "flagger.app/v1beta1",
                        "kind": "Canary",
                        "name": "web",
                        "uid": "u1",
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ]
            },
            "steered by Canary web (flagger.app/v1beta1), its controlling owner",
        ),
        (
            {"annotations": {"argo-rollouts.argoproj.io/managed-by-rollouts": "web"}},
            "steered by the Argo Rollouts Rollout web",
        ),
    ],
)
async def test_a_route_another_controller_steers_is_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient, metadata: Obj, expected: str
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])
    kube_cluster.update(HTTPROUTES, NS, "web", {"metadata": metadata})

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert expected in result.reason
    assert "rather than fight over the weights" in result.reason
    assert weights(kube_cluster) == [{"web-stable": 80, "web-canary": 20}]
    assert replicas(kube_cluster, "web-canary") == 1


async def test_a_conflict_while_patching_re_reads_and_re_applies(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])
    await reported(kube_cluster)  # the gateway's first report lands before the action's writes
    kube_cluster.conflict("patch", HTTPROUTES, namespace=NS, name="web")

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert len(route_patches(kube_cluster)) == 2
    assert [c.field for c in result.changes if c.object == ROUTE] == [
        "spec.rules[0].backendRefs[1].weight",
        "spec.rules[0].backendRefs[0].weight",
    ]
    assert weights(kube_cluster) == [{"web-stable": 100, "web-canary": 0}]


class ArmedRecorder:
    """Records nothing; calls ``arm`` once, when the first step is about to be applied."""

    def __init__(self, arm: Callable[[], None]) -> None:
        self.arm = arm
        self.armed = False

    async def intend(self, changes: Sequence[Change]) -> bool:
        if not self.armed:
            self.armed = True
            self.arm()
        return True

    async def made(self, intended: Sequence[Change], made: Sequence[Change]) -> None:
        return None


async def test_a_stale_resource_version_is_a_conflict_and_the_route_is_re_planned(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    """Someone moves the weights between the step's read and its write: the write carries the
    version it was planned from, the API server refuses it (409), the step reads the route again
    and gives the stable backend what the canary has now."""
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])
    await reported(kube_cluster)  # the gateway's first report lands before the action's writes
    moved: list[Obj] = []

    def read_then_someone_writes() -> Obj:
        moved.append(route(kube_cluster))
        kube_cluster.update(
            HTTPROUTES,
            NS,
            "web",
            {
                "spec": {
                    "rules": [
                        {
                            "backendRefs": [
                                {"name": "web-stable", "port": 80, "weight": 50},
                                {"name": "web-canary", "port": 80, "weight": 50},
                            ]
                        }
                    ]
                }
            },
        )
        return moved[0]  # what the step read, just before the other write landed

    def arm() -> None:  # the step's own read of the route comes next
        reads = kube_cluster[kmock.action.FETCH, HTTPROUTES]
        reads[len(reads) : len(reads) + 1] << read_then_someone_writes

    recorder = ArmedRecorder(arm)
    result = await abort(kube).run(dry_run=False, recorder=recorder)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert moved, "the other write happened"
    assert weights(kube_cluster) == [{"web-stable": 100, "web-canary": 0}]
    assert Change(ROUTE, "spec.rules[0].backendRefs[1].weight", 50, 0) in result.changes
    assert len(route_patches(kube_cluster)) >= 2  # refused for its stale version, then re-planned


async def test_a_403_names_the_verb_resource_and_namespace(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])
    kube_cluster.forbid("patch", HTTPROUTES, namespace=NS, name="web")

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert 'cannot patch resource "httproutes" in API group "gateway.networking.k8s.io"' in result.reason
    assert 'in the namespace "shop"' in result.reason
    assert weights(kube_cluster) == [{"web-stable": 80, "web-canary": 20}]
    assert replicas(kube_cluster, "web-canary") == 1


async def test_without_the_gateway_api_the_route_cannot_be_read_and_the_abort_is_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_release(kube_cluster)
    kube_cluster.uninstall(HTTPROUTES, GRPCROUTES)

    with pytest.raises(KubeNotFound):
        await router(kube).read_split()
    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert (
        "the HTTPRoute shop/web (is the Gateway API installed, and the name right?) does not exist"
        in result.reason
    )
    assert replicas(kube_cluster, "web-canary") == 1


# --- the pure part -------------------------------------------------------------------------------


def test_refs_in_another_namespace_or_of_another_kind_are_not_the_services() -> None:
    route = {
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": "web-stable", "weight": 9},
                        {"name": "web-canary", "namespace": "elsewhere", "weight": 1},
                        {
                            "name": "web-canary",
                            "kind": "ServiceImport",
                            "group": "multicluster.x-k8s.io",
                            "weight": 1,
                        },
                        {"name": "web-canary", "weight": 0},
                    ]
                }
            ]
        }
    }
    assert route_split(route, source="r", canary="web-canary", stable="web-stable", namespace=NS).rules == (
        0.0,
    )
    rules, changes = aborted_rules(
        route, object_name="r", canary="web-canary", stable="web-stable", namespace=NS
    )
    assert changes == ()
    assert rules == route["spec"]["rules"]


def test_several_canary_refs_in_one_rule_all_go_to_zero() -> None:
    route = {
        "spec": {
            "rules": [
                {
                    "backendRefs": [
                        {"name": "web-canary", "port": 80, "weight": 5},
                        {"name": "web-stable", "weight": 90},
                        {"name": "web-canary", "port": 8080, "weight": 5},
                    ]
                }
            ]
        }
    }
    rules, changes = aborted_rules(
        route, object_name="r", canary="web-canary", stable="web-stable", namespace=NS
    )
    assert [ref["weight"] for ref in rules[0]["backendRefs"]] == [0, 100, 0]
    assert len(changes) == 3
    with pytest.raises(Refusal):
        aborted_rules({"spec": {"rules": []}}, object_name="r", canary="a", stable="b", namespace=NS)


async def test_the_emulated_gateway_reports_missing_backends(
    kube_cluster: ClusterEmulator, kube_controllers: Controllers
) -> None:
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 1}])
    await wait_until(
        lambda: bool((route(kube_cluster).get("status") or {}).get("parents")), what="the route's status"
    )
    conditions = {c["type"]: c for c in route(kube_cluster)["status"]["parents"][0]["conditions"]}
    assert (conditions["ResolvedRefs"]["status"], conditions["ResolvedRefs"]["reason"]) == (
        "False",
        "BackendNotFound",
    )
    seed_service(kube_cluster, NS, "web-stable", selector={"app": "web"})
    await wait_until(
        lambda: (
            {c["type"]: c["status"] for c in route(kube_cluster)["status"]["parents"][0]["conditions"]}
            == {"Accepted": "True", "ResolvedRefs": "True"}
        ),
        what="the backend to resolve",
    )
    assert kube_cluster.read(SERVICES, NS, "web-stable") is not None
    crdschemas.validate(route(kube_cluster))


async def test_the_emulated_gateway_reports_on_its_gateway_and_the_routes_attached(
    kube_cluster: ClusterEmulator, kube_controllers: Controllers
) -> None:
    seed_gateway(kube_cluster, NS, "shop-gateway", listeners=(("http", 80), ("admin", 8080)))
    seed_service(kube_cluster, NS, "web-stable", selector={"app": "web"})
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 1}], gateway="shop-gateway")
    seed_route(kube_cluster, NS, "other", rules=[{"web-stable": 1}], gateway="shop-gateway")
    seed_route(kube_cluster, NS, "elsewhere", rules=[{"web-stable": 1}], gateway="another-gateway")
    kube_controllers.refused_routes[(NS, "other")] = "hostname not allowed by the listeners"

    def gateway() -> Obj:
        found = kube_cluster.read(GATEWAYS, NS, "shop-gateway")
        assert found is not None
        return found

    def attached() -> dict[str, int]:
        return {listener["name"]: listener["attachedRoutes"]
                for listener in (gateway().get("status") or {}).get("listeners") or []}

    await wait_until(lambda: attached() == {"http": 1, "admin": 1}, what="the Gateway's status")
    conditions = {c["type"]: (c["status"], c["observedGeneration"])
                  for c in gateway()["status"]["conditions"]}
    assert conditions == {"Accepted": ("True", 1), "Programmed": ("True", 1)}
    crdschemas.validate(gateway())

    # The Gateway accepts the other route once it is no longer refused.
    del kube_controllers.refused_routes[(NS, "other")]
    await wait_until(lambda: attached() == {"http": 2, "admin": 2}, what="the second route attached")
    crdschemas.validate(gateway())


async def test_the_status_page_shows_the_split_the_router_read(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_release(kube_cluster)
    seed_route(kube_cluster, NS, "web", rules=[{"web-stable": 80, "web-canary": 20}])
    plan = await abort(kube).run(dry_run=True)
    done = await abort(kube).run(dry_run=False)
    assert done.outcome is ActionOutcome.DONE, done.reason
    card = {"key": "shop/web", "namespace": NS, "name": "web", "strategy": "canary", "decision": None,
            "rollback": {"phase": "acted", "mode": "immediate", "age_s": 1.0, "action": action_view(done)},
            "dry_run_plan": action_view(plan)}
    assert action_view(done)["split_after"]["canary_percent"] == 0.0  # type: ignore[index,call-overload]

    page = render_status_page({"targets": {"shop/web": card}}, version="1", ready=True, alive=True, ticks=1,
                              refresh_s=10, generated_at=datetime(2026, 1, 1, tzinfo=UTC))

    assert "traffic: HTTPRoute shop/web: canary 20% → 0%" in page
    assert "traffic now: HTTPRoute shop/web: canary 20%</p>" in page
