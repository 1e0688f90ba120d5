"""GitOps on the emulated cluster: Argo CD Applications, Flux Kustomizations and HelmReleases, and a
reconciler that puts back what Git declares unless it is told not to.

Not Argo CD nor Flux: no Git, no rendering. A :class:`GitOpsReconciler` is told, for each
reconciler object it stands in for (an Application, a Kustomization, a HelmRelease, seeded with
:func:`seed_application`, :func:`seed_kustomization`, :func:`seed_helmrelease`), what Git declares
for some fields of the objects it reconciles (:class:`Declared`: a JSON merge patch). Every
``poll_s`` it puts those fields back, as self-heal does, unless that reconciler is off:

- an Application reconciles while ``spec.syncPolicy.automated`` is there with ``selfHeal: true``
  and ``enabled`` not ``false`` (Argo CD reverts changes made in the cluster only with self-heal);
- a Kustomization or HelmRelease reconciles while ``spec.suspend`` is not ``true``.

The objects it reconciles are marked as the real tools mark them: :func:`track_by_argocd` (the
``argocd.argoproj.io/tracking-id`` annotation), :func:`label_for_flux` (the Flux labels).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import kmock

from rollbackd.demo.emulator import (
    APPLICATIONS,
    HELMRELEASES,
    KUSTOMIZATIONS,
    RESOURCES,
    ClusterEmulator,
    Obj,
    Polling,
    merge_patch,
)

#: Where the demo's Argo CD and Flux live.
ARGOCD_NAMESPACE = "argocd"
FLUX_NAMESPACE = "flux-system"
REPO_URL = "https://git.example.com/shop/deploy.git"


@dataclass(frozen=True, slots=True)
class Declared:
    """What Git declares for some fields of one object: a JSON merge patch (``fields``)."""

    resource: kmock.resource
    namespace: str
    name: str
    fields: Obj

    @property
    def object(self) -> str:
        """``Deployment/shop/web``."""
        return f"{RESOURCES[self.resource][0]}/{self.namespace}/{self.name}"


def seed_application(
    emu: ClusterEmulator, name: str, *, destination_namespace: str, namespace: str = ARGOCD_NAMESPACE,
    path: str = "apps/web", automated: Mapping[str, Any] | None = None,
) -> Obj:
    """An Argo CD Application syncing ``path`` of the demo's repository into
    ``destination_namespace``; ``automated`` is its automated sync policy (default: prune and
    self-heal on)."""
    policy = dict(automated) if automated is not None else {"prune": True, "selfHeal": True}
    return emu.store(APPLICATIONS, namespace, {
        "metadata": {"name": name},
        "spec": {
            "project": "default",
            "source": {"repoURL": REPO_URL, "path": path, "targetRevision": "main"},
            "destination": {"server": "https://kubernetes.default.svc", "namespace": destination_namespace},
            "syncPolicy": {"automated": policy},
        },
    })


def _flux_spec(path: str, suspend: bool) -> Obj:
    return {"interval": "1m", "prune": True, "path": f"./{path}", "suspend": suspend,
            "sourceRef": {"kind": "GitRepository", "name": "deploy"}}


def seed_kustomization(
    emu: ClusterEmulator, name: str, *, namespace: str = FLUX_NAMESPACE, path: str = "apps/web",
    suspend: bool = False,
) -> Obj:
    """A Flux Kustomization applying ``path`` of the GitRepository ``deploy``."""
    return emu.store(KUSTOMIZATIONS, namespace,
                     {"metadata": {"name": name}, "spec": _flux_spec(path, suspend)})


def seed_helmrelease(
    emu: ClusterEmulator, name: str, *, namespace: str = FLUX_NAMESPACE, chart: str = "web",
    suspend: bool = False,
) -> Obj:
    """A Flux HelmRelease installing ``chart`` from the HelmRepository ``charts``."""
    return emu.store(HELMRELEASES, namespace, {
        "metadata": {"name": name},
        "spec": {
            "interval": "5m", "suspend": suspend,
            "chart": {"spec": {"chart": chart, "sourceRef": {"kind": "HelmRepository", "name": "charts"}}},
        },
    })


def track_by_argocd(
    emu: ClusterEmulator, resource: kmock.resource, namespace: str, name: str, *, application: str,
    application_namespace: str = ARGOCD_NAMESPACE,
) -> Obj:
    """Annotate an object as Argo CD does when it syncs it for ``application`` (an Application
    outside Argo CD's namespace is named ``<namespace>_<name>``)."""
    kind = RESOURCES[resource][0]
    instance = application
    if application_namespace != ARGOCD_NAMESPACE:
        instance = f"{application_namespace}_{application}"
    tracking_id = f"{instance}:{resource.group}/{kind}:{namespace}/{name}"
    return emu.update(resource, namespace, name,
                      {"metadata": {"annotations": {"argocd.argoproj.io/tracking-id": tracking_id}}})


def label_for_flux(
    emu: ClusterEmulator, resource: kmock.resource, namespace: str, name: str, *, owner: kmock.resource,
    owner_name: str, owner_namespace: str = FLUX_NAMESPACE,
) -> Obj:
    """Label an object as Flux does when ``owner`` (a Kustomization or a HelmRelease) applies it."""
    prefix = "kustomize.toolkit.fluxcd.io" if owner == KUSTOMIZATIONS else "helm.toolkit.fluxcd.io"
    return emu.update(resource, namespace, name, {"metadata": {"labels": {
        f"{prefix}/name": owner_name, f"{prefix}/namespace": owner_namespace,
    }}})


def reconciles(resource: kmock.resource, obj: Mapping[str, Any]) -> bool:
    """Whether the reconciler object ``obj`` (an Application, Kustomization or HelmRelease) puts
    changes made in the cluster back on its own now."""
    spec = obj.get("spec") or {}
    if resource == APPLICATIONS:
        automated = (spec.get("syncPolicy") or {}).get("automated")
        return (isinstance(automated, Mapping) and automated.get("enabled") is not False
                and automated.get("selfHeal") is True)
    return spec.get("suspend") is not True


@dataclass
class GitOpsReconciler(Polling):
    """Puts back what Git declares, every ``poll_s``, for each reconciler that is on (see the
    module docstring); run as one task while entered. ``on_revert`` hears of every object put back
    (the reconciler's ``kind/namespace/name`` and the object's); :attr:`reverts` counts them,
    :attr:`passes` the passes made."""

    task_name: ClassVar[str] = "emulated GitOps reconciler"

    emu: ClusterEmulator
    poll_s: float = 0.5
    on_revert: Callable[[str, str], None] | None = None
    reverts: int = 0
    #: Passes made so far (every ``poll_s`` while entered, and each :meth:`reconcile`).
    passes: int = 0
    _declared: dict[tuple[kmock.resource, str, str], list[Declared]] = field(default_factory=dict, init=False)
    _task: asyncio.Task[None] | None = field(default=None, init=False)

    def declare(
        self, resource: kmock.resource, namespace: str, name: str, objects: Sequence[Declared]
    ) -> None:
        """The reconciler object ``resource`` ``namespace/name`` declares ``objects``."""
        self._declared.setdefault((resource, namespace, name), []).extend(objects)

    async def reconcile(self) -> None:
        """One pass: every reconciler that is on puts its declared fields back where they differ."""
        self.passes += 1
        for (resource, namespace, name), declared in self._declared.items():
            source = self.emu.read(resource, namespace, name)
            if source is None or not reconciles(resource, source):
                continue
            for item in declared:
                current = self.emu.read(item.resource, item.namespace, item.name)
                if current is None or merge_patch(current, item.fields) == current:
                    continue
                stored = self.emu.update(item.resource, item.namespace, item.name, item.fields)
                await self.emu.publish(item.resource, "MODIFIED", stored)
                self.reverts += 1
                if self.on_revert is not None:
                    self.on_revert(f"{RESOURCES[resource][0]}/{namespace}/{name}", item.object)
