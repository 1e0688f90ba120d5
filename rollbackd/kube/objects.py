"""Thin, typed helpers for the objects rollback actions read and change.

Objects are plain ``dict``s exactly as the API server sends them (camelCase keys:
``obj["spec"]["template"]["metadata"]["labels"]``), never ``kubernetes_asyncio`` model objects:
what is read can be compared, copied into a patch and logged without conversions, and a field the
client's models do not know is never dropped. Patches are plain ``dict``s too (``list`` for JSON
patches).

Patch types (``patch_type=``):

- ``"strategic"`` (default): Kubernetes' strategic merge patch; lists of containers, ports, env
  entries ... merge by their key (``name``) instead of being replaced;
- ``"merge"``: JSON merge patch (RFC 7386): mappings merge, ``None`` deletes a key, lists are
  replaced whole;
- ``"json"``: JSON patch (RFC 6902), a list of operations; ``test`` operations make it conditional.

Label selectors are sent to the server and applied again here, so the result is right whether or
not the server filtered (some test servers do not).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import KubeCall, KubeNotFound

#: The Deployment revision a ReplicaSet (and its Deployment) carries, as a decimal string.
REVISION_ANNOTATION = "deployment.kubernetes.io/revision"
#: The label the deployment controller adds to a ReplicaSet's pods and selector.
POD_TEMPLATE_HASH_LABEL = "pod-template-hash"
#: The label linking an EndpointSlice to its Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: ingress-nginx: ``"true"`` makes an Ingress the canary of the Ingress with the same host/path.
CANARY_ANNOTATION = "nginx.ingress.kubernetes.io/canary"
#: ingress-nginx: percentage of requests (``"0"``..``"100"``) the canary Ingress receives.
CANARY_WEIGHT_ANNOTATION = "nginx.ingress.kubernetes.io/canary-weight"

#: Argo Rollouts marks the objects it steers (Services, Ingresses, routes) with this annotation.
ARGO_ROLLOUTS_MANAGED_ANNOTATION = "argo-rollouts.argoproj.io/managed-by-rollouts"

PatchType = Literal["strategic", "merge", "json"]

_CONTENT_TYPES: Mapping[PatchType, str] = {
    "strategic": "application/strategic-merge-patch+json",
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}

Patch = Obj | Sequence[Obj]


def _content_type(patch: Patch, patch_type: PatchType) -> str:
    if patch_type == "json" and isinstance(patch, Mapping):
        raise TypeError("a JSON patch is a list of operations, not a mapping")
    if patch_type != "json" and not isinstance(patch, Mapping):
        raise TypeError(f"a {patch_type} patch is a mapping; use patch_type='json' for a list of operations")
    return _CONTENT_TYPES[patch_type]


def _body(patch: Patch) -> Any:
    return dict(patch) if isinstance(patch, Mapping) else [dict(op) for op in patch]


# --- small pure helpers --------------------------------------------------------------------------

def metadata_of(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The object's ``metadata`` (empty if absent)."""
    value = obj.get("metadata")
    return value if isinstance(value, Mapping) else {}


def annotations_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    value = metadata_of(obj).get("annotations")
    return value if isinstance(value, Mapping) else {}


def labels_of(obj: Mapping[str, Any]) -> Mapping[str, str]:
    value = metadata_of(obj).get("labels")
    return value if isinstance(value, Mapping) else {}


def revision(obj: Mapping[str, Any]) -> int | None:
    """The ``deployment.kubernetes.io/revision`` of a ReplicaSet or Deployment; ``None`` if absent
    or not a number."""
    value = annotations_of(obj).get(REVISION_ANNOTATION)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def fully_available(deployment: Mapping[str, Any] | None) -> bool:
    """All desired replicas available and updated, and the latest spec observed by the controller.

    A stalled rollout passes as long as the old pods still count as available: what
    :func:`rollout_complete` does not let through."""
    if not deployment:
        return False
    desired = int((deployment.get("spec") or {}).get("replicas", 1) or 0)
    status = deployment.get("status") or {}
    available = int(status.get("availableReplicas", 0) or 0)
    observed = status.get("observedGeneration")
    generation = metadata_of(deployment).get("generation")
    caught_up = observed is None or generation is None or int(observed) >= int(generation)
    updated = int(status.get("updatedReplicas", available) or 0)
    return caught_up and available >= desired and updated >= desired


def rollout_complete(deployment: Mapping[str, Any] | None) -> bool:
    """What ``kubectl rollout status`` waits for: the latest generation observed, every desired
    replica updated, no old replica left, every updated replica available (stricter than
    :func:`fully_available`)."""
    if not deployment or not fully_available(deployment):
        return False
    status = deployment.get("status") or {}
    total = int(status.get("replicas", 0) or 0)
    updated = int(status.get("updatedReplicas", 0) or 0)
    available = int(status.get("availableReplicas", 0) or 0)
    return total <= updated and available >= updated


def owned_by(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> bool:
    """Whether ``obj`` lists ``owner`` (by ``metadata.uid``) among its ``ownerReferences``."""
    uid = metadata_of(owner).get("uid")
    if not uid:
        return False
    refs = metadata_of(obj).get("ownerReferences") or []
    return any(isinstance(ref, Mapping) and ref.get("uid") == uid for ref in refs)


def selector_string(match_labels: Mapping[str, str]) -> str:
    """``{"app": "web", "track": "stable"}`` -> ``"app=web,track=stable"`` (a ``labelSelector``)."""
    return ",".join(f"{key}={value}" for key, value in sorted(match_labels.items()))


def matches(obj: Mapping[str, Any], match_labels: Mapping[str, str]) -> bool:
    """Whether the object's labels include every ``key=value`` of ``match_labels``."""
    own = labels_of(obj)
    return all(own.get(key) == value for key, value in match_labels.items())


def ready_addresses(slices: Iterable[Mapping[str, Any]]) -> list[str]:
    """Addresses of the ready endpoints of EndpointSlices (``conditions.ready`` not false), sorted."""
    found: set[str] = set()
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            conditions = endpoint.get("conditions") or {}
            if conditions.get("ready") is False:
                continue
            found.update(endpoint.get("addresses") or [])
    return sorted(found)


def _filtered(items: Obj, match_labels: Mapping[str, str] | None) -> list[Obj]:
    listed = items.get("items") or []
    return [item for item in listed if match_labels is None or matches(item, match_labels)]


# --- Deployments and ReplicaSets -----------------------------------------------------------------

async def get_deployment(kube: KubeClient, *, namespace: str, name: str) -> Obj:
    """Read a Deployment. Raises :class:`~rollbackd.kube.errors.KubeNotFound` if it does not exist."""
    call = KubeCall("get", "deployments", "apps", namespace, name)
    return await kube.request(call, kube.apps.read_namespaced_deployment, name, namespace)


async def patch_deployment(
    kube: KubeClient, *, namespace: str, name: str, patch: Patch, patch_type: PatchType = "strategic"
) -> Obj:
    """Patch a Deployment; returns it as stored after the patch."""
    call = KubeCall("patch", "deployments", "apps", namespace, name)
    return await kube.request(call, kube.apps.patch_namespaced_deployment, name, namespace, _body(patch),
                              _content_type=_content_type(patch, patch_type))


async def scale_deployment(kube: KubeClient, *, namespace: str, name: str, replicas: int) -> Obj:
    """Set a Deployment's replicas through its ``scale`` subresource (what ``kubectl scale`` does;
    RBAC: ``patch`` on ``deployments/scale``). Returns the server's answer (a ``Scale``:
    ``spec.replicas`` is the new value)."""
    if replicas < 0:
        raise ValueError(f"replicas must not be negative, not {replicas}")
    call = KubeCall("patch", "deployments", "apps", namespace, name, subresource="scale")
    return await kube.request(call, kube.apps.patch_namespaced_deployment_scale, name, namespace,
                              {"spec": {"replicas": replicas}}, _content_type=_CONTENT_TYPES["merge"])


async def list_replicasets(
    kube: KubeClient, *, namespace: str, match_labels: Mapping[str, str] | None = None
) -> list[Obj]:
    """ReplicaSets in ``namespace``, only those whose labels include ``match_labels`` if given."""
    call = KubeCall("list", "replicasets", "apps", namespace)
    kwargs: dict[str, Any] = {}
    if match_labels:
        kwargs["label_selector"] = selector_string(match_labels)
    listed = await kube.request(call, kube.apps.list_namespaced_replica_set, namespace, **kwargs)
    return _filtered(listed, match_labels)


async def owned_replicasets(kube: KubeClient, *, deployment: Mapping[str, Any]) -> list[Obj]:
    """The ReplicaSets a Deployment owns (``ownerReferences`` carry its ``uid``), oldest revision
    first; ReplicaSets without a revision annotation come first (revision 0).

    The list is narrowed by the Deployment's ``spec.selector.matchLabels`` on the server, then by
    owner here -- the same way ``kubectl rollout history`` finds them.
    """
    namespace = metadata_of(deployment).get("namespace")
    if not isinstance(namespace, str) or not namespace:
        raise ValueError("the Deployment has no metadata.namespace")
    selector = (deployment.get("spec") or {}).get("selector") or {}
    match_labels = selector.get("matchLabels") if isinstance(selector, Mapping) else None
    candidates = await list_replicasets(kube, namespace=namespace, match_labels=match_labels or None)
    owned = [rs for rs in candidates if owned_by(rs, deployment)]
    return sorted(owned, key=lambda rs: (revision(rs) or 0, str(metadata_of(rs).get("name"))))


# --- Services, Ingresses, EndpointSlices ---------------------------------------------------------

async def get_service(kube: KubeClient, *, namespace: str, name: str) -> Obj:
    call = KubeCall("get", "services", "", namespace, name)
    return await kube.request(call, kube.core.read_namespaced_service, name, namespace)


async def patch_service(
    kube: KubeClient, *, namespace: str, name: str, patch: Patch, patch_type: PatchType = "strategic"
) -> Obj:
    """Patch a Service (e.g. its ``spec.selector`` to switch a blue-green pair back)."""
    call = KubeCall("patch", "services", "", namespace, name)
    return await kube.request(call, kube.core.patch_namespaced_service, name, namespace, _body(patch),
                              _content_type=_content_type(patch, patch_type))


async def get_ingress(kube: KubeClient, *, namespace: str, name: str) -> Obj:
    call = KubeCall("get", "ingresses", "networking.k8s.io", namespace, name)
    return await kube.request(call, kube.networking.read_namespaced_ingress, name, namespace)


async def patch_ingress(
    kube: KubeClient, *, namespace: str, name: str, patch: Patch, patch_type: PatchType = "merge"
) -> Obj:
    """Patch an Ingress. The default is a JSON merge patch, the natural fit for annotations (e.g.
    ``{"metadata": {"annotations": {CANARY_WEIGHT_ANNOTATION: "0"}}}``; ``None`` removes one)."""
    call = KubeCall("patch", "ingresses", "networking.k8s.io", namespace, name)
    return await kube.request(call, kube.networking.patch_namespaced_ingress, name, namespace, _body(patch),
                              _content_type=_content_type(patch, patch_type))


async def list_endpointslices(kube: KubeClient, *, namespace: str, service: str) -> list[Obj]:
    """The EndpointSlices of a Service (label ``kubernetes.io/service-name``)."""
    call = KubeCall("list", "endpointslices", "discovery.k8s.io", namespace)
    match_labels = {SERVICE_NAME_LABEL: service}
    listed = await kube.request(call, kube.discovery.list_namespaced_endpoint_slice, namespace,
                                label_selector=selector_string(match_labels))
    return _filtered(listed, match_labels)


# --- custom resources (Gateway API routes, Istio VirtualServices, GitOps reconcilers) --------------

@dataclass(frozen=True, slots=True)
class CustomResource:
    """A custom resource's API: ``group``, ``version``, ``plural`` and ``kind`` (for messages)."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        """``gateway.networking.k8s.io/v1``."""
        return f"{self.group}/{self.version}"


HTTPROUTES = CustomResource("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute")
GRPCROUTES = CustomResource("gateway.networking.k8s.io", "v1", "grpcroutes", "GRPCRoute")
VIRTUALSERVICES = CustomResource("networking.istio.io", "v1", "virtualservices", "VirtualService")
#: GitOps reconcilers' objects: Argo CD Applications, Flux Kustomizations and HelmReleases.
ARGOCD_APPLICATIONS = CustomResource("argoproj.io", "v1alpha1", "applications", "Application")
FLUX_KUSTOMIZATIONS = CustomResource("kustomize.toolkit.fluxcd.io", "v1", "kustomizations", "Kustomization")
FLUX_HELMRELEASES = CustomResource("helm.toolkit.fluxcd.io", "v2", "helmreleases", "HelmRelease")

#: The requests rollbackd makes on each custom resource, as RBAC sees them (written out, so that
#: the chart's RBAC can be checked against them).
_CUSTOM_CALLS: Mapping[CustomResource, Mapping[str, KubeCall]] = {
    HTTPROUTES: {"get": KubeCall("get", "httproutes", "gateway.networking.k8s.io"),
                 "patch": KubeCall("patch", "httproutes", "gateway.networking.k8s.io")},
    GRPCROUTES: {"get": KubeCall("get", "grpcroutes", "gateway.networking.k8s.io"),
                 "patch": KubeCall("patch", "grpcroutes", "gateway.networking.k8s.io")},
    VIRTUALSERVICES: {"get": KubeCall("get", "virtualservices", "networking.istio.io"),
                      "patch": KubeCall("patch", "virtualservices", "networking.istio.io")},
    ARGOCD_APPLICATIONS: {"get": KubeCall("get", "applications", "argoproj.io"),
                          "patch": KubeCall("patch", "applications", "argoproj.io")},
    FLUX_KUSTOMIZATIONS: {"get": KubeCall("get", "kustomizations", "kustomize.toolkit.fluxcd.io"),
                          "patch": KubeCall("patch", "kustomizations", "kustomize.toolkit.fluxcd.io")},
    FLUX_HELMRELEASES: {"get": KubeCall("get", "helmreleases", "helm.toolkit.fluxcd.io"),
                        "patch": KubeCall("patch", "helmreleases", "helm.toolkit.fluxcd.io")},
}


def _custom_call(resource: CustomResource, verb: str, namespace: str, name: str) -> KubeCall:
    try:
        call = _CUSTOM_CALLS[resource][verb]
    except KeyError:
        raise ValueError(f"rollbackd does not {verb} {resource.plural}.{resource.group}") from None
    return replace(call, namespace=namespace, name=name)


async def get_custom(kube: KubeClient, resource: CustomResource, *, namespace: str, name: str) -> Obj:
    """Read a custom object (one of :data:`HTTPROUTES`, :data:`GRPCROUTES`,
    :data:`VIRTUALSERVICES`, :data:`ARGOCD_APPLICATIONS`, :data:`FLUX_KUSTOMIZATIONS`,
    :data:`FLUX_HELMRELEASES`). :class:`~rollbackd.kube.errors.KubeNotFound` if it does not exist (or
    its resource is not served: its CRD is not installed)."""
    call = _custom_call(resource, "get", namespace, name)
    return await kube.request(call, kube.custom.get_namespaced_custom_object, resource.group,
                              resource.version, namespace, resource.plural, name)


async def patch_custom(
    kube: KubeClient, resource: CustomResource, *, namespace: str, name: str, patch: Patch,
    patch_type: Literal["merge", "json"] = "merge",
) -> Obj:
    """Patch a custom object (JSON merge patch by default; custom resources take no strategic
    merge patch). A ``metadata.resourceVersion`` in a merge patch makes it conditional: the server
    answers :class:`~rollbackd.kube.errors.KubeConflict` if the object changed since it was read."""
    call = _custom_call(resource, "patch", namespace, name)
    return await kube.request(call, kube.custom.patch_namespaced_custom_object, resource.group,
                              resource.version, namespace, resource.plural, name, _body(patch),
                              _content_type=_content_type(patch, patch_type))


async def served_resources(kube: KubeClient, *, group: str, version: str) -> frozenset[str]:
    """The resources (plurals) the API server serves in ``group/version`` (its discovery document,
    which every authenticated client may read); empty when the group version is not served at all
    (e.g. its CRDs are not installed)."""
    call = KubeCall("discover", f"{group}/{version}")
    try:
        listed = await kube.request(call, kube.custom.get_api_resources, group, version)
    except KubeNotFound:
        return frozenset()
    return frozenset(
        str(item.get("name")) for item in listed.get("resources") or []
        if isinstance(item, Mapping) and "/" not in str(item.get("name"))
    )


def controller_of(obj: Mapping[str, Any]) -> str | None:
    """Who else steers ``obj``, if anyone: its controlling owner (an ``ownerReference`` with
    ``controller: true``, e.g. a Flagger ``Canary``), or Argo Rollouts (its annotation). ``None``
    when no other controller claims it."""
    for ref in metadata_of(obj).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller"):
            return f"{ref.get('kind')} {ref.get('name')} ({ref.get('apiVersion')}), its controlling owner"
    rollout = annotations_of(obj).get(ARGO_ROLLOUTS_MANAGED_ANNOTATION)
    if rollout:
        return f"the Argo Rollouts Rollout {rollout} (annotation {ARGO_ROLLOUTS_MANAGED_ANNOTATION})"
    return None


# --- Events --------------------------------------------------------------------------------------

def new_event(
    *,
    regarding: Mapping[str, Any],
    reason: str,
    note: str,
    action: str,
    type: Literal["Normal", "Warning"] = "Normal",
    reporting_controller: str = "rollbackd.io/rollbackd",
    reporting_instance: str = "rollbackd",
    now: datetime | None = None,
) -> Obj:
    """An ``events.k8s.io/v1`` Event about the object ``regarding`` (as read from the API), ready for
    :func:`create_event`. ``reason`` is a short CamelCase word (``RollbackStarted``), ``note`` the
    human text (at most 1 kB is kept), ``action`` what was done (``Rollback``); ``now`` is the
    wall-clock time of the event (default: now, UTC)."""
    when = (now or datetime.now(UTC)).astimezone(UTC)
    object_meta = metadata_of(regarding)
    name = str(object_meta.get("name") or "object")
    namespace = object_meta.get("namespace")
    reference: Obj = {
        "apiVersion": regarding.get("apiVersion"),
        "kind": regarding.get("kind"),
        "name": name,
        "namespace": namespace,
        "uid": object_meta.get("uid"),
        "resourceVersion": object_meta.get("resourceVersion"),
    }
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{name}.{secrets.token_hex(8)}", "namespace": namespace},
        "eventTime": when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "type": type,
        "reason": reason,
        "action": action,
        "note": note[:1024],
        "regarding": {key: value for key, value in reference.items() if value is not None},
        "reportingController": reporting_controller,
        "reportingInstance": reporting_instance,
    }


async def create_event(kube: KubeClient, *, namespace: str, event: Mapping[str, Any]) -> Obj:
    """Create an ``events.k8s.io/v1`` Event (see :func:`new_event`) in ``namespace``."""
    name = metadata_of(event).get("name")
    call = KubeCall("create", "events", "events.k8s.io", namespace, name if isinstance(name, str) else None)
    return await kube.request(call, kube.events.create_namespaced_event, namespace, dict(event))


# --- Leases --------------------------------------------------------------------------------------

async def get_lease(kube: KubeClient, *, namespace: str, name: str) -> Obj:
    call = KubeCall("get", "leases", "coordination.k8s.io", namespace, name)
    return await kube.request(call, kube.coordination.read_namespaced_lease, name, namespace)


async def create_lease(kube: KubeClient, *, namespace: str, lease: Mapping[str, Any]) -> Obj:
    """Create a Lease; :class:`~rollbackd.kube.errors.KubeConflict` if it already exists."""
    name = metadata_of(lease).get("name")
    call = KubeCall("create", "leases", "coordination.k8s.io", namespace,
                    name if isinstance(name, str) else None)
    return await kube.request(call, kube.coordination.create_namespaced_lease, namespace, dict(lease))


async def replace_lease(kube: KubeClient, *, namespace: str, name: str, lease: Mapping[str, Any]) -> Obj:
    """Replace a Lease (``PUT``). With ``metadata.resourceVersion`` set, the server refuses with
    :class:`~rollbackd.kube.errors.KubeConflict` if anyone wrote it since it was read: the
    optimistic lock leader election relies on."""
    call = KubeCall("update", "leases", "coordination.k8s.io", namespace, name)
    return await kube.request(call, kube.coordination.replace_namespaced_lease, name, namespace, dict(lease))


# --- ConfigMaps ----------------------------------------------------------------------------------

async def get_configmap(kube: KubeClient, *, namespace: str, name: str) -> Obj:
    """Read a ConfigMap. Raises :class:`~rollbackd.kube.errors.KubeNotFound` if it does not exist."""
    call = KubeCall("get", "configmaps", "", namespace, name)
    return await kube.request(call, kube.core.read_namespaced_config_map, name, namespace)


async def patch_configmap(kube: KubeClient, *, namespace: str, name: str, patch: Patch) -> Obj:
    """Merge-patch a ConfigMap (its ``data``, with a ``metadata.resourceVersion`` precondition: 409
    when it changed since it was read); returns it as stored after the patch."""
    call = KubeCall("patch", "configmaps", "", namespace, name)
    return await kube.request(call, kube.core.patch_namespaced_config_map, name, namespace, _body(patch),
                              _content_type=_content_type(patch, "merge"))


async def create_configmap(kube: KubeClient, *, namespace: str, configmap: Mapping[str, Any]) -> Obj:
    """Create a ConfigMap; :class:`~rollbackd.kube.errors.KubeConflict` if it already exists."""
    name = metadata_of(configmap).get("name")
    call = KubeCall("create", "configmaps", "", namespace, name if isinstance(name, str) else None)
    return await kube.request(call, kube.core.create_namespaced_config_map, namespace, dict(configmap))


async def replace_configmap(
    kube: KubeClient, *, namespace: str, name: str, configmap: Mapping[str, Any]
) -> Obj:
    """Replace a ConfigMap (``PUT``); with ``metadata.resourceVersion`` set, refused with
    :class:`~rollbackd.kube.errors.KubeConflict` if anyone wrote it since it was read."""
    call = KubeCall("update", "configmaps", "", namespace, name)
    return await kube.request(call, kube.core.replace_namespaced_config_map, name, namespace, dict(configmap))
