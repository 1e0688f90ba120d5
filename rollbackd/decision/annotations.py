"""Decision context from Deployment annotations, parsed without I/O.

* ``rollbackd.io/rollback-risk``: ``low`` or ``high`` (e.g. the release ran an irreversible
  migration); an optional reason may follow after a colon: ``high: drops column orders.legacy_id``.
* ``rollbackd.io/fix-forward-eta``: when a fix-forward is expected, as an RFC 3339 time
  (``2026-11-24T03:00:00Z``) or a duration from the moment the annotation was first seen
  (``15m``, ``90s``, ``1h30m``); at most 30 days ahead.

Annotations are read repeatedly, so durations are anchored to when they were first seen by the
caller; absolute times are converted from wall-clock to the event-loop clock the core runs on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from rollbackd.decision.rails import MAX_HOLD_S
from rollbackd.model import Hold, Risk

RISK_ANNOTATION = "rollbackd.io/rollback-risk"
ETA_ANNOTATION = "rollbackd.io/fix-forward-eta"

_DURATION = re.compile(r"^(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?$")


class AnnotationError(ValueError):
    """An annotation whose value cannot be understood; the message names it and the fix."""


@dataclass(frozen=True, slots=True)
class AnnotatedContext:
    risk: Risk | None
    risk_reason: str
    hold: Hold | None


def parse_duration(text: str) -> float | None:
    """``1h30m``, ``15m``, ``90s`` → seconds; ``None`` when it is not such a duration."""
    match = _DURATION.match(text.strip())
    if not match or not any(match.groupdict().values()):
        return None
    h, m, s = (int(match.group(g) or 0) for g in ("h", "m", "s"))
    return float(h * 3600 + m * 60 + s)


def parse_risk(value: str) -> tuple[Risk, str]:
    level, _, reason = value.partition(":")
    try:
        risk = Risk(level.strip().lower())
    except ValueError:
        raise AnnotationError(
            f"{RISK_ANNOTATION}: expected 'low' or 'high' (optionally 'high: reason'), got {value!r}"
        ) from None
    return risk, reason.strip()


def parse_eta(
    value: str, *, wall_now: datetime, loop_now: float, first_seen_loop: float | None = None
) -> Hold:
    """The hold an ETA annotation asks for, on the loop clock: at most
    :data:`~rollbackd.decision.rails.MAX_HOLD_S` ahead (:class:`AnnotationError` beyond); an ETA
    passed longer ago than that counts as passed that long ago."""
    text = value.strip()
    too_far = f"{ETA_ANNOTATION}: a fix-forward hold may last at most 30 days, got {text[:60]!r}"
    try:
        duration = parse_duration(text)
    except ValueError:  # more digits than Python converts
        raise AnnotationError(too_far) from None
    if duration is not None:
        if duration > MAX_HOLD_S:
            raise AnnotationError(too_far)
        anchor = first_seen_loop if first_seen_loop is not None else loop_now
        return Hold(until=anchor + duration, reason="fix-forward", set_at=anchor)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AnnotationError(
            f"{ETA_ANNOTATION}: expected an RFC 3339 time like 2026-11-24T03:00:00Z or a duration like 15m, "
            f"got {value!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ahead = (when - wall_now).total_seconds()
    if ahead > MAX_HOLD_S:
        raise AnnotationError(too_far)
    until = loop_now + max(ahead, -MAX_HOLD_S)
    return Hold(
        until=until, reason="fix-forward", set_at=first_seen_loop if first_seen_loop is not None else loop_now
    )


def context_from_annotations(
    annotations: Mapping[str, str],
    *,
    wall_now: datetime,
    loop_now: float,
    eta_first_seen: float | None = None,
) -> AnnotatedContext:
    """Rollback risk and fix-forward hold from a Deployment's annotations (absent → ``None``)."""
    risk: Risk | None = None
    reason = ""
    if RISK_ANNOTATION in annotations:
        risk, reason = parse_risk(annotations[RISK_ANNOTATION])
        if risk is Risk.HIGH:
            reason = f"annotated {RISK_ANNOTATION}=high" + (f" ({reason})" if reason else "")
    hold = None
    if ETA_ANNOTATION in annotations:
        hold = parse_eta(
            annotations[ETA_ANNOTATION], wall_now=wall_now, loop_now=loop_now, first_seen_loop=eta_first_seen
        )
    return AnnotatedContext(risk=risk, risk_reason=reason, hold=hold)
