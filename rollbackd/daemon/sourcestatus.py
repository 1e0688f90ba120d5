"""Whether each data source works, since when, and why not: what ``/readyz``'s body, the status page's
banner and the log say about Prometheus, Kubernetes and the store.

:class:`SourceBoard` is told, once per tick, what each source's latest use gave (an error or
none); it keeps each source's state and the wall-clock time it changed, logs **one line per
change** (WARNING when a source goes down, INFO when it is back) and, while any source is down,
**one summary per minute** (``still down: prometheus for 3m…``), never a line per target or per
tick. Times come from the event loop and are shown on the wall clock, in UTC.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from rollbackd.daemon.jsonify import JsonValue
from rollbackd.daemon.wallclock import utc_iso

logger = logging.getLogger(__name__)

__all__ = ["SUMMARY_EVERY_S", "SourceBoard", "SourceState", "SourceStatus"]

#: Seconds between two summary lines while a source is down.
SUMMARY_EVERY_S = 60.0


class SourceStatus(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    #: Not used by this daemon (Kubernetes off: deciding only).
    OFF = "off"


@dataclass(frozen=True, slots=True)
class SourceState:
    """One source: its status, since when (event-loop time and wall clock), why, and how many
    failed uses since it went down."""

    name: str
    status: SourceStatus
    since_loop: float
    since: datetime
    error: str | None = None
    detail: str | None = None
    failures: int = 0

    def view(self, *, now_loop: float) -> JsonValue:
        return {
            "status": self.status.value,
            "since": utc_iso(self.since),
            "for_s": round(max(0.0, now_loop - self.since_loop), 3),
            "error": self.error,
            "detail": self.detail,
            "failures": self.failures,
        }


class SourceBoard:
    """The state of every data source (see the module docstring).

    ``loop`` reads the event-loop clock; ``wall`` turns one of its times into a timezone-aware
    wall-clock time (UTC).
    """

    def __init__(self, *, loop: Callable[[], float], wall: Callable[[float], datetime]) -> None:
        self._loop = loop
        self._wall = wall
        self._states: dict[str, SourceState] = {}
        self._last_summary: float | None = None

    @property
    def states(self) -> tuple[SourceState, ...]:
        return tuple(self._states.values())

    def get(self, name: str) -> SourceState | None:
        return self._states.get(name)

    def off(self, name: str, detail: str) -> None:
        """``name`` is not used (e.g. Kubernetes when the daemon decides only); said once."""
        current = self._states.get(name)
        if current is not None and current.status is SourceStatus.OFF and current.detail == detail:
            return
        now = self._loop()
        self._states[name] = SourceState(name, SourceStatus.OFF, now, self._wall(now), detail=detail)
        logger.info("%s is off: %s", name, detail, extra={"source": name, "status": "off"})

    def report(self, name: str, error: str | None, *, starting: bool = False) -> bool:
        """What the latest use of ``name`` gave: ``None`` when it worked, else why not. Returns
        whether this changed the source's status (and was logged). ``starting``: the source has
        not worked yet since the daemon started (the store while it opens), so its being down is
        logged at INFO, not as an outage."""
        now = self._loop()
        current = self._states.get(name)
        if error is None:
            if current is not None and current.status is SourceStatus.UP:
                return False
            self._states[name] = SourceState(name, SourceStatus.UP, now, self._wall(now))
            if current is not None and current.status is SourceStatus.DOWN:
                logger.info(
                    "%s is back after %s (%d failed uses)", name, _duration(now - current.since_loop),
                    current.failures, extra={"source": name, "status": "up",
                                             "down_s": round(now - current.since_loop, 3)},
                )
            return True
        if current is not None and current.status is SourceStatus.DOWN:
            self._states[name] = replace(current, error=error, failures=current.failures + 1)
            return False
        state = SourceState(name, SourceStatus.DOWN, now, self._wall(now), error=error, failures=1)
        self._states[name] = state
        logger.log(
            logging.INFO if starting and current is None else logging.WARNING,
            "%s is down since %s: %s", name, utc_iso(state.since), error,
            extra={"source": name, "status": "down", "error": error},
        )
        return True

    def summarize(self) -> None:
        """While any source is down, one line per :data:`SUMMARY_EVERY_S` saying which and since when."""
        down = [state for state in self._states.values() if state.status is SourceStatus.DOWN]
        now = self._loop()
        if not down:
            self._last_summary = None
            return
        if self._last_summary is None:
            self._last_summary = now  # the change itself was just logged
            return
        if now - self._last_summary < SUMMARY_EVERY_S:
            return
        self._last_summary = now
        said = "; ".join(
            f"{state.name} for {_duration(now - state.since_loop)} (since {utc_iso(state.since)},"
            f" {state.failures} failed uses): {state.error}"
            for state in down
        )
        logger.warning("still down: %s", said, extra={"sources_down": [state.name for state in down]})

    def view(self) -> JsonValue:
        """Every source's state as ``/readyz`` shows it."""
        now = self._loop()
        return {state.name: state.view(now_loop=now) for state in self._states.values()}


def _duration(seconds: float) -> str:
    return f"{max(0.0, seconds):.0f}s"
