"""Benchmark: the closed loop's speed, from a bad version to no traffic on it (issue 3).

Each run is one ``rollbackd demo`` (:func:`rollbackd.demo.runner.run_demo`): an emulated cluster
(kmock, over real HTTP), one sample-app process per version, a real Prometheus scraping them every
second (or, without a ``prometheus`` binary, the apps' metrics read directly -- the report says
which), a load generator routing by what the cluster says, and the real daemon evaluating every
second and acting through the real Kubernetes client. The new version turns bad; the run measures,
on the event loop's clock:

- fault -> rollback decision;
- fault -> the routing sends the bad version no traffic (the target: under 5 s, median of
  several runs, with a 1 s scrape and a 1 s evaluation interval);
- rollback decision -> action done, and rollback decision -> verified (the validation window is
  shortened to 5 s here, from the demo's 10 s, to keep the benchmark short; it adds to
  decision -> verified only).

The canary scenario runs 5 times, then blue-green and deployment once each. Run from the
repository root: ``python -m bench.closed_loop`` (about three minutes). Results go to
``bench/results/closed_loop.json`` and ``.md``; each run's timeline and logs to a temporary
directory, kept (and named) when a run fails. The exit status is 1 when the target was missed or a
run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rollbackd.config.settings import LogSettings
from rollbackd.daemon.logs import configure_logging
from rollbackd.demo.processes import find_prometheus
from rollbackd.demo.runner import DemoFailed, DemoOptions, Measurements, run_demo

RESULTS_DIR = Path(__file__).resolve().parent / "results"

CANARY_RUNS = 5
OTHER_SCENARIOS = ("bluegreen", "deployment")
INTERVAL_S = 1.0
VERIFICATION_WINDOW_S = 5.0
MAX_FAULT_TO_NO_TRAFFIC_S = 5.0


@dataclass(frozen=True, slots=True)
class Run:
    """One demo run's spans in seconds (``None``: that moment never came), or why it failed."""

    scenario: str
    run: int
    fault_to_decision_s: float | None = None
    decision_to_acted_s: float | None = None
    fault_to_no_traffic_s: float | None = None
    decision_to_verified_s: float | None = None
    wall_s: float = 0.0
    error: str | None = None
    work_dir: str | None = None

    @classmethod
    def of(cls, scenario: str, run: int, m: Measurements, wall_s: float) -> Run:
        def span(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else end - start

        return cls(
            scenario=scenario,
            run=run,
            fault_to_decision_s=span(m.fault, m.decision),
            decision_to_acted_s=span(m.decision, m.acted),
            fault_to_no_traffic_s=span(m.fault, m.no_traffic),
            decision_to_verified_s=span(m.decision, m.verified),
            wall_s=wall_s,
        )


def one_run(scenario: str, run: int, *, prometheus: str | None, work_root: Path) -> Run:
    """One demo, in a fresh event loop, its timeline and logs in a directory of its own (removed
    when the run went well)."""
    work_dir = Path(tempfile.mkdtemp(prefix=f"{scenario}-{run}-", dir=work_root))
    options = DemoOptions(
        work_dir=work_dir,
        scenario=scenario,
        prometheus=prometheus,
        interval_s=INTERVAL_S,
        verification_window_s=VERIFICATION_WINDOW_S,
    )
    started = time.perf_counter()
    with (work_dir / "timeline.txt").open("w", encoding="utf-8") as out, \
            (work_dir / "rollbackd.log").open("w", encoding="utf-8") as log:
        configure_logging(LogSettings(level="INFO", format="text"), stream=log)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        try:
            measured = asyncio.run(run_demo(options, out=out))
        except (DemoFailed, Exception) as exc:  # a failed run is a result, not the end of the benchmark
            return Run(scenario=scenario, run=run, wall_s=time.perf_counter() - started,
                       error=f"{type(exc).__name__}: {exc}", work_dir=str(work_dir))
        finally:
            logging.getLogger().handlers.clear()
    result = Run.of(scenario, run, measured, time.perf_counter() - started)
    shutil.rmtree(work_dir, ignore_errors=True)
    return result


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def markdown(report: dict[str, Any], runs: Sequence[Run]) -> str:
    lines = [
        "# Closed loop: fault to no traffic",
        "",
        report["setup"],
        "",
        "| scenario | run | fault -> decision | decision -> action done | fault -> no traffic "
        "| decision -> verified | run took |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        if r.error is not None:
            lines.append(f"| {r.scenario} | {r.run} | FAILED: {r.error} (logs in {r.work_dir}) | | | | |")
            continue
        lines.append(
            f"| {r.scenario} | {r.run} | {_s(r.fault_to_decision_s)} | {_s(r.decision_to_acted_s)} "
            f"| {_s(r.fault_to_no_traffic_s)} | {_s(r.decision_to_verified_s)} | {r.wall_s:.0f} s |"
        )
    m = report["canary_median"]
    lines.append(
        f"| **canary, median of {m['runs']}** | | **{_s(m['fault_to_decision_s'])}** "
        f"| **{_s(m['decision_to_acted_s'])}** | **{_s(m['fault_to_no_traffic_s'])}** "
        f"| **{_s(m['decision_to_verified_s'])}** | |"
    )
    lines += [
        "",
        f"Target: fault -> no traffic under {MAX_FAULT_TO_NO_TRAFFIC_S:g} s (median of the canary runs): "
        f"**{'met' if report['target_met'] else 'MISSED'}**.",
        "",
        "- fault: the bad version's sample app is told to fail 30% of its requests; decision: the "
        "daemon's rollback decision; action done: the rollback action returned; no traffic: the load "
        "generator, reading the routing from the emulated cluster every second, sends the bad version "
        "nothing; verified: the validation window after the action passed.",
        "- The load generator reads the routing once a second, so fault -> no traffic includes up "
        "to a second of its polling after the action changed the routing.",
        f"- Validation window {VERIFICATION_WINDOW_S:g} s (the demo's default is 10 s); everything "
        "else as `rollbackd demo` runs it: 100 requests/s, 6 healthy decisions before the fault.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.closed_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    parser.add_argument("--canary-runs", type=int, default=CANARY_RUNS, help="runs of the canary scenario")
    parser.add_argument("--no-prometheus", action="store_true", help="read the apps' metrics directly")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    prometheus = None if args.no_prometheus else find_prometheus()
    if prometheus is not None:
        source = f"a real Prometheus ({prometheus}) scraping every {INTERVAL_S:g} s"
    elif args.no_prometheus:
        source = "no Prometheus (--no-prometheus): the daemon reads the sample apps' /metrics directly"
    else:
        source = "no 'prometheus' binary on the PATH: the daemon reads the sample apps' /metrics directly"
    print(f"metrics: {source}", flush=True)

    plan = [("canary", n) for n in range(1, args.canary_runs + 1)] + [(s, 1) for s in OTHER_SCENARIOS]
    runs: list[Run] = []
    work_root = Path(tempfile.mkdtemp(prefix="rollbackd-bench-closed-loop-"))
    for scenario, n in plan:
        result = one_run(scenario, n, prometheus=prometheus, work_root=work_root)
        runs.append(result)
        if result.error is not None:
            print(f"{scenario} #{n}: FAILED: {result.error} (logs in {result.work_dir})", flush=True)
        else:
            print(
                f"{scenario} #{n}: fault -> decision {_s(result.fault_to_decision_s)}, "
                f"fault -> no traffic {_s(result.fault_to_no_traffic_s)}, "
                f"decision -> verified {_s(result.decision_to_verified_s)} ({result.wall_s:.0f} s)",
                flush=True,
            )
    if not any(r.error for r in runs):
        shutil.rmtree(work_root, ignore_errors=True)

    canary = [r for r in runs if r.scenario == "canary" and r.error is None]
    median = {
        "runs": len(canary),
        "fault_to_decision_s": _median([r.fault_to_decision_s for r in canary]),
        "decision_to_acted_s": _median([r.decision_to_acted_s for r in canary]),
        "fault_to_no_traffic_s": _median([r.fault_to_no_traffic_s for r in canary]),
        "decision_to_verified_s": _median([r.decision_to_verified_s for r in canary]),
    }
    no_traffic = median["fault_to_no_traffic_s"]
    met = no_traffic is not None and no_traffic < MAX_FAULT_TO_NO_TRAFFIC_S
    report: dict[str, Any] = {
        "setup": (
            f"Metrics: {source}. Daemon evaluation interval {INTERVAL_S:g} s. Emulated Kubernetes API "
            f"(kmock) over HTTP with emulated controllers (pods ready 3 s after a scale-up). Machine: "
            f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}. Run at "
            f"{datetime.now(UTC).isoformat(timespec='seconds')}."
        ),
        "prometheus": prometheus,
        "runs": [vars_of(r) for r in runs],
        "canary_median": median,
        "target_fault_to_no_traffic_s": MAX_FAULT_TO_NO_TRAFFIC_S,
        "target_met": met,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "closed_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, runs)
    (out / "closed_loop.md").write_text(text)
    print()
    print(text)
    return 0 if met and not any(r.error for r in runs) else 1


def vars_of(run: Run) -> dict[str, Any]:
    """``run`` as JSON values (seconds to 0.1 ms)."""
    values = {name: getattr(run, name) for name in Run.__slots__}
    return {name: round(value, 4) if isinstance(value, float) else value for name, value in values.items()}


if __name__ == "__main__":
    raise SystemExit(main())
