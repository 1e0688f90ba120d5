"""What a rollback action is: read the cluster, plan the changes, apply them, report every change.

Every action is idempotent: it plans from the objects as they are now, so running it twice, or
again after a crash half-way, ends in the same state (a second run plans nothing and reports
``already-done``). The plan is also what dry-run shows: the changes it would have made. A run
given a :class:`ChangeRecorder` writes each step's changes down before making them, so that a
process taking an interrupted rollback over can list what the one that stopped changed
(:func:`merge_changes` tells both lists as one).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class ActionOutcome(enum.StrEnum):
    DONE = "done"  # changes applied and the rolled-back-to version confirmed serving
    ALREADY_DONE = "already-done"  # nothing left to change
    PLANNED = "planned"  # dry-run: the plan, nothing applied
    REFUSED = "refused"  # cannot be done safely (e.g. no earlier revision): nothing changed
    FAILED = "failed"  # an API error or a timeout part-way; what was changed is listed


@dataclass(frozen=True, slots=True)
class Change:
    """One field of one object, before and after (the audit trail shows these)."""

    object: str  # kind/namespace/name, e.g. "Deployment/shop/checkout-canary"
    field: str  # e.g. "spec.replicas" or "metadata.annotations[nginx.ingress.kubernetes.io/canary-weight]"
    before: Any
    after: Any

    def describe(self) -> str:
        return f"{self.object} {self.field}: {self.before!r} -> {self.after!r}"


def merge_changes(*lists: Iterable[Change]) -> tuple[Change, ...]:
    """The changes of one rollback told by several lists, in order (e.g. what a stopped process
    recorded, then what the run that resumed it made): one per (object, field), with the earliest
    ``before`` and the latest ``after``, in the order each field was first changed."""
    merged: dict[tuple[str, str], Change] = {}
    for changes in lists:
        for change in changes:
            key = (change.object, change.field)
            first = merged.get(key)
            merged[key] = change if first is None else Change(change.object, change.field, first.before,
                                                              change.after)
    return tuple(merged.values())


@dataclass(frozen=True, slots=True)
class GitOpsHold:
    """A GitOps reconciler of the objects a rollback changes (see :mod:`rollbackd.actions.gitops`):
    its object, the action's objects it reconciles from Git, and what became of it."""

    reconciler: str  # "argocd" | "flux"
    object: str  # kind/namespace/name, e.g. "Application/argocd/shop"
    api_version: str  # e.g. "argoproj.io/v1alpha1"
    reconciles: tuple[str, ...]  # the action's objects it reconciles, e.g. ("Deployment/shop/web",)
    field: str  # the field that turns its reconciliation off, e.g. "spec.syncPolicy.automated"
    previous: Any  # that field's value before the rollback (None: absent)
    suspended: bool  # its reconciliation is off now (rollbackd turned it off, or it was off already)
    resume: str  # the command that resumes it as it was, once Git declares the good version


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What an action did (or would do, in dry-run), with timings."""

    action: str  # "canary-abort" | "blue-green-switch-back" | "deployment-undo"
    target: str  # namespace/name of the rollbackd target
    outcome: ActionOutcome
    reason: str
    changes: tuple[Change, ...] = ()
    #: Time spent issuing API requests (reads and writes), excluding waits for availability.
    api_s: float = 0.0
    #: Time spent waiting for the rolled-back-to version to be available / serving.
    wait_s: float = 0.0
    #: Revisions involved, when the action deals in revisions (deployment undo).
    from_revision: int | None = None
    to_revision: int | None = None
    details: dict[str, Any] = field(default_factory=dict, compare=False)
    #: The GitOps reconcilers of the changed objects: suspended before the first change, or the
    #: reason the action refused (gitops: refuse).
    gitops: tuple[GitOpsHold, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome in (ActionOutcome.DONE, ActionOutcome.ALREADY_DONE, ActionOutcome.PLANNED)


@dataclass(frozen=True, slots=True)
class RollbackWhy:
    """Why a rollback runs, for a lever that is told (a command's environment): the decision's
    outcome (``immediate``, ``controlled``, ``manual``), its reasons joined, the revision (or
    release) judged bad when known, and the run's id."""

    decision: str
    reason: str
    revision: str | None = None
    run_id: str = ""


@dataclass(frozen=True, slots=True)
class Waiting:
    """What a running action waits for (e.g. ready endpoints of the healthy colour), since when
    (event-loop time)."""

    what: str
    since: float


#: Told when an action starts waiting (a :class:`Waiting`) and when the wait ends (``None``).
Progress = Callable[[Waiting | None], None]


class ChangeRecorder(Protocol):
    """Where a run of an action writes down each change before it is made, and after (the store's
    record of the rollback, so that a process that takes the rollback over knows what was done)."""

    async def intend(self, changes: Sequence[Change]) -> bool:
        """``changes`` are about to be made: ``True`` once that is written down; ``False`` when it
        cannot be, and then they are not made."""
        ...

    async def made(self, intended: Sequence[Change], made: Sequence[Change]) -> None:
        """The step that intended ``intended`` is done and changed ``made`` (none of them, when it
        found its object already as wanted)."""
        ...


class RollbackAction(Protocol):
    """One kind of rollback, bound to one target."""

    @property
    def name(self) -> str:
        """The kind of rollback, e.g. ``canary-abort`` (a class's constant or a wrapper's copy)."""
        ...

    async def run(
        self, *, dry_run: bool, recorder: ChangeRecorder | None = None, progress: Progress | None = None
    ) -> ActionResult:
        """Plan from the current objects; unless ``dry_run``, apply the plan and wait (bounded) until
        the rolled-back-to version serves, telling ``progress`` when each wait starts and ends.
        Each step's changes go to ``recorder`` before the step is applied (a step whose changes
        cannot be recorded is not applied: ``FAILED``) and after.
        Never raises for API errors: they become ``FAILED`` results listing what was changed
        before the error."""
        ...
