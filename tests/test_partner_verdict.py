"""The verdict partners ask for (Argo Rollouts' ``web`` metric, Flagger's ``rollback`` webhook):
the mapping of rollbackd's decisions to pass | fail | inconclusive, and the endpoints of a running
daemon answering for a healthy, a bad and a silent target."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rollbackd.config.settings import ApiSettings, HttpSettings, Settings, StoreSettings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.wiring import open_daemon
from rollbackd.decision.verdict import Verdict, partner_verdict
from rollbackd.model import Attribution, Decision, Episode, Evidence, Impact, Outcome, Sample
from rollbackd.sources.base import SidePair, SourceTarget
from tests.kubefixtures import wait_until
from tests.test_daemon import HEALTHY, SEVERE, ScriptedHealth, canary
from tests.test_daemon_rollbacks import ScriptedTargets

INTERVAL_S = 0.1
TOKEN = "verdict-T0ken-5e1f"


# --- the mapping, decision by decision -----------------------------------------------------------

def evidence(*, impact: Impact = Impact.NONE, inconclusive: bool = False) -> Evidence:
    return Evidence(target="shop/web", t=10.0, impact=impact, attributable=impact is not Impact.NONE,
                    inconclusive=inconclusive)


EPISODE = Episode(opened_at=5.0, onset=5.0, impact=Impact.SEVERE, attribution=Attribution.ATTRIBUTABLE,
                  proven_at=10.0)


def decision(
    outcome: Outcome,
    *,
    rollback: bool = False,
    blocked_by: str | None = None,
    dry_run: bool = False,
    breach: bool = True,
    inconclusive: bool = False,
) -> Decision:
    return Decision(
        target="shop/web", t=10.0, outcome=outcome, rollback=rollback, reasons=("why",),
        evidence=evidence(impact=Impact.SEVERE if breach else Impact.NONE, inconclusive=inconclusive),
        blocked_by=blocked_by, dry_run=dry_run, episode=EPISODE if breach else None,
    )


@pytest.mark.parametrize(
    ("made", "expected"),
    [
        (decision(Outcome.IMMEDIATE, rollback=True), Verdict.FAIL),
        (decision(Outcome.CONTROLLED, rollback=True), Verdict.FAIL),
        (decision(Outcome.IMMEDIATE, rollback=True, dry_run=True), Verdict.FAIL),
        # rollbackd's own limits on acting do not make the release any better
        (decision(Outcome.IMMEDIATE, blocked_by="cooldown"), Verdict.FAIL),
        (decision(Outcome.IMMEDIATE, blocked_by="rate-limit"), Verdict.FAIL),
        (decision(Outcome.IMMEDIATE, blocked_by="standby"), Verdict.FAIL),
        (decision(Outcome.IMMEDIATE, blocked_by="store"), Verdict.FAIL),
        (decision(Outcome.NONE, blocked_by="rollback-in-progress"), Verdict.FAIL),
        # a person asked that nothing be rolled back, or a fix comes: pause, do not roll back
        (decision(Outcome.IMMEDIATE, blocked_by="freeze"), Verdict.INCONCLUSIVE),
        (decision(Outcome.NONE, blocked_by="hold"), Verdict.INCONCLUSIVE),
        (decision(Outcome.NONE, blocked_by="newer-rollout"), Verdict.INCONCLUSIVE),
        # the runbook does not roll back for these
        (decision(Outcome.NONE, blocked_by="not-attributable"), Verdict.INCONCLUSIVE),
        (decision(Outcome.NONE, blocked_by="rollback-risk"), Verdict.INCONCLUSIVE),
        (decision(Outcome.NONE, blocked_by="attribution-pending"), Verdict.INCONCLUSIVE),
        (decision(Outcome.CONTROLLED), Verdict.INCONCLUSIVE),  # within the controlled grace
        (decision(Outcome.IMMEDIATE, blocked_by="unproven"), Verdict.INCONCLUSIVE),
        (decision(Outcome.INCONCLUSIVE, breach=False, inconclusive=True), Verdict.INCONCLUSIVE),
        (decision(Outcome.NONE, breach=False), Verdict.PASS),
        (None, Verdict.INCONCLUSIVE),
    ],
)
def test_fail_is_exactly_what_rollbackd_would_roll_back(made: Decision | None, expected: Verdict) -> None:
    verdict = partner_verdict(made, now=10.5, interval_s=1.0)
    assert verdict.verdict is expected
    assert verdict.would_roll_back is (expected is Verdict.FAIL)
    assert verdict.reasons


def test_an_old_decision_is_no_answer() -> None:
    bad = decision(Outcome.IMMEDIATE, rollback=True)
    assert partner_verdict(bad, now=12.9, interval_s=1.0).verdict is Verdict.FAIL
    stale = partner_verdict(bad, now=13.1, interval_s=1.0)
    assert stale.verdict is Verdict.INCONCLUSIVE
    assert "no current judgement" in stale.reasons[0]


# --- a running daemon ----------------------------------------------------------------------------

class PerTarget:
    """Serves each target its own pair; targets without one get no data at all."""

    def __init__(self, pairs: Mapping[str, SidePair]) -> None:
        self.pairs = dict(pairs)

    async def collect(self, targets: Sequence[SourceTarget], *, window_s: float) -> Mapping[str, SidePair]:
        return {target.key: self.pairs[target.key] for target in targets if target.key in self.pairs}


def settings(data_dir: Path, api: ApiSettings | None = None) -> Settings:
    return Settings(
        interval_s=INTERVAL_S,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(data_dir)),
        api=api or ApiSettings(),
        targets=(canary("healthy"), canary("bad"), canary("quiet")),
    )


@contextlib.asynccontextmanager
async def running(
    config: Settings, metrics: PerTarget, targets: ScriptedTargets | None = None
) -> AsyncIterator[tuple[Daemon, aiohttp.ClientSession]]:
    async with (
        open_daemon(
            config, metrics_source=metrics, health_source=ScriptedHealth(), targets=targets
        ) as daemon,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
    ):
        await wait_until(lambda: daemon.journal.attached and daemon.ready, timeout_s=30, what="ready")
        yield daemon, session


async def ask(session: aiohttp.ClientSession, daemon: Daemon, path: str, *, method: str = "GET",
              body: Any = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with session.request(method, f"http://127.0.0.1:{daemon.port}{path}", json=body,
                               headers=headers) as response:
        return response.status, await response.json()


#: What Flagger posts to a webhook (its CanaryWebhookPayload).
FLAGGER_PAYLOAD = {"name": "bad", "namespace": "shop", "phase": "Progressing", "checksum": "abc123",
                   "metadata": {"target": "shop/bad"}}


async def test_a_running_daemon_answers_pass_fail_and_inconclusive(tmp_path: Path) -> None:
    quiet = (Sample(0, 0), Sample(0, 0))
    metrics = PerTarget({"shop/healthy": HEALTHY, "shop/bad": SEVERE, "shop/quiet": quiet})
    async with running(settings(tmp_path), metrics) as (daemon, session):
        async def verdict_of(name: str) -> str:
            status, body = await ask(session, daemon, f"/api/v1/targets/shop/{name}/verdict")
            assert status == 200
            return str(body["verdict"])

        async def settled() -> bool:
            return [await verdict_of(name) for name in ("healthy", "bad")] == ["pass", "fail"]

        await wait_until(settled, timeout_s=30, interval_s=0.05, what="a pass and a fail")

        status, bad = await ask(session, daemon, "/api/v1/targets/shop/bad/verdict")
        assert status == 200
        assert bad["target"] == "shop/bad"
        assert bad["verdict"] == "fail"
        assert bad["rollback"] is True
        assert any("severe" in reason for reason in bad["reasons"])
        assert (bad["strategy"], bad["action"]) == ("canary", "canary-abort")
        assert bad["decision"]["outcome"] == "immediate"
        decided_at = datetime.fromisoformat(bad["decided_at"])
        assert decided_at.tzinfo is not None
        assert bad["decided_at"].endswith("Z")
        assert abs((datetime.now(UTC) - decided_at).total_seconds()) < 5
        assert 0 <= bad["age_s"] < 5

        status, healthy = await ask(session, daemon, "/api/v1/targets/shop/healthy/verdict")
        assert (status, healthy["verdict"], healthy["rollback"]) == (200, "pass", False)
        assert healthy["reasons"][0] == "no SLO breach"

        status, quiet = await ask(session, daemon, "/api/v1/targets/shop/quiet/verdict")
        assert (status, quiet["verdict"], quiet["rollback"]) == (200, "inconclusive", False)
        assert any("not enough data" in reason for reason in quiet["reasons"])

        # Flagger's rollback webhook: 2xx exactly when rollbackd would roll back
        assert (await ask(session, daemon, "/api/v1/targets/shop/bad/rollback-check", method="POST",
                          body=FLAGGER_PAYLOAD))[0] == 200
        assert (await ask(session, daemon, "/api/v1/targets/shop/bad/rollback-check"))[0] == 200
        for name in ("healthy", "quiet"):
            status, body = await ask(session, daemon, f"/api/v1/targets/shop/{name}/rollback-check",
                                     method="POST", body=FLAGGER_PAYLOAD)
            assert status == 412, name
            assert body["rollback"] is False

        status, missing = await ask(session, daemon, "/api/v1/targets/shop/nope/verdict")
        assert status == 404
        assert "no target shop/nope" in missing["error"]
        assert (await ask(session, daemon, "/api/v1/targets/shop/nope/rollback-check", method="POST",
                          body=FLAGGER_PAYLOAD))[0] == 404


async def test_a_frozen_daemon_tells_partners_to_pause_not_to_roll_back(tmp_path: Path) -> None:
    config = settings(tmp_path).model_copy(update={"api": ApiSettings(allow_unauthenticated_writes=True)})
    async with running(config, PerTarget({"shop/bad": SEVERE})) as (daemon, session):
        assert (await ask(session, daemon, "/api/v1/freeze", method="POST"))[0] == 200

        async def frozen_verdict() -> bool:
            body = (await ask(session, daemon, "/api/v1/targets/shop/bad/verdict"))[1]
            return bool(body["decision"]) and body["decision"]["blocked_by"] == "freeze"

        await wait_until(frozen_verdict, timeout_s=30, interval_s=0.05, what="a decision held by the freeze")
        status, body = await ask(session, daemon, "/api/v1/targets/shop/bad/verdict")
        assert (status, body["verdict"]) == (200, "inconclusive")
        assert any("freeze" in reason for reason in body["reasons"])
        assert (await ask(session, daemon, "/api/v1/targets/shop/bad/rollback-check", method="POST",
                          body=FLAGGER_PAYLOAD))[0] == 412


async def test_verdicts_need_the_token_under_protect_reads_unless_opened(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    protected = ApiSettings(token_file=str(token_file), protect_reads=True)
    metrics = PerTarget({"shop/healthy": HEALTHY})
    async with running(settings(tmp_path / "a", protected), metrics) as (daemon, session):
        assert (await ask(session, daemon, "/api/v1/targets/shop/healthy/verdict"))[0] == 401
        assert (await ask(session, daemon, "/api/v1/targets/shop/healthy/rollback-check", method="POST",
                          body=FLAGGER_PAYLOAD))[0] == 401
        assert (await ask(session, daemon, "/api/v1/targets/shop/healthy/verdict", token=TOKEN))[0] == 200

    opened = protected.model_copy(update={"verdicts_open": True})
    async with running(settings(tmp_path / "b", opened), metrics) as (daemon, session):
        assert (await ask(session, daemon, "/api/v1/targets/shop/healthy/verdict"))[0] == 200
        assert (await ask(session, daemon, "/api/v1/targets/shop/healthy/rollback-check", method="POST",
                          body=FLAGGER_PAYLOAD))[0] in (200, 412)
        # the rest of the API stays protected, and the verdicts change nothing
        assert (await ask(session, daemon, "/api/v1/targets/shop/healthy"))[0] == 401
        assert (await ask(session, daemon, "/api/v1/freeze", method="POST"))[0] == 401


async def test_a_target_in_dry_run_is_judged_for_its_partner_but_never_acted_on(tmp_path: Path) -> None:
    config = settings(tmp_path)
    partnered = config.targets[1].model_copy(update={"dry_run": True})  # shop/bad: Flagger rolls it back
    config = config.model_copy(update={"targets": (config.targets[0], partnered)})
    targets = ScriptedTargets(action_s=0.0)
    async with running(config, PerTarget({"shop/healthy": HEALTHY, "shop/bad": SEVERE}), targets) as (
        daemon, session,
    ):
        async def failing() -> bool:
            body = (await ask(session, daemon, "/api/v1/targets/shop/bad/verdict"))[1]
            return bool(body["verdict"] == "fail")

        await wait_until(failing, timeout_s=30, interval_s=0.05, what="a fail verdict")
        await wait_until(lambda: bool(targets.runs), timeout_s=30, what="the dry-run plan")
        status, body = await ask(session, daemon, "/api/v1/targets/shop/bad/rollback-check", method="POST",
                                 body=FLAGGER_PAYLOAD)
        assert status == 200
        assert any("dry-run" in reason for reason in body["reasons"])
        assert body["decision"]["rollback"] is True
    assert targets.runs
    assert all(targets.runs), "a target in dry-run must only ever be planned, never acted on"
