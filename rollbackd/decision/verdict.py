"""rollbackd's judgement for a partner that rolls releases out itself (Argo Rollouts, Flagger).

A partner asks "should this release go?" and gets one of three answers, from the target's latest
:class:`~rollbackd.model.Decision`, as a pure function:

- ``fail``: the runbook decided to roll the release back. That is a rollback decision (a dry-run
  one too), or one that only rollbackd's limits on *its own* acting kept from an action: a standby
  replica, the audit trail down, the target's cooldown, the hourly cap (``blocked_by`` in
  :data:`OWN_ACTING_LIMITS`), or a rollback of the target already under way. A partner that asks
  acts itself; those limits are about rollbackd's actions, not about the release;
- ``pass``: no breach, with enough data to say so (no breach episode open, the latest interval
  conclusive and within the SLO), or a release accepted (by an operator, or after
  ``policy.accept_after_s``: see :mod:`rollbackd.decision.lifetime`);
- ``inconclusive``: everything else: no decision yet, a decision older than the staleness bound,
  not enough data, a breach still being attributed or within its controlled grace, a proven breach
  the runbook does not roll back for (the baseline is as bad, rollback risk too high, a newer
  rollout progressing), a fix-forward hold, or the global freeze (a person asked that nothing be
  rolled back automatically; a partner pauses on ``inconclusive``, it does not roll back).

So ``fail`` is exactly "rollbackd would roll this release back", and never a guess on missing data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rollbackd.model import Decision, Outcome

#: What keeps rollbackd itself from acting on a rollback decision, not the release from going.
OWN_ACTING_LIMITS = frozenset({"standby", "store", "cooldown", "rate-limit"})

#: A rollback of the target is already under way: the runbook decided it.
ROLLBACK_IN_PROGRESS = "rollback-in-progress"

#: How many evaluation intervals old a decision may be before it is no answer any more.
STALE_AFTER_INTERVALS = 3.0


class Verdict(enum.StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True)
class PartnerVerdict:
    """The answer for one target: the ``verdict``, why (``reasons``, people's words), and the
    decision it comes from (``decision_t`` on the loop clock, ``None`` before the first one;
    ``outcome`` and ``blocked_by`` as the decision had them)."""

    verdict: Verdict
    reasons: tuple[str, ...]
    decision_t: float | None = None
    outcome: str | None = None
    blocked_by: str | None = None
    rollback: bool = False

    @property
    def would_roll_back(self) -> bool:
        return self.verdict is Verdict.FAIL


def partner_verdict(decision: Decision | None, *, now: float, interval_s: float) -> PartnerVerdict:
    """The verdict of ``decision`` (the target's latest), asked at loop time ``now``; a decision
    more than :data:`STALE_AFTER_INTERVALS` x ``interval_s`` old is ``inconclusive``."""
    if decision is None:
        return PartnerVerdict(Verdict.INCONCLUSIVE, ("no evaluation of this target yet",))

    def of(verdict: Verdict, reasons: tuple[str, ...]) -> PartnerVerdict:
        return PartnerVerdict(verdict, reasons, decision_t=decision.t, outcome=decision.outcome.value,
                              blocked_by=decision.blocked_by, rollback=decision.rollback)

    age = now - decision.t
    limit = STALE_AFTER_INTERVALS * interval_s
    if age > limit:
        why = (f"the latest evaluation is {age:.0f}s old (more than {STALE_AFTER_INTERVALS:g} intervals of "
               f"{interval_s:g}s): no current judgement")
        return of(Verdict.INCONCLUSIVE, (why, *decision.reasons))
    decided = decision.blocked_by in OWN_ACTING_LIMITS or decision.blocked_by == ROLLBACK_IN_PROGRESS
    if decision.rollback or decided:
        return of(Verdict.FAIL, decision.reasons)
    evidence = decision.evidence
    healthy = (
        decision.episode is None
        and decision.outcome is Outcome.NONE
        and decision.blocked_by is None
        and evidence is not None
        and not evidence.inconclusive
        and not evidence.breached
    )
    if healthy or decision.blocked_by == "accepted":
        return of(Verdict.PASS, decision.reasons)
    return of(Verdict.INCONCLUSIVE, decision.reasons)
