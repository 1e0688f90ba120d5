"""docs/partners.md: every object it shows is valid for its project's published CRD (Argo Rollouts,
Flagger), every rollbackd configuration loads, the chart values pass the chart's schema, and the
verdict document it describes is the one the daemon answers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from rollbackd.config.loader import load_settings
from rollbackd.daemon.state import DaemonState
from rollbackd.daemon.views import target_verdict, verdict_view
from rollbackd.decision.verdict import Verdict
from tests.crdschema import ANALYSIS_TEMPLATE_CRD, FLAGGER_CANARY_CRD, ROLLOUT_CRD, problems

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "partners.md"
CRD_OF_KIND = {
    "AnalysisTemplate": ANALYSIS_TEMPLATE_CRD,
    "Rollout": ROLLOUT_CRD,
    "Canary": FLAGGER_CANARY_CRD,
}


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", PAGE.read_text(encoding="utf-8"), flags=re.M | re.S)


def documents() -> list[dict[str, Any]]:
    return [yaml.safe_load(block) for block in blocks("yaml")]


def test_the_page_is_linked_from_the_readme() -> None:
    assert "(docs/partners.md)" in (REPO / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("kind", sorted(CRD_OF_KIND))
def test_every_object_is_valid_for_its_published_crd(kind: str) -> None:
    shown = [doc for doc in documents() if doc.get("kind") == kind]
    assert shown, f"docs/partners.md shows no {kind}"
    for obj in shown:
        assert problems(CRD_OF_KIND[kind], obj) == [], obj["metadata"]["name"]


def test_the_analysis_template_reads_the_verdict_with_its_values() -> None:
    [template] = [doc for doc in documents() if doc.get("kind") == "AnalysisTemplate"]
    [metric] = template["spec"]["metrics"]
    web = metric["provider"]["web"]
    assert web["url"].endswith("/api/v1/targets/{{args.namespace}}/{{args.target}}/verdict")
    assert web["jsonPath"] == "{$.verdict}"
    assert metric["successCondition"] == f'result == "{Verdict.PASS}"'
    assert metric["failureCondition"] == f'result == "{Verdict.FAIL}"'
    [canary] = [doc for doc in documents() if doc.get("kind") == "Canary"]
    [hook] = canary["spec"]["analysis"]["webhooks"]
    assert hook["type"] == "rollback"
    assert hook["url"].endswith("/api/v1/targets/shop/checkout/rollback-check")


def test_every_rollbackd_configuration_loads(tmp_path: Path) -> None:
    configs = [doc for doc in documents() if "targets" in doc]
    assert len(configs) >= 2
    for number, config in enumerate(configs):
        path = tmp_path / f"rollbackd-{number}.yaml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        settings = load_settings(path, environ={})
        assert settings.targets


def test_the_chart_values_pass_the_chart_schema() -> None:
    [values] = [doc for doc in documents() if "rbac" in doc]
    schema = json.loads((REPO / "helm" / "rollbackd" / "values.schema.json").read_text(encoding="utf-8"))
    rbac_schema = schema["properties"]["rbac"]
    defaults = yaml.safe_load((REPO / "helm" / "rollbackd" / "values.yaml").read_text(encoding="utf-8"))
    jsonschema.validate({**defaults["rbac"], **values["rbac"]}, rbac_schema)


def test_the_verdict_document_is_the_one_the_daemon_answers(tmp_path: Path) -> None:
    [shown] = [json.loads(block) for block in blocks("json")]
    path = tmp_path / "rollbackd.yaml"
    path.write_text(yaml.safe_dump([doc for doc in documents() if "targets" in doc][-1]), encoding="utf-8")
    state = DaemonState(load_settings(path, environ={}))
    [target] = state.targets.values()
    answer = verdict_view(target, target_verdict(target, now=0.0), now=0.0, wall_now=datetime.now(UTC))
    assert isinstance(answer, dict)
    assert set(shown) == set(answer)
    assert set(shown["decision"]) == {"outcome", "blocked_by", "rollback"}


def test_the_schemas_catch_a_mistake() -> None:
    [canary] = [doc for doc in documents() if doc.get("kind") == "Canary"]
    canary["spec"]["analysis"]["webhooks"][0]["type"] = "rollbak"
    canary["spec"]["analysis"]["webhooks"][0]["headers"] = {"Authorization": "Bearer x"}
    found = problems(FLAGGER_CANARY_CRD, canary)
    assert any("'rollbak' is not one of" in problem for problem in found), found
    assert any("'headers' was unexpected" in problem for problem in found), found
