"""Safety-rail state shared across targets: rollback ledger (cooldowns, hourly cap) and holds.

Pure and clock-agnostic: callers pass the time (event-loop time in the daemon).
"""

from __future__ import annotations

from collections import deque

from rollbackd.model import Hold, Watch

HOUR_S = 3600.0

#: Longest fix-forward hold, in seconds (30 days), from the API or an annotation: a fix that is
#: further away than that is no fix-forward (the global freeze is the switch for that), and every
#: time the daemon keeps stays well inside what its clocks can represent.
MAX_HOLD_S = 30 * 86400.0


class RollbackLedger:
    """Remembers recent rollbacks: a per-target cooldown, a cap per hour across all targets, and
    each target's post-rollback watch after its rollback was verified."""

    def __init__(self, *, max_per_hour: int) -> None:
        self.max_per_hour = max_per_hour
        self._times: deque[float] = deque()
        self._cooldowns: dict[str, float] = {}
        self._watches: dict[str, Watch] = {}

    def watch(self, key: str, *, since: float, watch_s: float) -> Watch | None:
        """Start ``key``'s post-rollback watch at ``since`` for ``watch_s`` (none when 0)."""
        if watch_s <= 0:
            self._watches.pop(key, None)
            return None
        watch = self._watches[key] = Watch(since=since, until=since + watch_s)
        return watch

    def watch_of(self, key: str, t: float) -> Watch | None:
        """``key``'s post-rollback watch under way at ``t`` (``None`` once it is over)."""
        watch = self._watches.get(key)
        if watch is not None and watch.until <= t:
            del self._watches[key]
            return None
        return watch

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
