"""Validating objects of other projects against their published CRD schemas (tests/crds/).

A CRD's ``openAPIV3Schema`` is checked with ``jsonschema`` the way an API server with strict field
validation (``kubectl``'s default) checks a write: types, enums, required fields and patterns, and
no field the schema does not declare (where it declares the fields of an object and does not keep
unknown ones with ``x-kubernetes-preserve-unknown-fields``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"


def _strict(schema: Any) -> Any:
    """``schema`` with ``additionalProperties: false`` on every object that lists its properties."""
    if isinstance(schema, dict):
        out = {key: _strict(value) for key, value in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@cache
def _validator(file: str, kind: str, version: str) -> jsonschema.protocols.Validator:
    for document in yaml.safe_load_all((CRDS / file).read_text(encoding="utf-8")):
        if not document or document.get("kind") != "CustomResourceDefinition":
            continue
        if document["spec"]["names"]["kind"] != kind:
            continue
        for served in document["spec"]["versions"]:
            if served["name"] == version:
                schema = _strict(copy.deepcopy(served["schema"]["openAPIV3Schema"]))
                checker = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
                return checker(schema)
    raise LookupError(f"no CRD of kind {kind} version {version} in {file}")


def problems(file: str, obj: Mapping[str, Any]) -> list[str]:
    """What the CRD in ``tests/crds/<file>`` finds wrong with ``obj`` (its ``kind`` and the version
    of its ``apiVersion`` pick the schema); empty when it is valid."""
    version = str(obj["apiVersion"]).rsplit("/", 1)[-1]
    validator = _validator(file, str(obj["kind"]), version)
    return [
        f"{'.'.join(str(part) for part in error.absolute_path) or '(root)'}: {error.message}"
        for error in validator.iter_errors(dict(obj))
    ]


ROLLOUT_CRD = "argo-rollouts-v1.8.3-rollout-crd.yaml"
ANALYSIS_TEMPLATE_CRD = "argo-rollouts-v1.8.3-analysis-template-crd.yaml"
FLAGGER_CANARY_CRD = "flagger-v1.44.0-canary-crd.yaml"
PROMETHEUS_RULE_CRD = "prometheus-operator-v0.93.0-prometheusrules-crd.yaml"
SERVICE_MONITOR_CRD = "prometheus-operator-v0.93.0-servicemonitors-crd.yaml"
