"""Carrying out rollback decisions: act once, then verify, then hand the target back to the judge.

For each target at most one rollback is under way (the framework sees ``rollback_in_progress``
and never acts twice). A run is a task :class:`Rollbacks` starts, keeps and stops
(:meth:`Rollbacks.stop`, on the daemon's way out):

1. **acting** — once its start is recorded (``before_acting``: the audit entries and events
   submitted so far, and the run's record a restart resumes from), the target's action (canary
   abort, blue-green switch-back or Deployment undo) runs against the cluster, writing each change
   into the run's record before making it (``record``); API errors become a failed result, never
   an exception;
2. **verifying** — the tick loop feeds the version traffic went back to into a
   :class:`~rollbackd.verification.Verifier` for the validation window;
3. **verified** or **verification-failed** (which escalates, never rolls back again), or
   **action-failed** / **refused** when the action could not be done.

A run left under way by a process that stopped (or by a leader that lost its lease) is taken over
from its record (:class:`~rollbackd.runrecord.RunRecord`, see :meth:`Rollbacks.resume`): the
same run, with its id, its decision time (durations run from the original decision), its reasons,
and the changes made before, which the resumed action's result lists with its own.

In dry-run a rollback decision runs the action's plan only, once per breach episode, and logs what
it would have changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from rollbackd.actions.base import (
    ActionOutcome,
    ActionResult,
    Change,
    RollbackWhy,
    Waiting,
    merge_changes,
)
from rollbackd.actions.reconcilers import REVERT_IN_GIT, suspensions_in
from rollbackd.aiotasks import STOP_TIMEOUT_S, stop_tasks
from rollbackd.model import OWN_PAST, Decision, HealthCheck, Observation, Sample, Strategy
from rollbackd.params import TargetParams
from rollbackd.run import Phase, RollbackRun, TargetAccess, reaches
from rollbackd.runrecord import RecordedChange, RunRecord
from rollbackd.verification import VerificationResult, VerificationStatus, Verifier

logger = logging.getLogger(__name__)


class _RunRecorder:
    """The :class:`~rollbackd.actions.base.ChangeRecorder` of one run: every step's changes are
    written into the run's record (``save``) before the step is applied, and after."""

    def __init__(
        self,
        save: Callable[[TargetParams, RollbackRun], Awaitable[bool]],
        params: TargetParams,
        run: RollbackRun,
    ) -> None:
        self._save = save
        self._params = params
        self._run = run

    async def intend(self, changes: Sequence[Change]) -> bool:
        self._run.changes_pending = tuple(changes)
        if await self._save(self._params, self._run):
            return True
        self._run.changes_pending = ()
        logger.error(
            "could not record the next change of the rollback: not making it",
            extra={"target": self._run.key, "changes": [c.describe() for c in changes]},
        )
        return False

    async def made(self, intended: Sequence[Change], made: Sequence[Change]) -> None:
        self._run.changes_made.extend(made)
        self._run.changes_pending = ()
        if not await self._save(self._params, self._run):  # made: the record still has it as intended
            logger.warning("could not record a change the rollback made", extra={"target": self._run.key})


def with_prior_changes(result: ActionResult, prior: Sequence[RecordedChange]) -> ActionResult:
    """The result of a resumed run's action, telling the whole run: the changes the previous
    process recorded (made, or being made when it stopped: the action found those done), then the
    action's own, each field once. A run that changed something is not ``already-done`` (it is
    ``done``), nor ``refused`` (it ``failed``). GitOps reconcilers the previous process turned off
    are listed with the result's (:attr:`~rollbackd.actions.base.ActionResult.gitops`)."""
    if not prior:
        return result
    changes = merge_changes((r.change for r in prior), result.changes)
    outcome = result.outcome
    if changes and outcome is ActionOutcome.ALREADY_DONE:
        outcome = ActionOutcome.DONE
    elif changes and outcome is ActionOutcome.REFUSED:
        outcome = ActionOutcome.FAILED
    earlier = len(merge_changes(r.change for r in prior))
    what = "the change it recorded is" if earlier == 1 else f"the {earlier} changes it recorded are"
    reason = f"{result.reason} (the run was taken over from a process that stopped: {what} listed too)"
    # GitOps reconcilers the stopped process turned off stay off: the run tells them too.
    known = {hold.object for hold in result.gitops}
    recorded = tuple(hold for hold in suspensions_in(r.change for r in prior) if hold.object not in known)
    if recorded and REVERT_IN_GIT not in reason:
        off = ", ".join(hold.object for hold in recorded)
        reason += f"; reconciliation from Git is off: {off}. {REVERT_IN_GIT}"
    return dataclasses.replace(result, outcome=outcome, changes=changes, reason=reason,
                               gitops=(*result.gitops, *recorded))


def _set_waiting(run: RollbackRun, waiting: Waiting | None) -> None:
    run.waiting = waiting


def serving_side(
    strategy: Strategy, obs: Observation
) -> tuple[Sample | None, tuple[HealthCheck, ...] | None]:
    """Which side of an observation is the version traffic went back to: the stable / previous
    colour (baseline) for canary and blue-green, the target itself when it is judged against its
    own past (a Deployment undo, a feature flag, a command)."""
    if strategy in OWN_PAST:
        return obs.candidate, obs.health_candidate
    return obs.baseline, obs.health_baseline


class Rollbacks:
    """Every target's rollback runs, and the one door through which decisions become actions."""

    def __init__(
        self,
        *,
        targets: TargetAccess | None,
        verification_window_s: float,
        verification_max_wait_s: float | None,
        on_finished: Callable[[TargetParams, RollbackRun], None] | None = None,
        on_change: Callable[[TargetParams, RollbackRun], None] | None = None,
        before_acting: Callable[[TargetParams, RollbackRun], Awaitable[bool]] | None = None,
        record: Callable[[TargetParams, RollbackRun], Awaitable[bool]] | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._access = targets
        self._before_acting = before_acting
        self._record = record
        self._wall_clock = wall_clock
        self._on_change = on_change
        self._window_s = verification_window_s
        self._max_wait_s = verification_max_wait_s
        self._on_finished = on_finished
        self.runs: dict[str, RollbackRun] = {}
        self._planned: dict[str, ActionResult] = {}
        #: The runs' and dry-run plans' tasks under way.
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def acting_enabled(self) -> bool:
        return self._access is not None

    def in_progress(self, key: str) -> bool:
        run = self.runs.get(key)
        return run is not None and run.phase.active

    def dry_run_plan(self, key: str) -> ActionResult | None:
        return self._planned.get(key)

    def episode_over(self, key: str) -> None:
        """The target's breach is over: a later dry-run decision plans afresh."""
        self._planned.pop(key, None)

    def start(
        self,
        params: TargetParams,
        decision: Decision,
        *,
        bad_revision: int | None = None,
        run_id: str | None = None,
    ) -> RollbackRun | None:
        """Act on a rollback decision (or plan it, in dry-run). Returns the run, if one started
        (``run_id``: its id, when chosen beforehand: a manual rollback's, told to the operator)."""
        if not reaches(self._access, params.key) or self.in_progress(params.key):
            return None
        if decision.dry_run:
            if params.key not in self._planned:
                self._spawn(self._plan(params, bad_revision), name=f"rollbackd:dry-run-plan:{params.key}")
            return None
        loop = asyncio.get_running_loop()
        run = RollbackRun(
            key=params.key,
            mode=decision.outcome.value,
            decided_at=loop.time(),
            decided_wall=self._wall_clock(),
            reasons=decision.reasons,
            bad_revision=bad_revision,
        )
        if run_id is not None:
            run.run_id = run_id
        self.runs[params.key] = run
        self._changed(params, run)
        self._spawn(self._act(params, run, bad_revision), name=f"rollbackd:rollback:{params.key}")
        return run

    def resume(self, params: TargetParams, record: RunRecord) -> RollbackRun | None:
        """Finish a rollback a previous process (or leader) started, from its ``record``: the same
        run (id, decision time mapped to this loop's clock, reasons, revisions, changes so far).
        The action runs again (it is idempotent: work already done is found done, and listed from
        the record) and the verification starts afresh."""
        if not reaches(self._access, params.key) or self.in_progress(params.key):
            return None
        loop = asyncio.get_running_loop()
        # Wall clocks of two hosts (a fail-over) may disagree a little: never a decision in the future.
        elapsed = max(0.0, (self._wall_clock() - record.decided_at).total_seconds())
        run = RollbackRun(
            key=params.key,
            mode=record.mode,
            decided_at=loop.time() - elapsed,
            resumed=True,
            run_id=record.run_id,
            decided_wall=record.decided_at,
            reasons=record.reasons,
            bad_revision=record.bad_revision,
            started_event=record.started_event,
            started_event_id=record.started_event_id,
            prior_changes=record.changes,
        )
        self.runs[params.key] = run
        logger.warning(
            "resuming a rollback left unfinished",
            extra={"target": params.key, "mode": run.mode, "run_id": run.run_id, "decided_s_ago": elapsed},
        )
        self._changed(params, run)
        self._spawn(self._act(params, run, record.bad_revision), name=f"rollbackd:rollback:{params.key}")
        return run

    def _spawn(self, work: Coroutine[Any, Any, None], *, name: str) -> None:
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self, timeout_s: float | None = STOP_TIMEOUT_S) -> None:
        """Stop the runs and dry-run plans under way, waiting up to ``timeout_s`` for them (a run's
        record stays in the store: the next process, or leader, resumes it)."""
        tasks, self._tasks = self._tasks, set()
        await stop_tasks(tasks, timeout_s=timeout_s)

    async def _plan(self, params: TargetParams, bad_revision: int | None) -> None:
        assert self._access is not None
        try:
            result = await self._access.action(params, bad_revision=bad_revision).run(dry_run=True)
        except Exception:  # a defect in planning is logged, never raised into the daemon
            logger.exception("dry-run plan crashed", extra={"target": params.key})
            return
        self._planned[params.key] = result
        logger.warning(
            "dry-run: would roll back with %s: %s",
            result.action,
            "; ".join(c.describe() for c in result.changes) or result.reason,
            extra={"target": params.key, "action": result.action, "outcome": result.outcome.value},
        )

    async def _act(self, params: TargetParams, run: RollbackRun, bad_revision: int | None) -> None:
        """Carry out the run's action; a defect anywhere in it ends the run (as failed, when it had
        not got further than acting), never the daemon."""
        try:
            await self._act_unguarded(params, run, bad_revision)
        except Exception:
            logger.exception("rollback run crashed", extra={"target": run.key})
            if run.phase is Phase.ACTING:
                run.phase = Phase.ACTION_FAILED
                self._finish(params, run, asyncio.get_running_loop().time())

    async def _act_unguarded(self, params: TargetParams, run: RollbackRun, bad_revision: int | None) -> None:
        assert self._access is not None
        loop = asyncio.get_running_loop()
        if self._before_acting is not None and not await self._before_acting(params, run):
            run.action = ActionResult(
                action="none",
                target=run.key,
                outcome=ActionOutcome.FAILED,
                reason="not started: its start could not be recorded (the store is not open)",
            )
            run.phase = Phase.ACTION_FAILED
            self._finish(params, run, loop.time())
            logger.error("rollback not started: %s", run.action.reason, extra={"target": run.key})
            return
        logger.warning("rolling back", extra={"target": run.key, "mode": run.mode})
        recorder = None if self._record is None else _RunRecorder(self._record, params, run)
        try:
            why = RollbackWhy(decision=run.mode, reason="; ".join(run.reasons), run_id=run.run_id,
                              revision=None if bad_revision is None else str(bad_revision))
            action = self._access.action(params, bad_revision=bad_revision, why=why)
            result = await action.run(
                dry_run=False, recorder=recorder, progress=lambda waiting: _set_waiting(run, waiting)
            )
        except Exception as exc:  # a defect, not an API error: never leave the run "acting"
            logger.exception("rollback action crashed", extra={"target": run.key})
            result = ActionResult(
                action="unknown",
                target=run.key,
                outcome=ActionOutcome.FAILED,
                reason=f"action crashed: {exc!r}",
            )
        run.waiting = None
        run.action = result = with_prior_changes(result, run.prior_changes)
        run.acted_at = loop.time()
        fields = {
            "target": run.key,
            "action": result.action,
            "outcome": result.outcome.value,
            "changes": [c.describe() for c in result.changes],
            "api_s": round(result.api_s, 3),
            "wait_s": round(result.wait_s, 3),
        }
        if result.outcome is ActionOutcome.REFUSED:
            run.phase = Phase.REFUSED
            self._finish(params, run, loop.time())
            logger.error("rollback refused: %s", result.reason, extra=fields)
            return
        if not result.ok:
            run.phase = Phase.ACTION_FAILED
            self._finish(params, run, loop.time())
            logger.error("rollback failed: %s", result.reason, extra=fields)
            return
        logger.warning("rollback done, verifying: %s", result.reason, extra=fields)
        run.phase = Phase.VERIFYING
        run.verifier = Verifier(
            params, started_at=loop.time(), window_s=self._window_s, max_wait_s=self._max_wait_s
        )
        self._changed(params, run)

    def verifying(self) -> list[str]:
        return [key for key, run in self.runs.items() if run.phase is Phase.VERIFYING]

    async def refresh_availability(self, params: TargetParams) -> None:
        run = self.runs.get(params.key)
        if run is None or run.phase is not Phase.VERIFYING or self._access is None:
            return
        try:
            run.available = await self._access.serving_available(params)
        except Exception:
            logger.warning("could not read availability", exc_info=True, extra={"target": params.key})
            run.available = None

    def feed(self, params: TargetParams, obs: Observation) -> VerificationResult | None:
        """One tick of verification for ``params.key``, if it is being verified."""
        run = self.runs.get(params.key)
        if run is None or run.phase is not Phase.VERIFYING or run.verifier is None:
            return None
        serving, health = serving_side(params.strategy, obs)
        result = run.verifier.observe(obs.t, serving, health, available=run.available)
        run.verification = result
        if result.status is VerificationStatus.PENDING:
            return result
        run.phase = (
            Phase.VERIFIED if result.status is VerificationStatus.VERIFIED else Phase.VERIFICATION_FAILED
        )
        self._finish(params, run, obs.t)
        fields = {
            "target": run.key,
            "duration_s": run.duration_s,
            "within_runbook_target": run.within_runbook_target,
        }
        if run.phase is Phase.VERIFIED:
            logger.warning("rollback verified: %s", result.reasons[0], extra=fields)
        else:
            logger.error("rollback verification failed, escalating: %s", result.reasons[0], extra=fields)
        return result

    def _finish(self, params: TargetParams, run: RollbackRun, t: float) -> None:
        run.finished_at = t
        run.verifier = None
        self._changed(params, run)
        if self._on_finished is not None:
            try:
                self._on_finished(params, run)
            except Exception:
                logger.exception("could not finish a rollback's bookkeeping", extra={"target": run.key})

    def _changed(self, params: TargetParams, run: RollbackRun) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change(params, run)
        except Exception:  # telling about it must never stop the rollback itself
            logger.exception("could not announce a rollback phase", extra={"target": run.key})
