"""Switches every replica obeys: two real ``rollbackd run`` processes sharing one PostgreSQL store
(the leader holds its advisory lock), real sample apps scraped by a real Prometheus, and kmock's
emulated Kubernetes API with its Deployment controller.

- a freeze sent to the *standby* stops the leader's next rollback (the bad release stays, the
  leader's decision is blocked by the freeze, audited with who and why);
- the freeze survives a fail-over: the leader is killed, the standby takes over and is still
  frozen; once unfrozen, it rolls the release back.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.kubefixtures import ClusterEmulator, saying, wait_until
from tests.promfixtures import HOST
from tests.test_history_processes import (  # noqa: F401 (fixtures)
    HEALTHY,
    NEW_IMAGE,
    OLD_IMAGE,
    Apps,
    Daemon,
    apps,
    cluster,
    daemons,
    ready,
    release,
    target_view,
    template_image,
    write_config,
)
from tests.test_store import postgres_schema  # noqa: F401

TOKEN = "s3cret-switch-token"
TARGET = "shop/web"


def replica_config(
    tmp_path: Path, running: Apps, emulator: ClusterEmulator, name: str, **overrides: Any
) -> tuple[Path, int]:
    """A replica's configuration: the API token named ``oncall``, polls of the switches every half
    second, its own ``store.data_dir``; ``overrides`` replace whole sections (``store``, ``safety``,
    ``leader_election``)."""
    folder = tmp_path / name
    folder.mkdir()
    target = {"name": "web", "strategy": "deployment", "candidate": {"deployment": "web"}}
    config, port = write_config(folder, running, emulator, target)
    settings: dict[str, Any] = yaml.safe_load(config.read_text())
    token = folder / "token"
    token.write_text(TOKEN)
    settings["api"] = {"token_file": str(token), "token_name": "oncall"}
    settings["safety"] = {"switches_poll_s": 0.5}
    settings["leader_election"] = {"identity": name}
    settings.update(overrides)
    config.write_text(yaml.safe_dump(settings))
    return config, port


async def start_replicas(
    daemons: list[Daemon], tmp_path: Path, configs: list[tuple[Path, int]]  # noqa: F811
) -> tuple[tuple[Daemon, int], tuple[Daemon, int]]:
    """Start the replicas of ``configs`` one after the other, each ready (the first one leading
    before the second starts); the leader and the standby."""
    started = []
    for index, (config, port) in enumerate(configs):
        daemon = Daemon(config, tmp_path / f"{config.parent.name}.log")
        daemons.append(daemon)
        await daemon.start()
        await ready(port, daemon)
        if index == 0:
            await wait_until(lambda port=port: leads(port), timeout_s=30,
                             what=saying("the first one leads", daemon.tail))
        started.append((daemon, port))
    assert await leader_says(started[1][1]) is False
    return started[0], started[1]


async def api(method: str, port: int, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, session.request(
        method, f"http://{HOST}:{port}{path}", json=body, headers={"Authorization": f"Bearer {TOKEN}"}
    ) as response:
        return response.status, await response.json()


async def leader_says(port: int) -> bool | None:
    """What the replica's ``/readyz`` says of its leading (``None``: not ready, or no answer)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session, session.get(
            f"http://{HOST}:{port}/readyz"
        ) as response:
            body = await response.json()
            return bool(body.get("leader")) if response.status == 200 else None
    except (aiohttp.ClientError, TimeoutError):
        return None


async def leads(port: int) -> bool:
    return await leader_says(port) is True


async def decision_of(port: int) -> dict[str, Any]:
    view = await target_view(port, TARGET)
    return (view or {}).get("decision") or {}


async def frozen(port: int, on: bool) -> bool:
    """Whether the replica's global freeze is ``on``."""
    status, view = await api("GET", port, "/api/v1/targets")
    return status == 200 and view["freeze"] is on


async def blocked_by(port: int, rail: str) -> bool:
    """Whether the replica's decision on the target is a rollback held back by ``rail``."""
    decision = await decision_of(port)
    return decision.get("escalate") is True and decision.get("blocked_by") == rail


async def fail_over(leader: Daemon, standby: Daemon, standby_port: int) -> None:
    """The leader is killed (no hand-over); the standby takes the lead over."""
    assert leader.process is not None
    leader.process.send_signal(signal.SIGKILL)
    await leader.process.wait()
    await wait_until(lambda: leads(standby_port), timeout_s=30, interval_s=0.2,
                     what=lambda: f"the standby took over: {standby.tail()}")


@pytest.fixture
async def replicas(
    daemons: list[Daemon],  # noqa: F811
    apps: Apps,  # noqa: F811
    cluster: ClusterEmulator,  # noqa: F811
    postgres_schema: str,  # noqa: F811
    tmp_path: Path,
) -> tuple[tuple[Daemon, int], tuple[Daemon, int]]:
    """The leader and the standby, both ready, on one PostgreSQL store."""
    return await start_replicas(daemons, tmp_path, [
        replica_config(tmp_path, apps, cluster, name,
                       store={"url": postgres_schema, "data_dir": str(tmp_path / name / "data")})
        for name in ("a", "b")
    ])


async def test_a_freeze_sent_to_the_standby_stops_the_leaders_rollback_and_survives_a_fail_over(
    replicas: tuple[tuple[Daemon, int], tuple[Daemon, int]],
    apps: Apps,  # noqa: F811
    cluster: ClusterEmulator,  # noqa: F811
) -> None:
    (leader, leader_port), (standby, standby_port) = replicas
    assert await leader_says(standby_port) is False

    incident = {"reason": "payment provider incident"}
    status, answer = await api("POST", standby_port, "/api/v1/freeze", incident)
    assert status == 200, answer
    assert answer["freeze"] is True
    assert "every replica applies it within 0.5s" in answer["applies"]

    # Within a poll (half a second); the bound leaves room for a loaded machine.
    await wait_until(lambda: frozen(leader_port, True), timeout_s=20,
                     what=lambda: f"the leader frozen: {leader.tail()}")
    _, view = await api("GET", leader_port, "/api/v1/targets")
    assert view["freeze_set"]["by"] == "oncall"
    assert view["freeze_set"]["reason"] == "payment provider incident"

    # A bad release: the leader would roll it back within seconds; the freeze stops it.
    await release(cluster, "web", apps.web)
    try:
        await wait_until(lambda: blocked_by(leader_port, "freeze"), timeout_s=30, interval_s=0.2,
                         what=lambda: f"the leader's rollback blocked by the freeze: {leader.tail()}")
        assert template_image(cluster, "web") == NEW_IMAGE

        # Fail-over: the leader dies; the standby takes over, still frozen.
        await fail_over(leader, standby, standby_port)
        await wait_until(lambda: blocked_by(standby_port, "freeze"), timeout_s=30, interval_s=0.2,
                         what=lambda: f"the new leader's rollback blocked by the freeze: {standby.tail()}")
        assert template_image(cluster, "web") == NEW_IMAGE

        status, history = await api("GET", standby_port, "/api/v1/history?limit=1000")
        assert status == 200
        freezes = [entry for entry in history["entries"] if entry["kind"] == "freeze"]
        assert freezes, history
        assert freezes[-1]["details"]["by"] == "oncall", freezes

        # Unfrozen, the new leader rolls the release back.
        status, answer = await api("DELETE", standby_port, "/api/v1/freeze", {"reason": "incident over"})
        assert status == 200, answer
        await wait_until(lambda: template_image(cluster, "web") == OLD_IMAGE, timeout_s=30, interval_s=0.1,
                         what=lambda: f"the release rolled back once unfrozen: {standby.tail()}")
    finally:
        await apps.web.acontrol(**HEALTHY)
