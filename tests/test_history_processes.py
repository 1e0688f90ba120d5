"""A release's "before" comes from Prometheus, not from what the process happened to see: real
``rollbackd run`` processes, real sample apps scraped by a real Prometheus every second, and
kmock's emulated Kubernetes API with its deployment and EndpointSlice controllers.

The detection window is two minutes, so nothing the process watched leaves it during a test: a
plain Deployment's reference is its own past read from Prometheus (``query_range``) or the
window's intervals before the episode, and a blue-green target's is the old colour's history.

- a Deployment released (a new revision, 38% errors) 60 s after rollbackd started is undone
  within the severe path's time;
- the same right after a restart of rollbackd;
- a blue-green switch-back the API refuses once: the next verdicts still blame green (not "no
  baseline", not "not attributable"), and the next rollback switches the Service back to blue.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import yaml

from tests.kubefixtures import (
    DEPLOYMENTS,
    SERVICES,
    ClusterEmulator,
    Controllers,
    seed_deployment,
    seed_service,
    wait_until,
)
from tests.promfixtures import (
    HOST,
    PrometheusServer,
    SampleAppProcess,
    free_port,
    require_prometheus,
    start_prometheus,
    start_sample_app,
)
from tests.test_faults_restart import Store, start_daemon

NAMESPACE = "shop"
OLD_IMAGE = "shop/web:1.4"
NEW_IMAGE = "shop/web:1.5"
BLUE = {"app": "web", "colour": "blue"}
GREEN = {"app": "web", "colour": "green"}
#: The severe path at a 1 s interval: the bad image shows in Prometheus after a scrape (1 s) and
#: the queries' two-scrape look-back, it is decided on the second bad interval, and the undo is
#: two API writes. Measured: 4-6 s from the release to the Deployment back at the old template.
SEVERE_PATH_S = 12.0
HEALTHY = {"error_rate": 0.002}
BAD = {"error_rate": 0.38}


@dataclass
class Apps:
    prometheus: PrometheusServer
    web: SampleAppProcess  # the Deployment released 60 s after rollbackd starts
    api: SampleAppProcess  # the Deployment released right after rollbackd restarts
    blue: SampleAppProcess
    green: SampleAppProcess


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    binary = require_prometheus()
    logs = tmp_path_factory.mktemp("history-apps")
    started: list[SampleAppProcess] = []
    prometheus: PrometheusServer | None = None
    try:
        for deployment, rps in (("web", 40.0), ("api", 40.0), ("web-blue", 40.0), ("web-green", 0.0)):
            started.append(start_sample_app(deployment=deployment, namespace=NAMESPACE, rps=rps,
                                            error_rate=0.002, seed=len(started), log_dir=logs))
        prometheus = start_prometheus(targets=[app.address for app in started], data_dir=logs / "prometheus",
                                      scrape_interval_s=1.0, binary=binary, scrapes=3)
        yield Apps(prometheus, *started)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for app in started:
            app.stop()


@pytest.fixture
async def cluster(no_leftover_tasks: None) -> AsyncIterator[ClusterEmulator]:
    """The emulated cluster with its controllers: the two Deployments at revision 2 (the old
    image; revision 1 kept at 0 replicas), and the blue-green pair behind Service web (blue)."""
    async with ClusterEmulator() as emu, kmock.Server(emu), Controllers(emu):
        for name in ("web", "api"):
            seed_deployment(emu, NAMESPACE, name, replicas=2, image=OLD_IMAGE,
                            revision_history=("shop/web:1.3",))
        for name, image, labels in (("web-blue", OLD_IMAGE, BLUE), ("web-green", NEW_IMAGE, GREEN)):
            seed_deployment(emu, NAMESPACE, name, replicas=2, image=image, labels=labels, container="web")
        seed_service(emu, NAMESPACE, "web", selector=BLUE)
        yield emu


def write_config(
    tmp_path: Path, apps: Apps, cluster: ClusterEmulator, target: dict[str, Any]
) -> tuple[Path, int]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
        "clusters": [{"name": "emulated", "cluster": {"server": str(cluster.url).rstrip("/")}}],
        "users": [{"name": "rollbackd", "user": {"token": "t"}}],
        "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "rollbackd"}}],
    }))  # fmt: skip
    port = free_port()
    config = tmp_path / "rollbackd.yaml"
    config.write_text(yaml.safe_dump({
        "interval_s": 1.0,
        "prometheus": {"url": apps.prometheus.url, "timeout_s": 2, "retries": 0, "scrape_interval_s": 1},
        "http": {"host": HOST, "port": port},
        "log": {"level": "INFO", "format": "json"},
        "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "request_timeout_s": 10,
                       "availability_timeout_s": 30},
        "store": {"data_dir": str(tmp_path / "data")},
        "verification": {"window_s": 3},
        "events": {"kubernetes_events": False},
        "defaults": {
            # Two minutes: nothing a test's process watched leaves the window.
            "detection": {"window_s": 120, "baseline_window_s": 120},
            "policy": {"cooldown_s": 0, "max_rollbacks_per_hour": 10},
        },
        "targets": [{"namespace": NAMESPACE, **target}],
    }))  # fmt: skip
    return config, port


def template_image(cluster: ClusterEmulator, name: str) -> str:
    deployment = cluster.read(DEPLOYMENTS, NAMESPACE, name) or {}
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


async def release(cluster: ClusterEmulator, name: str, app: SampleAppProcess) -> float:
    """A new revision of Deployment ``name`` with the new image, whose pods fail 38%; returns
    the loop time of the release."""
    deployment = cluster.read(DEPLOYMENTS, NAMESPACE, name) or {}
    template = copy.deepcopy(deployment["spec"]["template"])
    template["spec"]["containers"][0]["image"] = NEW_IMAGE
    stored = cluster.update(DEPLOYMENTS, NAMESPACE, name, {"spec": {"template": template}})
    await cluster.publish(DEPLOYMENTS, "MODIFIED", stored)
    await app.acontrol(**BAD)
    return asyncio.get_running_loop().time()


async def undone_within(cluster: ClusterEmulator, name: str, app: SampleAppProcess, released: float,
                        tail: Any) -> float:
    """Wait for the Deployment back at the old image (then its pods are healthy again); returns
    how long after the release that was."""
    try:
        await wait_until(lambda: template_image(cluster, name) == OLD_IMAGE, timeout_s=SEVERE_PATH_S * 2,
                         interval_s=0.05, what=lambda: f"{name} undone: {tail()}")
    finally:
        await app.acontrol(**HEALTHY)
    return asyncio.get_running_loop().time() - released


async def target_view(port: int, key: str) -> dict[str, Any] | None:
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session, \
                session.get(f"http://{HOST}:{port}/api/v1/targets/{key}") as response:
            if response.status != 200:
                return None
            view: dict[str, Any] = await response.json()
            return view
    except (aiohttp.ClientError, TimeoutError):
        return None


class Daemon:
    """A ``rollbackd run`` process; stopped (SIGTERM, then SIGKILL) when the test ends."""

    def __init__(self, config: Path, log: Path, *, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.environ = environ
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await start_daemon(self.config, self.log, environ=self.environ)

    async def stop(self) -> int:
        process = self.process
        assert process is not None
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=20)
            except TimeoutError:
                process.kill()
                await process.wait()
        assert process.returncode is not None
        return process.returncode

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-30:]) if self.log.exists() else ""

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log.read_text(errors="replace").splitlines() if self.log.exists() else []:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found


@pytest.fixture
async def daemons(no_leftover_tasks: None, cluster: ClusterEmulator) -> AsyncIterator[list[Daemon]]:
    """The processes a test starts, stopped before the cluster and the leftover-task guard (their
    watch connections are the emulated API server's tasks)."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        if daemon.process is not None and daemon.process.returncode is None:
            await daemon.stop()


async def ready(port: int, daemon: Daemon) -> None:
    async def answers() -> bool:
        assert daemon.process is not None
        assert daemon.process.returncode is None, daemon.tail()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session, \
                    session.get(f"http://{HOST}:{port}/readyz") as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    await wait_until(answers, timeout_s=30, interval_s=0.1, what=lambda: f"rollbackd ready: {daemon.tail()}")


def past_read(daemon: Daemon) -> bool:
    return any("read from the metrics source" in str(line.get("msg", "")) for line in daemon.lines())


@pytest.mark.e2e
async def test_a_deployment_released_a_minute_after_rollbackd_started_is_undone(
    apps: Apps, cluster: ClusterEmulator, daemons: list[Daemon], tmp_path: Path
) -> None:
    config, port = write_config(tmp_path, apps, cluster, {
        "name": "web", "strategy": "deployment", "candidate": {"deployment": "web"},
    })
    daemon = Daemon(config, tmp_path / "rollbackd.log")
    daemons.append(daemon)
    await daemon.start()
    await ready(port, daemon)
    started = asyncio.get_running_loop().time()
    # The release comes a minute after rollbackd started: that is the scenario, not a wait.
    await asyncio.sleep(60 - (asyncio.get_running_loop().time() - started))

    released = await release(cluster, "web", apps.web)
    took = await undone_within(cluster, "web", apps.web, released, daemon.tail)
    assert took <= SEVERE_PATH_S, daemon.tail()
    kinds = Store(tmp_path / "data" / "rollbackd.db").kinds("web")
    assert "rollback.started" in kinds, kinds
    assert "escalation.raised" not in kinds[: kinds.index("rollback.started")], kinds
    assert await daemon.stop() == 0, daemon.tail()
    print(f"\nDeployment released 60 s after start undone {took:.1f} s after the release")


@pytest.mark.e2e
async def test_a_deployment_released_right_after_a_restart_of_rollbackd_is_undone(
    apps: Apps, cluster: ClusterEmulator, daemons: list[Daemon], tmp_path: Path
) -> None:
    config, port = write_config(tmp_path, apps, cluster, {
        "name": "api", "strategy": "deployment", "candidate": {"deployment": "api"},
    })
    first = Daemon(config, tmp_path / "first.log")
    daemons.append(first)
    await first.start()
    await ready(port, first)
    assert await first.stop() == 0, first.tail()  # e.g. a Helm upgrade of rollbackd itself

    second = Daemon(config, tmp_path / "second.log")
    daemons.append(second)
    await second.start()
    await ready(port, second)
    await wait_until(lambda: past_read(second), timeout_s=60, what=lambda: f"the past read: {second.tail()}")
    released = await release(cluster, "api", apps.api)
    took = await undone_within(cluster, "api", apps.api, released, second.tail)
    assert took <= SEVERE_PATH_S, second.tail()
    assert await second.stop() == 0, second.tail()
    print(f"\nDeployment released right after a restart undone {took:.1f} s after the release")


@pytest.mark.e2e
async def test_a_refused_switch_back_does_not_blind_the_judge(
    apps: Apps, cluster: ClusterEmulator, daemons: list[Daemon], tmp_path: Path
) -> None:
    config, port = write_config(tmp_path, apps, cluster, {
        "name": "web", "strategy": "blue-green", "service": "web",
        "baseline": {"deployment": "web-blue"}, "candidate": {"deployment": "web-green"},
    })
    refused = cluster.fail("patch", SERVICES, status=403, namespace=NAMESPACE, name="web", times=1)
    daemon = Daemon(config, tmp_path / "rollbackd.log")
    daemons.append(daemon)
    await daemon.start()
    await ready(port, daemon)
    await wait_until(lambda: past_read(daemon), timeout_s=60, what=lambda: f"the past read: {daemon.tail()}")

    async def blue_watched() -> bool:
        # The process itself saw blue serve a while (its own history would do for the first
        # verdicts): what follows is about what the failed rollback leaves of it.
        view = await target_view(port, f"{NAMESPACE}/web")
        evidence = (view or {}).get("evidence") or {}
        return float(evidence.get("baseline_requests") or 0) >= 200

    await wait_until(blue_watched, timeout_s=20, interval_s=0.2,
                     what=lambda: f"blue watched: {daemon.tail()}")

    # The release: the Service switches to green, whose pods fail 38%; blue serves nothing.
    stored = cluster.update(SERVICES, NAMESPACE, "web", {"spec": {"selector": GREEN}})
    await cluster.publish(SERVICES, "MODIFIED", stored)
    await apps.blue.acontrol(rps=0)
    await apps.green.acontrol(rps=40, **BAD)
    try:
        # The first switch-back is refused by the API: the rollback fails, green still serves.
        await wait_until(lambda: len(refused) == 1, timeout_s=SEVERE_PATH_S * 2,
                         what=lambda: f"refused: {daemon.tail()}")
        verdicts: list[dict[str, Any]] = []

        async def switched_back() -> bool:
            view = await target_view(port, f"{NAMESPACE}/web")
            failed = view is not None and (view.get("rollback") or {}).get("phase") == "action-failed"
            if failed and view is not None and view.get("evidence"):
                verdicts.append(view["evidence"])
            service = cluster.read(SERVICES, NAMESPACE, "web") or {}
            return bool(service["spec"]["selector"] == BLUE)

        await wait_until(switched_back, timeout_s=30, interval_s=0.1,
                         what=lambda: f"switched back: {daemon.tail()}")
    finally:
        await apps.green.acontrol(rps=0, **HEALTHY)
        await apps.blue.acontrol(rps=40)
    store = Store(tmp_path / "data" / "rollbackd.db")
    await wait_until(lambda: "rollback.completed" in store.kinds("web"), timeout_s=60,
                     what=f"the second rollback recorded: {store.kinds('web')}")
    kinds = store.kinds("web")
    assert kinds.count("rollback.failed") == 1, kinds
    assert kinds.index("rollback.failed") < kinds.index("rollback.completed"), kinds
    # Every verdict seen between the failure and the next rollback still blamed green.
    breached = [v for v in verdicts if v["impact"] != "none"]
    assert breached, verdicts
    for verdict in breached:
        assert verdict["attributable"], verdict["reasons"]
        assert not any("no baseline" in reason for reason in verdict["reasons"]), verdict["reasons"]
    assert await daemon.stop() == 0, daemon.tail()
