"""The daemon's own Prometheus metrics, kept in a dedicated registry (never the global one), so
that several daemons can live in one process (tests) and nothing else leaks into ``/metrics``.

``/metrics`` (:meth:`DaemonMetrics.handler`) answers as prometheus_client's aiohttp handler does:
the Prometheus text format, or OpenMetrics when the scraper asks for it
(``Accept: application/openmetrics-text``), gzip-compressed when it accepts gzip, ``name[]`` to
ask for some metrics only. Unlike that handler, it builds the exposition in a worker thread, not on
the event loop: at 1,000 targets building it takes 70-240 ms of the daemon's CPU
(bench/results/scale.md, "A scrape of /metrics"), during which a loop-bound handler would hold up
the ticks, the probes and the API. What the daemon's state says (targets, sinks, leadership) is
read on the loop first, into plain values: the thread never reads the daemon's state, and the
counters, gauges and histograms are prometheus_client's, safe to read from any thread. No
``_created`` series are exported (prometheus_client's ``disable_created_metrics``): they double
the series of every counter and histogram and no dashboard reads them.
"""

from __future__ import annotations

import asyncio
import platform
import time
from collections.abc import Callable, Iterable

from aiohttp import hdrs, web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from rollbackd import __version__
from rollbackd.daemon.sinkmetrics import SinkCollector, SinkStatuses
from rollbackd.daemon.targetmetrics import TargetCollector, TargetSamples
from rollbackd.events.model import EventType
from rollbackd.model import Decision, Outcome
from rollbackd.run import Phase

#: Results of a configuration reload (``rollbackd_config_reloads_total{result}``).
RELOAD_RESULTS = ("success", "failure")

#: The steps of a tick counted in ``rollbackd_tick_errors_total`` when they raise.
TICK_STEPS = ("decide", "verify", "resume", "tick")

#: Buckets of the evaluation duration: from a quick in-memory tick to a slow Prometheus.
_DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _starting_at(value: float, gauge: Gauge) -> Gauge:
    """``gauge``, set to ``value`` until told otherwise."""
    gauge.set(value)
    return gauge


def _from_zero(family: Counter, **values: Iterable[str]) -> Counter:
    """``family`` with a child for each value of its one label (``label=values``) exported from 0:
    a rate is there before the first increase, and the first one shows as an increase."""
    ((label, each),) = values.items()
    for value in each:
        family.labels(**{label: value})
    return family


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
    - ``rollbackd_build_info{version,python_version}``: always 1, the labels tell the build;
    - ``rollbackd_leader``: 1 while this replica leads (acts and delivers events), 0 while it
      stands by (always 1 without leader election), once :meth:`watch_leader` is called;
    - ``rollbackd_metrics_source_up``: 1 when the latest collection from the metrics source
      (Prometheus) answered, 0 when it failed (the kind is in ``rollbackd_source_errors_total``);
    - ``rollbackd_events_recorded_total{type}``: events recorded in the outbox, by type
      (``escalation.raised``, ``rollback.failed``, ...);
    - ``rollbackd_config_reloads_total{result}``: changes of the configuration file applied
      (``success``) or refused (``failure``); ``rollbackd_config_last_reload_successful``: whether
      the latest one was applied (1, also before any) or refused (0);
      ``rollbackd_config_last_reload_success_timestamp_seconds``: Unix time the running
      configuration was loaded (at start, then at each applied reload);
    - the watched targets' ``rollbackd_target_state{namespace,target,state}`` and
      ``rollbackd_last_decision_timestamp_seconds{namespace,target}`` once :meth:`watch_targets`
      is called (:mod:`rollbackd.daemon.targetmetrics`);
    - the event sinks' ``rollbackd_events_delivered_total{sink}``,
      ``rollbackd_event_delivery_failures_total{sink}``, ``rollbackd_event_sink_retrying{sink}`` and
      ``rollbackd_event_sink_backlog{sink}`` once :meth:`watch_sinks` is called
      (:mod:`rollbackd.daemon.sinkmetrics`);
    - the process (``process_*``: CPU, memory, open files), the Python platform
      (``python_info``) and the garbage collector (``python_gc_*``), from prometheus_client's
      default collectors.

    ``wall_clock`` gives the Unix time of the timestamps (``time.time`` by default).
    """

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        # A process-wide switch of prometheus_client (read at each scrape): the daemon owns its process.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self._wall_clock = wall_clock
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self._leading: Callable[[], bool] | None = None
        Info("rollbackd_build", "The build of rollbackd running; always 1.", registry=r).info(
            {"version": __version__, "python_version": platform.python_version()}
        )
        self.leader = _starting_at(1, Gauge(
            "rollbackd_leader",
            "1 while this replica leads (acts and delivers events), 0 while it stands by.", registry=r,
        ))
        self.metrics_source_up = Gauge(
            "rollbackd_metrics_source_up",
            "1 when the latest collection from the metrics source (Prometheus) answered, 0 when it failed.",
            registry=r,
        )
        self.events_recorded = _from_zero(
            Counter("rollbackd_events_recorded", "Events recorded in the outbox, by type.", ["type"],
                    registry=r),
            type=[kind.value for kind in EventType],
        )
        self.config_reloads = _from_zero(
            Counter("rollbackd_config_reloads",
                    "Changes of the configuration file applied (success) or refused (failure).",
                    ["result"], registry=r),
            result=RELOAD_RESULTS,
        )
        self.config_last_reload_successful = _starting_at(1, Gauge(
            "rollbackd_config_last_reload_successful",
            "Whether the latest change of the configuration file was applied (1) or refused (0).", registry=r,
        ))
        self.config_last_reload_success = _starting_at(wall_clock(), Gauge(
            "rollbackd_config_last_reload_success_timestamp_seconds",
            "Unix time the running configuration was loaded (at start, then at each applied reload).",
            registry=r,
        ))
        self.evaluations = Counter(
            "rollbackd_evaluations", "Target evaluations (one per target per tick).", registry=r
        )
        self.decisions = Counter("rollbackd_decisions", "Decisions by outcome.", ["outcome"], registry=r)
        self.rollback_decisions = _from_zero(
            Counter("rollbackd_rollback_decisions", "Decisions to roll back, by mode (dry-run included).",
                    ["mode"], registry=r),
            mode=[Outcome.IMMEDIATE.value, Outcome.CONTROLLED.value],
        )
        self.source_errors = Counter(
            "rollbackd_source_errors", "Source failures by source and kind.", ["source", "kind"], registry=r
        )
        self.source_lag = Gauge(
            "rollbackd_source_lag_seconds",
            "How old the newest sample of the latest metrics answer was when it was asked, by source.",
            ["source"],
            registry=r,
        )
        self.evaluation_errors = Counter(
            "rollbackd_evaluation_errors", "Target evaluations that raised.", registry=r
        )
        self.tick_errors = _from_zero(
            Counter("rollbackd_tick_errors", "Steps of a tick that raised and were skipped, by step.",
                    ["step"], registry=r),
            step=TICK_STEPS,
        )
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
            "rollbackd_ticks_skipped", "Ticks skipped because the previous tick overran.", registry=r
        )
        # Every way a rollback ends, from 0: the first rollback shows as an increase.
        self.rollbacks = _from_zero(
            Counter("rollbackd_rollbacks", "Rollbacks carried out, by how they ended.", ["result"],
                    registry=r),
            result=[phase.value for phase in Phase if not phase.active],
        )
        self.poison_records = Counter(
            "rollbackd_poison_records",
            "Records the store refused, set aside as poison (see poison.jsonl in the data dir).",
            registry=r,
        )
        self.targets = Gauge("rollbackd_targets", "Targets watched.", registry=r)
        self.up = Gauge("rollbackd_up", "1 while the daemon runs.", registry=r)
        # Export every outcome from the start, so rates work before the first decision; the
        # children are kept (a thousand targets count a decision each per tick).
        self._by_outcome = {outcome: self.decisions.labels(outcome=outcome.value) for outcome in Outcome}
        self._sinks: SinkCollector | None = None
        self._targets: TargetCollector | None = None

    def watch_targets(self, samples: TargetSamples) -> None:
        """Export the watched targets, as ``samples()`` tells them at each scrape."""
        if self._targets is None:
            self._targets = TargetCollector(samples)
            self.registry.register(self._targets)
        else:
            self._targets.samples = samples

    def watch_leader(self, leading: Callable[[], bool]) -> None:
        """Export whether this replica leads, as ``leading()`` tells it at each scrape."""
        self._leading = leading

    def refresh(self) -> None:
        """Read what the daemon's state says (targets, sinks, leadership) for the next exposition;
        on the event loop, where that state changes."""
        if self._targets is not None:
            self._targets.refresh()
        if self._sinks is not None:
            self._sinks.refresh()
        if self._leading is not None:
            self.leader.set(1 if self._leading() else 0)

    async def handler(self, request: web.Request) -> web.Response:
        """``GET /metrics``: the state read on the loop (:meth:`refresh`), the exposition built in
        a worker thread (see the module documentation), as text or OpenMetrics, gzip when accepted."""
        self.refresh()
        encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
        names = request.query.getall("name[]", [])
        registry = self.registry.restricted_registry(names) if names else self.registry
        body = await asyncio.to_thread(encoder, registry)
        response = web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})
        response.enable_compression()
        return response

    def count_reload(self, *, applied: bool) -> None:
        """A change of the configuration file was applied, or refused."""
        result = "success" if applied else "failure"
        self.config_reloads.labels(result=result).inc()
        self.config_last_reload_successful.set(1 if applied else 0)
        if applied:
            self.config_last_reload_success.set(self._wall_clock())

    def count_event(self, kind: str) -> None:
        """An event of type ``kind`` (``escalation.raised``, ...) was recorded in the outbox."""
        self.events_recorded.labels(type=kind).inc()

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

