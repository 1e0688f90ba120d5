"""Routers chosen per target: the configuration keys, the router each target gets, and the
start-up check that the API server serves the routes the targets need."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path

import pytest
import yaml

from rollbackd.actions.base import ActionOutcome
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.gitops import GitOpsGuard
from rollbackd.actions.routers.gateway_api import GatewayApiRouter
from rollbackd.actions.routers.ingress_nginx import IngressNginxRouter
from rollbackd.actions.routers.istio import Destination, IstioRouter
from rollbackd.actions.steps import ActionSettings
from rollbackd.actions.targets import KubeTargets
from rollbackd.backoff import Backoff
from rollbackd.config.loader import ConfigError, load_settings
from rollbackd.config.resolve import target_params
from rollbackd.config.settings import IngressNginxRouterSettings, Settings
from rollbackd.daemon.main import report_router_problems
from rollbackd.kube import KubeClient
from tests.kubefixtures import (
    DEPLOYMENTS,
    GRPCROUTES,
    HTTPROUTES,
    ClusterEmulator,
    Controllers,
    seed_deployment,
    seed_ingress,
    seed_route,
    seed_service,
    seed_virtual_service,
    wait_until,
)
from tests.mqttfixtures import free_port

NS = "shop"
FAST = ActionSettings(
    backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=3, availability_timeout_s=5.0, poll_s=0.02
)
CONFIG = f"""\
targets:
  - name: checkout
    namespace: {NS}
    strategy: canary
    baseline: {{deployment: checkout}}
    candidate: {{deployment: checkout-canary}}
    router:
      kind: gateway-api
      route: checkout
      canary_service: checkout-canary
      stable_service: checkout
  - name: cart
    namespace: {NS}
    strategy: canary
    baseline: {{deployment: cart}}
    candidate: {{deployment: cart-canary}}
    router:
      kind: istio
      virtual_service: cart
      canary: {{host: cart, subset: canary}}
      stable: {{host: cart, subset: stable}}
  - name: search
    namespace: {NS}
    strategy: canary
    baseline: {{deployment: search}}
    candidate: {{deployment: search-canary}}
    ingress: search-canary
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rollbackd.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    return [str(problem) for problem in caught.value.problems]


def settings(tmp_path: Path) -> Settings:
    return load_settings(write(tmp_path, CONFIG), environ={})


def targets_on(kube: KubeClient, tmp_path: Path) -> KubeTargets:
    return KubeTargets(kube=kube, settings=settings(tmp_path), action_settings=FAST)


# --- configuration -------------------------------------------------------------------------------


def test_each_kind_of_router_is_read_and_ingress_is_shorthand_for_ingress_nginx(tmp_path: Path) -> None:
    loaded = settings(tmp_path)
    kinds = [target.traffic_router.kind if target.traffic_router else None for target in loaded.targets]
    assert kinds == ["gateway-api", "istio", "ingress-nginx"]
    assert loaded.targets[2].traffic_router == IngressNginxRouterSettings(
        kind="ingress-nginx", ingress="search-canary"
    )


def test_an_unknown_router_kind_names_the_choices_and_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, CONFIG.replace("kind: gateway-api", "kind: gateway"))
    assert problems_of(path) == [
        f"{path}:8: targets[0].router (target checkout): unknown kind 'gateway': expected one of "
        "ingress-nginx,"
        " gateway-api, istio — did you mean 'gateway-api'?"
    ]


def test_router_keys_are_checked_where_they_are_written(tmp_path: Path) -> None:
    text = (
        CONFIG.replace("stable: {host: cart, subset: stable}", "stable: {host: cart, subset: canary}")
        .replace("      route: checkout\n", "      route: checkout\n      route_kind: TCPRoute\n")
        .replace(
            "    ingress: search-canary\n",
            "    ingress: search-canary\n    router: {kind: ingress-nginx, ingress: search-canary}\n",
        )
    )
    path = write(tmp_path, text)
    assert problems_of(path) == [
        f"{path}:10: targets[0].router.route_kind (target checkout): expected one of 'HTTPRoute', "
        "'GRPCRoute', got 'TCPRoute'",
        f"{path}:22: targets[1].router.stable (target cart): canary and stable are the same destination: give"
        " them different hosts, or the same host with different subsets",
        f"{path}:28: targets[2].ingress (target search): give either 'router' or 'ingress' (shorthand "
        "for router: {kind: ingress-nginx, ingress: NAME}), not both",
    ]
    path = write(
        tmp_path,
        CONFIG.replace("      stable_service: checkout\n", "      stable_service: checkout-canary\n"),
    )
    assert problems_of(path) == [
        f"{path}:11: targets[0].router.stable_service (target checkout): canary_service and "
        "stable_service are"
        " both 'checkout-canary': name the canary's Service and the stable version's Service (two "
        "backendRefs of"
        " the route)",
    ]


def test_a_router_on_a_strategy_without_traffic_split_is_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        CONFIG.replace("strategy: canary", "strategy: deployment", 1).replace(
            "    baseline: {deployment: checkout}\n", "", 1
        ),
    )
    assert problems_of(path) == [
        f"{path}:6: targets[0].router (target checkout): key 'router' does not apply to strategy 'deployment'"
        " (only to canary)"
    ]


# --- the router each target gets -----------------------------------------------------------------


async def test_each_target_gets_the_router_its_configuration_names(kube: KubeClient, tmp_path: Path) -> None:
    cluster = targets_on(kube, tmp_path)
    gateway, istio, nginx = (cluster.router(f"{NS}/{name}") for name in ("checkout", "cart", "search"))

    assert isinstance(gateway, GatewayApiRouter)
    assert (gateway.source, gateway.canary_service, gateway.stable_service) == (
        "HTTPRoute shop/checkout",
        "checkout-canary",
        "checkout",
    )
    assert isinstance(istio, IstioRouter)
    assert (istio.canary, istio.stable) == (Destination("cart", "canary"), Destination("cart", "stable"))
    assert isinstance(nginx, IngressNginxRouter)
    assert nginx.source == "Ingress shop/search-canary"
    action = cluster.action(
        target_params(cluster_settings := settings(tmp_path), cluster_settings.targets[0])
    )
    assert isinstance(action, GitOpsGuard)  # every action is guarded against GitOps reconcilers
    assert isinstance(action.action, CanaryAbort)
    assert action.action.router.source == "HTTPRoute shop/checkout"


async def test_the_split_of_each_router_is_read_from_the_cluster(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed_route(kube_cluster, NS, "checkout", rules=[{"checkout": 95, "checkout-canary": 5}])
    seed_virtual_service(
        kube_cluster,
        NS,
        "cart",
        http=[
            [
                {"host": "cart", "subset": "stable", "weight": 70},
                {"host": "cart", "subset": "canary", "weight": 30},
            ]
        ],
    )
    seed_ingress(
        kube_cluster,
        NS,
        "search-canary",
        service="search-canary",
        host="search.example.com",
        canary_weight=15,
    )
    cluster = targets_on(kube, tmp_path)

    splits = {name: await cluster.split(f"{NS}/{name}") for name in ("checkout", "cart", "search")}

    assert {name: split.canary_percent for name, split in splits.items()} == {
        "checkout": 5.0,
        "cart": 30.0,
        "search": 15.0,
    }
    assert splits["cart"].source == "VirtualService shop/cart"


# --- a route kind the API server does not serve ---------------------------------------------------


async def test_without_the_gateway_api_only_its_targets_are_named_and_the_others_act(
    kube_cluster: ClusterEmulator,
    kube: KubeClient,
    kube_controllers: Controllers,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kube_cluster.uninstall(HTTPROUTES, GRPCROUTES)
    cluster = targets_on(kube, tmp_path)
    loaded = settings(tmp_path)

    with caplog.at_level(logging.ERROR, logger="rollbackd.daemon.main"):
        await report_router_problems(cluster)
    problems = await cluster.check_routers()

    assert list(problems) == [f"{NS}/checkout"]
    assert problems[f"{NS}/checkout"] == (
        "the router of shop/checkout (gateway-api) needs HTTPRoute (gateway.networking.k8s.io/v1), "
        "which the API"
        " server does not serve: install the Gateway API CRDs (standard channel) and a Gateway controller, or"
        " change the target's router; until then its rollbacks are refused"
    )
    assert [record.getMessage() for record in caplog.records] == [problems[f"{NS}/checkout"]]
    # Its rollback is refused with a clear reason ...
    refused = await cluster.action(target_params(loaded, loaded.targets[0])).run(dry_run=False)
    assert refused.outcome is ActionOutcome.REFUSED
    assert "is the Gateway API installed" in refused.reason
    # ... and an ingress-nginx target on the same cluster is rolled back as usual.
    seed_deployment(kube_cluster, NS, "search", replicas=2, image="shop/search:1.1")
    seed_deployment(kube_cluster, NS, "search-canary", replicas=1, image="shop/search:1.2")
    seed_ingress(
        kube_cluster,
        NS,
        "search-canary",
        service="search-canary",
        host="search.example.com",
        canary_weight=15,
    )
    done = await cluster.action(target_params(loaded, loaded.targets[2])).run(dry_run=False)
    assert done.outcome is ActionOutcome.DONE, done.reason
    canary = kube_cluster.read(DEPLOYMENTS, NS, "search-canary")
    assert canary is not None
    assert canary["spec"]["replicas"] == 0


async def test_with_every_route_kind_served_no_target_is_named(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed_service(kube_cluster, NS, "checkout", selector={"app": "checkout"})
    assert await targets_on(kube, tmp_path).check_routers() == {}


async def test_rollbackd_run_names_at_start_up_the_targets_whose_routes_are_not_served(
    kube_cluster: ClusterEmulator, tmp_path: Path
) -> None:
    """The daemon, started as ``rollbackd run`` against a cluster without the Gateway API, says so
    for the target that needs it, and starts (its other targets are judged as usual)."""
    kube_cluster.uninstall(HTTPROUTES, GRPCROUTES)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
        "clusters": [{"name": "emulated", "cluster": {"server": str(kube_cluster.url).rstrip("/")}}],
        "users": [{"name": "rollbackd", "user": {"token": "t"}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "rollbackd"}}],
    }))
    config = yaml.safe_load(CONFIG)
    config.update({
        "prometheus": {"url": f"http://127.0.0.1:{free_port()}", "timeout_s": 1, "retries": 0},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "log": {"format": "json"},
        "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig)},
        "store": {"data_dir": str(tmp_path / "data")},
        "events": {"kubernetes_events": False},
    })
    path = write(tmp_path, yaml.safe_dump(config))
    log = tmp_path / "rollbackd.log"
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollbackd", "run", "--config", str(path),
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
            env={k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")})
    try:
        def records() -> list[dict[str, object]]:
            lines = log.read_text(encoding="utf-8").splitlines()
            return [json.loads(line) for line in lines if line.startswith("{")]

        await wait_until(lambda: any(r.get("msg") == "rollbackd running" for r in records())
                         or process.returncode is not None, timeout_s=60, what="the daemon to start")
        assert process.returncode is None, log.read_text(encoding="utf-8")
        errors = [r for r in records() if r.get("level") == "ERROR"]
        assert [(r.get("target"), str(r.get("msg")).split(":")[0]) for r in errors] == [
            ("shop/checkout", "the router of shop/checkout (gateway-api) needs HTTPRoute"
                              " (gateway.networking.k8s.io/v1), which the API server does not serve")]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(process.wait(), timeout=60)


def test_the_example_configuration_shows_every_router() -> None:
    example = yaml.safe_load(
        (Path(__file__).resolve().parents[1] / "config" / "rollbackd.example.yaml").read_text()
    )
    kinds = {(target.get("router") or {}).get("kind") for target in example["targets"]}
    assert {"gateway-api", "istio"} <= kinds
