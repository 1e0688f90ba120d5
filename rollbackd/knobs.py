"""How each of the core's tunables is declared, once: its default, its bounds and its description.

A tunable is a field of one of the core's frozen parameter dataclasses (:class:`rollbackd.model.Slo`,
:mod:`rollbackd.params`) whose default is given with :func:`knob`. The configuration layer derives
the ``defaults`` settings, the per-target overrides and their JSON Schema from these declarations
(:func:`knobs`), and resolves a configuration back into the dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

_T = TypeVar("_T")

#: Units and bounds shared by the core's tunables and the other settings. Durations are in seconds.
HOUR = 3600
DAY = 24 * HOUR
WEEK = 7 * DAY
#: Shortest interval, period or window: ticks and polls faster than this only burn CPU.
MIN_PERIOD_S = 0.1
#: Multiples of a threshold (severity factors, attribution ratio).
MAX_FACTOR = 1000
#: Counts of requests or samples.
MAX_COUNT = 1_000_000_000
MAX_CONFIRM_INTERVALS = 1000
MAX_ROLLBACKS_PER_HOUR = 1000


@dataclass(frozen=True, slots=True)
class Knob:
    """How one tunable may be configured: exclusive (``gt``, ``lt``) and inclusive (``ge``, ``le``)
    bounds, what it means, and whether a target may override the value of ``defaults``."""

    description: str
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    per_target: bool = True


_KNOB = "rollbackd.knob"


def knob(
    default: _T,
    description: str,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    per_target: bool = True,
) -> _T:
    """A dataclass field holding a tunable: its ``default`` and its :class:`Knob`."""
    declared = Knob(description, gt=gt, ge=ge, lt=lt, le=le, per_target=per_target)
    return field(default=default, metadata={_KNOB: declared})


def knobs(cls: type[Any]) -> tuple[tuple[dataclasses.Field[Any], Knob], ...]:
    """The tunables declared on the parameter dataclass ``cls``, in declaration order."""
    return tuple((item, item.metadata[_KNOB]) for item in dataclasses.fields(cls) if _KNOB in item.metadata)
