"""Benchmark: the daemon at scale, as a real process against a real Prometheus.

A sample app in ``--fake-deployments`` mode exposes 1,000 synthetic services (a stable and a
canary Deployment each, with latency histograms; every service whose index ends in 9 has a bad
canary), scraped every second by a real Prometheus. ``rollbackd run`` watches the first 100, then
all 1,000 of them as canary targets, and the benchmark reads from the outside:

- the duration of every tick, from the daemon's ``rollbackd_evaluation_duration_seconds``
  (polled often enough to see each tick), and how many ticks took under a second (its buckets);
- the queries the daemon sent, from Prometheus' own
  ``prometheus_http_requests_total{handler="/api/v1/query"}`` (the benchmark itself sends none
  while it measures), per tick, at both sizes;
- the daemon's resident memory (``VmRSS`` from ``/proc``) and CPU time all along a run long
  enough for the detection windows to fill, and the trend of the memory once they are full;
- the decisions (``GET /api/v1/targets``): the bad canaries should get rollback decisions, the
  good ones not.

The daemon is pinned to one core and everything else (Prometheus, the sample app, this driver) to
another, so the daemon's numbers are its own. Safety is in dry-run, so that every bad canary gets
its rollback decision instead of the hourly cap stopping them after the first few.

Run from the repository root: ``python -m bench.scale`` (about five minutes). Results go to
``bench/results/scale.json`` and ``bench/results/scale.md``. The exit status is 1 when a target
was missed or the run could not be completed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"
HOST = "127.0.0.1"
NAMESPACE = "scale"
#: Synthetic services exposed by the sample app (each a stable and a canary Deployment).
SERVICES = 1000

#: The daemon's evaluation interval, which is also the window of its queries: three scrape
#: intervals. ``increase()`` needs two samples in its window, and the newest scrape becomes
#: visible only once it is ingested (a fraction of a second for this exposition): with a window of
#: two scrape intervals, a query landing meanwhile finds one sample and no data at all.
INTERVAL_S = 3.0
SCRAPE_INTERVAL_S = 1.0
#: Detection windows: short enough to fill well within the run.
WINDOW_S = 60.0

#: What the benchmark must show.
MAX_TICK_S = 1.0
MAX_RSS_MIB = 150.0
#: Largest RSS trend over the steady state still counted as flat.
MAX_RSS_SLOPE_MIB_PER_MIN = 1.0

#: How often the driver looks at the daemon: several times per tick, to see each tick's duration.
POLL_S = 0.25
DAEMON_CPU = 0
OTHERS_CPU = 1


def is_bad(index: int) -> bool:
    """Whether service ``index`` has a bad canary (see ``tests.sampleapp.fake_profile``)."""
    return index % 10 == 9


def service(index: int) -> str:
    return f"svc-{index:04d}"


def daemon_config(*, targets: int, prometheus_url: str, http_port: int) -> dict[str, Any]:
    """A rollbackd configuration watching services ``0 .. targets-1`` as canaries."""
    return {
        "interval_s": INTERVAL_S,
        "prometheus": {"url": prometheus_url, "timeout_s": 5.0, "retries": 2},
        "http": {"host": HOST, "port": http_port},
        "log": {"level": "INFO", "format": "json"},
        "safety": {"dry_run": True},
        "defaults": {"detection": {"window_s": WINDOW_S, "baseline_window_s": WINDOW_S}},
        "targets": [
            {
                "name": service(i),
                "namespace": NAMESPACE,
                "strategy": "canary",
                "ingress": f"{service(i)}-canary",
                "baseline": {"deployment": f"{service(i)}-stable"},
                "candidate": {"deployment": f"{service(i)}-canary"},
            }
            for i in range(targets)
        ],
    }


# --- reading processes from the outside ---------------------------------------------------------


def rss_mib(pid: int) -> float:
    """Resident memory of a process (``VmRSS``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_get(url: str, *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a Prometheus text exposition, by name and labels."""
    status, body = http_get(url)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status}")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def total(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def query_requests(prometheus_url: str) -> float:
    """Instant queries Prometheus has answered so far (any status), from its own metrics."""
    return total(scrape(f"{prometheus_url}/metrics"), "prometheus_http_requests_total",
                 handler="/api/v1/query")


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of process ``pid`` to ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except (ProcessLookupError, OSError):
            continue  # a thread that just ended


# --- one run of the daemon -----------------------------------------------------------------------


@dataclass
class Poll:
    """One look at the daemon: when (seconds since it was ready), its tick counter and the sum of
    tick durations, how many took at most 1 s, its RSS and CPU time."""

    t: float
    ticks: int
    duration_sum_s: float
    ticks_within_1s: int
    rss_mib: float
    cpu_s: float


@dataclass
class Run:
    targets: int
    polls: list[Poll] = field(default_factory=list)
    tick_s: list[tuple[float, float]] = field(default_factory=list)
    queries: float = 0.0
    measured_ticks: int = 0
    final_metrics: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)
    listing: dict[str, Any] = field(default_factory=dict)
    startup_s: float = 0.0
    log_errors: int = 0


def start_daemon(config: Path, log: Path, *, pinned: bool) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rollbackd", "run", "--config", str(config)],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    if pinned:
        pin(process.pid, DAEMON_CPU)  # before it imports anything or starts a thread
    return process


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def wait_ready(api: str, process: subprocess.Popen[bytes], log: Path, *, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"rollbackd exited with {process.returncode}:\n{tail(log)}")
        try:
            if http_get(f"{api}/readyz", timeout_s=2.0)[0] == 200:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"rollbackd not ready within {timeout_s:g}s:\n{tail(log)}")
        time.sleep(0.1)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def look(api: str, pid: int, since: float) -> Poll:
    metrics = scrape(f"{api}/metrics")
    return Poll(
        t=time.monotonic() - since,
        ticks=int(total(metrics, "rollbackd_evaluation_duration_seconds_count")),
        duration_sum_s=total(metrics, "rollbackd_evaluation_duration_seconds_sum"),
        ticks_within_1s=int(total(metrics, "rollbackd_evaluation_duration_seconds_bucket", le="1.0")),
        rss_mib=rss_mib(pid),
        cpu_s=cpu_s(pid),
    )


def run_daemon(*, targets: int, duration_s: float, prometheus_url: str, workdir: Path,
               pinned: bool) -> Run:
    """Run ``rollbackd run`` over ``targets`` targets for ``duration_s`` after its first tick."""
    from tests.promfixtures import free_port

    port = free_port()
    config = workdir / f"rollbackd-{targets}.yaml"
    config.write_text(yaml.safe_dump(daemon_config(targets=targets, prometheus_url=prometheus_url,
                                                   http_port=port)))
    checked = subprocess.run([sys.executable, "-m", "rollbackd", "check-config", str(config)],
                             cwd=REPO, capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        raise RuntimeError(f"rollbackd check-config refused {config}:\n{checked.stdout}{checked.stderr}")

    api = f"http://{HOST}:{port}"
    log = workdir / f"rollbackd-{targets}.log"
    run = Run(targets=targets)
    launched = time.monotonic()
    process = start_daemon(config, log, pinned=pinned)
    try:
        wait_ready(api, process, log, timeout_s=60.0)
        ready = time.monotonic()
        if pinned:
            pin(process.pid, DAEMON_CPU)  # threads started since, if any
        run.startup_s = ready - launched
        first = look(api, process.pid, ready)
        queries0 = query_requests(prometheus_url)
        run.polls.append(first)
        while time.monotonic() - ready < duration_s:
            time.sleep(POLL_S)
            if process.poll() is not None:
                raise RuntimeError(f"rollbackd exited with {process.returncode}:\n{tail(log)}")
            poll = look(api, process.pid, ready)
            previous = run.polls[-1]
            new_ticks = poll.ticks - previous.ticks
            if new_ticks > 0:
                # Several ticks between two looks share their mean (rare: a look every POLL_S).
                each = (poll.duration_sum_s - previous.duration_sum_s) / new_ticks
                run.tick_s.extend((poll.t, each) for _ in range(new_ticks))
            run.polls.append(poll)
        queries1 = query_requests(prometheus_url)
        run.measured_ticks = run.polls[-1].ticks - first.ticks
        run.queries = queries1 - queries0
        run.final_metrics = scrape(f"{api}/metrics")
        status, body = http_get(f"{api}/api/v1/targets", timeout_s=30.0)
        if status != 200:
            raise RuntimeError(f"GET /api/v1/targets: HTTP {status}")
        run.listing = json.loads(body)
    finally:
        stop_daemon(process)
    run.log_errors = sum(
        1 for line in log.read_text(errors="replace").splitlines()
        if '"level":"ERROR"' in line or '"level":"CRITICAL"' in line
    )
    return run


# --- summaries -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def slope_per_min(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` points, per minute."""
    if len(points) < 2:
        return 0.0
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def ticks_summary(durations: Sequence[float]) -> dict[str, Any]:
    if not durations:
        return {"ticks": 0}
    return {
        "ticks": len(durations),
        "median_s": statistics.median(durations),
        "p95_s": percentile(durations, 0.95),
        "max_s": max(durations),
        "within_1s": sum(1 for d in durations if d <= MAX_TICK_S),
    }


def decisions_summary(listing: dict[str, Any]) -> dict[str, Any]:
    """Rollback decisions and latest outcomes of the bad and the good canaries."""
    groups: dict[str, dict[str, Any]] = {
        kind: {"targets": 0, "rolled_back": 0, "latest_outcomes": Counter()} for kind in ("bad", "good")
    }
    for key, target in listing["targets"].items():
        index = int(key.rsplit("-", 1)[1])
        group = groups["bad" if is_bad(index) else "good"]
        group["targets"] += 1
        if target["last_rollback"] is not None:
            group["rolled_back"] += 1
        decision = target["decision"]
        group["latest_outcomes"][decision["outcome"] if decision is not None else "none yet"] += 1
    for group in groups.values():
        group["latest_outcomes"] = dict(sorted(group["latest_outcomes"].items()))
    return groups


def summarize(run: Run, *, window_fill_s: float) -> dict[str, Any]:
    durations = [d for _, d in run.tick_s]
    steady = [d for t, d in run.tick_s if t >= window_fill_s]
    steady_polls = [p for p in run.polls if p.t >= window_fill_s]
    first, last = run.polls[0], run.polls[-1]
    ticks = max(1, last.ticks - first.ticks)
    m = run.final_metrics
    every_tick = max(1, round(INTERVAL_S / POLL_S))
    return {
        "targets": run.targets,
        "startup_s": run.startup_s,
        "run_s": last.t,
        "ticks": ticks,
        "ticks_skipped": total(m, "rollbackd_ticks_skipped_total"),
        "tick_wall": ticks_summary(durations),
        "tick_wall_steady": ticks_summary(steady),
        "ticks_within_1s_by_histogram": last.ticks_within_1s - first.ticks_within_1s,
        "daemon_cpu_s_per_tick": (last.cpu_s - first.cpu_s) / ticks,
        "queries_per_tick": run.queries / max(1, run.measured_ticks),
        "queries_total": run.queries,
        "evaluations": total(m, "rollbackd_evaluations_total"),
        "source_errors": total(m, "rollbackd_source_errors_total"),
        "evaluation_errors": total(m, "rollbackd_evaluation_errors_total"),
        "log_errors": run.log_errors,
        "rss_mib": {
            "at_first_tick": first.rss_mib,
            "steady_start": steady_polls[0].rss_mib if steady_polls else None,
            "end": last.rss_mib,
            "max": max(p.rss_mib for p in run.polls),
            "steady_slope_mib_per_min": slope_per_min([(p.t, p.rss_mib) for p in steady_polls]),
            "steady_from_s": window_fill_s,
        },
        "decisions": decisions_summary(run.listing),
        "tick_s": [[round(t, 2), round(d, 4)] for t, d in run.tick_s],
        "rss_trace": [[round(p.t, 1), round(p.rss_mib, 2)] for p in run.polls[::every_tick]],
    }


def wall_of(row: dict[str, Any]) -> dict[str, Any]:
    """The tick wall times to judge a run by: once the windows are full, if the run got there."""
    steady: dict[str, Any] = row["tick_wall_steady"]
    return steady if steady["ticks"] else dict(row["tick_wall"])


def checks(small: dict[str, Any], large: dict[str, Any]) -> dict[str, bool]:
    steady = wall_of(large)
    rss = large["rss_mib"]
    bad, good = large["decisions"]["bad"], large["decisions"]["good"]
    return {
        "1000 targets: median tick < 1 s": steady["median_s"] < MAX_TICK_S,
        "1000 targets: p95 tick < 1 s": steady["p95_s"] < MAX_TICK_S,
        "queries per tick independent of targets": (
            round(small["queries_per_tick"], 1) == round(large["queries_per_tick"], 1)
        ),
        "1000 targets: RSS < 150 MiB": rss["max"] < MAX_RSS_MIB,
        "1000 targets: RSS flat once windows are full": (
            abs(rss["steady_slope_mib_per_min"]) <= MAX_RSS_SLOPE_MIB_PER_MIN
        ),
        "every bad canary decided for rollback, no good one": (
            bad["rolled_back"] == bad["targets"] and good["rolled_back"] == 0
        ),
    }


def markdown(report: dict[str, Any]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    rows = report["runs"]
    lines = [
        "# Scale: `rollbackd run` with 100 and 1,000 canary targets",
        "",
        f"Prometheus {report['prometheus_version']} on 127.0.0.1 scraping one sample app exposing "
        f"{report['services'] * 2} deployments ({report['services']} services, stable + canary; the canary "
        f"of every service whose index ends in 9 is bad) every {report['scrape_interval_s']:g} s. "
        f"rollbackd as a real process: interval {report['interval_s']:g} s, detection windows "
        f"{report['window_s']:g} s, dry-run; "
        + (f"pinned to CPU {DAEMON_CPU}, Prometheus, the sample app and the driver to CPU {OTHERS_CPU}. "
           if report["pinned"] else "not pinned (needs 2 CPUs and sched_setaffinity). ")
        + f"Machine: {report['machine']}.",
        "",
        "| targets | run | ticks | tick wall median | p95 | max | ticks ≤ 1 s | daemon CPU/tick "
        "| queries/tick | RSS first tick | RSS window full | RSS end | RSS max | RSS slope (full) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        wall = wall_of(row)
        rss = row["rss_mib"]
        steady_start = rss["steady_start"]
        slope = rss["steady_slope_mib_per_min"]
        lines.append(
            f"| {row['targets']} | {row['run_s']:.0f} s | {row['ticks']} | {ms(wall['median_s'])} | "
            f"{ms(wall['p95_s'])} | {ms(wall['max_s'])} | {wall['within_1s']}/{wall['ticks']} | "
            f"{ms(row['daemon_cpu_s_per_tick'])} | {row['queries_per_tick']:.1f} | "
            f"{rss['at_first_tick']:.0f} MiB | "
            f"{'-' if steady_start is None else f'{steady_start:.0f} MiB'} | {rss['end']:.0f} MiB | "
            f"{rss['max']:.0f} MiB | "
            f"{'-' if steady_start is None else f'{slope:+.2f} MiB/min'} |"
        )
    lines += [
        "",
        "Tick wall times are over the ticks after the detection windows filled "
        f"({report['window_s']:g} s after the first tick) when the run lasted that long, else over "
        "all ticks after the first. Queries per tick: Prometheus' own count of `/api/v1/query` "
        "requests during the run, divided by the ticks.",
        "",
        "Decisions (`GET /api/v1/targets` at the end of each run):",
        "",
        "| targets | bad canaries | with a rollback decision | latest outcomes (bad) "
        "| good canaries | with a rollback decision | latest outcomes (good) |",
        "| ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for row in rows:
        bad, good = row["decisions"]["bad"], row["decisions"]["good"]

        def outcomes(group: dict[str, Any]) -> str:
            return ", ".join(f"{k} {v}" for k, v in group["latest_outcomes"].items())

        lines.append(
            f"| {row['targets']} | {bad['targets']} | {bad['rolled_back']} | {outcomes(bad)} | "
            f"{good['targets']} | {good['rolled_back']} | {outcomes(good)} |"
        )
    lines += ["", "Targets:", ""]
    lines += [f"- {'met' if ok else '**MISSED**'}: {name}" for name, ok in report["checks"].items()]
    lines.append("")
    return "\n".join(lines)


def one_line(row: dict[str, Any]) -> str:
    wall = wall_of(row)
    rss = row["rss_mib"]
    bad, good = row["decisions"]["bad"], row["decisions"]["good"]
    return (
        f"  {row['ticks']} ticks: wall median {wall['median_s'] * 1000:.0f} ms, "
        f"p95 {wall['p95_s'] * 1000:.0f} ms, max {wall['max_s'] * 1000:.0f} ms; "
        f"daemon CPU {row['daemon_cpu_s_per_tick'] * 1000:.0f} ms/tick; "
        f"{row['queries_per_tick']:.1f} queries/tick; "
        f"RSS {rss['at_first_tick']:.0f} -> {rss['end']:.0f} MiB (max {rss['max']:.0f}, "
        f"slope when full {rss['steady_slope_mib_per_min']:+.2f} MiB/min); "
        f"rollback decisions: bad {bad['rolled_back']}/{bad['targets']}, "
        f"good {good['rolled_back']}/{good['targets']}"
    )


# --- the driver ----------------------------------------------------------------------------------


def drive(args: argparse.Namespace) -> dict[str, Any]:
    from tests.promfixtures import prometheus_binary, start_prometheus, start_sample_app

    binary = prometheus_binary()
    if binary is None:
        raise SystemExit("bench.scale needs a 'prometheus' binary on the PATH")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    prometheus_version = (version.stdout or version.stderr).split()[2] if version.returncode == 0 else "?"

    pinned = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity") and not args.no_pin
    if pinned:
        # Prometheus and the sample app inherit this; the daemon is moved to its own core.
        os.sched_setaffinity(0, {OTHERS_CPU})

    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        print(f"starting a sample app with {SERVICES * 2} synthetic deployments and Prometheus", flush=True)
        app = start_sample_app(deployment="scale-app", namespace=NAMESPACE, fake_deployments=SERVICES,
                               log_dir=root)
        try:
            server = start_prometheus(targets=[app.address], data_dir=root / "prometheus", binary=binary,
                                      scrape_interval_s=SCRAPE_INTERVAL_S, scrapes=3)
            try:
                for targets, duration_s in ((100, args.small_s), (SERVICES, args.large_s)):
                    print(f"rollbackd with {targets} targets for {duration_s:g} s", flush=True)
                    run = run_daemon(targets=targets, duration_s=duration_s, prometheus_url=server.url,
                                     workdir=root, pinned=pinned)
                    row = summarize(run, window_fill_s=WINDOW_S + INTERVAL_S)
                    print(one_line(row), flush=True)
                    runs.append(row)
            finally:
                server.stop()
        finally:
            app.stop()

    small, large = runs
    return {
        "benchmark": "scale",
        "prometheus_version": prometheus_version,
        "services": SERVICES,
        "scrape_interval_s": SCRAPE_INTERVAL_S,
        "interval_s": INTERVAL_S,
        "window_s": WINDOW_S,
        "pinned": pinned,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "checks": checks(small, large),
        "runs": runs,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--small-s", type=float, default=50.0,
                        help="how long to run with 100 targets after the first tick (default 50)")
    parser.add_argument("--large-s", type=float, default=200.0,
                        help="how long to run with 1,000 targets after the first tick (default 200)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = drive(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scale.md").write_text(markdown(report))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.md'}")
    missed = [name for name, ok in report["checks"].items() if not ok]
    for name in missed:
        print(f"MISSED: {name}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
