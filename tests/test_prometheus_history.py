"""A target's past from Prometheus: ``query_range`` against a scripted HTTP server for its answers
and failures, :meth:`PrometheusSource.history` on scripted matrices, and both against a real
Prometheus scraping real sample apps."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from rollbackd.errors import PrometheusQueryError, PrometheusUnavailableError
from rollbackd.model import DEFAULT_BUCKETS_S
from rollbackd.sources.base import GivesHistory, SourceTarget
from rollbackd.sources.lookback import Lookback
from rollbackd.sources.prometheus import (
    HISTORY_POINTS_PER_QUERY,
    PrometheusSource,
    default_max_range_answer_bytes,
)
from tests.promfixtures import (
    PrometheusServer,
    SampleAppProcess,
    require_prometheus,
    start_prometheus,
    start_sample_app,
)
from tests.test_prometheus_source import (
    CHECKOUT,
    TEMPLATES,
    Reply,
    StartFake,
    client_for,
    failure,
    fake_servers,
    ref,
)

END = 1_700_000_100.0
STEP = 10.0

# A scripted Prometheus answering range queries


@pytest.fixture
async def fake_range() -> AsyncIterator[StartFake]:
    async with fake_servers("/api/v1/query_range") as start:
        yield start


def matrix(*series: dict[str, Any], warnings: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"status": "success", "data": {"resultType": "matrix", "result": list(series)}}
    if warnings:
        body["warnings"] = warnings
    return 200, body


def points(values: Sequence[float | str | None], **labels: str) -> dict[str, Any]:
    """A series over the times ``END - (n-1)*STEP .. END``; ``None`` leaves that time out."""
    start = END - (len(values) - 1) * STEP
    return {
        "metric": labels,
        "values": [[start + i * STEP, str(v)] for i, v in enumerate(values) if v is not None],
    }


def shop(deployment: str, **more: str) -> dict[str, str]:
    return {"namespace": "shop", "deployment": deployment, **more}


def bucket_series(deployment: str, per_point: Sequence[Sequence[float] | None]) -> list[dict[str, Any]]:
    """Latency buckets of ``deployment``: ``per_point[i]`` the cumulative counts at time ``i``."""
    les = ["+Inf" if b == math.inf else repr(b) for b in DEFAULT_BUCKETS_S]
    return [
        points([None if counts is None else counts[j] for counts in per_point], **shop(deployment, le=le))
        for j, le in enumerate(les)
    ]


def route(*, requests: Reply, errors: Reply, latency: Reply | None = None) -> Callable[[str], Reply]:
    def respond(query: str) -> Reply:
        if "_bucket" in query:
            return latency or matrix()
        if "5.." in query:
            return errors
        return requests

    return respond


FAST_BUCKETS = [0, 0, 1, 21, 318, 877, 931, 931, 931, 931, 931, 931]
SLOW_BUCKETS = [0, 0, 0, 0, 0, 0, 7, 60, 86, 90, 90, 90]


# query_range


async def test_query_range_posts_its_range_and_reads_a_matrix_into_columns(fake_range: Any) -> None:
    fake = await fake_range(lambda q: matrix(
        points([1, 2, "NaN"], **shop("a")), points([5, None, 7], **shop("b")), warnings=["partial"],
    ))
    async with client_for(fake.url) as client:
        result = await client.query_range("up", start_s=END - 20, end_s=END, step_s=STEP)
    form = fake.forms[0]
    assert (form["query"], float(form["start"]), float(form["end"]), float(form["step"])) == (
        "up", END - 20, END, STEP,
    )
    assert form["timeout"] == "2"
    assert result.labels == (shop("a"), shop("b"))
    assert result.timestamps == ((END - 20, END - 10, END), (END - 20, END))
    assert result.values[1] == (5.0, 7.0)
    assert result.values[0][:2] == (1.0, 2.0)
    assert math.isnan(result.values[0][2])
    assert result.warnings == ("partial",)
    # The same answer as one instant vector per time.
    instants = result.instants()
    assert list(instants) == [round((END - 20) * 1000), round((END - 10) * 1000), round(END * 1000)]
    middle = instants[round((END - 10) * 1000)]
    assert (middle.labels, middle.values) == ((shop("a"),), (2.0,))


@pytest.mark.parametrize(("reply", "kind", "attempts"), [
    (failure(400, "bad_data", "exceeded maximum resolution of 11,000 points"), "bad_query", 1),
    (failure(422, "execution", "query processing would load too many samples"), "execution", 1),
    (failure(503, "unavailable", "shutting down"), "unavailable", 3),
    ((200, {"status": "success", "data": {"resultType": "vector", "result": []}}), "bad_response", 1),
    ((200, b"<html>proxy login</html>"), "bad_response", 1),
])
async def test_query_range_classifies_failures_like_instant_queries(
    fake_range: Any, reply: Reply, kind: str, attempts: int,
) -> None:
    fake = await fake_range(lambda q: reply)
    async with client_for(fake.url, retries=2) as client:
        expected = PrometheusUnavailableError if attempts > 1 else PrometheusQueryError
        with pytest.raises(expected) as caught:
            await client.query_range("up", start_s=END - 20, end_s=END, step_s=STEP)
        assert caught.value.kind == kind
        assert len(fake.queries) == attempts
        assert client.stats.errors == {kind: attempts}


async def test_query_range_reads_up_to_its_cap(fake_range: Any) -> None:
    reply = matrix(*(points([1.0] * 50, **shop(f"svc-{i}")) for i in range(50)))
    fake = await fake_range(lambda q: reply)
    async with client_for(fake.url) as client:
        with pytest.raises(PrometheusQueryError) as caught:
            await client.query_range("up", start_s=END - 490, end_s=END, step_s=STEP, max_answer_bytes=10_000)
        assert caught.value.kind == "oversized"
        result = await client.query_range("up", start_s=END - 490, end_s=END, step_s=STEP)
        assert len(result.labels) == 50


async def test_query_range_refuses_a_range_that_is_not_one() -> None:
    async with client_for("http://127.0.0.1:9") as client:
        with pytest.raises(ValueError, match="start_s <= end_s"):
            await client.query_range("up", start_s=END, end_s=END - 1, step_s=STEP)
        with pytest.raises(ValueError, match="step_s"):
            await client.query_range("up", start_s=END - 10, end_s=END, step_s=0)


# PrometheusSource.history


CART = SourceTarget(key="shop/cart", queries=TEMPLATES, candidate=ref("shop", "cart"))


async def test_history_gives_each_target_its_past_intervals_oldest_first(fake_range: Any) -> None:
    fake = await fake_range(route(
        requests=matrix(points([900, 931, 950], **shop("checkout-stable")),
                        points([90, None, 95], **shop("checkout-canary")),
                        points([40, 41, 42], **shop("cart"))),
        errors=matrix(points([2, 3, 1], **shop("checkout-stable")),
                      points([0, None, 30], **shop("checkout-canary"))),
        latency=matrix(*bucket_series("checkout-stable", [FAST_BUCKETS] * 3),
                       *bucket_series("checkout-canary", [SLOW_BUCKETS, None, SLOW_BUCKETS])),
    ))
    async with client_for(fake.url) as client:
        source = PrometheusSource(client=client, shards=1)
        found = await source.history([CHECKOUT, CART], step_s=STEP, range_s=3 * STEP, end_s=END)
        stats = client.stats
    # One batched range query per metric for both targets, each over the step, points a step apart.
    assert len(fake.queries) == 3
    assert all("[10s]" in q for q in fake.queries)
    assert {(float(f["start"]), float(f["end"]), float(f["step"])) for f in fake.forms} == {
        (END - 2 * STEP, END, STEP)
    }
    checkout = found["shop/checkout"]
    assert [t for t, _ in checkout] == [END - 20, END - 10, END]
    (_, (base0, cand0)), (_, (base1, cand1)), (_, (_, cand2)) = checkout
    assert base0 is not None
    assert cand0 is not None
    assert base1 is not None
    assert (base0.requests, base0.errors, cand0.requests, cand0.errors) == (900, 2, 90, 0)
    assert cand1 is None  # no data for the canary at that time: missing, never zero
    assert base1.requests == 931
    assert cand2 is not None
    assert (cand2.requests, cand2.errors) == (95, 30)
    assert base0.latency is not None
    assert base0.latency.counts == tuple(map(float, FAST_BUCKETS))
    assert cand0.p95_ms == pytest.approx(2471.2, abs=0.05)
    cart = found["shop/cart"]
    assert [(t, pair[0], pair[1] and (pair[1].requests, pair[1].errors)) for t, pair in cart] == [
        (END - 20, None, (40, 0)), (END - 10, None, (41, 0)), (END, None, (42, 0)),
    ]
    assert stats.errors_total == 0


async def test_history_drops_impossible_points_and_counts_them(fake_range: Any) -> None:
    fake = await fake_range(route(
        requests=matrix(points([40, 41, 42], **shop("cart"))),
        errors=matrix(points([1, 500, 2], **shop("cart"))),  # more errors than requests at END - 10
    ))
    async with client_for(fake.url) as client:
        source = PrometheusSource(client=client, shards=1)
        found = await source.history([CART], step_s=STEP, range_s=3 * STEP, end_s=END)
        assert client.stats.errors == {"errors_above_requests": 1}
    assert [t for t, _ in found["shop/cart"]] == [END - 20, END]


async def test_history_of_a_failed_batch_is_absent_not_empty(fake_range: Any) -> None:
    fake = await fake_range(route(
        requests=matrix(points([40, 41, 42], **shop("cart"))),
        errors=failure(422, "execution", "too many samples"),
    ))
    async with client_for(fake.url) as client:
        found = await PrometheusSource(client=client, shards=1).history(
            [CART], step_s=STEP, range_s=3 * STEP, end_s=END
        )
    assert found == {}


async def test_history_splits_many_targets_into_bounded_answers(fake_range: Any) -> None:
    fake = await fake_range(lambda q: matrix())
    targets = [SourceTarget(key=f"shop/svc-{i}", queries=TEMPLATES, candidate=ref("shop", f"svc-{i}"))
               for i in range(40)]
    range_s = 1000 * STEP  # 1000 points each
    async with client_for(fake.url) as client:
        found = await PrometheusSource(client=client, shards=2).history(
            targets, step_s=STEP, range_s=range_s, end_s=END
        )
    batches = len(fake.queries) // 3
    assert batches >= math.ceil(40 * 1000 / HISTORY_POINTS_PER_QUERY)
    # Every target asked for exactly once, and each answers (with no points).
    asked = [q for q in fake.queries if "5.." not in q and "_bucket" not in q]
    assert sum(q.count("svc-") for q in asked) == 40
    assert set(found) == {t.key for t in targets}
    assert all(found[t.key] == () for t in targets)
    # The cap grows with the points of a range.
    assert default_max_range_answer_bytes(10, 1000) > 10 * 1000 * 24 * 28
    assert default_max_range_answer_bytes(1, 1) == 4 * 1024 * 1024


async def test_the_lookback_asks_for_steps_of_two_scrapes_at_least(fake_range: Any) -> None:
    fake = await fake_range(lambda q: matrix())
    async with client_for(fake.url) as client:
        source = Lookback(PrometheusSource(client=client, shards=1), min_range_s=30)
        assert isinstance(source, GivesHistory)
        await source.history([CART], step_s=STEP, range_s=300, end_s=END)
    assert {float(f["step"]) for f in fake.forms} == {30.0}
    assert all("[30s]" in q for q in fake.queries)


# Against a real Prometheus


@dataclass
class Stack:
    prometheus: PrometheusServer
    stable: SampleAppProcess
    canary: SampleAppProcess
    started: float


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_prometheus()
    root = tmp_path_factory.mktemp("prometheus-history")
    apps: list[SampleAppProcess] = []
    try:
        apps.append(start_sample_app(deployment="checkout-stable", namespace="shop", rps=40,
                                     latency_ms=20, seed=1, log_dir=root))
        apps.append(start_sample_app(deployment="checkout-canary", namespace="shop", rps=40,
                                     latency_ms=300, error_rate=0.5, seed=2, log_dir=root))
        started = time.time()
        server = start_prometheus(targets=[a.address for a in apps], data_dir=root / "prometheus",
                                  binary=binary, scrapes=8, scrape_interval_s=1.0)
        try:
            yield Stack(prometheus=server, stable=apps[0], canary=apps[1], started=started)
        finally:
            server.stop()
    finally:
        for app in apps:
            app.stop()


@pytest.mark.e2e
async def test_real_prometheus_gives_the_past_at_the_step_with_gaps_left_out(stack: Stack) -> None:
    async with client_for(stack.prometheus.url) as client:
        source = PrometheusSource(client=client)
        end = time.time() - 1
        # A range reaching back well before the apps were scraped at all.
        found = await source.history([CHECKOUT], step_s=2, range_s=120, end_s=end)
        stats = client.stats
    past = found["shop/checkout"]
    times = [t for t, _ in past]
    assert len(past) >= 2
    assert times == sorted(times)
    assert all(b - a == pytest.approx(2.0, abs=0.002) for a, b in itertools.pairwise(times))
    assert times[-1] == pytest.approx(end, abs=0.002)
    assert times[0] > stack.started - 2  # nothing made up for the times before the first scrapes
    for _, (baseline, candidate) in past[1:]:  # the first point may hold a single scrape
        assert baseline is not None
        assert candidate is not None
        # 40 requests a second over a 2 s step, extrapolated by increase()
        assert 40 < baseline.requests < 140
        assert baseline.errors == 0
        assert candidate.error_rate is not None
        assert 0.2 < candidate.error_rate < 0.8
        assert baseline.p95_ms is not None
        assert candidate.p95_ms is not None
        assert baseline.p95_ms < 250 < candidate.p95_ms
    assert stats.errors_total == 0


@pytest.mark.e2e
async def test_real_prometheus_refuses_too_many_points_and_it_is_permanent(stack: Stack) -> None:
    async with client_for(stack.prometheus.url, retries=3) as client:
        now = time.time()
        with pytest.raises(PrometheusQueryError) as caught:
            await client.query_range("up", start_s=now - 20_000, end_s=now, step_s=1)
        assert caught.value.error_type == "bad_data"
        assert "11,000" in str(caught.value) or "resolution" in str(caught.value)
        assert client.stats.requests == 1


async def test_history_never_asks_for_more_points_than_prometheus_answers(fake_range: Any) -> None:
    fake = await fake_range(lambda q: matrix())
    async with client_for(fake.url) as client:
        # A day at a 1 s interval: 86,400 points, beyond Prometheus' 11,000 per series.
        await PrometheusSource(client=client, shards=1).history([CART], step_s=1, range_s=86_400, end_s=END)
    (step,) = {float(f["step"]) for f in fake.forms}
    start, end = float(fake.forms[0]["start"]), float(fake.forms[0]["end"])
    assert (end - start) / step + 1 <= 11_000
    assert end - start + step == pytest.approx(86_400, rel=0.001)
