"""The API and the daemon survive any request: bounded durations and times, clear 400s for hostile
bodies, queries and headers, one target's failing evaluation isolated from the others, log lines
that outside text cannot break, silent clients cut, refusals logged at a limited rate."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from rollbackd.actions.base import ChangeRecorder, Progress
from rollbackd.config.settings import LogSettings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.auth import REFUSAL_LOG_EVERY_S, ApiAuth
from rollbackd.daemon.http import IDLE_TIMEOUT_S, HttpContext, HttpServer, make_app
from rollbackd.daemon.logs import CONTINUATION
from rollbackd.daemon.metrics import DaemonMetrics
from rollbackd.daemon.state import DaemonState
from rollbackd.daemon.switches import SwitchBoard
from rollbackd.decision.annotations import ETA_ANNOTATION, AnnotationError, context_from_annotations
from rollbackd.decision.facts import ClusterFacts, cluster_facts
from rollbackd.decision.rails import MAX_HOLD_S
from rollbackd.model import Hold, Strategy
from rollbackd.params import TargetParams
from tests.test_daemon import (
    HEALTHY,
    INTERVAL_S,
    SEVERE,
    Api,
    ScriptedHealth,
    ScriptedMetrics,
    canary,
    logs_into,
    make_settings,
)
from tests.test_daemon_rollbacks import ScriptedAction, ScriptedTargets

HOLD = "/api/v1/targets/shop/checkout/hold"
SECRET = "s3cr3t-Token-7f1c9a"


async def raw_request(port: int, request: bytes, *, timeout_s: float = 10.0) -> tuple[int, bytes]:
    """Send ``request`` as it is over a plain socket; the status code and the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout_s)
    finally:
        writer.close()
        await writer.wait_closed()
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", answer)
    return (int(match.group(1)) if match else 0), answer


def post(path: str, body: bytes, *, content_type: bytes = b"application/json", headers: bytes = b"") -> bytes:
    return (
        b"POST " + path.encode() + b" HTTP/1.1\r\nHost: rollbackd\r\nConnection: close\r\n"
        b"Content-Type: " + content_type + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n"
        + headers + b"\r\n" + body
    )


def get(path: str, *, headers: bytes = b"") -> bytes:
    head = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: rollbackd\r\nConnection: close\r\n"
    return head + headers + b"\r\n"


def error_of(answer: bytes) -> str:
    """The ``error`` text of a JSON error answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head, answer[:300]
    message = json.loads(body)["error"]
    assert isinstance(message, str)
    return message


# --- defect 2: a huge eta_s, and the daemon survives one target's failure -------------------------


@pytest.mark.looptime
async def test_a_hold_of_3e11_seconds_is_refused_and_the_daemon_goes_on() -> None:
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
    ) as daemon:
        api = Api(session, daemon)
        status, body = await api.call("POST", HOLD, {"eta_s": 3e11, "reason": "hotfix"})
        assert status == 400
        assert "eta_s" in body["error"]
        assert "30 days" in body["error"]
        assert (await api.target())["hold"] is None

        # The largest hold accepted is 30 days; the ticks and their events go on with it.
        status, body = await api.call("POST", HOLD, {"eta_s": 30 * 86400, "reason": "hotfix"})
        assert status == 200
        assert body["hold"]["remaining_s"] == pytest.approx(30 * 86400, abs=INTERVAL_S)
        ticks = daemon.ticks
        await asyncio.sleep(3 * INTERVAL_S)
        assert daemon.ticks >= ticks + 2
        assert daemon.alive
        assert await api.metric("rollbackd_tick_errors_total", step="decide") == 0


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("eta", "why"),
    [
        (b"1e400", "a float beyond the range of doubles (infinity once parsed)"),
        (b"-1e400", "minus infinity"),
        (b"1" + b"0" * 400, "an integer float() cannot convert"),
        (b"9" * 5000, "an integer with more digits than Python converts"),
        (b"NaN", "not a number"),
        (b"0", "zero"),
        (b"-5", "negative"),
        (b'"300"', "a string where a number belongs"),
        (b"true", "a boolean"),
        (b"[300]", "a list"),
    ],
)
async def test_an_eta_s_out_of_bounds_or_of_the_wrong_type_answers_400(eta: bytes, why: str) -> None:
    async with Daemon(
        make_settings(), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
    ) as daemon:
        status, answer = await raw_request(daemon.port, post(HOLD, b'{"eta_s": ' + eta + b"}"))
        assert status == 400, (why, answer[:300])
        assert "eta_s" in error_of(answer), why
        assert daemon.alive


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"[" * 30_000 + b"]" * 30_000, b"application/json"),  # nested deeper than the parser goes
        (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, b"application/json"),
        (b'{"eta_s": 300}', b"application/json; charset=no-such-charset"),
        (b'{"eta_s": 300, "reason": "\xff\xfe"}', b"application/json"),  # not UTF-8
        (b"\x00\x01\x02", b"application/json"),
        (b"", b"application/json"),
    ],
)
async def test_bodies_that_are_not_json_objects_answer_400(body: bytes, content_type: bytes) -> None:
    async with Daemon(
        make_settings(), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
    ) as daemon:
        for path in (HOLD, "/api/v1/dry-run"):
            status, answer = await raw_request(daemon.port, post(path, body, content_type=content_type))
            assert status == 400, answer[:300]
            assert "the body must be" in error_of(answer)


@dataclass
class OneBadTarget(ScriptedTargets):
    """The cluster of :class:`ScriptedTargets`, but ``bad`` gets facts no decision can be made from
    (a hold without an end: the framework cannot say how long it runs) — a defect in one target's
    evaluation, as any could be."""

    bad: str = "shop/cart"
    starts: list[str] = field(default_factory=list)

    async def facts(self, params: TargetParams, *, loop_now: float, fresh: bool = False) -> ClusterFacts:
        facts = await super().facts(params, loop_now=loop_now, fresh=fresh)
        if params.key == self.bad:
            return ClusterFacts(hold=Hold(until=math.inf, reason="fix-forward", set_at=loop_now))
        return facts

    def action(
        self, params: TargetParams, *, bad_revision: int | None = None, why: object = None
    ) -> ScriptedAction:
        self.starts.append(params.key)
        return super().action(params, bad_revision=bad_revision)


@pytest.mark.looptime
async def test_one_target_whose_evaluation_raises_does_not_stop_the_others_or_the_daemon(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="rollbackd")
    metrics = ScriptedMetrics(SEVERE)
    cluster = OneBadTarget()
    settings = make_settings(canary("cart"), canary("checkout"))
    async with aiohttp.ClientSession() as session, Daemon(
        settings, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
    ) as daemon:
        api = Api(session, daemon)
        await asyncio.sleep(6 * INTERVAL_S)
        # The daemon lives, serves and keeps its state; the healthy target was judged and rolled back.
        assert daemon.alive
        assert daemon.ticks >= 6
        status, _ = await api.call("GET", "/healthz")
        assert status == 200
        checkout = await api.target("shop/checkout")
        assert checkout["last_rollback"]["outcome"] == "immediate"
        assert cluster.starts == ["shop/checkout"]
        assert cluster.runs == [False]
        # The failing one is skipped every tick, counted, and logged with its key.
        errors = await api.metric("rollbackd_tick_errors_total", step="decide")
        assert errors >= 6
        failures = [r for r in caplog.records if r.getMessage().startswith("deciding failed")]
        assert len(failures) == errors
        assert {r.__dict__["target"] for r in failures} == {"shop/cart"}
        assert all(r.exc_info for r in failures)

        # The state kept across the failures: a hold set before is still there afterwards.
        status, _ = await api.call("POST", "/api/v1/targets/shop/checkout/hold", {"eta_s": 600})
        assert status == 200
        await asyncio.sleep(2 * INTERVAL_S)
        assert (await api.target("shop/checkout"))["hold"]["reason"] == "fix-forward"
        assert daemon.alive


@pytest.mark.looptime
async def test_a_crashing_dry_run_plan_does_not_end_the_daemon(caplog: pytest.LogCaptureFixture) -> None:
    class CrashingPlan(ScriptedAction):
        async def run(self, *, dry_run: bool, recorder: ChangeRecorder | None = None,
                      progress: Progress | None = None) -> Any:
            raise RuntimeError("the plan broke")

    @dataclass
    class Targets(ScriptedTargets):
        def action(
            self, params: TargetParams, *, bad_revision: int | None = None, why: object = None
        ) -> ScriptedAction:
            return CrashingPlan(self)

    caplog.set_level(logging.ERROR, logger="rollbackd")
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(dry_run=True),
        metrics_source=ScriptedMetrics(SEVERE),
        health_source=ScriptedHealth(),
        targets=Targets(),
    ) as daemon:
        await asyncio.sleep(4 * INTERVAL_S)
        assert daemon.alive
        status, _ = await Api(session, daemon).call("GET", "/healthz")
        assert status == 200
    assert any(r.getMessage() == "dry-run plan crashed" for r in caplog.records)


@pytest.mark.looptime
async def test_a_hold_reason_with_a_lone_surrogate_is_answered_not_a_500() -> None:
    async with Daemon(
        make_settings(), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
    ) as daemon:
        status, answer = await raw_request(daemon.port, post(HOLD, b'{"eta_s": 60, "reason": "\\ud800x"}'))
        assert status == 200, answer[:300]
        for path in ("/api/v1/targets", "/api/v1/targets/shop/checkout"):
            status, answer = await raw_request(daemon.port, get(path))
            assert status == 200, answer[:300]
            assert b'"reason":"\\ud800x"' in answer  # the same escape as sent
        status, answer = await raw_request(daemon.port, get("/"))
        assert status == 200, answer[:300]
        assert b"\\ud800x" in answer


@pytest.mark.parametrize(
    "eta", ["99999999h", "9" * 5000 + "s", "9999-12-31T23:59:59Z", "2027-02-01T00:00:00Z"]
)
def test_a_fix_forward_annotation_beyond_30_days_is_an_annotation_problem(eta: str) -> None:
    wall = datetime(2026, 12, 1, tzinfo=UTC)
    with pytest.raises(AnnotationError, match="at most 30 days"):
        context_from_annotations({ETA_ANNOTATION: eta}, wall_now=wall, loop_now=1000.0)
    # Through the cluster facts: reported as a problem, no hold, nothing raised.
    facts = cluster_facts(
        Strategy.CANARY,
        candidate={"metadata": {"annotations": {ETA_ANNOTATION: eta}}},
        wall_now=wall,
        loop_now=1000.0,
    )
    assert facts.hold is None
    assert any("at most 30 days" in problem for problem in facts.problems)


def test_a_fix_forward_annotation_long_passed_counts_as_passed_30_days_ago() -> None:
    wall = datetime(2026, 12, 1, tzinfo=UTC)
    annotations = {ETA_ANNOTATION: "0001-01-01T00:00:00Z"}
    context = context_from_annotations(annotations, wall_now=wall, loop_now=1000.0)
    assert context.hold is not None
    assert context.hold.until == 1000.0 - MAX_HOLD_S


# --- defect 9: small ones ------------------------------------------------------------------------


@pytest.mark.looptime
@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("since=999999999999999d", "at most 36500d"),
        ("since=1" + "0" * 400 + "s", "neither a duration"),
        ("since=0001-01-01T00:00:00%2B01:00", "between the years 1900 and 9998"),
        ("since=9999-12-31T23:59:59-12:00", "between the years 1900 and 9998"),
        ("since=%FF%FE", "neither a duration"),
        ("limit=" + "9" * 5000, "limit must be a whole number from 1 to 100000"),
        ("limit=1e3", "limit must be a whole number from 1 to 100000"),
        ("limit=0", "limit must be a whole number from 1 to 100000"),
        ("target=%00", "is not a target"),
    ],
)
async def test_history_queries_out_of_range_answer_400(query: str, expected: str) -> None:
    async def history(target: str | None, since: object, limit: int) -> list[Any]:
        return []

    state = DaemonState(make_settings())
    context = HttpContext(
        state=state,
        metrics=DaemonMetrics(),
        clock=asyncio.get_running_loop().time,
        alive=lambda: True,
        ready=lambda: True,
        ticks=lambda: 1,
        switches=SwitchBoard.local(state, loop_clock=asyncio.get_running_loop().time),
        history=history,
    )
    async with HttpServer(make_app(context), host="127.0.0.1", port=0) as server:
        status, answer = await raw_request(server.port, get("/api/v1/history?" + query))
        assert status == 400, answer[:300]
        assert expected in error_of(answer)
        status, _ = await raw_request(server.port, get("/api/v1/history?since=36500d&limit=100000"))
        assert status == 200


async def test_an_authorization_header_that_is_not_utf8_is_refused_with_401() -> None:
    settings = make_settings()
    auth = ApiAuth(token=lambda: SECRET)
    async with Daemon(
        settings, metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth(), auth=auth
    ) as daemon:
        for header in (b"Bearer \xff\xfe\x80", b"\xff\xfe \xc3\x28", b"Bearer " + SECRET.encode() + b"\xff"):
            request = post("/api/v1/freeze", b"", headers=b"Authorization: " + header + b"\r\n")
            status, answer = await raw_request(daemon.port, request)
            assert status == 401, answer[:300]
        good = b"Authorization: Bearer " + SECRET.encode() + b"\r\n"
        status, _ = await raw_request(daemon.port, post("/api/v1/freeze", b"", headers=good))
        assert status == 200


@pytest.mark.looptime
async def test_a_hold_reason_cannot_forge_a_text_log_line() -> None:
    stream = io.StringIO()
    forged = "2026-01-01 00:00:00,000 WARNING rollbackd.daemon.app: rollback decision: forged"
    reason = f"hotfix\n{forged}\r\u2028x"
    with logs_into(stream, LogSettings(level="INFO", format="text")):
        async with aiohttp.ClientSession() as session, Daemon(
            make_settings(), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
        ) as daemon:
            status, _ = await Api(session, daemon).call("POST", HOLD, {"eta_s": 60, "reason": reason})
            assert status == 200
    lines = stream.getvalue().splitlines()
    # The warning (reason as a field) and the audit line (reason in the message): one line each.
    held = [line for line in lines if "fix-forward hold set" in line]
    assert len(held) == 2
    assert all("forged" in line for line in held)
    assert not any(line.startswith("2026-01-01") for line in lines)


def test_text_logs_escape_control_characters_and_indent_tracebacks() -> None:
    stream = io.StringIO()
    with logs_into(stream, LogSettings(level="INFO", format="text")):
        log = logging.getLogger("rollbackd.test")
        log.warning("path %s", "/a\nb\x1b[31m\udcff", extra={"why": "c\u2028d\x85"})
        try:
            raise ValueError("boom\n2026-01-01 00:00:00,000 ERROR forged: line")
        except ValueError:
            log.exception("it failed: %s", "x\ry")
    first, second, *traceback = stream.getvalue().split("\n")[:-1]
    assert first.endswith('path /a\\nb\\x1b[31m\\udcff why="c\\u2028d\\x85"')
    assert second.endswith("it failed: x\\ry")
    assert traceback
    assert all(line.startswith(CONTINUATION) for line in traceback)
    assert f"{CONTINUATION}2026-01-01 00:00:00,000 ERROR forged: line" in traceback


def test_json_logs_stay_one_line_with_separators_and_surrogates() -> None:
    stream = io.StringIO()
    with logs_into(stream, LogSettings(level="INFO", format="json")):
        logging.getLogger("rollbackd.test").warning("a\u2028b\x85c", extra={"path": "/\udcff"})
    text = stream.getvalue()
    (line,) = text.splitlines()
    entry = json.loads(line)
    assert entry["msg"] == "a\u2028b\x85c"
    assert entry["path"] == "/\udcff"


@pytest.mark.looptime
async def test_refused_writes_are_logged_at_a_limited_rate(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="rollbackd")
    auth = ApiAuth(token=lambda: SECRET)
    async with aiohttp.ClientSession() as session, Daemon(
        make_settings(), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth(), auth=auth
    ) as daemon:
        base = f"http://127.0.0.1:{daemon.port}"
        for i in range(100):
            headers = {"Authorization": "Bearer wrong"} if i % 2 else {}
            async with session.post(base + "/api/v1/freeze", headers=headers) as response:
                assert response.status == 401
        await asyncio.sleep(REFUSAL_LOG_EVERY_S)
        async with session.post(base + "/api/v1/freeze") as response:
            assert response.status == 401
    refused = [r for r in caplog.records if r.getMessage().startswith("API request refused")]
    # One line per reason at first, then one per reason and 10 s, telling how many were left out.
    assert [(r.getMessage(), r.__dict__["suppressed"]) for r in refused] == [
        ("API request refused: no bearer token", 0),
        ("API request refused: wrong token", 0),
        ("API request refused: no bearer token", 49),
    ]
    assert refused[0].__dict__["path"] == "/api/v1/freeze"


@pytest.mark.looptime
async def test_malformed_requests_are_logged_at_a_limited_rate_without_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    malformed = [
        b"GET / HTTP/1.1\r\nHost: rollbackd\r\nAuthorization: \x00\r\n\r\n",  # a NUL in a header
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: rollbackd\r\n\r\n",  # a line too long
        b"GET / HTTP/1.1\r\nHost: rollbackd\r\nBad Header\r\n\r\n",
    ]
    async with Daemon(
        make_settings(), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
    ) as daemon:
        for i in range(30):
            status, answer = await raw_request(daemon.port, malformed[i % len(malformed)])
            assert status in (400, 414), answer[:300]
        await asyncio.sleep(10)
        status, _ = await raw_request(daemon.port, malformed[0])
        assert status == 400
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO]
    lines = [r for r in caplog.records if r.getMessage().startswith("malformed request refused")]
    assert [r.__dict__["suppressed"] for r in lines] == [0, 29]


# --- connections that send nothing ----------------------------------------------------------------


@pytest.fixture
async def quick_server() -> AsyncIterator[HttpServer]:
    """An HTTP server of the daemon's app with an idle timeout of half a second."""
    state = DaemonState(make_settings())
    context = HttpContext(
        state=state,
        metrics=DaemonMetrics(),
        clock=asyncio.get_running_loop().time,
        alive=lambda: True,
        ready=lambda: True,
        ticks=lambda: 1,
        switches=SwitchBoard.local(state, loop_clock=asyncio.get_running_loop().time),
    )
    async with HttpServer(make_app(context), host="127.0.0.1", port=0, idle_timeout_s=0.5) as server:
        yield server


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: rollbackd\r\nX-Slow: "])
async def test_a_client_that_sends_no_complete_request_head_is_cut(
    quick_server: HttpServer, sent: bytes
) -> None:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", quick_server.port)
    try:
        started = loop.time()
        writer.write(sent)
        answer = await asyncio.wait_for(reader.read(), timeout=10)  # bounded: fails rather than hangs
        elapsed = loop.time() - started
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer == b""  # closed without an answer
    assert 0.3 <= elapsed < 5


async def test_a_client_that_sends_its_request_in_time_is_answered(quick_server: HttpServer) -> None:
    status, answer = await raw_request(quick_server.port, get("/healthz"))
    assert status == 200, answer[:300]


@pytest.mark.looptime
async def test_the_daemon_cuts_a_silent_connection_after_its_idle_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with Daemon(
        make_settings(), metrics_source=ScriptedMetrics(HEALTHY), health_source=ScriptedHealth()
    ) as daemon:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
        started = loop.time()
        try:
            answer = await asyncio.wait_for(reader.read(), timeout=4 * IDLE_TIMEOUT_S)
        finally:
            writer.close()
            await writer.wait_closed()
        assert answer == b""
        assert loop.time() - started == pytest.approx(IDLE_TIMEOUT_S, abs=1.0)
        assert daemon.alive

