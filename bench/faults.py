"""The fault and bad-input suite as figures: ``python -m bench.faults`` (also part of ``make bench``).

Runs the tests marked ``faults`` (property tests over every reader of outside input, and fault
tests against real PostgreSQL, Mosquitto, Prometheus and daemon processes) with the ledger of
``tests/faultledger.py`` switched on, then writes ``bench/results/faults.json`` and ``.md``: the
faults injected, the inputs tried, and the outcomes that must be 0 (actions taken on bad data,
records lost, crashes). The exit status is non-zero when a test failed or any of those is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.faultledger import LEDGER_ENV, MUST_BE_ZERO

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def run_suite(extra: Sequence[str]) -> tuple[int, list[dict[str, Any]], float]:
    """Run ``pytest -m faults``; returns its exit status, the ledger lines and the wall time."""
    with tempfile.TemporaryDirectory(prefix="rollbackd-faults-") as tmp:
        ledger = Path(tmp) / "ledger.jsonl"
        env = {**os.environ, LEDGER_ENV: str(ledger)}
        started = time.monotonic()
        status = subprocess.call(
            [sys.executable, "-m", "pytest", "-m", "faults", "-q", "-p", "no:cacheprovider", *extra],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
        )
        elapsed = time.monotonic() - started
        lines = ledger.read_text(encoding="utf-8").splitlines() if ledger.exists() else []
    return status, [json.loads(line) for line in lines if line.strip()], elapsed


def summarise(status: int, rows: list[dict[str, Any]], elapsed_s: float) -> dict[str, Any]:
    faults = Counter(name for row in rows for name in row["faults"])
    totals = {key: sum(int(row[key]) for row in rows) for key in MUST_BE_ZERO}
    return {
        "pytest_exit": status,
        "tests": len(rows),
        "faults_injected": sum(faults.values()),
        "faults": dict(sorted(faults.items())),
        "inputs_tried": sum(int(row["inputs_tried"]) for row in rows),
        **totals,
        "wall_s": round(elapsed_s, 1),
        "ok": status == 0 and bool(rows) and all(value == 0 for value in totals.values()),
    }


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Fault and bad-input suite",
        "",
        "`python -m bench.faults`: the tests marked `faults`, with their ledger "
        "(`tests/faultledger.py`).",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| tests run | {summary['tests']} |",
        f"| faults injected | {summary['faults_injected']} |",
        f"| inputs tried | {summary['inputs_tried']} |",
        f"| actions taken on bad data (must be 0) | {summary['actions_on_bad_data']} |",
        f"| records lost (must be 0) | {summary['records_lost']} |",
        f"| crashes (must be 0) | {summary['crashes']} |",
        f"| pytest exit status | {summary['pytest_exit']} |",
        f"| wall time | {summary['wall_s']} s |",
        "",
        "## Faults injected",
        "",
        "| fault | times |",
        "| --- | --- |",
        *(f"| {name} | {count} |" for name, count in summary["faults"].items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n")[0])
    parser.add_argument("--out-dir", default=str(RESULTS_DIR), help="where to write the results")
    parser.add_argument("pytest_args", nargs="*", help="passed on to pytest")
    args = parser.parse_args(argv)
    status, rows, elapsed = run_suite(args.pytest_args)
    summary = summarise(status, rows, elapsed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(summary, indent=2) + "\n")
    text = markdown(summary)
    (out / "faults.md").write_text(text)
    print(text)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
