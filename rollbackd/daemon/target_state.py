"""Where a target stands now, in the words of its retained status (``healthy``, ``degraded``,
``rolling-back``, ``verifying``, ``rolled-back``, ...; :class:`~rollbackd.events.model.TargetState`):
what ``rollbackd_target_state`` exports, worked out from the latest decision and the latest
rollback run, without I/O.

A rollback under way is the target's state (``rolling-back`` while its action runs, then
``verifying``). Once it ended, its verdict (``rolled-back``, ``verification-failed``,
``rollback-failed``) stays the target's state until a conclusive decision taken after it says
otherwise, as the events tell it: after a canary abort the canary has no traffic, its decisions are
inconclusive, and the target stays ``rolled-back`` until the next release is judged.
"""

from __future__ import annotations

from rollbackd.events.model import TargetState, decision_state
from rollbackd.model import Decision, Outcome
from rollbackd.run import Phase, RollbackRun

#: The state a rollback run puts its target in, by phase.
RUN_STATES = {
    Phase.ACTING: TargetState.ROLLING_BACK,
    Phase.VERIFYING: TargetState.VERIFYING,
    Phase.VERIFIED: TargetState.ROLLED_BACK,
    Phase.VERIFICATION_FAILED: TargetState.VERIFICATION_FAILED,
    Phase.ACTION_FAILED: TargetState.ROLLBACK_FAILED,
    Phase.REFUSED: TargetState.ROLLBACK_FAILED,
}


def current_state(decision: Decision | None, run: RollbackRun | None) -> TargetState:
    """The state of a target whose latest decision is ``decision`` (``None``: not evaluated yet,
    told as ``inconclusive``) and whose latest rollback is ``run`` (``None``: none)."""
    if run is not None:
        if run.phase.active:
            return RUN_STATES[run.phase]
        ended = run.finished_at if run.finished_at is not None else run.decided_at
        if decision is None or decision.t <= ended or decision.outcome is Outcome.INCONCLUSIVE:
            return RUN_STATES[run.phase]
    if decision is None:
        return TargetState.INCONCLUSIVE
    evidence = decision.evidence
    return decision_state(
        outcome=decision.outcome.value,
        rollback=decision.rollback,
        dry_run=decision.dry_run,
        escalate=decision.escalate,
        blocked_by=decision.blocked_by,
        episode_open=decision.episode is not None,
        breached=evidence is not None and evidence.breached,
    )
