"""Rollbacks that stay rolled back: any rollback action, guarded against GitOps reconcilers.

:class:`GitOpsGuard` wraps a :class:`~rollbackd.actions.base.RollbackAction` (a canary abort, a
blue-green switch-back, a Deployment undo, or any other) and, before its first change:

1. plans the action (its dry run): the objects it is about to change;
2. reads each of them and finds who reconciles it from Git (:mod:`rollbackd.actions.reconcilers`:
   Argo CD's tracking annotation or instance label, Flux's labels), then reads each reconciler's
   own object (an Argo CD Application, a Flux Kustomization or HelmRelease);
3. acts by the target's ``gitops`` mode, when a reconciler would put the bad version back on its
   own (automated sync on, not suspended):

   - ``suspend``: one step per reconciler, recorded like every change before it is made (so a
     process that takes the rollback over knows of it) and skipped when already so: the
     Application's ``spec.syncPolicy.automated`` removed (the value before is in the change), the
     Flux object's ``spec.suspend`` set to ``true``; then the action runs;
   - ``refuse``: the action does not run; the result is ``refused``, naming the reconciler (the
     daemon escalates);
   - ``ignore``: the action runs as if there were no reconciler (no read at all).

A reconciler's object that cannot be read or changed (it does not exist, its CRD is not installed,
RBAC forbids it: the message names the verb, resource and namespace) means no rollback change at
all: a ``refused`` or ``failed`` result, which the daemon escalates. The result lists the
reconcilers (:attr:`~rollbackd.actions.base.ActionResult.gitops`) and its reason ends with
:data:`~rollbackd.actions.reconcilers.REVERT_IN_GIT`: the rollback holds only until someone
resumes reconciliation, and Git still declares the bad version.

Objects of a kind it cannot read (:data:`_READERS`) are not looked at
(logged as a warning): the rollback goes ahead. Nor are changes of an object's ``status`` (an Argo
Rollouts Rollout's ``status.abort``): Git declares no status, and no reconciler puts one back.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from typing import Any

from rollbackd.actions.base import (
    ActionOutcome,
    ActionResult,
    Change,
    ChangeRecorder,
    GitOpsHold,
    Progress,
    RollbackAction,
)
from rollbackd.actions.reconcilers import (
    REVERT_IN_GIT,
    Reconciler,
    Tracking,
    automation_of,
    reconcilers_of,
    reconciling,
    resume_command,
    suspension_change,
    suspension_patch,
)
from rollbackd.actions.steps import DEFAULT_SETTINGS, ActionRun, ActionSettings, Refusal, Step
from rollbackd.config.settings import GitOpsMode
from rollbackd.kube import KubeClient, Obj, objects

#: How the objects rollback actions change are read, by the kind a change names them with. (An
#: Argo Rollouts Rollout's abort changes its status only, which is never looked at.)
_READERS: Mapping[str, Callable[..., Awaitable[Obj]]] = {
    "Deployment": objects.get_deployment,
    "Service": objects.get_service,
    "Ingress": objects.get_ingress,
    **{
        resource.kind: partial(objects.get_custom, resource=resource)
        for resource in (objects.HTTPROUTES, objects.GRPCROUTES, objects.VIRTUALSERVICES)
    },
}

logger = logging.getLogger(__name__)


def _what_stops(reconciler: Reconciler) -> str:
    return "automated sync off" if reconciler.tool == "argocd" else "suspended"


def _what_runs(reconciler: Reconciler, value: Any) -> str:
    if reconciler.tool == "argocd":
        return f"with automated sync on (spec.syncPolicy.automated: {value!r})"
    return "not suspended"


def _listing(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class GitOpsGuard:
    """``action`` guarded against the GitOps reconcilers of the objects it changes (see the module
    docstring).

    - ``kube``: an open client; ``target``: the rollbackd target's key, for the result;
    - ``mode``: ``suspend``, ``refuse`` or ``ignore``;
    - ``tracking``: how Argo CD marks what it reconciles;
    - ``settings``: retries of the reads and writes of the reconcilers' objects.
    """

    def __init__(
        self,
        action: RollbackAction,
        *,
        kube: KubeClient,
        target: str,
        mode: GitOpsMode,
        tracking: Tracking,
        settings: ActionSettings = DEFAULT_SETTINGS,
    ) -> None:
        self.action = action
        self.name = action.name
        self.kube = kube
        self.target = target
        self.mode = mode
        self.tracking = tracking
        self.settings = settings

    async def run(
        self, *, dry_run: bool, recorder: ChangeRecorder | None = None, progress: Progress | None = None
    ) -> ActionResult:
        """Run the action, suspending its objects' reconcilers first (or refusing, by ``mode``)."""
        if self.mode == "ignore":
            return await self.action.run(dry_run=dry_run, recorder=recorder, progress=progress)
        plan = await self.action.run(dry_run=True)
        if plan.outcome is not ActionOutcome.PLANNED:
            # Nothing to change (already done), or the action cannot be done: no reconciler can undo it.
            if dry_run:
                return plan
            return await self.action.run(dry_run=False, recorder=recorder, progress=progress)
        run = ActionRun(kube=self.kube, action=self.name, target=self.target, settings=self.settings,
                        recorder=recorder, progress=progress)
        found: list[GitOpsHold] = []

        async def body() -> ActionResult:
            return await self._guarded(run, plan, found, dry_run=dry_run, recorder=recorder,
                                       progress=progress)

        result = await run.guarded(body)
        if not result.gitops and found:  # refused, or failed before the action ran
            result = dataclasses.replace(result, gitops=tuple(found))
        return dataclasses.replace(result, api_s=result.api_s + plan.api_s)

    async def _guarded(
        self,
        run: ActionRun,
        plan: ActionResult,
        found: list[GitOpsHold],
        *,
        dry_run: bool,
        recorder: ChangeRecorder | None,
        progress: Progress | None,
    ) -> ActionResult:
        owners = await self._reconcilers(run, plan.changes)
        states: dict[Reconciler, Obj] = {}
        for reconciler, reconciled in owners.items():
            states[reconciler] = await run.required(
                f"{reconciler.describe()}, which reconciles {_listing(reconciled)} from Git,",
                partial(objects.get_custom, self.kube, reconciler.resource, namespace=reconciler.namespace,
                        name=reconciler.name),
            )
        active = [r for r in owners if reconciling(r, states[r])]
        found[:] = [self._hold(r, owners[r], states[r]) for r in owners]
        if self.mode == "refuse" and active:
            raise Refusal(
                "; ".join(
                    f"{_listing(owners[r])} is reconciled from Git by {r.describe()} "
                    f"{_what_runs(r, automation_of(r, states[r]))}, which would put the bad version back"
                    for r in active
                )
                + f": gitops is refuse for this target, so rollbackd does not roll back. {REVERT_IN_GIT}"
            )
        steps = []
        for reconciler in active:
            change = suspension_change(reconciler, states[reconciler])
            assert change is not None  # it reconciles: there is something to turn off
            steps.append(Step(changes=(change,), apply=partial(self._suspend, reconciler)))
        if dry_run:
            planned = (*(change for step in steps for change in step.changes), *plan.changes)
            reason = plan.reason
            if steps:
                reason = (f"{reason}, after suspending {_listing([r.describe() for r in active])} "
                          f"({len(steps)} change(s) more)")
            # The plan's own API time is added by run(), this run's reads here.
            return dataclasses.replace(plan, changes=planned, reason=reason, gitops=tuple(found),
                                       api_s=run.api_s)
        for step in steps:
            await run.apply(step)
        if owners:
            logger.warning(
                "the objects of the rollback are reconciled from Git; reconciliation is off: %s",
                "; ".join(r.describe() for r in owners),
                extra={"target": self.target, "action": self.name},
            )
        result = await self.action.run(dry_run=False, recorder=recorder, progress=progress)
        holds = tuple(dataclasses.replace(hold, suspended=True) for hold in found)
        return self._combined(run, result, holds, list(owners))

    async def _reconcilers(self, run: ActionRun, changes: Sequence[Change]) -> dict[Reconciler, list[str]]:
        """The reconcilers of the objects ``changes`` name, each with the objects it reconciles."""
        owners: dict[Reconciler, list[str]] = {}
        seen: set[str] = set()
        for change in changes:
            if change.object in seen or change.field.split(".", 1)[0] == "status":
                continue  # seen already; or a status (a Rollout's abort): Git declares no status
            seen.add(change.object)
            kind, _, rest = change.object.partition("/")
            namespace, _, name = rest.partition("/")
            read = _READERS.get(kind)
            if read is None or not namespace or not name:
                logger.warning("cannot tell whether %s is reconciled from Git (an object kind rollbackd "
                               "does not know): not looked at", change.object,
                               extra={"target": self.target, "action": self.name})
                continue
            obj = await run.optional(partial(read, self.kube, namespace=namespace, name=name))
            if obj is None:
                continue  # gone: the action copes (and nothing will put it back that it changes)
            for reconciler in reconcilers_of(obj, kind=kind, tracking=self.tracking):
                owners.setdefault(reconciler, []).append(change.object)
        return owners

    def _hold(self, reconciler: Reconciler, reconciled: Sequence[str], obj: Obj) -> GitOpsHold:
        previous = automation_of(reconciler, obj)
        return GitOpsHold(
            reconciler=reconciler.tool,
            object=reconciler.object,
            api_version=reconciler.resource.api_version,
            reconciles=tuple(reconciled),
            field=reconciler.field,
            previous=previous,
            suspended=not reconciling(reconciler, obj),
            resume=resume_command(reconciler, previous),
        )

    async def _suspend(self, reconciler: Reconciler) -> Sequence[Change]:
        """Turn ``reconciler`` off if it still reconciles (read again, decided again); the change made."""
        current = await objects.get_custom(self.kube, reconciler.resource, namespace=reconciler.namespace,
                                           name=reconciler.name)
        change = suspension_change(reconciler, current)
        if change is None:
            return ()
        await objects.patch_custom(self.kube, reconciler.resource, namespace=reconciler.namespace,
                                   name=reconciler.name, patch=suspension_patch(reconciler, current))
        return (change,)

    def _combined(
        self,
        run: ActionRun,
        result: ActionResult,
        holds: tuple[GitOpsHold, ...],
        owners: Sequence[Reconciler],
    ) -> ActionResult:
        """The action's result, telling the suspensions too."""
        suspended = tuple(run.changes)
        outcome = result.outcome
        if suspended and outcome is ActionOutcome.ALREADY_DONE:
            outcome = ActionOutcome.DONE
        elif suspended and outcome is ActionOutcome.REFUSED:
            outcome = ActionOutcome.FAILED
        reason = result.reason
        if owners:
            off = _listing([f"{r.describe()} ({_what_stops(r)})" for r in owners])
            reason = f"{reason}; reconciliation from Git is off: {off}. {REVERT_IN_GIT}"
        return dataclasses.replace(
            result,
            outcome=outcome,
            reason=reason,
            changes=(*suspended, *result.changes),
            api_s=result.api_s + run.api_s,
            gitops=holds,
        )
