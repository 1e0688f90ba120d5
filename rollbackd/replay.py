"""``rollbackd replay``: the daemon's own detector and decision code over recorded releases.

A scenario's ``slo``, ``policy`` and ``context`` configure the run (defaults come from
``--config`` or the built-in ones); its ``expect`` block is the label and is never read here.

A file that cannot be replayed is a :class:`ScenarioError` naming the file, the tick (index and
``t``) and the field: not UTF-8 JSON, a string where a number belongs, a count that no real
service produces (:mod:`rollbackd.plausibility`; errors beyond the requests are refused outright),
an SLO or interval that is not positive, ``t`` that does not increase. It is never judged.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rollbackd.evaluate import TargetEvaluator
from rollbackd.model import (
    DEFAULT_BUCKETS_S,
    Context,
    Decision,
    HealthCheck,
    Histogram,
    Hold,
    Observation,
    Outcome,
    Risk,
    Sample,
    Slo,
    Strategy,
)
from rollbackd.params import Policy, TargetParams
from rollbackd.plausibility import MAX_COUNT, count_problem, sample_problem

_KINDS = {
    "canary": Strategy.CANARY,
    "blue-green": Strategy.BLUE_GREEN,
    "bluegreen": Strategy.BLUE_GREEN,
    "rolling": Strategy.DEPLOYMENT,
    "deployment": Strategy.DEPLOYMENT,
}


class ScenarioError(ValueError):
    """A scenario file that cannot be replayed; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class ReplayResult:
    scenario: str
    decision: str
    mode: str | None
    decided_at_s: float | None
    reason: str
    ticks: int
    escalations: int

    def as_json(self) -> dict[str, Any]:
        decided = self.decided_at_s
        return {
            "scenario": self.scenario,
            "decision": self.decision,
            "mode": self.mode,
            "decided_at_s": int(decided) if decided is not None and float(decided).is_integer() else decided,
            "reason": self.reason,
            "ticks": self.ticks,
            "escalations": self.escalations,
        }


def _number(raw: Any, where: str, *, minimum: float | None = None, positive: bool = False) -> float:
    """``raw`` as a finite JSON number (not a string, not a boolean), or a :class:`ScenarioError`
    naming ``where``."""
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise ScenarioError(f"{where}: expected a number, got {_shown(raw)}")
    try:
        value = float(raw)
    except OverflowError:
        raise ScenarioError(f"{where}: {_shown(raw)} is too large") from None
    if not math.isfinite(value):
        raise ScenarioError(f"{where}: expected a finite number, got {value!r}")
    if positive and value <= 0:
        raise ScenarioError(f"{where}: must be more than 0, got {value:g}")
    if minimum is not None and value < minimum:
        raise ScenarioError(f"{where}: must be at least {minimum:g}, got {value:g}")
    return value


def _shown(raw: Any) -> str:
    """A short rendering of a JSON value for an error message."""
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, Mapping):
        return "an object"
    text = json.dumps(raw) if raw is None or isinstance(raw, bool) else repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def _object(raw: Any, where: str) -> Mapping[str, Any]:
    """``raw`` when it is a JSON object, ``{}`` for null or absent."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: expected an object, got {_shown(raw)}")
    return raw


def _count(raw: Any, where: str) -> float:
    if (type(raw) is int or type(raw) is float) and 0 <= raw <= MAX_COUNT:  # the common case, quickly
        return float(raw)
    value = _number(raw, where)
    problem = count_problem(where, value)
    if problem is not None:
        raise ScenarioError(str(problem))
    return value


def _sample(raw: Any, where: str) -> Sample | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: expected an object or null")
    if "requests" not in raw:
        raise ScenarioError(f"{where}.requests: missing (needs numeric 'requests' and 'errors')")
    requests = _count(raw["requests"], f"{where}.requests")
    errors = _count(raw.get("errors", 0.0), f"{where}.errors")
    buckets = raw.get("latency_buckets")
    latency: Histogram | None = None
    if buckets:
        if not isinstance(buckets, list):
            raise ScenarioError(f"{where}.latency_buckets: expected a list of counts, got {_shown(buckets)}")
        bounds = raw.get("latency_bounds_s")
        if bounds is not None and not isinstance(bounds, list):
            raise ScenarioError(f"{where}.latency_bounds_s: expected a list of bounds, got {_shown(bounds)}")
        counts = tuple(_count(c, f"{where}.latency_buckets[{i}]") for i, c in enumerate(buckets))
        bounds_s = DEFAULT_BUCKETS_S
        if bounds is not None:
            bounds_s = tuple(_bound(b, f"{where}.latency_bounds_s") for b in bounds)
        try:
            latency = Histogram(bounds_s=bounds_s, counts=counts)
        except ValueError as exc:
            raise ScenarioError(f"{where}.latency_buckets: {exc}") from exc
    p95 = raw.get("p95_ms")
    sample = Sample(
        requests=requests,
        errors=errors,
        latency=latency,
        p95_ms=None if p95 is None else _number(p95, f"{where}.p95_ms", minimum=0.0),
    )
    problem = sample_problem(sample)  # no slack: a recording's errors never exceed its requests
    if problem is not None:
        raise ScenarioError(f"{where}.{problem}")
    return sample


def _bound(raw: Any, where: str) -> float:
    if raw in ("+Inf", "Inf", "inf", "+inf"):
        return math.inf
    if isinstance(raw, float) and math.isinf(raw) and raw > 0:
        return math.inf
    return _number(raw, where)


def _health(raw: Any, where: str) -> tuple[HealthCheck, ...] | None:
    if not raw:
        return None
    if not isinstance(raw, list):
        raise ScenarioError(f"{where}: expected a list of probe results, got {_shown(raw)}")
    checks = []
    for i, h in enumerate(raw):
        entry = _object(h, f"{where}[{i}]")
        status = entry.get("status")
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)
                                   or not 0 <= status <= 999):
            raise ScenarioError(f"{where}[{i}].status: expected an HTTP status or null, got {_shown(status)}")
        checks.append(HealthCheck(path=str(entry.get("path", "/")), status=status))
    return tuple(checks)


def scenario_params(scenario: Mapping[str, Any], defaults: TargetParams | None = None) -> TargetParams:
    """The target parameters a scenario asks for, over ``defaults``."""
    name = str(scenario.get("name", "scenario"))
    kind = scenario.get("kind", "canary")
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ScenarioError(f"kind: expected one of {sorted(set(_KINDS))}, got {_shown(kind)}")
    base = defaults or TargetParams(key=f"replay/{name}", strategy=_KINDS[kind], interval_s=10.0)
    slo_raw = _object(scenario.get("slo"), "slo")
    max_error_rate = base.slo.max_error_rate
    if "max_error_rate" in slo_raw:
        max_error_rate = _number(slo_raw["max_error_rate"], "slo.max_error_rate", positive=True)
        if max_error_rate > 1:
            raise ScenarioError(
                f"slo.max_error_rate: a fraction of the requests, at most 1, got {max_error_rate:g}"
            )
    max_p95_ms = base.slo.max_p95_ms
    if "max_p95_ms" in slo_raw:
        max_p95_ms = _number(slo_raw["max_p95_ms"], "slo.max_p95_ms", positive=True)
    slo = Slo(max_error_rate=max_error_rate, max_p95_ms=max_p95_ms)
    policy_raw = _object(scenario.get("policy"), "policy")
    ctx_raw = _object(scenario.get("context"), "context")
    known = {f for f in Policy.__dataclass_fields__ if f != "rollback_risk"}
    overrides: dict[str, Any] = {}
    for key, value in policy_raw.items():
        if key not in known:
            continue
        number = _number(value, f"policy.{key}", minimum=0.0)
        if isinstance(getattr(base.policy, key), int):
            if not number.is_integer():
                raise ScenarioError(f"policy.{key}: expected a whole number, got {number:g}")
            overrides[key] = int(number)
        else:
            overrides[key] = number
    risk = ctx_raw.get("rollback_risk", base.policy.rollback_risk)
    if not isinstance(risk, str) or risk not in {r.value for r in Risk}:
        raise ScenarioError(
            f"context.rollback_risk: expected one of {sorted(r.value for r in Risk)}, got {_shown(risk)}"
        )
    policy = replace(base.policy, **overrides, rollback_risk=Risk(risk))
    interval_s = base.interval_s
    if "interval_s" in scenario:
        interval_s = _number(scenario["interval_s"], "interval_s", positive=True)
    return replace(
        base,
        key=f"replay/{name}",
        strategy=_KINDS[kind],
        interval_s=interval_s,
        slo=slo,
        policy=policy,
    )


def _events(ctx_raw: Mapping[str, Any]) -> list[tuple[float, float]]:
    """The scenario's fix-forward announcements as ``(t, eta_s)``, in time order."""
    raw = ctx_raw.get("events") or []
    if not isinstance(raw, list):
        raise ScenarioError(f"context.events: expected a list, got {_shown(raw)}")
    found: list[tuple[float, float]] = []
    for i, event in enumerate(raw):
        where = f"context.events[{i}]"
        entry = _object(event, where)
        t = _number(entry.get("t", 0), f"{where}.t")
        if entry.get("type") == "fix_forward":
            found.append((t, _number(entry.get("eta_s", 0), f"{where}.eta_s", minimum=0.0)))
    return sorted(found, key=lambda event: event[0])


def replay_scenario(scenario: Mapping[str, Any], defaults: TargetParams | None = None) -> dict[str, Any]:
    """Replay one parsed scenario; DESIGN.md's replay contract as a dict."""
    return run_scenario(scenario, defaults).as_json()


def run_scenario(scenario: Mapping[str, Any], defaults: TargetParams | None = None) -> ReplayResult:
    params = scenario_params(scenario, defaults)
    name = str(scenario.get("name", "scenario"))
    evaluator = TargetEvaluator(params)
    ctx_raw = _object(scenario.get("context"), "context")
    events = _events(ctx_raw)
    base_ctx = Context(
        rollback_risk=params.policy.rollback_risk,
        risk_reason="release marked high-risk in the scenario"
        if params.policy.rollback_risk is Risk.HIGH
        else "",
        max_rollbacks_per_hour=params.policy.max_rollbacks_per_hour,
    )
    hold: Hold | None = None
    escalations = 0
    last: Decision | None = None
    ticks = scenario.get("ticks")
    if not isinstance(ticks, list):
        raise ScenarioError("ticks: expected a list")
    observations = _observations(ticks, params.key)  # the whole file is checked before judging
    for i, obs in enumerate(observations):
        t = obs.t
        active = [event for event in events if event[0] <= t]
        if active:
            announced, eta_s = active[-1]
            hold = Hold(until=announced + eta_s, set_at=announced)
        decision = evaluator.step(obs, replace(base_ctx, hold=hold))
        last = decision
        escalations += int(decision.escalate)
        if decision.rollback:
            return ReplayResult(
                scenario=name,
                decision="rollback",
                mode=decision.outcome.value,
                decided_at_s=t,
                reason=decision.reason,
                ticks=i + 1,
                escalations=escalations,
            )
    reason = last.reason if last is not None else "no ticks"
    if last is not None and last.outcome is Outcome.INCONCLUSIVE:
        reason = f"inconclusive at the end: {reason}"
    return ReplayResult(
        scenario=name,
        decision="none",
        mode=None,
        decided_at_s=None,
        reason=reason,
        ticks=len(ticks),
        escalations=escalations,
    )


def _observations(ticks: Sequence[Any], key: str) -> list[Observation]:
    """Every tick as an :class:`Observation`, or the :class:`ScenarioError` of the first one that
    cannot be (naming its index, its ``t`` and the field)."""
    observations: list[Observation] = []
    previous_t: float | None = None
    for i, tick in enumerate(ticks):
        where = f"ticks[{i}]"
        if not isinstance(tick, Mapping) or "t" not in tick:
            raise ScenarioError(f"{where}.t: expected a number")
        t = _number(tick["t"], f"{where}.t")
        if previous_t is not None and t <= previous_t:
            raise ScenarioError(f"{where}.t: {t:g} is not later than the previous tick's t={previous_t:g}")
        previous_t = t
        try:
            health = _object(tick.get("health"), f"{where}.health")
            observations.append(Observation(
                target=key,
                t=t,
                baseline=_sample(tick.get("baseline"), f"{where}.baseline"),
                candidate=_sample(tick.get("candidate"), f"{where}.candidate"),
                health_baseline=_health(health.get("baseline"), f"{where}.health.baseline"),
                health_candidate=_health(health.get("candidate"), f"{where}.health.candidate"),
            ))
        except ScenarioError as exc:
            field, _, problem = str(exc).partition(": ")
            raise ScenarioError(f"{field} (tick at t={t:g}): {problem}") from None
    return observations


def load_scenario(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"{path}: not UTF-8 text (byte {exc.start}): a scenario is a JSON file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
    except RecursionError:
        raise ScenarioError(f"{path}: invalid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer of thousands of digits
        problem = "a number with too many digits" if "digits" in str(exc) else str(exc)
        raise ScenarioError(f"{path}: invalid JSON: {problem}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: expected a JSON object at the top level")
    data.setdefault("name", path.stem)
    return data


def replay_files(paths: Sequence[Path], defaults: TargetParams | None = None) -> list[dict[str, Any]]:
    results = []
    for path in paths:
        scenario = load_scenario(path)
        try:
            results.append(replay_scenario(scenario, defaults))
        except ScenarioError as exc:
            raise ScenarioError(f"{path}: {exc}") from exc
    return results


def cli_replay(args: argparse.Namespace) -> int:
    """Entry point of ``rollbackd replay FILE... [--config FILE]``."""
    defaults: TargetParams | None = None
    if getattr(args, "config", None):
        from rollbackd.config.loader import ConfigError, load_settings
        from rollbackd.config.resolve import default_params

        try:
            settings = load_settings(Path(args.config), environ={})
        except ConfigError as exc:
            print(str(exc), file=sys.stderr)
            return 2
        defaults = default_params(settings)
    paths: list[Path] = []
    for name in args.files:
        path = Path(name)
        paths.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    status = 0
    table = getattr(args, "format", "json") == "table"
    if table:
        header = f"{'scenario':<28} {'decision':<10} {'mode':<11} {'at':>6}  {'expected':<20} {'match':<5}"
        print(header + "  reason")
    labelled = matched = 0
    for path in paths:
        try:
            result = replay_files([path], defaults)[0]
            expect = load_scenario(path).get("expect")
        except ScenarioError as exc:
            print(f"rollbackd replay: {_one_line(str(exc))}", file=sys.stderr, flush=True)
            status = 2
            continue
        except (Exception, RecursionError, MemoryError) as exc:  # a defect: still one line, and go on
            print(f"rollbackd replay: {path}: cannot replay: {type(exc).__name__}: {_one_line(str(exc))}",
                  file=sys.stderr, flush=True)
            status = 2
            continue
        if not table:
            print(json.dumps(result), flush=True)
            continue
        problem = label_mismatch(result, expect) if isinstance(expect, Mapping) else None
        if isinstance(expect, Mapping):
            labelled += 1
            matched += problem is None
        print(format_row(result, expect=expect if isinstance(expect, Mapping) else None, problem=problem),
              flush=True)
    if table and labelled:
        print(f"\n{matched} of {labelled} labelled recordings decided as expected"
              + ("" if matched == labelled else f"; {labelled - matched} did not (see 'match')"))
    return status


def label_mismatch(result: Mapping[str, Any], expect: Mapping[str, Any]) -> str | None:
    """``None`` when a replay ``result`` matches a recording's label (its ``expect`` block: the
    decision, the mode, and a rollback decided between ``fault_at_s`` (or ``not_before_s``) and
    ``deadline_s``), else what differs."""
    if result["decision"] != expect.get("decision"):
        return f"decided {result['decision']}, expected {expect.get('decision')}"
    if expect.get("decision") != "rollback":
        return None
    at = result["decided_at_s"]
    if expect.get("mode") and result["mode"] != expect["mode"]:
        return f"mode {result['mode']}, expected {expect['mode']}"
    bounds = [expect.get(key) for key in ("fault_at_s", "not_before_s")]
    earliest = max((float(bound) for bound in bounds if isinstance(bound, int | float)), default=None)
    if at is not None and earliest is not None and at < earliest:
        return f"decided at {at:g}s, before {earliest:g}s"
    deadline = expect.get("deadline_s")
    if at is not None and isinstance(deadline, int | float) and at > deadline:
        return f"decided at {at:g}s, after the deadline {deadline:g}s"
    return None


def expected_text(expect: Mapping[str, Any] | None) -> str:
    """A label in a few characters: ``none``, ``rollback immediate``, ``rollback <=220s``."""
    if expect is None:
        return "-"
    text = str(expect.get("decision", "-"))
    if expect.get("mode"):
        text += f" {expect['mode']}"
    elif isinstance(expect.get("deadline_s"), int | float):
        text += f" <={expect['deadline_s']:g}s"
    return text


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_row(
    result: Mapping[str, Any],
    width: int = 110,
    *,
    expect: Mapping[str, Any] | None = None,
    problem: str | None = None,
) -> str:
    """One readable line: the verdict, the label it is held against (``expect``: ``match`` yes,
    or no with ``problem`` before the reason), then the first reason shortened to fit."""
    at = "-" if result["decided_at_s"] is None else f"{result['decided_at_s']:g}s"
    reason = str(result["reason"]).split("; ")[0]
    if problem is not None:
        reason = f"{problem}: {reason}"
    if len(reason) > width:
        reason = reason[: width - 1] + "…"
    match = "-" if expect is None else "yes" if problem is None else "NO"
    return (
        f"{result['scenario']:<28} {result['decision']:<10} {result['mode'] or '-':<11} {at:>6}  "
        f"{expected_text(expect):<20} {match:<5}  {reason}"
    )
