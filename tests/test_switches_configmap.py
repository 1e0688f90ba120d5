"""The switches in a ConfigMap, against kmock's emulated API server over real HTTP: a missing
ConfigMap holds no switch and is created by the first write; a write carries the
``resourceVersion`` it read, and one refused with 409 (another replica wrote in between) is read
again and retried, losing nobody's switch; the watch makes another replica apply a switch at once
(no poll needed), and reads the ConfigMap again after the watch breaks; ``safety.switches: auto``
keeps them in the store when it is shared, else in the ConfigMap when replicas elect a leader."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import pytest

from rollbackd.backoff import Backoff
from rollbackd.config.settings import Settings
from rollbackd.daemon.main import switch_store_for
from rollbackd.daemon.state import DaemonState
from rollbackd.daemon.switches import FREEZE, SwitchBoard
from rollbackd.daemon.switchmap import ConfigMapSwitches
from rollbackd.kube import KubeClient, KubeConfigError
from tests.kubefixtures import CONFIGMAPS, ClusterEmulator, wait_until
from tests.test_daemon import make_settings

NAMESPACE = "rollbackd"
NAME = "rollbackd-switches"
#: Fast retries, so that a test of the retries takes no time.
QUICK = Backoff(initial_s=0.01, max_s=0.05)


def place(kube: KubeClient) -> ConfigMapSwitches:
    return ConfigMapSwitches(kube=kube, namespace=NAMESPACE, name=NAME, write_backoff=QUICK,
                             watch_backoff=QUICK)


def replica(
    kube: KubeClient, *, poll_s: float = 3600.0
) -> tuple[DaemonState, SwitchBoard, ConfigMapSwitches]:
    """A replica's state and switch board on the ConfigMap; with the default ``poll_s`` only the
    watch can tell it of a change within a test."""
    state = DaemonState(make_settings())
    switches = place(kube)
    board = SwitchBoard(state, store=lambda: switches, durable=True, where=switches.where,
                        loop_clock=asyncio.get_running_loop().time, poll_s=poll_s)
    return state, board, switches


def stored(cluster: ClusterEmulator) -> dict[str, dict[str, object]]:
    configmap = cluster.read(CONFIGMAPS, NAMESPACE, NAME)
    assert configmap is not None, "the ConfigMap was not created"
    return {key: json.loads(value) for key, value in (configmap.get("data") or {}).items()}


async def test_a_missing_configmap_holds_no_switch_and_the_first_write_creates_it(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    state, board, switches = replica(kube)
    assert await switches.get([FREEZE]) == {FREEZE: None}
    assert (board.ready, await board.sync(), board.ready) == (False, True, True)
    assert state.flags.freeze is False
    assert kube_cluster.read(CONFIGMAPS, NAMESPACE, NAME) is None  # reading creates nothing

    assert await board.set_freeze(True, by="oncall", reason="incident 42") is True
    document = stored(kube_cluster)["freeze"]
    assert (document["on"], document["by"], document["reason"]) == (True, "oncall", "incident 42")
    assert datetime.fromisoformat(str(document["at"])).tzinfo is not None
    labels = (kube_cluster.read(CONFIGMAPS, NAMESPACE, NAME) or {})["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "rollbackd"

    await board.set_hold("shop/web", for_s=900, by="oncall", reason="fix 2.1.1 on its way")
    hold = stored(kube_cluster)["hold.shop.web"]
    until = datetime.fromisoformat(str(hold["until"]))
    assert 890 < (until - datetime.now(UTC)).total_seconds() <= 900
    await board.clear_hold("shop/web")
    assert set(stored(kube_cluster)) == {"freeze"}


async def test_a_write_refused_with_a_conflict_is_read_again_and_keeps_the_other_replicas_switch(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    _, a, _ = replica(kube)
    b_state, b, _ = replica(kube)
    await a.set_hold("shop/web", for_s=600, by="oncall", reason="fix-forward")
    conflicts = kube_cluster.conflict("update", CONFIGMAPS, namespace=NAMESPACE, name=NAME, times=2)
    assert await b.set_freeze(True, by="release-bot", reason="change freeze") is True
    assert len(conflicts) == 2  # refused twice, stored on the third attempt
    assert set(stored(kube_cluster)) == {"freeze", "hold.shop.web"}
    assert b_state.flags.freeze is True

    # Writes racing from several replicas at once: each one re-reads after a conflict, none is lost.
    boards = [replica(kube)[1] for _ in range(5)]
    results = await asyncio.gather(*(
        board.set_hold(f"shop/app-{index}", for_s=60, by="oncall", reason=f"hold {index}")
        for index, board in enumerate(boards)
    ))
    assert results == [True] * 5
    assert set(stored(kube_cluster)) == {"freeze", "hold.shop.web", *(f"hold.shop.app-{i}" for i in range(5))}


async def test_replicas_racing_to_create_the_configmap_both_keep_their_switch(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    boards = [replica(kube)[1] for _ in range(4)]
    await asyncio.gather(*(
        board.accept(f"shop/app-{index}", revision=3, by="oncall", reason="known noisy")
        for index, board in enumerate(boards)
    ))
    assert set(stored(kube_cluster)) == {f"accept.shop.app-{i}" for i in range(4)}
    assert stored(kube_cluster)["accept.shop.app-0"]["revision"] == 3


async def test_a_write_that_cannot_be_stored_is_said_so_and_applied_here_until_it_can(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    state, board, _ = replica(kube)
    refused = kube_cluster.fail("create", CONFIGMAPS, status=403, namespace=NAMESPACE, times=1)
    assert await board.set_freeze(True, by="oncall", reason="incident") is False
    assert (len(refused), state.flags.freeze, board.unsaved) == (1, True, True)
    assert kube_cluster.read(CONFIGMAPS, NAMESPACE, NAME) is None
    assert await board.sync() is True  # the API server takes it now
    assert (board.unsaved, stored(kube_cluster)["freeze"]["on"]) == (False, True)


async def test_the_watch_tells_another_replica_at_once_and_recovers_after_it_breaks(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    _, a, _ = replica(kube)
    b_state, b, b_switches = replica(kube)  # polls once an hour: only its watch can tell it
    broken = kube_cluster.fail("watch", CONFIGMAPS, status=500, times=2)
    async with asyncio.TaskGroup() as group:
        polling = group.create_task(b.poll_forever(), name="test:poll")
        watching = group.create_task(b_switches.watch(b.nudge), name="test:watch")
        try:
            await wait_until(lambda: b.ready and len(broken) == 2, timeout_s=30,
                             what="b read the switches once, and its watch failed twice")
            await a.set_freeze(True, by="oncall", reason="incident 7")
            await wait_until(lambda: b_state.flags.freeze, timeout_s=30, what="b frozen through its watch")
            who = b.who(FREEZE)
            assert who is not None
            assert (who.by, who.reason) == ("oncall", "incident 7")

            await a.set_dry_run(True, by="oncall", reason="trying the new SLO")
            await wait_until(lambda: b_state.flags.dry_run, timeout_s=30,
                             what="b in dry-run through its watch")
        finally:
            polling.cancel()
            watching.cancel()


def with_switches(*, store_url: str | None = None, election: bool = True, **safety: object) -> Settings:
    return Settings.model_validate({
        "store": {"url": store_url},
        "leader_election": {"enabled": election, "lease_name": "ops"},
        "safety": safety,
    })


def test_auto_keeps_the_switches_in_the_store_when_it_is_shared_else_in_the_configmap() -> None:
    kube = KubeClient.for_host("http://127.0.0.1:9")  # never opened: only where it points matters
    pg = "postgresql://rollbackd@db/rollbackd"
    assert switch_store_for(with_switches(store_url=pg), kube, environ={}) is None
    assert switch_store_for(with_switches(election=False), kube, environ={}) is None  # one process
    assert switch_store_for(with_switches(), None, environ={}) is None  # no cluster to keep them in
    assert switch_store_for(with_switches(switches="store"), kube, environ={}) is None
    place = switch_store_for(with_switches(), kube, environ={"POD_NAMESPACE": "platform"})
    assert place is not None
    assert (place.namespace, place.name) == ("platform", "ops-switches")
    place = switch_store_for(with_switches(store_url=pg, election=False, switches="kubernetes",
                                           switches_configmap="oncall"), kube, environ={})
    assert place is not None
    assert (place.namespace, place.name, place.where) == ("default", "oncall", "the ConfigMap default/oncall")
    with pytest.raises(KubeConfigError, match=r"safety\.switches is kubernetes, but there is no Kubernetes"):
        switch_store_for(with_switches(switches="kubernetes"), None, environ={})
