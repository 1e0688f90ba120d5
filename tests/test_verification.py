"""Verification after a rollback: the runbook's success criteria over the validation window."""

from __future__ import annotations

from rollbackd.model import DEFAULT_BUCKETS_S, HealthCheck, Histogram, Sample, Strategy
from rollbackd.params import TargetParams
from rollbackd.verification import VerificationStatus, Verifier

PARAMS = TargetParams(key="shop/checkout", strategy=Strategy.CANARY, interval_s=10.0)
OK = (HealthCheck("/readyz", 200),)
DOWN = (HealthCheck("/readyz", 503),)


def sample(requests: int, errors: int, bucket: int = 5) -> Sample:
    counts = tuple(float(requests if i >= bucket else 0) for i in range(len(DEFAULT_BUCKETS_S)))
    return Sample(requests=requests, errors=errors, latency=Histogram(DEFAULT_BUCKETS_S, counts))


def run(
    verifier: Verifier,
    ticks: int,
    s: Sample | None,
    health: tuple[HealthCheck, ...] | None = OK,
    available: bool | None = True,
    start: float = 0.0,
) -> list[VerificationStatus]:
    return [
        verifier.observe(start + 10.0 * (i + 1), s, health, available=available).status for i in range(ticks)
    ]


def test_healthy_for_the_whole_window_is_verified_at_its_end() -> None:
    verifier = Verifier(PARAMS, started_at=0.0, window_s=60.0)
    statuses = run(verifier, 7, sample(1000, 2))
    assert statuses[:5] == [VerificationStatus.PENDING] * 5
    assert statuses[5] == VerificationStatus.VERIFIED
    result = verifier.observe(80.0, sample(1000, 500), DOWN, available=False)
    assert result.status is VerificationStatus.VERIFIED  # a verdict is final
    assert "rollback verified after 60s" in result.reasons[0]
    assert result.error_rate is not None
    assert result.error_rate < 0.01


def test_a_breach_that_goes_on_fails_before_the_window_ends() -> None:
    verifier = Verifier(PARAMS, started_at=0.0, window_s=300.0)
    statuses = run(verifier, 3, sample(1000, 200))
    assert statuses[0] is VerificationStatus.PENDING  # one interval is not proof
    assert VerificationStatus.FAILED in statuses
    assert "error rate still breaches the SLO" in verifier.observe(40.0, None).reasons[0]


def test_slow_responses_fail_verification() -> None:
    verifier = Verifier(PARAMS, started_at=0.0, window_s=300.0)
    assert VerificationStatus.FAILED in run(verifier, 3, sample(1000, 0, bucket=8))


def test_failing_health_fails_verification() -> None:
    verifier = Verifier(PARAMS, started_at=0.0, window_s=300.0)
    statuses = run(verifier, 2, sample(1000, 1), DOWN)
    assert statuses == [VerificationStatus.PENDING, VerificationStatus.FAILED]


def test_unavailable_deployment_waits_then_fails() -> None:
    verifier = Verifier(PARAMS, started_at=0.0, window_s=60.0, max_wait_s=120.0)
    statuses = run(verifier, 12, sample(1000, 1), available=False)
    assert statuses[5:11] == [VerificationStatus.PENDING] * 6
    assert statuses[11] is VerificationStatus.FAILED
    assert "not fully available" in verifier.observe(130.0, None).reasons[0]


def test_no_traffic_is_never_called_verified() -> None:
    verifier = Verifier(PARAMS, started_at=0.0, window_s=60.0, max_wait_s=120.0)
    statuses = run(verifier, 12, None)
    assert VerificationStatus.VERIFIED not in statuses
    assert statuses[-1] is VerificationStatus.FAILED
    assert "unverifiable" in verifier.observe(130.0, None).reasons[0]
