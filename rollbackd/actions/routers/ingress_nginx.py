"""ingress-nginx: a canary Ingress (``nginx.ingress.kubernetes.io/canary: "true"``) beside the
main Ingress of the same host and path.

The split: ``canary-weight`` out of ``canary-weight-total`` (100 by default) goes to the canary
(an Ingress not marked canary, or without a valid weight, sends the canary nothing).

The abort, in this order, each step skipped when already so:

1. the canary Ingress' ``nginx.ingress.kubernetes.io/canary-weight`` to ``"0"``: weighted traffic
   to the canary stops with one small write;
2. the canary routing annotations removed (JSON merge patch, ``null`` values):
   ``canary-by-header``, ``canary-by-header-value``, ``canary-by-header-pattern``,
   ``canary-by-cookie`` (these send matching requests to the canary whatever the weight) and
   ``canary-weight-total``. With ``remove_canary_marker=True``, ``canary`` and ``canary-weight``
   go too. That is off by default, on purpose: an Ingress that is no longer marked canary is a
   second main Ingress for the same host and path, which ingress-nginx's admission webhook rejects
   and which, without the webhook, may take the main Ingress' traffic. Kept at weight 0 with no
   routing rule, the canary Ingress receives nothing, and the next release can reuse it.

The canary Ingress must exist, else the abort is refused. ingress-nginx reports nothing back about
an Ingress it loaded, so there is nothing to confirm.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rollbackd.actions.base import Change
from rollbackd.actions.routers.base import Split
from rollbackd.actions.steps import ActionRun, Step, object_name
from rollbackd.kube import KubeClient, Obj, objects

KIND = "ingress-nginx"

PREFIX = "nginx.ingress.kubernetes.io/"
CANARY = objects.CANARY_ANNOTATION
WEIGHT = objects.CANARY_WEIGHT_ANNOTATION
WEIGHT_TOTAL = PREFIX + "canary-weight-total"
#: Annotations that route requests to the canary whatever its weight, or scale the weight.
ROUTING_ANNOTATIONS = tuple(
    PREFIX + suffix
    for suffix in (
        "canary-by-header",
        "canary-by-header-value",
        "canary-by-header-pattern",
        "canary-by-cookie",
        "canary-weight-total",
    )
)


def annotation_field(key: str) -> str:
    return f"metadata.annotations[{key}]"


def canary_percent(ingress: Obj) -> float:
    """The share of requests, in percent, the canary Ingress ``ingress`` sends to the canary."""
    annotations = objects.annotations_of(ingress)
    if annotations.get(CANARY) != "true":
        return 0.0
    try:
        weight = float(annotations.get(WEIGHT, "0"))
        total = float(annotations.get(WEIGHT_TOTAL, "100"))
    except ValueError:
        return 0.0
    if not (math.isfinite(weight) and math.isfinite(total)) or total <= 0:
        return 0.0
    return min(max(100.0 * weight / total, 0.0), 100.0)


class IngressNginxRouter:
    """The canary Ingress ``ingress`` in ``namespace`` (see the module docstring);
    ``remove_canary_marker`` also removes ``canary`` and ``canary-weight``."""

    kind = KIND

    def __init__(
        self, *, kube: KubeClient, namespace: str, ingress: str, remove_canary_marker: bool = False
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.ingress = ingress
        self.remove_canary_marker = remove_canary_marker
        self._object = object_name("Ingress", namespace, ingress)

    @property
    def source(self) -> str:
        return f"Ingress {self.namespace}/{self.ingress}"

    @property
    def removed_annotations(self) -> tuple[str, ...]:
        """The annotations step 2 removes."""
        return (*ROUTING_ANNOTATIONS, CANARY, WEIGHT) if self.remove_canary_marker else ROUTING_ANNOTATIONS

    async def _get(self) -> Obj:
        return await objects.get_ingress(self.kube, namespace=self.namespace, name=self.ingress)

    async def read_split(self) -> Split:
        share = canary_percent(await self._get())
        return Split(source=self.source, canary_percent=share, rules=(share,))

    # -- what each step would change, from the Ingress as read --

    def _weight_change(self, ingress: Obj) -> Change | None:
        weight = objects.annotations_of(ingress).get(WEIGHT)
        if weight is None or weight.strip() == "0":
            return None
        return Change(self._object, annotation_field(WEIGHT), weight, "0")

    def _removal_changes(self, ingress: Obj, *, weight_zeroed: bool = False) -> tuple[Change, ...]:
        annotations = dict(objects.annotations_of(ingress))
        if weight_zeroed:  # planned after step 1: the weight will be "0" by then
            annotations[WEIGHT] = "0"
        return tuple(
            Change(self._object, annotation_field(key), annotations[key], None)
            for key in self.removed_annotations
            if key in annotations
        )

    # -- applying them: re-read, re-decide, write --

    async def _set_weight_zero(self) -> Sequence[Change]:
        change = self._weight_change(await self._get())
        if change is None:
            return ()
        await objects.patch_ingress(
            self.kube,
            namespace=self.namespace,
            name=self.ingress,
            patch={"metadata": {"annotations": {WEIGHT: "0"}}},
        )
        return (change,)

    async def _remove_annotations(self) -> Sequence[Change]:
        changes = self._removal_changes(await self._get())
        if not changes:
            return ()
        fields = {change.field for change in changes}
        keys = [key for key in self.removed_annotations if annotation_field(key) in fields]
        await objects.patch_ingress(
            self.kube,
            namespace=self.namespace,
            name=self.ingress,
            patch={"metadata": {"annotations": dict.fromkeys(keys)}},
        )
        return changes

    async def plan(self, run: ActionRun) -> Sequence[Step]:
        ingress = await run.required(f"the canary Ingress {self.namespace}/{self.ingress}", self._get)
        plan: list[Step] = []
        weight = self._weight_change(ingress)
        if weight is not None:
            plan.append(Step(changes=(weight,), apply=self._set_weight_zero))
        removals = self._removal_changes(ingress, weight_zeroed=weight is not None)
        if removals:
            plan.append(Step(changes=removals, apply=self._remove_annotations))
        return plan

    async def confirm(self, run: ActionRun) -> None:
        return None  # ingress-nginx reports nothing back about the Ingresses it loads
