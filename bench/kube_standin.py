"""A stand-in Kubernetes API for the scale benchmark: fast, read-only, any number of Deployments.

The tests and the demo use the emulated cluster of :mod:`rollbackd.demo.emulator`, which keeps
every request it served (for assertions) and slows down as they pile up: thousands of reads a
minute are not what it is for. This stand-in answers what a daemon in dry-run asks: the Deployments
it reads for its breached targets at every tick and for the Kubernetes Events it records
(``GET .../deployments/NAME``, answered with a Deployment of the size a real API server sends,
managed fields included, for any namespace and name), the canary Ingress a dry-run rollback plans
with (``GET .../ingresses/NAME``), and those Events (``POST``, stored nowhere). Everything
else is answered 404 as the API server words it, and counted: the benchmark reports what the
daemon asked that the stand-in does not know.

Run as ``python -m bench.kube_standin PORT``; it prints ``ready`` once it listens on 127.0.0.1.
``GET /standin/stats`` gives the requests served and the paths of the unknown ones.
"""

from __future__ import annotations

import hashlib
import sys
from collections import Counter
from typing import Any

from aiohttp import web

HOST = "127.0.0.1"


def deployment(namespace: str, name: str) -> dict[str, Any]:
    """A Deployment as the API server returns it: the candidate of a canary at revision 2, ready."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()
    labels = {"app": name, "app.kubernetes.io/name": name.rsplit("-", 1)[0]}
    container = {
        "name": "app",
        "image": f"registry.example/{labels['app.kubernetes.io/name']}:1.{len(name)}.0",
        "ports": [{"containerPort": 8080, "name": "http", "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "imagePullPolicy": "IfNotPresent",
    }
    managed = {
        "manager": "kubectl-client-side-apply",
        "operation": "Update",
        "apiVersion": "apps/v1",
        "time": "2026-12-01T10:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:labels": {f"f:{k}": {} for k in labels}},
                     "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                         'k:{"name":"app"}': {f"f:{k}": {} for k in container}}}}}},
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}",
            "resourceVersion": "4711",
            "generation": 2,
            "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": labels,
            "annotations": {"deployment.kubernetes.io/revision": "2"},
            "managedFields": [managed, {**managed, "manager": "kube-controller-manager",
                                        "subresource": "status"}],
        },
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "containers": [container], "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                "terminationGracePeriodSeconds": 30, "schedulerName": "default-scheduler"}},
            "strategy": {"type": "RollingUpdate",
                         "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "revisionHistoryLimit": 10,
            "progressDeadlineSeconds": 600,
        },
        "status": {
            "observedGeneration": 2,
            "replicas": 3,
            "updatedReplicas": 3,
            "readyReplicas": 3,
            "availableReplicas": 3,
            "conditions": [
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                 "lastUpdateTime": "2026-12-01T10:01:00Z", "lastTransitionTime": "2026-12-01T10:01:00Z"},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "lastUpdateTime": "2026-12-01T10:01:00Z", "lastTransitionTime": "2026-12-01T10:00:00Z"},
            ],
        },
    }


def ingress(namespace: str, name: str) -> dict[str, Any]:
    """The canary Ingress of ingress-nginx for ``name`` (``SERVICE-canary``), weight 10."""
    service = name
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": "4713",
            "generation": 1,
            "annotations": {
                "nginx.ingress.kubernetes.io/canary": "true",
                "nginx.ingress.kubernetes.io/canary-weight": "10",
            },
        },
        "spec": {
            "ingressClassName": "nginx",
            "rules": [{"host": f"{name}.example.com", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": service, "port": {"number": 80}}},
            }]}}],
        },
    }


def make_app() -> web.Application:
    served: Counter[str] = Counter()
    unknown: Counter[str] = Counter()

    async def get_deployment(request: web.Request) -> web.Response:
        served["deployments"] += 1
        return web.json_response(deployment(request.match_info["namespace"], request.match_info["name"]))

    async def get_ingress(request: web.Request) -> web.Response:
        served["ingresses"] += 1
        return web.json_response(ingress(request.match_info["namespace"], request.match_info["name"]))

    async def create_event(request: web.Request) -> web.Response:
        served["events"] += 1
        event = await request.json()
        metadata = event.setdefault("metadata", {})
        metadata.setdefault("namespace", request.match_info["namespace"])
        metadata.update(uid=hashlib.sha256(str(metadata.get("name")).encode()).hexdigest()[:32],
                        resourceVersion="4712", creationTimestamp="2026-12-01T10:00:00Z")
        return web.json_response(event, status=201)

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"served": dict(served), "unknown": dict(unknown)})

    async def other(request: web.Request) -> web.Response:
        unknown[f"{request.method} {request.path}"] += 1
        return web.json_response(
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
             "message": f"the server could not find the requested resource ({request.path})"},
            status=404,
        )

    app = web.Application()
    app.router.add_get("/apis/apps/v1/namespaces/{namespace}/deployments/{name}", get_deployment)
    app.router.add_get("/apis/networking.k8s.io/v1/namespaces/{namespace}/ingresses/{name}", get_ingress)
    app.router.add_post("/apis/events.k8s.io/v1/namespaces/{namespace}/events", create_event)
    app.router.add_get("/standin/stats", stats)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


def main(argv: list[str]) -> None:
    port = int(argv[0])
    web.run_app(make_app(), host=HOST, port=port, print=lambda *_: print("ready", flush=True),
                access_log=None)


if __name__ == "__main__":
    main(sys.argv[1:])
