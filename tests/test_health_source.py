"""The health prober against a local HTTP server: healthy, failing, unreachable and slow endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from rollbackd.errors import SourceStats
from rollbackd.sources.base import HealthSource
from rollbackd.sources.health import HealthProber
from tests.promfixtures import astart_sample_app, free_port


@dataclass
class Endpoints:
    url: str
    in_flight: int = 0
    most_in_flight: int = 0


@pytest.fixture
async def endpoints() -> AsyncIterator[Endpoints]:
    state = Endpoints(url="")

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def unavailable(request: web.Request) -> web.Response:
        return web.Response(status=503, text="not ready")

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="late")

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("/readyz")

    async def counted(request: web.Request) -> web.Response:
        state.in_flight += 1
        state.most_in_flight = max(state.most_in_flight, state.in_flight)
        try:
            await asyncio.sleep(0.05)
        finally:
            state.in_flight -= 1
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/readyz", ok)
    app.router.add_get("/down", unavailable)
    app.router.add_get("/slow", slow)
    app.router.add_get("/moved", moved)
    app.router.add_get("/counted/{n}", counted)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}"
    yield state
    await runner.cleanup()


async def test_statuses_paths_and_order_are_reported(endpoints: Endpoints) -> None:
    urls = [f"{endpoints.url}/down", f"{endpoints.url}/readyz", f"{endpoints.url}/moved?x=1"]
    async with HealthProber(timeout_s=2) as prober:
        source: HealthSource = prober
        checks = await source.probe(urls)

    assert [(c.path, c.status) for c in checks] == [("/down", 503), ("/readyz", 200), ("/moved", 200)]
    assert [c.ok for c in checks] == [False, True, True]
    assert all(c.error is None for c in checks)
    assert all(c.latency_ms is not None and c.latency_ms >= 0 for c in checks)
    assert prober.stats.errors_total == 0


async def test_an_unreachable_endpoint_has_no_status_and_says_why() -> None:
    stats = SourceStats(source="health")
    async with HealthProber(timeout_s=2, stats=stats) as prober:
        (check,) = await prober.probe([f"http://127.0.0.1:{free_port()}/healthz"])
    assert check.path == "/healthz"
    assert check.status is None
    assert not check.ok
    assert check.error
    assert "Connect" in check.error
    assert stats.errors == {"connection": 1}


async def test_a_slow_endpoint_times_out(endpoints: Endpoints) -> None:
    async with HealthProber(timeout_s=0.3) as prober:
        slow, fast = await prober.probe([f"{endpoints.url}/slow", f"{endpoints.url}/readyz"])
    assert slow.status is None
    assert slow.error == "no answer within 0.3s"
    assert fast.status == 200  # one slow endpoint does not hold back the others
    assert prober.stats.errors == {"timeout": 1}


async def test_an_invalid_url_is_reported_not_raised() -> None:
    async with HealthProber() as prober:
        (check,) = await prober.probe(["readyz"])
    assert check.status is None
    assert check.error is not None
    assert "invalid URL" in check.error


async def test_concurrency_is_capped(endpoints: Endpoints) -> None:
    urls = [f"{endpoints.url}/counted/{n}" for n in range(12)]
    async with HealthProber(timeout_s=5, concurrency=3) as prober:
        checks = await prober.probe(urls)
    assert [c.status for c in checks] == [200] * 12
    assert 1 <= endpoints.most_in_flight <= 3


async def test_probing_outside_the_context_is_an_error() -> None:
    prober = HealthProber()
    with pytest.raises(RuntimeError, match="async with"):
        await prober.probe(["http://127.0.0.1:1/"])


async def test_probes_follow_a_sample_app_switching_readiness(tmp_path: Path) -> None:
    app = await astart_sample_app(deployment="checkout-canary", namespace="shop", log_dir=tmp_path)
    try:
        async with HealthProber(timeout_s=5) as prober:
            (before,) = await prober.probe([f"{app.url}/readyz"])
            await app.acontrol(ready_status=503)
            (after,) = await prober.probe([f"{app.url}/readyz"])
    finally:
        app.stop()
    assert before.status == 200
    assert after.status == 503
