"""Benchmark: fetching one tick of metrics for many targets from a real Prometheus.

Three ways, for 100 and 1,000 targets (each a stable and a canary deployment):

- ``api-client``: ``prometheus-api-client``'s ``PrometheusConnect.custom_query`` (synchronous)
  in a thread pool, one query per target per metric (3 per target), one client per thread;
- ``aiohttp-per-target``: rollbackd's ``PrometheusClient``, the same per-target queries sent
  concurrently over as many connections as the pool has threads;
- ``batched``: rollbackd's ``PrometheusSource.collect``, one query per metric for all targets.

A sample app in ``--fake-deployments`` mode exposes the 2,000 deployments (with latency
histograms), scraped every second by a real Prometheus on 127.0.0.1. Each (method, size) runs in
a fresh worker process, so its CPU time and peak RSS are its own; a warm-up tick is not counted.

Run from the repository root: ``python -m bench.prom_clients``. Results go to
``bench/results/prom_clients.json`` and ``bench/results/prom_clients.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource
from rollbackd.sources.promql import format_duration, render

NAMESPACE = "bench"
METHODS = ("api-client", "aiohttp-per-target", "batched")
TEMPLATES = QueryTemplates(
    requests="sum by ({by}) (increase(http_requests_total{{{selector}}}[{window}]))",
    errors='sum by ({by}) (increase(http_requests_total{{{selector},code=~"5.."}}[{window}]))',
    latency_buckets=(
        "sum by ({by}, le) (increase(http_request_duration_seconds_bucket{{{selector}}}[{window}]))"
    ),
    group_labels=("namespace", "deployment"),
)
#: Stop adding measured ticks once a worker has spent this long measuring (at least 3 ticks).
TICK_BUDGET_S = 20.0

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def targets(count: int) -> list[SourceTarget]:
    return [
        SourceTarget(
            key=f"{NAMESPACE}/svc-{i:04d}",
            queries=TEMPLATES,
            candidate=SeriesRef(labels=(("namespace", NAMESPACE), ("deployment", f"svc-{i:04d}-canary"))),
            baseline=SeriesRef(labels=(("namespace", NAMESPACE), ("deployment", f"svc-{i:04d}-stable"))),
        )
        for i in range(count)
    ]


def per_target_queries(count: int, window: str) -> list[str]:
    """What a per-target client sends: three queries per target, both sides in each."""
    queries: list[str] = []
    for i in range(count):
        selector = f'namespace="{NAMESPACE}",deployment=~"svc-{i:04d}-canary|svc-{i:04d}-stable"'
        for template in (TEMPLATES.requests, TEMPLATES.errors, TEMPLATES.latency_buckets):
            queries.append(render(template, by="namespace, deployment", selector=selector, window=window))
    return queries


# Workers: one (method, size) per process


def run_ticks(tick: Callable[[], int], ticks: int) -> dict[str, Any]:
    """A warm-up tick, then up to ``ticks`` measured ones (fewer past the time budget, at least 3).
    ``tick`` returns how many targets got data on both sides."""
    tick()
    walls: list[float] = []
    cpus: list[float] = []
    complete: list[int] = []
    started = time.perf_counter()
    for n in range(ticks):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        complete.append(tick())
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
        if n >= 2 and time.perf_counter() - started > TICK_BUDGET_S:
            break
    return {
        "ticks": len(walls),
        "wall_s": walls,
        "cpu_s": cpus,
        "targets_with_data": min(complete),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def worker_api_client(url: str, count: int, window_s: float, ticks: int, threads: int) -> dict[str, Any]:
    from prometheus_api_client import PrometheusConnect

    logging.getLogger("urllib3").setLevel(logging.ERROR)
    queries = per_target_queries(count, format_duration(window_s))
    local = threading.local()

    def query(text: str) -> list[dict[str, Any]]:
        # requests.Session is not meant to be shared between threads: one client per thread.
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = PrometheusConnect(url=url, disable_ssl=True)
        result: list[dict[str, Any]] = client.custom_query(query=text)
        return result

    with ThreadPoolExecutor(max_workers=threads) as pool:
        def tick() -> int:
            results = list(pool.map(query, queries))
            return sum(1 for r in results[0::3] if len(r) == 2)

        measured = run_ticks(tick, ticks)
    return {**measured, "queries_per_tick": len(queries)}


def worker_aiohttp_per_target(url: str, count: int, window_s: float, ticks: int,
                              threads: int) -> dict[str, Any]:
    queries = per_target_queries(count, format_duration(window_s))

    async def main() -> dict[str, Any]:
        async with PrometheusClient(base_url=url, timeout_s=30, retries=0,
                                    max_connections=threads) as client:
            loop = asyncio.get_running_loop()

            async def one_tick() -> int:
                results = await asyncio.gather(*(client.query(q) for q in queries))
                return sum(1 for r in results[0::3] if len(r.series) == 2)

            # run_ticks is synchronous; drive each tick from a thread into this loop.
            def tick() -> int:
                return asyncio.run_coroutine_threadsafe(one_tick(), loop).result()

            return await asyncio.to_thread(run_ticks, tick, ticks)

    return {**asyncio.run(main()), "queries_per_tick": len(queries)}


def worker_batched(url: str, count: int, window_s: float, ticks: int, threads: int) -> dict[str, Any]:
    fleet = targets(count)

    async def main() -> dict[str, Any]:
        async with PrometheusClient(base_url=url, timeout_s=30, retries=0) as client:
            # One shard: the three batched queries themselves, against one query per target.
            source = PrometheusSource(client=client, shards=1)
            loop = asyncio.get_running_loop()

            async def one_tick() -> int:
                result = await source.collect(fleet, window_s=window_s)
                return sum(1 for b, c in result.values() if b is not None and c is not None)

            def tick() -> int:
                return asyncio.run_coroutine_threadsafe(one_tick(), loop).result()

            before = client.stats.requests
            measured = await asyncio.to_thread(run_ticks, tick, ticks)
            sent = client.stats.requests - before
            return {**measured, "queries_per_tick": sent // (measured["ticks"] + 1)}

    return asyncio.run(main())


WORKERS: dict[str, Callable[[str, int, float, int, int], dict[str, Any]]] = {
    "api-client": worker_api_client,
    "aiohttp-per-target": worker_aiohttp_per_target,
    "batched": worker_batched,
}


# The driver


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_worker(method: str, url: str, count: int, args: argparse.Namespace,
               prometheus_pid: int, idle_cpu_rate: float) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.prom_clients", "--worker", method, "--url", url,
               "--count", str(count), "--ticks", str(args.ticks), "--window-s", str(args.window_s),
               "--threads", str(args.threads)]
    cpu0, wall0 = process_cpu_s(prometheus_pid), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    elapsed = time.perf_counter() - wall0
    prometheus_cpu = process_cpu_s(prometheus_pid) - cpu0 - idle_cpu_rate * elapsed
    if done.returncode != 0:
        raise RuntimeError(f"worker {method} {count} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    walls = result["wall_s"]
    cpus = result["cpu_s"]
    summary = {
        "method": method,
        "targets": count,
        "ticks": result["ticks"],
        "queries_per_tick": result["queries_per_tick"],
        "wall_s_median": statistics.median(walls),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "client_cpu_s_per_tick": statistics.median(cpus),
        "prometheus_cpu_s_per_tick": max(0.0, prometheus_cpu) / (result["ticks"] + 1),
        "peak_rss_mib": result["peak_rss_mib"],
        "targets_with_data": result["targets_with_data"],
    }
    print(f"  {method:<20} {count:>5} targets: {summary['wall_s_median'] * 1000:8.1f} ms/tick, "
          f"{summary['queries_per_tick']:>5} queries, client CPU {summary['client_cpu_s_per_tick']:.3f} s, "
          f"Prometheus CPU {summary['prometheus_cpu_s_per_tick']:.3f} s, "
          f"RSS {summary['peak_rss_mib']:.0f} MiB, data for {summary['targets_with_data']}/{count}",
          flush=True)
    return summary


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Prometheus clients: one tick of metrics for N targets",
        "",
        f"Prometheus {report['prometheus_version']} on 127.0.0.1 scraping one sample app exposing "
        f"{report['fake_deployments'] * 2} deployments every {report['scrape_interval_s']:g} s; "
        f"window {report['window_s']:g} s; {report['threads']} threads / connections for the "
        f"per-target methods; median of up to {report['ticks']} ticks after a warm-up tick. "
        f"Machine: {report['machine']}.",
        "",
        "| method | targets | queries/tick | wall/tick (median) | client CPU/tick | "
        "Prometheus CPU/tick (approx.) | peak RSS | targets with data |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report["results"]:
        lines.append(
            f"| {row['method']} | {row['targets']} | {row['queries_per_tick']} | "
            f"{row['wall_s_median'] * 1000:.1f} ms | {row['client_cpu_s_per_tick'] * 1000:.0f} ms | "
            f"{row['prometheus_cpu_s_per_tick'] * 1000:.0f} ms | {row['peak_rss_mib']:.0f} MiB | "
            f"{row['targets_with_data']} |"
        )
    lines += [
        "",
        "- api-client: `prometheus-api-client` `PrometheusConnect.custom_query` in a thread pool, "
        "one client per thread, 3 queries per target.",
        "- aiohttp-per-target: rollbackd's `PrometheusClient`, the same 3 queries per target, concurrent.",
        "- batched: rollbackd's `PrometheusSource.collect`, 3 queries per tick for all targets "
        "(results mapped back to targets, histograms and P95 built).",
        "- Client CPU and peak RSS are the worker process's own (fresh process per row). Prometheus "
        "CPU is its CPU time during the run, minus its idle rate (scraping), per tick including "
        "the warm-up tick.",
        "",
    ]
    return "\n".join(lines)


def drive(args: argparse.Namespace) -> None:
    from tests.promfixtures import prometheus_binary, start_prometheus, start_sample_app

    binary = prometheus_binary()
    if binary is None:
        raise SystemExit("bench.prom_clients needs a 'prometheus' binary on the PATH")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    prometheus_version = (version.stdout or version.stderr).split()[2] if version.returncode == 0 else "?"
    fake = max(args.targets)
    with tempfile.TemporaryDirectory(prefix="bench-prom-") as tmp:
        root = Path(tmp)
        print(f"starting a sample app with {fake * 2} synthetic deployments and Prometheus", flush=True)
        app = start_sample_app(deployment="bench-app", namespace=NAMESPACE, fake_deployments=fake,
                               log_dir=root)
        try:
            server = start_prometheus(targets=[app.address], data_dir=root / "prometheus", binary=binary,
                                      scrape_interval_s=args.scrape_interval_s, scrapes=3)
            try:
                pid = server.pid
                assert pid is not None
                cpu0 = process_cpu_s(pid)
                time.sleep(3.0)
                idle_rate = (process_cpu_s(pid) - cpu0) / 3.0
                rows = [
                    run_worker(method, server.url, count, args, pid, idle_rate)
                    for count in sorted(args.targets) for method in METHODS
                ]
            finally:
                server.stop()
        finally:
            app.stop()

    report = {
        "benchmark": "prom_clients",
        "prometheus_version": prometheus_version,
        "fake_deployments": fake,
        "scrape_interval_s": args.scrape_interval_s,
        "window_s": args.window_s,
        "threads": args.threads,
        "ticks": args.ticks,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "results": rows,
    }
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "prom_clients.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "prom_clients.md").write_text(markdown(report))
    print(f"wrote {out / 'prom_clients.json'} and {out / 'prom_clients.md'}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.prom_clients", description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[100, 1000], help="fleet sizes to measure")
    parser.add_argument("--ticks", type=int, default=7, help="measured ticks per row (at most)")
    parser.add_argument("--threads", type=int, default=16, help="threads / connections per-target")
    parser.add_argument("--window-s", type=float, default=10.0, help="query window")
    parser.add_argument("--scrape-interval-s", type=float, default=1.0, help="Prometheus scrape interval")
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](args.url, args.count, args.window_s, args.ticks, args.threads)
        print(json.dumps(result))
        return
    drive(args)


if __name__ == "__main__":
    main()
