"""The daemon's access to its targets on Kubernetes: the facts a decision needs, read from the
cluster, and the action that carries a rollback out.

It sits above both the pure decision facts (:mod:`rollbackd.decision.facts`) and plain API access
(:mod:`rollbackd.kube`): turning a decision into an action is the actions' business.

:class:`KubeTargets` implements the daemon's :class:`~rollbackd.run.TargetAccess` protocol
for every configured target (found by its key, ``namespace/name``):

- :meth:`KubeTargets.facts` reads the candidate Deployment, the baseline one (canary, blue-green)
  or the candidate's ReplicaSets (deployment strategy), or the Rollout and its stable ReplicaSet
  (argo-rollout; a Rollout that does not exist, or a cluster without Argo Rollouts, is a fact: no
  rollback target, with that reason) and hands them to the pure
  :func:`~rollbackd.decision.facts.cluster_facts`: rollback risk and fix-forward holds from
  annotations, the candidate's revision, whether there is a healthy version to go back to. A
  fix-forward ETA given as a duration (``15m``) counts from when this object first saw it;
- :meth:`KubeTargets.action` builds the target's action: canary abort, blue-green switch-back,
  Deployment undo or Rollout abort (:data:`ACTIONS` names them per strategy), guarded against
  GitOps reconcilers (:mod:`rollbackd.actions.gitops`), or the target's configured command
  (:mod:`rollbackd.actions.command`; a command target's facts come from its configuration alone);
- :meth:`KubeTargets.router` is a canary target's traffic router (ingress-nginx, Gateway API,
  Istio), :meth:`KubeTargets.split` its current split (the canary's share of the requests);
  :meth:`KubeTargets.check_routers`, at start-up, tells which targets' routers need a custom
  resource the API server does not serve (e.g. the Gateway API is not installed);
- :meth:`KubeTargets.serving_available` tells whether the version traffic went back to is fully
  available (rolled out, every replica available): the stable Deployment (canary), the previous
  colour (blue-green), the Deployment itself (undo), the Rollout's stable ReplicaSet once the
  Rollout reports its abort (argo-rollout).

:class:`OffClusterTargets` is the access of a daemon without Kubernetes: it reaches the targets
whose lever needs no cluster (:data:`OFF_CLUSTER`: feature-flag, command), the others are decided
on only.

A Deployment undo acts only while the Deployment still runs the revision judged bad (see
:mod:`rollbackd.actions.deployment_undo`). :meth:`KubeTargets.action` takes that revision as
``bad_revision``; without it, the candidate revision the latest :meth:`KubeTargets.facts` read for
the target is used, which is the judged one as long as facts are read on the tick that decides.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from rollbackd.actions import (
    bluegreen,
    canary_abort,
    command,
    config_restore,
    deployment_undo,
    feature_flag,
    rollout_abort,
)
from rollbackd.actions.base import RollbackAction, RollbackWhy
from rollbackd.actions.bluegreen import BlueGreenSwitchBack
from rollbackd.actions.canary_abort import CanaryAbort
from rollbackd.actions.command import CommandAction
from rollbackd.actions.config_restore import ConfigHistory, ConfigRestore
from rollbackd.actions.deployment_undo import DeploymentUndo
from rollbackd.actions.feature_flag import FeatureFlagOff
from rollbackd.actions.flag_http import HttpFlag
from rollbackd.actions.flag_sql import SqlFlag
from rollbackd.actions.flagstore import FlagStore
from rollbackd.actions.gitops import GitOpsGuard
from rollbackd.actions.reconcilers import Tracking
from rollbackd.actions.rollout_abort import RolloutAbort, stable_serving
from rollbackd.actions.routers.base import Router, Split
from rollbackd.actions.routers.select import INSTALL_HINTS, required_resource, router_for
from rollbackd.actions.steps import ActionSettings
from rollbackd.backoff import Backoff
from rollbackd.config.settings import GitOpsSettings, KubernetesSettings, Settings, Side, TargetSettings
from rollbackd.decision.annotations import ETA_ANNOTATION
from rollbackd.decision.facts import ClusterFacts, cluster_facts
from rollbackd.kube import objects, rollouts
from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import KubeError, KubeNotFound
from rollbackd.kube.objects import CustomResource
from rollbackd.kube.retry import retrying
from rollbackd.kube.rollouts import RolloutsNotInstalled
from rollbackd.model import OWN_PAST, Strategy
from rollbackd.params import TargetParams

logger = logging.getLogger(__name__)

T = TypeVar("T")


#: The action that rolls a target of each strategy back (``ActionResult.action``, ``rollback.*`` events).
ACTIONS: dict[Strategy, str] = {
    Strategy.CANARY: canary_abort.ACTION,
    Strategy.BLUE_GREEN: bluegreen.ACTION,
    Strategy.DEPLOYMENT: deployment_undo.ACTION,
    Strategy.ARGO_ROLLOUT: rollout_abort.ACTION,
    Strategy.COMMAND: command.ACTION,
    Strategy.CONFIG: config_restore.ACTION,
    Strategy.FEATURE_FLAG: feature_flag.ACTION,
}


def action_name(strategy: Strategy) -> str:
    """The name of the action that rolls a target of ``strategy`` back."""
    return ACTIONS[strategy]


def _utc_now() -> datetime:
    return datetime.now(UTC)


#: The strategies whose lever needs no Kubernetes, and what their availability is after it acted:
#: a command target has no Deployment of its own looked for (``None``: verified on its metrics and
#: health), a flag is off once the action is done (``True``: verification judges the metrics).
OFF_CLUSTER: dict[Strategy, bool | None] = {Strategy.COMMAND: None, Strategy.FEATURE_FLAG: True}


class KubeTargets:
    """Every configured target's facts, actions and availability, through one client.

    - ``kube``: an open :class:`~rollbackd.kube.KubeClient`;
    - ``settings``: the configuration; its ``targets`` tell where each target's objects are;
    - ``kubernetes``: retries, the availability timeout and how long facts are reused
      (``facts_max_age_s``; default: ``settings.kubernetes``);
    - ``action_settings``: overrides what actions derive from ``kubernetes`` (backoff, polling);
    - ``wall_clock``: the current UTC time, to place an RFC 3339 fix-forward ETA on the loop clock.
    """

    def __init__(
        self,
        *,
        kube: KubeClient,
        settings: Settings,
        kubernetes: KubernetesSettings | None = None,
        action_settings: ActionSettings | None = None,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.kube = kube
        self.kubernetes = kubernetes if kubernetes is not None else settings.kubernetes
        if action_settings is None:
            action_settings = ActionSettings.from_kubernetes(self.kubernetes)
        self.action_settings = action_settings
        self._targets: dict[str, TargetSettings] = {target.key: target for target in settings.targets}
        self._gitops: GitOpsSettings = settings.gitops
        self._max_age_s = self.kubernetes.facts_max_age_s
        self._wall_clock = wall_clock
        #: Where the versions of config targets' ConfigMaps are kept (the daemon sets its store's).
        self.config_history: ConfigHistory | None = None
        #: target key -> (the fix-forward ETA annotation's value, loop time it was first seen).
        self._eta_seen: dict[str, tuple[str, float]] = {}
        #: target key -> the candidate revision the latest facts() read.
        self._revisions: dict[str, int | None] = {}
        #: target key -> (loop time of the read, the facts it gave); reused while younger than
        #: ``facts_max_age_s``.
        self._facts: dict[str, tuple[float, ClusterFacts]] = {}

    def reconfigure(self, settings: Settings) -> None:
        """Take over reloaded targets (added, removed, or pointing at other objects)."""
        self._targets = {target.key: target for target in settings.targets}
        self._gitops = settings.gitops
        self._max_age_s = settings.kubernetes.facts_max_age_s
        self._facts.clear()  # a target may point at other objects now
        for gone in self._eta_seen.keys() - self._targets.keys():
            del self._eta_seen[gone]

    def target(self, key: str) -> TargetSettings:
        """The configured target ``namespace/name``; ``LookupError`` if there is none."""
        try:
            return self._targets[key]
        except KeyError:
            raise LookupError(f"no target {key!r} in the configuration") from None

    def last_seen_revision(self, key: str) -> int | None:
        """The candidate revision the latest :meth:`facts` read for ``key`` (``None`` before)."""
        return self._revisions.get(key)

    async def _call(self, op: Callable[[], Awaitable[T]]) -> T:
        settings = self.action_settings
        return await retrying(op, backoff=settings.backoff, attempts=settings.attempts)

    async def _deployment(self, namespace: str, name: str) -> Obj | None:
        try:
            return await self._call(lambda: objects.get_deployment(self.kube, namespace=namespace, name=name))
        except KubeNotFound:
            return None

    def _eta_first_seen(self, key: str, candidate: Obj | None, loop_now: float) -> float | None:
        value = objects.annotations_of(candidate or {}).get(ETA_ANNOTATION)
        if value is None:
            self._eta_seen.pop(key, None)
            return None
        seen = self._eta_seen.get(key)
        if seen is None or seen[0] != value:  # new, or changed: a new promise counts from now
            seen = self._eta_seen[key] = (value, loop_now)
        return seen[1]

    async def facts(self, params: TargetParams, *, loop_now: float, fresh: bool = False) -> ClusterFacts:
        """Risk, holds, revision and rollback target as the cluster shows them now, or as it
        showed them less than ``kubernetes.facts_max_age_s`` ago (loop clock): then the facts of
        that read are returned without asking the API again. ``fresh`` always reads now.

        Objects that do not exist are facts (a missing baseline means nothing to go back to: high
        risk); API failures, after retries, raise :class:`~rollbackd.kube.errors.KubeError`:
        the caller decides without the cluster's word rather than on a guess.
        """
        kept = self._facts.get(params.key)
        if kept is not None and not fresh and 0.0 <= loop_now - kept[0] < self._max_age_s:
            return kept[1]
        target = self.target(params.key)
        namespace = target.namespace
        if target.strategy is Strategy.COMMAND:
            # Nothing on the cluster stands for it: its command is the way back, its risk configured.
            self._facts[params.key] = (loop_now, ClusterFacts())
            return ClusterFacts()
        if target.strategy is Strategy.ARGO_ROLLOUT:
            candidate, baseline, missing = await self._rollout_objects(target)
        else:
            candidate = await self._deployment(namespace, _deployment_of(target.candidate))
            baseline = None
            if target.baseline is not None:
                baseline = await self._deployment(namespace, _deployment_of(target.baseline))
            missing = f"the candidate Deployment {namespace}/{target.candidate.deployment} does not exist"
        replica_sets: list[Obj] = []
        if target.strategy is Strategy.DEPLOYMENT and candidate is not None:
            found = candidate
            replica_sets = await self._call(lambda: objects.owned_replicasets(self.kube, deployment=found))
        facts = cluster_facts(
            target.strategy,
            candidate=candidate,
            baseline=baseline,
            replica_sets=replica_sets,
            wall_now=self._wall_clock(),
            loop_now=loop_now,
            eta_first_seen=self._eta_first_seen(params.key, candidate, loop_now),
        )
        if candidate is None:
            facts = dataclasses.replace(facts, problems=(*facts.problems, missing))
            if target.strategy in (Strategy.DEPLOYMENT, Strategy.ARGO_ROLLOUT):
                facts = dataclasses.replace(facts, risk_reason=missing, rollback_target_reason=missing)
        self._revisions[params.key] = facts.candidate_revision
        self._facts[params.key] = (loop_now, facts)
        return facts

    async def _rollout_objects(self, target: TargetSettings) -> tuple[Obj | None, Obj | None, str]:
        """The target's Rollout and its stable ReplicaSet (``None`` when missing), and what to say
        when the Rollout is missing: that it does not exist, or that the cluster has no Rollouts."""
        assert target.rollout is not None  # the settings check it
        namespace, name = target.namespace, target.rollout
        missing = f"the Rollout {namespace}/{name} does not exist"
        try:
            rollout = await self._call(
                lambda: rollouts.get_rollout(self.kube, namespace=namespace, name=name)
            )
        except RolloutsNotInstalled as exc:
            return None, None, str(exc)
        except KubeNotFound:
            return None, None, missing
        found = rollout
        stable = await self._call(lambda: rollouts.stable_replicaset(self.kube, rollout=found))
        return rollout, stable, missing

    def facts_read_at(self, key: str) -> float | None:
        """The loop time of the read behind the latest facts of ``key`` (``None`` before any)."""
        kept = self._facts.get(key)
        return kept[0] if kept is not None else None

    def router(self, key: str) -> Router:
        """The traffic router of the canary target ``key`` (``LookupError`` if it is not one)."""
        target = self.target(key)
        settings = target.traffic_router
        if settings is None:
            raise LookupError(f"target {key!r} is not a canary: it has no traffic router")
        return router_for(settings, kube=self.kube, namespace=target.namespace)

    async def split(self, key: str) -> Split:
        """How the canary target ``key``'s route splits the requests now (retried like facts);
        :class:`~rollbackd.kube.errors.KubeError` when it cannot be read."""
        return await self._call(self.router(key).read_split)

    async def check_routers(self) -> dict[str, str]:
        """Which targets' routers cannot work on this cluster: target key -> what is wrong and what
        to do. Each custom resource (HTTPRoute, GRPCRoute, VirtualService) the configured routers
        need is looked up once in the API server's discovery; a target whose resource is not served
        is named (its rollbacks would be refused), the others are not affected. API errors while
        looking are raised (:class:`~rollbackd.kube.errors.KubeError`)."""
        needed: dict[str, tuple[CustomResource, str]] = {}
        for key, target in self._targets.items():
            settings = target.traffic_router
            resource = required_resource(settings) if settings is not None else None
            if settings is not None and resource is not None:
                needed[key] = (resource, settings.kind)
        served: dict[tuple[str, str], frozenset[str]] = {}
        problems: dict[str, str] = {}
        for key, (resource, kind) in needed.items():
            group_version = (resource.group, resource.version)
            if group_version not in served:
                served[group_version] = await self._served(*group_version)
            if resource.plural not in served[group_version]:
                problems[key] = (
                    f"the router of {key} ({kind}) needs {resource.kind} ({resource.api_version}), which the "
                    f"API server does not serve: {INSTALL_HINTS.get(kind, 'install its CRDs')}, or "
                    "change the target's router; until then its rollbacks are refused"
                )
        return problems

    async def _served(self, group: str, version: str) -> frozenset[str]:
        return await self._call(lambda: objects.served_resources(self.kube, group=group, version=version))

    def action(
        self,
        params: TargetParams,
        *,
        bad_revision: int | None = None,
        to_revision: int | None = None,
        why: RollbackWhy | None = None,
    ) -> RollbackAction:
        """The rollback action for the target's strategy, guarded against the GitOps reconcilers of
        the objects it changes by the target's ``gitops`` mode (default: ``gitops.mode``; see
        :mod:`rollbackd.actions.gitops`).

        For a Deployment undo, ``bad_revision`` is the revision judged bad (default: the one the
        latest :meth:`facts` read) and ``to_revision`` an explicit revision to go back to. A
        command is told ``why`` (the decision) in its environment; it changes no Kubernetes object,
        so no reconciler guards it.
        """
        target = self.target(params.key)
        lever = off_cluster_action(target, why=why)
        if lever is not None:
            return lever  # no Kubernetes object changes: nothing for GitOps to undo
        return GitOpsGuard(
            self._strategy_action(target, params, bad_revision=bad_revision, to_revision=to_revision),
            kube=self.kube, target=params.key, mode=target.gitops or self._gitops.mode,
            tracking=Tracking.of(self._gitops.argocd), settings=self.action_settings,
        )

    def _strategy_action(
        self,
        target: TargetSettings,
        params: TargetParams,
        *,
        bad_revision: int | None,
        to_revision: int | None,
    ) -> RollbackAction:
        """The action that rolls ``target`` back, by its strategy."""
        namespace = target.namespace
        if target.strategy is Strategy.CONFIG:
            assert target.config is not None  # the settings check it
            if self.config_history is None:
                raise LookupError(f"target {params.key!r}: no store keeps its ConfigMaps' versions")
            return ConfigRestore(kube=self.kube, target=params.key, namespace=namespace,
                                 configmaps=target.config.configmaps, history=self.config_history,
                                 restart=target.config.restart, settings=self.action_settings)
        if target.strategy is Strategy.ARGO_ROLLOUT:
            assert target.rollout is not None  # the settings check it
            return RolloutAbort(kube=self.kube, target=params.key, namespace=namespace,
                                rollout=target.rollout, settings=self.action_settings)
        if target.strategy is Strategy.CANARY:
            assert target.baseline is not None  # the settings check it
            return CanaryAbort(
                kube=self.kube, target=params.key, namespace=namespace, router=self.router(params.key),
                canary=_deployment_of(target.candidate), stable=_deployment_of(target.baseline),
                settings=self.action_settings,
            )
        if target.strategy is Strategy.BLUE_GREEN:
            assert target.baseline is not None  # the settings check it
            assert target.service is not None
            return BlueGreenSwitchBack(
                kube=self.kube, target=params.key, namespace=namespace, service=target.service,
                healthy=_deployment_of(target.baseline), bad=_deployment_of(target.candidate),
                settings=self.action_settings,
            )
        return DeploymentUndo(
            kube=self.kube, target=params.key, namespace=namespace,
            deployment=_deployment_of(target.candidate),
            bad_revision=bad_revision if bad_revision is not None else self._revisions.get(params.key),
            to_revision=to_revision, settings=self.action_settings,
        )

    async def serving_available(self, params: TargetParams) -> bool | None:
        """Whether the version the target was rolled back to is fully available: the stable
        Deployment (canary), the previous colour (blue-green), the Deployment itself (undo).
        ``False`` when it does not exist, ``None`` when the cluster cannot be read.

        Fully available as ``kubectl rollout status`` means it
        (:func:`~rollbackd.kube.objects.rollout_complete`): for an undo, the restored pods must be
        the ones available, not the old ones a stalled rollout leaves serving."""
        target = self.target(params.key)
        if target.strategy in OFF_CLUSTER:
            return OFF_CLUSTER[target.strategy]
        if target.strategy is Strategy.ARGO_ROLLOUT:
            assert target.rollout is not None  # the settings check it
            namespace, name = target.namespace, target.rollout
            try:
                return await self._call(lambda: stable_serving(self.kube, namespace=namespace, name=name))
            except KubeNotFound:
                return False
            except KubeError as exc:
                logger.warning("cannot read the availability of the Rollout %s/%s: %s", namespace, name, exc,
                               extra={"target": params.key})
                return None
        side = target.candidate if target.strategy in OWN_PAST else target.baseline
        assert side is not None  # canary and blue-green targets have a baseline (the settings check it)
        try:
            deployment = await self._deployment(target.namespace, _deployment_of(side))
        except KubeError as exc:
            logger.warning("cannot read the availability of %s/%s: %s", target.namespace, side.deployment,
                           exc, extra={"target": params.key})
            return None
        return objects.rollout_complete(deployment)


class OffClusterTargets:
    """The targets' access without Kubernetes (``kubernetes.enabled: false``, or neither a service
    account nor a kubeconfig): it reaches the targets whose lever needs none (a flag turned off in
    its store, a command run), which act as they would with Kubernetes (their facts come from the
    configuration alone); the others are decided on only (a
    :class:`~rollbackd.run.PartialAccess`).

    - ``settings``: the configuration; reloads through :meth:`reconfigure`.
    """

    def __init__(self, *, settings: Settings) -> None:
        self._targets: dict[str, TargetSettings] = {}
        self._read_at: dict[str, float] = {}
        self.reconfigure(settings)

    def reconfigure(self, settings: Settings) -> None:
        """Take over reloaded targets."""
        self._targets = {target.key: target for target in settings.targets}

    def reaches(self, key: str) -> bool:
        target = self._targets.get(key)
        return target is not None and target.strategy in OFF_CLUSTER

    def summary(self) -> str:
        """What runs without Kubernetes and what does not, for the start-up log and ``/readyz``."""
        levers = sorted(key for key in self._targets if self.reaches(key))
        others = sorted(key for key in self._targets if not self.reaches(key))
        if not levers:
            return "no Kubernetes access: deciding only, nothing is rolled back"
        reached = f"the feature-flag and command targets ({', '.join(levers)}) are rolled back without it"
        if not others:
            return f"no Kubernetes access, and none needed: {reached}"
        return f"no Kubernetes access: {reached}; the others ({', '.join(others)}) are decided on only"

    async def facts(self, params: TargetParams, *, loop_now: float, fresh: bool = False) -> ClusterFacts:
        """Nothing on a cluster stands for a flag or a command: no facts but the configuration's."""
        self._read_at[params.key] = loop_now
        return ClusterFacts()

    def facts_read_at(self, key: str) -> float | None:
        return self._read_at.get(key)

    def action(
        self, params: TargetParams, *, bad_revision: int | None = None, why: RollbackWhy | None = None
    ) -> RollbackAction:
        """The lever of a feature-flag or command target (``LookupError`` for another: see
        :meth:`reaches`)."""
        target = self._targets.get(params.key)
        lever = None if target is None else off_cluster_action(target, why=why)
        if lever is None:
            raise LookupError(f"target {params.key!r}: its lever needs Kubernetes access, which this "
                              "rollbackd does not have")
        return lever

    async def serving_available(self, params: TargetParams) -> bool | None:
        target = self._targets.get(params.key)
        return None if target is None else OFF_CLUSTER.get(target.strategy)


def off_cluster_action(target: TargetSettings, *, why: RollbackWhy | None) -> RollbackAction | None:
    """The lever of a target whose strategy needs no Kubernetes (``None`` for the others): its
    command (told ``why``), or its flag turned off."""
    if target.strategy is Strategy.COMMAND:
        assert target.command is not None  # the settings check it
        return CommandAction(target=target.key, settings=target.command, why=why)
    if target.strategy is Strategy.FEATURE_FLAG:
        return flag_action(target)
    return None


def flag_action(target: TargetSettings) -> FeatureFlagOff:
    """The feature-flag lever of a ``feature-flag`` target: its flag, in the store it names."""
    flag = target.flag
    assert flag is not None  # the settings check it
    store: FlagStore
    if flag.store.kind == "http":
        store = HttpFlag(flag.store, flag=flag.name)
    else:
        store = SqlFlag(flag.store, flag=flag.name)
    return FeatureFlagOff(
        target=target.key, flag=flag.name, store=store, attempts=flag.attempts,
        backoff=Backoff(initial_s=flag.backoff_initial_s, max_s=max(5.0, flag.backoff_initial_s)),
    )


def _deployment_of(side: Side) -> str:
    """The Deployment of a side of a canary, blue-green or deployment target (the settings require it)."""
    assert side.deployment is not None, "only argo-rollout targets have sides without a Deployment"
    return side.deployment
