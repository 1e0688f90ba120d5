"""Aborting an Argo Rollouts Rollout, against the emulated API server through the real client over
HTTP: what is written (validated against the published Rollout CRD), idempotence, faults, and the
target's facts and availability as :class:`KubeTargets` reads them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import kmock
import pytest

from rollbackd.actions.base import ActionOutcome, Change
from rollbackd.actions.rollout_abort import RolloutAbort
from rollbackd.actions.steps import ActionSettings
from rollbackd.actions.targets import KubeTargets
from rollbackd.backoff import Backoff
from rollbackd.config.resolve import target_params
from rollbackd.config.settings import Settings, Side, TargetSettings
from rollbackd.decision.annotations import RISK_ANNOTATION
from rollbackd.demo.argo_rollouts import RolloutsController, seed_rollout
from rollbackd.demo.emulator import REPLICASETS, ROLLOUTS
from rollbackd.kube import KubeClient
from rollbackd.model import Risk, Strategy
from rollbackd.params import TargetParams
from tests.crdschema import ROLLOUT_CRD, problems
from tests.kubefixtures import ClusterEmulator, wait_until

NS = "shop"
WALL = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
FAST = ActionSettings(backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=4,
                      availability_timeout_s=10.0, poll_s=0.02)
STATUS = kmock.subresource("status")


@pytest.fixture
async def argo(kube_cluster: ClusterEmulator) -> AsyncIterator[RolloutsController]:
    """The emulated Argo Rollouts controller (acts on aborts)."""
    async with RolloutsController(kube_cluster) as controller:
        yield controller


def abort(kube: KubeClient, name: str = "web", *, settings: ActionSettings = FAST) -> RolloutAbort:
    return RolloutAbort(kube=kube, target=f"{NS}/{name}", namespace=NS, rollout=name, settings=settings)


def rollout(emu: ClusterEmulator, name: str = "web") -> dict[str, object]:
    stored = emu.read(ROLLOUTS, NS, name)
    assert stored is not None
    return stored


def replicaset(emu: ClusterEmulator, name: str) -> dict[str, object]:
    stored = emu.read(REPLICASETS, NS, name)
    assert stored is not None
    return stored


def status_patches(emu: ClusterEmulator) -> list[kmock.Request]:
    return list(emu[ROLLOUTS][STATUS][kmock.method.PATCH])


@pytest.mark.parametrize("strategy", ["canary", "blueGreen"])
async def test_a_rollout_is_aborted_through_its_status_and_its_stable_version_serves(
    kube_cluster: ClusterEmulator, kube: KubeClient, argo: RolloutsController, strategy: str
) -> None:
    seeded = seed_rollout(kube_cluster, NS, "web", strategy=strategy,  # type: ignore[arg-type]
                          stable_image="shop/web:1.1", image="shop/web:1.2", revision=7)
    assert problems(ROLLOUT_CRD, seeded) == []
    stable, new = seeded["status"]["stableRS"], seeded["status"]["currentPodHash"]

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.action == "argo-rollout-abort"
    assert result.changes == (Change("Rollout/shop/web", "status.abort", None, True),)
    assert result.from_revision == 7
    assert f"stable version {stable}" in result.reason
    aborted = rollout(kube_cluster)
    assert problems(ROLLOUT_CRD, aborted) == []  # what rollbackd wrote, and what the controller made of it
    assert aborted["status"]["abort"] is True  # type: ignore[index]
    assert aborted["status"]["phase"] == "Degraded"  # type: ignore[index]
    assert aborted["spec"] == seeded["spec"]  # an abort, not an undo: the spec still names the new version
    assert replicaset(kube_cluster, f"web-{stable}")["status"]["availableReplicas"] == 4  # type: ignore[index]
    assert replicaset(kube_cluster, f"web-{new}")["spec"]["replicas"] == 0  # type: ignore[index]
    patches = status_patches(kube_cluster)
    assert [request.data for request in patches] == [{"status": {"abort": True}}]
    assert patches[0].headers["Content-Type"].startswith("application/merge-patch+json")


async def test_a_second_run_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, argo: RolloutsController
) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2")
    assert (await abort(kube).run(dry_run=False)).outcome is ActionOutcome.DONE
    before = rollout(kube_cluster)["metadata"]

    again = await abort(kube).run(dry_run=False)
    planned = await abort(kube).run(dry_run=True)

    assert again.outcome is ActionOutcome.ALREADY_DONE
    assert again.changes == ()
    assert planned.outcome is ActionOutcome.ALREADY_DONE
    assert rollout(kube_cluster)["metadata"] == before
    assert len(status_patches(kube_cluster)) == 1


async def test_dry_run_plans_the_abort_and_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2")
    result = await abort(kube).run(dry_run=True)
    assert result.outcome is ActionOutcome.PLANNED
    assert result.changes == (Change("Rollout/shop/web", "status.abort", None, True),)
    assert "abort" not in rollout(kube_cluster)["status"]  # type: ignore[operator]
    assert status_patches(kube_cluster) == []


async def test_a_conflict_on_the_status_patch_is_read_again_and_applied(
    kube_cluster: ClusterEmulator, kube: KubeClient, argo: RolloutsController
) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2")
    refused = kube_cluster.conflict("patch", ROLLOUTS, namespace=NS, name="web", subresource="status")

    result = await abort(kube).run(dry_run=False)

    assert len(refused) == 1
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert len(result.changes) == 1
    assert rollout(kube_cluster)["status"]["abort"] is True  # type: ignore[index]


async def test_a_forbidden_status_patch_fails_naming_the_rule_and_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2")
    kube_cluster.forbid("patch", ROLLOUTS, namespace=NS, name="web", subresource="status")

    result = await abort(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert 'cannot patch resource "rollouts/status" in API group "argoproj.io"' in result.reason
    assert 'namespace "shop"' in result.reason
    assert "nothing was changed" in result.reason
    assert "abort" not in rollout(kube_cluster)["status"]  # type: ignore[operator]


async def test_a_missing_rollout_and_a_cluster_without_argo_rollouts_are_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    missing = await abort(kube, "nope").run(dry_run=False)
    assert missing.outcome is ActionOutcome.REFUSED
    assert missing.reason.startswith("the Rollout shop/nope does not exist")

    kube_cluster.uninstall(ROLLOUTS)
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2")
    result = await abort(kube).run(dry_run=False)
    assert result.outcome is ActionOutcome.REFUSED
    assert "Argo Rollouts (its CRDs) is not installed" in result.reason
    assert status_patches(kube_cluster) == []


async def test_a_fully_promoted_rollout_is_not_aborted(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2", promoted=True)
    result = await abort(kube).run(dry_run=False)
    assert result.outcome is ActionOutcome.REFUSED
    assert "fully promoted" in result.reason
    assert status_patches(kube_cluster) == []


async def test_a_stable_version_that_never_becomes_available_fails_the_run(
    kube_cluster: ClusterEmulator, kube: KubeClient, argo: RolloutsController
) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2")
    argo.stalled.add((NS, "web"))
    impatient = ActionSettings(backoff=FAST.backoff, attempts=2, availability_timeout_s=0.3, poll_s=0.02)

    result = await abort(kube, settings=impatient).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert "stable ReplicaSet" in result.reason
    assert "availability timeout" in result.reason
    assert "status.abort" in result.reason  # what was changed before the failure


# --- the target, as the daemon reads it --------------------------------------------------------

SETTINGS = Settings(targets=(
    TargetSettings(
        name="web", namespace=NS, strategy=Strategy.ARGO_ROLLOUT, rollout="web",
        baseline=Side(labels={"role": "stable"}), candidate=Side(labels={"role": "canary"}),
        queries={"group_labels": ["namespace", "role"]},
    ),
))


def params() -> TargetParams:
    return target_params(SETTINGS, SETTINGS.targets[0])


def targets_on(kube: KubeClient) -> KubeTargets:
    return KubeTargets(kube=kube, settings=SETTINGS, action_settings=FAST, wall_clock=lambda: WALL)


async def test_facts_come_from_the_rollout(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2", revision=7)
    kube_cluster.update(ROLLOUTS, NS, "web", {"metadata": {"annotations": {RISK_ANNOTATION: "high"}}})

    facts = await targets_on(kube).facts(params(), loop_now=100.0)

    assert facts.candidate_revision == 7
    assert facts.has_rollback_target is True
    assert facts.risk is Risk.HIGH  # the release's own risk annotation, read from the Rollout


async def test_a_rollout_without_a_healthy_stable_version_has_nothing_to_go_back_to(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_rollout(kube_cluster, NS, "web", stable_image="shop/web:1.1", image="shop/web:1.2", promoted=True)
    facts = await targets_on(kube).facts(params(), loop_now=100.0)
    assert facts.has_rollback_target is False
    assert facts.risk is Risk.HIGH
    assert "fully promoted" in facts.risk_reason


@pytest.mark.parametrize("installed", [True, False])
async def test_a_missing_rollout_is_a_fact_that_says_why(
    kube_cluster: ClusterEmulator, kube: KubeClient, installed: bool
) -> None:
    if not installed:
        kube_cluster.uninstall(ROLLOUTS)
    facts = await targets_on(kube).facts(params(), loop_now=100.0)
    assert facts.has_rollback_target is False
    expected = (
        "the Rollout shop/web does not exist" if installed else "Argo Rollouts (its CRDs) is not installed"
    )
    assert expected in facts.risk_reason
    assert any(expected in problem for problem in facts.problems)


async def test_the_target_is_aborted_and_verified_through_kube_targets(
    kube_cluster: ClusterEmulator, kube: KubeClient, argo: RolloutsController
) -> None:
    seed_rollout(kube_cluster, NS, "web", strategy="blueGreen", stable_image="shop/web:1.1",
                 image="shop/web:1.2")
    targets = targets_on(kube)
    assert await targets.serving_available(params()) is False  # not aborted yet: the new version is current

    result = await targets.action(params()).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    async def serving() -> bool:
        return await targets.serving_available(params()) is True

    await wait_until(serving, what="the stable version serving")
    assert rollout(kube_cluster)["status"]["blueGreen"]["activeSelector"] == (  # type: ignore[index]
        rollout(kube_cluster)["status"]["stableRS"]  # type: ignore[index]
    )
