"""Opt-in by annotation: a release declared by annotations on its candidate Deployment, read into
the same :class:`~rollbackd.config.settings.TargetSettings` as a ``targets`` entry of the file and
checked with the same rules and the same wording. Pure: no I/O (the watching is in
:mod:`rollbackd.daemon.discovery`).

The annotations (docs/discovery.md):

- ``rollbackd.io/strategy`` (required, and what opts the Deployment in): ``canary``,
  ``blue-green`` or ``deployment``;
- ``rollbackd.io/baseline``: the Deployment of the version to go back to (canary, blue-green);
- how traffic reaches a canary: ``rollbackd.io/ingress``, its ingress-nginx canary Ingress; or
  ``rollbackd.io/httproute`` with ``rollbackd.io/canary-service`` and ``rollbackd.io/stable-service``,
  a Gateway API HTTPRoute and the two Services its rule weighs (a router of kind ``gateway-api``);
- ``rollbackd.io/service``: the Service whose selector picks the colour (blue-green);
- ``rollbackd.io/slo-error-rate``, ``rollbackd.io/slo-p95-ms``: the SLO (default: the file's
  ``defaults.slo``), no looser than ``discovery.max_slo_error_rate`` / ``max_slo_p95_ms``;
- ``rollbackd.io/preset``: the query preset (``queries.preset``);
- ``rollbackd.io/name``: the target's name (default: the Deployment's); ``rollbackd.io/dry-run``:
  ``"true"`` judges and publishes but never acts.

The file wins: an annotated Deployment that a ``targets`` entry already watches (same key, or the
same candidate Deployment) is left to that entry.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from rollbackd.config.loader import error_message
from rollbackd.config.settings import QueryOverride, Settings, TargetSettings, check_target
from rollbackd.model import Strategy

PREFIX = "rollbackd.io/"
STRATEGY = "rollbackd.io/strategy"
NAME = "rollbackd.io/name"
BASELINE = "rollbackd.io/baseline"
INGRESS = "rollbackd.io/ingress"
HTTPROUTE = "rollbackd.io/httproute"
CANARY_SERVICE = "rollbackd.io/canary-service"
STABLE_SERVICE = "rollbackd.io/stable-service"
SERVICE = "rollbackd.io/service"
SLO_ERROR_RATE = "rollbackd.io/slo-error-rate"
SLO_P95_MS = "rollbackd.io/slo-p95-ms"
PRESET = "rollbackd.io/preset"
DRY_RUN = "rollbackd.io/dry-run"

#: Each annotation that declares a target, and the key of a target's settings it sets.
TARGET_ANNOTATIONS: Mapping[str, tuple[str, ...]] = {
    STRATEGY: ("strategy",),
    NAME: ("name",),
    BASELINE: ("baseline", "deployment"),
    INGRESS: ("ingress",),
    HTTPROUTE: ("router", "route"),
    CANARY_SERVICE: ("router", "canary_service"),
    STABLE_SERVICE: ("router", "stable_service"),
    SERVICE: ("service",),
    SLO_ERROR_RATE: ("slo", "max_error_rate"),
    SLO_P95_MS: ("slo", "max_p95_ms"),
    PRESET: ("queries", "preset"),
    DRY_RUN: ("dry_run",),
}

#: rollbackd's other annotations on a Deployment: the decision context of any target, file or
#: annotation (see :mod:`rollbackd.decision.annotations`).
CONTEXT_ANNOTATIONS = ("rollbackd.io/rollback-risk", "rollbackd.io/fix-forward-eta")

#: The strategies a Deployment may declare (an Argo Rollouts Rollout is not a Deployment).
DEPLOYMENT_STRATEGIES = (Strategy.CANARY, Strategy.BLUE_GREEN, Strategy.DEPLOYMENT)


@dataclass(frozen=True, slots=True, order=True)
class ObjectRef:
    """The annotated object a target came from."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class OptIn:
    """What one annotated object asks for: its target (``None`` when the annotations cannot be
    used) and what is wrong with them, one line per problem, each naming the annotation and the
    fix."""

    ref: ObjectRef
    target: TargetSettings | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Merged:
    """The file's settings with the opt-ins' targets added: ``origins`` says which object each
    added target came from; ``conflicts`` the opt-ins left out because the file (or another
    object) already declares the release, with why."""

    settings: Settings
    origins: Mapping[str, ObjectRef] = field(default_factory=dict)
    conflicts: Mapping[ObjectRef, str] = field(default_factory=dict)


def opted_in(annotations: Mapping[str, str]) -> bool:
    """Whether the object declares a target (carries any of :data:`TARGET_ANNOTATIONS`)."""
    return any(key in annotations for key in TARGET_ANNOTATIONS)


def namespace_problem(settings: Settings, namespace: str) -> str | None:
    """Why objects of ``namespace`` may not opt in (``None``: they may)."""
    allowed = settings.discovery.namespaces
    if not allowed or namespace in allowed:
        return None
    return (
        f"namespace {namespace} may not opt in: discovery.namespaces lists {', '.join(allowed)} "
        "(ask whoever runs rollbackd to add it, or list the release in the file's targets)"
    )


def read_opt_in(ref: ObjectRef, annotations: Mapping[str, str], *, settings: Settings) -> OptIn | None:
    """The target ``annotations`` on ``ref`` declare, checked as a file entry would be (and against
    the caps of ``settings.discovery``); ``None`` when the object does not opt in."""
    if not opted_in(annotations):
        return None
    refused = namespace_problem(settings, ref.namespace)
    if refused is not None:
        return OptIn(ref=ref, target=None, problems=(refused,))
    problems = _unknown(annotations)
    strategy = annotations.get(STRATEGY)
    if strategy is not None and strategy.strip() == Strategy.ARGO_ROLLOUT.value:
        problems.append(
            f"{STRATEGY}: 'argo-rollout' is for an Argo Rollouts Rollout, not a Deployment; write canary, "
            "blue-green or deployment, or list the Rollout in the file's targets (strategy: argo-rollout)"
        )
        return OptIn(ref=ref, target=None, problems=tuple(problems))
    if strategy is None:
        problems.append(
            f"{STRATEGY}: missing; it opts the Deployment in and says how it is rolled out: canary, "
            "blue-green or deployment"
        )
        return OptIn(ref=ref, target=None, problems=tuple(problems))
    if Strategy.CANARY.value == strategy.strip() and not {INGRESS, HTTPROUTE} & annotations.keys():
        problems.append(
            f"{INGRESS}: missing for strategy 'canary': name the canary's ingress-nginx Ingress, or give "
            f"{HTTPROUTE} (a Gateway API HTTPRoute) with {CANARY_SERVICE} and {STABLE_SERVICE}"
        )
        return OptIn(ref=ref, target=None, problems=tuple(problems))
    data = _target_data(ref, annotations)
    if PRESET in annotations and "preset" not in QueryOverride.model_fields:
        problems.append(f"{PRESET}: this version of rollbackd has no query presets; remove the annotation")
        data.get("queries", {}).pop("preset", None)
    try:
        target = TargetSettings.model_validate(data)
        check_target(settings, target)
    except ValidationError as exc:
        problems.extend(_described(exc))
        return OptIn(ref=ref, target=None, problems=tuple(problems))
    capped = _cap_problems(target, settings)
    if capped:
        return OptIn(ref=ref, target=None, problems=tuple(problems + capped))
    return OptIn(ref=ref, target=target, problems=tuple(problems))


def with_opt_ins(file: Settings, opt_ins: Iterable[OptIn]) -> Merged:
    """``file``'s settings with the targets of ``opt_ins`` added after its own. The file wins: an
    opt-in whose release a file target already watches (the same key, or the same candidate
    Deployment) is left out, and so is one whose key another object took first (in object
    order)."""
    by_key = {target.key: target for target in file.targets}
    by_candidate = {
        (target.namespace, target.candidate.deployment): target.key
        for target in file.targets
        if target.candidate.deployment is not None
    }
    origins: dict[str, ObjectRef] = {}
    conflicts: dict[ObjectRef, str] = {}
    added: list[TargetSettings] = []
    for opt_in in sorted(opt_ins, key=lambda item: item.ref):
        target = opt_in.target
        if target is None:
            continue
        ref = opt_in.ref
        file_key = target.key if target.key in by_key else by_candidate.get((ref.namespace, ref.name))
        if file_key is not None:
            conflicts[ref] = (
                f"the file's target {file_key} already watches this release: the file wins and the "
                f"annotations are ignored (remove them, or the file's entry)"
            )
            continue
        if target.key in origins:
            conflicts[ref] = (
                f"target {target.key} is already declared by the annotations of {origins[target.key]}: "
                f"give this one another {NAME}"
            )
            continue
        origins[target.key] = ref
        added.append(target)
    settings = file.model_copy(update={"targets": (*file.targets, *added)}) if added else file
    return Merged(settings=settings, origins=origins, conflicts=conflicts)


# --- reading the annotations ---------------------------------------------------------------------


def _unknown(annotations: Mapping[str, str]) -> list[str]:
    """Annotations under ``rollbackd.io/`` that rollbackd does not know (a typo goes unnoticed
    otherwise)."""
    known = [*TARGET_ANNOTATIONS, *CONTEXT_ANNOTATIONS]
    problems = []
    for key in sorted(annotations):
        if key.startswith(PREFIX) and key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
            hint = f"did you mean {close[0]}?" if close else f"known: {', '.join(TARGET_ANNOTATIONS)}"
            problems.append(f"{key}: unknown annotation, ignored ({hint})")
    return problems


def _target_data(ref: ObjectRef, annotations: Mapping[str, str]) -> dict[str, Any]:
    """The annotations as a target's entry in the file (values still strings: validation turns
    them into numbers and switches, or says why it cannot)."""
    data: dict[str, Any] = {
        "name": ref.name,
        "namespace": ref.namespace,
        "candidate": {"deployment": ref.name},
    }
    for key, path in TARGET_ANNOTATIONS.items():
        if key not in annotations:
            continue
        value: Any = annotations[key].strip()
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    if "router" in data:
        data["router"]["kind"] = "gateway-api"
    return data


def _annotation_at(loc: tuple[int | str, ...]) -> str | None:
    """The annotation that sets the key at ``loc`` (relative to a target), if one does."""
    found = [key for key, path in TARGET_ANNOTATIONS.items() if tuple(loc[: len(path)]) == path]
    if not found and loc[:1] == ("baseline",):
        return BASELINE
    if not found and loc[:1] == ("router",):
        return HTTPROUTE
    return found[0] if found else None


def _described(exc: ValidationError) -> list[str]:
    """Each validation error as a line naming the annotation at fault and the fix."""
    lines = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        relative = loc[2:] if loc[:1] == ("targets",) else loc
        if relative[:1] == ("router",) and len(relative) > 1 and relative[1] == "gateway-api":
            relative = ("router", *relative[2:])  # the union's tag
        message = error_message(error, ("targets", 0, *relative))
        for key, path in TARGET_ANNOTATIONS.items():
            message = message.replace(f"key '{path[-1]}'", f"annotation {key}")
        message = message.replace(
            "canary_service and stable_service", f"{CANARY_SERVICE} and {STABLE_SERVICE}"
        )
        annotation = _annotation_at(relative)
        if annotation is not None and annotation in message:
            lines.append(message)
        elif annotation is not None:
            lines.append(f"{annotation}: {message}")
        elif relative[:1] in (("candidate",), ("baseline",)):
            lines.append(
                f"{message} (an annotated target's series are told apart by namespace and Deployment "
                f"only: choose a query preset with {PRESET}, or list the release in the file's targets)"
            )
        else:
            lines.append(message)
    return lines


def _cap_problems(target: TargetSettings, settings: Settings) -> list[str]:
    """An SLO looser than the file lets annotations ask for: refused, with the most allowed."""
    problems = []
    caps = (
        (SLO_ERROR_RATE, target.slo.max_error_rate, settings.discovery.max_slo_error_rate,
         "discovery.max_slo_error_rate"),
        (SLO_P95_MS, target.slo.max_p95_ms, settings.discovery.max_slo_p95_ms, "discovery.max_slo_p95_ms"),
    )
    for annotation, value, cap, setting in caps:
        if value is not None and cap is not None and value > cap:
            problems.append(
                f"{annotation}: {value:g} is looser than annotations may ask for ({setting} is {cap:g}); "
                f"write at most {cap:g}"
            )
    return problems
