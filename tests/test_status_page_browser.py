"""The status page in a real headless Chromium (Debian's ``chromium``): a release goes bad, the
daemon rolls it back, and while the rollback is being verified the page shows per target the
charts of the candidate's and the baseline's error rate and P95, with the SLO line at the
configured value and the marks where the fault began and where the rollback was decided and done.
What the browser built (its DOM, ``--dump-dom``) is asserted on, and a screenshot of the page is
kept as a test artefact (under pytest's temporary directory, or ``$ROLLBACKD_TEST_ARTEFACTS``).

Chromium reads the page the daemon served, saved to a file: the daemon runs on fast-forwarded
loop time, which a browser polling it in real time could not follow.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollbackd.config.settings import (
    EventsSettings,
    MqttSettings,
    Settings,
    SloOverride,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.charts import HEIGHT, WIDTH
from rollbackd.daemon.jsonify import JsonValue
from rollbackd.daemon.page import render_status_page
from rollbackd.daemon.series import MAX_POINTS
from rollbackd.daemon.wiring import open_daemon
from rollbackd.model import DEFAULT_BUCKETS_S, Histogram, Sample
from rollbackd.sources.base import SidePair
from tests.kubefixtures import wait_until
from tests.test_daemon_rollbacks import ScriptedTargets
from tests.test_status_page import FAST, OK, OkHealth, ScriptedMetrics, canary, make_settings

#: P95 between 500 ms and 1 s, above the 500 ms SLO.
SLOW = Histogram(
    bounds_s=DEFAULT_BUCKETS_S, counts=(0, 0, 0, 0, 10, 100, 500, 990, 1000, 1000, 1000, 1000),
)
#: The bad release: 30% errors and slow, while the baseline stays fine.
BAD: SidePair = (OK, Sample(requests=1000, errors=300, latency=SLOW))
HEALTHY: SidePair = (OK, Sample(requests=1000, errors=4, latency=FAST))
INTERVAL_S = 10.0
ERROR_SLO = 0.02
P95_SLO_MS = 400.0


def chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("Debian's chromium is not installed (scripts/ensure-services.sh installs it: "
                    "apt-get install chromium)")
    return path


def _run_chromium(*args: str, home: Path) -> str:
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={home}", *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        pytest.fail(f"chromium failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(page: Path, *, home: Path) -> str:
    """The DOM Chromium built from ``page``, serialised."""
    return _run_chromium("--dump-dom", page.as_uri(), home=home)


def screenshot(page: Path, out: Path, *, home: Path) -> Path:
    _run_chromium("--window-size=1440,1300", f"--screenshot={out}", page.as_uri(), home=home)
    return out


@pytest.fixture
def artefacts(tmp_path: Path) -> Path:
    configured = os.environ.get("ROLLBACKD_TEST_ARTEFACTS")
    folder = Path(configured) if configured else tmp_path / "artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# --- reading the browser's DOM -----------------------------------------------------------------

@dataclass
class Chart:
    signal: str
    span: str
    svg: dict[str, str] = field(default_factory=dict)
    lines: dict[str, dict[str, str]] = field(default_factory=dict)
    slo: dict[str, str] | None = None
    marks: list[dict[str, str]] = field(default_factory=list)
    #: Every text of the chart (axis labels, the SLO label), as the browser laid them out:
    #: (class, (x, y, width, height)).
    texts: list[tuple[str, tuple[float, float, float, float]]] = field(default_factory=list)

    def box(self, css: str) -> tuple[float, float, float, float]:
        (found,) = [box for name, box in self.texts if name == css]
        return found

    def segments(self) -> list[tuple[float, float, float, float]]:
        """Every straight line drawn in the plot: the sides' lines, the SLO line, the marks."""
        drawn = []
        for side in self.lines:
            coords = self.coords(side)
            drawn += [(*a, *b) for a, b in itertools.pairwise(coords)]
        for line in [*([self.slo] if self.slo else []), *self.marks]:
            drawn.append((float(line["x1"]), float(line["y1"]), float(line["x2"]), float(line["y2"])))
        return drawn

    def y_of(self, value: float) -> float:
        """Where ``value`` falls on the chart's vertical axis (as the SVG's own scale says)."""
        top, bottom = float(self.svg["data-plot-top"]), float(self.svg["data-plot-bottom"])
        return top + (1.0 - value / float(self.svg["data-top"])) * (bottom - top)

    def coords(self, side: str) -> list[tuple[float, float]]:
        pairs = self.lines[side]["points"].split()
        return [(float(x), float(y)) for x, y in (pair.split(",") for pair in pairs)]


@dataclass
class Target:
    key: str
    status: str
    text: list[str] = field(default_factory=list)
    charts: dict[tuple[str, str], Chart] = field(default_factory=dict)
    #: The timeline's records as shown: (seq, text).
    timeline: list[tuple[int, str]] = field(default_factory=list)
    #: The evidence table's rows by signal: the cells' texts.
    findings: dict[str, list[str]] = field(default_factory=dict)


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.targets: dict[str, Target] = {}
        self.target: Target | None = None
        self.chart: Chart | None = None
        self.scripts = 0
        self.texts: list[str] = []
        self.in_record = False
        self.row: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "script":
            self.scripts += 1
        if tag == "article":
            self.target = Target(a.get("data-key", ""), a.get("data-status", ""))
            self.targets[self.target.key] = self.target
        elif tag == "tr" and self.target is not None and "data-signal" in a:
            self.row = self.target.findings.setdefault(a["data-signal"], [])
        elif tag == "td" and self.row is not None:
            self.row.append("")
        elif tag == "li" and self.target is not None and "data-seq" in a:
            self.target.timeline.append((int(a["data-seq"]), ""))
            self.in_record = True
        elif tag == "figure" and self.target is not None:
            self.chart = Chart(a.get("data-signal", ""), a.get("data-span", ""))
            self.target.charts[(self.chart.signal, self.chart.span)] = self.chart
        elif self.chart is not None:
            if tag == "svg":
                self.chart.svg = a
            elif tag == "polyline":
                self.chart.lines[a["data-side"]] = a
            elif tag == "line" and "slo" in a.get("class", "").split():
                self.chart.slo = a
            elif tag == "line" and "mark" in a.get("class", "").split():
                self.chart.marks.append(a)
            elif tag == "text" and "data-bbox" in a:
                x, y, w, h = (float(v) for v in a["data-bbox"].split())
                self.chart.texts.append((a.get("class", ""), (x, y, w, h)))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self.row = None
        if tag == "li":
            self.in_record = False
        if tag == "article":
            self.target = None
        if tag == "figure":
            self.chart = None

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self.row:
            self.row[-1] += data
        if self.target is not None:
            self.target.text.append(data)
            if self.in_record:
                seq, text = self.target.timeline[-1]
                self.target.timeline[-1] = (seq, text + data)


#: Appended to a saved page before Chromium dumps its DOM: writes where the browser laid out each
#: chart's texts (``getBBox``, in the chart's own units) into a ``data-bbox`` attribute.
MEASURE_TEXTS = """<script>
document.querySelectorAll("figure.chart svg text").forEach(function (text) {
  var box = text.getBBox();
  text.setAttribute("data-bbox", [box.x, box.y, box.width, box.height].join(" "));
});
</script>"""


def measured(html: str) -> str:
    """``html`` with :data:`MEASURE_TEXTS` run once the page is built."""
    return html.replace("</body>", MEASURE_TEXTS + "</body>")


def crosses(segment: tuple[float, float, float, float], box: tuple[float, float, float, float]) -> bool:
    """Whether the straight line ``segment`` (x1, y1, x2, y2) passes through ``box`` (x, y, width,
    height), sampled every tenth of a unit along it."""
    x1, y1, x2, y2 = segment
    x, y, w, h = box
    steps = max(1, int(10 * max(abs(x2 - x1), abs(y2 - y1))))
    for i in range(steps + 1):
        px, py = x1 + (x2 - x1) * i / steps, y1 + (y2 - y1) * i / steps
        if x <= px <= x + w and y <= py <= y + h:
            return True
    return False


def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def read_dom(dom: str) -> _Dom:
    parsed = _Dom()
    parsed.feed(dom)
    parsed.close()
    return parsed


def settings(data_dir: Path) -> Settings:
    base = make_settings(canary("checkout"), canary("cart"), interval_s=INTERVAL_S)
    slo = SloOverride(max_error_rate=ERROR_SLO, max_p95_ms=P95_SLO_MS)
    targets = tuple(t.model_copy(update={"slo": slo}) for t in base.targets)
    return base.model_copy(update={
        "targets": targets,
        "verification": VerificationSettings(window_s=120.0),
        "store": StoreSettings(data_dir=str(data_dir)),  # SQLite: the audit trail of the timeline
        "events": EventsSettings(mqtt=MqttSettings(enabled=False), kubernetes_events=False),
    })


async def _get(session: aiohttp.ClientSession, daemon: Daemon, path: str) -> Any:
    async with session.get(f"http://127.0.0.1:{daemon.port}{path}") as response:
        assert response.status == 200, await response.text()
        return await (response.text() if path == "/" else response.json())


@pytest.mark.looptime
async def test_a_rollback_in_progress_shows_charts_with_slo_lines_and_marks(
    tmp_path: Path, artefacts: Path
) -> None:
    chromium()
    metrics = ScriptedMetrics({"shop/checkout": HEALTHY, "shop/cart": HEALTHY})
    cluster = ScriptedTargets(action_s=2.0)
    async with (
        aiohttp.ClientSession() as session,
        open_daemon(
            settings(tmp_path / "data"), metrics_source=metrics, health_source=OkHealth(), targets=cluster
        ) as daemon,
    ):
        await asyncio.sleep(12 * INTERVAL_S)
        metrics.pairs["shop/checkout"] = BAD
        await asyncio.sleep(3 * INTERVAL_S)
        metrics.pairs["shop/checkout"] = HEALTHY  # traffic is back on the stable version
        await asyncio.sleep(2 * INTERVAL_S)
        html = await _get(session, daemon, "/")
        api = await _get(session, daemon, "/api/v1/targets/shop/checkout")

    assert api["rollback"]["phase"] == "verifying"
    series = api["series"]
    assert series["max_points"] == MAX_POINTS
    page = tmp_path / "status.html"
    page.write_text(html, encoding="utf-8")
    shot = screenshot(page, artefacts / "status-page-rollback-verifying.png", home=tmp_path / "chromium")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
    laid_out = tmp_path / "status-measured.html"
    laid_out.write_text(measured(html), encoding="utf-8")
    dom = read_dom(dump_dom(laid_out, home=tmp_path / "chromium"))

    checkout, cart = dom.targets["shop/checkout"], dom.targets["shop/cart"]
    assert checkout.status == "rollback"
    assert "rolled back, verifying" in " ".join(checkout.text)
    assert cart.status == "healthy"
    for target in (checkout, cart):
        assert sorted(target.charts) == [
            ("error_rate", "release"), ("error_rate", "window"), ("p95_ms", "release"), ("p95_ms", "window"),
        ]

    release = checkout.charts[("error_rate", "release")]
    # Every interval since the release, for each side, as the API has them.
    for side in ("candidate", "baseline"):
        expected = [p for p in series["release"] if p[side] is not None and p[side]["error_rate"] is not None]
        assert int(release.lines[side]["data-points"]) == len(expected) == len(release.coords(side))
    assert len(series["release"]) >= 17  # one point per tick: far from the bound, none merged
    # The SLO line at the configured value, where the chart's scale puts it.
    assert release.slo is not None
    assert float(release.slo["data-value"]) == ERROR_SLO
    slo_y = float(release.slo["y1"])
    assert slo_y == pytest.approx(release.y_of(ERROR_SLO), abs=0.01)
    p95 = checkout.charts[("p95_ms", "release")]
    assert p95.slo is not None
    assert float(p95.slo["data-value"]) == P95_SLO_MS
    # The bad intervals are drawn above the SLO line, the healthy ones below it (SVG's y grows down).
    candidate = release.coords("candidate")
    bad = [y < slo_y for _, y in candidate]
    assert bad == [False] * 12 + [True] * bad.count(True) + [False] * (len(bad) - 12 - bad.count(True))
    assert bad.count(True) >= 1
    assert all(y > slo_y for _, y in release.coords("baseline"))
    # The marks: the first bad interval, the decision on the tick that proved the breach, the
    # action done; no verdict yet.
    marks = {m["data-kind"]: m for m in release.marks}
    assert sorted(marks) == ["action", "decision", "first-bad"]
    (decided_t,) = [m["t"] for m in series["marks"] if m["kind"] == "decision"]
    assert api["last_rollback"]["rollback"] is True
    (decided,) = [i for i, point in enumerate(series["release"]) if point["t"] == decided_t]
    decided_x = candidate[decided][0]
    assert bad[decided]
    assert marks["decision"]["data-t"] == decided_t
    assert float(marks["decision"]["x1"]) == pytest.approx(decided_x, abs=0.01)
    # The fault began in the first bad interval: after the last healthy point, at most at the first bad one.
    first_bad = bad.index(True)
    assert candidate[first_bad - 1][0] < float(marks["first-bad"]["x1"]) <= candidate[first_bad][0] + 0.01
    assert float(marks["first-bad"]["x1"]) <= float(marks["decision"]["x1"])
    assert float(marks["action"]["x1"]) > decided_x
    # The healthy target has no marks at all.
    assert all(not chart.marks for chart in cart.charts.values())
    # The timeline: the target's audit records from the store, newest first.
    seqs = [seq for seq, _ in checkout.timeline]
    assert seqs == sorted(seqs, reverse=True)
    kinds = [text.split()[1] for _, text in checkout.timeline]
    assert kinds[:4] == ["rollback.completed", "rollback.started", "decision.made", "target.degraded"]
    assert [text.split()[1] for _, text in cart.timeline] == ["decision.made"]

    # Where the target stands is its rollback's, as the API and the timeline tell it: rolled
    # back and being verified, for the reason the rollback was decided on; what the latest tick
    # says (no breach: traffic is back on the stable version) is told as the latest tick's.
    assert api["state"] == "verifying"
    text = " ".join(" ".join(checkout.text).split())
    assert "outcome rolled back, verifying" in text
    assert "outcome none" not in text
    assert f"Rolled back, verifying: {api['last_rollback']['reasons'][0]}" in text
    assert api["decision"]["outcome"] == "none"
    assert f"latest tick (none): {api['decision']['reasons'][0]}" in text
    assert "decided on severe impact, blamed on the new version" in text

    # The evidence table: each confidence is that of the verdict beside it, and says of what.
    required = api["evidence"]["confidence_required"]
    findings = {f["signal"]: f for f in api["evidence"]["findings"]}
    for signal, (*_, confidence, verdict) in checkout.findings.items():
        number, about = confidence.split()
        shown = float(number.rstrip("%")) / 100
        assert shown == pytest.approx(findings[signal]["confidence"], abs=0.0006)
        if "breach" in verdict:
            assert (about, shown >= required) == ("above", True), (confidence, verdict)
        elif "not proven" in verdict:
            assert (about, shown < required) == ("above", True), (confidence, verdict)
        else:
            assert ("within the SLO" in verdict, about) == (True, "within"), (confidence, verdict)
    # The error rate was above the SLO over the window, but the latest intervals are healthy again.
    assert findings["error_rate"]["value"] > findings["error_rate"]["threshold"]
    assert checkout.findings["error_rate"][-1].startswith("back within the SLO lately")

    # The baseline column reads the baseline the charts draw, pooled over the detection window.
    window = [p["baseline"] for p in series["window"] if p["baseline"] is not None]
    errors = sum(side["error_rate"] * side["requests"] for side in window)
    assert checkout.findings["error_rate"][3] == f"{errors / sum(s['requests'] for s in window) * 100:.2f}%"
    drawn_p95 = {round(side["p95_ms"]) for side in window}
    assert len(drawn_p95) == 1  # a steady baseline: its pooled P95 is each interval's
    assert checkout.findings["p95"][3] == f"{drawn_p95.pop()} ms"
    assert all(row[3] not in ("n/a", "") for target in (checkout, cart) for row in target.findings.values())

    # Every time the charts' series give is on the wall clock, in UTC, as the rest of the API:
    # the decision's mark is the decision's time.
    times = [point["t"] for point in series["release"]] + [mark["t"] for mark in series["marks"]]
    for when in [series["now"], *times]:
        assert when.endswith("Z")
        assert datetime.fromisoformat(when).tzinfo is not None
    assert [p["t"] for p in series["release"]] == sorted(p["t"] for p in series["release"])
    assert decided_t == api["last_rollback"]["t"]
    assert series["now"] >= series["release"][-1]["t"]
    # So are the times the reasons give: no loop seconds ("t=1630s") in them.
    reasons = " ".join(api["last_rollback"]["reasons"])
    assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", reasons), reasons
    assert not re.search(r"\bt=-?\d", reasons), reasons

    # The SLO labels, as the browser laid them out: inside the chart, clear of every line and
    # mark drawn and of the axis labels.
    for target in (checkout, cart):
        for chart in target.charts.values():
            x, y, width, height = label = chart.box("slo-label")
            assert x >= 0
            assert x + width <= WIDTH
            assert y >= 0
            assert y + height <= HEIGHT
            assert width > 20  # laid out: text of a readable size
            assert height > 8
            crossing = [segment for segment in chart.segments() if crosses(segment, label)]
            assert crossing == [], (target.key, chart.signal, chart.span, label, crossing)
            axis = [box for css, box in chart.texts if css != "slo-label"]
            assert axis
            assert not any(overlaps(label, box) for box in axis)


MARKUP = '<script>alert("x")</script> & <b>bold</b> \'q\''


@pytest.mark.looptime
async def test_hostile_names_reasons_and_labels_stay_text_in_the_browser(tmp_path: Path) -> None:
    chromium()
    metrics = ScriptedMetrics({"shop/checkout": HEALTHY, "shop/cart": HEALTHY})
    cluster = ScriptedTargets(action_s=2.0, reason=MARKUP)
    async with (
        aiohttp.ClientSession() as session,
        open_daemon(
            settings(tmp_path / "data"), metrics_source=metrics, health_source=OkHealth(), targets=cluster
        ) as daemon,
    ):
        await asyncio.sleep(3 * INTERVAL_S)
        metrics.pairs["shop/checkout"] = BAD
        await asyncio.sleep(3 * INTERVAL_S)
        document = await _get(session, daemon, "/api/v1/targets")

    # Names cannot hold markup in the configuration; the page escapes them all the same, and every
    # other outside string: reasons, the action's reason, the marks' labels and kinds.
    target = document["targets"]["shop/checkout"]
    target.update(namespace=MARKUP, name=MARKUP, key=MARKUP)
    target["decision"]["reasons"] = [MARKUP]
    for mark in target["series"]["marks"]:
        mark.update(label=MARKUP, kind='x" onload="alert(1)')
    record: dict[str, JsonValue] = {"seq": 1, "at": MARKUP, "kind": MARKUP, "summary": MARKUP}
    raw = render_status_page(json.loads(json.dumps(document)), version=MARKUP, ready=True, alive=True,
                             ticks=3, refresh_s=10, generated_at=datetime(2024, 1, 1, tzinfo=UTC),
                             timelines={MARKUP: [record]})
    page = tmp_path / "hostile.html"
    page.write_text(raw, encoding="utf-8")
    dom = read_dom(dump_dom(page, home=tmp_path / "chromium"))

    assert dom.scripts == 1  # the page's own live update, and no other
    assert "onload" not in {k for t in dom.targets.values() for c in t.charts.values()
                            for m in c.marks for k in m}
    hostile = dom.targets[MARKUP]
    text = " ".join(hostile.text)
    assert f"{MARKUP}/{MARKUP}" in text
    assert text.count(MARKUP) >= 4  # the name twice, the reason, the action's reason
    ((_, shown),) = hostile.timeline
    assert shown.count(MARKUP) == 2  # kind and summary (the time is cut to its clock part)
    marks = [m for c in hostile.charts.values() for m in c.marks]
    assert marks
    assert all(m["data-kind"] == 'x" onload="alert(1)' for m in marks)


# --- live update, in a browser driven over the DevTools protocol ---------------------------------

class DevTools:
    """A page of a headless Chromium, driven over the DevTools protocol (a websocket)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = 0

    async def call(self, method: str, **params: Any) -> Any:
        self._ids += 1
        sent = self._ids
        await self._ws.send_json({"id": sent, "method": method, "params": params})
        while True:
            message = await self._ws.receive_json()
            if message.get("id") == sent:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                return message.get("result")

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")


@asynccontextmanager
async def browser(home: Path) -> AsyncIterator[DevTools]:
    process = await asyncio.create_subprocess_exec(
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={home}", "about:blank",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        endpoint = ""
        async with asyncio.timeout(60):
            while not endpoint:
                line = (await process.stderr.readline()).decode()
                if not line:
                    pytest.fail("chromium exited before it listened for the DevTools protocol")
                if line.startswith("DevTools listening on "):
                    endpoint = line.removeprefix("DevTools listening on ").strip()
        http_base = "http://" + endpoint.removeprefix("ws://").split("/", 1)[0]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{http_base}/json/list") as response:
                pages = [p for p in await response.json() if p["type"] == "page"]
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        process.terminate()
        await process.wait()


async def test_the_page_updates_itself_keeping_the_readers_place_and_pauses_while_hidden(
    tmp_path: Path,
) -> None:
    chromium()
    metrics = ScriptedMetrics({"shop/checkout": HEALTHY, "shop/cart": HEALTHY})
    live = settings(tmp_path / "data").model_copy(update={"interval_s": 0.5})  # the page: every 2 s
    async with (
        open_daemon(live, metrics_source=metrics, health_source=OkHealth()) as daemon,
        browser(tmp_path / "chromium") as page,
    ):
        await wait_until(lambda: daemon.ticks >= 2, timeout_s=20, what="two ticks")
        await page.call("Emulation.setDeviceMetricsOverride", width=1000, height=300, deviceScaleFactor=1,
                        mobile=False)
        await page.call("Page.enable")
        await page.call("Page.navigate", url=f"http://127.0.0.1:{daemon.port}/")

        async def loaded() -> bool:
            ready = "document.readyState === 'complete' && !!document.getElementById('live')"
            return bool(await page.eval(ready))

        await wait_until(loaded, timeout_s=20, what="the page loaded")
        ticks_before = await page.eval("document.title + ' ' + document.querySelector('.pills').textContent")
        # The reader opens the first target's timeline and scrolls down.
        await page.eval("document.querySelector('article details.timeline').open = true")
        await page.eval("window.scrollTo(0, 250)")
        assert await page.eval("window.scrollY") == 250

        async def updates() -> int:
            return int(await page.eval("Number(document.body.dataset.liveUpdates)"))

        await wait_until(lambda: _at_least(updates(), 2), timeout_s=20, what="two live updates")
        assert await page.eval("document.querySelector('article details.timeline').open") is True
        assert await page.eval("window.scrollY") == 250
        ticks_after = await page.eval("document.title + ' ' + document.querySelector('.pills').textContent")
        assert ticks_after != ticks_before  # the content is new: the tick count moved on
        # The page reloaded nothing: the same document, one script run.
        assert await page.eval("performance.getEntriesByType('navigation').length") == 1

        # A hidden tab fetches nothing, and catches up once shown.
        await page.eval("Object.defineProperty(document, 'hidden', {configurable: true, get: () => true})")

        async def paused() -> int:
            return int(await page.eval("Number(document.body.dataset.livePaused)"))

        await wait_until(lambda: _at_least(paused(), 1), timeout_s=20, what="a paused update")
        hidden_at = await updates()
        await wait_until(lambda: _at_least(paused(), 3), timeout_s=20, what="more paused updates")
        assert await updates() == hidden_at
        await page.eval("delete document.hidden; document.dispatchEvent(new Event('visibilitychange'))")
        await wait_until(lambda: _at_least(updates(), hidden_at + 1), timeout_s=20, what="an update")


async def _at_least(value: Awaitable[int], least: int) -> bool:
    return await value >= least
