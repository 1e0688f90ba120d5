"""``python -m bench.closed_loop``: the canary traffic is a parameter, and the report states the
traffic behind every time it quotes (its runs are real processes; here only the parameters and
the report's shape, from made-up runs)."""

from __future__ import annotations

import json

import pytest

from bench.closed_loop import (
    CANARY_RPS,
    DEFAULT_WINDOW_S,
    DEMO_WINDOW_S,
    Run,
    build_report,
    canary_weight,
    in_report_order,
    kept_runs,
    markdown,
    parse_args,
    plan_runs,
    vars_of,
)


def test_canary_rates_become_whole_percent_weights_of_the_load() -> None:
    assert [canary_weight(rate) for rate in (1, 4, 20)] == [1, 4, 20]
    assert canary_weight(10, total_rps=50) == 20
    for impossible in (0.5, 2.5, 0, 100, -4, float("nan")):
        with pytest.raises(ValueError, match="whole percentage"):
            canary_weight(impossible)


def test_the_rates_are_parsed_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args([]).canary_rps == CANARY_RPS == (1.0, 4.0, 20.0)
    assert parse_args(["--canary-rps", "4,1,4"]).canary_rps == (4.0, 1.0)
    for bad in (["--canary-rps", "2.5"], ["--canary-rps", ""], ["--canary-runs", "0"],
                ["--no-rates", "--no-demo"]):
        with pytest.raises(SystemExit):
            parse_args(bad)
    assert "whole percentage" in capsys.readouterr().err


def test_the_plan_runs_the_demo_set_up_then_each_rate_in_turn() -> None:
    plan = plan_runs(parse_args(["--canary-runs", "2", "--canary-rps", "1,20"]))
    assert plan == [
        ("canary", 1, 20.0, DEMO_WINDOW_S),
        ("canary", 2, 20.0, DEMO_WINDOW_S),
        ("bluegreen", 1, 20.0, DEMO_WINDOW_S),
        ("deployment", 1, 20.0, DEMO_WINDOW_S),
        ("gateway", 1, 20.0, DEMO_WINDOW_S),
        ("gateway", 2, 20.0, DEMO_WINDOW_S),
        ("config", 1, 20.0, DEMO_WINDOW_S),
        ("canary", 1, 1.0, DEFAULT_WINDOW_S),
        ("canary", 1, 20.0, DEFAULT_WINDOW_S),
        ("canary", 2, 1.0, DEFAULT_WINDOW_S),
        ("canary", 2, 20.0, DEFAULT_WINDOW_S),
    ]
    assert {p[0] for p in plan_runs(parse_args(["--no-demo"]))} == {"canary"}
    assert plan_runs(parse_args(["--only", "gateway"])) == [
        ("gateway", n, 20.0, DEMO_WINDOW_S) for n in (1, 2, 3)
    ]
    assert {p[3] for p in plan_runs(parse_args(["--no-rates"]))} == {DEMO_WINDOW_S}


def run(rps: float, window_s: float, n: int, decision_s: float | None, *, error: str | None = None,
        scenario: str = "canary") -> Run:
    if error is not None:
        return Run(scenario, n, bad_rps=rps, window_s=window_s, error=error, work_dir="/somewhere")
    return Run(scenario, n, bad_rps=rps, window_s=window_s, fault_to_decision_s=decision_s,
               decision_to_acted_s=0.1, fault_to_no_traffic_s=(decision_s or 0) + 1.0,
               decision_to_verified_s=6.0, wall_s=30.0)


def test_the_report_gives_medians_per_canary_rate_and_judges_the_target_on_the_demo_set_up() -> None:
    runs = [
        run(20, DEMO_WINDOW_S, 1, 2.9), run(20, DEMO_WINDOW_S, 2, 3.9), run(20, DEMO_WINDOW_S, 3, 2.8),
        run(1, DEFAULT_WINDOW_S, 1, 12.0), run(1, DEFAULT_WINDOW_S, 2, 10.0),
        run(1, DEFAULT_WINDOW_S, 3, None, error="DemoFailed: no decision"),
        run(4, DEFAULT_WINDOW_S, 1, 7.0), run(4, DEFAULT_WINDOW_S, 2, 5.0), run(4, DEFAULT_WINDOW_S, 3, 6.0),
    ]
    report = build_report(runs, canary_rates=(4.0, 1.0), demo=True, source="a real Prometheus",
                          prometheus=None)
    json.dumps(report)  # written as closed_loop.json

    demo = report["demo_canary"]
    assert (demo["canary_rps"], demo["window_s"], demo["runs"]) == (20, DEMO_WINDOW_S, 3)
    assert demo["fault_to_decision_s"] == pytest.approx(2.9)
    assert demo["fault_to_no_traffic_s"] == pytest.approx(3.9)
    assert report["target_met"] is True
    one, four = report["canary_by_rps"]
    assert (one["canary_rps"], one["runs"], one["failed"]) == (1, 2, 1)
    assert one["fault_to_decision_s"] == pytest.approx(11.0)
    assert (four["canary_rps"], four["canary_weight_percent"], four["runs"]) == (4, 4, 3)
    assert four["fault_to_decision_s"] == pytest.approx(6.0)
    assert four["fault_to_decision_range"] == "5.00 to 7.00 s"

    text = markdown(report, runs)
    assert "Load: 100 requests/s in all" in text
    assert "## The demo's set-up: 20 canary requests/s, 5 s detection window" in text
    assert "| 20 requests/s (20%), ingress-nginx | 3 | **2.90 s** (2.80 to 3.90 s) |" in text
    assert "## Decision time by canary traffic, the daemon's default 600 s detection window" in text
    assert "| 1 (1%) | 2 (1 failed) | **11.00 s** (10.00 to 12.00 s) |" in text
    assert "| 4 (4%) | 3 | **6.00 s** (5.00 to 7.00 s) |" in text
    assert "| canary | 1 | 600 s | 3 | FAILED: DemoFailed: no decision (logs in /somewhere) |" in text
    assert "**met**" in text


def test_a_slow_demo_set_up_misses_the_target_and_rates_alone_judge_nothing() -> None:
    slow = [run(20, DEMO_WINDOW_S, n, 6.0) for n in (1, 2, 3)]
    assert build_report(slow, canary_rates=(), demo=True, source="s", prometheus=None)["target_met"] is False
    rates_only = build_report([run(4, DEFAULT_WINDOW_S, 1, 6.0)], canary_rates=(4.0,), demo=False,
                              source="s", prometheus=None)
    assert rates_only["target_met"] is None
    assert rates_only["demo_canary"] is None
    assert "Target:" not in markdown(rates_only, [])


def test_the_gateway_runs_get_a_row_of_their_own_and_the_target_is_judged_on_both_routers() -> None:
    canary = [run(20, DEMO_WINDOW_S, n, 2.9) for n in (1, 2, 3)]
    gateway = [run(20, DEMO_WINDOW_S, n, d, scenario="gateway") for n, d in ((1, 2.0), (2, 3.0), (3, 2.5))]
    report = build_report([*canary, *gateway], canary_rates=(), demo=True, source="s", prometheus=None)
    assert report["demo_gateway"]["router"] == "Gateway API HTTPRoute"
    assert report["demo_gateway"]["fault_to_no_traffic_s"] == pytest.approx(3.5)
    assert report["target_met"] is True
    text = markdown(report, [*canary, *gateway])
    assert ("| 20 requests/s (20%), Gateway API HTTPRoute | 3 | **2.50 s** (2.00 to 3.00 s) | 0.10 s "
            "| 3.50 s (3.00 to 4.00 s) | 6.00 s |") in text
    assert "Gateway API HTTPRoute 3.50 s **met**" in text
    assert "| gateway | 20 | 5 s | 2 | 3.00 s |" in text

    slow_gateway = [run(20, DEMO_WINDOW_S, n, 4.5, scenario="gateway") for n in (1, 2, 3)]
    missed = build_report([*canary, *slow_gateway], canary_rates=(), demo=True, source="s", prometheus=None)
    assert missed["target_met"] is False
    assert "Gateway API HTTPRoute 5.50 s **MISSED**" in markdown(missed, [*canary, *slow_gateway])


def test_only_the_gateway_runs_replace_theirs_and_the_other_runs_are_kept_and_said_to_be() -> None:
    earlier = [run(20, DEMO_WINDOW_S, 1, 2.9), run(20, DEMO_WINDOW_S, 1, 9.0, scenario="gateway"),
               run(4, DEFAULT_WINDOW_S, 1, 6.0)]
    previous = build_report(earlier, canary_rates=(4.0,), demo=True, source="s", prometheus=None)
    previous = json.loads(json.dumps(previous))  # as read back from closed_loop.json

    kept, rates, run_at = kept_runs(previous, replaced=("gateway",))
    assert [(r.scenario, r.window_s) for r in kept] == [
        ("canary", DEMO_WINDOW_S), ("canary", DEFAULT_WINDOW_S)]
    assert [vars_of(r) for r in kept] == [vars_of(earlier[0]), vars_of(earlier[2])]
    assert rates == [4.0]
    assert run_at == previous["run_at"]

    new = [run(20, DEMO_WINDOW_S, 1, 2.0, scenario="gateway")]
    runs = in_report_order([*kept, *new])
    assert [r.scenario for r in runs] == ["canary", "gateway", "canary"]
    report = build_report(runs, canary_rates=rates, demo=True, source="s", prometheus=None,
                          only=("gateway",), kept_from=run_at)
    assert report["demo_gateway"]["fault_to_no_traffic_s"] == pytest.approx(3.0)
    assert report["demo_canary"]["fault_to_no_traffic_s"] == pytest.approx(3.9)
    assert [m["canary_rps"] for m in report["canary_by_rps"]] == [4.0]
    assert f"the other runs kept from the report of {run_at}" in report["setup"]


def test_a_config_run_gives_its_errors_gone_where_traffic_moves_in_the_others() -> None:
    canary = [run(20, DEMO_WINDOW_S, n, 2.9) for n in (1, 2, 3)]
    config = Run("config", 1, fault_to_decision_s=1.9, decision_to_acted_s=3.5, fault_to_errors_gone_s=2.9,
                 decision_to_verified_s=9.0, wall_s=40.0)
    report = build_report([*canary, config], canary_rates=(), demo=True, source="s", prometheus=None)
    assert report["target_met"] is True  # judged on the canaries only
    text = markdown(report, [*canary, config])
    assert "| config | 100 | 5 s | 1 | 1.90 s | 3.50 s | errors gone 2.90 s | 9.00 s | 40 s |" in text
    assert "| canary | 20 | 5 s | 1 | 2.90 s | 0.10 s | 3.90 s | 6.00 s | 30 s |" in text
    kept, _, _ = kept_runs(json.loads(json.dumps(report)), replaced=("canary",))
    assert [vars_of(r) for r in kept] == [vars_of(config)]
