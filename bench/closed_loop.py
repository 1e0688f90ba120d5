"""Benchmark: the closed loop's speed, from a bad version to no traffic on it (issue 3).

Each run is one ``rollbackd demo`` (:func:`rollbackd.demo.runner.run_demo`): an emulated cluster
(kmock, over real HTTP), one sample-app process per version, a real Prometheus scraping them every
second (or, without a ``prometheus`` binary, the apps' metrics read directly -- the report says
which), a load generator routing by what the cluster says, and the real daemon evaluating every
second and acting through the real Kubernetes client. The new version turns bad; the run measures,
on the event loop's clock:

- fault -> rollback decision;
- fault -> the routing sends the bad version no traffic: the load generator's first reading of
  the routing after which no request goes to it (the target: under 5 s, median of several runs,
  with a 1 s scrape and a 1 s evaluation interval);
- rollback decision -> action done, and rollback decision -> verified (the validation window is
  shortened to 5 s here, from the demo's 10 s, to keep the benchmark short; it adds to
  decision -> verified only);
- the config scenario moves no traffic (the same pods recover once their ConfigMap's data is back):
  fault (the ConfigMap changed) -> errors gone instead, the first second from the decision on in
  which the app failed at most 2% of its requests.

The load generator sends 100 requests per second in all; how many reach the canary is the canary
Ingress' weight, and the decision's speed depends on it: a verdict needs 50 requests of the canary
in the detection window. Two sets of runs:

- the demo's set-up (a 5 s detection window, 20 canary requests per second): the canary scenario
  (an ingress-nginx canary Ingress) 3 times (``--canary-runs``), then blue-green and deployment
  once each (all traffic moves to the new version there), then the gateway scenario (a Gateway API
  HTTPRoute giving the canary 20 of 100 weight; rollbackd sets it to 0) as many times as the
  canary, then the config scenario once; the target is judged on the canary and on the gateway
  runs;
- canary traffic: the canary scenario at 1, 4 and 20 canary requests per second (weights 1%, 4%
  and 20%; ``--canary-rps``), 3 times each, with the daemon's default detection window (600 s),
  since a 5 s window never holds 50 requests at 1 or 4 requests per second.

Run from the repository root: ``python -m bench.closed_loop`` (about seventeen minutes).
``--only gateway`` (any of the demo set-up's scenarios, comma-separated) runs just those and keeps
the other runs from the results already in ``--out-dir``, saying so. Results go to
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
import re
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
#: The demo set-up's scenarios, in the order they run; the canary's and the gateway's run
#: ``--canary-runs`` times, the others once.
DEMO_SCENARIOS = ("canary", *OTHER_SCENARIOS, "gateway", "config")
#: The scenarios whose canary gets the canary weight of the traffic (the others: all of it), with
#: the router that splits it.
CANARY_ROUTERS = {"canary": "ingress-nginx", "gateway": "Gateway API HTTPRoute"}
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
    """The canary's weight (percent: the canary Ingress', or the HTTPRoute's out of 100) giving
    ``canary_rps`` of ``total_rps`` requests per second; :class:`ValueError` unless that is a whole
    percentage from 1 to 99."""
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
    #: The config scenario's (no traffic moves there): fault -> its errors gone.
    fault_to_errors_gone_s: float | None = None
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
            fault_to_errors_gone_s=span(m.fault, m.errors_gone),
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
    bad_rps = canary_rps if scenario in CANARY_ROUTERS else TOTAL_RPS
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


def _no_traffic(r: Run) -> str:
    """The per-run table's "fault -> no traffic", or a config run's "errors gone"."""
    if r.fault_to_errors_gone_s is not None:
        return f"errors gone {_s(r.fault_to_errors_gone_s)}"
    return _s(r.fault_to_no_traffic_s)


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


def canary_summary(
    runs: Sequence[Run], canary_rps: float, window_s: float, *, scenario: str = "canary"
) -> dict[str, Any]:
    """Medians of the runs of ``scenario`` (a canary's: ``canary`` or ``gateway``) at
    ``canary_rps`` with a ``window_s`` detection window that did not fail (``runs``: their number;
    ``failed``: the others)."""
    chosen = [r for r in runs
              if r.scenario == scenario and r.bad_rps == canary_rps and r.window_s == window_s]
    ok = [r for r in chosen if r.error is None]
    return {
        "scenario": scenario,
        "router": CANARY_ROUTERS[scenario],
        "canary_rps": canary_rps,
        "canary_weight_percent": canary_weight(canary_rps),
        "window_s": window_s,
        "runs": len(ok),
        "failed": len(chosen) - len(ok),
        "fault_to_decision_s": _median([r.fault_to_decision_s for r in ok]),
        "fault_to_decision_range": _range([r.fault_to_decision_s for r in ok]),
        "decision_to_acted_s": _median([r.decision_to_acted_s for r in ok]),
        "fault_to_no_traffic_s": _median([r.fault_to_no_traffic_s for r in ok]),
        "fault_to_no_traffic_range": _range([r.fault_to_no_traffic_s for r in ok]),
        "decision_to_verified_s": _median([r.decision_to_verified_s for r in ok]),
    }


def _summary_row(m: dict[str, Any], first: str) -> str:
    failed = f" ({m['failed']} failed)" if m["failed"] else ""
    return (
        f"| {first} | {m['runs']}{failed} | **{_s(m['fault_to_decision_s'])}** "
        f"({m['fault_to_decision_range']}) | {_s(m['decision_to_acted_s'])} "
        f"| {_s(m['fault_to_no_traffic_s'])} ({m['fault_to_no_traffic_range']}) "
        f"| {_s(m['decision_to_verified_s'])} |"
    )


def markdown(report: dict[str, Any], runs: Sequence[Run]) -> str:
    head = ("| fault -> decision (range) | decision -> action done | fault -> no traffic (range) "
            "| decision -> verified |")
    lines = [
        "# Closed loop: fault to no traffic",
        "",
        report["setup"],
        "",
    ]
    demos = [m for m in (report["demo_canary"], report.get("demo_gateway")) if m is not None]
    if demos:
        lines += [
            f"## The demo's set-up: {DEMO_CANARY_RPS:g} canary requests/s, "
            f"{DEMO_WINDOW_S:g} s detection window",
            "",
            f"| canary, median | runs {head}",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        lines += [
            _summary_row(m, f"{m['canary_rps']:g} requests/s ({m['canary_weight_percent']}%), {m['router']}")
            for m in demos
        ]
        verdicts = "; ".join(
            f"{m['router']} {_s(m['fault_to_no_traffic_s'])} **{'met' if _met(m) else 'MISSED'}**"
            for m in demos
        )
        lines += [
            "",
            f"Target: fault -> no traffic under {MAX_FAULT_TO_NO_TRAFFIC_S:g} s (median of these runs): "
            f"{verdicts}.",
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
            f"| {_no_traffic(r)} | {_s(r.decision_to_verified_s)} | {r.wall_s:.0f} s |"
        )
    lines += [
        "",
        "- fault: the bad version's sample app is told to fail 30% of its requests; decision: the "
        "daemon's rollback decision; action done: the rollback action returned; no traffic: the load "
        "generator, reading the routing from the emulated cluster every second, sends the bad version "
        "nothing; verified: the validation window after the action passed.",
        f"- Requests on the bad version: the canary's share of the {TOTAL_RPS:g} requests/s (canary "
        "scenario: the canary Ingress' weight; gateway scenario: the canary Service's weight in the "
        "HTTPRoute); blue-green and deployment move all traffic to the new version. A verdict needs "
        "50 requests of the candidate in the detection window (`detection.min_requests`).",
        "- config: a ConfigMap the app follows changes (`payments.timeout_ms` 800 -> 60, about 30% of "
        "its requests failing), and that change is the fault; no traffic moves: the action puts the "
        "previous data back and restarts the Deployment (done once the restarted pods are ready, 3 s "
        "in the emulator), and its column gives fault -> errors gone, the first second from the "
        "decision on in which the app failed at most 2% of its requests.",
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
    parser.add_argument(
        "--only", type=_scenario_list, default=(),
        help="run only these scenarios of the demo's set-up, comma-separated (of "
        f"{', '.join(DEMO_SCENARIOS)}; no canary rates), and keep the other runs from the results "
        "already in --out-dir",
    )
    args = parser.parse_args(argv)
    if args.canary_runs < 1:
        parser.error("--canary-runs must be at least 1")
    if args.no_rates and args.no_demo:
        parser.error("--no-rates and --no-demo leave nothing to run")
    if args.only and args.no_demo:
        parser.error("--only runs scenarios of the demo's set-up, which --no-demo leaves out")
    return args


def _scenario_list(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in DEMO_SCENARIOS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or 'nothing'} is not a scenario of the demo's set-up; "
            f"name some of {', '.join(DEMO_SCENARIOS)}"
        )
    return names


def plan_runs(args: argparse.Namespace) -> list[tuple[str, int, float, float]]:
    """``(scenario, run, canary requests/s, detection window)`` in the order they run: the demo's
    set-up, then the canary rates interleaved run by run (a slow spell of the machine does not
    fall on one rate only)."""
    plan: list[tuple[str, int, float, float]] = []
    if not args.no_demo:
        for scenario in DEMO_SCENARIOS:
            if args.only and scenario not in args.only:
                continue
            times = args.canary_runs if scenario in CANARY_ROUTERS else 1
            plan += [(scenario, n, DEMO_CANARY_RPS, DEMO_WINDOW_S) for n in range(1, times + 1)]
    if not args.no_rates and not args.only:
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
                f"fault -> {'' if result.fault_to_errors_gone_s is not None else 'no traffic '}"
                f"{_no_traffic(result)}, "
                f"decision -> verified {_s(result.decision_to_verified_s)} ({result.wall_s:.0f} s)",
                flush=True,
            )
    if not any(r.error for r in runs):
        shutil.rmtree(work_root, ignore_errors=True)

    out = Path(args.out_dir)
    rates: Sequence[float] = () if args.no_rates else args.canary_rps
    kept_from: str | None = None
    if args.only:
        previous = _previous_report(out / "closed_loop.json")
        if previous is not None:
            kept, rates, kept_from = kept_runs(previous, replaced=args.only)
            runs = in_report_order([*kept, *runs])
    report = build_report(runs, canary_rates=rates, demo=not args.no_demo, source=source,
                          prometheus=prometheus, only=args.only, kept_from=kept_from)
    out.mkdir(parents=True, exist_ok=True)
    (out / "closed_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report, runs)
    (out / "closed_loop.md").write_text(text)
    print()
    print(text)
    ok = report["target_met"] is not False and not any(r.error for r in runs)
    return 0 if ok else 1


def _previous_report(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise SystemExit(f"cannot keep the other runs: {path} is not a closed-loop report ({exc}); "
                         "run without --only to measure every row") from None
    return found if isinstance(found, dict) else None


def kept_runs(previous: dict[str, Any], *, replaced: Sequence[str]) -> tuple[list[Run], list[float], str]:
    """From an earlier report: its runs but those of the demo set-up's ``replaced`` scenarios, the
    canary rates it measured, and when it was run."""
    fields = set(Run.__slots__)
    kept = [
        Run(**{name: value for name, value in run.items() if name in fields})
        for run in previous.get("runs") or []
        if not (run.get("scenario") in replaced and run.get("window_s") == DEMO_WINDOW_S)
    ]
    rates = sorted({r.bad_rps for r in kept if r.scenario == "canary" and r.window_s == DEFAULT_WINDOW_S})
    run_at = previous.get("run_at")
    if not isinstance(run_at, str):
        found = re.search(r"Run at (\S+?)\.?$", str(previous.get("setup", "")))
        run_at = found.group(1) if found else "an earlier run"
    return kept, rates, run_at


def in_report_order(runs: Sequence[Run]) -> list[Run]:
    """The demo set-up's runs first, by scenario as they run, then the canary rates' as they were."""
    demo = sorted((r for r in runs if r.window_s == DEMO_WINDOW_S and r.scenario in DEMO_SCENARIOS),
                  key=lambda r: (DEMO_SCENARIOS.index(r.scenario), r.run))
    return [*demo, *(r for r in runs if r not in demo)]


def _met(summary: dict[str, Any]) -> bool:
    no_traffic = summary["fault_to_no_traffic_s"]
    return no_traffic is not None and no_traffic < MAX_FAULT_TO_NO_TRAFFIC_S


def build_report(
    runs: Sequence[Run],
    *,
    canary_rates: Sequence[float],
    demo: bool,
    source: str,
    prometheus: str | None,
    only: Sequence[str] = (),
    kept_from: str | None = None,
) -> dict[str, Any]:
    """The JSON report: set-up, every run, the medians of the demo's set-up for each router's
    canary (ingress-nginx, Gateway API; ``None`` when not run) and the target's verdict on them,
    and per canary rate. ``only`` and ``kept_from``: these scenarios were run now, and the other
    runs kept from the report of ``kept_from``."""

    def demo_summary(scenario: str) -> dict[str, Any] | None:
        ran = any(r.scenario == scenario and r.window_s == DEMO_WINDOW_S for r in runs)
        if not (demo and ran):
            return None
        return canary_summary(runs, DEMO_CANARY_RPS, DEMO_WINDOW_S, scenario=scenario)

    demo_canary, demo_gateway = demo_summary("canary"), demo_summary("gateway")
    judged = [m for m in (demo_canary, demo_gateway) if m is not None]
    run_at = datetime.now(UTC).isoformat(timespec="seconds")
    when = f"Run at {run_at}."
    if only and kept_from is not None:
        when = (f"Runs of {', '.join(only)} at {run_at} (--only); the other runs kept from the report of "
                f"{kept_from}.")
    return {
        "setup": (
            f"Metrics: {source}. Load: {TOTAL_RPS:g} requests/s in all. Daemon evaluation interval "
            f"{INTERVAL_S:g} s. Emulated Kubernetes API (kmock) over HTTP with emulated controllers (pods "
            f"ready 3 s after a scale-up). Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}. {when}"
        ),
        "run_at": run_at,
        "prometheus": prometheus,
        "total_rps": TOTAL_RPS,
        "runs": [vars_of(r) for r in runs],
        "demo_canary": demo_canary,
        "demo_gateway": demo_gateway,
        "canary_by_rps": [canary_summary(runs, rate, DEFAULT_WINDOW_S) for rate in sorted(canary_rates)],
        "target_fault_to_no_traffic_s": MAX_FAULT_TO_NO_TRAFFIC_S,
        "target_met": all(_met(m) for m in judged) if judged else None,
    }


def vars_of(run: Run) -> dict[str, Any]:
    """``run`` as JSON values (seconds to 0.1 ms)."""
    values = {name: getattr(run, name) for name in Run.__slots__}
    return {name: round(value, 4) if isinstance(value, float) else value for name, value in values.items()}


if __name__ == "__main__":
    raise SystemExit(main())
