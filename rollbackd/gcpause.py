"""Pausing the cyclic garbage collector around bursts of allocation that create no cycles."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for the ``with`` block (nothing when it is disabled).

    Meant for bursts that allocate many containers at once: decoding a batched Prometheus answer
    (tens of thousands of them, alive until reading it ends), or judging every target in a tick.
    Meanwhile the collector would run again and again and scan objects that hold no cycles (they
    are freed by reference counting); the daemon collects between ticks instead
    (:class:`rollbackd.daemon.tick.IdleCollector`). The block must not await: other tasks would run
    with the collector paused too.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
