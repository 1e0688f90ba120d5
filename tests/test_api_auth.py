"""Who may steer the daemon: bearer tokens on the write endpoints (and on reads when asked), a safe
refusal when no token is configured, and secrets kept out of logs and answers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy
from pydantic import ValidationError

from rollbackd.config.settings import ApiSettings, LogSettings, Settings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.auth import ApiAuth
from tests.test_daemon import ScriptedHealth, ScriptedMetrics, canary, logs_into, make_settings

SECRET = "s3cr3t-Token-7f1c9a"
OTHER = "n0t-the-Token-42ab"

WRITES = [
    ("POST", "/api/v1/freeze", None),
    ("DELETE", "/api/v1/freeze", None),
    ("POST", "/api/v1/dry-run", {"enabled": True}),
    ("POST", "/api/v1/targets/shop/checkout/hold", {"eta_s": 60, "reason": "hotfix"}),
    ("DELETE", "/api/v1/targets/shop/checkout/hold", None),
]
READS = ["/api/v1/targets", "/api/v1/targets/shop/checkout", "/", "/status"]
OPEN = ["/healthz", "/readyz", "/metrics"]


def with_api(api: ApiSettings) -> Settings:
    return make_settings(canary("checkout")).model_copy(update={"api": api})


class Client:
    """Talks to a running daemon, keeping every answer's text for the secret check."""

    def __init__(self, session: aiohttp.ClientSession, daemon: Daemon) -> None:
        self._session = session
        self._base = f"http://127.0.0.1:{daemon.port}"
        self.answers: list[str] = []

    async def call(
        self, method: str, path: str, body: object = None, *, token: str | None = None, scheme: str = "Bearer"
    ) -> tuple[int, Any, CIMultiDictProxy[str]]:
        headers = {"Authorization": f"{scheme} {token}"} if token is not None else {}
        async with self._session.request(method, self._base + path, json=body, headers=headers) as response:
            text = await response.text()
            self.answers.append(text + str(dict(response.headers)))
            parsed: Any = await response.json() if response.content_type == "application/json" else text
            return response.status, parsed, response.headers


@contextlib.asynccontextmanager
async def daemon_with(settings: Settings, *, auth: ApiAuth | None = None) -> AsyncIterator[Client]:
    async with (
        aiohttp.ClientSession() as session,
        Daemon(
            settings, metrics_source=ScriptedMetrics(), health_source=ScriptedHealth(), auth=auth
        ) as daemon,
    ):
        yield Client(session, daemon)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")  # as `kubectl create secret --from-file` may leave it
    return path


async def test_without_a_configured_token_writes_are_refused_and_say_how_to_configure_one() -> None:
    async with daemon_with(with_api(ApiSettings())) as client:
        for method, path, body in WRITES:
            status, answer, _ = await client.call(method, path, body, token="anything")
            assert status == 403, (method, path)
            assert "api.token_file" in answer["error"]
            assert "api.token_env" in answer["error"]
        for path in [*READS, *OPEN]:
            status, _, _ = await client.call("GET", path)
            assert status in (200, 503), path  # /readyz may not be ready yet
        _, targets, _ = await client.call("GET", "/api/v1/targets")
        assert targets["freeze"] is False
        assert targets["dry_run"] is False


async def test_a_token_from_a_file_opens_the_write_endpoints(token_file: Path) -> None:
    async with daemon_with(with_api(ApiSettings(token_file=str(token_file)))) as client:
        status, answer, headers = await client.call("POST", "/api/v1/freeze")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'Bearer realm="rollbackd"'
        assert "Bearer" in answer["error"]
        status, _, headers = await client.call("POST", "/api/v1/freeze", token=OTHER)
        assert status == 401
        assert 'error="invalid_token"' in headers["WWW-Authenticate"]
        for wrong in (SECRET[:-1], SECRET + "x", SECRET.upper(), ""):
            status, _, _ = await client.call("POST", "/api/v1/freeze", token=wrong)
            assert status == 401, wrong
        status, _, _ = await client.call("POST", "/api/v1/freeze", token=SECRET, scheme="Basic")
        assert status == 401
        _, targets, _ = await client.call("GET", "/api/v1/targets")
        assert targets["freeze"] is False  # nothing refused changed anything

        for method, path, body in WRITES:
            status, _, _ = await client.call(method, path, body, token=SECRET)
            assert status == 200, (method, path)
        status, flags, _ = await client.call("POST", "/api/v1/freeze", token=SECRET, scheme="bearer")
        assert status == 200
        assert (flags["freeze"], flags["dry_run"]) == (True, True)
        assert flags["freeze_set"]["by"] == "api-token"  # the token's name, for the audit trail


async def test_a_rotated_token_file_takes_effect_without_a_restart(token_file: Path) -> None:
    async with daemon_with(with_api(ApiSettings(token_file=str(token_file)))) as client:
        assert (await client.call("POST", "/api/v1/freeze", token=SECRET))[0] == 200
        await asyncio.to_thread(token_file.write_text, OTHER)
        assert (await client.call("POST", "/api/v1/freeze", token=SECRET))[0] == 401
        assert (await client.call("POST", "/api/v1/freeze", token=OTHER))[0] == 200
        await asyncio.to_thread(token_file.unlink)  # gone: refused, never open
        status, answer, _ = await client.call("POST", "/api/v1/freeze", token=OTHER)
        assert status == 403
        assert "no API token is configured" in answer["error"]


async def test_a_token_from_the_environment() -> None:
    api = ApiSettings(token_env="ROLLBACKD_TEST_API_TOKEN")
    auth = ApiAuth.from_settings(api, environ={"ROLLBACKD_TEST_API_TOKEN": f"  {SECRET}\n"})
    async with daemon_with(with_api(api), auth=auth) as client:
        assert (await client.call("POST", "/api/v1/dry-run", {"enabled": True}))[0] == 401
        assert (await client.call("POST", "/api/v1/dry-run", {"enabled": True}, token=OTHER))[0] == 401
        assert (await client.call("POST", "/api/v1/dry-run", {"enabled": True}, token=SECRET))[0] == 200
    empty = ApiAuth.from_settings(api, environ={"ROLLBACKD_TEST_API_TOKEN": ""})
    assert empty.token() is None
    assert ApiAuth.from_settings(api, environ={}).token() is None


async def test_protected_reads_need_the_token_but_probes_and_metrics_stay_open(token_file: Path) -> None:
    async with daemon_with(with_api(ApiSettings(token_file=str(token_file), protect_reads=True))) as client:
        for path in READS:
            assert (await client.call("GET", path))[0] == 401, path
            assert (await client.call("GET", path, token=OTHER))[0] == 401, path
            assert (await client.call("GET", path, token=SECRET))[0] == 200, path
        for path in OPEN:
            assert (await client.call("GET", path))[0] in (200, 503), path
        assert (await client.call("POST", "/api/v1/freeze"))[0] == 401


async def test_reads_are_open_by_default(token_file: Path) -> None:
    async with daemon_with(with_api(ApiSettings(token_file=str(token_file)))) as client:
        for path in READS:
            assert (await client.call("GET", path))[0] == 200, path


async def test_unauthenticated_writes_only_when_explicitly_allowed() -> None:
    async with daemon_with(with_api(ApiSettings(allow_unauthenticated_writes=True))) as client:
        status, flags, _ = await client.call("POST", "/api/v1/freeze")
        assert status == 200
        assert flags["freeze"] is True


async def test_secrets_never_appear_in_logs_or_answers(
    token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    settings = with_api(ApiSettings(token_file=str(token_file), protect_reads=True))
    with logs_into(stream, LogSettings(level="DEBUG", format="json")):
        logging.getLogger().addHandler(caplog.handler)  # the daemon's JSON lines and the raw records
        async with daemon_with(settings) as client:
            for method, path, body in WRITES:
                await client.call(method, path, body)
                await client.call(method, path, body, token=OTHER)
                await client.call(method, path, body, token=SECRET)
            for path in [*READS, *OPEN]:
                await client.call("GET", path, token=OTHER)
                await client.call("GET", path, token=SECRET)
    refused = [r for r in caplog.records if r.getMessage().startswith("API request refused")]
    assert refused  # the refusals were logged ...
    logged = stream.getvalue() + caplog.text + "".join(str(vars(record)) for record in caplog.records)
    for secret in (SECRET, OTHER):  # ... without the configured or the presented token
        assert secret not in logged
        assert all(secret not in answer for answer in client.answers)
    assert "wrong token" in logged


def test_one_token_source_at_a_time() -> None:
    with pytest.raises(ValidationError, match="token_file or token_env"):
        ApiSettings(token_file="/run/secrets/token", token_env="API_TOKEN")
    with pytest.raises(ValidationError):
        ApiSettings(token_env="not a name")
