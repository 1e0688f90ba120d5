"""Times shown to people (API, status page, ``/readyz``, logs): on the wall clock, in UTC.

The daemon keeps its times on the event loop's monotonic clock; :class:`WallClock` turns them into
wall-clock times with one offset between the two, taken at its first use, so that one loop time
always reads as the same wall-clock time (a decision's ``t`` is the same string in every answer).
"""

from __future__ import annotations

from datetime import UTC, datetime

from rollbackd.events.build import Clock

__all__ = ["WallClock", "utc_iso"]


def utc_iso(when: datetime) -> str:
    """``when`` in UTC as ISO 8601 with milliseconds and a ``Z``: ``2026-12-06T17:03:12.345Z``."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class WallClock:
    """Event-loop times on the wall clock (``clock``: the pair of clocks to convert with; by
    default both read at the first conversion, inside the running loop)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock

    @property
    def clock(self) -> Clock:
        """The pair of clocks converted with (read now, at the first use)."""
        if self._clock is None:
            self._clock = Clock.now()
        return self._clock

    def at(self, t: float) -> datetime:
        return self.clock.at(t)

    def iso(self, t: float | None) -> str | None:
        """Loop time ``t`` as :func:`utc_iso` text (``None`` stays ``None``)."""
        return None if t is None else utc_iso(self.at(t))

    def text(self, t: float) -> str:
        """Loop time ``t`` as :func:`utc_iso` text: how the reasons of the daemon's decisions write
        a time (a :data:`~rollbackd.model.TimeText`)."""
        return utc_iso(self.at(t))
