"""The Helm chart in helm/rollbackd.

The chart is linted and rendered by Helm's own engine: Helm's Go SDK (v4), which the
``helm-python-sdk`` wheel carries as a shared library (no ``helm`` binary, nothing downloaded at
run time). Every rendered object is validated against the Kubernetes OpenAPI schemas that
``kubernetes-validate`` ships (strict: unknown fields are errors), for the oldest Kubernetes the
chart supports and the newest the package knows; the ServiceMonitor and the PrometheusRule (CRDs)
against the Prometheus Operator's CRD schemas (tests/crds/), the ServiceMonitor's wiring by hand
too (the alert rules and the dashboard: tests/test_chart_monitoring.py).
Least-privilege RBAC, the security context, the wiring of the configuration and the credentials,
and the guards against unsafe value combinations are asserted on the rendered objects; and
values.schema.json must accept the defaults and reject bad values.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib
import json
import re
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import BaseModel

from rollbackd import __version__
from rollbackd.actions.reconcilers import APPLICATION, HELMRELEASE, KUSTOMIZATION
from rollbackd.config.loader import ENV_NESTED_DELIMITER, ENV_PREFIX, load_settings
from rollbackd.config.settings import Settings
from rollbackd.daemon.switchmap import default_name
from rollbackd.daemon.switchstores import switches_place
from tests import crdschema

REPO = Path(__file__).resolve().parents[1]
CHART_DIR = REPO / "helm" / "rollbackd"
EXAMPLE_CONFIG = REPO / "config" / "rollbackd.example.yaml"

RELEASE = "rb"
NAMESPACE = "platform"

Obj = dict[str, Any]

#: The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest whose schemas
#: kubernetes-validate ships.
KUBE_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())

#: Every (API group, resource, verb) the chart may grant: what the rollback actions, the events
#: and leader election use, and nothing else.
ALLOWED_TARGET_RULES = frozenset(
    {
        ("apps", "deployments", "get"),
        ("apps", "deployments", "patch"),
        ("apps", "deployments/scale", "patch"),
        ("apps", "replicasets", "list"),
        ("", "services", "get"),
        ("", "services", "patch"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("events.k8s.io", "events", "create"),
        ("", "events", "create"),
    }
)
ALL_ROUTERS = ["ingress-nginx", "gateway-api", "istio"]
#: What each traffic router (rbac.routers) adds to the target rules: get and patch on its route objects.
ROUTER_RULES = {
    "ingress-nginx": frozenset({("networking.k8s.io", "ingresses", "get"),
                               ("networking.k8s.io", "ingresses", "patch")}),
    "gateway-api": frozenset({
        ("gateway.networking.k8s.io", resource, verb)
        for resource in ("httproutes", "grpcroutes") for verb in ("get", "patch")
    }),
    "istio": frozenset({("networking.istio.io", "virtualservices", "get"),
                        ("networking.istio.io", "virtualservices", "patch")}),
}
#: What opt-in by annotation (``config.discovery.enabled``) adds, in its namespaces only: listing and
#: watching Deployments.
DISCOVERY_RULES = frozenset({("apps", "deployments", "list"), ("apps", "deployments", "watch")})
#: What ``rbac.argoRollouts: true`` adds to every target Role: reading a Rollout and aborting it.
ARGO_ROLLOUTS_RULES = frozenset(
    {
        ("argoproj.io", "rollouts", "get"),
        ("argoproj.io", "rollouts/status", "patch"),
    }
)
CONFIGMAP_RULES = frozenset(
    {("", "configmaps", verb) for verb in ("get", "list", "watch", "patch")}
)
ALLOWED_LEASE_RULES = frozenset(
    {
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
    }
)
#: The switches' ConfigMap: read, written (with its resourceVersion) and watched, by its name only.
ALLOWED_SWITCHES_RULES = frozenset({("", "configmaps", verb) for verb in ("get", "update", "watch")})
RBAC_KINDS = frozenset({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})
#: What each GitOps mode may grant on the reconcilers' objects: suspend reads and patches them.
GITOPS_RULES = {
    mode: frozenset(
        (group, resource, verb)
        for group, resource in (
            ("argoproj.io", "applications"),
            ("kustomize.toolkit.fluxcd.io", "kustomizations"),
            ("helm.toolkit.fluxcd.io", "helmreleases"),
        )
        for verb in verbs
    )
    for mode, verbs in (("suspend", ("get", "patch")), ("refuse", ("get",)))
}


# --- the engine ----------------------------------------------------------------------------------


@functools.cache
def _engine() -> tuple[Any, str]:
    """Helm's engine (the ``helm_python`` module), or ``None`` and why it cannot be had."""
    try:
        helm = importlib.import_module("helm_python")
        version = str(helm.helm_sdk_version())
    except Exception as exc:  # ImportError, or the shared library failing to load
        return None, (
            "Helm's engine is not available: the helm-python-sdk package (Helm's Go SDK as a shared "
            f"library, a dev extra for Linux x86_64) could not be loaded ({type(exc).__name__}: {exc})"
        )
    return helm, version


@pytest.fixture(scope="session")
def helm() -> Any:
    engine, why = _engine()
    if engine is None:
        pytest.skip(why)
    return engine


# --- values --------------------------------------------------------------------------------------


def merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base`` the way Helm merges values: maps key by key, anything else
    (lists included) replaced."""
    result = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@functools.cache
def default_values() -> dict[str, Any]:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text(encoding="utf-8"))
    assert isinstance(values, dict)
    return values


@functools.cache
def values_schema() -> dict[str, Any]:
    schema = json.loads((CHART_DIR / "values.schema.json").read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def example_targets() -> list[dict[str, Any]]:
    """The targets of config/rollbackd.example.yaml: a canary, a blue-green pair and a Deployment."""
    example = yaml.safe_load(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    targets = example["targets"]
    assert isinstance(targets, list)
    return targets


#: An Argo Rollouts target, as docs/partners.md shows one.
CONFIG_TARGET = {
    "name": "checkout",
    "namespace": "shop",
    "strategy": "config",
    "candidate": {"deployment": "checkout"},
    "config": {"configmaps": ["checkout-config"], "restart": ["checkout"]},
}
ROLLOUT_TARGET = {
    "name": "checkout",
    "namespace": "shop",
    "strategy": "argo-rollout",
    "rollout": "checkout",
    "baseline": {"labels": {"role": "stable"}},
    "candidate": {"labels": {"role": "canary"}},
    "queries": {"group_labels": ["namespace", "role"]},
}


def _value_sets() -> dict[str, dict[str, Any]]:
    return {
        "argo-rollouts": {
            "rbac": {"namespaces": ["shop"], "argoRollouts": True},
            "config": {"targets": [ROLLOUT_TARGET]},
        },
        "config-targets": {
            "rbac": {"namespaces": ["shop"], "configMaps": True},
            "config": {"targets": [CONFIG_TARGET]},
        },
        "defaults": {},
        "discovery": {
            "rbac": {"namespaces": ["shop", "payments", "search"]},
            "config": {"discovery": {"enabled": True, "namespaces": ["shop", "search"],
                                     "max_slo_error_rate": 0.05}},
        },
        "namespaced": {
            "image": {"repository": "registry.example.com/platform/rollbackd", "tag": "0.1.0-rc.1",
                      "pullPolicy": "Always"},
            "imagePullSecrets": [{"name": "registry"}],
            "config": {
                "prometheus": {"url": "http://prometheus-operated.monitoring:9090"},
                "safety": {"dry_run": True},
                "events": {
                    "mqtt": {"enabled": True, "url": "mqtts://mosquitto.messaging:8883"},
                    "webhooks": [
                        {"name": "ops", "url": "https://ops.example.com/hooks/rollbackd"},
                        {"name": "chat", "url": "https://chat.example.com/hook", "types": ["rollback.*"]},
                    ],
                },
                "targets": example_targets(),
            },
            "rbac": {"namespaces": ["shop", "payments"], "routers": ALL_ROUTERS},
            "leaderElection": {"leaseName": "rollbackd-leader", "leaseDurationS": 30, "renewPeriodS": 10},
            "adminToken": {"existingSecret": "rollbackd-admin", "key": "token"},
            "credentials": {
                "database": {"existingSecret": "rollbackd-db", "key": "dsn"},
                "mqtt": {"existingSecret": "rollbackd-mqtt", "usernameKey": "user", "passwordKey": "pass"},
                "webhooks": [
                    {"name": "ops", "existingSecret": "ops-hook", "key": "token"},
                    {"name": "chat", "existingSecret": "chat-hook", "key": "url"},
                ],
            },
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"},
                               "runbookUrl": "https://docs.example.com/rollbackd/observability.md"},
            "grafanaDashboard": {"enabled": True, "namespace": "monitoring",
                                 "annotations": {"grafana_folder": "Platform"}},
            "networkPolicy": {
                "enabled": True,
                "ingressFrom": [
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
                ],
                "egress": [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}],
            },
            "podAntiAffinity": "hard",
            "topologySpreadConstraints": [
                {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                 "whenUnsatisfiable": "ScheduleAnyway"},
            ],
            "podAnnotations": {"example.com/team": "platform"},
            "podLabels": {"team": "platform"},
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "platform",
                             "effect": "NoSchedule"}],
            "priorityClassName": "platform-critical",
            "extraEnv": [{"name": "ROLLBACKD_LOG__LEVEL", "value": "DEBUG"}],
            "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
            "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
        },
        "cluster-wide": {
            "replicaCount": 3,
            "credentials": {"prometheus": {"basicAuth": {"existingSecret": "metrics-user"}}},
            "rbac": {"clusterWide": True, "routers": ALL_ROUTERS},
            "config": {"targets": example_targets()},
            "podDisruptionBudget": {"maxUnavailable": "50%"},
            "affinity": {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [
                            {"key": "node-role.example.com/platform", "operator": "Exists"}
                        ]}]
                    }
                }
            },
        },
        "single-sqlite": {
            "replicaCount": 1,
            "credentials": {"prometheus": {"serviceAccountToken": True}},
            "leaderElection": {"enabled": False},
            "persistence": {"enabled": True, "storageClass": "fast-ssd", "size": "5Gi"},
            "podDisruptionBudget": {"enabled": False},
            "podAntiAffinity": "none",
        },
        "gitops": {
            "config": {"targets": example_targets()},  # catalog: gitops refuse
            "rbac": {"namespaces": ["shop"], "routers": ALL_ROUTERS},
            "gitops": {"argocd": {"namespaces": ["argocd", "shop"]},
                       "flux": {"enabled": True, "namespaces": ["flux-system"]}},
        },
        # A secured metrics backend (Thanos Query behind TLS with a client certificate, a tenant
        # header, a bearer token from a Secret).
        "secured-metrics": {
            "config": {"prometheus": {"url": "https://thanos-query.monitoring:10902",
                                      "headers": {"X-Scope-OrgID": "team-a"}}},
            "credentials": {"prometheus": {
                "bearerToken": {"existingSecret": "metrics-token", "key": "token"},
                "tls": {"existingSecret": "metrics-tls", "caKey": "ca.crt", "certKey": "tls.crt",
                        "keyKey": "tls.key"},
            }},
        },
        "existing-account": {
            "fullnameOverride": "audit",
            "replicaCount": 1,
            "serviceAccount": {"create": False, "name": "platform-rollbackd"},
            "rbac": {"create": False},
            "persistence": {"enabled": True, "existingClaim": "rollbackd-audit"},
        },
    }


VALUE_SETS = _value_sets()


# --- rendering -----------------------------------------------------------------------------------


@functools.cache
def _render_cached(values_json: str) -> tuple[Obj, ...]:
    helm, _ = _engine()
    with helm.Chart.load(str(CHART_DIR)) as chart:
        files = chart.render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[Obj] = []
    for path in sorted(files):
        if not path.endswith((".yaml", ".yml")):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(files[path]) if doc)
    return tuple(objects)


def render(helm: Any, values: Mapping[str, Any] | None = None) -> list[Obj]:
    """The objects the chart renders with ``values`` (over the defaults), deep copies."""
    assert helm is not None
    return copy.deepcopy(list(_render_cached(json.dumps(values or {}, sort_keys=True))))


def render_notes(helm: Any, values: Mapping[str, Any] | None = None) -> str:
    with helm.Chart.load(str(CHART_DIR)) as chart:
        files = chart.render(dict(values or {}), name=RELEASE, namespace=NAMESPACE, is_install=True)
    return str(files["rollbackd/templates/NOTES.txt"])


def find(objects: list[Obj], kind: str, name: str | None = None, namespace: str | None = None) -> list[Obj]:
    return [
        obj
        for obj in objects
        if obj["kind"] == kind
        and (name is None or obj["metadata"]["name"] == name)
        and (namespace is None or obj["metadata"].get("namespace") == namespace)
    ]


def one(objects: list[Obj], kind: str, name: str | None = None, namespace: str | None = None) -> Obj:
    found = find(objects, kind, name, namespace)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def config_map_of(objects: list[Obj]) -> Obj:
    """The ConfigMap holding the configuration file (not the dashboard's)."""
    [config_map] = [obj for obj in find(objects, "ConfigMap") if "rollbackd.yaml" in obj.get("data", {})]
    return config_map


def container_of(objects: list[Obj]) -> Obj:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert isinstance(container, dict)
    return container


def env_of(container: Obj) -> dict[str, Obj]:
    return {item["name"]: item for item in container.get("env", [])}


def volumes_by_name(objects: list[Obj]) -> dict[str, Obj]:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    return {volume["name"]: volume for volume in pod["volumes"]}


def mounts_by_path(container: Obj) -> dict[str, Obj]:
    return {mount["mountPath"]: mount for mount in container["volumeMounts"]}


def object_id(obj: Obj) -> str:
    namespace = obj["metadata"].get("namespace")
    return f"{obj['kind']} {namespace + '/' if namespace else ''}{obj['metadata']['name']}"


# --- lint and Kubernetes schemas -----------------------------------------------------------------


def test_chart_is_versioned_with_the_application() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "rollbackd"
    assert chart["appVersion"] == __version__, "appVersion is the default image tag: keep it at rollbackd's"


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_is_clean(helm: Any, value_set: str, kube_version: str) -> None:
    report = helm.lint(
        str(CHART_DIR), VALUE_SETS[value_set], strict=True, namespace=NAMESPACE,
        kube_version=f"v{kube_version}",
    )
    assert report["total_charts_linted"] == 1
    # Severity: 1 info (only "icon is recommended" is expected), 2 warning, 3 error.
    problems = [message for message in report["messages"] if message["severity"] >= 2]
    assert not problems, problems
    assert not report["errors"]


def _service_monitor_problems(monitor: Obj, objects: list[Obj]) -> list[str]:
    """The ServiceMonitor is a CRD the Kubernetes schemas do not know: validate it against the
    Prometheus Operator's CRD, and check by hand that it scrapes this release's Service."""
    problems = crdschema.problems(crdschema.SERVICE_MONITOR_CRD, monitor)
    if monitor.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {monitor.get('apiVersion')!r}")
    spec = monitor.get("spec", {})
    if set(spec) - {"selector", "namespaceSelector", "endpoints", "jobLabel"}:
        problems.append(f"unexpected spec keys {sorted(set(spec))}")
    service = one(objects, "Service")
    selector = spec.get("selector", {}).get("matchLabels", {})
    labels = service["metadata"]["labels"]
    if not selector or any(labels.get(key) != value for key, value in selector.items()):
        problems.append(f"selector {selector} does not select the Service (labels {labels})")
    if spec.get("namespaceSelector") != {"matchNames": [service["metadata"]["namespace"]]}:
        problems.append(f"namespaceSelector {spec.get('namespaceSelector')}")
    port_names = {port["name"] for port in service["spec"]["ports"]}
    duration = re.compile(r"^([0-9]+(ms|s|m|h))+$")
    endpoints = spec.get("endpoints") or []
    if not endpoints:
        problems.append("no endpoints")
    for endpoint in endpoints:
        if set(endpoint) - {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels"}:
            problems.append(f"unexpected endpoint keys {sorted(endpoint)}")
        if endpoint.get("port") not in port_names:
            problems.append(f"endpoint port {endpoint.get('port')!r} is not a Service port {port_names}")
        if endpoint.get("path") != "/metrics":
            problems.append(f"endpoint path {endpoint.get('path')!r}")
        for key in ("interval", "scrapeTimeout"):
            if not isinstance(endpoint.get(key), str) or not duration.match(endpoint[key]):
                problems.append(f"endpoint {key} {endpoint.get(key)!r} is not a duration")
    return problems


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_rendered_object_is_valid_kubernetes(helm: Any, value_set: str, kube_version: str) -> None:
    objects = render(helm, VALUE_SETS[value_set])
    problems: list[str] = []
    for obj in objects:
        if obj["kind"] == "ServiceMonitor":
            problems.extend(f"{object_id(obj)}: {p}" for p in _service_monitor_problems(obj, objects))
            continue
        if obj["kind"] == "PrometheusRule":
            problems.extend(
                f"{object_id(obj)}: {p}" for p in crdschema.problems(crdschema.PROMETHEUS_RULE_CRD, obj)
            )
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(part) for part in exc.path)
            problems.append(f"{object_id(obj)}: {where}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{object_id(obj)}: {exc.message}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_object_is_labelled_and_placed(helm: Any, value_set: str) -> None:
    for obj in render(helm, VALUE_SETS[value_set]):
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "rollbackd", object_id(obj)
        assert labels["app.kubernetes.io/instance"] == RELEASE, object_id(obj)
        assert labels["app.kubernetes.io/managed-by"] == "Helm", object_id(obj)
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"].get("namespace"), f"{object_id(obj)} has no namespace"


def test_default_release(helm: Any) -> None:
    objects = render(helm)
    kinds = sorted(object_id(obj) for obj in objects)
    assert kinds == sorted(
        [
            f"ConfigMap {NAMESPACE}/rb-rollbackd",
            f"ConfigMap {NAMESPACE}/rb-rollbackd-switches",
            f"Deployment {NAMESPACE}/rb-rollbackd",
            f"PodDisruptionBudget {NAMESPACE}/rb-rollbackd",
            f"Role {NAMESPACE}/rb-rollbackd-leader-election",
            f"RoleBinding {NAMESPACE}/rb-rollbackd-leader-election",
            f"Role {NAMESPACE}/rb-rollbackd-switches",
            f"RoleBinding {NAMESPACE}/rb-rollbackd-switches",
            f"Service {NAMESPACE}/rb-rollbackd",
            f"ServiceAccount {NAMESPACE}/rb-rollbackd",
        ]
    )
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "rb-rollbackd"
    assert pod["automountServiceAccountToken"] is True, "rollbackd acts through its service account"
    container = container_of(objects)
    assert container["image"] == f"rollbackd:{__version__}"
    assert container["args"] == ["run"]
    [port] = container["ports"]
    assert port == {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}
    assert container["resources"]["limits"] == {"memory": "384Mi"}
    service = one(objects, "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    # Soft anti-affinity: the two replicas prefer different nodes.
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"] == deployment["spec"]["selector"]


# --- security ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_pods_run_locked_down(helm: Any, value_set: str) -> None:
    objects = render(helm, VALUE_SETS[value_set])
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    pod_security = pod["securityContext"]
    assert pod_security["runAsNonRoot"] is True
    assert pod_security["runAsUser"] == 10001
    assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), key
    container = container_of(objects)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    # With a read-only root, exactly the data directory and /tmp are writable, from volumes.
    volumes = volumes_by_name(objects)
    mounts = mounts_by_path(container)
    assert not any("hostPath" in volume for volume in volumes.values())
    writable = {path for path, mount in mounts.items() if not mount.get("readOnly")}
    assert writable == {"/var/lib/rollbackd", "/tmp"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    data = volumes[mounts["/var/lib/rollbackd"]["name"]]
    assert "emptyDir" in data or "persistentVolumeClaim" in data
    assert mounts["/etc/rollbackd"]["readOnly"] is True


def _rules(role: Obj) -> Iterator[tuple[str, str, str]]:
    for rule in role["rules"]:
        assert "nonResourceURLs" not in rule, f"{object_id(role)} grants non-resource URLs"
        assert "resourceNames" not in rule or rule["resourceNames"], object_id(role)
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"{object_id(role)}: wildcard in {field}: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    yield group, resource, verb


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rbac_is_least_privilege(helm: Any, value_set: str) -> None:
    values = merged(default_values(), VALUE_SETS[value_set])
    objects = render(helm, VALUE_SETS[value_set])
    roles = find(objects, "Role") + find(objects, "ClusterRole")
    lease_roles = [role for role in roles if role["metadata"]["name"].endswith("-leader-election")]
    discovery_roles = [role for role in roles if role["metadata"]["name"].endswith("-discovery")]
    gitops_roles = [role for role in roles if role["metadata"]["name"].endswith("-gitops")]
    switches_roles = [role for role in roles if role["metadata"]["name"].endswith("-switches")]
    target_roles = [
        role for role in roles
        if role not in lease_roles + discovery_roles + gitops_roles + switches_roles
    ]
    for role in switches_roles:  # that one ConfigMap, by name, in the release namespace
        assert (role["kind"], role["metadata"]["namespace"]) == ("Role", NAMESPACE), object_id(role)
        assert set(_rules(role)) == ALLOWED_SWITCHES_RULES, object_id(role)
        [rule] = role["rules"]
        [name] = rule["resourceNames"]
        assert not one(objects, "ConfigMap", name, NAMESPACE).get("data"), "the chart sets no switch"
    for role in gitops_roles:
        assert set(_rules(role)) <= GITOPS_RULES["suspend"], object_id(role)
    discovery = values["config"].get("discovery", {})
    for role in discovery_roles:
        assert set(_rules(role)) == DISCOVERY_RULES, object_id(role)
    expected_discovery: set[str] = set()
    if values["rbac"]["create"] and discovery.get("enabled"):
        expected_discovery = (
            {"ClusterRole"} if discovery.get("all_namespaces")
            else {f"Role {namespace}/" for namespace in discovery["namespaces"]}
        )
    assert {"ClusterRole" if role["kind"] == "ClusterRole" else f"Role {role['metadata']['namespace']}/"
            for role in discovery_roles} == expected_discovery
    for role in lease_roles:
        assert role["kind"] == "Role", object_id(role)
        assert role["metadata"]["namespace"] == NAMESPACE, object_id(role)
        assert set(_rules(role)) == ALLOWED_LEASE_RULES, object_id(role)
    rbac = values["rbac"]
    allowed = ALLOWED_TARGET_RULES | (ARGO_ROLLOUTS_RULES if rbac["argoRollouts"] else frozenset())
    allowed |= CONFIGMAP_RULES if rbac.get("configMaps") else frozenset()
    allowed = allowed.union(*(ROUTER_RULES[router] for router in rbac["routers"]))
    for role in target_roles:
        granted = set(_rules(role))
        assert granted <= allowed, f"{object_id(role)} grants {granted - allowed}"
        assert granted == allowed, f"{object_id(role)} lacks {allowed - granted}"

    expected_target_roles: set[str] = set()
    if rbac["create"]:
        if rbac["clusterWide"]:
            expected_target_roles = {"ClusterRole"}
        else:
            expected_target_roles = {f"Role {namespace}/" for namespace in rbac["namespaces"]}
    found = {"ClusterRole" if role["kind"] == "ClusterRole" else f"Role {role['metadata']['namespace']}/"
             for role in target_roles}
    assert found == expected_target_roles
    assert len(lease_roles) == (1 if rbac["create"] and values["leaderElection"]["enabled"] else 0)

    # Every binding gives its own role to the release's service account, and nothing else.
    service_account = one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    bindings = find(objects, "RoleBinding") + find(objects, "ClusterRoleBinding")
    assert len(bindings) == len(roles)
    for binding in bindings:
        role_kind = binding["kind"].removesuffix("Binding")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": binding["metadata"]["name"]
        }
        one(objects, role_kind, binding["metadata"]["name"], binding["metadata"].get("namespace"))
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": service_account, "namespace": NAMESPACE}
        ]
    if not values["serviceAccount"]["create"]:
        assert not find(objects, "ServiceAccount")
        assert service_account == values["serviceAccount"]["name"]


def _kube_calls() -> set[tuple[str, str, str]]:
    """Every ``KubeCall(verb, resource, group, ..., subresource=...)`` in rollbackd's code, as
    (group, resource[/subresource], verb): the requests RBAC must allow."""
    calls: set[tuple[str, str, str]] = set()
    # The operator commands (a port-forward to the leader, its Lease read) use the operator's own
    # kubeconfig credentials, never the daemon's service account: not the chart's to grant.
    operator_side = (REPO / "rollbackd" / "ctl", REPO / "rollbackd" / "kube" / "portforward.py")
    for path in (REPO / "rollbackd").rglob("*.py"):
        if any(path == part or part in path.parents for part in operator_side):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id != "KubeCall":
                continue
            arguments: dict[str, Any] = {}
            for name, arg in zip(("verb", "resource", "group"), node.args, strict=False):
                arguments[name] = arg.value if isinstance(arg, ast.Constant) else None
            for keyword in node.keywords:
                if keyword.arg in ("verb", "resource", "group", "subresource"):
                    value = keyword.value
                    arguments[keyword.arg] = value.value if isinstance(value, ast.Constant) else None
            verb, resource = arguments.get("verb"), arguments.get("resource")
            if verb not in ("get", "list", "watch", "create", "update", "patch", "delete"):
                continue  # e.g. KubeCall(verb="configure", resource="client") for config errors
            assert isinstance(resource, str), f"{path}: KubeCall with a computed resource"
            subresource = arguments.get("subresource")
            full = f"{resource}/{subresource}" if subresource else resource
            calls.add((arguments.get("group") or "", full, verb))
    return calls


def test_rbac_allows_every_request_rollbackd_makes(helm: Any) -> None:
    every_call = _kube_calls()
    # The GitOps reconcilers' objects have Roles of their own (test_rbac_for_gitops_*).
    gitops_calls = {call for call in every_call if call in GITOPS_RULES["suspend"]}
    gitops_roles_granted = set().union(*gitops_roles(render(helm, VALUE_SETS["gitops"])).values())
    assert gitops_calls == gitops_roles_granted == GITOPS_RULES["suspend"]
    calls = every_call - gitops_calls
    assert ("apps", "deployments", "patch") in calls, "the scan of KubeCall(...) found nothing"
    assert ("argoproj.io", "rollouts/status", "patch") in calls
    objects = render(helm, VALUE_SETS["namespaced"])
    granted_in_shop = set(_rules(one(objects, "Role", "rb-rollbackd", "shop")))
    granted_for_leases = set(_rules(one(objects, "Role", "rb-rollbackd-leader-election", NAMESPACE)))
    # The switches' ConfigMap is created by the chart (create cannot be limited to a name); the
    # rest is granted on it alone.
    granted_for_switches = set(_rules(one(render(helm), "Role", "rb-rollbackd-switches", NAMESPACE)))
    granted_for_switches.add(("", "configmaps", "create"))
    granted_for_rollouts = set(_rules(one(render(helm, VALUE_SETS["argo-rollouts"]), "Role", "rb-rollbackd",
                                          "shop")))
    discovering = render(helm, VALUE_SETS["discovery"])
    granted_for_discovery = set(_rules(one(discovering, "Role", "rb-rollbackd-discovery", "shop")))
    configuring = render(helm, VALUE_SETS["config-targets"])
    granted_for_configmaps = set(_rules(one(configuring, "Role", "rb-rollbackd", "shop")))
    missing = {
        call for call in calls
        if call not in (
            granted_for_leases if call[1] == "leases"
            else granted_for_switches | granted_for_configmaps if call[1] == "configmaps"
            else granted_for_rollouts if call[0] == "argoproj.io"
            else granted_for_discovery if call in DISCOVERY_RULES
            else granted_in_shop
        )
    }
    assert not missing, f"rollbackd makes requests the chart does not allow: {sorted(missing)}"
    assert not {call for call in granted_in_shop if call[0] == "argoproj.io"}  # only when asked for
    assert not {call for call in granted_in_shop if call[1] == "configmaps"}  # only when asked for
    cluster_wide = render(helm, VALUE_SETS["cluster-wide"])
    granted_everywhere = set(_rules(one(cluster_wide, "ClusterRole")))
    assert {
        call for call in calls
        if call[1] not in ("leases", "configmaps") and call[0] != "argoproj.io"
        and call not in DISCOVERY_RULES
    } <= granted_everywhere
    assert calls >= DISCOVERY_RULES
    argo_everywhere = render(helm, {**VALUE_SETS["cluster-wide"], "rbac": {
        "clusterWide": True, "argoRollouts": True, "configMaps": True, "routers": ALL_ROUTERS}})
    switches_only = granted_for_switches - granted_for_configmaps  # on the switches' ConfigMap alone
    assert {
        call for call in calls if call[1] != "leases" and call not in DISCOVERY_RULES | switches_only
    } <= set(
        _rules(one(argo_everywhere, "ClusterRole"))
    )


def test_rbac_off_creates_no_rbac_objects(helm: Any) -> None:
    objects = render(helm, VALUE_SETS["existing-account"])
    assert not [obj for obj in objects if obj["kind"] in RBAC_KINDS]


# --- configuration and credentials ---------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_config_map_holds_a_valid_rollbackd_configuration(
    helm: Any, value_set: str, tmp_path: Path
) -> None:
    objects = render(helm, VALUE_SETS[value_set])
    config_map = config_map_of(objects)
    assert set(config_map["data"]) == {"rollbackd.yaml"}
    path = tmp_path / "rollbackd.yaml"
    path.write_text(config_map["data"]["rollbackd.yaml"], encoding="utf-8")
    settings = load_settings(path, environ={})  # rollbackd's own loader and validation
    values = merged(default_values(), VALUE_SETS[value_set])
    assert len(settings.targets) == len(values["config"]["targets"])
    assert settings.http.port == container_of(objects)["ports"][0]["containerPort"]
    # Mounted read-only where ROLLBACKD_CONFIG points.
    container = container_of(objects)
    assert env_of(container)["ROLLBACKD_CONFIG"]["value"] == "/etc/rollbackd/rollbackd.yaml"
    mount = mounts_by_path(container)["/etc/rollbackd"]
    assert mount["readOnly"] is True
    volume = volumes_by_name(objects)[mount["name"]]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_example_targets_reach_the_daemon_unchanged(helm: Any, tmp_path: Path) -> None:
    objects = render(helm, VALUE_SETS["namespaced"])
    path = tmp_path / "rollbackd.yaml"
    path.write_text(config_map_of(objects)["data"]["rollbackd.yaml"], encoding="utf-8")
    from_chart = load_settings(path, environ={})
    from_example = load_settings(EXAMPLE_CONFIG, environ={})
    assert from_chart.targets == from_example.targets
    assert from_chart.safety.dry_run is True
    assert from_chart.prometheus.url == "http://prometheus-operated.monitoring:9090"


def test_a_config_change_is_reloaded_in_place_or_rolls_the_pods(helm: Any) -> None:
    def pod_template(values: Mapping[str, Any]) -> Obj:
        template = one(render(helm, values), "Deployment")["spec"]["template"]
        assert isinstance(template, dict)
        return template

    # By default rollbackd reloads the mounted file itself: a config change leaves the pods be.
    assert pod_template({}) == pod_template({"config": {"interval_s": 5}})
    assert "annotations" not in pod_template({})["metadata"]

    def checksum(config: Mapping[str, Any]) -> str:
        values = {"restartOnConfigChange": True, "config": config}
        return str(pod_template(values)["metadata"]["annotations"]["checksum/config"])

    assert checksum({}) == checksum({"interval_s": 10})
    assert checksum({}) != checksum({"interval_s": 5})


def test_credentials_come_from_existing_secrets(helm: Any) -> None:
    objects = render(helm, VALUE_SETS["namespaced"])
    container = container_of(objects)
    env = env_of(container)
    assert env["ROLLBACKD_STORE__URL"] == {
        "name": "ROLLBACKD_STORE__URL", "valueFrom": {"secretKeyRef": {"name": "rollbackd-db", "key": "dsn"}}
    }
    assert env["ROLLBACKD_EVENTS__MQTT__USERNAME"]["valueFrom"] == {
        "secretKeyRef": {"name": "rollbackd-mqtt", "key": "user"}
    }
    volumes = volumes_by_name(objects)
    mounts = mounts_by_path(container)
    # Files: the API token (re-read on rotation), the MQTT password, the webhooks' signing secrets.
    files = {
        "/var/run/secrets/rollbackd/api": ("rollbackd-admin", "token"),
        "/var/run/secrets/rollbackd/mqtt": ("rollbackd-mqtt", "pass"),
        "/var/run/secrets/rollbackd/webhooks/ops": ("ops-hook", "token"),
        "/var/run/secrets/rollbackd/webhooks/chat": ("chat-hook", "url"),
    }
    for directory, (secret, key) in files.items():
        mount = mounts[directory]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"] == {
            "secretName": secret, "defaultMode": 0o440, "items": [{"key": key, "path": key}]
        }
    assert env["ROLLBACKD_API__TOKEN_FILE"]["value"] == "/var/run/secrets/rollbackd/api/token"
    assert env["ROLLBACKD_EVENTS__MQTT__PASSWORD_FILE"]["value"] == "/var/run/secrets/rollbackd/mqtt/pass"
    # The chart holds no secret of its own, and the ConfigMap names none of them.
    assert not find(objects, "Secret")
    config_text = config_map_of(objects)["data"]["rollbackd.yaml"]
    for secret in ("rollbackd-db", "rollbackd-mqtt", "rollbackd-admin", "ops-hook", "chat-hook"):
        assert secret not in config_text
    notes = render_notes(helm, VALUE_SETS["namespaced"])
    assert "/var/run/secrets/rollbackd/webhooks/ops/token" in notes

    defaults = container_of(render(helm))
    assert not [name for name in env_of(defaults) if "STORE" in name or "MQTT" in name or "API" in name]
    assert not [path for path in mounts_by_path(defaults) if path.startswith("/var/run/secrets/rollbackd")]


def test_metrics_backend_credentials_are_files_from_existing_secrets(helm: Any) -> None:
    objects = render(helm, VALUE_SETS["secured-metrics"])
    container = container_of(objects)
    env = env_of(container)
    volumes = volumes_by_name(objects)
    mounts = mounts_by_path(container)
    files = {
        "/var/run/secrets/rollbackd/prometheus/token": ("metrics-token", ["token"]),
        "/var/run/secrets/rollbackd/prometheus/tls": ("metrics-tls", ["ca.crt", "tls.crt", "tls.key"]),
    }
    for directory, (secret, keys) in files.items():
        mount = mounts[directory]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"] == {
            "secretName": secret, "defaultMode": 0o440, "items": [{"key": key, "path": key} for key in keys]
        }
    assert {name: item["value"] for name, item in env.items() if name.startswith("ROLLBACKD_PROMETHEUS")} == {
        "ROLLBACKD_PROMETHEUS__BEARER_TOKEN_FILE": "/var/run/secrets/rollbackd/prometheus/token/token",
        "ROLLBACKD_PROMETHEUS__TLS__CA_FILE": "/var/run/secrets/rollbackd/prometheus/tls/ca.crt",
        "ROLLBACKD_PROMETHEUS__TLS__CERT_FILE": "/var/run/secrets/rollbackd/prometheus/tls/tls.crt",
        "ROLLBACKD_PROMETHEUS__TLS__KEY_FILE": "/var/run/secrets/rollbackd/prometheus/tls/tls.key",
    }
    config_text = config_map_of(objects)["data"]["rollbackd.yaml"]
    assert "metrics-token" not in config_text
    assert "metrics-tls" not in config_text
    # Nothing of it unless asked for.
    defaults = container_of(render(helm))
    assert not [name for name in env_of(defaults) if name.startswith("ROLLBACKD_PROMETHEUS")]


def test_mqtt_without_a_user_name(helm: Any) -> None:
    values = {"credentials": {"mqtt": {"existingSecret": "broker", "usernameKey": ""}}}
    env = env_of(container_of(render(helm, values)))
    assert "ROLLBACKD_EVENTS__MQTT__USERNAME" not in env
    assert env["ROLLBACKD_EVENTS__MQTT__PASSWORD_FILE"]["value"] == "/var/run/secrets/rollbackd/mqtt/password"


def _settings_path_exists(keys: tuple[str, ...]) -> bool:
    model: Any = Settings
    for key in keys:
        # An optional section (prometheus.basic_auth: BasicAuthSettings | None) is its model.
        models = [arg for arg in typing.get_args(model)
                  if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if len(models) == 1:
            model = models[0]
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or key not in model.model_fields:
            return False
        model = model.model_fields[key].annotation
    return True


def test_every_variable_the_chart_sets_names_a_setting(helm: Any) -> None:
    """A ROLLBACKD_<SECTION>__<KEY> variable that names no setting is either refused (unknown key
    in a known section: the daemon does not start) or silently ignored (unknown section)."""
    names: set[str] = set()
    for value_set in VALUE_SETS.values():
        names |= set(env_of(container_of(render(helm, value_set))))
    keys = {
        name: tuple(name[len(ENV_PREFIX):].lower().split(ENV_NESTED_DELIMITER))
        for name in names
        if name.startswith(ENV_PREFIX) and name != "ROLLBACKD_CONFIG"
    }
    assert len(keys) >= 8
    wrong = sorted(name for name, path in keys.items() if not _settings_path_exists(path))
    assert not wrong, f"the chart sets variables that name no setting: {wrong}"


def _pod_environment(container: Obj) -> dict[str, str]:
    """The environment the pod would have, with stand-ins for what Kubernetes fills in."""
    fields = {"metadata.name": "rb-rollbackd-5d8f7c9b4-x2x7q", "metadata.namespace": NAMESPACE}
    environ: dict[str, str] = {}
    for name, item in env_of(container).items():
        if "value" in item:
            environ[name] = str(item["value"])
        elif "fieldRef" in item["valueFrom"]:
            environ[name] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        elif name == "ROLLBACKD_STORE__URL":
            environ[name] = "postgresql://rollbackd:secret@postgres.db:5432/rollbackd"
        else:
            environ[name] = f"{name.lower()}-from-secret"
    return environ


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_the_daemon_accepts_the_pod_configuration(helm: Any, value_set: str, tmp_path: Path) -> None:
    """rollbackd's own loader on the rendered file and environment: what `rollbackd run` in the pod
    starts with."""
    objects = render(helm, VALUE_SETS[value_set])
    values = merged(default_values(), VALUE_SETS[value_set])
    path = tmp_path / "rollbackd.yaml"
    path.write_text(config_map_of(objects)["data"]["rollbackd.yaml"], encoding="utf-8")
    environ = _pod_environment(container_of(objects))
    settings = load_settings(path, environ=environ)

    election = values["leaderElection"]
    assert settings.leader_election.enabled is election["enabled"]
    if election["enabled"]:
        fullname = one(objects, "Deployment")["metadata"]["name"]
        assert settings.leader_election.lease_name == (election["leaseName"] or fullname)
        assert settings.leader_election.lease_duration_s == election["leaseDurationS"]
        assert settings.leader_election.renew_period_s == election["renewPeriodS"]
        # The Lease's namespace and this replica's identity in it.
        assert environ["POD_NAMESPACE"] == NAMESPACE
        assert environ["POD_NAME"]
    assert settings.store.data_dir == "/var/lib/rollbackd"
    credentials = values["credentials"]
    assert (settings.store.url is not None) == bool(credentials["database"]["existingSecret"])
    token_file = "/var/run/secrets/rollbackd/api/token" if values["adminToken"]["existingSecret"] else None
    assert settings.api.token_file == token_file
    if credentials["mqtt"]["existingSecret"]:
        assert settings.events.mqtt.username == "rollbackd_events__mqtt__username-from-secret"
        assert settings.events.mqtt.password_file == "/var/run/secrets/rollbackd/mqtt/pass"
    prometheus = credentials["prometheus"]
    token_file = None
    if prometheus["bearerToken"]["existingSecret"]:
        token_file = f"/var/run/secrets/rollbackd/prometheus/token/{prometheus['bearerToken']['key']}"
    elif prometheus["serviceAccountToken"]:
        token_file = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert settings.prometheus.bearer_token_file == token_file
    if prometheus["basicAuth"]["existingSecret"]:
        assert settings.prometheus.basic_auth is not None
        username = "rollbackd_prometheus__basic_auth__username-from-secret"
        assert settings.prometheus.basic_auth.username == username
        assert settings.prometheus.basic_auth.password_file == (
            f"/var/run/secrets/rollbackd/prometheus/basic-auth/{prometheus['basicAuth']['passwordKey']}"
        )
    else:
        assert settings.prometheus.basic_auth is None
    tls = prometheus["tls"]
    expected_tls = {
        setting: f"/var/run/secrets/rollbackd/prometheus/tls/{tls[key]}" if tls["existingSecret"] else None
        for setting, key in (("ca_file", "caKey"), ("cert_file", "certKey"), ("key_file", "keyKey"))
    }
    assert settings.prometheus.tls.model_dump(include=set(expected_tls)) == expected_tls
    # The switches: where the daemon keeps them is where the chart made room for them.
    switches = [obj for obj in find(objects, "ConfigMap") if obj["metadata"]["name"].endswith("-switches")]
    if switches_place(settings, kubernetes=True) == "kubernetes":
        name = settings.safety.switches_configmap or default_name(settings.leader_election.lease_name)
        assert [object_id(obj) for obj in switches] == [f"ConfigMap {NAMESPACE}/{name}"]
        if values["rbac"]["create"]:
            fullname = one(objects, "Deployment")["metadata"]["name"]
            role = one(objects, "Role", f"{fullname}-switches", NAMESPACE)
            assert role["rules"][0]["resourceNames"] == [name]
    else:
        assert not switches
    secret_files = {hook.name: hook.secret_file for hook in settings.events.webhooks}
    assert secret_files == {
        hook["name"]: f"/var/run/secrets/rollbackd/webhooks/{hook['name']}/{hook['key']}"
        for hook in credentials["webhooks"]
    }


def test_a_webhook_keeps_a_secret_of_its_own(helm: Any, tmp_path: Path) -> None:
    values = {
        "config": {"events": {"webhooks": [
            {"name": "ops", "url": "https://ops.example.com/hook", "secret_env": "OPS_HOOK_SECRET"},
        ]}},
        "credentials": {"webhooks": [{"name": "ops", "existingSecret": "ops-hook", "key": "token"}]},
    }
    path = tmp_path / "rollbackd.yaml"
    path.write_text(config_map_of(render(helm, values))["data"]["rollbackd.yaml"], encoding="utf-8")
    [hook] = load_settings(path, environ={}).events.webhooks
    assert (hook.secret_env, hook.secret_file) == ("OPS_HOOK_SECRET", None)


def test_leader_election_settings(helm: Any) -> None:
    env = env_of(container_of(render(helm, VALUE_SETS["namespaced"])))
    assert env["ROLLBACKD_LEADER_ELECTION__ENABLED"]["value"] == "true"
    assert env["ROLLBACKD_LEADER_ELECTION__LEASE_NAME"]["value"] == "rollbackd-leader"
    assert env["ROLLBACKD_LEADER_ELECTION__LEASE_DURATION_S"]["value"] == "30"
    assert env["ROLLBACKD_LEADER_ELECTION__RENEW_PERIOD_S"]["value"] == "10"
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    default_env = env_of(container_of(render(helm)))
    assert default_env["ROLLBACKD_LEADER_ELECTION__LEASE_NAME"]["value"] == "rb-rollbackd"
    single = env_of(container_of(render(helm, VALUE_SETS["single-sqlite"])))
    assert single["ROLLBACKD_LEADER_ELECTION__ENABLED"]["value"] == "false"
    assert "ROLLBACKD_LEADER_ELECTION__LEASE_NAME" not in single


def test_the_switches_configmap_follows_where_rollbackd_keeps_the_switches(helm: Any) -> None:
    def switches(values: dict[str, Any]) -> list[str]:
        objects = render(helm, values)
        return [object_id(obj) for obj in objects if obj["metadata"]["name"].endswith("-switches")]

    database = {"credentials": {"database": {"existingSecret": "rollbackd-db"}}}
    assert switches(database) == []  # PostgreSQL: the store's rows, shared
    assert switches({"config": {"safety": {"switches": "store"}}}) == []
    assert switches({"leaderElection": {"enabled": False}, "replicaCount": 1}) == []
    safety = {"switches": "kubernetes", "switches_configmap": "oncall-switches"}
    custom = {**database, "config": {"safety": safety}}
    objects = render(helm, custom)
    assert {object_id(obj) for obj in objects if obj["metadata"]["name"].endswith("-switches")} == {
        f"ConfigMap {NAMESPACE}/oncall-switches",
        f"Role {NAMESPACE}/rb-rollbackd-switches",
        f"RoleBinding {NAMESPACE}/rb-rollbackd-switches",
    }
    assert one(objects, "Role", "rb-rollbackd-switches")["rules"][0]["resourceNames"] == ["oncall-switches"]
    # Without the chart's RBAC, the ConfigMap is still there for the account given the rights.
    assert switches({"rbac": {"create": False}}) == [f"ConfigMap {NAMESPACE}/rb-rollbackd-switches"]


# --- the optional parts --------------------------------------------------------------------------


def test_namespaced_release_with_everything_on(helm: Any) -> None:
    objects = render(helm, VALUE_SETS["namespaced"])
    deployment = one(objects, "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]["spec"]
    container = container_of(objects)
    assert container["image"] == "registry.example.com/platform/rollbackd:0.1.0-rc.1"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["priorityClassName"] == "platform-critical"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    metadata = deployment["spec"]["template"]["metadata"]
    assert metadata["annotations"]["example.com/team"] == "platform"
    assert metadata["labels"]["team"] == "platform"
    assert env_of(container)["ROLLBACKD_LOG__LEVEL"]["value"] == "DEBUG"
    assert mounts_by_path(container)["/etc/ssl/corp"]["readOnly"] is True
    [hard] = pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert hard["labelSelector"]["matchLabels"] == selector
    [spread] = pod["topologySpreadConstraints"]
    assert spread["labelSelector"] == {"matchLabels": selector}, "one without a selector gets the pods'"

    monitor = one(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s", "honorLabels": True}
    ]

    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["podSelector"]["matchLabels"] == selector
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{
        "ports": [{"port": "http", "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
    }]
    dns, https = policy["egress"]
    assert {port["port"] for port in dns["ports"]} == {53}
    assert https == {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 443}]}


def test_network_policy_without_egress_rules_leaves_egress_open(helm: Any) -> None:
    objects = render(helm, {"networkPolicy": {"enabled": True}})
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    assert "egress" not in policy
    assert policy["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]


def test_cluster_wide_release(helm: Any) -> None:
    objects = render(helm, VALUE_SETS["cluster-wide"])
    assert one(objects, "Deployment")["spec"]["replicas"] == 3
    assert one(objects, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "50%"
    role = one(objects, "ClusterRole")
    binding = one(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"] == f"rb-rollbackd-{NAMESPACE}"
    assert not find(objects, "Role", "rb-rollbackd")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert set(pod["affinity"]) == {"nodeAffinity"}, "an explicit affinity replaces the preset"


def test_opt_in_by_annotation_adds_only_list_and_watch_on_deployments_where_allowed(helm: Any) -> None:
    without = render(helm, {"rbac": {"namespaces": ["shop", "payments", "search"]}})
    objects = render(helm, VALUE_SETS["discovery"])

    added = [obj for obj in objects if obj not in without and obj["kind"] in RBAC_KINDS]
    assert sorted(object_id(obj) for obj in added) == sorted(
        f"{kind} {namespace}/rb-rollbackd-discovery"
        for kind in ("Role", "RoleBinding") for namespace in ("search", "shop")
    )
    for namespace in ("shop", "search"):
        assert set(_rules(one(objects, "Role", "rb-rollbackd-discovery", namespace))) == DISCOVERY_RULES
    assert not find(objects, "Role", "rb-rollbackd-discovery", "payments")
    assert not {call for role in find(without, "Role") for call in _rules(role)} & DISCOVERY_RULES

    everywhere = render(helm, {"rbac": {"clusterWide": True},
                               "config": {"discovery": {"enabled": True, "all_namespaces": True}}})
    role = one(everywhere, "ClusterRole", f"rb-rollbackd-{NAMESPACE}-discovery")
    assert set(_rules(role)) == DISCOVERY_RULES
    binding = one(everywhere, "ClusterRoleBinding", f"rb-rollbackd-{NAMESPACE}-discovery")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_single_replica_on_a_persistent_volume(helm: Any) -> None:
    objects = render(helm, VALUE_SETS["single-sqlite"])
    claim = one(objects, "PersistentVolumeClaim", "rb-rollbackd-data")
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast-ssd",
        "resources": {"requests": {"storage": "5Gi"}},
    }
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    data = volumes_by_name(objects)["data"]
    assert data == {"name": "data", "persistentVolumeClaim": {"claimName": "rb-rollbackd-data"}}
    assert not find(objects, "PodDisruptionBudget")
    assert not find(objects, "Role")
    assert "affinity" not in one(objects, "Deployment")["spec"]["template"]["spec"]

    existing = render(helm, VALUE_SETS["existing-account"])
    assert not find(existing, "PersistentVolumeClaim")
    assert volumes_by_name(existing)["data"]["persistentVolumeClaim"] == {"claimName": "rollbackd-audit"}
    assert one(existing, "Deployment")["metadata"]["name"] == "audit"


def test_notes_tell_what_is_missing(helm: Any) -> None:
    notes = render_notes(helm)
    assert "kubectl -n platform port-forward service/rb-rollbackd 8080:8080" in notes
    assert "config.targets is empty" in notes
    assert "rbac.namespaces is empty" in notes
    assert "adminToken.existingSecret is not set: with no API token, rollbackd refuses every write" in notes
    configured = render_notes(helm, VALUE_SETS["namespaced"])
    assert "shop/checkout (canary)" in configured
    assert "Rollbacks are allowed in: shop, payments." in configured
    assert "Dry run" in configured
    assert "is empty" not in configured


# --- guards and values.schema.json ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"leaderElection": {"enabled": False}}, "replicaCount > 1 needs leaderElection.enabled"),
        ({"leaderElection": {"renewPeriodS": 6}},
         "renewPeriodS must be at most leaderElection.leaseDurationS / 3"),
        ({"persistence": {"enabled": True}}, "replicas cannot share"),
        ({"config": {"store": {"data_dir": "/data"}}}, "config.store.data_dir must be /var/lib/rollbackd"),
        ({"config": {"targets": example_targets()}}, 'in namespace "shop", which is not in rbac.namespaces'),
        ({"config": {"targets": example_targets()}, "rbac": {"namespaces": ["shop"], "argoRollouts": True}},
         "config.targets: shop/cart routes its canary with gateway-api, which is not in rbac.routers: "
         "rollbackd could not abort it (add gateway-api to rbac.routers)"),
        ({"rbac": {"namespaces": ["shop"]}, "config": {"targets": [ROLLOUT_TARGET]}},
         "has strategy argo-rollout, but rbac.argoRollouts is false"),
        ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
        ({"credentials": {"webhooks": [{"name": "ops", "existingSecret": "ops-hook", "key": "token"}]}},
         'no webhook named "ops" in config.events.webhooks'),
        ({"credentials": {"prometheus": {"serviceAccountToken": True,
                                         "basicAuth": {"existingSecret": "metrics-user"}}}},
         "credentials.prometheus: serviceAccountToken, basicAuth all set the Authorization header"),
        ({"credentials": {"prometheus": {"tls": {"existingSecret": "metrics-ca"}}}},
         'credentials.prometheus.tls applies to an https:// URL, and config.prometheus.url is '
         '"http://prometheus:9090"'),
        ({"config": {"prometheus": {"url": "https://prometheus:9090"}},
          "credentials": {"prometheus": {"tls": {"existingSecret": "metrics-tls", "certKey": "tls.crt"}}}},
         "give certKey and keyKey together"),
        ({"rbac": {"namespaces": ["shop"]},
          "config": {"discovery": {"enabled": True, "namespaces": ["shop", "payments"]}}},
         'config.discovery.namespaces: "payments" is not in rbac.namespaces: rollbackd could not roll back '
         "the releases that opt in there"),
        ({"rbac": {"namespaces": ["shop"]},
          "config": {"discovery": {"enabled": True, "all_namespaces": True, "namespaces": ["shop"]}}},
         "config.discovery.all_namespaces watches every namespace, but rbac.clusterWide is false"),
    ],
    ids=["replicas-without-lease", "renew-too-slow", "shared-sqlite", "data-dir", "unpermitted-target",
         "router-not-granted", "rollout-without-rbac", "no-account-name", "secret-for-no-webhook",
         "two-authorizations", "tls-over-http", "cert-without-key", "discovery-not-granted",
         "discovery-everywhere-without-cluster-rbac"],
)
def test_unsafe_combinations_are_refused(helm: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(helm, values)


def test_values_schema_is_valid_and_accepts_every_value_set() -> None:
    schema = values_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema)
    for name, values in VALUE_SETS.items():
        errors = [error.message for error in validator.iter_errors(merged(default_values(), values))]
        assert not errors, f"{name}: {errors}"


BAD_VALUES = [
    pytest.param({"replicaCount": -1}, "replicaCount", id="negative-replicas"),
    pytest.param({"replicaCount": 0}, "replicaCount", id="no-replicas"),
    pytest.param({"image": {"tag": 5}}, "image.tag", id="numeric-tag"),
    pytest.param({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy", id="pull-policy"),
    pytest.param({"rbac": {"namespaces": "shop"}}, "rbac.namespaces", id="namespaces-not-a-list"),
    pytest.param({"rbac": {"namespaces": ["Shop_1"]}}, "rbac.namespaces.0", id="namespace-name"),
    pytest.param({"rbac": {"routers": ["traefik"]}}, "rbac.routers.0", id="unknown-router"),
    pytest.param({"replicas": 2}, "", id="unknown-top-level-key"),
    pytest.param({"image": {"digest": "sha256:0"}}, "image", id="unknown-nested-key"),
    pytest.param({"config": {"http": {"port": 0}}}, "config.http.port", id="random-port"),
    pytest.param({"leaderElection": {"leaseDurationS": "15"}}, "leaderElection.leaseDurationS",
                 id="string-duration"),
    pytest.param({"credentials": {"webhooks": [{"name": "ops", "existingSecret": "hook"}]}},
                 "credentials.webhooks.0", id="webhook-without-key"),
    pytest.param({"adminToken": {"existingSecret": "Admin Token"}}, "adminToken.existingSecret",
                 id="secret-name"),
    pytest.param({"service": {"port": 70000}}, "service.port", id="port-range"),
    pytest.param({"podAntiAffinity": "sometimes"}, "podAntiAffinity", id="anti-affinity-preset"),
    pytest.param({"serviceMonitor": {"interval": "often"}}, "serviceMonitor.interval", id="interval"),
    pytest.param({"tmpSizeLimit": "lots"}, "tmpSizeLimit", id="quantity"),
    pytest.param({"gitops": {"mode": "pause"}}, "gitops.mode", id="gitops-mode"),
    pytest.param({"gitops": {"flux": {"namespaces": ["Flux_System"]}}}, "gitops.flux.namespaces.0",
                 id="gitops-namespace"),
]


@pytest.mark.parametrize(("override", "where"), BAD_VALUES)
def test_values_schema_rejects_bad_values(override: dict[str, Any], where: str) -> None:
    validator = jsonschema.Draft7Validator(values_schema())
    errors = list(validator.iter_errors(merged(default_values(), override)))
    assert errors, f"accepted {override}"
    assert where in {".".join(str(part) for part in error.absolute_path) for error in errors}


@pytest.mark.parametrize(("override", "where"), BAD_VALUES)
def test_helm_refuses_bad_values(helm: Any, override: dict[str, Any], where: str) -> None:
    """Helm itself applies values.schema.json on install, upgrade and template."""
    with pytest.raises(helm.HelmValuesError, match="schema"):
        render(helm, override)


# --- documentation -------------------------------------------------------------------------------


#: Values documented as a whole (their keys are Kubernetes' or rollbackd's own).
WHOLE_VALUES = frozenset(
    {"config", "resources", "podSecurityContext", "securityContext", "livenessProbe", "readinessProbe",
     "startupProbe"}
)


def _leaf_paths(value: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(value, dict) and value and prefix not in WHOLE_VALUES:
        for key, item in value.items():
            yield from _leaf_paths(item, f"{prefix}.{key}" if prefix else key)
    else:
        yield prefix


def test_every_value_is_in_the_schema_and_the_readme() -> None:
    readme = (CHART_DIR / "README.md").read_text(encoding="utf-8")
    values_section = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([^`]+)` \|", values_section, flags=re.MULTILINE))
    paths = set(_leaf_paths(default_values()))
    assert paths - documented == set(), "values missing from the README's table"
    assert documented - paths == set(), "README documents values that do not exist"
    properties = set(values_schema()["properties"]) - {"global"}
    assert properties == set(default_values()), "values.schema.json and values.yaml differ in top-level keys"


# --- GitOps -----------------------------------------------------------------------------------------


def gitops_roles(objects: list[Obj]) -> dict[str, set[tuple[str, str, str]]]:
    """namespace -> what the GitOps Role there grants."""
    return {role["metadata"]["namespace"]: set(_rules(role))
            for role in find(objects, "Role") if role["metadata"]["name"].endswith("-gitops")}


GITOPS_VALUES = {"gitops": {"argocd": {"namespaces": ["argocd"]},
                            "flux": {"enabled": True, "namespaces": ["flux-system", "shop"]}},
                 "rbac": {"namespaces": ["shop"]}}


def test_rbac_for_gitops_grows_by_the_mode_in_the_namespaces_named(helm: Any) -> None:
    flux = {(r.group, r.plural, verb) for r in (KUSTOMIZATION, HELMRELEASE) for verb in ("get", "patch")}
    argocd = {(APPLICATION.group, APPLICATION.plural, verb) for verb in ("get", "patch")}
    objects = render(helm, GITOPS_VALUES)
    assert gitops_roles(objects) == {"argocd": argocd, "flux-system": flux, "shop": flux}
    for role in (r for r in find(objects, "Role") if r["metadata"]["name"].endswith("-gitops")):
        binding = one(objects, "RoleBinding", role["metadata"]["name"], role["metadata"]["namespace"])
        assert binding["roleRef"]["name"] == role["metadata"]["name"]

    refuse = render(helm, merged(GITOPS_VALUES, {"gitops": {"mode": "refuse"}}))
    assert {ns: {verb for _, _, verb in rules} for ns, rules in gitops_roles(refuse).items()} == {
        "argocd": {"get"}, "flux-system": {"get"}, "shop": {"get"},
    }
    assert gitops_roles(render(helm, merged(GITOPS_VALUES, {"gitops": {"mode": "ignore"}}))) == {}
    assert gitops_roles(render(helm, {"gitops": {"flux": {"enabled": False}}})) == {}
    assert gitops_roles(render(helm, merged(GITOPS_VALUES, {"rbac": {"create": False}}))) == {}


def test_rbac_for_gitops_follows_a_target_that_asks_for_more(helm: Any) -> None:
    targets = [{**example_targets()[0], "gitops": "suspend"}]
    values = merged(GITOPS_VALUES, {"gitops": {"mode": "refuse"}, "config": {"targets": targets}})
    objects = render(helm, values)
    assert {verb for rules in gitops_roles(objects).values() for _, _, verb in rules} == {"get", "patch"}


def test_the_gitops_mode_reaches_the_daemon_and_is_set_in_one_place(helm: Any) -> None:
    objects = render(helm, merged(GITOPS_VALUES, {"gitops": {"mode": "refuse"}}))
    config = yaml.safe_load(config_map_of(objects)["data"]["rollbackd.yaml"])
    assert config["gitops"]["mode"] == "refuse"
    mismatch = 'config.gitops.mode is "ignore" but gitops.mode'
    with pytest.raises(helm.HelmRenderError, match=re.escape(mismatch)):
        render(helm, {"config": {"gitops": {"mode": "ignore"}}})
