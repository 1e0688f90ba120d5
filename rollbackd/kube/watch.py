"""Listing and watching Deployments (in one namespace or in all of them) and ConfigMaps (in one
namespace); watching one ConfigMap.

:func:`list_deployments` reads the objects as they are and the list's ``resourceVersion``;
:func:`watch_deployments` streams what changes after it (``ADDED``, ``MODIFIED``, ``DELETED``;
bookmarks are asked for and passed on) until the API server ends the stream. A caller that keeps
watching lists again whenever a stream breaks, so that what changed while it was not watching is
not missed (see :mod:`rollbackd.daemon.discovery`). :func:`list_configmaps` and
:func:`watch_configmaps` do the same for the ConfigMaps of a namespace (see
:mod:`rollbackd.daemon.configwatch`).

:func:`watch_configmap` streams the changes of one ConfigMap after a ``resourceVersion`` (the one a
``get`` returned): a field selector on its name, which RBAC lets a Role limited to that name
(``resourceNames``) watch (see :mod:`rollbackd.daemon.switchmap`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import KubeCall


@dataclass(frozen=True, slots=True)
class Listed:
    """The objects a list returned and its ``resourceVersion`` (where a watch starts from)."""

    items: tuple[Obj, ...]
    resource_version: str | None


async def list_deployments(kube: KubeClient, *, namespace: str | None) -> Listed:
    """The Deployments of ``namespace`` (``None``: of every namespace)."""
    call = KubeCall("list", "deployments", "apps", namespace)
    if namespace is None:
        body = await kube.request(call, kube.apps.list_deployment_for_all_namespaces)
    else:
        body = await kube.request(call, kube.apps.list_namespaced_deployment, namespace)
    items = tuple(item for item in body.get("items") or () if isinstance(item, dict))
    version = (body.get("metadata") or {}).get("resourceVersion")
    return Listed(items=items, resource_version=version if isinstance(version, str) else None)


async def watch_deployments(
    kube: KubeClient, *, namespace: str | None, resource_version: str | None, timeout_s: float
) -> AsyncIterator[Obj]:
    """The changes to the Deployments of ``namespace`` (``None``: every namespace) after
    ``resource_version``, as watch events (``{"type": ..., "object": {...}}``), until the API server
    ends the stream (after about ``timeout_s``). Raises
    :class:`~rollbackd.kube.errors.KubeError` when the watch fails."""
    call = KubeCall("watch", "deployments", "apps", namespace)
    args: tuple[str, ...] = ()
    method: Callable[..., Awaitable[Any]]
    if namespace is None:
        method = kube.apps.list_deployment_for_all_namespaces
    else:
        method = kube.apps.list_namespaced_deployment
        args = (namespace,)
    extra = {"resource_version": resource_version} if resource_version else {}
    async for event in kube.watch(
        call, method, *args, timeout_s=timeout_s, allow_watch_bookmarks=True, **extra
    ):
        yield event


async def list_configmaps(kube: KubeClient, *, namespace: str) -> Listed:
    """The ConfigMaps of ``namespace``."""
    call = KubeCall("list", "configmaps", "", namespace)
    body = await kube.request(call, kube.core.list_namespaced_config_map, namespace)
    items = tuple(item for item in body.get("items") or () if isinstance(item, dict))
    version = (body.get("metadata") or {}).get("resourceVersion")
    return Listed(items=items, resource_version=version if isinstance(version, str) else None)


async def watch_configmaps(
    kube: KubeClient, *, namespace: str, resource_version: str | None, timeout_s: float
) -> AsyncIterator[Obj]:
    """The changes to the ConfigMaps of ``namespace`` after ``resource_version``, as watch events,
    until the API server ends the stream (like :func:`watch_deployments`)."""
    call = KubeCall("watch", "configmaps", "", namespace)
    extra = {"resource_version": resource_version} if resource_version else {}
    async for event in kube.watch(
        call, kube.core.list_namespaced_config_map, namespace, timeout_s=timeout_s,
        allow_watch_bookmarks=True, **extra,
    ):
        yield event


async def watch_configmap(
    kube: KubeClient, *, namespace: str, name: str, resource_version: str | None, timeout_s: float
) -> AsyncIterator[Obj]:
    """The changes to ConfigMap ``namespace/name`` after ``resource_version``, as watch events,
    until the API server ends the stream (after about ``timeout_s``); events of other ConfigMaps
    (a server that ignores the field selector) are left out. Raises
    :class:`~rollbackd.kube.errors.KubeError` when the watch fails."""
    call = KubeCall("watch", "configmaps", "", namespace, name)
    extra = {"resource_version": resource_version} if resource_version else {}
    async for event in kube.watch(
        call, kube.core.list_namespaced_config_map, namespace, timeout_s=timeout_s,
        field_selector=f"metadata.name={name}", **extra,
    ):
        obj = event.get("object") or {}
        if event.get("type") == "BOOKMARK" or (obj.get("metadata") or {}).get("name") == name:
            yield event
