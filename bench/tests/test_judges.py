"""The baseline judges behave as their tools document, and the benchmark scores decisions fairly.

The scenarios here are synthetic and tiny: one tick per measurement (a 10 s window over 10 s
ticks) unless a test is about the window itself.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bench import detection
from bench.detection import Outcome, score, summarize
from bench.judges import ArgoParams, FlaggerParams, judge_argo, judge_flagger, query_window
from rollbackd.model import DEFAULT_BUCKETS_S

ONE_TICK_ARGO = ArgoParams(window_s=10.0)
ONE_TICK_FLAGGER = FlaggerParams(window_s=10.0)


def sample(*, requests: int = 100, errors: int = 0, latency_ms: float = 200.0) -> dict[str, Any]:
    """One side's counts for one tick, every request in the bucket holding ``latency_ms``."""
    buckets = [requests if bound * 1000.0 >= latency_ms else 0 for bound in DEFAULT_BUCKETS_S]
    return {"requests": requests, "errors": errors, "latency_buckets": buckets, "p95_ms": None}


def scenario(
    candidates: Sequence[dict[str, Any] | None],
    *,
    kind: str = "canary",
    deploy_at_s: float = 0,
    health: dict[int, int] | None = None,
) -> dict[str, Any]:
    """A scenario with one tick per candidate sample (10 s apart) and a healthy baseline.

    ``health`` maps a tick index to the candidate readiness status of that tick. There is
    deliberately no ``expect``: the judges must not read it.
    """
    ticks = []
    for i, candidate in enumerate(candidates):
        tick: dict[str, Any] = {"t": i * 10, "baseline": sample(requests=900), "candidate": candidate}
        if health is not None:
            status = health.get(i, 200)
            tick["health"] = {"candidate": [{"path": "/readyz", "status": status}], "baseline": []}
        ticks.append(tick)
    return {
        "name": "synthetic",
        "kind": kind,
        "interval_s": 10,
        "deploy_at_s": deploy_at_s,
        "slo": {"max_error_rate": 0.01, "max_p95_ms": 500.0},
        "ticks": ticks,
    }


GOOD = sample()
BAD = sample(errors=20)
SLOW = sample(latency_ms=2000.0)


def with_bad(n: int, bad_at: set[int], bad: dict[str, Any] | None = BAD) -> list[dict[str, Any] | None]:
    return [bad if i in bad_at else GOOD for i in range(n)]


# --- the window query ----------------------------------------------------------------------------


def test_window_query_sums_counts_and_separates_gaps_from_zero_traffic() -> None:
    ticks = scenario([sample(requests=100, errors=1), None, sample(requests=300, errors=7)])["ticks"]
    q = query_window(ticks, start_s=-1, end_s=20)
    assert q.error_rate == pytest.approx(8 / 400)
    assert q.p95_ms == pytest.approx(242.5)  # 0.1 + (0.25 - 0.1) * 0.95 seconds

    gap = query_window(ticks, start_s=5, end_s=10)
    assert gap.error_rate is None
    assert gap.p95_ms is None

    idle = query_window(scenario([sample(requests=0)])["ticks"], start_s=-1, end_s=0)
    assert idle.error_rate is not None
    assert math.isnan(idle.error_rate)
    assert idle.p95_ms is not None
    assert math.isnan(idle.p95_ms)


# --- Argo Rollouts --------------------------------------------------------------------------------


def test_argo_healthy_candidate_is_never_aborted() -> None:
    result = judge_argo(scenario(with_bad(30, set())), params=ONE_TICK_ARGO)
    assert result["decision"] == "none"
    assert result["decided_at_s"] is None
    assert result["mode"] is None


def test_argo_aborts_when_failures_exceed_failure_limit_and_passes_do_not_reset_them() -> None:
    # Four failed measurements, each followed by passing ones: failed (4) > failureLimit (3).
    result = judge_argo(scenario(with_bad(30, {2, 5, 8, 11})), params=ONE_TICK_ARGO)
    assert result["decision"] == "rollback"
    assert result["mode"] == "immediate"
    assert result["decided_at_s"] == 110
    assert "failureLimit (3)" in result["reason"]
    assert result["scenario"] == "synthetic"


def test_argo_tolerates_failure_limit_failures() -> None:
    result = judge_argo(scenario(with_bad(30, {2, 5, 8})), params=ONE_TICK_ARGO)
    assert result["decision"] == "none"


def test_argo_failure_limit_is_a_parameter() -> None:
    strict = ArgoParams(window_s=10.0, failure_limit=0)
    result = judge_argo(scenario(with_bad(30, {7})), params=strict)
    assert result["decided_at_s"] == 70


def test_argo_latency_metric_fails_on_its_own() -> None:
    result = judge_argo(scenario(with_bad(30, {3, 4, 5, 6}, bad=SLOW)), params=ONE_TICK_ARGO)
    assert result["decided_at_s"] == 60
    assert "p95-latency" in result["reason"]


def test_argo_gap_is_an_error_not_a_failure() -> None:
    # Three failures plus a four-measurement gap: neither limit is exceeded.
    candidates = with_bad(30, {2, 5, 8})
    for i in range(12, 16):
        candidates[i] = None
    assert judge_argo(scenario(candidates), params=ONE_TICK_ARGO)["decision"] == "none"


def test_argo_errors_out_after_consecutive_error_limit() -> None:
    candidates: list[dict[str, Any] | None] = with_bad(30, set())
    for i in range(10, 15):  # five consecutive empty results > consecutiveErrorLimit (4)
        candidates[i] = None
    result = judge_argo(scenario(candidates), params=ONE_TICK_ARGO)
    assert result["decided_at_s"] == 140
    assert "consecutiveErrorLimit (4)" in result["reason"]


def test_argo_a_measurement_resets_the_consecutive_error_count() -> None:
    candidates: list[dict[str, Any] | None] = with_bad(30, set())
    for i in (10, 11, 12, 13, 15, 16, 17, 18):  # two runs of four errors, one good tick between
        candidates[i] = None
    assert judge_argo(scenario(candidates), params=ONE_TICK_ARGO)["decision"] == "none"


def test_argo_nan_result_is_a_failed_measurement() -> None:
    idle = sample(requests=0)
    result = judge_argo(scenario(with_bad(30, {4, 5, 6, 7}, bad=idle)), params=ONE_TICK_ARGO)
    assert result["decided_at_s"] == 70


def test_argo_failing_readiness_counts_as_failed_measurements() -> None:
    health = dict.fromkeys(range(10, 30), 503)
    result = judge_argo(scenario(with_bad(30, set()), health=health), params=ONE_TICK_ARGO)
    assert result["decided_at_s"] == 130
    assert "candidate-ready" in result["reason"]
    assert "/readyz -> 503" in result["reason"]


def test_argo_one_minute_window_keeps_a_single_bad_interval_in_six_measurements() -> None:
    # With the default 1-minute window one bad tick is seen by six measurements: t=50..100.
    result = judge_argo(scenario(with_bad(30, {5})))
    assert result["decided_at_s"] == 80


def test_argo_blue_green_is_judged_from_the_switch_only() -> None:
    idle = sample(requests=0)  # before the switch the candidate takes no traffic (NaN results)
    candidates = [idle] * 10 + [GOOD] * 20
    result = judge_argo(scenario(candidates, kind="blue-green", deploy_at_s=100), params=ONE_TICK_ARGO)
    assert result["decision"] == "none"

    candidates = [idle] * 10 + [BAD] * 20
    result = judge_argo(scenario(candidates, kind="blue-green", deploy_at_s=100), params=ONE_TICK_ARGO)
    assert result["decided_at_s"] == 130


# --- Flagger --------------------------------------------------------------------------------------


def test_flagger_healthy_candidate_is_never_rolled_back() -> None:
    result = judge_flagger(scenario(with_bad(30, set())), params=ONE_TICK_FLAGGER)
    assert result["decision"] == "none"
    assert result["decided_at_s"] is None


def test_flagger_rolls_back_on_the_run_after_threshold_failed_checks() -> None:
    result = judge_flagger(scenario(with_bad(30, {10, 11, 12, 13, 14})), params=ONE_TICK_FLAGGER)
    assert result["decision"] == "rollback"
    assert result["mode"] == "immediate"
    assert result["decided_at_s"] == 150  # interval x threshold after the first failed check
    assert "threshold (5)" in result["reason"]


def test_flagger_passing_checks_do_not_reset_the_failed_checks_counter() -> None:
    result = judge_flagger(scenario(with_bad(30, {3, 6, 9, 12, 15})), params=ONE_TICK_FLAGGER)
    assert result["decided_at_s"] == 160


def test_flagger_tolerates_fewer_failed_checks_than_the_threshold() -> None:
    result = judge_flagger(scenario(with_bad(30, {3, 6, 9, 12})), params=ONE_TICK_FLAGGER)
    assert result["decision"] == "none"


def test_flagger_first_run_only_starts_the_analysis() -> None:
    # The bad tick at t=0 falls on the run that starts the analysis: only four checks fail.
    result = judge_flagger(scenario(with_bad(30, {0, 1, 2, 3, 4})), params=ONE_TICK_FLAGGER)
    assert result["decision"] == "none"


def test_flagger_no_values_found_counts_as_a_failed_check() -> None:
    candidates: list[dict[str, Any] | None] = with_bad(30, set())
    for i in range(10, 15):
        candidates[i] = None
    result = judge_flagger(scenario(candidates), params=ONE_TICK_FLAGGER)
    assert result["decided_at_s"] == 150
    assert "no values found" in result["reason"]


def test_flagger_latency_and_readiness_checks_fail_too() -> None:
    slow = judge_flagger(scenario(with_bad(30, set(range(5, 10)), bad=SLOW)), params=ONE_TICK_FLAGGER)
    assert slow["decided_at_s"] == 100
    assert "request-duration" in slow["reason"]

    health = dict.fromkeys(range(5, 30), 503)
    unready = judge_flagger(scenario(with_bad(30, set()), health=health), params=ONE_TICK_FLAGGER)
    assert unready["decided_at_s"] == 100
    assert "not ready" in unready["reason"]


def test_flagger_blue_green_is_judged_from_the_switch_only() -> None:
    candidates = [None] * 10 + [GOOD] * 20  # no candidate series at all before the switch
    result = judge_flagger(scenario(candidates, kind="blue-green", deploy_at_s=100), params=ONE_TICK_FLAGGER)
    assert result["decision"] == "none"


# --- scoring --------------------------------------------------------------------------------------


def labelled(
    *,
    decision: str = "rollback",
    mode: str | None = "immediate",
    fault_at_s: float = 180,
    deadline_s: float = 220,
    not_before_s: float | None = None,
    grace_s: float = 120,
) -> dict[str, Any]:
    expect: dict[str, Any] = {"decision": decision, "mode": mode, "fault_at_s": None, "deadline_s": None}
    if decision == "rollback":
        expect.update(fault_at_s=fault_at_s, deadline_s=deadline_s)
        if not_before_s is not None:
            expect["not_before_s"] = not_before_s
    return {
        "name": "labelled",
        "interval_s": 10,
        "policy": {"controlled_grace_s": grace_s},
        "expect": expect,
    }


def decided(at: float | None, mode: str | None = "immediate") -> dict[str, Any]:
    if at is None:
        return {"scenario": "labelled", "decision": "none", "mode": None, "decided_at_s": None, "reason": ""}
    return {"scenario": "labelled", "decision": "rollback", "mode": mode, "decided_at_s": at, "reason": ""}


def test_score_no_rollback_expected() -> None:
    quiet = labelled(decision="none", mode=None)
    assert score(decided(None), quiet).outcome is Outcome.CORRECT
    wrong = score(decided(200), quiet)
    assert wrong.outcome is Outcome.FALSE_ROLLBACK
    assert wrong.delay_s is None


def test_score_rollback_before_the_fault_is_a_false_rollback() -> None:
    result = score(decided(170), labelled())
    assert result.outcome is Outcome.FALSE_ROLLBACK
    assert result.delay_s is None


def test_score_missing_or_late_rollback_is_missed() -> None:
    assert score(decided(None), labelled()).outcome is Outcome.MISSED
    late = score(decided(230), labelled())
    assert late.outcome is Outcome.MISSED
    assert late.delay_s == 50  # still timed: it did roll back after the fault


def test_score_timely_rollback_is_correct_and_timed() -> None:
    on_time = score(decided(200), labelled())
    assert on_time.outcome is Outcome.CORRECT
    assert on_time.delay_s == 20
    assert on_time.delay_ticks == 2
    assert on_time.group == "immediate"
    assert score(decided(180), labelled()).outcome is Outcome.CORRECT
    assert score(decided(220), labelled()).outcome is Outcome.CORRECT


def test_score_mode_must_match_when_expected() -> None:
    controlled = labelled(mode="controlled", deadline_s=380, not_before_s=300)
    assert score(decided(200, mode="immediate"), controlled).outcome is Outcome.WRONG_MODE
    assert score(decided(320, mode="immediate"), controlled).outcome is Outcome.WRONG_MODE
    either = labelled(mode=None, deadline_s=900)
    assert score(decided(400, mode="controlled"), either).outcome is Outcome.CORRECT
    assert score(decided(400, mode="immediate"), either).group == "any"


def test_score_controlled_rollback_before_not_before_is_too_early() -> None:
    controlled = labelled(mode="controlled", deadline_s=380, not_before_s=300)
    assert score(decided(290, mode="controlled"), controlled).outcome is Outcome.EARLY
    right = score(decided(350, mode="controlled"), controlled)
    assert right.outcome is Outcome.CORRECT
    assert right.after_window_ticks == 5  # window ends at max(300, 180 + 120) = 300


def test_score_controlled_window_uses_the_grace_when_it_ends_later() -> None:
    controlled = labelled(mode="controlled", deadline_s=500, not_before_s=300, grace_s=200)
    result = score(decided(400, mode="controlled"), controlled)
    assert result.after_window_ticks == 2  # max(300, 180 + 200) = 380


def test_score_rejects_a_rollback_without_a_time() -> None:
    broken = {"scenario": "labelled", "decision": "rollback", "mode": "immediate", "decided_at_s": None}
    with pytest.raises(ValueError, match="decided_at_s"):
        score(broken, labelled())


def test_summary_counts_outcomes_and_medians_per_expected_mode() -> None:
    scores = [
        score(decided(190), labelled()),
        score(decided(210), labelled()),
        score(decided(250), labelled()),  # missed, but timed
        score(decided(None), labelled()),  # missed, untimed
        score(decided(100), labelled(decision="none", mode=None)),
        score(decided(350, mode="controlled"), labelled(mode="controlled", deadline_s=380, not_before_s=300)),
    ]
    summary = summarize(scores)
    assert summary["scenarios"] == 6
    assert summary["outcomes"] == {
        "correct": 3,
        "false_rollback": 1,
        "missed": 2,
        "wrong_mode": 0,
        "early": 0,
    }
    immediate = summary["time_to_decision"]["immediate"]
    assert immediate["expected"] == 4
    assert immediate["timed"] == 3
    assert immediate["median_delay_s"] == 30
    assert immediate["median_delay_ticks"] == 3
    controlled = summary["time_to_decision"]["controlled"]
    assert controlled["median_delay_s"] == 170
    assert controlled["median_after_window_ticks"] == 5
    assert summary["time_to_decision"]["any"]["median_delay_s"] is None


# --- the benchmark end to end on the shared scenarios ---------------------------------------------


def test_detection_benchmark_writes_its_reports(
    scenarios_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert detection.main(["--scenarios", str(scenarios_dir), "--results", str(tmp_path)]) == 0

    report = json.loads((tmp_path / "detection.json").read_text(encoding="utf-8"))
    scenario_count = len(list(scenarios_dir.glob("*.json")))
    assert report["scenario_count"] == scenario_count
    assert {"argo", "flagger"} <= set(report["judges"])
    for name, judged in report["judges"].items():
        assert len(judged["results"]) == scenario_count, name
        outcomes = judged["summary"]["outcomes"]
        assert sum(outcomes.values()) == scenario_count, name
        assert judged["wall_s"] >= 0

    by_name = {r["scenario"]: r for r in report["judges"]["argo"]["results"]}
    assert by_name["severe-error-spike"]["decision"] == "rollback"
    assert by_name["healthy-noisy"]["decision"] == "none"

    markdown = (tmp_path / "detection.md").read_text(encoding="utf-8")
    assert "## Summary" in markdown
    assert "| severe-error-spike |" in markdown
    assert markdown in capsys.readouterr().out
