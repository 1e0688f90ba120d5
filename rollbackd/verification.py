"""Did the rollback work? The runbook's success criteria, judged without I/O.

After a rollback action completes, the version traffic went back to must, for the whole validation
window: answer its health endpoints with 2xx, keep the error rate under the SLO and the P95 under
its ceiling, and its Deployment must be fully available. The verifier is fed one tick at a time,
like the detectors, and answers ``pending`` until it can say ``verified`` or ``failed``:

* a breach of the SLO proven with the detectors' confidence (still proven without the worst
  interval), or failing health on ``confirm_intervals`` consecutive probes, fails at once;
* at the end of the window, the pooled error rate and P95 must be within the SLO, the latest
  health probes 2xx and the Deployment fully available;
* with too little traffic to judge at the end of the window it keeps watching, up to
  ``max_wait_s``; then it fails as unverifiable, since nobody should be told "verified" on no data.

A failed verification escalates; it never triggers a second automatic rollback.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rollbackd.detectors import latency
from rollbackd.detectors.signals import P95_TAIL, Counts, pool, proven_above
from rollbackd.model import HealthCheck, Histogram, Sample
from rollbackd.params import TargetParams

#: The runbook's target for an application rollback, from decision to verified.
RUNBOOK_ROLLBACK_TARGET_S = 600.0


class VerificationStatus(enum.StrEnum):
    PENDING = "pending"
    VERIFIED = "verified"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class VerificationResult:
    status: VerificationStatus
    reasons: tuple[str, ...]
    error_rate: float | None = None
    p95_ms: float | None = None
    requests: float = 0.0
    health_ok: bool | None = None
    available: bool | None = None
    elapsed_s: float = 0.0

    @property
    def done(self) -> bool:
        return self.status is not VerificationStatus.PENDING


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f}%"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0f} ms"


class Verifier:
    """Judges the serving version after a rollback, tick by tick."""

    def __init__(
        self, params: TargetParams, *, started_at: float, window_s: float, max_wait_s: float | None = None
    ):
        self._params = params
        self._started_at = started_at
        self._window_s = window_s
        self._max_wait_s = max_wait_s if max_wait_s is not None else 2 * window_s
        self._errors: list[Counts] = []
        self._slow: list[Counts] = []
        self._hist: Histogram | None = None
        self._failing_probes = 0
        self._health_ok: bool | None = None
        self._result: VerificationResult | None = None

    def _add_latency(self, hist: Histogram | None) -> None:
        if hist is None or hist.total <= 0:
            return
        self._slow.append(Counts(latency.slow_count(hist, self._params.slo.max_p95_ms), hist.total))
        self._hist = latency.merge([self._hist, hist])

    def observe(
        self,
        t: float,
        serving: Sample | None,
        health: tuple[HealthCheck, ...] | None = None,
        *,
        available: bool | None = None,
    ) -> VerificationResult:
        """One tick: the serving version's metrics, its health probes, and whether its Deployment
        is fully available (``None`` when unknown)."""
        if self._result is not None:
            return self._result
        params = self._params
        slo = params.slo
        alpha = 1.0 - params.detection.confidence
        k = params.detection.confirm_intervals
        elapsed = t - self._started_at
        # An interval that began before the rollback's action ended still holds the bad version's
        # traffic (a lever that acts at once, a flag turned off, shows it most): not the serving one.
        straddles = t - params.interval_s < self._started_at - 1e-9
        if serving is not None and serving.requests > 0 and not straddles:
            self._errors.append(Counts(serving.errors, serving.requests))
            self._add_latency(serving.latency)
        if health:
            self._health_ok = all(check.ok for check in health)
            self._failing_probes = 0 if self._health_ok else self._failing_probes + 1

        errors = pool(self._errors)
        rate = errors.rate
        p95 = latency.quantile_ms(self._hist)
        numbers = (
            f"error rate {_pct(rate)} (SLO {_pct(slo.max_error_rate)}) and P95 {_ms(p95)} "
            f"(ceiling {_ms(slo.max_p95_ms)}) over {errors.total:.0f} requests in {elapsed:.0f}s"
        )

        def finish(status: VerificationStatus, *reasons: str) -> VerificationResult:
            result = VerificationResult(
                status,
                reasons,
                error_rate=rate,
                p95_ms=p95,
                requests=errors.total,
                health_ok=self._health_ok,
                available=available,
                elapsed_s=elapsed,
            )
            if status is not VerificationStatus.PENDING:
                self._result = result
            return result

        if self._failing_probes >= k:
            failing = ", ".join(f"{c.path} {c.status or 'unreachable'}" for c in health or () if not c.ok)
            return finish(
                VerificationStatus.FAILED,
                f"health endpoints still failing after the rollback ({failing}) on {self._failing_probes} "
                "consecutive probes",
            )
        for name, series, tail in (
            ("error rate", self._errors, slo.max_error_rate),
            ("P95", self._slow, P95_TAIL),
        ):
            if len(series) >= k and proven_above(series, tail, alpha) is not None:
                return finish(
                    VerificationStatus.FAILED, f"{name} still breaches the SLO after the rollback: {numbers}"
                )
        if elapsed < self._window_s:
            return finish(
                VerificationStatus.PENDING, f"validating for {self._window_s - elapsed:.0f}s more: {numbers}"
            )

        enough = errors.total >= params.detection.min_requests
        if not enough:
            if elapsed < self._max_wait_s:
                return finish(
                    VerificationStatus.PENDING,
                    f"too little traffic to verify yet ({errors.total:.0f} requests, "
                    f"{params.detection.min_requests} needed): {numbers}",
                )
            return finish(
                VerificationStatus.FAILED,
                f"unverifiable: only {errors.total:.0f} requests in {elapsed:.0f}s "
                f"({params.detection.min_requests} needed); check the service by hand",
            )
        problems = []
        if rate is not None and rate > slo.max_error_rate:
            problems.append(f"error rate {_pct(rate)} above the SLO {_pct(slo.max_error_rate)}")
        if p95 is not None and p95 > slo.max_p95_ms:
            problems.append(f"P95 {_ms(p95)} above the ceiling {_ms(slo.max_p95_ms)}")
        if self._health_ok is False:
            problems.append("health endpoints failing at the end of the window")
        if available is False:
            if elapsed < self._max_wait_s:
                return finish(
                    VerificationStatus.PENDING, f"waiting for the Deployment to be fully available: {numbers}"
                )
            problems.append("the Deployment is not fully available")
        if problems:
            return finish(VerificationStatus.FAILED, "; ".join(problems) + f": {numbers}")
        health_text = "health endpoints 2xx" if self._health_ok else "no health endpoints configured"
        avail_text = "Deployment fully available" if available else "availability not checked"
        return finish(
            VerificationStatus.VERIFIED,
            f"rollback verified after {elapsed:.0f}s: {numbers}; {health_text}; {avail_text}",
        )
