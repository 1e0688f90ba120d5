"""JSON Schemas of the events, generated from the models in :mod:`rollbackd.events.model`.

One schema per event type describes the whole structured CloudEvent: the envelope (``type``
fixed to the type's name) and its ``data``. They are checked in under ``docs/schemas/<type>.json``;
a test fails when they drift from the code. Regenerate them with::

    python -m rollbackd.events.schemas --write docs/schemas

and check them (exit status 1 on drift) with ``python -m rollbackd.events.schemas --check docs/schemas``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollbackd.events.model import DATA_MODELS, CloudEvent, EventType

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def event_schema(kind: EventType) -> dict[str, Any]:
    """The JSON Schema of a structured CloudEvent of type ``kind``."""
    data_model = DATA_MODELS[kind]
    data = data_model.model_json_schema(ref_template="#/$defs/{model}", mode="serialization")
    defs: dict[str, Any] = data.pop("$defs", {})
    defs[data_model.__name__] = data
    envelope = CloudEvent.model_json_schema(ref_template="#/$defs/{model}", mode="serialization")
    properties = dict(envelope["properties"])
    properties["type"] = {**properties["type"], "const": kind.full}
    properties["subject"] = {
        **properties["subject"],
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
    }
    properties["data"] = {"$ref": f"#/$defs/{data_model.__name__}"}
    required = sorted({*envelope.get("required", ()), "specversion", "datacontenttype"})
    return {
        "$schema": SCHEMA_DIALECT,
        "title": kind.full,
        "description": (data_model.__doc__ or "").strip(),
        "type": "object",
        "properties": properties,
        "required": required,
        "$defs": dict(sorted(defs.items())),
    }


def render(kind: EventType) -> str:
    """The schema file's text: stable key order, two-space indent, final newline."""
    return json.dumps(event_schema(kind), indent=2, ensure_ascii=False) + "\n"


def file_name(kind: EventType) -> str:
    return f"{kind.value}.json"


def drift(directory: Path) -> list[str]:
    """What differs between ``directory`` and the code: one line per missing, stale or extra file."""
    problems: list[str] = []
    expected = {file_name(kind): render(kind) for kind in EventType}
    for name, text in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: differs from the models")
    if directory.is_dir():
        for path in sorted(directory.glob("*.json")):
            if path.name not in expected:
                problems.append(f"{path}: no such event type")
    return problems


def write(directory: Path) -> list[Path]:
    """Write every schema into ``directory`` (created if needed); returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for kind in EventType:
        path = directory / file_name(kind)
        path.write_text(render(kind), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m rollbackd.events.schemas",
        description="Write or check the JSON Schemas of rollbackd's events (one file per type).",
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--write", metavar="DIR", help="write the schemas into DIR")
    action.add_argument("--check", metavar="DIR", help="exit with status 1 if DIR differs from the code")
    args = parser.parse_args(argv)
    if args.write:
        for path in write(Path(args.write)):
            print(path)
        return 0
    problems = drift(Path(args.check))
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print("regenerate with: python -m rollbackd.events.schemas --write DIR", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
