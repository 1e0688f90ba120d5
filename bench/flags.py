"""Benchmark: the feature-flag lever (issue 17), alone and in the closed loop.

1. The lever alone: :class:`~rollbackd.actions.feature_flag.FeatureFlagOff` turning a flag off,
   20 times per store, the flag turned on again between runs: ``store.kind: sql`` on a real
   PostgreSQL table (a fresh connection per run, the DSN read from its file, read -> UPDATE ->
   read in one transaction), ``store.kind: http`` against the sample app's admin API in its own
   process (the token read from its file, a read before and after). Reported: ``api_s`` (the
   lever's own work) median, p95 and max. Target: under 1 s.
2. The closed loop (:mod:`rollbackd.demo.flagloop`), 3 times per store: the flag goes on (announced
   as a release), the sample app fails 30% of its 100 requests per second, the daemon (evaluating
   every second, reading the app's metrics each time as a 1 s scrape would) decides and turns the
   flag off, and verifies over 5 s. Reported per run: flag on -> decision, decision -> lever done
   (rollbackd's own work: recording the start, then the lever), flag on -> flag off (target: under
   5 s), flag on -> verified.

Run from the repository root: ``python -m bench.flags`` (about two minutes; needs PostgreSQL, the
``ROLLBACKD_TEST_POSTGRES_DSN`` or the local ``test`` database). Results go to
``bench/results/flags.json`` and ``.md``. The exit status is 1 when a target was missed or a run
failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.stats import percentile
from rollbackd.actions.base import ActionOutcome
from rollbackd.actions.feature_flag import FeatureFlagOff
from rollbackd.actions.flag_http import HttpFlag
from rollbackd.actions.flag_sql import SqlFlag
from rollbackd.actions.flagstore import FlagStore
from rollbackd.demo import flagloop
from rollbackd.demo.flagloop import FlagLoopOptions, FlagStoreKind, run_flag_loop

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RUNS = 20
LOOP_RUNS = 3
MAX_LEVER_S = 1.0
MAX_ON_TO_OFF_S = 5.0
DSN = os.environ.get("ROLLBACKD_TEST_POSTGRES_DSN") or flagloop.DEFAULT_DSN


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "p95": percentile(values, 0.95), "max": max(values)}


async def lever_runs(kind: FlagStoreKind, work: Path, runs: int) -> list[float]:
    """``api_s`` of ``runs`` lever runs on the store ``kind``, the flag on before each."""
    options = FlagLoopOptions(work_dir=work / f"lever-{kind}", store=kind, dsn=DSN, rps=0.0)
    async with flagloop.flag_store(options) as (_, settings, flag):
        store: FlagStore = (
            SqlFlag(settings, flag=flagloop.FLAG)
            if settings.kind == "sql"
            else HttpFlag(settings, flag=flagloop.FLAG)
        )
        times: list[float] = []
        for _ in range(runs):
            await flag.set(True)
            result = await FeatureFlagOff(target=flagloop.KEY, flag=flagloop.FLAG, store=store).run(
                dry_run=False
            )
            if result.outcome is not ActionOutcome.DONE:
                raise RuntimeError(f"the {kind} lever ended {result.outcome}: {result.reason}")
            times.append(result.api_s)
        return times


async def loop_runs(kind: FlagStoreKind, work: Path, runs: int) -> list[dict[str, float | None]]:
    found: list[dict[str, float | None]] = []
    for index in range(runs):
        result = await run_flag_loop(
            FlagLoopOptions(work_dir=work / f"loop-{kind}-{index}", store=kind, dsn=DSN)
        )
        found.append(
            {
                "on_to_decision_s": None
                if result.decided_at is None
                else result.decided_at - result.flag_on_at,
                "decision_to_lever_done_s": result.decision_to_lever_done_s,
                "on_to_off_s": result.on_to_off_s,
                "on_to_verified_s": None
                if result.verified_at is None
                else result.verified_at - result.flag_on_at,
                "lever_api_s": result.run.action.api_s if result.run and result.run.action else None,
            }
        )
    return found


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.2f} s"


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# The feature-flag lever",
        "",
        report["setup"],
        "",
        "## The lever alone (decision to lever done, rollbackd's own work)",
        "",
        "| store | runs | api_s median | api_s p95 | api_s max | target < 1 s |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for kind, entry in report["lever"].items():
        s = entry["api_s"]
        lines.append(
            f"| {kind} | {entry['runs']} | {_ms(s['median'])} | {_ms(s['p95'])} | {_ms(s['max'])} "
            f"| {'met' if entry['met'] else 'MISSED'} |"
        )
    lines += [
        "",
        "## The closed loop at a 1 s scrape and 1 s evaluation interval",
        "",
        "| store | run | flag on -> decision | decision -> lever done | flag on -> flag off | "
        "flag on -> verified |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, entry in report["loop"].items():
        for index, run in enumerate(entry["runs"], 1):
            lines.append(
                f"| {kind} | {index} | {_s(run['on_to_decision_s'])} "
                f"| {_ms(run['decision_to_lever_done_s'])} "
                f"| {_s(run['on_to_off_s'])} | {_s(run['on_to_verified_s'])} |"
            )
    lines += ["", "Targets:", ""]
    for name, met in report["targets"].items():
        lines.append(f"- {name}: **{'met' if met else 'MISSED'}**")
    lines += [
        "",
        "- flag on -> flag off is the median of the runs; decision -> lever done is the daemon's "
        "own work after its decision: writing the decision and `rollback.started` to its SQLite "
        "store, saving the run's record, then the lever.",
        "- The verification window is 5 s; flag on -> verified includes it.",
    ]
    return "\n".join(lines) + "\n"


async def measure(runs: int, loop_runs_n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rollbackd-bench-flags-") as tmp:
        work = Path(tmp)
        lever = {kind: await lever_runs(kind, work, runs) for kind in ("sql", "http")}
        loop = {kind: await loop_runs(kind, work, loop_runs_n) for kind in ("sql", "http")}
    return {"lever": lever, "loop": loop}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.flags", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    parser.add_argument("--runs", type=int, default=RUNS, help="runs of the lever alone, per store")
    parser.add_argument("--loop-runs", type=int, default=LOOP_RUNS, help="closed-loop runs, per store")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    measured = asyncio.run(measure(args.runs, args.loop_runs))
    lever = {
        kind: {"runs": len(times), "api_s": spread(times), "met": max(times) < MAX_LEVER_S}
        for kind, times in measured["lever"].items()
    }
    loop: dict[str, Any] = {}
    targets = {f"lever {kind} under 1 s (max)": entry["met"] for kind, entry in lever.items()}
    for kind, runs in measured["loop"].items():
        on_to_off = [run["on_to_off_s"] for run in runs if run["on_to_off_s"] is not None]
        median = statistics.median(on_to_off) if len(on_to_off) == len(runs) else None
        loop[kind] = {"runs": runs, "on_to_off_median_s": median}
        targets[f"closed loop {kind}: flag on -> flag off under 5 s (median)"] = (
            median is not None and median < MAX_ON_TO_OFF_S
        )
    report = {
        "benchmark": "flags",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "setup": (
            f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end (a shared, loaded "
            "machine: other test suites ran beside it); PostgreSQL on loopback; the sample app "
            "in its own process."
        ),
        "lever": lever,
        "loop": loop,
        "targets": targets,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flags.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "flags.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
