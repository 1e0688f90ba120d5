"""Exponential backoff with jitter, as one small reusable value."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays between retries: ``initial_s * factor ** attempt``, capped at ``max_s``, then jittered.

    ``jitter`` is the fraction of the capped delay that is randomised: ``0`` gives exact delays,
    ``0.5`` (default) a delay uniformly drawn in ``[0.5 * d, d]`` (proportional jitter), ``1`` a
    delay in ``[0, d]`` (full jitter). Jitter spreads the retries of many clients that failed at the
    same moment, so they do not hit a recovering server all at once.

    Derive variants with :func:`dataclasses.replace`.
    """

    initial_s: float
    max_s: float
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.initial_s > 0 and math.isfinite(self.initial_s)):
            raise ValueError(f"initial_s must be a positive number, not {self.initial_s!r}")
        if not (self.max_s >= self.initial_s and math.isfinite(self.max_s)):
            raise ValueError(f"max_s must be finite and at least initial_s, not {self.max_s!r}")
        if not (self.factor >= 1 and math.isfinite(self.factor)):
            raise ValueError(f"factor must be at least 1, not {self.factor!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be within [0, 1], not {self.jitter!r}")

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter for the 0-based ``attempt``: grows by ``factor``, capped at
        ``max_s``."""
        if attempt < 0:
            raise ValueError(f"attempt must not be negative, not {attempt}")
        try:
            grown = self.initial_s * self.factor ** attempt
        except OverflowError:
            return self.max_s
        return min(self.max_s, grown)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0 for the first retry).

        ``rng`` makes the jitter reproducible in tests; the module's generator is used otherwise.
        """
        ceiling = self.ceiling(attempt)
        if self.jitter == 0:
            return ceiling
        draw = (rng or random).random()
        return ceiling * (1.0 - self.jitter * draw)
