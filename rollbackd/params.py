"""Plain frozen parameter values handed to the pure core (detectors and decision).

The configuration layer resolves defaults and per-target overrides into these; the core never
sees pydantic or the environment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rollbackd.model import Risk, Slo, Strategy


@dataclass(frozen=True, slots=True)
class Severity:
    error_rate_factor: float = 5.0
    p95_factor: float = 2.0
    health_failure_severe: bool = True


@dataclass(frozen=True, slots=True)
class Detection:
    window_s: float = 600.0
    baseline_window_s: float = 600.0
    confirm_intervals: int = 2
    confidence: float = 0.99
    min_requests: int = 50
    min_latency_samples: int = 50
    attribution_ratio: float = 1.5


@dataclass(frozen=True, slots=True)
class Policy:
    controlled_grace_s: float = 120.0
    cooldown_s: float = 600.0
    max_rollbacks_per_hour: int = 3
    rollback_risk: Risk = Risk.LOW


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
