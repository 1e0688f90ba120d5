"""The two operator actions, end to end through the API of a running daemon: roll back now (the
same action, verification and events as an automatic rollback; refused while frozen unless
forced, and while a rollback is under way) and accept (the release is not judged until the next
revision)."""

from __future__ import annotations

import aiohttp
import pytest

from rollbackd.daemon.app import Daemon
from rollbackd.decision.facts import ClusterFacts
from rollbackd.run import Phase
from tests.kubefixtures import wait_until
from tests.test_daemon import HEALTHY, INTERVAL_S, SEVERE, Api, ScriptedHealth, ScriptedMetrics
from tests.test_daemon_rollbacks import ScriptedTargets, settings

ROLLBACK = "/api/v1/targets/shop/checkout/rollback"
ACCEPT = "/api/v1/targets/shop/checkout/accept"


@pytest.mark.looptime
async def test_roll_back_now_acts_through_the_same_run_and_is_refused_while_frozen_or_under_way() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets(action_s=5 * INTERVAL_S)
    async with (
        aiohttp.ClientSession() as session,
        Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        api = Api(session, daemon)
        await wait_until(lambda: daemon.ticks >= 2, timeout_s=5 * INTERVAL_S, what="two ticks")
        assert (await api.call("POST", "/api/v1/targets/shop/nothing/rollback", {"reason": "x"}))[0] == 404
        status, answer = await api.call("POST", ROLLBACK, {})
        assert status == 400
        assert "reason is required" in answer["error"]

        await api.call("POST", "/api/v1/freeze", {"reason": "incident"})
        status, answer = await api.call("POST", ROLLBACK, {"reason": "bad config"})
        assert status == 409
        assert "freeze is on" in answer["error"]
        assert '"force": true' in answer["error"]
        assert cluster.runs == []

        status, answer = await api.call("POST", ROLLBACK, {"reason": "bad config", "force": True})
        assert status == 202, answer
        run_id = answer["run_id"]
        run = daemon.rollbacks.runs["shop/checkout"]
        assert run.run_id == run_id
        assert run.reasons == ("manual: bad config (by anonymous)",)
        await wait_until(lambda: cluster.runs == [False], what="the action ran once")

        status, answer = await api.call("POST", ROLLBACK, {"reason": "again", "force": True})
        assert status == 409
        assert "already under way" in answer["error"]

        await wait_until(lambda: run.phase is Phase.VERIFIED, timeout_s=30 * INTERVAL_S, what="verified")
        shown = (await api.target())["rollback"]
        assert shown["phase"] == "verified"
        assert cluster.runs == [False]


@pytest.mark.looptime
async def test_roll_back_now_rolls_back_what_runs_now_not_what_an_earlier_breach_judged() -> None:
    metrics = ScriptedMetrics(SEVERE)
    # Facts are reused for an hour: only a fresh read sees the newer revision.
    cluster = ScriptedTargets(facts_value=ClusterFacts(candidate_revision=5), max_age_s=3600.0)
    async with (
        aiohttp.ClientSession() as session,
        Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        api = Api(session, daemon)
        await api.call("POST", "/api/v1/freeze", {"reason": "incident"})
        # Revision 5 breaches, held back by the freeze: its breach episode judged revision 5.
        await wait_until(lambda: daemon.ticks >= 3, timeout_s=10 * INTERVAL_S, what="three ticks")
        assert (await api.target())["decision"]["blocked_by"] == "freeze"
        assert cluster.runs == []

        cluster.facts_value = ClusterFacts(candidate_revision=6)  # a new release, not read by a tick yet
        status, answer = await api.call("POST", ROLLBACK, {"reason": "6 is broken too", "force": True})
        assert status == 202, answer
        await wait_until(lambda: cluster.runs == [False], what="the action ran once")
        assert cluster.bad_revisions == [6]


@pytest.mark.looptime
async def test_an_accepted_release_is_not_rolled_back_until_the_next_revision() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets(facts_value=ClusterFacts(candidate_revision=5))
    async with (
        aiohttp.ClientSession() as session,
        Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        api = Api(session, daemon)
        await wait_until(lambda: daemon.ticks >= 2, timeout_s=5 * INTERVAL_S, what="two ticks")
        status, view = await api.call("POST", ACCEPT, {"reason": "known slow migration, expected"})
        assert status == 200, view
        assert view["accepted"]["by"] == "anonymous"
        assert view["accepted"]["reason"] == "known slow migration, expected"

        metrics.pair = SEVERE
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 5, timeout_s=10 * INTERVAL_S, what="5 severe ticks")
        target = await api.target()
        assert target["decision"]["blocked_by"] == "accepted"
        assert target["decision"]["escalate"] is False
        assert cluster.runs == []
        assert target["accepted"]["revision"] == 5  # pinned to the revision the cluster showed
        status, page = await api.call("GET", "/")
        assert status == 200
        assert "<b>Accepted</b> by anonymous" in page
        assert "known slow migration, expected" in page

        # A new revision ends the acceptance: judged again, and rolled back.
        cluster.facts_value = ClusterFacts(candidate_revision=6)
        await wait_until(lambda: cluster.runs == [False], timeout_s=10 * INTERVAL_S,
                         what="the next revision rolled back")
        assert (await api.target())["accepted"] is None


@pytest.mark.looptime
async def test_a_withdrawn_acceptance_lets_the_release_be_judged_again() -> None:
    metrics = ScriptedMetrics(SEVERE)
    cluster = ScriptedTargets(facts_value=ClusterFacts(candidate_revision=5))
    async with (
        aiohttp.ClientSession() as session,
        Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        api = Api(session, daemon)
        assert (await api.call("POST", ACCEPT, {"reason": "expected"}))[0] == 200
        ticks = daemon.ticks
        await wait_until(lambda: daemon.ticks >= ticks + 4, timeout_s=10 * INTERVAL_S, what="4 severe ticks")
        assert cluster.runs == []
        status, view = await api.call("DELETE", ACCEPT, {"reason": "it was not expected after all"})
        assert status == 200
        assert view["accepted"] is None
        await wait_until(lambda: cluster.runs == [False], timeout_s=10 * INTERVAL_S, what="rolled back")
