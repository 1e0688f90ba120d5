"""Leader election on a PostgreSQL advisory lock: of several daemons sharing one store without
Kubernetes leader election, exactly one acts.

Every daemon whose store is PostgreSQL (and that runs no Lease election, :mod:`.leader`) runs a
:class:`StoreLeader`. It keeps one dedicated connection for the process' life and tries
``pg_try_advisory_lock`` on a key derived from the store (database and schema), so daemons on
different schemas never compete. The daemon holding it leads; the others are warm standbys, like
standbys of the Lease election: they judge and decide, and act on nothing, publish nothing.

The lock lives as long as its session. A connection that is lost (the database restarted, the
backend was terminated, the network cut) may have lost the lock; the holder cannot know when, so
**the holder stops acting before anyone else can start**: every ``check_period_s`` (``R``) it asks
the server whether its session still holds the lock, and counts itself the leader only until
``3 R`` after the start of the last check that said yes (a timer announces the loss at that
instant even when the check hangs). A daemon that acquires the lock waits those same ``3 R``
before it acts, so whoever held the lock before has stopped by then. A standby tries every ``R``,
so a leader that dies is replaced within ``4 R`` (8 s with the default 2 s), and a clean shutdown
hands over just as fast: the standby cannot tell a release from a loss.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from types import TracebackType
from typing import Any, Self

import psycopg

from rollbackd.aiotasks import stop_tasks
from rollbackd.config.storeurl import StoreUrl, parse_store_url

logger = logging.getLogger(__name__)

#: Default period of the holder's checks and the standbys' attempts, in seconds.
DEFAULT_CHECK_PERIOD_S = 2.0

_TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
_HOLDS_LOCK = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() "
    "AND granted AND classid = %s::bigint::oid AND objid = %s::bigint::oid AND objsubid = 1)"
)
# The store's schema: the first of the search_path that exists (the search_path itself if none does).
_WHERE = "SELECT current_database(), coalesce(current_schema(), current_setting('search_path'))"


def lock_key(database: str, schema: str) -> int:
    """The advisory lock key (a signed 64-bit integer) of the store in ``database``.``schema``."""
    digest = hashlib.sha256(f"rollbackd store leader\0{database}\0{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class StoreLeader:
    """Competes for the advisory lock of the PostgreSQL store ``dsn`` and tells whether this
    process leads.

    Keyword arguments: ``dsn`` (the store's, ``store.url``), ``identity`` (this process in log
    lines and ``application_name``), ``check_period_s`` (``R`` above), ``connect_timeout_s``.

    ``async with leader:`` starts competing in a task of its own (``rollbackd:store-leader``) and
    returns at once; leaving the block stops that task and closes the connection, which releases
    the lock. Read :attr:`is_leader`.
    """

    def __init__(
        self,
        *,
        dsn: str,
        identity: str,
        check_period_s: float = DEFAULT_CHECK_PERIOD_S,
        connect_timeout_s: float = 5.0,
    ) -> None:
        if not check_period_s > 0 or not math.isfinite(check_period_s):
            raise ValueError(f"check_period_s must be a positive number, not {check_period_s!r}")
        self.url: StoreUrl = parse_store_url(dsn)
        self.dsn = dsn
        self.identity = identity
        self.check_period_s = check_period_s
        self.connect_timeout_s = connect_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._holding = False
        #: Loop time from which (after acquiring) and until which (after each check) it may act.
        self._act_from = math.inf
        self._valid_until = -math.inf
        self._deadline: asyncio.TimerHandle | None = None
        self._announcing: asyncio.TimerHandle | None = None
        self._leading = False
        self._last_error: str | None = None

    @property
    def validity_s(self) -> float:
        """How long one successful check keeps this process the leader (``3 R``)."""
        return 3 * self.check_period_s

    @property
    def description(self) -> str:
        """The lock as it may be shown: the store without its password."""
        return f"the advisory lock of {self.url.description}"

    @property
    def is_leader(self) -> bool:
        """Whether this process leads *now*: it holds the lock, has waited out the hand-over, and
        its latest check is recent enough that nobody else can have taken the lock over."""
        if not self._holding or self._loop is None:
            return False
        now = self._loop.time()
        return self._act_from <= now < self._valid_until

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("a StoreLeader can be entered only once at a time")
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="rollbackd:store-leader")
        logger.info(
            "competing for leadership on the store",
            extra={
                "lock": self.url.description,
                "identity": self.identity,
                "check_period_s": self.check_period_s,
            },
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        await stop_tasks([task])
        self._lost("shutting down")

    # --- the competition -----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    connect_timeout=max(2, math.ceil(self.connect_timeout_s)),
                    application_name=f"rollbackd leader lock {self.identity}"[:63],
                ) as conn:
                    await self._compete(conn)
            except (psycopg.Error, TimeoutError) as exc:
                self._failed(exc)
            except Exception:  # a defect here must not leave a leader that cannot step down
                self._lost("the lock's task failed")
                logger.exception("the store's lock failed; trying again", extra={"identity": self.identity})
            await asyncio.sleep(self.check_period_s)

    async def _compete(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """On one connection: try for the lock every period; once held, check it every period.
        Returns (or raises) when the connection fails."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.check_period_s):
            row = await (await conn.execute(_WHERE)).fetchone()
        assert row is not None
        key = lock_key(str(row[0]), str(row[1]))
        high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
        while True:
            started = loop.time()
            async with asyncio.timeout(self.check_period_s):
                if self._holding:
                    row = await (await conn.execute(_HOLDS_LOCK, (high, low))).fetchone()
                else:
                    row = await (await conn.execute(_TRY_LOCK, (key,))).fetchone()
            held = bool(row and row[0])
            if held:
                self._held(started)
            elif self._holding:
                self._lost("the database no longer counts this session as the holder of the lock")
                return
            self._last_error = None
            await asyncio.sleep(max(0.0, started + self.check_period_s - loop.time()))

    def _held(self, started: float) -> None:
        """A check (or the acquisition) started at ``started`` said this session holds the lock."""
        assert self._loop is not None
        if not self._holding:
            self._holding = True
            self._act_from = self._loop.time() + self.validity_s
            logger.warning(
                "acquired the store's lock; acting in %gs, once any previous holder has stopped",
                self.validity_s,
                extra={"lock": self.url.description, "identity": self.identity},
            )
            self._announcing = self._loop.call_at(self._act_from, self._announce)
        self._valid_until = started + self.validity_s
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._loop.call_at(self._valid_until, self._deadline_passed)

    def _announce(self) -> None:
        if self.is_leader and not self._leading:
            self._leading = True
            logger.warning(
                "became the leader: holding the store's lock",
                extra={"lock": self.url.description, "identity": self.identity},
            )

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._holding and self._loop is not None and self._loop.time() >= self._valid_until:
            self._lost(f"no successful check of the store's lock for {self.validity_s:g}s")

    def _lost(self, why: str) -> None:
        was_leading = self._leading
        self._holding = False
        self._leading = False
        self._act_from = math.inf
        self._valid_until = -math.inf
        for handle in (self._deadline, self._announcing):
            if handle is not None:
                handle.cancel()
        self._deadline = self._announcing = None
        if was_leading:
            logger.warning(
                "stopped leading: %s", why, extra={"lock": self.url.description, "identity": self.identity}
            )

    def _failed(self, exc: BaseException) -> None:
        reason = self.url.scrub(" ".join(str(exc).split())) if isinstance(exc, psycopg.Error) else ""
        message = reason or "the database did not answer in time"
        if self._holding:
            self._lost(f"lost the connection holding the store's lock: {message}")
        if message != self._last_error:
            logger.warning(
                "cannot hold the store's lock, retrying every %gs: %s",
                self.check_period_s,
                message,
                extra={"lock": self.url.description, "identity": self.identity},
            )
        self._last_error = message
