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

The load generator sends 100 requests per second in all; how many reach the canary is the canary
Ingress' weight, and the decision's speed depends on it: a verdict needs 50 requests of the canary
in the detection window. Two sets of runs:

- the demo's set-up (a 5 s detection window, 20 canary requests per second): the canary scenario
  3 times (``--canary-runs``), then blue-green and deployment once each (all traffic moves to the
  new version there); the target is judged on these canary runs;
- canary traffic: the canary scenario at 1, 4 and 20 canary requests per second (weights 1%, 4%
  and 20%; ``--canary-rps``), 3 times each, with the daemon's default detection window (600 s),
  since a 5 s window never holds 50 requests at 1 or 4 requests per second.

Run from the repository root: ``python -m bench.closed_loop`` (about fifteen minutes). Results go to
``bench/results/closed_loop.json`` and ``.md``; each run's timeline and logs to a temporary
directory, kept (and named) when a run fails. The exit status is 1 when the target was missed or a
run failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
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

CANARY_RUNS = 3
OTHER_SCENARIOS = ("bluegreen", "deployment")
INTERVAL_S = 1.0
VERIFICATION_WINDOW_S = 5.0
MAX_FAULT_TO_NO_TRAFFIC_S = 5.0
#: Requests per second the load generator sends in all.
TOTAL_RPS = 100.0
#: The canary traffic measured, in requests per second, and the demo's own (20% of 100).
CANARY_RPS = (1.0, 4.0, 20.0)
DEMO_CANARY_RPS = 20.0
#: Detection windows: the demo's, and the daemon's default (the canary-traffic runs).
DEMO_WINDOW_S = 5.0
DEFAULT_WINDOW_S = 600.0
#: The longest a run may take: at 1 canary request per second a decision takes a while.
RUN_TIMEOUT_S = 150.0


def canary_weight(canary_rps: float, *, total_rps: float = TOTAL_RPS) -> int:
    """The canary Ingress weight (percent) giving ``canary_rps`` of ``total_rps`` requests per
    second; :class:`ValueError` unless that is a whole percentage from 1 to 99."""
    percent = canary_rps / total_rps * 100.0
    weight = round(percent) if math.isfinite(percent) else 0
    if not (1 <= weight <= 99 and abs(percent - weight) < 1e-9):
        raise ValueError(
            f"{canary_rps:g} canary requests/s is not a whole percentage (1-99) of {total_rps:g} requests/s"
        )
    return weight


def _rps_list(text: str) -> tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(",") if part.strip())
        for rate in rates:
            canary_weight(rate)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    if not rates:
        raise argparse.ArgumentTypeError("no canary rate given")
    return tuple(dict.fromkeys(rates))


@dataclass(frozen=True, slots=True)
class Run:
    """One demo run's spans in seconds (``None``: that moment never came), or why it failed."""

    scenario: str
    run: int
    #: Requests per second on the version that turns bad (the canary's share, or all of them).
    bad_rps: float = TOTAL_RPS
    #: The daemon's detection window.
    window_s: float = DEMO_WINDOW_S
    fault_to_decision_s: float | None = None
    decision_to_acted_s: float | None = None
    fault_to_no_traffic_s: float | None = None
    decision_to_verified_s: float | None = None
    wall_s: float = 0.0
    error: str | None = None
    work_dir: str | None = None

    @classmethod
    def of(
        cls, scenario: str, run: int, m: Measurements, wall_s: float, *, bad_rps: float, window_s: float
    ) -> Run:
        def span(start: float | None, end: float | None) -> float | None:
            return None if start is None or end is None else end - start

        return cls(
            scenario=scenario,
            run=run,
            bad_rps=bad_rps,
            window_s=window_s,
            fault_to_decision_s=span(m.fault, m.decision),
            decision_to_acted_s=span(m.decision, m.acted),
            fault_to_no_traffic_s=span(m.fault, m.no_traffic),
            decision_to_verified_s=span(m.decision, m.verified),
            wall_s=wall_s,
        )


def one_run(
    scenario: str,
    run: int,
    *,
    prometheus: str | None,
    work_root: Path,
    canary_rps: float = DEMO_CANARY_RPS,
    window_s: float = DEMO_WINDOW_S,
) -> Run:
    """One demo, in a fresh event loop, its timeline and logs in a directory of its own (removed
    when the run went well). ``canary_rps``: the canary's traffic (canary scenario only);
    ``window_s``: the daemon's detection window."""
    bad_rps = canary_rps if scenario == "canary" else TOTAL_RPS
    work_dir = Path(tempfile.mkdtemp(prefix=f"{scenario}-{bad_rps:g}rps-{window_s:g}s-{run}-", dir=work_root))
    options = DemoOptions(
        work_dir=work_dir,
        scenario=scenario,
        prometheus=prometheus,
        rps=TOTAL_RPS,
        canary_weight=canary_weight(canary_rps),
        interval_s=INTERVAL_S,
        detection_window_s=window_s,
        verification_window_s=VERIFICATION_WINDOW_S,
        timeout_s=RUN_TIMEOUT_S,
    )
    started = time.perf_counter()
    with (work_dir / "timeline.txt").open("w", encoding="utf-8") as out, \
            (work_dir / "rollbackd.log").open("w", encoding="utf-8") as log:
        configure_logging(LogSettings(level="INFO", format="text"), stream=log)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        try:
            measured = asyncio.run(run_demo(options, out=out))
        except (DemoFailed, Exception) as exc:  # a failed run is a result, not the end of the benchmark
            return Run(scenario=scenario, run=run, bad_rps=bad_rps, window_s=window_s,
                       wall_s=time.perf_counter() - started,
                       error=f"{type(exc).__name__}: {exc}", work_dir=str(work_dir))
        finally:
            logging.getLogger().handlers.clear()
    result = Run.of(scenario, run, measured, time.perf_counter() - started, bad_rps=bad_rps,
                    window_s=window_s)
    shutil.rmtree(work_dir, ignore_errors=True)
    return result


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _s(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _range(values: Sequence[float | None]) -> str:
    present = [v for v in values if v is not None]
    if not present:
        return "n/a"
    return f"{min(present):.2f} to {max(present):.2f} s" if len(present) > 1 else f"{present[0]:.2f} s"


def canary_summary(runs: Sequence[Run], canary_rps: float, window_s: float) -> dict[str, Any]:
    """Medians of the canary runs at ``canary_rps`` with a ``window_s`` detection window that did
    not fail (``runs``: their number; ``failed``: the others)."""
    chosen = [r for r in runs
              if r.scenario == "canary" and r.bad_rps == canary_rps and r.window_s == window_s]
    ok = [r for r in chosen if r.error is None]
    return {
        "canary_rps": canary_rps,
        "canary_weight_percent": canary_weight(canary_rps),
        "window_s": window_s,
        "runs": len(ok),
        "failed": len(chosen) - len(ok),
        "fault_to_decision_s": _median([r.fault_to_decision_s for r in ok]),
        "fault_to_decision_range": _range([r.fault_to_decision_s for r in ok]),
        "decision_to_acted_s": _median([r.decision_to_acted_s for r in ok]),
        "fault_to_no_traffic_s": _median([r.fault_to_no_traffic_s for r in ok]),
        "decision_to_verified_s": _median([r.decision_to_verified_s for r in ok]),
    }


def _summary_row(m: dict[str, Any], first: str) -> str:
    failed = f" ({m['failed']} failed)" if m["failed"] else ""
    return (
        f"| {first} | {m['runs']}{failed} | **{_s(m['fault_to_decision_s'])}** "
        f"({m['fault_to_decision_range']}) | {_s(m['decision_to_acted_s'])} "
        f"| {_s(m['fault_to_no_traffic_s'])} | {_s(m['decision_to_verified_s'])} |"
    )


def markdown(report: dict[str, Any], runs: Sequence[Run]) -> str:
    head = ("| fault -> decision (range) | decision -> action done | fault -> no traffic "
            "| decision -> verified |")
    lines = [
        "# Closed loop: fault to no traffic",
        "",
        report["setup"],
        "",
    ]
    demo = report["demo_canary"]
    if demo is not None:
        lines += [
            f"## The demo's set-up: {DEMO_CANARY_RPS:g} canary requests/s, "
            f"{DEMO_WINDOW_S:g} s detection window",
            "",
            f"| canary, median | runs {head}",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
            _summary_row(demo, f"{demo['canary_rps']:g} requests/s ({demo['canary_weight_percent']}%)"),
            "",
            f"Target: fault -> no traffic under {MAX_FAULT_TO_NO_TRAFFIC_S:g} s (median of these runs): "
            f"**{'met' if report['target_met'] else 'MISSED'}**.",
            "",
        ]
    if report["canary_by_rps"]:
        lines += [
            f"## Decision time by canary traffic, the daemon's default {DEFAULT_WINDOW_S:g} s "
            "detection window",
            "",
            f"The load generator sends {TOTAL_RPS:g} requests/s in all; the canary gets the canary "
            "Ingress' weight of them. Medians of the runs at each rate:",
            "",
            f"| canary requests/s (weight) | runs {head}",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [_summary_row(m, f"{m['canary_rps']:g} ({m['canary_weight_percent']}%)")
                  for m in report["canary_by_rps"]]
        lines.append("")
    lines += [
        "## Every run",
        "",
        "| scenario | requests/s on the bad version | detection window | run | fault -> decision "
        "| decision -> action done | fault -> no traffic | decision -> verified | run took |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in runs:
        first = f"| {r.scenario} | {r.bad_rps:g} | {r.window_s:g} s | {r.run} "
        if r.error is not None:
            lines.append(f"{first}| FAILED: {r.error} (logs in {r.work_dir}) | | | | |")
            continue
        lines.append(
            f"{first}| {_s(r.fault_to_decision_s)} | {_s(r.decision_to_acted_s)} "
            f"| {_s(r.fault_to_no_traffic_s)} | {_s(r.decision_to_verified_s)} | {r.wall_s:.0f} s |"
        )
    lines += [
        "",
        "- fault: the bad version's sample app is told to fail 30% of its requests; decision: the "
        "daemon's rollback decision; action done: the rollback action returned; no traffic: the load "
        "generator, reading the routing from the emulated cluster every second, sends the bad version "
        "nothing; verified: the validation window after the action passed.",
        f"- Requests on the bad version: the canary's share of the {TOTAL_RPS:g} requests/s (canary "
        "scenario); blue-green and deployment move all traffic to the new version. A verdict needs "
        "50 requests of the candidate in the detection window (`detection.min_requests`).",
        "- The load generator reads the routing once a second, so fault -> no traffic includes up "
        "to a second of its polling after the action changed the routing.",
        f"- Validation window {VERIFICATION_WINDOW_S:g} s (the demo's default is 10 s); everything "
        "else as `rollbackd demo` runs it: 6 healthy decisions before the fault.",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.closed_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    parser.add_argument("--canary-runs", type=int, default=CANARY_RUNS,
                        help="runs of the canary scenario in the demo's set-up and at each canary rate")
    parser.add_argument(
        "--canary-rps", type=_rps_list, default=CANARY_RPS,
        help=f"canary requests per second to measure with the default window, comma-separated, each a "
        f"whole percentage of {TOTAL_RPS:g} (default: {','.join(f'{r:g}' for r in CANARY_RPS)})",
    )
    parser.add_argument("--no-rates", action="store_true", help="only the demo's set-up")
    parser.add_argument("--no-demo", action="store_true", help="only the canary rates")
    parser.add_argument("--no-prometheus", action="store_true", help="read the apps' metrics directly")
    args = parser.parse_args(argv)
    if args.canary_runs < 1:
        parser.error("--canary-runs must be at least 1")
    if args.no_rates and args.no_demo:
        parser.error("--no-rates and --no-demo leave nothing to run")
    return args


def plan_runs(args: argparse.Namespace) -> list[tuple[str, int, float, float]]:
    """``(scenario, run, canary requests/s, detection window)`` in the order they run: the demo's
    set-up, then the canary rates interleaved run by run (a slow spell of the machine does not
    fall on one rate only)."""
    plan: list[tuple[str, int, float, float]] = []
    if not args.no_demo:
        plan += [("canary", n, DEMO_CANARY_RPS, DEMO_WINDOW_S) for n in range(1, args.canary_runs + 1)]
        plan += [(scenario, 1, DEMO_CANARY_RPS, DEMO_WINDOW_S) for scenario in OTHER_SCENARIOS]
    if not args.no_rates:
        plan += [("canary", n, rps, DEFAULT_WINDOW_S)
                 for n in range(1, args.canary_runs + 1) for rps in args.canary_rps]
    return plan


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

    runs: list[Run] = []
    work_root = Path(tempfile.mkdtemp(prefix="rollbackd-bench-closed-loop-"))
    for scenario, n, canary_rps, window_s in plan_runs(args):
        result = one_run(scenario, n, prometheus=prometheus, work_root=work_root, canary_rps=canary_rps,
                         window_s=window_s)
        runs.append(result)
        name = f"{scenario} at {result.bad_rps:g} requests/s, {window_s:g} s window, #{n}"
        if result.error is not None:
            print(f"{name}: FAILED: {result.error} (logs in {result.work_dir})", flush=True)
        else:
            print(
                f"{name}: fault -> decision {_s(result.fault_to_decision_s)}, "
                f"fault -> no traffic {_s(result.fault_to_no_traffic_s)}, "
                f"decision -> verified {_s(result.decision_to_verified_s)} ({result.wall_s:.0f} s)",
                flush=True,
            )
    if not any(r.error for r in runs):
        shutil.rmtree(work_root, ignore_errors=True)

    report = build_report(runs, canary_rates=() if args.no_rates else args.canary_rps, demo=not args.no_demo,
                          source=source, prometheus=prometheus)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "closed_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, runs)
    (out / "closed_loop.md").write_text(text)
    print()
    print(text)
    ok = report["target_met"] is not False and not any(r.error for r in runs)
    return 0 if ok else 1


def build_report(
    runs: Sequence[Run],
    *,
    canary_rates: Sequence[float],
    demo: bool,
    source: str,
    prometheus: str | None,
) -> dict[str, Any]:
    """The JSON report: set-up, every run, the canary medians of the demo's set-up (and the
    target's verdict on them; ``None`` when not run) and per canary rate."""
    demo_canary = canary_summary(runs, DEMO_CANARY_RPS, DEMO_WINDOW_S) if demo else None
    no_traffic = None if demo_canary is None else demo_canary["fault_to_no_traffic_s"]
    return {
        "setup": (
            f"Metrics: {source}. Load: {TOTAL_RPS:g} requests/s in all. Daemon evaluation interval "
            f"{INTERVAL_S:g} s. Emulated Kubernetes API (kmock) over HTTP with emulated controllers (pods "
            f"ready 3 s after a scale-up). Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}. Run at {datetime.now(UTC).isoformat(timespec='seconds')}."
        ),
        "prometheus": prometheus,
        "total_rps": TOTAL_RPS,
        "runs": [vars_of(r) for r in runs],
        "demo_canary": demo_canary,
        "canary_by_rps": [canary_summary(runs, rate, DEFAULT_WINDOW_S) for rate in sorted(canary_rates)],
        "target_fault_to_no_traffic_s": MAX_FAULT_TO_NO_TRAFFIC_S,
        "target_met": None if demo_canary is None else (
            no_traffic is not None and no_traffic < MAX_FAULT_TO_NO_TRAFFIC_S
        ),
    }


def vars_of(run: Run) -> dict[str, Any]:
    """``run`` as JSON values (seconds to 0.1 ms)."""
    values = {name: getattr(run, name) for name in Run.__slots__}
    return {name: round(value, 4) if isinstance(value, float) else value for name, value in values.items()}


if __name__ == "__main__":
    raise SystemExit(main())
