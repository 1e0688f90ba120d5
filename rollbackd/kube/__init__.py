"""Kubernetes access: one client, classified errors, retries, and the objects rollbacks touch.

The layer, bottom up:

- :mod:`rollbackd.kube.client` -- :class:`KubeClient`, an async context manager owning one
  ``kubernetes_asyncio`` ``ApiClient``. Configuration is explicit and keyword-only: the pod's
  service account (``KubeClient(in_cluster=True)``), a kubeconfig file for running outside the
  cluster (``KubeClient(kubeconfig=PATH, context=NAME)``), or a host
  (``KubeClient.for_host("http://127.0.0.1:PORT")``, what tests use against an emulator). Inside
  ``async with`` it exposes the typed API groups (``apps``, ``core``, ``networking``,
  ``discovery``, ``coordination``, ``events``, and ``custom`` for objects of CRDs) and
  :meth:`KubeClient.request`, the one door every request goes through: it returns the body as a
  plain ``dict`` and raises only classified errors.
- :mod:`rollbackd.kube.errors` -- :class:`KubeError` and its classes: :class:`KubeTemporary` (5xx,
  429, timeouts, connection errors; a :class:`~rollbackd.errors.TemporaryError`),
  :class:`KubeConflict` (409: re-read and re-apply), :class:`KubePermanent` (other 4xx; a
  :class:`~rollbackd.errors.PermanentError`) with :class:`KubeNotFound` and :class:`KubeForbidden`
  (whose message names who may not do which verb on which resource in which namespace, and the
  RBAC rule that would allow it). Every error carries the :class:`KubeCall` it came from.
- :mod:`rollbackd.kube.retry` -- :func:`retrying`: backoff with jitter on temporary errors, the
  operation run again (so it re-reads) on conflicts, everything else raised at once.
- :mod:`rollbackd.kube.objects` -- typed helpers on plain ``dict`` objects: Deployments (get,
  strategic / merge / JSON patch, the ``scale`` subresource), the ReplicaSets a Deployment owns
  with their revisions, Services, Ingresses (ingress-nginx canary annotations), a Service's
  EndpointSlices, ``events.k8s.io/v1`` Events, Leases, and objects of custom resources (read and
  patched by group, version and plural: what GitOps reconcilers are made of).
- :mod:`rollbackd.kube.rollouts` -- Argo Rollouts' ``Rollout``: read it (a cluster without Argo
  Rollouts is told apart from a missing Rollout), abort it through its ``status`` subresource,
  find its stable ReplicaSet.

A typical action step::

    async with KubeClient(in_cluster=True) as kube:
        async def switch_back() -> Obj:
            service = await objects.get_service(kube, namespace="shop", name="web")
            ...  # decide from what was just read
            return await objects.patch_service(kube, namespace="shop", name="web",
                                               patch={"spec": {"selector": {"version": "blue"}}})
        await retrying(switch_back, backoff=Backoff(initial_s=0.2, max_s=5.0), attempts=5)
"""

from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import (
    KubeCall,
    KubeConfigError,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubePermanent,
    KubeTemporary,
)
from rollbackd.kube.retry import retrying

__all__ = [
    "KubeCall",
    "KubeClient",
    "KubeConfigError",
    "KubeConflict",
    "KubeError",
    "KubeForbidden",
    "KubeNotFound",
    "KubePermanent",
    "KubeTemporary",
    "Obj",
    "retrying",
]
