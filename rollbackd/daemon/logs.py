"""Structured logging: one JSON object per line (``log.format: json``) or plain text lines.

Fields passed with ``extra={...}`` (``target``, ``outcome``, ``reasons``, ...) become top-level keys
of the JSON object, next to ``ts``, ``level``, ``logger`` and ``msg``; in text mode they follow the
message as ``key=value`` pairs.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import IO

from rollbackd.config.settings import LogSettings
from rollbackd.daemon.jsonify import dumps, to_json_value

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON: ``ts`` (UTC, ISO 8601), ``level``, ``logger``, ``msg``,
    the ``extra`` fields, and ``exc`` with the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        entry: dict[str, object] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, to_json_value(value))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return dumps(entry)


class TextFormatter(logging.Formatter):
    """Plain lines: ``time LEVEL logger: message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if not extras:
            return line
        first, sep, rest = line.partition("\n")
        pairs = " ".join(f"{key}={dumps(value)}" for key, value in extras.items())
        return f"{first} {pairs}{sep}{rest}"


def configure_logging(settings: LogSettings, *, stream: IO[str] | None = None) -> logging.Handler:
    """Send every log record at ``settings.level`` or above to ``stream`` (stderr by default) in
    ``settings.format``, replacing the root logger's handlers. Returns the installed handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    return handler
