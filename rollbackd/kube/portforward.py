"""Port-forward to a pod through the API server, as ``kubectl port-forward`` does: a local TCP port
whose every connection is carried over its own websocket to the pod's ``portforward`` subresource.

The websocket speaks the ``v4.channel.k8s.io`` protocol: each binary message starts with a
channel byte; for the one port forwarded, channel 0 carries the data and channel 1 the errors, and
the server's first message on each channel is the port number (two bytes, little-endian), which is
not data. RBAC: ``create`` on ``pods/portforward`` (and ``get``, which the websocket upgrade is).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from rollbackd.kube.client import KubeClient
from rollbackd.kube.errors import KubeCall, KubeError, error_from_exception

logger = logging.getLogger(__name__)

#: The channels of the one port forwarded.
DATA_CHANNEL = 0
ERROR_CHANNEL = 1

#: The subprotocol of the API server's streaming subresources.
PROTOCOL = "v4.channel.k8s.io"


class PortForwardError(KubeError):
    """The API server refused the port-forward, or the pod reported an error on the error channel."""


def portforward_call(namespace: str, pod: str) -> KubeCall:
    return KubeCall("create", "pods", namespace=namespace, name=pod, subresource="portforward")


class PortForward:
    """``async with PortForward(kube, namespace, pod, port) as forward:`` listens on
    ``127.0.0.1:forward.local_port`` and carries each connection to ``pod``'s ``port``."""

    def __init__(self, kube: KubeClient, *, namespace: str, pod: str, port: int) -> None:
        self._kube = kube
        self.namespace = namespace
        self.pod = pod
        self.port = port
        self.local_port = 0
        self._server: asyncio.Server | None = None
        self._ws_api: Any = None
        self._connections: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> PortForward:
        from kubernetes_asyncio import client as k8s

        self._ws_api = await self._kube.websocket_client()
        self._core = k8s.CoreV1Api(self._ws_api)
        self._server = await asyncio.start_server(self._accept, host="127.0.0.1", port=0)
        self.local_port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        if self._ws_api is not None:
            await self._ws_api.close()
            self._ws_api = None

    @contextlib.asynccontextmanager
    async def _websocket(self) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        call = portforward_call(self.namespace, self.pod)
        try:
            # Without preloading, the client answers the websocket's connect context, not a str.
            connecting: Any = await self._core.connect_get_namespaced_pod_portforward(
                self.pod, self.namespace, ports=self.port, _preload_content=False
            )
            async with connecting as ws:
                yield ws
        except aiohttp.WSServerHandshakeError as exc:
            raise PortForwardError(
                f"{call.describe()}: the API server refused the port-forward ({exc.status} {exc.message})",
                call=call, status=exc.status,
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise error_from_exception(call, exc) from exc

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._carry(reader, writer), name="rollbackd:port-forward")
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One local connection over one websocket, both ways, until either side closes."""
        try:
            async with self._websocket() as ws:
                upstream = asyncio.create_task(self._upstream(reader, ws))
                try:
                    await self._downstream(ws, writer)
                finally:
                    upstream.cancel()
                    await asyncio.gather(upstream, return_exceptions=True)
        except KubeError as exc:
            logger.error("port-forward to %s/%s:%d failed: %s", self.namespace, self.pod, self.port, exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    @staticmethod
    async def _upstream(reader: asyncio.StreamReader, ws: aiohttp.ClientWebSocketResponse) -> None:
        while chunk := await reader.read(65536):
            await ws.send_bytes(bytes([DATA_CHANNEL]) + chunk)
        await ws.close()

    async def _downstream(self, ws: aiohttp.ClientWebSocketResponse, writer: asyncio.StreamWriter) -> None:
        port_seen = {DATA_CHANNEL: False, ERROR_CHANNEL: False}
        async for message in ws:
            if message.type != aiohttp.WSMsgType.BINARY or not message.data:
                continue
            channel, payload = message.data[0], message.data[1:]
            if channel in port_seen and not port_seen[channel]:
                port_seen[channel] = True  # the port number, not data
                continue
            if channel == DATA_CHANNEL:
                writer.write(payload)
                await writer.drain()
            elif channel == ERROR_CHANNEL and payload:
                text = payload.decode("utf-8", "replace")
                logger.error("port-forward to %s/%s:%d: %s", self.namespace, self.pod, self.port, text)
                return
