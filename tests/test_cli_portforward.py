"""``rollbackd status --kubeconfig ...``: the leader's pod read from the Lease, and a port-forward to
it over the API server's websocket (``v4.channel.k8s.io``), through the real ``kubernetes_asyncio``
client. The API server here is the tests' own small one on loopback: it serves the Lease and the
pod's ``portforward`` subresource, carrying the bytes to a real daemon's port as a kubelet would."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import yaml
from aiohttp import web

from rollbackd.cli import main
from tests.test_cli_verbs import SECRET, running, settings_for

PORTFORWARD_PROTOCOL = "v4.channel.k8s.io"


@dataclass
class ApiServer:
    """The Lease ``rollbackd/rollbackd`` held by ``holder``, and pods whose port ``8080`` is the
    daemon's ``daemon_port`` on loopback. Records every port-forward asked for."""

    daemon_port: int
    holder: str | None = "rollbackd-7c9f-abcde"
    forwards: list[tuple[str, str, str, str]] = field(default_factory=list)

    async def lease(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        if (namespace, name) != ("rollbackd", "rollbackd"):
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound",
                                      "message": f'leases "{name}" not found'}, status=404)
        return web.json_response({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"holderIdentity": self.holder, "leaseDurationSeconds": 15},
        })

    async def portforward(self, request: web.Request) -> web.StreamResponse:
        namespace, pod = request.match_info["namespace"], request.match_info["pod"]
        ports = request.query.get("ports", "")
        self.forwards.append((namespace, pod, ports, request.headers.get("Sec-WebSocket-Protocol", "")))
        ws = web.WebSocketResponse(protocols=(PORTFORWARD_PROTOCOL,))
        await ws.prepare(request)
        if pod != self.holder or ports != "8080":
            await ws.send_bytes(bytes([1]) + int(ports or 0).to_bytes(2, "little"))
            await ws.send_bytes(bytes([1]) + b"no such pod or port")
            await ws.close()
            return ws
        reader, writer = await asyncio.open_connection("127.0.0.1", self.daemon_port)
        port = int(ports).to_bytes(2, "little")
        await ws.send_bytes(bytes([0]) + port)  # each channel starts with the port number
        await ws.send_bytes(bytes([1]) + port)

        async def to_client() -> None:
            while chunk := await reader.read(65536):
                await ws.send_bytes(bytes([0]) + chunk)
            await ws.close()

        pump = asyncio.create_task(to_client())
        try:
            async for message in ws:
                if message.type == aiohttp.WSMsgType.BINARY and message.data[:1] == b"\x00":
                    writer.write(message.data[1:])
                    await writer.drain()
        finally:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            writer.close()
        return ws


@contextlib.asynccontextmanager
async def api_server(server: ApiServer) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}", server.lease)
    app.router.add_get("/api/v1/namespaces/{namespace}/pods/{pod}/portforward", server.portforward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "test", "cluster": {"server": url}},
                     {"name": "nowhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "operator", "user": {"token": "kube-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "operator"}},
                     {"name": "other", "context": {"cluster": "nowhere", "user": "operator"}}],
    }))
    return path


def exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROLLBACKD_SERVER", "ROLLBACKD_TOKEN", "KUBECONFIG"):
        monkeypatch.delenv(name, raising=False)


async def test_the_verbs_reach_the_leader_through_a_port_forward(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(SECRET)
    async with running(settings_for(tmp_path, token_file=token_file)) as daemon:
        server = ApiServer(daemon_port=daemon.port)
        async with api_server(server) as url:
            config = kubeconfig(tmp_path / "kubeconfig", url)
            cluster = ["--kubeconfig", str(config), "--context", "test", "--token-file", str(token_file)]
            code = await asyncio.to_thread(exit_status, ["status", "-o", "json", *cluster])
            out, err = capsys.readouterr()
            assert code == 0, err
            assert set(json.loads(out)["targets"]) == {"shop/checkout", "pay/payments"}
            assert server.forwards == [("rollbackd", server.holder, "8080", PORTFORWARD_PROTOCOL)]

            freeze = ["freeze", "--reason", "through the cluster", *cluster]
            assert await asyncio.to_thread(exit_status, freeze) == 0
            assert daemon.state.flags.freeze is True

            # $KUBECONFIG and --daemon-namespace: the Lease is looked up there.
            monkeypatch.setenv("KUBECONFIG", str(config))
            capsys.readouterr()
            elsewhere = ["status", "--context", "test", "--daemon-namespace", "ops"]
            code = await asyncio.to_thread(exit_status, elsewhere)
            assert code == 3
            assert 'leases "rollbackd" not found' in capsys.readouterr().err

            server.holder = None
            code = await asyncio.to_thread(exit_status, ["status", *cluster])
            assert code == 3
            assert "names no leader" in capsys.readouterr().err

            # The kubeconfig's current context points nowhere: unreachable, said so.
            code = await asyncio.to_thread(exit_status, ["status", "--kubeconfig", str(config)])
            assert code == 3
            assert "cannot reach the daemon through the cluster" in capsys.readouterr().err
            code = await asyncio.to_thread(exit_status, ["status", "--kubeconfig", str(tmp_path / "none")])
            assert code == 2
            assert "cannot load the Kubernetes configuration" in capsys.readouterr().err


async def test_a_server_without_the_route_is_said_not_to_support_the_verb(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that answers but lacks the route (an older rollbackd): 404 without a JSON body."""
    async with api_server(ApiServer(daemon_port=9)) as url:
        code = await asyncio.to_thread(
            exit_status, ["rollback", "shop/checkout", "--reason", "bad release", "--server", url]
        )
    assert code == 1
    err = capsys.readouterr().err
    assert "does not support POST /api/v1/targets/shop/checkout/rollback (404)" in err
    assert "upgrade" in err
