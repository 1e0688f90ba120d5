"""Blue-green's wait for ready endpoints of the healthy colour is said out loud: logged when it starts
(what it waits for) and when it ends (how long it took), and shown on the status page and in the
API's target view while it lasts. Against the emulated API over real HTTP, with the real client;
the EndpointSlice controller is started only later, so the endpoints follow the switch late."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

import aiohttp
import pytest

from rollbackd.actions.base import ActionOutcome, Waiting
from rollbackd.actions.bluegreen import BlueGreenSwitchBack
from rollbackd.actions.steps import ActionSettings
from rollbackd.actions.targets import KubeTargets
from rollbackd.backoff import Backoff
from rollbackd.config.settings import Side, TargetSettings, VerificationSettings
from rollbackd.daemon.app import Daemon
from rollbackd.kube import KubeClient
from rollbackd.model import Strategy
from rollbackd.run import Phase
from tests.kubefixtures import (
    ENDPOINTSLICES,
    ClusterEmulator,
    Controllers,
    seed_deployment,
    seed_service,
    wait_until,
)
from tests.test_daemon import HEALTHY, SEVERE, Api, ScriptedHealth, ScriptedMetrics, make_settings

NS = "shop"
BLUE = {"app": "web", "version": "blue"}
GREEN = {"app": "web", "version": "green"}
SETTINGS = ActionSettings(backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=4,
                          availability_timeout_s=30.0, poll_s=0.05)
WAIT_LOGGER = "rollbackd.actions.steps"


def seed_pair(emu: ClusterEmulator) -> None:
    """Blue (the previous colour, fully available) and green (the new one), the Service on green
    with an EndpointSlice listing green's pods."""
    seed_deployment(emu, NS, "web-blue", replicas=3, image="shop/web:1.1", labels=BLUE, container="web")
    seed_deployment(emu, NS, "web-green", replicas=3, image="shop/web:1.2", labels=GREEN, container="web")
    seed_service(emu, NS, "web", selector=GREEN)


def endpoint_pods(emu: ClusterEmulator) -> list[str]:
    return sorted(endpoint["targetRef"]["name"] for item in emu.read_all(ENDPOINTSLICES, NS)
                  for endpoint in item["endpoints"])


def wait_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == WAIT_LOGGER and "EndpointSlices" in r.getMessage()]


async def test_the_wait_for_ready_endpoints_is_logged_and_reported_while_it_lasts(
    kube_cluster: ClusterEmulator, kube: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WAIT_LOGGER)
    seed_pair(kube_cluster)
    told: list[Waiting | None] = []
    action = BlueGreenSwitchBack(kube=kube, target=f"{NS}/web", namespace=NS, service="web",
                                 healthy="web-blue", bad="web-green", settings=SETTINGS)
    task = asyncio.create_task(action.run(dry_run=False, progress=told.append))

    # The Service is switched, but no controller moves its endpoints yet: the action waits, and says so.
    await wait_until(lambda: any(w is not None and "EndpointSlices" in w.what for w in told),
                     what="the action to report its wait for endpoints")
    waiting = told[-1]
    assert waiting is not None
    assert waiting.what.startswith("the Service shop/web to serve from web-blue's pods only")
    assert "ready endpoints of ReplicaSet web-blue-" in waiting.what
    assert "none of ReplicaSet web-green-" in waiting.what
    assert waiting.since <= asyncio.get_running_loop().time()
    (started,) = wait_records(caplog)
    assert "blue-green-switch-back: waiting for the Service shop/web to serve from web-blue's pods" \
        in started.getMessage()
    assert started.__dict__["target"] == "shop/web"
    assert not task.done()
    assert all(pod.startswith("web-green-") for pod in endpoint_pods(kube_cluster))

    await asyncio.sleep(0.3)  # the endpoints come late
    async with Controllers(kube_cluster):
        result = await asyncio.wait_for(task, timeout=10.0)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert told[-1] is None  # the wait is over
    assert [w is None for w in told if w is None or "EndpointSlices" in w.what] == [False, True]
    started, ended = wait_records(caplog)
    assert "done after" in ended.getMessage()
    waited = ended.__dict__["waited_s"]
    assert waited >= 0.3
    assert result.wait_s >= waited
    assert all(pod.startswith("web-blue-") for pod in endpoint_pods(kube_cluster))


async def test_a_wait_that_times_out_says_so(
    kube_cluster: ClusterEmulator, kube: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=WAIT_LOGGER)
    seed_pair(kube_cluster)
    told: list[Waiting | None] = []
    action = BlueGreenSwitchBack(kube=kube, target=f"{NS}/web", namespace=NS, service="web",
                                 healthy="web-blue", bad="web-green",
                                 settings=dataclasses.replace(SETTINGS, availability_timeout_s=0.3))

    result = await action.run(dry_run=False, progress=told.append)

    assert result.outcome is ActionOutcome.FAILED
    assert told[-1] is None
    _, ended = wait_records(caplog)
    assert "timed out after" in ended.getMessage()
    assert ended.__dict__["wait_outcome"] == "timed out"


def bluegreen_target() -> TargetSettings:
    return TargetSettings(name="web", namespace=NS, strategy=Strategy.BLUE_GREEN, service="web",
                          baseline=Side(deployment="web-blue"), candidate=Side(deployment="web-green"))


async def test_the_status_page_and_the_api_show_what_the_rollback_waits_for(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_pair(kube_cluster)
    settings = make_settings(bluegreen_target()).model_copy(
        update={"interval_s": 0.2, "verification": VerificationSettings(window_s=1.0)}
    )
    metrics = ScriptedMetrics(HEALTHY)
    cluster = KubeTargets(kube=kube, settings=settings, action_settings=SETTINGS)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        Daemon(settings, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        api = Api(session, daemon)
        await wait_until(lambda: daemon.ticks >= 2, what="healthy ticks")
        metrics.pair = SEVERE

        async def waiting_shown() -> bool:
            rollback = (await api.target("shop/web"))["rollback"]
            return rollback is not None and rollback["waiting"] is not None \
                and "EndpointSlices" in rollback["waiting"]["for"]

        await wait_until(waiting_shown, timeout_s=30.0, what="the rollback's wait in the API")
        shown = (await api.target("shop/web"))["rollback"]
        assert shown["phase"] == "acting"
        assert shown["waiting"]["for"].startswith("the Service shop/web to serve from web-blue's pods only")
        assert shown["waiting"]["elapsed_s"] >= 0
        status, page = await api.call("GET", "/")
        assert status == 200
        assert "The action is waiting for the Service shop/web to serve from web-blue&#x27;s pods only" \
            in page
        assert "ready endpoints of ReplicaSet web-blue-" in page

        metrics.pair = HEALTHY
        async with Controllers(kube_cluster):
            await wait_until(lambda: daemon.rollbacks.runs["shop/web"].phase is not Phase.ACTING,
                             timeout_s=30, what="the action to end")
            shown = (await api.target("shop/web"))["rollback"]
            assert shown["phase"] in ("verifying", "verified")
            assert shown["waiting"] is None
            assert shown["action"]["outcome"] == "done"
            status, page = await api.call("GET", "/")
            assert "The action is waiting for" not in page
