"""The judge with its tests since the release: a small regression at low traffic is proven and
blamed given time (where the window alone never proves it), and the reasons say over which span
each number was measured."""

from __future__ import annotations

import dataclasses

from rollbackd.detectors.judge import Judge
from rollbackd.model import Evidence, Observation, Sample, Slo
from rollbackd.params import Detection
from tests.test_detectors import CANARY, hist, side


def small_regression(ticks: int) -> list[tuple[Sample, Sample]]:
    """A canary at 2 requests an interval failing 2% of them (one error every 25 intervals), twice
    its 1% SLO, against a baseline at 20 requests an interval failing 0.2%."""
    return [(side(20, 1 if i % 25 == 12 else 0), side(2, 1 if i % 25 == 0 else 0)) for i in range(ticks)]


def judged(params: Detection, ticks: list[tuple[Sample, Sample]]) -> list[Evidence]:
    judge = Judge(dataclasses.replace(CANARY, detection=params))
    return [
        judge.observe(Observation(target=CANARY.key, t=10.0 * i, baseline=b, candidate=c))
        for i, (b, c) in enumerate(ticks)
    ]


def error_finding_detail(evidence: Evidence) -> str:
    return next(f.detail for f in evidence.findings if f.signal == "error_rate")


def test_a_small_regression_at_low_traffic_is_proven_and_blamed_given_time() -> None:
    evidence = judged(Detection(), small_regression(6 * 360))
    first = next(i for i, e in enumerate(evidence) if e.breached)
    assert first > 60  # not in the first window: the evidence had to accumulate
    proven = evidence[first]
    assert proven.attributable
    detail = error_finding_detail(proven)
    assert "proven by the anytime-valid test" in detail
    assert "requests failed since t=0s" in detail  # the span since the release, named


def test_the_window_alone_never_proves_it() -> None:
    evidence = judged(Detection(anytime=False), small_regression(6 * 360))
    assert not any(e.breached for e in evidence)
    # ... and says over which span it judged, and what "within" was judged on.
    detail = error_finding_detail(evidence[-1])
    assert "over 60 intervals since t=" in detail
    assert "the last 2 intervals" in detail


def test_a_healthy_release_is_not_found_in_breach_however_long_it_is_watched() -> None:
    """Half the SLO for six hours at low traffic, with a bursty interval now and then."""
    ticks = [(side(20, 0), side(2, 1 if i % 100 == 0 else 0)) for i in range(6 * 360)]
    ticks += [(side(20, 0), side(2, 2))] + [(side(20, 0), side(2, 0))] * 30
    assert not any(e.breached for e in judged(Detection(), ticks))


def test_tiny_slos_keep_their_digits_and_latency_counts_observations() -> None:
    params = dataclasses.replace(CANARY, slo=Slo(max_error_rate=0.00005))
    judge = Judge(params)
    no_latency = Sample(requests=10, errors=0, latency=hist(0))
    evidence = judge.observe(
        Observation(target=CANARY.key, t=0.0, baseline=side(90, 0), candidate=no_latency)
    )
    assert any("0 latency observations" in r for r in evidence.reasons)
    for i in range(1, 20):
        evidence = judge.observe(
            Observation(target=CANARY.key, t=10.0 * i, baseline=side(900, 0), candidate=side(100, 0))
        )
    assert "vs SLO 0.0050%" in error_finding_detail(evidence)


def test_a_fixed_breach_is_not_proven_again_by_the_evidence_it_left() -> None:
    """The test since the release keeps its evidence for hours after a fix: a pair of noisy
    intervals after the fix must not make the old breach count as a breach again."""
    healthy, bad = (side(900, 2), side(100, 0)), (side(900, 2), side(100, 3))
    noisy = (side(900, 2), side(100, 2))  # 2%: above the SLO, as healthy noise sometimes is
    fixed = [noisy if i % 10 in (4, 5) else healthy for i in range(90)]
    evidence = judged(Detection(), [healthy] * 18 + [bad] * 60 + fixed)
    assert any(e.breached for e in evidence[18:78])  # the breach was real, and proven
    after_fix = evidence[78 + 12 :]
    assert not [e.t for e in after_fix if e.breached]


def test_one_heavy_interval_does_not_hide_an_even_moderate_breach() -> None:
    """30 requests an interval failing about 3% of them, one interval with a burst of 4 errors:
    discounting the burst down to the next worst interval leaves the breach proven, where leaving
    that interval out whole did not (a breach may not rest on one burst, nor be hidden by one)."""
    healthy = (side(270, 1), side(30, 0))
    errors = [1, 0, 1, 0, 1, 1, 0, 4, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1]
    ticks = [healthy] * 10 + [(side(270, 1), side(30, e)) for e in errors]
    evidence = judged(Detection(), ticks)
    assert evidence[-1].breached
    assert not any(e.breached for e in evidence[:10])
    detail = error_finding_detail(evidence[-1])
    assert "worst interval discounted" in detail


def test_a_burst_alone_is_still_not_a_breach() -> None:
    healthy = (side(270, 1), side(30, 0))
    ticks = [healthy] * 30 + [(side(270, 1), side(30, 6))] + [healthy] * 10
    assert not any(e.breached for e in judged(Detection(), ticks))
