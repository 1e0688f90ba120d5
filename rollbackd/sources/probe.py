"""Does each target's query find its series? Asked once, per target and side, with the reason
when it does not.

For each side, the probe asks for the series its requests query reads over the last few minutes
(``last_over_time(<metric>{<matchers>}[<lookback>])``) and reports how many there are and which
labels they carry. When there are none, it looks at what there is: the series of the same metric in
the target's namespace and the labels they carry, and whether another preset's matchers would find
the side's series, e.g.::

    no series of http_requests_total{namespace="shop",deployment="checkout-canary"} in the last 5m;
    series of http_requests_total in namespace shop carry labels code, job, namespace, pod, service
    (no deployment) — try the kube-prometheus preset

A target is **blind** when a side has no series (or the backend could not be asked): it would be
judged inconclusive at every tick. ``rollbackd check-config --probe`` prints the report and the
daemon logs it once at start and shows it on its status page.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Protocol

from rollbackd.config.presets import PRESETS, QueryPreset, resolve_queries
from rollbackd.config.settings import Settings, Side, TargetSettings
from rollbackd.errors import SourceError
from rollbackd.sources import promql
from rollbackd.sources.prometheus import QueryResult
from rollbackd.sources.targets import series_ref, templates_of

__all__ = [
    "MIN_LOOKBACK_S",
    "ProbeReport",
    "Queries",
    "SideProbe",
    "TargetProbe",
    "lookback_s",
    "probe",
    "series_selector",
]

#: The shortest look back for series (seconds): a side that served nothing for five minutes is
#: as good as absent.
MIN_LOOKBACK_S = 300.0
#: The largest answer read for one side's series.
ANSWER_BYTES = 1_048_576
#: Targets probed at once.
CONCURRENCY = 4
#: Stands for ``{selector}`` while the metric is found in a rendered template.
_MARK = "__rollbackd_selector__"
_METRIC = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^{}]*)" + _MARK + r"([^{}]*)\}")


class Queries(Protocol):
    """What the probe needs of a Prometheus client (a
    :class:`~rollbackd.sources.prometheus.PrometheusClient`)."""

    async def query(self, promql_text: str, *, max_answer_bytes: int | None = None) -> QueryResult: ...


@dataclass(frozen=True, slots=True)
class SideProbe:
    """One side: the series its requests query reads, their labels, and what is probably wrong
    when there are none (``problem``), with the preset that would find them (``fits``)."""

    side: str
    selector: str
    series: int
    labels: tuple[str, ...]
    problem: str | None = None
    fits: str | None = None

    @property
    def blind(self) -> bool:
        return self.series == 0


@dataclass(frozen=True, slots=True)
class TargetProbe:
    """One target: its sides, or why it could not be probed at all (``error``)."""

    key: str
    preset: str
    sides: tuple[SideProbe, ...]
    error: str | None = None

    @property
    def blind(self) -> bool:
        return self.error is not None or any(side.blind for side in self.sides)

    def lines(self) -> list[str]:
        """The report of this target, one line per side."""
        if self.error is not None:
            return [f"{self.key}: not probed: {self.error}"]
        out: list[str] = []
        for side in self.sides:
            if side.blind:
                out.append(f"{self.key} {side.side}: BLIND: {side.problem}")
            else:
                labels = ", ".join(side.labels)
                out.append(
                    f"{self.key} {side.side}: {side.series} series ({side.selector}) with labels {labels}"
                )
        return out


@dataclass(frozen=True, slots=True)
class ProbeReport:
    """Every target's probe, and when it was taken (Unix time)."""

    targets: tuple[TargetProbe, ...]
    at: float
    lookback_s: float

    @property
    def blind(self) -> tuple[TargetProbe, ...]:
        return tuple(target for target in self.targets if target.blind)

    def lines(self) -> list[str]:
        return [line for target in self.targets for line in target.lines()]


def lookback_s(settings: Settings) -> float:
    """How far back the probe looks for series: five minutes, or four scrapes when longer."""
    return max(MIN_LOOKBACK_S, 4 * settings.prometheus.scrape_interval_s)


def series_selector(queries: QueryPreset, namespace: str, side: Side) -> tuple[str, str] | None:
    """``(metric, matchers)`` of the series ``side``'s requests query reads, or ``None`` when its
    template has no ``metric{…{selector}…}`` to find them by."""
    rendered = promql.render(queries.requests, by=", ".join(queries.group_labels), selector=_MARK,
                             window="1m")
    found = _METRIC.search(rendered)
    if found is None:
        return None
    metric, before, after = found.groups()
    templates = templates_of(queries)
    ref = series_ref(namespace, side, queries)
    key = promql.ref_key(ref, queries.group_labels)
    own = promql.build_selector(queries.group_labels, [key], templates.pod_prefix)
    matchers = ",".join(part for part in (before.strip(", "), own, after.strip(", ")) if part)
    return metric, matchers


async def probe(settings: Settings, client: Queries, *, clock: float | None = None) -> ProbeReport:
    """Probe every target of ``settings`` through ``client``; ``clock``: the Unix time to report
    (now by default)."""
    at = time.time() if clock is None else clock
    window = lookback_s(settings)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(target: TargetSettings) -> TargetProbe:
        async with limit:
            return await _probe_target(settings, target, client, window)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(target)) for target in settings.targets]
    return ProbeReport(targets=tuple(task.result() for task in tasks), at=at, lookback_s=window)


async def _probe_target(
    settings: Settings, target: TargetSettings, client: Queries, window: float
) -> TargetProbe:
    queries = resolve_queries(settings.defaults.queries, target.queries)
    preset = target.queries.preset or settings.defaults.queries.preset
    named = preset if queries == PRESETS[preset] else f"{preset} (with keys of its own)"
    sides = [("candidate", target.candidate)]
    if target.baseline is not None:
        sides.insert(0, ("baseline", target.baseline))
    try:
        probes = await asyncio.gather(
            *(_probe_side(name, side, target.namespace, queries, client, window) for name, side in sides)
        )
    except SourceError as exc:
        return TargetProbe(key=target.key, preset=named, sides=(), error=str(exc))
    return TargetProbe(key=target.key, preset=named, sides=tuple(probes))


async def _series(client: Queries, metric: str, matchers: str, window: float) -> QueryResult:
    return await client.query(
        f"last_over_time({metric}{{{matchers}}}[{promql.format_duration(window)}])",
        max_answer_bytes=ANSWER_BYTES,
    )


def _labels(result: QueryResult) -> tuple[str, ...]:
    return tuple(sorted({name for labels in result.labels for name in labels if name != "__name__"}))


async def _probe_side(
    name: str, side: Side, namespace: str, queries: QueryPreset, client: Queries, window: float
) -> SideProbe:
    selected = series_selector(queries, namespace, side)
    if selected is None:
        return await _probe_by_query(name, side, namespace, queries, client, window)
    metric, matchers = selected
    found = await _series(client, metric, matchers, window)
    if found.labels:
        return SideProbe(side=name, selector=f"{metric}{{{matchers}}}", series=len(found.labels),
                         labels=_labels(found))
    problem = await _why_none(metric, matchers, namespace, queries, client, window)
    fits = await _fitting_preset(side, namespace, queries, client, window)
    if fits is not None:
        problem += f" — try the {fits} preset"
    return SideProbe(side=name, selector=f"{metric}{{{matchers}}}", series=0, labels=(),
                     problem=problem, fits=fits)


async def _probe_by_query(
    name: str, side: Side, namespace: str, queries: QueryPreset, client: Queries, window: float
) -> SideProbe:
    """A side whose requests template names no metric to look for: run the template itself."""
    templates = templates_of(queries)
    key = promql.ref_key(series_ref(namespace, side, queries), queries.group_labels)
    selector = promql.build_selector(queries.group_labels, [key], templates.pod_prefix)
    text = promql.render(queries.requests, by=", ".join(queries.group_labels), selector=selector,
                         window=promql.format_duration(window))
    found = await client.query(text, max_answer_bytes=ANSWER_BYTES)
    if found.labels:
        return SideProbe(side=name, selector=selector, series=len(found.labels), labels=_labels(found))
    return SideProbe(side=name, selector=selector, series=0, labels=(),
                     problem=f"the requests query found nothing in the last {promql.format_duration(window)}:"
                     f" {text}")


async def _why_none(
    metric: str, matchers: str, namespace: str, queries: QueryPreset, client: Queries, window: float
) -> str:
    """What there is instead of the side's series: the metric's series in the namespace (and the
    labels they carry, naming the group labels they lack), or the metric's at all."""
    lookback = promql.format_duration(window)
    said = f"no series of {metric}{{{matchers}}} in the last {lookback}"
    in_namespace = await _series(client, metric, promql.label_matcher(queries.namespace_label, [namespace]),
                                 window)
    if in_namespace.labels:
        carried = _labels(in_namespace)
        lacking = [label for label in queries.required_labels if label not in carried]
        lacks = f" (no {', '.join(lacking)})" if lacking else ""
        return (f"{said}; series of {metric} in namespace {namespace} carry labels "
                f"{', '.join(carried)}{lacks}")
    anywhere = await client.query(
        f"count(last_over_time({metric}[{lookback}]))", max_answer_bytes=ANSWER_BYTES
    )
    if anywhere.values and anywhere.values[0] > 0:
        return (f"{said}; {metric} has {anywhere.values[0]:g} series, none with "
                f"{queries.namespace_label}={namespace!r}")
    return f"{said}; there is no series of {metric} at all"


async def _fitting_preset(
    side: Side, namespace: str, queries: QueryPreset, client: Queries, window: float
) -> str | None:
    """The first other preset whose matchers find the side's series (none for a side without a
    Deployment, an Argo Rollout's: every preset names the side by its Deployment)."""
    if side.deployment is None:
        return None
    for name, preset in PRESETS.items():
        if preset == queries:
            continue
        selected = series_selector(preset, namespace, side)
        if selected is None:
            continue
        if (await _series(client, *selected, window)).labels:
            return name
    return None
