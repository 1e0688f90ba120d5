"""A small instrumented web service to watch in tests, benchmarks and demos.

Run it as a separate process::

    python -m rollbackd.demo.sampleapp --port 8081 --deployment checkout-canary --namespace shop --rps 50

Endpoints:

- ``GET /metrics``: Prometheus exposition with ``http_requests_total{namespace,deployment,code}``
  and ``http_request_duration_seconds_bucket{namespace,deployment,le}`` (Prometheus' default
  buckets).
- ``GET /work``: sleeps the configured latency (± jitter), then fails with HTTP 500 at the
  configured error rate, or answers 200.
- ``GET /readyz``: the configured readiness status (200 by default).
- ``GET /control`` and ``POST /control`` with a JSON object of changes, e.g.
  ``{"error_rate": 0.3, "latency_ms": 400, "ready_status": 503, "rps": 20}``: read or switch the
  behaviour at runtime; the answer is the behaviour now in force.

With ``--flag NAME`` the service has a feature flag: while it is on, ``/work`` fails at
``--flag-error-rate`` instead of the configured error rate (a release that turned a bad feature on).
Where the flag is kept:

- ``--admin-token-file FILE``: the runbook's admin API, ``POST /api/admin/features`` with
  ``Authorization: Bearer <the file's token>`` and ``{"feature_name": NAME, "enabled": false}``
  (401 without the token, 404 for another flag); ``GET /api/admin/features/NAME`` reads it
  (``{"feature_name": ..., "enabled": ...}``);
- ``--flag-dsn-file FILE --flag-table TABLE``: a PostgreSQL table (``name``, ``enabled``) the
  service reads every 0.2 s (``SELECT enabled FROM TABLE WHERE name = NAME``).

With ``--config-url URL`` (a ConfigMap's URL in the Kubernetes API, e.g.
``http://127.0.0.1:6443/api/v1/namespaces/shop/configmaps/checkout-config``) the service reads its
configuration from that ConfigMap every 0.2 s, as a pod following its ConfigMap does (a failed read
keeps the data last read), and follows its key ``payments.timeout_ms``: each ``/work`` request makes
a simulated call to a payments service lasting an exponentially distributed time (mean
``--payments-mean-ms``, 50 ms by default; drawn, not slept, so the request's latency stays the
configured one) and fails when the call outlasts the timeout. At 800 ms practically none do; at
60 ms about 30% (e^(-60/50)). Without the key (or with a value that is not a number of
milliseconds) there is no timeout.

With ``--rps`` (or ``rps`` set through ``/control``) the service sends itself that many ``/work``
requests per second, served by the same code and counted in the same metrics as outside
requests, so no separate load generator is needed.

With ``--shape`` the metrics take the shape of a cluster's usual set-ups (the query presets of
docs/metrics.md), for the same behaviour:

- ``default``: the above;
- ``kube-prometheus``: the same metric names labelled as a ServiceMonitor's scrape labels them,
  ``namespace``, ``service``, ``pod`` (``--pod``, by default ``<deployment>-<hash>-<suffix>``) and
  ``job``, with no ``deployment`` label;
- ``istio``: ``istio_requests_total{reporter, destination_workload, destination_workload_namespace,
  response_code}`` and ``istio_request_duration_milliseconds`` (buckets in milliseconds);
- ``otel``: only the histogram ``http_server_request_duration_seconds{k8s_namespace_name,
  k8s_deployment_name, http_request_method, http_response_status_code}`` (OpenTelemetry's
  semantic conventions and default buckets).

With ``--fake-deployments N`` (default shape only) the exposition also holds N synthetic services in the same
namespace, each with a ``svc-NNNN-stable`` and a ``svc-NNNN-canary`` deployment whose counters
grow steadily with time (see :func:`fake_profile`): for scale tests and benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import math
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psycopg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from psycopg import sql

from rollbackd.aiotasks import stop_tasks
from rollbackd.model import DEFAULT_BUCKETS_S

logger = logging.getLogger("sampleapp")

#: Most self-generated requests in flight; beyond it new ones are skipped (and logged once).
MAX_IN_FLIGHT = 10_000


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the service behaves now; switched as a whole through ``/control``."""

    error_rate: float = 0.0
    latency_ms: float = 20.0
    latency_jitter: float = 0.2
    ready_status: int = 200
    rps: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.error_rate <= 1:
            raise ValueError(f"error_rate must be within [0, 1], not {self.error_rate!r}")
        if not (self.latency_ms >= 0 and math.isfinite(self.latency_ms)):
            raise ValueError(f"latency_ms must be a finite number >= 0, not {self.latency_ms!r}")
        if not 0 <= self.latency_jitter <= 1:
            raise ValueError(f"latency_jitter must be within [0, 1], not {self.latency_jitter!r}")
        if not 100 <= self.ready_status <= 599:
            raise ValueError(f"ready_status must be an HTTP status, not {self.ready_status!r}")
        if not (0 <= self.rps <= 10_000):
            raise ValueError(f"rps must be within [0, 10000], not {self.rps!r}")

    def changed(self, changes: dict[str, object]) -> Behaviour:
        """A copy with ``changes`` applied; unknown keys or wrong types raise ``ValueError``."""
        known = {f.name: f.type for f in dataclasses.fields(self)}
        typed: dict[str, float | int] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown setting {name!r}; known: {sorted(known)}")
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, not {value!r}")
            if name == "ready_status":
                if value != int(value):
                    raise ValueError(f"ready_status must be an integer, not {value!r}")
                typed[name] = int(value)
            else:
                typed[name] = float(value)
        return dataclasses.replace(self, **typed)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


#: How often a flag kept in PostgreSQL, or the service's ConfigMap, is read, in seconds.
FLAG_POLL_S = 0.2
#: The ConfigMap key the service follows (``--config-url``).
PAYMENTS_TIMEOUT_KEY = "payments.timeout_ms"


@dataclass(slots=True)
class Payments:
    """The simulated payments call of ``/work``: its mean duration, and the timeout the service's
    ConfigMap sets now (``None``: no timeout)."""

    mean_ms: float
    timeout_ms: float | None = None

    def timed_out(self, rng: random.Random) -> bool:
        """Whether this request's call outlasts the timeout."""
        return self.timeout_ms is not None and rng.expovariate(1.0 / self.mean_ms) > self.timeout_ms

    def follow(self, data: object) -> None:
        """Take the timeout from a ConfigMap's ``data``."""
        value = data.get(PAYMENTS_TIMEOUT_KEY) if isinstance(data, dict) else None
        try:
            timeout = float(value) if value is not None else None
        except ValueError:
            timeout = None
        if timeout != self.timeout_ms:
            logger.info("%s now %s", PAYMENTS_TIMEOUT_KEY, "unset" if timeout is None else f"{timeout:g}")
        self.timeout_ms = timeout


@dataclass(slots=True)
class Feature:
    """The service's feature flag: its ``name``, whether it is ``enabled`` now, and the error
    rate of ``/work`` while it is."""

    name: str
    error_rate: float
    enabled: bool = False


@dataclass(frozen=True, slots=True)
class FakeProfile:
    """What one synthetic deployment serves: requests per second, failed fraction, and the
    cumulative fraction of requests per default latency bucket."""

    rps: float
    error_rate: float
    bucket_fractions: tuple[float, ...]
    mean_latency_s: float


_FAST = (0.0, 0.01, 0.05, 0.2, 0.6, 0.95, 0.99, 1.0, 1.0, 1.0, 1.0, 1.0)
_SLOW = (0.0, 0.0, 0.0, 0.01, 0.05, 0.2, 0.5, 0.8, 0.97, 1.0, 1.0, 1.0)


def fake_profile(index: int, side: str) -> FakeProfile:
    """The deterministic behaviour of ``svc-<index>-<side>``.

    Stable deployments serve 20-29 req/s with 0.2% errors and a P95 near 250 ms. Canaries serve
    2-4 req/s like their stable, except every tenth service (index ending in 9), whose canary
    fails 8% of its requests and has a P95 near 2.3 s.
    """
    if side == "stable":
        return FakeProfile(rps=20.0 + index % 10, error_rate=0.002, bucket_fractions=_FAST,
                           mean_latency_s=0.09)
    if index % 10 == 9:
        return FakeProfile(rps=2.0 + index % 3, error_rate=0.08, bucket_fractions=_SLOW,
                           mean_latency_s=0.9)
    return FakeProfile(rps=2.0 + index % 3, error_rate=0.002, bucket_fractions=_FAST,
                       mean_latency_s=0.09)


def fake_deployment_names(count: int) -> list[tuple[int, str, str]]:
    """``(index, side, deployment)`` of every synthetic deployment, stable then canary."""
    return [
        (i, side, f"svc-{i:04d}-{side}")
        for i in range(count)
        for side in ("stable", "canary")
    ]


class Exposition:
    """Renders the text exposition: the real metrics, with the synthetic deployments' samples
    written into the same families (a metric family may appear only once)."""

    def __init__(self, *, real: CollectorRegistry, namespace: str, fake_deployments: int,
                 started: float, head_start_s: float = 60.0) -> None:
        self._real = real
        self._started = started
        self._head_start_s = head_start_s
        bounds = [_le(b) for b in DEFAULT_BUCKETS_S]
        # Label sets are rendered once; only the values change from scrape to scrape.
        self._fakes: list[tuple[FakeProfile, str, str, list[str], str]] = []
        for index, side, deployment in fake_deployment_names(fake_deployments):
            labels = f'deployment="{_escape(deployment)}",namespace="{_escape(namespace)}"'
            self._fakes.append((
                fake_profile(index, side),
                f'http_requests_total{{code="200",{labels}}} ',
                f'http_requests_total{{code="500",{labels}}} ',
                [f'http_request_duration_seconds_bucket{{{labels},le="{le}"}} ' for le in bounds],
                labels,
            ))

    def render(self) -> bytes:
        elapsed = time.monotonic() - self._started + self._head_start_s
        lines: list[str] = []
        for family in self._real.collect():
            kind = family.type
            lines.append(f"# HELP {family.name}{'_total' if kind == 'counter' else ''} "
                         f"{_escape_help(family.documentation)}")
            lines.append(f"# TYPE {family.name}{'_total' if kind == 'counter' else ''} {kind}")
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
                lines.append(f"{sample.name}{{{labels}}} {_number(sample.value)}")
            if family.name == "http_requests":
                self._requests(lines, elapsed)
            elif family.name == "http_request_duration_seconds":
                self._durations(lines, elapsed)
        lines.append("")
        return "\n".join(lines).encode()

    def _requests(self, lines: list[str], elapsed: float) -> None:
        for profile, ok_prefix, failed_prefix, _, _ in self._fakes:
            total = profile.rps * elapsed
            failed = total * profile.error_rate
            lines.append(ok_prefix + _number(total - failed))
            lines.append(failed_prefix + _number(failed))

    def _durations(self, lines: list[str], elapsed: float) -> None:
        for profile, _, _, bucket_prefixes, labels in self._fakes:
            total = profile.rps * elapsed
            for prefix, fraction in zip(bucket_prefixes, profile.bucket_fractions, strict=True):
                lines.append(prefix + _number(total * fraction))
            lines.append(f"http_request_duration_seconds_count{{{labels}}} {_number(total)}")
            latency_sum = _number(total * profile.mean_latency_s)
            lines.append(f"http_request_duration_seconds_sum{{{labels}}} {latency_sum}")


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else repr(float(bound))


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n")


#: The metric shapes the app can expose (``--shape``).
SHAPES = ("default", "kube-prometheus", "istio", "otel")

#: Istio's default buckets of ``istio_request_duration_milliseconds``, in milliseconds.
ISTIO_BUCKETS_MS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
                    600000, 1800000, 3600000)
#: OpenTelemetry's advised buckets of ``http.server.request.duration``, in seconds.
OTEL_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)


def pod_name(deployment: str, rng: random.Random) -> str:
    """A pod name as a Deployment's ReplicaSet gives it: ``<deployment>-<hash>-<suffix>``."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    template_hash = "".join(rng.choice(alphabet) for _ in range(9))
    suffix = "".join(rng.choice(alphabet) for _ in range(5))
    return f"{deployment}-{template_hash}-{suffix}"


class Meter:
    """Records served requests in the metrics of one shape (see the module's docstring)."""

    def __init__(self, registry: CollectorRegistry, *, shape: str, namespace: str, deployment: str,
                 pod: str) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")
        self.shape = shape
        identity: dict[str, str]
        if shape == "default":
            identity = {"namespace": namespace, "deployment": deployment}
        elif shape == "kube-prometheus":
            identity = {"namespace": namespace, "service": deployment, "pod": pod, "job": deployment}
        elif shape == "istio":
            identity = {"reporter": "destination", "destination_workload_namespace": namespace,
                        "destination_workload": deployment}
        else:
            identity = {"k8s_namespace_name": namespace, "k8s_deployment_name": deployment,
                        "http_request_method": "GET"}
        self._identity = identity
        names = list(identity)
        self._requests: Counter | None = None
        self._scale = 1.0
        if shape == "istio":
            self._code = "response_code"
            self._requests = Counter("istio_requests", "Requests served.", [*names, self._code],
                                     registry=registry)
            self._duration = Histogram(
                "istio_request_duration_milliseconds", "Time to serve a request, in milliseconds.",
                names, buckets=ISTIO_BUCKETS_MS, registry=registry,
            )
            self._scale = 1000.0
            self._duration_labels: list[str] = names
        elif shape == "otel":
            self._code = "http_response_status_code"
            self._duration = Histogram(
                "http_server_request_duration_seconds", "Duration of HTTP server requests.",
                [*names, self._code], buckets=OTEL_BUCKETS_S, registry=registry,
            )
            self._duration_labels = [*names, self._code]
        else:
            self._code = "code"
            self._requests = Counter("http_requests", "Requests served.", [*names, self._code],
                                     registry=registry)
            self._duration = Histogram(
                "http_request_duration_seconds", "Time to serve a request.", names,
                buckets=[b for b in DEFAULT_BUCKETS_S if b != math.inf], registry=registry,
            )
            self._duration_labels = names
        # Expose every series from the start, as a long-running service would.
        self._series(200)

    def _series(self, status: int) -> tuple[Counter | None, Histogram]:
        labels = {**self._identity, self._code: str(status)}
        counter = self._requests.labels(**labels) if self._requests is not None else None
        histogram = self._duration.labels(**{name: labels[name] for name in self._duration_labels})
        return counter, histogram

    def record(self, status: int, seconds: float) -> None:
        counter, histogram = self._series(status)
        if counter is not None:
            counter.inc()
        histogram.observe(seconds * self._scale)


class SampleApp:
    """The service: its behaviour, metrics, and self-traffic task."""

    def __init__(self, *, namespace: str, deployment: str, behaviour: Behaviour,
                 fake_deployments: int = 0, seed: int | None = None, shape: str = "default",
                 pod: str | None = None, feature: Feature | None = None, admin_token: str | None = None,
                 flag_dsn: str | None = None, flag_table: str | None = None,
                 config_url: str | None = None, payments_mean_ms: float = 50.0) -> None:
        if fake_deployments and shape != "default":
            raise ValueError(f"synthetic deployments exist in the default shape only, not {shape!r}")
        self.namespace = namespace
        self.deployment = deployment
        self.behaviour = behaviour
        self.feature = feature
        self._admin_token = admin_token
        self._flag_dsn = flag_dsn
        self._flag_table = flag_table
        self._rng = random.Random(seed)
        self.pod = pod if pod is not None else pod_name(deployment, self._rng)
        self._rps_changed = asyncio.Event()
        self._in_flight: set[asyncio.Task[int]] = set()
        self._skipped = 0
        #: The ConfigMap followed (``--config-url``), and the payments call its data configures.
        self.config_url = config_url
        self.payments = Payments(payments_mean_ms)

        real = CollectorRegistry(auto_describe=True)
        self._meter = Meter(real, shape=shape, namespace=namespace, deployment=deployment, pod=self.pod)
        self.exposition = Exposition(
            real=real, namespace=namespace, fake_deployments=fake_deployments, started=time.monotonic(),
        )

    async def serve_work(self) -> int:
        """Serve one request the configured way and record it; returns the HTTP status."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        behaviour = self.behaviour
        spread = behaviour.latency_jitter
        delay_s = behaviour.latency_ms / 1000.0 * self._rng.uniform(1.0 - spread, 1.0 + spread)
        await asyncio.sleep(max(0.0, delay_s))
        feature = self.feature
        error_rate = feature.error_rate if feature is not None and feature.enabled else behaviour.error_rate
        failed = self._rng.random() < error_rate
        if self.config_url is not None and self.payments.timed_out(self._rng):
            failed = True
        status = 500 if failed else 200
        self._meter.record(status, loop.time() - started)
        return status

    def control(self, changes: dict[str, object]) -> Behaviour:
        self.behaviour = self.behaviour.changed(changes)
        self._rps_changed.set()
        logger.info("behaviour now %s", self.behaviour)
        return self.behaviour

    async def generate_traffic(self) -> None:
        """Serve ``rps`` requests per second to itself, evenly spaced, until cancelled."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            rps = self.behaviour.rps
            if rps <= 0:
                self._rps_changed.clear()
                await self._rps_changed.wait()
                next_at = loop.time()
                continue
            now = loop.time()
            if next_at - now > 0:
                self._rps_changed.clear()
                try:
                    await asyncio.wait_for(self._rps_changed.wait(), timeout=next_at - now)
                except TimeoutError:
                    pass
                else:
                    next_at = loop.time()
                    continue
            now = loop.time()
            if now - next_at > 1.0:
                next_at = now  # after a stall, do not burst to catch up
            while next_at <= now:
                self._spawn()
                next_at += 1.0 / rps

    def _spawn(self) -> None:
        if len(self._in_flight) >= MAX_IN_FLIGHT:
            self._skipped += 1
            if self._skipped == 1:
                logger.warning("more than %d self-generated requests in flight; skipping some", MAX_IN_FLIGHT)
            return
        task = asyncio.get_running_loop().create_task(self.serve_work())
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def stop_traffic(self) -> None:
        await stop_tasks(self._in_flight, failures="drop")

    # HTTP handlers

    async def handle_work(self, request: web.Request) -> web.Response:
        status = await self.serve_work()
        return web.json_response({"status": status, "deployment": self.deployment}, status=status)

    async def handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.exposition.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_readyz(self, request: web.Request) -> web.Response:
        status = self.behaviour.ready_status
        return web.json_response({"ready": 200 <= status < 300}, status=status)

    async def handle_control(self, request: web.Request) -> web.Response:
        if request.method == "POST":
            try:
                changes = await request.json()
            except ValueError:
                return web.json_response({"error": "body must be a JSON object"}, status=400)
            if not isinstance(changes, dict):
                return web.json_response({"error": "body must be a JSON object"}, status=400)
            try:
                self.control(changes)
            except ValueError as exc:
                return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.behaviour.as_dict())


    def _feature_doc(self) -> dict[str, object]:
        assert self.feature is not None
        return {"feature_name": self.feature.name, "enabled": self.feature.enabled}

    async def handle_set_feature(self, request: web.Request) -> web.Response:
        """``POST /api/admin/features`` ``{"feature_name": ..., "enabled": ...}``, bearer token."""
        if request.headers.get("Authorization") != f"Bearer {self._admin_token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be a JSON object"}, status=400)
        if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
            wanted = 'body must be {"feature_name": ..., "enabled": ...}'
            return web.json_response({"error": wanted}, status=400)
        if self.feature is None or body.get("feature_name") != self.feature.name:
            return web.json_response({"error": f"no feature {body.get('feature_name')!r}"}, status=404)
        self.feature.enabled = body["enabled"]
        logger.info("feature %s now %s", self.feature.name, "on" if self.feature.enabled else "off")
        return web.json_response(self._feature_doc())

    async def handle_get_feature(self, request: web.Request) -> web.Response:
        """``GET /api/admin/features/{name}``."""
        if request.headers.get("Authorization") != f"Bearer {self._admin_token}":
            return web.json_response({"error": "unauthorized"}, status=401)
        if self.feature is None or request.match_info["name"] != self.feature.name:
            return web.json_response({"error": f"no feature {request.match_info['name']!r}"}, status=404)
        return web.json_response(self._feature_doc())

    async def follow_flag_table(self) -> None:
        """Read the flag from its PostgreSQL table every :data:`FLAG_POLL_S` seconds; a failed
        read keeps the value last read."""
        if self.feature is None or self._flag_dsn is None or self._flag_table is None:
            raise RuntimeError("the flag table needs a feature, a DSN and a table")
        query = sql.SQL("SELECT enabled FROM {} WHERE name = %s").format(sql.Identifier(self._flag_table))
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._flag_dsn, autocommit=True) as conn:
                    while True:
                        row = await (await conn.execute(query, (self.feature.name,))).fetchone()
                        enabled = bool(row[0]) if row is not None else False
                        if enabled != self.feature.enabled:
                            logger.info("feature %s now %s", self.feature.name, "on" if enabled else "off")
                        self.feature.enabled = enabled
                        await asyncio.sleep(FLAG_POLL_S)
            except psycopg.Error as exc:
                logger.warning("cannot read the flag table: %s", exc)
                await asyncio.sleep(FLAG_POLL_S)

    async def follow_configmap(self) -> None:
        """Read the service's ConfigMap from ``config_url`` every :data:`FLAG_POLL_S` seconds; a
        failed read keeps the data last read."""
        if self.config_url is None:
            raise RuntimeError("following a ConfigMap needs its URL")
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    async with session.get(self.config_url) as response:
                        response.raise_for_status()
                        self.payments.follow((await response.json()).get("data"))
                except (aiohttp.ClientError, TimeoutError, ValueError, AttributeError) as exc:
                    logger.warning("cannot read the ConfigMap at %s: %s", self.config_url, exc)
                await asyncio.sleep(FLAG_POLL_S)


def make_app(sample: SampleApp) -> web.Application:
    app = web.Application()
    app.router.add_get("/work", sample.handle_work)
    app.router.add_get("/metrics", sample.handle_metrics)
    app.router.add_get("/readyz", sample.handle_readyz)
    app.router.add_route("GET", "/control", sample.handle_control)
    app.router.add_route("POST", "/control", sample.handle_control)
    if sample.feature is not None and sample._admin_token is not None:
        app.router.add_post("/api/admin/features", sample.handle_set_feature)
        app.router.add_get("/api/admin/features/{name}", sample.handle_get_feature)

    async def traffic(app: web.Application) -> AsyncIterator[None]:
        tasks = [asyncio.get_running_loop().create_task(sample.generate_traffic(), name="self-traffic")]
        if sample.feature is not None and sample._flag_dsn is not None:
            following = sample.follow_flag_table()
            tasks.append(asyncio.get_running_loop().create_task(following, name="flag-table"))
        if sample.config_url is not None:
            tasks.append(asyncio.get_running_loop().create_task(sample.follow_configmap(), name="configmap"))
        yield
        await stop_tasks(tasks)
        await sample.stop_traffic()

    app.cleanup_ctx.append(traffic)
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m rollbackd.demo.sampleapp", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--deployment", required=True, help="value of the 'deployment' label")
    parser.add_argument("--namespace", default="default", help="value of the 'namespace' label")
    parser.add_argument("--error-rate", type=float, default=0.0, help="fraction of /work requests failing")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="typical /work latency")
    parser.add_argument("--latency-jitter", type=float, default=0.2, help="latency spread, fraction of it")
    parser.add_argument("--ready-status", type=int, default=200, help="status of /readyz")
    parser.add_argument("--rps", type=float, default=0.0, help="self-generated /work requests per second")
    parser.add_argument("--fake-deployments", type=int, default=0, metavar="N",
                        help="also expose N synthetic services (svc-NNNN-stable / svc-NNNN-canary)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random generator")
    parser.add_argument("--shape", choices=SHAPES, default="default",
                        help="the metrics' names and labels (default: namespace and deployment labels)")
    parser.add_argument("--pod", default=None,
                        help="kube-prometheus shape: the pod label (default: <deployment>-<hash>-<suffix>)")
    parser.add_argument("--flag", default=None, metavar="NAME", help="a feature flag of the service")
    parser.add_argument("--flag-error-rate", type=float, default=0.3,
                        help="fraction of /work requests failing while the flag is on (default 0.3)")
    parser.add_argument("--flag-on", action="store_true", help="the flag is on at start")
    parser.add_argument("--admin-token-file", default=None, metavar="FILE",
                        help="serve the admin API of the flag, with the bearer token in FILE")
    parser.add_argument("--flag-dsn-file", default=None, metavar="FILE",
                        help="read the flag from PostgreSQL, with the DSN in FILE (and --flag-table)")
    parser.add_argument("--flag-table", default=None, metavar="TABLE",
                        help="the flags' table (name, enabled)")
    parser.add_argument("--config-url", default=None, metavar="URL",
                        help="follow the ConfigMap at URL (Kubernetes API): its payments.timeout_ms")
    parser.add_argument("--payments-mean-ms", type=float, default=50.0,
                        help="mean duration of the simulated payments call (default 50)")
    args = parser.parse_args(argv)
    if (args.admin_token_file or args.flag_dsn_file) and not args.flag:
        parser.error("--admin-token-file and --flag-dsn-file need --flag NAME")
    if bool(args.flag_dsn_file) != bool(args.flag_table):
        parser.error("--flag-dsn-file and --flag-table go together")
    return args


def _read(path: str | None) -> str | None:
    return None if path is None else Path(path).read_text(encoding="utf-8").strip()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    behaviour = Behaviour(
        error_rate=args.error_rate, latency_ms=args.latency_ms, latency_jitter=args.latency_jitter,
        ready_status=args.ready_status, rps=args.rps,
    )
    feature = None if args.flag is None else Feature(args.flag, args.flag_error_rate, enabled=args.flag_on)
    sample = SampleApp(namespace=args.namespace, deployment=args.deployment, behaviour=behaviour,
                       fake_deployments=args.fake_deployments, seed=args.seed, shape=args.shape,
                       pod=args.pod, feature=feature,
                       admin_token=_read(args.admin_token_file), flag_dsn=_read(args.flag_dsn_file),
                       flag_table=args.flag_table, config_url=args.config_url,
                       payments_mean_ms=args.payments_mean_ms)
    logger.info("serving %s/%s on %s:%d", args.namespace, args.deployment, args.host, args.port)
    web.run_app(make_app(sample), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
