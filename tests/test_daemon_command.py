"""The daemon rolling a release back with its configured command, closed loop: a real sample app goes
bad, the daemon decides, a real subprocess calls the app's admin endpoint to put it back, and the
verification sees it healthy again. A command that fails is a failed rollback whose events carry
the tail of its output."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from rollbackd.actions.targets import KubeTargets
from rollbackd.config.settings import (
    ApiSettings,
    CommandSettings,
    HttpSettings,
    Settings,
    Side,
    StoreSettings,
    TargetSettings,
    VerificationSettings,
)
from rollbackd.daemon.wiring import open_daemon
from rollbackd.demo.sampleapp import Behaviour, SampleApp, make_app
from rollbackd.kube import KubeClient
from rollbackd.model import Sample, Strategy
from rollbackd.run import Phase
from rollbackd.sources.base import SidePair, SourceTarget
from rollbackd.store import open_store
from tests.kubefixtures import wait_until
from tests.test_actions_rollout import FAST
from tests.test_daemon import ScriptedHealth

NS = "shop"
KEY = "shop/checkout"
#: Requests per interval the source reports: plenty to prove 30% errors against a 1% SLO.
REQUESTS = 1000
#: What the runbook's script does: tell the app's admin endpoint to go back to the good behaviour.
FLIP_BACK = (
    "import json, sys, urllib.request\n"
    "request = urllib.request.Request(sys.argv[1], data=json.dumps({'error_rate': 0.0}).encode(),\n"
    "                                 headers={'Content-Type': 'application/json'}, method='POST')\n"
    "with urllib.request.urlopen(request, timeout=10) as answer:\n"
    "    print('flipped back:', answer.read().decode())\n"
)


class AppMetrics:
    """The sample app's error rate as a metrics source: each interval, ``REQUESTS`` requests failing
    at the rate the app's admin endpoint says it fails now (the command changes it there)."""

    def __init__(self, session: aiohttp.ClientSession, control_url: str) -> None:
        self._session = session
        self._url = control_url
        self.ticks = 0

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        async with self._session.get(self._url) as response:
            behaviour = await response.json()
        self.ticks += 1
        errors = round(REQUESTS * float(behaviour["error_rate"]))
        return {target.key: (None, Sample(requests=REQUESTS, errors=errors)) for target in targets}


@pytest.fixture
async def app() -> AsyncIterator[tuple[SampleApp, str]]:
    sample = SampleApp(namespace=NS, deployment="checkout", behaviour=Behaviour(error_rate=0.0))
    runner = web.AppRunner(make_app(sample))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield sample, f"http://127.0.0.1:{port}/control"
    finally:
        await runner.cleanup()


def settings(data_dir: Path, command: CommandSettings) -> Settings:
    return one_target(data_dir, TargetSettings(name="checkout", namespace=NS, strategy=Strategy.COMMAND,
                                               candidate=Side(deployment="checkout"), command=command))


def one_target(data_dir: Path, target: TargetSettings) -> Settings:
    """A daemon of one target ticking every 0.1 s, verifying for 1 s, its store in ``data_dir``."""
    return Settings(
        interval_s=0.1,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(data_dir)),
        verification=VerificationSettings(window_s=1.0),
        api=ApiSettings(allow_unauthenticated_writes=True),
        targets=(target,),
    )


async def audit(data_dir: Path, kind: str) -> list[dict[str, Any]]:
    store = open_store(None, data_dir=data_dir)
    await store.open()
    try:
        history = await store.history(target=KEY)
    finally:
        await store.close()
    return [dict(entry.details) for entry in history if entry.kind == kind]


async def run_until(
    config: Settings, kube: KubeClient, metrics: AppMetrics, sample: SampleApp, phase: Phase
) -> dict[str, Any]:
    """Run the daemon: healthy ticks first (its own past), then the release goes bad; until the
    rollback reaches ``phase``. Returns the target as the API shows it then."""
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        open_daemon(
            config, metrics_source=metrics, health_source=ScriptedHealth(),
            targets=KubeTargets(kube=kube, settings=config, action_settings=FAST), kube=kube,
        ) as daemon,
    ):
        await wait_until(lambda: metrics.ticks >= 20, timeout_s=30, what="20 healthy ticks")
        sample.control({"error_rate": 0.3})

        def reached() -> bool:
            run = daemon.rollbacks.runs.get(KEY)
            return run is not None and run.phase is phase

        await wait_until(reached, timeout_s=60, what=f"the rollback {phase.value}")
        async with session.get(f"http://127.0.0.1:{daemon.port}/api/v1/targets/{KEY}") as response:
            shown: dict[str, Any] = await response.json()
        return shown


async def test_a_bad_release_is_rolled_back_by_its_command_and_verified(
    app: tuple[SampleApp, str], kube: KubeClient, tmp_path: Path
) -> None:
    sample, control_url = app
    config = settings(tmp_path, CommandSettings(argv=(sys.executable, "-c", FLIP_BACK, control_url),
                                                timeout_s=30))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        metrics = AppMetrics(session, control_url)
        shown = await run_until(config, kube, metrics, sample, Phase.VERIFIED)
    assert sample.behaviour.error_rate == 0.0
    action = shown["rollback"]["action"]
    assert action["action"] == "command"
    assert action["outcome"] == "done"
    completed = await audit(tmp_path, "rollback.completed")
    assert len(completed) == 1
    command = completed[0]["action"]["command"]
    assert command["exit_code"] == 0
    assert command["stdout_tail"].startswith("flipped back: ")
    assert await audit(tmp_path, "rollback.verified")


async def test_a_command_that_fails_is_a_failed_rollback_with_its_output_in_the_event(
    app: tuple[SampleApp, str], kube: KubeClient, tmp_path: Path
) -> None:
    sample, control_url = app
    script = "echo 'Error: UPGRADE FAILED: another operation is in progress' >&2; exit 1"
    config = settings(tmp_path, CommandSettings(argv=("/bin/sh", "-c", script), timeout_s=30))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        metrics = AppMetrics(session, control_url)
        await run_until(config, kube, metrics, sample, Phase.ACTION_FAILED)
    assert sample.behaviour.error_rate == 0.3  # nothing put it back

    async def told() -> bool:
        return bool(await audit(tmp_path, "rollback.failed"))

    await wait_until(told, timeout_s=10, what="rollback.failed in the audit log")
    failed = (await audit(tmp_path, "rollback.failed"))[0]
    assert "exited with code 1" in failed["action"]["reason"]
    assert "another operation is in progress" in failed["action"]["reason"]
    assert failed["action"]["command"]["stderr_tail"] == (
        "Error: UPGRADE FAILED: another operation is in progress\n"
    )

