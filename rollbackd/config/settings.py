"""The configuration model: one YAML file plus ``ROLLBACKD_…`` environment overrides.

Every value has a documented default; per-target ``slo``, ``policy``, ``detection`` and ``queries``
override the top-level ``defaults`` key by key. Models are frozen: derive variants with
``model_copy(update=...)``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollbackd.model import Strategy


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SloSettings(_Frozen):
    """Service level objective a release must keep."""

    max_error_rate: float = Field(0.01, gt=0, lt=1, description="Highest acceptable fraction of failed requests (0.01 = 1%).")
    max_p95_ms: float = Field(500.0, gt=0, description="Highest acceptable 95th percentile latency, in milliseconds.")


class SloOverride(_Frozen):
    max_error_rate: float | None = Field(None, gt=0, lt=1)
    max_p95_ms: float | None = Field(None, gt=0)


class SeveritySettings(_Frozen):
    """When a breach is severe (immediate rollback) rather than manageable (controlled)."""

    error_rate_factor: float = Field(5.0, gt=1, description="Error rate at or above this multiple of the SLO is severe.")
    p95_factor: float = Field(2.0, gt=1, description="P95 at or above this multiple of the SLO ceiling is severe.")
    health_failure_severe: bool = Field(True, description="A failing health endpoint of the new version is severe.")


class DetectionSettings(_Frozen):
    """How much evidence the detectors want before they call a breach."""

    window_s: float = Field(60.0, gt=0, description="Sliding window of recent intervals judged together, in seconds.")
    baseline_window_s: float = Field(600.0, gt=0, description="History of the baseline kept for blue-green and rolling comparisons, in seconds.")
    confirm_intervals: int = Field(2, ge=2, description="Consecutive bad intervals needed before a breach counts (one bad interval is noise).")
    confidence: float = Field(0.99, gt=0.5, lt=1, description="Statistical confidence required to call a breach or attribute it to the candidate.")
    min_requests: int = Field(50, ge=1, description="Fewest candidate requests in the window for a metric verdict; fewer is inconclusive.")
    min_latency_samples: int = Field(50, ge=1, description="Fewest latency observations in the window for a P95 verdict.")


class DetectionOverride(_Frozen):
    window_s: float | None = Field(None, gt=0)
    baseline_window_s: float | None = Field(None, gt=0)
    confirm_intervals: int | None = Field(None, ge=2)
    confidence: float | None = Field(None, gt=0.5, lt=1)
    min_requests: int | None = Field(None, ge=1)
    min_latency_samples: int | None = Field(None, ge=1)


class PolicySettings(_Frozen):
    """The decision framework's knobs."""

    controlled_grace_s: float = Field(120.0, ge=0, description="How long a manageable breach may last before a controlled rollback.")
    cooldown_s: float = Field(600.0, ge=0, description="After a rollback of a target, no new rollback of it for this long.")
    max_rollbacks_per_hour: int = Field(3, ge=0, description="Cap on automatic rollbacks per hour, across all targets.")
    rollback_risk: Literal["low", "high"] = Field("low", description="Risk of rolling back; 'high' (e.g. an irreversible migration) means escalate instead.")


class PolicyOverride(_Frozen):
    controlled_grace_s: float | None = Field(None, ge=0)
    cooldown_s: float | None = Field(None, ge=0)
    rollback_risk: Literal["low", "high"] | None = None


class QuerySettings(_Frozen):
    """PromQL templates. Placeholders: ``{selector}`` (label matchers chosen by rollbackd),
    ``{by}`` (the grouping labels) and ``{window}`` (the evaluation interval, e.g. ``10s``)."""

    requests: str = Field(
        'sum by ({by}) (increase(http_requests_total{{{selector}}}[{window}]))',
        description="Requests served per series over the interval.",
    )
    errors: str = Field(
        'sum by ({by}) (increase(http_requests_total{{{selector},code=~"5.."}}[{window}]))',
        description="Failed requests per series over the interval.",
    )
    latency_buckets: str = Field(
        'sum by ({by}, le) (increase(http_request_duration_seconds_bucket{{{selector}}}[{window}]))',
        description="Latency histogram buckets per series over the interval.",
    )
    group_labels: tuple[str, ...] = Field(
        ("namespace", "deployment"),
        description="Labels that tell the baseline and candidate series apart (used for {by} and {selector}).",
    )


class QueryOverride(_Frozen):
    requests: str | None = None
    errors: str | None = None
    latency_buckets: str | None = None
    group_labels: tuple[str, ...] | None = None


class HealthSettings(_Frozen):
    timeout_s: float = Field(2.0, gt=0, description="Timeout of one health probe.")
    concurrency: int = Field(100, ge=1, description="Most probes in flight at once.")


class PrometheusSettings(_Frozen):
    url: str = Field("http://prometheus:9090", description="Base URL of the Prometheus HTTP API.")
    timeout_s: float = Field(5.0, gt=0, description="Timeout of one query.")
    retries: int = Field(2, ge=0, description="Retries of a failed query (temporary errors only).")
    backoff_initial_s: float = Field(0.2, gt=0)
    backoff_max_s: float = Field(2.0, gt=0)


class HttpSettings(_Frozen):
    host: str = Field("0.0.0.0", description="Address of the HTTP server (/healthz, /readyz, /metrics, API).")
    port: int = Field(8080, ge=0, le=65535)


class LogSettings(_Frozen):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class SafetySettings(_Frozen):
    dry_run: bool = Field(False, description="Decide and publish, but never act.")
    freeze: bool = Field(False, description="Global freeze: no automatic rollback anywhere.")


class Defaults(_Frozen):
    slo: SloSettings = SloSettings()
    severity: SeveritySettings = SeveritySettings()
    detection: DetectionSettings = DetectionSettings()
    policy: PolicySettings = PolicySettings()
    queries: QuerySettings = QuerySettings()


class Side(_Frozen):
    """How to find one side's series: the Deployment name (matched on the ``deployment`` group
    label) and optional extra label values; health endpoints as full URLs."""

    deployment: str = Field(..., min_length=1)
    labels: dict[str, str] = Field(default_factory=dict)
    health: tuple[str, ...] = ()


class TargetSettings(_Frozen):
    """One release to watch."""

    name: str = Field(..., min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    namespace: str = Field("default", min_length=1, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    strategy: Strategy
    baseline: Side | None = Field(None, description="The version to go back to (stable / the old colour).")
    candidate: Side = Field(..., description="The new version being judged.")
    ingress: str | None = Field(None, description="canary: the canary Ingress.")
    service: str | None = Field(None, description="blue-green: the Service whose selector picks the colour.")
    slo: SloOverride = SloOverride()
    detection: DetectionOverride = DetectionOverride()
    policy: PolicyOverride = PolicyOverride()
    queries: QueryOverride = QueryOverride()

    @model_validator(mode="after")
    def _strategy_fields(self) -> TargetSettings:
        if self.strategy is Strategy.CANARY:
            if self.baseline is None:
                raise ValueError("strategy 'canary' needs 'baseline' (the stable Deployment)")
            if not self.ingress:
                raise ValueError("strategy 'canary' needs 'ingress' (the canary Ingress)")
        if self.strategy is Strategy.BLUE_GREEN:
            if self.baseline is None:
                raise ValueError("strategy 'blue-green' needs 'baseline' (the previous colour's Deployment)")
            if not self.service:
                raise ValueError("strategy 'blue-green' needs 'service' (the Service that selects the colour)")
        return self

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class Settings(_Frozen):
    """The whole configuration file."""

    interval_s: float = Field(10.0, gt=0, description="Seconds between evaluations of every target.")
    prometheus: PrometheusSettings = PrometheusSettings()
    health: HealthSettings = HealthSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    safety: SafetySettings = SafetySettings()
    defaults: Defaults = Defaults()
    targets: tuple[TargetSettings, ...] = ()

    @model_validator(mode="after")
    def _unique_targets(self) -> Settings:
        seen: set[str] = set()
        for target in self.targets:
            if target.key in seen:
                raise ValueError(f"target {target.key} is listed twice")
            seen.add(target.key)
        return self
