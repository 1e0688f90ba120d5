"""A release's lifetime in the running daemon: judged from its start, accepted after
``policy.accept_after_s`` without a breach episode (or by an operator), then watched for the next
release: a bad accepted release is not rolled back, a newer revision is judged afresh. The state
(API, status page, ``rollbackd_target_state``) and the ``release.accepted`` event say which."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollbackd.actions.targets import KubeTargets
from rollbackd.config.settings import (
    ApiSettings,
    HttpSettings,
    PolicyOverride,
    Settings,
    Side,
    StoreSettings,
    TargetSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.page import Status, Urgency, target_status
from rollbackd.daemon.wiring import open_daemon
from rollbackd.decision.facts import ClusterFacts
from rollbackd.events.model import CloudEvent
from rollbackd.kube import KubeClient
from rollbackd.kube.objects import REVISION_ANNOTATION
from rollbackd.model import Sample, Strategy
from rollbackd.run import Phase
from rollbackd.sources.base import SidePair
from tests.kubefixtures import DEPLOYMENTS, ClusterEmulator, wait_until
from tests.test_daemon import HEALTHY, SEVERE, Api, ScriptedHealth, ScriptedMetrics
from tests.test_daemon_rollbacks import ScriptedTargets
from tests.test_kube_targets import FAST, NS, seed_canary

HOUR = 3600.0
INTERVAL_S = 10.0


def settings(*, accept_after_s: float, interval_s: float = INTERVAL_S, **extra: Any) -> Settings:
    return Settings(
        interval_s=interval_s,
        http=HttpSettings(host="127.0.0.1", port=0),
        api=ApiSettings(allow_unauthenticated_writes=True),
        verification=VerificationSettings(window_s=6 * interval_s),
        targets=(
            TargetSettings(
                name="checkout", namespace=NS, strategy=Strategy.CANARY, baseline=Side(deployment="web"),
                candidate=Side(deployment="web-canary"), ingress="web-canary",
                policy=PolicyOverride(accept_after_s=accept_after_s),
            ),
        ),
        **extra,
    )


async def release_of(api: Api) -> dict[str, Any]:
    release = (await api.target())["lifetime"]
    assert isinstance(release, dict)
    return release


async def state_is(api: Api, state: str) -> float:
    """``rollbackd_target_state`` of the target for ``state`` (1: the target is in it)."""
    return await api.metric("rollbackd_target_state", namespace=NS, target="checkout", state=state)


@pytest.mark.looptime
async def test_accepted_after_an_hour_then_watched_and_the_next_revision_judged_afresh(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_canary(kube_cluster)  # the canary web-canary at revision 1
    config = settings(accept_after_s=HOUR)
    metrics = ScriptedMetrics(HEALTHY)
    access = KubeTargets(kube=kube, settings=config, action_settings=FAST)
    async with (
        aiohttp.ClientSession() as session,
        Daemon(config, metrics_source=metrics, health_source=ScriptedHealth(), targets=access) as daemon,
    ):
        api = Api(session, daemon)
        await wait_until(lambda: daemon.ticks >= 3, timeout_s=5 * INTERVAL_S, what="three ticks")
        release = await release_of(api)
        assert release["state"] == "judged"
        assert release["accepted"] is None
        assert await state_is(api, "healthy") == 1

        async def accepted() -> bool:
            return bool((await release_of(api))["state"] == "accepted")

        started = asyncio.get_running_loop().time()
        await wait_until(accepted, timeout_s=HOUR + 5 * INTERVAL_S, interval_s=INTERVAL_S, what="accepted")
        assert asyncio.get_running_loop().time() - started >= HOUR - 4 * INTERVAL_S  # not before its hour
        release = await release_of(api)
        assert release["accepted"]["text"] == "accepted after 1h"
        assert release["accepted"]["how"] == "accepted-after"
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 1, timeout_s=3 * INTERVAL_S, what="a tick after")
        assert await state_is(api, "accepted") == 1
        assert await state_is(api, "healthy") == 0
        status, page = await api.call("GET", "/")
        assert status == 200
        assert "accepted after 1h, at " in page  # the release's line
        assert target_status(await api.target()) == Status(Urgency.HEALTHY, "accepted after 1h")  # its badge

        # The accepted release turns bad: watched for the next release, not judged.
        metrics.pair = SEVERE
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 6, timeout_s=10 * INTERVAL_S, what="6 severe ticks")
        target = await api.target()
        assert target["decision"]["blocked_by"] == "accepted"
        assert target["decision"]["escalate"] is False
        assert "release accepted after 1h" in " ".join(target["decision"]["reasons"])
        assert daemon.rollbacks.runs.get("shop/checkout") is None
        assert (await release_of(api))["revision"] == 1

        # The next release: revision 2 of the canary, judged on its own data, and rolled back.
        kube_cluster.update(DEPLOYMENTS, NS, "web-canary", {
            "metadata": {"annotations": {REVISION_ANNOTATION: "2"}},
            "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop/web:1.3"}]}}},
        })

        def rolled_back() -> bool:
            run = daemon.rollbacks.runs.get("shop/checkout")
            return run is not None and run.phase is not Phase.ACTING

        await wait_until(rolled_back, timeout_s=20 * INTERVAL_S, interval_s=1.0, what="rev. 2 rolled back")
        release = await release_of(api)
        assert release["previous"]["revision"] == 1, release["previous"]
        assert release["previous"]["text"] == "superseded by revision 2"
        assert release["revision"] == 2
        assert release["state"] == "judged"
        run = daemon.rollbacks.runs["shop/checkout"]
        assert "accepted" not in run.reasons[0]


async def test_an_acceptance_is_announced_once_as_release_accepted(tmp_path: Path) -> None:
    interval_s = 0.1
    config = settings(
        accept_after_s=20 * interval_s, interval_s=interval_s, store=StoreSettings(data_dir=str(tmp_path))
    )
    cluster = ScriptedTargets()
    heard: list[CloudEvent] = []
    async with (
        aiohttp.ClientSession() as session,
        open_daemon(config, metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth(),
                    targets=cluster) as daemon,
    ):
        daemon.journal.add_event_listener(heard.append)
        api = Api(session, daemon)
        await wait_until(lambda: daemon.journal.attached and daemon.ready, timeout_s=30, what="ready")

        def announced() -> list[CloudEvent]:
            return [event for event in heard if event.short_type == "release.accepted"]

        await wait_until(lambda: bool(announced()), timeout_s=60, what="release.accepted")
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 5, timeout_s=30, what="five ticks more")
        (event,) = announced()  # once
        body = event.to_json()
        assert body["type"] == "io.rollbackd.release.accepted"
        assert body["subject"] == "shop/checkout"
        assert body["data"]["how"] == "accepted-after"
        assert body["data"]["text"].startswith("accepted after ")
        assert body["data"]["judged_s"] >= 20 * interval_s
        assert "watched for the next release" in body["data"]["summary"]
        # The retained status a subscriber reads says so too.
        assert (await api.target())["decision"]["blocked_by"] == "accepted"
        history = await api.call("GET", "/api/v1/history?target=shop/checkout")
        assert history[0] == 200
        assert any(entry.get("kind") == "release.accepted" for entry in history[1]["entries"]), history[1]


# --- announced releases: the next release, judged from its own start ------------------------------

KEY = "shop/checkout"
GOOD: SidePair = (None, Sample(requests=1000, errors=2))
BAD: SidePair = (None, Sample(requests=1000, errors=300))


def flag_target_settings(*, accept_after_s: float, interval_s: float = INTERVAL_S) -> Settings:
    """A Deployment's service judged against its own past, whose flag flips are announced."""
    return Settings(
        interval_s=interval_s,
        http=HttpSettings(host="127.0.0.1", port=0),
        api=ApiSettings(allow_unauthenticated_writes=True),
        verification=VerificationSettings(window_s=6 * interval_s),
        targets=(
            TargetSettings(
                name="checkout", namespace=NS, strategy=Strategy.DEPLOYMENT,
                candidate=Side(deployment="checkout"), policy=PolicyOverride(accept_after_s=accept_after_s),
            ),
        ),
    )


@pytest.mark.looptime
async def test_an_announced_release_ends_the_operators_acceptance_and_is_judged_again() -> None:
    metrics = ScriptedMetrics(GOOD)
    cluster = ScriptedTargets(facts_value=ClusterFacts(candidate_revision=5))
    async with (
        aiohttp.ClientSession() as session,
        Daemon(flag_target_settings(accept_after_s=0.0), metrics_source=metrics,
               health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        api = Api(session, daemon)
        await wait_until(lambda: daemon.ticks >= 6, timeout_s=10 * INTERVAL_S, what="six healthy ticks")
        status, view = await api.call("POST", f"/api/v1/targets/{KEY}/accept", {"reason": "all quiet"})
        assert status == 200, view

        async def in_state(state: str) -> bool:
            return bool((await release_of(api))["state"] == state)

        await wait_until(lambda: in_state("accepted"), timeout_s=5 * INTERVAL_S, what="accepted by anonymous")

        status, answer = await api.call("POST", "/api/v1/releases", {"id": "flag-on-1", "target": KEY,
                                                                     "kind": "flag"})
        assert status == 201, answer
        release = await release_of(api)
        assert (release["state"], release["release"]) == ("judged", "flag-on-1")
        assert release["previous"]["text"] == "superseded by release flag-on-1"

        async def acceptance_withdrawn() -> bool:
            return (await api.target())["accepted"] is None

        await wait_until(acceptance_withdrawn, timeout_s=5 * INTERVAL_S, what="the acceptance withdrawn")
        assert await in_state("judged")  # the old acceptance does not come back on the next ticks
        # The flag's release is judged: bad, it is rolled back (not blocked by the old acceptance).
        metrics.pair = BAD
        await wait_until(lambda: cluster.runs == [False], timeout_s=20 * INTERVAL_S, what="rolled back")


async def test_accept_after_s_counts_from_the_release_start_not_from_the_replicas() -> None:
    """A release that started before this replica watched the target (a fail-over, a restart, a
    pipeline announcing late) is accepted accept_after_s after its start."""
    accept_after_s, interval_s = 6.0, 0.1
    async with (
        aiohttp.ClientSession() as session,
        Daemon(flag_target_settings(accept_after_s=accept_after_s, interval_s=interval_s),
               metrics_source=ScriptedMetrics(GOOD), health_source=ScriptedHealth(),
               targets=ScriptedTargets()) as daemon,
    ):
        api = Api(session, daemon)
        await wait_until(lambda: daemon.ticks >= 3, timeout_s=30, what="three ticks")
        started = datetime.now(UTC) - timedelta(seconds=accept_after_s - 1.5)
        status, answer = await api.call("POST", "/api/v1/releases", {
            "id": "config-abc123", "target": KEY, "kind": "config", "started_at": started.isoformat(),
        })
        assert status == 201, answer
        announced_at = asyncio.get_running_loop().time()
        release = await release_of(api)
        assert release["release"] == "config-abc123"
        shown = datetime.fromisoformat(release["started_at"])
        assert abs((shown - started).total_seconds()) < 0.05, (release["started_at"], started)

        async def accepted() -> bool:
            return bool((await release_of(api))["state"] == "accepted")

        await wait_until(accepted, timeout_s=30, what="accepted")
        assert asyncio.get_running_loop().time() - announced_at < accept_after_s - 1.0
        release = await release_of(api)
        assert release["release"] == "config-abc123"
        assert release["accepted"]["how"] == "accepted-after"
        assert release["accepted"]["judged_s"] >= accept_after_s
