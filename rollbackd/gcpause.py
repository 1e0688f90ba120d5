"""Pausing the cyclic garbage collector around bursts of allocation that create no cycles."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block (nothing when it is disabled): for
    bursts that allocate many containers and no cycles (reading a batched answer, judging every
    target); the daemon collects between ticks instead. The block must not await. Why: the tick
    times at a thousand targets in ``bench/results/scale.md``."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
