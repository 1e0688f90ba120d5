"""Stopping the tasks one started: cancel them, wait a bounded time, say which did not stop.

Whoever starts a task stops it, with :func:`stop_tasks`. The hand-written alternative,
``task.cancel()`` then ``await task`` under ``suppress(CancelledError)``, cannot tell the task's
cancellation from the caller's own, so a caller cancelled while it waits carries on as if nothing
happened. :func:`stop_tasks` never catches a cancellation: the caller's propagates (the tasks were
already asked to stop), and the tasks' own end in the results.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

logger = logging.getLogger(__name__)

#: Default bound on how long :func:`stop_tasks` waits for the tasks to end, in seconds.
STOP_TIMEOUT_S = 10.0


async def stop_tasks(
    tasks: Iterable[asyncio.Task[Any] | None],
    *,
    timeout_s: float | None = STOP_TIMEOUT_S,
    failures: Literal["raise", "drop", "leave"] = "raise",
) -> frozenset[asyncio.Task[Any]]:
    """Cancel ``tasks`` (``None`` and finished ones are skipped), wait up to ``timeout_s`` (``None``:
    without a bound) for them to end, and log by name, as an error, every one that did not.
    Returns those still running.

    A task that ended with an exception other than a cancellation: with ``failures="raise"`` (the
    default) it is raised here, as awaiting the task would (the first such, in the order given; the
    others are retrieved); with ``"drop"`` it is retrieved and dropped (the caller does not need the
    outcome); with ``"leave"`` it is left to whoever else awaits the tasks (a
    :class:`asyncio.TaskGroup` does).

    If the caller is cancelled while it waits, its :class:`asyncio.CancelledError` propagates."""
    given = [task for task in dict.fromkeys(tasks) if task is not None]
    running = [task for task in given if not task.done()]
    for task in running:
        task.cancel()
    pending: set[asyncio.Task[Any]] = set()
    if running:
        _, pending = await asyncio.wait(running, timeout=timeout_s)
    for task in running:
        if task in pending:
            logger.error(
                "task did not stop within the shutdown timeout",
                extra={"task": task.get_name(), "timeout_s": timeout_s},
            )
    if failures != "leave":
        errors = [
            error
            for task in given
            if task not in pending and not task.cancelled() and (error := task.exception()) is not None
        ]
        if errors and failures == "raise":
            raise errors[0]
    return frozenset(pending)


async def poll_forever(
    poll: Callable[[], Awaitable[object]],
    *,
    every_s: Callable[[], float],
    what: str,
    wake: asyncio.Event | None = None,
) -> None:
    """Run ``poll()`` every ``every_s()`` seconds (the first time at once) until cancelled. An
    exception of one poll (a defect) is logged with ``what`` was read, and the next poll comes as
    scheduled: a root task that polls must not end the daemon. Setting ``wake`` (e.g. from a watch
    that saw a change) runs the next poll at once."""
    while True:
        if wake is not None:
            wake.clear()
        try:
            await poll()
        except Exception:
            logger.exception("reading %s failed; trying again in %gs", what, every_s())
        if wake is None:
            await asyncio.sleep(every_s())
            continue
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every_s()):
                await wake.wait()
