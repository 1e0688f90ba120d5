"""From settings to the values the rest of rollbackd works with: pure functions, no I/O.

Per-target ``slo``, ``detection`` and ``policy`` override ``defaults`` key by key;
``severity`` and the hourly rollback cap are global and always come from ``defaults``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from rollbackd.config.settings import Settings, TargetSettings
from rollbackd.model import Risk, Slo, Strategy
from rollbackd.params import Detection, Policy, Severity, TargetParams

__all__ = ["default_params", "overridden", "target_params"]


def overridden(defaults: BaseModel, override: BaseModel) -> dict[str, Any]:
    """The defaults' values with every key the override sets (not ``None``) replaced."""
    values = dict(defaults)
    values.update((key, value) for key, value in override if value is not None)
    return values


def target_params(settings: Settings, target: TargetSettings) -> TargetParams:
    """Everything the detectors and the decision need to judge ``target``."""
    defaults = settings.defaults
    policy = overridden(defaults.policy, target.policy)
    return TargetParams(
        key=target.key,
        strategy=target.strategy,
        interval_s=settings.interval_s,
        slo=Slo(**overridden(defaults.slo, target.slo)),
        severity=Severity(**dict(defaults.severity)),
        detection=Detection(**overridden(defaults.detection, target.detection)),
        policy=Policy(
            controlled_grace_s=policy["controlled_grace_s"],
            cooldown_s=policy["cooldown_s"],
            max_rollbacks_per_hour=defaults.policy.max_rollbacks_per_hour,
            rollback_risk=Risk(policy["rollback_risk"]),
        ),
    )


def default_params(
    settings: Settings, *, key: str = "defaults", strategy: Strategy = Strategy.CANARY
) -> TargetParams:
    """The parameters of a target that overrides nothing (``rollbackd replay --config``):
    ``defaults`` and ``interval_s``, under the given ``key`` and ``strategy``."""
    defaults = settings.defaults
    return TargetParams(
        key=key,
        strategy=strategy,
        interval_s=settings.interval_s,
        slo=Slo(**dict(defaults.slo)),
        severity=Severity(**dict(defaults.severity)),
        detection=Detection(**dict(defaults.detection)),
        policy=Policy(
            controlled_grace_s=defaults.policy.controlled_grace_s,
            cooldown_s=defaults.policy.cooldown_s,
            max_rollbacks_per_hour=defaults.policy.max_rollbacks_per_hour,
            rollback_risk=Risk(defaults.policy.rollback_risk),
        ),
    )
