"""Configured targets as the sources see them: which series and health endpoints each one reads.
Pure functions from settings to :mod:`rollbackd.sources.base` values, no I/O.

Per-target ``queries`` override ``defaults.queries`` key by key.
"""

from __future__ import annotations

from rollbackd.config.resolve import overridden
from rollbackd.config.settings import Settings, Side, TargetSettings
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget

__all__ = ["query_templates", "series_ref", "source_target", "source_targets"]


def query_templates(settings: Settings, target: TargetSettings) -> QueryTemplates:
    """The PromQL templates and group labels for ``target``."""
    return QueryTemplates(**overridden(settings.defaults.queries, target.queries))


def series_ref(target: TargetSettings, side: Side, group_labels: tuple[str, ...]) -> SeriesRef:
    """The label values naming ``side``'s series, one per group label, in order: ``namespace``
    is the target's namespace, ``deployment`` the side's Deployment, any other label comes from
    the side's ``labels`` (the settings validator guarantees it is there)."""
    values: list[tuple[str, str]] = []
    for label in group_labels:
        if label == "namespace":
            values.append((label, target.namespace))
        elif label == "deployment":
            if side.deployment is None:  # the settings refuse it (argo-rollout targets)
                raise ValueError(f"{target.key}: group label 'deployment' but the side names no Deployment")
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
