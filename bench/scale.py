"""Benchmark: the daemon at scale, as a real process against a real Prometheus.

A sample app in ``--fake-deployments`` mode exposes 1,000 synthetic services (a stable and a
canary Deployment each, with latency histograms; every service whose index ends in 9 has a bad
canary), scraped every second by a real Prometheus. ``rollbackd run`` watches the first 100, then
all 1,000 of them as canary targets, and the benchmark reads from the outside:

- the duration of every tick, from the daemon's ``rollbackd_evaluation_duration_seconds``
  (polled a few times per tick, so each tick's duration is seen), and the part of it spent
  collecting the data (queries and reading their answers), from
  ``rollbackd_collection_duration_seconds``;
- the queries the daemon sent, from Prometheus' own
  ``prometheus_http_requests_total{handler="/api/v1/query"}`` (the benchmark sends none while it
  measures), per tick, at both sizes;
- the daemon's resident memory (``VmRSS``) and CPU time from ``/proc`` all along a run long enough
  for everything the daemon keeps per target to reach its bound, and the trend of the memory
  afterwards;
- then the same 1,000 targets once more, acting on Kubernetes: the daemon reads the cluster
  through the real client from a stand-in API server (:mod:`bench.kube_standin`); in dry-run the
  hundred bad canaries stay in breach, so their facts are read (and reused) for the whole run;
- the decisions (``GET /api/v1/targets``): the bad canaries should get rollback decisions, the
  good ones not;
- what a scrape of ``/metrics`` costs the daemon: between ticks, the time a ``GET /metrics``
  takes, and the time a ``GET /healthz`` sent while it is being answered takes (the probe waits as
  long as building the exposition keeps the event loop from serving it).

The daemon is pinned to one CPU, the sample app and this driver to the other, so the daemon's
numbers are its own (other processes on the machine may still share its CPU: their share is
measured and reported). Prometheus may use both CPUs, as a production Prometheus has cores of its
own: it works while the daemon waits for its answers, and what it takes from the daemon's CPU
otherwise (its scrapes) shows in that share. Safety is in dry-run, so that every bad canary gets its rollback
decision instead of the hourly cap stopping them after the first three.

Run from the repository root: ``python -m bench.scale`` (about nine minutes). Results
go to ``bench/results/scale.json`` and ``bench/results/scale.md``. The exit status is 1 when a
target was missed. ``--only large`` (or ``small``, ``acting``) runs only those parts and writes
``scale-<parts>.json`` and ``.md`` beside them, without the targets that need every part.
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
import sysconfig
import tempfile
import threading
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
SMALL = 100

SCRAPE_INTERVAL_S = 1.0
#: The daemon's evaluation interval, which is also the window of its queries: three scrape
#: intervals. ``increase()`` needs two samples in its window, and the newest scrape becomes
#: visible only once it is ingested (a fraction of a second for this exposition): with a window of
#: two scrape intervals, a query landing meanwhile finds one sample and no data at all.
INTERVAL_S = 3.0
#: Both detection windows (``window_s`` and ``baseline_window_s``): short, so that they fill
#: early in the run.
WINDOW_S = 60.0
#: Tick durations are judged once the detection windows are full (the detectors' work then stays
#: the same from tick to tick).
TICKS_STEADY_FROM_S = WINDOW_S + INTERVAL_S
#: Memory is judged once everything kept per target has reached its bound (the detection and
#: baseline windows are full after one window) and the allocator has settled: during the next
#: window RSS still grows once, by a few MiB, as malloc adapts its thresholds to the answers of
#: several MiB it allocates and frees every tick (flat afterwards).
RSS_STEADY_FROM_S = 2 * WINDOW_S + 5 * INTERVAL_S

#: What the benchmark must show.
MAX_TICK_S = 1.0
#: The issue's 150 MB, in MiB as RSS is read (143.05 MiB).
MAX_RSS_MIB = 150e6 / 2**20
#: Largest RSS trend over the steady state still counted as flat.
MAX_RSS_SLOPE_MIB_PER_MIN = 1.0

#: How often the driver looks at the daemon: a few times per tick (to tell the ticks apart), not
#: more (each look is an HTTP request the daemon serves on its own CPU).
POLL_S = 1.0
DAEMON_CPU = 0
OTHERS_CPU = 1
#: Scheduling priority (nice) of the benchmark's processes: ahead of whatever else runs on the
#: machine, so that the daemon has its CPU to itself as far as possible.
NICE = -10
#: The parts of the benchmark, in the order they run (``--only`` picks some).
PARTS = ("small", "large", "acting")
#: Scrapes of ``/metrics`` probed at the end of a run (each between two ticks).
SCRAPE_PROBES = 10
#: How long after sending ``GET /metrics`` the ``/healthz`` probe is sent (the daemon is then
#: building the exposition: it takes tens of milliseconds at 1,000 targets).
PROBE_DELAY_S = 0.01

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def is_bad(index: int) -> bool:
    """Whether service ``index`` has a bad canary (see ``tests.sampleapp.fake_profile``)."""
    return index % 10 == 9


def service(index: int) -> str:
    return f"svc-{index:04d}"


def daemon_config(*, targets: int, prometheus_url: str, http_port: int) -> dict[str, Any]:
    """A rollbackd configuration watching services ``0 .. targets-1`` as canaries."""
    return {
        "interval_s": INTERVAL_S,
        "prometheus": {
            "url": prometheus_url,
            "timeout_s": 5.0,
            "retries": 2,
            # As scraped here: queries then look back one interval (three scrapes), not two of the
            # default 15 s scrapes.
            "scrape_interval_s": SCRAPE_INTERVAL_S,
        },
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


def cpu_busy_s(cpu: int) -> tuple[float, float]:
    """Busy and total seconds of one CPU so far (``/proc/stat``)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{cpu} "):
            user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in line.split()[1:9])
            busy = user + nice + system + irq + softirq + steal
            tick = os.sysconf("SC_CLK_TCK")
            return busy / tick, (busy + idle + iowait) / tick
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def http_get(url: str, *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(url: str) -> Samples:
    """Every sample of a Prometheus text exposition, by name and labels."""
    status, body = http_get(url)
    if status != 200:
        raise RuntimeError(f"GET {url}: HTTP {status}")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, have), value in samples.items() if sample == name and wanted <= have)


def probe_scrape(api: str) -> tuple[float, float]:
    """One ``GET /metrics`` and, while it is being answered, one ``GET /healthz``: the seconds each
    took. A daemon that builds the exposition on its event loop answers the probe only after it."""
    took: list[float] = []

    def metrics() -> None:
        started = time.perf_counter()
        status, _ = http_get(f"{api}/metrics", timeout_s=30.0)
        took.append(time.perf_counter() - started)
        if status != 200:
            raise RuntimeError(f"GET /metrics: HTTP {status}")

    scraper = threading.Thread(target=metrics, name="bench-scrape")
    scraper.start()
    time.sleep(PROBE_DELAY_S)
    started = time.perf_counter()
    status, _ = http_get(f"{api}/healthz")
    healthz_s = time.perf_counter() - started
    scraper.join(timeout=60)
    if status != 200 or not took:
        raise RuntimeError(f"the scrape probe failed (GET /healthz: HTTP {status})")
    return took[0], healthz_s


def queries_answered(prometheus_url: str) -> tuple[float, float]:
    """Instant queries Prometheus has answered so far (any status), and the seconds it spent
    answering them, from its own metrics."""
    samples = scrape(f"{prometheus_url}/metrics")
    return (
        total(samples, "prometheus_http_requests_total", handler="/api/v1/query"),
        total(samples, "prometheus_http_request_duration_seconds_sum", handler="/api/v1/query"),
    )


def pin(pid: int, cpu: int) -> None:
    """Pin every thread of process ``pid`` to ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), {cpu})
        except OSError:
            continue  # a thread that just ended


# --- one run of the daemon -----------------------------------------------------------------------


@dataclass
class Poll:
    """One look at the daemon: when (seconds since its first tick), its tick counter and the sum of
    tick durations, whether a tick ended since the previous look (the daemon is then between
    ticks), its RSS and CPU time, and the CPU time of its CPU and of Prometheus."""

    t: float
    ticks: int
    duration_sum_s: float
    collection_sum_s: float
    after_tick: bool
    rss_mib: float
    cpu_s: float
    daemon_cpu_busy_s: float
    daemon_cpu_total_s: float
    prometheus_cpu_s: float


@dataclass
class Run:
    targets: int
    acting: bool = False
    startup_s: float = 0.0
    polls: list[Poll] = field(default_factory=list)
    #: ``(seconds since the first tick, duration)`` of every tick after the first.
    tick_s: list[tuple[float, float]] = field(default_factory=list)
    #: ``(seconds since the first tick, time collecting the data)`` of the same ticks.
    collect_s: list[tuple[float, float]] = field(default_factory=list)
    #: Queries Prometheus answered over ``query_ticks`` whole ticks, and its time answering them.
    queries: float = 0.0
    query_s: float = 0.0
    query_ticks: int = 0
    final_metrics: Samples = field(default_factory=dict)
    listing: dict[str, Any] = field(default_factory=dict)
    log_errors: int = 0
    #: What the Kubernetes stand-in served over the run (acting runs): requests by kind, unknown ones.
    kube_api: dict[str, Any] = field(default_factory=dict)
    #: Probed scrapes: (seconds ``GET /metrics`` took, seconds a ``GET /healthz`` sent meanwhile took).
    scrape_probes: list[tuple[float, float]] = field(default_factory=list)


class Watch:
    """Looks at a running daemon and keeps what it saw."""

    def __init__(self, *, api: str, process: subprocess.Popen[bytes], log: Path, prometheus_pid: int,
                 since: float, run: Run) -> None:
        self.api = api
        self.process = process
        self.log = log
        self.prometheus_pid = prometheus_pid
        self.since = since
        self.run = run

    def look(self) -> Poll:
        if self.process.poll() is not None:
            raise RuntimeError(f"rollbackd exited with {self.process.returncode}:\n{tail(self.log)}")
        metrics = scrape(f"{self.api}/metrics")
        busy, cpu_total = cpu_busy_s(DAEMON_CPU)
        ticks = int(total(metrics, "rollbackd_evaluation_duration_seconds_count"))
        duration_sum = total(metrics, "rollbackd_evaluation_duration_seconds_sum")
        collection_sum = total(metrics, "rollbackd_collection_duration_seconds_sum")
        previous = self.run.polls[-1] if self.run.polls else None
        poll = Poll(
            t=time.monotonic() - self.since,
            ticks=ticks,
            duration_sum_s=duration_sum,
            collection_sum_s=collection_sum,
            after_tick=previous is not None and ticks > previous.ticks,
            rss_mib=rss_mib(self.process.pid),
            cpu_s=cpu_s(self.process.pid),
            daemon_cpu_busy_s=busy,
            daemon_cpu_total_s=cpu_total,
            prometheus_cpu_s=cpu_s(self.prometheus_pid),
        )
        if previous is not None and poll.after_tick:
            new_ticks = poll.ticks - previous.ticks
            # Several ticks between two looks share their mean (rare: several looks per tick).
            each = (poll.duration_sum_s - previous.duration_sum_s) / new_ticks
            collecting = (poll.collection_sum_s - previous.collection_sum_s) / new_ticks
            self.run.tick_s.extend((poll.t, each) for _ in range(new_ticks))
            self.run.collect_s.extend((poll.t, collecting) for _ in range(new_ticks))
        self.run.polls.append(poll)
        return poll

    def until_tick_ends(self, *, timeout_s: float) -> Poll:
        """Look until a tick has ended since the previous look: the daemon is between ticks."""
        deadline = time.monotonic() + timeout_s
        while True:
            time.sleep(POLL_S)
            poll = self.look()
            if poll.after_tick:
                return poll
            if time.monotonic() > deadline:
                raise RuntimeError(f"rollbackd ran no tick within {timeout_s:g}s:\n{tail(self.log)}")


#: How the container image runs Python (see the Dockerfile): docstrings and asserts left out.
IMAGE_ENV = {"PYTHONOPTIMIZE": "2"}


def compile_optimized() -> None:
    """Compile the ``*.opt-2.pyc`` files the image compiles when it is built (without them, every
    start of an optimized interpreter would compile the sources in memory)."""
    installed = sysconfig.get_paths()
    paths = sorted({installed["purelib"], installed["platlib"], str(REPO / "rollbackd")})
    subprocess.run([sys.executable, "-OO", "-m", "compileall", "-q", *paths], cwd=REPO,
                   capture_output=True, check=False)


def start_daemon(config: Path, log: Path, *, pinned: bool) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")} | IMAGE_ENV
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "rollbackd", "run", "--config", str(config)],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    if pinned:
        pin(process.pid, DAEMON_CPU)  # before it has imported anything or started a thread
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


def kubeconfig_for(url: str) -> dict[str, Any]:
    """A kubeconfig for the Kubernetes stand-in at ``url``."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "standin",
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "bench", "user": {"token": "bench"}}],
        "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "bench"}}],
    }


def kube_stats(url: str) -> dict[str, Any]:
    status, body = http_get(f"{url}/standin/stats")
    if status != 200:
        raise RuntimeError(f"the Kubernetes stand-in answered HTTP {status}")
    found: dict[str, Any] = json.loads(body)
    return found


def start_kube_standin() -> tuple[subprocess.Popen[bytes], str]:
    """The stand-in Kubernetes API (:mod:`bench.kube_standin`) on a free port, and its URL."""
    from tests.promfixtures import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "bench.kube_standin", str(port)], cwd=REPO,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert process.stdout is not None
    if process.stdout.readline().strip() != b"ready":
        process.kill()
        raise RuntimeError("the Kubernetes stand-in did not start")
    return process, f"http://{HOST}:{port}"


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_daemon(*, targets: int, duration_s: float, prometheus_url: str, prometheus_pid: int,
               workdir: Path, pinned: bool, kube_api: str | None = None) -> Run:
    """Run ``rollbackd run`` over ``targets`` targets for ``duration_s`` after its first tick;
    with ``kube_api`` (the stand-in's URL), acting on Kubernetes through it."""
    from tests.promfixtures import free_port

    port = free_port()
    name = f"{targets}{'-acting' if kube_api else ''}"
    config = workdir / f"rollbackd-{name}.yaml"
    settings = daemon_config(targets=targets, prometheus_url=prometheus_url, http_port=port)
    if kube_api is not None:
        kubeconfig = workdir / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(kubeconfig_for(kube_api)))
        settings["kubernetes"] = {"enabled": True, "kubeconfig": str(kubeconfig)}
    config.write_text(yaml.safe_dump(settings))
    checked = subprocess.run([sys.executable, "-m", "rollbackd", "check-config", str(config)],
                             cwd=REPO, capture_output=True, text=True, check=False)
    if checked.returncode != 0:
        raise RuntimeError(f"rollbackd check-config refused {config}:\n{checked.stdout}{checked.stderr}")

    api = f"http://{HOST}:{port}"
    log = workdir / f"rollbackd-{name}.log"
    run = Run(targets=targets, acting=kube_api is not None)
    served_before = kube_stats(kube_api) if kube_api is not None else {}
    launched = time.monotonic()
    process = start_daemon(config, log, pinned=pinned)
    try:
        wait_ready(api, process, log, timeout_s=60.0)  # ready: the first tick is done
        ready = time.monotonic()
        run.startup_s = ready - launched
        if pinned:
            pin(process.pid, DAEMON_CPU)  # threads started since, if any
        watch = Watch(api=api, process=process, log=log, prometheus_pid=prometheus_pid, since=ready, run=run)
        watch.look()
        # Count queries over whole ticks: from just after one tick to just after another.
        first = watch.until_tick_ends(timeout_s=4 * INTERVAL_S)
        queries0, query_s0 = queries_answered(prometheus_url)
        while time.monotonic() - ready < duration_s:
            time.sleep(POLL_S)
            watch.look()
        last = watch.until_tick_ends(timeout_s=4 * INTERVAL_S)
        queries1, query_s1 = queries_answered(prometheus_url)
        for _ in range(SCRAPE_PROBES):
            watch.until_tick_ends(timeout_s=4 * INTERVAL_S)  # between ticks: the loop is idle
            run.scrape_probes.append(probe_scrape(api))
        run.queries, run.query_s = queries1 - queries0, query_s1 - query_s0
        run.query_ticks = last.ticks - first.ticks
        run.final_metrics = scrape(f"{api}/metrics")
        status, body = http_get(f"{api}/api/v1/targets", timeout_s=30.0)
        if status != 200:
            raise RuntimeError(f"GET /api/v1/targets: HTTP {status}")
        run.listing = json.loads(body)
        if kube_api is not None:
            after = kube_stats(kube_api)
            run.kube_api = {
                "served": {kind: count - served_before.get("served", {}).get(kind, 0)
                           for kind, count in after.get("served", {}).items()},
                "unknown": after.get("unknown", {}),
            }
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


def slope_per_min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, value)`` points, per minute."""
    if len(points) < 3:
        return None
    mean_t = statistics.fmean(t for t, _ in points)
    mean_v = statistics.fmean(v for _, v in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def ticks_summary(durations: Sequence[float]) -> dict[str, Any]:
    if not durations:
        return {"ticks": 0}
    return {
        "ticks": len(durations),
        "median_s": statistics.median(durations),
        "p95_s": percentile(durations, 0.95),
        "max_s": max(durations),
        "within_1s": sum(1 for d in durations if d < MAX_TICK_S),
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


def first_at(polls: Sequence[Poll], t: float) -> Poll | None:
    return next((p for p in polls if p.t >= t), None)


def summarize(run: Run) -> dict[str, Any]:
    polls = run.polls
    first, last = polls[0], polls[-1]
    ticks = max(1, last.ticks - first.ticks)
    idle = [p for p in polls if p.after_tick]  # RSS between ticks, without a tick's transients
    steady_idle = [p for p in idle if p.t >= RSS_STEADY_FROM_S]
    windows_full = first_at(idle, TICKS_STEADY_FROM_S)
    rss_steady = steady_idle[0] if steady_idle else None
    cpu_busy = last.daemon_cpu_busy_s - first.daemon_cpu_busy_s
    cpu_total = last.daemon_cpu_total_s - first.daemon_cpu_total_s
    daemon_cpu = last.cpu_s - first.cpu_s
    m = run.final_metrics
    return {
        "targets": run.targets,
        "acting": run.acting,
        "kube_api": run.kube_api,
        "kube_requests_per_tick": (
            sum(run.kube_api.get("served", {}).values()) / ticks if run.acting else None
        ),
        "startup_s": run.startup_s,
        "run_s": last.t,
        "ticks": ticks,
        "ticks_skipped": total(m, "rollbackd_ticks_skipped_total"),
        "tick_wall": ticks_summary([d for _, d in run.tick_s]),
        "tick_wall_steady": ticks_summary([d for t, d in run.tick_s if t >= TICKS_STEADY_FROM_S]),
        # The same ticks split: collecting the data (queries and reading their answers), and
        # judging and deciding.
        "collecting": ticks_summary(split(run, collecting=True)),
        "judging": ticks_summary(split(run, collecting=False)),
        "queries_per_tick": run.queries / run.query_ticks if run.query_ticks else None,
        "queries": run.queries,
        "prometheus_query_s_per_tick": run.query_s / run.query_ticks if run.query_ticks else None,
        "query_ticks": run.query_ticks,
        "daemon_cpu_s_per_tick": daemon_cpu / ticks,
        "prometheus_cpu_s_per_tick": (last.prometheus_cpu_s - first.prometheus_cpu_s) / ticks,
        "others_on_daemon_cpu_pct": (
            100.0 * max(0.0, cpu_busy - daemon_cpu) / cpu_total if cpu_total > 0 else None
        ),
        "evaluations": total(m, "rollbackd_evaluations_total"),
        "source_errors": total(m, "rollbackd_source_errors_total"),
        "evaluation_errors": total(m, "rollbackd_evaluation_errors_total"),
        "log_errors": run.log_errors,
        "rss_mib": {
            "after_first_tick": first.rss_mib,
            "windows_full": windows_full.rss_mib if windows_full is not None else None,
            "steady_start": rss_steady.rss_mib if rss_steady is not None else None,
            "end": idle[-1].rss_mib if idle else last.rss_mib,
            "max": max(p.rss_mib for p in polls),
            "steady_slope_mib_per_min": slope_per_min([(p.t, p.rss_mib) for p in steady_idle]),
            "steady_from_s": RSS_STEADY_FROM_S,
        },
        "decisions": decisions_summary(run.listing),
        "scrape": {
            "probes": len(run.scrape_probes),
            "metrics_median_s": _median([m for m, _ in run.scrape_probes]),
            "metrics_max_s": max((m for m, _ in run.scrape_probes), default=None),
            "healthz_during_median_s": _median([h for _, h in run.scrape_probes]),
            "healthz_during_max_s": max((h for _, h in run.scrape_probes), default=None),
        },
        "tick_s": [[round(t, 2), round(d, 4)] for t, d in run.tick_s],
        "rss_trace": [[round(p.t, 1), round(p.rss_mib, 2)] for p in idle],
    }


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def split(run: Run, *, collecting: bool) -> list[float]:
    """Per tick judged (see :func:`wall_of`): the time collecting the data, or the rest."""
    pairs = list(zip(run.tick_s, run.collect_s, strict=True))
    steady = [(d, c) for (t, d), (_, c) in pairs if t >= TICKS_STEADY_FROM_S]
    chosen = steady or [(d, c) for (_, d), (_, c) in pairs]
    return [c if collecting else max(0.0, d - c) for d, c in chosen]


def wall_of(row: dict[str, Any]) -> dict[str, Any]:
    """The tick wall times to judge a run by: once the windows are full, if the run got there."""
    steady: dict[str, Any] = row["tick_wall_steady"]
    return steady if steady["ticks"] else dict(row["tick_wall"])


def checks(small: dict[str, Any], large: dict[str, Any], acting: dict[str, Any]) -> dict[str, bool]:
    found: dict[str, bool] = {}
    for row, what in ((large, f"{SERVICES} targets"), (acting, f"{SERVICES} targets acting on Kubernetes")):
        wall = wall_of(row)
        found[f"{what}: median tick under 1 s"] = wall["median_s"] < MAX_TICK_S
        found[f"{what}: p95 tick under 1 s"] = wall["p95_s"] < MAX_TICK_S
        peak = row["rss_mib"]["max"]
        found[f"{what}: RSS under 150 MB ({MAX_RSS_MIB:.0f} MiB) (peak)"] = peak < MAX_RSS_MIB
    found[f"queries per tick the same at {SMALL} and {SERVICES} targets"] = (
        small["queries_per_tick"] is not None and small["queries_per_tick"] == large["queries_per_tick"]
    )
    slope = large["rss_mib"]["steady_slope_mib_per_min"]
    found[f"{SERVICES} targets: RSS flat once bounded (|slope| <= {MAX_RSS_SLOPE_MIB_PER_MIN:g} MiB/min)"] = (
        slope is not None and abs(slope) <= MAX_RSS_SLOPE_MIB_PER_MIN
    )
    found["every bad canary decided for rollback, no good one"] = all(
        row["decisions"]["bad"]["rolled_back"] == row["decisions"]["bad"]["targets"]
        and row["decisions"]["good"]["rolled_back"] == 0
        for row in (small, large, acting)
    )
    found["acting: no request the Kubernetes stand-in does not know"] = not acting["kube_api"].get("unknown")
    return found


def _label(row: dict[str, Any]) -> str:
    return f"{row['targets']}, acting" if row.get("acting") else str(row["targets"])


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MiB"


def markdown(report: dict[str, Any]) -> str:
    rows = report["runs"]
    acting_row = next((row for row in rows if row.get("acting")), None)
    pinning = (
        f"The daemon is pinned to CPU {DAEMON_CPU}; the sample app and the driver to CPU {OTHERS_CPU}; "
        f"Prometheus may use both (a production Prometheus has cores of its own)."
        if report["pinned"] else "Nothing is pinned (that needs 2 CPUs and sched_setaffinity)."
    )
    if report["nice"]:
        pinning += f" All of them run at nice {report['nice']}, ahead of other work on the machine."
    lines = [
        "# Scale: `rollbackd run` with 100 and 1,000 canary targets",
        "",
        f"Prometheus {report['prometheus_version']} on 127.0.0.1 scrapes one sample app exposing "
        f"{report['services'] * 2} deployments ({report['services']} services, stable and canary, "
        f"with latency histograms; the canary of every service whose index ends in 9 is bad) every "
        f"{report['scrape_interval_s']:g} s. rollbackd runs as a real process, as the container image "
        f"runs it (`PYTHONOPTIMIZE={IMAGE_ENV['PYTHONOPTIMIZE']}`, bytecode compiled ahead): interval "
        f"{report['interval_s']:g} s, detection and baseline windows {report['window_s']:g} s, "
        f"dry-run. {pinning} Machine: {report['machine']}; rollbackd {report['revision']}.",
        "",
        "## Ticks and queries",
        "",
        "| targets | run | ticks | tick wall: median | p95 | max | under 1 s | daemon CPU/tick "
        "| Prometheus CPU/tick | Prometheus answering/tick | others on the daemon's CPU | queries/tick |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        wall = wall_of(row)
        others = row["others_on_daemon_cpu_pct"]
        queries = row["queries_per_tick"]
        lines.append(
            f"| {_label(row)} | {row['run_s']:.0f} s | {row['ticks']} | {_ms(wall['median_s'])} | "
            f"{_ms(wall['p95_s'])} | {_ms(wall['max_s'])} | {wall['within_1s']}/{wall['ticks']} | "
            f"{_ms(row['daemon_cpu_s_per_tick'])} | {_ms(row['prometheus_cpu_s_per_tick'])} | "
            f"{_ms(row['prometheus_query_s_per_tick'])} | {'-' if others is None else f'{others:.0f}%'} | "
            f"{'-' if queries is None else f'{queries:g}'} |"
        )
    lines += [
        "",
        f"Tick wall times come from `rollbackd_evaluation_duration_seconds` (collection and evaluation "
        f"of every target); they are over the ticks after the detection windows filled "
        f"({TICKS_STEADY_FROM_S:g} s after the first tick) when the run lasted that long, else over "
        f"all ticks after the first. Queries per tick: Prometheus' own count of `/api/v1/query` "
        f"requests over whole ticks, divided by the ticks; \"Prometheus answering\" is the time it spent "
        f"on them (its own `prometheus_http_request_duration_seconds`), summed over the queries of a "
        f"tick, which run concurrently. Prometheus CPU includes its scraping. Daemon CPU includes the "
        f"work it does between ticks. \"Others on the daemon's CPU\": the share of that CPU used by "
        f"other processes during the run.",
        "",
        "Where the time of a tick goes (the same ticks): collecting the data "
        "(`rollbackd_collection_duration_seconds`: the three queries, run concurrently, Prometheus "
        "answering them and rollbackd reading the answers into per-target samples; \"Prometheus "
        "answering\" above is the larger part), then judging and deciding every target.",
        "",
        "| targets | collecting: median | p95 | judging and deciding: median | p95 | max |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        collecting, judging = row["collecting"], row["judging"]
        lines.append(
            f"| {_label(row)} | {_ms(collecting.get('median_s'))} | {_ms(collecting.get('p95_s'))} | "
            f"{_ms(judging.get('median_s'))} | {_ms(judging.get('p95_s'))} | {_ms(judging.get('max_s'))} |"
        )
    lines += scrape_lines(rows)
    lines += [
        "",
        "## Memory",
        "",
        "| targets | RSS after the first tick | windows full | steady from "
        f"{RSS_STEADY_FROM_S:g} s | end | peak | slope (steady) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        rss = row["rss_mib"]
        slope = rss["steady_slope_mib_per_min"]
        lines.append(
            f"| {_label(row)} | {_mib(rss['after_first_tick'])} | {_mib(rss['windows_full'])} | "
            f"{_mib(rss['steady_start'])} | {_mib(rss['end'])} | {_mib(rss['max'])} | "
            f"{'-' if slope is None else f'{slope:+.2f} MiB/min'} |"
        )
    lines += [
        "",
        "RSS is read between ticks (after each tick), except the peak, which is over every look. "
        f"What the daemon keeps per target is bounded by the detection and baseline windows "
        f"({report['window_s']:g} s); during the next window RSS still steps up once by a few MiB "
        f"(the allocator adapting to the multi-MiB answers read and freed every tick), hence steady "
        f"from {RSS_STEADY_FROM_S:g} s.",
        "",
        "Deciding only, the daemon has no Kubernetes access and does not load the Kubernetes "
        "client. Acting, it reads the cluster through the real client from a stand-in API server "
        "(`bench/kube_standin.py`: Deployments of a real one's size, Ingresses, Events accepted), in "
        "dry-run: every bad canary stays in breach, so the cluster is read for a hundred targets "
        "for the whole run (their facts are reused for `kubernetes.facts_max_age_s`, 30 s, and read "
        "again before a rollback would start). "
        + (
            "Kubernetes requests over the acting run: "
            f"{', '.join(f'{k} {v}' for k, v in acting_row['kube_api'].get('served', {}).items())} "
            f"({acting_row['kube_requests_per_tick']:.0f} per tick on average; the Events record "
            f"decisions as they change, each with a read of its Deployment). "
            if acting_row is not None and acting_row.get("kube_requests_per_tick") is not None else ""
        )
        + f"Loading the client alone costs {report['kube_client_mib']:.0f} MiB (the RSS of a fresh "
        f"interpreter, run as the image runs it, importing the daemon with and without "
        f"`kubernetes_asyncio.client`, median of {KUBE_IMPORT_PAIRS} pairs).",
        "",
        "## Decisions",
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
            f"| {_label(row)} | {bad['targets']} | {bad['rolled_back']} | {outcomes(bad)} | "
            f"{good['targets']} | {good['rolled_back']} | {outcomes(good)} |"
        )
    lines += ["", "## Targets", ""]
    lines += [f"- {'met' if ok else '**MISSED**'}: {name}" for name, ok in report["checks"].items()]
    lines.append("")
    return "\n".join(lines)


def partial_markdown(report: dict[str, Any]) -> str:
    """Some parts of the benchmark only (``--only``): a line per run, and the scrapes."""
    lines = [
        f"# Scale, parts only: {', '.join(_label(row) for row in report['runs'])} targets",
        "",
        f"rollbackd {report['revision']}, Prometheus {report['prometheus_version']}, interval "
        f"{report['interval_s']:g} s, windows {report['window_s']:g} s; machine: {report['machine']}.",
        "",
        *(f"- {_label(row)}: {one_line(row).strip()}" for row in report["runs"]),
    ]
    lines += scrape_lines(report["runs"])
    lines.append("")
    return "\n".join(lines)


def scrape_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The section on what a scrape of ``/metrics`` costs the daemon."""
    lines = [
        "",
        "## A scrape of /metrics",
        "",
        f"Between ticks, {SCRAPE_PROBES} times per run: a `GET /metrics`, and a `GET /healthz` sent "
        f"{PROBE_DELAY_S * 1000:g} ms after it, while the exposition is being built. The probe waits as "
        "long as building the exposition keeps the event loop from serving it.",
        "",
        "| targets | GET /metrics: median | max | GET /healthz meanwhile: median | max |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        scrape = row["scrape"]
        lines.append(
            f"| {_label(row)} | {_ms(scrape['metrics_median_s'])} | {_ms(scrape['metrics_max_s'])} | "
            f"{_ms(scrape['healthz_during_median_s'])} | {_ms(scrape['healthz_during_max_s'])} |"
        )
    return lines


def one_line(row: dict[str, Any]) -> str:
    wall = wall_of(row)
    rss = row["rss_mib"]
    slope = rss["steady_slope_mib_per_min"]
    bad, good = row["decisions"]["bad"], row["decisions"]["good"]
    others = row["others_on_daemon_cpu_pct"]
    return (
        f"  {row['ticks']} ticks: wall median {_ms(wall['median_s'])}, p95 {_ms(wall['p95_s'])}, "
        f"max {_ms(wall['max_s'])}; daemon CPU {_ms(row['daemon_cpu_s_per_tick'])}/tick "
        f"(others on its CPU {'-' if others is None else f'{others:.0f}%'}); "
        f"{row['queries_per_tick']} queries/tick; RSS {_mib(rss['after_first_tick'])} -> "
        f"{_mib(rss['end'])} (peak {_mib(rss['max'])}, steady slope "
        f"{'-' if slope is None else f'{slope:+.2f} MiB/min'}); "
        f"rollback decisions: bad {bad['rolled_back']}/{bad['targets']}, "
        f"good {good['rolled_back']}/{good['targets']}; GET /metrics "
        f"{_ms(row['scrape']['metrics_median_s'])}, GET /healthz meanwhile "
        f"{_ms(row['scrape']['healthz_during_median_s'])} (medians)"
    )


# --- the driver ----------------------------------------------------------------------------------

#: Pairs of fresh interpreters measured for the Kubernetes client's import.
KUBE_IMPORT_PAIRS = 3


def import_rss_mib(modules: Sequence[str]) -> float:
    """RSS of a fresh interpreter, run as the image runs it, once it has imported ``modules``, in
    MiB."""
    code = (
        f"import {', '.join(modules)}\n"
        "for line in open('/proc/self/status'):\n"
        "    if line.startswith('VmRSS:'):\n"
        "        print(int(line.split()[1]) / 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                          env=os.environ | IMAGE_ENV)
    return float(done.stdout.strip())


def kube_client_mib() -> float:
    """What loading the Kubernetes client adds to the daemon's RSS (median over a few pairs)."""
    daemon = ["rollbackd.daemon.main"]
    return statistics.median(
        import_rss_mib([*daemon, "kubernetes_asyncio.client"]) - import_rss_mib(daemon)
        for _ in range(KUBE_IMPORT_PAIRS)
    )



def revision() -> str:
    """The checked-out commit, marked ``+changes`` when the tree differs from it."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "(unknown revision)"
    return f"{commit}{' +changes' if dirty else ''}"


def drive(args: argparse.Namespace) -> dict[str, Any]:
    from tests.promfixtures import prometheus_binary, start_prometheus, start_sample_app

    binary = prometheus_binary()
    if binary is None:
        raise SystemExit("bench.scale needs a 'prometheus' binary on the PATH")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    prometheus_version = (version.stdout or version.stderr).split()[2] if version.returncode == 0 else "?"

    pinned = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity") and not args.no_pin
    if pinned:
        # Prometheus and the sample app inherit this; the daemon is moved to its own CPU.
        os.sched_setaffinity(0, {OTHERS_CPU})
    prioritized = False
    if not args.no_priority:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, NICE)  # inherited by every process started below
            prioritized = True
        except OSError as exc:
            print(f"running at normal priority: cannot raise it ({exc})", flush=True)

    compile_optimized()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        root = Path(tmp)
        print(f"starting a sample app with {SERVICES * 2} synthetic deployments and Prometheus", flush=True)
        app = start_sample_app(deployment="scale-app", namespace=NAMESPACE, fake_deployments=SERVICES,
                               log_dir=root)
        try:
            if pinned:  # Prometheus inherits every CPU (and sizes its Go runtime by them)
                os.sched_setaffinity(0, set(range(os.cpu_count() or 2)))
            try:
                server = start_prometheus(targets=[app.address], data_dir=root / "prometheus",
                                          binary=binary, scrape_interval_s=SCRAPE_INTERVAL_S, scrapes=3)
            finally:
                if pinned:
                    os.sched_setaffinity(0, {OTHERS_CPU})
            standin, kube_api = start_kube_standin()
            try:
                assert server.pid is not None
                parts = {"small": (SMALL, args.small_s, None), "large": (SERVICES, args.large_s, None),
                         "acting": (SERVICES, args.acting_s, kube_api)}
                plan = [parts[name] for name in (args.only or PARTS)]
                for targets, duration_s, api in plan:
                    how = " acting on Kubernetes" if api is not None else ""
                    print(f"rollbackd with {targets} targets{how} for {duration_s:g} s", flush=True)
                    run = run_daemon(targets=targets, duration_s=duration_s, prometheus_url=server.url,
                                     prometheus_pid=server.pid, workdir=root, pinned=pinned, kube_api=api)
                    row = summarize(run)
                    print(one_line(row), flush=True)
                    runs.append(row)
            finally:
                standin.terminate()
                standin.wait(timeout=10)
                server.stop()
        finally:
            app.stop()

    report = {
        "benchmark": "scale",
        "revision": revision(),
        "prometheus_version": prometheus_version,
        "services": SERVICES,
        "scrape_interval_s": SCRAPE_INTERVAL_S,
        "interval_s": INTERVAL_S,
        "window_s": WINDOW_S,
        "pinned": pinned,
        "nice": NICE if prioritized else 0,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "runs": runs,
    }
    if args.only:
        return report
    small, large, acting = runs
    kube_mib = kube_client_mib()
    runs_last = {"runs": report.pop("runs")}  # the report's keys in the order they always had
    return report | {"kube_client_mib": kube_mib, "checks": checks(small, large, acting)} | runs_last


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n")[0])
    parser.add_argument("--small-s", type=float, default=50.0,
                        help=f"how long to run with {SMALL} targets after the first tick (default 50)")
    parser.add_argument("--large-s", type=float, default=225.0,
                        help=f"how long to run with {SERVICES} targets after the first tick (default 225)")
    parser.add_argument("--acting-s", type=float, default=180.0,
                        help=f"how long to run with {SERVICES} targets acting on Kubernetes (default 180)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=None,
                        help="run only these parts (results in scale-<parts>.json and .md)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--no-priority", action="store_true",
                        help=f"do not raise the processes' scheduling priority (nice {NICE})")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    report = drive(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if args.only:
        name = f"scale-{'-'.join(args.only)}"
        (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / f"{name}.md").write_text(partial_markdown(report))
        print(f"wrote {out / name}.json and .md")
        return 0
    (out / "scale.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "scale.md").write_text(markdown(report))
    print(f"wrote {out / 'scale.json'} and {out / 'scale.md'}")
    missed = [name for name, ok in report["checks"].items() if not ok]
    for name in missed:
        print(f"MISSED: {name}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
