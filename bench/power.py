"""Power benchmark: how soon each judge decides a regression, by effect size and traffic.

A canary release is healthy for :data:`HEALTHY_S`, then its error rate becomes ``effect`` times
the SLO (1.5x to 30x) at a canary traffic of 0.2 to 200 requests a second, and stays so for up
to :data:`WATCH_S`. For each cell of the grid and each judge (rollbackd with its anytime-valid
tests, rollbackd with the fixed-window tests alone as before, the Argo-style and Flagger-style
judges) the benchmark reports the median number of bad intervals seen when the rollback was
decided (2: on the second bad interval), how many releases were decided at all, and how many
were rolled back before the fault (false rollbacks).

A second table, the *slow burns*, is the case a window cannot hold: a release bad from its start
by a small effect at low traffic (:data:`SLOW_BURNS`), watched for :data:`SLOW_WATCH_S`; it reports
how many each judge decided and the median time it took.

    python -m bench.power [--seeds N] [--results DIR]

Writes ``power.json`` and ``power.md`` under ``bench/results``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import detection
from bench.judges import judge_argo, judge_flagger
from bench.soak import Judge, canary_scenario, canary_tick, rollbackd_judge
from bench.synth import HEALTHY, SLO_ERROR, Behaviour

INTERVAL_S = 10.0
HEALTHY_S = 600.0
WATCH_S = 7200.0
EFFECTS: tuple[float, ...] = (1.5, 3.0, 5.0, 10.0, 30.0)
TRAFFIC_RPS: tuple[float, ...] = (0.2, 2.0, 20.0, 200.0)
#: (effect, canary requests a second) of the slow burns: too small for the window at that traffic.
SLOW_BURNS: tuple[tuple[float, float], ...] = ((2.0, 0.2), (1.5, 2.0))
SLOW_WATCH_S = 12 * 3600.0
SLOW_SEEDS = 5


def release(effect: float, rps: float, *, seed: int) -> dict[str, Any]:
    """A canary healthy for :data:`HEALTHY_S`, then failing ``effect`` times the error SLO."""
    rng = random.Random(f"power/{effect}/{rps}/{seed}")
    bad = Behaviour(min(1.0, effect * SLO_ERROR), HEALTHY.median_ms)
    ticks = [
        canary_tick(
            rng,
            t,
            rps=rps,
            interval_s=INTERVAL_S,
            candidate=bad if t >= HEALTHY_S else HEALTHY,
            baseline=HEALTHY,
        )
        for t in (i * INTERVAL_S for i in range(int((HEALTHY_S + WATCH_S) / INTERVAL_S)))
    ]
    return canary_scenario(
        f"power-x{effect:g}-r{rps:g}-s{seed}",
        ticks,
        interval_s=INTERVAL_S,
        expect={"decision": "rollback", "mode": None, "fault_at_s": HEALTHY_S, "deadline_s": None},
    )


def slow_burn(effect: float, rps: float, *, seed: int) -> dict[str, Any]:
    """A canary failing ``effect`` times the error SLO from its start, for :data:`SLOW_WATCH_S`."""
    rng = random.Random(f"power/slow/{effect}/{rps}/{seed}")
    bad = Behaviour(min(1.0, effect * SLO_ERROR), HEALTHY.median_ms)
    ticks = [
        canary_tick(rng, i * INTERVAL_S, rps=rps, interval_s=INTERVAL_S, candidate=bad, baseline=HEALTHY)
        for i in range(int(SLOW_WATCH_S / INTERVAL_S))
    ]
    return canary_scenario(
        f"slow-burn-x{effect:g}-r{rps:g}-s{seed}",
        ticks,
        interval_s=INTERVAL_S,
        expect={"decision": "rollback", "mode": None, "fault_at_s": 0.0, "deadline_s": None},
    )


def judges() -> list[tuple[str, Judge]]:
    return [
        ("rollbackd", rollbackd_judge()),
        ("rollbackd-fixed-window", rollbackd_judge(anytime=False)),
        ("argo", judge_argo),
        ("flagger", judge_flagger),
    ]


def bad_intervals_seen(result: Mapping[str, Any]) -> float | None:
    """How many bad intervals the judge had seen when it decided to roll back (``None``: it did
    not; 0 or less: before the fault)."""
    at = result.get("decided_at_s")
    if result.get("decision") != "rollback" or at is None:
        return None
    return (float(at) - HEALTHY_S) / INTERVAL_S + 1


def power(seeds: int) -> dict[str, Any]:
    report: dict[str, Any] = {
        "interval_s": INTERVAL_S,
        "healthy_s": HEALTHY_S,
        "watch_s": WATCH_S,
        "seeds": seeds,
        "effects": EFFECTS,
        "traffic_rps": TRAFFIC_RPS,
        "judges": {},
    }
    scenarios = {
        (effect, rps): [release(effect, rps, seed=seed) for seed in range(seeds)]
        for effect in EFFECTS
        for rps in TRAFFIC_RPS
    }
    for name, judge in judges():
        started = time.perf_counter()
        cells: dict[str, Any] = {}
        for (effect, rps), group in scenarios.items():
            seen = [bad_intervals_seen(judge(scenario)) for scenario in group]
            after = [s for s in seen if s is not None and s > 0]
            cells[f"x{effect:g}/r{rps:g}"] = {
                "effect": effect,
                "rps": rps,
                "decided": len(after),
                "early": sum(1 for s in seen if s is not None and s <= 0),
                "median_bad_intervals": statistics.median(after) if after else None,
            }
        report["judges"][name] = {"cells": cells, "wall_s": round(time.perf_counter() - started, 1)}
    return report


def slow_burns(seeds: int) -> dict[str, Any]:
    """Per judge and slow burn: how many releases were rolled back, and the median hours it took."""
    groups = {
        (effect, rps): [slow_burn(effect, rps, seed=seed) for seed in range(seeds)]
        for effect, rps in SLOW_BURNS
    }
    out: dict[str, Any] = {"watch_s": SLOW_WATCH_S, "seeds": seeds, "judges": {}}
    for name, judge in judges():
        cells: dict[str, Any] = {}
        for (effect, rps), group in groups.items():
            hours = [
                float(r["decided_at_s"]) / 3600
                for r in map(judge, group)
                if r.get("decision") == "rollback" and r.get("decided_at_s") is not None
            ]
            cells[f"x{effect:g}/r{rps:g}"] = {
                "effect": effect,
                "rps": rps,
                "decided": len(hours),
                "median_hours": round(statistics.median(hours), 2) if hours else None,
            }
        out["judges"][name] = cells
    return out


def _cell(cell: Mapping[str, Any], seeds: int) -> str:
    median = cell["median_bad_intervals"]
    text = "-" if median is None else f"{median:g}"
    text += f" ({cell['decided']}/{seeds}"
    if cell["early"]:
        text += f", {cell['early']} early"
    return text + ")"


def to_markdown(report: Mapping[str, Any]) -> str:
    seeds = report["seeds"]
    lines = [
        "# Power benchmark: bad intervals seen before the rollback decision",
        "",
        f"A canary healthy for {report['healthy_s']:g} s, then failing effect x the 1% error SLO, watched "
        f"for {report['watch_s'] / 3600:g} h at {report['interval_s']:g} s intervals, {seeds} releases per "
        "cell (`bench/power.py`). Each cell: the median number of bad intervals seen when the rollback "
        "was decided (2 = on the second bad interval), then (decided after the fault / releases) and "
        "how many were rolled back before the fault (early: false rollbacks).",
        "",
    ]
    for name, row in report["judges"].items():
        lines += [
            f"## {name} ({row['wall_s']:g} s)",
            "",
            "| effect | " + " | ".join(f"{rps:g} req/s" for rps in report["traffic_rps"]) + " |",
            "|---|" + "---|" * len(report["traffic_rps"]),
        ]
        for effect in report["effects"]:
            cells = [row["cells"][f"x{effect:g}/r{rps:g}"] for rps in report["traffic_rps"]]
            lines.append(f"| {effect:g}x | " + " | ".join(_cell(c, seeds) for c in cells) + " |")
        lines.append("")
    slow = report.get("slow_burns")
    if slow:
        burns = list(next(iter(slow["judges"].values())).values())
        lines += [
            "## Slow burns: bad from the start by a small effect at low traffic",
            "",
            f"Watched for {slow['watch_s'] / 3600:g} h, {slow['seeds']} releases each: releases rolled back, "
            "and the median time to the decision.",
            "",
            "| judge | " + " | ".join(f"{b['effect']:g}x at {b['rps']:g} req/s" for b in burns) + " |",
            "|---|" + "---|" * len(burns),
        ]
        for name, cells in slow["judges"].items():
            texts = [
                f"{c['decided']}/{slow['seeds']}"
                + ("" if c["median_hours"] is None else f", {c['median_hours']:g} h")
                for c in cells.values()
            ]
            lines.append(f"| {name} | " + " | ".join(texts) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.power", description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="releases per effect and traffic level")
    parser.add_argument("--results", type=Path, default=detection.DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)
    report = power(args.seeds)
    report["slow_burns"] = slow_burns(SLOW_SEEDS)
    markdown = to_markdown(report)
    detection.write_results(args.results, "power", report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
