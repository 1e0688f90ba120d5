"""Turn domain values (frozen dataclasses, enums, tuples) into JSON that any parser accepts.

JSON has no NaN or infinity: non-finite floats become ``null``. Objects that are none of the
known shapes are rendered with ``str()`` so that a log line or an API answer never fails on them.
A lone surrogate in a string (outside text: a JSON body's ``\\ud800`` escape, undecodable bytes)
is written as its ``\\uXXXX`` escape, so the text always encodes as UTF-8 and reads back the same.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping
from typing import TypeAlias

JsonValue: TypeAlias = "bool | int | float | str | list[JsonValue] | dict[str, JsonValue] | None"


#: Lone surrogates: valid in JSON text only as escapes, and impossible to encode as UTF-8.
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def escape_code_point(match: re.Match[str]) -> str:
    """The ``\\uXXXX`` escape of the one character ``match`` found."""
    return f"\\u{ord(match.group()):04x}"


def to_json_value(value: object) -> JsonValue:
    """A JSON-compatible copy of ``value``: dataclasses become objects (field by field), enums
    their values, tuples/lists/sets lists, mappings objects with string keys, non-finite floats
    ``None``."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, enum.Enum):
        return to_json_value(value.value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [to_json_value(v) for v in value]
    return str(value)


def dumps(value: object) -> str:
    """Compact, strictly valid JSON text of ``value`` (see :func:`to_json_value`); lone
    surrogates escaped."""
    text = json.dumps(to_json_value(value), separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    return _SURROGATE.sub(escape_code_point, text)
