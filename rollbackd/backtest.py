"""``rollbackd backtest``: what rollbackd would have decided, and when, over a past time range.

For each configured target (or those named), the history of the range is read from the configured
Prometheus with ``query_range`` at the target's interval (the very queries and preset the daemon
sends, with its authentication: :meth:`~rollbackd.sources.prometheus.PrometheusSource.history`),
then judged tick by tick by the daemon's own evaluator (:class:`~rollbackd.evaluate.TargetEvaluator`,
as ``rollbackd replay`` judges recordings). An interval Prometheus has no data for is judged as
missing data, as the daemon would have seen it.

What it prints: every change of the verdict (as the events tell them: a rollback, an escalation,
a hold, back to healthy), with its time and reasons, then one summary per target; as a table
(``-o table``) or JSON lines (``-o jsonl``); ``--chart FILE.svg`` draws the candidate's and the
baseline's error rate and P95 with the SLO lines and the decisions.

``--set KEY=VALUE`` overrides a setting for the whole run (repeatable; ``defaults.slo.max_error_rate=0.02``,
``targets.checkout.policy.controlled_grace_s=60``); each ``--compare "KEY=VALUE,KEY=VALUE"`` is one
more variant judged on the same history, side by side with the configuration as given.

After a rollback decision the target is judged afresh (its cooldown and the hourly cap counted
per target), as the daemon does once a rollback ended: the history that follows is what really
happened, so a release that went on is judged again. Holds, freezes and the cluster's annotations
are not part of the history: the framework decides as without them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import yaml
from pydantic import ValidationError

from rollbackd.config.loader import ConfigError, error_message, load_settings, resolve_config_path
from rollbackd.config.resolve import target_params
from rollbackd.config.settings import Settings, TargetSettings
from rollbackd.daemon.charts import CSS, HEIGHT, SIGNALS, WIDTH, chart_svg
from rollbackd.daemon.series import Series, point_of
from rollbackd.daemon.views import point_view
from rollbackd.decision.framework import duration_text
from rollbackd.decision.rails import RollbackLedger
from rollbackd.evaluate import TargetEvaluator
from rollbackd.events.model import decision_state
from rollbackd.model import Context, Decision, Observation, Risk
from rollbackd.params import TargetParams
from rollbackd.sources.backend import BackendConfigError
from rollbackd.sources.base import SidePair, SourceTarget
from rollbackd.sources.lookback import min_range_s
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource
from rollbackd.sources.targets import source_target
from rollbackd.store.history import parse_since

#: Exit statuses: judged (whatever the verdicts), a configuration or usage problem, no history.
EXIT_OK, EXIT_CONFIG, EXIT_SOURCE = 0, 2, 3
#: What ``--set`` and ``--compare`` may name, at the top of the settings.
SETTABLE_SECTIONS = ("defaults", "targets", "interval_s", "prometheus")


class BacktestError(ValueError):
    """A backtest that cannot run: the message names the option or key and the fix."""


# --- the variants: the configuration, and the same with overrides --------------------------------


@dataclass(frozen=True, slots=True)
class Variant:
    """One configuration judged: ``name`` (``config``, or the overrides it adds) and its settings."""

    name: str
    settings: Settings


def parse_assignment(text: str, *, option: str = "--set") -> tuple[tuple[str, ...], Any]:
    """``defaults.slo.max_error_rate=0.02`` as its key path and value (a YAML scalar: ``0.02``,
    ``true``, ``high``)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise BacktestError(
            f"{option} {text!r}: expected KEY=VALUE, e.g. {option} defaults.slo.max_error_rate=0.02"
        )
    path = tuple(part.strip() for part in key.split("."))
    if any(not part for part in path):
        raise BacktestError(f"{option} {key}: a key is dotted names, e.g. defaults.slo.max_error_rate")
    if path[0] not in SETTABLE_SECTIONS:
        raise BacktestError(
            f"{option} {key}: '{path[0]}' cannot be overridden here; a backtest overrides "
            f"{', '.join(SETTABLE_SECTIONS)} (e.g. {option} defaults.slo.max_error_rate=0.02)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, Mapping | list):
        raise BacktestError(f"{option} {key}: give one value (a number, a word), not {raw!r}")
    return path, value


def with_overrides(settings: Settings, assignments: Sequence[str], *, option: str = "--set") -> Settings:
    """``settings`` with each ``KEY=VALUE`` of ``assignments`` applied, validated as the file is
    (same bounds, same messages); a :class:`BacktestError` names the option, the key and the fix."""
    if not assignments:
        return settings
    data = settings.model_dump(mode="python", exclude_unset=False)
    shown: dict[tuple[str | int, ...], str] = {}
    for text in assignments:
        path, value = parse_assignment(text, option=option)
        loc = _locate(data, path, settings, option=option)
        parent: Any = data
        for part in loc[:-1]:
            parent = parent[part]
        parent[loc[-1]] = value
        shown[loc] = ".".join(path)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            key = next((name for where, name in shown.items() if loc[: len(where)] == where), None)
            where = f"{option} {key}" if key is not None else f"{option} (together with the configuration)"
            problems.append(f"{where}: {error_message(error, loc)}")
        raise BacktestError("; ".join(problems)) from None


def _locate(
    data: Mapping[str, Any], path: tuple[str, ...], settings: Settings, *, option: str
) -> tuple[str | int, ...]:
    """Where ``path`` is in the dumped settings (a target named by its name or
    ``namespace/name``); a :class:`BacktestError` naming the key that is not a setting."""
    key = ".".join(path)
    loc: list[str | int] = []
    node: Any = data
    parts = list(path)
    while parts:
        part = parts.pop(0)
        if loc == ["targets"]:
            index = next(
                (i for i, t in enumerate(settings.targets) if part in (t.name, t.key)), None
            )
            if index is None:
                names = ", ".join(t.key for t in settings.targets) or "none configured"
                raise BacktestError(f"{option} {key}: no target '{part}' (targets: {names})")
            loc.append(index)
            node = node[index]
            continue
        if not isinstance(node, Mapping) or part not in node:
            known = ", ".join(sorted(node)) if isinstance(node, Mapping) else ""
            above = ".".join(str(p) for p in path[: len(loc)]) or "the top level"
            hint = f"; the settings under {above} are: {known}" if known else ""
            raise BacktestError(f"{option} {key}: '{part}' is not a setting{hint}")
        loc.append(part)
        node = node[part]
    if isinstance(node, Mapping | list):
        raise BacktestError(f"{option} {key}: a group of settings; name one of its keys")
    return tuple(loc)


def variants(settings: Settings, *, sets: Sequence[str], compares: Sequence[str]) -> list[Variant]:
    """The configuration with ``--set`` applied, then one variant per ``--compare``."""
    base = with_overrides(settings, sets)
    found = [Variant("config" if not sets else "config+" + ",".join(sets), base)]
    for text in compares:
        assignments = [part.strip() for part in text.split(",") if part.strip()]
        if not assignments:
            raise BacktestError("--compare '': give KEY=VALUE[,KEY=VALUE...]")
        found.append(Variant(",".join(assignments), with_overrides(base, assignments, option="--compare")))
    return found


# --- the time range ---------------------------------------------------------------------------


def time_range(
    *, start: str | None, end: str | None, last: str | None, now: datetime
) -> tuple[datetime, datetime]:
    """The range asked for: ``--last 6h`` (up to now), or ``--from`` (a time or a duration ago)
    and ``--to`` (default now)."""
    if last is not None and start is not None:
        raise BacktestError("--last and --from: give one of them (--last 6h, or --from T [--to T])")
    if last is None and start is None:
        raise BacktestError("no time range: give --last 6h, or --from 2026-11-24T02:00:00Z [--to ...]")
    to = now if end is None else _moment("--to", end, now=now)
    begin = _moment("--last", last, now=to) if last is not None else _moment("--from", str(start), now=now)
    if not begin < to:
        raise BacktestError(f"the range is empty: it starts at {_iso(begin)}, not before its end {_iso(to)}")
    return begin, to


def _moment(option: str, text: str, *, now: datetime) -> datetime:
    try:
        return parse_since(text, now=now)
    except ValueError as exc:
        raise BacktestError(f"{option}: {exc}") from None


# --- judging a history ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """A verdict that differs from the one before (what the events would have told)."""

    t: float
    state: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class Judged:
    """One target under one variant: the verdict's changes and the rollbacks decided."""

    target: str
    variant: str
    params: TargetParams
    start: float
    end: float
    ticks: int
    changes: tuple[Change, ...]
    rollbacks: tuple[Decision, ...]
    points: tuple[Mapping[str, Any], ...]


def state_of(decision: Decision) -> str:
    """The verdict in a word, as the target's state says it (``rollback (immediate)`` for a
    rollback decision)."""
    if decision.rollback:
        return f"rollback ({decision.outcome.value})"
    evidence = decision.evidence
    return decision_state(
        outcome=decision.outcome.value,
        rollback=False,
        dry_run=decision.dry_run,
        escalate=decision.escalate,
        blocked_by=decision.blocked_by,
        episode_open=decision.episode is not None,
        breached=evidence is not None and evidence.breached,
    ).value


def judge(
    params: TargetParams, observations: Sequence[Observation], *, variant: str, start: float, end: float
) -> Judged:
    """Judge ``observations`` (oldest first) tick by tick with the daemon's evaluator."""
    evaluator = TargetEvaluator(params)
    ledger = RollbackLedger(max_per_hour=params.policy.max_rollbacks_per_hour)
    series = Series()
    changes: list[Change] = []
    rollbacks: list[Decision] = []
    shown: tuple[object, ...] | None = None
    for obs in observations:
        series.add(point_of(obs, interval_s=params.interval_s))
        ctx = Context(
            rollback_risk=params.policy.rollback_risk,
            risk_reason="configured as high-risk (policy.rollback_risk: high)"
            if params.policy.rollback_risk is Risk.HIGH else "",
            cooldown_until=ledger.cooldown_until(params.key),
            rollbacks_last_hour=ledger.rollbacks_last_hour(obs.t),
            max_rollbacks_per_hour=params.policy.max_rollbacks_per_hour,
        )
        decision = evaluator.step(obs, ctx)
        verdict = (decision.outcome, decision.rollback, decision.blocked_by, decision.escalate)
        if verdict != shown:
            shown = verdict
            changes.append(Change(obs.t, state_of(decision), decision))
        if decision.rollback:
            rollbacks.append(decision)
            ledger.record(params.key, obs.t, params.policy.cooldown_s)
            evaluator.reset()  # as the daemon does once the rollback ended
            shown = None
    points = tuple(view for view in (point_view(p) for p in series.points) if isinstance(view, Mapping))
    return Judged(
        target=params.key, variant=variant, params=params, start=start, end=end, ticks=len(observations),
        changes=tuple(changes), rollbacks=tuple(rollbacks), points=points,
    )


def observations_of(
    key: str, history: Iterable[tuple[float, SidePair]], *, start: float, end: float, step_s: float
) -> list[Observation]:
    """One observation per step from ``start`` (exclusive) to ``end`` (Unix times), on the grid
    the history was asked on, timed in seconds since ``start`` (what the reasons then say: "since
    t=190s"); the intervals Prometheus had no data for are missing data (``None`` sides)."""
    found = {round(ts * 1000): pair for ts, pair in history}
    points = max(1, math.floor((end - start) / step_s + 1e-9))
    first = end - (points - 1) * step_s
    observations = []
    for i in range(points):
        t = first + i * step_s
        baseline, candidate = found.get(round(t * 1000), (None, None))
        observations.append(Observation(target=key, t=t - start, baseline=baseline, candidate=candidate))
    return observations


# --- reading the history ----------------------------------------------------------------------


async def read_histories(
    variants_: Sequence[Variant],
    names: Sequence[str],
    *,
    start: float,
    end: float,
    environ: Mapping[str, str],
    notes: TextIO,
) -> list[Judged]:
    """Every selected target under every variant, judged on the range's history (read once per
    distinct query, interval and backend)."""
    cache: dict[tuple[str, SourceTarget, float], tuple[tuple[float, SidePair], ...]] = {}
    judged: list[Judged] = []
    for variant in variants_:
        settings = variant.settings
        targets = selected(settings, names)
        step_s = max(settings.interval_s, min_range_s(settings.prometheus.scrape_interval_s))
        if step_s != settings.interval_s:
            print(
                f"note: judged at {step_s:g}s steps, not every {settings.interval_s:g}s (interval_s): "
                f"Prometheus scrapes every {settings.prometheus.scrape_interval_s:g}s and increase() needs "
                "two scrapes (prometheus.scrape_interval_s)", file=notes,
            )
        backend = settings.prometheus.model_dump_json()
        sources = {target.key: source_target(settings, target) for target in targets}
        wanted = [s for key, s in sources.items() if (backend, s, step_s) not in cache]
        if wanted:
            async with PrometheusClient.from_settings(settings.prometheus, environ=environ) as client:
                source = PrometheusSource(
                    client=client, shards=settings.prometheus.query_shards,
                    max_answer_bytes=settings.prometheus.max_answer_bytes,
                )
                found = await source.history(wanted, step_s=step_s, range_s=end - start, end_s=end)
                if source.stats.errors_total and not found:
                    raise BacktestSourceError(
                        f"Prometheus at {settings.prometheus.url} answered no history "
                        f"({_errors(source.stats.errors)}); is prometheus.url right, and does it hold "
                        f"{_iso_t(start)} to {_iso_t(end)}?"
                    )
            for s in wanted:
                cache[backend, s, step_s] = found.get(s.key, ())
                if not cache[backend, s, step_s]:
                    print(f"note: {s.key}: no data in the range: every tick is missing data (inconclusive); "
                          "'rollbackd check-config --probe' shows whether its series exist", file=notes)
        for target in targets:
            params = replace(target_params(settings, target), interval_s=step_s)
            history = cache[backend, sources[target.key], step_s]
            observations = observations_of(target.key, history, start=start, end=end, step_s=step_s)
            judged.append(judge(params, observations, variant=variant.name, start=start, end=end))
    return judged


class BacktestSourceError(RuntimeError):
    """Prometheus could not give the history."""


def _errors(errors: Mapping[str, int]) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in sorted(errors.items())) or "no data"


def selected(settings: Settings, names: Sequence[str]) -> list[TargetSettings]:
    """The targets named (by name or ``namespace/name``), or all of them."""
    if not settings.targets:
        raise BacktestError(
            "no targets in the configuration: list the releases to judge under 'targets:' "
            "(docs/configuration.md)"
        )
    if not names:
        return list(settings.targets)
    chosen: list[TargetSettings] = []
    for name in names:
        matches = [t for t in settings.targets if name in (t.key, t.name)]
        if not matches:
            known = ", ".join(t.key for t in settings.targets)
            raise BacktestError(f"target '{name}' is not in the configuration (targets: {known})")
        chosen.extend(t for t in matches if t not in chosen)
    return chosen


# --- output -----------------------------------------------------------------------------------


def _iso_t(t: float) -> str:
    return _iso(datetime.fromtimestamp(t, UTC))


def _iso(moment: datetime) -> str:
    text = moment.astimezone(UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def summary(judged: Judged) -> dict[str, Any]:
    """The target's verdict over the range: its first rollback (``decision`` ``rollback``, its
    mode and time) or ``none``, with the reason; the replay contract's keys, plus the variant."""
    first = judged.rollbacks[0] if judged.rollbacks else None
    last = judged.changes[-1].decision if judged.changes else None
    shown = first if first is not None else last
    reason = shown.reason if shown is not None else "no data in the range"
    return {
        "summary": True,
        "target": judged.target,
        "variant": judged.variant,
        "decision": "rollback" if first is not None else "none",
        "mode": first.outcome.value if first is not None else None,
        "decided_at": _iso_t(judged.start + first.t) if first is not None else None,
        "after_s": round(first.t, 3) if first is not None else None,
        "rollbacks": len(judged.rollbacks),
        "escalations": sum(1 for c in judged.changes if c.decision.escalate),
        "ticks": judged.ticks,
        "interval_s": judged.params.interval_s,
        "reason": reason,
    }


def jsonl_lines(results: Sequence[Judged]) -> Iterable[str]:
    for judged in results:
        for change in judged.changes:
            d = change.decision
            yield json.dumps({
                "target": judged.target,
                "variant": judged.variant,
                "time": _iso_t(judged.start + change.t),
                "after_s": round(change.t, 3),
                "state": change.state,
                "outcome": d.outcome.value,
                "rollback": d.rollback,
                "escalate": d.escalate,
                "blocked_by": d.blocked_by,
                "reasons": list(d.reasons),
            })
        yield json.dumps(summary(judged))


def table_lines(results: Sequence[Judged], *, width: int = 110) -> Iterable[str]:
    compare = len({j.variant for j in results}) > 1
    header = f"{'TIME (UTC)':<20}  {'TARGET':<24}  " + (f"{'VARIANT':<28}  " if compare else "")
    yield header + f"{'VERDICT':<22}  REASON"
    for judged in results:
        for change in judged.changes:
            reason = change.decision.reasons[0] if change.decision.reasons else ""
            if len(reason) > width:
                reason = reason[: width - 1] + "…"
            row = f"{_iso_t(judged.start + change.t):<20}  {judged.target:<24}  "
            row += f"{judged.variant[:28]:<28}  " if compare else ""
            yield row + f"{change.state:<22}  {reason}"
    yield ""
    for judged in results:
        s = summary(judged)
        which = f"{judged.target} [{judged.variant}]" if compare else judged.target
        if s["decision"] == "rollback":
            more = f" ({s['rollbacks']} in all)" if s["rollbacks"] > 1 else ""
            yield (f"{which}: would roll back ({s['mode']}) at {s['decided_at']}, "
                   f"{duration_text(s['after_s'])} into the range{more}")
        else:
            yield f"{which}: no rollback over {s['ticks']} ticks ({s['escalations']} escalations)"


def chart_document(results: Sequence[Judged], *, title: str) -> str:
    """One SVG file: per target and variant, a row of two charts (error rate, P95) of the
    candidate and the baseline, with the SLO lines and the marks of the decisions."""
    head = 28
    row_height = HEIGHT + 24
    rows = []
    for index, judged in enumerate(results):
        y = head + index * row_height
        slo = {"error_rate": judged.params.slo.max_error_rate, "p95_ms": judged.params.slo.max_p95_ms}
        marks: list[Mapping[str, Any]] = []
        for decision in judged.rollbacks:
            if decision.episode is not None:
                onset = decision.episode.onset
                marks.append({"kind": "first-bad", "t": onset, "label": "first bad interval"})
            marks.append({"kind": "decision", "t": decision.t,
                          "label": f"rollback decided ({decision.outcome.value})"})
        label = f"{judged.target} [{judged.variant}]"
        heading = f"{label}: error rate (left), P95 (right)"
        rows.append(f'<text class="row" x="4" y="{y + 14}">{_xml(heading)}</text>')
        for column, signal in enumerate(SIGNALS):
            caption = f"{signal.title} · {label}"
            svg = chart_svg(signal, judged.points, slo[signal.slo_key], marks, caption=caption,
                            at=(4 + column * (WIDTH + 12), y + 20))
            empty = f'<text class="axis" x="{4 + column * (WIDTH + 12)}" y="{y + 40}">no data</text>'
            rows.append(svg or empty)
    width = 8 + len(SIGNALS) * (WIDTH + 12)
    height = head + len(results) * row_height + 24
    legend = (
        f'<text class="axis" x="4" y="{height - 8}">candidate: orange · baseline: blue · SLO: dashed red · '
        "decision: red mark · first bad interval: dotted orange</text>"
    )
    style = ":root{--muted:#57606a;--line:#d0d7de}text{font-family:sans-serif}.title{font-size:14px}" \
            ".row{font-size:12px}" + CSS + "svg svg{display:inline}"  # nested: placed by x and y
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" class="chart">'
        f"<style>{style}</style>"
        f'<rect width="{width}" height="{height}" fill="#fff"/>'
        f'<text class="title" x="4" y="18">{_xml(title)}</text>'
        f'{"".join(rows)}{legend}</svg>\n'
    )


def _xml(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


# --- the command ------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rollbackd backtest``."""
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help="targets to judge, by name or namespace/name (default: all)")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="the configuration file (default: $ROLLBACKD_CONFIG), as 'run' reads it")
    parser.add_argument("--last", metavar="DURATION", help="the range up to now (or --to): 6h, 90m, 2d")
    parser.add_argument("--from", dest="start", metavar="TIME",
                        help="the range's start: a time (2026-11-24T02:00:00Z) or a duration ago (6h)")
    parser.add_argument("--to", dest="end", metavar="TIME", help="the range's end (default: now)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting for the whole run (repeatable), e.g. "
                        "--set defaults.slo.max_error_rate=0.02")
    parser.add_argument("--compare", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                        help="also judge the same history with these overrides, side by side (repeatable)")
    parser.add_argument("-o", "--output", choices=("table", "jsonl"), default="table",
                        help="table (default) or jsonl: one JSON object per verdict change, then a summary "
                        "per target")
    parser.add_argument("--chart", metavar="FILE.svg",
                        help="also draw the error rate and P95 with the SLO lines and the decisions")


def cli_backtest(
    args: argparse.Namespace,
    *,
    environ: Mapping[str, str],
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """``rollbackd backtest``: exit 0 (judged, whatever it decided), 2 (configuration or usage),
    3 (Prometheus could not give the history). Prints to ``out`` and ``err`` (default: the
    process's standard output and error)."""
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    try:
        settings = load_settings(resolve_config_path(args.config, environ=environ), environ=environ)
        runs = variants(settings, sets=args.sets, compares=args.compare)
        for variant in runs:
            selected(variant.settings, args.targets)
        begin, to = time_range(start=args.start, end=args.end, last=args.last, now=datetime.now(UTC))
    except (BacktestError, ConfigError) as exc:
        print(f"rollbackd backtest: {exc}", file=err)
        return EXIT_CONFIG
    start, end = begin.timestamp(), to.timestamp()
    try:
        results = asyncio.run(read_histories(runs, args.targets, start=start, end=end, environ=environ,
                                             notes=err))
    except BackendConfigError as exc:
        print(f"rollbackd backtest: {exc}", file=err)
        return EXIT_CONFIG
    except BacktestSourceError as exc:
        print(f"rollbackd backtest: {exc}", file=err)
        return EXIT_SOURCE
    lines = jsonl_lines(results) if args.output == "jsonl" else table_lines(results)
    for line in lines:
        print(line, file=out)
    if args.chart:
        title = f"rollbackd backtest {_iso(begin)} to {_iso(to)}"
        try:
            Path(args.chart).write_text(chart_document(results, title=title), encoding="utf-8")
        except OSError as exc:
            print(f"rollbackd backtest: --chart {args.chart}: cannot write: {exc.strerror or exc}", file=err)
            return EXIT_CONFIG
    return EXIT_OK
