"""``rollbackd replay``: the daemon's own detector and decision code over recorded releases.

A scenario's ``slo``, ``policy`` and ``context`` configure the run (defaults come from
``--config`` or the built-in ones); its ``expect`` block is the label and is never read here.
"""

from __future__ import annotations

import argparse
import json
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


def _sample(raw: Any, where: str) -> Sample | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ScenarioError(f"{where}: expected an object or null")
    try:
        requests = float(raw["requests"])
        errors = float(raw.get("errors", 0.0))
    except (KeyError, TypeError, ValueError) as exc:
        raise ScenarioError(f"{where}: needs numeric 'requests' and 'errors' ({exc})") from exc
    buckets = raw.get("latency_buckets")
    latency: Histogram | None = None
    if buckets:
        bounds = raw.get("latency_bounds_s", DEFAULT_BUCKETS_S)
        try:
            latency = Histogram(
                bounds_s=tuple(float(b) for b in bounds), counts=tuple(float(c) for c in buckets)
            )
        except (TypeError, ValueError) as exc:
            raise ScenarioError(f"{where}.latency_buckets: {exc}") from exc
    p95 = raw.get("p95_ms")
    return Sample(
        requests=requests, errors=errors, latency=latency, p95_ms=None if p95 is None else float(p95)
    )


def _health(raw: Any) -> tuple[HealthCheck, ...] | None:
    if not raw:
        return None
    return tuple(
        HealthCheck(
            path=str(h.get("path", "/")), status=None if h.get("status") is None else int(h["status"])
        )
        for h in raw
    )


def scenario_params(scenario: Mapping[str, Any], defaults: TargetParams | None = None) -> TargetParams:
    """The target parameters a scenario asks for, over ``defaults``."""
    name = str(scenario.get("name", "scenario"))
    kind = str(scenario.get("kind", "canary"))
    if kind not in _KINDS:
        raise ScenarioError(f"kind: expected one of {sorted(set(_KINDS))}, got {kind!r}")
    base = defaults or TargetParams(key=f"replay/{name}", strategy=_KINDS[kind], interval_s=10.0)
    slo_raw = scenario.get("slo") or {}
    slo = Slo(
        max_error_rate=float(slo_raw.get("max_error_rate", base.slo.max_error_rate)),
        max_p95_ms=float(slo_raw.get("max_p95_ms", base.slo.max_p95_ms)),
    )
    policy_raw = scenario.get("policy") or {}
    ctx_raw = scenario.get("context") or {}
    known = {f for f in Policy.__dataclass_fields__ if f != "rollback_risk"}
    policy = replace(
        base.policy,
        **{k: type(getattr(base.policy, k))(v) for k, v in policy_raw.items() if k in known},
        rollback_risk=Risk(str(ctx_raw.get("rollback_risk", base.policy.rollback_risk))),
    )
    return replace(
        base,
        key=f"replay/{name}",
        strategy=_KINDS[kind],
        interval_s=float(scenario.get("interval_s", base.interval_s)),
        slo=slo,
        policy=policy,
    )


def replay_scenario(scenario: Mapping[str, Any], defaults: TargetParams | None = None) -> dict[str, Any]:
    """Replay one parsed scenario; DESIGN.md's replay contract as a dict."""
    return run_scenario(scenario, defaults).as_json()


def run_scenario(scenario: Mapping[str, Any], defaults: TargetParams | None = None) -> ReplayResult:
    params = scenario_params(scenario, defaults)
    name = str(scenario.get("name", "scenario"))
    evaluator = TargetEvaluator(params)
    ctx_raw = scenario.get("context") or {}
    events = sorted(ctx_raw.get("events") or [], key=lambda e: float(e.get("t", 0)))
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
    for i, tick in enumerate(ticks):
        where = f"ticks[{i}]"
        try:
            t = float(tick["t"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ScenarioError(f"{where}.t: expected a number") from exc
        active = [e for e in events if float(e.get("t", 0)) <= t and e.get("type") == "fix_forward"]
        if active:
            latest = active[-1]
            hold = Hold(until=float(latest["t"]) + float(latest.get("eta_s", 0)), set_at=float(latest["t"]))
        health = tick.get("health") or {}
        obs = Observation(
            target=params.key,
            t=t,
            baseline=_sample(tick.get("baseline"), f"{where}.baseline"),
            candidate=_sample(tick.get("candidate"), f"{where}.candidate"),
            health_baseline=_health(health.get("baseline")),
            health_candidate=_health(health.get("candidate")),
        )
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


def load_scenario(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc
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
        print(f"{'scenario':<28} {'decision':<10} {'mode':<11} {'at':>6}  reason")
    for path in paths:
        try:
            result = replay_files([path], defaults)[0]
        except ScenarioError as exc:
            print(f"rollbackd replay: {exc}", file=sys.stderr)
            status = 2
            continue
        if table:
            print(format_row(result), flush=True)
        else:
            print(json.dumps(result), flush=True)
    return status


def format_row(result: Mapping[str, Any], width: int = 110) -> str:
    """One readable line: the verdict, then the first reason shortened to fit."""
    at = "-" if result["decided_at_s"] is None else f"{result['decided_at_s']:g}s"
    reason = str(result["reason"]).split("; ")[0]
    if len(reason) > width:
        reason = reason[: width - 1] + "…"
    return f"{result['scenario']:<28} {result['decision']:<10} {result['mode'] or '-':<11} {at:>6}  {reason}"
