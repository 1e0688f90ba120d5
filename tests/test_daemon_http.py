"""The daemon's HTTP endpoints over real HTTP and real time, and the ``rollbackd run`` process:
configuration errors, graceful SIGTERM, JSON logs."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rollbackd.config.settings import ApiSettings, HttpSettings, Settings, Side, TargetSettings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.jsonify import dumps, to_json_value
from rollbackd.demo.processes import free_port
from rollbackd.model import DEFAULT_BUCKETS_S, Finding, HealthCheck, Histogram, Sample, Strategy
from rollbackd.sources.base import SidePair, SourceTarget
from tests.kubefixtures import wait_until

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"

HEALTHY: SidePair = (Sample(requests=1000, errors=5), Sample(requests=1000, errors=5))


class GatedMetrics:
    """Serves ``pair``, but only once ``gate`` is set: the first tick blocks until then."""

    def __init__(self, pair: SidePair = HEALTHY) -> None:
        self.pair = pair
        self.gate = asyncio.Event()

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        await self.gate.wait()
        return {target.key: self.pair for target in targets}


class OkHealth:
    async def probe(self, urls: Sequence[str]) -> tuple[HealthCheck, ...]:
        return tuple(HealthCheck(path="/", status=200) for _ in urls)


def checkout(*, health: tuple[str, ...] = ()) -> TargetSettings:
    return TargetSettings(
        name="checkout",
        namespace="shop",
        strategy=Strategy.CANARY,
        baseline=Side(deployment="checkout-stable"),
        candidate=Side(deployment="checkout-canary", health=health),
        ingress="checkout-canary",
    )


def make_settings(*, port: int = 0, interval_s: float = 0.2) -> Settings:
    return Settings(
        interval_s=interval_s,
        http=HttpSettings(host=HOST, port=port),
        api=ApiSettings(allow_unauthenticated_writes=True),  # tokens: tests/test_api_auth.py
        targets=(checkout(),),
    )


def strict_json(text: str) -> Any:
    """Parse JSON refusing NaN and Infinity, which are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as client:
        yield client


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str, str]:
    async with session.get(url) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def wait_for(session: aiohttp.ClientSession, url: str, status: int, *, timeout_s: float = 20.0) -> None:
    async def answers() -> bool:
        try:
            return (await get(session, url))[0] == status
        except aiohttp.ClientError:
            return False

    await wait_until(answers, timeout_s=timeout_s, interval_s=0.1, what=f"{url} answering {status}")


async def test_readyz_answers_503_until_the_first_evaluation(session: aiohttp.ClientSession) -> None:
    metrics = GatedMetrics()
    async with Daemon(make_settings(), metrics_source=metrics, health_source=OkHealth()) as daemon:
        base = f"http://{HOST}:{daemon.port}"
        status, _, body = await get(session, base + "/readyz")
        assert status == 503
        shown = strict_json(body)
        assert {key: shown[key] for key in ("status", "leader")} == {
            "status": "no evaluation yet", "leader": True  # no election: it acts
        }
        # Before the first tick, only the sources the daemon does not use are known.
        assert {name: source["status"] for name, source in shown["sources"].items()} == {
            "kubernetes": "off", "store": "off"
        }
        status, _, _ = await get(session, base + "/healthz")
        assert status == 200

        metrics.gate.set()
        await wait_for(session, base + "/readyz", 200)
        status, _, _ = await get(session, base + "/healthz")
        assert status == 200


async def test_metrics_are_exported_in_the_prometheus_text_format(session: aiohttp.ClientSession) -> None:
    metrics = GatedMetrics()
    metrics.gate.set()
    async with Daemon(make_settings(), metrics_source=metrics, health_source=OkHealth()) as daemon:
        base = f"http://{HOST}:{daemon.port}"
        await wait_for(session, base + "/readyz", 200)
        status, content_type, text = await get(session, base + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain")
    for name in (
        "rollbackd_evaluations_total", "rollbackd_decisions_total", "rollbackd_rollback_decisions_total",
        "rollbackd_source_errors_total", "rollbackd_evaluation_duration_seconds",
        "rollbackd_collection_duration_seconds", "rollbackd_targets", "rollbackd_up",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text, name
    lines = text.splitlines()
    assert "rollbackd_up 1.0" in lines
    assert "rollbackd_targets 1.0" in lines
    assert 'rollbackd_decisions_total{outcome="none"} 0.0' not in lines  # healthy ticks were counted
    for timed in ("rollbackd_evaluation_duration_seconds", "rollbackd_collection_duration_seconds"):
        assert any(line.startswith(f"{timed}_count ") and not line.endswith(" 0.0") for line in lines), timed
    # The process's own metrics are there too (tests/test_daemon_metrics.py tells the rest).
    assert "process_cpu_seconds_total" in text


async def test_the_targets_api_shows_strategy_evidence_and_decision(session: aiohttp.ClientSession) -> None:
    metrics = GatedMetrics()
    metrics.gate.set()
    async with Daemon(make_settings(), metrics_source=metrics, health_source=OkHealth()) as daemon:
        base = f"http://{HOST}:{daemon.port}"
        await wait_for(session, base + "/readyz", 200)
        status, content_type, body = await get(session, base + "/api/v1/targets")
        assert status == 200
        assert content_type.startswith("application/json")
        listing = strict_json(body)
        assert listing["freeze"] is False
        assert listing["dry_run"] is False
        assert list(listing["targets"]) == ["shop/checkout"]
        target = listing["targets"]["shop/checkout"]
        assert target["strategy"] == "canary"
        assert target["namespace"] == "shop"
        assert target["name"] == "checkout"
        assert target["decision"]["outcome"] == "none"
        assert target["decision"]["rollback"] is False
        assert target["decision"]["reasons"]
        assert target["evidence"]["impact"] == "none"
        assert target["evidence"]["inconclusive"] is False
        finding = next(f for f in target["evidence"]["findings"] if f["signal"] == "error_rate")
        assert finding["value"] == pytest.approx(0.005, abs=0.002)
        assert finding["threshold"] == pytest.approx(0.01)
        assert 0 <= finding["confidence"] <= 1
        assert target["last_rollback"] is None
        assert target["hold"] is None
        assert target["cooldown"] is None

        status, _, body = await get(session, base + "/api/v1/targets/shop/checkout")
        assert status == 200
        assert strict_json(body)["key"] == "shop/checkout"
        status, _, body = await get(session, base + "/api/v1/targets/shop/nothing")
        assert status == 404
        assert "error" in strict_json(body)


async def test_non_finite_numbers_never_break_the_json(session: aiohttp.ClientSession) -> None:
    # Every request slower than the largest finite bucket: the P95 is unbounded.
    slow = Histogram(bounds_s=DEFAULT_BUCKETS_S, counts=(0.0,) * 11 + (1000.0,))
    metrics = GatedMetrics((Sample(requests=1000, errors=5, latency=slow, p95_ms=math.inf),
                            Sample(requests=1000, errors=5, latency=slow, p95_ms=math.nan)))
    metrics.gate.set()
    async with Daemon(make_settings(), metrics_source=metrics, health_source=OkHealth()) as daemon:
        base = f"http://{HOST}:{daemon.port}"
        await wait_for(session, base + "/readyz", 200)  # ready: the target was judged on them
        status, _, body = await get(session, base + "/api/v1/targets")
    assert status == 200
    strict_json(body)

    finding = Finding(signal="p95", value=math.inf, threshold=500.0, breached=True, severe=True,
                      attributable=True, confidence=math.nan)
    assert strict_json(dumps({"finding": finding, "bounds": DEFAULT_BUCKETS_S})) == {
        "finding": {**to_json_value(finding), "value": None, "confidence": None},  # type: ignore[dict-item]
        "bounds": [*DEFAULT_BUCKETS_S[:-1], None],
    }


async def test_control_endpoints_validate_their_input(session: aiohttp.ClientSession) -> None:
    metrics = GatedMetrics()
    metrics.gate.set()
    async with Daemon(make_settings(), metrics_source=metrics, health_source=OkHealth()) as daemon:
        base = f"http://{HOST}:{daemon.port}"
        hold = base + "/api/v1/targets/shop/checkout/hold"
        for raw in ('{"eta_s": -5}', '{"eta_s": "soon"}', '{"eta_s": true}', '{"eta_s": Infinity}',
                    '{"eta_s": 60, "reason": ""}', '{"eta_s": 60, "reason": 7}', "[300]", "not json", ""):
            async with session.post(hold, data=raw, headers={"Content-Type": "application/json"}) as response:
                assert response.status == 400, raw
                assert "error" in await response.json()
        async with session.post(base + "/api/v1/targets/shop/nothing/hold", json={"eta_s": 60}) as response:
            assert response.status == 404
        async with session.post(hold, json={"eta_s": 120.5, "reason": "patch 2.1.1"}) as response:
            assert response.status == 200
            shown = (await response.json())["hold"]
        assert shown["reason"] == "patch 2.1.1"
        assert 0 < shown["remaining_s"] <= 120.5
        assert shown["expired"] is False
        _, _, body = await get(session, base + "/api/v1/targets/shop/checkout")
        assert strict_json(body)["hold"]["reason"] == "patch 2.1.1"
        async with session.delete(hold) as response:
            assert response.status == 200
            assert (await response.json())["hold"] is None

        for raw in ('{"enabled": "yes"}', "{}", "true", "nope"):
            async with session.post(base + "/api/v1/dry-run", data=raw) as response:
                assert response.status == 400, raw
        async with session.post(base + "/api/v1/dry-run", json={"enabled": True}) as response:
            flags = await response.json()
            assert (flags["freeze"], flags["dry_run"]) == (False, True)
        async with session.post(base + "/api/v1/freeze") as response:
            flags = await response.json()
            assert (flags["freeze"], flags["dry_run"]) == (True, True)
        _, _, body = await get(session, base + "/api/v1/targets")
        assert strict_json(body)["freeze"] is True
        async with session.delete(base + "/api/v1/freeze") as response:
            flags = await response.json()
            assert (flags["freeze"], flags["dry_run"]) == (False, True)


async def test_a_busy_port_fails_the_daemon_instead_of_running_blind() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(make_settings(port=port), metrics_source=GatedMetrics(), health_source=OkHealth())
        with pytest.raises(ExceptionGroup) as raised:
            async with daemon:
                pass
    assert raised.value.subgroup(OSError) is not None
    assert not daemon.alive


# --- the process ---------------------------------------------------------------------------------

def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}


async def _run(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollbackd", *args,
        cwd=REPO, env=_child_env(), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def test_an_invalid_configuration_exits_2_with_the_problem(tmp_path: Path) -> None:
    config = tmp_path / "rollbackd.yaml"
    config.write_text(yaml.safe_dump({"interval_s": -1}))
    process = await _run("run", "--config", str(config))
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 2
    assert "interval_s" in stderr.decode()


async def test_sigterm_stops_the_daemon_cleanly(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    port = free_port()
    config = tmp_path / "rollbackd.yaml"
    config.write_text(yaml.safe_dump({
        "interval_s": 1,
        # Nothing listens there: every query fails with a connection error.
        "prometheus": {"url": f"http://{HOST}:{free_port()}", "timeout_s": 1, "retries": 0},
        "http": {"host": HOST, "port": port},
        "log": {"level": "INFO", "format": "json"},
        "store": {"data_dir": str(tmp_path / "data")},
        "targets": [checkout().model_dump(mode="json", exclude_defaults=True)],
    }))
    process = await _run("run", "--config", str(config))
    try:
        base = f"http://{HOST}:{port}"
        await wait_for(session, base + "/healthz", 200, timeout_s=30)
        await wait_for(session, base + "/readyz", 200, timeout_s=30)
        status, _, text = await get(session, base + "/metrics")
        assert status == 200
        assert 'rollbackd_source_errors_total{kind="connection",source="prometheus"}' in text
        status, _, body = await get(session, base + "/api/v1/targets/shop/checkout")
        assert strict_json(body)["decision"]["outcome"] == "inconclusive"

        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=20)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert process.returncode == 0, stderr.decode()[-3000:]
    entries = [json.loads(line) for line in stderr.decode().splitlines()]
    messages = [entry["msg"] for entry in entries]
    assert all({"ts", "level", "logger", "msg"} <= entry.keys() for entry in entries)
    shutdown = next(entry for entry in entries if entry["msg"] == "shutdown requested")
    assert shutdown["signal"] == "SIGTERM"
    assert messages.index("shutdown requested") < messages.index("rollbackd stopped")
    assert not [entry for entry in entries if entry["level"] in {"ERROR", "CRITICAL"}]
