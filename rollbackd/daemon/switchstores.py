"""Where the operators' switches are kept for every replica, and which place a daemon uses.

The switch board (:mod:`rollbackd.daemon.switches`) writes and reads its switches through a
:class:`SwitchStore`: one JSON document per key, written only once stored, read back in one batch.
There are two:

- :class:`StoreSwitches`: the store's ``target_state`` rows. Shared by every replica with
  PostgreSQL; with SQLite each replica has its own file, so a switch sent to a standby would never
  reach the leader.
- :class:`~rollbackd.daemon.switchmap.ConfigMapSwitches`: one ConfigMap in the Lease's namespace,
  which every replica watches (:class:`Watching`).

:func:`switches_place` decides from ``safety.switches``: ``store``, ``kubernetes``, or ``auto`` --
the store when it is PostgreSQL; else the ConfigMap when leader election runs (several replicas,
each with its own SQLite file, and Kubernetes access since the Lease needs it); else the store
(one process: its SQLite file is where its switches survive a restart, and no ConfigMap rights
are needed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

from rollbackd.config.settings import Settings
from rollbackd.config.storeurl import store_kind
from rollbackd.store.base import Store, StoreError

#: Where the switches are kept: the store's rows, or the ConfigMap.
Place = Literal["store", "kubernetes"]


class SwitchStoreError(Exception):
    """The switches could not be written or read now; the message says where and why."""


class SwitchStore(Protocol):
    """Where the switch board keeps its switches."""

    #: Where they are, for logs, the API and the status page (``the shared PostgreSQL store``).
    where: str

    async def put(self, key: str, value: Mapping[str, Any] | None) -> None:
        """Store ``value`` under ``key`` (``None``: remove it); return once stored, so that every
        replica reading afterwards sees it. :class:`SwitchStoreError` when it could not be."""
        ...

    async def get(self, keys: Sequence[str]) -> dict[str, Mapping[str, Any] | None]:
        """The stored value of each of ``keys`` (``None``: absent). :class:`SwitchStoreError`
        when they could not be read."""
        ...


@runtime_checkable
class Watching(Protocol):
    """A switch store that tells when its switches change (the board reads them at once then)."""

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` whenever the stored switches may have changed, until cancelled."""
        ...


class StoreSwitches:
    """The switches as rows of the store's ``target_state`` (``switch:freeze``, ...)."""

    def __init__(self, store: Store, *, where: str = "the store") -> None:
        self._store = store
        self.where = where

    async def put(self, key: str, value: Mapping[str, Any] | None) -> None:
        try:
            await self._store.put_state(key, value)
        except StoreError as exc:
            raise SwitchStoreError(str(exc)) from exc

    async def get(self, keys: Sequence[str]) -> dict[str, Mapping[str, Any] | None]:
        try:
            return {key: await self._store.get_state(key) for key in keys}
        except StoreError as exc:
            raise SwitchStoreError(str(exc)) from exc


def store_where(settings: Settings) -> str:
    """How the store's switches are described: shared by the replicas or not."""
    if store_kind(settings.store.url) == "postgresql":
        return "the shared PostgreSQL store"
    return "the SQLite store"


def switches_place(settings: Settings, *, kubernetes: bool) -> Place:
    """Where ``settings`` keep the switches, given whether Kubernetes is reachable
    (``kubernetes``); ``safety.switches: kubernetes`` without it is the caller's configuration
    error to report."""
    wanted = settings.safety.switches
    if wanted != "auto":
        return wanted
    if store_kind(settings.store.url) == "postgresql":
        return "store"
    return "kubernetes" if kubernetes and settings.leader_election.enabled else "store"

