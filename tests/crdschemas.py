"""The published CRD schemas of other projects' objects rollbackd writes, checked in under
tests/crds/ (each file's header names its source repository, path and version).

:func:`validate` checks an object against the ``openAPIV3Schema`` of its kind's served version,
strictly: a field the schema does not declare is an error (the API server would prune it, or
refuse it with strict field validation), as is a missing required field or a value out of range.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).resolve().parent / "crds"


@functools.cache
def _schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the strict schema of that served version."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if version.get("served"):
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    # Every object has these, declared in its CRD's schema or not.
                    for key in ("apiVersion", "kind"):
                        schema.setdefault("properties", {}).setdefault(key, {"type": "string"})
                    schema["properties"].setdefault("metadata", {"type": "object"})
                    schema = _strict(schema)
                    found[(f"{group}/{version['name']}", kind)] = schema
    return found


def _strict(schema: Any) -> Any:
    """Objects with declared properties allow no others (unless the schema keeps unknown fields)."""
    if isinstance(schema, dict):
        for value in schema.values():
            _strict(value)
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        for item in schema:
            _strict(item)
    return schema


def kinds() -> set[tuple[str, str]]:
    """The (apiVersion, kind) pairs there is a schema for."""
    return set(_schemas())


def validate(obj: Mapping[str, Any]) -> None:
    """Raise :class:`jsonschema.ValidationError` unless ``obj`` fits its kind's published schema
    (``KeyError`` when there is no schema for its apiVersion and kind)."""
    schema = _schemas()[(str(obj.get("apiVersion")), str(obj.get("kind")))]
    jsonschema.Draft7Validator(schema).validate(dict(obj))
