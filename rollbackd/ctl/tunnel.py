"""Reach the daemon through the cluster: the leader's pod from the leader-election Lease, and a
port-forward to it over the API server (:class:`~rollbackd.kube.portforward.PortForward`).

Writes go to the leader itself, so a freeze or a hold is applied by the replica that acts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rollbackd.ctl.client import EXIT_UNREACHABLE, EXIT_USAGE, CtlError
from rollbackd.kube.client import KubeClient
from rollbackd.kube.errors import KubeCall, KubeConfigError, KubeError
from rollbackd.kube.portforward import PortForward

#: Where the chart installs rollbackd by default, and its Lease and HTTP port.
DEFAULT_NAMESPACE = "rollbackd"
DEFAULT_LEASE = "rollbackd"
DEFAULT_PORT = 8080


@dataclass(frozen=True, slots=True)
class ClusterRoute:
    """How to reach the daemon through the cluster: the kubeconfig (and context), the namespace
    rollbackd runs in, its Lease, and the daemon's HTTP port in the pod."""

    kubeconfig: str
    context: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    lease: str = DEFAULT_LEASE
    port: int = DEFAULT_PORT


def default_kubeconfig(environ: Mapping[str, str]) -> str:
    """``$KUBECONFIG`` (its first file), else ``~/.kube/config``, as kubectl reads it."""
    first = environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    return first or str(Path(environ.get("HOME", str(Path.home()))) / ".kube" / "config")


async def leader_pod(kube: KubeClient, *, namespace: str, lease: str) -> str:
    """The pod that leads: the Lease's ``spec.holderIdentity`` (the replicas' ``$POD_NAME``)."""
    call = KubeCall("get", "leases", group="coordination.k8s.io", namespace=namespace, name=lease)
    document = await kube.request(call, kube.coordination.read_namespaced_lease, lease, namespace)
    spec = document.get("spec")
    holder = spec.get("holderIdentity") if isinstance(spec, dict) else None
    if not isinstance(holder, str) or not holder:
        raise CtlError(
            f"the Lease {namespace}/{lease} names no leader now (no replica holds it: starting, or leader "
            "election is off); try again in a few seconds, or reach a replica with "
            f"kubectl -n {namespace} port-forward svc/rollbackd 8080 and --server http://127.0.0.1:8080",
            exit_code=EXIT_UNREACHABLE,
        )
    return holder


@contextlib.asynccontextmanager
async def forward_to_leader(route: ClusterRoute) -> AsyncIterator[str]:
    """The URL of a local port forwarded to the leader's pod, while inside the block."""
    try:
        async with KubeClient(kubeconfig=route.kubeconfig, context=route.context) as kube:
            pod = await leader_pod(kube, namespace=route.namespace, lease=route.lease)
            async with PortForward(kube, namespace=route.namespace, pod=pod, port=route.port) as forward:
                yield f"http://127.0.0.1:{forward.local_port}"
    except KubeConfigError as exc:
        raise CtlError(str(exc), exit_code=EXIT_USAGE) from None
    except KubeError as exc:
        raise CtlError(
            f"cannot reach the daemon through the cluster: {exc}", exit_code=EXIT_UNREACHABLE
        ) from None
