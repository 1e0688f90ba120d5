"""The connection to the Kubernetes API: configuration, one owned ``ApiClient``, typed API groups.

:class:`KubeClient` is an async context manager. Entering it loads the configuration (in-cluster
service account, a kubeconfig file, or an explicit host) and opens one HTTP connection pool;
leaving it closes the pool. Every request goes through :meth:`KubeClient.request`, which returns
the response body as a plain ``dict`` and turns every failure into a
:class:`~rollbackd.kube.errors.KubeError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import aiohttp

from rollbackd.kube.errors import (
    KubeCall,
    KubeConfigError,
    KubeError,
    KubePermanent,
    api_exception,
    error_from_exception,
    error_from_status,
)

if TYPE_CHECKING:
    # Imported when a client is entered: the package is large (every API model of Kubernetes),
    # and a daemon that only decides (no Kubernetes access) never needs it.
    from kubernetes_asyncio import client as k8s

#: Seconds one API request may take, connect and read together, unless told otherwise.
DEFAULT_REQUEST_TIMEOUT_S = 30.0

#: How the daemon introduces itself to the API server (shows in audit logs).
USER_AGENT = "rollbackd"

#: A JSON object as the API server sends and takes it (camelCase keys, exactly as on the wire).
Obj = dict[str, Any]



class KubeClient:
    """A connection to one Kubernetes API server.

    Exactly one source of configuration, all keyword-only:

    - ``in_cluster=True``: the pod's service account (token and CA under
      ``/var/run/secrets/kubernetes.io/serviceaccount``, host from ``KUBERNETES_SERVICE_HOST`` /
      ``KUBERNETES_SERVICE_PORT``); the token file is re-read as the kubelet rotates it.
    - ``kubeconfig``: a kubeconfig file, for running outside the cluster; ``context`` picks one of
      its contexts (default: its ``current-context``).
    - ``host``: an explicit API URL, e.g. ``http://127.0.0.1:PORT`` in tests (see
      :meth:`for_host`); ``token`` is sent as a bearer token, ``ca_file`` verifies HTTPS,
      ``verify_tls=False`` skips verification (never in production).

    ``request_timeout_s`` bounds every request. Use as ``async with KubeClient(...) as kube:``;
    the API groups (:attr:`apps`, :attr:`core`, ...) exist only inside the block.
    """

    def __init__(
        self,
        *,
        in_cluster: bool = False,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
        host: str | None = None,
        token: str | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        verify_tls: bool = True,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> None:
        sources = [in_cluster, kubeconfig is not None, host is not None]
        if sum(sources) != 1:
            raise ValueError("give exactly one of in_cluster=True, kubeconfig=PATH or host=URL")
        if context is not None and kubeconfig is None:
            raise ValueError("context= only applies with kubeconfig=")
        if (token is not None or ca_file is not None or not verify_tls) and host is None:
            raise ValueError("token=, ca_file= and verify_tls= only apply with host=")
        if not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be positive, not {request_timeout_s!r}")
        self.in_cluster = in_cluster
        self.kubeconfig = os.fspath(kubeconfig) if kubeconfig is not None else None
        self.context = context
        self.host = host.rstrip("/") if host is not None else None
        self.token = token
        self.ca_file = os.fspath(ca_file) if ca_file is not None else None
        self.verify_tls = verify_tls
        self.request_timeout_s = request_timeout_s
        self._api: k8s.ApiClient | None = None
        self._groups: dict[str, Any] = {}

    @classmethod
    def for_host(
        cls,
        url: str,
        *,
        token: str | None = None,
        request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    ) -> Self:
        """A client for an API server at ``url`` (``http://127.0.0.1:PORT`` for a local emulator)."""
        return cls(host=url, token=token, request_timeout_s=request_timeout_s)

    def describe(self) -> str:
        """Where this client connects, for logs: ``in-cluster``, ``kubeconfig PATH (context X)``, the
        host URL."""
        if self.in_cluster:
            return "in-cluster service account"
        if self.kubeconfig is not None:
            return f"kubeconfig {self.kubeconfig}" + (f" (context {self.context})" if self.context else "")
        return f"{self.host}"

    async def _configuration(self) -> k8s.Configuration:
        from kubernetes_asyncio import client as k8s
        from kubernetes_asyncio import config as k8s_config

        #: The in-cluster loader (its signature is not annotated).
        load_incluster_config: Callable[..., None] = k8s_config.load_incluster_config
        configuration = k8s.Configuration()
        try:
            if self.in_cluster:
                load_incluster_config(client_configuration=configuration)
            elif self.kubeconfig is not None:
                await k8s_config.load_kube_config(
                    config_file=self.kubeconfig, context=self.context,
                    client_configuration=configuration, persist_config=False,
                )
            else:
                assert self.host is not None
                configuration.host = self.host
                if self.token is not None:
                    configuration.api_key = {"BearerToken": f"Bearer {self.token}"}
                if self.ca_file is not None:
                    configuration.ssl_ca_cert = self.ca_file
                configuration.verify_ssl = self.verify_tls
        except (k8s_config.ConfigException, OSError, ValueError) as exc:
            message = f"cannot load the Kubernetes configuration ({self.describe()}): {exc}"
            raise KubeConfigError(message) from exc
        return configuration

    async def __aenter__(self) -> Self:
        if self._api is not None:
            raise RuntimeError("a KubeClient can be entered only once at a time")
        from kubernetes_asyncio import client as k8s

        api = k8s.ApiClient(await self._configuration())
        api.user_agent = USER_AGENT
        self._api = api
        self._groups = {
            "apps": k8s.AppsV1Api(api),
            "core": k8s.CoreV1Api(api),
            "networking": k8s.NetworkingV1Api(api),
            "discovery": k8s.DiscoveryV1Api(api),
            "coordination": k8s.CoordinationV1Api(api),
            "events": k8s.EventsV1Api(api),
            "custom": k8s.CustomObjectsApi(api),
        }
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        api, self._api, self._groups = self._api, None, {}
        if api is not None:
            await api.close()

    async def websocket_client(self) -> k8s.ApiClient:
        """A new ``kubernetes_asyncio`` websocket client (``WsApiClient``) with this client's
        configuration, for the streaming subresources (``portforward``); the caller closes it."""
        from kubernetes_asyncio.stream import WsApiClient

        api = WsApiClient(await self._configuration())
        api.user_agent = USER_AGENT
        return api

    def _group(self, name: str) -> Any:
        if self._api is None:
            raise RuntimeError("the KubeClient is not open: use it as `async with KubeClient(...)`")
        return self._groups[name]

    @property
    def apps(self) -> k8s.AppsV1Api:
        """``apps/v1``: Deployments, ReplicaSets (and their ``scale`` / ``status``)."""
        api: k8s.AppsV1Api = self._group("apps")
        return api

    @property
    def core(self) -> k8s.CoreV1Api:
        """``v1``: Services, Endpoints, core Events."""
        api: k8s.CoreV1Api = self._group("core")
        return api

    @property
    def networking(self) -> k8s.NetworkingV1Api:
        """``networking.k8s.io/v1``: Ingresses."""
        api: k8s.NetworkingV1Api = self._group("networking")
        return api

    @property
    def discovery(self) -> k8s.DiscoveryV1Api:
        """``discovery.k8s.io/v1``: EndpointSlices."""
        api: k8s.DiscoveryV1Api = self._group("discovery")
        return api

    @property
    def coordination(self) -> k8s.CoordinationV1Api:
        """``coordination.k8s.io/v1``: Leases (leader election)."""
        api: k8s.CoordinationV1Api = self._group("coordination")
        return api

    @property
    def events(self) -> k8s.EventsV1Api:
        """``events.k8s.io/v1``: Events."""
        api: k8s.EventsV1Api = self._group("events")
        return api

    @property
    def custom(self) -> k8s.CustomObjectsApi:
        """Objects of custom resources (CRDs), by group, version and plural -- Argo Rollouts'
        ``argoproj.io/v1alpha1`` Rollouts, Gateway API routes, Istio VirtualServices, Argo CD
        Applications, Flux Kustomizations and HelmReleases -- and the API discovery of a group
        version."""
        api: k8s.CustomObjectsApi = self._group("custom")
        return api

    async def request(
        self, call: KubeCall, method: Callable[..., Awaitable[Any]], /, *args: Any, **kwargs: Any
    ) -> Obj:
        """Send one request with a ``kubernetes_asyncio`` API method and return the response body.

        ``call`` describes the request for error messages (and RBAC); ``method`` is a bound method of
        one of the API groups, called with ``args`` and ``kwargs`` plus ``_preload_content=False``
        (the body comes back exactly as the server sent it, as a ``dict``, not as a model object)
        and this client's request timeout.

        Raises :class:`~rollbackd.kube.errors.KubeError` (classified) for every failure: an error
        status, a timeout, a refused connection, a body that is not a JSON object.
        """
        try:
            response = await method(
                *args, _preload_content=False, _request_timeout=self.request_timeout_s, **kwargs
            )
            if not isinstance(response, aiohttp.ClientResponse):  # pragma: no cover - a client change
                raise KubePermanent(f"{call.describe()}: unexpected client result {type(response).__name__}",
                                    call=call)
            try:
                status = response.status
                retry_after = response.headers.get("Retry-After")
                body = await response.read()
            finally:
                response.release()
        except KubeError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError, api_exception()) as exc:
            raise error_from_exception(call, exc) from exc
        if not 200 <= status <= 299:
            raise error_from_status(call, status, body, retry_after=retry_after)
        try:
            document = json.loads(body)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            quoted = body[:200].decode("utf-8", "replace")
            raise KubePermanent(f"{call.describe()}: the answer is not a JSON object: {quoted!r}",
                                call=call, status=status)
        return document

    async def watch(
        self,
        call: KubeCall,
        method: Callable[..., Awaitable[Any]],
        /,
        *args: Any,
        timeout_s: float,
        **kwargs: Any,
    ) -> AsyncIterator[Obj]:
        """Watch with a ``kubernetes_asyncio`` list method (``watch=True``): yield each event of
        the stream, ``{"type": "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK", "object": {...}}``,
        exactly as the server sent it, until the server ends the stream (it does after
        ``timeout_s``, sent as ``timeoutSeconds``). A connection silent for longer than that plus
        this client's request timeout is given up.

        Raises :class:`~rollbackd.kube.errors.KubeError` for every failure, an ``ERROR`` event
        included (a ``410 Gone`` for a resource version too old: list again)."""
        timeout = aiohttp.ClientTimeout(
            connect=self.request_timeout_s,
            sock_connect=self.request_timeout_s,
            sock_read=timeout_s + self.request_timeout_s,
        )
        try:
            response = await method(
                *args, watch=True, timeout_seconds=max(1, round(timeout_s)), _preload_content=False,
                _request_timeout=timeout, **kwargs,
            )
        except (TimeoutError, aiohttp.ClientError, OSError, api_exception()) as exc:
            raise error_from_exception(call, exc) from exc
        if not isinstance(response, aiohttp.ClientResponse):  # pragma: no cover - a client change
            raise KubePermanent(
                f"{call.describe()}: unexpected client result {type(response).__name__}", call=call
            )
        try:
            if not 200 <= response.status <= 299:
                body = await response.read()
                raise error_from_status(call, response.status, body,
                                        retry_after=response.headers.get("Retry-After"))
            while True:
                try:
                    line = await response.content.readline()
                except ValueError as exc:  # longer than the stream reader's limit
                    raise KubePermanent(
                        f"{call.describe()}: a watch event too long to read: {exc}", call=call
                    ) from exc
                if not line:
                    return  # the server ended the stream (its timeout, or it went away)
                if not line.strip():
                    continue
                event = _watch_event(call, line)
                if event is not None:
                    yield event
        except KubeError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise error_from_exception(call, exc) from exc
        finally:
            response.release()


def _watch_event(call: KubeCall, line: bytes) -> Obj | None:
    """One line of a watch stream as an event; an ``ERROR`` event raised as the error it reports."""
    try:
        event = json.loads(line)
    except ValueError:
        quoted = line[:200].decode("utf-8", "replace")
        raise KubePermanent(f"{call.describe()}: a watch event is not JSON: {quoted!r}", call=call) from None
    if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
        return None
    if event.get("type") == "ERROR":
        status = event["object"].get("code")
        raise error_from_status(call, status if isinstance(status, int) else 500, json.dumps(event["object"]))
    return event
