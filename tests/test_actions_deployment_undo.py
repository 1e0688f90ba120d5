"""Deployment undo against the emulated API server, through the real client, over HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import kmock
import pytest

from rollbackd.actions.base import ActionOutcome, ActionResult, Change
from rollbackd.actions.deployment_undo import DeploymentUndo, comparable_template
from rollbackd.actions.steps import ActionSettings, merge_diff
from rollbackd.backoff import Backoff
from rollbackd.kube import KubeClient, Obj, objects
from tests.kubefixtures import (
    DEPLOYMENTS,
    REPLICASETS,
    ClusterEmulator,
    Controllers,
    rollout_settled,
    seed_deployment,
    wait_until,
)

NS = "shop"
FAST = ActionSettings(backoff=Backoff(initial_s=0.01, max_s=0.05), attempts=4,
                      availability_timeout_s=10.0, poll_s=0.02)


def undo(
    kube: KubeClient,
    *,
    bad_revision: int | None = None,
    to_revision: int | None = None,
    settings: ActionSettings = FAST,
) -> DeploymentUndo:
    return DeploymentUndo(kube=kube, target=f"{NS}/web", namespace=NS, deployment="web",
                          bad_revision=bad_revision, to_revision=to_revision, settings=settings)


def patches(emu: ClusterEmulator, name: str = "web") -> int:
    """PATCH requests the API server received for the Deployment (failed ones included)."""
    return len(emu[kmock.method.PATCH, DEPLOYMENTS][kmock.name(name)])


def report(result: ActionResult) -> None:
    """The action's own API time, for the benchmark to quote (never asserted on)."""
    print(f"\n[timing] {result.action} {result.outcome}: api_s={result.api_s:.4f} wait_s={result.wait_s:.4f} "
          f"changes={len(result.changes)}")


def image(emu: ClusterEmulator, name: str = "web") -> str:
    deployment = emu.read(DEPLOYMENTS, NS, name)
    assert deployment is not None
    return str(deployment["spec"]["template"]["spec"]["containers"][0]["image"])


def seed_web(emu: ClusterEmulator) -> None:
    """Revisions 1 (1.0), 2 (1.1) and 3 (1.2, running, judged bad)."""
    seed_deployment(emu, NS, "web", replicas=3, image="shop/web:1.2",
                    revision_history=["shop/web:1.0", "shop/web:1.1"])


async def test_undo_goes_back_to_the_revision_before_the_bad_one(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)
    annotations_before = kube_cluster.read(DEPLOYMENTS, NS, "web")["metadata"]["annotations"]  # type: ignore[index]

    result = await undo(kube, bad_revision=3).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert (result.from_revision, result.to_revision) == (3, 2)
    assert result.changes == (
        Change("Deployment/shop/web", "spec.template", "revision 3 (web=shop/web:1.2)",
               "revision 2 (web=shop/web:1.1)"),
    )
    assert result.api_s > 0
    assert result.wait_s > 0
    deployment = kube_cluster.read(DEPLOYMENTS, NS, "web")
    assert deployment is not None
    assert image(kube_cluster) == "shop/web:1.1"
    assert objects.POD_TEMPLATE_HASH_LABEL not in deployment["spec"]["template"]["metadata"]["labels"]
    assert rollout_settled(deployment)
    # The controller brought revision 2's ReplicaSet back as revision 4; no new ReplicaSet.
    assert objects.revision(deployment) == 4
    assert result.details["new_revision"] == 4
    owned = sorted(kube_cluster.read_all(REPLICASETS, NS), key=lambda rs: objects.revision(rs) or 0)
    assert [(objects.revision(rs), rs["spec"]["replicas"]) for rs in owned] == [(1, 0), (3, 0), (4, 3)]
    assert result.details["replicaset"] == owned[-1]["metadata"]["name"]
    # Only the template changed: the annotations are the Deployment's own (the revision moved on).
    after = dict(deployment["metadata"]["annotations"])
    assert after.pop(objects.REVISION_ANNOTATION) == "4"
    assert after == {k: v for k, v in annotations_before.items() if k != objects.REVISION_ANNOTATION}
    assert deployment["spec"]["replicas"] == 3


async def test_running_it_again_does_not_undo_the_undo(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)
    action = undo(kube, bad_revision=3)
    first = await action.run(dry_run=False)
    assert first.outcome is ActionOutcome.DONE

    # "The previous revision" is now 3, the bad one; the action still knows 3 was judged bad.
    second = await action.run(dry_run=False)
    again = await undo(kube, bad_revision=3).run(dry_run=False)
    report(second)

    for result in (second, again):
        assert result.outcome is ActionOutcome.ALREADY_DONE, result.reason
        assert result.changes == ()
        assert "no longer runs revision 3" in result.reason
        assert result.from_revision == 3
        assert result.to_revision == 4
    assert patches(kube_cluster) == 1
    assert image(kube_cluster) == "shop/web:1.1"


async def test_without_a_bad_revision_the_running_one_is_undone(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)

    result = await undo(kube).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE
    assert (result.from_revision, result.to_revision) == (3, 2)
    assert image(kube_cluster) == "shop/web:1.1"


async def test_an_explicit_revision_is_the_one_restored(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)

    result = await undo(kube, bad_revision=3, to_revision=1).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert (result.from_revision, result.to_revision) == (3, 1)
    assert image(kube_cluster) == "shop/web:1.0"
    assert result.changes[0].after == "revision 1 (web=shop/web:1.0)"


async def test_an_undo_after_an_earlier_undo_follows_the_renumbered_history(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)
    assert (await undo(kube, bad_revision=3).run(dry_run=False)).outcome is ActionOutcome.DONE
    # A new release (revision 5) on top of the restored 1.1 (now revision 4) also goes bad.
    await objects.patch_deployment(kube, namespace=NS, name="web", patch={
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop/web:1.3"}]}}},
    })
    await wait_until(lambda: rollout_settled(kube_cluster.read(DEPLOYMENTS, NS, "web") or {}),
                     what="the rollout of 1.3")

    result = await undo(kube, bad_revision=5).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert (result.from_revision, result.to_revision) == (5, 4)
    assert image(kube_cluster) == "shop/web:1.1"


async def test_no_earlier_revision_is_refused(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=3, image="shop/web:1.0")
    before = kube_cluster.read(DEPLOYMENTS, NS, "web")

    result = await undo(kube, bad_revision=1).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.REFUSED
    assert result.reason == (
        "the Deployment shop/web has no revision before 1 to go back to (revisions kept: 1)"
    )
    assert result.changes == ()
    assert not result.ok
    assert patches(kube_cluster) == 0
    assert kube_cluster.read(DEPLOYMENTS, NS, "web") == before


async def test_a_missing_requested_revision_is_refused(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_web(kube_cluster)

    result = await undo(kube, bad_revision=3, to_revision=7).run(dry_run=False)
    same = await undo(kube, bad_revision=3, to_revision=3).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert "revision 7 of the Deployment shop/web does not exist (revisions kept: 1, 2, 3)" in result.reason
    assert same.outcome is ActionOutcome.REFUSED
    assert "revision 3 is the one being rolled back" in same.reason
    assert patches(kube_cluster) == 0


async def test_a_missing_deployment_is_refused(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    result = await undo(kube, bad_revision=3).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert result.reason.startswith("the Deployment shop/web does not exist")
    assert 'deployments.apps "web" not found' in result.reason


async def test_a_paused_deployment_is_refused(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_web(kube_cluster)
    kube_cluster.update(DEPLOYMENTS, NS, "web", {"spec": {"paused": True}})

    result = await undo(kube, bad_revision=3).run(dry_run=False)

    assert result.outcome is ActionOutcome.REFUSED
    assert "paused" in result.reason
    assert image(kube_cluster) == "shop/web:1.2"


async def test_a_newer_rollout_on_top_is_left_alone(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)
    await objects.patch_deployment(kube, namespace=NS, name="web", patch={
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop/web:1.2.1"}]}}},
    })

    result = await undo(kube, bad_revision=3).run(dry_run=False)

    assert result.outcome is ActionOutcome.ALREADY_DONE
    assert "no longer runs revision 3" in result.reason
    assert "shop/web:1.2.1" in result.reason
    assert image(kube_cluster) == "shop/web:1.2.1"
    assert patches(kube_cluster) == 1  # the test's own rollout only


async def test_dry_run_lists_the_plan_and_changes_nothing(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)
    before = kube_cluster.read(DEPLOYMENTS, NS, "web")

    result = await undo(kube, bad_revision=3).run(dry_run=True)
    report(result)

    assert result.outcome is ActionOutcome.PLANNED
    assert result.ok
    assert result.reason == "would undo revision 3 to revision 2"
    assert [c.describe() for c in result.changes] == [
        "Deployment/shop/web spec.template: "
        "'revision 3 (web=shop/web:1.2)' -> 'revision 2 (web=shop/web:1.1)'",
    ]
    assert result.wait_s == 0
    assert patches(kube_cluster) == 0
    assert kube_cluster.read(DEPLOYMENTS, NS, "web") == before


async def test_cancelled_while_waiting_then_run_again_ends_in_the_same_state(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_web(kube_cluster)
    # No deployment controller yet: the patch lands, the rollout does not start, the run waits.
    task = asyncio.create_task(undo(kube, bad_revision=3).run(dry_run=False))
    await wait_until(lambda: image(kube_cluster) == "shop/web:1.1", what="the template patch")
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async with Controllers(kube_cluster):
        result = await undo(kube, bad_revision=3).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.ALREADY_DONE, result.reason
    assert result.changes == ()
    assert result.wait_s > 0  # it still waited for the rollout to complete
    assert patches(kube_cluster) == 1
    deployment = kube_cluster.read(DEPLOYMENTS, NS, "web")
    assert deployment is not None
    assert rollout_settled(deployment)
    assert image(kube_cluster) == "shop/web:1.1"


async def test_a_conflict_is_retried_and_the_change_applied_once(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)
    conflicted = kube_cluster.conflict("patch", DEPLOYMENTS, namespace=NS, name="web")

    result = await undo(kube, bad_revision=3).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert len(conflicted) == 1
    assert patches(kube_cluster) == 2
    assert len(result.changes) == 1
    deployment = kube_cluster.read(DEPLOYMENTS, NS, "web")
    assert deployment is not None
    assert deployment["metadata"]["generation"] == 2  # one template write
    assert image(kube_cluster) == "shop/web:1.1"


async def test_a_stale_read_gets_409_and_the_step_re_decides(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    """Someone else writes the Deployment between the step's read and its patch: the patch carries
    the resourceVersion it read, gets 409, and the step re-reads before patching again."""
    seed_web(kube_cluster)
    writes = 0

    def read_then_someone_else_writes() -> Obj:
        nonlocal writes
        writes += 1
        seen = kube_cluster.read(DEPLOYMENTS, NS, "web")
        assert seen is not None
        kube_cluster.update(DEPLOYMENTS, NS, "web", {"metadata": {"labels": {"team": "shop"}}})
        return seen

    # The run reads the Deployment to plan (read 0), then the step reads it again (read 1).
    kube_cluster[kmock.action.FETCH, DEPLOYMENTS][kmock.name("web")][1:2] << read_then_someone_else_writes

    result = await undo(kube, bad_revision=3).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert writes == 1
    assert patches(kube_cluster) == 2
    deployment = kube_cluster.read(DEPLOYMENTS, NS, "web")
    assert deployment is not None
    assert deployment["metadata"]["labels"]["team"] == "shop"
    assert image(kube_cluster) == "shop/web:1.1"
    assert len(result.changes) == 1


async def test_server_errors_are_retried(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)
    failed_reads = kube_cluster.fail("get", DEPLOYMENTS, status=503, namespace=NS, name="web", times=1)
    failed_lists = kube_cluster.fail("list", REPLICASETS, status=500, namespace=NS, times=1)
    failed_writes = kube_cluster.fail("patch", DEPLOYMENTS, status=500, namespace=NS, name="web", times=2)

    result = await undo(kube, bad_revision=3).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.DONE, result.reason
    assert (len(failed_reads), len(failed_lists), len(failed_writes)) == (1, 1, 2)
    assert patches(kube_cluster) == 3
    assert len(result.changes) == 1
    assert kube_cluster.read(DEPLOYMENTS, NS, "web")["metadata"]["generation"] == 2  # type: ignore[index]


async def test_a_server_that_keeps_failing_is_a_failure_not_an_exception(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_web(kube_cluster)
    kube_cluster.fail("patch", DEPLOYMENTS, status=500, namespace=NS, name="web", times=None)

    result = await undo(kube, bad_revision=3).run(dry_run=False)

    assert result.outcome is ActionOutcome.FAILED
    assert "kept failing after 4 attempts" in result.reason
    assert "(nothing was changed)" in result.reason
    assert result.changes == ()
    assert patches(kube_cluster) == 4


async def test_forbidden_is_reported_with_verb_resource_and_namespace(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_web(kube_cluster)
    kube_cluster.forbid("patch", DEPLOYMENTS, namespace=NS, name="web")

    result = await undo(kube, bad_revision=3).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.FAILED
    assert "may not patch deployments" in result.reason
    assert 'in API group "apps" in namespace "shop"' in result.reason
    assert 'verbs: ["patch"]' in result.reason
    assert "system:serviceaccount:rollbackd:rollbackd" in result.reason
    assert result.changes == ()
    assert image(kube_cluster) == "shop/web:1.2"


async def test_a_rollout_that_never_completes_fails_after_the_timeout(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_web(kube_cluster)
    kube_controllers.stalled.add((NS, "web"))
    settings = dataclasses.replace(FAST, availability_timeout_s=0.3)

    result = await undo(kube, bad_revision=3, settings=settings).run(dry_run=False)
    report(result)

    assert result.outcome is ActionOutcome.FAILED
    assert "did not happen within the availability timeout of 0.3s" in result.reason
    assert "changed before the failure: Deployment/shop/web spec.template" in result.reason
    assert len(result.changes) == 1
    assert result.wait_s >= 0.29  # the loop clock's whole budget was spent waiting


async def test_a_rollout_past_its_progress_deadline_fails_at_once(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_web(kube_cluster)
    task = asyncio.create_task(undo(kube, bad_revision=3).run(dry_run=False))
    await wait_until(lambda: image(kube_cluster) == "shop/web:1.1", what="the template patch")
    kube_cluster.update(DEPLOYMENTS, NS, "web", {"status": {
        "observedGeneration": 2, "updatedReplicas": 1, "replicas": 4, "availableReplicas": 3,
        "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}],
    }})

    result = await task

    assert result.outcome is ActionOutcome.FAILED
    assert "the rollout of revision 2 exceeded its progress deadline" in result.reason
    assert len(result.changes) == 1


async def test_the_bad_rollout_past_its_deadline_does_not_fail_the_undo(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    """The bad revision's own rollout gave up (a common reason to roll back): its condition is
    still in the status until the controller observes the undo, and must not count."""
    seed_web(kube_cluster)
    kube_cluster.update(DEPLOYMENTS, NS, "web", {"status": {"conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
    ]}})

    result = await undo(kube, bad_revision=3).run(dry_run=False)

    assert result.outcome is ActionOutcome.DONE, result.reason


def test_templates_compare_without_the_pod_template_hash() -> None:
    with_hash: dict[str, Any] = {
        "metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}}, "spec": {"x": 1},
    }
    without = {"metadata": {"labels": {"app": "web"}}, "spec": {"x": 1}}
    assert comparable_template(with_hash) == without
    assert with_hash["metadata"]["labels"]["pod-template-hash"] == "abc"  # not modified in place


def test_merge_diff_turns_one_object_into_the_other() -> None:
    current = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1, 2], "gone": "x"}
    wanted = {"a": 1, "b": {"c": 5, "d": 3}, "e": [1], "new": {"k": "v"}}
    assert merge_diff(current, wanted) == {"b": {"c": 5}, "e": [1], "gone": None, "new": {"k": "v"}}
    assert merge_diff(wanted, wanted) == {}
