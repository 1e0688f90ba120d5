"""A client of the daemon's HTTP API for the operator commands.

Every failure is one :class:`CtlError` carrying the exit status the command ends with and a
message saying what failed and what to do (see :data:`EXIT_CODES`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

#: The command did what was asked.
EXIT_OK = 0
#: The daemon answered but refused or failed (409 frozen, 400 bad input, 5xx, a route it lacks).
EXIT_REFUSED = 1
#: Usage: bad arguments, no token file, a malformed server URL.
EXIT_USAGE = 2
#: The daemon could not be reached (connection refused, time-out, DNS, a port-forward failing).
EXIT_UNREACHABLE = 3
#: The daemon refused the credentials (401: no or wrong token; 403: no token configured on it).
EXIT_AUTH = 4
#: The target named is not one the daemon watches.
EXIT_NOT_FOUND = 5

#: The exit statuses, documented in ``rollbackd --help`` and docs/cli.md.
EXIT_CODES: Mapping[int, str] = {
    EXIT_OK: "done",
    EXIT_REFUSED: "the daemon refused or failed (the message says why)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_UNREACHABLE: "cannot reach the daemon",
    EXIT_AUTH: "the daemon refused the token (missing, wrong, or none configured on the daemon)",
    EXIT_NOT_FOUND: "no such target",
}

#: Default time for one request, in seconds.
REQUEST_TIMEOUT_S = 15.0


class CtlError(Exception):
    """A command failed: ``exit_code`` is the status to exit with, ``str()`` the message."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the daemon answers (``url``, without a trailing slash) and the bearer token to send."""

    url: str
    token: str | None = None
    timeout_s: float = REQUEST_TIMEOUT_S


def _error_text(body: Any, fallback: str) -> str:
    if isinstance(body, Mapping) and isinstance(body.get("error"), str):
        return str(body["error"])
    return fallback


async def call(endpoint: Endpoint, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
    """``method path`` on the daemon with ``body`` as JSON; the answer's JSON document.

    :class:`CtlError` when the daemon cannot be reached, refuses the token, does not know the
    target or the route, or answers anything but 2xx.
    """
    headers = {"Accept": "application/json"}
    if endpoint.token is not None:
        headers["Authorization"] = f"Bearer {endpoint.token}"
    url = endpoint.url + path
    timeout = aiohttp.ClientTimeout(total=endpoint.timeout_s)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.request(method, url, json=body, headers=headers) as response,
        ):
            text = await response.text(errors="replace")
            is_json = response.content_type == "application/json"
            status = response.status
    except aiohttp.InvalidURL:
        raise CtlError(
            f"'{endpoint.url}' is not a server URL: write it like http://127.0.0.1:8080", exit_code=EXIT_USAGE
        ) from None
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        reason = "no answer in time" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        raise CtlError(
            f"cannot reach the daemon at {endpoint.url}: {reason}. Check --server (or ROLLBACKD_SERVER), "
            "or use --kubeconfig/--context to reach it through the cluster",
            exit_code=EXIT_UNREACHABLE,
        ) from None
    document: Any = None
    if is_json:
        try:
            document = json.loads(text)
        except ValueError:
            document = None
    if 200 <= status < 300:
        if not is_json or (document is None and text.strip() not in ("", "null")):
            raise CtlError(
                f"{endpoint.url} answered {method} {path} with something that is not JSON: is it a "
                "rollbackd daemon? Check --server",
                exit_code=EXIT_REFUSED,
            )
        return document
    raise _refusal(endpoint, method, path, status, document if is_json else None)


def _refusal(endpoint: Endpoint, method: str, path: str, status: int, document: Any) -> CtlError:
    message = _error_text(document, f"HTTP {status}")
    if status == 401:
        hint = (
            "pass the daemon's API token with --token-file FILE or the ROLLBACKD_TOKEN environment variable"
            if endpoint.token is None
            else "the token sent is not the daemon's: check --token-file or ROLLBACKD_TOKEN"
        )
        return CtlError(f"the daemon refused the request (401): {hint}", exit_code=EXIT_AUTH)
    if status == 403:
        return CtlError(f"the daemon refused the request (403): {message}", exit_code=EXIT_AUTH)
    if status == 404 and document is not None:
        return CtlError(f"{message} (see 'rollbackd status' for the targets)", exit_code=EXIT_NOT_FOUND)
    if status in (404, 405):
        # aiohttp's own answer for a route it does not have: not JSON.
        return CtlError(
            f"the daemon at {endpoint.url} does not support {method} {path} ({status}): it runs an older "
            "rollbackd; upgrade it to use this command",
            exit_code=EXIT_REFUSED,
        )
    return CtlError(f"the daemon refused {method} {path} ({status}): {message}", exit_code=EXIT_REFUSED)
