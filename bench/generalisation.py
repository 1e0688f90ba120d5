"""Generalisation benchmark: the three judges on generated recordings at other intervals and
traffic levels than the public scenarios (which are all 10 s intervals at ~100 canary requests
per interval).

    python -m bench.generalisation [--seeds N] [--results DIR]

Writes ``generalisation.json`` and ``generalisation.md`` under ``bench/results``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import detection
from bench.synth import suite

INTERVALS: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0)
RATES: tuple[float, ...] = (2.0, 10.0, 50.0)


def _row(name: str, summary: Mapping[str, Any], wall_s: float) -> str:
    o = summary["outcomes"]
    t = summary["time_to_decision"]

    def med(group: str, key: str) -> str:
        v = t[group][key]
        return "-" if v is None else f"{v:g}"

    return (
        f"| {name} | {summary['scenarios']} | {o['correct']} | {o['false_rollback']} | {o['missed']} | "
        f"{o['wrong_mode']} | {o['early']} | {med('immediate', 'median_delay_ticks')} | "
        f"{med('controlled', 'median_after_window_ticks')} | {wall_s:.1f} s |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generalisation", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--seeds", type=int, default=2, help="recordings per story, interval and traffic level"
    )
    parser.add_argument("--results", type=Path, default=detection.DEFAULT_RESULTS_DIR)
    args = parser.parse_args(argv)

    started = time.perf_counter()
    scenarios = list(suite(intervals=INTERVALS, rates=RATES, seeds=tuple(range(1, args.seeds + 1))))
    generated_s = time.perf_counter() - started
    rollbackd = detection.load_rollbackd_judge()
    runs, notes = detection.run_all_judges(scenarios, rollbackd=rollbackd)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)

    report: dict[str, Any] = {
        "scenarios": len(scenarios),
        "intervals_s": INTERVALS,
        "canary_rps": RATES,
        "seeds": args.seeds,
        "generation_s": round(generated_s, 2),
        "judges": {},
    }
    lines = [
        "# Generalisation benchmark",
        "",
        f"{len(scenarios)} generated recordings (`bench/synth.py`): 18 release stories x intervals "
        f"{', '.join(f'{i:g} s' for i in INTERVALS)} x canary traffic "
        f"{', '.join(f'{r:g}' for r in RATES)} req/s "
        f"x {args.seeds} seeds, same SLO (1% errors, P95 500 ms) and 120 s grace as the public scenarios.",
        "",
        "| judge | scenarios | correct | false rollbacks | missed | wrong mode | too early | "
        "immediate: median ticks to decision | controlled: median ticks after the grace | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    breakdown: list[str] = []
    for run in runs:
        summary = detection.summarize(run.scores)
        report["judges"][run.name] = {"summary": summary, "wall_s": round(run.wall_s, 3)}
        lines.append(_row(run.name, summary, run.wall_s))
        by_cell: dict[tuple[float, float], list[detection.Score]] = {}
        for scenario, sc in zip(scenarios, run.scores, strict=True):
            key = (float(scenario["interval_s"]), float(scenario["name"].split("-r")[-1].split("-s")[0]))
            by_cell.setdefault(key, []).append(sc)
        breakdown += [
            f"### {run.name}",
            "",
            "| interval | canary req/s | correct | false rollbacks | missed |",
            "|---|---|---|---|---|",
        ]
        for (interval, rps), scores in sorted(by_cell.items()):
            o = detection.summarize(scores)["outcomes"]
            cells = [f"{interval:g} s", f"{rps:g}", f"{o['correct']}/{len(scores)}"]
            breakdown.append("| " + " | ".join([*cells, str(o["false_rollback"]), str(o["missed"])]) + " |")
        breakdown.append("")
        failures = [
            f"- {sc.scenario}: {sc.outcome.value} ({sc.detail})"
            for sc in run.scores
            if sc.outcome is not detection.Outcome.CORRECT
        ]
        report["judges"][run.name]["failures"] = failures
    lines += ["", "## By interval and traffic", "", *breakdown]
    if runs and runs[0].name == "rollbackd":
        lines += [
            "## rollbackd's misjudged recordings",
            "",
            *(report["judges"]["rollbackd"]["failures"] or ["none"]),
        ]
    markdown = "\n".join(lines) + "\n"
    detection.write_results(args.results, "generalisation", report, markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
