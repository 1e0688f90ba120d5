"""Query presets: the PromQL and labels of the metric shapes clusters already have. Pure data.

A preset names everything rollbackd needs to read a side's requests, errors and latency: the
three templates (``{selector}``, ``{by}`` and ``{window}`` placeholders), the group labels that
tell the sides apart, which of them carries the target's namespace and which the side's
Deployment, and the unit of the latency buckets. ``defaults.queries.preset`` (or a target's
``queries.preset``) picks one; explicit keys next to it replace the preset's (see
:func:`resolve_queries`). docs/metrics.md shows each preset's PromQL with a worked example.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

__all__ = [
    "POD_NAME_SUFFIX",
    "PRESETS",
    "PresetName",
    "QueryPreset",
    "preset_names",
    "resolve_queries",
]

#: What follows a Deployment's name in the names of its pods: the ReplicaSet's pod-template hash
#: and the pod's own random suffix (``checkout-canary-7d9f8b6c5-x2kqp``), as an RE2 pattern.
POD_NAME_SUFFIX = "-[a-z0-9]+-[a-z0-9]+"

PresetName = Literal["default", "kube-prometheus", "istio", "otel"]


@dataclass(frozen=True, slots=True)
class QueryPreset:
    """How one metric shape is read.

    - ``group_labels``: the labels the queries group by, telling baseline and candidate apart;
    - ``namespace_label`` / ``deployment_label``: the group labels whose values are the target's
      namespace and the side's Deployment (a side's ``labels`` give the others);
    - ``deployment_from``: when set, the series carry no Deployment label but this one (a pod
      name): a side is selected by its pods' name prefix (``<deployment>-<hash>-<suffix>``), and
      the templates derive ``deployment_label`` from it with ``label_replace``;
    - ``bucket_unit_s``: seconds per unit of the latency buckets' ``le`` (0.001 for milliseconds).
    """

    requests: str
    errors: str
    latency_buckets: str
    group_labels: tuple[str, ...]
    namespace_label: str = "namespace"
    deployment_label: str = "deployment"
    deployment_from: str | None = None
    bucket_unit_s: float = 1.0

    @property
    def required_labels(self) -> tuple[str, ...]:
        """The labels a series must carry to be read: the group labels (``deployment_from`` in
        place of a derived Deployment label)."""
        return tuple(
            self.deployment_from
            if label == self.deployment_label and self.deployment_from is not None
            else label
            for label in self.group_labels
        )


#: ``label_replace`` turning a pod name into the name of its Deployment (``deployment`` label);
#: no braces, so it goes into the templates as it is.
_POD_TO_DEPLOYMENT = f'"deployment", "$1", "pod", "(.+){POD_NAME_SUFFIX}"'

PRESETS: Mapping[str, QueryPreset] = {
    # Series labelled by the application itself (or by relabelling) with namespace and deployment.
    "default": QueryPreset(
        requests="sum by ({by}) (increase(http_requests_total{{{selector}}}[{window}]))",
        errors='sum by ({by}) (increase(http_requests_total{{{selector},code=~"5.."}}[{window}]))',
        latency_buckets=(
            "sum by ({by}, le) (increase(http_request_duration_seconds_bucket{{{selector}}}[{window}]))"
        ),
        group_labels=("namespace", "deployment"),
    ),
    # Prometheus Operator / kube-prometheus: a ServiceMonitor's scrape labels each series with
    # namespace, service, pod and job, never with the Deployment: it is read from the pod's name.
    "kube-prometheus": QueryPreset(
        requests=(
            "sum by ({by}) (label_replace(increase(http_requests_total{{{selector}}}[{window}]), "
            + _POD_TO_DEPLOYMENT + "))"
        ),
        errors=(
            'sum by ({by}) (label_replace(increase(http_requests_total{{{selector},code=~"5.."}}[{window}]), '
            + _POD_TO_DEPLOYMENT + "))"
        ),
        latency_buckets=(
            "sum by ({by}, le) (label_replace(increase(http_request_duration_seconds_bucket"
            "{{{selector}}}[{window}]), " + _POD_TO_DEPLOYMENT + "))"
        ),
        group_labels=("namespace", "deployment"),
        deployment_from="pod",
    ),
    # Istio's standard metrics, as reported by the serving side's proxy; durations in milliseconds.
    "istio": QueryPreset(
        requests=(
            'sum by ({by}) (increase(istio_requests_total{{reporter="destination",{selector}}}[{window}]))'
        ),
        errors=(
            "sum by ({by}) (increase(istio_requests_total"
            '{{reporter="destination",{selector},response_code=~"5.."}}[{window}]))'
        ),
        latency_buckets=(
            "sum by ({by}, le) (increase(istio_request_duration_milliseconds_bucket"
            '{{reporter="destination",{selector}}}[{window}]))'
        ),
        group_labels=("destination_workload_namespace", "destination_workload"),
        namespace_label="destination_workload_namespace",
        deployment_label="destination_workload",
        bucket_unit_s=0.001,
    ),
    # OpenTelemetry semantic conventions (http.server.request.duration, in seconds) exported to
    # Prometheus with the Kubernetes resource attributes as labels; requests are the histogram's
    # count.
    "otel": QueryPreset(
        requests=(
            "sum by ({by}) (increase(http_server_request_duration_seconds_count"
            "{{{selector}}}[{window}]))"
        ),
        errors=(
            "sum by ({by}) (increase(http_server_request_duration_seconds_count"
            '{{{selector},http_response_status_code=~"5.."}}[{window}]))'
        ),
        latency_buckets=(
            "sum by ({by}, le) (increase(http_server_request_duration_seconds_bucket"
            "{{{selector}}}[{window}]))"
        ),
        group_labels=("k8s_namespace_name", "k8s_deployment_name"),
        namespace_label="k8s_namespace_name",
        deployment_label="k8s_deployment_name",
    ),
}

#: The keys of ``queries`` that replace a preset's values, in the order of :class:`QueryPreset`.
QUERY_KEYS = (
    "requests",
    "errors",
    "latency_buckets",
    "group_labels",
    "namespace_label",
    "deployment_label",
    "deployment_from",
    "bucket_unit_s",
)


def preset_names() -> tuple[str, ...]:
    """Every preset's name, ``default`` first."""
    return tuple(get_args(PresetName))


def _explicit(queries: Any) -> dict[str, Any]:
    """The keys ``queries`` (a ``queries`` model of the settings) sets, not left to a preset."""
    return {key: value for key in QUERY_KEYS if (value := getattr(queries, key, None)) is not None}


def resolve_queries(defaults: Any, override: Any = None) -> QueryPreset:
    """A target's queries: its own preset with its own keys when it names a preset; otherwise
    ``defaults``' preset with ``defaults``' keys, then the target's keys on top.

    ``defaults`` is ``defaults.queries`` and ``override`` a target's ``queries`` (both models of
    :mod:`rollbackd.config.settings`, read by attribute: ``preset`` and the :data:`QUERY_KEYS`,
    ``None`` when not given).
    """
    own_preset = getattr(override, "preset", None) if override is not None else None
    if own_preset is not None:
        base = PRESETS[own_preset]
    else:
        base = replace(PRESETS[defaults.preset or "default"], **_explicit(defaults))
    if override is not None:
        base = replace(base, **_explicit(override))
    return base
