"""Where a feature flag is kept, as the feature-flag lever sees it: one small protocol that the
admin-API store (:mod:`rollbackd.actions.flag_http`) and the SQL store
(:mod:`rollbackd.actions.flag_sql`) implement, and the errors they raise, classified by whether a
retry may help. Messages never hold a secret (a token, a DSN's password): they are shown in the
audit log, the events and the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from rollbackd.errors import PermanentError, RollbackdError, TemporaryError

#: The values a flag store may answer for "off".
OFF_VALUES = frozenset({"false", "off", "0", "no", "disabled"})


def is_off(value: Any) -> bool:
    """Whether a flag's stored value means "off": false, 0, or a text such as "false" / "off"."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value == 0
    return isinstance(value, str) and value.strip().lower() in OFF_VALUES


class FlagStoreError(RollbackdError):
    """The flag store did not do what was asked; the message says what and what to check."""


class TemporaryFlagError(FlagStoreError, TemporaryError):
    """The store is down, slow or overloaded (connection refused, 5xx, a timeout): try again."""


class PermanentFlagError(FlagStoreError, PermanentError):
    """Retrying will not help (401, 404, an SQL error, no such flag): the action fails."""


@dataclass(frozen=True, slots=True)
class FlagFlip:
    """What turning the flag off did: its value ``before`` and ``after`` (``None``: not read),
    whether this call ``changed`` it (``False``: it was off already), and the rows the SQL
    statement changed (``None`` over HTTP)."""

    before: Any
    after: Any
    changed: bool
    rows: int | None = None


class FlagStore(Protocol):
    """One flag, in the store that keeps it."""

    #: ``http`` or ``sql``.
    kind: str
    #: Where it is, safe to show (no secret): a URL, or the SQL statement.
    where: str
    #: Whether :meth:`read` can tell the flag's value.
    readable: bool

    async def read(self) -> Any:
        """The flag's value now; :class:`FlagStoreError` when it cannot be read."""
        ...

    async def turn_off(self) -> FlagFlip:
        """Turn the flag off (doing nothing when it is off already), reading it before and after
        where the store can; :class:`FlagStoreError` when that failed (nothing half-done is
        reported as done)."""
        ...
