"""Configured targets as the sources see them: which series and health endpoints each one reads.
Pure functions from settings to :mod:`rollbackd.sources.base` values, no I/O.

A target's queries are its preset's, with explicit keys on top
(:func:`rollbackd.config.presets.resolve_queries`).
"""

from __future__ import annotations

from rollbackd.config.presets import QueryPreset, resolve_queries
from rollbackd.config.settings import Settings, Side, TargetSettings
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget

__all__ = ["query_templates", "series_ref", "source_target", "source_targets", "templates_of"]


def templates_of(queries: QueryPreset) -> QueryTemplates:
    """What the metrics source needs of resolved ``queries``."""
    pod_prefix = None
    if queries.deployment_from is not None and queries.deployment_label in queries.group_labels:
        pod_prefix = (queries.deployment_label, queries.deployment_from)
    return QueryTemplates(
        requests=queries.requests,
        errors=queries.errors,
        latency_buckets=queries.latency_buckets,
        group_labels=queries.group_labels,
        pod_prefix=pod_prefix,
        bucket_unit_s=queries.bucket_unit_s,
    )


def query_templates(settings: Settings, target: TargetSettings) -> QueryTemplates:
    """The PromQL templates and group labels for ``target``."""
    return templates_of(resolve_queries(settings.defaults.queries, target.queries))


def series_ref(namespace: str, side: Side, queries: QueryPreset) -> SeriesRef:
    """The label values naming ``side``'s series, one per group label, in order: the namespace
    label holds ``namespace`` (the target's), the Deployment label the side's Deployment, any other label
    comes from the side's ``labels`` (the settings validator guarantees it is there)."""
    values: list[tuple[str, str]] = []
    for label in queries.group_labels:
        if label == queries.namespace_label:
            values.append((label, namespace))
        elif label == queries.deployment_label:
            if side.deployment is None:  # the settings refuse it (argo-rollout targets)
                raise ValueError(f"group label {label!r} but the side names no Deployment")
            values.append((label, side.deployment))
        else:
            values.append((label, side.labels[label]))
    return SeriesRef(labels=tuple(values))


def source_target(settings: Settings, target: TargetSettings) -> SourceTarget:
    """``target`` as the metrics and health sources see it. A ``deployment`` target has no
    baseline side (the settings refuse one): its own history before the rollout is the baseline."""
    resolved = resolve_queries(settings.defaults.queries, target.queries)
    baseline = target.baseline
    return SourceTarget(
        key=target.key,
        queries=templates_of(resolved),
        candidate=series_ref(target.namespace, target.candidate, resolved),
        baseline=series_ref(target.namespace, baseline, resolved) if baseline is not None else None,
        health_baseline=baseline.health if baseline is not None else (),
        health_candidate=target.candidate.health,
    )


def source_targets(settings: Settings) -> tuple[SourceTarget, ...]:
    """Every configured target as the sources see it, in file order."""
    return tuple(source_target(settings, target) for target in settings.targets)
