"""Opening the store, and the events machinery on top of it, for as long as the daemon runs.

A database that is down at start is not fatal: the daemon serves ``/healthz``, says on
``/readyz`` why it is not ready, keeps judging (decisions are logged and shown), and acts on
nothing until the store opens; the keeper retries every few seconds. Once open, the journal
records every audit entry and event, and the dispatcher delivers the outbox.

The open store stays watched: a ping every ``store.health_interval_s`` (bounded by as long), and
every write of the publisher. While either fails, the journal says why (``/readyz`` answers 503
with the reason, and no rollback starts); entries wait in the publisher's queue, are spilled to
the spool file on a stop, and are recorded once the store answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from rollbackd import __version__
from rollbackd.aiotasks import stop_tasks
from rollbackd.config.settings import Settings
from rollbackd.daemon.journal import Journal
from rollbackd.events.service import Events, open_events
from rollbackd.kube import KubeClient
from rollbackd.store import open_store
from rollbackd.store.base import Store, StoreError, answers

logger = logging.getLogger(__name__)

#: Pause between attempts to open a store that is down.
RETRY_S = 5.0


async def keep_store(
    settings: Settings,
    *,
    journal: Journal,
    environ: Mapping[str, str],
    kube: KubeClient | None,
    stopping: asyncio.Event,
    retry_s: float = RETRY_S,
    active: Callable[[], bool] | None = None,
) -> None:
    """Open the store (retrying while it is down), attach events to ``journal``, and keep them
    until ``stopping`` is set; then record the stop and let the sinks drain. ``active`` says
    whether this process may deliver the outbox now (the leader; always without an election)."""
    store = open_store(settings.store.url, data_dir=Path(settings.store.data_dir))
    while True:
        try:
            await store.open()
            break
        except StoreError as exc:
            journal.problem = f"store unavailable: {exc}"
            logger.error("store unavailable, retrying in %gs: %s", retry_s, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), retry_s)
            if stopping.is_set():
                return
    try:
        async with open_events(
            settings,
            store=store,
            environ=environ,
            kube=kube,
            active=active,
            on_health=lambda problem: journal.store_health("write", problem),
            on_poison=journal.poisoned,
        ) as events:
            journal.attach(events, store)
            journal.audit(
                "daemon.start",
                f"rollbackd {__version__} started watching {len(settings.targets)} targets",
                details={"targets": [target.key for target in settings.targets]},
            )
            watch = asyncio.create_task(
                _watch_health(
                    store, journal=journal, events=events, interval_s=settings.store.health_interval_s
                ),
                name="rollbackd:store-health",
            )
            try:
                await stopping.wait()
            finally:
                await stop_tasks([watch])
                journal.audit("daemon.stop", "rollbackd stopping")
                journal.detach("rollbackd is stopping")
    finally:
        await store.close()


async def _watch_health(store: Store, *, journal: Journal, events: Events, interval_s: float) -> None:
    """Ping ``store`` every ``interval_s`` (each ping bounded by as long) and tell ``journal``; when
    it answers again, the publisher retries at once."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        if await answers(store, timeout_s=interval_s):
            journal.store_health("ping", None)
            events.publisher.retry_now()
        else:
            problem = f"the store does not answer (no ping answer within {interval_s:g}s)"
            journal.store_health("ping", problem)
            events.publisher.store_down(problem)
        await asyncio.sleep(max(0.0, started + interval_s - loop.time()))
