"""Domain values shared by every layer: frozen, slotted, free of I/O.

The flow is one-way: sources produce :class:`Observation`, detectors turn a window of them into
:class:`Evidence`, the decision framework turns evidence plus :class:`Context` into a
:class:`Decision`. Missing data is always ``None``, never zero.
"""

from __future__ import annotations

import bisect
import enum
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from rollbackd.knobs import HOUR, knob

#: Prometheus' default histogram bucket upper bounds, in seconds (``+Inf`` last).
DEFAULT_BUCKETS_S: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    math.inf,
)


class Strategy(enum.StrEnum):
    CANARY = "canary"
    BLUE_GREEN = "blue-green"
    DEPLOYMENT = "deployment"
    #: An Argo Rollouts ``Rollout`` (canary or blueGreen): rolled back by aborting it.
    ARGO_ROLLOUT = "argo-rollout"
    #: A release rollbackd does not know how to undo by itself: rolled back by a configured command.
    COMMAND = "command"
    #: A change of ConfigMaps' data: rolled back by restoring their previous data and restarting
    #: the Deployments that read them.
    CONFIG = "config"
    #: A feature flag turned on: rolled back by turning it off (over HTTP or SQL).
    FEATURE_FLAG = "feature-flag"


#: The strategies whose new version serves all the traffic of one series: judged against the
#: target's own past (no concurrent baseline), and verified on that same series.
OWN_PAST: frozenset[Strategy] = frozenset(
    {Strategy.DEPLOYMENT, Strategy.FEATURE_FLAG, Strategy.COMMAND, Strategy.CONFIG}
)


class Impact(enum.StrEnum):
    NONE = "none"
    MANAGEABLE = "manageable"
    SEVERE = "severe"


class Outcome(enum.StrEnum):
    IMMEDIATE = "immediate"
    CONTROLLED = "controlled"
    NONE = "none"
    INCONCLUSIVE = "inconclusive"


class Risk(enum.StrEnum):
    LOW = "low"
    HIGH = "high"


class Attribution(enum.StrEnum):
    """Who a proven breach is blamed on.

    ``attributable``: the new version is significantly worse than its baseline; ``pending``: the
    baseline is within the SLO but the new version is not (yet) significantly worse than it (low
    traffic: the evidence is not in); ``baseline-degraded``: the baseline itself is beyond the SLO
    (likely a platform incident); ``no-baseline``: no baseline with enough traffic to compare with.
    """

    ATTRIBUTABLE = "attributable"
    PENDING = "pending"
    BASELINE_DEGRADED = "baseline-degraded"
    NO_BASELINE = "no-baseline"


# --- quantiles of cumulative bucket histograms, computed exactly as PromQL's histogram_quantile ---

#: Bucket bounds already checked, with the verdict. Histograms share a handful of bound tuples (one
#: per bucket layout), so checking each layout once takes the checks out of the per-tick work.
_CHECKED: dict[tuple[float, ...], bool] = {}
_CHECKED_MAX = 256


def bounds_ok(bounds_s: Sequence[float]) -> bool:
    """Whether ``bounds_s`` can hold a histogram: two or more strictly ascending bounds, no NaN,
    ``+Inf`` last."""
    key = bounds_s if type(bounds_s) is tuple else None
    if key is not None:
        known = _CHECKED.get(key)
        if known is not None:
            return known
    ok = (
        len(bounds_s) >= 2
        and bounds_s[-1] == math.inf
        and not any(math.isnan(b) for b in bounds_s)
        and all(b1 < b2 for b1, b2 in itertools.pairwise(bounds_s))
    )
    if key is not None:
        if len(_CHECKED) >= _CHECKED_MAX:
            _CHECKED.clear()
        _CHECKED[key] = ok
    return ok


def percent(fraction: float | None) -> str:
    """A fraction as a percentage for people: two decimals (``1.00%``, ``0.20%``), and two
    significant digits below 0.1% so a tiny SLO never reads ``0.00%`` (``0.0050%``); ``n/a`` for
    ``None``."""
    if fraction is None:
        return "n/a"
    pct = fraction * 100
    if pct == 0 or not math.isfinite(pct) or abs(pct) >= 0.1:
        return f"{pct:.2f}%"
    return f"{pct:#.2g}%"


def histogram_quantile(q: float, bounds_s: Sequence[float], counts: Sequence[float]) -> float | None:
    """The ``q``-quantile (0 ≤ q ≤ 1) of a cumulative histogram, in the unit of ``bounds_s``.

    ``bounds_s`` are the bucket upper bounds in ascending order, the last one ``+Inf``; ``counts``
    the cumulative observation counts per bucket. As in Prometheus, the quantile is interpolated
    linearly within the bucket it falls in (the lowest bucket is taken to start at 0 when its bound
    is positive), a quantile landing in the ``+Inf`` bucket gives the highest finite bound, and
    counts that decrease (an artefact of ``increase()`` extrapolation) are made monotonic first.

    Returns ``None`` when there is no answer: no observations, fewer than two buckets, no ``+Inf``
    bucket, mismatched lengths, NaN or infinite counts (or counts whose sum overflows), or ``q``
    outside [0, 1] or NaN.
    """
    if not 0 <= q <= 1:  # NaN included
        return None
    if len(bounds_s) != len(counts) or not bounds_ok(bounds_s):
        return None
    total = sum(counts)
    if not math.isfinite(total):  # NaN or infinite counts (or a sum too large for a float)
        return None

    monotonic = list(itertools.accumulate(counts, max))
    last = len(monotonic) - 1
    observations = monotonic[last]
    if observations <= 0:
        return None

    rank = q * observations
    # The first bucket (excluding +Inf) whose cumulative count reaches the rank; +Inf otherwise.
    b = bisect.bisect_left(monotonic, rank, 0, last)
    if b == last:
        return float(bounds_s[-2])
    if b == 0 and bounds_s[0] <= 0:
        return float(bounds_s[0])

    bucket_start = 0.0
    bucket_end = float(bounds_s[b])
    count = monotonic[b]
    if b > 0:
        bucket_start = float(bounds_s[b - 1])
        count -= monotonic[b - 1]
        rank -= monotonic[b - 1]
    if count <= 0:
        return bucket_start
    return bucket_start + (bucket_end - bucket_start) * (rank / count)


@dataclass(frozen=True, slots=True)
class Histogram:
    """Cumulative latency bucket counts over one interval, ``bounds_s`` ascending, ``+Inf`` last."""

    bounds_s: tuple[float, ...]
    counts: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.bounds_s) != len(self.counts):
            raise ValueError("histogram bounds and counts differ in length")

    @property
    def total(self) -> float:
        return self.counts[-1] if self.counts else 0.0


@dataclass(frozen=True, slots=True)
class Sample:
    """What one side (baseline or candidate) served during one interval.

    ``requests`` and ``errors`` are counts over the interval; ``latency`` is ``None`` when the
    histogram was missing; ``p95_ms`` is the source's own quantile (informational).
    """

    requests: float
    errors: float
    latency: Histogram | None = None
    p95_ms: float | None = None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests > 0 else None

    def scaled(self, factor: float) -> Sample:
        """The same traffic mix with every count multiplied by ``factor`` (e.g. counts over a longer
        query window brought back to one interval)."""
        if factor == 1.0:
            return self
        latency = None
        if self.latency is not None:
            latency = Histogram(self.latency.bounds_s, tuple(c * factor for c in self.latency.counts))
        return Sample(self.requests * factor, self.errors * factor, latency, self.p95_ms)


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """One health probe result. ``status`` is ``None`` when the endpoint could not be reached."""

    path: str
    status: int | None
    latency_ms: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True, slots=True)
class Observation:
    """One tick for one target. ``t`` is seconds (event-loop time in the daemon, scenario time in
    replay). ``None`` on a side means no data for that side this tick (a gap, not zero traffic, or
values the source ``rejected``).
    ``health_*`` is ``None`` when no probe is configured or it was not run."""

    target: str
    t: float
    baseline: Sample | None
    candidate: Sample | None
    health_baseline: tuple[HealthCheck, ...] | None = None
    health_candidate: tuple[HealthCheck, ...] | None = None
    #: Why the source rejected this tick's metrics as values no real service produces (side,
    #: field and value); both sides are then ``None``. ``None`` when it rejected nothing.
    rejected: str | None = None


@dataclass(frozen=True, slots=True)
class Slo:
    """Service level objective a release must keep."""

    max_error_rate: float = knob(
        0.01, "Highest acceptable fraction of failed requests (0.01 = 1%).", gt=0, lt=1
    )
    max_p95_ms: float = knob(
        500.0, "Highest acceptable 95th percentile latency, in milliseconds.", gt=0, le=HOUR * 1000
    )


class Conclusion(enum.StrEnum):
    """What a finding concludes, which its ``confidence`` is the confidence of.

    ``breach``: the SLO is breached (proven above it); ``unproven``: the latest intervals are above
    the SLO, not proven (the confidence that they are above it is below the required level);
    ``within-lately``: the latest intervals are within the SLO though the window as a whole is
    above it (earlier bad intervals: the confidence that the latest are within it); ``within``:
    the window is within the SLO (the confidence that it is).
    """

    BREACH = "breach"
    UNPROVEN = "unproven"
    WITHIN_LATELY = "within-lately"
    WITHIN = "within"


@dataclass(frozen=True, slots=True)
class Finding:
    """One measured signal against its threshold, with the statistics behind it: ``confidence``
    is the confidence of its ``conclusion`` (derived from ``breached`` and the value when not
    given)."""

    signal: str  # "error_rate" | "p95" | "health"
    value: float | None
    threshold: float
    breached: bool
    severe: bool
    attributable: bool
    confidence: float
    baseline_value: float | None = None
    detail: str = ""
    #: Estimated start of the breach (the first interval of the proven run), if breached.
    since: float | None = None
    #: Who the breach is blamed on, if breached (``None``: derived from ``attributable``).
    attribution: Attribution | None = None
    #: What the finding concludes (``None``: a breach when breached, else unproven above the
    #: threshold, within it at or below).
    conclusion: Conclusion | None = None

    def __post_init__(self) -> None:
        if self.conclusion is None:
            if self.breached:
                conclusion = Conclusion.BREACH
            elif self.value is not None and self.value > self.threshold:
                conclusion = Conclusion.UNPROVEN
            else:
                conclusion = Conclusion.WITHIN
            object.__setattr__(self, "conclusion", conclusion)
        if self.breached and self.attribution is None:
            blame = Attribution.ATTRIBUTABLE if self.attributable else Attribution.BASELINE_DEGRADED
            object.__setattr__(self, "attribution", blame)


@dataclass(frozen=True, slots=True)
class Evidence:
    """What the detectors concluded for one target at one tick."""

    target: str
    t: float
    impact: Impact
    attributable: bool
    inconclusive: bool
    findings: tuple[Finding, ...] = ()
    reasons: tuple[str, ...] = ()
    candidate_requests: float = 0.0
    baseline_requests: float = 0.0
    #: Every conclusive signal's point estimate is within the SLO (recovery, not just "unproven").
    within_slo: bool = False
    #: Estimated start of the breach (earliest onset among the attributable findings).
    since: float | None = None
    #: Who the breach is blamed on, if breached (``None`` without a breach; when not given, it is
    #: derived from ``attributable``: attributable, or baseline degraded).
    attribution: Attribution | None = None
    #: Recovery from the latest proven breach is proven: since the breach was last proven, every
    #: metric signal with data is within the SLO at the configured confidence (also ``True`` when
    #: no breach was proven since the judge started or last saw a recovery proven). Missing data
    #: never proves a recovery.
    recovered: bool = False

    def __post_init__(self) -> None:
        if self.impact is not Impact.NONE and self.attribution is None:
            blame = Attribution.ATTRIBUTABLE if self.attributable else Attribution.BASELINE_DEGRADED
            object.__setattr__(self, "attribution", blame)

    @property
    def breached(self) -> bool:
        return self.impact is not Impact.NONE


@dataclass(frozen=True, slots=True)
class Episode:
    """A breach episode of one target, as the decision framework keeps it: it opens on a proven
    breach and closes only when recovery is proven (:attr:`Evidence.recovered`), never on a tick
    that merely fails to prove the breach again, nor on missing data."""

    #: The tick on which it opened (identifies the episode).
    opened_at: float
    #: Estimated start of the breach (the earliest estimate so far).
    onset: float
    #: The worst level proven in it (manageable or severe).
    impact: Impact
    #: Who it is blamed on: the latest proven attribution, except that "pending" does not take
    #: the place of an attribution already proven in the episode.
    attribution: Attribution
    #: The latest tick on which the breach was proven.
    proven_at: float


@dataclass(frozen=True, slots=True)
class Hold:
    """A fix-forward hold: do not roll back before ``until`` (same clock as observations)."""

    until: float
    reason: str = "fix-forward"
    set_at: float | None = None


#: How the core writes a time into the reasons and details it gives people: a time on the
#: observations' clock in, text out.
TimeText = Callable[[float], str]


def scenario_time(t: float) -> str:
    """A time as a recording's seconds, ``t=210s``: what ``rollbackd replay`` says (its times are
    the scenario's); the daemon writes wall-clock UTC instead (its times are the event loop's)."""
    return f"t={t:g}s"


#: The annotation the config lever writes on a ConfigMap whose data it puts back: the
#: ``resourceVersion`` of the version it replaced (the one judged bad). The ConfigMap watch knows by
#: it that the change it sees next is that restore, not a release.
RESTORED_FROM_ANNOTATION = "rollbackd.io/restored-from"


@dataclass(frozen=True, slots=True)
class ConfigMapVersion:
    """One version of a ConfigMap's data as rollbackd saw it (Kubernetes keeps no history of a
    ConfigMap): where it is, its ``resourceVersion``, its data, and when it was first seen."""

    namespace: str
    name: str
    resource_version: str
    data: Mapping[str, str] = field(default_factory=dict)
    seen_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Watch:
    """The post-rollback watch of a target: from its rollback's verification (``since``) to
    ``until`` (same clock as observations), a new degradation escalates instead of rolling back
    a second time."""

    since: float
    until: float


@dataclass(frozen=True, slots=True)
class Context:
    """Everything outside the metrics that the decision framework weighs."""

    rollback_risk: Risk = Risk.LOW
    risk_reason: str = ""
    hold: Hold | None = None
    newer_rollout_in_progress: bool = False
    rollback_in_progress: bool = False
    has_rollback_target: bool = True
    frozen: bool = False
    dry_run: bool = False
    #: This replica is not the leader (leader election): it judges and decides, never acts.
    standby: bool = False
    #: Why the audit trail cannot be written now (the store is down): decide, never act.
    audit_problem: str | None = None
    #: How the release was accepted ("accepted by alice: reason", "accepted after 1h ..."): not
    #: judged until the next revision; ``None`` while it is judged.
    accepted: str | None = None
    cooldown_until: float | None = None
    #: The post-rollback watch under way, if any.
    watch: Watch | None = None
    rollbacks_last_hour: int = 0
    max_rollbacks_per_hour: int = 3
    #: How the reasons write a time (the daemon: wall-clock UTC; replay: the scenario's seconds).
    time_text: TimeText = scenario_time


@dataclass(frozen=True, slots=True)
class Decision:
    """The framework's verdict at one tick. ``rollback`` is True only when the daemon should act
    now (or would, in dry-run). ``reasons`` are human-readable, with values and thresholds."""

    target: str
    t: float
    outcome: Outcome
    rollback: bool
    reasons: tuple[str, ...]
    evidence: Evidence | None = None
    escalate: bool = False
    waiting_since: float | None = None
    blocked_by: str | None = None
    dry_run: bool = False
    #: The breach episode open at this tick (``None`` when none is).
    episode: Episode | None = None
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)
