"""One writer per SQLite store: an exclusive lock on a file beside the database.

SQLite happily serves two processes, so two daemons pointed at one file would both judge, both
act and both publish. :class:`SQLiteLock` takes ``flock(LOCK_EX | LOCK_NB)`` on
``<database>.lock`` and holds it for as long as the daemon runs; the kernel drops it when the
process ends, however it ends, so a crash never leaves a stale lock. A second daemon gets
:class:`StoreInUseError` at once, naming the file and the process that holds it. Readers
(``rollbackd history``) take no lock.

The lock file, not the database, is locked: SQLite's own locks are POSIX record locks on the
database, which on some file systems (NFS) share one lock space with ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Self

from rollbackd.store.base import PermanentStoreError

__all__ = ["SQLiteLock", "StoreInUseError", "lock_path"]


class StoreInUseError(PermanentStoreError):
    """Another rollbackd already writes this store: two would both act."""


def lock_path(database: Path) -> Path:
    """The lock file of the SQLite ``database``: beside it, its name plus ``.lock``."""
    return database.with_name(database.name + ".lock")


class SQLiteLock:
    """The exclusive lock on the SQLite store ``database``, held between :meth:`acquire` and
    :meth:`release` (or inside ``with``)."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = lock_path(database)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise :class:`StoreInUseError` (another process holds it) or
        :class:`~rollbackd.store.base.PermanentStoreError` (the lock file cannot be created)."""
        if self._fd is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise PermanentStoreError(
                f"cannot create the lock file {self.path} of the store {self.database}: "
                f"{exc.strerror or exc}; set store.data_dir (or store.url) to a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StoreInUseError(
                f"the store {self.database} is in use by another rollbackd ({holder}): two daemons "
                "on one SQLite file would both act and publish every event twice. Stop the other "
                "one, or give this one its own store.data_dir (or store.url); for several replicas "
                "use PostgreSQL (store.url: postgresql://...) or leader election with a volume each"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise PermanentStoreError(
                f"cannot lock {self.path} (the store {self.database}): {exc.strerror or exc}; the file "
                "system must support flock"
            ) from None
        with contextlib.suppress(OSError):  # who holds it: for the next one's message only
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go of the lock (closing the file drops it). Releasing twice does nothing."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    """What the holder wrote into the lock file (``pid N on HOST``), or a neutral phrase."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text if text.startswith("pid ") and text.isprintable() else "a process that holds its lock"
