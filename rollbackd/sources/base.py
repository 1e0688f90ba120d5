"""What a source is: the small protocols the daemon wires together, and how a target's series
are found. Sources do I/O; everything here is plain data."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from rollbackd.model import HealthCheck, Sample


@dataclass(frozen=True, slots=True)
class QueryTemplates:
    """PromQL templates with ``{selector}``, ``{by}`` and ``{window}`` placeholders.

    ``pod_prefix``: ``(group label, pod label)`` when the series carry no such group label but pod
    names: the selector matches that group label's values as the pods' name prefix
    (``<value>-<hash>-<suffix>``), and the templates derive the group label with ``label_replace``.
    ``bucket_unit_s``: seconds per unit of the latency buckets' ``le``.
    """

    requests: str
    errors: str
    latency_buckets: str
    group_labels: tuple[str, ...]
    pod_prefix: tuple[str, str] | None = None
    bucket_unit_s: float = 1.0


@dataclass(frozen=True, slots=True)
class SeriesRef:
    """The label values (one per group label, in ``group_labels`` order) naming one side's series."""

    labels: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SourceTarget:
    """One target as the sources see it."""

    key: str
    queries: QueryTemplates
    candidate: SeriesRef
    baseline: SeriesRef | None = None
    health_baseline: tuple[str, ...] = ()
    health_candidate: tuple[str, ...] = ()


#: Per target key: (baseline, candidate); ``None`` on a side means no data this tick.
SidePair = tuple[Sample | None, Sample | None]


class MetricsSource(Protocol):
    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        """One batch of queries per tick for all ``targets``; every target key is in the result."""
        ...


@runtime_checkable
class RejectsData(Protocol):
    """A metrics source that rejects impossible values says why (see :mod:`rollbackd.plausibility`)."""

    @property
    def rejected(self) -> Mapping[str, str]:
        """Per target key, why its latest collection was rejected (side, field and value)."""
        ...


@runtime_checkable
class ReportsOutage(Protocol):
    """A metrics source that says when its backend gave no answer at all."""

    @property
    def outage(self) -> str | None:
        """Why the latest collection got no answer from the backend (every query failed), or
        ``None`` when it answered."""
        ...


@runtime_checkable
class ReportsFailures(Protocol):
    """A metrics source whose collection can fail in part without raising (some of its queries got
    no answer: those targets' data is missing) says so."""

    @property
    def failure(self) -> str | None:
        """Why some queries of the latest collection got no answer; ``None`` when all did."""
        ...


#: Per target key, its past intervals, oldest first: ``(Unix time, (baseline, candidate))``, each
#: counted over the step before its time.
History = Mapping[str, tuple[tuple[float, SidePair], ...]]


@runtime_checkable
class GivesHistory(Protocol):
    """A metrics source that can also say what its targets' series were in the past (Prometheus'
    ``query_range``): what a target's "before" is when the process did not watch it."""

    async def history(
        self, targets: Sequence[SourceTarget], *, step_s: float, range_s: float, end_s: float
    ) -> History:
        """Per target key, its intervals over ``range_s`` seconds up to the Unix time ``end_s``,
        one every ``step_s`` seconds (at least: a source may need longer steps), in one batch for
        all ``targets``. Targets whose history could not be read are absent; times without data
        are left out."""
        ...


class HealthSource(Protocol):
    async def probe(self, urls: Sequence[str]) -> tuple[HealthCheck, ...]:
        """Probe every URL concurrently; unreachable endpoints give ``status=None``."""
        ...
