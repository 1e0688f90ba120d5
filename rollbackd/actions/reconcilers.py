"""Which GitOps reconciler would put an object back as Git declares it, and how to stop it. Pure.

A rollback changes objects (a Deployment's template, a canary route's weight, a Service's
selector) away from what Git declares. When a GitOps tool reconciles those objects with
self-healing on, it puts the bad version back minutes later. This module reads, from objects as
the API server sends them, who reconciles them:

- **Argo CD** marks what it syncs with the ``argocd.argoproj.io/tracking-id`` annotation
  (``<application>:<group>/<kind>:<namespace>/<name>``; tracking methods ``annotation`` and
  ``annotation+label``) or, with tracking method ``label``, with its instance label (default
  ``app.kubernetes.io/instance``) set to the Application's name. An Application outside Argo CD's
  own namespace is written ``<namespace>_<application>``. A tracking id that does not name the
  object it is on (a copied object) does not make Argo CD reconcile it.
- **Flux** labels what a Kustomization applies ``kustomize.toolkit.fluxcd.io/name`` and
  ``kustomize.toolkit.fluxcd.io/namespace``, and what a HelmRelease installs
  ``helm.toolkit.fluxcd.io/name`` and ``helm.toolkit.fluxcd.io/namespace``.

and, from the reconciler's own object, whether it reconciles now (:func:`automation_of`) and the
change that stops it (:func:`suspension_change`): an Application's automated sync
(``spec.syncPolicy.automated``) removed -- what ``argocd app set --sync-policy none`` does, and the
one way every Argo CD version honours (``automated.enabled: false`` only exists since Argo CD 3.1,
and an older CRD would drop the field silently) -- or a Flux object's ``spec.suspend`` set to
``true``. The value before is kept in the change, so that a person can put it back.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from rollbackd.actions.base import Change, GitOpsHold
from rollbackd.config.settings import ArgoCdSettings
from rollbackd.kube.objects import (
    ARGOCD_APPLICATIONS,
    FLUX_HELMRELEASES,
    FLUX_KUSTOMIZATIONS,
    CustomResource,
    annotations_of,
    labels_of,
)

#: What rollbackd says wherever it tells of a reconciler it suspended or would not fight.
REVERT_IN_GIT = "Git still declares the bad version; revert it in Git, then resume reconciliation"

TRACKING_ID_ANNOTATION = "argocd.argoproj.io/tracking-id"
FLUX_KUSTOMIZATION_LABELS = ("kustomize.toolkit.fluxcd.io/name", "kustomize.toolkit.fluxcd.io/namespace")
FLUX_HELMRELEASE_LABELS = ("helm.toolkit.fluxcd.io/name", "helm.toolkit.fluxcd.io/namespace")

APPLICATION = ARGOCD_APPLICATIONS
KUSTOMIZATION = FLUX_KUSTOMIZATIONS
HELMRELEASE = FLUX_HELMRELEASES

Tool = Literal["argocd", "flux"]
_TOOL_NAMES: Mapping[Tool, str] = {"argocd": "Argo CD", "flux": "Flux"}


@dataclass(frozen=True, slots=True)
class Tracking:
    """How Argo CD marks what it reconciles (see :class:`~rollbackd.config.settings.ArgoCdSettings`)."""

    argocd_namespace: str = "argocd"
    method: Literal["annotation", "annotation+label", "label"] = "annotation"
    instance_label: str = "app.kubernetes.io/instance"

    @classmethod
    def of(cls, settings: ArgoCdSettings) -> Tracking:
        return cls(argocd_namespace=settings.namespace, method=settings.tracking_method,
                   instance_label=settings.instance_label)


@dataclass(frozen=True, slots=True)
class Reconciler:
    """The object of a GitOps tool that reconciles other objects from Git: an Argo CD Application,
    a Flux Kustomization or HelmRelease."""

    tool: Tool
    resource: CustomResource
    namespace: str
    name: str

    @property
    def object(self) -> str:
        """``Application/argocd/shop``: how a :class:`~rollbackd.actions.base.Change` names it."""
        return f"{self.resource.kind}/{self.namespace}/{self.name}"

    def describe(self) -> str:
        """``the Argo CD Application argocd/shop``."""
        return f"the {_TOOL_NAMES[self.tool]} {self.resource.kind} {self.namespace}/{self.name}"

    @property
    def field(self) -> str:
        """The field that turns its reconciliation off."""
        return "spec.syncPolicy.automated" if self.tool == "argocd" else "spec.suspend"


def _argocd_application(value: str, tracking: Tracking) -> tuple[str, str] | None:
    """``(namespace, name)`` of the Application an instance name (``shop`` or ``apps_shop``) names."""
    namespace, sep, name = value.partition("_")
    if not sep:
        namespace, name = tracking.argocd_namespace, value
    return (namespace, name) if namespace and name else None


def _tracked_by_annotation(obj: Mapping[str, Any], kind: str, tracking: Tracking) -> Reconciler | None:
    value = annotations_of(obj).get(TRACKING_ID_ANNOTATION)
    if not isinstance(value, str):
        return None
    parts = value.split(":", 2)
    if len(parts) != 3:
        return None
    application, group_kind, namespaced = parts
    tracked_kind = group_kind.rpartition("/")[2]
    tracked_namespace, _, tracked_name = namespaced.partition("/")
    metadata = obj.get("metadata") or {}
    here = (kind, metadata.get("namespace"), metadata.get("name"))
    if (tracked_kind, tracked_namespace, tracked_name) != here:
        return None  # a tracking id copied onto another object: Argo CD leaves this one alone
    found = _argocd_application(application, tracking)
    return None if found is None else Reconciler("argocd", APPLICATION, *found)


def _tracked_by_label(obj: Mapping[str, Any], tracking: Tracking) -> Reconciler | None:
    value = labels_of(obj).get(tracking.instance_label)
    found = _argocd_application(value, tracking) if isinstance(value, str) else None
    return None if found is None else Reconciler("argocd", APPLICATION, *found)


def _flux(obj: Mapping[str, Any], labels: tuple[str, str], resource: CustomResource) -> Reconciler | None:
    own = labels_of(obj)
    name, namespace = own.get(labels[0]), own.get(labels[1])
    if isinstance(name, str) and name and isinstance(namespace, str) and namespace:
        return Reconciler("flux", resource, namespace, name)
    return None


def reconcilers_of(obj: Mapping[str, Any], *, kind: str, tracking: Tracking) -> tuple[Reconciler, ...]:
    """The GitOps reconcilers of ``obj`` (an object of ``kind`` as read from the API), from its
    annotations and labels: none when Git does not declare it."""
    found: list[Reconciler] = []
    argocd = (
        _tracked_by_label(obj, tracking) if tracking.method == "label"
        else _tracked_by_annotation(obj, kind, tracking)
    )
    for reconciler in (
        argocd,
        _flux(obj, FLUX_KUSTOMIZATION_LABELS, KUSTOMIZATION),
        _flux(obj, FLUX_HELMRELEASE_LABELS, HELMRELEASE),
    ):
        if reconciler is not None:
            found.append(reconciler)
    return tuple(found)


def automation_of(reconciler: Reconciler, obj: Mapping[str, Any]) -> Any:
    """The value of the field that keeps ``reconciler`` (its object as read: ``obj``) putting
    things back: an Application's ``spec.syncPolicy.automated`` mapping while automated sync is on,
    a Flux object's ``spec.suspend`` (``False`` or ``None``) while it is not suspended; ``None`` for
    an Application, and ``True`` for a Flux object, when it does not reconcile on its own now."""
    spec = obj.get("spec") or {}
    if reconciler.tool == "argocd":
        automated = (spec.get("syncPolicy") or {}).get("automated")
        if isinstance(automated, Mapping) and automated.get("enabled") is not False:
            return dict(automated)
        return None
    return spec.get("suspend")


def reconciling(reconciler: Reconciler, obj: Mapping[str, Any]) -> bool:
    """Whether ``reconciler`` would put an object changed away from Git back on its own now."""
    value = automation_of(reconciler, obj)
    return value is not None if reconciler.tool == "argocd" else value is not True


def suspension_change(reconciler: Reconciler, obj: Mapping[str, Any]) -> Change | None:
    """The change that stops ``reconciler`` (its object as read: ``obj``), ``None`` when it does
    not reconcile on its own now."""
    if not reconciling(reconciler, obj):
        return None
    after = None if reconciler.tool == "argocd" else True
    return Change(reconciler.object, reconciler.field, automation_of(reconciler, obj), after)


def suspension_patch(reconciler: Reconciler, obj: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch that stops ``reconciler``, conditional on its object's
    ``resourceVersion`` (a change since it was read answers 409: read again, decide again)."""
    precondition = {"resourceVersion": (obj.get("metadata") or {}).get("resourceVersion")}
    if reconciler.tool == "argocd":
        return {"metadata": precondition, "spec": {"syncPolicy": {"automated": None}}}
    return {"metadata": precondition, "spec": {"suspend": True}}


def resume_command(reconciler: Reconciler, previous: Any) -> str:
    """The command that resumes ``reconciler`` as it was before (``previous``: the value of its
    field then), to run once Git declares the good version again."""
    if reconciler.tool == "flux":
        kind = reconciler.resource.kind.lower()
        return f"flux resume {kind} {reconciler.name} -n {reconciler.namespace}"
    automated = previous if isinstance(previous, Mapping) else {}
    patch = json.dumps({"spec": {"syncPolicy": {"automated": dict(automated)}}}, separators=(",", ":"))
    resource = f"{reconciler.resource.plural}.{reconciler.resource.group}"
    return f"kubectl -n {reconciler.namespace} patch {resource} {reconciler.name} --type merge -p '{patch}'"


_RECONCILER_TYPES: Mapping[str, tuple[Tool, CustomResource]] = {
    APPLICATION.kind: ("argocd", APPLICATION),
    KUSTOMIZATION.kind: ("flux", KUSTOMIZATION),
    HELMRELEASE.kind: ("flux", HELMRELEASE),
}


def suspensions_in(changes: Iterable[Change]) -> tuple[GitOpsHold, ...]:
    """The reconcilers that ``changes`` (e.g. those a stopped process recorded for a rollback)
    turned off, as :class:`~rollbackd.actions.base.GitOpsHold` values: which objects each
    reconciles is not in a change, so ``reconciles`` is empty."""
    holds: list[GitOpsHold] = []
    for change in changes:
        kind, _, rest = change.object.partition("/")
        namespace, _, name = rest.partition("/")
        known = _RECONCILER_TYPES.get(kind)
        if known is None or not namespace or not name:
            continue
        reconciler = Reconciler(known[0], known[1], namespace, name)
        if change.field != reconciler.field:
            continue
        holds.append(GitOpsHold(
            reconciler=reconciler.tool, object=reconciler.object, api_version=reconciler.resource.api_version,
            reconciles=(), field=reconciler.field, previous=change.before, suspended=True,
            resume=resume_command(reconciler, change.before),
        ))
    return tuple(holds)
