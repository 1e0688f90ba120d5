"""The soak and power benchmarks' harness: healthy releases are healthy, faults come when said,
and rollbacks are counted where they belong."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bench import power, soak
from bench.synth import SLO_ERROR


def _rate(ticks: list[dict[str, Any]], side: str) -> float:
    samples = [tick[side] for tick in ticks if tick[side] is not None]
    errors = sum(float(s["errors"]) for s in samples)
    return errors / max(1.0, sum(float(s["requests"]) for s in samples))


def test_every_soak_shape_is_a_healthy_release() -> None:
    """No candidate fails more than the SLO over its release, and the blips hit both arms."""
    for shape in soak.shapes():
        scenario = soak.release(shape, seed=0, hours=2.0)
        assert len(scenario["ticks"]) == 2 * 3600 / soak.INTERVAL_S
        assert _rate(scenario["ticks"], "candidate") < SLO_ERROR, shape.name
    blips = soak.release(next(s for s in soak.shapes() if s.name == "blips"), seed=0, hours=10.0)
    both = [t for t in blips["ticks"] if t["candidate"]["errors"] and t["baseline"]["errors"] > 20]
    assert both  # a shared dependency failure shows on both arms at once


def test_the_low_traffic_shape_has_a_few_requests_per_interval() -> None:
    shape = next(s for s in soak.shapes() if s.name == "low-traffic")
    ticks = soak.release(shape, seed=0, hours=1.0)["ticks"]
    mean = sum(t["candidate"]["requests"] for t in ticks) / len(ticks)
    assert 3.0 < mean < 9.0  # 0.2 req/s over 30 s intervals


def test_the_soak_counts_each_rollback_as_false_per_shape_and_per_thousand_hours() -> None:
    def always(scenario: Mapping[str, Any]) -> dict[str, Any]:
        return {"scenario": scenario["name"], "decision": "rollback", "decided_at_s": 60.0, "reason": "x"}

    def never(scenario: Mapping[str, Any]) -> dict[str, Any]:
        return {"scenario": scenario["name"], "decision": "none", "decided_at_s": None, "reason": "ok"}

    report = soak.soak(
        14.0, high_alpha=0.2, release_hours=1.0, compared=[("always", "", always), ("never", "", never)]
    )
    assert report["releases"] == 14
    assert report["target_hours"] == 14.0
    assert report["judges"]["always"]["false_rollbacks"] == 14
    assert report["judges"]["always"]["per_1000_target_hours"] == 1000.0
    assert set(report["judges"]["always"]["by_shape"].values()) == {2}
    assert report["judges"]["never"]["false_rollbacks"] == 0
    assert "| always: " in soak.to_markdown(report, high_alpha=0.2)


def test_a_power_release_turns_bad_at_the_fault_by_the_effect_asked_for() -> None:
    scenario = power.release(10.0, 200.0, seed=0)
    before = [t for t in scenario["ticks"] if t["t"] < power.HEALTHY_S]
    after = [t for t in scenario["ticks"] if t["t"] >= power.HEALTHY_S]
    assert _rate(before, "candidate") < SLO_ERROR
    assert 0.08 < _rate(after, "candidate") < 0.12
    assert _rate(after, "baseline") < SLO_ERROR


def test_bad_intervals_are_counted_from_the_first_bad_one() -> None:
    fault = power.HEALTHY_S
    second = {"decision": "rollback", "decided_at_s": fault + power.INTERVAL_S}
    assert power.bad_intervals_seen(second) == 2
    early = power.bad_intervals_seen({"decision": "rollback", "decided_at_s": fault - 50.0})
    assert early is not None
    assert early <= 0
    assert power.bad_intervals_seen({"decision": "none", "decided_at_s": None}) is None


def test_rollbackd_decides_a_severe_regression_on_the_second_bad_interval() -> None:
    """The severe fast path keeps working with the anytime-valid tests on."""
    result = soak.rollbackd_judge()(power.release(30.0, 20.0, seed=0))
    assert power.bad_intervals_seen(result) == 2


def test_a_slow_burn_is_bad_from_its_start_by_a_small_effect() -> None:
    scenario = power.slow_burn(2.0, 20.0, seed=0)
    ticks = scenario["ticks"]
    assert ticks[0]["t"] == 0.0
    assert len(ticks) == int(power.SLOW_WATCH_S / power.INTERVAL_S)
    assert 0.015 < _rate(ticks, "candidate") < 0.025
    assert _rate(ticks, "baseline") < SLO_ERROR


def test_the_slow_burn_table_names_each_judge_and_burn() -> None:
    report = {
        "seeds": 1,
        "healthy_s": 600.0,
        "watch_s": 7200.0,
        "interval_s": 10.0,
        "traffic_rps": [],
        "effects": [],
        "judges": {},
        "slow_burns": {
            "watch_s": 43200.0,
            "seeds": 5,
            "judges": {
                "rollbackd": {"x2/r0.2": {"effect": 2.0, "rps": 0.2, "decided": 4, "median_hours": 3.5}},
                "argo": {"x2/r0.2": {"effect": 2.0, "rps": 0.2, "decided": 0, "median_hours": None}},
            },
        },
    }
    text = power.to_markdown(report)
    assert "| judge | 2x at 0.2 req/s |" in text
    assert "| rollbackd | 4/5, 3.5 h |" in text
    assert "| argo | 0/5 |" in text
