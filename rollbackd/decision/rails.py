"""Safety-rail state shared across targets: rollback ledger (cooldowns, hourly cap) and holds.

Pure and clock-agnostic: callers pass the time (event-loop time in the daemon).
"""

from __future__ import annotations

from collections import deque

from rollbackd.model import Hold

HOUR_S = 3600.0

#: Longest fix-forward hold, in seconds (30 days), from the API or an annotation: a fix that is
#: further away than that is no fix-forward (the global freeze is the switch for that), and every
#: time the daemon keeps stays well inside what its clocks can represent.
MAX_HOLD_S = 30 * 86400.0


class RollbackLedger:
    """Remembers recent rollbacks: a per-target cooldown and a cap per hour across all targets."""

    def __init__(self, *, max_per_hour: int) -> None:
        self.max_per_hour = max_per_hour
        self._times: deque[float] = deque()
        self._cooldowns: dict[str, float] = {}

    def record(self, key: str, t: float, cooldown_s: float) -> None:
        self._times.append(t)
        self._cooldowns[key] = t + cooldown_s
        self._prune(t)

    def _prune(self, t: float) -> None:
        while self._times and self._times[0] <= t - HOUR_S:
            self._times.popleft()
        for key in [k for k, until in self._cooldowns.items() if until <= t]:
            del self._cooldowns[key]

    def rollbacks_last_hour(self, t: float) -> int:
        self._prune(t)
        return len(self._times)

    def cooldown_until(self, key: str) -> float | None:
        return self._cooldowns.get(key)


class HoldBook:
    """Fix-forward holds per target. An expired hold stays until cleared, so the framework can see
    that the ETA passed with the breach still there."""

    def __init__(self) -> None:
        self._holds: dict[str, Hold] = {}

    def set(
        self, key: str, *, until: float, reason: str = "fix-forward", set_at: float | None = None
    ) -> Hold:
        hold = Hold(until=until, reason=reason, set_at=set_at)
        self._holds[key] = hold
        return hold

    def get(self, key: str) -> Hold | None:
        return self._holds.get(key)

    def clear(self, key: str) -> Hold | None:
        return self._holds.pop(key, None)
