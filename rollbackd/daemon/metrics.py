"""The daemon's own Prometheus metrics, kept in a dedicated registry (never the global one), so
that several daemons can live in one process (tests) and nothing else leaks into ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from rollbackd.daemon.sinkmetrics import SinkCollector, SinkStatuses
from rollbackd.model import Decision, Outcome

#: The steps of a tick counted in ``rollbackd_tick_errors_total`` when they raise.
TICK_STEPS = ("decide", "verify", "resume", "tick")

#: Buckets of the evaluation duration: from a quick in-memory tick to a slow Prometheus.
_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class DaemonMetrics:
    """Counters, gauges and histograms exported on ``/metrics``.

    - ``rollbackd_evaluations_total``: target evaluations (one per target per tick);
    - ``rollbackd_decisions_total{outcome}``: decisions by outcome
      (immediate / controlled / none / inconclusive);
    - ``rollbackd_rollback_decisions_total{mode}``: decisions to roll back now, by mode
      (immediate / controlled), dry-run ones included;
    - ``rollbackd_source_errors_total{source,kind}``: source failures (``prometheus``, ``health``)
      by kind (``timeout``, ``connection``, ``oversized``, ...; impossible values by theirs:
      ``non_finite``, ``negative``, ``too_large``, ``errors_above_requests``, ``bad_histogram``);
    - ``rollbackd_source_lag_seconds{source}``: how old the newest sample of the latest answer was
      when it was asked (``prometheus``); above ``scrape_interval_s + interval_s``, the answers
      are stale (logged);
    - ``rollbackd_evaluation_errors_total``: target evaluations that raised (a bug; logged);
    - ``rollbackd_tick_errors_total{step}``: other steps of a tick that raised (a bug; logged with
      the target) and were skipped, the daemon going on: ``decide`` (one target's decision, its
      record and events), ``verify`` (one target's verification), ``resume`` (taking over the
      rollbacks a previous process left), ``tick`` (the rest of a tick);
    - ``rollbackd_evaluation_duration_seconds``: duration of one tick (collection and evaluation);
    - ``rollbackd_collection_duration_seconds``: the part of a tick spent collecting the data
      (Prometheus' queries and reading their answers, the health probes), the rest being judging
      and deciding;
    - ``rollbackd_ticks_skipped_total``: ticks skipped because the previous one overran;
    - ``rollbackd_rollbacks_total{result}``: rollbacks carried out, by how they ended;
    - ``rollbackd_poison_records_total``: records the store refused, set aside as poison (kept in
      ``<data_dir>/poison.jsonl``, audited as ``poison.set_aside``, escalated);
    - ``rollbackd_targets``: targets watched;
    - ``rollbackd_up``: 1 while the daemon runs, 0 once it shuts down;
    - the event sinks' ``rollbackd_events_delivered_total{sink}``,
      ``rollbackd_event_delivery_failures_total{sink}`` and ``rollbackd_event_sink_retrying{sink}``
      once :meth:`watch_sinks` is called (:mod:`rollbackd.daemon.sinkmetrics`).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.evaluations = Counter(
            "rollbackd_evaluations",
            "Target evaluations (one per target per tick).",
            registry=r,
        )
        self.decisions = Counter("rollbackd_decisions", "Decisions by outcome.", ["outcome"], registry=r)
        self.rollback_decisions = Counter(
            "rollbackd_rollback_decisions",
            "Decisions to roll back, by mode (dry-run included).",
            ["mode"],
            registry=r,
        )
        self.source_errors = Counter(
            "rollbackd_source_errors",
            "Source failures by source and kind.",
            ["source", "kind"],
            registry=r,
        )
        self.source_lag = Gauge(
            "rollbackd_source_lag_seconds",
            "How old the newest sample of the latest metrics answer was when it was asked, by source.",
            ["source"],
            registry=r,
        )
        self.evaluation_errors = Counter(
            "rollbackd_evaluation_errors",
            "Target evaluations that raised.",
            registry=r,
        )
        self.tick_errors = Counter(
            "rollbackd_tick_errors",
            "Steps of a tick that raised and were skipped, by step.",
            ["step"],
            registry=r,
        )
        for step in TICK_STEPS:
            self.tick_errors.labels(step=step)
        self.evaluation_duration = Histogram(
            "rollbackd_evaluation_duration_seconds",
            "Duration of one tick: collection and evaluation of all targets.",
            buckets=_DURATION_BUCKETS_S,
            registry=r,
        )
        self.collection_duration = Histogram(
            "rollbackd_collection_duration_seconds",
            "Time of one tick spent collecting the data (Prometheus queries and reading their "
            "answers, health probes): part of rollbackd_evaluation_duration_seconds.",
            registry=r,
            buckets=_DURATION_BUCKETS_S,
        )
        self.ticks_skipped = Counter(
            "rollbackd_ticks_skipped",
            "Ticks skipped because the previous tick overran.",
            registry=r,
        )
        self.rollbacks = Counter(
            "rollbackd_rollbacks",
            "Rollbacks carried out, by how they ended.",
            ["result"],
            registry=r,
        )
        self.poison_records = Counter(
            "rollbackd_poison_records",
            "Records the store refused, set aside as poison (see poison.jsonl in the data dir).",
            registry=r,
        )
        self.targets = Gauge("rollbackd_targets", "Targets watched.", registry=r)
        self.up = Gauge("rollbackd_up", "1 while the daemon runs.", registry=r)
        # Export every outcome and mode from the start, so rates work before the first decision;
        # the children are kept (a thousand targets count a decision each per tick).
        self._by_outcome = {outcome: self.decisions.labels(outcome=outcome.value) for outcome in Outcome}
        for mode in (Outcome.IMMEDIATE, Outcome.CONTROLLED):
            self.rollback_decisions.labels(mode=mode.value)
        self._sinks: SinkCollector | None = None

    def watch_sinks(self, statuses: SinkStatuses) -> None:
        """Export the event sinks' delivery, as ``statuses()`` tells it at each scrape."""
        if self._sinks is None:
            self._sinks = SinkCollector(statuses)
            self.registry.register(self._sinks)
        else:
            self._sinks.statuses = statuses

    def count_decision(self, decision: Decision) -> None:
        self.evaluations.inc()
        self._by_outcome[decision.outcome].inc()
        if decision.rollback:
            self.rollback_decisions.labels(mode=decision.outcome.value).inc()

    def count_rollback(self, result: str) -> None:
        self.rollbacks.labels(result=result).inc()

    def count_tick_error(self, step: str) -> None:
        """One step of a tick (one of :data:`TICK_STEPS`) raised and was skipped."""
        self.tick_errors.labels(step=step).inc()

    def count_source_error(self, source: str, kind: str) -> None:
        """Usable as a source's ``on_error(source, kind)`` callback."""
        self.source_errors.labels(source=source, kind=kind).inc()

    def set_source_lag(self, source: str, lag_s: float) -> None:
        """The latest lag of ``source``'s answers (see ``rollbackd_source_lag_seconds``)."""
        self.source_lag.labels(source=source).set(lag_s)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
