"""Roll a configuration change back: put the previous data of the target's ConfigMaps back, then
restart the Deployments that use them the way ``kubectl rollout restart`` does.

Kubernetes keeps no history of a ConfigMap; rollbackd's store keeps the versions it saw. The
action is told, for each ConfigMap, the version judged bad (its ``resourceVersion``) and the data
to go back to (:class:`ConfigVersion`, the version before it):

- data that already is the previous data: nothing to restore there (a second run, or someone
  restored it by hand);
- a ConfigMap changed since the version judged bad, or deleted: someone else is working on it;
  it is never overwritten -- refused when nothing was changed yet, failed with the reason
  otherwise;
- a 409 on the write (it changed between the read and the write): the step re-reads and
  re-decides (:func:`~rollbackd.kube.retry.retrying`), so an edit made meanwhile is seen, never
  overwritten.

Then each Deployment of ``restart`` gets ``spec.template.metadata.annotations
[kubectl.kubernetes.io/restartedAt]`` set to the run's wall-clock time (RFC 3339): a new rollout of
the same pods, which read the restored data. Done means every restarted Deployment rolled out and
fully available (``kubectl rollout status``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.steps import (
    DEFAULT_SETTINGS,
    ActionFailed,
    ActionRun,
    ActionSettings,
    KubeAction,
    Refusal,
    Step,
    merge_diff,
    object_name,
)
from rollbackd.kube import KubeClient, KubeNotFound, Obj, objects
from rollbackd.model import RESTORED_FROM_ANNOTATION, ConfigMapVersion

ACTION = "config-restore"
#: The annotation ``kubectl rollout restart`` sets on the pod template.
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


class ConfigHistory(Protocol):
    """Where the versions of ConfigMaps rollbackd saw are kept (the store)."""

    async def config_versions(
        self, namespace: str, name: str, *, limit: int = 2
    ) -> Sequence[ConfigMapVersion]:
        """The newest ``limit`` versions of the ConfigMap, newest first."""
        ...


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """One ConfigMap to restore: its name, the ``resourceVersion`` judged bad, and the data (and
    ``resourceVersion``, for the record) of the version before it."""

    name: str
    bad_version: str
    data: Mapping[str, str]
    previous_version: str


def _changed_keys(
    current: Mapping[str, Any], wanted: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keys that differ, before and after (``None``: absent)."""
    keys = sorted(set(current) | set(wanted))
    differ = [key for key in keys if current.get(key) != wanted.get(key)]
    return ({key: current.get(key) for key in differ}, {key: wanted.get(key) for key in differ})


def restore_plan(namespace: str, name: str, kept: Sequence[ConfigMapVersion]) -> ConfigVersion:
    """What to restore from a ConfigMap's kept versions (newest first): the newest is the version
    judged bad, the one before it the data to go back to. :class:`Refusal` when there is nothing
    to go back to, or when the newest is itself a restore (its data is that of the version two
    back): going back would put back the version a rollback rolled away from."""
    where = f"the ConfigMap {namespace}/{name}"
    distinct: list[ConfigMapVersion] = []
    for version in kept:  # two replicas may both keep one version: one of each run of equal data
        if not distinct or dict(distinct[-1].data) != dict(version.data):
            distinct.append(version)
    kept = distinct
    if len(kept) < 2:
        raise Refusal(f"only {len(kept)} version of {where} was seen: no earlier data to go back to")
    if len(kept) >= 3 and dict(kept[0].data) == dict(kept[2].data):
        raise Refusal(
            f"{where} holds the data of its version {kept[2].resource_version} again (a rollback, or "
            f"someone, put it back): going back would put back the data of version {kept[1].resource_version}"
        )
    return ConfigVersion(name=name, bad_version=kept[0].resource_version, data=dict(kept[1].data),
                         previous_version=kept[1].resource_version)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ConfigRestore(KubeAction):
    """Restore the previous data of ConfigMaps, then restart the Deployments that read them.

    Besides :class:`~rollbackd.actions.steps.KubeAction`'s ``kube``, ``target``, ``namespace``
    and ``settings``:

    - ``configmaps``: the ConfigMaps to restore, each from the versions ``history`` kept
      (:func:`restore_plan`);
    - ``restart``: the Deployments to restart once the data is back;
    - ``wall_clock``: the time written in the restart annotation.
    """

    name = ACTION

    def __init__(
        self,
        *,
        kube: KubeClient,
        target: str,
        namespace: str,
        configmaps: Sequence[str],
        history: ConfigHistory,
        restart: Sequence[str] = (),
        settings: ActionSettings = DEFAULT_SETTINGS,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        super().__init__(kube=kube, target=target, namespace=namespace, settings=settings)
        self.configmaps = tuple(configmaps)
        self.history = history
        self.restart = tuple(restart)
        self._wall_clock = wall_clock

    def _where(self, name: str) -> str:
        return f"the ConfigMap {self.namespace}/{name}"

    async def _get(self, name: str) -> Obj:
        return await objects.get_configmap(self.kube, namespace=self.namespace, name=name)

    def _restore_step(self, version: ConfigVersion, current: Obj) -> Step | None:
        """The step that puts ``version``'s data back, or ``None`` when it is back already."""
        data = dict(current.get("data") or {})
        wanted = dict(version.data)
        if data == wanted:
            return None
        seen = str(objects.metadata_of(current).get("resourceVersion"))
        if seen != version.bad_version:
            raise Refusal(
                f"{self._where(version.name)} was changed by someone else after the version judged bad "
                f"(resourceVersion {seen}, judged {version.bad_version}): not overwriting their change"
            )
        before, after = _changed_keys(data, wanted)
        change = Change(object_name("ConfigMap", self.namespace, version.name), "data", before, after)

        async def apply() -> Sequence[Change]:
            try:
                now = await self._get(version.name)
            except KubeNotFound:
                raise ActionFailed(f"{self._where(version.name)} was deleted during the rollback") from None
            now_data = dict(now.get("data") or {})
            if now_data == wanted:
                return ()  # a previous attempt (its answer lost) or someone else restored it
            now_version = str(objects.metadata_of(now).get("resourceVersion"))
            if now_version != version.bad_version:
                raise ActionFailed(
                    f"{self._where(version.name)} was edited by someone else during the rollback "
                    f"(resourceVersion {now_version}, judged {version.bad_version}): not overwriting their "
                    "change"
                )
            patch = {
                "metadata": {
                    "resourceVersion": now_version,
                    "annotations": {RESTORED_FROM_ANNOTATION: version.bad_version},
                },
                "data": merge_diff(now_data, wanted),
            }
            await objects.patch_configmap(self.kube, namespace=self.namespace, name=version.name, patch=patch)
            return (change,)

        return Step(changes=(change,), apply=apply)

    def _restart_step(self, deployment: str, current: Obj, at: str) -> Step:
        annotations = (((current.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
            "annotations"
        ) or {}
        change = Change(object_name("Deployment", self.namespace, deployment),
                        f"spec.template.metadata.annotations[{RESTARTED_AT}]", annotations.get(RESTARTED_AT),
                        at)

        async def apply() -> Sequence[Change]:
            patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}
            await objects.patch_deployment(self.kube, namespace=self.namespace, name=deployment, patch=patch,
                                           patch_type="merge")
            return (change,)

        return Step(changes=(change,), apply=apply)

    async def _run(self, run: ActionRun, fields: dict[str, Any], *, dry_run: bool) -> ActionResult:
        versions = []
        for name in self.configmaps:
            try:
                kept = await self.history.config_versions(self.namespace, name, limit=6)
            except Exception as exc:  # the store, whose errors this layer does not know, failing
                raise ActionFailed(f"cannot read the kept versions of {self._where(name)}: {exc}") from exc
            versions.append(restore_plan(self.namespace, name, kept))
        steps: list[Step] = []
        for version in versions:
            current = await run.required(self._where(version.name),
                                         lambda name=version.name: self._get(name))  # type: ignore[misc]
            step = self._restore_step(version, current)
            if step is not None:
                steps.append(step)
        at = self._wall_clock().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        restarts: list[Step] = []
        for deployment in self.restart:
            current = await run.required(
                f"the Deployment {self.namespace}/{deployment}",
                lambda name=deployment: objects.get_deployment(  # type: ignore[misc]
                    self.kube, namespace=self.namespace, name=name),
            )
            restarts.append(self._restart_step(deployment, current, at))
        if dry_run:
            planned = tuple(change for step in (*steps, *restarts) for change in step.changes)
            what = ", ".join(v.name for v in versions)
            return run.result(ActionOutcome.PLANNED, f"would restore the ConfigMaps {what} and restart "
                              f"{', '.join(self.restart) or 'nothing'}", changes=planned)
        for step in (*steps, *restarts):
            await run.apply(step)

        async def rolled_out() -> bool:
            for deployment in self.restart:
                now = await objects.get_deployment(self.kube, namespace=self.namespace, name=deployment)
                template = ((now.get("spec") or {}).get("template") or {}).get("metadata") or {}
                restarted = (template.get("annotations") or {}).get(RESTARTED_AT) == at
                if not (restarted and objects.rollout_complete(now)):
                    return False
            return True

        if self.restart:
            await run.wait_until(f"the Deployments {', '.join(self.restart)} to roll out the restored "
                                 "configuration", rolled_out)
        restored = [v.name for v in versions]
        reason = (f"restored the ConfigMaps {', '.join(restored)} to their previous data"
                  + (f"; restarted {', '.join(self.restart)}, fully available" if self.restart else ""))
        outcome = ActionOutcome.DONE if run.changes else ActionOutcome.ALREADY_DONE
        return run.result(outcome, reason, details={"versions": {
            v.name: {"from": v.bad_version, "to": v.previous_version} for v in versions
        }})
