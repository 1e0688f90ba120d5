"""Who may steer the daemon: a bearer token for the write endpoints (and, optionally, the reads).

The write endpoints (:func:`~rollbackd.daemon.http.control_routes`: freeze, unfreeze, hold,
dry-run) need ``Authorization: Bearer <token>``:

- no ``Authorization`` header, or not a bearer one: **401** (with ``WWW-Authenticate: Bearer``);
- a wrong token: **401** as well (``error="invalid_token"``);
- no token configured at all (``api.token_file`` / ``api.token_env`` unset, the file empty or
  unreadable, the variable empty): **403**, with a message saying how to configure one. Safe by
  default: an unconfigured daemon cannot be steered by whoever reaches its port, unless
  ``api.allow_unauthenticated_writes: true`` says so explicitly (local demos, tests).

Read endpoints are open unless ``api.protect_reads``; then the API and the status page need the
token too, while ``/healthz``, ``/readyz`` and ``/metrics`` stay open for the kubelet and
Prometheus. The verdict endpoints partners call (``.../verdict``, ``.../rollback-check``) are reads:
an Argo Rollouts ``web`` metric sends the token in a header from a Secret; a Flagger webhook cannot
send headers, so ``api.verdicts_open: true`` leaves just those two open under ``protect_reads``
(they change nothing and tell only a target's verdict).

Tokens are compared in constant time (:func:`hmac.compare_digest`); a header that is not UTF-8 is
compared as the bytes it was sent as (and so is a wrong token: 401). Neither the configured nor a
presented token is ever logged or put in an answer; refusals are logged with the method, path and
remote address only, and at a limited rate (:class:`RefusalLog`: one line per reason per
:data:`REFUSAL_LOG_EVERY_S` seconds at most, telling how many refusals it did not log).
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from rollbackd.config.settings import ApiSettings
from rollbackd.daemon.logs import RateLimit

logger = logging.getLogger(__name__)

#: The configured token now: ``None`` when there is none.
TokenSource = Callable[[], str | None]

#: Always open, whatever ``protect_reads`` says: probes and scrapes carry no token.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})

_CHALLENGE = 'Bearer realm="rollbackd"'

HOW_TO_CONFIGURE = (
    "refused: no API token is configured. Put a token in a file (e.g. a mounted "
    "Secret) and set api.token_file to its path, or name an environment variable holding it in "
    "api.token_env; then send 'Authorization: Bearer <token>'. For a local demo only, "
    "api.allow_unauthenticated_writes: true turns the check off."
)


class TokenFile:
    """The token in a file (surrounding whitespace stripped), read again whenever the file changes
    (a rotated Secret; symlinks followed). An unreadable or empty file means no token."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[str, int, int, int] | None = None
        self._token: str | None = None
        self._problem: str | None = None

    def __call__(self) -> str | None:
        try:
            resolved = self.path.resolve(strict=True)
            stat = resolved.stat()
            stamp = (str(resolved), stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                self._token = resolved.read_text(encoding="utf-8").strip() or None
                self._stamp = stamp
            self._problem = None
            return self._token
        except (OSError, UnicodeDecodeError) as exc:
            problem = f"{type(exc).__name__}: {getattr(exc, 'strerror', None) or 'cannot be read'}"
            if problem != self._problem:
                logger.warning(
                    "cannot read the API token file; write endpoints are refused until it can be read: %s",
                    problem,
                    extra={"token_file": str(self.path)},
                )
            self._problem = problem
            self._stamp = None
            self._token = None
            return None


#: Shortest time between two log lines about refused requests, in seconds.
REFUSAL_LOG_EVERY_S = 10.0


class RefusalLog:
    """Logs refused requests at most once per ``every_s`` seconds of event-loop time for each
    reason (no token, a wrong one): a flood of unauthenticated writes cannot flood the log. The
    refusals in between are only counted, and the next line tells how many there were
    (``suppressed``)."""

    def __init__(self, *, every_s: float = REFUSAL_LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._limits: dict[str, RateLimit] = {}

    def refused(self, request: web.Request, why: str) -> None:
        limit = self._limits.get(why)
        if limit is None:
            limit = self._limits[why] = RateLimit(every_s=self.every_s)
        suppressed = limit.passes()
        if suppressed is None:
            return
        logger.warning(
            "API request refused: %s",
            why,
            extra={
                "method": request.method,
                "path": request.path,
                "remote": request.remote,
                "suppressed": suppressed,
            },
        )


@dataclass(frozen=True, slots=True)
class ApiAuth:
    """The access rules of the HTTP API (see the module docstring).

    - ``token``: gives the configured token (``None``: none configured);
    - ``protect_reads``: the read endpoints need the token too (not the probes and ``/metrics``);
    - ``allow_unauthenticated_writes``: the write endpoints need no token (demos and tests only);
    - ``verdicts_open``: the verdict endpoints need no token even with ``protect_reads``.
    """

    token: TokenSource
    protect_reads: bool = False
    allow_unauthenticated_writes: bool = False
    verdicts_open: bool = False
    #: Who a request with the token is, in the audit trail (``api.token_name``).
    token_name: str = "api-token"
    refusals: RefusalLog = field(default_factory=RefusalLog, compare=False)

    @classmethod
    def from_settings(cls, settings: ApiSettings, *, environ: Mapping[str, str]) -> ApiAuth:
        """The rules ``api`` settings describe; ``environ`` is where ``api.token_env`` is looked up
        (the process environment, passed in at the command-line edge)."""
        token: TokenSource
        if settings.token_file:
            token = TokenFile(Path(settings.token_file))
        else:
            value = (environ.get(settings.token_env) or "").strip() if settings.token_env else ""
            fixed = value or None

            def token() -> str | None:
                return fixed

        return cls(
            token=token,
            protect_reads=settings.protect_reads,
            allow_unauthenticated_writes=settings.allow_unauthenticated_writes,
            verdicts_open=settings.verdicts_open,
            token_name=settings.token_name,
        )

    def refusal(self, request: web.Request) -> web.Response | None:
        """Why ``request`` may not go on (a 401 or 403 answer), or ``None`` when it may."""
        expected = self.token()
        if expected is None:
            return _answer(403, HOW_TO_CONFIGURE)
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            self.refusals.refused(request, "no bearer token")
            return _answer(401, "this endpoint needs 'Authorization: Bearer <token>'", challenge=_CHALLENGE)
        # aiohttp decodes header bytes that are not UTF-8 as lone surrogates (and so does os.environ
        # with a variable): encoded the same way on both sides, any text compares without an error.
        sent = presented.strip().encode("utf-8", "surrogatepass")
        if not hmac.compare_digest(sent, expected.encode("utf-8", "surrogatepass")):
            self.refusals.refused(request, "wrong token")
            return _answer(
                401, "the bearer token is not valid", challenge=f'{_CHALLENGE}, error="invalid_token"'
            )
        return None


#: The request's key under which the middleware leaves who sent a write (see :func:`actor`).
_ACTOR = web.RequestKey("rollbackd_actor", str)

#: Who sent a write when ``allow_unauthenticated_writes`` lets it through without a token.
ANONYMOUS = "anonymous"


def actor(request: web.Request) -> str:
    """Who sent ``request``, for the audit trail: the API token's name (``api.token_name``), or
    :data:`ANONYMOUS` when writes need no token."""
    name: str = request.get(_ACTOR, ANONYMOUS)
    return name


def _answer(status: int, message: str, *, challenge: str | None = None) -> web.Response:
    headers = {"WWW-Authenticate": challenge} if challenge else None
    return web.json_response({"error": message}, status=status, headers=headers)


def auth_middleware(
    auth: ApiAuth, *, write_handlers: Collection[Handler], verdict_handlers: Collection[Handler] = ()
) -> Middleware:
    """The middleware enforcing ``auth``: ``write_handlers`` are the handlers of the write
    endpoints; every other route is a read (open unless ``protect_reads``, never for
    :data:`OPEN_PATHS`, nor for ``verdict_handlers`` when ``verdicts_open``)."""
    writes = set(write_handlers)
    verdicts = set(verdict_handlers)

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        route_handler = request.match_info.handler
        if route_handler in writes:
            # With writes open to all, a token sent along still names who wrote (if it is valid).
            sent = "Authorization" in request.headers
            refused = auth.refusal(request) if sent or not auth.allow_unauthenticated_writes else None
            if refused is None and sent:
                request[_ACTOR] = auth.token_name
            elif refused is not None and not auth.allow_unauthenticated_writes:
                return refused
        elif auth.protect_reads and request.path not in OPEN_PATHS and not (
            auth.verdicts_open and route_handler in verdicts
        ):
            refused = auth.refusal(request)
            if refused is not None:
                return refused
        return await handler(request)

    return check
