"""The daemon judging an Argo Rollouts Rollout and aborting it, on the emulated cluster through the real
client: the run, the audit trail, the Kubernetes Events, the API and the status page all name the
abort, and the verdict partners read says ``fail`` while it is decided."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from rollbackd.actions.targets import KubeTargets
from rollbackd.config.settings import (
    EventsSettings,
    HttpSettings,
    QueryOverride,
    Settings,
    Side,
    StoreSettings,
    TargetSettings,
    VerificationSettings,
)
from rollbackd.daemon.wiring import open_daemon
from rollbackd.demo.argo_rollouts import RolloutsController, seed_rollout
from rollbackd.demo.emulator import EVENTS, ROLLOUTS
from rollbackd.kube import KubeClient
from rollbackd.model import Strategy
from rollbackd.run import Phase
from rollbackd.store import open_store
from tests.kubefixtures import ClusterEmulator, Controllers, wait_until
from tests.test_actions_rollout import FAST
from tests.test_daemon import SEVERE, ScriptedHealth, ScriptedMetrics
from tests.test_kube_targets import seed_canary

NS = "shop"
KEY = "shop/checkout"


ROLLOUT_TARGET = TargetSettings(
    name="checkout", namespace=NS, strategy=Strategy.ARGO_ROLLOUT, rollout="checkout",
    baseline=Side(labels={"role": "stable"}), candidate=Side(labels={"role": "canary"}),
    queries=QueryOverride(group_labels=("namespace", "role")),
)


def settings(data_dir: Path, *targets: TargetSettings) -> Settings:
    return Settings(
        interval_s=0.1,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(data_dir)),
        verification=VerificationSettings(window_s=0.5),
        events=EventsSettings(kubernetes_events=True),
        targets=targets or (ROLLOUT_TARGET,),
    )


async def test_a_bad_canary_of_a_rollout_is_aborted_verified_and_told(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed_rollout(kube_cluster, NS, "checkout", stable_image="shop/checkout:1.4", image="shop/checkout:1.5",
                 revision=12)
    config = settings(tmp_path)
    async with (
        RolloutsController(kube_cluster),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        open_daemon(
            config, metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
            targets=KubeTargets(kube=kube, settings=config, action_settings=FAST), kube=kube,
        ) as daemon,
    ):
        base = f"http://127.0.0.1:{daemon.port}"

        async def verified() -> bool:
            run = daemon.rollbacks.runs.get(KEY)
            return run is not None and run.phase is Phase.VERIFIED

        await wait_until(verified, timeout_s=20, what="the abort verified")
        run = daemon.rollbacks.runs[KEY]
        assert run.action is not None
        assert run.action.action == "argo-rollout-abort"
        assert run.action.from_revision == 12
        async with session.get(f"{base}/api/v1/targets/{KEY}") as response:
            shown = await response.json()
        assert shown["strategy"] == "argo-rollout"
        assert shown["rollback"]["action"]["action"] == "argo-rollout-abort"
        assert shown["rollback"]["action"]["changes"] == [
            {"object": "Rollout/shop/checkout", "field": "status.abort", "before": None, "after": True}
        ]
        async with session.get(f"{base}/status") as response:
            page = await response.text()
        assert "argo-rollout-abort" in page

        async def recorded_on_the_rollout() -> bool:
            return any(event["regarding"]["kind"] == "Rollout" and event["reason"] == "RollbackVerified"
                       for event in kube_cluster.read_all(EVENTS, NS))

        await wait_until(recorded_on_the_rollout, timeout_s=30, what="a Kubernetes Event on the Rollout")

    aborted = kube_cluster.read(ROLLOUTS, NS, "checkout")
    assert aborted is not None
    assert aborted["status"]["abort"] is True
    events = [event for event in kube_cluster.read_all(EVENTS, NS) if event["regarding"]["kind"] == "Rollout"]
    assert {event["regarding"]["name"] for event in events} == {"checkout"}
    store = open_store(None, data_dir=tmp_path)
    await store.open()
    try:
        history = await store.history(target=KEY)
    finally:
        await store.close()
    started = [entry for entry in history if "argo-rollout-abort" in entry.summary]
    assert started, [entry.summary for entry in history]


async def test_without_argo_rollouts_installed_that_target_escalates_and_the_others_roll_back(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers, tmp_path: Path
) -> None:
    kube_cluster.uninstall(ROLLOUTS)
    seed_canary(kube_cluster)
    web = TargetSettings(name="web", namespace=NS, strategy=Strategy.CANARY, baseline=Side(deployment="web"),
                         candidate=Side(deployment="web-canary"), ingress="web-canary")
    config = settings(tmp_path, ROLLOUT_TARGET, web)
    async with open_daemon(
        config, metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
        targets=KubeTargets(kube=kube, settings=config, action_settings=FAST),
    ) as daemon:
        async def web_verified() -> bool:
            run = daemon.rollbacks.runs.get("shop/web")
            return run is not None and run.phase is Phase.VERIFIED

        await wait_until(web_verified, timeout_s=20, what="the canary next door rolled back")
        decision = daemon.state.targets[KEY].latest
        assert decision is not None
        assert KEY not in daemon.rollbacks.runs
        assert decision.escalate
        assert decision.blocked_by == "rollback-risk"
        assert any("Argo Rollouts (its CRDs) is not installed" in reason for reason in decision.reasons)
