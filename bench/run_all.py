"""Run every benchmark (``make bench``): the detection benchmark, then the others present in the tree.

Each benchmark writes its own results under ``bench/results/``. The detection benchmark runs in
this process; the others run as ``python -m bench.<name>`` child processes, one after the other,
so one failing does not hide the results of the rest. The exit status is non-zero when any
benchmark failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench import detection

#: Benchmarks run after the detection benchmark when their module exists, in this order.
OTHER_BENCHMARKS: tuple[str, ...] = (
    "bench.generalisation",
    "bench.prom_clients",
    "bench.scale",
    "bench.closed_loop",
    "bench.events_throughput",
    "bench.actions",
    "bench.flags",
    "bench.faults",
)


def _header(title: str) -> None:
    print(f"\n===== {title} =====\n", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenarios",
        type=Path,
        default=detection.DEFAULT_SCENARIOS_DIR,
        help="scenario directory for the detection benchmark (default: shared/scenarios beside the repo)",
    )
    args = parser.parse_args(argv)

    statuses: dict[str, int] = {}
    _header("bench.detection")
    try:
        statuses["bench.detection"] = detection.main(["--scenarios", str(args.scenarios)])
    except Exception:  # report it and go on with the other benchmarks
        traceback.print_exc()
        statuses["bench.detection"] = 1

    for module in OTHER_BENCHMARKS:
        if importlib.util.find_spec(module) is None:
            print(f"\n{module}: not present in this tree, skipped", flush=True)
            continue
        _header(module)
        statuses[module] = subprocess.call([sys.executable, "-m", module], stdin=subprocess.DEVNULL)

    _header("summary")
    for module, status in statuses.items():
        print(f"{module}: {'ok' if status == 0 else f'FAILED (exit {status})'}")
    return 0 if all(status == 0 for status in statuses.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
