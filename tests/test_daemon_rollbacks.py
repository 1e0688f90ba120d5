"""The daemon carries out its decisions: one action per rollback, verification over the validation
window, dry-run plans, failures escalated — with a scripted cluster behind the TargetAccess protocol
(the real Kubernetes side is tested against the emulator elsewhere)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import pytest

from rollbackd.actions.base import ActionOutcome, ActionResult, Change, ChangeRecorder, Progress
from rollbackd.config.settings import Settings, VerificationSettings
from rollbackd.daemon.app import Daemon
from rollbackd.decision.facts import ClusterFacts
from rollbackd.model import Risk, Sample
from rollbackd.params import TargetParams
from rollbackd.run import Phase
from tests.test_daemon import HEALTHY, INTERVAL_S, SEVERE, Api, ScriptedHealth, ScriptedMetrics, make_settings


@dataclass
class ScriptedAction:
    cluster: ScriptedTargets
    name: str = "canary-abort"

    async def run(self, *, dry_run: bool, recorder: ChangeRecorder | None = None,
                  progress: Progress | None = None) -> ActionResult:
        self.cluster.runs.append(dry_run)
        await asyncio.sleep(self.cluster.action_s)
        if dry_run:
            return ActionResult(
                self.name,
                "shop/checkout",
                ActionOutcome.PLANNED,
                "would abort the canary",
                changes=(Change("Deployment/shop/checkout-canary", "spec.replicas", 3, 0),),
            )
        return ActionResult(self.name, "shop/checkout", self.cluster.outcome, self.cluster.reason, api_s=0.1)


@dataclass
class ScriptedTargets:
    outcome: ActionOutcome = ActionOutcome.DONE
    reason: str = "canary aborted; stable fully available"
    action_s: float = 1.0
    facts_value: ClusterFacts = field(default_factory=ClusterFacts)
    available: bool | None = True
    runs: list[bool] = field(default_factory=list)
    facts_calls: int = 0
    read_at: dict[str, float] = field(default_factory=dict)
    kept: dict[str, ClusterFacts] = field(default_factory=dict)
    #: Facts younger than this are reused (the rule of ``kubernetes.facts_max_age_s``).
    max_age_s: float = 0.0
    #: The revision each action was made to roll back (``None``: the one running when it starts).
    bad_revisions: list[int | None] = field(default_factory=list)

    async def facts(self, params: TargetParams, *, loop_now: float, fresh: bool = False) -> ClusterFacts:
        """Reads ``facts_value`` (counted), or reuses the last read while younger than ``max_age_s``."""
        read_at = self.read_at.get(params.key)
        if read_at is not None and not fresh and 0.0 <= loop_now - read_at < self.max_age_s:
            return self.kept[params.key]
        self.facts_calls += 1
        self.read_at[params.key], self.kept[params.key] = loop_now, self.facts_value
        return self.facts_value

    def facts_read_at(self, key: str) -> float | None:
        return self.read_at.get(key)

    def action(
        self, params: TargetParams, *, bad_revision: int | None = None, why: object = None
    ) -> ScriptedAction:
        self.bad_revisions.append(bad_revision)
        return ScriptedAction(self)

    async def serving_available(self, params: TargetParams) -> bool | None:
        return self.available


def settings(*, dry_run: bool = False, window_s: float = 60.0) -> Settings:
    return make_settings(dry_run=dry_run).model_copy(
        update={"verification": VerificationSettings(window_s=window_s)}
    )


@pytest.mark.looptime
async def test_a_rollback_decision_acts_once_then_verifies() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets()
    async with (
        aiohttp.ClientSession() as session,
        Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        api = Api(session, daemon)
        await asyncio.sleep(3 * INTERVAL_S)
        assert cluster.facts_calls == 0  # healthy targets cost the cluster nothing
        metrics.pair = SEVERE
        await asyncio.sleep(2 * INTERVAL_S)
        run = daemon.rollbacks.runs["shop/checkout"]
        assert run.phase in (Phase.ACTING, Phase.VERIFYING)
        assert cluster.facts_calls >= 1
        # Traffic went back to stable, which is healthy: the candidate side still looks bad in
        # the data, but the daemon never acts twice and verifies the stable side.
        await asyncio.sleep(3 * INTERVAL_S)
        assert cluster.runs == [False]
        target = await api.target()
        assert target["decision"]["blocked_by"] in ("rollback-in-progress", None)
        metrics.pair = HEALTHY
        await asyncio.sleep(8 * INTERVAL_S)
        run = daemon.rollbacks.runs["shop/checkout"]
        assert run.phase is Phase.VERIFIED
        assert run.verification is not None
        assert "rollback verified" in run.verification.reasons[0]
        assert run.duration_s is not None
        assert run.within_runbook_target
        assert cluster.runs == [False]
        assert await api.metric("rollbackd_rollbacks_total", result="verified") == 1
        shown = (await api.target())["rollback"]
        assert shown["phase"] == "verified"
        assert shown["action"]["outcome"] == "done"
        assert shown["verification"]["status"] == "verified"
        assert shown["within_runbook_target"] is True
        status, page = await api.call("GET", "/")
        assert status == 200
        assert "Rollback verified" in page
        assert "Verification verified" in page


@pytest.mark.looptime
async def test_a_failed_verification_escalates_and_never_rolls_back_again() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets()
    async with Daemon(
        settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
    ) as daemon:
        await asyncio.sleep(3 * INTERVAL_S)
        bad_everywhere = (SEVERE[1], SEVERE[1])  # stable fails after the rollback too
        metrics.pair = SEVERE
        await asyncio.sleep(3 * INTERVAL_S)
        metrics.pair = bad_everywhere
        await asyncio.sleep(6 * INTERVAL_S)
        run = daemon.rollbacks.runs["shop/checkout"]
        assert run.phase is Phase.VERIFICATION_FAILED
        assert cluster.runs == [False]
        await asyncio.sleep(6 * INTERVAL_S)
        assert cluster.runs == [False]  # the breach goes on: not attributable any more, and in cooldown


@pytest.mark.looptime
async def test_dry_run_plans_once_and_changes_nothing() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets()
    async with Daemon(
        settings(dry_run=True), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster
    ) as daemon:
        await asyncio.sleep(3 * INTERVAL_S)
        metrics.pair = SEVERE
        await asyncio.sleep(6 * INTERVAL_S)
        assert cluster.runs == [True]
        plan = daemon.rollbacks.dry_run_plan("shop/checkout")
        assert plan is not None
        assert plan.outcome is ActionOutcome.PLANNED
        assert "shop/checkout" not in daemon.rollbacks.runs
        async with aiohttp.ClientSession() as session:
            shown = await Api(session, daemon).target()
        assert shown["dry_run_plan"]["changes"] == [
            {"object": "Deployment/shop/checkout-canary", "field": "spec.replicas", "before": 3, "after": 0}
        ]


@pytest.mark.looptime
async def test_a_refused_action_is_final_and_reported() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets(outcome=ActionOutcome.REFUSED, reason="no earlier revision of the Deployment")
    async with (
        aiohttp.ClientSession() as session,
        Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        await asyncio.sleep(2 * INTERVAL_S)
        metrics.pair = SEVERE
        await asyncio.sleep(4 * INTERVAL_S)
        assert daemon.rollbacks.runs["shop/checkout"].phase is Phase.REFUSED
        assert await Api(session, daemon).metric("rollbackd_rollbacks_total", result="refused") == 1


@pytest.mark.looptime
async def test_high_risk_from_the_cluster_escalates_instead() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets(
        facts_value=ClusterFacts(risk=Risk.HIGH, risk_reason="annotated rollbackd.io/rollback-risk=high")
    )
    async with (
        aiohttp.ClientSession() as session,
        Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        await asyncio.sleep(2 * INTERVAL_S)
        metrics.pair = SEVERE
        await asyncio.sleep(4 * INTERVAL_S)
        assert cluster.runs == []
        target = await Api(session, daemon).target()
        assert target["decision"]["blocked_by"] == "rollback-risk"
        assert "rollback-risk=high" in target["decision"]["reasons"][0]


#: A manageable regression: 3% errors against the 1% SLO (severe at 5%), a controlled rollback.
MODERATE = (HEALTHY[0], Sample(requests=1000, errors=30))


@pytest.mark.looptime
async def test_facts_are_reused_between_ticks_and_read_again_before_acting() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    # Low risk: a controlled rollback is due after the grace period. Facts are kept for an hour.
    cluster = ScriptedTargets(max_age_s=3600.0)
    config = settings()
    grace_s = config.defaults.policy.controlled_grace_s
    async with (
        aiohttp.ClientSession() as session,
        Daemon(config, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster) as daemon,
    ):
        await asyncio.sleep(2 * INTERVAL_S)
        metrics.pair = MODERATE
        await asyncio.sleep(4 * INTERVAL_S)
        assert cluster.runs == []
        assert cluster.facts_calls == 1  # breached at every tick since, read once
        # Someone marks the release high-risk; the facts kept from the first read do not say so.
        cluster.facts_value = ClusterFacts(
            risk=Risk.HIGH, risk_reason="annotated rollbackd.io/rollback-risk=high"
        )
        await asyncio.sleep(grace_s + 4 * INTERVAL_S)
        assert cluster.runs == []
        assert cluster.facts_calls == 2  # read again when the kept facts said "roll back now"
        target = await Api(session, daemon).target()
        assert target["decision"]["blocked_by"] == "rollback-risk"
        assert "rollback-risk=high" in target["decision"]["reasons"][0]


@pytest.mark.looptime
async def test_reused_facts_that_still_hold_when_read_again_lead_to_the_rollback() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    cluster = ScriptedTargets(max_age_s=3600.0)
    config = settings()
    async with Daemon(config, metrics_source=metrics, health_source=ScriptedHealth(), targets=cluster):
        await asyncio.sleep(2 * INTERVAL_S)
        metrics.pair = MODERATE
        await asyncio.sleep(config.defaults.policy.controlled_grace_s + 6 * INTERVAL_S)
        assert cluster.runs == [False]
        assert cluster.facts_calls == 2


@pytest.mark.looptime
async def test_without_a_cluster_the_daemon_decides_only() -> None:
    metrics = ScriptedMetrics(HEALTHY)
    async with Daemon(settings(), metrics_source=metrics, health_source=ScriptedHealth()) as daemon:
        await asyncio.sleep(2 * INTERVAL_S)
        metrics.pair = SEVERE
        await asyncio.sleep(4 * INTERVAL_S)
        assert daemon.state.targets["shop/checkout"].last_rollback is not None
        assert daemon.rollbacks.runs == {}
