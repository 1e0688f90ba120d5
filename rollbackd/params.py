"""Plain frozen parameter values handed to the pure core (detectors and decision).

Each tunable is declared here (and the SLO in :class:`rollbackd.model.Slo`), once, with its
default, bounds and description (:func:`rollbackd.knobs.knob`); the configuration layer derives
its settings from these declarations and resolves them back into these values. The core never
sees pydantic or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rollbackd.knobs import (
    DAY,
    MAX_CONFIRM_INTERVALS,
    MAX_COUNT,
    MAX_FACTOR,
    MAX_ROLLBACKS_PER_HOUR,
    MIN_PERIOD_S,
    WEEK,
    knob,
)
from rollbackd.model import Risk, Slo, Strategy


@dataclass(frozen=True, slots=True)
class Severity:
    """When a breach is severe (immediate rollback) rather than manageable (controlled)."""

    error_rate_factor: float = knob(
        5.0,
        "Error rate at or above this multiple of the SLO is severe.",
        gt=1,
        le=MAX_FACTOR,
        per_target=False,
    )
    p95_factor: float = knob(
        2.0,
        "P95 at or above this multiple of the SLO ceiling is severe.",
        gt=1,
        le=MAX_FACTOR,
        per_target=False,
    )
    health_failure_severe: bool = knob(
        True, "A failing health endpoint of the new version is severe.", per_target=False
    )


@dataclass(frozen=True, slots=True)
class Detection:
    """How much evidence the detectors want before they call a breach."""

    window_s: float = knob(
        600.0, "Sliding window of recent intervals judged together, in seconds.", ge=MIN_PERIOD_S, le=DAY
    )
    baseline_window_s: float = knob(
        600.0,
        "History of the baseline kept for blue-green and rolling comparisons, in seconds.",
        ge=MIN_PERIOD_S,
        le=DAY,
    )
    confirm_intervals: int = knob(
        2,
        "Consecutive bad intervals needed before a breach counts (one bad interval is noise).",
        ge=2,
        le=MAX_CONFIRM_INTERVALS,
    )
    confidence: float = knob(
        0.99,
        "Statistical confidence required to call a breach or attribute it to the candidate.",
        gt=0.5,
        lt=1,
    )
    min_requests: int = knob(
        50,
        "Fewest candidate requests in the window for a metric verdict; fewer is inconclusive.",
        ge=1,
        le=MAX_COUNT,
    )
    min_latency_samples: int = knob(
        50, "Fewest latency observations in the window for a P95 verdict.", ge=1, le=MAX_COUNT
    )
    attribution_ratio: float = knob(
        1.5,
        "A breach is blamed on the candidate only when its bad fraction is significantly above this"
        " multiple of the baseline's.",
        ge=1,
        le=MAX_FACTOR,
    )


@dataclass(frozen=True, slots=True)
class Policy:
    """The decision framework's knobs."""

    controlled_grace_s: float = knob(
        120.0, "How long a manageable breach may last before a controlled rollback.", ge=0, le=WEEK
    )
    cooldown_s: float = knob(
        600.0, "After a rollback of a target, no new rollback of it for this long.", ge=0, le=WEEK
    )
    max_rollbacks_per_hour: int = knob(
        3,
        "Cap on automatic rollbacks per hour, across all targets.",
        ge=0,
        le=MAX_ROLLBACKS_PER_HOUR,
        per_target=False,
    )
    rollback_risk: Risk = knob(
        Risk.LOW, "Risk of rolling back; 'high' (e.g. an irreversible migration) means escalate instead."
    )
    accept_after_s: float = knob(
        0.0,
        "Accept a release that has run this long since it started without an open breach episode:"
        " it is then watched for the next release, not judged. 0: never by time (only by the"
        " accept operator action or the next release).",
        ge=0,
        le=WEEK,
    )


@dataclass(frozen=True, slots=True)
class TargetParams:
    """Everything the core needs to judge one target."""

    key: str
    strategy: Strategy
    interval_s: float
    slo: Slo = field(default_factory=Slo)
    severity: Severity = field(default_factory=Severity)
    detection: Detection = field(default_factory=Detection)
    policy: Policy = field(default_factory=Policy)
