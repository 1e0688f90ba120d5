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


#: The most texts :meth:`WallClock.text` keeps (a few thousand distinct times: the ticks of the
#: charts' windows and releases, shared by every target).
MAX_TEXTS = 16384


class WallClock:
    """Event-loop times on the wall clock (``clock``: the pair of clocks to convert with; by
    default both read at the first conversion, inside the running loop).

    Texts are kept by loop time (at most :data:`MAX_TEXTS`): the API gives every chart point's
    times, and every target's points share the ticks' times; converting one took 16 µs on a loaded
    machine, some 9 s for the 560,000 times of ``GET /api/v1/targets`` at 1,000 targets, a
    dictionary look-up a fraction of a microsecond."""

    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock
        self._texts: dict[float, str] = {}

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
        return None if t is None else self.text(t)

    def text(self, t: float) -> str:
        """Loop time ``t`` as :func:`utc_iso` text: also how the reasons of the daemon's decisions
        write a time (a :data:`~rollbackd.model.TimeText`)."""
        text = self._texts.get(t)
        if text is None:
            text = utc_iso(self.at(t))
            if len(self._texts) >= MAX_TEXTS:
                self._texts.clear()
            self._texts[t] = text
        return text
