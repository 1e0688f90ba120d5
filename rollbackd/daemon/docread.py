"""Reading the API's JSON documents for the HTML page: typed accessors that tolerate any shape
(a missing or mistyped field reads as nothing), and the HTML escaping of every outside string."""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import datetime

from rollbackd.daemon.jsonify import JsonValue

Doc = Mapping[str, JsonValue]


def escape(text: str) -> str:
    """``text`` as HTML text or attribute value (quotes included)."""
    return html.escape(text, quote=True)


def obj(value: JsonValue) -> Doc | None:
    return value if isinstance(value, dict) else None


def items(value: JsonValue) -> list[JsonValue]:
    return value if isinstance(value, list) else []


def number(value: JsonValue) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def text(value: JsonValue) -> str:
    return "" if value is None else str(value)


def when(value: JsonValue) -> float | None:
    """An API time (ISO 8601, UTC: ``2026-12-06T17:03:12.345Z``) as Unix seconds; ``None`` for
    anything else."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None
