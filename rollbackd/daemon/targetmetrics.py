"""The watched targets on ``/metrics``: read from the daemon's state at each scrape, so that the
series of a target go away as soon as the target does (a reload that removes it, or any other
removal). The state is read on the event loop (:meth:`TargetCollector.refresh`), into plain
values that the scrape's thread exports.

- ``rollbackd_target_state{namespace,target,state}``: one series per state of
  :class:`~rollbackd.events.model.TargetState` and target, 1 for the state the target is in, 0 for
  the others (see :mod:`rollbackd.daemon.target_state`);
- ``rollbackd_last_decision_timestamp_seconds{namespace,target}``: Unix time of the target's
  latest decision (one per tick: a timestamp that stops moving means the target is not judged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from rollbackd.events.model import TargetState


@dataclass(frozen=True, slots=True)
class TargetSample:
    """One target as ``/metrics`` shows it: ``decided_at`` is the Unix time of its latest
    decision (``None``: not evaluated yet)."""

    namespace: str
    name: str
    state: TargetState
    decided_at: float | None


TargetSamples = Callable[[], Iterable[TargetSample]]


class TargetCollector(Collector):
    """Exports what ``samples()`` said about each target at the latest :meth:`refresh` (no series
    while there is none)."""

    def __init__(self, samples: TargetSamples) -> None:
        self.samples = samples
        self._latest: tuple[TargetSample, ...] = ()

    def refresh(self) -> None:
        """Read the targets (on the event loop, where they change), for the next :meth:`collect`,
        which may run in another thread."""
        self._latest = tuple(self.samples())

    def describe(self) -> list[GaugeMetricFamily]:
        return list(self._families(()))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families(self._latest)

    @staticmethod
    def _families(samples: Iterable[TargetSample]) -> Iterator[GaugeMetricFamily]:
        state = GaugeMetricFamily(
            "rollbackd_target_state",
            "Where each target stands: 1 for its current state, 0 for the others.",
            labels=["namespace", "target", "state"],
        )
        decided = GaugeMetricFamily(
            "rollbackd_last_decision_timestamp_seconds",
            "Unix time of the latest decision on each target.",
            labels=["namespace", "target"],
        )
        for sample in samples:
            for candidate in TargetState:
                value = 1.0 if candidate is sample.state else 0.0
                state.add_metric([sample.namespace, sample.name, candidate.value], value)
            if sample.decided_at is not None:
                decided.add_metric([sample.namespace, sample.name], sample.decided_at)
        yield state
        yield decided
