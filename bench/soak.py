"""Soak benchmark: false rollbacks per 1,000 healthy target-hours, rollbackd against itself before
the anytime-valid tests and against the Argo-style and Flagger-style judges.

Every release here is healthy: the candidate is never worse than its SLO, and whatever goes wrong
goes wrong for both arms alike. A rollback is a false rollback. The releases are long (10 hours
each) so the judges look hundreds of times, in varied shapes:

* ``noise``: ordinary Poisson traffic and binomial errors well within the SLO;
* ``near-slo``: the candidate at 80% of the error SLO and a P95 just under its ceiling;
* ``bursty``: over-dispersed errors per arm (each interval's rate drawn from a gamma with the
  healthy mean and a coefficient of variation of 2);
* ``low-traffic``: 0.2 canary requests a second (a few per interval);
* ``heavy-tails``: log-normal latencies with a wide spread, P95 just under the ceiling;
* ``diurnal``: traffic swinging by +/-80% over the day;
* ``blips``: dependency failures shared by both arms, about one an hour, 1.5 to 3 minutes of 8-15%
  errors and slow requests.

    python -m bench.soak [--hours N] [--results DIR]

Writes ``soak.json`` and ``soak.md`` under ``bench/results``.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import detection
from bench.judges import judge_argo, judge_flagger
from bench.synth import HEALTHY, SLO_ERROR, SLO_P95_MS, Behaviour, _poisson, _side
from rollbackd.model import Strategy
from rollbackd.params import Detection, TargetParams
from rollbackd.replay import replay_scenario

INTERVAL_S = 30.0
DEFAULT_ALPHA = Detection().alpha
RELEASE_HOURS = 10.0
CANARY_RPS = 2.0
#: The baseline takes nine times the canary's traffic (a 10% canary).
BASELINE_SHARE = 9.0

#: One tick's behaviour: (canary requests a second, canary, baseline) at ``t`` seconds.
TickShape = Callable[[random.Random, float], tuple[float, Behaviour, Behaviour]]


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    describe: str
    make: Callable[[random.Random], TickShape]


def _steady(
    rps: float, candidate: Behaviour, baseline: Behaviour = HEALTHY
) -> Callable[[random.Random], TickShape]:
    def make(_: random.Random) -> TickShape:
        return lambda _rng, _t: (rps, candidate, baseline)

    return make


def _bursty(rng: random.Random) -> TickShape:
    shape = 0.25  # coefficient of variation 1 / sqrt(shape) = 2

    def tick(rng: random.Random, _t: float) -> tuple[float, Behaviour, Behaviour]:
        rates = [min(1.0, rng.gammavariate(shape, HEALTHY.error_rate / shape)) for _ in range(2)]
        return CANARY_RPS, Behaviour(rates[0], HEALTHY.median_ms), Behaviour(rates[1], HEALTHY.median_ms)

    return tick


def _diurnal(rng: random.Random) -> TickShape:
    phase = rng.uniform(0.0, 86400.0)

    def tick(_rng: random.Random, t: float) -> tuple[float, Behaviour, Behaviour]:
        return CANARY_RPS * (1.0 + 0.8 * math.sin(2 * math.pi * (t + phase) / 86400.0)), HEALTHY, HEALTHY

    return tick


def _blips(rng: random.Random) -> TickShape:
    until = -1.0
    blip = HEALTHY

    def tick(rng: random.Random, t: float) -> tuple[float, Behaviour, Behaviour]:
        nonlocal until, blip
        if t >= until and rng.random() < INTERVAL_S / 3600.0:
            until = t + rng.choice((3, 4, 5, 6)) * INTERVAL_S
            blip = Behaviour(rng.uniform(0.08, 0.15), rng.uniform(300.0, 600.0))
        if t < until:
            return CANARY_RPS, blip, blip
        return CANARY_RPS, HEALTHY, HEALTHY

    return tick


def shapes() -> list[Shape]:
    """The healthy shapes of the soak (see the module docstring)."""
    near_p95 = SLO_P95_MS * 0.9 / math.exp(1.645 * HEALTHY.sigma)  # a median whose P95 is 90% of the SLO
    return [
        Shape("noise", "ordinary noise, 0.2% errors", _steady(CANARY_RPS, HEALTHY)),
        Shape(
            "near-slo",
            "errors at 80% of the SLO, P95 at 90% of the ceiling",
            _steady(CANARY_RPS, Behaviour(0.8 * SLO_ERROR, near_p95)),
        ),
        Shape("bursty", "over-dispersed errors per arm (CV 2)", _bursty),
        Shape("low-traffic", "0.2 canary req/s", _steady(0.2, HEALTHY)),
        Shape(
            "heavy-tails",
            "wide log-normal latencies, P95 just under the ceiling",
            _steady(CANARY_RPS, Behaviour(0.002, 150.0, 0.7), Behaviour(0.002, 150.0, 0.7)),
        ),
        Shape("diurnal", "traffic +/-80% over the day", _diurnal),
        Shape("blips", "shared dependency blips, about one an hour", _blips),
    ]


def release(
    shape: Shape, *, seed: int, hours: float = RELEASE_HOURS, interval_s: float = INTERVAL_S
) -> dict[str, Any]:
    """One healthy release of ``shape`` in the scenario format: ``hours`` long."""
    rng = random.Random(f"soak/{shape.name}/{seed}/{interval_s}")
    tick_shape = shape.make(rng)
    ticks = []
    for i in range(int(hours * 3600 / interval_s)):
        t = i * interval_s
        rps, candidate, baseline = tick_shape(rng, t)
        tick = canary_tick(rng, t, rps=rps, interval_s=interval_s, candidate=candidate, baseline=baseline)
        ticks.append(tick)
    scenario = canary_scenario(
        f"soak-{shape.name}-s{seed}",
        ticks,
        interval_s=interval_s,
        expect={"decision": "none", "mode": None, "fault_at_s": None, "deadline_s": None},
    )
    return {**scenario, "shape": shape.name}


def canary_tick(
    rng: random.Random, t: float, *, rps: float, interval_s: float, candidate: Behaviour, baseline: Behaviour
) -> dict[str, Any]:
    """One tick of a 10% canary at ``rps`` canary requests a second."""
    return {
        "t": t,
        "baseline": _side(rng, _poisson(rng, rps * BASELINE_SHARE * interval_s), baseline),
        "candidate": _side(rng, _poisson(rng, rps * interval_s), candidate),
    }


def canary_scenario(
    name: str, ticks: list[dict[str, Any]], *, interval_s: float, expect: dict[str, Any]
) -> dict[str, Any]:
    """A canary recording in the scenario format, with the synthetic SLO and grace."""
    return {
        "name": name,
        "kind": "canary",
        "interval_s": interval_s,
        "deploy_at_s": 0,
        "slo": {"max_error_rate": SLO_ERROR, "max_p95_ms": SLO_P95_MS},
        "policy": {"controlled_grace_s": 120.0},
        "context": {"rollback_risk": "low", "events": []},
        "ticks": ticks,
        "expect": expect,
    }


Judge = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def rollbackd_judge(*, alpha: float = DEFAULT_ALPHA, anytime: bool = True) -> Judge:
    """rollbackd's replay with ``detection.alpha`` and ``detection.anytime`` set."""
    defaults = TargetParams(
        key="bench/soak",
        strategy=Strategy.CANARY,
        interval_s=INTERVAL_S,
        detection=replace(Detection(), alpha=alpha, anytime=anytime),
    )
    return lambda scenario: replay_scenario(scenario, defaults)


def judges(*, high_alpha: float) -> list[tuple[str, str, Judge]]:
    """The judges compared: (name, what it is, judge)."""
    return [
        ("rollbackd", f"anytime-valid tests, alpha {DEFAULT_ALPHA:g} (the default)", rollbackd_judge()),
        ("rollbackd-high-alpha", f"the same with alpha {high_alpha:g}", rollbackd_judge(alpha=high_alpha)),
        (
            "rollbackd-fixed-window",
            "the fixed-window tests alone (detection.anytime false)",
            rollbackd_judge(anytime=False),
        ),
        ("argo", "Argo Rollouts-style analysis", judge_argo),
        ("flagger", "Flagger-style analysis", judge_flagger),
    ]


def releases(hours: float, *, release_hours: float = RELEASE_HOURS) -> Iterator[dict[str, Any]]:
    """Healthy releases of every shape in turn until ``hours`` target-hours are generated."""
    kinds = shapes()
    count = math.ceil(hours / release_hours)
    for i in range(count):
        yield release(kinds[i % len(kinds)], seed=i // len(kinds), hours=release_hours)


def soak(
    hours: float,
    *,
    high_alpha: float,
    release_hours: float = RELEASE_HOURS,
    compared: Sequence[tuple[str, str, Judge]] | None = None,
) -> dict[str, Any]:
    """Every judge (:func:`judges` unless ``compared``) over the same ``hours`` of healthy
    releases of ``release_hours`` each; the false rollbacks each made."""
    started = time.perf_counter()
    scenarios = list(releases(hours, release_hours=release_hours))
    generated_s = time.perf_counter() - started
    total_hours = sum(len(s["ticks"]) * s["interval_s"] for s in scenarios) / 3600.0
    report: dict[str, Any] = {
        "target_hours": round(total_hours, 1),
        "releases": len(scenarios),
        "release_hours": release_hours,
        "interval_s": INTERVAL_S,
        "generation_s": round(generated_s, 1),
        "judges": {},
    }
    for name, describe, judge in compared if compared is not None else judges(high_alpha=high_alpha):
        started = time.perf_counter()
        false: list[dict[str, Any]] = []
        by_shape: dict[str, int] = {shape.name: 0 for shape in shapes()}
        for scenario in scenarios:
            result = judge(scenario)
            if result.get("decision") == "rollback":
                by_shape[scenario["shape"]] += 1
                at_s, reason = result.get("decided_at_s"), result.get("reason")
                false.append({"release": scenario["name"], "at_s": at_s, "reason": reason})
        report["judges"][name] = {
            "describe": describe,
            "false_rollbacks": len(false),
            "per_1000_target_hours": round(1000.0 * len(false) / total_hours, 2),
            "releases_rolled_back": round(len(false) / len(scenarios), 4),
            "by_shape": by_shape,
            "examples": false[:5],
            "wall_s": round(time.perf_counter() - started, 1),
        }
    return report


def to_markdown(report: Mapping[str, Any], *, high_alpha: float) -> str:
    kinds = shapes()
    lines = [
        "# Soak benchmark: false rollbacks of healthy releases",
        "",
        f"{report['target_hours']:g} healthy target-hours: {report['releases']} releases of "
        f"{report['release_hours']:g} h at {report['interval_s']:g} s intervals (`bench/soak.py`), shapes: "
        + "; ".join(f"{s.name} ({s.describe})" for s in kinds)
        + ". Every rollback is a false one.",
        "",
        "| judge | false rollbacks | per 1,000 target-hours | share of releases | "
        + " | ".join(s.name for s in kinds)
        + " | wall |",
        "|---|---|---|---|" + "---|" * len(kinds) + "---|",
    ]
    for name, row in report["judges"].items():
        shape_cells = " | ".join(str(row["by_shape"][s.name]) for s in kinds)
        lines.append(
            f"| {name}: {row['describe']} | {row['false_rollbacks']} | {row['per_1000_target_hours']:g} | "
            f"{row['releases_rolled_back'] * 100:.1f}% | {shape_cells} | {row['wall_s']:g} s |"
        )
    high = report["judges"].get("rollbackd-high-alpha")
    if high is not None:
        lines += [
            "",
            f"With alpha {high_alpha:g} the share of healthy releases rolled back is "
            f"{high['releases_rolled_back'] * 100:.1f}%, to be at most {high_alpha * 100:g}%: the bound "
            "holds per release, however long it is watched (severe breaches, decided on the window, are "
            "outside it).",
        ]
    examples = [(name, ex) for name, row in report["judges"].items() for ex in row["examples"][:2]]
    if examples:
        lines += ["", "## Examples", ""]
        lines += [f"- {name}, {ex['release']} at {ex['at_s']}s: {ex['reason']}" for name, ex in examples]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=1050.0, help="healthy target-hours to generate")
    parser.add_argument("--high-alpha", type=float, default=0.2, help="the deliberately high alpha compared")
    parser.add_argument("--results", type=Path, default=detection.DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    report = soak(args.hours, high_alpha=args.high_alpha)
    markdown = to_markdown(report, high_alpha=args.high_alpha)
    detection.write_results(args.results, "soak", report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
