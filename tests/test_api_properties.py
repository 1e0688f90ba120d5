"""The fault and bad-input suite, API part: random JSON bodies (any nesting; numbers huge, tiny,
negative, non-finite, written as text; strings where numbers belong), random query values and
random ``Authorization`` bytes, sent over real HTTP to every write and read endpoint of a running
daemon with a real SQLite store. Every answer is 2xx or 4xx, the daemon stays up, and nothing is
ever rolled back: the target breaches severely under a global freeze that no request tried here
may lift, so any action would be an action on bad data."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from rollbackd.config.settings import EventsSettings, StoreSettings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.auth import ApiAuth
from rollbackd.daemon.wiring import open_daemon
from tests.faultledger import FaultLedger
from tests.kubefixtures import wait_until
from tests.test_api_hardening import SECRET, raw_request
from tests.test_daemon import SEVERE, ScriptedHealth, ScriptedMetrics, make_settings
from tests.test_daemon_rollbacks import ScriptedTargets

TARGET = "/api/v1/targets/shop/checkout"

#: Every write a request may make here: none of them lifts the freeze.
WRITES = [
    ("POST", TARGET + "/hold"),
    ("DELETE", TARGET + "/hold"),
    ("POST", "/api/v1/freeze"),
    ("POST", "/api/v1/dry-run"),
]
READS = [
    "/api/v1/history",
    "/api/v1/targets",
    TARGET,
    "/api/v1/targets/shop/nothing",
    "/",
    "/status",
    "/healthz",
    "/readyz",
    "/metrics",
]


@dataclass
class Steered:
    """A running daemon with a store, frozen, watching a target that breaches severely."""

    daemon: Daemon
    session: aiohttp.ClientSession
    cluster: ScriptedTargets
    base: str

    def actions(self) -> int:
        """Rollbacks carried out (dry-run plans are not actions)."""
        return self.cluster.runs.count(False)

    def check(self, ledger: FaultLedger, status: int, what: object) -> None:
        """One example's outcome: a clean answer, the daemon up, no action taken."""
        ledger.inputs(1)
        crashed = 0 if self.daemon.alive else 1
        ledger.observe(actions_on_bad_data=self.actions(), crashes=crashed)
        assert status < 500, what
        assert crashed == 0, what
        assert self.actions() == 0, what


@pytest.fixture
async def steered(tmp_path: Path) -> AsyncIterator[Steered]:
    config = make_settings(freeze=True).model_copy(
        update={
            "interval_s": 0.05,
            "store": StoreSettings(data_dir=str(tmp_path / "data")),
            "events": EventsSettings(kubernetes_events=False),
        }
    )
    cluster = ScriptedTargets(action_s=0.0)
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session,
        open_daemon(
            config,
            metrics_source=ScriptedMetrics(SEVERE),
            health_source=ScriptedHealth(),
            targets=cluster,
            auth=ApiAuth(token=lambda: SECRET),
        ) as daemon,
    ):
        await wait_until(lambda: daemon.ready, timeout_s=20, what="the daemon ready with its store")
        yield Steered(daemon=daemon, session=session, cluster=cluster, base=f"http://127.0.0.1:{daemon.port}")
        assert daemon.alive
        # The breach was judged all along, and held back by the freeze alone.
        target = daemon.state.targets["shop/checkout"].latest
        assert target is not None
        assert target.blocked_by in ("freeze", "hold")
    assert cluster.runs.count(False) == 0


# --- what is sent -------------------------------------------------------------------------------

#: Numbers as JSON text: any size, any precision, beyond doubles, non-finite (Python's parser
#: takes NaN and Infinity), and the bounds of eta_s on both sides.
NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=-(10**500), max_value=10**500).map(str),
    st.floats().map(lambda x: json.dumps(x)),
    st.from_regex(r"-?[0-9]{1,30}(\.[0-9]{1,12})?([eE][-+]?[0-9]{1,4})?", fullmatch=True),
    st.sampled_from(
        ["1e400", "-1e400", "1e-400", "3e11", "2592000", "2592000.000001", "-0", "0", "1E+308", "9" * 5000]
    ),
)
KEYS = st.one_of(st.sampled_from(["eta_s", "reason", "enabled"]), st.text(max_size=6))
SCALARS = st.one_of(
    st.sampled_from(["null", "true", "false"]),
    NUMBERS,
    st.text(max_size=30).map(json.dumps),
    st.text(max_size=600).map(json.dumps),  # reasons too long as well
)
JSON_TEXT = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ",".join(items) + "]"),
        st.lists(st.tuples(KEYS, inner), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{json.dumps(key)}:{value}" for key, value in pairs) + "}"
        ),
    ),
    max_leaves=12,
)
#: Objects shaped like the real bodies, with anything for their values.
SHAPED = st.one_of(
    st.tuples(st.one_of(NUMBERS, JSON_TEXT), st.one_of(SCALARS, JSON_TEXT)).map(
        lambda pair: f'{{"eta_s":{pair[0]},"reason":{pair[1]}}}'
    ),
    st.one_of(NUMBERS, JSON_TEXT).map(lambda value: f'{{"enabled":{value}}}'),
)
NESTED = st.tuples(st.integers(1, 30_000), st.sampled_from(["[]", '{"a":}'])).map(
    lambda spec: (spec[1][:-1] * spec[0]) + "1" * (spec[1] == '{"a":}') + (spec[1][-1] * spec[0])
)
BODIES = st.one_of(
    JSON_TEXT.map(str.encode),
    SHAPED.map(str.encode),
    NESTED.map(str.encode),
    st.binary(max_size=200),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=latin-1",
        "application/json; charset=utf-16",
        "application/json; charset=no-such-charset",
        "text/plain",
    ]
)

QUERY_VALUES = st.one_of(
    st.text(max_size=40),
    st.from_regex(r"[0-9]{1,20}(\.[0-9]{1,5})?[smhdw]", fullmatch=True),
    st.sampled_from(
        [
            "999999999999999d",
            "36500d",
            "36501d",
            "1e5",
            "0",
            "-1",
            "100000",
            "100001",
            "NaN",
            "inf",
            "0001-01-01",
            "9999-12-31T23:59:59-12:00",
            "2024-05-01T12:00:00Z",
            "shop/checkout",
            "9" * 5000,
        ]
    ),
)
QUERIES = st.fixed_dictionaries(
    {},
    optional={
        "since": st.one_of(QUERY_VALUES, st.from_regex(r"[0-9]{1,20}[smhdw]", fullmatch=True)),
        "limit": st.one_of(QUERY_VALUES, st.integers().map(str)),
        "target": QUERY_VALUES,
        "x": QUERY_VALUES,
    },
)
#: The history is the read that parses its query: half of the examples go there.
READ_PATHS = st.one_of(st.just("/api/v1/history"), st.sampled_from(READS))
#: Raw bytes, percent-encoded: not UTF-8 once decoded.
RAW_QUERIES = st.tuples(st.sampled_from(["since", "limit", "target"]), st.binary(max_size=20)).map(
    lambda pair: f"{pair[0]}=" + "".join(f"%{byte:02X}" for byte in pair[1])
)


# --- the properties -----------------------------------------------------------------------------


@pytest.mark.faults
@settings(max_examples=400)
@given(write=st.sampled_from(WRITES), body=BODIES, content_type=CONTENT_TYPES)
async def test_any_body_to_any_write_endpoint_is_answered_without_5xx_or_action(
    steered: Steered, fault_ledger: FaultLedger, write: tuple[str, str], body: bytes, content_type: str
) -> None:
    method, path = write
    headers = {"Content-Type": content_type, "Authorization": f"Bearer {SECRET}"}
    async with steered.session.request(method, steered.base + path, data=body, headers=headers) as response:
        await response.read()
        steered.check(fault_ledger, response.status, (method, path, body[:200], content_type))


@pytest.mark.faults
@settings(max_examples=400)
@given(path=READ_PATHS, query=QUERIES, raw=st.one_of(st.none(), RAW_QUERIES))
async def test_any_query_to_any_read_endpoint_is_answered_without_5xx_or_action(
    steered: Steered, fault_ledger: FaultLedger, path: str, query: dict[str, str], raw: str | None
) -> None:
    url = URL(steered.base + path).with_query(query)
    if raw is not None:
        url = URL(str(url) + ("&" if query else "?") + raw, encoded=True)
    async with steered.session.get(url) as response:
        await response.read()
        steered.check(fault_ledger, response.status, (path, query, raw))


@pytest.mark.faults
@settings(max_examples=200)
@given(
    header=st.tuples(st.sampled_from([b"Bearer ", b"bearer  ", b"Basic ", b""]), st.binary(max_size=60))
    .map(b"".join)
    .filter(lambda data: b"\r" not in data and b"\n" not in data)
)
async def test_any_authorization_bytes_are_refused_without_5xx(
    steered: Steered, fault_ledger: FaultLedger, header: bytes
) -> None:
    request = (
        b"POST /api/v1/freeze HTTP/1.1\r\nHost: rollbackd\r\nConnection: close\r\nContent-Length: 0\r\n"
        b"Authorization: " + header + b"\r\n\r\n"
    )
    status, answer = await raw_request(steered.daemon.port, request)
    assert status in (400, 401), answer[:300]
    steered.check(fault_ledger, status, header)
