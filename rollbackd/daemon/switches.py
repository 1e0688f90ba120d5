"""The operators' switches (freeze, dry-run, fix-forward holds, accepted releases, manual rollbacks
waiting for the leader), kept where every replica reads them.

A switch written through the API is stored first, then applied in the replica that received it,
then answered. Every replica reads the stored switches again every ``poll_s`` seconds
(:meth:`SwitchBoard.poll_forever`) and applies those that changed since it last saw them, so a
freeze sent to a standby is obeyed by the leader within one poll, and survives restarts and
fail-overs (a new leader reads it when it starts).

Where they are stored: in a :class:`~rollbackd.daemon.switchstores.SwitchStore`. Either the store
(``target_state`` rows ``switch:freeze``, ``switch:dry-run``, ``switch:hold:<namespace>/<name>``,
``switch:accept:…``, ``switch:rollback:…``): with a shared PostgreSQL store, that is what every
replica reads; with SQLite (one process), it is what survives a restart. Or a ConfigMap every
replica watches (:mod:`rollbackd.daemon.switchmap`), for replicas that each have their own SQLite
file: its watch calls :meth:`SwitchBoard.nudge`, and the switches are read at once. Without any
store (tests, a daemon given none) the switches live in the process only.

A switch records who set it (the API token's name), why (``reason``) and when (wall clock); a
hold's end is a wall-clock time too, so it expires at the same moment for every replica and after
a restart. Only a changed stored switch is applied: a switch a reloaded configuration file changed
(``safety.freeze``) stays as the file says until the next write through the API.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rollbackd.aiotasks import poll_forever
from rollbackd.daemon.state import Acceptance, DaemonState
from rollbackd.daemon.switchstores import SwitchStore, SwitchStoreError
from rollbackd.store.storable import storable

logger = logging.getLogger(__name__)

FREEZE = "switch:freeze"
DRY_RUN = "switch:dry-run"
_HOLD = "switch:hold:"
_ACCEPT = "switch:accept:"
_ROLLBACK = "switch:rollback:"

#: How often every replica reads the stored switches again, in seconds (the most a freeze sent
#: to another replica takes to be obeyed here).
POLL_S = 2.0

#: Longest wait for the store when a switch is written or read, in seconds (a ConfigMap write
#: retries its conflicts within it).
STORE_TIMEOUT_S = 5.0


def hold_key(target: str) -> str:
    """Where the hold of ``target`` (``namespace/name``) is stored."""
    return f"{_HOLD}{target}"


def accept_key(target: str) -> str:
    """Where the acceptance of ``target``'s release is stored."""
    return f"{_ACCEPT}{target}"


def rollback_key(target: str) -> str:
    """Where a manual rollback of ``target`` waits for the leader to start it."""
    return f"{_ROLLBACK}{target}"


@dataclass(frozen=True, slots=True)
class Switch:
    """One stored switch: ``on`` (a hold is stored only while set), who set it (``by``, the API
    token's name), why, and when (UTC); ``until`` is a hold's end (UTC)."""

    on: bool
    by: str
    reason: str
    at: datetime
    until: datetime | None = None
    #: An acceptance: the revision accepted (``None``: the one the cluster shows next).
    revision: int | None = None
    #: A manual rollback: the run's id, and whether it goes ahead despite a freeze.
    run_id: str | None = None
    force: bool = False

    def to_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "on": self.on, "by": self.by, "reason": self.reason, "at": self.at.isoformat()
        }
        if self.until is not None:
            state["until"] = self.until.isoformat()
        if self.revision is not None:
            state["revision"] = self.revision
        if self.run_id is not None:
            state["run_id"] = self.run_id
        if self.force:
            state["force"] = True
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Switch:
        """The switch a stored document describes; :class:`ValueError` when it is not one."""
        try:
            on, by, reason, at = state["on"], state["by"], state["reason"], state["at"]
            until = state.get("until")
            revision, run_id, force = state.get("revision"), state.get("run_id"), state.get("force", False)
            if not isinstance(on, bool) or not isinstance(by, str) or not isinstance(reason, str):
                raise ValueError("on, by and reason must be a boolean and two texts")
            if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int)):
                raise ValueError("revision must be a whole number")
            if (run_id is not None and not isinstance(run_id, str)) or not isinstance(force, bool):
                raise ValueError("run_id must be a text and force a boolean")
            return cls(
                on=on,
                by=by,
                reason=reason,
                at=_utc(datetime.fromisoformat(str(at))),
                until=None if until is None else _utc(datetime.fromisoformat(str(until))),
                revision=revision,
                run_id=run_id,
                force=force,
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a stored switch: {exc}") from None

    def view(self) -> dict[str, Any]:
        """What the API and the status page show of it."""
        shown: dict[str, Any] = {"by": self.by, "reason": self.reason, "at": self.at.isoformat()}
        if self.until is not None:
            shown["until"] = self.until.isoformat()
        if self.revision is not None:
            shown["revision"] = self.revision
        return shown


def _on(switch: Switch) -> str:
    return "on" if switch.on else "off"


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"a stored time without a timezone: {value.isoformat()}")
    return value.astimezone(UTC)


class SwitchWriteError(Exception):
    """A manual rollback could not be stored (so it was not started); the message says why."""


class SwitchBoard:
    """The switches of ``state``, written to and read from ``store()`` (``None``: not open, or
    no store at all, see :attr:`durable`); ``where`` says where that is (the API and the status
    page show it).

    ``loop_clock`` and ``wall_clock`` are the event loop's clock (holds' time base in
    :class:`~rollbackd.daemon.state.DaemonState`) and the wall clock (stored times).
    """

    def __init__(
        self,
        state: DaemonState,
        *,
        store: Callable[[], SwitchStore | None],
        durable: bool,
        where: str = "the store",
        loop_clock: Callable[[], float],
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_s: float = POLL_S,
    ) -> None:
        #: Called with each manual rollback waiting in the store, at every read (the daemon
        #: starts it when it leads, and then clears the request; see :meth:`clear_rollback`).
        self.on_rollback_request: Callable[[str, Switch], Awaitable[None]] | None = None
        self._state = state
        self._store = store
        #: Whether switches must be stored before they are applied (a store is configured).
        self.durable = durable
        self._loop_clock = loop_clock
        self._wall_clock = wall_clock
        self.poll_s = poll_s
        #: Where the switches are kept (``the ConfigMap rollbackd/rollbackd-switches``).
        self.where = where if durable else "this process only"
        #: Set when the stored switches may have changed (a watch saw it): read them at once.
        self._nudged = asyncio.Event()
        #: The stored value of each key as last applied here (absent: never read).
        self._seen: dict[str, Switch | None] = {}
        #: Who set each switch now in force, and why (for the API and the status page).
        self.current: dict[str, Switch] = {}
        self._synced = False
        #: Switches applied here that the store did not take yet (written at the next read).
        self._unsaved: dict[str, Switch | None] = {}

    @property
    def ready(self) -> bool:
        """Whether this replica may act on its switches: they were read from the store at least
        once (always, without a store)."""
        return self._synced or not self.durable

    @classmethod
    def local(cls, state: DaemonState, *, loop_clock: Callable[[], float]) -> SwitchBoard:
        """Switches kept in this process only (no store)."""
        return cls(state, store=lambda: None, durable=False, loop_clock=loop_clock)

    # --- writes --------------------------------------------------------------------------------

    async def set_freeze(self, on: bool, *, by: str, reason: str) -> bool:
        """Set the global freeze; whether it is stored (see :meth:`_write`)."""
        return await self._write(FREEZE, Switch(on=on, by=by, reason=reason, at=self._wall_clock()))

    async def set_dry_run(self, on: bool, *, by: str, reason: str) -> bool:
        return await self._write(DRY_RUN, Switch(on=on, by=by, reason=reason, at=self._wall_clock()))

    async def set_hold(self, target: str, *, for_s: float, by: str, reason: str) -> bool:
        now = self._wall_clock()
        switch = Switch(on=True, by=by, reason=reason, at=now,
                        until=datetime.fromtimestamp(now.timestamp() + for_s, UTC))
        return await self._write(hold_key(target), switch)

    async def clear_hold(self, target: str) -> bool:
        return await self._write(hold_key(target), None)

    async def accept(self, target: str, *, revision: int | None, by: str, reason: str) -> bool:
        switch = Switch(on=True, by=by, reason=reason, at=self._wall_clock(), revision=revision)
        return await self._write(accept_key(target), switch)

    async def withdraw_acceptance(self, target: str) -> bool:
        return await self._write(accept_key(target), None)

    def rollback_request(self, target: str) -> Switch | None:
        """The manual rollback of ``target`` waiting for the leader, if any."""
        return self.current.get(rollback_key(target))

    async def request_rollback(
        self, target: str, *, run_id: str, force: bool, by: str, reason: str
    ) -> Switch:
        """Store a manual rollback for the leader to start (at its next read of the switches).
        :class:`SwitchWriteError` when it cannot be stored: it is not kept to be stored later."""
        switch = Switch(on=True, by=by, reason=reason, at=self._wall_clock(), run_id=run_id, force=force)
        key = rollback_key(target)
        problem = None if self._store() is None and not self.durable else await self._store_now(key, switch)
        if problem is not None:
            raise SwitchWriteError(f"could not store the manual rollback ({problem}): not started; try "
                                   "again once the store answers (see /readyz)")
        self._apply(key, switch)
        return switch

    async def clear_rollback(self, target: str) -> None:
        """The manual rollback of ``target`` was started (or refused): no replica starts it again
        (stored later if the store does not answer now; its run id keeps it from starting twice)."""
        await self._write(rollback_key(target), None)

    async def _write(self, key: str, switch: Switch | None) -> bool:
        """Store ``switch`` under ``key`` and apply it here; whether it is stored. When the store
        does not answer (or is not open yet) it is applied here all the same and stored at the
        next read of the switches (:meth:`sync`): nothing acts while the store is down anyway,
        and a freeze sent during an outage must not be lost."""
        if self._store() is None and not self.durable:
            self._apply(key, switch)
            return False
        problem = await self._store_now(key, switch)
        if problem is not None:
            logger.error(
                "the switch %s could not be stored (%s): applied here, stored once the store answers",
                key,
                problem,
            )
            self._unsaved[key] = switch
        else:
            self._unsaved.pop(key, None)
        self._apply(key, switch)
        return problem is None

    async def _store_now(self, key: str, switch: Switch | None) -> str | None:
        """Write ``switch`` to the store; why it could not be (``None`` once written)."""
        store = self._store()
        if store is None:
            return "the store is not open"
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                # A reason the store cannot take as is (a NUL, a lone surrogate) is kept readable.
                await store.put(key, None if switch is None else storable(switch.to_state()))
        except (SwitchStoreError, TimeoutError) as exc:
            return str(exc) or f"no answer within {STORE_TIMEOUT_S:g}s"
        return None

    @property
    def unsaved(self) -> bool:
        """Whether switches set here still wait to be stored."""
        return bool(self._unsaved)

    # --- reads ---------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Every key a switch of the current targets may be stored under."""
        return [
            FREEZE,
            DRY_RUN,
            *(key(target) for target in self._state.targets for key in (hold_key, accept_key, rollback_key)),
        ]

    async def sync(self) -> bool:
        """Read the stored switches and apply those that changed; whether they could be read."""
        store = self._store()
        if store is None:
            return False
        for key, switch in list(self._unsaved.items()):
            if await self._store_now(key, switch) is not None:
                return False  # the store still does not answer: what was set here stays
            if self._unsaved.get(key) == switch:
                del self._unsaved[key]
        try:
            async with asyncio.timeout(STORE_TIMEOUT_S):
                stored = await store.get(self.keys())
        except (SwitchStoreError, TimeoutError) as exc:
            logger.warning("could not read the switches from %s; the ones seen last stay: %s", self.where,
                           exc or f"no answer within {STORE_TIMEOUT_S:g}s")
            return False
        found = {key: self._decoded(key, state) for key, state in stored.items()}
        for key, switch in found.items():
            if key not in self._seen or self._seen[key] != switch:
                self._apply(key, switch)
        self._synced = True
        if self.on_rollback_request is not None:
            for key, switch in found.items():
                if key.startswith(_ROLLBACK) and switch is not None:
                    await self.on_rollback_request(key.removeprefix(_ROLLBACK), switch)
        return True

    def nudge(self) -> None:
        """The stored switches may have changed (a watch saw it): read them now, not at the next
        poll."""
        self._nudged.set()

    async def poll_forever(self) -> None:
        """Read the stored switches every :attr:`poll_s` seconds (the first time at once), and
        at once when nudged (:meth:`nudge`)."""
        await poll_forever(self.sync, every_s=lambda: self.poll_s, what="the switches", wake=self._nudged)

    @staticmethod
    def _decoded(key: str, state: Mapping[str, Any] | None) -> Switch | None:
        if state is None:
            return None
        try:
            return Switch.from_state(state)
        except ValueError as exc:
            logger.error("the stored switch %s cannot be read, ignored: %s; set it again through the API",
                         key, exc)
            return None

    # --- applying ------------------------------------------------------------------------------

    def _apply(self, key: str, switch: Switch | None) -> None:
        self._seen[key] = switch
        if switch is None:
            self.current.pop(key, None)
        else:
            self.current[key] = switch
        flags = self._state.flags
        if key == FREEZE and switch is not None:
            if flags.freeze != switch.on:
                logger.warning("global freeze %s (by %s: %s)", _on(switch), switch.by, switch.reason)
            flags.freeze = switch.on
        elif key == DRY_RUN and switch is not None:
            if flags.dry_run != switch.on:
                logger.warning("dry-run %s (by %s: %s)", _on(switch), switch.by, switch.reason)
            flags.dry_run = switch.on
        elif key.startswith(_ACCEPT):
            target = key.removeprefix(_ACCEPT)
            if switch is None:
                self._state.accepted.pop(target, None)
            else:
                self._state.accepted[target] = Acceptance(
                    by=switch.by, reason=switch.reason, revision=switch.revision, at=switch.at
                )
        elif key.startswith(_HOLD):
            target = key.removeprefix(_HOLD)
            if switch is None or switch.until is None:
                self._state.holds.clear(target)
                return
            wall_now, loop_now = self._wall_clock(), self._loop_clock()
            until = loop_now + (switch.until - wall_now).total_seconds()
            set_at = loop_now - (wall_now - switch.at).total_seconds()
            self._state.holds.set(target, until=until, reason=switch.reason, set_at=set_at)

    def who(self, key: str) -> Switch | None:
        """The stored switch in force under ``key`` (who set it, why, when)."""
        return self.current.get(key)

    def forget(self, targets: Iterable[str]) -> None:
        """Targets no longer configured: their holds are not shown any more."""
        for target in targets:
            for key in (hold_key(target), accept_key(target), rollback_key(target)):
                self.current.pop(key, None)
                self._seen.pop(key, None)
