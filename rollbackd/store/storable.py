"""Values every store accepts: what the publisher makes of audit details and event payloads
before it queues them.

Both backends store JSON as UTF-8 text (SQLite) or ``jsonb`` (PostgreSQL); some values that a
Python program can hold have no such form. :func:`storable` replaces them, the same way for audit
entries and events, so that a record is never refused for its values:

- ``inf`` and ``-inf`` become the largest finite double with their sign
  (``±1.7976931348623157e308``): still a number, so typed fields keep their type;
- ``NaN`` becomes ``null``;
- an integer too long to be written as JSON text (Python refuses more than about 4,000 digits)
  becomes the largest finite double with its sign;
- in strings (object keys included), a lone surrogate (``"\\ud800"``: no UTF-8 form) and the NUL
  character (PostgreSQL stores neither in text nor in ``jsonb``) become U+FFFD, the replacement
  character;
- tuples, lists and sets become arrays, mappings objects with string keys, enums their values;
  anything else its ``str()`` text.
"""

from __future__ import annotations

import enum
import math
import re
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_FLOAT", "REPLACEMENT", "storable", "storable_text"]

#: What ``±inf`` (and integers too long for JSON) become, with their sign.
MAX_FLOAT = sys.float_info.max

#: What lone surrogates and NUL characters become in strings.
REPLACEMENT = "\ufffd"

#: Longest integer written as is: well below the 4,300 digits Python converts to text.
_MAX_INT_BITS = 12_000

_UNSTORABLE_CHARS = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` with every lone surrogate and NUL character replaced by U+FFFD."""
    return _UNSTORABLE_CHARS.sub(REPLACEMENT, text)


def storable(value: object) -> Any:
    """A copy of ``value`` that both stores accept as JSON (see the module's rules)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, enum.Enum):
        return storable(value.value)
    if isinstance(value, int):
        if value.bit_length() > _MAX_INT_BITS:
            return math.copysign(MAX_FLOAT, value)
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return math.copysign(MAX_FLOAT, value)
        return value
    if isinstance(value, Mapping):
        return {storable_text(str(key)): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [storable(item) for item in value]
    return storable_text(str(value))
