"""The audit log for people and programs: ``rollbackd history`` and ``GET /api/v1/history``.

People get one line per entry: local time, target (``-`` for daemon-wide entries), kind and
summary, in aligned columns. Programs get one JSON object per entry (:func:`entry_json`) with
the details (evidence, reasons, changes) as recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any

from rollbackd.config.loader import ConfigError, load_settings
from rollbackd.store import StoreError, open_store
from rollbackd.store.base import AuditEntry, Store

__all__ = [
    "cli_history",
    "entry_json",
    "format_entries",
    "limit_argument",
    "parse_since",
    "parse_target",
    "since_argument",
    "target_argument",
]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_NAME = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_TARGET = re.compile(rf"^(?:({_NAME})/)?({_NAME})$")


#: Longest duration ``since`` accepts (100 years, in seconds).
MAX_SINCE_S = 36_500 * 86400
#: Earliest and latest time ``since`` accepts.
SINCE_RANGE = (datetime(1900, 1, 1, tzinfo=UTC), datetime(9999, 1, 1, tzinfo=UTC))


def parse_since(text: str, *, now: datetime) -> datetime:
    """The start of a history query: a duration before ``now`` (``90s``, ``30m``, ``1h30m``,
    ``2d``, ``1w``; at most 36500d) or a time (RFC 3339, like ``2024-05-01T12:00:00Z``; without an
    offset it is local time; from 1900 to 9998). :class:`ValueError` with a readable message
    otherwise."""
    text = text.strip()
    shown = text if len(text) <= 60 else text[:57] + "..."
    if len(text) <= 100 and _DURATION.fullmatch(text):
        seconds = sum(float(amount) * _UNITS[unit] for amount, unit in _DURATION_PART.findall(text))
        if not seconds <= MAX_SINCE_S:
            raise ValueError(f"'{shown}' is too long ago: a duration may be at most 36500d (about 100 years)")
        return now - timedelta(seconds=seconds)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"'{shown}' is neither a duration (like 30m, 1h, 2d) nor a time (like 2024-05-01T12:00:00Z)"
        ) from None
    earliest, latest = SINCE_RANGE
    try:
        moment = moment.astimezone(UTC)  # a naive time is taken as local time
    except (OverflowError, OSError, ValueError):
        moment = latest if moment.year > 1900 else earliest.replace(year=1)
    if not earliest <= moment < latest:
        raise ValueError(f"'{shown}' is out of range: a time must lie between the years 1900 and 9998")
    return moment


def parse_target(text: str) -> str:
    """A target key ``namespace/name`` (``name`` alone means namespace ``default``, as in the
    configuration). :class:`ValueError` otherwise."""
    match = _TARGET.match(text.strip())
    if match is None:
        raise ValueError(f"'{text}' is not a target: write NAMESPACE/NAME, like shop/checkout")
    namespace, name = match.groups()
    return f"{namespace or 'default'}/{name}"


def since_argument(text: str) -> datetime:
    """``--since`` for argparse: :func:`parse_since` from now."""
    try:
        return parse_since(text, now=datetime.now(UTC))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def target_argument(text: str) -> str:
    """``--target`` for argparse: :func:`parse_target`."""
    try:
        return parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def limit_argument(text: str) -> int:
    """``--limit`` for argparse: a positive whole number."""
    try:
        limit = int(text)
    except ValueError:
        limit = 0
    if limit < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number")
    return limit


def _one_line(text: str) -> str:
    return " ".join(text.split())


def format_entries(entries: Sequence[AuditEntry], *, tz: tzinfo | None = None) -> list[str]:
    """One aligned line per entry: time in ``tz`` (default: the local time zone), target, kind,
    summary."""
    rows = [
        (
            entry.at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if entry.at is not None else "-",
            entry.target or "-",
            entry.kind,
            _one_line(entry.summary),
        )
        for entry in entries
    ]
    target_width = max((len(row[1]) for row in rows), default=0)
    kind_width = max((len(row[2]) for row in rows), default=0)
    return [
        f"{at}  {target:<{target_width}}  {kind:<{kind_width}}  {summary}".rstrip()
        for at, target, kind, summary in rows
    ]


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """An entry as a JSON object: ``seq``, ``at`` (RFC 3339, UTC), ``target``, ``kind``,
    ``summary``, ``details``."""
    return {
        "seq": entry.seq,
        "at": entry.at.astimezone(UTC).isoformat().replace("+00:00", "Z") if entry.at is not None else None,
        "target": entry.target,
        "kind": entry.kind,
        "summary": entry.summary,
        "details": dict(entry.details),
    }


async def _read(store: Store, *, target: str | None, since: datetime | None, limit: int) -> list[AuditEntry]:
    await store.open()
    try:
        return await store.history(target=target, since=since, limit=limit)
    finally:
        await store.close()


def cli_history(args: argparse.Namespace, *, environ: Mapping[str, str]) -> int:
    """Entry point of ``rollbackd history``: ``args`` has ``config`` (a path or ``None``),
    ``target``, ``since`` (already parsed), ``limit`` and ``json``. Exit status 0, 1 when the
    store cannot be read, 2 for configuration errors."""
    try:
        settings = load_settings(Path(args.config) if args.config else None, environ=environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    try:
        store = open_store(settings.store.url, data_dir=Path(settings.store.data_dir), create=False)
        entries = asyncio.run(_read(store, target=args.target, since=args.since, limit=args.limit))
    except StoreError as exc:
        print(f"rollbackd history: {exc}", file=sys.stderr)
        return 1
    if args.json:
        for entry in entries:
            print(json.dumps(entry_json(entry), ensure_ascii=False))
    elif entries:
        print("\n".join(format_entries(entries)))
    else:
        print(
            "rollbackd history: no audit entries"
            + (f" for {args.target}" if args.target else "")
            + (" in that time" if args.since else ""),
            file=sys.stderr,
        )
    return 0
