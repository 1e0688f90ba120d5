"""The Kubernetes access layer against kmock's emulator, through the real client, over real HTTP."""

from __future__ import annotations

import asyncio
import random
import socket
from pathlib import Path

import kmock
import pytest
import yaml

from rollbackd.backoff import Backoff
from rollbackd.kube import (
    KubeCall,
    KubeClient,
    KubeConfigError,
    KubeConflict,
    KubeForbidden,
    KubeNotFound,
    KubePermanent,
    KubeTemporary,
    Obj,
    objects,
    retrying,
)
from rollbackd.kube.errors import error_from_status
from tests.kubefixtures import (
    DEPLOYMENTS,
    ENDPOINTSLICES,
    EVENTS,
    INGRESSES,
    REPLICASETS,
    ROLLBACKD_USER,
    SERVICES,
    ClusterEmulator,
    Controllers,
    rollout_settled,
    seed_deployment,
    seed_endpointslice,
    seed_ingress,
    seed_service,
    wait_until,
)

NS = "shop"
FAST = Backoff(initial_s=0.01, max_s=0.05)


def requests_to(emu: ClusterEmulator, method: str, resource: kmock.resource, name: str | None = None) -> int:
    """How many requests the emulator received with that HTTP method on that resource (and name)."""
    view = emu[kmock.method(method.upper()), resource]
    if name is not None:
        view = view[kmock.name(name)]
    return len(view)


# --- reading and patching ------------------------------------------------------------------------

async def test_get_deployment_returns_the_object_as_stored(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seeded = seed_deployment(kube_cluster, NS, "web", replicas=3, image="shop/web:1.1")

    got = await objects.get_deployment(kube, namespace=NS, name="web")

    assert got == seeded
    assert got["spec"]["template"]["spec"]["containers"][0]["image"] == "shop/web:1.1"
    assert objects.revision(got) == 1


async def test_strategic_patch_merges_containers_by_name(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    before = seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")

    patched = await objects.patch_deployment(
        kube, namespace=NS, name="web",
        patch={"spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop/web:1.0"}]}}}},
    )

    container = patched["spec"]["template"]["spec"]["containers"][0]
    assert container == {"name": "web", "image": "shop/web:1.0", "ports": [{"containerPort": 8080}]}
    assert patched["metadata"]["generation"] == before["metadata"]["generation"] + 1
    assert patched["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"]
    assert kube_cluster.read(DEPLOYMENTS, NS, "web") == patched
    sent = list(kube_cluster[kmock.method.PATCH, DEPLOYMENTS])[-1]
    assert sent.headers["Content-Type"] == "application/strategic-merge-patch+json"


async def test_merge_patch_null_removes_a_key_and_metadata_changes_keep_the_generation(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    await objects.patch_deployment(kube, namespace=NS, name="web", patch_type="merge",
                                   patch={"metadata": {"annotations": {"team": "checkout"}}})

    patched = await objects.patch_deployment(kube, namespace=NS, name="web", patch_type="merge",
                                             patch={"metadata": {"annotations": {"team": None}}})

    assert "team" not in patched["metadata"]["annotations"]
    assert objects.REVISION_ANNOTATION in patched["metadata"]["annotations"]
    assert patched["metadata"]["generation"] == 1


async def test_json_patch_test_operation_guards_the_change(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    path = "/spec/template/spec/containers/0/image"

    with pytest.raises(KubePermanent) as caught:
        await objects.patch_deployment(kube, namespace=NS, name="web", patch_type="json", patch=[
            {"op": "test", "path": path, "value": "shop/web:9.9"},
            {"op": "replace", "path": path, "value": "shop/web:1.0"},
        ])
    assert caught.value.status == 422

    patched = await objects.patch_deployment(kube, namespace=NS, name="web", patch_type="json", patch=[
        {"op": "test", "path": path, "value": "shop/web:1.1"},
        {"op": "replace", "path": path, "value": "shop/web:1.0"},
    ])
    assert patched["spec"]["template"]["spec"]["containers"][0]["image"] == "shop/web:1.0"


async def test_patch_type_must_fit_the_patch(kube: KubeClient) -> None:
    with pytest.raises(TypeError):
        await objects.patch_deployment(kube, namespace=NS, name="web", patch={"a": 1}, patch_type="json")
    with pytest.raises(TypeError):
        await objects.patch_service(kube, namespace=NS, name="web", patch=[{"op": "remove", "path": "/a"}])


async def test_scale_subresource_sets_replicas(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_deployment(kube_cluster, NS, "web-canary", replicas=1, image="shop/web:1.2")

    scale = await objects.scale_deployment(kube, namespace=NS, name="web-canary", replicas=0)

    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 0
    stored = kube_cluster.read(DEPLOYMENTS, NS, "web-canary")
    assert stored is not None
    assert stored["spec"]["replicas"] == 0
    assert stored["metadata"]["generation"] == 2
    assert requests_to(kube_cluster, "patch", DEPLOYMENTS, "web-canary") == 1
    assert list(kube_cluster[kmock.method.PATCH, DEPLOYMENTS])[-1].subresource == "scale"


async def test_owned_replicasets_by_owner_uid_oldest_revision_first(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    web = seed_deployment(kube_cluster, NS, "web", replicas=3, image="shop/web:1.2",
                          revision_history=["shop/web:1.0", "shop/web:1.1"])
    # The canary's ReplicaSets carry app=web too: only ownership tells them apart.
    seed_deployment(kube_cluster, NS, "web-canary", replicas=1, image="shop/web:1.3",
                    labels={"app": "web", "track": "canary"}, revision_history=["shop/web:1.2"])

    owned = await objects.owned_replicasets(kube, deployment=web)

    assert [objects.revision(rs) for rs in owned] == [1, 2, 3]
    images = [rs["spec"]["template"]["spec"]["containers"][0]["image"] for rs in owned]
    assert images == ["shop/web:1.0", "shop/web:1.1", "shop/web:1.2"]
    assert [rs["spec"]["replicas"] for rs in owned] == [0, 0, 3]
    assert all(objects.owned_by(rs, web) for rs in owned)
    sent = list(kube_cluster[kmock.action.LIST, REPLICASETS])[-1]
    assert sent.params["labelSelector"] == "app=web"


async def test_service_ingress_and_endpointslices(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_service(kube_cluster, NS, "web", selector={"app": "web"}, endpoints=False)
    seed_endpointslice(kube_cluster, NS, "web", addresses=["127.10.0.1", "127.10.0.2"])
    seed_endpointslice(kube_cluster, NS, "web", addresses=["127.10.0.3"], ready=False, name="web-extra")
    seed_endpointslice(kube_cluster, NS, "other", addresses=["127.10.9.9"])
    seed_ingress(kube_cluster, NS, "web-canary", service="web-canary", host="shop.example", canary_weight=20)

    service = await objects.get_service(kube, namespace=NS, name="web")
    slices = await objects.list_endpointslices(kube, namespace=NS, service="web")
    ingress = await objects.get_ingress(kube, namespace=NS, name="web-canary")
    patched = await objects.patch_ingress(kube, namespace=NS, name="web-canary", patch={
        "metadata": {"annotations": {objects.CANARY_WEIGHT_ANNOTATION: "0"}},
    })

    assert service["spec"]["selector"] == {"app": "web"}
    assert len(slices) == 2
    assert objects.ready_addresses(slices) == ["127.10.0.1", "127.10.0.2"]
    assert ingress["metadata"]["annotations"][objects.CANARY_WEIGHT_ANNOTATION] == "20"
    assert patched["metadata"]["annotations"] == {
        objects.CANARY_ANNOTATION: "true", objects.CANARY_WEIGHT_ANNOTATION: "0",
    }


async def test_create_event_about_a_deployment(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    web = seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    event = objects.new_event(regarding=web, reason="RollbackStarted", action="Rollback", type="Warning",
                              note="error rate 7.1% over the 1% SLO; rolling back to revision 1")

    created = await objects.create_event(kube, namespace=NS, event=event)

    stored = kube_cluster.read(EVENTS, NS, created["metadata"]["name"])
    assert stored is not None
    assert stored["regarding"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "namespace": NS,
        "uid": web["metadata"]["uid"], "resourceVersion": web["metadata"]["resourceVersion"],
    }
    assert stored["reason"] == "RollbackStarted"
    assert stored["type"] == "Warning"
    assert stored["reportingController"] == "rollbackd.io/rollbackd"
    assert stored["eventTime"].endswith("Z")


async def test_lease_replace_is_optimistically_locked(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    lease: Obj = {
        "metadata": {"name": "rollbackd"},
        "spec": {"holderIdentity": "pod-a", "leaseDurationSeconds": 15},
    }
    created = await objects.create_lease(kube, namespace="rollbackd", lease=lease)
    with pytest.raises(KubeConflict):
        await objects.create_lease(kube, namespace="rollbackd", lease=lease)

    taken = {**created, "spec": {**created["spec"], "holderIdentity": "pod-b"}}
    replaced = await objects.replace_lease(kube, namespace="rollbackd", name="rollbackd", lease=taken)
    assert replaced["spec"]["holderIdentity"] == "pod-b"

    stale = {**created, "spec": {**created["spec"], "holderIdentity": "pod-c"}}
    with pytest.raises(KubeConflict):
        await objects.replace_lease(kube, namespace="rollbackd", name="rollbackd", lease=stale)
    current = await objects.get_lease(kube, namespace="rollbackd", name="rollbackd")
    assert current["spec"]["holderIdentity"] == "pod-b"


# --- errors --------------------------------------------------------------------------------------

async def test_missing_object_is_not_found(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    with pytest.raises(KubeNotFound) as caught:
        await objects.get_deployment(kube, namespace=NS, name="nope")

    assert caught.value.status == 404
    assert caught.value.reason == "NotFound"
    assert 'get deployments.apps "nope" in namespace "shop"' in str(caught.value)
    assert 'deployments.apps "nope" not found' in str(caught.value)
    assert not isinstance(caught.value, KubeTemporary)


async def test_forbidden_names_verb_resource_namespace_and_rbac(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    kube_cluster.forbid("patch", DEPLOYMENTS, namespace=NS, name="web")
    attempts = 0

    async def undo() -> Obj:
        nonlocal attempts
        attempts += 1
        return await objects.patch_deployment(kube, namespace=NS, name="web",
                                              patch={"spec": {"paused": False}})

    with pytest.raises(KubeForbidden) as caught:
        await retrying(undo, backoff=FAST, attempts=5)

    error = caught.value
    assert attempts == 1  # never retried
    assert (error.user, error.verb, error.resource, error.group, error.namespace) == (
        ROLLBACKD_USER, "patch", "deployments", "apps", NS,
    )
    message = str(error)
    refused = f'User "{ROLLBACKD_USER}" may not patch deployments in API group "apps" in namespace "shop"'
    assert refused in message
    assert "RBAC" in message
    assert 'verbs: ["patch"]' in message
    # Reading is still allowed, and the refused patch changed nothing.
    got = await objects.get_deployment(kube, namespace=NS, name="web")
    assert "paused" not in got["spec"]


async def test_forbidden_subresource_is_named(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_deployment(kube_cluster, NS, "web-canary", replicas=1, image="shop/web:1.2")
    kube_cluster.forbid("patch", DEPLOYMENTS, namespace=NS, name="web-canary", subresource="scale")

    with pytest.raises(KubeForbidden) as caught:
        await objects.scale_deployment(kube, namespace=NS, name="web-canary", replicas=0)
    assert caught.value.resource == "deployments/scale"
    assert 'resources: ["deployments/scale"]' in str(caught.value)
    # The main resource is not refused.
    await objects.patch_deployment(kube, namespace=NS, name="web-canary", patch={"spec": {"replicas": 0}})


async def test_conflicts_are_retried_by_reading_again(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    failed = kube_cluster.conflict("patch", DEPLOYMENTS, namespace=NS, name="web", times=2)
    reads = 0

    async def scale_up() -> Obj:
        nonlocal reads
        current = await objects.get_deployment(kube, namespace=NS, name="web")
        reads += 1
        return await objects.patch_deployment(kube, namespace=NS, name="web", patch_type="merge", patch={
            "metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
            "spec": {"replicas": current["spec"]["replicas"] + 1},
        })

    result = await retrying(scale_up, backoff=FAST, attempts=5)

    assert len(failed) == 2
    assert reads == 3
    assert result["spec"]["replicas"] == 3  # applied once: the refused attempts stored nothing
    stored = kube_cluster.read(DEPLOYMENTS, NS, "web")
    assert stored is not None
    assert stored["spec"]["replicas"] == 3


async def test_a_stale_resource_version_is_a_conflict(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seeded = seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    await objects.patch_deployment(kube, namespace=NS, name="web", patch={"spec": {"replicas": 4}})

    with pytest.raises(KubeConflict) as caught:
        await objects.patch_deployment(kube, namespace=NS, name="web", patch={
            "metadata": {"resourceVersion": seeded["metadata"]["resourceVersion"]}, "spec": {"replicas": 1},
        })
    assert "the object has been modified" in str(caught.value)
    stale = {"metadata": {"resourceVersion": seeded["metadata"]["resourceVersion"]}, "spec": {"replicas": 1}}
    with pytest.raises(KubeConflict):
        await retrying(
            lambda: objects.patch_deployment(kube, namespace=NS, name="web", patch=stale),
            backoff=FAST, attempts=3, on_conflict="raise",
        )
    assert requests_to(kube_cluster, "patch", DEPLOYMENTS, "web") == 3


async def test_server_errors_are_retried_until_they_pass(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    failed = kube_cluster.fail("patch", DEPLOYMENTS, status=500, namespace=NS, name="web", times=2)
    retries: list[tuple[int, float]] = []

    result = await retrying(
        lambda: objects.patch_deployment(kube, namespace=NS, name="web", patch={"spec": {"replicas": 5}}),
        backoff=FAST, attempts=4, on_retry=lambda error, attempt, delay: retries.append((attempt, delay)),
    )

    assert result["spec"]["replicas"] == 5
    assert len(failed) == 2
    assert [attempt for attempt, _ in retries] == [1, 2]
    assert all(0 < delay <= FAST.max_s for _, delay in retries)


async def test_server_errors_give_temporary_after_the_attempts(
    kube_cluster: ClusterEmulator, kube: KubeClient
) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    kube_cluster.fail("get", DEPLOYMENTS, status=500, namespace=NS, name="web", times=None)

    with pytest.raises(KubeTemporary) as caught:
        await retrying(lambda: objects.get_deployment(kube, namespace=NS, name="web"),
                       backoff=FAST, attempts=3)

    assert caught.value.status == 500
    assert caught.value.reason == "InternalError"
    assert "etcdserver: request timed out" in str(caught.value)
    assert requests_to(kube_cluster, "get", DEPLOYMENTS, "web") == 3


async def test_too_many_requests_carries_retry_after(kube_cluster: ClusterEmulator, kube: KubeClient) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    kube_cluster.fail("get", DEPLOYMENTS, status=429, namespace=NS, name="web", retry_after=3)
    delays: list[float] = []

    with pytest.raises(KubeTemporary) as caught:
        await objects.get_deployment(kube, namespace=NS, name="web")
    assert caught.value.retry_after_s == 3.0

    kube_cluster.fail("get", DEPLOYMENTS, status=429, namespace=NS, name="web", retry_after=3)
    got = await retrying(lambda: objects.get_deployment(kube, namespace=NS, name="web"),
                         backoff=FAST, attempts=2, on_retry=lambda e, a, delay: delays.append(delay))
    assert got["metadata"]["name"] == "web"
    assert delays == [FAST.max_s]  # Retry-After honoured, but never beyond the backoff's ceiling


async def test_refused_connection_is_temporary() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with KubeClient.for_host(f"http://127.0.0.1:{port}", request_timeout_s=5) as kube:
        with pytest.raises(KubeTemporary) as caught:
            await objects.get_service(kube, namespace=NS, name="web")
    assert caught.value.reason == "connection"
    assert caught.value.status is None


async def test_slow_answer_is_a_temporary_timeout(kube_cluster: ClusterEmulator) -> None:
    async def slowly() -> Obj:
        await asyncio.sleep(1.0)
        return {}

    kube_cluster[kmock.action.FETCH, SERVICES] << slowly
    async with KubeClient.for_host(str(kube_cluster.url), request_timeout_s=0.2) as kube:
        with pytest.raises(KubeTemporary) as caught:
            await objects.get_service(kube, namespace=NS, name="web")
    assert caught.value.reason == "timeout"
    await asyncio.sleep(1.0)  # let the server finish its slow answer before it shuts down


def test_error_classification_from_status_bodies() -> None:
    call = KubeCall("list", "leases", "coordination.k8s.io")
    cluster_wide = error_from_status(call, 403, (
        '{"kind": "Status", "reason": "Forbidden", "message": "leases.coordination.k8s.io is forbidden: '
        'User \\"system:anonymous\\" cannot list resource \\"leases\\" '
        'in API group \\"coordination.k8s.io\\" '
        'at the cluster scope"}'
    ))
    assert isinstance(cluster_wide, KubeForbidden)
    assert cluster_wide.user == "system:anonymous"
    assert cluster_wide.verb == "list"
    assert cluster_wide.namespace is None
    assert "cluster-wide" in str(cluster_wide)

    gateway = error_from_status(call, 502, b"<html>Bad Gateway</html>")
    assert isinstance(gateway, KubeTemporary)
    assert "Bad Gateway" in str(gateway)

    invalid = error_from_status(call, 422, b'{"kind": "Status", "reason": "Invalid", "message": "bad"}')
    assert isinstance(invalid, KubePermanent)
    assert not isinstance(invalid, KubeNotFound | KubeForbidden)
    assert isinstance(error_from_status(call, 401, None), KubePermanent)


async def test_retrying_raises_permanent_errors_at_once() -> None:
    calls = 0

    async def refuse() -> None:
        nonlocal calls
        calls += 1
        raise KubePermanent("rejected", call=KubeCall("patch", "services"), status=422)

    with pytest.raises(KubePermanent):
        await retrying(refuse, backoff=FAST, attempts=5, rng=random.Random(1))
    assert calls == 1
    with pytest.raises(ValueError, match="attempts"):
        await retrying(refuse, backoff=FAST, attempts=0)


# --- configuration -------------------------------------------------------------------------------

async def test_kubeconfig_points_at_the_emulator(kube_cluster: ClusterEmulator, tmp_path: Path) -> None:
    seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.1")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "elsewhere",
        "clusters": [
            {"name": "emulator", "cluster": {"server": str(kube_cluster.url).rstrip("/")}},
            {"name": "unreachable", "cluster": {"server": "http://127.0.0.1:9"}},
        ],
        "users": [{"name": "ops", "user": {"token": "s3cret-token"}}],
        "contexts": [
            {"name": "emulator", "context": {"cluster": "emulator", "user": "ops", "namespace": NS}},
            {"name": "elsewhere", "context": {"cluster": "unreachable", "user": "ops"}},
        ],
    }))

    async with KubeClient(kubeconfig=kubeconfig, context="emulator") as kube:
        got = await objects.get_deployment(kube, namespace=NS, name="web")

    assert got["metadata"]["name"] == "web"
    sent = list(kube_cluster[kmock.action.FETCH, DEPLOYMENTS])[-1]
    assert sent.headers["Authorization"] == "Bearer s3cret-token"
    assert sent.headers["User-Agent"] == "rollbackd"

    with pytest.raises(KubeConfigError, match="no-such-context"):
        async with KubeClient(kubeconfig=kubeconfig, context="no-such-context"):
            pass
    with pytest.raises(KubeConfigError):
        async with KubeClient(kubeconfig=tmp_path / "missing"):
            pass


async def test_in_cluster_outside_a_cluster_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)
    with pytest.raises(KubeConfigError, match="in-cluster"):
        async with KubeClient(in_cluster=True):
            pass


def test_client_wants_exactly_one_configuration_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        KubeClient()
    with pytest.raises(ValueError, match="exactly one"):
        KubeClient(in_cluster=True, host="http://127.0.0.1:1")
    with pytest.raises(ValueError, match="context"):
        KubeClient(in_cluster=True, context="prod")
    with pytest.raises(RuntimeError):
        _ = KubeClient.for_host("http://127.0.0.1:1").apps  # not entered


# --- the emulated controllers --------------------------------------------------------------------

async def _rolled_out(kube: KubeClient, name: str) -> bool:
    return rollout_settled(await objects.get_deployment(kube, namespace=NS, name=name))


async def test_undo_to_an_old_template_moves_its_replicaset_to_the_newest_revision(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    web = seed_deployment(kube_cluster, NS, "web", replicas=3, image="shop/web:1.2",
                          revision_history=["shop/web:1.0", "shop/web:1.1"])
    owned = await objects.owned_replicasets(kube, deployment=web)
    previous = owned[-2]
    template = previous["spec"]["template"]
    del template["metadata"]["labels"][objects.POD_TEMPLATE_HASH_LABEL]

    patched = await objects.patch_deployment(kube, namespace=NS, name="web", patch_type="merge",
                                             patch={"spec": {"template": template}})
    assert patched["metadata"]["generation"] == 2
    await wait_until(lambda: _rolled_out(kube, "web"), what="the rollback rollout")

    after = await objects.owned_replicasets(kube, deployment=web)
    assert len(after) == 3  # no new ReplicaSet: the old one came back
    newest = after[-1]
    assert newest["metadata"]["name"] == previous["metadata"]["name"]
    assert objects.revision(newest) == 4
    assert newest["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"] == "2"
    assert [rs["spec"]["replicas"] for rs in after] == [0, 0, 3]
    assert newest["status"]["readyReplicas"] == 3
    deployment = await objects.get_deployment(kube, namespace=NS, name="web")
    assert objects.revision(deployment) == 4
    assert deployment["status"]["observedGeneration"] == 2


async def test_a_new_template_gets_a_new_replicaset(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    web = seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.0")

    await objects.patch_deployment(kube, namespace=NS, name="web", patch={
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop/web:2.0"}]}}},
    })
    await wait_until(lambda: _rolled_out(kube, "web"), what="the rollout of 2.0")

    owned = await objects.owned_replicasets(kube, deployment=web)
    assert [objects.revision(rs) for rs in owned] == [1, 2]
    new = owned[-1]
    assert new["spec"]["template"]["spec"]["containers"][0]["image"] == "shop/web:2.0"
    assert new["metadata"]["ownerReferences"][0]["uid"] == web["metadata"]["uid"]
    pod_hash = new["metadata"]["labels"][objects.POD_TEMPLATE_HASH_LABEL]
    assert new["spec"]["selector"]["matchLabels"] == {"app": "web", objects.POD_TEMPLATE_HASH_LABEL: pod_hash}
    assert [rs["status"]["readyReplicas"] for rs in owned] == [0, 2]


async def test_scaling_is_observed(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_deployment(kube_cluster, NS, "web-canary", replicas=2, image="shop/web:1.3")

    await objects.scale_deployment(kube, namespace=NS, name="web-canary", replicas=0)
    await wait_until(lambda: _rolled_out(kube, "web-canary"), what="the scale-down")

    deployment = await objects.get_deployment(kube, namespace=NS, name="web-canary")
    assert deployment["status"]["replicas"] == 0
    owned = await objects.owned_replicasets(kube, deployment=deployment)
    assert [(rs["spec"]["replicas"], rs["status"]["readyReplicas"]) for rs in owned] == [(0, 0)]


async def test_a_stalled_rollout_never_completes(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    web = seed_deployment(kube_cluster, NS, "web", replicas=2, image="shop/web:1.0")
    kube_controllers.stalled.add((NS, "web"))

    await objects.patch_deployment(kube, namespace=NS, name="web", patch={
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop/web:broken"}]}}},
    })

    async def new_pods_created() -> bool:
        deployment = await objects.get_deployment(kube, namespace=NS, name="web")
        status = deployment["status"]
        return bool(status["observedGeneration"] == 2 and status["updatedReplicas"] == 2)

    await wait_until(new_pods_created, what="the stalled rollout's new pods")
    deployment = await objects.get_deployment(kube, namespace=NS, name="web")
    assert not rollout_settled(deployment)
    assert deployment["status"]["availableReplicas"] == 2  # the old pods still serve
    assert deployment["status"]["replicas"] == 4
    owned = await objects.owned_replicasets(kube, deployment=web)
    assert [rs["status"]["readyReplicas"] for rs in owned] == [2, 0]


async def test_switching_a_service_selector_moves_its_endpoints(
    kube_cluster: ClusterEmulator, kube: KubeClient, kube_controllers: Controllers
) -> None:
    seed_deployment(kube_cluster, NS, "web-blue", replicas=2, image="shop/web:1.0",
                    labels={"app": "web", "version": "blue"})
    seed_deployment(kube_cluster, NS, "web-green", replicas=3, image="shop/web:1.1",
                    labels={"app": "web", "version": "green"})
    seed_service(kube_cluster, NS, "web", selector={"app": "web", "version": "green"})

    def pods(slices: list[Obj]) -> list[str]:
        return sorted(endpoint["targetRef"]["name"] for s in slices for endpoint in s["endpoints"])

    before = await objects.list_endpointslices(kube, namespace=NS, service="web")
    assert len(objects.ready_addresses(before)) == 3
    assert all(pod.startswith("web-green-") for pod in pods(before))

    await objects.patch_service(kube, namespace=NS, name="web",
                                patch={"spec": {"selector": {"version": "blue"}}})

    async def moved() -> bool:
        slices = await objects.list_endpointslices(kube, namespace=NS, service="web")
        return len(pods(slices)) == 2 and all(pod.startswith("web-blue-") for pod in pods(slices))

    await wait_until(moved, what="the endpoints to follow the selector")
    after = await objects.list_endpointslices(kube, namespace=NS, service="web")
    assert len(after) == 1
    assert all(address.startswith("127.10.") for address in objects.ready_addresses(after))
    assert after[0]["metadata"]["name"] == before[0]["metadata"]["name"]
    assert len(kube_cluster.read_all(ENDPOINTSLICES, NS)) == 1
    assert kube_cluster.read_all(INGRESSES, NS) == []


async def test_controllers_own_their_task(kube_cluster: ClusterEmulator) -> None:
    async with Controllers(kube_cluster) as controllers:
        task = controllers._task
        assert task is not None
        assert not task.done()
    assert task.done()
