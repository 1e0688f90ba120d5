"""Per-interval counts from Prometheus even when the interval is short next to the scrapes.

``increase(x[10s])`` over a series scraped every 15 s holds fewer than two samples and answers
nothing. :class:`Lookback` wraps a metrics source so every query looks back at least
``min_range_s`` (two scrape intervals by default), then brings the counts back to the interval
asked for: the totals stay right, smoothed over the longer range.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rollbackd.sources.base import (
    GivesHistory,
    History,
    MetricsSource,
    RejectsData,
    ReportsFailures,
    ReportsOutage,
    SidePair,
    SourceTarget,
)

#: Scrapes a query range must cover: increase() needs two samples in the range.
SCRAPES_PER_RANGE = 2


def min_range_s(scrape_interval_s: float) -> float:
    return SCRAPES_PER_RANGE * scrape_interval_s


class Lookback:
    """A :class:`MetricsSource` that queries over ``max(window_s, min_range_s)`` and rescales."""

    def __init__(self, inner: MetricsSource, *, min_range_s: float) -> None:
        self._inner = inner
        self._min_range_s = min_range_s

    @property
    def rejected(self) -> Mapping[str, str]:
        """Why the wrapped source rejected targets' latest collection (none when it rejects nothing)."""
        return self._inner.rejected if isinstance(self._inner, RejectsData) else {}

    @property
    def outage(self) -> str | None:
        """Why the wrapped source's latest collection got no answer (``None``: it answered)."""
        return self._inner.outage if isinstance(self._inner, ReportsOutage) else None

    @property
    def failure(self) -> str | None:
        """Why some queries of the wrapped source's latest collection got no answer."""
        return self._inner.failure if isinstance(self._inner, ReportsFailures) else None

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        range_s = max(window_s, self._min_range_s)
        found = await self._inner.collect(targets, window_s=range_s)
        if range_s == window_s:
            return found
        factor = window_s / range_s
        return {
            key: (
                baseline.scaled(factor) if baseline is not None else None,
                candidate.scaled(factor) if candidate is not None else None,
            )
            for key, (baseline, candidate) in found.items()
        }

    async def history(
        self, targets: Sequence[SourceTarget], *, step_s: float, range_s: float, end_s: float
    ) -> History:
        """The wrapped source's history with steps of at least ``min_range_s`` (each point then
        holds two scrapes; counts are over the step, not rescaled); every target has an empty
        history when the wrapped source cannot give any."""
        if not isinstance(self._inner, GivesHistory):
            return {target.key: () for target in targets}
        return await self._inner.history(
            targets, step_s=max(step_s, self._min_range_s), range_s=range_s, end_s=end_s
        )
