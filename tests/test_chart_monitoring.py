"""The chart's alert rules and Grafana dashboard, as rendered.

The PrometheusRule is validated against the Prometheus Operator's CRD schema (in
tests/test_helm_chart.py, with every rendered object); here its rule groups go through
``promtool check rules`` and ``promtool test rules``, one unit test per alert (it fires when it
should, with its labels and annotations, and not when it should not), and each alert's runbook
points at a section of docs/observability.md. The dashboard's ConfigMap carries the sidecar's
label and the dashboard JSON as the chart ships it; the JSON is well formed. Its queries run
against a real Prometheus in tests/test_dashboards.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_helm_chart import CHART_DIR, NAMESPACE, REPO, Obj, find, helm, one, render

__all__ = ["helm"]  # the fixture

DOCS = REPO / "docs" / "observability.md"
DASHBOARD = CHART_DIR / "dashboards" / "rollbackd.json"
JOB = "rb-rollbackd"

#: The alerts the issue asks for, by what they tell.
ALERTS = {
    "RollbackdRollbackFailed": "critical",
    "RollbackdVerificationFailed": "critical",
    "RollbackdEscalationRaised": "warning",
    "RollbackdPrometheusUnreachable": "critical",
    "RollbackdNoLeader": "critical",
    "RollbackdOutboxBacklogGrowing": "warning",
    "RollbackdConfigReloadFailing": "warning",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("needs promtool (Debian's prometheus package; scripts/ensure-services.sh installs it)")
    return found


def rule_of(helm: Any, values: dict[str, Any] | None = None) -> Obj:
    objects = render(helm, {"prometheusRule": {"enabled": True, **(values or {})}})
    return one(objects, "PrometheusRule")


def alerts_of(rule: Obj) -> dict[str, Obj]:
    rules = [item for group in rule["spec"]["groups"] for item in group["rules"]]
    return {item["alert"]: item for item in rules if "alert" in item}


def test_the_rules_and_the_dashboard_are_off_by_default(helm: Any) -> None:
    objects = render(helm)
    assert not find(objects, "PrometheusRule")
    # The configuration and the switches' ConfigMap; no dashboard.
    names = [obj["metadata"]["name"] for obj in find(objects, "ConfigMap")]
    assert names == ["rb-rollbackd", "rb-rollbackd-switches"]


def test_every_alert_is_there_with_its_annotations_and_runbook(helm: Any) -> None:
    rule = rule_of(helm, {"labels": {"release": "kube-prometheus-stack"},
                          "runbookUrl": "https://docs.example.com/observability.md"})
    assert rule["metadata"]["namespace"] == NAMESPACE
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    alerts = alerts_of(rule)
    assert {name: alert["labels"]["severity"] for name, alert in alerts.items()} == ALERTS
    docs = DOCS.read_text(encoding="utf-8")
    anchors = {re.sub(r"[^a-z0-9 -]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
               for line in docs.splitlines() if line.startswith("#")}
    for name, alert in alerts.items():
        annotations = alert["annotations"]
        assert annotations["summary"], name
        assert len(annotations["description"]) > 80, name
        anchor = name.lower()
        assert annotations["runbook"] == f"docs/observability.md#{anchor}"
        assert annotations["runbook_url"] == f"https://docs.example.com/observability.md#{anchor}"
        assert anchor in anchors, f"docs/observability.md has no section {name}"
        assert f'job="{JOB}"' in alert["expr"], name
    without = alerts_of(rule_of(helm))
    assert all("runbook_url" not in alert["annotations"] for alert in without.values())
    custom = alerts_of(rule_of(helm, {"selector": 'namespace="ops", service="rollbackd"'}))
    assert all('namespace="ops", service="rollbackd"' in alert["expr"] for alert in custom.values())
    assert all(JOB not in alert["expr"] for alert in custom.values())


def _rule_file(helm: Any, directory: Path) -> Path:
    path = directory / "rollbackd-rules.yaml"
    groups = rule_of(helm)["spec"]["groups"]
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
    return path


def test_promtool_accepts_the_rules(helm: Any, promtool: str, tmp_path: Path) -> None:
    path = _rule_file(helm, tmp_path)
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


def _series(name: str, values: str, **labels: str) -> dict[str, str]:
    shown = ", ".join(f'{key}="{value}"' for key, value in {"job": JOB, **labels}.items())
    return {"series": f"{name}{{{shown}}}", "values": values}


def _expect(alert: Obj, labels: dict[str, str], value: str = "") -> dict[str, Any]:
    """The alert as promtool should see it fire: its labels and its annotations expanded."""
    def expand(text: str) -> str:
        text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)
        return re.sub(r"\{\{ \$value[^}]*\}\}", value, text)
    return {
        "exp_labels": {"severity": alert["labels"]["severity"], **labels},
        "exp_annotations": {key: expand(text) for key, text in alert["annotations"].items()},
    }


def test_each_alert_fires_when_it_should_and_only_then(helm: Any, promtool: str, tmp_path: Path) -> None:
    """``promtool test rules``: one case per alert, each with a moment it must fire and one it must not."""
    alerts = alerts_of(rule_of(helm))
    job = {"job": JOB}
    recorded = "rollbackd_events_recorded_total"
    cases: list[dict[str, Any]] = []

    def case(series: list[dict[str, str]], checks: list[tuple[str, str, list[dict[str, Any]]]]) -> None:
        cases.append({
            "interval": "1m",
            "input_series": series,
            "alert_rule_test": [
                {"eval_time": at, "alertname": name, "exp_alerts": expected} for at, name, expected in checks
            ],
        })

    for name, kind in (("RollbackdRollbackFailed", "rollback.failed"),
                       ("RollbackdVerificationFailed", "verification.failed")):
        # One event at 2m: the alert fires while the event is in the last 15 minutes, then stops;
        # another job's events are not this release's.
        case(
            [_series(recorded, "0 0 1x30", instance="a:8080", type=kind),
             _series(recorded, "0 0 5x30", instance="b:8080", type=kind, job="other")],
            [("1m", name, []), ("3m", name, [_expect(alerts[name], job)]), ("25m", name, [])],
        )
    case(
        [_series(recorded, "0 0 2x30", instance="a:8080", type="escalation.raised"),
         _series(recorded, "0x30", instance="a:8080", type="decision.made")],
        [("1m", "RollbackdEscalationRaised", []),
         ("5m", "RollbackdEscalationRaised", [_expect(alerts["RollbackdEscalationRaised"], job, "2")]),
         ("25m", "RollbackdEscalationRaised", [])],
    )
    up = "rollbackd_metrics_source_up"
    unreachable = {"job": JOB, "instance": "a:8080"}
    case(
        [_series(up, "1 1 0 0 0 0 1 1", instance="a:8080"), _series(up, "1x8", instance="b:8080")],
        [("3m", "RollbackdPrometheusUnreachable", []),  # down for 1m only: pending
         ("4m", "RollbackdPrometheusUnreachable",
          [_expect(alerts["RollbackdPrometheusUnreachable"], unreachable)]),
         ("7m", "RollbackdPrometheusUnreachable", [])],
    )
    leader = "rollbackd_leader"
    case(
        [_series(leader, "1 1 0 0 0 0 0 1 1", instance="a:8080"), _series(leader, "0x9", instance="b:8080")],
        [("1m", "RollbackdNoLeader", []), ("3m", "RollbackdNoLeader", []),
         ("5m", "RollbackdNoLeader", [_expect(alerts["RollbackdNoLeader"], {})]),
         ("8m", "RollbackdNoLeader", [])],
    )
    case(  # no replica scraped at all: nobody leads either
        [_series(leader, "1x10", instance="a:8080", job="other")],
        [("3m", "RollbackdNoLeader", [_expect(alerts["RollbackdNoLeader"], {})])],
    )
    backlog = "rollbackd_event_sink_backlog"
    stuck = {"job": JOB, "instance": "a:8080", "sink": "webhook:ops"}
    case(
        [_series(backlog, "0 1+1x30", instance="a:8080", sink="webhook:ops"),
         _series(backlog, "0 5 0 3 0 4 0 2 0 6 0 3 0 5 0 1 0 4 0 2 0 6 0", instance="a:8080",
                 sink="mqtt")],
        [("12m", "RollbackdOutboxBacklogGrowing", []),  # growing for 11m: pending
         ("17m", "RollbackdOutboxBacklogGrowing",
          [_expect(alerts["RollbackdOutboxBacklogGrowing"], stuck, "7")])],
    )
    reload_ok = "rollbackd_config_last_reload_successful"
    refused = {"job": JOB, "instance": "a:8080"}
    case(
        [_series(reload_ok, "1 1 0 0 0 0 0 0 0 1", instance="a:8080")],
        [("5m", "RollbackdConfigReloadFailing", []),
         ("7m", "RollbackdConfigReloadFailing", [_expect(alerts["RollbackdConfigReloadFailing"], refused)]),
         ("10m", "RollbackdConfigReloadFailing", [])],
    )
    tested = {check["alertname"] for item in cases for check in item["alert_rule_test"]}
    assert tested == set(ALERTS)
    rules = _rule_file(helm, tmp_path)
    tests = tmp_path / "rollbackd-rules.test.yaml"
    document = {"rule_files": [rules.name], "evaluation_interval": "1m", "tests": cases}
    tests.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    done = subprocess.run(
        [promtool, "test", "rules", str(tests)], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# --- the dashboard -------------------------------------------------------------------------------


def dashboard_exprs(dashboard: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Every query of the dashboard: (panel title, expression, instant), annotations included."""
    found: list[tuple[str, str, bool]] = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((panel["title"], target["expr"], bool(target.get("instant"))))
    for annotation in dashboard["annotations"]["list"]:
        found.append((f"annotation {annotation['name']}", annotation["expr"], False))
    return found


def test_the_dashboard_ships_in_a_configmap_for_the_sidecar(helm: Any) -> None:
    objects = render(helm, {"grafanaDashboard": {"enabled": True, "label": "grafana/dashboard",
                                                 "labelValue": "rollbackd", "namespace": "monitoring",
                                                 "annotations": {"grafana_folder": "Platform"}}})
    config_map = one(objects, "ConfigMap", "rb-rollbackd-dashboard")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana/dashboard"] == "rollbackd"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    shipped = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert json.loads(config_map["data"]["rollbackd.json"]) == shipped
    default = render(helm, {"grafanaDashboard": {"enabled": True}})
    config_map = one(default, "ConfigMap", "rb-rollbackd-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == NAMESPACE


def test_the_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["uid"] == "rollbackd"
    assert isinstance(dashboard["schemaVersion"], int)
    variables = {item["name"]: item for item in dashboard["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "namespace", "target"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = [panel["title"] for panel in dashboard["panels"] if panel["type"] != "row"]
    assert len(titles) == len(set(titles)), "panel titles are unique"
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["description"], panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    queried = " ".join(expr for _, expr, _ in dashboard_exprs(dashboard))
    for metric in (
        "rollbackd_target_state", "rollbackd_last_decision_timestamp_seconds", "rollbackd_decisions_total",
        "rollbackd_rollbacks_total", "rollbackd_events_recorded_total", "rollbackd_source_errors_total",
        "rollbackd_source_lag_seconds", "rollbackd_evaluation_duration_seconds_bucket",
        "rollbackd_event_sink_backlog", "rollbackd_leader", "rollbackd_config_reloads_total",
        "rollbackd_metrics_source_up", "rollbackd_build_info",
    ):
        assert metric in queried, f"the dashboard shows {metric}"
