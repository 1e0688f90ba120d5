"""Kubernetes API failures, classified by what the caller can do about them.

Every error names the request it came from (:class:`KubeCall`: verb, resource, namespace, name),
keeps the HTTP status and the API server's own ``reason`` and ``message`` (from its ``Status``
body), and falls into one of these classes::

    KubeError
    ├── KubeTemporary   5xx, 429, timeouts, refused or broken connections: retry with backoff
    ├── KubeConflict    409: the object changed under us: re-read, re-apply
    └── KubePermanent   other 4xx: retrying the same request will not help
        ├── KubeNotFound    404
        ├── KubeForbidden   403: RBAC does not grant the verb on that resource
        └── KubeConfigError no usable configuration (in-cluster, kubeconfig)

:class:`KubeTemporary` is also a :class:`~rollbackd.errors.TemporaryError` and
:class:`KubePermanent` a :class:`~rollbackd.errors.PermanentError`; :class:`KubeConflict` is
neither, on purpose: sending the same request again fails again, reading the object anew and
applying the change to it usually succeeds (see :func:`rollbackd.kube.retry.retrying`).

:func:`error_from_status` builds the error from a response; :func:`error_from_exception` from an
exception of the HTTP client (``aiohttp``) or of ``kubernetes_asyncio`` (``ApiException``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Required, TypedDict, Unpack

import aiohttp

from rollbackd.errors import PermanentError, RollbackdError, TemporaryError

if TYPE_CHECKING:
    from kubernetes_asyncio.client.exceptions import ApiException

#: How much of a non-JSON error body is quoted in messages.
_QUOTE_CHARS = 300


@dataclass(frozen=True, slots=True)
class KubeCall:
    """One API request, as RBAC sees it: ``verb`` (get, list, watch, create, update, patch, delete)
    on ``resource`` (the plural, e.g. ``deployments``) of API ``group`` (``""`` for the core group),
    optionally a ``subresource`` (``scale``, ``status``), in ``namespace``, on object ``name``."""

    verb: str
    resource: str
    group: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None

    @property
    def qualified_resource(self) -> str:
        """``deployments.apps``, ``services`` (core group), ``deployments.apps/scale``."""
        base = f"{self.resource}.{self.group}" if self.group else self.resource
        return f"{base}/{self.subresource}" if self.subresource else base

    def describe(self) -> str:
        """``patch deployments.apps "web" in namespace "shop"``."""
        text = f"{self.verb} {self.qualified_resource}"
        if self.name:
            text += f' "{self.name}"'
        if self.namespace:
            text += f' in namespace "{self.namespace}"'
        return text


class Answer(TypedDict, total=False):
    """The keyword arguments every :class:`KubeError` takes: the request and what came back of it
    (see :class:`KubeError`); declared once for the subclasses that add their own."""

    call: Required[KubeCall]
    status: int | None
    reason: str | None
    server_message: str | None


class KubeError(RollbackdError):
    """A Kubernetes API request failed.

    ``call`` is the request; ``status`` the HTTP status (``None`` when no response came);
    ``reason`` the API server's machine-readable reason (``NotFound``, ``Conflict``, ``Forbidden``,
    ``InternalError``, ...) or the transport failure (``timeout``, ``connection``);
    ``server_message`` what the server said, verbatim.
    """

    def __init__(self, message: str, **answer: Unpack[Answer]) -> None:
        super().__init__(message)
        self.call = answer["call"]
        self.status = answer.get("status")
        self.reason = answer.get("reason")
        self.server_message = answer.get("server_message")


class KubeTemporary(KubeError, TemporaryError):
    """The API server is down, slow, overloaded or unreachable: the same request may succeed later.
    ``retry_after_s`` is the server's ``Retry-After`` when it sent one (429, 503)."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, **answer: Unpack[Answer]) -> None:
        super().__init__(message, **answer)
        self.retry_after_s = retry_after_s


class KubeConflict(KubeError):
    """409: the object was modified since it was read (or already exists, for a create).
    Re-read it and apply the change again."""


class KubePermanent(KubeError, PermanentError):
    """The API server refused the request itself (4xx other than 409 and 429): do not retry."""


class KubeNotFound(KubePermanent):
    """404: the object (or its namespace, or the resource type) does not exist."""


class KubeForbidden(KubePermanent):
    """403: the identity rollbackd runs as may not do this.

    The message names who was refused (``user``), which ``verb`` on which ``resource`` of which API
    ``group``, in which ``namespace``, and that an RBAC rule must grant it. These are parsed from
    the API server's message when it has them (it knows best what was checked), otherwise taken
    from the request.
    """

    def __init__(
        self,
        message: str,
        *,
        user: str | None = None,
        verb: str,
        resource: str,
        group: str,
        namespace: str | None,
        **answer: Unpack[Answer],
    ) -> None:
        super().__init__(message, **answer)
        self.user = user
        self.verb = verb
        self.resource = resource
        self.group = group
        self.namespace = namespace


class KubeConfigError(KubePermanent):
    """The Kubernetes configuration could not be loaded (no in-cluster environment, a missing or
    broken kubeconfig, an unknown context)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, call=KubeCall(verb="configure", resource="client"))


# The API server's RBAC denial, e.g.:
#   deployments.apps "web" is forbidden: User "system:serviceaccount:rollbackd:rollbackd" cannot patch
#   resource "deployments" in API group "apps" in the namespace "shop"
# (cluster-scoped: "... at the cluster scope"; core group: in API group "").
_FORBIDDEN = re.compile(
    r'User "(?P<user>[^"]*)" cannot (?P<verb>[A-Za-z]+) resource "(?P<resource>[^"]+)"'
    r'(?: in API group "(?P<group>[^"]*)")?'
    r'(?: in the namespace "(?P<namespace>[^"]*)")?'
)


def _status_fields(body: bytes | str | None) -> tuple[str | None, str | None]:
    """``(reason, message)`` of a Kubernetes ``Status`` body; for anything else, ``(None, quote)``."""
    if body is None:
        return None, None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        document = json.loads(text)
    except ValueError:
        quoted = text.strip()[:_QUOTE_CHARS]
        return None, quoted or None
    if not isinstance(document, Mapping):
        return None, text.strip()[:_QUOTE_CHARS] or None
    reason = document.get("reason")
    message = document.get("message")
    return (
        reason if isinstance(reason, str) and reason else None,
        message if isinstance(message, str) and message else None,
    )


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare from the API server; the backoff decides instead
    return seconds if seconds >= 0 else None


def _forbidden(call: KubeCall, status: int, reason: str | None, server_message: str | None) -> KubeForbidden:
    match = _FORBIDDEN.search(server_message or "")
    user = match.group("user") if match else None
    verb = match.group("verb") if match else call.verb
    resource = match.group("resource") if match else (
        f"{call.resource}/{call.subresource}" if call.subresource else call.resource
    )
    group = (match.group("group") or "") if match and match.group("group") is not None else call.group
    namespace = match.group("namespace") if match and match.group("namespace") is not None else call.namespace
    who = f'User "{user}"' if user else "rollbackd's identity"
    where = f' in namespace "{namespace}"' if namespace else " cluster-wide"
    message = (
        f'Forbidden: {who} may not {verb} {resource} in API group "{group}"{where} '
        f"(request: {call.describe()}). RBAC must grant it: a Role or ClusterRole rule with "
        f'apiGroups: ["{group}"], resources: ["{resource}"], verbs: ["{verb}"], bound to that identity.'
    )
    if server_message:
        message += f" The API server said: {server_message}"
    return KubeForbidden(
        message, call=call, status=status, reason=reason or "Forbidden", server_message=server_message,
        user=user, verb=verb, resource=resource, group=group, namespace=namespace,
    )


def error_from_status(
    call: KubeCall,
    status: int,
    body: bytes | str | None,
    *,
    retry_after: str | None = None,
) -> KubeError:
    """The error for a non-2xx response: ``body`` is the response body (a ``Status`` object from a
    real API server), ``retry_after`` the ``Retry-After`` header if any."""
    reason, server_message = _status_fields(body)
    said = f": {server_message}" if server_message else ""
    kwargs: Answer = {"call": call, "status": status, "reason": reason, "server_message": server_message}
    if status == 403:
        return _forbidden(call, status, reason, server_message)
    if status == 404:
        return KubeNotFound(f"{call.describe()}: not found (404){said}", **kwargs)
    if status == 409:
        return KubeConflict(f"{call.describe()}: conflict (409){said}", **kwargs)
    if status == 429 or status >= 500:
        return KubeTemporary(
            f"{call.describe()}: the API server could not answer now ({status}){said}",
            retry_after_s=_retry_after(retry_after), **kwargs,
        )
    if status == 401:
        return KubePermanent(
            f"{call.describe()}: the API server rejected rollbackd's credentials (401){said}", **kwargs
        )
    return KubePermanent(f"{call.describe()}: rejected ({status}){said}", **kwargs)


def api_exception() -> type[ApiException]:
    """``kubernetes_asyncio``'s ``ApiException``, imported on first use: the package is loaded
    when a client is entered, never by a daemon that only decides."""
    from kubernetes_asyncio.client.exceptions import ApiException as loaded

    return loaded


def error_from_exception(call: KubeCall, exc: BaseException) -> KubeError:
    """The error for an exception raised while sending the request or reading the response.

    ``ApiException`` with a status is classified like a response; without one (the client could not
    even build the request) it is permanent. Timeouts and connection failures are temporary. Any
    other exception is not an API failure: callers should let it propagate rather than call this.
    """
    if isinstance(exc, api_exception()):
        status = exc.status if isinstance(exc.status, int) else 0
        if status:
            headers = exc.headers
            retry_after = headers.get("Retry-After") if headers is not None else None
            return error_from_status(call, status, exc.body, retry_after=retry_after)
        return KubePermanent(f"{call.describe()}: the request could not be made: {exc.reason}", call=call)
    if isinstance(exc, TimeoutError):  # also aiohttp's ServerTimeoutError
        return KubeTemporary(f"{call.describe()}: timed out", call=call, reason="timeout")
    if isinstance(exc, aiohttp.ClientResponseError):
        return error_from_status(call, exc.status, exc.message)
    if isinstance(exc, aiohttp.ClientError | OSError):
        detail = str(exc) or type(exc).__name__
        return KubeTemporary(
            f"{call.describe()}: connection failed: {detail}", call=call, reason="connection"
        )
    return KubePermanent(f"{call.describe()}: unexpected failure: {exc!r}", call=call)
