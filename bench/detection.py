"""Detection benchmark: rollbackd and two baseline judges over the labelled scenarios.

Every scenario in the directory is replayed through rollbackd (``rollbackd.replay``), an Argo
Rollouts-style analysis and a Flagger-style analysis (:mod:`bench.judges`), in the same run. Each
decision is scored against the scenario's ``expect``:

* **correct**: the decision matches; for a rollback, the mode matches when ``expect.mode`` is set,
  and ``fault_at_s <= decided_at_s <= deadline_s`` (and ``>= not_before_s`` when given);
* **false rollback**: a rollback where none is expected, or one decided before the fault;
* **missed**: no rollback where one is expected, or one decided after the deadline;
* **wrong mode**: a timely rollback in the other mode (immediate instead of controlled, ...);
* **too early**: a rollback in the right mode after the fault but before ``not_before_s`` (a
  controlled rollback that did not give the release its grace period).

Time to decision is measured from the fault, in seconds and in ticks, for every expected rollback
that was decided at or after the fault, grouped by the expected mode. For controlled rollbacks
the ticks after the grace window, ``max(not_before_s, fault_at_s + controlled_grace_s)``, are
reported too.

Run with ``python -m bench.detection [--scenarios DIR] [--results DIR]``; it writes
``detection.json`` and ``detection.md`` to the results directory and prints the markdown.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import importlib
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.judges import ArgoParams, FlaggerParams, judge_argo, judge_flagger

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The shared scenario recordings live beside the repository clone.
DEFAULT_SCENARIOS_DIR = REPO_ROOT.parent / "shared" / "scenarios"
DEFAULT_RESULTS_DIR = REPO_ROOT / "bench" / "results"
#: Used when a scenario has no ``policy.controlled_grace_s`` (rollbackd's default).
DEFAULT_CONTROLLED_GRACE_S = 120.0

Judge = Callable[[Mapping[str, Any]], Mapping[str, Any]]


class Outcome(enum.StrEnum):
    CORRECT = "correct"
    FALSE_ROLLBACK = "false_rollback"
    MISSED = "missed"
    WRONG_MODE = "wrong_mode"
    EARLY = "early"


OUTCOME_LABELS: Mapping[Outcome, str] = {
    Outcome.CORRECT: "correct",
    Outcome.FALSE_ROLLBACK: "false rollbacks",
    Outcome.MISSED: "missed",
    Outcome.WRONG_MODE: "wrong mode",
    Outcome.EARLY: "too early",
}

#: Groups for time-to-decision statistics, by the expected mode (``any``: ``expect.mode`` null).
MODE_GROUPS: tuple[str, ...] = ("immediate", "controlled", "any")


@dataclass(frozen=True, slots=True)
class Score:
    """One judge's decision on one scenario, scored against ``expect``.

    ``group`` is the expected mode (``immediate`` / ``controlled`` / ``any``) when a rollback is
    expected, else ``None``. ``delay_s`` and ``delay_ticks`` are the time from the fault to the
    decision, set only for expected rollbacks decided at or after the fault. ``after_window_ticks``
    is set for expected controlled rollbacks: ticks from the end of the grace window.
    """

    scenario: str
    outcome: Outcome
    group: str | None
    decided_at_s: float | None
    delay_s: float | None = None
    delay_ticks: float | None = None
    after_window_ticks: float | None = None
    detail: str = ""


def score(result: Mapping[str, Any], scenario: Mapping[str, Any]) -> Score:
    """Score one replay contract ``result`` against ``scenario["expect"]``."""
    expect = scenario["expect"]
    name = str(scenario["name"])
    interval_s = float(scenario["interval_s"])
    rolled_back = result.get("decision") == "rollback"
    decided_raw = result.get("decided_at_s")
    if rolled_back and decided_raw is None:
        raise ValueError(f"{name}: a rollback decision without decided_at_s: {dict(result)!r}")
    decided_at = float(decided_raw) if rolled_back and decided_raw is not None else None
    mode = result.get("mode")

    if expect["decision"] != "rollback":
        if decided_at is not None:
            return Score(name, Outcome.FALSE_ROLLBACK, None, decided_at, detail="no rollback expected")
        return Score(name, Outcome.CORRECT, None, None)

    expected_mode = expect.get("mode")
    group = str(expected_mode) if expected_mode else "any"
    fault_at = float(expect["fault_at_s"])
    deadline = float(expect["deadline_s"])
    not_before_raw = expect.get("not_before_s")
    not_before = float(not_before_raw) if not_before_raw is not None else None

    if decided_at is None:
        return Score(name, Outcome.MISSED, group, None, detail="no rollback")
    if decided_at < fault_at:
        return Score(
            name, Outcome.FALSE_ROLLBACK, group, decided_at, detail=f"before the fault at {fault_at:g}s"
        )

    delay_s = decided_at - fault_at
    after_window_ticks: float | None = None
    if expected_mode == "controlled":
        grace_s = float((scenario.get("policy") or {}).get("controlled_grace_s", DEFAULT_CONTROLLED_GRACE_S))
        window_end = max(not_before if not_before is not None else fault_at, fault_at + grace_s)
        after_window_ticks = (decided_at - window_end) / interval_s
    timed = Score(
        name,
        Outcome.CORRECT,
        group,
        decided_at,
        delay_s=delay_s,
        delay_ticks=delay_s / interval_s,
        after_window_ticks=after_window_ticks,
    )

    if decided_at > deadline:
        return dataclasses.replace(timed, outcome=Outcome.MISSED, detail=f"after the deadline {deadline:g}s")
    if expected_mode is not None and mode != expected_mode:
        return dataclasses.replace(
            timed, outcome=Outcome.WRONG_MODE, detail=f"{mode}, {expected_mode} expected"
        )
    if not_before is not None and decided_at < not_before:
        return dataclasses.replace(timed, outcome=Outcome.EARLY, detail=f"before not_before {not_before:g}s")
    return timed


def summarize(scores: Sequence[Score]) -> dict[str, Any]:
    """Counts per outcome and median time to decision per expected-mode group."""
    counts = {outcome.value: sum(1 for s in scores if s.outcome is outcome) for outcome in Outcome}
    timing: dict[str, Any] = {}
    for group in MODE_GROUPS:
        timed = [s for s in scores if s.group == group and s.delay_s is not None]
        delays_s = [s.delay_s for s in timed if s.delay_s is not None]
        delays_ticks = [s.delay_ticks for s in timed if s.delay_ticks is not None]
        after_window = [s.after_window_ticks for s in timed if s.after_window_ticks is not None]
        timing[group] = {
            "expected": sum(1 for s in scores if s.group == group),
            "timed": len(timed),
            "median_delay_s": statistics.median(delays_s) if delays_s else None,
            "median_delay_ticks": statistics.median(delays_ticks) if delays_ticks else None,
            "median_after_window_ticks": statistics.median(after_window) if after_window else None,
        }
    return {"scenarios": len(scores), "outcomes": counts, "time_to_decision": timing}


def load_scenarios(directory: Path) -> list[dict[str, Any]]:
    """Every ``*.json`` scenario in ``directory``, in file-name order."""
    files = sorted(directory.glob("*.json"))
    if not files:
        raise FileNotFoundError(f"no scenario files (*.json) in {directory}")
    scenarios: list[dict[str, Any]] = []
    for path in files:
        with path.open(encoding="utf-8") as f:
            scenario = json.load(f)
        if not isinstance(scenario, dict) or "expect" not in scenario or "ticks" not in scenario:
            raise ValueError(f"{path.name} is not a scenario (no expect/ticks)")
        scenarios.append(scenario)
    return scenarios


def load_rollbackd_judge() -> Judge | None:
    """``rollbackd.replay.replay_scenario`` when that module exists, else ``None``.

    A module that exists but fails to import is an error, not a reason to skip.
    """
    if importlib.util.find_spec("rollbackd.replay") is None:
        return None
    module = importlib.import_module("rollbackd.replay")
    replay: Judge = module.replay_scenario
    return replay


@dataclass(frozen=True, slots=True)
class JudgeRun:
    """One judge's results over all scenarios, with the wall time the whole replay took."""

    name: str
    description: str
    params: Mapping[str, Any]
    results: tuple[Mapping[str, Any], ...]
    scores: tuple[Score, ...]
    wall_s: float


def run_judge(
    name: str,
    judge: Judge,
    scenarios: Sequence[Mapping[str, Any]],
    *,
    description: str,
    params: Mapping[str, Any],
) -> JudgeRun:
    """Replay every scenario through ``judge`` and score each decision."""
    started = time.perf_counter()
    results = tuple(dict(judge(scenario)) for scenario in scenarios)
    wall_s = time.perf_counter() - started
    for scenario, result in zip(scenarios, results, strict=True):
        if result.get("scenario") != scenario["name"]:
            raise ValueError(f"{name} answered for {result.get('scenario')!r} on {scenario['name']!r}")
    scores = tuple(score(r, s) for r, s in zip(results, scenarios, strict=True))
    return JudgeRun(name, description, params, results, scores, wall_s)


def run_all_judges(
    scenarios: Sequence[Mapping[str, Any]], *, rollbackd: Judge | None
) -> tuple[list[JudgeRun], list[str]]:
    """rollbackd (when available) and both baselines, side by side; plus notes on what was skipped."""
    runs: list[JudgeRun] = []
    notes: list[str] = []
    if rollbackd is None:
        notes.append("rollbackd.replay is not available in this tree: rollbackd was not judged.")
    else:
        runs.append(
            run_judge(
                "rollbackd",
                rollbackd,
                scenarios,
                description="rollbackd replay: the daemon's detectors and decision framework",
                params={},
            )
        )
    runs.append(
        run_judge(
            "argo",
            judge_argo,
            scenarios,
            description="Argo Rollouts-style AnalysisRun (failureLimit, consecutiveErrorLimit)",
            params=dataclasses.asdict(ArgoParams()),
        )
    )
    runs.append(
        run_judge(
            "flagger",
            judge_flagger,
            scenarios,
            description="Flagger-style canary analysis (failed checks threshold)",
            params=dataclasses.asdict(FlaggerParams()),
        )
    )
    return runs, notes


def _display_path(path: Path) -> str:
    try:
        return os.path.relpath(path.resolve(), REPO_ROOT)
    except ValueError:
        return path.name


def to_json(runs: Sequence[JudgeRun], *, scenarios_dir: Path, notes: Sequence[str]) -> dict[str, Any]:
    """The machine-readable report."""
    judges: dict[str, Any] = {}
    for run in runs:
        per_scenario = []
        for result, s in zip(run.results, run.scores, strict=True):
            entry = dict(result)
            entry["score"] = {
                "outcome": s.outcome.value,
                "group": s.group,
                "delay_s": s.delay_s,
                "delay_ticks": s.delay_ticks,
                "after_window_ticks": s.after_window_ticks,
                "detail": s.detail,
            }
            per_scenario.append(entry)
        judges[run.name] = {
            "description": run.description,
            "params": dict(run.params),
            "wall_s": round(run.wall_s, 6),
            "summary": summarize(run.scores),
            "results": per_scenario,
        }
    return {
        "benchmark": "detection",
        "scenarios_dir": _display_path(scenarios_dir),
        "scenario_count": len(runs[0].scores) if runs else 0,
        "notes": list(notes),
        "judges": judges,
    }


def _num(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _expected(scenario: Mapping[str, Any]) -> str:
    expect = scenario["expect"]
    if expect["decision"] != "rollback":
        return "none"
    mode = expect.get("mode") or "any mode"
    window = f"{expect['fault_at_s']:g}-{expect['deadline_s']:g}s"
    if expect.get("not_before_s") is not None:
        window = f"{expect['not_before_s']:g}-{expect['deadline_s']:g}s (fault {expect['fault_at_s']:g}s)"
    return f"rollback {mode}, {window}"


def _decision(result: Mapping[str, Any]) -> str:
    if result.get("decision") != "rollback":
        return "none"
    mode = result.get("mode") or "?"
    return f"{mode} @{_num(result.get('decided_at_s'))}s"


def to_markdown(
    runs: Sequence[JudgeRun],
    scenarios: Sequence[Mapping[str, Any]],
    *,
    scenarios_dir: Path,
    notes: Sequence[str],
) -> str:
    """The human-readable report: a summary, one table per judge, and a side-by-side table."""
    lines = [
        "# Detection benchmark",
        "",
        f"{len(scenarios)} labelled scenarios from `{_display_path(scenarios_dir)}`, replayed through "
        f"{', '.join(run.name for run in runs)}. A rollback is correct when its mode matches (if the "
        "scenario names one) and it is decided at or after the fault, not before `not_before_s`, "
        "and by the deadline. Time to decision counts from the fault, over the expected rollbacks "
        "decided at or after it; for controlled rollbacks, *after window* counts the ticks past "
        "`max(not_before_s, fault_at_s + controlled_grace_s)`.",
        "",
    ]
    lines.extend(f"> {note}" for note in notes)
    if notes:
        lines.append("")

    header = ["judge", *(OUTCOME_LABELS[o] for o in Outcome)]
    header += [
        "immediate: median s (ticks)",
        "controlled: median s (ticks), ticks after window",
        "any mode: median s (ticks)",
        "wall time, all scenarios",
    ]
    lines += ["## Summary", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        summary = summarize(run.scores)
        counts = summary["outcomes"]
        timing = summary["time_to_decision"]
        row = [run.name, *(str(counts[o.value]) for o in Outcome)]
        for group in MODE_GROUPS:
            t = timing[group]
            cell = f"{_num(t['median_delay_s'])} ({_num(t['median_delay_ticks'])})"
            cell += f" n={t['timed']}/{t['expected']}"
            if group == "controlled":
                cell += f", {_num(t['median_after_window_ticks'])}"
            row.append(cell)
        row.append(f"{run.wall_s * 1000:.1f} ms")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")

    for run in runs:
        lines += [f"## {run.name}", "", run.description + ".", ""]
        if run.params:
            params = ", ".join(f"`{k}={v}`" for k, v in run.params.items())
            lines += [f"Parameters: {params}.", ""]
        lines += [
            "| scenario | expected | decision | fault to decision, s (ticks) | outcome | reason |",
            "|---|---|---|---|---|---|",
        ]
        for scenario, result, s in zip(scenarios, run.results, run.scores, strict=True):
            delay = f"{_num(s.delay_s)} ({_num(s.delay_ticks)})" if s.delay_s is not None else "-"
            outcome = s.outcome.value + (f": {s.detail}" if s.detail else "")
            lines.append(
                "| "
                + " | ".join(
                    _cell(x)
                    for x in (
                        s.scenario,
                        _expected(scenario),
                        _decision(result),
                        delay,
                        outcome,
                        str(result.get("reason", "")),
                    )
                )
                + " |"
            )
        lines.append("")

    lines += [
        "## Per scenario",
        "",
        "| scenario | expected | " + " | ".join(run.name for run in runs) + " |",
        "|---|---|" + "---|" * len(runs),
    ]
    for i, scenario in enumerate(scenarios):
        cells = [str(scenario["name"]), _expected(scenario)]
        for run in runs:
            s = run.scores[i]
            mark = "ok" if s.outcome is Outcome.CORRECT else s.outcome.value.upper().replace("_", " ")
            cells.append(f"{mark}: {_decision(run.results[i])}")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scenarios",
        type=Path,
        default=DEFAULT_SCENARIOS_DIR,
        help="directory of scenario JSON files (default: shared/scenarios beside the repository)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="directory for detection.json and detection.md (default: bench/results)",
    )
    args = parser.parse_args(argv)

    scenarios = load_scenarios(args.scenarios)
    runs, notes = run_all_judges(scenarios, rollbackd=load_rollbackd_judge())
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)

    report = to_json(runs, scenarios_dir=args.scenarios, notes=notes)
    markdown = to_markdown(runs, scenarios, scenarios_dir=args.scenarios, notes=notes)
    write_results(args.results, "detection", report, markdown)
    return 0


def write_results(directory: Path, name: str, report: Mapping[str, Any], markdown: str) -> None:
    """A benchmark's results: ``NAME.json`` and ``NAME.md`` under ``directory``; the markdown is
    printed too."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (directory / f"{name}.md").write_text(markdown, encoding="utf-8")
    print(markdown)


if __name__ == "__main__":
    raise SystemExit(main())
