"""The errors rollbackd raises on purpose, classified by what a retry can do about them.

- :class:`TemporaryError`: the same call may succeed later (network trouble, timeouts, overload).
  Callers retry with backoff, then treat the data as missing.
- :class:`PermanentError`: retrying will not help until something changes (a bad query, a wrong
  URL, a refused permission). Callers report it and stop retrying.

Source errors carry a short ``kind`` (``timeout``, ``connection``, ``unavailable``, ...) that the
daemon exports as the ``kind`` label of ``source_errors_total``; :class:`SourceStats` counts them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Required, TypedDict, Unpack


class RollbackdError(Exception):
    """Base of every error rollbackd raises on purpose."""


class TemporaryError(RollbackdError):
    """Retrying later may succeed."""


class PermanentError(RollbackdError):
    """Retrying will not help until something changes (configuration, query, permissions)."""


class Failure(TypedDict, total=False):
    """The keyword arguments every :class:`SourceError` takes besides its ``source`` (see there);
    declared once for the errors of one source, which name it themselves."""

    kind: Required[str]
    status: int | None
    error_type: str | None
    retry_after_s: float | None


class SourceError(RollbackdError):
    """A metrics or health source could not deliver.

    ``source`` names the source (``prometheus``, ``health``); ``kind`` is the short, bounded
    classification used as a metric label; ``status`` is the HTTP status when there was a response;
    ``error_type`` is the server's own classification (Prometheus' ``errorType``) when it gave one;
    ``retry_after_s`` the server's ``Retry-After`` when it sent one.
    """

    def __init__(self, message: str, *, source: str, **failure: Unpack[Failure]) -> None:
        super().__init__(message)
        self.source = source
        self.kind = failure["kind"]
        self.status = failure.get("status")
        self.error_type = failure.get("error_type")
        self.retry_after_s = failure.get("retry_after_s")


class TemporarySourceError(SourceError, TemporaryError):
    """The source is down, slow or overloaded: retry with backoff, then treat as missing data."""


class PermanentSourceError(SourceError, PermanentError):
    """The source refused the request itself (bad query, bad URL, unexpected answer): do not retry."""


class PrometheusUnavailableError(TemporarySourceError):
    """Prometheus could not answer now: connection refused, timeout, 5xx, 429, or an ``errorType``
    of ``timeout`` / ``canceled`` / ``unavailable`` / ``internal``."""

    def __init__(self, message: str, **failure: Unpack[Failure]) -> None:
        super().__init__(message, source="prometheus", **failure)


class PrometheusQueryError(PermanentSourceError):
    """Prometheus rejected the query (``bad_data``, ``execution``, other 4xx) or answered with
    something that is not a Prometheus API response."""

    def __init__(self, message: str, **failure: Unpack[Failure]) -> None:
        super().__init__(message, source="prometheus", **failure)


@dataclass(slots=True)
class SourceStats:
    """Counters of one source's activity, read by the daemon's ``/metrics``.

    ``requests`` counts every attempt sent (retries included), ``retries`` the attempts that were
    retries, ``errors`` every failed attempt by ``kind``, ``failures`` the calls that gave up.
    ``on_error(source, kind)`` is called for every failed attempt, so a metrics registry can be
    fed directly instead of polling these counters.
    """

    source: str
    on_error: Callable[[str, str], None] | None = None
    requests: int = 0
    retries: int = 0
    failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def record_error(self, kind: str) -> None:
        self.errors[kind] += 1
        if self.on_error is not None:
            self.on_error(self.source, kind)

    @property
    def errors_total(self) -> int:
        return sum(self.errors.values())
