"""An emulated Kubernetes API for the demo and the tests: kmock's emulator over real HTTP, a little
cluster behaviour, faults.

Not a cluster: no pods run, nothing is scheduled; it stores objects and behaves, over the real API
protocol, the way the controllers rollbackd depends on do.

What it gives:

- :class:`ClusterEmulator`: kmock's ``KubernetesEmulator`` with the resources rollbackd uses declared,
  and the server-side behaviour the daemon relies on that the plain emulator lacks (see "What the
  emulator adds" below). Serve it with ``kmock.Server`` on a free loopback port and talk to it with
  the real ``kubernetes_asyncio`` client through :class:`rollbackd.kube.KubeClient`.
- Seeding helpers: :func:`seed_deployment` (a Deployment with its ReplicaSets, one per revision, owned
  and annotated like the deployment controller does), :func:`seed_service`, :func:`seed_ingress`
  (ingress-nginx canary annotations), :func:`seed_gateway` (a Gateway API Gateway),
  :func:`seed_route` (a Gateway API HTTPRoute or GRPCRoute),
  :func:`seed_virtual_service` (an Istio VirtualService), :func:`seed_endpointslice`; GitOps
  reconcilers' objects (Argo CD Applications, Flux Kustomizations and HelmReleases) and a
  reconciler that puts what Git declares back are in :mod:`rollbackd.demo.reconciler`.
- :class:`Controllers`: what the deployment, EndpointSlice and gateway controllers do, enough for
  actions to wait on: a changed Deployment template gets its ReplicaSet (new, or an old one brought back with
  the newest revision number), old ReplicaSets scale to zero, the status follows after
  ``rollout_delay_s``; a Service's EndpointSlice lists the ready pods its selector picks; a Gateway
  API route's ``status.parents`` say, for its generation, whether it is ``Accepted`` and its
  backends resolved (:func:`route_parents_status`); a Gateway's status says it is accepted and
  programmed, and how many routes attach to each listener (:func:`gateway_status`).
- Faults, declared with kmock's DSL and answered *before* anything is stored:
  :meth:`ClusterEmulator.fail` (any status), :meth:`~ClusterEmulator.conflict` (409),
  :meth:`~ClusterEmulator.forbid` (403 with the API server's RBAC wording),
  :meth:`~ClusterEmulator.uninstall` (a resource type the cluster does not serve: a CRD not installed).
- Argo Rollouts' ``Rollout`` is declared (with its ``status`` and ``scale`` subresources); its
  seeding and the part of its controller that aborts are in :mod:`rollbackd.demo.argo_rollouts`.

The pytest fixtures over these (``kube_cluster``, ``kube``, ``kube_controllers``) are in
``tests/kubefixtures.py``.

What the emulator adds to kmock's ``KubernetesEmulator`` (which stores whatever it is sent and
merges every PATCH body as a plain dict):

- ``metadata.uid``, ``creationTimestamp``, ``resourceVersion`` (bumped on every write) and
  ``generation`` (bumped when anything but metadata and status changes) are maintained;
- PATCH follows the ``Content-Type``: JSON patch (RFC 6902), JSON merge patch (``null`` deletes,
  lists replaced), strategic merge patch (like merge, but lists of mappings that all carry a ``name``
  -- containers, env, volumes, named ports -- merge by name; ``$``-directives are not emulated);
  other types get 415. A ``metadata.resourceVersion`` in the body that is not the current one gets
  409, as on a real server;
- the ``status`` subresource changes only the status; writes to the main resource keep the stored
  status; the ``scale`` subresource reads and patches a real ``autoscaling/v1`` ``Scale``;
- PUT (replace) works, with the ``resourceVersion`` precondition; POST honours ``generateName``
  and answers 409 ``AlreadyExists`` for an existing name;
- a watch is recognised by any ``watch`` value the API server takes as true (``True``, as
  ``kubernetes_asyncio`` sends it, ``1``, ``t``), not only ``true``;
- 404 answers carry the real wording (``deployments.apps "web" not found``);
- an injected fault leaves the stored objects untouched (the plain emulator applies the write
  even when a test reaction answers it with an error).

Not emulated (the client side copes, see :mod:`rollbackd.kube.objects`): label and field selectors
on lists (everything in the namespace is listed), watches' ``resourceVersion`` and bookmarks, pods,
admission and validation (any JSON is stored), ``201 Created`` (creates answer ``200``),
server-side apply, garbage collection of owned objects.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import secrets
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self

import aiohttp.web
import attrs
import kmock

from rollbackd.aiotasks import stop_tasks
from rollbackd.kube.objects import (
    CANARY_ANNOTATION,
    CANARY_WEIGHT_ANNOTATION,
    POD_TEMPLATE_HASH_LABEL,
    REVISION_ANNOTATION,
    SERVICE_NAME_LABEL,
)

Obj = dict[str, Any]

DEPLOYMENTS = kmock.resource("apps", "v1", "deployments")
REPLICASETS = kmock.resource("apps", "v1", "replicasets")
SERVICES = kmock.resource("", "v1", "services")
ENDPOINTS = kmock.resource("", "v1", "endpoints")
CORE_EVENTS = kmock.resource("", "v1", "events")
INGRESSES = kmock.resource("networking.k8s.io", "v1", "ingresses")
ENDPOINTSLICES = kmock.resource("discovery.k8s.io", "v1", "endpointslices")
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
EVENTS = kmock.resource("events.k8s.io", "v1", "events")
HTTPROUTES = kmock.resource("gateway.networking.k8s.io", "v1", "httproutes")
GRPCROUTES = kmock.resource("gateway.networking.k8s.io", "v1", "grpcroutes")
GATEWAYS = kmock.resource("gateway.networking.k8s.io", "v1", "gateways")
VIRTUALSERVICES = kmock.resource("networking.istio.io", "v1", "virtualservices")
#: The Gateway API routes the emulated gateway controller reports on.
ROUTE_RESOURCES = (HTTPROUTES, GRPCROUTES)
#: Argo Rollouts' Rollout (its CRD declares the status and scale subresources).
ROLLOUTS = kmock.resource("argoproj.io", "v1alpha1", "rollouts")
#: GitOps reconcilers' objects (their CRDs, as if installed): Argo CD and Flux.
APPLICATIONS = kmock.resource("argoproj.io", "v1alpha1", "applications")
KUSTOMIZATIONS = kmock.resource("kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
HELMRELEASES = kmock.resource("helm.toolkit.fluxcd.io", "v2", "helmreleases")

#: resource -> (kind, subresources), as the API server's discovery documents them.
RESOURCES: Mapping[kmock.resource, tuple[str, frozenset[str]]] = {
    DEPLOYMENTS: ("Deployment", frozenset({"status", "scale"})),
    REPLICASETS: ("ReplicaSet", frozenset({"status", "scale"})),
    SERVICES: ("Service", frozenset({"status"})),
    ENDPOINTS: ("Endpoints", frozenset()),
    CORE_EVENTS: ("Event", frozenset()),
    INGRESSES: ("Ingress", frozenset({"status"})),
    ENDPOINTSLICES: ("EndpointSlice", frozenset()),
    LEASES: ("Lease", frozenset()),
    CONFIGMAPS: ("ConfigMap", frozenset()),
    EVENTS: ("Event", frozenset()),
    HTTPROUTES: ("HTTPRoute", frozenset({"status"})),
    GRPCROUTES: ("GRPCRoute", frozenset({"status"})),
    GATEWAYS: ("Gateway", frozenset({"status"})),
    VIRTUALSERVICES: ("VirtualService", frozenset({"status"})),
    ROLLOUTS: ("Rollout", frozenset({"status", "scale"})),
    APPLICATIONS: ("Application", frozenset()),
    KUSTOMIZATIONS: ("Kustomization", frozenset({"status"})),
    HELMRELEASES: ("HelmRelease", frozenset({"status"})),
}
#: The controller name the emulated gateway controller writes into route status.
GATEWAY_CONTROLLER = "rollbackd.io/emulated-gateway"

DESIRED_REPLICAS_ANNOTATION = "deployment.kubernetes.io/desired-replicas"
#: The revisions a ReplicaSet had before it was brought back (a rollback), comma-separated.
REVISION_HISTORY_ANNOTATION = "deployment.kubernetes.io/revision-history"

#: The identity the RBAC denials name: rollbackd's service account in its own namespace.
ROLLBACKD_USER = "system:serviceaccount:rollbackd:rollbackd"

#: What an API server answers for a resource type it does not serve (a CRD not installed).
UNKNOWN_RESOURCE = "the server could not find the requested resource"

#: What the API server takes as ``true`` in a query (Go's ``strconv.ParseBool``): kubernetes_asyncio
#: sends ``watch=True``.
_GO_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})

#: Kubernetes' alphabet for generated name suffixes (no vowels, no look-alike digits).
_SAFE_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"

ResourceLike = kmock.resource | str
Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete"]


def _resource(value: ResourceLike) -> kmock.resource:
    return value if isinstance(value, kmock.resource) else kmock.resource(value)


def qualified(resource: kmock.resource) -> str:
    """``deployments.apps``, ``services``, ``ingresses.networking.k8s.io``."""
    return f"{resource.plural}.{resource.group}" if resource.group else f"{resource.plural}"


def status_body(code: int, reason: str, message: str, *, details: Obj | None = None) -> Obj:
    """A Kubernetes ``Status`` object, as the API server sends with every error."""
    body: Obj = {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code,
    }
    if details is not None:
        body["details"] = details
    return body


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _safe_suffix(text: str, length: int) -> str:
    number = int.from_bytes(hashlib.sha256(text.encode()).digest()[:16], "big")
    chars = []
    for _ in range(length):
        number, index = divmod(number, len(_SAFE_ALPHABET))
        chars.append(_SAFE_ALPHABET[index])
    return "".join(chars)


def template_hash(template: Mapping[str, Any]) -> str:
    """The ``pod-template-hash`` of a pod template (computed without that label, as the deployment
    controller does; the value differs from a real cluster's but is stable and name-safe)."""
    stripped = copy.deepcopy(dict(template))
    stripped.get("metadata", {}).get("labels", {}).pop(POD_TEMPLATE_HASH_LABEL, None)
    return _safe_suffix(json.dumps(stripped, sort_keys=True), 10)


def pod_address(pod_name: str) -> str:
    """A stable address for a pretend pod, inside 127.10.0.0/16 so that nothing a test might dial
    ever leaves the machine."""
    digest = hashlib.sha256(pod_name.encode()).digest()
    return f"127.10.{digest[0]}.{max(1, digest[1])}"


# --- patch semantics -----------------------------------------------------------------------------

class PatchError(ValueError):
    """A patch that cannot be applied (a failed ``test``, a missing path)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """JSON merge patch (RFC 7386)."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _named_items(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, Mapping) and "name" in item for item in value)


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes' strategic merge patch, as far as rollbackd needs it: a merge patch in which lists
    of mappings that all carry a ``name`` merge item by item; ``$``-directives are ignored."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
        elif _named_items(value) and value and _named_items(result.get(key)):
            merged = [copy.deepcopy(item) for item in result[key]]
            positions = {item["name"]: index for index, item in enumerate(merged)}
            for item in value:
                position = positions.get(item["name"])
                if position is not None:
                    merged[position] = strategic_merge_patch(merged[position], item)
                else:
                    merged.append(strategic_merge_patch({}, item))
            result[key] = merged
        else:
            result[key] = strategic_merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"not a JSON pointer: {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _locate(document: Any, parts: list[str]) -> Any:
    node = document
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PatchError(f"path /{'/'.join(parts)} does not exist")
    return node


def _put(document: Any, parts: list[str], value: Any, *, insert: bool) -> Any:
    if not parts:
        return copy.deepcopy(value)
    parent = _locate(document, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict):
        if not insert and last not in parent:
            raise PatchError(f"path /{'/'.join(parts)} does not exist")
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent) - (0 if insert else 1):
            raise PatchError(f"index {last!r} is out of range at /{'/'.join(parts)}")
        if insert:
            parent.insert(index, copy.deepcopy(value))
        else:
            parent[index] = copy.deepcopy(value)
    else:
        raise PatchError(f"cannot set /{'/'.join(parts)}: its parent is a scalar")
    return document


def _remove(document: Any, parts: list[str]) -> Any:
    if not parts:
        raise PatchError("cannot remove the whole document")
    parent = _locate(document, parts[:-1])
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise PatchError(f"path /{'/'.join(parts)} does not exist")


def json_patch(target: Any, operations: Sequence[Mapping[str, Any]]) -> Any:
    """JSON patch (RFC 6902): add, remove, replace, move, copy, test."""
    document = copy.deepcopy(target)
    for operation in operations:
        op, parts = operation.get("op"), _pointer(str(operation.get("path", "")))
        if op == "add":
            document = _put(document, parts, operation.get("value"), insert=True)
        elif op == "replace":
            document = _put(document, parts, operation.get("value"), insert=False)
        elif op == "remove":
            _remove(document, parts)
        elif op in ("move", "copy"):
            source = _pointer(str(operation.get("from", "")))
            value = _remove(document, source) if op == "move" else copy.deepcopy(_locate(document, source))
            document = _put(document, parts, value, insert=True)
        elif op == "test":
            if _locate(document, parts) != operation.get("value"):
                raise PatchError(f"test failed at {operation.get('path')!r}")
        else:
            raise PatchError(f"unknown JSON patch operation {op!r}")
    return document


_PATCHERS = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
}


def _apply_patch(kind: str, target: Obj, body: Any) -> Obj:
    if kind == "json":
        if not isinstance(body, list):
            raise PatchError("a JSON patch must be a list of operations")
        result = json_patch(target, body)
    elif not isinstance(body, Mapping):
        raise PatchError("a merge patch must be a JSON object")
    elif kind == "merge":
        result = merge_patch(target, body)
    else:
        result = strategic_merge_patch(target, body)
    if not isinstance(result, dict):
        raise PatchError("the patched object is not a JSON object")
    return result


def _spec_part(obj: Mapping[str, Any]) -> Obj:
    """What counts for ``metadata.generation``: everything but metadata and status."""
    return {key: value for key, value in obj.items() if key not in ("metadata", "status")}


# --- the emulator --------------------------------------------------------------------------------

@attrs.define(kw_only=True)
class ClusterEmulator(kmock.KubernetesEmulator):
    """kmock's Kubernetes emulator with the cluster behaviour described in the module docstring."""

    _resource_version: int = attrs.field(default=1000, init=False)
    _rejections: list[kmock.View] = attrs.field(factory=list, init=False)
    _answers: dict[int, Obj] = attrs.field(factory=dict, init=False)
    #: Resources :meth:`uninstall` took away: not in discovery, whatever the reactions name.
    _unserved: set[kmock.resource] = attrs.field(factory=set, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.fallback[kmock.method.PUT] << self._serve_replaced
        for resource, (kind, subresources) in RESOURCES.items():
            self.resources[resource] = kmock.ResourceInfo(
                kind=kind, namespaced=True, singular=kind.lower(), subresources=set(subresources),
                verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            )

    # -- reading and writing the store directly (seeding, controllers, assertions) --

    def read(self, resource: ResourceLike, namespace: str, name: str) -> Obj | None:
        """A deep copy of the stored object, ``None`` if absent or deleted."""
        key = (_resource(resource), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def read_all(self, resource: ResourceLike, namespace: str | None = None) -> list[Obj]:
        """Deep copies of the stored objects of a resource (in one namespace, or all)."""
        wanted = _resource(resource)
        return [
            copy.deepcopy(obj.raw)
            for (res, ns, _), obj in self.objects.items()
            if res == wanted and (namespace is None or ns == namespace) and not obj.deleted
        ]

    def store(self, resource: ResourceLike, namespace: str, obj: Mapping[str, Any]) -> Obj:
        """Store ``obj`` (named by its ``metadata.name``) as a create or a full replace, with uid,
        timestamps, resourceVersion and generation maintained. Returns the stored copy."""
        res = _resource(resource)
        new = copy.deepcopy(dict(obj))
        metadata = new.setdefault("metadata", {})
        name = metadata.get("name")
        if not name:
            raise ValueError("the object has no metadata.name")
        metadata["namespace"] = namespace
        kind = RESOURCES.get(res, (None, None))[0]
        if kind is not None:
            new.setdefault("kind", kind)
            new.setdefault("apiVersion", f"{res.group}/{res.version}" if res.group else res.version)
        return self._store(res, namespace, name, new)

    def update(self, resource: ResourceLike, namespace: str, name: str, patch: Mapping[str, Any]) -> Obj:
        """Apply a JSON merge patch to a stored object (``None`` deletes a key), as a write. Raises
        ``KeyError`` if it does not exist. Returns the stored copy."""
        res = _resource(resource)
        current = self.read(res, namespace, name)
        if current is None:
            raise KeyError(f"{qualified(res)} {namespace}/{name} does not exist")
        return self._store(res, namespace, name, merge_patch(current, patch))

    async def publish(self, resource: ResourceLike, event_type: str, obj: Obj) -> None:
        """Tell watchers of ``resource`` about a change made with :meth:`put` / :meth:`update`."""
        await self._buses[_resource(resource)].put({"type": event_type, "object": obj})

    def watchers(self, resource: ResourceLike) -> int:
        """How many watch streams of ``resource`` are open and following its changes now (a change
        written while a watch is still starting may reach it only through its first listing)."""
        return self._buses[_resource(resource)].consumer_count

    def _next_version(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _store(self, res: kmock.resource, namespace: str, name: str, new: Obj) -> Obj:
        key = (res, namespace, name)
        current = self.read(res, namespace, name)
        metadata = new.setdefault("metadata", {})
        metadata["name"] = name
        metadata["namespace"] = namespace
        if current is None:
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("creationTimestamp", _now())
            metadata["generation"] = 1
        else:
            old = current.get("metadata", {})
            for kept in ("uid", "creationTimestamp"):
                if kept in old:
                    metadata[kept] = old[kept]
            generation = int(old.get("generation") or 1)
            changed = _spec_part(new) != _spec_part(current)
            metadata["generation"] = generation + 1 if changed else generation
        metadata["resourceVersion"] = self._next_version()
        if key in self.objects:
            self.objects[key].create(new)
        else:
            self.objects[key] = new
        return copy.deepcopy(new)

    # -- faults --

    def fail(
        self,
        verb: Verb,
        resource: ResourceLike,
        *,
        status: int,
        body: Obj | None = None,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        times: int | None = 1,
        retry_after: int | None = None,
    ) -> kmock.View:
        """Answer the next ``times`` matching requests (every one from now on if ``times`` is
        ``None``) with ``status`` and ``body`` (default: a ``Status`` fitting the code) without
        storing anything. ``namespace``/``name`` of ``None`` match any; ``subresource`` of ``None``
        matches the main resource only. Returns the kmock view of the failed requests
        (``len(view)`` counts them)."""
        res = _resource(resource)
        criteria: list[Any] = [res, kmock.subresource(subresource)]
        criteria.append({
            "get": kmock.action.FETCH, "list": kmock.action.LIST, "watch": kmock.action.WATCH,
            "create": kmock.method.POST, "update": kmock.method.PUT, "patch": kmock.method.PATCH,
            "delete": kmock.method.DELETE,
        }[verb])
        if namespace is not None:
            criteria.append(kmock.namespace(namespace))
        if name is not None:
            criteria.append(kmock.name(name))
        matching: kmock.View = self ** 100  # above any reaction a test declared
        for criterion in criteria:
            matching = matching[criterion]
        view: kmock.View = matching
        if times is not None:
            already = len(matching)
            view = matching[already:already + times]
        if body is None:
            body = _default_status(status, verb, res, name)
        reaction = view << status
        if retry_after is not None:
            reaction = reaction << kmock.headers({"Retry-After": str(retry_after)})
        reaction << body
        self._rejections.append(view)
        return view

    def conflict(
        self,
        verb: Verb,
        resource: ResourceLike,
        *,
        namespace: str,
        name: str,
        times: int = 1,
        subresource: str | None = None,
    ) -> kmock.View:
        """The next ``times`` requests on that object (or its ``subresource``) get 409: "the object
        has been modified"."""
        res = _resource(resource)
        body = status_body(
            409, "Conflict",
            f'Operation cannot be fulfilled on {qualified(res)} "{name}": the object has been modified; '
            f"please apply your changes to the latest version and try again",
            details={"name": name, "group": res.group, "kind": res.plural},
        )
        return self.fail(verb, resource, status=409, body=body, namespace=namespace, name=name, times=times,
                         subresource=subresource)

    def forbid(
        self,
        verb: Verb,
        resource: ResourceLike,
        *,
        namespace: str,
        name: str | None = None,
        subresource: str | None = None,
        user: str = ROLLBACKD_USER,
    ) -> kmock.View:
        """Every such request from now on gets 403, worded as the API server's RBAC denial."""
        res = _resource(resource)
        target = f'{qualified(res)} "{name}"' if name else qualified(res)
        resource_text = f"{res.plural}/{subresource}" if subresource else f"{res.plural}"
        body = status_body(
            403, "Forbidden",
            f'{target} is forbidden: User "{user}" cannot {verb} resource "{resource_text}" '
            f'in API group "{res.group}" in the namespace "{namespace}"',
            details={**({"name": name} if name else {}), "group": res.group, "kind": res.plural},
        )
        return self.fail(verb, resource, status=403, body=body, namespace=namespace, name=name,
                         subresource=subresource, times=None)

    def uninstall(self, *resources: ResourceLike) -> None:
        """From now on, serve ``resources`` no more, the way an API server without their CRDs
        does: its discovery does not list them, and every request on them (and their
        subresources) gets 404 "the server could not find the requested resource"."""
        for resource in resources:
            res = _resource(resource)
            self._unserved.add(res)
            if res in self.resources:
                del self.resources[res]
            body = status_body(404, "NotFound", UNKNOWN_RESOURCE, details={})
            for subresource in (None, *RESOURCES.get(res, ("", frozenset()))[1]):
                for verb in ("get", "list", "watch", "create", "update", "patch", "delete"):
                    self.fail(verb, res, status=404, body=body, subresource=subresource, times=None)

    def _get_resources(self) -> list[kmock.resource]:
        # kmock's discovery lists every resource a reaction names (the 404s of uninstall() too).
        return [res for res in super()._get_resources() if res not in self._unserved]

    # -- request handling --

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if (
            request.resource is not None
            and request.action != kmock.action.WATCH
            and request.method == kmock.method.GET
            and request.params.get("watch") in _GO_TRUE
        ):
            watch = attrs.evolve(request, action=kmock.action.WATCH)
            if self._requests[request.id] is request:  # as recorded, for views and faults
                self._requests[request.id] = watch
            request = watch
        if request.resource is not None and any(request in view for view in self._rejections):
            # A fault answers; the plain emulator would have stored the write anyway.
            return await kmock.RawHandler._handle(self, request)
        res = request.resource
        write = None
        if res is not None and res in RESOURCES and request.namespace is not None:
            if request.method == kmock.method.PATCH and request.name is not None:
                write = self._patch(request, res, request.namespace, request.name)
            elif request.method == kmock.method.PUT and request.name is not None:
                write = self._replace(request, res, request.namespace, request.name)
            elif request.method == kmock.method.POST and request.name is None:
                write = self._create(request, res, request.namespace)
        if write is None:
            return await super()._handle(request)
        # Store first (errors like 404/409/422 answer here), then let the reactions answer: a test's
        # own reaction if one matches, else the fallbacks below, which return what was stored.
        self._answers[request.id] = await write
        try:
            return await kmock.RawHandler._handle(self, request)
        finally:
            self._answers.pop(request.id, None)

    async def _serve_fetch(self, request: kmock.Request) -> kmock.Payload:
        res, namespace, name = request.resource, request.namespace, request.name
        if res is None or res not in RESOURCES or namespace is None or name is None:
            return await super()._serve_fetch(request)
        self._check_subresource(res, request.subresource, name)
        current = self._existing(res, namespace, name)
        return _scale_of(current) if request.subresource == "scale" else current

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        if request.id in self._answers:
            return self._answers[request.id]
        return await super()._serve_update(request)

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        if request.id in self._answers:
            return self._answers[request.id]  # 200, where a real server says 201: clients take both
        return await super()._serve_create(request)

    async def _serve_replaced(self, request: kmock.Request) -> kmock.Payload:
        if request.id not in self._answers:  # a PUT this emulator does not store (an unknown resource)
            raise kmock.KubernetesNotFoundError()
        return self._answers[request.id]

    def _not_found(self, res: kmock.resource, name: str) -> kmock.KubernetesError:
        return kmock.KubernetesError(
            status=404, reason="NotFound", message=f'{qualified(res)} "{name}" not found',
            details={"name": name, "group": res.group, "kind": res.plural},
        )

    def _existing(self, res: kmock.resource, namespace: str, name: str) -> Obj:
        current = self.read(res, namespace, name)
        if current is None:
            raise self._not_found(res, name)
        return current

    def _check_subresource(self, res: kmock.resource, subresource: str | None, name: str) -> None:
        if subresource is not None and subresource not in RESOURCES[res][1]:
            raise self._not_found(res, f"{name}/{subresource}")

    def _precondition(self, res: kmock.resource, name: str, body: Any, current: Obj) -> None:
        if not isinstance(body, Mapping):
            return
        wanted = (body.get("metadata") or {}).get("resourceVersion")
        if wanted is not None and str(wanted) != current["metadata"]["resourceVersion"]:
            raise kmock.KubernetesError(
                status=409, reason="Conflict",
                message=(f'Operation cannot be fulfilled on {qualified(res)} "{name}": the object has been '
                         f"modified; please apply your changes to the latest version and try again"),
                details={"name": name, "group": res.group, "kind": res.plural},
            )

    async def _patch(
        self, request: kmock.Request, res: kmock.resource, namespace: str, name: str
    ) -> Obj:
        self._check_subresource(res, request.subresource, name)
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        kind = _PATCHERS.get(content_type)
        if kind is None:
            raise kmock.KubernetesError(
                status=415, reason="UnsupportedMediaType",
                message=(f"the body of the request was in an unknown format - accepted media types include: "
                         f"{', '.join(_PATCHERS)}"),
                details={},
            )
        current = self._existing(res, namespace, name)
        self._precondition(res, name, request.data, current)
        try:
            if request.subresource == "scale":
                scale = _apply_patch(kind, _scale_of(current), request.data)
                replicas = (scale.get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or replicas < 0:
                    raise PatchError(f"spec.replicas must be a non-negative integer, not {replicas!r}")
                new = copy.deepcopy(current)
                new.setdefault("spec", {})["replicas"] = replicas
            else:
                patched = _apply_patch(kind, current, request.data)
                new = _merge_scope(res, request.subresource, current, patched)
        except PatchError as exc:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(exc), details={}) from exc
        stored = self._store(res, namespace, name, new)
        await self.publish(res, "MODIFIED", stored)
        return _scale_of(stored) if request.subresource == "scale" else stored

    async def _replace(
        self, request: kmock.Request, res: kmock.resource, namespace: str, name: str
    ) -> Obj:
        self._check_subresource(res, request.subresource, name)
        current = self._existing(res, namespace, name)
        self._precondition(res, name, request.data, current)
        if not isinstance(request.data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body is not an object",
                                        details={})
        new = _merge_scope(res, request.subresource, current, copy.deepcopy(request.data))
        stored = self._store(res, namespace, name, new)
        await self.publish(res, "MODIFIED", stored)
        return stored

    async def _create(
        self, request: kmock.Request, res: kmock.resource, namespace: str
    ) -> Obj:
        if not isinstance(request.data, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="the body is not an object",
                                        details={})
        new = copy.deepcopy(request.data)
        metadata = new.setdefault("metadata", {})
        if not metadata.get("name") and metadata.get("generateName"):
            metadata["name"] = metadata["generateName"] + secrets.token_hex(3)[:5]
        name = metadata.get("name")
        if not name:
            raise kmock.KubernetesError(
                status=422, reason="Invalid", details={},
                message="metadata.name: Required value: name or generateName is required",
            )
        if self.read(res, namespace, name) is not None:
            raise kmock.KubernetesError(
                status=409, reason="AlreadyExists", message=f'{qualified(res)} "{name}" already exists',
                details={"name": name, "group": res.group, "kind": res.plural},
            )
        stored = self.store(res, namespace, new)
        await self.publish(res, "ADDED", stored)
        return stored


def _merge_scope(res: kmock.resource, subresource: str | None, current: Obj, patched: Obj) -> Obj:
    """What a write to ``subresource`` may change: the status subresource only the status; the
    main resource everything but the status (when the resource has a status subresource)."""
    if subresource == "status":
        new = copy.deepcopy(current)
        if "status" in patched:
            new["status"] = patched["status"]
        else:
            new.pop("status", None)
        return new
    if "status" in RESOURCES[res][1]:
        patched = dict(patched)
        if "status" in current:
            patched["status"] = copy.deepcopy(current["status"])
        else:
            patched.pop("status", None)
    return patched


def _scale_of(obj: Mapping[str, Any]) -> Obj:
    metadata = obj.get("metadata") or {}
    selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {key: metadata[key] for key in ("name", "namespace", "uid", "resourceVersion",
                                                      "creationTimestamp") if key in metadata},
        "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 0)},
        "status": {
            "replicas": (obj.get("status") or {}).get("replicas", 0),
            "selector": ",".join(f"{key}={value}" for key, value in sorted(selector.items())),
        },
    }


def _default_status(status: int, verb: str, res: kmock.resource, name: str | None) -> Obj:
    target = f'{qualified(res)} "{name}"' if name else qualified(res)
    reasons = {
        400: ("BadRequest", f"{target}: bad request"),
        403: ("Forbidden", f"{target} is forbidden"),
        404: ("NotFound", f"{target} not found"),
        409: ("Conflict", f"Operation cannot be fulfilled on {target}: the object has been modified; "
                          f"please apply your changes to the latest version and try again"),
        422: ("Invalid", f"{target} is invalid"),
        429: ("TooManyRequests", "Too many requests, please try again later."),
        500: ("InternalError", "Internal error occurred: etcdserver: request timed out"),
        503: ("ServiceUnavailable", "The server is currently unable to handle the request"),
        504: ("Timeout", f"Timeout: request did not complete within the allowed duration ({verb} {target})"),
    }
    reason, message = reasons.get(status, ("Unknown", f"{verb} {target} failed with {status}"))
    return status_body(status, reason, message)


# --- seeding -------------------------------------------------------------------------------------

def _pod_template(labels: Mapping[str, str], container: str, image: str) -> Obj:
    return {
        "metadata": {"labels": dict(labels)},
        "spec": {"containers": [{"name": container, "image": image, "ports": [{"containerPort": 8080}]}]},
    }


def _replicaset(
    deployment: Mapping[str, Any], template: Mapping[str, Any], revision: int, replicas: int, ready: int
) -> Obj:
    """A ReplicaSet as the deployment controller makes it for ``template``."""
    metadata = deployment["metadata"]
    pod_hash = template_hash(template)
    rs_template = copy.deepcopy(dict(template))
    rs_template.setdefault("metadata", {}).setdefault("labels", {})[POD_TEMPLATE_HASH_LABEL] = pod_hash
    match_labels = dict(((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
    match_labels[POD_TEMPLATE_HASH_LABEL] = pod_hash
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{metadata['name']}-{pod_hash}",
            "namespace": metadata["namespace"],
            "labels": dict(rs_template["metadata"]["labels"]),
            "annotations": {
                REVISION_ANNOTATION: str(revision),
                DESIRED_REPLICAS_ANNOTATION: str((deployment.get("spec") or {}).get("replicas", 1)),
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": metadata["name"],
                "uid": metadata["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {"replicas": replicas, "selector": {"matchLabels": match_labels}, "template": rs_template},
        "status": _rs_status(replicas, ready),
    }


def _rs_status(replicas: int, ready: int) -> Obj:
    return {"replicas": replicas, "fullyLabeledReplicas": replicas, "readyReplicas": ready,
            "availableReplicas": ready, "observedGeneration": 1}


def _deployment_status(
    generation: int, *, desired: int, total: int, updated: int, ready: int, complete: bool
) -> Obj:
    """A Deployment's status: ``desired`` replicas wanted, ``total`` pods existing (all ReplicaSets),
    ``updated`` of them from the current template, ``ready`` of them ready."""
    available = ready >= desired
    conditions = [
        {"type": "Available", "status": "True" if available else "False",
         "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable"},
        {"type": "Progressing", "status": "True",
         "reason": "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated"},
    ]
    return {
        "observedGeneration": generation, "replicas": total, "updatedReplicas": updated,
        "readyReplicas": ready, "availableReplicas": ready,
        "unavailableReplicas": max(0, total - ready), "conditions": conditions,
    }


def seed_deployment(
    emu: ClusterEmulator,
    namespace: str,
    name: str,
    *,
    replicas: int,
    image: str,
    revision_history: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    container: str | None = None,
    ready: bool = True,
) -> Obj:
    """A Deployment running ``image`` with its ReplicaSets: one per image of ``revision_history``
    (oldest first, revisions 1, 2, ...; scaled to 0) and the current one (the next revision, with
    ``replicas``, all ready unless ``ready=False``). Pods are labelled ``labels`` (default
    ``{"app": name}``), which is also the selector; the container is named ``container`` (default:
    ``name``). Returns the stored Deployment."""
    labels = dict(labels or {"app": name})
    container = container or name
    template = _pod_template(labels, container, image)
    current_revision = len(revision_history) + 1
    ready_count = replicas if ready else 0
    deployment = emu.store(DEPLOYMENTS, namespace, {
        "metadata": {
            "name": name, "labels": dict(labels),
            "annotations": {REVISION_ANNOTATION: str(current_revision)},
        },
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 10,
            "selector": {"matchLabels": dict(labels)},
            "strategy": {
                "type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"},
            },
            "template": template,
        },
    })
    deployment = emu.update(DEPLOYMENTS, namespace, name, {
        "status": _deployment_status(1, desired=replicas, total=replicas, updated=replicas,
                                     ready=ready_count, complete=ready),
    })
    for number, old_image in enumerate(revision_history, start=1):
        old = _pod_template(labels, container, old_image)
        emu.store(REPLICASETS, namespace, _replicaset(deployment, old, number, 0, 0))
    current = _replicaset(deployment, template, current_revision, replicas, ready_count)
    emu.store(REPLICASETS, namespace, current)
    return deployment


def seed_service(
    emu: ClusterEmulator,
    namespace: str,
    name: str,
    *,
    selector: Mapping[str, str],
    port: int = 80,
    target_port: int = 8080,
    endpoints: bool = True,
) -> Obj:
    """A ClusterIP Service; with ``endpoints`` (default) also its EndpointSlice listing the ready
    pods of the ReplicaSets its selector picks now. Returns the stored Service."""
    service = emu.store(SERVICES, namespace, {
        "metadata": {"name": name},
        "spec": {
            "type": "ClusterIP", "selector": dict(selector),
            "ports": [{"name": "http", "port": port, "targetPort": target_port, "protocol": "TCP"}],
        },
    })
    if endpoints:
        sync_endpointslice(emu, service)
    return service


def seed_ingress(
    emu: ClusterEmulator,
    namespace: str,
    name: str,
    *,
    service: str,
    host: str,
    path: str = "/",
    port: int = 80,
    canary_weight: int | None = None,
) -> Obj:
    """An Ingress routing ``host``/``path`` to ``service``; with ``canary_weight`` it is an
    ingress-nginx canary Ingress (``canary: "true"``, ``canary-weight: "N"``)."""
    annotations: dict[str, str] = {}
    if canary_weight is not None:
        annotations = {CANARY_ANNOTATION: "true", CANARY_WEIGHT_ANNOTATION: str(canary_weight)}
    return emu.store(INGRESSES, namespace, {
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{"host": host, "http": {"paths": [{
                "path": path, "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": port}}},
            }]}}],
        },
    })


def seed_gateway(
    emu: ClusterEmulator,
    namespace: str,
    name: str,
    *,
    gateway_class: str = "emulated",
    listeners: Sequence[tuple[str, int]] = (("http", 80),),
) -> Obj:
    """A Gateway API Gateway of class ``gateway_class`` with one HTTP listener per (name, port),
    each accepting the routes of its own namespace; no status until the emulated gateway controller
    reports (:func:`gateway_status`)."""
    return emu.store(GATEWAYS, namespace, {
        "metadata": {"name": name},
        "spec": {
            "gatewayClassName": gateway_class,
            "listeners": [
                {"name": listener, "port": port, "protocol": "HTTP",
                 "allowedRoutes": {"namespaces": {"from": "Same"}}}
                for listener, port in listeners
            ],
        },
    })


def seed_route(
    emu: ClusterEmulator,
    namespace: str,
    name: str,
    *,
    rules: Sequence[Mapping[str, int | None]],
    kind: Literal["HTTPRoute", "GRPCRoute"] = "HTTPRoute",
    gateway: str | None = "gateway",
    hostnames: Sequence[str] = ("shop.example.com",),
    port: int = 80,
) -> Obj:
    """A Gateway API route (``kind``: HTTPRoute or GRPCRoute) attached to the Gateway ``gateway``
    (none if ``None``), one rule per mapping of ``rules``: Service name -> weight (``None``: no
    ``weight`` field, which weighs 1)."""
    spec_rules: list[Obj] = []
    for backends in rules:
        refs = [{"name": service, "port": port, **({"weight": weight} if weight is not None else {})}
                for service, weight in backends.items()]
        rule: Obj = {"backendRefs": refs}
        if kind == "HTTPRoute":
            rule["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
        spec_rules.append(rule)
    spec: Obj = {"hostnames": list(hostnames), "rules": spec_rules}
    if gateway is not None:
        spec["parentRefs"] = [{"name": gateway}]
    return emu.store(HTTPROUTES if kind == "HTTPRoute" else GRPCROUTES, namespace,
                     {"metadata": {"name": name}, "spec": spec})


def seed_virtual_service(
    emu: ClusterEmulator,
    namespace: str,
    name: str,
    *,
    http: Sequence[Sequence[Mapping[str, Any]]],
    hosts: Sequence[str] = ("shop.example.com",),
    gateways: Sequence[str] = (),
) -> Obj:
    """An Istio VirtualService for ``hosts``, one ``http`` route per item of ``http``: its
    destinations, each a mapping with ``host``, optionally ``subset`` and ``weight``."""
    routes: list[Obj] = []
    for destinations in http:
        route = []
        for item in destinations:
            destination = {key: item[key] for key in ("host", "subset") if item.get(key) is not None}
            route.append({"destination": destination,
                          **({"weight": item["weight"]} if item.get("weight") is not None else {})})
        routes.append({"route": route})
    spec: Obj = {"hosts": list(hosts), "http": routes}
    if gateways:
        spec["gateways"] = list(gateways)
    return emu.store(VIRTUALSERVICES, namespace, {"metadata": {"name": name}, "spec": spec})


def route_parents_status(
    emu: ClusterEmulator, route: Mapping[str, Any], refused: Mapping[tuple[str, str], str]
) -> list[Obj]:
    """``status.parents`` as a gateway controller reports them for ``route``: every parent
    ``Accepted`` unless ``refused`` names the route (namespace, name) with a message;
    ``ResolvedRefs`` false (``BackendNotFound``) while a Service it names does not exist."""
    metadata = route.get("metadata") or {}
    namespace, name = metadata.get("namespace", ""), metadata.get("name", "")
    generation = int(metadata.get("generation") or 1)
    missing = sorted({
        ref.get("name") for rule in (route.get("spec") or {}).get("rules") or []
        for ref in rule.get("backendRefs") or []
        if ref.get("kind", "Service") == "Service"
        and emu.read(SERVICES, ref.get("namespace", namespace), ref.get("name", "")) is None
    })
    refusal = refused.get((namespace, name))
    accepted = {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "Route is accepted"}
    if refusal is not None:
        accepted = {"type": "Accepted", "status": "False", "reason": "NotAllowedByListeners",
                    "message": refusal}
    resolved = {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                "message": "All references resolved"}
    if missing:
        resolved = {"type": "ResolvedRefs", "status": "False", "reason": "BackendNotFound",
                    "message": "backend Service(s) not found: "
                               + ", ".join(f"{namespace}/{name}" for name in missing)}
    return [
        {
            "parentRef": dict(parent),
            "controllerName": GATEWAY_CONTROLLER,
            "conditions": [{**condition, "observedGeneration": generation, "lastTransitionTime": _now()}
                           for condition in (accepted, resolved)],
        }
        for parent in (route.get("spec") or {}).get("parentRefs") or []
    ]


def _attaches(route: Mapping[str, Any], gateway: Mapping[str, Any], listener: str) -> bool:
    """Whether ``route`` names ``listener`` of ``gateway`` among its parents (every listener when the
    parent names no section)."""
    route_ns = (route.get("metadata") or {}).get("namespace", "")
    metadata = gateway.get("metadata") or {}
    return any(
        ref.get("name") == metadata.get("name")
        and ref.get("namespace", route_ns) == metadata.get("namespace")
        and ref.get("kind", "Gateway") == "Gateway"
        and ref.get("sectionName", listener) == listener
        for ref in (route.get("spec") or {}).get("parentRefs") or []
    )


def gateway_status(
    emu: ClusterEmulator, gateway: Mapping[str, Any], refused: Mapping[tuple[str, str], str]
) -> Obj:
    """``status`` as a gateway controller reports it for ``gateway``: ``Accepted`` and
    ``Programmed`` for its generation, and per listener the routes of its namespace attached to it
    (the routes ``refused`` names do not count)."""
    metadata = gateway.get("metadata") or {}
    namespace = metadata.get("namespace", "")
    generation = int(metadata.get("generation") or 1)
    routes = [
        (resource, route)
        for resource in ROUTE_RESOURCES if resource in emu.resources
        for route in emu.read_all(resource, namespace)
        if (namespace, (route.get("metadata") or {}).get("name", "")) not in refused
    ]

    def condition(kind: str, reason: str, message: str) -> Obj:
        return {"type": kind, "status": "True", "reason": reason, "message": message,
                "observedGeneration": generation, "lastTransitionTime": _now()}

    listeners = []
    for listener in (gateway.get("spec") or {}).get("listeners") or []:
        name = listener.get("name", "")
        listeners.append({
            "name": name,
            "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": kind}
                               for kind in ("HTTPRoute", "GRPCRoute")],
            "attachedRoutes": sum(1 for _, route in routes if _attaches(route, gateway, name)),
            "conditions": [condition("Accepted", "Accepted", "Listener is accepted"),
                           condition("Programmed", "Programmed", "Listener is programmed")],
        })
    return {
        "conditions": [condition("Accepted", "Accepted", f"Gateway accepted by {GATEWAY_CONTROLLER}"),
                       condition("Programmed", "Programmed", "Gateway is programmed")],
        "listeners": listeners,
    }


def seed_endpointslice(
    emu: ClusterEmulator,
    namespace: str,
    service: str,
    *,
    addresses: Iterable[str],
    ready: bool = True,
    port: int = 8080,
    name: str | None = None,
) -> Obj:
    """An EndpointSlice of ``service`` with one endpoint per address, all ``ready`` or not."""
    endpoints = [
        {"addresses": [address], "conditions": {"ready": ready, "serving": ready, "terminating": False}}
        for address in addresses
    ]
    return emu.store(ENDPOINTSLICES, namespace, {
        "metadata": {"name": name or f"{service}-{_safe_suffix(service, 5)}",
                     "labels": {SERVICE_NAME_LABEL: service}},
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    })


def _ready_endpoints(emu: ClusterEmulator, namespace: str, selector: Mapping[str, str]) -> list[Obj]:
    """One ready endpoint per ready pod of every ReplicaSet whose pods the selector picks."""
    endpoints: list[Obj] = []
    for rs in emu.read_all(REPLICASETS, namespace):
        template = (rs.get("spec") or {}).get("template") or {}
        pod_labels = (template.get("metadata") or {}).get("labels") or {}
        if not selector or any(pod_labels.get(key) != value for key, value in selector.items()):
            continue
        ready = int((rs.get("status") or {}).get("readyReplicas") or 0)
        for index in range(ready):
            pod = f"{rs['metadata']['name']}-{_safe_suffix(f'{index}', 5)}"
            endpoints.append({
                "addresses": [pod_address(pod)],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace},
            })
    return sorted(endpoints, key=lambda endpoint: endpoint["targetRef"]["name"])


def sync_endpointslice(emu: ClusterEmulator, service: Mapping[str, Any]) -> Obj | None:
    """Make the Service's EndpointSlice list the ready pods its selector picks; returns the slice if
    it was written (``None`` if it was already right or the Service has no selector)."""
    namespace = service["metadata"]["namespace"]
    name = service["metadata"]["name"]
    selector = (service.get("spec") or {}).get("selector") or {}
    if not selector:
        return None
    endpoints = _ready_endpoints(emu, namespace, selector)
    ports = [
        {"name": port.get("name", ""), "protocol": port.get("protocol", "TCP"),
         "port": port["targetPort"] if isinstance(port.get("targetPort"), int) else port.get("port")}
        for port in (service.get("spec") or {}).get("ports") or []
    ]
    slices = [s for s in emu.read_all(ENDPOINTSLICES, namespace)
              if (s.get("metadata", {}).get("labels") or {}).get(SERVICE_NAME_LABEL) == name]
    if slices:
        current = slices[0]
        if current.get("endpoints") == endpoints and current.get("ports") == ports:
            return None
        return emu.update(ENDPOINTSLICES, namespace, current["metadata"]["name"],
                          {"endpoints": endpoints, "ports": ports})
    return emu.store(ENDPOINTSLICES, namespace, {
        "metadata": {"name": f"{name}-{_safe_suffix(name, 5)}", "labels": {SERVICE_NAME_LABEL: name}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
    })


# --- the controllers -----------------------------------------------------------------------------

class Polling:
    """An emulated controller run as one task while entered: :meth:`reconcile` every ``poll_s``.

    A subclass (a dataclass) declares ``poll_s`` and ``_task`` and names its task."""

    task_name: ClassVar[str]
    poll_s: float
    _task: asyncio.Task[None] | None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name=self.task_name)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        await stop_tasks([task])

    async def _run(self) -> None:
        while True:
            await self.reconcile()
            await asyncio.sleep(self.poll_s)

    async def reconcile(self) -> None:
        """One pass over the objects the controller looks after."""
        raise NotImplementedError


@dataclass
class Controllers(Polling):
    """What the deployment, EndpointSlice and gateway controllers do, run as one task while entered.

    Deployments: when ``metadata.generation`` is ahead of ``status.observedGeneration`` (the
    template or the replicas changed), the ReplicaSet for the current template is found (by
    template, like the real controller) or created. It gets the newest revision number -- an old
    ReplicaSet brought back (a rollback) moves to ``max + 1`` and remembers its former numbers in
    ``deployment.kubernetes.io/revision-history`` -- and so does the Deployment's revision
    annotation. At once, the status shows the new generation observed and the rollout in progress;
    ``rollout_delay_s`` later the new ReplicaSet has all its replicas ready, the others are at
    zero, and the Deployment's status counts them (a rollout of a deployment in ``stalled`` never
    gets ready: the old pods keep serving).

    Services: their EndpointSlice always lists the ready pods of the ReplicaSets the selector picks.

    Gateway API routes (HTTPRoute, GRPCRoute): each parent in ``spec.parentRefs`` gets a
    ``status.parents`` entry with ``Accepted`` (false, ``NotAllowedByListeners``, for the routes
    named in ``refused_routes``) and ``ResolvedRefs`` (false, ``BackendNotFound``, while a Service
    it names does not exist), for the route's generation (:func:`route_parents_status`).
    Gateways: ``Accepted`` and ``Programmed``, and each listener's attached routes
    (:func:`gateway_status`).

    Every ``poll_s`` the store is compared with what was last seen; writes go through the
    emulator's store and are published to watchers.
    """

    task_name: ClassVar[str] = "emulated k8s controllers"
    emu: ClusterEmulator
    rollout_delay_s: float = 0.05
    poll_s: float = 0.01
    stalled: set[tuple[str, str]] = field(default_factory=set)
    #: Gateway API routes (namespace, name) the emulated Gateway refuses, with its message.
    refused_routes: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (namespace, name) -> (loop time when ready, generation) of rollouts in progress.
    _pending: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    async def reconcile(self) -> None:
        """One pass over Deployments and Services (the task does this every ``poll_s``)."""
        now = asyncio.get_running_loop().time()
        for deployment in self.emu.read_all(DEPLOYMENTS):
            await self._sync_deployment(deployment, now)
        for service in self.emu.read_all(SERVICES):
            written = sync_endpointslice(self.emu, service)
            if written is not None:
                await self.emu.publish(ENDPOINTSLICES, "MODIFIED", written)
        for resource in ROUTE_RESOURCES:
            if resource in self.emu.resources:
                for route in self.emu.read_all(resource):
                    await self._sync_route(resource, route)
        if GATEWAYS in self.emu.resources:
            for gateway in self.emu.read_all(GATEWAYS):
                await self._sync_gateway(gateway)

    async def _sync_route(self, resource: kmock.resource, route: Obj) -> None:
        """What a gateway controller reports: each parent's ``Accepted`` and ``ResolvedRefs`` for
        the route's generation (written only when they change)."""
        parents = route_parents_status(self.emu, route, self.refused_routes)
        current = (route.get("status") or {}).get("parents") or []

        def comparable(items: list[Obj]) -> list[Obj]:
            return [{**item, "conditions": [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                                            for c in item.get("conditions") or []]} for item in items]

        if comparable(parents) != comparable(current):
            metadata = route["metadata"]
            await self._write(resource, metadata["namespace"], metadata["name"],
                              {"status": {"parents": parents}})

    async def _sync_gateway(self, gateway: Obj) -> None:
        """What a gateway controller reports of a Gateway (:func:`gateway_status`), written only
        when it changes."""
        status = gateway_status(self.emu, gateway, self.refused_routes)

        def comparable(value: Any) -> Any:
            if isinstance(value, Mapping):
                return {k: comparable(v) for k, v in value.items() if k != "lastTransitionTime"}
            if isinstance(value, list):
                return [comparable(item) for item in value]
            return value

        if comparable(status) != comparable(gateway.get("status") or {}):
            metadata = gateway["metadata"]
            await self._write(GATEWAYS, metadata["namespace"], metadata["name"], {"status": status})

    async def _write(self, resource: kmock.resource, namespace: str, name: str, patch: Obj) -> Obj:
        stored = self.emu.update(resource, namespace, name, patch)
        await self.emu.publish(resource, "MODIFIED", stored)
        return stored

    async def _sync_deployment(self, deployment: Obj, now: float) -> None:
        namespace = deployment["metadata"]["namespace"]
        name = deployment["metadata"]["name"]
        key = (namespace, name)
        generation = int(deployment["metadata"].get("generation") or 1)
        observed = (deployment.get("status") or {}).get("observedGeneration")
        if observed != generation:
            await self._start_rollout(deployment, generation, now)
            return
        pending = self._pending.get(key)
        if pending is not None and pending[1] == generation and now >= pending[0]:
            del self._pending[key]
            await self._finish_rollout(deployment, generation)

    def _owned(self, deployment: Obj) -> list[Obj]:
        uid = deployment["metadata"]["uid"]
        return [
            rs for rs in self.emu.read_all(REPLICASETS, deployment["metadata"]["namespace"])
            if any(ref.get("uid") == uid for ref in rs["metadata"].get("ownerReferences") or [])
        ]

    def _current_rs(self, deployment: Obj) -> Obj | None:
        pod_hash = template_hash(deployment["spec"]["template"])
        for rs in self._owned(deployment):
            if rs["metadata"].get("labels", {}).get(POD_TEMPLATE_HASH_LABEL) == pod_hash:
                return rs
        return None

    async def _start_rollout(self, deployment: Obj, generation: int, now: float) -> None:
        namespace = deployment["metadata"]["namespace"]
        name = deployment["metadata"]["name"]
        replicas = int(deployment["spec"].get("replicas", 1))
        owned = self._owned(deployment)
        newest = max((int(rs["metadata"].get("annotations", {}).get(REVISION_ANNOTATION, 0)) for rs in owned),
                     default=0)
        current = self._current_rs(deployment)
        if current is None:
            created = _replicaset(deployment, deployment["spec"]["template"], newest + 1, replicas, 0)
            created["status"] = _rs_status(0, 0)  # no pods yet
            current = self.emu.store(REPLICASETS, namespace, created)
            await self.emu.publish(REPLICASETS, "ADDED", current)
            revision = newest + 1
        else:
            annotations = current["metadata"].get("annotations", {})
            revision = int(annotations.get(REVISION_ANNOTATION, 0))
            patch: Obj = {"spec": {"replicas": replicas},
                          "metadata": {"annotations": {DESIRED_REPLICAS_ANNOTATION: str(replicas)}}}
            if revision < newest:
                history = [h for h in annotations.get(REVISION_HISTORY_ANNOTATION, "").split(",") if h]
                patch["metadata"]["annotations"].update({
                    REVISION_ANNOTATION: str(newest + 1),
                    REVISION_HISTORY_ANNOTATION: ",".join([*history, str(revision)]),
                })
                revision = newest + 1
            current = await self._write(REPLICASETS, namespace, current["metadata"]["name"], patch)
        others = [rs for rs in owned if rs["metadata"]["name"] != current["metadata"]["name"]]
        updated = _count(current, "replicas")
        await self._write(DEPLOYMENTS, namespace, name, {
            "metadata": {"annotations": {REVISION_ANNOTATION: str(revision)}},
            "status": _deployment_status(
                generation, desired=replicas, total=updated + sum(_count(rs, "replicas") for rs in others),
                updated=updated,
                ready=_count(current, "readyReplicas") + sum(_count(rs, "readyReplicas") for rs in others),
                complete=False,
            ),
        })
        self._pending[(namespace, name)] = (now + self.rollout_delay_s, generation)

    async def _finish_rollout(self, deployment: Obj, generation: int) -> None:
        namespace = deployment["metadata"]["namespace"]
        name = deployment["metadata"]["name"]
        replicas = int(deployment["spec"].get("replicas", 1))
        current = self._current_rs(deployment)
        if current is None:  # pragma: no cover - deleted under the controller
            return
        stalled = (namespace, name) in self.stalled
        new_ready = 0 if stalled else replicas
        await self._write(REPLICASETS, namespace, current["metadata"]["name"],
                          {"status": _rs_status(replicas, new_ready)})
        old_pods = old_ready = 0
        for rs in self._owned(deployment):
            if rs["metadata"]["name"] == current["metadata"]["name"]:
                continue
            if stalled:  # the old pods keep serving while the new ones never get ready
                old_pods += _count(rs, "replicas")
                old_ready += _count(rs, "readyReplicas")
            elif rs["spec"].get("replicas") or _count(rs, "replicas"):
                await self._write(REPLICASETS, namespace, rs["metadata"]["name"],
                                  {"spec": {"replicas": 0}, "status": _rs_status(0, 0)})
        await self._write(DEPLOYMENTS, namespace, name, {
            "status": _deployment_status(generation, desired=replicas, total=replicas + old_pods,
                                         updated=replicas, ready=new_ready + old_ready, complete=not stalled),
        })


def _count(obj: Mapping[str, Any], status_field: str) -> int:
    return int((obj.get("status") or {}).get(status_field) or 0)


def rollout_settled(deployment: Mapping[str, Any]) -> bool:
    """A rollout with nothing left to do: the newest generation observed, and exactly the desired
    number of replicas, all updated and available (none still to be started or stopped). Stricter
    than :func:`~rollbackd.kube.objects.rollout_complete`, which a scale-down passes while surplus
    pods are still available: tests and benchmarks wait for this."""
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    replicas = int(spec.get("replicas", 1))
    return bool(
        status.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get("generation", 1)
        and status.get("updatedReplicas", 0) == replicas
        and status.get("availableReplicas", 0) == replicas
        and status.get("replicas", 0) == replicas
    )
