"""The batched PromQL builder and the histogram quantile: pure functions."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from rollbackd.model import DEFAULT_BUCKETS_S, histogram_quantile
from rollbackd.sources import promql
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget
from rollbackd.sources.promql import Metric, Side

TEMPLATES = QueryTemplates(
    requests="sum by ({by}) (increase(http_requests_total{{{selector}}}[{window}]))",
    errors='sum by ({by}) (increase(http_requests_total{{{selector},code=~"5.."}}[{window}]))',
    latency_buckets=(
        "sum by ({by}, le) (increase(http_request_duration_seconds_bucket{{{selector}}}[{window}]))"
    ),
    group_labels=("namespace", "deployment"),
)

SCENARIOS = Path(__file__).resolve().parents[1].parent / "shared" / "scenarios"


def ref(namespace: str, deployment: str) -> SeriesRef:
    return SeriesRef(labels=(("namespace", namespace), ("deployment", deployment)))


def target(key: str, namespace: str, candidate: str, baseline: str | None = None,
           templates: QueryTemplates = TEMPLATES) -> SourceTarget:
    return SourceTarget(
        key=key,
        queries=templates,
        candidate=ref(namespace, candidate),
        baseline=ref(namespace, baseline) if baseline is not None else None,
    )


def unquote(literal: str) -> str:
    """A PromQL double-quoted string literal back to its value (JSON escapes are a superset of
    the ones the builder writes, except \\x, which no test value needs)."""
    value: str = json.loads(literal)
    return value


@pytest.mark.parametrize(("seconds", "expected"), [
    (10, "10s"),
    (60, "1m"),
    (90, "1m30s"),
    (3600, "1h"),
    (3725, "1h2m5s"),
    (2.5, "2s500ms"),
    (0.2, "1s"),
    (0.001, "1s"),
    (1.0004, "1s1ms"),
    (0.1 * 3 * 100, "30s"),
])
def test_window_is_a_prometheus_duration(seconds: float, expected: str) -> None:
    assert promql.format_duration(seconds) == expected


@pytest.mark.parametrize("seconds", [0, -1, math.nan, math.inf])
def test_window_must_be_positive_and_finite(seconds: float) -> None:
    with pytest.raises(ValueError, match="window"):
        promql.format_duration(seconds)


def test_regex_escaping_matches_the_value_literally() -> None:
    values = ["checkout.v2", "a+b", "x|y", "(paren)", "[set]", "{n}", "^start$", "back\\slash", "q?*"]
    for value in values:
        pattern = promql.escape_regex(value)
        # RE2 and Python agree on these escapes; PromQL anchors the pattern at both ends.
        assert re.fullmatch(pattern, value)
        assert not re.fullmatch(pattern, value + "x")
    assert promql.escape_regex("checkout-canary") == "checkout-canary"
    assert promql.escape_regex("v1.2") == r"v1\.2"


def test_string_quoting_escapes_quotes_backslashes_and_newlines() -> None:
    assert promql.quote_string('say "hi"') == r'"say \"hi\""'
    assert promql.quote_string("a\\b") == r'"a\\b"'
    assert promql.quote_string("two\nlines") == r'"two\nlines"'
    for value in ['say "hi"', "a\\b", "two\nlines", "tab\there", "plain"]:
        assert unquote(promql.quote_string(value)) == value


def test_matcher_is_equality_for_one_value_and_sorted_regex_for_several() -> None:
    assert promql.label_matcher("namespace", ["shop", "shop"]) == 'namespace="shop"'
    assert promql.label_matcher("deployment", ["b", "a.x", "b"]) == r'deployment=~"a\\.x|b"'
    with pytest.raises(ValueError, match="no values"):
        promql.label_matcher("namespace", [])


def test_one_query_per_metric_for_all_targets_sharing_templates() -> None:
    targets = [
        target("shop/checkout", "shop", "checkout-canary", "checkout-stable"),
        target("pay/api", "pay", "api-green", "api-blue"),
        target("shop/cart", "shop", "cart"),
    ]
    plan = promql.plan(targets, window_s=10, shards=1)

    assert plan.invalid == {}
    assert len(plan.batches) == 1
    assert plan.query_count == 3
    batch = plan.batches[0]
    assert batch.queries[Metric.REQUESTS] == (
        'sum by (namespace, deployment) (increase(http_requests_total{namespace=~"pay|shop",'
        'deployment=~"api-blue|api-green|cart|checkout-canary|checkout-stable"}[10s]))'
    )
    assert batch.queries[Metric.ERRORS] == (
        'sum by (namespace, deployment) (increase(http_requests_total{namespace=~"pay|shop",'
        'deployment=~"api-blue|api-green|cart|checkout-canary|checkout-stable",code=~"5.."}[10s]))'
    )
    assert batch.queries[Metric.LATENCY_BUCKETS].startswith(
        "sum by (namespace, deployment, le) (increase(http_request_duration_seconds_bucket{"
    )
    assert batch.target_keys == {"shop/checkout", "pay/api", "shop/cart"}


def test_series_map_back_to_target_and_side_by_group_label_values() -> None:
    targets = [
        target("shop/checkout", "shop", "checkout-canary", "checkout-stable"),
        target("shop/checkout-eu", "shop", "checkout-eu-canary", "checkout-stable"),
        target("pay/api", "pay", "api-green", "api-blue"),
    ]
    batch = promql.plan(targets, window_s=30, shards=1).batches[0]
    labels = batch.templates.group_labels

    def owners(series_labels: dict[str, str]) -> set[tuple[str, Side]]:
        return set(batch.sides.get(promql.series_key(series_labels, labels), ()))

    assert owners({"namespace": "shop", "deployment": "checkout-canary"}) == {
        ("shop/checkout", Side.CANDIDATE),
    }
    # A baseline shared by two targets feeds both.
    assert owners({"namespace": "shop", "deployment": "checkout-stable"}) == {
        ("shop/checkout", Side.BASELINE), ("shop/checkout-eu", Side.BASELINE),
    }
    assert owners({"namespace": "pay", "deployment": "api-blue", "le": "0.1"}) == {("pay/api", Side.BASELINE)}
    # The union selector also matches combinations nobody asked for: they are ignored.
    assert owners({"namespace": "pay", "deployment": "checkout-canary"}) == set()


def test_targets_with_different_templates_get_separate_batches() -> None:
    other = QueryTemplates(
        requests="sum by ({by}) (rate(grpc_server_handled_total{{{selector}}}[{window}]))",
        errors='sum by ({by}) (rate(grpc_server_handled_total{{{selector},grpc_code!="OK"}}[{window}]))',
        latency_buckets=(
            "sum by ({by}, le) (rate(grpc_server_handling_seconds_bucket{{{selector}}}[{window}]))"
        ),
        group_labels=("app",),
    )
    grpc = SourceTarget(key="rpc/users", queries=other, candidate=SeriesRef(labels=(("app", "users-v2"),)),
                        baseline=SeriesRef(labels=(("app", "users-v1"),)))
    plan = promql.plan([target("shop/checkout", "shop", "c2", "c1"), grpc], window_s=90, shards=1)

    assert len(plan.batches) == 2
    assert plan.query_count == 6
    grpc_batch = next(b for b in plan.batches if b.templates == other)
    assert grpc_batch.queries[Metric.REQUESTS] == (
        'sum by (app) (rate(grpc_server_handled_total{app=~"users-v1|users-v2"}[1m30s]))'
    )
    assert grpc_batch.target_keys == {"rpc/users"}


def test_label_values_with_special_characters_are_escaped_in_the_selector() -> None:
    plan = promql.plan([target("odd/t", 'we"ird', "v1.2+canary", "v1.2")], window_s=5)
    query = plan.batches[0].queries[Metric.REQUESTS]
    selector = query[query.index("{") + 1: query.rindex("}")]
    namespace_literal = selector[len("namespace="): selector.index(",deployment")]
    deployment_literal = selector[selector.index("deployment=~") + len("deployment=~"):]
    assert unquote(namespace_literal) == 'we"ird'
    pattern = unquote(deployment_literal)
    assert re.fullmatch(pattern, "v1.2+canary")
    assert re.fullmatch(pattern, "v1.2")
    assert not re.fullmatch(pattern, "v1x2")


def test_targets_that_cannot_be_queried_are_reported_not_batched() -> None:
    bad_labels = SourceTarget(key="shop/extra", queries=TEMPLATES,
                              candidate=SeriesRef(labels=(("namespace", "shop"), ("pod", "p-1"))))
    no_labels = QueryTemplates(requests="x{{{selector}}}", errors="y", latency_buckets="z", group_labels=())
    broken = QueryTemplates(requests="x{selector}[{windw}]", errors="y", latency_buckets="z",
                            group_labels=("namespace",))
    plan = promql.plan([
        bad_labels,
        SourceTarget(key="a/b", queries=no_labels, candidate=SeriesRef(labels=())),
        SourceTarget(key="c/d", queries=broken, candidate=SeriesRef(labels=(("namespace", "c"),))),
        target("shop/ok", "shop", "ok-canary", "ok-stable"),
    ], window_s=10)

    assert set(plan.invalid) == {"shop/extra", "a/b", "c/d"}
    assert "differ from the group labels" in plan.invalid["shop/extra"]
    assert "group label" in plan.invalid["a/b"]
    assert "windw" in plan.invalid["c/d"]
    assert [b.target_keys for b in plan.batches] == [{"shop/ok"}]


def test_a_huge_selector_is_split_keeping_both_sides_of_a_target_together() -> None:
    targets = [target(f"ns/svc-{i:04d}", "ns", f"svc-{i:04d}-canary", f"svc-{i:04d}-stable")
               for i in range(200)]
    limit = 1000
    plan = promql.plan(targets, window_s=10, max_selector_chars=limit, shards=1)

    assert len(plan.batches) > 1
    seen: set[str] = set()
    for batch in plan.batches:
        query = batch.queries[Metric.REQUESTS]
        selector = query[query.index("{") + 1: query.rindex("}")]
        assert len(selector) <= limit
        keys = batch.target_keys
        assert not keys & seen
        seen |= keys
        for key in keys:
            sides = {side for owners in batch.sides.values() for k, side in owners if k == key}
            assert sides == {Side.BASELINE, Side.CANDIDATE}
    assert seen == {t.key for t in targets}


def test_the_default_cap_keeps_a_thousand_targets_in_one_batch() -> None:
    targets = [target(f"bench/svc-{i:04d}", "bench", f"svc-{i:04d}-canary", f"svc-{i:04d}-stable")
               for i in range(1000)]
    assert promql.plan(targets, window_s=10, shards=1).query_count == 3


def fleet(count: int) -> list[SourceTarget]:
    return [target(f"bench/svc-{i:04d}", "bench", f"svc-{i:04d}-canary", f"svc-{i:04d}-stable")
            for i in range(count)]


@pytest.mark.parametrize("count", [2, 10, 101, 1000])
def test_shards_split_the_targets_evenly_and_keep_the_query_count_fixed(count: int) -> None:
    plan = promql.plan(fleet(count), window_s=10)  # two shards by default
    assert len(plan.batches) == 2
    assert plan.query_count == 6
    sizes = sorted(len(batch.target_keys) for batch in plan.batches)
    assert sizes == [count // 2, count - count // 2]
    assert plan.batches[0].target_keys.isdisjoint(plan.batches[1].target_keys)
    for batch in plan.batches:
        for key in batch.target_keys:
            sides = {side for owners in batch.sides.values() for k, side in owners if k == key}
            assert sides == {Side.BASELINE, Side.CANDIDATE}
        # Each shard's selector names its own targets' series only.
        query = batch.queries[Metric.LATENCY_BUCKETS]
        for member in fleet(count):
            named = f"{member.key.split('/')[1]}-canary" in query
            assert named == (member.key in batch.target_keys)


def test_fewer_targets_than_shards_make_one_batch_each() -> None:
    plan = promql.plan(fleet(3), window_s=10, shards=8)
    assert [len(batch.target_keys) for batch in plan.batches] == [1, 1, 1]
    assert len(promql.plan(fleet(1), window_s=10).batches) == 1


def test_a_baseline_shared_across_shards_is_asked_in_each() -> None:
    shared = [target(f"shop/t{i}", "shop", f"t{i}-canary", "stable") for i in range(4)]
    plan = promql.plan(shared, window_s=10, shards=2)
    for batch in plan.batches:
        owners = batch.sides[("shop", "stable")]
        assert {key for key, _ in owners} == batch.target_keys


def test_shards_must_be_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        promql.plan(fleet(2), window_s=10, shards=0)


# histogram_quantile


def test_quantile_interpolates_within_the_bucket() -> None:
    bounds = (0.1, 0.25, 0.5, math.inf)
    # 100 observations: 50 up to 0.1 s, 40 more up to 0.25 s, 10 more up to 0.5 s.
    counts = (50.0, 90.0, 100.0, 100.0)
    assert histogram_quantile(0.5, bounds, counts) == pytest.approx(0.1)
    assert histogram_quantile(0.7, bounds, counts) == pytest.approx(0.1 + 0.15 * 20 / 40)
    assert histogram_quantile(0.95, bounds, counts) == pytest.approx(0.25 + 0.25 * 5 / 10)
    assert histogram_quantile(0.25, bounds, counts) == pytest.approx(0.05)  # first bucket starts at 0


def test_quantile_in_the_inf_bucket_is_the_highest_finite_bound() -> None:
    assert histogram_quantile(0.95, (0.1, 1.0, math.inf), (10.0, 20.0, 100.0)) == 1.0


def test_quantile_tolerates_non_monotonic_counts_like_prometheus() -> None:
    # increase() extrapolation can leave a cumulative bucket slightly below the previous one.
    assert histogram_quantile(0.5, (0.1, 0.2, math.inf), (10.0, 9.9, 10.0)) == pytest.approx(0.05)


@pytest.mark.parametrize(("bounds", "counts"), [
    ((0.1, math.inf), (0.0, 0.0)),                  # no observations
    ((math.inf,), (5.0,)),                          # one bucket
    ((0.1, 0.2), (5.0, 10.0)),                      # no +Inf bucket
    ((0.1, math.inf), (math.nan, 3.0)),             # NaN count
    ((0.1, 0.2, math.inf), (1.0, 2.0)),             # lengths differ
])
def test_quantile_without_an_answer_is_none(bounds: tuple[float, ...], counts: tuple[float, ...]) -> None:
    assert histogram_quantile(0.95, bounds, counts) is None


def test_quantile_outside_zero_one_is_none() -> None:
    assert histogram_quantile(1.5, (0.1, math.inf), (1.0, 2.0)) is None
    assert histogram_quantile(math.nan, (0.1, math.inf), (1.0, 2.0)) is None


def test_quantile_matches_the_p95_recorded_in_every_scenario() -> None:
    files = sorted(SCENARIOS.glob("*.json"))
    if not files:
        pytest.skip(f"no scenario recordings in {SCENARIOS}")
    compared = 0
    for path in files:
        scenario = json.loads(path.read_text())
        for tick in scenario["ticks"]:
            for side in ("baseline", "candidate"):
                sample = tick.get(side)
                if not sample or sample.get("p95_ms") is None:
                    continue
                counts = [float(c) for c in sample["latency_buckets"]]
                p95_s = histogram_quantile(0.95, DEFAULT_BUCKETS_S, counts)
                where = (path.name, tick["t"], side)
                assert p95_s is not None, where
                assert p95_s * 1000 == pytest.approx(sample["p95_ms"], abs=0.051), where
                compared += 1
    assert compared > 100
