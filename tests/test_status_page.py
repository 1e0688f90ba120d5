"""The on-call status page (``GET /``), over real HTTP against the real daemon with scripted
sources on fast-forwarded loop time: what it says before the first evaluation, after a severe
regression, for healthy targets, with freeze and dry-run switched through the API, the order of
the targets, and the escaping of everything that comes from the outside."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html.parser import HTMLParser
from typing import Any

import aiohttp
import pytest

from rollbackd.config.settings import ApiSettings, HttpSettings, Settings, Side, TargetSettings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.page import human_duration, refresh_seconds, render_status_page
from rollbackd.model import DEFAULT_BUCKETS_S, HealthCheck, Histogram, Sample, Strategy
from rollbackd.sources.base import SidePair, SourceTarget

INTERVAL_S = 10.0

#: Cumulative counts per Prometheus default bucket: P95 between 100 and 250 ms.
FAST = Histogram(
    bounds_s=DEFAULT_BUCKETS_S, counts=(0, 0, 0, 10, 500, 990, 1000, 1000, 1000, 1000, 1000, 1000),
)
OK = Sample(requests=1000, errors=5, latency=FAST)
HEALTHY: SidePair = (OK, OK)
#: 30% errors on the candidate against a 1% SLO (severe at 5%), baseline fine: immediate rollback.
SEVERE: SidePair = (OK, Sample(requests=1000, errors=300, latency=FAST))
#: 3% errors: above the SLO, below the severe level: a controlled rollback after the grace.
MANAGEABLE: SidePair = (OK, Sample(requests=1000, errors=30, latency=FAST))
#: Baseline as bad as the candidate: a platform incident, not the release.
PLATFORM: SidePair = (
    Sample(requests=1000, errors=200, latency=FAST), Sample(requests=1000, errors=210, latency=FAST),
)


class ScriptedMetrics:
    """Serves a fixed pair per target key; keys it does not know get no data (a scrape gap)."""

    def __init__(self, pairs: Mapping[str, SidePair]) -> None:
        self.pairs = dict(pairs)

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        return {t.key: self.pairs[t.key] for t in targets if t.key in self.pairs}


class GatedMetrics(ScriptedMetrics):
    """Never answers: the first tick never completes."""

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        await asyncio.Event().wait()
        return {}


class OkHealth:
    async def probe(self, urls: Sequence[str]) -> tuple[HealthCheck, ...]:
        return tuple(HealthCheck(path="/readyz", status=200) for _ in urls)


def canary(name: str, *, namespace: str = "shop") -> TargetSettings:
    return TargetSettings(
        name=name,
        namespace=namespace,
        strategy=Strategy.CANARY,
        baseline=Side(deployment=f"{name}-stable"),
        candidate=Side(deployment=f"{name}-canary"),
        ingress=f"{name}-canary",
    )


def make_settings(*targets: TargetSettings, interval_s: float = INTERVAL_S) -> Settings:
    return Settings(
        interval_s=interval_s,
        http=HttpSettings(host="127.0.0.1", port=0),
        api=ApiSettings(allow_unauthenticated_writes=True),  # tokens: tests/test_api_auth.py
        targets=targets,
    )


# --- reading the page as a person would ----------------------------------------------------------

@dataclass
class Card:
    key: str
    status: str
    chunks: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return _squash(self.chunks)


@dataclass
class Page:
    raw: str
    refresh: str | None = None
    title: str = ""
    chunks: list[str] = field(default_factory=list)
    cards: list[Card] = field(default_factory=list)

    @property
    def text(self) -> str:
        """All visible text, entities decoded, whitespace collapsed."""
        return _squash(self.chunks)

    def card(self, key: str) -> Card:
        (card,) = [c for c in self.cards if c.key == key]
        return card


def _squash(chunks: Sequence[str]) -> str:
    return re.sub(r"\s+", " ", " ".join(chunks)).strip()


class _PageParser(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.card: Card | None = None
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag in {"style", "title", "script"}:
            self.hidden += 1
        if tag == "meta" and attributes.get("http-equiv") == "refresh":
            self.page.refresh = attributes.get("content")
        if tag == "article":
            self.card = Card(key=attributes.get("data-key") or "", status=attributes.get("data-status") or "")
            self.page.cards.append(self.card)

    def handle_endtag(self, tag: str) -> None:
        if tag in {"style", "title", "script"}:
            self.hidden -= 1
        if tag == "article":
            self.card = None

    def handle_data(self, data: str) -> None:
        if self.lasttag == "title" and self.hidden:
            self.page.title += data
        if self.hidden:
            return
        self.page.chunks.append(data)
        if self.card is not None:
            self.card.chunks.append(data)


def parse(raw: str) -> Page:
    page = Page(raw=raw)
    parser = _PageParser(page)
    parser.feed(raw)
    parser.close()
    return page


class Client:
    def __init__(self, session: aiohttp.ClientSession, daemon: Daemon) -> None:
        self._session = session
        self._base = f"http://127.0.0.1:{daemon.port}"

    async def page(self, path: str = "/") -> Page:
        async with self._session.get(self._base + path) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert response.charset == "utf-8"
            return parse(await response.text())

    async def api(self, method: str, path: str, body: object = None) -> Any:
        async with self._session.request(method, self._base + path, json=body) as response:
            assert response.status == 200, await response.text()
            return await response.json()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:
        yield client


def _percent(value: float) -> str:
    return f"{value * 100:.2f}%"


# --- the tests ---------------------------------------------------------------------------------

@pytest.mark.looptime
async def test_before_the_first_evaluation_the_page_says_so(session: aiohttp.ClientSession) -> None:
    settings = make_settings(canary("checkout"))
    async with Daemon(settings, metrics_source=GatedMetrics({}), health_source=OkHealth()) as daemon:
        client = Client(session, daemon)
        page = await client.page()
        alias = await client.page("/status")

    assert page.refresh == "10"
    # One inline script (the live update), no external asset.
    assert page.raw.count("<script") == 1
    assert "<script>" in page.raw
    assert " src=" not in page.raw
    assert "ready no" in page.text
    assert "ticks 0" in page.text
    assert "targets 1" in page.text
    assert "No evaluation yet" in page.text
    (card,) = page.cards
    assert card.key == "shop/checkout"
    assert "not evaluated yet" in card.text
    assert "rollback decided" not in card.text
    assert "No evaluation yet" in alias.text


@pytest.mark.looptime
async def test_a_severe_regression_shows_as_rolled_back_with_the_numbers(
    session: aiohttp.ClientSession,
) -> None:
    # The healthy target comes first in the configuration; the page puts the rolled-back one first.
    settings = make_settings(canary("checkout"), canary("cart"))
    metrics = ScriptedMetrics({"shop/checkout": HEALTHY, "shop/cart": SEVERE})
    async with Daemon(settings, metrics_source=metrics, health_source=OkHealth()) as daemon:
        client = Client(session, daemon)
        await asyncio.sleep(5 * INTERVAL_S)
        page = await client.page()
        api = (await client.api("GET", "/api/v1/targets"))["targets"]
        ticks = daemon.ticks

    assert ticks >= 5
    assert f"ticks {ticks}" in page.text
    assert "ready yes" in page.text
    assert "freeze off" in page.text
    assert "dry-run off" in page.text
    assert "No evaluation yet" not in page.text
    assert [card.key for card in page.cards] == ["shop/cart", "shop/checkout"]
    assert page.title.startswith("rollbackd: 1 rollback")

    cart = page.card("shop/cart")
    assert cart.status == "rollback"
    assert "rolled back" in cart.text
    assert re.search(r"rollback decided yes, \d+s ago \(immediate\)", cart.text), cart.text
    assert "outcome immediate" in cart.text
    assert "impact severe" in cart.text
    assert "attributable yes" in cart.text
    assert "blocked by cooldown" in cart.text
    assert "Cooldown" in cart.text
    # The numbers are the API's, as a person reads them: error rate in %, P95 in ms.
    findings = {f["signal"]: f for f in api["shop/cart"]["evidence"]["findings"]}
    error_rate, p95 = findings["error_rate"], findings["p95"]
    assert error_rate["value"] == pytest.approx(0.3, abs=0.01)
    row = (
        f"error rate {_percent(error_rate['value'])} {_percent(error_rate['threshold'])} "
        f"{_percent(error_rate['baseline_value'])} {error_rate['confidence'] * 100:.1f}% above "
        "SEVERE breach, attributable"
    )
    assert row in cart.text
    assert f"P95 latency {p95['value']:.0f} ms {p95['threshold']:.0f} ms" in cart.text
    assert "within the SLO" in cart.text
    assert api["shop/cart"]["decision"]["reasons"][0] in cart.text

    checkout = page.card("shop/checkout")
    assert checkout.status == "healthy"
    assert "healthy" in checkout.text
    assert "rollback decided no" in checkout.text
    assert "impact none" in checkout.text
    assert "SEVERE" not in checkout.text
    assert "no SLO breach" in checkout.text


@pytest.mark.looptime
async def test_targets_are_sorted_worst_first(session: aiohttp.ClientSession) -> None:
    # Configured best first; "shop/quiet" gets no data at all.
    settings = make_settings(
        canary("fine"), canary("quiet"), canary("platform"), canary("slowburn"), canary("broken"),
    )
    metrics = ScriptedMetrics({
        "shop/fine": HEALTHY, "shop/platform": PLATFORM, "shop/slowburn": MANAGEABLE, "shop/broken": SEVERE,
    })
    async with Daemon(settings, metrics_source=metrics, health_source=OkHealth()) as daemon:
        await asyncio.sleep(5 * INTERVAL_S)
        page = await Client(session, daemon).page()

    assert [(card.key, card.status) for card in page.cards] == [
        ("shop/broken", "rollback"),
        ("shop/slowburn", "waiting"),
        ("shop/platform", "escalated"),
        ("shop/quiet", "inconclusive"),
        ("shop/fine", "healthy"),
    ]
    assert "controlled rollback: waiting" in page.card("shop/slowburn").text
    assert "escalated: not attributable" in page.card("shop/platform").text
    assert "attributable no" in page.card("shop/platform").text
    assert "inconclusive" in page.card("shop/quiet").text
    assert "1 rollback 1 waiting 1 escalated / held 1 inconclusive 1 healthy" in page.text


@pytest.mark.looptime
async def test_freeze_and_dry_run_banners_follow_the_api(session: aiohttp.ClientSession) -> None:
    settings = make_settings(canary("cart"))
    async with Daemon(
        settings, metrics_source=ScriptedMetrics({"shop/cart": SEVERE}), health_source=OkHealth(),
    ) as daemon:
        client = Client(session, daemon)
        await client.api("POST", "/api/v1/dry-run", {"enabled": True})
        await asyncio.sleep(3 * INTERVAL_S)
        dry = await client.page()
        await client.api("POST", "/api/v1/freeze")
        frozen = await client.page()
        await client.api("DELETE", "/api/v1/freeze")
        await client.api("POST", "/api/v1/dry-run", {"enabled": False})
        normal = await client.page()

    assert "dry-run ON" in dry.text
    assert "freeze off" in dry.text
    assert "Dry-run is ON" in dry.text
    assert "Freeze is ON" not in dry.text
    cart = dry.card("shop/cart")
    assert cart.status == "rollback"
    assert "would roll back (immediate, dry-run)" in cart.text
    assert "Cooldown" not in cart.text

    assert "freeze ON" in frozen.text
    assert "dry-run ON" in frozen.text
    assert "Freeze is ON" in frozen.text

    assert "freeze off" in normal.text
    assert "dry-run off" in normal.text
    assert "Freeze is ON" not in normal.text
    assert "Dry-run is ON" not in normal.text


MARKUP = '<script>alert("x")</script> & <b>bold</b> \'q\''


@pytest.mark.looptime
async def test_everything_from_the_outside_is_escaped(session: aiohttp.ClientSession) -> None:
    settings = make_settings(canary("cart"))
    async with Daemon(
        settings, metrics_source=ScriptedMetrics({"shop/cart": SEVERE}), health_source=OkHealth(),
    ) as daemon:
        client = Client(session, daemon)
        await client.api("POST", "/api/v1/targets/shop/cart/hold", {"eta_s": 600, "reason": MARKUP})
        await asyncio.sleep(3 * INTERVAL_S)
        page = await client.page()
        document = await client.api("GET", "/api/v1/targets")

    # The hold's reason reaches the page twice (the hold, and the decision's reason), as text.
    cart = page.card("shop/cart")
    assert cart.status == "escalated"
    assert "held: fix-forward hold" in cart.text
    assert "Hold until" in cart.text
    assert cart.text.count(MARKUP) >= 2
    assert "<script>alert" not in page.raw
    assert "<b>bold" not in page.raw
    escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt; &#x27;q&#x27;"
    assert escaped in page.raw

    # Names cannot hold markup in the configuration; the page escapes them all the same.
    target = document["targets"]["shop/cart"]
    target.update(namespace="<ns>", name='a"b&c', key='<k>"', strategy="<i>canary</i>")
    raw = render_status_page(json.loads(json.dumps(document)), version="<v>", ready=True, alive=True,
                             ticks=3, refresh_s=10, generated_at=datetime(2024, 1, 1, tzinfo=UTC))
    assert "<ns>" not in raw
    assert "<i>" not in raw
    assert "<v>" not in raw
    assert 'data-key="&lt;k&gt;&quot;"' in raw
    rendered = parse(raw)
    assert rendered.cards[0].key == '<k>"'
    assert '<ns>/a"b&c <i>canary</i>' in rendered.cards[0].text
    assert "rollbackd <v>" in rendered.text


def test_the_refresh_period_is_the_interval_rounded_up_and_at_least_two_seconds() -> None:
    assert refresh_seconds(0.2) == 2
    assert refresh_seconds(2.0) == 2
    assert refresh_seconds(2.5) == 3
    assert refresh_seconds(10.0) == 10
    assert refresh_seconds(None) == 10


@pytest.mark.looptime
async def test_the_page_refreshes_at_the_evaluation_interval(session: aiohttp.ClientSession) -> None:
    settings = make_settings(canary("cart"), interval_s=2.5)
    async with Daemon(
        settings, metrics_source=ScriptedMetrics({"shop/cart": HEALTHY}), health_source=OkHealth(),
    ) as daemon:
        page = await Client(session, daemon).page()
    assert page.refresh == "3"


def test_durations_read_as_a_person_says_them() -> None:
    assert human_duration(0.4) == "0s"
    assert human_duration(42.2) == "42s"
    assert human_duration(119) == "119s"
    assert human_duration(303) == "5m 03s"
    assert human_duration(3 * 3600 + 7 * 60 + 5) == "3h 07m"


ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.mark.looptime
async def test_the_charts_series_and_the_reasons_give_wall_clock_times(
    session: aiohttp.ClientSession,
) -> None:
    """Every time of a target's ``series`` is UTC on the wall clock, as the rest of the API, one
    interval apart; the decision's mark is the decision's time; no reason or detail gives the
    daemon's internal loop seconds."""
    settings = make_settings(canary("cart"))
    metrics = ScriptedMetrics({"shop/cart": HEALTHY})
    async with Daemon(settings, metrics_source=metrics, health_source=OkHealth()) as daemon:
        client = Client(session, daemon)
        await asyncio.sleep(4 * INTERVAL_S)
        metrics.pairs["shop/cart"] = SEVERE
        await asyncio.sleep(3 * INTERVAL_S)
        target = await client.api("GET", "/api/v1/targets/shop/cart")

    series = target["series"]
    decided = target["last_rollback"]
    assert decided is not None
    points = series["release"]
    times = [series["now"]] + [p[key] for p in points for key in ("start", "t")]
    times += [mark["t"] for mark in series["marks"]] + [p["t"] for p in series["window"]]
    assert all(ISO_UTC.match(when) for when in times), times
    ends = [datetime.fromisoformat(p["t"]) for p in points]
    assert len(ends) >= 6
    gaps = {round((later - earlier).total_seconds(), 3) for earlier, later in itertools.pairwise(ends)}
    assert gaps == {INTERVAL_S}
    assert datetime.fromisoformat(series["now"]) >= ends[-1]
    marks = {mark["kind"]: mark["t"] for mark in series["marks"]}
    assert marks["decision"] == decided["t"]
    assert marks["first-bad"] <= marks["decision"]
    assert series["window_pooled"]["candidate"]["requests"] == sum(
        p["candidate"]["requests"] for p in series["window"] if p["candidate"] is not None
    )
    said = [*decided["reasons"], *(f["detail"] for f in target["evidence"]["findings"])]
    assert not any(re.search(r"\bt=-?\d", text) for text in said), said
    onset = datetime.fromisoformat(marks["first-bad"]).isoformat(timespec="milliseconds")
    assert any(onset.replace("+00:00", "Z") in text for text in said), (onset, said)
