"""Real processes for the demo, tests and benchmarks: sample apps and a Prometheus scraping them.

- :func:`free_port`, :func:`find_prometheus`;
- :func:`start_sample_app` / :func:`astart_sample_app` → :class:`SampleAppProcess`, a
  ``python -m rollbackd.demo.sampleapp`` child process (``control()`` / ``acontrol()`` switch its
  behaviour, ``stop()`` / ``astop()`` end it);
- :func:`start_prometheus` / :func:`astart_prometheus` → :class:`PrometheusServer`
  (``stop()``, ``start()`` / ``restart()`` on the same port and data, ``wait_for_scrapes()``).

Every child process writes its output to a log file (named in the errors when it does not come up),
runs in its own session, and listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

import aiohttp

import rollbackd

HOST = "127.0.0.1"

#: Where child processes run: the directory holding the ``rollbackd`` package, so that
#: ``python -m rollbackd...`` finds the same package as this process, installed or not.
_PACKAGE_PARENT = Path(rollbackd.__file__).resolve().parents[1]


class ProcessStartError(RuntimeError):
    """A helper process did not come up; the message holds the tail of its log."""


#: The kernel's range of ephemeral ports, where it picks the local port of every outgoing connection.
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
#: Ports below this are left to the machine's services.
_LOWEST_PORT = 20_000
_random = random.Random()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server started next.

    Picked at random outside the kernel's ephemeral range: a port the kernel hands out (bind to 0)
    comes from that range, where every outgoing connection on the machine takes its local port too,
    and under load one took the port between its pick and the server's bind (the suite's
    "address already in use" failures)."""
    low, high = _ephemeral_range()
    ranges = [(lo, hi) for lo, hi in ((_LOWEST_PORT, low - 1), (high + 1, 65_535)) if hi - lo >= 1_000]
    for _ in range(100):
        lo, hi = _random.choice(ranges) if ranges else (_LOWEST_PORT, 65_535)
        port = _random.randint(lo, hi)
        if _bindable(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # a crowded machine: the kernel's pick
        sock.bind((HOST, 0))
        picked: int = sock.getsockname()[1]
        return picked


def find_prometheus(configured: str | None = None) -> str | None:
    """The Prometheus server binary: ``configured`` (a path or a command name) if given, else
    ``prometheus`` on the PATH; ``None`` when it is not there or not executable."""
    return shutil.which(configured or "prometheus")


def _http_get(url: str, *, timeout_s: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _http_post_json(url: str, payload: dict[str, Any], *, timeout_s: float = 5.0) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}, method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class _Process:
    """A child process with its output in a log file; stopped with SIGTERM, then SIGKILL."""

    name = "process"

    def __init__(self, *, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready_url(self) -> str:
        raise NotImplementedError

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=_PACKAGE_PARENT, start_new_session=True,
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise ProcessStartError(
                f"{self.name} exited with {self.process.returncode}; log {self.log_path}:\n"
                f"{_tail(self.log_path)}"
            )

    def _ready(self, status: int, body: bytes) -> bool:
        return status == 200

    def wait_ready(self, *, timeout_s: float = 30.0) -> None:
        """Block until the process answers its readiness URL."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._check_alive()
            with contextlib.suppress(OSError):
                status, body = _http_get(self._ready_url(), timeout_s=2.0)
                if self._ready(status, body):
                    return
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"{self.name} not ready after {timeout_s:g}s; log {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    async def await_ready(self, *, timeout_s: float = 30.0) -> None:
        """Wait (without blocking the event loop) until the process answers its readiness URL."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as session:
            while True:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self._ready_url()) as response:
                        if self._ready(response.status, await response.read()):
                            return
                if loop.time() > deadline:
                    raise ProcessStartError(
                        f"{self.name} not ready after {timeout_s:g}s; log {self.log_path}:\n"
                        f"{_tail(self.log_path)}"
                    )
                await asyncio.sleep(0.1)

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``. Idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def astop(self, *, timeout_s: float = 10.0) -> None:
        """:meth:`stop` without blocking the event loop while waiting for the exit."""
        await asyncio.to_thread(self.stop, timeout_s=timeout_s)


class SampleAppProcess(_Process):
    """A ``python -m rollbackd.demo.sampleapp`` process (see :mod:`rollbackd.demo.sampleapp`)."""

    name = "sample app"

    def __init__(
        self,
        *,
        deployment: str,
        namespace: str = "default",
        port: int | None = None,
        rps: float = 0.0,
        error_rate: float = 0.0,
        latency_ms: float = 20.0,
        latency_jitter: float = 0.2,
        ready_status: int = 200,
        fake_deployments: int = 0,
        seed: int | None = None,
        log_dir: Path | None = None,
        shape: str = "default",
        pod: str | None = None,
        flag: str | None = None,
        flag_error_rate: float = 0.3,
        admin_token_file: Path | None = None,
        flag_dsn_file: Path | None = None,
        flag_table: str | None = None,
        config_url: str | None = None,
    ) -> None:
        self.deployment = deployment
        self.namespace = namespace
        self.port = port if port is not None else free_port()
        self.options: dict[str, object] = {
            "--rps": rps, "--error-rate": error_rate, "--latency-ms": latency_ms,
            "--latency-jitter": latency_jitter, "--ready-status": ready_status,
            "--fake-deployments": fake_deployments, "--shape": shape,
        }
        if pod is not None:
            self.options["--pod"] = pod
        if flag is not None:
            self.options.update({"--flag": flag, "--flag-error-rate": flag_error_rate})
        for option, value in (("--admin-token-file", admin_token_file), ("--flag-dsn-file", flag_dsn_file),
                              ("--flag-table", flag_table), ("--config-url", config_url)):
            if value is not None:
                self.options[option] = value
        self.seed = seed
        directory = log_dir if log_dir is not None else Path(tempfile.gettempdir())
        super().__init__(log_path=directory / f"sampleapp-{namespace}-{deployment}-{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port``, as a Prometheus scrape target."""
        return f"{HOST}:{self.port}"

    def _command(self) -> list[str]:
        command = [sys.executable, "-m", "rollbackd.demo.sampleapp", "--host", HOST, "--port", str(self.port),
                   "--deployment", self.deployment, "--namespace", self.namespace]
        for flag, value in self.options.items():
            command += [flag, str(value)]
        if self.seed is not None:
            command += ["--seed", str(self.seed)]
        return command

    def _ready_url(self) -> str:
        return f"{self.url}/metrics"

    def start(self) -> Self:
        """Start the process (not waiting for it); see :meth:`wait_ready`."""
        self._spawn()
        return self

    def control(self, **changes: float) -> dict[str, Any]:
        """Switch behaviour (``error_rate``, ``latency_ms``, ``latency_jitter``, ``ready_status``,
        ``rps``); returns the behaviour now in force."""
        status, body = _http_post_json(f"{self.url}/control", dict(changes))
        if status != 200:
            raise ValueError(f"sample app refused {changes}: {body}")
        result: dict[str, Any] = body
        return result

    async def acontrol(self, **changes: float) -> dict[str, Any]:
        """:meth:`control` without blocking the event loop."""
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5.0)) as session,
            session.post(f"{self.url}/control", json=dict(changes)) as response,
        ):
            body = await response.json()
            if response.status != 200:
                raise ValueError(f"sample app refused {changes}: {body}")
            result: dict[str, Any] = body
            return result


def start_sample_app(*, timeout_s: float = 30.0, **options: Any) -> SampleAppProcess:
    """Start a sample app (keyword arguments of :class:`SampleAppProcess`) and wait until its
    ``/metrics`` answers."""
    app = SampleAppProcess(**options).start()
    try:
        app.wait_ready(timeout_s=timeout_s)
    except BaseException:
        app.stop()
        raise
    return app


async def astart_sample_app(*, timeout_s: float = 30.0, **options: Any) -> SampleAppProcess:
    """:func:`start_sample_app` without blocking the event loop while waiting."""
    app = SampleAppProcess(**options).start()
    try:
        await app.await_ready(timeout_s=timeout_s)
    except BaseException:
        app.stop()
        raise
    return app


class PrometheusServer(_Process):
    """A Prometheus server scraping ``targets`` (``host:port`` strings) every
    ``scrape_interval_s``, with its TSDB in ``data_dir``. Stop and start it again on the same port
    and data to simulate an outage."""

    name = "prometheus"

    def __init__(
        self,
        *,
        targets: Sequence[str],
        data_dir: Path,
        port: int | None = None,
        scrape_interval_s: float = 1.0,
        binary: str | None = None,
        job: str = "sampleapp",
    ) -> None:
        found = find_prometheus(binary)
        if found is None:
            raise FileNotFoundError(
                f"no Prometheus binary {binary!r}" if binary else
                "no 'prometheus' binary on the PATH; install Prometheus to run this"
            )
        self.binary = found
        self.targets = tuple(targets)
        self.data_dir = data_dir
        self.port = port if port is not None else free_port()
        self.scrape_interval_s = scrape_interval_s
        self.job = job
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path = data_dir / "prometheus.yml"
        super().__init__(log_path=data_dir / "prometheus.log")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def _write_config(self) -> None:
        interval = f"{round(self.scrape_interval_s * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": "1m"},
            "scrape_configs": [{
                "job_name": self.job,
                "honor_labels": True,
                "static_configs": [{"targets": list(self.targets)}],
            }],
        }
        # JSON is YAML: no extra dependency needed to write the file.
        self.config_path.write_text(json.dumps(config, indent=2))

    def _command(self) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]

    def _ready_url(self) -> str:
        return f"{self.url}/-/ready"

    def start(self) -> Self:
        """Start the server (not waiting for it); see :meth:`wait_ready`."""
        self._write_config()
        self._spawn()
        return self

    def restart(self, *, timeout_s: float = 60.0) -> None:
        """Stop, start again on the same port with the same data, and wait until ready."""
        self.stop()
        self.start()
        self.wait_ready(timeout_s=timeout_s)

    async def arestart(self, *, timeout_s: float = 60.0) -> None:
        """:meth:`restart` without blocking the event loop while waiting."""
        self.stop()
        self.start()
        await self.await_ready(timeout_s=timeout_s)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector (plain urllib; for waiting and checks in tests)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        status, body = _http_get(url, timeout_s=10.0)
        document = json.loads(body)
        if status != 200 or document.get("status") != "success":
            raise RuntimeError(f"query {promql!r} failed: HTTP {status} {document}")
        result: list[dict[str, Any]] = document["data"]["result"]
        return result

    def _scrapes_query(self, scrapes: int) -> str:
        # Successful scrapes per target, as long as every target has at least ``scrapes``.
        return f'sum_over_time(up{{job="{self.job}"}}[10m]) >= {scrapes}'

    def wait_for_scrapes(self, *, scrapes: int = 2, timeout_s: float = 60.0) -> None:
        """Block until every target has been scraped successfully at least ``scrapes`` times
        (an ``increase()`` needs two samples in its window)."""
        deadline = time.monotonic() + timeout_s
        query = self._scrapes_query(scrapes)
        while True:
            self._check_alive()
            with contextlib.suppress(OSError, RuntimeError, ValueError):
                if len(self.query(query)) >= len(self.targets):
                    return
            if time.monotonic() > deadline:
                raise ProcessStartError(
                    f"Prometheus has not scraped {self.targets} {scrapes} times after {timeout_s:g}s; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.2)

    async def await_scrapes(self, *, scrapes: int = 2, timeout_s: float = 60.0) -> None:
        """:meth:`wait_for_scrapes` without blocking the event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        query = self._scrapes_query(scrapes)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10.0)) as session:
            while True:
                self._check_alive()
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                    async with session.post(f"{self.url}/api/v1/query", data={"query": query}) as response:
                        document = await response.json()
                    if len(document["data"]["result"]) >= len(self.targets):
                        return
                if loop.time() > deadline:
                    raise ProcessStartError(
                        f"Prometheus has not scraped {self.targets} {scrapes} times after {timeout_s:g}s"
                    )
                await asyncio.sleep(0.2)


def start_prometheus(
    *, targets: Sequence[str], data_dir: Path, scrapes: int = 2, timeout_s: float = 60.0, **options: Any
) -> PrometheusServer:
    """Start Prometheus (keyword arguments of :class:`PrometheusServer`), wait until it is ready
    and has scraped every target ``scrapes`` times (0: do not wait for scrapes)."""
    server = PrometheusServer(targets=targets, data_dir=data_dir, **options).start()
    try:
        server.wait_ready(timeout_s=timeout_s)
        if scrapes:
            server.wait_for_scrapes(scrapes=scrapes, timeout_s=timeout_s)
    except BaseException:
        server.stop()
        raise
    return server


async def astart_prometheus(
    *, targets: Sequence[str], data_dir: Path, scrapes: int = 2, timeout_s: float = 60.0, **options: Any
) -> PrometheusServer:
    """:func:`start_prometheus` without blocking the event loop while waiting."""
    server = PrometheusServer(targets=targets, data_dir=data_dir, **options).start()
    try:
        await server.await_ready(timeout_s=timeout_s)
        if scrapes:
            await server.await_scrapes(scrapes=scrapes, timeout_s=timeout_s)
    except BaseException:
        server.stop()
        raise
    return server
