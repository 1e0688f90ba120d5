"""Releases announced from outside, taken by every replica.

``POST /api/v1/releases`` (``rollbackd release start``), and any component of the daemon that sees
a change (the configuration watcher), call :meth:`ReleaseBook.announce`: the release is stored
with its audit record and ``release.started`` event in one transaction (the same id twice is one
release: the second call gets the first back), then the target is judged from the release's start
against its own history before it. Every replica reads the releases stored since its last read
every ``poll_s`` seconds (:meth:`ReleaseBook.poll_forever`), so the leader judges a release a
standby received within one poll, and a restarted or new leader takes the recent ones when it
starts. Without a store the releases live in this process only.

Replicas that do not share a store (each with its own SQLite file) share the releases through
``shared`` (:class:`SharedReleases`: the switches' ConfigMap, :mod:`rollbackd.daemon.releasemap`):
an announcement is kept there first (it is the judge of "announced twice"), then recorded in this
replica's store; every replica reads it at the next poll (or at once, :meth:`ReleaseBook.nudge`,
when the ConfigMap's watch sees the change) and records in its own store the releases it did not
record yet, so the leader's history and ``release.started`` event have them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from rollbackd.aiotasks import poll_forever
from rollbackd.daemon.journal import Journal
from rollbackd.daemon.state import DaemonState
from rollbackd.releases import Release
from rollbackd.store.base import StoreError, TemporaryStoreError

logger = logging.getLogger(__name__)

#: How often every replica reads the releases stored by the others, in seconds.
POLL_S = 2.0
#: Longest wait for the store when a release is stored or read, in seconds.
STORE_TIMEOUT_S = 5.0
#: Longest wait for the shared place (the ConfigMap: its conflicts are read again and retried).
SHARED_TIMEOUT_S = 10.0
#: Each read goes back this far before the previous one (clocks of replicas differ a little, and a
#: transaction may commit after a later-stamped one), in seconds.
OVERLAP_S = 30.0
#: The most releases one read takes.
READ_LIMIT = 1000


class SharedReleases(Protocol):
    """Where replicas that do not share a store keep the announced releases for each other."""

    #: Where, for logs (``the ConfigMap rollbackd/rollbackd-switches``).
    where: str

    async def add(self, release: Release) -> tuple[Release, bool]:
        """Keep ``release`` unless its id is kept already (that one is returned); whether this call
        kept it. :class:`StoreError` when it could not be kept."""
        ...

    async def read(self) -> list[Release]:
        """The releases kept, oldest first. :class:`StoreError` when they could not be read."""
        ...


class UnknownTargetError(LookupError):
    """A release was announced for a target this daemon does not watch; the message names it."""


class ReleaseBook:
    """The releases of ``state``'s targets, stored through ``journal`` and read back by every
    replica. ``wall_clock`` is the clock the releases' times are on; the event loop's clock is
    read for the targets' judges."""

    def __init__(
        self,
        state: DaemonState,
        *,
        journal: Journal,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_s: float = POLL_S,
        lookback_s: float = 3600.0,
        shared: SharedReleases | None = None,
    ) -> None:
        self._state = state
        self._journal = journal
        self._shared = shared
        #: The ids of the releases recorded in this replica's store (the shared ones are recorded
        #: when read, and again at later reads until the store takes them).
        self._recorded: set[str] = set()
        self._nudged = asyncio.Event()
        self._wall_clock = wall_clock
        self.poll_s = poll_s
        #: How far back the first read goes (a restarted or new leader takes the releases started
        #: since then): the longest detection plus baseline window of the targets.
        self.lookback_s = lookback_s
        #: Releases seen here, by id (the ones taken without a store, too: idempotent by id).
        self._seen: dict[str, Release] = {}
        self._read_until: datetime | None = None

    @property
    def shared_in(self) -> str | None:
        """Where the releases are shared with replicas that do not share the store (``None``:
        the store is where, or there is one process)."""
        return None if self._shared is None else self._shared.where

    def latest(self, target: str) -> Release | None:
        """The latest release of ``target`` the judge took."""
        state = self._state.targets.get(target)
        return None if state is None else state.release

    async def announce(self, release: Release) -> tuple[Release, bool]:
        """Store ``release`` (unless its id is known: then the known one is returned) and judge
        its target from its start on. Returns the release and whether it is new.

        :raises UnknownTargetError: the target is not watched (nothing is stored).
        :raises StoreError: a store is configured and cannot take it now (nothing is judged)."""
        if release.target not in self._state.targets:
            known = ", ".join(sorted(self._state.targets)) or "none"
            raise UnknownTargetError(
                f"no target {release.target} is watched here (the targets: {known}); announce the "
                "release for one of them, or add the target to the configuration"
            )
        earlier = self._seen.get(release.id)
        if earlier is not None and self._journal.store is None and self._shared is None:
            return earlier, False
        if self._shared is None:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                stored, created = await self._journal.release_started(release)
            self._recorded.add(stored.id)
        else:
            async with asyncio.timeout(SHARED_TIMEOUT_S):
                stored, created = await self._shared.add(release)
            await self._record(stored, quiet=False)
        self._take(stored)
        if created:
            logger.warning(
                "release started: %s", stored.description or stored.kind,
                extra={"target": stored.target, "release": stored.id, "kind": stored.kind, "by": stored.who},
            )
        return stored, created

    async def recent(self, *, target: str | None, since: datetime | None, limit: int) -> list[Release]:
        """The latest ``limit`` releases (of ``target``, started at ``since`` or later), oldest
        first: the stored ones, or without a store those taken by this process.
        :class:`StoreError` when the store cannot be read."""
        if self._journal.required:
            found = await self._journal.releases(target=target, since=since, limit=limit)
            if found is None:
                raise TemporaryStoreError(self._journal.problem or "the store is not open")
            return found
        mine = [
            r for r in self._seen.values()
            if (target is None or r.target == target) and (since is None or r.started_at >= since)
        ]
        return sorted(mine, key=lambda r: (r.started_at, r.id))[-limit:] if limit else []

    async def sync(self) -> bool:
        """Take the releases other replicas stored (or shared) since the last read; whether they
        were read."""
        if self._shared is not None:
            try:
                async with asyncio.timeout(SHARED_TIMEOUT_S):
                    shared = await self._shared.read()
            except (StoreError, TimeoutError) as exc:
                waited = f"no answer within {SHARED_TIMEOUT_S:g}s"
                logger.warning("could not read the releases from %s; trying again in %gs: %s",
                               self._shared.where, self.poll_s, exc or waited)
                return False
            oldest = self._wall_clock() - timedelta(seconds=self.lookback_s)
            # As the store's first read: the recent ones are judged (and told, by the leader); older
            # ones were told when they were news.
            for release in (r for r in shared if r.started_at >= oldest):
                await self._record(release, quiet=True)
                self._take(release)
        now = self._wall_clock()
        since = (
            now - timedelta(seconds=self.lookback_s)
            if self._read_until is None
            else self._read_until - timedelta(seconds=OVERLAP_S)
        )
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                found = await self._journal.releases(recorded_since=since, limit=READ_LIMIT)
        except (StoreError, TimeoutError) as exc:
            logger.warning("could not read the releases from the store; trying again in %gs: %s",
                           self.poll_s, exc or f"no answer within {STORE_TIMEOUT_S:g}s")
            return False
        if found is None:  # the store is not open (the shared releases, if any, were read)
            return self._shared is not None
        for release in found:
            self._take(release)
        self._read_until = now
        return True

    def nudge(self) -> None:
        """The shared releases may have changed (the ConfigMap's watch saw it): read them now."""
        self._nudged.set()

    async def poll_forever(self) -> None:
        """Read the stored releases every :attr:`poll_s` seconds (the first time at once), and at
        once when nudged (:meth:`nudge`)."""
        await poll_forever(self.sync, every_s=lambda: self.poll_s, what="the releases", wake=self._nudged)

    async def _record(self, release: Release, *, quiet: bool) -> None:
        """Record a shared ``release`` in this replica's store (its history, audit record and
        ``release.started`` event), once; when the store cannot take it now, at a later read."""
        if release.id in self._recorded:
            return
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                await self._journal.release_started(release)
        except (StoreError, TimeoutError) as exc:
            logger.log(logging.DEBUG if quiet else logging.WARNING,
                       "the release %s is shared in %s, not yet recorded in this replica's store: %s",
                       release.id, self._shared.where if self._shared else "-", exc or "no answer")
            return
        self._recorded.add(release.id)

    def _take(self, release: Release) -> None:
        """Judge ``release``'s target from its start on (once per release)."""
        if release.id in self._seen:
            return
        self._seen[release.id] = release
        target = self._state.targets.get(release.target)
        if target is None:
            return
        loop_now, wall_now = asyncio.get_running_loop().time(), self._wall_clock()
        target.released(release, loop_now - (wall_now - release.started_at).total_seconds())
