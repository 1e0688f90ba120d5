"""One rollback run, its phases, and what the daemon needs from Kubernetes to carry it out.

:class:`RollbackRun` is one rollback of one target from decision to verdict (its phases are
:class:`Phase`); the daemon drives it (:mod:`rollbackd.daemon.rollbacks`) and the events tell it
(:mod:`rollbackd.events.build`), so it lives below both. :class:`TargetAccess` is the protocol of
the daemon's access to Kubernetes (facts, actions, availability per target); a
:class:`PartialAccess` reaches only some targets (see :func:`reaches`).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from rollbackd.actions.base import ActionResult, Change, RollbackAction, RollbackWhy, Waiting
from rollbackd.decision.facts import ClusterFacts
from rollbackd.params import TargetParams
from rollbackd.runrecord import RecordedChange, RunRecord
from rollbackd.verification import RUNBOOK_ROLLBACK_TARGET_S, VerificationResult, Verifier


class Phase(enum.StrEnum):
    ACTING = "acting"
    VERIFYING = "verifying"
    VERIFIED = "verified"
    VERIFICATION_FAILED = "verification-failed"
    ACTION_FAILED = "action-failed"
    REFUSED = "refused"

    @property
    def active(self) -> bool:
        return self in (Phase.ACTING, Phase.VERIFYING)


class TargetAccess(Protocol):
    """What the daemon needs from Kubernetes for its targets (found by ``params.key``);
    :class:`~rollbackd.actions.targets.KubeTargets` is the implementation."""

    async def facts(self, params: TargetParams, *, loop_now: float, fresh: bool = False) -> ClusterFacts:
        """Risk, holds, revision and rollback target as the cluster shows them: the access may
        answer from a recent read (its own reuse rule, e.g. ``kubernetes.facts_max_age_s``)
        unless ``fresh``, which always reads now."""
        ...

    def facts_read_at(self, key: str) -> float | None:
        """The loop time of the read behind the latest facts of ``key``."""
        ...

    def action(
        self, params: TargetParams, *, bad_revision: int | None = None, why: RollbackWhy | None = None
    ) -> RollbackAction:
        """The rollback action for the target's strategy; ``bad_revision`` is the candidate revision
        that was judged (a Deployment undo acts only while that revision still runs); ``why`` the
        decision, for a lever that is told it (a command; ``None`` for a dry-run plan)."""
        ...

    async def serving_available(self, params: TargetParams) -> bool | None:
        """Whether the version the target was rolled back to is fully available."""
        ...


@runtime_checkable
class PartialAccess(Protocol):
    """A :class:`TargetAccess` that reaches only some targets (without Kubernetes: those whose
    lever needs none); the others are decided on only, as without any access."""

    def reaches(self, key: str) -> bool:
        """Whether target ``key`` can be acted on through this access."""
        ...

    def summary(self) -> str:
        """Which targets it reaches and which not, in words (the start-up log, ``/readyz``)."""
        ...


def reaches(access: TargetAccess | None, key: str) -> bool:
    """Whether target ``key`` can be acted on through ``access`` (``None``: none can)."""
    return access is not None and (not isinstance(access, PartialAccess) or access.reaches(key))


def _new_run_id() -> str:
    return str(uuid.uuid4())


@dataclass(slots=True)
class RollbackRun:
    """One rollback of one target, from decision to verdict (across restarts and fail-overs: a run
    taken over keeps its ``run_id``, decision time and reasons)."""

    key: str
    mode: str
    #: When the rollback was decided, on the event loop's clock (for a run taken over: the
    #: original decision's wall-clock time mapped to this loop's clock).
    decided_at: float
    phase: Phase = Phase.ACTING
    action: ActionResult | None = None
    acted_at: float | None = None
    verification: VerificationResult | None = None
    finished_at: float | None = None
    verifier: Verifier | None = field(default=None, repr=False)
    available: bool | None = None
    #: Taken over from a previous process or leader (found in the store).
    resumed: bool = False
    #: Unique per run; the same in every ``rollback.*`` event of the run and in its record.
    run_id: str = field(default_factory=_new_run_id)
    #: When the rollback was decided, on the wall clock (what events report as ``decided_at``).
    decided_wall: datetime | None = None
    #: The decision's reasons.
    reasons: tuple[str, ...] = ()
    #: The revision judged bad (reported as ``from_revision``; what a Deployment undo acts on).
    bad_revision: int | None = None
    #: The run's ``rollback.started`` event, once built (CloudEvents JSON), and its id.
    started_event: Mapping[str, Any] | None = field(default=None, repr=False)
    started_event_id: str | None = None
    #: The changes a previous process recorded for this run (made, or being made when it stopped).
    prior_changes: tuple[RecordedChange, ...] = ()
    #: The changes this process's action made, and those of the step it is applying.
    changes_made: list[Change] = field(default_factory=list)
    changes_pending: tuple[Change, ...] = ()
    #: What the action waits for right now (ready endpoints, available pods), since when.
    waiting: Waiting | None = None

    @property
    def duration_s(self) -> float | None:
        """From the decision to the verdict of the verification (or the action's failure)."""
        return None if self.finished_at is None else self.finished_at - self.decided_at

    @property
    def within_runbook_target(self) -> bool | None:
        """Whether the whole rollback took less than the runbook's 10 minutes."""
        duration = self.duration_s
        return None if duration is None else duration <= RUNBOOK_ROLLBACK_TARGET_S

    def record(self) -> RunRecord:
        """What a process taking this run over needs (the store's record of the run)."""
        return RunRecord(
            run_id=self.run_id,
            phase=self.phase.value,
            mode=self.mode,
            decided_at=self.decided_wall if self.decided_wall is not None else datetime.now(UTC),
            reasons=self.reasons,
            bad_revision=self.bad_revision,
            started_event_id=self.started_event_id,
            started_event=self.started_event,
            changes=(
                *self.prior_changes,
                *(RecordedChange(c, made=True) for c in self.changes_made),
                *(RecordedChange(c, made=False) for c in self.changes_pending),
            ),
        )
