"""``rollbackd backtest`` against a real Prometheus holding recorded releases: two labelled
scenarios (a bad canary, a healthy one) are backfilled into a TSDB with ``promtool tsdb
create-blocks-from openmetrics``, Prometheus serves it, and the backtest reads the range with
``query_range`` and judges it with the daemon's evaluator: the bad release is rolled back within
its label's window, the healthy one is not; overrides compare thresholds on the same history."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollbackd.backtest import BacktestError, time_range, with_overrides
from rollbackd.cli import build_parser, main
from rollbackd.config.settings import Settings
from rollbackd.model import DEFAULT_BUCKETS_S
from tests.conftest import SCENARIOS_DIR
from tests.promfixtures import PrometheusServer, require_prometheus, start_prometheus

BAD, HEALTHY = "01-severe-error-spike.json", "00-healthy-noisy.json"
NS = "shop"
#: Seconds between the backfilled samples of a counter: increase() over one 10 s interval then
#: sees ten of them.
SAMPLE_S = 1


def _scenario_file(name: str) -> Path:
    """A labelled recording (shared/scenarios, beside the repository)."""
    path = SCENARIOS_DIR / name
    if not path.exists():
        pytest.skip(f"no scenario recording {path} (shared/ must sit beside the repo)")
    return path


def openmetrics(scenario: Mapping[str, Any], *, deployment: str, t0: float) -> Iterator[str]:
    """The scenario's ticks as the counters an application exports (``http_requests_total`` by
    code, ``http_request_duration_seconds_bucket`` by le), one sample a second: each tick's counts
    spread evenly over the interval that ends at its ``t``."""
    interval = float(scenario["interval_s"])
    for side, name in (("baseline", deployment), ("candidate", f"{deployment}-canary")):
        labels = f'namespace="{NS}",deployment="{name}"'
        series: dict[str, list[tuple[float, float]]] = {}
        totals: dict[str, float] = {}
        for tick in scenario["ticks"]:
            sample = tick.get(side)
            if sample is None:
                continue
            ok = float(sample["requests"]) - float(sample["errors"])
            counts = {f'{labels},code="200"': ok, f'{labels},code="500"': float(sample["errors"])}
            for le, count in zip(DEFAULT_BUCKETS_S, sample.get("latency_buckets") or (), strict=True):
                bound = "+Inf" if math.isinf(le) else f"{le:g}"
                counts[f'{labels},le="{bound}"'] = float(count)
            end = t0 + float(tick["t"])
            for key, count in counts.items():
                before = totals.get(key, 0.0)
                steps = round(interval / SAMPLE_S)
                points = series.setdefault(key, [])
                for i in range(1, steps + 1):
                    points.append((end - interval + i * SAMPLE_S, before + count * i / steps))
                totals[key] = before + count
        for key, points in series.items():
            metric = "http_request_duration_seconds_bucket" if ",le=" in key else "http_requests_total"
            for at, value in points:
                yield f"{metric}{{{key}}} {value:.6f} {at:.3f}"


@dataclass(frozen=True)
class Recorded:
    prometheus: PrometheusServer
    #: Unix time of the scenarios' t=0.
    t0: float
    config: Path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    """A Prometheus whose TSDB holds the bad release (target checkout) and the healthy one (cart),
    recorded an hour ago, and a configuration that watches both."""
    require_prometheus()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool on the PATH (scripts/ensure-services.sh installs it with Prometheus)")
    root = tmp_path_factory.mktemp("backtest")
    t0 = math.floor((time.time() - 3600) / 60) * 60
    families = ["# TYPE http_requests counter", "# TYPE http_request_duration_seconds histogram"]
    lines: dict[str, list[str]] = {"http_requests": [], "http_request_duration_seconds": []}
    for name, deployment in ((BAD, "checkout"), (HEALTHY, "cart")):
        scenario = json.loads(_scenario_file(name).read_text())
        for line in openmetrics(scenario, deployment=deployment, t0=t0):
            slow = line.startswith("http_request_duration")
            lines["http_request_duration_seconds" if slow else "http_requests"].append(line)
    text = "\n".join([
        families[0], *lines["http_requests"], families[1], *lines["http_request_duration_seconds"], "# EOF",
    ]) + "\n"
    data = root / "prometheus"
    (data / "tsdb").mkdir(parents=True)
    source = root / "recorded.om"
    source.write_text(text)
    subprocess.run([promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data / "tsdb")],
                   check=True, capture_output=True, timeout=300)
    server = start_prometheus(targets=[], data_dir=data, scrapes=0, timeout_s=120)
    config = root / "rollbackd.yaml"
    config.write_text(yaml.safe_dump({
        "interval_s": 10,
        "prometheus": {"url": server.url, "scrape_interval_s": 1},
        "defaults": {
            "slo": {"max_error_rate": 0.01, "max_p95_ms": 500}, "policy": {"controlled_grace_s": 120},
        },
        "targets": [
            {"name": name, "namespace": NS, "strategy": "canary", "ingress": f"{name}-canary",
             "baseline": {"deployment": name}, "candidate": {"deployment": f"{name}-canary"}}
            for name in ("checkout", "cart")
        ],
    }))
    try:
        yield Recorded(prometheus=server, t0=t0, config=config)
    finally:
        server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["backtest", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def span(recorded: Recorded) -> list[str]:
    """The recordings' range: from their start to ten minutes (their length) later."""
    return ["--config", str(recorded.config), "--from", utc(recorded.t0 - 60), "--to", utc(recorded.t0 + 600)]


def summaries(out: str) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for line in out.splitlines():
        item = json.loads(line)
        if item.get("summary"):
            found[item["target"], item["variant"]] = item
    return found


def test_the_bad_release_is_rolled_back_within_its_label_and_the_healthy_one_is_not(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    label = json.loads(_scenario_file(BAD).read_text())["expect"]
    code, out, err = run(capsys, *span(recorded), "-o", "jsonl")
    assert code == 0, err
    found = summaries(out)
    bad = found["shop/checkout", "config"]
    assert bad["decision"] == "rollback"
    assert bad["mode"] == label["mode"]
    decided = bad["after_s"] - 60  # the range starts a minute before t=0
    assert label["fault_at_s"] <= decided <= label["deadline_s"], bad
    assert "severe" in bad["reason"]
    healthy = found["shop/cart", "config"]
    assert healthy["decision"] == "none", healthy
    assert healthy["rollbacks"] == 0
    # Each verdict change is a line with its time and reasons; the rollback among them.
    changes = [json.loads(line) for line in out.splitlines() if "summary" not in json.loads(line)]
    rollback = [c for c in changes if c["target"] == "shop/checkout" and c["rollback"]]
    assert rollback[0]["time"] == bad["decided_at"]
    assert rollback[0]["state"] == "rollback (immediate)"
    assert rollback[0]["reasons"]


def test_the_table_and_the_chart_show_the_decision(
    recorded: Recorded, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    chart = tmp_path / "out.svg"
    code, out, err = run(capsys, *span(recorded), "checkout", "--chart", str(chart))
    assert code == 0, err
    assert out.splitlines()[0].split()[:4] == ["TIME", "(UTC)", "TARGET", "VERDICT"]
    assert any("rollback (immediate)" in line and "shop/checkout" in line for line in out.splitlines())
    assert "shop/checkout: would roll back (immediate) at " in out
    assert "shop/cart" not in out  # only the target asked for
    svg = ET.parse(chart).getroot()
    ns = {"svg": "http://www.w3.org/2000/svg"}
    charts = svg.findall("svg:svg", ns)
    assert [c.get("data-signal") for c in charts] == ["error_rate", "p95_ms"]
    error_chart = charts[0]
    slo = error_chart.find("svg:line[@class='slo']", ns)
    assert slo is not None
    assert slo.get("data-value") == "0.01"
    lines = {line.get("data-side"): int(line.get("data-points") or 0)
             for line in error_chart.findall("svg:polyline", ns)}
    assert lines["candidate"] >= 50
    assert lines["baseline"] >= 50
    decision = error_chart.find("svg:line[@data-kind='decision']", ns)
    assert decision is not None
    decided = json.loads(run(capsys, *span(recorded), "checkout", "-o", "jsonl")[1].splitlines()[-1])
    assert float(decision.get("data-t") or 0) == pytest.approx(decided["after_s"])  # seconds into the range


SLOWER = "targets.checkout.policy.controlled_grace_s=600,defaults.slo.max_error_rate=0.1"


def test_thresholds_compared_side_by_side_on_the_same_history(
    recorded: Recorded, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, *span(recorded), "checkout", "-o", "jsonl",
                         "--compare", "defaults.slo.max_error_rate=0.5",
                         "--compare", SLOWER)
    assert code == 0, err
    found = summaries(out)
    assert found["shop/checkout", "config"]["decision"] == "rollback"
    # 30% errors are within an SLO of 50%: no rollback.
    assert found["shop/checkout", "defaults.slo.max_error_rate=0.5"]["decision"] == "none"
    # Against 10%, 30% is manageable (severe from 5x, 50%): a controlled rollback after a grace of
    # 600 s, longer than the rest of the recording.
    slower = found["shop/checkout", SLOWER]
    assert slower["decision"] == "none", slower
    assert "manageable" in slower["reason"]
    # --set changes the base itself.
    code, out, err = run(capsys, *span(recorded), "checkout", "-o", "jsonl",
                         "--set", "defaults.slo.max_error_rate=0.5")
    assert code == 0, err
    assert summaries(out)["shop/checkout", "config+defaults.slo.max_error_rate=0.5"]["decision"] == "none"


def test_an_unreachable_prometheus_is_named(recorded: Recorded, capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path) -> None:
    config = yaml.safe_load(recorded.config.read_text())
    config["prometheus"]["url"] = "http://127.0.0.1:9"  # discard: nothing listens
    config["prometheus"]["retries"] = 0
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump(config))
    code, _out, err = run(capsys, "--config", str(path), "--last", "10m")
    assert code == 3
    assert "http://127.0.0.1:9" in err
    assert "prometheus.url" in err


# --- configuration mistakes name the option, the key and the fix (no Prometheus needed) ----------


SETTINGS = Settings.model_validate({
    "targets": [{"name": "checkout", "namespace": NS, "strategy": "canary", "ingress": "checkout-canary",
                 "baseline": {"deployment": "checkout"}, "candidate": {"deployment": "checkout-canary"}}],
})


def test_overrides_reach_the_defaults_and_a_named_target() -> None:
    changed = with_overrides(SETTINGS, ["defaults.slo.max_error_rate=0.02",
                                        "targets.shop/checkout.policy.controlled_grace_s=60"])
    assert changed.defaults.slo.max_error_rate == 0.02
    assert changed.targets[0].policy.controlled_grace_s == 60
    assert SETTINGS.defaults.slo.max_error_rate == 0.01  # the configuration itself is left as it is


@pytest.mark.parametrize(("assignment", "expected"), [
    ("defaults.slo.max_eror_rate=0.02",
     "--set defaults.slo.max_eror_rate: 'max_eror_rate' is not a setting; the settings under defaults.slo "
     "are: max_error_rate, max_p95_ms"),
    ("defaults.slo.max_error_rate=2", "--set defaults.slo.max_error_rate: "),
    ("defaults.slo.max_error_rate=lots", "--set defaults.slo.max_error_rate: "),
    ("defaults.slo=1", "--set defaults.slo: a group of settings; name one of its keys"),
    ("targets.nothing.slo.max_error_rate=0.1",
     "--set targets.nothing.slo.max_error_rate: no target 'nothing'"),
    ("store.url=x", "--set store.url: 'store' cannot be overridden here"),
    ("defaults.slo.max_error_rate", "--set 'defaults.slo.max_error_rate': expected KEY=VALUE"),
])
def test_a_wrong_override_names_the_key_and_the_fix(assignment: str, expected: str) -> None:
    with pytest.raises(BacktestError) as caught:
        with_overrides(SETTINGS, [assignment])
    assert str(caught.value).startswith(expected), str(caught.value)


def test_a_bad_value_says_what_is_accepted() -> None:
    with pytest.raises(BacktestError) as caught:
        with_overrides(SETTINGS, ["defaults.slo.max_error_rate=2"])
    assert str(caught.value) == (
        "--set defaults.slo.max_error_rate: expected a number greater than 0 and less than 1, got 2"
    )


def test_the_range_is_last_or_from_to() -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert time_range(start=None, end=None, last="6h", now=now) == (now - timedelta(hours=6), now)
    begin, end = time_range(start="2026-11-24T02:00:00Z", end="2026-11-24T03:00:00Z", last=None, now=now)
    assert (end - begin) == timedelta(hours=1)
    cases: list[tuple[str | None, str | None, str | None, str]] = [
        (None, None, None, "no time range: give --last 6h"),
        ("1h", None, "6h", "--last and --from: give one of them"),
        (None, None, "soon", "--last: 'soon' is neither a duration"),
        ("2026-11-24T04:00:00Z", "2026-11-24T03:00:00Z", None, "the range is empty"),
    ]
    for since, until, last, message in cases:
        with pytest.raises(BacktestError, match=message):
            time_range(start=since, end=until, last=last, now=now)


def test_the_command_line_reports_configuration_mistakes_with_status_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "rollbackd.yaml"
    path.write_text(yaml.safe_dump(SETTINGS.model_dump(mode="json", exclude_defaults=True)))
    cases: Sequence[tuple[list[str], str]] = [
        (["--last", "1h", "--set", "defaults.slo.max_eror_rate=1"], "'max_eror_rate' is not a setting"),
        (["--last", "1h", "nothing"],
         "target 'nothing' is not in the configuration (targets: shop/checkout)"),
        ([], "no time range"),
    ]
    for argv, message in cases:
        code, out, err = run(capsys, "--config", str(path), *argv)
        assert code == 2, err
        assert message in err
        assert out == ""
    parsed = build_parser().parse_args(["backtest", "--last", "6h", "--set", "a=1", "--set", "b=2"])
    assert parsed.sets == ["a=1", "b=2"]
