"""The configuration lever against the emulated API server, through the real client, over HTTP:
ConfigMaps put back to their previous data, the Deployments that read them restarted like
``kubectl rollout restart``, and someone else's edit never overwritten."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from rollbackd.actions.base import ActionOutcome, Change
from rollbackd.actions.config_restore import RESTARTED_AT, ConfigRestore
from rollbackd.demo.emulator import CONFIGMAPS
from rollbackd.kube import KubeClient, Obj
from rollbackd.kube.errors import KubeCall
from rollbackd.model import ConfigMapVersion
from rollbackd.store import Store, open_store
from tests.kubefixtures import DEPLOYMENTS, ClusterEmulator, Controllers, seed_deployment
from tests.test_actions_deployment_undo import FAST

NS = "shop"
GOOD = {"checkout.timeout_ms": "800", "payments.url": "http://payments.shop"}
BAD = {"checkout.timeout_ms": "80", "payments.url": "http://payments.shop"}
AT = datetime(2026, 12, 6, 21, 0, 0, tzinfo=UTC)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """The store the versions are kept in (SQLite)."""
    opened = open_store(None, data_dir=tmp_path)
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


async def keep(store: Store, obj: Obj) -> None:
    """What the daemon's watch of the ConfigMap keeps when it sees ``obj``."""
    await store.add_config_version(
        ConfigMapVersion(namespace=NS, name=obj["metadata"]["name"],
                         resource_version=str(obj["metadata"]["resourceVersion"]), data=dict(obj["data"])),
        keep_versions=20, keep_age_s=86400,
    )


async def seed(emu: ClusterEmulator, store: Store) -> None:
    """The ConfigMap at its good version, then changed to the bad one (both seen and kept); the
    Deployment that reads it."""
    await keep(store, emu.store(CONFIGMAPS, NS, {"metadata": {"name": "checkout-config", "namespace": NS},
                                                 "data": GOOD}))
    await keep(store, emu.update(CONFIGMAPS, NS, "checkout-config", {"data": {"checkout.timeout_ms": "80"}}))
    seed_deployment(emu, NS, "checkout", replicas=2, image="shop/checkout:2.3")


def restore(kube: KubeClient, store: Store, *, restart: tuple[str, ...] = ("checkout",)) -> ConfigRestore:
    return ConfigRestore(kube=kube, target=f"{NS}/checkout", namespace=NS, configmaps=("checkout-config",),
                         history=store, restart=restart, settings=FAST, wall_clock=lambda: AT)


def data(emu: ClusterEmulator) -> dict[str, str]:
    found = emu.read(CONFIGMAPS, NS, "checkout-config")
    assert found is not None
    return dict(found["data"])


def restarted_at(emu: ClusterEmulator) -> str | None:
    deployment: Obj | None = emu.read(DEPLOYMENTS, NS, "checkout")
    assert deployment is not None
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    return annotations.get(RESTARTED_AT)


async def test_the_previous_data_is_restored_and_the_readers_restarted(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, store: Store
) -> None:
    await seed(kube_cluster, store)
    result = await restore(kube, store).run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert data(kube_cluster) == GOOD
    assert restarted_at(kube_cluster) == "2026-12-06T21:00:00Z"
    assert [(c.object, c.field, c.before, c.after) for c in result.changes] == [
        ("ConfigMap/shop/checkout-config", "data",
         {"checkout.timeout_ms": "80"}, {"checkout.timeout_ms": "800"}),
        ("Deployment/shop/checkout", f"spec.template.metadata.annotations[{RESTARTED_AT}]", None,
         "2026-12-06T21:00:00Z"),
    ]
    assert "restored the ConfigMaps checkout-config" in result.reason


async def test_a_conflict_re_reads_and_re_applies(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, store: Store
) -> None:
    await seed(kube_cluster, store)
    conflicted = kube_cluster.conflict("patch", CONFIGMAPS, namespace=NS, name="checkout-config")
    result = await restore(kube, store).run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert len(conflicted) == 1
    assert data(kube_cluster) == GOOD


async def test_an_edit_by_someone_else_since_the_release_is_never_overwritten(
    kube_cluster: ClusterEmulator, kube: KubeClient, store: Store
) -> None:
    await seed(kube_cluster, store)
    kube_cluster.update(CONFIGMAPS, NS, "checkout-config", {"data": {"checkout.timeout_ms": "500"}})
    result = await restore(kube, store).run(dry_run=False)
    assert result.outcome is ActionOutcome.REFUSED
    assert "changed by someone else" in result.reason
    assert data(kube_cluster)["checkout.timeout_ms"] == "500"
    assert restarted_at(kube_cluster) is None


class EditingRecorder:
    """A run's record, while someone edits the ConfigMap right after the plan, before the write."""

    def __init__(self, emu: ClusterEmulator) -> None:
        self.emu = emu

    async def intend(self, changes: Sequence[Change]) -> bool:
        if any(change.object.startswith("ConfigMap/") for change in changes):
            self.emu.update(CONFIGMAPS, NS, "checkout-config", {"data": {"checkout.timeout_ms": "500"}})
        return True

    async def made(self, intended: Sequence[Change], made: Sequence[Change]) -> None:
        return None


async def test_an_edit_during_the_rollback_fails_it_with_the_reason(
    kube_cluster: ClusterEmulator, kube: KubeClient, store: Store
) -> None:
    await seed(kube_cluster, store)
    result = await restore(kube, store).run(dry_run=False, recorder=EditingRecorder(kube_cluster))
    assert result.outcome is ActionOutcome.FAILED
    assert "edited by someone else during the rollback" in result.reason
    assert "(nothing was changed)" in result.reason
    assert data(kube_cluster)["checkout.timeout_ms"] == "500"
    assert restarted_at(kube_cluster) is None


async def test_a_configmap_deleted_before_the_rollback_is_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient, store: Store
) -> None:
    await seed(kube_cluster, store)
    await kube.request(KubeCall("delete", "configmaps", "", NS, "checkout-config"),
                       kube.core.delete_namespaced_config_map, "checkout-config", NS)
    result = await restore(kube, store).run(dry_run=False)
    assert result.outcome is ActionOutcome.REFUSED
    assert "the ConfigMap shop/checkout-config does not exist" in result.reason


async def test_already_restored_data_is_left_alone_and_dry_run_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, store: Store
) -> None:
    await seed(kube_cluster, store)
    plan = await restore(kube, store).run(dry_run=True)
    assert plan.outcome is ActionOutcome.PLANNED
    assert len(plan.changes) == 2
    assert data(kube_cluster) == BAD
    assert restarted_at(kube_cluster) is None
    kube_cluster.update(CONFIGMAPS, NS, "checkout-config", {"data": {"checkout.timeout_ms": "800"}})
    result = await restore(kube, store, restart=()).run(dry_run=False)
    assert result.outcome is ActionOutcome.ALREADY_DONE, result.reason
    assert result.changes == ()


async def test_without_an_earlier_version_or_after_a_restore_it_refuses(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, store: Store
) -> None:
    good = kube_cluster.store(CONFIGMAPS, NS, {"metadata": {"name": "checkout-config", "namespace": NS},
                                               "data": GOOD})
    await keep(store, good)
    seed_deployment(kube_cluster, NS, "checkout", replicas=2, image="shop/checkout:2.3")
    result = await restore(kube, store).run(dry_run=False)
    assert result.outcome is ActionOutcome.REFUSED
    assert "no earlier data to go back to" in result.reason
    # A bad change, its rollback (the restored data is seen as a new version): a second rollback
    # would put the bad data back, so it is refused.
    bad = kube_cluster.update(CONFIGMAPS, NS, "checkout-config", {"data": {"checkout.timeout_ms": "80"}})
    await keep(store, bad)
    assert (await restore(kube, store).run(dry_run=False)).outcome is ActionOutcome.DONE
    restored = kube_cluster.read(CONFIGMAPS, NS, "checkout-config")
    assert restored is not None
    await keep(store, restored)  # as the watch sees the restored data: a version of its own
    again = await restore(kube, store).run(dry_run=False)
    assert again.outcome is ActionOutcome.REFUSED
    assert "going back would put back the data of version" in again.reason
    assert data(kube_cluster) == GOOD
