"""Metrics straight from the sample apps, for a demo without Prometheus.

:class:`DirectMetricsSource` is a :class:`~rollbackd.sources.base.MetricsSource` that, on every
:meth:`~DirectMetricsSource.collect`, scrapes each app's ``/metrics`` (the Prometheus text
exposition) and turns the counters' growth since the previous collect into
:class:`~rollbackd.model.Sample` values: requests, errors (``code`` 5xx) and latency buckets, summed
over every series whose labels carry a side's group-label values -- what the daemon's default
PromQL (``sum by (namespace, deployment) (increase(...))``) gives, with the previous collect instead
of a range as the start of the interval.

It reads the series the sample apps expose (``http_requests_total`` and
``http_request_duration_seconds_bucket``), not arbitrary templates: it stands in for Prometheus in
the demo only, and the demo says so.

Missing data stays missing: a side is ``None`` on the first collect (nothing to compare with yet),
when no app exposes a series for it, and when an app that served it last time cannot be scraped now.
A counter that went down (the app restarted) counts from zero, as ``increase()`` does.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from rollbackd.errors import SourceStats
from rollbackd.model import Histogram, Sample, histogram_quantile
from rollbackd.sources.base import SeriesRef, SidePair, SourceTarget
from rollbackd.sources.session import OwnsSession

logger = logging.getLogger(__name__)

REQUESTS_METRIC = "http_requests_total"
BUCKETS_METRIC = "http_request_duration_seconds_bucket"

#: A series without its ``code`` / ``le`` label: sorted (label, value) pairs.
SeriesLabels = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Scrape:
    """The counters of one exposition, per series: requests and failed requests (all codes and
    5xx only), and the cumulative latency buckets by upper bound."""

    requests: Mapping[SeriesLabels, float]
    errors: Mapping[SeriesLabels, float]
    buckets: Mapping[SeriesLabels, Mapping[float, float]]

    @property
    def series(self) -> frozenset[SeriesLabels]:
        return frozenset(self.requests) | frozenset(self.buckets)


def _identity(labels: Mapping[str, str], *dropped: str) -> SeriesLabels:
    return tuple(sorted((name, value) for name, value in labels.items() if name not in dropped))


def parse_exposition(text: str) -> Scrape:
    """The request counters and latency buckets of a text exposition; other metrics are ignored.
    Raises ``ValueError`` on text that is not an exposition."""
    requests: dict[SeriesLabels, float] = {}
    errors: dict[SeriesLabels, float] = {}
    buckets: dict[SeriesLabels, dict[float, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == REQUESTS_METRIC:
                key = _identity(sample.labels, "code")
                requests[key] = requests.get(key, 0.0) + sample.value
                if sample.labels.get("code", "").startswith("5"):
                    errors[key] = errors.get(key, 0.0) + sample.value
            elif sample.name == BUCKETS_METRIC and "le" in sample.labels:
                key = _identity(sample.labels, "le")
                bound = float(sample.labels["le"])  # "+Inf" parses to inf
                series = buckets.setdefault(key, {})
                series[bound] = series.get(bound, 0.0) + sample.value
    return Scrape(requests=requests, errors=errors, buckets=buckets)


def _growth(now: float, before: float | None) -> float:
    """How much a counter grew; a counter that went down was reset and counts from zero."""
    if before is None or now < before:
        return now
    return now - before


@dataclass(slots=True)
class _Delta:
    """What every series served between two scrapes of one app."""

    requests: dict[SeriesLabels, float] = field(default_factory=dict)
    errors: dict[SeriesLabels, float] = field(default_factory=dict)
    buckets: dict[SeriesLabels, dict[float, float]] = field(default_factory=dict)


def delta(now: Scrape, before: Scrape) -> _Delta:
    """The growth of every series of ``now`` since ``before`` (new series count from zero)."""
    result = _Delta()
    for key, value in now.requests.items():
        result.requests[key] = _growth(value, before.requests.get(key))
        result.errors[key] = _growth(now.errors.get(key, 0.0), before.errors.get(key))
    for key, series in now.buckets.items():
        old = before.buckets.get(key, {})
        result.buckets[key] = {bound: _growth(value, old.get(bound)) for bound, value in series.items()}
    return result


def _selects(ref: SeriesRef, labels: SeriesLabels) -> bool:
    present = dict(labels)
    return all(present.get(name) == value for name, value in ref.labels)


class DirectMetricsSource(OwnsSession):
    """Scrapes the sample apps' ``/metrics`` on every :meth:`collect`.

    Keyword arguments:

    - ``urls``: the apps' metrics URLs (``http://127.0.0.1:PORT/metrics``);
    - ``timeout_s``: limit for one scrape;
    - ``quantile``: the quantile reported as ``Sample.p95_ms`` (0.95);
    - ``stats``: counters to update (a fresh one named ``direct`` by default): every scrape is a
      request, every failed scrape an error of kind ``timeout``, ``connection``, ``http`` or
      ``parse``.

    Use as ``async with DirectMetricsSource(urls=[...]) as source:``; it owns its HTTP session.
    """

    def __init__(
        self,
        *,
        urls: Sequence[str],
        timeout_s: float = 2.0,
        quantile: float = 0.95,
        stats: SourceStats | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        self.urls = tuple(urls)
        self.timeout_s = timeout_s
        self.quantile = quantile
        self.stats = stats if stats is not None else SourceStats(source="direct")
        self._session: aiohttp.ClientSession | None = None
        #: The latest successful scrape of every app.
        self._last: dict[str, Scrape] = {}

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self

    async def _scrape(self, url: str) -> Scrape | None:
        if self._session is None:
            raise RuntimeError("DirectMetricsSource is used outside 'async with'")
        self.stats.requests += 1
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    self.stats.record_error("http")
                    logger.warning("scraping %s failed: HTTP %d", url, response.status)
                    return None
                text = await response.text()
        except TimeoutError:
            self.stats.record_error("timeout")
            logger.warning("scraping %s timed out after %gs", url, self.timeout_s)
            return None
        except aiohttp.ClientError as exc:
            self.stats.record_error("connection")
            logger.warning("cannot scrape %s: %s", url, exc or type(exc).__name__)
            return None
        try:
            return parse_exposition(text)
        except ValueError as exc:
            self.stats.record_error("parse")
            logger.warning("%s is not a metrics exposition: %s", url, exc)
            return None

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> dict[str, SidePair]:
        """``(baseline, candidate)`` per target key: what each side served since the previous
        collect (``window_s`` is not used: the interval is the time between two collects)."""
        scrapes = await asyncio.gather(*(self._scrape(url) for url in self.urls))
        deltas: list[_Delta] = []
        #: Series an app served last time but that cannot be measured now (the app is unreachable).
        unknown: set[SeriesLabels] = set()
        for url, scrape in zip(self.urls, scrapes, strict=True):
            before = self._last.get(url)
            if scrape is None:
                if before is not None:
                    unknown |= before.series
                continue
            self._last[url] = scrape
            if before is None:
                unknown |= scrape.series  # the first scrape of an app: nothing to compare with yet
            else:
                deltas.append(delta(scrape, before))
        result: dict[str, SidePair] = {}
        for target in targets:
            baseline = self._sample(target.baseline, deltas, unknown) if target.baseline else None
            result[target.key] = (baseline, self._sample(target.candidate, deltas, unknown))
        return result

    def _sample(self, ref: SeriesRef, deltas: Sequence[_Delta], unknown: set[SeriesLabels]) -> Sample | None:
        if any(_selects(ref, labels) for labels in unknown):
            return None
        requests = errors = 0.0
        found = False
        buckets: dict[float, float] = {}
        for d in deltas:
            for labels, served in d.requests.items():
                if _selects(ref, labels):
                    found = True
                    requests += served
                    errors += d.errors.get(labels, 0.0)
            for labels, series in d.buckets.items():
                if _selects(ref, labels):
                    for bound, count in series.items():
                        buckets[bound] = buckets.get(bound, 0.0) + count
        if not found:
            return None
        latency: Histogram | None = None
        p95_ms: float | None = None
        if math.inf in buckets and len(buckets) >= 2:
            bounds = tuple(sorted(buckets))
            latency = Histogram(bounds_s=bounds, counts=tuple(buckets[b] for b in bounds))
            p95_s = histogram_quantile(self.quantile, latency.bounds_s, latency.counts)
            p95_ms = p95_s * 1000.0 if p95_s is not None else None
        return Sample(requests=requests, errors=min(errors, requests), latency=latency, p95_ms=p95_ms)
