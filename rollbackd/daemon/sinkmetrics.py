"""The event sinks' delivery on ``/metrics``: read from the dispatcher at each scrape (copied on
the event loop by :meth:`SinkCollector.refresh`, exported from the copy in the scrape's thread).

- ``rollbackd_events_delivered_total{sink}``: events the sink accepted;
- ``rollbackd_event_delivery_failures_total{sink}``: failed delivery attempts (each is retried);
- ``rollbackd_event_sink_retrying{sink}``: consecutive failed attempts at the event the sink is
  on now, 0 while it delivers: above 0 for long, the sink is down or refuses that event;
- ``rollbackd_event_sink_backlog{sink}``: events of the outbox the sink has not delivered yet, as
  of its latest read of the outbox (a read takes at most one batch; 0 on a standby, which does not
  deliver): above 0 and not going down, the sink falls behind;
- ``rollbackd_events_dead_lettered_total{sink}``: events the sink gave up on (refused for good,
  or kept past ``events.dead_letter_after_s`` / ``dead_letter_after_events``), each audited.

The counters start again from 0 when the store (and with it the dispatcher) is opened again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from rollbackd.events.dispatcher import SinkStatus

SinkStatuses = Callable[[], Mapping[str, SinkStatus]]


class SinkCollector(Collector):
    """Exports what ``statuses()`` said about each sink at the latest :meth:`refresh` (nothing
    while no sink is open)."""

    def __init__(self, statuses: SinkStatuses) -> None:
        self.statuses = statuses
        self._latest: Mapping[str, SinkStatus] = {}

    def refresh(self) -> None:
        """Copy the sinks' statuses (on the event loop, where the dispatcher changes them), for the
        next :meth:`collect`, which may run in another thread."""
        self._latest = {name: replace(status) for name, status in self.statuses().items()}

    def describe(self) -> list[CounterMetricFamily | GaugeMetricFamily]:
        return list(self._families({}))

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield from self._families(self._latest)

    @staticmethod
    def _families(
        statuses: Mapping[str, SinkStatus],
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        delivered = CounterMetricFamily(
            "rollbackd_events_delivered", "Events a sink accepted.", labels=["sink"]
        )
        failures = CounterMetricFamily(
            "rollbackd_event_delivery_failures",
            "Failed delivery attempts, by sink (each is retried).",
            labels=["sink"],
        )
        retrying = GaugeMetricFamily(
            "rollbackd_event_sink_retrying",
            "Consecutive failed attempts at the event a sink is on now (0 while it delivers).",
            labels=["sink"],
        )
        backlog = GaugeMetricFamily(
            "rollbackd_event_sink_backlog",
            "Events of the outbox a sink has not delivered yet (as of its latest read of the outbox).",
            labels=["sink"],
        )
        dead_lettered = CounterMetricFamily(
            "rollbackd_events_dead_lettered",
            "Events a sink gave up on: refused for good, or kept past its bound (each audited).",
            labels=["sink"],
        )
        for name, status in sorted(statuses.items()):
            dead_lettered.add_metric([name], status.dead_lettered)
            delivered.add_metric([name], status.delivered)
            failures.add_metric([name], status.failures)
            retrying.add_metric([name], status.retrying)
            backlog.add_metric([name], status.backlog)
        yield delivered
        yield failures
        yield retrying
        yield backlog
        yield dead_lettered
