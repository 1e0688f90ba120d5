"""HTTP health probes of the versions being judged."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Self

import aiohttp
import yarl

from rollbackd.errors import SourceStats
from rollbackd.model import HealthCheck
from rollbackd.sources.session import OwnsSession

logger = logging.getLogger(__name__)


class HealthProber(OwnsSession):
    """The :class:`~rollbackd.sources.base.HealthSource` probing endpoints with ``GET``.

    Use as ``async with HealthProber(timeout_s=2) as prober: await prober.probe(urls)``; the prober
    owns its HTTP session. Redirects are followed; the body is read and discarded.

    Keyword arguments:

    - ``timeout_s``: limit for one probe, connecting included.
    - ``concurrency``: most probes in flight at once.
    - ``stats``: counters to update: every probe is a request, every unreachable endpoint an error
      of kind ``timeout`` or ``connection`` (a fresh one named ``health`` by default). An answer
      with a failing status is a result, not an error.
    """

    def __init__(
        self,
        *,
        timeout_s: float = 2.0,
        concurrency: int = 100,
        stats: SourceStats | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, not {concurrency!r}")
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self.stats = stats if stats is not None else SourceStats(source="health")
        self._session: aiohttp.ClientSession | None = None
        self._slots = asyncio.Semaphore(concurrency)

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.concurrency),
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        return self

    async def probe(self, urls: Sequence[str]) -> tuple[HealthCheck, ...]:
        """One :class:`~rollbackd.model.HealthCheck` per URL, in the order given.

        ``path`` is the URL's path; ``status`` is ``None`` when the endpoint could not be reached
        (refused, timed out, invalid URL), with the reason in ``error``.
        """
        if self._session is None:
            raise RuntimeError("HealthProber is used outside its 'async with' block")
        session = self._session
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self._probe_one(session, url)) for url in urls]
        return tuple(task.result() for task in tasks)

    async def _probe_one(self, session: aiohttp.ClientSession, url: str) -> HealthCheck:
        try:
            parsed = yarl.URL(url)
        except (ValueError, TypeError) as exc:
            self.stats.record_error("config")
            return HealthCheck(path=url, status=None, error=f"invalid URL: {exc}")
        path = parsed.path or "/"
        if not parsed.absolute or parsed.scheme not in {"http", "https"}:
            self.stats.record_error("config")
            return HealthCheck(path=path, status=None, error=f"invalid URL {url!r}: need http(s)://host/path")

        async with self._slots:
            loop = asyncio.get_running_loop()
            started = loop.time()
            self.stats.requests += 1
            try:
                async with session.get(parsed, allow_redirects=True) as response:
                    await response.read()
                    status = response.status
            except TimeoutError:
                self.stats.record_error("timeout")
                error = f"no answer within {self.timeout_s:g}s"
                logger.info("Health probe %s: %s", url, error)
                return HealthCheck(path=path, status=None, latency_ms=None, error=error)
            except aiohttp.ClientError as exc:
                self.stats.record_error("connection")
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                logger.info("Health probe %s failed: %s", url, error)
                return HealthCheck(path=path, status=None, latency_ms=None, error=error)
            latency_ms = (loop.time() - started) * 1000.0
        return HealthCheck(path=path, status=status, latency_ms=latency_ms)
