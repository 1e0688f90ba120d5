"""From settings to the values the core works with: pure functions, no I/O.

Per-target ``slo``, ``detection`` and ``policy`` override ``defaults`` key by key; ``severity``
and the hourly rollback cap are global (declared so in :mod:`rollbackd.params`) and always come
from ``defaults``.
"""

from __future__ import annotations

import enum
from typing import Any, TypeVar, get_type_hints

from pydantic import BaseModel

from rollbackd.config.settings import Settings, TargetSettings
from rollbackd.knobs import knobs
from rollbackd.model import Slo, Strategy
from rollbackd.params import Detection, Policy, Severity, TargetParams

__all__ = ["default_params", "overridden", "target_params"]

_Core = TypeVar("_Core", Slo, Severity, Detection, Policy)


def overridden(defaults: BaseModel, override: BaseModel | None) -> dict[str, Any]:
    """The defaults' values with every key the override sets (not ``None``) replaced."""
    values = dict(defaults)
    if override is not None:
        values.update((key, value) for key, value in override if value is not None)
    return values


def _core(cls: type[_Core], defaults: BaseModel, override: BaseModel | None = None) -> _Core:
    """The core's ``cls`` value from a settings model and an optional override of it; enums are
    written in the file by their values."""
    hints = get_type_hints(cls)
    values = overridden(defaults, override)
    resolved: dict[str, Any] = {}
    for item, _ in knobs(cls):
        hint, value = hints[item.name], values[item.name]
        is_enum = isinstance(hint, type) and issubclass(hint, enum.Enum)
        resolved[item.name] = hint(value) if is_enum else value
    return cls(**resolved)


def _params(
    settings: Settings, target: TargetSettings | None, *, key: str, strategy: Strategy
) -> TargetParams:
    defaults = settings.defaults
    return TargetParams(
        key=key,
        strategy=strategy,
        interval_s=settings.interval_s,
        slo=_core(Slo, defaults.slo, target.slo if target is not None else None),
        severity=_core(Severity, defaults.severity),
        detection=_core(Detection, defaults.detection, target.detection if target is not None else None),
        policy=_core(Policy, defaults.policy, target.policy if target is not None else None),
    )


def target_params(settings: Settings, target: TargetSettings) -> TargetParams:
    """Everything the detectors and the decision need to judge ``target``."""
    return _params(settings, target, key=target.key, strategy=target.strategy)


def default_params(
    settings: Settings, *, key: str = "defaults", strategy: Strategy = Strategy.CANARY
) -> TargetParams:
    """The parameters of a target that overrides nothing (``rollbackd replay --config``):
    ``defaults`` and ``interval_s``, under the given ``key`` and ``strategy``."""
    return _params(settings, None, key=key, strategy=strategy)
