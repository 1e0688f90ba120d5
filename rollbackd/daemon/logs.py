r"""Structured logging: one JSON object per line (``log.format: json``) or plain text lines.

Fields passed with ``extra={...}`` (``target``, ``outcome``, ``reasons``, ...) become top-level keys
of the JSON object, next to ``ts``, ``level``, ``logger`` and ``msg``; in text mode they follow the
message as ``key=value`` pairs.

Log lines carry outside text (a hold's reason, a request's path, an error from a server): in both
formats one record is one line, whatever that text holds. In text mode control characters, line
and paragraph separators and lone surrogates in the message and the fields are escaped (``\n``,
``\x1b``, ``\u2028``, ``\udcff``), and the lines of a traceback follow indented by ``  | ``, so no
text can pass for a record of its own; in JSON mode, next to JSON's own escapes, C1 controls,
the separators and lone surrogates are written as ``\uXXXX`` escapes too.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import sys
from typing import IO

from rollbackd.config.settings import LogSettings
from rollbackd.daemon.jsonify import dumps, escape_code_point, to_json_value

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


#: What may not appear raw in a text line: C0 and C1 controls, DEL, the line and paragraph
#: separators, lone surrogates (undecodable bytes of outside text).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
#: What JSON text may hold raw but a line reader may split on: written as ``\uXXXX`` escapes
#: (:func:`~rollbackd.daemon.jsonify.dumps` escapes lone surrogates already).
_JSON_UNSAFE = re.compile(r"[\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}

#: Prefix of a traceback's lines below a text record.
CONTINUATION = "  | "


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _SHORT_ESCAPES.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def escape_text(text: str) -> str:
    """``text`` with every character that could break or forge a text log line escaped."""
    return _UNSAFE.sub(_escape, text)


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
        return _JSON_UNSAFE.sub(escape_code_point, dumps(entry))


class TextFormatter(logging.Formatter):
    """Plain lines: ``time LEVEL logger: message key=value ...``, outside text escaped (see the
    module docstring); a traceback follows on lines starting with :data:`CONTINUATION`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self.formatTime(record, self.datefmt)
        line = f"{record.asctime} {record.levelname} {record.name}: {escape_text(record.message)}"
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{key}={escape_text(dumps(value))}" for key, value in extras.items())
        below: list[str] = []
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            below.extend(record.exc_text.splitlines())
        if record.stack_info:
            below.extend(self.formatStack(record.stack_info).splitlines())
        return "\n".join([line, *(CONTINUATION + escape_text(text) for text in below)])


class RateLimit:
    """Lets one occurrence of something worth a log line pass per ``every_s`` seconds of
    event-loop time, and counts the ones in between: a flood of bad requests cannot flood the
    log."""

    def __init__(self, *, every_s: float) -> None:
        self.every_s = every_s
        self._last: float | None = None
        self._suppressed = 0

    def passes(self) -> int | None:
        """For an occurrence now: ``None`` when it is to be left out (and counted), else how many
        were left out since the last one that passed (to be told in its line)."""
        now = asyncio.get_running_loop().time()
        if self._last is not None and now - self._last < self.every_s:
            self._suppressed += 1
            return None
        suppressed, self._suppressed, self._last = self._suppressed, 0, now
        return suppressed


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
