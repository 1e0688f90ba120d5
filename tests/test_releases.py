"""Releases announced from outside (a feature flag turned on, a configuration change applied):
``POST /api/v1/releases`` and ``rollbackd release start`` against a running daemon, the target
judged from the release's start against its own history before it, stored (idempotent by id,
kept across restarts), shown in the history, the events, the API and the status page."""

from __future__ import annotations

import argparse
import asyncio
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollbackd.cli import build_parser
from rollbackd.config.settings import Side, StoreSettings, TargetSettings
from rollbackd.ctl.client import EXIT_NOT_FOUND, EXIT_OK
from rollbackd.ctl.verbs import run_verb
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.wiring import open_daemon
from rollbackd.detectors.judge import Judge
from rollbackd.model import Observation, Sample, Strategy
from rollbackd.params import TargetParams
from rollbackd.releases import Release, ReleaseError
from tests.kubefixtures import wait_until
from tests.test_daemon import INTERVAL_S, Api, ScriptedHealth, ScriptedMetrics, make_settings
from tests.test_daemon_rollbacks import ScriptedTargets

TARGET = "shop/checkout"
GOOD = Sample(requests=1000, errors=2)
#: 30% errors against a 1% SLO: severe.
BAD = Sample(requests=1000, errors=300)
FLAG = {
    "id": "new-checkout-on-4711",
    "target": TARGET,
    "kind": "flag",
    "description": "new_checkout turned on",
    "details": {"flag": "new_checkout"},
}


def deployment() -> TargetSettings:
    return TargetSettings(name="checkout", namespace="shop", strategy=Strategy.DEPLOYMENT,
                          candidate=Side(deployment="checkout"))


# --- the judge: the release is the cut ------------------------------------------------------------


def test_the_window_starts_over_at_the_release_and_what_came_before_is_the_reference() -> None:
    judge = Judge(TargetParams(key=TARGET, strategy=Strategy.DEPLOYMENT, interval_s=10.0))
    for t in range(0, 200, 10):
        judge.observe(Observation(TARGET, float(t), None, GOOD))
    # The flag went on at t=195; the daemon heard of it late, at t=230, after three bad intervals.
    for t in (200, 210, 220):
        judge.observe(Observation(TARGET, float(t), None, BAD))
    evidences = judge.released(195.0)
    assert [obs.t for obs in judge.kept()] == [200.0, 210.0, 220.0]
    assert len(evidences) == 3
    latest = judge.observe(Observation(TARGET, 230.0, None, BAD))
    assert latest.breached
    assert latest.attributable
    assert latest.impact.value == "severe"
    assert latest.since == 200.0  # the breach began with the release


def test_intervals_already_suspect_before_the_release_are_not_its_healthy_past() -> None:
    judge = Judge(TargetParams(key=TARGET, strategy=Strategy.DEPLOYMENT, interval_s=10.0))
    for t in range(0, 100, 10):
        judge.observe(Observation(TARGET, float(t), None, BAD))
    judge.released(95.0)
    # The release fixed things; the bad past is not taken as what "normal" looks like either.
    evidence = judge.observe(Observation(TARGET, 100.0, None, GOOD))
    assert not evidence.breached


def test_a_release_names_the_field_it_cannot_take() -> None:
    with pytest.raises(ReleaseError, match="target must be namespace/name"):
        Release.from_json({"target": "checkout"})
    with pytest.raises(ReleaseError, match="kind must be a lowercase word"):
        Release.from_json({"target": TARGET, "kind": "Feature Flag"})
    with pytest.raises(ReleaseError, match="started_at must be an ISO 8601 time"):
        Release.from_json({"target": TARGET, "started_at": "yesterday"})
    with pytest.raises(ReleaseError, match="started_at must carry a timezone"):
        Release.from_json({"target": TARGET, "started_at": "2026-12-06T17:03:12"})
    release = Release.from_json({"target": TARGET, "started_at": "2026-12-06T18:03:12+01:00"}, who="ci")
    assert release.started_at == datetime(2026, 12, 6, 17, 3, 12, tzinfo=UTC)
    assert release.kind == "other"
    assert release.who == "ci"
    assert release.id  # a new one when none is given


# --- the API, on a running daemon -----------------------------------------------------------------


@pytest.mark.looptime
async def test_an_announced_flag_release_is_judged_from_its_start_and_rolled_back() -> None:
    metrics = ScriptedMetrics((None, GOOD))
    cluster = ScriptedTargets()
    async with (
        aiohttp.ClientSession() as session,
        Daemon(make_settings(deployment()), metrics_source=metrics, health_source=ScriptedHealth(),
               targets=cluster) as daemon,
    ):
        api = Api(session, daemon)
        await wait_until(lambda: daemon.ticks >= 6, timeout_s=10 * INTERVAL_S, what="six healthy ticks")

        status, answer = await api.call("POST", "/api/v1/releases", {**FLAG, "target": "shop/nothing"})
        assert status == 404
        assert "no target shop/nothing is watched here" in answer["error"]
        assert TARGET in answer["error"]  # the targets there are
        status, answer = await api.call("POST", "/api/v1/releases", {**FLAG, "kind": "Flag Flip"})
        assert status == 400
        assert "kind must be a lowercase word" in answer["error"]
        status, answer = await api.call("POST", "/api/v1/releases", {**FLAG, "colour": "red"})
        assert status == 400
        assert "unknown field 'colour'" in answer["error"]

        status, answer = await api.call("POST", "/api/v1/releases", FLAG)
        assert status == 201, answer
        assert answer["created"] is True
        release = answer["release"]
        assert (release["id"], release["kind"], release["who"]) == (FLAG["id"], "flag", "anonymous")
        assert release["details"] == {"flag": "new_checkout"}
        assert (await api.target())["release"] == release

        # Announced again (a retried pipeline step): the same release, nothing new.
        status, again = await api.call("POST", "/api/v1/releases", {**FLAG, "description": "retry"})
        assert status == 200
        assert again["created"] is False
        assert again["release"] == release

        metrics.pair = (None, BAD)
        await wait_until(lambda: cluster.runs == [False], timeout_s=10 * INTERVAL_S, what="rolled back")
        decision = daemon.state.targets[TARGET].last_rollback
        assert decision is not None
        assert decision.rollback

        status, listed = await api.call("GET", f"/api/v1/releases?target={TARGET}")
        assert status == 200
        assert listed["releases"] == [release]
        status, page = await api.call("GET", "/")
        assert "<b>Release</b> (flag)" in page
        assert "new_checkout turned on" in page


async def test_a_release_is_stored_shown_in_the_history_and_taken_again_after_a_restart(
    tmp_path: Path,
) -> None:
    """With the SQLite store of ``rollbackd run``: the release, its audit record and its
    ``release.started`` event in the store; a restarted daemon judges the target from it again."""
    settings = make_settings(deployment()).model_copy(
        update={"store": StoreSettings(data_dir=str(tmp_path / "data"))}
    )
    started = datetime.now(UTC) - timedelta(seconds=30)
    body = {**FLAG, "started_at": started.isoformat()}

    async def one_run(announce: bool) -> dict[str, Any]:
        async with open_daemon(
            settings, metrics_source=ScriptedMetrics((None, GOOD)), health_source=ScriptedHealth()
        ) as daemon, aiohttp.ClientSession() as session:
            api = Api(session, daemon)
            await wait_until(lambda: daemon.journal.attached, timeout_s=30, what="the store open")
            if announce:
                status, answer = await api.call("POST", "/api/v1/releases", body)
                assert status == 201, answer
            await wait_until(lambda: daemon.state.targets[TARGET].release is not None, timeout_s=30,
                             what="the release taken")
            status, history = await api.call("GET", f"/api/v1/history?target={TARGET}")
            assert status == 200
            return {"target": await api.target(), "history": history["entries"]}

    first = await one_run(announce=True)
    second = await one_run(announce=False)
    assert second["target"]["release"] == first["target"]["release"]
    assert second["target"]["release"]["started_at"].startswith(started.strftime("%Y-%m-%dT%H:%M:%S"))
    kinds = [entry["kind"] for entry in second["history"]]
    assert kinds.count("release.started") == 1
    (entry,) = [e for e in second["history"] if e["kind"] == "release.started"]
    assert "flag release started by anonymous: new_checkout turned on" in entry["summary"]
    assert entry["details"]["release"]["id"] == FLAG["id"]


@pytest.mark.looptime
async def test_release_start_on_the_command_line() -> None:
    async with (
        Daemon(make_settings(deployment()), metrics_source=ScriptedMetrics((None, GOOD)),
               health_source=ScriptedHealth()) as daemon,
    ):
        server = f"http://127.0.0.1:{daemon.port}"

        def release_start(*argv: str) -> tuple[int, str, str]:
            parser = build_parser("rollbackd")
            args: argparse.Namespace = parser.parse_args(["release", "start", *argv, "--server", server])
            out, err = io.StringIO(), io.StringIO()
            code = run_verb(args, environ={}, out=out, err=err)
            return code, out.getvalue(), err.getvalue()

        argv = ("shop/checkout", "--kind", "flag", "--id", "cli-1", "--description", "new_checkout on",
                "--detail", "flag=new_checkout")
        code, out, err = await asyncio.to_thread(release_start, *argv)
        assert code == EXIT_OK, err
        assert "release cli-1 of shop/checkout announced" in out
        assert "kind: flag" in out
        code, out, _ = await asyncio.to_thread(release_start, *argv)
        assert code == EXIT_OK
        assert "already announced (same id)" in out
        code, _, err = await asyncio.to_thread(release_start, "shop/nothing", "--kind", "flag")
        assert code == EXIT_NOT_FOUND
        assert "no target shop/nothing is watched here" in err
        taken = daemon.state.targets[TARGET].release
        assert taken is not None
        assert taken.details == {"flag": "new_checkout"}
