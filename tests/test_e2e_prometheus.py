"""End to end: real sample-app processes serving their own traffic, a real metrics backend scraping
them every second, and ``rollbackd run`` as a real process, watched only through its HTTP API.

The same story runs against two independent implementations of the query API, each secured as it
can be natively: Prometheus serving TLS with basic auth (``--web.config.file``) and VictoriaMetrics
with ``-tls`` and ``-httpAuth.*``; the daemon reaches them through ``prometheus.tls`` and
``prometheus.basic_auth`` (its password from a file), and the outcomes are the same. The password
appears nowhere in the daemon's log, its API or its status page.

One daemon watches four canaries of one stable service, in three phases:

1. all healthy: every target is judged ``none``;
2. ``spike`` fails 30% of its requests and ``creep`` 2.5% (the SLO is 1%, severe from 5%): an
   immediate rollback decision for ``spike``, a controlled one for ``creep`` only after its grace,
   nothing for ``steady``;
3. the backend stops and ``dark`` starts failing 30%: with no data, decisions are inconclusive and
   nothing is rolled back.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rollbackd.config.settings import PrometheusSettings
from rollbackd.sources.prometheus import PrometheusClient
from tests.backendfixtures import SecuredPrometheus, make_pki, prometheus_web_config, wait_for_data
from tests.kubefixtures import wait_until
from tests.promfixtures import (
    HOST,
    SampleAppProcess,
    astart_sample_app,
    free_port,
    require_prometheus,
)
from tests.vmfixtures import VictoriaMetricsServer, require_victoria_metrics

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "e2e"
INTERVAL_S = 2.0
GRACE_S = 6.0
CANARIES = ("steady", "spike", "creep", "dark")
#: Requests per second each process sends itself: plenty for 2.5% to stand out from a 1% SLO
#: within a few intervals, while staying far below the 5% severe level interval after interval.
RPS = {"stable": 100.0, "steady": 100.0, "spike": 100.0, "creep": 200.0, "dark": 100.0}
BASE_ERROR_RATE = 0.002
#: The backend's basic-auth password: it must never show in the daemon's log or answers.
PASSWORD = "e2e-pw-6b0f9c41d2"
#: The name the backend's certificate carries (not 127.0.0.1: the daemon is told to expect it).
SERVER_NAME = "metrics.test"
BACKENDS = ("prometheus", "victoria-metrics")
Backend = SecuredPrometheus | VictoriaMetricsServer


@dataclass
class Env:
    apps: dict[str, SampleAppProcess]
    backend: Backend
    daemon: asyncio.subprocess.Process
    daemon_log: Path
    api: str
    session: aiohttp.ClientSession
    #: Every look at the targets, with the (monotonic) time it was taken.
    history: list[tuple[float, dict[str, dict[str, Any]]]] = field(default_factory=list)

    async def targets(self) -> dict[str, dict[str, Any]]:
        """One look at every target through the API (kept in :attr:`history`)."""
        async with self.session.get(f"{self.api}/api/v1/targets") as response:
            assert response.status == 200
            listing: dict[str, Any] = await response.json()
        targets = {key.split("/")[1]: value for key, value in listing["targets"].items()}
        self.history.append((asyncio.get_running_loop().time(), targets))
        return targets

    def decided_at(self, name: str, decision: dict[str, Any]) -> float:
        """When ``decision`` of target ``name`` was taken, on this process' clock: the daemon
        reports each decision's age when asked."""
        for polled_at, targets in self.history:
            for shown in (targets[name]["decision"], targets[name]["last_rollback"]):
                if shown is not None and shown["t"] == decision["t"]:
                    return polled_at - float(shown["age_s"])
        raise AssertionError(f"decision {decision} of {name} was never seen")

    async def metrics(self) -> str:
        async with self.session.get(f"{self.api}/metrics") as response:
            return await response.text()

    async def until(self, what: str, check: Any, *, timeout_s: float) -> dict[str, dict[str, Any]]:
        """Poll the API every half second until ``check(targets)`` holds; if it never does, the
        failure shows the targets' reasons and the daemon's log."""
        targets: dict[str, dict[str, Any]] = {}

        async def holds() -> bool:
            nonlocal targets
            targets = await self.targets()
            return bool(check(targets))

        try:
            await wait_until(holds, timeout_s=timeout_s, interval_s=0.5, what=what)
        except pytest.fail.Exception:
            summary = {name: (t["decision"] or {}).get("reasons") for name, t in targets.items()}
            raise AssertionError(f"not {what} within {timeout_s:g}s: {json.dumps(summary, indent=1)}\n"
                                 f"daemon log tail:\n{_tail(self.daemon_log)}") from None
        return targets


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _config(
    prometheus: dict[str, Any], http_port: int, apps: dict[str, SampleAppProcess], data_dir: Path
) -> dict[str, Any]:
    return {
        "interval_s": INTERVAL_S,
        "store": {"data_dir": str(data_dir)},
        # A loaded machine may take seconds to answer: a probe timing out on two ticks running
        # would be a failing health endpoint, a severe breach (an immediate rollback of any canary).
        "prometheus": {**prometheus, "timeout_s": 5, "retries": 0, "scrape_interval_s": 1},
        "health": {"timeout_s": 5},
        "http": {"host": HOST, "port": http_port},
        "log": {"level": "INFO", "format": "json"},
        "defaults": {
            "detection": {"window_s": 12, "min_requests": 50, "min_latency_samples": 50},
            "policy": {"controlled_grace_s": GRACE_S},
        },
        "targets": [
            {
                "name": name,
                "namespace": NAMESPACE,
                "strategy": "canary",
                "ingress": f"{name}-canary",
                "baseline": {"deployment": "stable"},
                "candidate": {"deployment": f"canary-{name}", "health": [f"{apps[name].url}/readyz"]},
            }
            for name in CANARIES
        ],
    }


def _secured_backend(kind: str, targets: list[str], root: Path) -> tuple[Backend, dict[str, Any]]:
    """The backend ``kind`` over ``targets``, serving TLS and basic auth, not started yet, and the
    ``prometheus:`` settings that reach it."""
    pki = make_pki(root / "pki", server_names=[SERVER_NAME])
    password_file = root / "backend-password"
    password_file.write_text(PASSWORD + "\n")
    settings = {
        "basic_auth": {"username": "rollbackd", "password_file": str(password_file)},
        "tls": {"ca_file": str(pki.ca), "server_name": SERVER_NAME},
    }
    backend: Backend
    if kind == "prometheus":
        web = prometheus_web_config(root / "web.yml", pki=pki, users={"rollbackd": PASSWORD})
        backend = SecuredPrometheus(web_config=web, targets=targets, data_dir=root / "prometheus",
                                    binary=require_prometheus(), scrape_interval_s=1.0)
    else:
        backend = VictoriaMetricsServer(
            binary=require_victoria_metrics(), targets=targets, data_dir=root / "vm", latency_offset="0s",
            scrape_interval_s=1.0, tls=True,
            extra_args=["-tls", f"-tlsCertFile={pki.server_cert}", f"-tlsKeyFile={pki.server_key}",
                        "-httpAuth.username=rollbackd", f"-httpAuth.password={PASSWORD}"],
        )
    return backend, {"url": backend.url, **settings}


@pytest.fixture(params=BACKENDS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    kind: str = request.param
    require_prometheus() if kind == "prometheus" else require_victoria_metrics()
    apps: dict[str, SampleAppProcess] = {}
    backend: Backend | None = None
    daemon: asyncio.subprocess.Process | None = None
    try:
        started = await asyncio.gather(*(
            astart_sample_app(
                deployment=name if name == "stable" else f"canary-{name}",
                namespace=NAMESPACE, rps=RPS[name], error_rate=BASE_ERROR_RATE, seed=index, log_dir=tmp_path,
            )
            for index, name in enumerate(RPS)
        ), return_exceptions=True)
        for name, app in zip(RPS, started, strict=True):
            if isinstance(app, SampleAppProcess):
                apps[name] = app
        for app in started:
            if isinstance(app, BaseException):
                raise app
        backend, prometheus = _secured_backend(kind, [app.address for app in apps.values()], tmp_path)
        backend.start()
        async with PrometheusClient.from_settings(PrometheusSettings.model_validate(prometheus),
                                                  environ={}) as client:
            # Every app scraped twice at least: an increase() needs two samples.
            await wait_for_data(client, "sum_over_time(up[10m]) >= 2", series=len(apps))

        http_port = free_port()
        config = tmp_path / "rollbackd.yaml"
        config.write_text(yaml.safe_dump(_config(prometheus, http_port, apps, tmp_path / "data")))
        daemon_log = tmp_path / "rollbackd.log"
        with daemon_log.open("wb") as log:
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "rollbackd", "run", "--config", str(config),
                cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                env={k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")},
            )
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            yield Env(apps=apps, backend=backend, daemon=daemon, daemon_log=daemon_log,
                      api=f"http://{HOST}:{http_port}", session=session)
    finally:
        if daemon is not None and daemon.returncode is None:
            daemon.kill()
            await daemon.wait()
        if backend is not None:
            backend.stop()
        for app in apps.values():
            app.stop()


#: The targets as the API lists them, by name.
Targets = dict[str, dict[str, Any]]


async def _wait_ready(env: Env) -> None:
    async def ready() -> bool:
        if env.daemon.returncode is not None:
            raise AssertionError(f"rollbackd exited with {env.daemon.returncode}:\n{_tail(env.daemon_log)}")
        try:
            async with env.session.get(f"{env.api}/readyz") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    try:
        await wait_until(ready, timeout_s=60, interval_s=0.2, what="rollbackd ready")
    except pytest.fail.Exception:
        raise AssertionError(f"rollbackd not ready within 60s:\n{_tail(env.daemon_log)}") from None


def after(targets: Targets, earlier: Targets, name: str, ticks: int) -> bool:
    """Whether target ``name`` was judged ``ticks`` intervals after it was in ``earlier``."""
    decision, before = targets[name]["decision"], earlier[name]["decision"]
    return decision is not None and seconds(decision["t"], before["t"]) >= (ticks - 0.5) * INTERVAL_S


def seconds(later: str, earlier: str) -> float:
    """Seconds between two of the API's times (ISO 8601, UTC)."""
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def _outcome(target: dict[str, Any]) -> str | None:
    decision = target["decision"]
    return None if decision is None else str(decision["outcome"])


async def test_rollbackd_decides_on_real_backend_data(env: Env) -> None:
    await _wait_ready(env)

    # Phase 1: everything healthy, and judged so (data flows through Prometheus).
    healthy = await env.until(
        "all judged healthy", lambda ts: all(_outcome(t) == "none" for t in ts.values()), timeout_s=60
    )
    await env.until("two more ticks", lambda ts: after(ts, healthy, "steady", 2), timeout_s=60)

    # Phase 2: a severe and a moderate regression. No breach can start before the switch is asked
    # for (a loaded machine may take a while to answer it: the time is taken before, not after).
    switched_at = asyncio.get_running_loop().time()
    await asyncio.gather(
        env.apps["spike"].acontrol(error_rate=0.30), env.apps["creep"].acontrol(error_rate=0.025),
    )
    done = await env.until(
        "both regressions decided",
        lambda ts: ts["spike"]["last_rollback"] is not None and ts["creep"]["last_rollback"] is not None,
        timeout_s=90,
    )

    spike = done["spike"]["last_rollback"]
    assert spike["outcome"] == "immediate", spike
    assert spike["rollback"] is True
    assert done["spike"]["evidence"]["impact"] == "severe"

    creep = done["creep"]["last_rollback"]
    assert creep["outcome"] == "controlled", creep
    assert creep["rollback"] is True
    assert done["creep"]["evidence"]["impact"] == "manageable"
    # Not before the grace: the breach started after the switch, and lasted the grace before the
    # decision (the response includes its age, which puts it on this process' clock).
    assert creep["waiting_since"] is not None
    assert seconds(creep["t"], creep["waiting_since"]) >= GRACE_S
    assert env.decided_at("creep", creep) >= switched_at + GRACE_S - 0.5

    # The healthy canary is never rolled back, over ten ticks and more.
    first_t = env.history[0][1]["steady"]["decision"]["t"]
    await env.until("ten ticks of the healthy canary",
                    lambda ts: seconds(ts["steady"]["decision"]["t"], first_t) >= 9 * INTERVAL_S,
                    timeout_s=60)
    steady = [targets["steady"] for _, targets in env.history]
    assert all(t["last_rollback"] is None for t in steady)
    assert {_outcome(t) for t in steady} <= {"none", "inconclusive"}
    assert [_outcome(t) for t in steady].count("none") > len(steady) / 2

    # The backend's password shows nowhere: not in the API, the status page or /metrics.
    for path in ("/api/v1/targets", "/api/v1/history", "/", "/metrics"):
        async with env.session.get(f"{env.api}{path}") as response:
            assert PASSWORD not in await response.text(), path

    # Phase 3: the backend goes away while a canary goes bad: no data, no rollback.
    # (What the log says from here on: a loaded machine may have had the backend time out before.)
    before_outage = env.daemon_log.stat().st_size
    env.backend.stop()
    await env.apps["dark"].acontrol(error_rate=0.30)
    dark = await env.until(
        "inconclusive without Prometheus",
        lambda ts: _outcome(ts["dark"]) == "inconclusive" and _outcome(ts["steady"]) == "inconclusive",
        timeout_s=60,
    )
    final = await env.until("three more ticks", lambda ts: after(ts, dark, "dark", 3), timeout_s=60)
    assert _outcome(final["dark"]) == "inconclusive"
    assert final["dark"]["last_rollback"] is None
    assert final["steady"]["last_rollback"] is None
    assert any("no candidate metrics" in reason for reason in final["dark"]["decision"]["reasons"])
    metrics = await env.metrics()
    assert 'rollbackd_source_errors_total{kind="connection",source="prometheus"}' in metrics
    assert 'rollbackd_rollback_decisions_total{mode="immediate"} 1.0' in metrics
    assert 'rollbackd_rollback_decisions_total{mode="controlled"} 1.0' in metrics

    env.daemon.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(env.daemon.wait(), timeout=20) == 0
    log = env.daemon_log.read_bytes()
    outage = log[before_outage:].decode(errors="replace")
    # The log tells of the outage once (not per query and tick), with the backend's error...
    assert outage.count('"msg":"prometheus is down since ') == 1, outage
    assert PASSWORD.encode() not in log  # ...and never of the password
