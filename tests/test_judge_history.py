"""Where the judge's "before" comes from: a plain Deployment's own healthy past (its history and
the window's intervals before the episode), the past read from the metrics source (backfill), and
what a rollback or a failed one leaves of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from rollbackd.detectors.judge import Judge
from rollbackd.model import Evidence, Impact, Observation, Sample, Strategy
from rollbackd.params import Detection, TargetParams
from tests.test_detectors import side

DEPLOYMENT = TargetParams(key="shop/web", strategy=Strategy.DEPLOYMENT, interval_s=10.0)
BLUE_GREEN = TargetParams(key="shop/web", strategy=Strategy.BLUE_GREEN, interval_s=10.0)

GOOD = side(100, 0)
BAD = side(100, 38)  # a bad image: 38% errors


def obs(t: float, candidate: Sample | None, baseline: Sample | None = None) -> Observation:
    return Observation(target="shop/web", t=t, baseline=baseline, candidate=candidate)


def feed(judge: Judge, samples: Sequence[Sample | None], start: float) -> list[Evidence]:
    return [judge.observe(obs(start + 10.0 * i, s)) for i, s in enumerate(samples)]


def error_finding_detail(evidence: Evidence) -> str:
    return next(f.detail for f in evidence.findings if f.signal == "error_rate")


def test_a_deployment_watched_briefly_is_judged_against_its_own_healthy_past() -> None:
    # 40 s of healthy traffic, then the bad image: the window's intervals before the episode are
    # the reference, long before any of them leaves the 600 s window.
    judge = Judge(DEPLOYMENT)
    evidence = feed(judge, [GOOD] * 4 + [BAD] * 2, start=0.0)
    assert all(e.impact is Impact.NONE for e in evidence[:5])
    last = evidence[-1]
    assert last.impact is Impact.SEVERE
    assert last.attributable, last.reasons
    assert "baseline 0.00% (0 of 400 requests failed," in error_finding_detail(last)


def test_a_scrape_gap_inside_the_episode_does_not_hide_the_healthy_past() -> None:
    judge = Judge(DEPLOYMENT)
    evidence = feed(judge, [GOOD] * 4 + [BAD, None, BAD], start=0.0)
    last = evidence[-1]
    assert last.impact is Impact.SEVERE
    assert last.attributable, last.reasons
    assert "whole window" not in error_finding_detail(last)


def test_a_deployment_bad_from_its_first_interval_has_no_baseline_to_blame_it_on() -> None:
    # Nothing healthy was seen: the bad intervals themselves are never the reference.
    judge = Judge(DEPLOYMENT)
    evidence = feed(judge, [BAD] * 4, start=0.0)
    assert evidence[-1].impact is Impact.SEVERE
    assert not evidence[-1].attributable
    assert "no baseline with enough traffic" in error_finding_detail(evidence[-1])


def test_the_deployment_past_read_from_the_source_is_its_baseline_after_a_restart() -> None:
    judge = Judge(DEPLOYMENT)
    taken = judge.backfill([obs(-10.0 * i, GOOD) for i in range(1, 90)])
    assert taken == 89
    evidence = feed(judge, [BAD] * 2, start=0.0)
    assert evidence[-1].impact is Impact.SEVERE
    assert evidence[-1].attributable, evidence[-1].reasons
    # The backfilled intervals older than the window are history, not window.
    kept = judge.kept()
    assert [o.t for o in kept] == [-580.0 + 10.0 * i for i in range(60)]


def test_backfill_takes_only_what_is_older_than_what_the_judge_holds_and_keeps_it() -> None:
    judge = Judge(DEPLOYMENT)
    feed(judge, [GOOD, BAD], start=100.0)
    before = judge.kept()
    taken = judge.backfill([obs(t, GOOD) for t in (70.0, 80.0, 90.0, 100.0, 110.0)])
    assert taken == 3
    kept = judge.kept()
    assert [o.t for o in kept] == [70.0, 80.0, 90.0, 100.0, 110.0]
    assert kept[-2:] == before
    assert judge.backfill([obs(t, GOOD) for t in (70.0, 80.0, 90.0)]) == 0  # already held


def test_backfilled_impossible_intervals_are_not_taken() -> None:
    judge = Judge(DEPLOYMENT)
    impossible = Sample(requests=10, errors=50)
    judge.backfill([obs(-20.0, GOOD), obs(-10.0, impossible)])
    assert [o.t for o in judge.kept()] == [-20.0]


def test_a_rollback_keeps_the_healthy_past_of_the_deployment_revision_that_stays() -> None:
    judge = Judge(DEPLOYMENT)
    evidence = feed(judge, [GOOD] * 10 + [BAD] * 2, start=0.0)
    assert evidence[-1].attributable
    judge.reset()  # rolled back (or the rollback failed): a new episode
    assert judge.kept() == []
    evidence = feed(judge, [BAD] * 2, start=200.0)
    assert evidence[-1].impact is Impact.SEVERE
    assert evidence[-1].attributable, evidence[-1].reasons
    # The bad intervals of the first episode were not taken as healthy past.
    assert "baseline 0.00% (0 of 1000 requests failed," in error_finding_detail(evidence[-1])


def test_a_failed_switch_back_does_not_blind_a_blue_green_judge() -> None:
    judge = Judge(BLUE_GREEN)
    # Blue serves until the switch at t=300, then green (bad) serves alone.
    for i in range(30):
        judge.observe(obs(10.0 * i, None, baseline=GOOD))
    evidence = [judge.observe(obs(300.0 + 10.0 * i, BAD, baseline=None)) for i in range(2)]
    assert evidence[-1].attributable
    judge.reset()  # the switch-back failed: green still serves
    evidence = [judge.observe(obs(400.0 + 10.0 * i, BAD, baseline=None)) for i in range(2)]
    assert evidence[-1].impact is Impact.SEVERE
    assert evidence[-1].attributable, evidence[-1].reasons


def test_the_history_stays_bounded_by_the_baseline_window() -> None:
    params = dataclasses.replace(DEPLOYMENT, detection=Detection(window_s=100.0, baseline_window_s=200.0))
    judge = Judge(params)
    # Long ago the service failed 38%; then 40 healthy intervals. Only the last 200 s of the
    # past count, so the old failures do not make the reference look bad.
    judge.backfill([obs(-10.0 * i, BAD if i > 30 else GOOD) for i in range(1, 400)])
    evidence = feed(judge, [BAD] * 2, start=0.0)
    assert evidence[-1].attributable, evidence[-1].reasons
    assert "baseline 0.00%" in error_finding_detail(evidence[-1])
