"""A sustained breach at low traffic, as a subscriber sees it: the real daemon, a real SQLite store,
a real Mosquitto; a scripted metrics source serving one interval after another and a scripted
cluster behind their protocols.

At 4 canary requests per interval a breach is proven on some ticks and not on the ones between:
the story must still be told once per episode (one ``target.degraded``, each escalation once,
``decision.made`` only when the verdict changes) and the retained status must never say healthy
while the breach lasts.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from rollbackd.config.settings import (
    EventsSettings,
    HttpSettings,
    MqttSettings,
    PolicyOverride,
    Settings,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.wiring import open_daemon
from rollbackd.model import Sample
from rollbackd.sources.base import SidePair, SourceTarget
from rollbackd.store import open_store
from tests.kubefixtures import wait_until
from tests.mqttfixtures import Mosquitto, Subscriber, mosquitto, subscribed  # noqa: F401 (fixture)
from tests.test_daemon import ScriptedHealth, canary
from tests.test_daemon_rollbacks import ScriptedTargets

INTERVAL_S = 0.1
KEY = "shop/checkout"


def spread(requests: int, rate: float, i: int) -> Sample:
    """Interval ``i`` of a steady stream: ``requests`` with errors spread evenly at ``rate``."""
    errors = int((i + 1) * requests * rate) - int(i * requests * rate)
    return Sample(requests=requests, errors=errors)


class Intervals:
    """A metrics source serving one scripted interval per collection: ``script(i)`` for the
    ``i``-th, whatever the clock says."""

    def __init__(self, script: Callable[[int], SidePair]) -> None:
        self.script = script
        self.served = 0

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        pair = self.script(self.served)
        self.served += 1
        return {target.key: pair for target in targets}


def settings(broker: Mosquitto, data_dir: Path, prefix: str, *, grace_s: float = 120.0) -> Settings:
    return Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(data_dir)),
        verification=VerificationSettings(window_s=1.0),
        events=EventsSettings(
            mqtt=MqttSettings(enabled=True, url=broker.url, topic_prefix=prefix, instance="test"),
            kubernetes_events=False,
        ),
        targets=(
            canary("checkout").model_copy(update={"policy": PolicyOverride(controlled_grace_s=grace_s)}),
        ),
    )


@contextlib.asynccontextmanager
async def running(config: Settings, metrics: Intervals, cluster: ScriptedTargets) -> AsyncIterator[Daemon]:
    """The daemon with its store kept, ready; stopped (and its events drained) on exit."""
    async with open_daemon(
        config, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
    ) as daemon:
        await wait_until(lambda: daemon.journal.attached and daemon.ready, timeout_s=30, what="ready")
        yield daemon


async def told(subscriber: Subscriber, data_dir: Path, prefix: str) -> list[tuple[str, dict[str, Any]]]:
    """Every message about the target on the broker, in order, once all the events the audit log
    holds have arrived: ("event", event) and ("status", retained status)."""
    store = open_store(None, data_dir=data_dir)
    await store.open()
    try:
        history = await store.history(target=KEY)
        recorded = {entry.details["event_id"] for entry in history if "event_id" in entry.details}
    finally:
        await store.close()
    events = f"{prefix}/v1/shop/checkout/events/"

    def arrived() -> set[str]:
        return {m.json()["id"] for m in subscriber.messages if m.topic.startswith(events)}

    await wait_until(lambda: recorded <= arrived(), timeout_s=20, what="every recorded event on the broker")
    return [
        ("event" if m.topic.startswith(events) else "status", m.json())
        for m in subscriber.messages
        if m.topic.startswith(events) or m.topic == f"{prefix}/v1/shop/checkout/status"
    ]


def short(event: dict[str, Any]) -> str:
    return str(event["type"]).removeprefix("io.rollbackd.")


async def test_both_arms_failing_at_four_canary_requests_is_one_episode_told_once(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    prefix = f"t{tmp_path.name[-8:]}"
    data_dir = tmp_path / "data"
    healthy, failing = 20, 90

    def script(i: int) -> SidePair:
        rate = 0.0 if i < healthy else 0.10
        return spread(36, rate, i), spread(4, rate, i)

    metrics = Intervals(script)
    async with subscribed(mosquitto.options, f"{prefix}/v1/shop/checkout/#") as subscriber:
        async with running(settings(mosquitto, data_dir, prefix), metrics, ScriptedTargets()) as daemon:
            await wait_until(
                lambda: metrics.served >= healthy + failing, timeout_s=60, what="90 failing intervals"
            )
            assert daemon.state.targets[KEY].evaluator.episode is not None
            # The API and the status page tell the same story as the events.
            base = f"http://127.0.0.1:{daemon.port}"
            async with aiohttp.ClientSession() as session:
                async with session.get(base + "/api/v1/targets/shop/checkout") as response:
                    shown = await response.json()
                async with session.get(base + "/") as response:
                    page = await response.text()
            assert shown["decision"]["blocked_by"] == "not-attributable"
            assert shown["decision"]["episode"]["attribution"] == "baseline-degraded"
            assert "escalated: not attributable (baseline degraded too)" in page
            assert "breach episode" in page
        messages = await told(subscriber, data_dir, prefix)

    events = [payload for kind, payload in messages if kind == "event"]
    kinds = [short(event) for event in events]
    assert kinds.count("target.degraded") == 1
    assert kinds.count("escalation.raised") == 1
    degraded = kinds.index("target.degraded")
    assert events[degraded]["data"]["evidence"]["attribution"] == "baseline-degraded"
    escalation = events[kinds.index("escalation.raised")]["data"]
    assert escalation["cause"] == "not-attributable"
    assert "likely a platform incident" in escalation["summary"]
    # decision.made only on a change of verdict: the healthy verdict(s) before, one for the episode.
    decided = [e["data"]["decision"] for e in events if short(e) == "decision.made"]
    verdicts = [(d["outcome"], d["blocked_by"], d["escalate"]) for d in decided]
    assert all(a != b for a, b in itertools.pairwise(verdicts))
    assert verdicts[-1] == ("none", "not-attributable", True)
    assert len([v for v in verdicts if v[2]]) == 1
    assert len(events) <= 6
    # The retained status: healthy before the breach, never again while it lasts.
    statuses = [payload["state"] for kind, payload in messages if kind == "status"]
    assert "healthy" in statuses[: statuses.index("degraded")]
    after = statuses[statuses.index("degraded") :]
    assert "healthy" not in after
    assert after[-1] == "escalated"


async def test_a_low_traffic_canary_regression_is_told_once_then_rolled_back(
    mosquitto: Mosquitto,  # noqa: F811
    tmp_path: Path,
) -> None:
    prefix = f"t{tmp_path.name[-8:]}"
    data_dir = tmp_path / "data"
    healthy = 20

    def script(i: int) -> SidePair:
        # The stable at 0.2% errors; the canary at 10 requests per interval, 3% failing after the
        # release.
        return spread(90, 0.002, i), spread(10, 0.0 if i < healthy else 0.03, i)

    metrics = Intervals(script)
    cluster = ScriptedTargets(action_s=0.1)
    async with subscribed(mosquitto.options, f"{prefix}/v1/shop/checkout/#") as subscriber:
        async with running(settings(mosquitto, data_dir, prefix, grace_s=3.0), metrics, cluster) as daemon:
            await wait_until(lambda: KEY in daemon.rollbacks.runs, timeout_s=60, what="a rollback")
            run = daemon.rollbacks.runs[KEY]
            assert run.mode == "controlled"
        messages = await told(subscriber, data_dir, prefix)

    events = [payload for kind, payload in messages if kind == "event"]
    kinds = [short(event) for event in events]
    started = kinds.index("rollback.started")
    before = kinds[:started]
    assert before.count("target.degraded") == 1
    assert "escalation.raised" not in before
    assert not any("platform incident" in e["data"]["summary"] for e in events)
    decided = [e["data"]["decision"] for e in events[:started] if short(e) == "decision.made"]
    assert decided[-1]["rollback"] is True
    assert decided[-1]["outcome"] == "controlled"
    shapes = [(d["outcome"], d["rollback"], d["blocked_by"]) for d in decided]
    assert all(a != b for a, b in itertools.pairwise(shapes))
    assert len(decided) <= 5
    statuses = [payload["state"] for kind, payload in messages if kind == "status"]
    after = statuses[statuses.index("degraded") :]
    assert "healthy" not in after
    assert "rolling-back" in after
