"""Kubernetes Events on the target's Deployment (what ``kubectl describe`` shows), against the
emulated API server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from rollbackd.backoff import Backoff
from rollbackd.config.settings import Settings
from rollbackd.events.dispatcher import DeliveryError, Dispatcher
from rollbackd.events.kube_events import KubeEventsSink, deployments_of, event_name
from rollbackd.events.publisher import EventPublisher
from rollbackd.kube import KubeClient
from rollbackd.store import Store, open_store
from tests.eventstory import rollback_story
from tests.kubefixtures import EVENTS, ClusterEmulator, kube, kube_cluster, seed_deployment

__all__ = ["kube", "kube_cluster"]  # fixtures

NS = "shop"
FAST = Backoff(initial_s=0.02, max_s=0.2)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = open_store(None, data_dir=tmp_path)
    await db.open()
    yield db
    await db.close()


def sink(kube: KubeClient) -> KubeEventsSink:
    return KubeEventsSink(kube=kube, deployments={"shop/checkout": "checkout-canary"}, instance="pod-0")


async def test_each_event_is_recorded_on_the_targets_deployment(
    kube_cluster: ClusterEmulator, kube: KubeClient, store: Store
) -> None:
    canary = seed_deployment(kube_cluster, NS, "checkout-canary", replicas=1, image="shop/checkout:2.0")
    story = rollback_story("shop/checkout")
    async with Dispatcher(store=store, sinks=[sink(kube)], backoff=FAST) as dispatcher:
        publisher = EventPublisher(store=store, on_recorded=dispatcher.nudge)
        for event in story:
            await publisher.announce(event)
        assert await dispatcher.drain(timeout_s=20)
    recorded = sorted(kube_cluster.read_all(EVENTS, NS), key=lambda e: e["eventTime"])
    assert [(e["reason"], e["type"]) for e in recorded] == [
        ("TargetDegraded", "Warning"),
        ("RollbackDecided", "Warning"),
        ("RollbackStarted", "Warning"),
        ("RollbackCompleted", "Normal"),
        ("RollbackVerified", "Normal"),
    ]
    assert [e["note"] for e in recorded] == [event.summary for event in story]
    for kube_event in recorded:
        assert kube_event["regarding"]["kind"] == "Deployment"
        assert kube_event["regarding"]["name"] == "checkout-canary"
        assert kube_event["regarding"]["uid"] == canary["metadata"]["uid"]
        assert kube_event["reportingController"] == "rollbackd.io/rollbackd"
        assert kube_event["reportingInstance"] == "pod-0"


async def test_a_redelivered_event_is_recorded_once(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_deployment(kube_cluster, NS, "checkout-canary", replicas=1, image="shop/checkout:2.0")
    started = rollback_story("shop/checkout")[2].to_outbox()
    events = sink(kube)
    await events.deliver(started)
    await events.deliver(started)  # the first answer was lost: the dispatcher tries again
    (recorded,) = kube_cluster.read_all(EVENTS, NS)
    assert recorded["metadata"]["name"] == event_name("checkout-canary", started.event_id)


async def test_events_without_a_deployment_are_passed_over(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    events = sink(kube)
    await events.deliver(rollback_story("shop/checkout")[0].to_outbox())  # the Deployment is gone
    await events.deliver(rollback_story("shop/unknown")[0].to_outbox())  # not a configured target
    assert events.passed_over == 2
    assert kube_cluster.read_all(EVENTS, NS) == []


async def test_a_refused_event_is_retried_with_the_rbac_reason(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "checkout-canary", replicas=1, image="shop/checkout:2.0")
    kube_cluster.forbid("create", EVENTS, namespace=NS)
    with pytest.raises(DeliveryError, match='cannot create resource "events"'):
        await sink(kube).deliver(rollback_story("shop/checkout")[0].to_outbox())


def test_events_go_on_each_targets_candidate_deployment() -> None:
    settings = Settings.model_validate(
        {
            "targets": [
                {
                    "name": "checkout",
                    "namespace": "shop",
                    "strategy": "canary",
                    "ingress": "checkout-canary",
                    "baseline": {"deployment": "checkout"},
                    "candidate": {"deployment": "checkout-canary"},
                },
                {
                    "name": "catalog",
                    "namespace": "shop",
                    "strategy": "deployment",
                    "candidate": {"deployment": "catalog"},
                },
            ]
        }
    )
    assert deployments_of(settings) == {"shop/checkout": "checkout-canary", "shop/catalog": "catalog"}
