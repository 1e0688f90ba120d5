"""The daemon's HTTP face: probes, metrics, and the API to read decisions and steer the daemon.

Read-only routes:

- ``GET /`` (and ``GET /status``): the on-call status page, HTML that refreshes itself
  (see :mod:`rollbackd.daemon.page`);
- ``GET /healthz``: 200 while the evaluation loop runs, 503 otherwise;
- ``GET /readyz``: 503 until the first evaluation of all targets completed, and while the audit
  trail cannot be written (the status says why), otherwise 200; the body
  ``{"status": ..., "leader": true|false, "sources": {...}}`` also tells whether this replica
  leads (with leader election; always ``true`` without) and, per data source (``prometheus``,
  ``kubernetes``, ``store``), whether it works: ``{"status": "up"|"down"|"off", "since":
  "2026-12-06T17:03:12Z", "for_s": ..., "error": ..., "detail": ..., "failures": ...}``; a source
  that is down does not make the daemon unready (it still judges: inconclusive without data).
  A standby is ready too: it evaluates, warm, and takes over
  when the leader goes, so it belongs behind the Service like the leader;
- ``GET /metrics``: the daemon's own registry, in the Prometheus text format or OpenMetrics (as
  the scraper's ``Accept`` asks), gzip-compressed when it accepts gzip (see
  :mod:`rollbackd.daemon.metrics`);
- ``GET /api/v1/targets``: every target with its latest evidence and decision, last rollback
  decision, hold and cooldown, plus the global switches;
- ``GET /api/v1/targets/{namespace}/{name}``: one target;
- ``GET /api/v1/history?target=NS/NAME&since=1h&limit=N``: the audit log (``since`` a duration of
  at most 36500d or a time from 1900 to 9998, ``limit`` from 1 to 100000);
- ``GET /api/v1/targets/{namespace}/{name}/verdict``: rollbackd's judgement of the release for a
  partner that rolls it out (an Argo Rollouts ``AnalysisTemplate`` with the ``web`` provider):
  ``verdict`` pass | fail | inconclusive, ``reasons``, ``decided_at`` ... (see
  :mod:`rollbackd.decision.verdict` and docs/partners.md); always 200 for a known target;
- ``GET`` or ``POST /api/v1/targets/{namespace}/{name}/rollback-check``: the same document for a
  Flagger ``rollback`` webhook, answered 200 exactly when the verdict is ``fail`` (Flagger rolls
  back on a 2xx) and 412 otherwise; the body Flagger posts is not needed and not read.

Control routes (they change what the daemon does; see :func:`control_routes`):

- ``POST /api/v1/targets/{namespace}/{name}/hold`` ``{"eta_s": 300, "reason": "..."}``: a
  fix-forward hold (no rollback of that target before the ETA; ``eta_s`` from more than 0 to
  :data:`~rollbackd.decision.rails.MAX_HOLD_S`, 30 days); ``DELETE`` lifts it;
- ``POST /api/v1/freeze`` / ``DELETE /api/v1/freeze``: the global freeze switch;
- ``POST /api/v1/dry-run`` ``{"enabled": true|false}``: decide but never act;
- ``POST /api/v1/targets/{namespace}/{name}/rollback`` ``{"reason": "...", "force": false}``: roll
  back now (202 with ``run_id``; 409 while frozen unless ``force``, or while a rollback is under way);
- ``POST /api/v1/targets/{namespace}/{name}/accept`` ``{"reason": "..."}``: the release is good, not
  judged until the next revision; ``DELETE`` withdraws it;
- ``POST /api/v1/releases`` ``{"id": "...", "target": "NS/NAME", "kind": "flag", "description":
  "...", "started_at": "...", "details": {...}}``: a release announced from outside (see
  :mod:`rollbackd.daemon.releases`): 201 with the release, 200 with the stored one when its id was
  announced before, 404 naming an unknown target; ``GET /api/v1/releases?target=NS/NAME&since=1h&limit=N``
  lists them (a read route).

Every write takes a ``reason`` and records who sent it (the token's name); the switches are stored
for every replica (:mod:`rollbackd.daemon.switches`).

Bad input of any kind (a body that is not a JSON object or nested too deeply, a number out of
its bounds or of the wrong type, a query value out of range) gets a 400 naming the field and what
it accepts, never a 500. The control routes need ``Authorization: Bearer <token>`` (see
:mod:`rollbackd.daemon.auth`); the read routes too when ``api.protect_reads`` is set, except the
probes and ``/metrics``; with ``api.verdicts_open`` the two verdict routes stay open as well (a
Flagger webhook cannot send a header).
"""

from __future__ import annotations

import errno
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from rollbackd import __version__
from rollbackd.daemon.auth import ApiAuth, actor, auth_middleware
from rollbackd.daemon.jsonify import JsonValue, dumps, to_json_value
from rollbackd.daemon.logs import RateLimit
from rollbackd.daemon.metrics import DaemonMetrics
from rollbackd.daemon.page import refresh_seconds, render_status_page
from rollbackd.daemon.releases import ReleaseBook, UnknownTargetError
from rollbackd.daemon.sourcestatus import SourceBoard
from rollbackd.daemon.state import DaemonState, TargetState
from rollbackd.daemon.switches import SwitchBoard
from rollbackd.daemon.views import flags_view, target_verdict, target_view, targets_view, verdict_view
from rollbackd.daemon.wallclock import WallClock
from rollbackd.decision.rails import MAX_HOLD_S
from rollbackd.releases import Release, ReleaseError
from rollbackd.store.base import AuditEntry, StoreError
from rollbackd.store.history import entry_json, parse_since, parse_target

logger = logging.getLogger(__name__)

#: Longest reason text accepted for a hold.
MAX_REASON_CHARS = 500

#: Largest ``limit`` of a history query.
MAX_HISTORY_LIMIT = 100_000
#: The most audit records the status page shows per target (the latest ones).
TIMELINE_LIMIT = 20

#: What ``rollback-check`` answers when rollbackd would not roll back (any non-2xx keeps Flagger going).
NO_ROLLBACK_STATUS = 412

ETA_BOUNDS = f"eta_s must be a number of seconds greater than 0 and at most {MAX_HOLD_S:.0f} (30 days)"


@dataclass(frozen=True, slots=True)
class HttpContext:
    """What the handlers read and steer.

    ``clock`` is the event-loop clock (the time base of decisions, holds and cooldowns), shown on
    the wall clock in UTC through ``wall``; ``alive``
    tells whether the evaluation loop runs; ``ready`` whether the first evaluation completed;
    ``leader`` whether this replica leads (acts); ``auth`` who may use which route (by default
    nobody may write: no token is configured).
    """

    state: DaemonState
    metrics: DaemonMetrics
    clock: Callable[[], float]
    alive: Callable[[], bool]
    ready: Callable[[], bool]
    ticks: Callable[[], int]
    #: Where the switches (freeze, dry-run, holds) are written and who set them.
    switches: SwitchBoard
    #: Where releases announced from outside are stored and taken (``None``: nowhere).
    releases: ReleaseBook | None = None
    #: Starts (or stores for the leader) a manual rollback: (target, by, reason, force) -> answer.
    manual_rollback: ManualRollback | None = None
    #: Records a steering action in the audit log: (kind, summary, target, details).
    audit: Callable[[str, str, str | None, dict[str, object]], None] = lambda *_: None
    #: Reads the audit log: (target, since, limit) -> entries, or None while the store is closed.
    history: Callable[[str | None, datetime | None, int], Awaitable[list[AuditEntry] | None]] | None = None
    leader: Callable[[], bool] = lambda: True
    #: Why the daemon cannot act now though it evaluates (the audit trail cannot be written).
    not_ready_reason: Callable[[], str | None] = lambda: None
    auth: ApiAuth = field(default_factory=lambda: ApiAuth(token=lambda: None))
    #: Whether each data source works, since when and why not (``None``: not tracked).
    sources: SourceBoard | None = None
    #: Turns ``clock``'s times into the wall-clock times (UTC) the API shows.
    wall: WallClock = field(default_factory=WallClock)


class ManualRollback(Protocol):
    """What ``POST .../rollback`` calls: the HTTP status and body of the answer."""

    def __call__(
        self, key: str, *, by: str, reason: str, force: bool
    ) -> Awaitable[tuple[int, JsonValue]]: ...


_CONTEXT = web.AppKey("rollbackd_context", HttpContext)


def json_response(value: JsonValue, *, status: int = 200) -> web.Response:
    """``value`` as JSON; a lone surrogate in a string (a hold reason sent as the JSON escape of
    one) is answered as the same escape, never as an error."""
    return web.Response(text=dumps(value), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status=status)


def _context(request: web.Request) -> HttpContext:
    return request.app[_CONTEXT]


def _target(request: web.Request) -> TargetState | None:
    key = f"{request.match_info['namespace']}/{request.match_info['name']}"
    return _context(request).state.targets.get(key)


async def _json_object(request: web.Request) -> dict[str, object] | None:
    """The request body as a JSON object; ``None`` when it is not one: not JSON, not in its
    declared charset (or an unknown one), nested too deeply for the parser, or holding an integer
    of more digits than Python converts."""
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, LookupError, RecursionError):  # ValueError covers JSON and decoding errors
        return None
    return body if isinstance(body, dict) else None


# --- read-only routes --------------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    alive = _context(request).alive()
    status = "ok" if alive else "evaluation loop stopped"
    return json_response({"status": status}, status=200 if alive else 503)


async def readyz(request: web.Request) -> web.Response:
    ctx = _context(request)
    ready = ctx.ready()
    status = "ready" if ready else (ctx.ticks() and ctx.not_ready_reason()) or "no evaluation yet"
    body: JsonValue = {
        "status": status,
        "leader": ctx.leader(),
        "sources": ctx.sources.view() if ctx.sources is not None else {},
    }
    return json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.StreamResponse:
    return await _context(request).metrics.handler(request)


async def _timelines(ctx: HttpContext) -> dict[str, JsonValue] | None:
    """Each target's latest audit records (at most :data:`TIMELINE_LIMIT`), newest first; ``None``
    when the process has no store, it is not open or cannot be read (the page still shows the
    rest: it is what on-call looks at when things go wrong)."""
    if ctx.history is None:
        return None
    timelines: dict[str, JsonValue] = {}
    try:
        for key in ctx.state.targets:
            entries = await ctx.history(key, None, TIMELINE_LIMIT)
            if entries is None:
                return None
            timelines[key] = [to_json_value(entry_json(entry)) for entry in reversed(entries)]
    except StoreError as exc:
        logger.warning("status page: cannot read the audit trail: %s", exc)
        return None
    return timelines


async def status_page(request: web.Request) -> web.Response:
    ctx = _context(request)
    targets = ctx.state.targets.values()
    interval_s = max((target.params.interval_s for target in targets), default=None)
    timelines = await _timelines(ctx)
    page = render_status_page(
        targets_view(ctx.state, now=ctx.clock(), wall=ctx.wall, switches=ctx.switches),
        version=__version__,
        ready=ctx.ready(),
        alive=ctx.alive(),
        ticks=ctx.ticks(),
        refresh_s=refresh_seconds(interval_s),
        generated_at=datetime.now(UTC),
        not_ready=ctx.not_ready_reason() if ctx.ticks() else None,
        timelines=timelines,
        probe=ctx.state.probe,
        sources=ctx.sources.states if ctx.sources is not None else (),
        now_loop=ctx.clock(),
    )
    return web.Response(
        body=page.encode("utf-8", "backslashreplace"),  # lone surrogates shown as \udcff
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


async def list_targets(request: web.Request) -> web.Response:
    ctx = _context(request)
    return json_response(targets_view(ctx.state, now=ctx.clock(), wall=ctx.wall, switches=ctx.switches))


async def get_target(request: web.Request) -> web.Response:
    ctx = _context(request)
    target = _target(request)
    if target is None:
        return _error(404, "no such target")
    return json_response(_target_doc(ctx, target))


def _target_doc(ctx: HttpContext, target: TargetState) -> JsonValue:
    """``target`` as the API shows it now."""
    return target_view(ctx.state, target, now=ctx.clock(), wall=ctx.wall, switches=ctx.switches)


def _verdict_answer(request: web.Request, *, rollback_check: bool) -> web.Response:
    ctx = _context(request)
    target = _target(request)
    if target is None:
        key = f"{request.match_info['namespace']}/{request.match_info['name']}"
        return _error(404, f"no target {key} in rollbackd's configuration: no verdict (check the namespace "
                           "and name in the URL against GET /api/v1/targets)")
    now = ctx.clock()
    verdict = target_verdict(target, now=now)
    body = verdict_view(target, verdict, now=now, wall_now=datetime.now(UTC))
    status = 200
    if rollback_check and not verdict.would_roll_back:
        status = NO_ROLLBACK_STATUS
    return json_response(body, status=status)


async def get_verdict(request: web.Request) -> web.Response:
    """``GET /api/v1/targets/{namespace}/{name}/verdict``: 200 with the judgement document."""
    return _verdict_answer(request, rollback_check=False)


async def rollback_check(request: web.Request) -> web.Response:
    """``GET|POST /api/v1/targets/{namespace}/{name}/rollback-check``: 200 exactly when rollbackd
    would roll the release back, :data:`NO_ROLLBACK_STATUS` otherwise (404 for an unknown target)."""
    return _verdict_answer(request, rollback_check=True)


def _limit(text: str) -> int:
    """The ``limit`` of a history query: a whole number from 1 to :data:`MAX_HISTORY_LIMIT`."""
    problem = f"limit must be a whole number from 1 to {MAX_HISTORY_LIMIT}"
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_HISTORY_LIMIT)):
        raise ValueError(problem)
    limit = int(text)
    if not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise ValueError(problem)
    return limit


def _filters(request: web.Request) -> tuple[str | None, datetime | None, int] | web.Response:
    """``target``, ``since`` and ``limit`` of a query of the history or the releases, or the 400
    answer naming the one that is wrong."""
    try:
        target = parse_target(request.query["target"]) if "target" in request.query else None
        since = (
            parse_since(request.query["since"], now=datetime.now(UTC)) if "since" in request.query else None
        )
        return target, since, _limit(request.query.get("limit", "1000"))
    except ValueError as exc:
        return _error(400, str(exc))


async def history(request: web.Request) -> web.Response:
    """``GET /api/v1/history?target=NS/NAME&since=1h&limit=N``: the audit log, oldest first."""
    ctx = _context(request)
    if ctx.history is None:
        return _error(503, "no audit store in this process")
    query = _filters(request)
    if isinstance(query, web.Response):
        return query
    entries = await ctx.history(*query)
    if entries is None:
        return _error(503, "the audit store is not open (see /readyz)")
    return json_response({"entries": [entry_json(entry) for entry in entries]})


async def list_releases(request: web.Request) -> web.Response:
    """``GET /api/v1/releases?target=NS/NAME&since=1h&limit=N``: the releases announced, oldest first."""
    ctx = _context(request)
    if ctx.releases is None:
        return _error(503, "this process takes no releases")
    query = _filters(request)
    if isinstance(query, web.Response):
        return query
    target, since, limit = query
    try:
        found = await ctx.releases.recent(target=target, since=since, limit=limit)
    except StoreError as exc:
        return _error(503, f"cannot read the releases: {exc}")
    return json_response({"releases": [to_json_value(release.to_json()) for release in found]})


# --- control routes ----------------------------------------------------------------------------


def _reason(body: dict[str, object] | None, default: str) -> str | web.Response:
    """The ``reason`` of a write (``default`` when not given), or the 400 answer saying what it
    must be."""
    reason = default if body is None else body.get("reason", default)
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_CHARS:
        return _error(400, f"reason must be a non-empty text of at most {MAX_REASON_CHARS} characters")
    return reason


async def _optional_body(request: web.Request) -> dict[str, object] | web.Response | None:
    """The body of a write whose body is optional: ``None`` when empty, the 400 answer when it is
    not a JSON object."""
    if not request.can_read_body:
        return None
    body = await _json_object(request)
    if body is None:
        return _error(400, 'the body must be a JSON object like {"reason": "..."} (or empty)')
    return body

async def _optional_reason(request: web.Request, default: str) -> str | web.Response:
    """The ``reason`` of a write whose body is optional (``default`` when there is none), or the
    400 answer saying what the body or the reason must be."""
    body = await _optional_body(request)
    if isinstance(body, web.Response):
        return body
    return _reason(body, default)


def _target_answer(ctx: HttpContext, target: TargetState, stored: bool) -> web.Response:
    """A switch write's answer: the target as it now stands, and what the other replicas see."""
    return json_response({**_object(_target_doc(ctx, target)), "applies": _seen_by_all(ctx, stored)})


async def _target_and_reason(
    request: web.Request, default: str
) -> tuple[HttpContext, TargetState, str] | web.Response:
    """The context, the target and the optional ``reason`` of a write on one target, or the 404 /
    400 answer."""
    target = _target(request)
    if target is None:
        return _error(404, "no such target")
    reason = await _optional_reason(request, default)
    if isinstance(reason, web.Response):
        return reason
    return _context(request), target, reason


def _seen_by_all(ctx: HttpContext, stored: bool) -> JsonValue:
    """What a write's answer says about the other replicas."""
    board = ctx.switches
    if not board.durable:
        return "this process only (no store is configured)"
    if not stored:
        return ("applied by this replica only for now: the store does not answer; stored, and so "
                "applied by every replica, once it does (see /readyz)")
    return f"stored in {board.where}; every replica applies it within {board.poll_s:g}s"


async def set_hold(request: web.Request) -> web.Response:
    ctx = _context(request)
    target = _target(request)
    if target is None:
        return _error(404, "no such target")
    body = await _json_object(request)
    if body is None:
        return _error(400, 'the body must be a JSON object like {"eta_s": 300, "reason": "..."}')
    raw_eta = body.get("eta_s")
    # Compared before any conversion: an integer of 400 digits would overflow float().
    if isinstance(raw_eta, bool) or not isinstance(raw_eta, int | float) or not 0 < raw_eta <= MAX_HOLD_S:
        return _error(400, ETA_BOUNDS)
    eta_s = float(raw_eta)
    reason = _reason(body, "fix-forward")
    if isinstance(reason, web.Response):
        return reason
    by = actor(request)
    stored = await ctx.switches.set_hold(target.key, for_s=eta_s, by=by, reason=reason)
    logger.warning(
        "fix-forward hold set",
        extra={"target": target.key, "eta_s": eta_s, "reason": reason, "by": by, "remote": request.remote},
    )
    ctx.audit(
        "hold",
        f"fix-forward hold set for {eta_s:g}s by {by}: {reason}",
        target.key,
        {"eta_s": eta_s, "reason": reason, "by": by},
    )
    return _target_answer(ctx, target, stored)


async def clear_hold(request: web.Request) -> web.Response:
    return await _lift_switch(
        request, SwitchBoard.clear_hold, kind="hold", default="hold lifted", message="fix-forward hold lifted"
    )


async def _lift_switch(
    request: web.Request,
    lift: Callable[[SwitchBoard, str], Awaitable[bool]],
    *,
    kind: str,
    default: str,
    message: str,
    details: dict[str, Any] | None = None,
) -> web.Response:
    """Lift a switch of one target (a hold, an acceptance) with ``lift``: logged, audited as
    ``kind`` with ``message``, and answered with the target as it now stands."""
    read = await _target_and_reason(request, default)
    if isinstance(read, web.Response):
        return read
    ctx, target, reason = read
    by = actor(request)
    stored = await lift(ctx.switches, target.key)
    recorded = {"by": by, "reason": reason, **(details or {})}
    logger.warning(message, extra={"target": target.key, "remote": request.remote, **recorded})
    ctx.audit(kind, f"{message} by {by}: {reason}", target.key, recorded)
    return _target_answer(ctx, target, stored)


async def freeze(request: web.Request) -> web.Response:
    return await _set_freeze(request, True, "global freeze on: no automatic rollback")


async def unfreeze(request: web.Request) -> web.Response:
    return await _set_freeze(request, False, "global freeze off")


async def _set_freeze(request: web.Request, on: bool, message: str) -> web.Response:
    ctx = _context(request)
    reason = await _optional_reason(request, "no reason given")
    if isinstance(reason, web.Response):
        return reason
    by = actor(request)
    stored = await ctx.switches.set_freeze(on, by=by, reason=reason)
    logger.warning(message, extra={"remote": request.remote, "by": by, "reason": reason})
    ctx.audit("freeze", f"{message} (by {by}: {reason})", None, {"freeze": on, "by": by, "reason": reason})
    return _flags_answer(ctx, stored)


async def set_dry_run(request: web.Request) -> web.Response:
    ctx = _context(request)
    body = await _json_object(request)
    enabled = None if body is None else body.get("enabled")
    if not isinstance(enabled, bool):
        return _error(400, 'the body must be {"enabled": true} or {"enabled": false}')
    reason = _reason(body, "no reason given")
    if isinstance(reason, web.Response):
        return reason
    by = actor(request)
    stored = await ctx.switches.set_dry_run(enabled, by=by, reason=reason)
    logger.warning(
        "dry-run %s", "on" if enabled else "off",
        extra={"dry_run": enabled, "by": by, "reason": reason, "remote": request.remote},
    )
    ctx.audit("dry-run", f"dry-run {'on' if enabled else 'off'} (by {by}: {reason})", None,
              {"dry_run": enabled, "by": by, "reason": reason})
    return _flags_answer(ctx, stored)


async def rollback_now(request: web.Request) -> web.Response:
    """``POST /api/v1/targets/{namespace}/{name}/rollback`` ``{"reason": "...", "force": false}``:
    roll the target back now (202 with the run's id)."""
    ctx = _context(request)
    target = _target(request)
    if target is None:
        return _error(404, "no such target")
    body = await _json_object(request)
    if body is None:
        return _error(400, 'the body must be a JSON object like {"reason": "...", "force": false}')
    if "reason" not in body:
        return _error(400, "reason is required: say why the release is rolled back (the audit log keeps it)")
    reason = _reason(body, "")
    if isinstance(reason, web.Response):
        return reason
    force = body.get("force", False)
    if not isinstance(force, bool):
        return _error(400, "force must be true or false")
    if ctx.manual_rollback is None:
        return _error(409, "this process cannot roll back (it only serves the API)")
    by = actor(request)
    status, answer = await ctx.manual_rollback(target.key, by=by, reason=reason, force=force)
    logger.warning("manual rollback: %s", "accepted" if status == 202 else "refused",
                   extra={"target": target.key, "by": by, "reason": reason, "force": force, "status": status})
    return json_response(answer, status=status)


async def accept_release(request: web.Request) -> web.Response:
    """``POST /api/v1/targets/{namespace}/{name}/accept`` ``{"reason": "..."}``: the release is
    good; it is not judged until the next revision."""
    ctx = _context(request)
    target = _target(request)
    if target is None:
        return _error(404, "no such target")
    body = await _json_object(request)
    if body is None:
        return _error(400, 'the body must be a JSON object like {"reason": "..."}')
    reason = _reason(body, "")
    if isinstance(reason, web.Response):
        return reason
    by = actor(request)
    facts = target.facts
    revision = facts.candidate_revision if facts is not None else target.judged_revision
    accepting = ctx.switches.accept(target.key, revision=revision, by=by, reason=reason)
    stored = await accepting
    logger.warning(
        "release accepted", extra={"target": target.key, "by": by, "reason": reason, "revision": revision}
    )
    shown = "the revision the cluster shows next" if revision is None else f"revision {revision}"
    ctx.audit("accept", f"release accepted by {by} ({shown}): {reason}", target.key,
              {"by": by, "reason": reason, "revision": revision})
    return _target_answer(ctx, target, stored)


async def withdraw_acceptance(request: web.Request) -> web.Response:
    return await _lift_switch(
        request,
        SwitchBoard.withdraw_acceptance,
        kind="accept",
        default="acceptance withdrawn",
        message="acceptance withdrawn",
        details={"withdrawn": True},
    )


#: How far in the future a release's start may be (the announcer's clock may be a little ahead).
MAX_FUTURE_START_S = 300.0

RELEASE_EXAMPLE = (
    '{"id": "new-checkout-on", "target": "shop/checkout", "kind": "flag", '
    '"description": "new_checkout turned on", "details": {"flag": "new_checkout"}}'
)


async def announce_release(request: web.Request) -> web.Response:
    """``POST /api/v1/releases``: a release announced from outside; the target is judged from its
    start against its own history before it. 201 with the release; 200 with the stored one when
    its id was announced before (idempotent); 404 naming an unknown target."""
    ctx = _context(request)
    if ctx.releases is None:
        return _error(409, "this process takes no releases (it only serves the API)")
    body = await _json_object(request)
    if body is None:
        return _error(400, f"the body must be a JSON object like {RELEASE_EXAMPLE}")
    if not isinstance(body.get("target"), str):
        return _error(400, f"target is required: the NAMESPACE/NAME of the target, as in {RELEASE_EXAMPLE}")
    unknown = sorted(set(body) - {"id", "target", "kind", "description", "started_at", "details"})
    if unknown:
        return _error(400, f"unknown field {unknown[0]!r}: a release has id, target, kind, description, "
                           "started_at and details")
    try:
        release = Release.from_json(body, who=actor(request))
    except ReleaseError as exc:
        return _error(400, str(exc))
    ahead_s = (release.started_at - datetime.now(UTC)).total_seconds()
    if ahead_s > MAX_FUTURE_START_S:
        return _error(400, f"started_at is {ahead_s:.0f}s in the future: announce a release once it has "
                           f"started (at most {MAX_FUTURE_START_S:.0f}s ahead, for clocks that differ)")
    try:
        stored, created = await ctx.releases.announce(release)
    except UnknownTargetError as exc:
        return _error(404, str(exc))
    except (StoreError, TimeoutError) as exc:
        return _error(503, f"the release could not be stored, so it is not judged: "
                           f"{exc or 'the store did not answer in time'}; announce it again (same id)")
    board, shared = ctx.switches, ctx.releases.shared_in
    applies = (
        "this process only (no store is configured)" if not board.durable
        else f"stored; every replica judges it within {board.poll_s:g}s" if shared is None
        else f"stored in {shared}; every replica judges it at once (its watch), at the latest within "
             f"{board.poll_s:g}s"
    )
    answer: JsonValue = {"release": to_json_value(stored.to_json()), "created": created, "applies": applies}
    return json_response(answer, status=201 if created else 200)


def _flags_answer(ctx: HttpContext, stored: bool) -> web.Response:
    flags = _object(flags_view(ctx.state.flags, ctx.switches))
    return json_response({**flags, "applies": _seen_by_all(ctx, stored)})


def _object(value: JsonValue) -> dict[str, JsonValue]:
    assert isinstance(value, dict)
    return value


def read_routes() -> list[web.RouteDef]:
    return [
        web.get("/", status_page),
        web.get("/status", status_page),
        web.get("/healthz", healthz),
        web.get("/readyz", readyz),
        web.get("/metrics", metrics),
        web.get("/api/v1/targets", list_targets),
        web.get("/api/v1/targets/{namespace}/{name}", get_target),
        web.get("/api/v1/history", history),
        web.get("/api/v1/releases", list_releases),
        *verdict_routes(),
    ]


def verdict_routes() -> list[web.RouteDef]:
    """The routes partners ask for a verdict (read-only: they change nothing, a POST included)."""
    return [
        web.get("/api/v1/targets/{namespace}/{name}/verdict", get_verdict),
        web.get("/api/v1/targets/{namespace}/{name}/rollback-check", rollback_check),
        web.post("/api/v1/targets/{namespace}/{name}/rollback-check", rollback_check),
    ]


def control_routes() -> list[web.RouteDef]:
    """Every route that changes what the daemon does. Access control of the API (who may hold,
    freeze or switch dry-run) applies to exactly these routes, and to no read-only one."""
    return [
        web.post("/api/v1/targets/{namespace}/{name}/hold", set_hold),
        web.delete("/api/v1/targets/{namespace}/{name}/hold", clear_hold),
        web.post("/api/v1/freeze", freeze),
        web.delete("/api/v1/freeze", unfreeze),
        web.post("/api/v1/dry-run", set_dry_run),
        web.post("/api/v1/targets/{namespace}/{name}/rollback", rollback_now),
        web.post("/api/v1/targets/{namespace}/{name}/accept", accept_release),
        web.delete("/api/v1/targets/{namespace}/{name}/accept", withdraw_acceptance),
        web.post("/api/v1/releases", announce_release),
    ]


def make_app(context: HttpContext) -> web.Application:
    writes = [route.handler for route in control_routes()]
    verdicts = [route.handler for route in verdict_routes()]
    app = web.Application(
        client_max_size=64 * 1024,
        middlewares=[auth_middleware(context.auth, write_handlers=writes, verdict_handlers=verdicts)],
    )
    app[_CONTEXT] = context
    app.add_routes(read_routes())
    app.add_routes(control_routes())
    return app


#: Shortest time between two log lines about malformed requests, in seconds.
BAD_REQUEST_LOG_EVERY_S = 10.0


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """What aiohttp's server logs, with one change: a request it cannot parse (not HTTP, a bad
    header, a line too long; the client's fault, answered 400) is one WARNING line without a
    traceback, at most once per :data:`BAD_REQUEST_LOG_EVERY_S` seconds (telling how many it left
    out); anything else (a defect answered 500) keeps its ERROR line and traceback."""

    def __init__(self, *, every_s: float = BAD_REQUEST_LOG_EVERY_S) -> None:
        super().__init__(logging.getLogger("aiohttp.server"))
        self._limit = RateLimit(every_s=every_s)

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):
            suppressed = self._limit.passes()
            if suppressed is not None:
                logger.warning(
                    "malformed request refused: %s",
                    exc_info.message.partition("\n")[0],
                    extra={"status": exc_info.code, "suppressed": suppressed},
                )
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)  # type: ignore[arg-type]


#: How long a connection may stay without a complete request head, in seconds: from connecting,
#: or from its previous answer (keep-alive). A client that sends nothing, or half a head, is cut.
IDLE_TIMEOUT_S = 15.0


class PortInUseError(OSError):
    """The HTTP server's port is taken by another process; ``str()`` says so and what to do."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(errno.EADDRINUSE, "address in use")
        self.host = host
        self.port = port

    def __str__(self) -> str:
        return (
            f"port {self.port} on {self.host} is already in use by another process (another rollbackd?): "
            "stop that process, or set http.port in the configuration (or ROLLBACKD_HTTP__PORT) to a free "
            "port"
        )


class HttpServer:
    """The HTTP server on ``host``:``port`` (port 0 picks a free one; :attr:`port` tells which).

    ``async with`` starts listening and stops on exit, waiting at most ``shutdown_timeout_s`` for
    requests in flight. A connection that has not sent a complete request head within
    ``idle_timeout_s`` of connecting (or of its previous answer) is closed: slow or silent clients
    cannot hold connections open.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        host: str,
        port: int,
        shutdown_timeout_s: float = 5.0,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._shutdown_timeout_s = shutdown_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._runner: web.AppRunner | None = None

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._runner is None or not self._runner.addresses:
            raise RuntimeError("the HTTP server is not listening")
        address = self._runner.addresses[0]
        return int(address[1])

    async def __aenter__(self) -> HttpServer:
        # No access log: probes hit /healthz and /metrics every few seconds.
        # aiohttp's keep-alive timer runs from the connection's start too: it is the head timeout.
        runner = web.AppRunner(
            self._app,
            shutdown_timeout=self._shutdown_timeout_s,
            access_log=None,
            keepalive_timeout=self._idle_timeout_s,
            logger=cast(logging.Logger, ServerLog()),
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(self._host, self._port) from None
            raise
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        logger.info("HTTP server listening", extra={"host": self._host, "port": self.port})
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            logger.info("HTTP server stopped")
