"""Opt-in by annotation, end to end: a team annotates its Deployment on the emulated cluster (through
the real client), and the running daemon watches it become a target, judges it, and drops it when
the annotation goes; bad annotations become a Kubernetes Event on the Deployment and a line on the
status page while the other targets go on; a namespace not allowed is refused; the file wins over
annotations, said once; a watch the API drops is re-established."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollbackd.actions.targets import KubeTargets
from rollbackd.backoff import Backoff
from rollbackd.config.settings import (
    DiscoverySettings,
    EventsSettings,
    HttpSettings,
    Settings,
    Side,
    StoreSettings,
    TargetSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.discovery import Discovery
from rollbackd.daemon.main import discovery_for
from rollbackd.daemon.wiring import open_daemon
from rollbackd.demo.emulator import DEPLOYMENTS, EVENTS
from rollbackd.kube import KubeCall, KubeClient, objects
from rollbackd.model import Strategy
from rollbackd.sources.base import SidePair, SourceTarget
from tests.kubefixtures import ClusterEmulator, seed_deployment, wait_until
from tests.tcpproxy import TcpProxy
from tests.test_daemon import HEALTHY, ScriptedHealth

NS = "shop"
INTERVAL_S = 1.0


class SomeMetrics:
    """Metrics for the targets it was told about; nothing (missing data) for any other."""

    def __init__(self, known: Mapping[str, SidePair]) -> None:
        self.known = dict(known)

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        return {target.key: self.known[target.key] for target in targets if target.key in self.known}


def config(tmp_path: Path, *targets: TargetSettings, **discovery: Any) -> Settings:
    return Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path)),
        events=EventsSettings(kubernetes_events=True),
        discovery=DiscoverySettings(enabled=True, **({"namespaces": (NS,)} | discovery)),
        targets=targets,
    )


FILE_TARGET = TargetSettings(
    name="cart", namespace=NS, strategy=Strategy.DEPLOYMENT, candidate=Side(deployment="cart")
)


@contextlib.asynccontextmanager
async def running(
    settings: Settings, emu: ClusterEmulator, kube: KubeClient, metrics: SomeMetrics | None = None
) -> AsyncIterator[tuple[Daemon, Discovery, aiohttp.ClientSession]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        open_daemon(
            settings, metrics_source=metrics or SomeMetrics({"shop/cart": HEALTHY}),
            health_source=ScriptedHealth(), targets=KubeTargets(kube=kube, settings=settings), kube=kube,
        ) as daemon,
        discovery_for(daemon, kube) as discovery,
    ):
        await following(emu)
        yield daemon, discovery, session


async def following(emu: ClusterEmulator) -> None:
    """Wait until the daemon's watch follows the Deployments' changes: the emulator does not replay
    what changed between a list and the watch after it (a real API server does, from the list's
    resourceVersion)."""
    await wait_until(lambda: emu.watchers(DEPLOYMENTS) > 0, what="the watch following the Deployments")


async def annotate(
    kube: KubeClient, name: str, annotations: Mapping[str, str | None], *, namespace: str = NS
) -> None:
    """What a team does: annotate its Deployment (a merge patch through the API)."""
    await objects.patch_deployment(
        kube, namespace=namespace, name=name, patch={"metadata": {"annotations": dict(annotations)}},
        patch_type="merge",
    )


async def targets_doc(daemon: Daemon, session: aiohttp.ClientSession) -> dict[str, Any]:
    async with session.get(f"http://127.0.0.1:{daemon.port}/api/v1/targets") as response:
        assert response.status == 200
        document: dict[str, Any] = await response.json()
        return document


async def status_page(daemon: Daemon, session: aiohttp.ClientSession) -> str:
    async with session.get(f"http://127.0.0.1:{daemon.port}/status") as response:
        return await response.text()


def seed(emu: ClusterEmulator, *names: str, namespace: str = NS) -> None:
    for name in names:
        seed_deployment(emu, namespace, name, replicas=2, image=f"shop/{name}:1.0", labels={"app": name})


async def test_an_annotated_deployment_becomes_a_target_within_one_interval_and_goes_with_its_annotation(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed(kube_cluster, "cart", "web", "web-canary")
    seed_deployment(kube_cluster, NS, "web-canary", replicas=1, image="shop/web:1.1", labels={"app": "web"})
    async with running(config(tmp_path, FILE_TARGET), kube_cluster, kube) as (daemon, _, session):
        await wait_until(lambda: daemon.ticks > 0, what="the first tick")
        loop = asyncio.get_running_loop()
        annotated_at = loop.time()
        await annotate(kube, "web-canary", {
            "rollbackd.io/strategy": "canary", "rollbackd.io/baseline": "web",
            "rollbackd.io/ingress": "web-canary", "rollbackd.io/slo-error-rate": "0.02",
        })

        async def listed() -> bool:
            return "shop/web-canary" in (await targets_doc(daemon, session))["targets"]

        await wait_until(listed, timeout_s=INTERVAL_S, what="the annotated Deployment listed as a target")
        assert loop.time() - annotated_at <= INTERVAL_S
        document = await targets_doc(daemon, session)
        shown = document["targets"]["shop/web-canary"]
        assert shown["source"] == "annotation"
        assert shown["object"] == {"kind": "Deployment", "namespace": NS, "name": "web-canary"}
        assert shown["strategy"] == "canary"
        assert document["targets"]["shop/cart"]["source"] == "file"
        assert document["targets"]["shop/cart"]["object"] is None
        assert daemon.state.targets["shop/web-canary"].params.slo.max_error_rate == 0.02

        # Judged at the next tick; with no data for it, inconclusive, never a rollback.
        async def judged() -> bool:
            latest = daemon.state.targets["shop/web-canary"].latest
            return latest is not None

        await wait_until(judged, timeout_s=3 * INTERVAL_S, what="the annotated target judged")
        latest = daemon.state.targets["shop/web-canary"].latest
        assert latest is not None
        assert latest.outcome.value == "inconclusive"
        assert not latest.rollback
        assert "from annotations on Deployment shop/web-canary" in await status_page(daemon, session)

        removed_at = loop.time()
        await annotate(kube, "web-canary", {
            "rollbackd.io/strategy": None, "rollbackd.io/baseline": None, "rollbackd.io/ingress": None,
            "rollbackd.io/slo-error-rate": None,
        })

        async def gone() -> bool:
            return "shop/web-canary" not in (await targets_doc(daemon, session))["targets"]

        await wait_until(gone, timeout_s=INTERVAL_S, what="the target dropped with its annotations")
        assert loop.time() - removed_at <= INTERVAL_S
        assert set(daemon.state.targets) == {"shop/cart"}


async def test_a_deleted_annotated_deployment_is_dropped(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed(kube_cluster, "cart", "api")
    await annotate(kube, "api", {"rollbackd.io/strategy": "deployment"})
    async with running(config(tmp_path, FILE_TARGET), kube_cluster, kube) as (daemon, _, _session):
        await wait_until(lambda: "shop/api" in daemon.state.targets, what="the annotated target at start")
        await kube.request(
            KubeCall("delete", "deployments", "apps", NS, "api"),
            kube.apps.delete_namespaced_deployment, "api", NS,
        )
        await wait_until(lambda: "shop/api" not in daemon.state.targets,
                         what="the deleted Deployment dropped")


def invalid_events(emu: ClusterEmulator, name: str, namespace: str = NS) -> list[dict[str, Any]]:
    return [
        event for event in emu.read_all(EVENTS, namespace)
        if event["reason"] == "InvalidOptIn" and event["regarding"]["name"] == name
    ]


async def test_a_bad_annotation_becomes_an_event_and_a_page_line_while_the_other_targets_are_judged(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed(kube_cluster, "cart", "api")
    async with running(config(tmp_path, FILE_TARGET), kube_cluster, kube) as (daemon, _, session):
        await annotate(kube, "api", {"rollbackd.io/strategy": "deployment",
                                     "rollbackd.io/slo-p95-ms": "fast"})

        await wait_until(lambda: invalid_events(kube_cluster, "api") != [], what="an Event on the Deployment")
        [event] = invalid_events(kube_cluster, "api")
        assert event["type"] == "Warning"
        assert event["regarding"]["kind"] == "Deployment"
        assert "rollbackd.io/slo-p95-ms: expected a number of milliseconds greater than 0" in event["note"]
        assert "got 'fast'" in event["note"]
        assert "not watched until they are fixed" in event["note"]
        page = await status_page(daemon, session)
        assert "Opt-in by annotation: Deployment shop/api: rollbackd.io/slo-p95-ms: expected a number" in page
        document = await targets_doc(daemon, session)
        assert document["opt_ins"]["problems"][0]["object"] == "Deployment shop/api"
        assert "shop/api" not in document["targets"]

        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 2, timeout_s=5, what="two more ticks")
        cart = daemon.state.targets["shop/cart"].latest
        assert cart is not None
        assert cart.outcome.value == "none"

        # Fixed: a target, and the page line goes.
        await annotate(kube, "api", {"rollbackd.io/slo-p95-ms": "400"})
        await wait_until(lambda: "shop/api" in daemon.state.targets, what="the fixed Deployment a target")
        assert "Opt-in by annotation" not in await status_page(daemon, session)
        assert len(invalid_events(kube_cluster, "api")) == 1  # one Event per distinct problem


async def test_a_namespace_not_allowed_is_refused_with_a_clear_message(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed(kube_cluster, "cart")
    seed(kube_cluster, "ledger", namespace="payments")
    settings = config(tmp_path, FILE_TARGET, all_namespaces=True)
    async with running(settings, kube_cluster, kube) as (daemon, _, session):
        await annotate(kube, "ledger", {"rollbackd.io/strategy": "deployment"}, namespace="payments")

        await wait_until(lambda: invalid_events(kube_cluster, "ledger", "payments") != [],
                         what="an Event on the refused Deployment")
        [event] = invalid_events(kube_cluster, "ledger", "payments")
        assert "namespace payments may not opt in: discovery.namespaces lists shop" in event["note"]
        assert "payments/ledger" not in daemon.state.targets
        assert "namespace payments may not opt in" in await status_page(daemon, session)


async def test_the_file_wins_over_annotations_for_the_same_release_and_says_so_once(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed(kube_cluster, "cart")
    caplog.set_level(logging.WARNING, logger="rollbackd.daemon.app")
    async with running(config(tmp_path, FILE_TARGET), kube_cluster, kube) as (daemon, _, session):
        await annotate(kube, "cart", {"rollbackd.io/strategy": "deployment",
                                      "rollbackd.io/slo-error-rate": "0.5"})

        async def noted() -> bool:
            return "the file wins" in await status_page(daemon, session)

        await wait_until(noted, what="the conflict on the status page")
        # Other changes of the same Deployment, and ticks, say nothing more.
        await annotate(kube, "cart", {"note": "touched"})
        await annotate(kube, "cart", {"rollbackd.io/rollback-risk": "low"})
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 2, timeout_s=5, what="two more ticks")

        said = [record for record in caplog.records if "the file wins" in record.getMessage()]
        assert len(said) == 1
        assert daemon.state.targets["shop/cart"].params.slo.max_error_rate != 0.5
        document = await targets_doc(daemon, session)
        assert document["targets"]["shop/cart"]["source"] == "file"
        assert document["opt_ins"]["conflicts"] == [{
            "object": "Deployment shop/cart",
            "reason": "the file's target shop/cart already watches this release: the file wins and the "
                      "annotations are ignored (remove them, or the file's entry)",
        }]


async def test_a_watch_the_api_drops_is_established_again_and_lists_what_changed_meanwhile(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    seed(kube_cluster, "cart", "api", "search", "old")
    await annotate(kube, "api", {"rollbackd.io/strategy": "deployment"})
    await annotate(kube, "old", {"rollbackd.io/strategy": "deployment"})
    settings = config(tmp_path, FILE_TARGET)
    caplog.set_level(logging.WARNING, logger="rollbackd.daemon.discovery")
    async with (
        TcpProxy(kube_cluster.url.host or "127.0.0.1", kube_cluster.url.port or 80) as proxy,
        KubeClient.for_host(f"http://127.0.0.1:{proxy.port}", request_timeout_s=2.0) as proxied,
        open_daemon(settings, metrics_source=SomeMetrics({}), health_source=ScriptedHealth()) as daemon,
        Discovery(kube=proxied, settings=lambda: daemon.file_settings, report=daemon.apply_discovery,
                  backoff=Backoff(initial_s=0.05, max_s=0.2)) as discovery,
    ):
        await wait_until(lambda: {"shop/api", "shop/old"} <= daemon.state.targets.keys(),
                         what="the annotated targets at start")
        await following(kube_cluster)
        lists = discovery.lists

        await proxy.cut()
        # While nobody watches, one team opts in, another opts out, a third deletes its Deployment.
        await annotate(kube, "search", {"rollbackd.io/strategy": "deployment"})
        await annotate(kube, "api", {"rollbackd.io/strategy": None})
        await kube.request(
            KubeCall("delete", "deployments", "apps", NS, "old"),
            kube.apps.delete_namespaced_deployment, "old", NS,
        )
        await wait_until(
            lambda: any("cannot watch the Deployments of namespace shop" in r.getMessage()
                        for r in caplog.records),
            what="the broken watch logged",
        )
        assert "shop/api" in daemon.state.targets  # what was found stays while the API is away
        assert daemon.alive
        proxy.restore()

        await wait_until(lambda: set(daemon.state.targets) == {"shop/cart", "shop/search"},
                         what="the changes made while the watch was down")
        assert discovery.lists > lists
        said = [r.getMessage() for r in caplog.records]
        assert any("watching the Deployments of namespace shop again" in message for message in said)
        # The new watch delivers changes again.
        await annotate(kube, "api", {"rollbackd.io/strategy": "deployment"})
        await wait_until(lambda: "shop/api" in daemon.state.targets, what="a change through the new watch")


async def test_a_watch_answered_with_an_error_is_retried_without_stopping_the_daemon(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed(kube_cluster, "cart", "api")
    await annotate(kube, "api", {"rollbackd.io/strategy": "deployment"})
    failed = kube_cluster.fail("list", DEPLOYMENTS, status=503, namespace=NS, times=2)
    settings = config(tmp_path, FILE_TARGET)
    async with (
        open_daemon(settings, metrics_source=SomeMetrics({}), health_source=ScriptedHealth()) as daemon,
        Discovery(kube=kube, settings=lambda: daemon.file_settings, report=daemon.apply_discovery,
                  backoff=Backoff(initial_s=0.05, max_s=0.2)),
    ):
        await wait_until(lambda: "shop/api" in daemon.state.targets, what="the target after two failed lists")
        assert len(failed) == 2
        assert daemon.alive

