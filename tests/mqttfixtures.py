"""A private Mosquitto broker for tests, which a test may stop and start again, and a subscriber.

``mosquitto`` (the fixture) starts ``mosquitto`` on a free loopback port with persistence in the
test's temporary directory, so retained messages and persistent sessions survive a restart, as on
a real broker. Tests skip with a reason when the binary is missing or does not start.

Use the fixtures by importing them into a test module (``from tests.mqttfixtures import
mosquitto``) or by listing ``"tests.mqttfixtures"`` in ``pytest_plugins``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiomqtt
import pytest

# free_port is re-exported for the tests that start a broker of their own.
from rollbackd.demo.processes import free_port as free_port
from rollbackd.events.mqtt import MqttOptions, Topics

#: How long mosquitto may take to listen (a loaded machine starts processes slowly).
START_TIMEOUT_S = 30.0


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Mosquitto:
    """A ``mosquitto`` process on ``127.0.0.1:port``; :meth:`stop` and :meth:`start` it at will."""

    binary: str
    directory: Path
    port: int = field(default_factory=free_port)
    #: Configuration after the plain listener's (e.g. a second, TLS listener).
    extra_config: str = ""
    #: Security settings per listener (needed when ``extra_config`` adds a differently secured one).
    per_listener_settings: bool = False
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    @property
    def options(self) -> MqttOptions:
        return MqttOptions(hostname="127.0.0.1", port=self.port, timeout_s=5.0, keepalive_s=10)

    @property
    def log(self) -> str:
        path = self.directory / "mosquitto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> Path:
        lines = [
            f"per_listener_settings {'true' if self.per_listener_settings else 'false'}",
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self.directory}/",
            f"log_dest file {self.directory / 'mosquitto.log'}",
            "log_type all",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it drops to 'mosquitto', who cannot write here
        path = self.directory / "mosquitto.conf"
        path.write_text("\n".join(lines) + "\n" + self.extra_config)
        return path

    def start_blocking(self) -> None:
        config = self._write_config()
        self.process = subprocess.Popen(
            [self.binary, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts(self.port):
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                self.process = None
                raise RuntimeError(f"mosquitto exited at start: {err.strip()} {self.log[-500:]}")
            if time.monotonic() > deadline:
                self.stop_blocking()
                raise RuntimeError(f"mosquitto did not listen on {self.port} within {START_TIMEOUT_S}s")
            time.sleep(0.02)

    def stop_blocking(self, *, kill: bool = False) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()

    async def start(self) -> None:
        await asyncio.to_thread(self.start_blocking)

    async def stop(self) -> None:
        """Stop the broker cleanly (it saves retained messages and sessions)."""
        await asyncio.to_thread(self.stop_blocking)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private broker, started; stopped at the end of the test."""
    binary = shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )
    if binary is None:
        pytest.skip("the mosquitto binary is not installed (apt-get install mosquitto)")
    directory = tmp_path / "mosquitto"
    directory.mkdir()
    broker = Mosquitto(binary=binary, directory=directory)
    try:
        broker.start_blocking()
    except RuntimeError as exc:
        pytest.skip(f"mosquitto cannot be started here: {exc}")
    yield broker
    broker.stop_blocking()


@pytest.fixture
def topics() -> Topics:
    """A topic prefix of this test's own."""
    return Topics(prefix=f"test-{uuid.uuid4().hex[:12]}")


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """Collects the messages of ``topic_filter`` from the broker; reconnects when it goes away.

    With ``session`` (a client id), the session is persistent (clean_session false), so QoS 1
    messages published while the subscriber is disconnected are kept for it by the broker.
    """

    def __init__(self, options: MqttOptions, topic_filter: str, *, session: str | None = None) -> None:
        self._options = options
        self._filter = topic_filter
        self._session = session
        self.messages: list[Received] = []
        self.subscribed = asyncio.Event()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run(), name="test:mqtt-subscriber")
        async with asyncio.timeout(10):
            await self.subscribed.wait()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    self._options.hostname,
                    self._options.port,
                    identifier=self._session,
                    clean_session=self._session is None,
                    timeout=5,
                ) as client:
                    await client.subscribe(self._filter, qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        self.messages.append(Received(str(message.topic), payload, bool(message.retain)))
                        self._changed.set()
            except aiomqtt.MqttError:
                self.subscribed.clear()
                await asyncio.sleep(0.1)

    async def wait_for(self, count: int, *, timeout_s: float = 20.0) -> list[Received]:
        """The first ``count`` messages, waiting for them up to ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self.messages) < count:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"{len(self.messages)} of {count} messages on {self._filter} after {timeout_s}s")
        return self.messages[:count]


@contextlib.asynccontextmanager
async def subscribed(
    options: MqttOptions, topic_filter: str, *, session: str | None = None
) -> AsyncIterator[Subscriber]:
    async with Subscriber(options, topic_filter, session=session) as subscriber:
        yield subscriber
