"""Leader election: several replicas, one Lease, exactly one actor -- with the real Kubernetes client
against the emulated API server over HTTP.

Most tests run on fast-forwarded loop time (looptime) with the default timings (lease 10 s, renew
2 s), so the hand-off bounds are checked as configured; one runs on the real clock with short
timings and prints the hand-off time it measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import kmock
import pytest
from pydantic import ValidationError

from rollbackd.config.settings import (
    EventsSettings,
    LeaderElectionSettings,
    Settings,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.leader import DEFAULT_LEASE_DURATION_S, DEFAULT_RENEW_PERIOD_S, LeaderElector
from rollbackd.daemon.main import leader_elector_for
from rollbackd.daemon.wiring import open_daemon
from rollbackd.kube import KubeClient, KubeConfigError
from rollbackd.run import Phase
from tests.kubefixtures import LEASES, ClusterEmulator, wait_until
from tests.test_daemon import INTERVAL_S, SEVERE, Api, ScriptedHealth, ScriptedMetrics, make_settings
from tests.test_daemon_rollbacks import ScriptedTargets, settings

NS = "rollbackd"
LEASE = "rollbackd"
D = DEFAULT_LEASE_DURATION_S
R = DEFAULT_RENEW_PERIOD_S


@contextlib.asynccontextmanager
async def client(emu: ClusterEmulator) -> AsyncIterator[KubeClient]:
    """One replica's own connection to the API server."""
    async with KubeClient.for_host(str(emu.url), request_timeout_s=5.0) as kube:
        yield kube


def elector(kube: KubeClient, identity: str, **kwargs: object) -> LeaderElector:
    return LeaderElector(kube=kube, namespace=NS, name=LEASE, identity=identity, **kwargs)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def never_two_leaders(*electors: LeaderElector, every_s: float = 0.01) -> AsyncIterator[None]:
    """Fail the test if, at any look, more than one elector counts itself the leader."""
    seen: list[str] = []

    async def watch() -> None:
        while True:
            leading = [e.identity for e in electors if e.is_leader]
            if len(leading) > 1:
                seen.append(f"{leading} at t={asyncio.get_running_loop().time():.3f}")
            await asyncio.sleep(every_s)

    task = asyncio.create_task(watch(), name="test: never two leaders")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not seen, f"two leaders at once: {seen}"


@contextlib.contextmanager
def transitions(elector_: LeaderElector) -> Iterator[list[tuple[float, bool, bool]]]:
    """(loop time, leading, is_leader at that moment) of every leadership change."""
    seen: list[tuple[float, bool, bool]] = []
    loop = asyncio.get_running_loop()

    def listener(leading: bool) -> None:
        seen.append((loop.time(), leading, elector_.is_leader))

    elector_.add_listener(listener)
    try:
        yield seen
    finally:
        elector_.remove_listener(listener)


@contextlib.asynccontextmanager
async def lease_writes(emu: ClusterEmulator) -> AsyncIterator[list[tuple[float, str]]]:
    """(loop time, holder) each time the stored Lease changes, looked at every 10 ms."""
    writes: list[tuple[float, str]] = []

    async def watch() -> None:
        version = None
        while True:
            lease = emu.read(LEASES, NS, LEASE)
            if lease is not None and lease["metadata"]["resourceVersion"] != version:
                version = lease["metadata"]["resourceVersion"]
                writes.append((asyncio.get_running_loop().time(), lease["spec"].get("holderIdentity") or ""))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(watch(), name="test: lease writes")
    try:
        yield writes
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the election --------------------------------------------------------------------------------


@pytest.mark.looptime
async def test_of_two_replicas_exactly_one_leads_and_keeps_leading(kube_cluster: ClusterEmulator) -> None:
    async with client(kube_cluster) as ka, client(kube_cluster) as kb:
        a, b = elector(ka, "replica-a"), elector(kb, "replica-b")
        async with a, b, never_two_leaders(a, b), lease_writes(kube_cluster) as writes:
            await wait_until(lambda: a.is_leader or b.is_leader, timeout_s=5, what="a leader")
            leader, standby = (a, b) if a.is_leader else (b, a)
            for _ in range(120):  # a minute of loop time: no flapping
                assert leader.is_leader
                assert not standby.is_leader
                await asyncio.sleep(0.5)
            assert standby.holder == leader.identity
            assert standby.status().leader is False
            assert leader.status().holder == leader.identity
        lease = kube_cluster.read(LEASES, NS, LEASE)
    assert lease is not None
    # The leader renewed about every renew period; nobody else ever held the Lease.
    assert {holder for _, holder in writes} <= {leader.identity, ""}
    renewals = [t for t, holder in writes if holder == leader.identity]
    assert len(renewals) >= 60 / R - 2
    assert max(later - earlier for earlier, later in itertools.pairwise(renewals)) <= R + 0.1
    # Leaving released it for a quick hand-over.
    assert lease["spec"]["holderIdentity"] == ""
    assert lease["spec"]["leaseTransitions"] == 0


@pytest.mark.looptime
async def test_two_candidates_racing_for_an_expired_lease_one_wins(kube_cluster: ClusterEmulator) -> None:
    kube_cluster.store(LEASES, NS, {
        "metadata": {"name": LEASE},
        "spec": {"holderIdentity": "crashed-replica", "leaseDurationSeconds": 10,
                 "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 4},
    })
    puts = kube_cluster[LEASES][kmock.method.PUT]
    async with client(kube_cluster) as ka, client(kube_cluster) as kb:
        a, b = elector(ka, "replica-a"), elector(kb, "replica-b")
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with a, b, never_two_leaders(a, b):
            await asyncio.sleep(D - 0.5)
            # Nobody knows when the crashed holder last renewed: both wait a full lease duration
            # from when they first saw it.
            assert not a.is_leader
            assert not b.is_leader
            await wait_until(lambda: a.is_leader or b.is_leader, timeout_s=5, what="a leader")
            took = loop.time() - started
            await asyncio.sleep(3 * R)
            winner = a if a.is_leader else b
            loser = b if winner is a else a
            assert not loser.is_leader
            lease = kube_cluster.read(LEASES, NS, LEASE)
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == winner.identity
            assert lease["spec"]["leaseTransitions"] == 5
            assert loser.holder == winner.identity
    assert D <= took <= D + 0.5
    # Both wrote at the same instant with the same resourceVersion; the server took one write.
    claims = {r.data["spec"]["holderIdentity"] for r in puts if r.data["spec"]["leaseTransitions"] == 5}
    assert claims - {""} == {"replica-a", "replica-b"}  # ("": the winner's release at the end)


@pytest.mark.looptime
async def test_failing_renewals_make_the_leader_step_down_before_the_lease_expires(
    kube_cluster: ClusterEmulator,
) -> None:
    loop = asyncio.get_running_loop()
    async with client(kube_cluster) as ka:
        a = elector(ka, "replica-a")
        with transitions(a) as changes:
            async with a, lease_writes(kube_cluster) as writes:
                await a.wait_leader()
                await asyncio.sleep(7.3)
                faulted_at = loop.time()
                failed = kube_cluster.fail("update", LEASES, status=500, namespace=NS, name=LEASE, times=None)
                await asyncio.wait_for(a.wait_standby(), timeout=30)
                stepped_down = loop.time()
                last_write = max(t for t, _ in writes)
                assert not a.is_leader
                assert len(failed) >= 2  # it kept trying
    # It stopped acting before anyone could take the Lease over (last write + D), with a margin
    # of one renew period, and not before its last renewal's claim ran out.
    assert stepped_down - last_write <= D - R + 0.05
    assert stepped_down - last_write < D
    assert faulted_at - last_write <= R
    assert stepped_down - faulted_at >= D - 2 * R - 0.05
    # Listeners heard it at that moment, and is_leader already said no.
    assert [(leading, now) for _, leading, now in changes] == [(True, True), (False, False)]
    assert changes[1][0] == pytest.approx(stepped_down, abs=0.02)


@pytest.mark.looptime
async def test_a_leader_that_sees_another_holder_stops_at_once(kube_cluster: ClusterEmulator) -> None:
    loop = asyncio.get_running_loop()
    async with client(kube_cluster) as ka:
        a = elector(ka, "replica-a")
        async with a:
            await a.wait_leader()
            await asyncio.sleep(3.1)
            kube_cluster.update(LEASES, NS, LEASE, {"spec": {"holderIdentity": "someone-else"}})
            changed_at = loop.time()
            await asyncio.wait_for(a.wait_standby(), timeout=30)
            assert loop.time() - changed_at <= R + 0.05
            assert a.holder == "someone-else"
            # It respects the other holder's claim: no write for a whole lease duration.
            lease = kube_cluster.read(LEASES, NS, LEASE)
            assert lease is not None
            await asyncio.sleep(D - R - 0.5)
            assert kube_cluster.read(LEASES, NS, LEASE) == lease
            assert not a.is_leader


@pytest.mark.looptime
async def test_a_crashed_leader_is_replaced_within_lease_duration_plus_renew_period(
    kube_cluster: ClusterEmulator,
) -> None:
    loop = asyncio.get_running_loop()
    async with client(kube_cluster) as ka, client(kube_cluster) as kb:
        a = elector(ka, "replica-a", release_on_exit=False)  # it dies: nothing is handed over
        b = elector(kb, "replica-b")
        async with (
            never_two_leaders(a, b),
            lease_writes(kube_cluster) as writes,
            contextlib.AsyncExitStack() as replica_a,
        ):
            await replica_a.enter_async_context(a)
            await a.wait_leader()
            async with b:
                await asyncio.sleep(7.7)
                await replica_a.aclose()  # a dies
                lost_at = loop.time()
                last_renewal = max(t for t, holder in writes if holder == a.identity)
                await asyncio.wait_for(b.wait_leader(), timeout=30)
                handoff = loop.time() - lost_at
                since_renewal = loop.time() - last_renewal
    print(f"\nleader hand-off after a crash (defaults: lease {D:g}s, renew {R:g}s): {handoff:.2f}s "
          f"after the leader died, {since_renewal:.2f}s after its last renewal")
    assert since_renewal <= D + R + 0.05
    assert handoff <= D + R + 0.05
    assert since_renewal >= D  # never before the old claim can have run out


@pytest.mark.looptime
async def test_a_clean_shutdown_hands_the_lease_over_within_a_renew_period(
    kube_cluster: ClusterEmulator,
) -> None:
    loop = asyncio.get_running_loop()
    async with client(kube_cluster) as ka, client(kube_cluster) as kb:
        a, b = elector(ka, "replica-a"), elector(kb, "replica-b")
        async with never_two_leaders(a, b), contextlib.AsyncExitStack() as replica_a:
            await replica_a.enter_async_context(a)
            await a.wait_leader()
            async with b:
                await asyncio.sleep(5.3)
                await replica_a.aclose()  # a shuts down cleanly
                released_at = loop.time()
                await asyncio.wait_for(b.wait_leader(), timeout=30)
                handoff = loop.time() - released_at
    print(f"\nleader hand-off after a clean shutdown: {handoff:.2f}s")
    assert handoff <= R + 0.05


async def test_hand_off_on_the_real_clock(kube_cluster: ClusterEmulator) -> None:
    """Short timings on the real clock: a crashed leader is replaced within lease + renew."""
    lease_s, renew_s = 2.0, 0.5
    loop = asyncio.get_running_loop()
    async with client(kube_cluster) as ka, client(kube_cluster) as kb:
        a = elector(ka, "replica-a", lease_duration_s=lease_s, renew_period_s=renew_s, release_on_exit=False)
        b = elector(kb, "replica-b", lease_duration_s=lease_s, renew_period_s=renew_s)
        async with never_two_leaders(a, b), contextlib.AsyncExitStack() as replica_a:
            await replica_a.enter_async_context(a)
            await asyncio.wait_for(a.wait_leader(), timeout=10)
            async with b:
                await asyncio.sleep(1.2)
                await replica_a.aclose()  # a dies
                lost_at = loop.time()
                await asyncio.wait_for(b.wait_leader(), timeout=10)
                handoff = loop.time() - lost_at
    print(f"\nleader hand-off on the real clock (lease {lease_s:g}s, renew {renew_s:g}s): {handoff:.2f}s")
    assert handoff <= lease_s + renew_s + 3.0  # generous: a busy machine delays the last look


def test_timings_are_validated() -> None:
    with pytest.raises(ValueError, match="3 x renew_period_s"):
        LeaderElector(kube=KubeClient.for_host("http://127.0.0.1:1"), namespace=NS, identity="x",
                      lease_duration_s=5, renew_period_s=2)
    with pytest.raises(ValueError, match="identity"):
        LeaderElector(kube=KubeClient.for_host("http://127.0.0.1:1"), namespace=NS, identity="")


def test_settings_refuse_a_renew_period_too_long_for_the_lease() -> None:
    with pytest.raises(ValidationError, match="lease_duration_s / 3"):
        LeaderElectionSettings(enabled=True, lease_duration_s=5, renew_period_s=2)
    defaults = LeaderElectionSettings()
    assert defaults.lease_duration_s + defaults.renew_period_s <= 15  # the hand-off target


async def test_the_process_edge_builds_the_elector_from_settings_and_environment(kube: KubeClient) -> None:
    environ = {"POD_NAME": "rollbackd-7d9f-abcde", "POD_NAMESPACE": "ops"}
    assert leader_elector_for(Settings(), kube, environ=environ) is None
    election = LeaderElectionSettings(enabled=True, lease_duration_s=15, renew_period_s=3)
    enabled = Settings(leader_election=election)
    built = leader_elector_for(enabled, kube, environ=environ)
    assert built is not None
    assert (built.identity, built.lease, built.lease_duration_s, built.renew_period_s) == (
        "rollbackd-7d9f-abcde", "ops/rollbackd", 15, 3
    )
    fallback = leader_elector_for(enabled, kube, environ={})
    assert fallback is not None
    assert fallback.lease == "default/rollbackd"
    assert fallback.identity.endswith(f"-{os.getpid()}")
    with pytest.raises(KubeConfigError, match=r"leader_election\.enabled"):
        leader_elector_for(enabled, None, environ=environ)


# --- the daemon: only the leader acts ------------------------------------------------------------


async def readyz(session: aiohttp.ClientSession, daemon: Daemon) -> dict[str, object]:
    """``/readyz``'s status and leadership (its data sources are another test's)."""
    async with session.get(f"http://127.0.0.1:{daemon.port}/readyz") as response:
        assert response.status == 200
        body = await response.json()
    assert isinstance(body, dict)
    return {key: body[key] for key in ("status", "leader")}


@pytest.mark.looptime
async def test_only_the_leader_rolls_back(kube_cluster: ClusterEmulator) -> None:
    metrics = ScriptedMetrics()
    cluster_a, cluster_b = ScriptedTargets(), ScriptedTargets()
    async with (
        aiohttp.ClientSession() as session,
        client(kube_cluster) as ka,
        client(kube_cluster) as kb,
        elector(ka, "replica-a") as a,
    ):
        await a.wait_leader()
        async with (
            elector(kb, "replica-b") as b,
            Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(),
                   targets=cluster_a, leader=a) as daemon_a,
            Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(),
                   targets=cluster_b, leader=b) as daemon_b,
        ):
            await asyncio.sleep(3 * INTERVAL_S)
            assert await readyz(session, daemon_a) == {"status": "ready", "leader": True}
            assert await readyz(session, daemon_b) == {"status": "ready", "leader": False}
            metrics.pair = SEVERE
            await asyncio.sleep(4 * INTERVAL_S)
            assert cluster_a.runs == [False]
            assert cluster_b.runs == []
            assert "shop/checkout" not in daemon_b.rollbacks.runs
            # The standby judged the same incident, warm, and said why it did not act.
            last = daemon_b.state.targets["shop/checkout"].last_rollback
            assert last is None
            shown = await Api(session, daemon_b).target()
            assert shown["decision"]["blocked_by"] == "standby"
            assert "standby replica (not the leader): not acting" in shown["decision"]["reasons"]
            assert shown["decision"]["escalate"] is False


@pytest.mark.looptime
async def test_when_the_leader_dies_the_standby_takes_over_and_acts_once(
    kube_cluster: ClusterEmulator,
) -> None:
    metrics = ScriptedMetrics()
    cluster_a, cluster_b = ScriptedTargets(), ScriptedTargets()
    loop = asyncio.get_running_loop()
    async with (
        aiohttp.ClientSession() as session,
        client(kube_cluster) as ka,
        client(kube_cluster) as kb,
    ):
        a = elector(ka, "replica-a", release_on_exit=False)
        replica_a = contextlib.AsyncExitStack()
        await replica_a.enter_async_context(a)
        await a.wait_leader()
        async with elector(kb, "replica-b") as b, Daemon(
            settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster_b, leader=b
        ) as daemon_b:
            async with replica_a:
                await replica_a.enter_async_context(Daemon(
                    settings(), metrics_source=metrics, health_source=ScriptedHealth(),
                    targets=cluster_a, leader=a,
                ))
                await asyncio.sleep(3 * INTERVAL_S)
                assert a.is_leader
                assert not b.is_leader
                # Replica a dies: its daemon and its elector stop, the Lease is left as it was.
            died_at = loop.time()
            metrics.pair = SEVERE
            await asyncio.wait_for(b.wait_leader(), timeout=60)
            handoff = loop.time() - died_at
            assert (await readyz(session, daemon_b))["leader"] is True
            await asyncio.sleep(4 * INTERVAL_S)
            assert cluster_b.runs == [False]
            await asyncio.sleep(4 * INTERVAL_S)
            assert cluster_b.runs == [False]  # exactly once for the incident
            assert cluster_a.runs == []
    print(f"\ndaemon-level hand-off: replica b leads {handoff:.2f}s after replica a died")
    assert handoff <= D + R + 0.05


async def test_the_new_leader_finishes_a_rollback_the_old_one_left_mid_way(
    kube_cluster: ClusterEmulator, tmp_path: Path
) -> None:
    """The leader dies while its rollback action is under way; the standby, sharing the store,
    takes over, finishes that rollback (acting once) and verifies it, without a second decision."""
    lease_s, renew_s, interval_s = 2.0, 0.5, 0.2
    config = make_settings().model_copy(
        update={
            "interval_s": interval_s,
            "store": StoreSettings(data_dir=str(tmp_path / "data")),
            "events": EventsSettings(kubernetes_events=False),
            "verification": VerificationSettings(window_s=1.0),
        }
    )
    metrics = ScriptedMetrics()
    cluster_a = ScriptedTargets(action_s=600.0)  # never finishes before the leader dies
    cluster_b = ScriptedTargets(action_s=0.1)

    @contextlib.asynccontextmanager
    async def replica(leader: LeaderElector, cluster: ScriptedTargets) -> AsyncIterator[Daemon]:
        async with open_daemon(
            config, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster, leader=leader
        ) as daemon:
            yield daemon

    async with client(kube_cluster) as ka, client(kube_cluster) as kb:
        a = elector(ka, "replica-a", lease_duration_s=lease_s, renew_period_s=renew_s, release_on_exit=False)
        b = elector(kb, "replica-b", lease_duration_s=lease_s, renew_period_s=renew_s)
        async with never_two_leaders(a, b), contextlib.AsyncExitStack() as replica_a:
            await replica_a.enter_async_context(a)
            await asyncio.wait_for(a.wait_leader(), timeout=10)
            daemon_a = await replica_a.enter_async_context(replica(a, cluster_a))
            async with b, replica(b, cluster_b) as daemon_b:
                await asyncio.sleep(5 * interval_s)
                metrics.pair = SEVERE
                await wait_until(
                    lambda: "shop/checkout" in daemon_a.rollbacks.runs, what="the leader acting"
                )
                await asyncio.sleep(0.5)  # its state is in the store
                assert cluster_a.runs == [False]
                first = daemon_a.rollbacks.runs["shop/checkout"]
                await replica_a.aclose()  # the leader dies mid-action
                await asyncio.wait_for(b.wait_leader(), timeout=15)
                await wait_until(
                    lambda: (run := daemon_b.rollbacks.runs.get("shop/checkout")) is not None
                    and not run.phase.active,
                    timeout_s=30,
                    what="the new leader finishing the rollback",
                )
                run = daemon_b.rollbacks.runs["shop/checkout"]
                assert run.resumed
                assert run.phase is Phase.VERIFIED
                # The same run, from the same decision (its record in the shared store).
                assert (run.run_id, run.decided_wall, run.reasons) == (
                    first.run_id,
                    first.decided_wall,
                    first.reasons,
                )
                assert run.reasons
                await asyncio.sleep(5 * interval_s)
                assert cluster_b.runs == [False]  # once: resumed, and never decided again
