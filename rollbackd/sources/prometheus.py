"""Metrics from Prometheus over its HTTP API, batched across targets.

:class:`PrometheusClient` sends instant queries (``POST /api/v1/query``, form-encoded) with a
timeout and retries temporary failures with jittered backoff. :class:`PrometheusSource` turns one
tick's batched queries (see :mod:`rollbackd.sources.promql`) into a ``(baseline, candidate)`` pair
of :class:`~rollbackd.model.Sample` per target. Whatever could not be measured is ``None``, never
zero; values no real service produces (see :mod:`rollbackd.plausibility`) make the target's tick
missing too, and are counted and logged. An answer is read up to a size cap, never further.

With ``max_lag_s``, each tick also asks how old the newest sample of the requests series is
(:func:`freshness_query`) and warns, once per stale spell, when answers lag behind: a backend that
answers from the past (VictoriaMetrics' ``-search.latencyOffset``, 30 s by default) delays every
decision by as much and lets a verification judge data from before the rollback.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import random
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Self, TypeVar
from urllib.parse import urlsplit

import aiohttp

from rollbackd.backoff import Backoff
from rollbackd.config.settings import PrometheusSettings
from rollbackd.errors import (
    PrometheusQueryError,
    PrometheusUnavailableError,
    SourceError,
    SourceStats,
    TemporarySourceError,
)
from rollbackd.gcpause import collector_paused
from rollbackd.model import Histogram, Sample, histogram_quantile
from rollbackd.plausibility import ERRORS_SLACK, Implausible, sample_problem
from rollbackd.sources import promql
from rollbackd.sources.backend import BackendAccess, certificate_problem
from rollbackd.sources.base import SidePair, SourceTarget
from rollbackd.sources.session import OwnsSession

logger = logging.getLogger(__name__)

_Answer = TypeVar("_Answer")

#: Prometheus ``errorType`` values that a retry may get past.
_TEMPORARY_ERROR_TYPES = frozenset({"timeout", "canceled", "unavailable", "internal"})

#: The backoff between query attempts unless told otherwise.
DEFAULT_BACKOFF = Backoff(initial_s=0.2, max_s=2.0)

#: How much of a query is quoted in error messages and logs.
_QUOTE_CHARS = 300

#: The smallest default cap on one answer's body, and what each target adds to it: an answer
#: with the default buckets holds 24 series per target (12 buckets, two sides) of about 110 bytes
#: each, 2.6 KiB, so the cap leaves room for three times that, and four times more at the floor.
ANSWER_FLOOR_BYTES = 4 * 1024 * 1024
ANSWER_BYTES_PER_TARGET = 8 * 1024


def default_max_answer_bytes(targets: int) -> int:
    """The cap on one answer's body when none is configured:
    ``max(4 MiB, 8 KiB x targets)`` (16 MiB for 2,000 targets)."""
    return max(ANSWER_FLOOR_BYTES, ANSWER_BYTES_PER_TARGET * targets)


#: What each point of a range answer adds per target: 24 series' ``[time,"value"]`` of about 28
#: bytes each, 670 bytes, with room for three times that.
ANSWER_BYTES_PER_TARGET_POINT = 2 * 1024

#: Most target-points (targets x points) one range answer is asked for: about 10 MiB of JSON with
#: the default buckets. :meth:`PrometheusSource.history` splits targets into batches to stay under.
HISTORY_POINTS_PER_QUERY = 16_000


#: The most points per series Prometheus answers in one range query.
MAX_RANGE_POINTS = 11_000


def default_max_range_answer_bytes(targets: int, points: int) -> int:
    """The cap on one range answer's body when none is configured:
    ``max(4 MiB, (8 KiB + 2 KiB x points) x targets)``."""
    per_target = ANSWER_BYTES_PER_TARGET + ANSWER_BYTES_PER_TARGET_POINT * points
    return max(ANSWER_FLOOR_BYTES, per_target * targets)


@dataclass(frozen=True, slots=True)
class Series:
    """One element of an instant vector (or a scalar, with no labels). ``value`` may be NaN or
    infinite, exactly as Prometheus returned it."""

    labels: Mapping[str, str]
    value: float
    timestamp: float


@dataclass(frozen=True, slots=True)
class QueryResult:
    """A successful instant query: ``result_type`` is ``vector`` or ``scalar``; ``warnings`` are
    the ones Prometheus attached to the answer (e.g. about partial data).

    The elements are kept as columns, ``labels[i]``, ``values[i]`` and ``timestamps[i]`` being
    element ``i``: one tick's batched answer holds tens of thousands of series, and an object per
    series costs more to build and to garbage-collect than reading the answer itself.
    :attr:`series` gives them as :class:`Series`.
    """

    query: str
    result_type: str
    labels: tuple[Mapping[str, str], ...]
    values: tuple[float, ...]
    timestamps: tuple[float, ...]
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.labels) == len(self.values) == len(self.timestamps):
            raise ValueError("labels, values and timestamps differ in length")

    @property
    def series(self) -> tuple[Series, ...]:
        """The elements as :class:`Series` (built afresh on each access)."""
        return tuple(map(Series, self.labels, self.values, self.timestamps))


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A successful range query (a ``matrix``): series ``i`` has ``labels[i]`` and its points at
    ``timestamps[i]`` (Unix seconds, ascending) with ``values[i]``, as Prometheus returned them
    (NaN and infinities included). ``warnings`` as in :class:`QueryResult`."""

    query: str
    labels: tuple[Mapping[str, str], ...]
    timestamps: tuple[tuple[float, ...], ...]
    values: tuple[tuple[float, ...], ...]
    warnings: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not len(self.labels) == len(self.values) == len(self.timestamps):
            raise ValueError("labels, values and timestamps differ in length")
        if any(len(t) != len(v) for t, v in zip(self.timestamps, self.values, strict=True)):
            raise ValueError("a series has not as many values as timestamps")

    def instants(self) -> dict[int, QueryResult]:
        """The answer as one instant vector per evaluation time, keyed by that time in whole
        milliseconds (how Prometheus writes it), in time order."""
        columns: dict[int, tuple[list[Mapping[str, str]], list[float], float]] = {}
        for series_labels, series_timestamps, series_values in zip(
            self.labels, self.timestamps, self.values, strict=True
        ):
            for ts, value in zip(series_timestamps, series_values, strict=True):
                column = columns.get(ms := round(ts * 1000))
                if column is None:
                    column = columns[ms] = ([], [], ts)
                column[0].append(series_labels)
                column[1].append(value)
        return {
            ms: QueryResult(query=self.query, result_type="vector", labels=tuple(labels),
                            values=tuple(values), timestamps=(ts,) * len(values))
            for ms, (labels, values, ts) in sorted(columns.items())
        }


class PrometheusClient(OwnsSession):
    """An async client of the Prometheus query API that owns its HTTP session.

    Use as ``async with PrometheusClient(base_url=...) as client: await client.query(...)``.

    Keyword arguments:

    - ``base_url``: Prometheus' URL, e.g. ``http://127.0.0.1:9090`` (a path prefix is kept).
    - ``timeout_s``: limit for one attempt, also sent to Prometheus as its query ``timeout``.
    - ``retries``: further attempts after a temporary failure (connection error, timeout, 5xx,
      429, ``errorType`` timeout / canceled / unavailable / internal). Permanent failures
      (``bad_data``, ``execution``, other 4xx, malformed answers) are never retried.
    - ``backoff``: delays between attempts; a server's ``Retry-After`` is honoured up to
      ``backoff.max_s``.
    - ``stats``: counters to update (a fresh one named ``prometheus`` by default).
    - ``max_connections``: most HTTP connections open at once.
    - ``compression``: ask Prometheus to gzip its answers. Off by default: a batched answer for a
      thousand targets is a few megabytes of JSON, which Prometheus compresses in tens of
      milliseconds per query and the daemon then inflates again; worth it over a slow link only.
    - ``max_answer_bytes``: the largest answer body read (decompressed); a larger one is not
      read further, and the query fails as ``oversized`` (not retried). :meth:`query` may give
      another cap per call.
    - ``rng``: random generator for the backoff jitter (reproducible tests).
    - ``access``: credentials, TLS and extra headers (:class:`~rollbackd.sources.backend.BackendAccess`;
      none by default). A query answered 401 with a bearer token from a file reads the file again
      and is sent once more if the token changed; 401 and 403 are errors of kind ``unauthorized``
      and ``forbidden`` naming the credentials refused, a certificate problem one of kind ``tls``
      naming the expected and the certificate's names. An answer in HTML, or a redirect, is
      kind ``not_prometheus``: a proxy's login page, not the API. None of these is retried.

    :meth:`from_settings` builds one from the ``prometheus:`` settings.
    """

    def __init__(
        self,
        *,
        base_url: str,
        timeout_s: float = 5.0,
        retries: int = 2,
        backoff: Backoff = DEFAULT_BACKOFF,
        stats: SourceStats | None = None,
        max_connections: int = 100,
        compression: bool = False,
        max_answer_bytes: int = ANSWER_FLOOR_BYTES,
        rng: random.Random | None = None,
        access: BackendAccess | None = None,
    ) -> None:
        if max_answer_bytes < 1:
            raise ValueError(f"max_answer_bytes must be positive, not {max_answer_bytes!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, not {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must not be negative, not {retries!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff = backoff
        self.stats = stats if stats is not None else SourceStats(source="prometheus")
        self._max_connections = max_connections
        self._compression = compression
        self.max_answer_bytes = max_answer_bytes
        self._rng = rng
        self.access = access if access is not None else BackendAccess()
        parts = urlsplit(self.base_url)
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_settings(
        cls, settings: PrometheusSettings, *, environ: Mapping[str, str], stats: SourceStats | None = None
    ) -> PrometheusClient:
        """A client as the ``prometheus:`` settings describe, its secrets read from the files and
        the environment (``environ``) they name. Raises
        :class:`~rollbackd.sources.backend.BackendConfigError` naming a secret or TLS file that
        cannot be used."""
        return cls(
            base_url=settings.url,
            timeout_s=settings.timeout_s,
            retries=settings.retries,
            backoff=Backoff(
                initial_s=settings.backoff_initial_s,
                max_s=max(settings.backoff_max_s, settings.backoff_initial_s),
            ),
            stats=stats,
            access=BackendAccess.from_settings(settings, environ=environ),
        )

    async def __aenter__(self) -> Self:
        tls = self.access.tls
        connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=tls if tls is not None else True)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={
                **self.access.headers,
                "Accept": "application/json",
                "Accept-Encoding": "gzip, deflate" if self._compression else "identity",
            },
        )
        return self

    async def query(self, promql_text: str, *, max_answer_bytes: int | None = None) -> QueryResult:
        """Run an instant query at the server's current time, reading at most
        ``max_answer_bytes`` of its answer (the client's cap by default).

        Raises :class:`~rollbackd.errors.PrometheusUnavailableError` when every attempt failed
        temporarily, :class:`~rollbackd.errors.PrometheusQueryError` at once when Prometheus
        rejected the query or answered with something unexpected. Both carry Prometheus' own
        ``errorType`` and ``error`` text when it sent them; an answer over the cap is a
        :class:`~rollbackd.errors.PrometheusQueryError` of kind ``oversized``.
        """
        cap = self.max_answer_bytes if max_answer_bytes is None else max_answer_bytes
        form = {"query": promql_text}
        return await self._retrying(lambda: self._send("query", form, promql_text, cap, _parse_response))

    async def query_range(
        self,
        promql_text: str,
        *,
        start_s: float,
        end_s: float,
        step_s: float,
        max_answer_bytes: int | None = None,
    ) -> RangeResult:
        """Run a range query (``POST /api/v1/query_range``): ``promql_text`` evaluated at
        ``start_s``, ``start_s + step_s``, ... up to ``end_s`` (Unix times in seconds), reading at
        most ``max_answer_bytes`` of its answer (the client's cap by default).

        Retries, timeouts and errors as :meth:`query`; an answer that is not a range vector
        (``matrix``) is a :class:`~rollbackd.errors.PrometheusQueryError` of kind ``bad_response``.
        """
        if not (math.isfinite(start_s) and math.isfinite(end_s) and start_s <= end_s):
            raise ValueError(f"a range needs finite start_s <= end_s, not {start_s!r} .. {end_s!r}")
        if not (math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"step_s must be a positive number of seconds, not {step_s!r}")
        cap = self.max_answer_bytes if max_answer_bytes is None else max_answer_bytes
        form = {
            "query": promql_text,
            "start": f"{start_s:.3f}",
            "end": f"{end_s:.3f}",
            "step": f"{step_s:g}",
        }
        return await self._retrying(
            lambda: self._send("query_range", form, promql_text, cap, _parse_range_response)
        )

    async def _retrying(self, attempt_once: Callable[[], Awaitable[_Answer]]) -> _Answer:
        """``attempt_once()`` until it succeeds, a permanent failure, or the retries are spent."""
        attempt = 0
        while True:
            self.stats.requests += 1
            try:
                return await attempt_once()
            except TemporarySourceError as exc:
                self.stats.record_error(exc.kind)
                if attempt >= self.retries:
                    self.stats.failures += 1
                    raise
                delay = self.backoff.delay(attempt, self._rng)
                if exc.retry_after_s is not None:
                    delay = min(max(delay, exc.retry_after_s), self.backoff.max_s)
                # DEBUG: a failure that outlasts the retries is told by the caller, once per outage.
                logger.debug("Prometheus query failed (%s), retry %d/%d in %.2fs",
                               exc, attempt + 1, self.retries, delay)
                attempt += 1
                self.stats.retries += 1
                await asyncio.sleep(delay)
            except SourceError as exc:
                self.stats.record_error(exc.kind)
                self.stats.failures += 1
                raise

    async def _send(
        self,
        endpoint: str,
        form: Mapping[str, str],
        promql_text: str,
        max_bytes: int,
        parse: Callable[[str, int, bytes, float | None], _Answer],
    ) -> _Answer:
        if self._session is None:
            raise RuntimeError("PrometheusClient is used outside its 'async with' block")
        url = f"{self.base_url}/api/v1/{endpoint}"
        # Plain seconds: Prometheus parses a bare float, but a unit only with an integer ("0.5s" is
        # rejected as bad_data).
        data = {**form, "timeout": f"{self.timeout_s:g}"}
        quoted = _quote(promql_text)
        access = self.access
        for reread in (False, True):
            headers = access.request_headers(asyncio.get_running_loop().time())
            try:
                async with self._session.post(
                    url, data=data, headers=headers, server_hostname=access.server_name,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                    retry_after = _retry_after(response.headers.get("Retry-After"))
                    content_type = response.content_type
                    location = response.headers.get("Location")
                    body = await _read_capped(response, max_bytes, quoted)
            except TimeoutError as exc:
                raise PrometheusUnavailableError(
                    f"Prometheus did not answer within {self.timeout_s:g}s (query: {quoted})", kind="timeout"
                ) from exc
            except aiohttp.InvalidURL as exc:
                raise PrometheusQueryError(f"invalid Prometheus URL {url!r}: {exc}", kind="config") from exc
            except aiohttp.ClientConnectorCertificateError as exc:
                verification = exc.certificate_error
                if not isinstance(verification, ssl.SSLCertVerificationError):
                    raise PrometheusQueryError(
                        f"cannot query Prometheus: its TLS certificate was refused: {verification}",
                        kind="tls",
                    ) from exc
                problem = await certificate_problem(
                    verification, host=self._host, port=self._port, server_name=access.server_name,
                    diagnostic=access.diagnostic_tls, timeout_s=self.timeout_s,
                )
                raise PrometheusQueryError(f"cannot query Prometheus: {problem}", kind="tls") from exc
            except aiohttp.ClientSSLError as exc:
                raise PrometheusQueryError(
                    f"the TLS handshake with Prometheus at {self.base_url} failed ({_ssl_reason(exc)}); "
                    "check the URL's scheme (https:// to a plain HTTP port?) and prometheus.tls (a client "
                    "certificate the backend wants?)",
                    kind="tls",
                ) from exc
            except aiohttp.ClientError as exc:
                alert = _tls_alert(exc)
                if alert is not None:  # the server refused the handshake after it began (TLS 1.3)
                    fix = (
                        "it wants a client certificate it trusts; set prometheus.tls.cert_file and "
                        "key_file to one signed by a CA it accepts" if "CERTIFICATE" in alert
                        else "check prometheus.tls against what the backend expects"
                    )
                    raise PrometheusQueryError(
                        f"Prometheus at {self.base_url} refused the TLS connection ({alert}): {fix}",
                        kind="tls",
                    ) from exc
                raise PrometheusUnavailableError(
                    f"cannot reach Prometheus at {self.base_url}: {exc or type(exc).__name__}",
                    kind="connection",
                ) from exc
            if status == 401 and not reread and access.token is not None and access.token.reread():
                logger.info("Prometheus answered 401 Unauthorized; the bearer token file has a new token, "
                            "sending the query again with it")
                continue
            break
        if status in (401, 403):
            raise access.refused(status, self.base_url)
        if 300 <= status < 400:
            raise PrometheusQueryError(
                f"Prometheus at {self.base_url} answered HTTP {status}, a redirect to "
                f"{_shown_location(location)}, not the Prometheus API: is the URL a proxy's login page? "
                "Give the API's own URL (and its credentials in prometheus.bearer_token_file or basic_auth)",
                kind="not_prometheus", status=status,
            )
        if content_type == "text/html" and status < 500 and status != 429:
            raise PrometheusQueryError(
                f"Prometheus at {self.base_url} answered HTTP {status} text/html, not the Prometheus API: "
                "is the URL a proxy's login page or a web UI? Give the URL of the query API (the part "
                "before /api/v1)",
                kind="not_prometheus", status=status,
            )
        with collector_paused():  # the answer's decoded objects hold no cycles
            return parse(promql_text, status, body, retry_after)


def _ssl_reason(exc: aiohttp.ClientSSLError) -> str:
    """A TLS failure's reason in OpenSSL's words (``WRONG_VERSION_NUMBER``), else the error's text."""
    cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else getattr(exc, "os_error", None)
    reason = getattr(cause, "reason", None)
    return str(reason) if reason else str(exc) or type(exc).__name__


_TLS_ALERT = re.compile(r"\[SSL: ([A-Z0-9_]*ALERT[A-Z0-9_]*)\]")


def _tls_alert(exc: aiohttp.ClientError) -> str | None:
    """The TLS alert a server answered the handshake with (``TLSV13_ALERT_CERTIFICATE_REQUIRED``),
    when that is what ``exc`` is; TLS 1.3 servers send it after the client thinks the handshake
    done, so it arrives as an OS error of the connection rather than as a TLS error."""
    for error in (exc, exc.__cause__, getattr(exc, "os_error", None)):
        if isinstance(error, ssl.SSLError) and error.reason and "ALERT" in error.reason:
            return str(error.reason)
    found = _TLS_ALERT.search(str(exc))
    return found.group(1) if found else None


def _shown_location(location: str | None) -> str:
    """A redirect's target without its query (which may carry a login state or token)."""
    if not location:
        return "nowhere (no Location)"
    parts = urlsplit(location)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.netloc else parts.path or "/"


async def _read_capped(response: aiohttp.ClientResponse, max_bytes: int, quoted: str) -> bytes:
    """The body of ``response``, or :class:`PrometheusQueryError` (``oversized``) as soon as it is
    known to exceed ``max_bytes``: the connection is closed, the rest never read."""

    def oversized(size: str) -> PrometheusQueryError:
        response.close()
        return PrometheusQueryError(
            f"Prometheus' answer is larger than prometheus.max_answer_bytes ({max_bytes} bytes): {size}; "
            f"not read (query: {quoted})",
            kind="oversized", status=response.status,
        )

    declared = response.content_length
    if declared is not None and declared > max_bytes:
        raise oversized(f"{declared} bytes declared")
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > max_bytes:
            raise oversized(f"more than {max_bytes} bytes sent")
        chunks.append(chunk)
    return b"".join(chunks)


def _quote(promql_text: str) -> str:
    if len(promql_text) <= _QUOTE_CHARS:
        return promql_text
    return promql_text[:_QUOTE_CHARS] + f"... ({len(promql_text)} chars)"


def _retry_after(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


#: How Prometheus writes a successful instant vector without warnings, compact and in this key
#: order. Label names and values without a backslash or quote need no unescaping.
_VECTOR_HEAD = b'{"status":"success","data":{"resultType":"vector","result":['
_VECTOR_TAIL = b"]}}"
_PLAIN = rb'"[^"\\]*"'
_VECTOR_ELEMENT = re.compile(
    rb'\{"metric":\{((?:' + _PLAIN + rb":" + _PLAIN + rb",)*(?:" + _PLAIN + rb":" + _PLAIN + rb')?)\},'
    rb'"value":\[([-+.0-9eE]+),"([^"\\]*)"\]\},?'
)
_LABEL = re.compile(rb'"([^"\\]*)":"([^"\\]*)"')


def _plain_vector(promql_text: str, body: bytes) -> QueryResult | None:
    """The answer read straight from ``body`` when it is a plain instant vector as Prometheus
    writes it, else ``None`` (then the JSON decoder reads it). Equal label texts and numbers are
    shared across series; why: the memory at a thousand targets in ``bench/results/scale.md``."""
    if not (body.startswith(_VECTOR_HEAD) and body.endswith(_VECTOR_TAIL)):
        return None
    labels: list[Mapping[str, str]] = []
    values: list[float] = []
    timestamps: list[float] = []
    texts: dict[bytes, str] = {}
    numbers: dict[bytes, float] = {}
    pairs = _LABEL.findall
    position = len(_VECTOR_HEAD)
    for element in _VECTOR_ELEMENT.finditer(body, position):
        if element.start() != position:
            return None
        metric, timestamp, value = element.groups()
        position = element.end()
        series: dict[str, str] = {}
        for name, label_value in pairs(metric):
            name_text = texts.get(name)
            if name_text is None:
                name_text = texts[name] = name.decode()
            value_text = texts.get(label_value)
            if value_text is None:
                value_text = texts[label_value] = label_value.decode()
            series[name_text] = value_text
        labels.append(series)
        number = numbers.get(value)
        if number is None:
            number = numbers[value] = float(value)
        values.append(number)
        number = numbers.get(timestamp)
        if number is None:
            number = numbers[timestamp] = float(timestamp)
        timestamps.append(number)
    if position != len(body) - len(_VECTOR_TAIL):
        return None  # something the pattern does not know (an escaped quote, a new field)
    return QueryResult(query=promql_text, result_type="vector", labels=tuple(labels),
                       values=tuple(values), timestamps=tuple(timestamps))


def _parse_response(promql_text: str, status: int, body: bytes, retry_after: float | None) -> QueryResult:
    if status == 200:
        try:
            plain = _plain_vector(promql_text, body)
        except ValueError:  # a label that is not UTF-8, a number that is not one
            plain = None
        if plain is not None:
            return plain
    return _parsed(promql_text, status, _document(promql_text, status, body, retry_after), _parse_data)


def _parse_range_response(
    promql_text: str, status: int, body: bytes, retry_after: float | None
) -> RangeResult:
    return _parsed(promql_text, status, _document(promql_text, status, body, retry_after), _parse_matrix)


def _parsed(
    promql_text: str,
    status: int,
    document: Mapping[str, object],
    parse: Callable[[str, Mapping[str, object]], _Answer],
) -> _Answer:
    """``parse(promql_text, document)``; a document of an unexpected shape is a
    :class:`PrometheusQueryError` of kind ``bad_response``."""
    try:
        return parse(promql_text, document)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise PrometheusQueryError(
            f"Prometheus answered with an unexpected document ({exc!r}) (query: {_quote(promql_text)})",
            kind="bad_response", status=status,
        ) from exc


def _document(promql_text: str, status: int, body: bytes, retry_after: float | None) -> Mapping[str, object]:
    """The answer's JSON document when it is a success; otherwise the error it stands for,
    classified as temporary (:class:`PrometheusUnavailableError`) or not."""
    quoted = _quote(promql_text)
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = (
            f"Prometheus answered HTTP {status} without a JSON API response: {snippet!r} (query: {quoted})"
        )
        if status == 429:
            raise PrometheusUnavailableError(message, kind="rate_limited", status=status,
                                             retry_after_s=retry_after)
        if status >= 500:
            raise PrometheusUnavailableError(message, kind="unavailable", status=status,
                                             retry_after_s=retry_after)
        raise PrometheusQueryError(message, kind="bad_response" if status < 300 else "http", status=status)

    if document.get("status") != "success" or status >= 300:
        error_type = document.get("errorType")
        error_type = error_type if isinstance(error_type, str) else None
        error = document.get("error")
        message = f"Prometheus answered HTTP {status}"
        if error_type:
            message += f" {error_type}"
        if error:
            message += f": {error}"
        message += f" (query: {quoted})"
        temporary = (
            error_type in _TEMPORARY_ERROR_TYPES
            or status == 429
            or (status >= 500 and error_type not in {"bad_data", "execution"})
        )
        if temporary:
            if status == 429:
                kind = "rate_limited"
            else:
                kind = "timeout" if error_type == "timeout" else "unavailable"
            raise PrometheusUnavailableError(message, kind=kind, status=status, error_type=error_type,
                                             retry_after_s=retry_after)
        if error_type == "bad_data":
            kind = "bad_query"
        elif error_type == "execution":
            kind = "execution"
        elif status < 300:
            kind = "bad_response"
        else:
            kind = "http"
        raise PrometheusQueryError(message, kind=kind, status=status, error_type=error_type)
    return document


def _parse_data(promql_text: str, document: Mapping[str, object]) -> QueryResult:
    data = document["data"]
    if not isinstance(data, dict):
        raise TypeError("data is not an object")
    result_type = data["resultType"]
    result = data["result"]
    warnings_raw = document.get("warnings") or ()
    if not isinstance(warnings_raw, list | tuple):
        raise TypeError("warnings is not a list")
    warnings = tuple(str(w) for w in warnings_raw)
    labels: list[Mapping[str, str]] = []
    values: list[float] = []
    timestamps: list[float] = []
    if result_type == "vector":
        if not isinstance(result, list):
            raise TypeError("vector result is not a list")
        # The hot loop of a large batch. The labels objects are kept as decoded: JSON object keys
        # are strings, and so are Prometheus' label values.
        add_labels, add_value, add_timestamp = labels.append, values.append, timestamps.append
        for element in result:
            metric = element.get("metric") or {}
            if not isinstance(metric, dict):
                raise TypeError("series labels are not an object")
            timestamp, value = element["value"]
            add_labels(metric)
            add_value(float(value))
            add_timestamp(float(timestamp))
    elif result_type == "scalar":
        timestamp, value = result
        labels.append({})
        values.append(float(value))
        timestamps.append(float(timestamp))
    else:
        raise ValueError(f"result type {result_type!r} is not an instant vector or scalar")
    if warnings:
        logger.warning("Prometheus warnings for query %s: %s", _quote(promql_text), "; ".join(warnings))
    return QueryResult(query=promql_text, result_type=str(result_type), labels=tuple(labels),
                       values=tuple(values), timestamps=tuple(timestamps), warnings=warnings)


def _warnings(promql_text: str, document: Mapping[str, object]) -> tuple[str, ...]:
    warnings_raw = document.get("warnings") or ()
    if not isinstance(warnings_raw, list | tuple):
        raise TypeError("warnings is not a list")
    warnings = tuple(str(w) for w in warnings_raw)
    if warnings:
        logger.warning("Prometheus warnings for query %s: %s", _quote(promql_text), "; ".join(warnings))
    return warnings


def _parse_matrix(promql_text: str, document: Mapping[str, object]) -> RangeResult:
    data = document["data"]
    if not isinstance(data, dict):
        raise TypeError("data is not an object")
    if data["resultType"] != "matrix":
        raise ValueError(f"result type {data['resultType']!r} is not a range vector (matrix)")
    result = data["result"]
    if not isinstance(result, list):
        raise TypeError("matrix result is not a list")
    labels: list[Mapping[str, str]] = []
    timestamps: list[tuple[float, ...]] = []
    values: list[tuple[float, ...]] = []
    # Equal numbers (the timestamps of every series, repeated counts) are kept as one object.
    numbers: dict[object, float] = {}
    for element in result:
        metric = element.get("metric") or {}
        if not isinstance(metric, dict):
            raise TypeError("series labels are not an object")
        points = element["values"]
        if not isinstance(points, list):
            raise TypeError("series values are not a list")
        series_timestamps: list[float] = []
        series_values: list[float] = []
        for timestamp, value in points:
            number = numbers.get(timestamp)
            if number is None:
                number = numbers[timestamp] = float(timestamp)
            series_timestamps.append(number)
            number = numbers.get(value)
            if number is None:
                number = numbers[value] = float(value)
            series_values.append(number)
        labels.append(metric)
        timestamps.append(tuple(series_timestamps))
        values.append(tuple(series_values))
    return RangeResult(query=promql_text, labels=tuple(labels), timestamps=tuple(timestamps),
                       values=tuple(values), warnings=_warnings(promql_text, document))


#: The metric of a requests template, written ``name{{{selector}}}`` (its first such selector).
_SELECTED_METRIC = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{\{\{selector\}")


def freshness_query(batch: promql.Batch) -> str | None:
    """``max(timestamp(<metric>{<selector>}))`` over the series of ``batch``'s requests query: the
    time of the newest sample the backend shows for them (``None`` when the requests template
    names no metric as ``name{{{selector}}}``).

    Asked for the raw series, not the query's result: ``timestamp()`` of an expression is its
    evaluation time, and VictoriaMetrics stamps an instant answer with the current time even when
    it evaluated it ``-search.latencyOffset`` earlier."""
    match = _SELECTED_METRIC.search(batch.templates.requests)
    if match is None:
        return None
    selector = promql.build_selector(batch.templates.group_labels, batch.sides)
    return f"max(timestamp({match.group(1)}{{{selector}}}))"


def answer_lag_s(result: QueryResult, *, asked_at: float) -> float | None:
    """How far the newest sample of a :func:`freshness_query` answer lies behind the later of the
    answer's own time and ``asked_at`` (the wall clock when it was asked); ``None`` when the answer
    holds no sample."""
    if not result.values or not math.isfinite(result.values[0]):
        return None
    now = max(asked_at, result.timestamps[0])
    return max(0.0, now - result.values[0])


class PrometheusSource:
    """The :class:`~rollbackd.sources.base.MetricsSource` backed by Prometheus.

    Each :meth:`collect` sends the batched queries of :func:`rollbackd.sources.promql.plan`
    concurrently: three per shard of each group of targets sharing the same query templates (more
    only when a selector would exceed ``max_selector_chars``).

    Keyword arguments:

    - ``client``: an open :class:`PrometheusClient` (the caller owns its lifetime).
    - ``max_selector_chars``: cap on one selector's length before a batch is split.
    - ``shards``: batches per group of targets, answered concurrently (see :func:`promql.plan`).
    - ``quantile``: the quantile reported as ``Sample.p95_ms`` (0.95).
    - ``max_answer_bytes``: the cap on one answer's body; ``None`` (the default) sizes it from
      the number of targets of each tick with :func:`default_max_answer_bytes`.
    - ``max_lag_s``: when given, each tick also sends one :func:`freshness_query` (for the first
      batch) and compares the newest sample with the wall clock; answers more than this behind are
      stale: logged at WARNING once, until they are fresh again (logged at INFO).
    - ``on_lag``: told each tick's lag in seconds (e.g. a gauge), when it could be measured.
    """

    def __init__(
        self,
        *,
        client: PrometheusClient,
        max_selector_chars: int = promql.DEFAULT_MAX_SELECTOR_CHARS,
        shards: int = promql.DEFAULT_SHARDS,
        quantile: float = 0.95,
        max_answer_bytes: int | None = None,
        max_lag_s: float | None = None,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards!r}")
        if max_answer_bytes is not None and max_answer_bytes < 1:
            raise ValueError(f"max_answer_bytes must be positive, not {max_answer_bytes!r}")
        if max_lag_s is not None and not (math.isfinite(max_lag_s) and max_lag_s > 0):
            raise ValueError(f"max_lag_s must be positive, not {max_lag_s!r}")
        self.max_answer_bytes = max_answer_bytes
        self.max_lag_s = max_lag_s
        self._on_lag = on_lag
        #: The latest lag measured (seconds), and whether answers are in a stale spell.
        self.lag_s: float | None = None
        self.stale = False
        #: The plan the freshness query was made for, and the query.
        self._freshness: tuple[promql.Plan, str | None] | None = None
        self.client = client
        self.max_selector_chars = max_selector_chars
        self.shards = shards
        self.quantile = quantile
        #: The latest plan and what it was made for: targets rarely change between ticks, and
        #: planning a thousand of them costs more than reading their answers.
        self._planned: tuple[tuple[SourceTarget, ...], float, tuple[int, int], promql.Plan] | None = None
        #: Per target key, what its impossible values were last reported as (``side field kind``):
        #: reported once, until the target's values are plausible again.
        self._reported: dict[str, str] = {}
        #: Per target key, why its latest collection was rejected (:class:`RejectsData`).
        self.rejected: Mapping[str, str] = {}
        #: Why the latest collection got no answer at all (:class:`ReportsOutage`).
        self.outage: str | None = None
        #: Why some queries of the latest collection got no answer (:class:`ReportsFailures`).
        self.failure: str | None = None

    def _plan(self, targets: Sequence[SourceTarget], window_s: float) -> promql.Plan:
        wanted = tuple(targets)
        planned = self._planned
        if (
            planned is not None
            and planned[1] == window_s
            and planned[2] == (self.max_selector_chars, self.shards)
            and planned[0] == wanted  # the same target objects: compared by identity first
        ):
            return planned[3]
        plan = promql.plan(wanted, window_s=window_s, max_selector_chars=self.max_selector_chars,
                           shards=self.shards)
        self._planned = (wanted, window_s, (self.max_selector_chars, self.shards), plan)
        return plan

    @property
    def stats(self) -> SourceStats:
        return self.client.stats

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> dict[str, SidePair]:
        """``(baseline, candidate)`` per target key over the last ``window_s`` seconds.

        A side is ``None`` when its requests series is missing or NaN, when the requests or errors
        query failed, or when the target cannot be queried (reported in the log and counted as a
        ``config`` error). A side's latency is ``None`` when the bucket query failed or returned
        no usable histogram for it. Both sides are ``None`` when a series of the target holds a
        value no real service produces (:mod:`rollbackd.plausibility`): counted by its kind for
        every series and tick, logged once until the target's values are plausible again.
        """
        result: dict[str, SidePair] = {target.key: (None, None) for target in targets}
        plan = self._plan(targets, window_s)
        for key, reason in plan.invalid.items():
            logger.warning("Target %s cannot be queried: %s", key, reason)
            self.stats.record_error("config")

        cap = self.max_answer_bytes
        if cap is None:
            cap = default_max_answer_bytes(len(targets))
        answers: dict[tuple[int, promql.Metric], asyncio.Task[QueryResult | SourceError]] = {}
        async with asyncio.TaskGroup() as group:
            for index, batch in enumerate(plan.batches):
                for metric, text in batch.queries.items():
                    answers[index, metric] = group.create_task(self._safe_query(text, cap))
            freshness = self._freshness_query(plan)
            if freshness is not None and self.max_lag_s is not None:
                group.create_task(self._check_freshness(freshness, self.max_lag_s))

        failed = [answer for task in answers.values() if isinstance(answer := task.result(), SourceError)]
        # Every query failed: the backend is out, which the daemon tells once (not per query).
        self.outage = str(failed[0]) if failed and len(failed) == len(answers) else None
        sides: dict[str, dict[promql.Side, Sample | None]] = {}
        impossible: dict[str, str] = {}
        self.failure = str(failed[0]) if failed else None
        for index, batch in enumerate(plan.batches):
            outcome = {metric: answers[index, metric].result() for metric in promql.Metric}
            per_series, rejected = self.samples_of(batch, outcome, quiet=self.outage is not None)
            for series, owners in batch.sides.items():
                problem = rejected.get(series)
                for target_key, side in owners:
                    sides.setdefault(target_key, {})[side] = per_series.get(series)
                    if problem is not None:
                        impossible.setdefault(target_key, f"{side.value} {problem}")

        for target_key, pair in sides.items():
            if target_key in impossible:
                continue
            baseline, candidate = pair.get(promql.Side.BASELINE), pair.get(promql.Side.CANDIDATE)
            result[target_key] = (baseline, candidate)
            if target_key in self._reported and (baseline is not None or candidate is not None):
                del self._reported[target_key]
                logger.info("Prometheus values of target %s are plausible again", target_key)
        self._report(impossible)
        self.rejected = impossible
        for gone in [key for key in self._reported if key not in result]:  # targets removed
            del self._reported[gone]
        return result

    async def history(
        self,
        targets: Sequence[SourceTarget],
        *,
        step_s: float,
        range_s: float,
        end_s: float,
    ) -> dict[str, tuple[tuple[float, SidePair], ...]]:
        """Per target key, its past intervals over ``range_s`` seconds up to the Unix time
        ``end_s``: ``(time, (baseline, candidate))`` every ``step_s`` seconds, oldest first, each
        counted over the ``step_s`` seconds before its time (so they do not overlap).

        The same batched queries as :meth:`collect` with ``{window}`` = the step, sent as range
        queries (``/api/v1/query_range``). Targets are split into as many batches as it takes for
        each answer to hold at most :data:`HISTORY_POINTS_PER_QUERY` target-points, answered
        ``shards`` at a time, each read up to its cap (:func:`default_max_range_answer_bytes`, or
        ``max_answer_bytes`` times the number of points) and turned into samples before the next
        ones are asked for: memory stays bounded whatever the number of targets. A range of more
        than :data:`MAX_RANGE_POINTS` steps (what Prometheus answers) is read at a longer step.
        Times when a target
        has no data are left out; a point with a value no real service produces is left out and
        counted by kind, as in :meth:`collect`. Targets whose queries failed (or that cannot be
        queried) are absent from the result.
        """
        if not (math.isfinite(step_s) and step_s > 0):
            raise ValueError(f"step_s must be a positive number of seconds, not {step_s!r}")
        if not targets or not math.isfinite(range_s) or range_s < step_s:
            return {}
        if range_s / step_s > MAX_RANGE_POINTS:  # Prometheus answers no more points per series
            step_s = math.ceil(range_s / MAX_RANGE_POINTS * 1000) / 1000
        points = max(1, math.floor(range_s / step_s + 1e-9))
        start_s = end_s - (points - 1) * step_s
        shards = max(self.shards, math.ceil(len(targets) * points / HISTORY_POINTS_PER_QUERY))
        plan = promql.plan(tuple(targets), window_s=step_s, max_selector_chars=self.max_selector_chars,
                           shards=shards)
        for key, reason in plan.invalid.items():
            logger.warning("Target %s cannot be queried: %s", key, reason)
            self.stats.record_error("config")
        found: dict[str, list[tuple[float, SidePair]]] = {}
        limit = asyncio.Semaphore(self.shards)

        async def one(batch: promql.Batch) -> None:
            async with limit:
                wanted = len(batch.target_keys)
                if self.max_answer_bytes is None:
                    cap = default_max_range_answer_bytes(wanted, points)
                else:
                    cap = self.max_answer_bytes * points
                async with asyncio.TaskGroup() as group:
                    answers = {
                        metric: group.create_task(self._safe_range(text, start_s, end_s, step_s, cap))
                        for metric, text in batch.queries.items()
                    }
                self._history_of(batch, {metric: task.result() for metric, task in answers.items()}, found)

        async with asyncio.TaskGroup() as group:
            for batch in plan.batches:
                group.create_task(one(batch))
        return {key: tuple(pairs) for key, pairs in found.items()}

    def _history_of(
        self,
        batch: promql.Batch,
        outcome: Mapping[promql.Metric, RangeResult | SourceError],
        found: dict[str, list[tuple[float, SidePair]]],
    ) -> None:
        """Add ``batch``'s points to ``found`` (nothing when its requests or errors query failed)."""
        requests = outcome[promql.Metric.REQUESTS]
        errors = outcome[promql.Metric.ERRORS]
        for metric, answer in outcome.items():
            if isinstance(answer, SourceError):
                logger.warning("Prometheus %s range query for %d series failed: %s",
                               metric.value, len(batch.sides), answer)
        if isinstance(requests, SourceError) or isinstance(errors, SourceError):
            return
        buckets = outcome[promql.Metric.LATENCY_BUCKETS]
        by_time = {metric: answer.instants() for metric, answer in outcome.items()
                   if isinstance(answer, RangeResult)}
        empty = QueryResult(query="", result_type="vector", labels=(), values=(), timestamps=())
        owners = [(series, target_key, side) for series, pairs in batch.sides.items()
                  for target_key, side in pairs]
        for target_key in batch.target_keys:
            found.setdefault(target_key, [])
        for ms in sorted(by_time[promql.Metric.REQUESTS]):
            at: dict[promql.Metric, QueryResult | SourceError] = {
                promql.Metric.REQUESTS: by_time[promql.Metric.REQUESTS][ms],
                promql.Metric.ERRORS: by_time[promql.Metric.ERRORS].get(ms, empty),
                promql.Metric.LATENCY_BUCKETS: (
                    buckets if isinstance(buckets, SourceError)
                    else by_time[promql.Metric.LATENCY_BUCKETS].get(ms, empty)
                ),
            }
            samples, rejected = self.samples_of(batch, at, quiet=True)
            sides: dict[str, dict[promql.Side, Sample | None]] = {}
            impossible: set[str] = set()
            for series, target_key, side in owners:
                sides.setdefault(target_key, {})[side] = samples.get(series)
                if series in rejected:
                    impossible.add(target_key)
            for target_key, pair in sides.items():
                baseline, candidate = pair.get(promql.Side.BASELINE), pair.get(promql.Side.CANDIDATE)
                if target_key in impossible or (baseline is None and candidate is None):
                    continue
                found[target_key].append((ms / 1000.0, (baseline, candidate)))

    async def _safe_range(
        self, text: str, start_s: float, end_s: float, step_s: float, max_answer_bytes: int
    ) -> RangeResult | SourceError:
        try:
            return await self.client.query_range(
                text, start_s=start_s, end_s=end_s, step_s=step_s, max_answer_bytes=max_answer_bytes
            )
        except SourceError as exc:
            return exc
        except Exception as exc:
            logger.exception("Unexpected failure of a Prometheus range query")
            self.stats.record_error("internal")
            return PrometheusQueryError(f"unexpected failure: {exc!r}", kind="internal")

    def _report(self, impossible: Mapping[str, str]) -> None:
        """Log each target's impossible values once (again only after a plausible tick)."""
        for target_key, problem in impossible.items():
            what = problem.split(":", 1)[0]
            if self._reported.get(target_key) == what:
                continue
            self._reported[target_key] = what
            logger.warning(
                "Prometheus gave impossible values for target %s, not judged (inconclusive) until "
                "they are plausible again: %s", target_key, problem,
            )

    def _freshness_query(self, plan: promql.Plan) -> str | None:
        """The freshness query of ``plan`` (made once per plan), or ``None`` when not checking."""
        if self.max_lag_s is None or not plan.batches:
            return None
        made = self._freshness
        if made is None or made[0] is not plan:
            made = self._freshness = (plan, freshness_query(plan.batches[0]))
        return made[1]

    async def _check_freshness(self, query: str, max_lag_s: float) -> None:
        """Measure how far behind the backend's newest sample is, and say so when it is stale."""
        asked_at = time.time()  # the wall clock: sample timestamps are Unix times
        answer = await self._safe_query(query, ANSWER_FLOOR_BYTES)
        if isinstance(answer, SourceError):
            logger.debug("Prometheus freshness query failed: %s", answer)
            return
        lag = answer_lag_s(answer, asked_at=asked_at)
        if lag is None:
            return  # no sample of these series yet: nothing to compare
        self.lag_s = lag
        if self._on_lag is not None:
            self._on_lag(lag)
        if lag > max_lag_s and not self.stale:
            self.stale = True
            logger.warning(
                "Prometheus answers are stale: the newest sample is %.1fs old, more than %.1fs (one "
                "evaluation interval beyond the scrape interval); decisions come that much later, and "
                "a verification may judge data from before the rollback. A VictoriaMetrics backend "
                "needs -search.latencyOffset no longer than interval_s (its default is 30s)",
                lag, max_lag_s,
                extra={"source": "prometheus", "lag_s": round(lag, 3), "max_lag_s": max_lag_s},
            )
        elif lag <= max_lag_s and self.stale:
            self.stale = False
            logger.info(
                "Prometheus answers are fresh again: the newest sample is %.1fs old", lag,
                extra={"source": "prometheus", "lag_s": round(lag, 3), "max_lag_s": max_lag_s},
            )

    async def _safe_query(self, text: str, max_answer_bytes: int) -> QueryResult | SourceError:
        try:
            return await self.client.query(text, max_answer_bytes=max_answer_bytes)
        except SourceError as exc:
            return exc
        except Exception as exc:
            # A defect, not an outage: say so loudly, but still report missing data, never zeros.
            logger.exception("Unexpected failure of a Prometheus query")
            self.stats.record_error("internal")
            return PrometheusQueryError(f"unexpected failure: {exc!r}", kind="internal")

    def samples_of(
        self,
        batch: promql.Batch,
        outcome: Mapping[promql.Metric, QueryResult | SourceError],
        *,
        quiet: bool = False,
    ) -> tuple[dict[promql.SeriesKey, Sample], dict[promql.SeriesKey, Implausible]]:
        """The sample of every series of ``batch`` that has data (absent keys mean no data), and
        the series whose values are impossible, with why (each counted by its kind). ``quiet``:
        failed queries were already logged by the caller. Pure but for the counts and logs: the
        fault suite feeds it any answer."""
        labels = batch.templates.group_labels
        requests = outcome[promql.Metric.REQUESTS]
        errors = outcome[promql.Metric.ERRORS]
        buckets = outcome[promql.Metric.LATENCY_BUCKETS]
        wanted = len(batch.sides)
        for metric, answer in outcome.items():
            if isinstance(answer, SourceError) and not quiet:
                logger.warning("Prometheus %s query for %d series failed: %s", metric.value, wanted, answer)
        if isinstance(requests, SourceError) or isinstance(errors, SourceError):
            return {}, {}

        request_values = _values(requests, labels)
        error_values = _values(errors, labels)
        histograms = (
            {} if isinstance(buckets, SourceError)
            else _histograms(buckets, labels, unit_s=batch.templates.bucket_unit_s)
        )

        samples: dict[promql.SeriesKey, Sample] = {}
        rejected: dict[promql.SeriesKey, Implausible] = {}
        for key in batch.sides:
            served = request_values.get(key)
            if served is None or served != served:  # absent or NaN: no data
                continue
            # No errors series for a side whose requests are known: the counter of failed requests
            # does not exist or did not move, which is zero errors (the errors query did succeed).
            failed = error_values.get(key, 0.0)
            if failed != failed:
                continue
            latency = histograms.get(key)
            problem = sample_problem(Sample(served, failed, latency), errors_slack=ERRORS_SLACK)
            if problem is not None:
                rejected[key] = problem
                self.stats.record_error(problem.kind)
                continue
            if latency is not None:
                latency = _monotonic(latency)
            p95_s = (
                histogram_quantile(self.quantile, latency.bounds_s, latency.counts)
                if latency is not None else None
            )
            samples[key] = Sample(
                requests=served,
                errors=min(failed, served),
                latency=latency,
                p95_ms=p95_s * 1000.0 if p95_s is not None else None,
            )
        missing = wanted - len(samples) - len(rejected)
        if missing:
            logger.debug("No usable requests series for %d of %d series", missing, wanted)
        return samples, rejected


def _values(result: QueryResult, labels: Sequence[str]) -> dict[promql.SeriesKey, float]:
    values: dict[promql.SeriesKey, float] = {}
    key_of = promql.key_getter(labels)
    for series_labels, value in zip(result.labels, result.values, strict=True):
        key = key_of(series_labels)
        if key in values:
            # Two series for one key: the query does not aggregate by the group labels. Sum them,
            # as "sum by" would have; NaN stays NaN and marks the side missing.
            values[key] += value
        else:
            values[key] = value
    return values


def _bound(le: object) -> float:
    """A bucket's upper bound from its ``le`` label; NaN when absent or not a number."""
    if le is None:
        return math.nan
    try:
        return float(le)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _histograms(
    result: QueryResult, labels: Sequence[str], *, unit_s: float = 1.0
) -> dict[promql.SeriesKey, Histogram]:
    """Per series, its histogram with bounds in seconds (``le`` counted in units of ``unit_s``)."""
    raw: dict[promql.SeriesKey, dict[float, float]] = {}
    broken: set[promql.SeriesKey] = set()
    key_of = promql.key_getter(labels)
    # A batch has a dozen distinct "le" values over tens of thousands of series: parse each once.
    bounds_of: dict[object, float] = {}
    for series_labels, value in zip(result.labels, result.values, strict=True):
        key = key_of(series_labels)
        le = series_labels.get("le")
        bound = bounds_of.get(le)
        if bound is None:
            bound = bounds_of[le] = _bound(le) if unit_s == 1.0 else _bound(le) * unit_s
        if bound != bound or value != value:  # NaN
            broken.add(key)
            continue
        buckets = raw.get(key)
        if buckets is None:
            raw[key] = {bound: value}
        elif bound in buckets:
            buckets[bound] += value
        else:
            # The answer's own float, not a sum with zero: equal counts stay one shared object.
            buckets[bound] = value

    histograms: dict[promql.SeriesKey, Histogram] = {}
    # Histograms of one batch nearly always share their bounds: keep one tuple of them, not one per
    # series and tick (the detectors' windows hold on to these).
    shared_bounds: dict[tuple[float, ...], tuple[float, ...]] = {}
    for key, buckets in raw.items():
        if key in broken or math.inf not in buckets or len(buckets) < 2:
            continue
        bounds = tuple(sorted(buckets))
        bounds = shared_bounds.setdefault(bounds, bounds)
        histograms[key] = Histogram(bounds_s=bounds, counts=tuple(buckets[bound] for bound in bounds))
    return histograms


def _monotonic(hist: Histogram) -> Histogram:
    """``hist`` with cumulative counts that never decrease: sums of fractional counts can wobble
    by float noise (larger decreases are impossible values, rejected before)."""
    if all(a <= b for a, b in itertools.pairwise(hist.counts)):
        return hist  # the usual case: nothing to build
    counts: list[float] = []
    highest = 0.0
    for value in hist.counts:
        if value > highest:
            highest = value
        # The answer's own float, not a copy: equal counts stay one shared object.
        counts.append(highest)
    return Histogram(bounds_s=hist.bounds_s, counts=tuple(counts))
