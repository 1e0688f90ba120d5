"""Group commit: the records of concurrent callers, written in one transaction.

A commit waits for the disk (SQLite's or PostgreSQL's write-ahead log is flushed), and the
outbox takes one writer at a time (its order is commit order), so records written one after the
other cost a flush each. :class:`GroupCommit` lets the records that arrive while a transaction is
being written wait for the next one, and writes them all in it: in the order they were
submitted, each caller's part on its own (the backend puts it in a savepoint, so a bad value
fails that caller alone), every caller answered once the transaction is committed. What a caller
is told is recorded is on disk, as before; a caller alone is written alone, at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from rollbackd.store.base import StoreError


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """One :meth:`~rollbackd.store.base.Store.record` call, its values encoded for the backend:
    what its part of the transaction writes."""

    kind: str
    audit: tuple[Any, ...]
    events: tuple[tuple[Any, ...], ...]


T = TypeVar("T")
R = TypeVar("R")

#: Writes a group in one transaction; returns, in order, each item's result or the
#: :class:`StoreError` that item alone failed with. Raises when the whole group failed.
WriteGroup = Callable[[Sequence[T]], Awaitable[Sequence[R | StoreError]]]


class GroupCommit(Generic[T, R]):
    """Submit items with :meth:`submit`; they are written by ``write`` in groups of at most
    ``max_group``, one group at a time, by a task that exists while there is something to write
    (:meth:`wait_idle` waits for it to finish)."""

    def __init__(self, write: WriteGroup[T, R], *, max_group: int = 256, name: str = "store") -> None:
        if max_group < 1:
            raise ValueError(f"max_group must be at least 1, not {max_group}")
        self._write = write
        self._max_group = max_group
        self._name = name
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """Write ``item`` with whatever else is waiting; its result once committed. A caller that
        is cancelled meanwhile may still have its item written (as with any write under way)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._writer is None:
            self._writer = asyncio.create_task(self._write_all(), name=f"rollbackd:{self._name}:group-commit")
        return await future

    async def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until everything submitted so far is written (or has failed); with ``timeout_s``,
        at most that long, then give up on what is left (its callers get a cancellation: a write
        under way may still have been committed). Whether everything was written."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout_s is None else loop.time() + timeout_s
        while (writer := self._writer) is not None:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            done, _ = await asyncio.wait((writer,), timeout=left)
            if not done:
                writer.cancel()
                await asyncio.wait((writer,))
                return False
        return True

    async def _write_all(self) -> None:
        group: list[tuple[T, asyncio.Future[R]]] = []
        try:
            while self._waiting:
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
                try:
                    outcomes = await self._write([item for item, _ in group])
                except Exception as exc:
                    for _, future in group:
                        if not future.done():
                            future.set_exception(_own_copy(exc))
                    continue
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if future.done():  # its caller gave up waiting
                        continue
                    if isinstance(outcome, StoreError):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        except asyncio.CancelledError:
            for _, future in (*group, *self._waiting):
                future.cancel()
            self._waiting.clear()
            raise
        finally:
            self._writer = None


def _own_copy(exc: Exception) -> Exception:
    """The failure of a whole group, once per caller: a store error of the same class and message
    (each caller's traceback its own), caused by the original; anything else as it is."""
    if not isinstance(exc, StoreError):
        return exc
    try:
        copy = type(exc)(*exc.args)
    except Exception:
        return exc
    copy.__cause__ = exc.__cause__ if exc.__cause__ is not None else exc
    return copy


def recording(kinds: Sequence[str]) -> str:
    """What writing a group of audit entries of ``kinds`` is, for error messages."""
    return f"record the {kinds[0]!r} entry" if len(kinds) == 1 else f"record {len(kinds)} entries"
