"""Switches every replica obeys without a shared store: two real ``rollbackd run`` processes, each
with its own SQLite file, electing their leader on a Lease of kmock's emulated API server (over
HTTP) and keeping the switches in a ConfigMap they both watch; real sample apps scraped by a real
Prometheus.

- a freeze sent to the *standby* stops the leader's rollback, and survives a fail-over;
- a hold sent to the standby is shown by both, and ends for both when its time is up;
- an acceptance and a manual rollback sent to the standby are carried out by the leader, and the
  acceptance survives a fail-over;
- a release announced to the standby is judged by the leader, and one announced to the leader
  survives a fail-over (the releases are kept in the same ConfigMap).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.kubefixtures import CONFIGMAPS, DEPLOYMENTS, ClusterEmulator, saying, wait_until
from tests.promfixtures import HOST
from tests.test_history_processes import (  # noqa: F401 (fixtures)
    HEALTHY,
    NAMESPACE,
    NEW_IMAGE,
    OLD_IMAGE,
    Apps,
    Daemon,
    apps,
    cluster,
    daemons,
    release,
    target_view,
    template_image,
)
from tests.test_switches_replicas import (
    TARGET,
    api,
    blocked_by,
    decision_of,
    fail_over,
    frozen,
    leads,
    replica_config,
    start_replicas,
)

LEASE_NAMESPACE = "rollbackd"
#: The ConfigMap's default name: the Lease's name and ``-switches``.
CONFIGMAP = "rollbackd-switches"

Replicas = tuple[tuple[Daemon, int], tuple[Daemon, int]]


@pytest.fixture
async def replicas(
    daemons: list[Daemon],  # noqa: F811
    apps: Apps,  # noqa: F811
    cluster: ClusterEmulator,  # noqa: F811
    tmp_path: Path,
) -> Replicas:
    """The leader (``a``) and the standby (``b``), both ready, each with its own SQLite file and
    electing the leader on the emulated Lease (a lost leader replaced within 4 s). The switches
    are left to ``auto`` (the ConfigMap, since the store is not shared) and polled only every
    30 s, so that what a test sees within seconds comes through the watch."""
    election = {"enabled": True, "namespace": LEASE_NAMESPACE, "lease_duration_s": 3, "renew_period_s": 1}
    return await start_replicas(daemons, tmp_path, [
        replica_config(tmp_path, apps, cluster, name, safety={"switches_poll_s": 30},
                       leader_election={**election, "identity": name})
        for name in ("a", "b")
    ])


def switches_in(emulator: ClusterEmulator) -> dict[str, Any]:
    configmap = emulator.read(CONFIGMAPS, LEASE_NAMESPACE, CONFIGMAP) or {}
    return {key: json.loads(value) for key, value in (configmap.get("data") or {}).items()}


async def test_a_freeze_sent_to_the_standby_stops_the_leaders_rollback_and_survives_a_fail_over(
    replicas: Replicas,
    apps: Apps,  # noqa: F811
    cluster: ClusterEmulator,  # noqa: F811
) -> None:
    (leader, leader_port), (standby, standby_port) = replicas
    incident = {"reason": "payment provider incident"}
    status, answer = await api("POST", standby_port, "/api/v1/freeze", incident)
    assert status == 200, answer
    assert answer["freeze"] is True
    assert answer["applies"].startswith(f"stored in the ConfigMap {LEASE_NAMESPACE}/{CONFIGMAP}"), answer
    # Answered once stored: the ConfigMap holds it already.
    assert switches_in(cluster)["freeze"]["by"] == "oncall"

    # Through the watch: the leader polls only every 30 s.
    await wait_until(lambda: frozen(leader_port, True), timeout_s=20,
                     what=lambda: f"the leader frozen: {leader.tail()}")
    _, view = await api("GET", leader_port, "/api/v1/targets")
    assert view["freeze_set"]["reason"] == "payment provider incident"
    assert view["switches_kept_in"] == f"the ConfigMap {LEASE_NAMESPACE}/{CONFIGMAP}"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, session.get(
        f"http://{HOST}:{leader_port}/"
    ) as response:
        assert f"Switches are kept in the ConfigMap {LEASE_NAMESPACE}/{CONFIGMAP}." in await response.text()

    await release(cluster, "web", apps.web)
    try:
        await wait_until(lambda: blocked_by(leader_port, "freeze"), timeout_s=30, interval_s=0.2,
                         what=lambda: f"the leader's rollback blocked by the freeze: {leader.tail()}")
        assert template_image(cluster, "web") == NEW_IMAGE

        await fail_over(leader, standby, standby_port)
        await wait_until(lambda: blocked_by(standby_port, "freeze"), timeout_s=30, interval_s=0.2,
                         what=lambda: f"the new leader's rollback blocked by the freeze: {standby.tail()}")
        assert template_image(cluster, "web") == NEW_IMAGE

        status, answer = await api("DELETE", standby_port, "/api/v1/freeze", {"reason": "incident over"})
        assert status == 200, answer
        await wait_until(lambda: template_image(cluster, "web") == OLD_IMAGE, timeout_s=60, interval_s=0.1,
                         what=lambda: f"the release rolled back once unfrozen: {standby.tail()}")
        assert switches_in(cluster)["freeze"]["on"] is False
    finally:
        await apps.web.acontrol(**HEALTHY)


async def test_a_hold_sent_to_the_standby_is_shown_by_both_and_ends_for_both(
    replicas: Replicas,
    cluster: ClusterEmulator,  # noqa: F811
) -> None:
    (leader, leader_port), (standby, standby_port) = replicas
    status, answer = await api("POST", standby_port, f"/api/v1/targets/{TARGET}/hold",
                               {"eta_s": 15, "reason": "hotfix 2.3.1"})
    assert status == 200, answer
    assert switches_in(cluster)[f"hold.{TARGET.replace('/', '.')}"]["reason"] == "hotfix 2.3.1"

    async def hold_of(port: int) -> dict[str, Any] | None:
        view = await target_view(port, TARGET)
        hold = (view or {}).get("hold")
        return hold if isinstance(hold, dict) else None

    async def held(port: int) -> bool:
        hold = await hold_of(port)
        return hold is not None and hold.get("reason") == "hotfix 2.3.1" and hold.get("expired") is False

    await wait_until(lambda: held(leader_port), timeout_s=20,
                     what=lambda: f"the leader holds: {leader.tail()}")
    assert await held(standby_port)

    async def ended(port: int) -> bool:
        hold = await hold_of(port)
        return hold is None or hold.get("expired") is True

    # It ends at the wall-clock time stored with it, on both, without anyone lifting it.
    for port, replica in ((leader_port, leader), (standby_port, standby)):
        await wait_until(lambda port=port: ended(port), timeout_s=60,
                         what=saying("the hold ended", replica.tail))


async def test_an_acceptance_sent_to_the_standby_is_obeyed_by_the_leader_and_survives_a_fail_over(
    replicas: Replicas,
    apps: Apps,  # noqa: F811
    cluster: ClusterEmulator,  # noqa: F811
) -> None:
    (leader, leader_port), (standby, standby_port) = replicas
    # Frozen first, so that the bad release waits for the acceptance instead of being rolled back.
    status, answer = await api("POST", standby_port, "/api/v1/freeze", {"reason": "hold on"})
    assert status == 200, answer
    await wait_until(lambda: frozen(leader_port, True), timeout_s=20,
                     what=lambda: f"the leader frozen: {leader.tail()}")
    await release(cluster, "web", apps.web)
    try:
        await wait_until(lambda: blocked_by(leader_port, "freeze"), timeout_s=30, interval_s=0.2,
                         what=lambda: f"the leader's rollback blocked by the freeze: {leader.tail()}")
        # The standby judges too (its own rail, standby, comes first): it read the new revision.
        await wait_until(lambda: would_roll_back(standby_port), timeout_s=30, interval_s=0.2,
                         what=lambda: f"the standby sees the breach: {standby.tail()}")
        status, answer = await api("POST", standby_port, f"/api/v1/targets/{TARGET}/accept",
                                   {"reason": "known noisy, fixed in 1.6"})
        assert status == 200, answer
        assert switches_in(cluster)[f"accept.{TARGET.replace('/', '.')}"]["by"] == "oncall"
        status, answer = await api("DELETE", standby_port, "/api/v1/freeze", {"reason": "accepted instead"})
        assert status == 200, answer

        await wait_until(lambda: frozen(leader_port, False), timeout_s=20, what="the leader unfrozen")
        await wait_until(lambda: blocked_by_acceptance(leader_port), timeout_s=30, interval_s=0.2,
                         what=lambda: f"the leader does not roll an accepted release back: {leader.tail()}")
        assert template_image(cluster, "web") == NEW_IMAGE

        await fail_over(leader, standby, standby_port)
        await wait_until(lambda: blocked_by_acceptance(standby_port), timeout_s=30, interval_s=0.2,
                         what=lambda: f"the new leader keeps the acceptance: {standby.tail()}")
        assert template_image(cluster, "web") == NEW_IMAGE

        status, answer = await api("DELETE", standby_port, f"/api/v1/targets/{TARGET}/accept",
                                   {"reason": "1.6 is late"})
        assert status == 200, answer
        await wait_until(lambda: template_image(cluster, "web") == OLD_IMAGE, timeout_s=60, interval_s=0.1,
                         what=lambda: f"judged again once the acceptance was withdrawn: {standby.tail()}")
    finally:
        await apps.web.acontrol(**HEALTHY)


async def test_a_manual_rollback_sent_to_the_standby_is_carried_out_by_the_leader(
    replicas: Replicas,
    cluster: ClusterEmulator,  # noqa: F811
) -> None:
    (leader, leader_port), (_, standby_port) = replicas
    bump_template(cluster)  # a new revision whose pods stay healthy: nothing rolls it back on its own
    status, answer = await api("POST", standby_port, f"/api/v1/targets/{TARGET}/rollback",
                               {"reason": "the checkout button moved"})
    assert status == 202, answer
    assert "the leader starts it" in answer["applies"], answer
    await wait_until(lambda: template_image(cluster, "web") == OLD_IMAGE, timeout_s=60, interval_s=0.1,
                     what=lambda: f"the leader carried the manual rollback out: {leader.tail()}")
    # Started once: the request is cleared from the ConfigMap.
    await wait_until(lambda: f"rollback.{TARGET.replace('/', '.')}" not in switches_in(cluster), timeout_s=60,
                     what="the manual rollback's request cleared")

    status, history = await api("GET", leader_port, "/api/v1/history?limit=1000")
    assert status == 200
    manual = [entry for entry in history["entries"] if entry["kind"].startswith("rollback")
              and "the checkout button moved" in json.dumps(entry)]
    assert manual, history


async def would_roll_back(port: int) -> bool:
    return (await decision_of(port)).get("outcome") == "immediate"


async def blocked_by_acceptance(port: int) -> bool:
    decision = await decision_of(port)
    return await leads(port) and decision.get("blocked_by") == "accepted"


def bump_template(emulator: ClusterEmulator) -> None:
    """A new revision of Deployment web whose pods stay healthy (nothing to roll back on its own)."""
    deployment = emulator.read(DEPLOYMENTS, NAMESPACE, "web") or {}
    template = copy.deepcopy(deployment["spec"]["template"])
    template["spec"]["containers"][0]["image"] = NEW_IMAGE
    emulator.update(DEPLOYMENTS, NAMESPACE, "web", {"spec": {"template": template}})


async def test_a_release_announced_to_the_standby_is_judged_by_the_leader_and_survives_a_fail_over(
    replicas: Replicas,
    cluster: ClusterEmulator,  # noqa: F811
) -> None:
    (leader, leader_port), (standby, standby_port) = replicas
    flag = {"id": "flag-new_checkout-4711", "target": TARGET, "kind": "flag",
            "description": "new_checkout on"}
    status, answer = await api("POST", standby_port, "/api/v1/releases", flag)
    assert status == 201, answer
    assert answer["applies"].startswith(f"stored in the ConfigMap {LEASE_NAMESPACE}/{CONFIGMAP}"), answer
    # Answered once kept where the switches are: the ConfigMap holds it already.
    key = f"release.{TARGET.replace('/', '.')}"
    assert [kept["id"] for kept in switches_in(cluster)[key]] == [flag["id"]]

    # Through the watch (the replicas poll only every 30 s): the leader judges the target from it.
    await wait_until(lambda: judged_from(leader_port, flag["id"]), timeout_s=20, interval_s=0.2,
                     what=lambda: f"the leader judges from the standby's release: {leader.tail()}")
    # Announced again, to the leader (a retried pipeline step): the same release.
    status, again = await api("POST", leader_port, "/api/v1/releases", flag)
    assert status == 200, again
    assert (again["created"], again["release"]) == (False, answer["release"])

    config = {"id": "config-abc123", "target": TARGET, "kind": "config", "description": "timeouts halved"}
    status, answer = await api("POST", leader_port, "/api/v1/releases", config)
    assert status == 201, answer
    await fail_over(leader, standby, standby_port)
    await wait_until(lambda: judged_from(standby_port, config["id"]), timeout_s=30, interval_s=0.2,
                     what=lambda: f"the new leader judges from the release the old one took: "
                                  f"{standby.tail()}")
    status, history = await api("GET", standby_port, f"/api/v1/history?target={TARGET}&limit=1000")
    assert status == 200
    started = [entry["details"]["release"]["id"] for entry in history["entries"]
               if entry["kind"] == "release.started"]
    assert started == [flag["id"], config["id"]], history["entries"]


async def judged_from(port: int, release_id: str) -> bool:
    """Whether the replica judges the target from announced release ``release_id``."""
    status, view = await api("GET", port, f"/api/v1/targets/{TARGET}")
    return bool(status == 200 and (view.get("release") or {}).get("id") == release_id
                and (view.get("lifetime") or {}).get("release") == release_id)
