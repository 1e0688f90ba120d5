"""The Prometheus client and source: against a scripted HTTP server for every failure shape, and
against a real Prometheus scraping real sample apps for the good path and an outage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from rollbackd.backoff import Backoff
from rollbackd.errors import (
    PermanentError,
    PrometheusQueryError,
    PrometheusUnavailableError,
    SourceStats,
    TemporaryError,
)
from rollbackd.model import DEFAULT_BUCKETS_S, Sample
from rollbackd.sources.base import MetricsSource, QueryTemplates, SeriesRef, SourceTarget
from rollbackd.sources.prometheus import (
    PrometheusClient,
    PrometheusSource,
    _parse_data,
    _parse_response,
    _plain_vector,
    default_max_answer_bytes,
)
from tests.promfixtures import (
    PrometheusServer,
    SampleAppProcess,
    free_port,
    require_prometheus,
    start_prometheus,
    start_sample_app,
)

FAST = Backoff(initial_s=0.01, max_s=0.05)

TEMPLATES = QueryTemplates(
    requests="sum by ({by}) (increase(http_requests_total{{{selector}}}[{window}]))",
    errors='sum by ({by}) (increase(http_requests_total{{{selector},code=~"5.."}}[{window}]))',
    latency_buckets=(
        "sum by ({by}, le) (increase(http_request_duration_seconds_bucket{{{selector}}}[{window}]))"
    ),
    group_labels=("namespace", "deployment"),
)


def ref(namespace: str, deployment: str) -> SeriesRef:
    return SeriesRef(labels=(("namespace", namespace), ("deployment", deployment)))


CHECKOUT = SourceTarget(key="shop/checkout", queries=TEMPLATES,
                        candidate=ref("shop", "checkout-canary"), baseline=ref("shop", "checkout-stable"))


# A scripted stand-in for Prometheus' query API


Reply = tuple[int, Any] | tuple[int, Any, dict[str, str]]


@dataclass
class FakePrometheus:
    """Answers ``POST /api/v1/query`` with whatever ``respond(query)`` returns:
    ``(status, json_body_or_bytes[, headers])``; records every request."""

    respond: Callable[[str], Reply | Awaitable[Reply]]
    queries: list[str] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        form = dict(await request.post())
        self.content_types.append(request.content_type)
        self.forms.append({k: str(v) for k, v in form.items()})
        query = str(form.get("query", ""))
        self.queries.append(query)
        reply = self.respond(query)
        if asyncio.iscoroutine(reply):
            reply = await reply
        assert isinstance(reply, tuple)
        status, body = reply[0], reply[1]
        headers = reply[2] if len(reply) > 2 else {}
        if isinstance(body, bytes):
            return web.Response(status=status, body=body, headers=headers)
        return web.json_response(body, status=status, headers=headers)


#: Starts a scripted Prometheus answering with a given ``respond``.
StartFake = Callable[[Callable[[str], Any]], Awaitable[FakePrometheus]]


@contextlib.asynccontextmanager
async def fake_servers(path: str) -> AsyncIterator[StartFake]:
    """Starts scripted Prometheus servers answering POSTs to ``path``, each on a port of its own
    (the kernel's pick); all are stopped on exit."""
    runners: list[web.AppRunner] = []

    async def start(respond: Callable[[str], Any]) -> FakePrometheus:
        fake = FakePrometheus(respond=respond)
        app = web.Application()
        app.router.add_post(path, fake.handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        host, port = runner.addresses[0][:2]
        fake.url = f"http://{host}:{port}"
        return fake

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


@pytest.fixture
async def fake_prometheus() -> AsyncIterator[StartFake]:
    async with fake_servers("/api/v1/query") as start:
        yield start


def success(*series: dict[str, Any], warnings: list[str] | None = None) -> tuple[int, dict[str, Any]]:
    body: dict[str, Any] = {"status": "success", "data": {"resultType": "vector", "result": list(series)}}
    if warnings:
        body["warnings"] = warnings
    return 200, body


def failure(status: int, error_type: str, error: str) -> tuple[int, dict[str, Any]]:
    return status, {"status": "error", "errorType": error_type, "error": error}


def vec(value: float | str, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": [1700000000.0, str(value)]}


def buckets(deployment: str, counts: Sequence[float], namespace: str = "shop") -> list[dict[str, Any]]:
    les = ["+Inf" if b == math.inf else repr(b) for b in DEFAULT_BUCKETS_S]
    series = [vec(c, namespace=namespace, deployment=deployment, le=le)
              for le, c in zip(les, counts, strict=True)]
    random.Random(7).shuffle(series)  # Prometheus gives no order; the source must sort by le
    return series


STABLE_BUCKETS = [0, 0, 1, 21, 318, 877, 931, 931, 931, 931, 931, 931]
CANARY_BUCKETS = [0, 0, 0, 0, 0, 0, 7, 60, 86, 90, 90, 90]


def router(*, requests: Reply | None = None, errors: Reply | None = None,
           latency: Reply | None = None) -> Callable[[str], Reply]:
    """Answers by query kind; a kind left ``None`` answers an empty vector."""

    def respond(query: str) -> Reply:
        if "_bucket" in query:
            return latency or success()
        if '5..' in query:
            return errors or success()
        return requests or success()

    return respond


def client_for(url: str, **options: Any) -> PrometheusClient:
    options.setdefault("timeout_s", 2.0)
    options.setdefault("retries", 2)
    options.setdefault("backoff", FAST)
    return PrometheusClient(base_url=url, **options)


# Backoff


def test_backoff_grows_by_factor_up_to_the_cap() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, factor=2.0, jitter=0)
    assert [backoff.delay(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])
    assert backoff.delay(10_000) == 1.0  # no overflow on absurd attempts


def test_backoff_jitter_stays_within_its_band_and_varies() -> None:
    rng = random.Random(1)
    proportional = Backoff(initial_s=1.0, max_s=1.0, jitter=0.5)
    delays = [proportional.delay(3, rng) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.3
    full = Backoff(initial_s=1.0, max_s=1.0, jitter=1.0)
    assert min(full.delay(0, rng) for _ in range(200)) < 0.1


@pytest.mark.parametrize("kwargs", [
    {"initial_s": 0, "max_s": 1},
    {"initial_s": 2, "max_s": 1},
    {"initial_s": 1, "max_s": 2, "factor": 0.5},
    {"initial_s": 1, "max_s": 2, "jitter": 1.5},
])
def test_backoff_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case names a different field
        Backoff(**kwargs)


# PrometheusClient against a scripted server


async def test_query_is_a_form_encoded_post_and_keeps_warnings(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(lambda q: success(
        vec("12.5", namespace="shop", deployment="a"), vec("NaN", namespace="shop", deployment="b"),
        warnings=["PromQL info: partial data"],
    ))
    async with client_for(fake.url) as client:
        result = await client.query('up{job="x"}')

    assert fake.queries == ['up{job="x"}']
    assert fake.content_types == ["application/x-www-form-urlencoded"]
    assert fake.forms[0]["timeout"] == "2"
    assert result.result_type == "vector"
    assert result.warnings == ("PromQL info: partial data",)
    assert result.series[0].labels == {"namespace": "shop", "deployment": "a"}
    assert result.series[0].value == 12.5
    assert math.isnan(result.series[1].value)


async def test_bad_data_is_permanent_not_retried_and_its_message_surfaced(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(lambda q: failure(400, "bad_data", 'parse error: unexpected "}"'))
    async with client_for(fake.url, retries=3) as client:
        with pytest.raises(PrometheusQueryError) as caught:
            await client.query("rate(x[1m]")

    assert len(fake.queries) == 1
    error = caught.value
    assert isinstance(error, PermanentError)
    assert error.status == 400
    assert error.error_type == "bad_data"
    assert error.kind == "bad_query"
    assert 'parse error: unexpected "}"' in str(error)
    assert "bad_data" in str(error)
    assert client.stats.errors == {"bad_query": 1}
    assert client.stats.retries == 0


async def test_execution_error_is_permanent(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(lambda q: failure(422, "execution", "many-to-many matching not allowed"))
    async with client_for(fake.url) as client:
        with pytest.raises(PrometheusQueryError, match="many-to-many"):
            await client.query("a * b")
    assert len(fake.queries) == 1


async def test_unavailable_is_retried_then_raised_as_temporary(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(lambda q: failure(503, "unavailable", "TSDB not ready"))
    stats = SourceStats(source="prometheus")
    async with client_for(fake.url, retries=2, stats=stats) as client:
        with pytest.raises(PrometheusUnavailableError, match="TSDB not ready") as caught:
            await client.query("up")

    assert len(fake.queries) == 3
    assert isinstance(caught.value, TemporaryError)
    assert caught.value.status == 503
    assert stats.requests == 3
    assert stats.retries == 2
    assert stats.failures == 1
    assert stats.errors == {"unavailable": 3}


async def test_a_temporary_failure_followed_by_success_returns_the_result(fake_prometheus: Any) -> None:
    replies = iter([
        (502, b"<html>Bad Gateway</html>"),
        (429, b"slow down", {"Retry-After": "0"}),
        failure(503, "timeout", "query timed out in expression evaluation"),
        success(vec(1, job="x")),
    ])
    fake = await fake_prometheus(lambda q: next(replies))
    errors: list[tuple[str, str]] = []
    stats = SourceStats(source="prometheus", on_error=lambda source, kind: errors.append((source, kind)))
    async with client_for(fake.url, retries=3, stats=stats) as client:
        result = await client.query("up")

    assert [s.value for s in result.series] == [1.0]
    assert len(fake.queries) == 4
    assert errors == [
        ("prometheus", "unavailable"), ("prometheus", "rate_limited"), ("prometheus", "timeout"),
    ]


async def test_a_slow_server_times_out_and_is_retried(fake_prometheus: Any) -> None:
    async def slow(query: str) -> Reply:
        await asyncio.sleep(3)
        return success()

    fake = await fake_prometheus(slow)
    async with client_for(fake.url, timeout_s=0.2, retries=1) as client:
        with pytest.raises(PrometheusUnavailableError, match=r"did not answer within 0\.2s") as caught:
            await client.query("up")
    assert caught.value.kind == "timeout"
    assert len(fake.queries) == 2


async def test_connection_refused_is_temporary() -> None:
    async with client_for(f"http://127.0.0.1:{free_port()}", retries=1) as client:
        with pytest.raises(PrometheusUnavailableError, match="cannot reach Prometheus") as caught:
            await client.query("up")
    assert caught.value.kind == "connection"
    assert client.stats.errors == {"connection": 2}


async def test_a_non_prometheus_answer_is_permanent(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(lambda q: (200, b"<html>login page</html>"))
    async with client_for(fake.url) as client:
        with pytest.raises(PrometheusQueryError, match="login page") as caught:
            await client.query("up")
    assert caught.value.kind == "bad_response"
    assert len(fake.queries) == 1


async def test_a_matrix_answer_is_rejected(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(lambda q: (200, {"status": "success", "data": {
        "resultType": "matrix", "result": [{"metric": {}, "values": [[1, "1"]]}]}}))
    async with client_for(fake.url) as client:
        with pytest.raises(PrometheusQueryError, match="matrix"):
            await client.query("up[1m]")


# Reading answers: the plain-vector reader and the JSON decoder agree


def compact(document: Any) -> bytes:
    """``document`` as Prometheus writes it: compact JSON, keys in its order."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def vector(*elements: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(elements)}}


def element(labels: dict[str, str], value: str, timestamp: float = 1700000000.123) -> dict[str, Any]:
    return {"metric": labels, "value": [timestamp, value]}


PLAIN_ANSWERS = {
    "empty": vector(),
    "buckets": vector(*(
        element({"deployment": f"svc-{i}-canary", "le": le, "namespace": "shop"}, value)
        for i in range(3)
        for le, value in (("0.1", "1.5"), ("+Inf", "4")))),
    "special values": vector(element({"job": "a"}, "NaN"), element({"job": "b"}, "+Inf"),
                             element({"job": "c"}, "-Inf"), element({"job": "d"}, "1e-05", 1700000000)),
    "no labels": vector(element({}, "3")),
    "non-ASCII label": vector(element({"deployment": "café-canary"}, "2")),
    "brace in a label": vector(element({"path": "/users/{id}"}, "1"), element({"path": "/"}, "2")),
}

DECODED_ANSWERS = {
    "escaped quote in a label": vector(element({"path": 'say "hi"'}, "1")),
    "backslash in a label": vector(element({"path": "a\\b"}, "1")),
    "warnings": {**vector(element({"job": "a"}, "1")), "warnings": ["partial data"]},
    "scalar": {"status": "success", "data": {"resultType": "scalar", "result": [1700000000, "4"]}},
}


@pytest.mark.parametrize("name", sorted(PLAIN_ANSWERS))
def test_a_plain_vector_is_read_directly_with_the_decoders_result(name: str) -> None:
    body = compact(PLAIN_ANSWERS[name])
    direct = _plain_vector("q", body)
    assert direct is not None
    decoded = _parse_data("q", json.loads(body))
    assert direct.labels == decoded.labels
    assert direct.values == pytest.approx(decoded.values, nan_ok=True)
    assert direct.timestamps == decoded.timestamps
    assert _parse_response("q", 200, body, None).labels == decoded.labels


@pytest.mark.parametrize("name", sorted(DECODED_ANSWERS))
def test_answers_the_plain_reader_does_not_know_go_through_the_decoder(name: str) -> None:
    body = compact(DECODED_ANSWERS[name])
    result = _parse_response("q", 200, body, None)
    decoded = _parse_data("q", json.loads(body))
    assert result == decoded
    if decoded.result_type == "vector":
        assert [dict(labels) for labels in result.labels] == [
            e["metric"] for e in DECODED_ANSWERS[name]["data"]["result"]
        ]


def test_the_plain_reader_shares_repeated_label_values_and_numbers() -> None:
    body = compact(PLAIN_ANSWERS["buckets"])
    result = _plain_vector("q", body)
    assert result is not None
    namespaces = {id(labels["namespace"]) for labels in result.labels}
    assert len(namespaces) == 1
    assert len({id(t) for t in result.timestamps}) == 1


def test_a_truncated_plain_answer_is_rejected_not_read_in_part() -> None:
    body = compact(PLAIN_ANSWERS["buckets"])
    cut = body[: len(body) // 2] + b"]}}"
    assert _plain_vector("q", cut) is None
    with pytest.raises(PrometheusQueryError) as caught:
        _parse_response("q", 200, cut, None)
    assert caught.value.kind == "bad_response"


# PrometheusSource against a scripted server


async def collect(url: str, targets: list[SourceTarget], window_s: float = 10, shards: int = 1,
                  **options: Any) -> tuple[dict[str, tuple[Sample | None, Sample | None]], SourceStats]:
    """One collection; one shard unless told otherwise, so that every query is seen once."""
    async with client_for(url, **options) as client:
        source: MetricsSource = PrometheusSource(client=client, shards=shards)
        result = await source.collect(targets, window_s=window_s)
        return dict(result), client.stats


async def test_good_data_becomes_samples_with_sorted_histograms(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(router(
        requests=success(vec(931, namespace="shop", deployment="checkout-stable"),
                         vec(90, namespace="shop", deployment="checkout-canary")),
        errors=success(vec(2, namespace="shop", deployment="checkout-stable"),
                       vec(30, namespace="shop", deployment="checkout-canary")),
        latency=success(*buckets("checkout-stable", STABLE_BUCKETS),
                        *buckets("checkout-canary", CANARY_BUCKETS)),
    ))
    result, stats = await collect(fake.url, [CHECKOUT], window_s=10)

    baseline, candidate = result["shop/checkout"]
    assert baseline is not None
    assert candidate is not None
    assert (baseline.requests, baseline.errors) == (931, 2)
    assert (candidate.requests, candidate.errors) == (90, 30)
    assert baseline.latency is not None
    assert candidate.latency is not None
    assert baseline.latency.bounds_s == DEFAULT_BUCKETS_S
    assert baseline.latency.counts == tuple(float(c) for c in STABLE_BUCKETS)
    assert candidate.latency.counts == tuple(float(c) for c in CANARY_BUCKETS)
    assert baseline.p95_ms == pytest.approx(284.5, abs=0.05)  # as histogram_quantile(0.95, ...) gives
    assert candidate.p95_ms == pytest.approx(2471.2, abs=0.05)
    assert len(fake.queries) == 3
    assert all("[10s]" in q for q in fake.queries)
    assert stats.errors_total == 0


async def test_no_errors_series_means_zero_errors_when_the_errors_query_succeeded(
    fake_prometheus: Any,
) -> None:
    fake = await fake_prometheus(router(
        requests=success(vec(500, namespace="shop", deployment="checkout-stable"),
                         vec(50, namespace="shop", deployment="checkout-canary")),
        errors=success(),
    ))
    result, _ = await collect(fake.url, [CHECKOUT])
    baseline, candidate = result["shop/checkout"]
    assert baseline == Sample(requests=500, errors=0)
    assert candidate == Sample(requests=50, errors=0)


@pytest.mark.parametrize("errors_reply", [
    failure(400, "bad_data", "unknown function"),
    failure(503, "unavailable", "overloaded"),
])
async def test_a_failed_errors_query_makes_the_sides_missing_not_error_free(
    fake_prometheus: Any, errors_reply: Reply,
) -> None:
    fake = await fake_prometheus(router(
        requests=success(vec(500, namespace="shop", deployment="checkout-stable"),
                         vec(50, namespace="shop", deployment="checkout-canary")),
        errors=errors_reply,
        latency=success(*buckets("checkout-canary", CANARY_BUCKETS)),
    ))
    result, stats = await collect(fake.url, [CHECKOUT], retries=1)
    assert result["shop/checkout"] == (None, None)
    assert stats.failures == 1


async def test_a_failed_requests_query_makes_every_side_missing(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(router(
        requests=failure(503, "timeout", "query timed out"),
        errors=success(vec(3, namespace="shop", deployment="checkout-canary")),
    ))
    other = SourceTarget(key="shop/cart", queries=TEMPLATES, candidate=ref("shop", "cart"))
    result, stats = await collect(fake.url, [CHECKOUT, other], retries=0)
    assert result == {"shop/checkout": (None, None), "shop/cart": (None, None)}
    assert stats.errors == {"timeout": 1}


async def test_empty_vectors_are_missing_data_not_zeros(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(router())
    result, _ = await collect(fake.url, [CHECKOUT])
    assert result == {"shop/checkout": (None, None)}


async def test_nan_requests_make_that_side_missing(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(router(
        requests=success(vec("NaN", namespace="shop", deployment="checkout-stable"),
                         vec(80, namespace="shop", deployment="checkout-canary")),
        errors=success(vec("NaN", namespace="shop", deployment="checkout-canary")),
    ))
    result, _ = await collect(fake.url, [CHECKOUT])
    # Baseline: NaN requests. Candidate: NaN errors. Neither may turn into a number.
    assert result["shop/checkout"] == (None, None)


async def test_one_side_missing_keeps_the_other(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(router(
        requests=success(vec(120, namespace="shop", deployment="checkout-canary")),
        errors=success(vec(7, namespace="shop", deployment="checkout-stable")),  # stable's requests absent
        latency=success(*buckets("checkout-canary", CANARY_BUCKETS)),
    ))
    result, _ = await collect(fake.url, [CHECKOUT])
    baseline, candidate = result["shop/checkout"]
    assert baseline is None
    assert candidate is not None
    assert (candidate.requests, candidate.errors) == (120, 0)
    assert candidate.latency is not None


async def test_a_failed_bucket_query_leaves_latency_missing_only(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(router(
        requests=success(vec(120, namespace="shop", deployment="checkout-canary"),
                         vec(900, namespace="shop", deployment="checkout-stable")),
        errors=success(vec(4, namespace="shop", deployment="checkout-canary")),
        latency=failure(422, "execution", "vector cannot contain metrics with the same labelset"),
    ))
    result, _ = await collect(fake.url, [CHECKOUT])
    baseline, candidate = result["shop/checkout"]
    assert candidate == Sample(requests=120, errors=4, latency=None, p95_ms=None)
    assert baseline == Sample(requests=900, errors=0, latency=None, p95_ms=None)


async def test_incomplete_histograms_are_missing_latency(fake_prometheus: Any) -> None:
    no_inf = [s for s in buckets("checkout-canary", CANARY_BUCKETS) if s["metric"]["le"] != "+Inf"]
    with_nan = buckets("checkout-stable", STABLE_BUCKETS)
    with_nan[0]["value"][1] = "NaN"
    fake = await fake_prometheus(router(
        requests=success(vec(90, namespace="shop", deployment="checkout-canary"),
                         vec(931, namespace="shop", deployment="checkout-stable")),
        latency=success(*no_inf, *with_nan),
    ))
    result, _ = await collect(fake.url, [CHECKOUT])
    baseline, candidate = result["shop/checkout"]
    assert baseline is not None
    assert candidate is not None
    assert baseline.latency is None
    assert baseline.p95_ms is None
    assert candidate.latency is None
    assert candidate.p95_ms is None


async def test_prometheus_down_makes_every_side_missing_and_is_counted() -> None:
    targets = [CHECKOUT, SourceTarget(key="shop/cart", queries=TEMPLATES, candidate=ref("shop", "cart"))]
    result, stats = await collect(f"http://127.0.0.1:{free_port()}", targets, retries=1)
    assert result == {"shop/checkout": (None, None), "shop/cart": (None, None)}
    assert stats.errors == {"connection": 6}  # 3 queries, 2 attempts each
    assert stats.failures == 3


@pytest.mark.parametrize("shards", [1, 2, 4])
async def test_three_queries_per_template_group_and_shard_per_tick(fake_prometheus: Any, shards: int) -> None:
    fake = await fake_prometheus(router())
    grpc = QueryTemplates(
        requests="sum by ({by}) (increase(grpc_total{{{selector}}}[{window}]))",
        errors='sum by ({by}) (increase(grpc_total{{{selector},code!="OK"}}[{window}]))',
        latency_buckets="sum by ({by}, le) (increase(grpc_seconds_bucket{{{selector}}}[{window}]))",
        group_labels=("namespace", "deployment"),
    )
    targets = [
        SourceTarget(key=f"shop/svc-{i}", queries=TEMPLATES if i % 2 else grpc,
                     candidate=ref("shop", f"svc-{i}-canary"), baseline=ref("shop", f"svc-{i}-stable"))
        for i in range(50)
    ]
    result, _ = await collect(fake.url, targets, window_s=90, shards=shards)
    assert len(result) == 50
    assert len(fake.queries) == 2 * 3 * shards
    assert all("[1m30s]" in q for q in fake.queries)


async def test_a_target_that_cannot_be_queried_is_missing_and_counted(fake_prometheus: Any) -> None:
    fake = await fake_prometheus(router(
        requests=success(vec(10, namespace="shop", deployment="checkout-canary"),
                         vec(10, namespace="shop", deployment="checkout-stable")),
    ))
    odd = SourceTarget(key="shop/odd", queries=TEMPLATES, candidate=SeriesRef(labels=(("pod", "x"),)))
    result, stats = await collect(fake.url, [CHECKOUT, odd])
    assert result["shop/odd"] == (None, None)
    assert result["shop/checkout"] == (Sample(10, 0), Sample(10, 0))
    assert stats.errors == {"config": 1}


# Against a real Prometheus scraping real sample apps


FLEET = 30


@dataclass
class Stack:
    prometheus: PrometheusServer
    stable: SampleAppProcess
    canary: SampleAppProcess
    fleet: SampleAppProcess


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    binary = require_prometheus()
    root = tmp_path_factory.mktemp("prometheus-stack")
    apps: list[SampleAppProcess] = []
    try:
        apps.append(start_sample_app(deployment="checkout-stable", namespace="shop", rps=40,
                                     latency_ms=20, seed=1, log_dir=root))
        apps.append(start_sample_app(deployment="checkout-canary", namespace="shop", rps=40,
                                     latency_ms=300, error_rate=0.5, seed=2, log_dir=root))
        apps.append(start_sample_app(deployment="fleet-app", namespace="fleet", fake_deployments=FLEET,
                                     log_dir=root))
        server = start_prometheus(targets=[a.address for a in apps], data_dir=root / "prometheus",
                                  binary=binary, scrapes=4, scrape_interval_s=1.0)
        try:
            yield Stack(prometheus=server, stable=apps[0], canary=apps[1], fleet=apps[2])
        finally:
            server.stop()
    finally:
        for app in apps:
            app.stop()


@pytest.mark.e2e
async def test_real_prometheus_gives_both_sides_of_a_canary(stack: Stack) -> None:
    missing = SourceTarget(key="shop/ghost", queries=TEMPLATES, candidate=ref("shop", "ghost-canary"),
                           baseline=ref("shop", "checkout-stable"))
    # A fractional timeout is also sent to Prometheus, which must accept its spelling.
    result, stats = await collect(stack.prometheus.url, [CHECKOUT, missing], window_s=3, timeout_s=2.5)

    baseline, candidate = result["shop/checkout"]
    assert baseline is not None
    assert candidate is not None
    assert baseline.requests > 0
    assert candidate.requests > 0
    # The stable deployment never failed: it has no 5xx series at all, which is zero errors.
    assert baseline.errors == 0
    assert candidate.error_rate is not None
    assert 0.2 < candidate.error_rate < 0.8
    assert baseline.latency is not None
    assert candidate.latency is not None
    assert baseline.latency.bounds_s == DEFAULT_BUCKETS_S
    assert list(candidate.latency.counts) == sorted(candidate.latency.counts)
    assert baseline.p95_ms is not None
    assert candidate.p95_ms is not None
    assert baseline.p95_ms < 250 < candidate.p95_ms  # 20 ms vs 300 ms served

    ghost_baseline, ghost_candidate = result["shop/ghost"]
    assert ghost_candidate is None
    assert ghost_baseline is not None
    assert ghost_baseline.requests > 0
    assert stats.errors_total == 0


@pytest.mark.e2e
async def test_real_prometheus_batch_maps_a_fleet_back_to_its_targets(stack: Stack) -> None:
    targets = [
        SourceTarget(key=f"fleet/svc-{i:04d}", queries=TEMPLATES,
                     candidate=ref("fleet", f"svc-{i:04d}-canary"),
                     baseline=ref("fleet", f"svc-{i:04d}-stable"))
        for i in range(FLEET)
    ]
    async with client_for(stack.prometheus.url) as client:
        result = await PrometheusSource(client=client).collect(targets, window_s=3)
        assert client.stats.requests == 6  # three metrics, two shards (the default)

    assert set(result) == {t.key for t in targets}
    for i in range(FLEET):
        baseline, candidate = result[f"fleet/svc-{i:04d}"]
        assert baseline is not None
        assert candidate is not None
        # The synthetic services serve 20-29 req/s (stable) and 2-4 req/s (canary), linearly.
        assert baseline.requests / candidate.requests == pytest.approx((20 + i % 10) / (2 + i % 3), rel=0.05)
        assert baseline.error_rate == pytest.approx(0.002, rel=0.05)
        expected = 0.08 if i % 10 == 9 else 0.002
        assert candidate.error_rate == pytest.approx(expected, rel=0.05)
        assert candidate.p95_ms is not None
        assert (candidate.p95_ms > 1000) == (i % 10 == 9)


@pytest.mark.e2e
async def test_real_prometheus_rejects_a_broken_query_with_its_message(stack: Stack) -> None:
    async with client_for(stack.prometheus.url, retries=3) as client:
        with pytest.raises(PrometheusQueryError) as caught:
            await client.query("sum by (deployment) (rate(http_requests_total[1m])")
    assert caught.value.error_type == "bad_data"
    assert "parse error" in str(caught.value)
    assert client.stats.requests == 1


@pytest.mark.e2e
async def test_real_prometheus_outage_is_missing_data_then_recovers(stack: Stack) -> None:
    stack.prometheus.stop()
    try:
        result, stats = await collect(stack.prometheus.url, [CHECKOUT], retries=1)
        assert result == {"shop/checkout": (None, None)}
        assert stats.errors == {"connection": 6}
    finally:
        await stack.prometheus.arestart()
    # The TSDB kept what it had scraped before the outage.
    result, _ = await collect(stack.prometheus.url, [CHECKOUT], window_s=60, retries=5,
                              backoff=Backoff(initial_s=0.2, max_s=1.0))
    baseline, candidate = result["shop/checkout"]
    assert baseline is not None
    assert candidate is not None
    assert candidate.errors > 0



# Impossible values and oversized answers


def _shop(deployment: str) -> dict[str, str]:
    return {"namespace": "shop", "deployment": deployment}


CART = SourceTarget(key="shop/cart", queries=TEMPLATES, candidate=ref("shop", "cart-canary"),
                    baseline=ref("shop", "cart-stable"))


def _answers(requests: float | str = 100, errors: float | str = 5,
             canary_buckets: Sequence[float] = CANARY_BUCKETS) -> Callable[[str], Reply]:
    """Checkout's canary with the given values, everything else plausible; cart is healthy."""
    return router(
        requests=success(vec(requests, **_shop("checkout-canary")), vec(931, **_shop("checkout-stable")),
                         vec(90, **_shop("cart-canary")), vec(900, **_shop("cart-stable"))),
        errors=success(vec(errors, **_shop("checkout-canary")), vec(2, **_shop("checkout-stable"))),
        latency=success(*buckets("checkout-canary", canary_buckets),
                        *buckets("checkout-stable", STABLE_BUCKETS), *buckets("cart-canary", CANARY_BUCKETS)),
    )


@pytest.mark.parametrize(("values", "kind"), [
    ({"requests": "1e308", "errors": "1e308"}, "too_large"),
    ({"requests": 1000, "errors": "1e13"}, "too_large"),
    ({"requests": "+Inf"}, "non_finite"),
    ({"errors": "-Inf"}, "non_finite"),
    ({"requests": -5}, "negative"),
    ({"requests": 100, "errors": 500}, "errors_above_requests"),
    ({"canary_buckets": [0, 0, 0, 0, 0, 0, 70, 60, 86, 90, 90, 90]}, "bad_histogram"),
    ({"canary_buckets": [0, 0, 0, 0, 0, 0, 7, 60, 86, 90, 90, 1e308]}, "too_large"),
    ({"canary_buckets": [0, 0, -3, 0, 0, 0, 7, 60, 86, 90, 90, 90]}, "negative"),
])
async def test_impossible_values_make_the_target_missing_counted_and_logged_once(
    fake_prometheus: Any, caplog: pytest.LogCaptureFixture, values: dict[str, Any], kind: str,
) -> None:
    fake = await fake_prometheus(_answers(**values))
    async with client_for(fake.url) as client:
        source = PrometheusSource(client=client, shards=1)
        with caplog.at_level("WARNING", logger="rollbackd.sources.prometheus"):
            for _ in range(3):
                result = await source.collect([CHECKOUT, CART], window_s=10)
                # Neither side of the target is judged; the other target is untouched.
                assert result["shop/checkout"] == (None, None)
                cart_baseline, cart_candidate = result["shop/cart"]
                assert cart_candidate is not None
                assert cart_candidate.requests == 90
                assert cart_baseline is not None
    assert client.stats.errors == {kind: 3}  # every tick counts
    warnings = [r.getMessage() for r in caplog.records if "impossible values" in r.getMessage()]
    assert len(warnings) == 1, warnings  # logged once, not every tick
    assert "shop/checkout" in warnings[0]
    assert "candidate" in warnings[0]


async def test_a_target_is_reported_again_after_its_values_were_plausible(
    fake_prometheus: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    answers = {"now": _answers(requests=100, errors=500)}
    fake = await fake_prometheus(lambda query: answers["now"](query))
    async with client_for(fake.url) as client:
        source = PrometheusSource(client=client, shards=1)
        with caplog.at_level("INFO", logger="rollbackd.sources.prometheus"):
            await source.collect([CHECKOUT], window_s=10)
            answers["now"] = _answers()
            _, candidate = (await source.collect([CHECKOUT], window_s=10))["shop/checkout"]
            assert candidate is not None
            answers["now"] = _answers(requests=100, errors=500)
            await source.collect([CHECKOUT], window_s=10)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("impossible values" in m for m in messages) == 2
    assert sum("values of target shop/checkout are plausible again" in m for m in messages) == 1


async def test_errors_a_little_above_requests_are_extrapolation_judged_as_all_failed(
    fake_prometheus: Any,
) -> None:
    # increase() extrapolates the two counters apart: up to 1% more errors than requests is real.
    fake = await fake_prometheus(_answers(requests=100, errors=100.5))
    result, stats = await collect(fake.url, [CHECKOUT])
    _, candidate = result["shop/checkout"]
    assert candidate is not None
    assert (candidate.requests, candidate.errors) == (100, 100)
    assert stats.errors_total == 0


def test_the_default_answer_cap_grows_with_the_targets_above_a_floor() -> None:
    assert default_max_answer_bytes(0) == 4 * 1024 * 1024
    assert default_max_answer_bytes(100) == 4 * 1024 * 1024
    assert default_max_answer_bytes(2000) == 2000 * 8 * 1024


async def test_an_answer_over_the_cap_is_not_read_and_counted(fake_prometheus: Any) -> None:
    body = compact(vector(*(element(_shop(f"svc-{i}"), "1") for i in range(2000))))
    fake = await fake_prometheus(lambda query: (200, body))
    async with client_for(fake.url, max_answer_bytes=len(body) - 1) as client:
        with pytest.raises(PrometheusQueryError) as caught:
            await client.query("up")
        assert caught.value.kind == "oversized"
        assert "prometheus.max_answer_bytes" in str(caught.value)
        assert client.stats.requests == 1  # not retried
        # The same answer within the cap is read.
        assert len((await client.query("up", max_answer_bytes=len(body))).values) == 2000


async def test_the_source_sizes_the_cap_from_its_targets_or_takes_the_configured_one(
    fake_prometheus: Any,
) -> None:
    padding = "x" * (5 * 1024 * 1024)  # over the 4 MiB floor
    fake = await fake_prometheus(lambda query: success(vec(90, **_shop("checkout-canary"), pad=padding)))
    result, stats = await collect(fake.url, [CHECKOUT])
    assert result["shop/checkout"] == (None, None)
    assert stats.errors == {"oversized": 3}
    async with client_for(fake.url) as client:
        source = PrometheusSource(client=client, shards=1, max_answer_bytes=8 * 1024 * 1024)
        _, candidate = (await source.collect([CHECKOUT], window_s=10))["shop/checkout"]
        assert candidate is not None
