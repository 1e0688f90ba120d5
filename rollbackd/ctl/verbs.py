"""The operator commands: each verb is one request to a running daemon's API.

``status [TARGET]``, ``freeze`` / ``unfreeze``, ``dry-run on|off``, ``hold TARGET --for 15m``,
``release TARGET``, ``release start TARGET --kind flag --id ... --description ...``,
``rollback TARGET --reason ...``, ``accept TARGET``, and ``history --server``.
The daemon is ``--server URL`` (or ``$ROLLBACKD_SERVER``; default :data:`DEFAULT_SERVER`), the
token ``--token-file FILE`` or ``$ROLLBACKD_TOKEN``. Exit statuses: :data:`~rollbackd.ctl.client.EXIT_CODES`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote, urlencode

from rollbackd.ctl.client import EXIT_OK, EXIT_USAGE, CtlError, Endpoint, call
from rollbackd.ctl.render import (
    FORMATS,
    accepted_table,
    history_table,
    release_table,
    render,
    target_table,
    targets_table,
)
from rollbackd.ctl.tunnel import (
    DEFAULT_LEASE,
    DEFAULT_NAMESPACE,
    ClusterRoute,
    default_kubeconfig,
    forward_to_leader,
)

SERVER_ENV = "ROLLBACKD_SERVER"
TOKEN_ENV = "ROLLBACKD_TOKEN"
#: Where ``rollbackd run`` answers with the default configuration (http.port 8080).
DEFAULT_SERVER = "http://127.0.0.1:8080"

_NAME = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
_TARGET = re.compile(rf"^(?:({_NAME})/)?({_NAME})$")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhd])+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

#: The verbs this module runs (``history`` only with a server: without, it reads the store).
VERBS = ("status", "freeze", "unfreeze", "dry-run", "hold", "release", "rollback", "accept")


def hold_duration(text: str) -> float:
    """``--for`` of ``hold``: ``90s``, ``15m``, ``1h30m``, ``2d`` in seconds."""
    if not _DURATION.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a duration: write it like 15m, 1h30m or 2d")
    seconds = sum(float(amount) * _UNITS[unit] for amount, unit in _DURATION_PART.findall(text))
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"'{text}' is no time at all: a hold lasts more than 0s")
    return seconds


def target_key(text: str, namespace: str | None) -> tuple[str, str]:
    """TARGET as (namespace, name): ``ns/name``, or ``name`` in ``-n NAMESPACE`` (default
    ``default``, as in the configuration). :class:`CtlError` (usage) otherwise."""
    match = _TARGET.match(text.strip())
    if match is None:
        raise CtlError(
            f"'{text}' is not a target: write NAMESPACE/NAME (like shop/checkout), or NAME with -n NAMESPACE",
            exit_code=EXIT_USAGE,
        )
    given, name = match.groups()
    if given is not None and namespace is not None and given != namespace:
        raise CtlError(
            f"'{text}' names namespace {given} but -n says {namespace}: give one of them",
            exit_code=EXIT_USAGE,
        )
    return given or namespace or "default", name


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--server``, ``--token-file``, ``-o`` and ``-n``: the same on every verb."""
    group = parser.add_argument_group("daemon")
    group.add_argument(
        "--server",
        metavar="URL",
        help=f"the daemon's HTTP address (default: ${SERVER_ENV}, else {DEFAULT_SERVER})",
    )
    group.add_argument(
        "--token-file",
        metavar="FILE",
        help=f"a file holding the API token (default: the token in ${TOKEN_ENV})",
    )
    group.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="reach the leader through the cluster: a port-forward to its pod (default file: $KUBECONFIG, "
        "else ~/.kube/config, when --context or --daemon-namespace is given)",
    )
    group.add_argument("--context", metavar="NAME", help="the kubeconfig context (default: its current one)")
    group.add_argument(
        "--daemon-namespace",
        metavar="NS",
        help=f"the namespace rollbackd runs in, with its Lease '{DEFAULT_LEASE}' "
        f"(default: {DEFAULT_NAMESPACE})",
    )
    group.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default="table",
        help="table (the default, for people), json or yaml (the API's document, for programs)",
    )


def _target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="TARGET", help="NAMESPACE/NAME, or NAME with -n")
    parser.add_argument(
        "-n", "--namespace", metavar="NS", help="the target's namespace (with TARGET as NAME)"
    )


def add_verbs(commands: Any, formatter: type[argparse.HelpFormatter], epilog: str) -> None:
    """The operator verbs as subcommands of ``commands`` (an argparse subparsers action)."""

    def verb(name: str, help: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=help, description=description, epilog=epilog, formatter_class=formatter
        )
        return parser

    status = verb(
        "status",
        "show the targets, their decisions, holds and the switches (from a daemon)",
        "Ask a running daemon for its targets: strategy, latest decision, rollback in progress,\n"
        "hold and cooldown, with the global freeze and dry-run switches; with TARGET, that\n"
        "target in detail with the decision's reasons.",
    )
    status.add_argument("target", metavar="TARGET", nargs="?", help="NAMESPACE/NAME, or NAME with -n")
    status.add_argument(
        "-n", "--namespace", metavar="NS", help="the target's namespace (with TARGET as NAME)"
    )
    add_connection_arguments(status)

    for name, what in (
        ("freeze", "turn the global freeze on: no automatic rollback of any target"),
        ("unfreeze", "turn the global freeze off"),
    ):
        parser = verb(name, what, what[0].upper() + what[1:] + ".")
        parser.add_argument("--reason", help="why (kept in the audit log)")
        add_connection_arguments(parser)

    dry_run = verb(
        "dry-run",
        "switch dry-run on or off: decide, but never act",
        "With dry-run on, the daemon decides and tells, but changes nothing in the cluster.",
    )
    dry_run.add_argument("switch", choices=("on", "off"))
    dry_run.add_argument("--reason", help="why (kept in the audit log)")
    add_connection_arguments(dry_run)

    hold = verb(
        "hold",
        "hold a target's rollbacks while a fix goes forward",
        "No rollback of TARGET until the hold ends (--for), e.g. while a fix is deployed.",
    )
    _target_arguments(hold)
    hold.add_argument(
        "--for",
        dest="hold_for",
        metavar="DURATION",
        type=hold_duration,
        required=True,
        help="how long: 90s, 15m, 1h30m, 2d (at most 30d)",
    )
    hold.add_argument("--reason", default="fix-forward", help="why (default: fix-forward)")
    add_connection_arguments(hold)

    release = verb(
        "release",
        "lift a target's hold; 'release start TARGET' announces a release",
        "Lift TARGET's fix-forward hold now.\n\n"
        "'release start TARGET --kind flag --id ID --description TEXT' announces a release made\n"
        "outside rollbackd (a feature flag turned on, a configuration change applied): TARGET is\n"
        "judged from then on against its own history before it, with the same SLOs. The same\n"
        "--id announced twice is one release.",
    )
    release.add_argument("target", metavar="TARGET", help="NAMESPACE/NAME, or NAME with -n; or 'start'")
    release.add_argument("start_target", metavar="START_TARGET", nargs="?", help=argparse.SUPPRESS)
    release.add_argument(
        "-n", "--namespace", metavar="NS", help="the target's namespace (with TARGET as NAME)"
    )
    announcing = release.add_argument_group("release start")
    announcing.add_argument(
        "--kind", default="other", help="what changed: flag, config, command, deployment, other (default)"
    )
    announcing.add_argument("--id", dest="release_id", help="the release's id (default: a new one)")
    announcing.add_argument("--description", default="", help="what changed, for people")
    announcing.add_argument(
        "--detail",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a detail of the change (flag=new_checkout); repeatable",
    )
    announcing.add_argument(
        "--started-at", metavar="TIME", help="when it took effect, ISO 8601 with a timezone (default: now)"
    )
    add_connection_arguments(release)

    rollback = verb(
        "rollback",
        "roll a target back now",
        "Roll TARGET back now, through the same action, verification and events as an\n"
        "automatic rollback. Refused while the global freeze is on, unless --force.",
    )
    _target_arguments(rollback)
    rollback.add_argument("--reason", required=True, help="why (kept in the audit log and the events)")
    rollback.add_argument("--force", action="store_true", help="roll back even while frozen")
    add_connection_arguments(rollback)

    accept = verb(
        "accept",
        "accept a target's release as good: stop judging it until its next revision",
        "Declare TARGET's current release good: no rollback of it until its next revision.\n"
        "With --undo, withdraw the acceptance.",
    )
    _target_arguments(accept)
    accept.add_argument("--reason", help="why (kept in the audit log)")
    accept.add_argument("--undo", action="store_true", help="withdraw an earlier acceptance")
    add_connection_arguments(accept)


def add_history_server_arguments(parser: argparse.ArgumentParser) -> None:
    """``history`` reads the daemon's API with ``--server`` (or ``$ROLLBACKD_SERVER``)."""
    add_connection_arguments(parser)


@dataclass(frozen=True, slots=True)
class Request:
    """One API request of a verb, and how its answer is shown as a table."""

    method: str
    path: str
    body: Mapping[str, Any] | None
    table: Callable[[Any], str]


def _path(namespace: str, name: str, tail: str = "") -> str:
    return f"/api/v1/targets/{quote(namespace, safe='')}/{quote(name, safe='')}{tail}"


def _with_reason(body: dict[str, Any], reason: str | None) -> dict[str, Any]:
    if reason is not None:
        body["reason"] = reason
    return body


def request_for(args: argparse.Namespace) -> Request:
    """The API request ``args`` (a parsed verb) asks for."""
    command = args.command
    if command == "status":
        if args.target is None:
            return Request("GET", "/api/v1/targets", None, targets_table)
        return Request("GET", _path(*target_key(args.target, args.namespace)), None, target_table)
    if command == "freeze":
        return Request("POST", "/api/v1/freeze", _with_reason({}, args.reason), accepted_table)
    if command == "unfreeze":
        return Request("DELETE", "/api/v1/freeze", _with_reason({}, args.reason), accepted_table)
    if command == "dry-run":
        body = _with_reason({"enabled": args.switch == "on"}, args.reason)
        return Request("POST", "/api/v1/dry-run", body, accepted_table)
    if command == "history":
        query = {"limit": str(args.limit)}
        if args.target:
            query["target"] = args.target
        if args.since is not None:
            query["since"] = args.since.isoformat()
        return Request("GET", "/api/v1/history?" + urlencode(query), None, history_table)
    if command == "release" and args.start_target is not None:
        if args.target != "start":
            raise CtlError(
                f"'release {args.target} {args.start_target}': write 'release TARGET' to lift a hold, "
                "or 'release start TARGET' to announce a release",
                exit_code=EXIT_USAGE,
            )
        return Request("POST", "/api/v1/releases", _release_body(args), release_table)
    namespace, name = target_key(args.target, args.namespace)
    if command == "hold":
        body = {"eta_s": args.hold_for, "reason": args.reason}
        return Request("POST", _path(namespace, name, "/hold"), body, accepted_table)
    if command == "release":
        return Request("DELETE", _path(namespace, name, "/hold"), None, accepted_table)
    if command == "rollback":
        body = {"reason": args.reason, "force": args.force}
        return Request("POST", _path(namespace, name, "/rollback"), body, accepted_table)
    if command == "accept":
        method = "DELETE" if args.undo else "POST"
        return Request(
            method, _path(namespace, name, "/accept"), _with_reason({}, args.reason), accepted_table
        )
    raise CtlError(f"unknown command {command}", exit_code=EXIT_USAGE)


def _release_body(args: argparse.Namespace) -> dict[str, Any]:
    """The body of ``POST /api/v1/releases`` for ``release start``."""
    namespace, name = target_key(args.start_target, args.namespace)
    details: dict[str, str] = {}
    for item in args.detail:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CtlError(
                f"--detail '{item}' is not KEY=VALUE (like flag=new_checkout)", exit_code=EXIT_USAGE
            )
        details[key] = value
    body: dict[str, Any] = {
        "target": f"{namespace}/{name}",
        "kind": args.kind,
        "description": args.description,
        "details": details,
    }
    if args.release_id is not None:
        body["id"] = args.release_id
    if args.started_at is not None:
        body["started_at"] = args.started_at
    return body


def endpoint_for(args: argparse.Namespace, *, environ: Mapping[str, str]) -> Endpoint:
    """The daemon and the token: ``--server`` / ``$ROLLBACKD_SERVER`` / the default, and
    ``--token-file`` / ``$ROLLBACKD_TOKEN``."""
    server = args.server or environ.get(SERVER_ENV) or DEFAULT_SERVER
    if "://" not in server:
        server = "http://" + server
    token: str | None
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not a UTF-8 text"
            raise CtlError(
                f"cannot read the token file {args.token_file}: {reason}", exit_code=EXIT_USAGE
            ) from None
        if not token:
            raise CtlError(f"the token file {args.token_file} is empty", exit_code=EXIT_USAGE)
    else:
        token = environ.get(TOKEN_ENV, "").strip() or None
    return Endpoint(url=server.rstrip("/"), token=token)


def cluster_route(args: argparse.Namespace, *, environ: Mapping[str, str]) -> ClusterRoute | None:
    """The way through the cluster when asked for (``--kubeconfig``, ``--context`` or
    ``--daemon-namespace``) and no ``--server`` is given; ``None`` otherwise."""
    if args.server or not (args.kubeconfig or args.context or args.daemon_namespace):
        return None
    return ClusterRoute(
        kubeconfig=args.kubeconfig or default_kubeconfig(environ),
        context=args.context,
        namespace=args.daemon_namespace or DEFAULT_NAMESPACE,
    )


async def _send(request: Request, endpoint: Endpoint, route: ClusterRoute | None) -> Any:
    if route is None:
        return await call(endpoint, request.method, request.path, request.body)
    async with forward_to_leader(route) as url:
        return await call(dataclasses.replace(endpoint, url=url), request.method, request.path, request.body)


def run_verb(args: argparse.Namespace, *, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Run the verb ``args`` asks for against the daemon; print the answer; the exit status."""
    try:
        request = request_for(args)
        endpoint = endpoint_for(args, environ=environ)
        route = cluster_route(args, environ=environ)
        document = asyncio.run(_send(request, endpoint, route))
    except CtlError as exc:
        print(f"rollbackd {args.command}: {exc}", file=err)
        return exc.exit_code
    print(render(document, args.output, request.table), file=out)
    return EXIT_OK
