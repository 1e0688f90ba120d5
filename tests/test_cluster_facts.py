"""Decision context read from Kubernetes objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rollbackd.decision.facts import cluster_facts, is_newer, revision_of
from rollbackd.kube.objects import fully_available
from rollbackd.model import Risk, Strategy

NOW = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)


def deployment(
    name: str,
    *,
    replicas: int = 3,
    available: int = 3,
    revision: int = 2,
    annotations: dict[str, str] | None = None,
    generation: int = 1,
    observed: int = 1,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "shop",
            "generation": generation,
            "annotations": {"deployment.kubernetes.io/revision": str(revision), **(annotations or {})},
        },
        "spec": {"replicas": replicas},
        "status": {
            "availableReplicas": available,
            "updatedReplicas": available,
            "observedGeneration": observed,
        },
    }


def rs(revision: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"web-{revision}",
            "annotations": {"deployment.kubernetes.io/revision": str(revision)},
        }
    }


def test_risk_and_hold_come_from_the_candidate_annotations() -> None:
    facts = cluster_facts(
        Strategy.CANARY,
        candidate=deployment(
            "web-canary",
            annotations={
                "rollbackd.io/rollback-risk": "high: drops column users.legacy_id",
                "rollbackd.io/fix-forward-eta": "15m",
            },
        ),
        baseline=deployment("web"),
        wall_now=NOW,
        loop_now=100.0,
    )
    assert facts.risk is Risk.HIGH
    assert "drops column" in facts.risk_reason
    assert facts.hold is not None
    assert facts.hold.until == 1000.0
    assert facts.has_rollback_target


def test_a_bad_annotation_is_reported_not_fatal() -> None:
    facts = cluster_facts(
        Strategy.CANARY,
        candidate=deployment("web-canary", annotations={"rollbackd.io/rollback-risk": "maybe"}),
        baseline=deployment("web"),
        wall_now=NOW,
        loop_now=0.0,
    )
    assert facts.risk is None
    assert "expected 'low' or 'high'" in facts.problems[0]


def test_a_missing_or_unhealthy_rollback_target_means_high_risk() -> None:
    missing = cluster_facts(
        Strategy.CANARY, candidate=deployment("web-canary"), baseline=None, wall_now=NOW, loop_now=0
    )
    assert missing.risk is Risk.HIGH
    assert not missing.has_rollback_target
    assert "does not exist" in missing.risk_reason
    sick = cluster_facts(
        Strategy.CANARY,
        candidate=deployment("web-canary"),
        baseline=deployment("web", available=1),
        wall_now=NOW,
        loop_now=0,
    )
    assert sick.risk is Risk.HIGH
    assert "1/3 replicas available" in sick.risk_reason
    # A blue-green colour scaled to zero is fine: the switch-back scales it up first.
    idle = cluster_facts(
        Strategy.BLUE_GREEN,
        candidate=deployment("web-green"),
        baseline=deployment("web-blue", replicas=0, available=0),
        wall_now=NOW,
        loop_now=0,
    )
    assert idle.has_rollback_target


def test_a_deployment_needs_an_earlier_revision() -> None:
    none_older = cluster_facts(
        Strategy.DEPLOYMENT,
        candidate=deployment("web", revision=1),
        replica_sets=[rs(1)],
        wall_now=NOW,
        loop_now=0,
    )
    assert not none_older.has_rollback_target
    assert "no earlier revision" in none_older.rollback_target_reason
    older = cluster_facts(
        Strategy.DEPLOYMENT,
        candidate=deployment("web", revision=3),
        replica_sets=[rs(1), rs(2), rs(3)],
        wall_now=NOW,
        loop_now=0,
    )
    assert older.has_rollback_target
    assert older.candidate_revision == 3


def test_newer_rollout_and_availability() -> None:
    assert is_newer(2, revision_of(deployment("web", revision=3)))
    assert not is_newer(3, revision_of(deployment("web", revision=3)))
    assert not is_newer(None, revision_of(deployment("web", revision=3)))
    assert fully_available(deployment("web"))
    assert not fully_available(deployment("web", available=2))
    assert not fully_available(deployment("web", generation=2, observed=1))
    assert not fully_available(None)
