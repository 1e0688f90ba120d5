"""From settings to the values the rest of rollbackd works with: pure functions, no I/O.

Per-target ``slo``, ``detection``, ``policy`` and ``queries`` override ``defaults`` key by key;
``severity`` and the hourly rollback cap are global and always come from ``defaults``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rollbackd.config.settings import Settings, Side, TargetSettings
from rollbackd.model import Risk, Slo, Strategy
from rollbackd.params import Detection, Policy, Severity, TargetParams
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget

__all__ = [
    "default_params",
    "query_templates",
    "series_ref",
    "source_target",
    "source_targets",
    "target_params",
]


def _overridden(defaults: BaseModel, override: BaseModel) -> dict[str, Any]:
    """The defaults' values with every key the override sets (not ``None``) replaced."""
    values = dict(defaults)
    values.update((key, value) for key, value in override if value is not None)
    return values


def target_params(settings: Settings, target: TargetSettings) -> TargetParams:
    """Everything the detectors and the decision need to judge ``target``."""
    defaults = settings.defaults
    policy = _overridden(defaults.policy, target.policy)
    return TargetParams(
        key=target.key,
        strategy=target.strategy,
        interval_s=settings.interval_s,
        slo=Slo(**_overridden(defaults.slo, target.slo)),
        severity=Severity(**dict(defaults.severity)),
        detection=Detection(**_overridden(defaults.detection, target.detection)),
        policy=Policy(
            controlled_grace_s=policy["controlled_grace_s"],
            cooldown_s=policy["cooldown_s"],
            max_rollbacks_per_hour=defaults.policy.max_rollbacks_per_hour,
            rollback_risk=Risk(policy["rollback_risk"]),
        ),
    )


def default_params(
    settings: Settings, *, key: str = "defaults", strategy: Strategy = Strategy.CANARY
) -> TargetParams:
    """The parameters of a target that overrides nothing (``rollbackd replay --config``):
    ``defaults`` and ``interval_s``, under the given ``key`` and ``strategy``."""
    defaults = settings.defaults
    return TargetParams(
        key=key,
        strategy=strategy,
        interval_s=settings.interval_s,
        slo=Slo(**dict(defaults.slo)),
        severity=Severity(**dict(defaults.severity)),
        detection=Detection(**dict(defaults.detection)),
        policy=Policy(
            controlled_grace_s=defaults.policy.controlled_grace_s,
            cooldown_s=defaults.policy.cooldown_s,
            max_rollbacks_per_hour=defaults.policy.max_rollbacks_per_hour,
            rollback_risk=Risk(defaults.policy.rollback_risk),
        ),
    )


def query_templates(settings: Settings, target: TargetSettings) -> QueryTemplates:
    """The PromQL templates and group labels for ``target``."""
    return QueryTemplates(**_overridden(settings.defaults.queries, target.queries))


def series_ref(target: TargetSettings, side: Side, group_labels: tuple[str, ...]) -> SeriesRef:
    """The label values naming ``side``'s series, one per group label, in order: ``namespace``
    is the target's namespace, ``deployment`` the side's Deployment, any other label comes from
    the side's ``labels`` (the settings validator guarantees it is there)."""
    values: list[tuple[str, str]] = []
    for label in group_labels:
        if label == "namespace":
            values.append((label, target.namespace))
        elif label == "deployment":
            values.append((label, side.deployment))
        else:
            values.append((label, side.labels[label]))
    return SeriesRef(labels=tuple(values))


def source_target(settings: Settings, target: TargetSettings) -> SourceTarget:
    """``target`` as the metrics and health sources see it. A ``deployment`` target has no
    baseline side (the settings refuse one): its own history before the rollout is the baseline."""
    queries = query_templates(settings, target)
    baseline = target.baseline
    return SourceTarget(
        key=target.key,
        queries=queries,
        candidate=series_ref(target, target.candidate, queries.group_labels),
        baseline=series_ref(target, baseline, queries.group_labels) if baseline is not None else None,
        health_baseline=baseline.health if baseline is not None else (),
        health_candidate=target.candidate.health,
    )


def source_targets(settings: Settings) -> tuple[SourceTarget, ...]:
    """Every configured target as the sources see it, in file order."""
    return tuple(source_target(settings, target) for target in settings.targets)
