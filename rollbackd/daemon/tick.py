"""One tick: collect every target's metrics (one batched call) and health (all probes at once),
and the schedule that runs ticks on the event-loop clock without drift.

A failing source never stops the daemon: its data becomes missing (``None``) for that tick and the
failure is reported through ``on_source_error(source, kind)``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from rollbackd.errors import SourceError
from rollbackd.model import HealthCheck, Observation
from rollbackd.sources.base import (
    HealthSource,
    MetricsSource,
    RejectsData,
    ReportsFailures,
    ReportsOutage,
    SidePair,
    SourceTarget,
)

logger = logging.getLogger(__name__)

#: ``on_source_error(source, kind)``: count one failure of a source.
SourceErrorSink = Callable[[str, str], None]

_NO_DATA: SidePair = (None, None)


def error_kind(exc: BaseException) -> str:
    """The bounded classification of a source failure, used as a metric label."""
    if isinstance(exc, SourceError):
        return exc.kind
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return "connection"
    return "unexpected"


def metrics_failure(exc: BaseException) -> tuple[str, str]:
    """The metrics source that failed with ``exc`` and the failure's kind (metric labels)."""
    return (exc.source if isinstance(exc, SourceError) else "prometheus"), error_kind(exc)


@dataclass(frozen=True, slots=True)
class TickData:
    """Everything the sources delivered for one tick, keyed by target key. Missing keys and
    failed sources are already ``None``."""

    metrics: Mapping[str, SidePair]
    health: Mapping[str, tuple[tuple[HealthCheck, ...] | None, tuple[HealthCheck, ...] | None]]
    #: Per target key, why the metrics source rejected its values this tick.
    rejected: Mapping[str, str] = field(default_factory=dict)
    #: Why the metrics source gave nothing at all this tick (``None`` when it answered).
    metrics_outage: str | None = None
    #: Whether the metrics source answered this tick (``False``: its collection failed, or some of
    #: its queries got no answer).
    metrics_answered: bool = True

    def observation(self, target: SourceTarget, t: float) -> Observation:
        baseline, candidate = self.metrics.get(target.key, _NO_DATA)
        health_baseline, health_candidate = self.health.get(target.key, (None, None))
        return Observation(
            target=target.key,
            t=t,
            baseline=baseline,
            candidate=candidate,
            health_baseline=health_baseline,
            health_candidate=health_candidate,
            rejected=self.rejected.get(target.key),
        )


async def _collect_metrics(
    source: MetricsSource,
    targets: Sequence[SourceTarget],
    *,
    window_s: float,
    on_source_error: SourceErrorSink,
) -> tuple[Mapping[str, SidePair], Mapping[str, str], bool, str | None] | str:
    """The source's answer per target, why it rejected some targets' values, whether every query
    got an answer and why none did (each read at once: they describe this collection only); why,
    when the collection failed. A failure is told by the daemon once per outage
    (:mod:`rollbackd.daemon.sourcestatus`), so it is logged at DEBUG."""
    try:
        found = await source.collect(targets, window_s=window_s)
        rejected = source.rejected if isinstance(source, RejectsData) else {}
        answered = not isinstance(source, ReportsFailures) or source.failure is None
        outage = source.outage if isinstance(source, ReportsOutage) else None
        return found, rejected, answered, outage
    except Exception as exc:
        source_name, kind = metrics_failure(exc)
        on_source_error(source_name, kind)
        logger.debug(
            "metrics source failed; this tick has no metrics data",
            extra={"source": source_name, "kind": kind, "error": repr(exc)},
        )
        return str(exc) or repr(exc)


async def _probe(
    source: HealthSource,
    key: str,
    urls: Sequence[str],
    *,
    on_source_error: SourceErrorSink,
) -> tuple[HealthCheck, ...] | None:
    try:
        return await source.probe(urls)
    except Exception as exc:
        kind = error_kind(exc)
        on_source_error("health", kind)
        logger.warning(
            "health probes failed; this tick has no health data",
            extra={"target": key, "source": "health", "kind": kind, "error": repr(exc)},
        )
        return None


async def collect_tick(
    targets: Sequence[SourceTarget],
    *,
    metrics_source: MetricsSource,
    health_source: HealthSource,
    window_s: float,
    on_source_error: SourceErrorSink,
) -> TickData:
    """Run the one batched metrics collection and every target's health probes concurrently."""
    async with asyncio.TaskGroup() as tg:
        metrics_task = tg.create_task(
            _collect_metrics(metrics_source, targets, window_s=window_s, on_source_error=on_source_error),
            name="rollbackd:collect-metrics",
        )
        probe_tasks = {
            (target.key, side): tg.create_task(
                _probe(health_source, target.key, urls, on_source_error=on_source_error),
                name=f"rollbackd:probe:{target.key}:{side}",
            )
            for target in targets
            for side, urls in (("baseline", target.health_baseline), ("candidate", target.health_candidate))
            if urls
        }
    probed = {where: task.result() for where, task in probe_tasks.items()}
    health = {
        target.key: (probed.get((target.key, "baseline")), probed.get((target.key, "candidate")))
        for target in targets
    }
    answer = metrics_task.result()
    if isinstance(answer, str):
        return TickData(metrics={}, health=health, metrics_answered=False, metrics_outage=answer)
    metrics, rejected, answered, outage = answer
    return TickData(metrics=metrics, health=health, rejected=rejected, metrics_answered=answered,
                    metrics_outage=outage)


async def run_every(
    interval_s: float,
    tick: Callable[[], Awaitable[None]],
    *,
    on_skipped: Callable[[int], None] | None = None,
    between: Callable[[], None] | None = None,
) -> None:
    """Call ``tick`` now and then every ``interval_s`` on the event-loop clock, forever.

    The schedule is ``start + k * interval_s``: the duration of a tick does not shift later ticks.
    A tick that overruns makes the missed slots be skipped (logged, and reported through
    ``on_skipped(count)``), never run in a burst. ``between()``, if given, runs after each tick,
    before the wait for the next one: housekeeping kept out of the ticks themselves.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    k = 0
    while True:
        await tick()
        if between is not None:
            between()
        k += 1
        now = loop.time()
        due = start + k * interval_s
        if now > due:
            behind = math.floor((now - start) / interval_s) - k + 1
            k += behind
            due = start + k * interval_s
            logger.warning(
                "tick overran its interval; skipping missed ticks",
                extra={"skipped": behind, "interval_s": interval_s},
            )
            if on_skipped is not None:
                on_skipped(behind)
        await asyncio.sleep(due - now)


class IdleCollector:
    """Keeps the garbage collector's scans of old objects out of the ticks: :meth:`between_ticks`
    collects and freezes (:func:`gc.freeze`) what the last tick left, and every ``full_every_s``
    unfreezes and collects everything, so cycles among old objects are still reclaimed. Why: the
    tick times at a thousand targets in ``bench/results/scale.md`` (``python -m bench.scale``).

    Use as a context manager: leaving it unfreezes everything. It does nothing when the collector
    was disabled on entering.

    Keyword arguments: ``full_every_s``, the period of full collections; ``clock``, the time in
    seconds (the event loop's).
    """

    def __init__(self, *, full_every_s: float = 60.0, clock: Callable[[], float]) -> None:
        if not full_every_s > 0:
            raise ValueError(f"full_every_s must be positive, not {full_every_s!r}")
        self.full_every_s = full_every_s
        self._clock = clock
        self._active = False
        self._last_full: float | None = None
        #: Collections run between ticks: ``(full, partial)``.
        self.collections = (0, 0)

    def __enter__(self) -> IdleCollector:
        self._active = gc.isenabled()
        self._last_full = None
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._active:
            gc.unfreeze()
        self._active = False

    def between_ticks(self) -> None:
        """Collect what the last tick left (everything, every ``full_every_s``), then freeze it."""
        if not self._active:
            return
        now = self._clock()
        full, partial = self.collections
        if self._last_full is None or now - self._last_full >= self.full_every_s:
            gc.unfreeze()
            gc.collect()
            self._last_full = now
            self.collections = (full + 1, partial)
        else:
            gc.collect()  # frozen objects are not scanned: this is about the last tick's
            self.collections = (full, partial + 1)
        gc.freeze()
