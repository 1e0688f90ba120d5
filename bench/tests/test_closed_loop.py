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
    markdown,
    parse_args,
    plan_runs,
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
        ("canary", 1, 1.0, DEFAULT_WINDOW_S),
        ("canary", 1, 20.0, DEFAULT_WINDOW_S),
        ("canary", 2, 1.0, DEFAULT_WINDOW_S),
        ("canary", 2, 20.0, DEFAULT_WINDOW_S),
    ]
    assert {p[0] for p in plan_runs(parse_args(["--no-demo"]))} == {"canary"}
    assert {p[3] for p in plan_runs(parse_args(["--no-rates"]))} == {DEMO_WINDOW_S}


def run(rps: float, window_s: float, n: int, decision_s: float | None, *, error: str | None = None) -> Run:
    if error is not None:
        return Run("canary", n, bad_rps=rps, window_s=window_s, error=error, work_dir="/somewhere")
    return Run("canary", n, bad_rps=rps, window_s=window_s, fault_to_decision_s=decision_s,
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
    assert "| 20 requests/s (20%) | 3 | **2.90 s** (2.80 to 3.90 s) |" in text
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
