"""Announced releases in the switches' ConfigMap, for replicas that do not share a store, against
kmock's emulated API server over real HTTP: kept once per id (a second announcement gets the first
back), bounded to each target's latest releases, written with the ``resourceVersion`` read (a 409
reads again; replicas announcing at once lose nothing), and taken by another replica's release
book, which judges the target from the release's start."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

from rollbackd.daemon.journal import Journal
from rollbackd.daemon.releasemap import KEEP_PER_TARGET, ConfigMapReleases
from rollbackd.daemon.releases import ReleaseBook
from rollbackd.daemon.state import DaemonState
from rollbackd.kube import KubeClient
from rollbackd.releases import Release
from tests.kubefixtures import CONFIGMAPS, ClusterEmulator
from tests.test_daemon import make_settings
from tests.test_switches_configmap import NAME, NAMESPACE, place

TARGET = "shop/checkout"
START = datetime(2026, 12, 6, 17, 0, tzinfo=UTC)


def flag_release(number: int, *, target: str = TARGET) -> Release:
    return Release(id=f"flag-on-{number}", target=target, kind="flag", description=f"flip {number}",
                   started_at=START + timedelta(minutes=number), details={"flag": "new_checkout"}, who="ci")


def book(kube: KubeClient) -> tuple[DaemonState, ReleaseBook]:
    """A replica's targets and release book, sharing the releases through the ConfigMap (its own
    store is left out: only the ConfigMap connects the replicas)."""
    state = DaemonState(make_settings())
    return state, ReleaseBook(state, journal=Journal(required=False),
                              shared=ConfigMapReleases(place(kube)), lookback_s=10 * 365 * 86400.0)


async def test_a_release_is_kept_once_by_id_and_only_the_latest_of_each_target(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    releases = ConfigMapReleases(place(kube))
    assert await releases.read() == []
    assert kube_cluster.read(CONFIGMAPS, NAMESPACE, NAME) is None  # reading creates nothing

    first = flag_release(1)
    assert await releases.add(first) == (first, True)
    configmap = kube_cluster.read(CONFIGMAPS, NAMESPACE, NAME) or {}
    assert json.loads(configmap["data"]["release.shop.checkout"]) == [first.to_json()]
    # Announced again (a retried pipeline step, maybe to another replica): the first one comes back.
    again = Release(id=first.id, target=TARGET, kind="flag", started_at=START + timedelta(hours=1))
    assert await releases.add(again) == (first, False)
    assert await releases.read() == [first]

    for number in range(2, KEEP_PER_TARGET + 3):
        await releases.add(flag_release(number))
    other = flag_release(1, target="shop/web")
    await releases.add(other)
    kept = await releases.read()
    assert [r.id for r in kept if r.target == TARGET] == [
        f"flag-on-{n}" for n in range(3, KEEP_PER_TARGET + 3)
    ]
    assert other in kept
    # A release older than every one kept is not kept (the judge takes the latest).
    assert (await releases.add(flag_release(0)))[1] is True
    assert flag_release(0) not in await releases.read()


async def test_a_conflict_reads_again_and_replicas_announcing_at_once_lose_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    releases = ConfigMapReleases(place(kube))
    await releases.add(flag_release(1))
    conflicts = kube_cluster.conflict("update", CONFIGMAPS, namespace=NAMESPACE, name=NAME, times=2)
    assert (await releases.add(flag_release(2)))[1] is True
    assert len(conflicts) == 2  # refused twice, kept on the third attempt
    assert [r.id for r in await releases.read()] == ["flag-on-1", "flag-on-2"]

    racing = [ConfigMapReleases(place(kube)) for _ in range(3)]
    results = await asyncio.gather(*(
        replica.add(flag_release(number)) for replica, number in zip(racing, (3, 4, 5), strict=True)
    ))
    assert all(created for _, created in results)
    assert [r.id for r in await releases.read()] == [f"flag-on-{n}" for n in range(1, 6)]


async def test_a_release_announced_to_one_replica_is_judged_by_the_other(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    standby_state, standby = book(kube)
    leader_state, leader = book(kube)
    now = datetime.now(UTC).replace(microsecond=0)
    release = Release(id="flag-on-9", target=TARGET, kind="flag", started_at=now, who="ci")
    assert await standby.announce(release) == (release, True)
    assert standby_state.targets[TARGET].release == release
    assert leader_state.targets[TARGET].release is None

    assert await leader.sync() is True
    assert leader_state.targets[TARGET].release == release
    lifetime = leader_state.targets[TARGET].lifetime
    assert lifetime is not None
    assert lifetime.release == "flag-on-9"  # judged from the release on
    # The leader is asked again (the pipeline retries against it): one release.
    assert await leader.announce(Release(id="flag-on-9", target=TARGET, kind="flag",
                                         started_at=datetime.now(UTC))) == (release, False)
