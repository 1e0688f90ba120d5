"""Fault and bad-input suite for the sources: a hostile Prometheus (impossible values, garbage,
slow and endless answers) and a real one killed mid-run, each under a running daemon; and
property tests of the Prometheus answer reader and of replay's reader.

Every bad answer shows the canary failing badly, so that a value leaking into the judge would
roll it back: the daemon must stay inconclusive, count the source error by its kind, and act only
once good data shows the same breach.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.config.settings import ApiSettings, HttpSettings, Settings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.metrics import DaemonMetrics
from rollbackd.errors import SourceError, SourceStats
from rollbackd.model import DEFAULT_BUCKETS_S
from rollbackd.plausibility import ERRORS_SLACK, sample_problem
from rollbackd.replay import ScenarioError, load_scenario, replay_scenario
from rollbackd.sources import promql
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget
from rollbackd.sources.lookback import Lookback, min_range_s
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource, QueryResult, _parse_response
from tests.faultledger import FaultLedger
from tests.kubefixtures import wait_until
from tests.promfixtures import PrometheusFactory, SampleAppFactory
from tests.test_daemon import Api, ScriptedHealth, canary

INTERVAL_S = 1.0
LES = ["+Inf" if b == math.inf else repr(b) for b in DEFAULT_BUCKETS_S]
STABLE_BUCKETS = [0, 0, 1, 21, 318, 877, 931, 931, 931, 931, 931, 931]
CANARY_BUCKETS = [0, 0, 0, 3, 37, 103, 114, 114, 114, 114, 114, 114]


def _element(deployment: str, value: object, **labels: str) -> dict[str, Any]:
    return {"metric": {"namespace": "shop", "deployment": deployment, **labels},
            "value": [1700000000.0, str(value)]}


def _answer(query: str, *, requests: object, errors: object, buckets: list[object]) -> bytes:
    """Prometheus' answer to one of the three queries: the stable side healthy, the canary with
    the given values."""
    if "_bucket" in query:
        result = [_element("checkout-stable", c, le=le) for le, c in zip(LES, STABLE_BUCKETS, strict=True)]
        result += [_element("checkout-canary", c, le=le) for le, c in zip(LES, buckets, strict=True)]
    elif "5.." in query:
        result = [_element("checkout-stable", 2), _element("checkout-canary", errors)]
    else:
        result = [_element("checkout-stable", 931), _element("checkout-canary", requests)]
    document = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(document, separators=(",", ":")).encode()


#: The canary failing 30% of its requests: real data a rollback is right for.
SEVERE: dict[str, Any] = {"requests": 114, "errors": 34, "buckets": CANARY_BUCKETS}

#: Answers that cannot be real, each showing a failing canary, and the error kind each counts as.
IMPOSSIBLE: dict[str, tuple[dict[str, Any], str]] = {
    "errors above requests": ({**SEVERE, "errors": 570}, "errors_above_requests"),
    "1e308 counts": ({**SEVERE, "requests": "1e308", "errors": "1e308"}, "too_large"),
    "infinite errors": ({**SEVERE, "errors": "+Inf"}, "non_finite"),
    "negative requests": ({**SEVERE, "requests": -114}, "negative"),
    "decreasing buckets": ({**SEVERE, "buckets": [0, 0, 0, 3, 37, 103, 114, 50, 114, 114, 114, 114]},
                           "bad_histogram"),
}
#: The field each impossible answer is rejected for, as the decision's reasons name it.
IMPOSSIBLE_FIELD = {
    "errors above requests": "errors",
    "1e308 counts": "requests",
    "infinite errors": "errors",
    "negative requests": "requests",
    "decreasing buckets": "latency_buckets",
}


class HostilePrometheus:
    """A loopback HTTP server answering Prometheus' query API as ``mode`` says: ``severe``, one
    of :data:`IMPOSSIBLE`, ``nan``, ``garbage``, ``slow`` or ``endless`` (an answer that never
    ends, counting the bytes it got out)."""

    def __init__(self) -> None:
        self.mode = "severe"
        self.url = ""
        self.sent_endless = 0
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        query = str((await request.post()).get("query", ""))
        mode = self.mode
        if mode == "garbage":
            return web.Response(body=bytes(range(256)) * 16, content_type="application/json")
        if mode == "slow":
            await asyncio.sleep(30)
        if mode == "endless":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            chunk = b'{"status":"success","data":{"resultType":"vector","result":[' + b" " * 65536
            try:
                while True:
                    await response.write(chunk)
                    self.sent_endless += len(chunk)
            except (ConnectionError, RuntimeError):
                return response
        values: dict[str, Any] = SEVERE
        if mode in IMPOSSIBLE:
            values = IMPOSSIBLE[mode][0]
        elif mode == "nan":
            values = {**SEVERE, "requests": "NaN"}
        return web.Response(body=_answer(query, **values), content_type="application/json")

    async def __aenter__(self) -> HostilePrometheus:
        app = web.Application()
        app.router.add_post("/api/v1/query", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def _settings() -> Settings:
    return Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        api=ApiSettings(allow_unauthenticated_writes=True),
        targets=(canary("checkout"),),
    )


async def _errors(api: Api, kind: str) -> float:
    status, text = await api.call("GET", "/metrics")
    assert status == 200
    needle = f'rollbackd_source_errors_total{{kind="{kind}",source="prometheus"}} '
    line = next((line for line in text.splitlines() if line.startswith(needle)), None)
    return float(line.rsplit(" ", 1)[1]) if line is not None else 0.0


@pytest.mark.faults
async def test_a_hostile_prometheus_never_makes_the_daemon_act(
    fault_ledger: FaultLedger, caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = DaemonMetrics()
    stats = SourceStats(source="prometheus", on_error=metrics.count_source_error)
    async with (
        HostilePrometheus() as hostile,
        PrometheusClient(base_url=hostile.url, timeout_s=0.5, retries=0, stats=stats) as client,
        aiohttp.ClientSession() as session,
    ):
        hostile.mode = "nan"  # start with no data, so nothing is judged before the faults
        source = PrometheusSource(client=client, shards=1)
        with caplog.at_level(logging.WARNING, logger="rollbackd.sources.prometheus"):
            async with Daemon(_settings(), metrics_source=source, health_source=ScriptedHealth(),
                              metrics=metrics) as daemon:
                api = Api(session, daemon)
                faults = [(mode, kind) for mode, (_, kind) in IMPOSSIBLE.items()]
                faults += [("garbage", "bad_response"), ("slow", "timeout"), ("endless", "oversized")]
                for mode, kind in faults:
                    hostile.mode = mode
                    fault_ledger.fault(f"prometheus answer: {mode}")
                    before = await _errors(api, kind)

                    async def counted_twice(kind: str = kind, before: float = before) -> bool:
                        return await _errors(api, kind) >= before + 2

                    # Two ticks of it: a breach needs two intervals, so a leak would roll back.
                    await wait_until(counted_twice, timeout_s=20, interval_s=0.1,
                                     what=f"two ticks counting {kind} errors")
                    decision = (await api.target())["decision"]
                    assert decision["outcome"] == "inconclusive", (mode, decision)
                    assert decision["rollback"] is False
                    said: tuple[str, ...]
                    if mode in IMPOSSIBLE:  # the on-call engineer is told what was impossible
                        said = ("impossible metrics this interval, not judged: ", IMPOSSIBLE_FIELD[mode])
                    else:
                        said = ("no candidate metrics",)
                    assert any(all(part in reason for part in said) for reason in decision["reasons"]), (
                        mode,
                        decision,
                    )

                # NaN is no data (Prometheus' "no value"): missing, never zero, never judged.
                hostile.mode = "nan"
                ticks = daemon.ticks
                await wait_until(lambda: daemon.ticks >= ticks + 2, timeout_s=20, what="two NaN ticks")
                assert (await api.target())["decision"]["outcome"] == "inconclusive"

                acted = sum([await api.metric("rollbackd_rollback_decisions_total", mode=mode)
                             for mode in ("immediate", "controlled")])
                fault_ledger.observe(actions_on_bad_data=int(acted))
                assert acted == 0
                assert (await api.target())["last_rollback"] is None
                assert hostile.sent_endless < 64 * 1024 * 1024  # reading stopped at the cap

                # The same breach in real data is acted on: the daemon was not merely blind.
                hostile.mode = "severe"

                async def rolled_back() -> bool:
                    return (await api.target())["last_rollback"] is not None

                await wait_until(rolled_back, timeout_s=20, interval_s=0.1, what="a rollback on real data")
                assert (await api.target())["last_rollback"]["outcome"] == "immediate"
                status, _ = await api.call("GET", "/healthz")
                assert status == 200
    impossible = [r.getMessage() for r in caplog.records if "impossible values" in r.getMessage()]
    # Logged once per kind of impossible value, not once per tick.
    assert len(impossible) == len(IMPOSSIBLE), impossible


@pytest.mark.faults
async def test_prometheus_killed_mid_run_is_inconclusive_then_recovers_with_a_new_one(
    fault_ledger: FaultLedger, sample_apps: SampleAppFactory, prometheus_factory: PrometheusFactory,
) -> None:
    stable = sample_apps(deployment="checkout-stable", namespace="shop", rps=60, latency_ms=20, seed=1)
    canary_app = sample_apps(deployment="checkout-canary", namespace="shop", rps=60, latency_ms=20, seed=2)
    server = prometheus_factory(targets=[stable.address, canary_app.address], scrape_interval_s=0.5,
                                scrapes=3)
    metrics = DaemonMetrics()
    stats = SourceStats(source="prometheus", on_error=metrics.count_source_error)
    async with (
        PrometheusClient(base_url=server.url, timeout_s=1.0, retries=0, stats=stats) as client,
        aiohttp.ClientSession() as session,
    ):
        source = Lookback(PrometheusSource(client=client, shards=1), min_range_s=min_range_s(0.5))
        async with Daemon(_settings(), metrics_source=source, health_source=ScriptedHealth(),
                          metrics=metrics) as daemon:
            api = Api(session, daemon)

            async def outcome_is(outcome: str) -> bool:
                decision = (await api.target())["decision"]
                return decision is not None and decision["outcome"] == outcome

            await wait_until(lambda: outcome_is("none"), timeout_s=30, interval_s=0.2,
                             what="a healthy verdict from real data")

            # Killed without warning, and the canary turns bad while nobody can see it.
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(server.process.wait)
            fault_ledger.fault("prometheus killed (SIGKILL) mid-run")
            await canary_app.acontrol(error_rate=0.3)
            ticks = daemon.ticks
            await wait_until(lambda: daemon.ticks >= ticks + 3, timeout_s=20,
                             what="three ticks without Prometheus")
            decision = (await api.target())["decision"]
            assert decision["outcome"] == "inconclusive"
            assert await _errors(api, "connection") >= 3
            acted = await api.metric("rollbackd_rollback_decisions_total", mode="immediate")
            acted += await api.metric("rollbackd_rollback_decisions_total", mode="controlled")
            fault_ledger.observe(actions_on_bad_data=int(acted))
            assert acted == 0

            # A new Prometheus serves on the same address: the daemon sees the breach and acts.
            await server.arestart()

            async def rolled_back() -> bool:
                return (await api.target())["last_rollback"] is not None

            await wait_until(rolled_back, timeout_s=40, interval_s=0.2,
                             what="a rollback once Prometheus is back")
            assert (await api.target())["last_rollback"]["outcome"] == "immediate"


# Property tests: the answer reader and replay's reader


TEMPLATES = QueryTemplates(
    requests="sum by ({by}) (increase(http_requests_total{{{selector}}}[{window}]))",
    errors='sum by ({by}) (increase(http_requests_total{{{selector},code=~"5.."}}[{window}]))',
    latency_buckets=(
        "sum by ({by}, le) (increase(http_request_duration_seconds_bucket{{{selector}}}[{window}]))"
    ),
    group_labels=("namespace", "deployment"),
)
CHECKOUT = SourceTarget(
    key="shop/checkout", queries=TEMPLATES,
    candidate=SeriesRef(labels=(("namespace", "shop"), ("deployment", "checkout-canary"))),
    baseline=SeriesRef(labels=(("namespace", "shop"), ("deployment", "checkout-stable"))),
)
BATCH = promql.plan([CHECKOUT], window_s=10, shards=1).batches[0]
VALID = {metric: _answer(query, **SEVERE) for metric, query in BATCH.queries.items()}

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


def _mutate(data: st.DataObject, body: bytes) -> bytes:
    """``body`` with a few random byte edits: flips, insertions, deletions, a cut."""
    out = bytearray(body)
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        if not out:
            break
        at = data.draw(st.integers(min_value=0, max_value=len(out) - 1))
        edit = data.draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if edit == "flip":
            out[at] = data.draw(st.integers(min_value=0, max_value=255))
        elif edit == "insert":
            out[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif edit == "delete":
            del out[at:at + data.draw(st.integers(min_value=1, max_value=8))]
        else:
            del out[at:]
    return bytes(out)


def _read(metric: promql.Metric, body: bytes) -> QueryResult | SourceError:
    try:
        return _parse_response(BATCH.queries[metric], 200, body, None)
    except SourceError as exc:  # a clean error: the only exception allowed
        return exc


VALUE_TEXT = st.one_of(
    st.sampled_from(["NaN", "+Inf", "-Inf", "1e308", "-1", "0", "1e12", "1e13", "5e-324", "-0"]),
    st.floats().map(repr),
    st.integers(min_value=-(10**15), max_value=10**15).map(str),
)


@st.composite
def _vector(draw: st.DrawFn, query: str, with_le: bool) -> bytes:
    """A Prometheus-shaped answer for the target's series with random values."""
    result = []
    for deployment in draw(st.lists(st.sampled_from(["checkout-canary", "checkout-stable", "other"]),
                                    max_size=3)):
        for le in (draw(st.lists(st.sampled_from(LES), max_size=12)) if with_le else [None]):
            labels = {"le": le} if le is not None else {}
            result.append(_element(deployment, draw(VALUE_TEXT), **labels))
    document = {"status": "success", "data": {"resultType": "vector", "result": result}}
    return json.dumps(document, separators=(",", ":")).encode()


@pytest.mark.faults
@settings(max_examples=300)
@given(data=st.data())
def test_the_answer_reader_gives_a_result_or_a_clean_error_and_never_an_impossible_sample(
    fault_ledger: FaultLedger, data: st.DataObject,
) -> None:
    fault_ledger.inputs(1)
    bodies: dict[promql.Metric, bytes] = {}
    for metric in promql.Metric:
        query = BATCH.queries[metric]
        bodies[metric] = data.draw(st.one_of(
            st.just(VALID[metric]),
            st.binary(max_size=300),
            JSON_VALUES.map(lambda value: json.dumps(value).encode()),
            st.just(VALID[metric]).map(lambda body: _mutate(data, body)),
            _vector(query, with_le=metric is promql.Metric.LATENCY_BUCKETS),
        ))
    outcome = {metric: _read(metric, body) for metric, body in bodies.items()}
    source = PrometheusSource(client=PrometheusClient(base_url="http://127.0.0.1:9"), shards=1)
    samples, rejected = source.samples_of(BATCH, outcome)
    bad = [sample for sample in samples.values() if sample_problem(sample, errors_slack=ERRORS_SLACK)]
    fault_ledger.observe(actions_on_bad_data=len(bad))
    assert not bad
    for sample in samples.values():
        assert sample.errors <= sample.requests
        assert sample.p95_ms is None or 0 <= sample.p95_ms <= 10_000
    assert not set(samples) & set(rejected)


SMALL = {
    "name": "spike", "kind": "canary", "interval_s": 10,
    "slo": {"max_error_rate": 0.01, "max_p95_ms": 500},
    "policy": {"controlled_grace_s": 30},
    "context": {"rollback_risk": "low", "events": [{"t": 50, "type": "fix_forward", "eta_s": 20}]},
    "ticks": [
        {
            "t": 10 * i,
            "baseline": {"requests": 900, "errors": 2, "latency_buckets": STABLE_BUCKETS, "p95_ms": 250},
            "candidate": {"requests": 114, "errors": 1 if i < 3 else 40, "latency_buckets": CANARY_BUCKETS},
            **({"health": {"candidate": [{"path": "/readyz", "status": 200}]}} if i % 3 == 0 else {}),
        }
        for i in range(8)
    ],
}


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [path] + [p for key, child in value.items() for p in _leaves(child, (*path, key))]
    if isinstance(value, list):
        return [path] + [p for i, child in enumerate(value) for p in _leaves(child, (*path, i))]
    return [path]


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


def _plausible_ticks(scenario: Any, up_to: int) -> bool:
    """Whether the first ``up_to`` ticks hold only counts a real service can produce (checked
    independently of the code under test)."""
    for tick in scenario["ticks"][:up_to]:
        for side in ("baseline", "candidate"):
            raw = tick.get(side)
            if not isinstance(raw, dict):
                continue
            counts = [raw.get("requests"), raw.get("errors", 0), *(raw.get("latency_buckets") or [])]
            if any(not isinstance(c, int | float) or not 0 <= c <= 1e12 for c in counts):
                return False
            if raw.get("errors", 0) > raw["requests"]:
                return False
    return True


@pytest.mark.faults
@settings(max_examples=200)
@given(data=st.data())
def test_replay_reads_any_scenario_to_a_result_or_a_clean_error(
    fault_ledger: FaultLedger, data: st.DataObject, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    fault_ledger.inputs(1)
    how = data.draw(st.sampled_from(["bytes", "json", "leaf", "mutated"]))
    path = tmp_path_factory.mktemp("replay") / "scenario.json"
    scenario: Any = None
    if how == "bytes":
        path.write_bytes(data.draw(st.binary(max_size=500)))
    elif how == "json":
        path.write_text(json.dumps(data.draw(JSON_VALUES)), encoding="utf-8")
    elif how == "leaf":
        scenario = SMALL
        for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
            where = data.draw(st.sampled_from(_leaves(scenario)))
            scenario = _replace(scenario, where, data.draw(JSON_VALUES))
        path.write_text(json.dumps(scenario), encoding="utf-8")
    else:
        path.write_bytes(_mutate(data, json.dumps(SMALL).encode()))
    try:
        loaded = load_scenario(path)
        result = replay_scenario(loaded)
    except ScenarioError as exc:
        message = str(exc)
    else:
        message = ""
    if message:
        assert "\n" not in message
        return
    if result["decision"] == "rollback":
        acted_on_bad = not _plausible_ticks(loaded, len(loaded["ticks"]))
        fault_ledger.observe(actions_on_bad_data=int(acted_on_bad))
        assert not acted_on_bad, loaded


def test_the_small_scenario_is_replayed_as_a_rollback(tmp_path: Path) -> None:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL), encoding="utf-8")
    assert replay_scenario(load_scenario(path))["decision"] == "rollback"

