"""Two baseline judges for the detection benchmark, modelled on the public documentation of
Argo Rollouts' analysis and Flagger's canary analysis.

Each judge reads a scenario the way the tool would see the release: only ``ticks``, ``slo``,
``interval_s``, ``kind`` and ``deploy_at_s`` (never ``expect``, ``policy`` or ``context``: neither
tool has a notion of rollback risk, fix-forward holds or controlled rollbacks). Each returns the
replay contract object of ``rollbackd replay``::

    {"scenario", "decision": "rollback" | "none", "mode": "immediate" | None,
     "decided_at_s": t | None, "reason"}

An Argo abort or a Flagger rollback sends all traffic back to the stable version at once, so the
mode is always ``immediate``.

Configuration a typical user of each tool would write, per its documentation
---------------------------------------------------------------------------

Both judges measure the candidate on every scenario tick (10 s in the shipped scenarios), over a
1-minute query window, with the scenario's SLO as the thresholds:

* a 10 s analysis interval is the shortest one in Flagger's tutorials (Gloo,
  https://docs.flagger.app/tutorials/gloo-progressive-delivery: ``interval: 10s``, ``threshold: 5``,
  metric ``interval: 1m``); it gives both tools their fastest reaction on this data, so
  time-to-decision comparisons are not dominated by cadence;
* the 1-minute window is Flagger's documented metric ``interval`` (the range of its PromQL
  queries), and the same PromQL window is used for Argo so both baselines see the same numbers.
  Counts inside the window are summed, which is what ``sum(increase(...[1m]))`` ratios give.
  Measurements overlap: one bad 10 s interval stays in the next six measurements;
* the error rate must stay at or under ``slo.max_error_rate`` (Flagger's built-in
  ``request-success-rate`` with ``thresholdRange.min = 100 * (1 - max_error_rate)``, i.e. 99 %);
* the P95 latency, ``histogram_quantile(0.95, …)`` over the window's buckets, must stay at or
  under ``slo.max_p95_ms``. Flagger's built-in ``request-duration`` is a P99; since the SLO is
  stated on P95, the Flagger user here writes the documented custom ``MetricTemplate`` for P95.

Argo Rollouts (https://argo-rollouts.readthedocs.io/en/stable/features/analysis/): an
AnalysisTemplate with two metrics, ``error-rate`` (``successCondition: result[0] <= SLO``) and
``p95-latency`` (``successCondition: result[0] <= ceiling``), ``interval: 10s``, ``failureLimit: 3``
(the value in every example of the analysis page; the default is 0), ``consecutiveErrorLimit``
left at its default of 4 (``utils/defaults``), no ``inconclusiveLimit`` needed: with only a
success condition a measurement is either Successful or Failed, never Inconclusive. Semantics, from
the docs and ``analysis/analysis.go``:

* every metric counts its own measurements; a metric fails when ``failed > failureLimit``
  (failures are counted over the whole run: a passing measurement does not reset them);
* a query returning no data (an empty vector) makes ``result[0]`` fail to evaluate: the
  measurement is an *Error*, not a failure; a Successful or Failed measurement resets the
  consecutive error count, and a metric errors out when ``consecutiveErrors > consecutiveErrorLimit``;
* a NaN result (zero requests in the window: 0/0) is a *Failed* measurement with a plain
  ``successCondition`` (the docs' "Handling Metric Results / NaN and Infinity" section);
* a Failed or Errored AnalysisRun aborts the rollout (``rollout/analysis.go``): for blue-green
  the post-promotion analysis switches traffic back; for a canary the weight goes back to zero.

Flagger (https://docs.flagger.app/usage/deployment-strategies and
https://docs.flagger.app/usage/metrics): ``analysis.interval: 10s``, ``threshold: 5``, metrics
``request-success-rate`` (min 99) and a P95 ``request-duration``-style template (max = ceiling),
both with ``interval: 1m``. Semantics, from the docs and ``pkg/controller/scheduler.go`` /
``scheduler_metrics.go``:

* on each run Flagger first checks whether ``failedChecks >= threshold`` and, if so, rolls back;
  otherwise it runs the metric checks, and the first failing check halts advancement and
  increments ``failedChecks`` by one. A passing run does not reset the counter (it is reset only
  when a new revision restarts the analysis), so rollback comes ``interval * threshold`` after
  the first failed check, as the docs state;
* the very first run of an analysis only starts it (pre-rollout hooks, first traffic step): the
  metrics are checked from the second run on;
* a query with no values (empty or NaN) is logged as "no values found" and *counts as a failed
  check* (``providers.ErrNoValuesFound`` makes the check return false).

Modelling choices common to both:

* candidate health: both tools rely on Kubernetes readiness. A failing candidate health/readiness
  endpoint in a tick counts as a failed measurement (Argo: a third metric probing readiness, under
  the same ``failureLimit``; Flagger: a failed check). The real controllers halt and wait for the
  progress deadline (600 s by default) instead, so this is the favourable reading for them;
* for blue-green and rolling scenarios the candidate is judged from ``deploy_at_s`` on (Argo's
  post-promotion analysis; Flagger's analysis of the new version); before that there is nothing
  to judge. Canary scenarios start their analysis at ``deploy_at_s`` too;
* the analysis is taken to be configured long enough to cover the whole scenario (enough traffic
  steps / pauses), so a promotion never ends it before the recording does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollbackd.model import DEFAULT_BUCKETS_S, histogram_quantile


@dataclass(frozen=True, slots=True)
class ArgoParams:
    """An Argo Rollouts AnalysisTemplate as a typical user writes it (see the module docstring).

    ``interval_s`` of ``None`` measures on every scenario tick.
    """

    interval_s: float | None = None
    window_s: float = 60.0
    failure_limit: int = 3
    consecutive_error_limit: int = 4


@dataclass(frozen=True, slots=True)
class FlaggerParams:
    """A Flagger ``Canary.spec.analysis`` as a typical user writes it (see the module docstring).

    ``interval_s`` of ``None`` runs the analysis on every scenario tick.
    """

    interval_s: float | None = None
    window_s: float = 60.0
    threshold: int = 5


@dataclass(frozen=True, slots=True)
class WindowQuery:
    """What the two PromQL queries return for the candidate over one window.

    ``None`` is an empty result (no series in the window); NaN is a result with no requests.
    """

    error_rate: float | None
    p95_ms: float | None


def query_window(ticks: Sequence[Mapping[str, Any]], *, start_s: float, end_s: float) -> WindowQuery:
    """The candidate's error rate and P95 over the ticks with ``start_s < t <= end_s``.

    Ticks where the candidate is ``null`` (a scrape gap) contribute nothing; when every tick in
    the window is a gap both results are empty, as Prometheus returns an empty vector.
    """
    requests = 0.0
    errors = 0.0
    buckets: list[float] | None = None
    seen = False
    for tick in ticks:
        t = float(tick["t"])
        if not start_s < t <= end_s:
            continue
        sample = tick.get("candidate")
        if sample is None:
            continue
        seen = True
        requests += float(sample["requests"])
        errors += float(sample["errors"])
        counts = sample.get("latency_buckets")
        if counts is not None:
            if buckets is None:
                buckets = [0.0] * len(counts)
            buckets = [a + float(b) for a, b in zip(buckets, counts, strict=True)]
    if not seen:
        return WindowQuery(error_rate=None, p95_ms=None)
    error_rate = errors / requests if requests > 0 else math.nan
    p95_ms: float | None = None
    if buckets is not None:
        p95_s = histogram_quantile(0.95, DEFAULT_BUCKETS_S, buckets)
        p95_ms = math.nan if p95_s is None else p95_s * 1000.0
    return WindowQuery(error_rate=error_rate, p95_ms=p95_ms)


def candidate_unready(tick: Mapping[str, Any]) -> str | None:
    """A description of the candidate's failing health checks in this tick, or ``None``."""
    health = tick.get("health") or {}
    failing = [
        f"{check.get('path', '?')} -> {check.get('status')}"
        for check in health.get("candidate") or []
        if not (isinstance(check.get("status"), int) and 200 <= check["status"] < 300)
    ]
    return ", ".join(failing) if failing else None


def _analysis_ticks(scenario: Mapping[str, Any], interval_s: float | None) -> list[Mapping[str, Any]]:
    """The ticks on which an analysis run measures: from ``deploy_at_s`` on, every interval."""
    deploy_at = float(scenario.get("deploy_at_s", 0) or 0)
    step = float(interval_s if interval_s is not None else scenario["interval_s"])
    due = deploy_at
    chosen: list[Mapping[str, Any]] = []
    for tick in scenario["ticks"]:
        t = float(tick["t"])
        if t >= due - 1e-9:
            chosen.append(tick)
            due = t + step
    return chosen


def _fmt(value: float | None) -> str:
    if value is None:
        return "no data"
    if math.isnan(value):
        return "NaN"
    return f"{value:.4g}"


def _result(scenario: Mapping[str, Any], *, decided_at_s: float | None, reason: str) -> dict[str, Any]:
    rollback = decided_at_s is not None
    return {
        "scenario": scenario["name"],
        "decision": "rollback" if rollback else "none",
        "mode": "immediate" if rollback else None,
        "decided_at_s": decided_at_s,
        "reason": reason,
    }


@dataclass(slots=True)
class _MetricResult:
    """Argo's per-metric counters (``MetricResult`` in the AnalysisRun status)."""

    failed: int = 0
    successful: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    last: str = ""


def judge_argo(scenario: Mapping[str, Any], *, params: ArgoParams | None = None) -> dict[str, Any]:
    """Replay ``scenario`` through an Argo Rollouts analysis run.

    ``params`` defaults to :class:`ArgoParams` (the typical configuration).
    """
    params = params or ArgoParams()
    slo = scenario["slo"]
    max_error_rate = float(slo["max_error_rate"])
    max_p95_ms = float(slo["max_p95_ms"])
    metrics = {name: _MetricResult() for name in ("error-rate", "p95-latency", "candidate-ready")}

    for tick in _analysis_ticks(scenario, params.interval_s):
        t = float(tick["t"])
        query = query_window(scenario["ticks"], start_s=t - params.window_s, end_s=t)
        # None: the query returned an empty vector, so `result[0]` cannot be evaluated (Error).
        # NaN compares false with everything, so `result[0] <= x` fails (Failed).
        measured: dict[str, tuple[float | None, float]] = {
            "error-rate": (query.error_rate, max_error_rate),
            "p95-latency": (query.p95_ms, max_p95_ms),
        }
        for name, (value, limit) in measured.items():
            result = metrics[name]
            if value is None:
                result.errors += 1
                result.consecutive_errors += 1
                result.last = f"no data at t={t:g}"
            elif value <= limit:
                result.successful += 1
                result.consecutive_errors = 0
            else:
                result.failed += 1
                result.consecutive_errors = 0
                result.last = f"{_fmt(value)} > {limit:g} at t={t:g}"

        if tick.get("health") is not None:
            ready = metrics["candidate-ready"]
            unready = candidate_unready(tick)
            if unready is None:
                ready.successful += 1
            else:
                ready.failed += 1
                ready.last = f"{unready} at t={t:g}"
            ready.consecutive_errors = 0

        for name, result in metrics.items():
            if result.failed > params.failure_limit:
                return _result(
                    scenario,
                    decided_at_s=t,
                    reason=(
                        f"argo: metric {name} failed ({result.failed}) > failureLimit "
                        f"({params.failure_limit}); last {result.last}: rollout aborted"
                    ),
                )
            if result.consecutive_errors > params.consecutive_error_limit:
                return _result(
                    scenario,
                    decided_at_s=t,
                    reason=(
                        f"argo: metric {name} consecutiveErrors ({result.consecutive_errors}) > "
                        f"consecutiveErrorLimit ({params.consecutive_error_limit}); {result.last}: "
                        "analysis Error, rollout aborted"
                    ),
                )

    summary = ", ".join(
        f"{name} {r.successful} ok / {r.failed} failed / {r.errors} errors" for name, r in metrics.items()
    )
    return _result(scenario, decided_at_s=None, reason=f"argo: analysis never failed ({summary})")


def judge_flagger(scenario: Mapping[str, Any], *, params: FlaggerParams | None = None) -> dict[str, Any]:
    """Replay ``scenario`` through a Flagger canary analysis.

    ``params`` defaults to :class:`FlaggerParams` (the typical configuration).
    """
    params = params or FlaggerParams()
    slo = scenario["slo"]
    min_success_pct = 100.0 * (1.0 - float(slo["max_error_rate"]))
    max_p95_ms = float(slo["max_p95_ms"])
    failed_checks = 0
    last_failure = ""
    started = False

    for tick in _analysis_ticks(scenario, params.interval_s):
        t = float(tick["t"])
        if failed_checks >= params.threshold:
            return _result(
                scenario,
                decided_at_s=t,
                reason=(
                    f"flagger: failed checks ({failed_checks}) reached threshold ({params.threshold}); "
                    f"last {last_failure}: rolling back"
                ),
            )
        if not started:
            # The first run starts the analysis (first traffic step); metrics are checked next run.
            started = True
            continue

        unready = candidate_unready(tick)
        if unready is not None:
            failed_checks += 1
            last_failure = f"candidate not ready ({unready}) at t={t:g}"
            continue

        query = query_window(scenario["ticks"], start_s=t - params.window_s, end_s=t)
        failure: str | None = None
        if query.error_rate is None or math.isnan(query.error_rate):
            failure = "no values found for request-success-rate"
        elif 100.0 * (1.0 - query.error_rate) < min_success_pct:
            failure = f"request-success-rate {100.0 * (1.0 - query.error_rate):.2f}% < {min_success_pct:g}%"
        elif query.p95_ms is None or math.isnan(query.p95_ms):
            failure = "no values found for request-duration-p95"
        elif query.p95_ms > max_p95_ms:
            failure = f"request-duration-p95 {query.p95_ms:.0f}ms > {max_p95_ms:g}ms"
        if failure is not None:
            failed_checks += 1
            last_failure = f"{failure} at t={t:g}"

    return _result(
        scenario,
        decided_at_s=None,
        reason=f"flagger: failed checks {failed_checks} < threshold {params.threshold}",
    )


#: The baseline judges by name, each ``judge(scenario) -> result`` with its typical settings.
BASELINES: Mapping[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
    "argo": judge_argo,
    "flagger": judge_flagger,
}
