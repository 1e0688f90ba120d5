"""What a rollback restrains outlives the process that took it: a restarted daemon (or a new
leader sharing the store) recalls the recent rollbacks from the audit log, so a target that
degrades again within its cooldown and post-rollback watch is escalated, not rolled back a second
time. The real daemon and a real SQLite store; scripted metrics and cluster behind their
protocols."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollbackd.config.settings import (
    Defaults,
    EventsSettings,
    HttpSettings,
    PolicySettings,
    Settings,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.rollbackmap import ConfigMapRollbacks
from rollbackd.daemon.switchmap import ConfigMapSwitches
from rollbackd.daemon.wiring import open_daemon
from rollbackd.kube import KubeClient
from rollbackd.run import Phase
from tests.kubefixtures import CONFIGMAPS, ClusterEmulator, wait_until
from tests.test_daemon import HEALTHY, SEVERE, Api, ScriptedHealth, ScriptedMetrics, canary
from tests.test_daemon_rollbacks import ScriptedTargets

KEY = "shop/checkout"


def config(data_dir: Path) -> Settings:
    return Settings(
        interval_s=0.2,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(data_dir)),
        verification=VerificationSettings(window_s=1.0, watch_s=1800.0),
        events=EventsSettings(kubernetes_events=False),
        targets=(canary("checkout"),),
    )


async def rolled_back_and_verified(
    daemon: Daemon, cluster: ScriptedTargets, metrics: ScriptedMetrics
) -> None:
    """The target's rollback acted on once, the metrics healthy again, and the rollback verified."""
    await wait_until(lambda: cluster.runs == [False], what="the rollback's action")
    metrics.pair = HEALTHY  # the rollback worked
    await wait_until(
        lambda: (run := daemon.rollbacks.runs.get(KEY)) is not None and run.phase is Phase.VERIFIED,
        timeout_s=60,
        what="the rollback verified",
    )


async def test_a_restarted_daemon_keeps_the_cooldown_and_watch_of_the_rollback_before_it(
    tmp_path: Path,
) -> None:
    settings = config(tmp_path / "data")
    metrics, first = ScriptedMetrics(SEVERE), ScriptedTargets(action_s=0.1)
    async with open_daemon(
        settings, metrics_source=metrics, health_source=ScriptedHealth(), targets=first
    ) as daemon:
        await rolled_back_and_verified(daemon, first, metrics)

    # The next process finds the target failing again, within the cooldown and the watch.
    second = ScriptedTargets(action_s=0.1)
    async with (
        open_daemon(
            settings, metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(), targets=second
        ) as daemon,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, daemon)
        shown: dict[str, Any] = {}

        async def escalated() -> bool:
            nonlocal shown
            shown = await api.target()
            decision = shown.get("decision") or {}
            return bool(decision.get("escalate")) and decision.get("blocked_by") == "post-rollback-watch"

        await wait_until(escalated, timeout_s=60, what="the new breach escalated by the recalled watch")
        assert shown["watch"] is not None
        assert 1700 < shown["watch"]["remaining_s"] <= 1800
        assert shown["cooldown"] is not None
        await wait_until(lambda: daemon.ticks >= 15, what="more ticks of the breach")
        assert second.runs == []  # escalated, never rolled back a second time


async def test_a_new_leader_with_its_own_store_recalls_the_rollbacks_kept_in_the_configmap(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    """Replicas with one SQLite file each (the chart's default): the new leader's audit log does not
    hold the old leader's rollback, the ConfigMap beside the switches does."""
    switches = ConfigMapSwitches(kube=kube, namespace="rollbackd", name="rollbackd-switches")
    shared = ConfigMapRollbacks(switches)
    metrics, first = ScriptedMetrics(SEVERE), ScriptedTargets(action_s=0.1)
    async with open_daemon(
        config(tmp_path / "a"), metrics_source=metrics, health_source=ScriptedHealth(), targets=first,
        shared_rollbacks=shared,
    ) as daemon:
        await rolled_back_and_verified(daemon, first, metrics)
        run_id = daemon.rollbacks.runs[KEY].run_id

        async def kept_verified() -> bool:
            return [(r.run_id, r.verified_at is not None) for r in await shared.read()] == [(run_id, True)]

        await wait_until(kept_verified, what="the rollback and its verification kept in the ConfigMap")
    stored = kube_cluster.read(CONFIGMAPS, "rollbackd", "rollbackd-switches") or {}
    assert set(stored["data"]) == {"rolled-back.shop.checkout"}

    # The next leader, with a store of its own, finds the target failing again.
    second = ScriptedTargets(action_s=0.1)
    async with (
        open_daemon(
            config(tmp_path / "b"), metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
            targets=second, shared_rollbacks=shared,
        ) as daemon,
        aiohttp.ClientSession() as session,
    ):
        api = Api(session, daemon)

        async def escalated() -> bool:
            decision = (await api.target()).get("decision") or {}
            return bool(decision.get("escalate")) and decision.get("blocked_by") == "post-rollback-watch"

        await wait_until(escalated, timeout_s=60,
                         what="the new breach escalated by the watch kept in the ConfigMap")
        shown = await api.target()
        assert 1700 < shown["watch"]["remaining_s"] <= 1800
        assert shown["cooldown"] is not None
        await wait_until(lambda: daemon.ticks >= 15, what="more ticks of the breach")
        assert second.runs == []  # escalated, never rolled back a second time


class Lease:
    """A leader election this test decides: leading while ``is_leader``."""

    is_leader = True


async def test_a_leader_that_leads_again_does_not_count_its_own_rollbacks_twice(tmp_path: Path) -> None:
    """Leadership lost and won again recalls the last hour's rollbacks again: those this process
    took are counted once towards the hourly cap (here 2), so a second rollback is still allowed."""
    settings = config(tmp_path / "data").model_copy(update={
        "verification": VerificationSettings(window_s=1.0, watch_s=0.0),
        "defaults": Defaults(policy=PolicySettings(cooldown_s=0.0, max_rollbacks_per_hour=2)),
    })
    metrics, cluster, lease = ScriptedMetrics(SEVERE), ScriptedTargets(action_s=0.1), Lease()
    async with open_daemon(
        settings, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster, leader=lease
    ) as daemon:
        await wait_until(lambda: cluster.runs == [False], what="the first rollback's action")
        metrics.pair = HEALTHY
        await wait_until(
            lambda: (run := daemon.rollbacks.runs.get(KEY)) is not None and run.phase is Phase.VERIFIED,
            timeout_s=60,
            what="the first rollback verified",
        )
        for leads in (False, True):  # a lost Lease, won back
            lease.is_leader = leads
            ticks = daemon.ticks
            await wait_until(lambda ticks=ticks: daemon.ticks >= ticks + 3, what="three ticks")
        metrics.pair = SEVERE  # the next release fails too: the cap (2 an hour) allows its rollback
        await wait_until(lambda: cluster.runs == [False, False], timeout_s=60,
                         what="the second rollback, within the hourly cap")


async def test_rollbacks_in_the_configmap_that_cannot_be_read_are_left_out_and_the_rest_recalled(
    kube_cluster: ClusterEmulator, kube: KubeClient, caplog: pytest.LogCaptureFixture
) -> None:
    good = {"run_id": "r-1", "started_at": "2026-12-07T10:00:00+00:00", "verified_at": None}
    kube_cluster.store(CONFIGMAPS, "rollbackd", {
        "metadata": {"name": "rollbackd-switches", "namespace": "rollbackd"},
        "data": {
            "rolled-back.shop.checkout": json.dumps(
                [good, {"run_id": 7}, "x", {"run_id": "r-2", "started_at": "?"}]
            ),
            "rolled-back.shop.cart": "{not json",
            "freeze": json.dumps({"on": False}),
        },
    })
    switches = ConfigMapSwitches(kube=kube, namespace="rollbackd", name="rollbackd-switches")
    (kept,) = await ConfigMapRollbacks(switches).read()
    assert (kept.target, kept.run_id, kept.verified_at) == ("shop/checkout", "r-1", None)
    assert "rolled-back.shop.cart is not a list of rollbacks" in caplog.text
    assert caplog.text.count("cannot be read, ignored") == 3


async def test_a_rollback_the_old_leader_left_under_way_is_finished_by_the_new_one_from_the_configmap(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    switches = ConfigMapSwitches(kube=kube, namespace="rollbackd", name="rollbackd-switches")
    shared = ConfigMapRollbacks(switches)
    first = ScriptedTargets(action_s=3600.0)  # lost in the middle of its action
    async with open_daemon(
        config(tmp_path / "a"), metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
        targets=first, shared_rollbacks=shared,
    ) as daemon:
        await wait_until(lambda: first.runs == [False], what="the rollback's action under way")
        run_id = daemon.rollbacks.runs[KEY].run_id

        async def kept_under_way() -> bool:
            return [(r.run_id, r.record is not None) for r in await shared.read()] == [(run_id, True)]

        await wait_until(kept_under_way, what="the rollback under way kept in the ConfigMap")

    # The next leader, with a store of its own: the same run, finished and verified.
    second, metrics = ScriptedTargets(action_s=0.1), ScriptedMetrics(HEALTHY)
    async with open_daemon(
        config(tmp_path / "b"), metrics_source=metrics, health_source=ScriptedHealth(), targets=second,
        shared_rollbacks=shared,
    ) as daemon:
        await wait_until(lambda: second.runs == [False], timeout_s=60, what="the action run again")
        run = daemon.rollbacks.runs[KEY]
        assert (run.run_id, run.resumed) == (run_id, True)
        await wait_until(lambda: run.phase is Phase.VERIFIED, timeout_s=60, what="the rollback verified")

        async def kept_verified() -> bool:
            return [(r.run_id, r.phase, r.record) for r in await shared.read()] == [
                (run_id, Phase.VERIFIED, None)
            ]

        await wait_until(kept_verified, what="its verification kept, and its record dropped")
        await wait_until(lambda: daemon.ticks >= 10, what="more ticks")
        assert second.runs == [False]  # finished once

    # The old leader comes back and leads again: its own store still holds the run under way, the
    # ConfigMap says it is over: it is not carried out a second time.
    third = ScriptedTargets(action_s=0.1)
    async with open_daemon(
        config(tmp_path / "a"), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth(),
        targets=third, shared_rollbacks=shared,
    ) as daemon:
        await wait_until(lambda: daemon.journal.store is not None, timeout_s=30, what="the store open")
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 10, what="ten ticks with the store open")
        assert third.runs == []
        assert daemon.rollbacks.runs.get(KEY) is None
        assert await daemon.journal.runs_in_flight([KEY]) == {}  # its stale record is gone
