"""Undo a Deployment to an earlier revision: what ``kubectl rollout undo`` does, through the API.

The Deployment's history is its ReplicaSets (found by ``ownerReferences`` uid), each numbered by
its ``deployment.kubernetes.io/revision`` annotation. Undoing puts an earlier ReplicaSet's pod
template back into the Deployment's ``spec.template`` (without the ``pod-template-hash`` label the
controller adds, as kubectl does; the Deployment's annotations are left alone, so the revision
annotations are not copied), and the deployment controller does the rest: it scales that
ReplicaSet back up and gives it a *new*, highest revision number.

That renumbering is why the action is told which revision was judged bad (``bad_revision``)
rather than to "go back one": after an undo from revision 3 to 2, the restored template is
revision 4 and "the previous revision" is 3 -- the bad one. So a run acts only while the
Deployment still runs the bad revision's template; once it runs anything else (this undo done, or
a newer rollout on top) the plan is empty and the run only confirms the Deployment is available.
Without ``bad_revision`` the revision running when the run starts is taken as the bad one, which
is right for one run but not for a second: callers that may run the action again pass it.

The target is the highest revision below the bad one, or ``to_revision`` when given. The action
refuses when there is no such revision, when the Deployment is paused (its rollout would not
start), or when the Deployment does not exist. Done means what ``kubectl rollout status`` waits
for: the restored template rolled out, no old pod left, every replica available.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.steps import (
    ActionRun,
    KubeAction,
    Refusal,
    Step,
    WaitTimeout,
    merge_diff,
    progress_deadline_exceeded,
)
from rollbackd.kube import Obj, objects

ACTION = "deployment-undo"


def comparable_template(template: Mapping[str, Any] | None) -> Obj:
    """A pod template without the ``pod-template-hash`` label: what two revisions have in common
    when they run the same pods (kubectl's ``equalIgnoreHash``)."""
    stripped = copy.deepcopy(dict(template or {}))
    labels = (stripped.get("metadata") or {}).get("labels")
    if isinstance(labels, dict):
        labels.pop(objects.POD_TEMPLATE_HASH_LABEL, None)
    return stripped


def template_of(obj: Mapping[str, Any]) -> Obj:
    """``spec.template`` of a Deployment or ReplicaSet, without the ``pod-template-hash`` label."""
    return comparable_template((obj.get("spec") or {}).get("template"))


def summary(revision: int | None, template: Mapping[str, Any]) -> str:
    """``revision 3 (web=shop/web:1.2)``: a template as people recognise it, by its images."""
    containers = (template.get("spec") or {}).get("containers") or []
    images = ", ".join(f"{c.get('name', '?')}={c.get('image', '?')}" for c in containers)
    label = f"revision {revision}" if revision is not None else "the current template"
    return f"{label} ({images})" if images else label


@dataclass(frozen=True, kw_only=True, eq=False)
class DeploymentUndo(KubeAction):
    """Roll a Deployment back from its bad revision to an earlier one.

    Besides :class:`~rollbackd.actions.steps.KubeAction`'s ``kube``, ``target``, ``namespace``
    and ``settings``:

    - ``deployment``: the Deployment;
    - ``bad_revision``: the revision that was judged bad (see the module docstring); default: the
      one running when the run starts;
    - ``to_revision``: go back to this revision rather than the one just below the bad one.
    """

    name = ACTION

    deployment: str
    bad_revision: int | None = None
    to_revision: int | None = None

    def _fields(self) -> dict[str, Any]:
        return {"from_revision": self.bad_revision, "to_revision": self.to_revision}

    async def _get(self) -> Obj:
        return await self._deployment(self.deployment)

    async def _run(self, run: ActionRun, fields: dict[str, Any], *, dry_run: bool) -> ActionResult:
        deployment = await run.required(f"the Deployment {self.namespace}/{self.deployment}", self._get)
        owned = await run.call(lambda: objects.owned_replicasets(self.kube, deployment=deployment))
        history: dict[int, Obj] = {}
        for rs in owned:
            number = objects.revision(rs)
            if number is not None:
                history[number] = rs
        current = objects.revision(deployment)
        bad = self.bad_revision if self.bad_revision is not None else current
        if bad is None:
            raise Refusal(f"the Deployment {self.namespace}/{self.deployment} has no revision yet "
                          f"(no {objects.REVISION_ANNOTATION} annotation): nothing to undo")
        fields["from_revision"] = bad
        bad_rs = history.get(bad)

        def runs_bad(obj: Mapping[str, Any]) -> bool:
            if bad_rs is not None:
                return template_of(obj) == template_of(bad_rs)
            return objects.revision(obj) == bad  # its ReplicaSet is gone: go by the number

        if not runs_bad(deployment):
            fields["to_revision"] = current
            reason = (f"the Deployment no longer runs revision {bad}: it runs "
                      f"{summary(current, template_of(deployment))}")
            if dry_run:
                return run.result(ActionOutcome.ALREADY_DONE, reason, **fields)
            await run.wait_until(f"the Deployment {self.namespace}/{self.deployment} to be fully available",
                                 self._available)
            return run.result(ActionOutcome.ALREADY_DONE, reason + ", fully available", **fields)

        if deployment.get("spec", {}).get("paused"):
            raise Refusal(f"the Deployment {self.namespace}/{self.deployment} is paused: an undo would not "
                          f"roll out; resume it first (kubectl rollout resume)")
        kept = ", ".join(str(number) for number in sorted(history)) or "none"
        if self.to_revision is not None:
            if self.to_revision == bad:
                raise Refusal(f"revision {bad} is the one being rolled back; choose an earlier revision")
            chosen = history.get(self.to_revision)
            if chosen is None:
                raise Refusal(f"revision {self.to_revision} of the Deployment "
                              f"{self.namespace}/{self.deployment} does not exist (revisions kept: {kept})")
            to = self.to_revision
        else:
            earlier = [number for number in history if number < bad]
            if not earlier:
                raise Refusal(f"the Deployment {self.namespace}/{self.deployment} has no revision before "
                              f"{bad} to go back to (revisions kept: {kept})")
            to = max(earlier)
            chosen = history[to]
        fields["to_revision"] = to
        wanted = template_of(chosen)
        before = summary(bad, template_of(deployment))
        after = summary(to, wanted)
        planned = Change(self._named("Deployment", self.deployment), "spec.template", before, after)

        async def restore() -> Sequence[Change]:
            now = await self._get()
            if not runs_bad(now):
                return ()  # someone (a previous run) already moved it off the bad revision
            patch = {
                "metadata": {"resourceVersion": now["metadata"]["resourceVersion"]},  # else 409: re-read
                "spec": {"template": merge_diff(now.get("spec", {}).get("template") or {}, wanted)},
            }
            await objects.patch_deployment(self.kube, namespace=self.namespace, name=self.deployment,
                                           patch=patch, patch_type="merge")
            return (planned,)

        step = Step(changes=(planned,), apply=restore)
        if dry_run:
            return run.result(ActionOutcome.PLANNED, f"would undo revision {bad} to revision {to}",
                              changes=step.changes, **fields)
        await run.apply(step)
        restored: dict[str, Any] = {}

        async def rolled_out() -> bool:
            now = await self._get()
            restored["revision"] = objects.revision(now)
            if template_of(now) == wanted and progress_deadline_exceeded(now):
                raise WaitTimeout(f"the rollout of revision {to} exceeded its progress deadline")
            return template_of(now) == wanted and objects.rollout_complete(now)

        await run.wait_until(f"the Deployment {self.namespace}/{self.deployment} to roll out revision {to} "
                             f"and be fully available", rolled_out)
        return run.result(
            ActionOutcome.DONE,
            f"undid revision {bad} to revision {to}; the Deployment is fully available "
            f"(the restored template is now revision {restored.get('revision')})",
            details={"replicaset": chosen["metadata"].get("name"), "new_revision": restored.get("revision")},
            **fields,
        )

    async def _available(self) -> bool:
        return objects.rollout_complete(await self._get())
