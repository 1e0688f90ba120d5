"""A Kubernetes API for tests: the emulated cluster of :mod:`rollbackd.demo.emulator` as fixtures.

The emulator, its seeding helpers and :class:`Controllers` live in :mod:`rollbackd.demo.emulator`
(the demo runs the same emulated cluster) and are re-exported here, with :func:`wait_until`.

Fixtures: ``kube_cluster`` (a served :class:`ClusterEmulator`), ``kube`` (an open
:class:`~rollbackd.kube.KubeClient` on it), ``kube_controllers`` (running :class:`Controllers`).
Use them by importing them into a test module or by listing ``"tests.kubefixtures"`` in
``pytest_plugins``. ``kube_cluster`` requests the suite's ``no_leftover_tasks`` guard (from
``tests/conftest.py``) so that the guard checks after every fixture here has shut down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import kmock
import pytest

from rollbackd.demo.emulator import (
    CONFIGMAPS,
    CORE_EVENTS,
    DEPLOYMENTS,
    DESIRED_REPLICAS_ANNOTATION,
    ENDPOINTS,
    ENDPOINTSLICES,
    EVENTS,
    GATEWAY_CONTROLLER,
    GATEWAYS,
    GRPCROUTES,
    HTTPROUTES,
    INGRESSES,
    LEASES,
    REPLICASETS,
    RESOURCES,
    REVISION_HISTORY_ANNOTATION,
    ROLLBACKD_USER,
    SERVICES,
    VIRTUALSERVICES,
    ClusterEmulator,
    Controllers,
    Obj,
    PatchError,
    ResourceLike,
    Verb,
    gateway_status,
    json_patch,
    merge_patch,
    pod_address,
    qualified,
    rollout_settled,
    route_parents_status,
    seed_deployment,
    seed_endpointslice,
    seed_gateway,
    seed_ingress,
    seed_route,
    seed_service,
    seed_virtual_service,
    status_body,
    strategic_merge_patch,
    sync_endpointslice,
    template_hash,
)
from rollbackd.kube import KubeClient

__all__ = [
    "CONFIGMAPS",
    "CORE_EVENTS",
    "DEPLOYMENTS",
    "DESIRED_REPLICAS_ANNOTATION",
    "ENDPOINTS",
    "ENDPOINTSLICES",
    "EVENTS",
    "GATEWAYS",
    "GATEWAY_CONTROLLER",
    "GRPCROUTES",
    "HTTPROUTES",
    "INGRESSES",
    "LEASES",
    "REPLICASETS",
    "RESOURCES",
    "REVISION_HISTORY_ANNOTATION",
    "ROLLBACKD_USER",
    "SERVICES",
    "VIRTUALSERVICES",
    "ClusterEmulator",
    "Controllers",
    "Obj",
    "PatchError",
    "ResourceLike",
    "Verb",
    "gateway_status",
    "json_patch",
    "kube",
    "kube_cluster",
    "kube_controllers",
    "merge_patch",
    "pod_address",
    "qualified",
    "rollout_settled",
    "route_parents_status",
    "saying",
    "seed_deployment",
    "seed_endpointslice",
    "seed_gateway",
    "seed_ingress",
    "seed_route",
    "seed_service",
    "seed_virtual_service",
    "status_body",
    "strategic_merge_patch",
    "sync_endpointslice",
    "template_hash",
    "wait_until",
]


def saying(what: str, tail: Callable[[], str]) -> Callable[[], str]:
    """A ``what`` for :func:`wait_until`: ``what`` and what ``tail`` (a process' log) says at the
    failure (bound now: safe in a loop)."""
    return lambda: f"{what}: {tail()}"


async def wait_until(
    condition: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_s: float = 30.0,
    interval_s: float = 0.01,
    what: str | Callable[[], str] = "the condition",
) -> None:
    """Poll ``condition`` (sync or async) until it is true; fail the test after ``timeout_s``,
    saying ``what`` (a callable is called then: a process' log read at the failure, not before).

    The default bounds how long a failing test waits, not how long a passing one takes: it leaves
    room for a loaded machine (a CI runner beside other jobs) to come true late."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            said = what() if callable(what) else what
            pytest.fail(f"{said} did not come true within {timeout_s}s")
        await asyncio.sleep(interval_s)


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
async def kube_cluster(no_leftover_tasks: None) -> AsyncIterator[ClusterEmulator]:
    """A :class:`ClusterEmulator` served over HTTP on a free loopback port (``kube_cluster.url``).

    It sits inside the suite's leftover-task guard, so the guard checks after the server, the
    client and the controllers (whose connections and tasks outlive the test body) are closed."""
    async with ClusterEmulator() as emu, kmock.Server(emu):
        yield emu


@pytest.fixture
async def kube(kube_cluster: ClusterEmulator) -> AsyncIterator[KubeClient]:
    """A :class:`~rollbackd.kube.KubeClient` connected to ``kube_cluster``."""
    async with KubeClient.for_host(str(kube_cluster.url), request_timeout_s=10.0) as client:
        yield client


@pytest.fixture
async def kube_controllers(kube_cluster: ClusterEmulator) -> AsyncIterator[Controllers]:
    """:class:`Controllers` running against ``kube_cluster`` (rollouts complete after 0.05 s)."""
    async with Controllers(kube_cluster) as controllers:
        yield controllers
