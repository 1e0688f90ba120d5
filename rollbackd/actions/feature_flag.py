"""The feature-flag lever: a release that turned a flag on is rolled back by turning it off.

The flag's store (:mod:`rollbackd.actions.flagstore`: the admin API or a SQL table) does the
turning; this action plans, records and reports like every other: the change (the flag's value
before and after) is written down before it is made, a flag already off is ``already-done``
(recorded as such), and a store that does not answer is tried again with backoff
(``flag.attempts``) before the action fails, which escalates. A refusal that retrying cannot
change (401, 404, an UPDATE that changes no row) fails at once, with the store's reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from rollbackd.actions.base import ActionOutcome, ActionResult, Change, ChangeRecorder, Progress
from rollbackd.actions.flagstore import FlagStore, FlagStoreError, TemporaryFlagError, is_off
from rollbackd.backoff import Backoff

logger = logging.getLogger(__name__)

ACTION = "feature-flag-off"

T = TypeVar("T")


class FeatureFlagOff:
    """Turn the flag ``flag`` of ``target`` off in ``store``."""

    name = ACTION

    def __init__(
        self, *, target: str, flag: str, store: FlagStore, attempts: int = 3, backoff: Backoff | None = None
    ) -> None:
        self.target = target
        self.flag = flag
        self.store = store
        self.attempts = attempts
        self.backoff = backoff if backoff is not None else Backoff(initial_s=0.5, max_s=5.0)
        #: The object the audit trail names: the flag, and where it is kept.
        self.object = f"FeatureFlag/{target}/{flag}"

    async def _retrying(self, op: Callable[[], Awaitable[T]]) -> T:
        """``op()``, tried again after a temporary failure, at most :attr:`attempts` times."""
        for attempt in range(1, self.attempts + 1):
            try:
                return await op()
            except TemporaryFlagError as exc:
                if attempt >= self.attempts:
                    raise TemporaryFlagError(f"{exc} (after {attempt} attempts)") from None
                delay = self.backoff.delay(attempt - 1)
                logger.warning("the flag store failed, trying again in %.1fs: %s", delay, exc,
                               extra={"target": self.target, "flag": self.flag, "attempt": attempt})
                await asyncio.sleep(delay)
        raise AssertionError("unreachable: attempts is at least 1")

    def _result(self, outcome: ActionOutcome, reason: str, started: float, *, before: Any = None,
                after: Any = None, changes: tuple[Change, ...] = (), rows: int | None = None) -> ActionResult:
        details: dict[str, Any] = {
            "flag": self.flag, "store": self.store.kind, "where": self.store.where, "before": before,
            "after": after,
        }
        if rows is not None:
            details["rows"] = rows
        return ActionResult(
            action=ACTION, target=self.target, outcome=outcome, reason=reason, changes=changes,
            api_s=asyncio.get_running_loop().time() - started, details=details,
        )

    async def run(
        self, *, dry_run: bool, recorder: ChangeRecorder | None = None, progress: Progress | None = None
    ) -> ActionResult:
        started = asyncio.get_running_loop().time()
        store = self.store
        try:
            before = await self._retrying(store.read) if store.readable else None
        except FlagStoreError as exc:
            return self._result(ActionOutcome.FAILED, f"cannot read the flag {self.flag}: {exc}", started)
        if store.readable and is_off(before):
            return self._result(ActionOutcome.ALREADY_DONE, f"the flag {self.flag} is off already", started,
                                before=before, after=before)
        change = Change(self.object, "enabled", before, False)
        if dry_run:
            return self._result(ActionOutcome.PLANNED, f"would turn the flag {self.flag} off ({store.where})",
                                started, before=before, changes=(change,))
        if recorder is not None and not await recorder.intend([change]):
            return self._result(ActionOutcome.FAILED, "the change could not be recorded, so it was not made",
                                started, before=before)
        try:
            flip = await self._retrying(store.turn_off)
        except FlagStoreError as exc:
            if recorder is not None:
                await recorder.made([change], [])
            why = f"the flag {self.flag} was not turned off: {exc}"
            return self._result(ActionOutcome.FAILED, why, started, before=before)
        if not flip.changed:
            if recorder is not None:
                await recorder.made([change], [])
            return self._result(ActionOutcome.ALREADY_DONE, f"the flag {self.flag} is off already", started,
                                before=flip.before, after=flip.after)
        made = Change(self.object, "enabled", flip.before, flip.after if flip.after is not None else False)
        if recorder is not None:
            await recorder.made([change], [made])
        shown = "" if flip.before is None else f" (was {flip.before!r})"
        done = f"the flag {self.flag} turned off{shown} ({store.where})"
        return self._result(ActionOutcome.DONE, done, started, before=flip.before, after=flip.after,
                            changes=(made,), rows=flip.rows)
