"""The daemon rolling a configuration change back, closed loop, on the emulated cluster through the
real client: it keeps the versions of the target's ConfigMap as it watches it, the app's errors
follow the ConfigMap's data, a bad change is decided on, the previous data is put back and the
Deployment restarted, and the verification sees the errors gone."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path

from rollbackd.actions.config_restore import RESTARTED_AT
from rollbackd.actions.targets import KubeTargets
from rollbackd.config.settings import ConfigLeverSettings, Settings, Side, TargetSettings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.wiring import open_daemon
from rollbackd.demo.emulator import CONFIGMAPS
from rollbackd.kube import KubeClient, objects
from rollbackd.model import RESTORED_FROM_ANNOTATION, Sample, Strategy
from rollbackd.run import Phase
from rollbackd.sources.base import SidePair, SourceTarget
from rollbackd.store import open_store
from tests.kubefixtures import DEPLOYMENTS, ClusterEmulator, Controllers, seed_deployment, wait_until
from tests.test_actions_rollout import FAST
from tests.test_daemon import ScriptedHealth
from tests.test_daemon_command import one_target

NS = "shop"
KEY = "shop/checkout"
REQUESTS = 1000


class ConfigFollowingApp:
    """The app's metrics: it fails 30% of its requests while its ConfigMap sets a timeout too short
    for its payments calls (what the cluster stores now), 0.2% otherwise."""

    def __init__(self, emu: ClusterEmulator) -> None:
        self._emu = emu
        self.ticks = 0

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        self.ticks += 1
        config = self._emu.read(CONFIGMAPS, NS, "checkout-config") or {}
        short = int((config.get("data") or {}).get("payments.timeout_ms", "800")) < 200
        errors = REQUESTS * (0.3 if short else 0.002)
        return {target.key: (None, Sample(requests=REQUESTS, errors=errors)) for target in targets}


def settings(data_dir: Path) -> Settings:
    return one_target(data_dir, TargetSettings(
        name="checkout", namespace=NS, strategy=Strategy.CONFIG, candidate=Side(deployment="checkout"),
        config=ConfigLeverSettings(configmaps=("checkout-config",), restart=("checkout",)),
    ))


async def test_a_bad_config_change_is_restored_the_readers_restarted_and_verified(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, tmp_path: Path
) -> None:
    kube_cluster.store(CONFIGMAPS, NS, {"metadata": {"name": "checkout-config", "namespace": NS},
                                        "data": {"payments.timeout_ms": "800"}})
    seed_deployment(kube_cluster, NS, "checkout", replicas=2, image="shop/checkout:2.3")
    config = settings(tmp_path)
    app = ConfigFollowingApp(kube_cluster)
    async with open_daemon(
        config, metrics_source=app, health_source=ScriptedHealth(),
        targets=KubeTargets(kube=kube, settings=config, action_settings=FAST), kube=kube,
    ) as daemon:
        await wait_until(lambda: app.ticks >= 20 and daemon.journal.store is not None, timeout_s=30,
                         what="20 healthy ticks with the store open")
        # The release: someone shortens the timeout, through the API (the watch sees it).
        await objects.patch_configmap(kube, namespace=NS, name="checkout-config",
                                      patch={"data": {"payments.timeout_ms": "80"}})

        def verified() -> bool:
            run = daemon.rollbacks.runs.get(KEY)
            return run is not None and run.phase is Phase.VERIFIED

        await wait_until(verified, timeout_s=60, what="the configuration rollback verified")
        run = daemon.rollbacks.runs[KEY]
        assert run.action is not None
        assert run.action.action == "config-restore"
        # The watch sees the restored data too: kept (800, 80, 800 again), but not a release.
        await wait_until(lambda: kept_count(daemon, 3), timeout_s=30, what="the restored data kept")
    stored = kube_cluster.read(CONFIGMAPS, NS, "checkout-config")
    assert stored is not None
    assert stored["data"] == {"payments.timeout_ms": "800"}
    deployment = kube_cluster.read(DEPLOYMENTS, NS, "checkout")
    assert deployment is not None
    assert RESTARTED_AT in deployment["spec"]["template"]["metadata"]["annotations"]
    store = open_store(None, data_dir=tmp_path)
    await store.open()
    try:
        history = await store.history(target=KEY)
    finally:
        await store.close()
    kinds = [entry.kind for entry in history]
    assert kinds.count("release.started") == 1  # the change was announced as a release; its undoing not
    assert "rollback.verified" in kinds
    started = next(entry for entry in history if entry.kind == "release.started")
    assert "ConfigMap shop/checkout-config changed" in started.summary


async def test_a_change_marked_as_rollbackds_restore_but_bringing_new_data_is_announced_as_a_release(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    kube_cluster.store(CONFIGMAPS, NS, {"metadata": {"name": "checkout-config", "namespace": NS},
                                        "data": {"payments.timeout_ms": "800"}})
    config = settings(tmp_path)
    app = ConfigFollowingApp(kube_cluster)
    async with open_daemon(config, metrics_source=app, health_source=ScriptedHealth(), kube=kube) as daemon:
        await wait_until(lambda: daemon.journal.store is not None, timeout_s=30, what="the store open")
        await wait_until(lambda: kept_count(daemon, 1), timeout_s=30, what="the ConfigMap's data kept")
        (first,) = await kept_versions(daemon)
        # Someone's edit carries the lever's mark, naming the version it replaces: its data was
        # never kept before, so it is no restore.
        await objects.patch_configmap(kube, namespace=NS, name="checkout-config", patch={
            "metadata": {"annotations": {RESTORED_FROM_ANNOTATION: first}},
            "data": {"payments.timeout_ms": "900"},
        })
        await wait_until(lambda: kept_count(daemon, 2), timeout_s=30, what="the edit kept")
        releases = await daemon.releases.recent(target=KEY, since=None, limit=10)
        assert [release.kind for release in releases] == ["config"], releases
        assert releases[0].details["previous_resource_version"] == first


async def kept_count(daemon: Daemon, count: int) -> bool:
    return len(await kept_versions(daemon)) >= count


async def kept_versions(daemon: Daemon) -> list[str]:
    """The resourceVersions of checkout-config the daemon's store keeps, newest first."""
    store = daemon.journal.store
    assert store is not None
    return [v.resource_version for v in await store.config_versions(NS, "checkout-config", limit=20)]


async def test_a_config_target_added_by_a_reload_is_watched_at_once_and_no_more_once_removed(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    kube_cluster.store(CONFIGMAPS, NS, {"metadata": {"name": "checkout-config", "namespace": NS},
                                        "data": {"payments.timeout_ms": "800"}})
    first = one_target(tmp_path, TargetSettings(
        name="web", namespace="edge", strategy=Strategy.DEPLOYMENT, candidate=Side(deployment="web"),
    ))
    config_target = settings(tmp_path).targets[0]
    app = ConfigFollowingApp(kube_cluster)
    async with open_daemon(first, metrics_source=app, health_source=ScriptedHealth(), kube=kube) as daemon:
        await wait_until(lambda: daemon.journal.store is not None, timeout_s=30, what="the store open")
        assert await kept_versions(daemon) == []  # no config target: nothing watched

        # The reload adds the config target: its ConfigMap is kept as it is now, then its changes.
        change = daemon.apply_settings(first.model_copy(update={"targets": (*first.targets, config_target)}))
        assert KEY in change.added

        async def kept(count: int) -> bool:
            return len(await kept_versions(daemon)) >= count

        await wait_until(lambda: kept(1), timeout_s=30, what="the ConfigMap's data kept after the reload")
        await objects.patch_configmap(kube, namespace=NS, name="checkout-config",
                                      patch={"data": {"payments.timeout_ms": "80"}})
        await wait_until(lambda: kept(2), timeout_s=30, what="the change kept")
        (release,) = await daemon.releases.recent(target=KEY, since=None, limit=10)
        assert release.kind == "config"
        assert release.details["keys"] == ["payments.timeout_ms"]

        # The reload removes it: its namespace is not watched any more (its task stopped).
        daemon.apply_settings(first)
        before = await kept_versions(daemon)
        await wait_until(lambda: not any(task.get_name() == f"rollbackd:config-watch:{NS}"
                                         for task in asyncio.all_tasks()),
                         timeout_s=30, what="the namespace's watch stopped")
        await objects.patch_configmap(kube, namespace=NS, name="checkout-config",
                                      patch={"data": {"payments.timeout_ms": "900"}})
        ticks = app.ticks
        await wait_until(lambda: app.ticks >= ticks + 10, timeout_s=30, what="ten ticks after the change")
        assert await kept_versions(daemon) == before
