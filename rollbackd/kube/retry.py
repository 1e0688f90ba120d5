"""Retrying Kubernetes operations: backoff on temporary failures, re-read on conflicts.

:func:`retrying` runs an operation (a coroutine function without arguments) until it succeeds or
its attempts are spent:

- :class:`~rollbackd.kube.errors.KubeTemporary` (5xx, 429, timeouts, connection errors): wait a
  jittered backoff delay (at least the server's ``Retry-After``, at most ``backoff.max_s``) and run
  the operation again;
- :class:`~rollbackd.kube.errors.KubeConflict` (409): run the operation again at once (after the
  first conflict) or after a backoff delay (after later ones) -- the operation must read the object
  itself, so each attempt applies its change to the latest version;
- anything else, :class:`~rollbackd.kube.errors.KubePermanent` included, is raised at once.

Time is the event loop's (``asyncio.sleep``), so tests can fast-forward it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

from rollbackd.backoff import Backoff
from rollbackd.kube.errors import KubeConflict, KubeError, KubeTemporary

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A sensible default between API attempts: 0.2 s, 0.4 s, 0.8 s, ... up to 5 s, jittered.
DEFAULT_BACKOFF = Backoff(initial_s=0.2, max_s=5.0)

#: Called before every retry with the error, the number of the attempt that failed (1-based) and
#: the delay before the next one; for logs and metrics.
RetryHook = Callable[[KubeError, int, float], None]


async def retrying(
    op: Callable[[], Awaitable[T]],
    *,
    backoff: Backoff = DEFAULT_BACKOFF,
    attempts: int = 5,
    on_conflict: Literal["retry", "raise"] = "retry",
    on_retry: RetryHook | None = None,
    rng: random.Random | None = None,
) -> T:
    """Run ``op()`` and return its result, retrying as the module describes.

    - ``backoff``: the delays between attempts;
    - ``attempts``: how many times ``op`` runs at most, the first included; when they are spent
      the last error is raised;
    - ``on_conflict``: ``"retry"`` (default) runs ``op`` again on a conflict, ``"raise"`` raises it
      at once (for operations that must not be re-applied blindly);
    - ``on_retry``: see :data:`RetryHook`;
    - ``rng``: makes the jitter reproducible in tests.

    Cancellation is never swallowed: a cancelled wait or operation propagates at once.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    conflicts = 0
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except KubeTemporary as exc:
            if attempt >= attempts:
                raise
            delay = backoff.delay(attempt - 1, rng)
            if exc.retry_after_s is not None:
                delay = min(max(delay, exc.retry_after_s), backoff.max_s)
            error: KubeError = exc
        except KubeConflict as exc:
            if on_conflict == "raise" or attempt >= attempts:
                raise
            # The first conflict is usually someone else's write that just landed: re-read now.
            # Repeated ones mean a fight with another writer: back off so it can settle.
            delay = 0.0 if conflicts == 0 else backoff.delay(conflicts - 1, rng)
            conflicts += 1
            error = exc
        logger.warning("%s; attempt %d/%d failed, retrying in %.2fs", error, attempt, attempts, delay)
        if on_retry is not None:
            on_retry(error, attempt, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover
