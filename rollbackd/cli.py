"""The ``rollbackd`` command: the only place that reads the process environment.

Subcommands: ``run`` (the daemon), ``replay`` (scenario files through the real detectors and
decision), ``backtest`` (a past time range from Prometheus through them), ``demo`` (a bad
release undoing itself on an emulated cluster), ``history`` (the
audit log), ``check-config`` (``--probe``: and every target's series) and ``config-schema``, and
the operator verbs talking to a running daemon (``status``, ``freeze``, ``unfreeze``, ``dry-run``,
``hold``, ``release``, ``rollback``, ``accept``; see :mod:`rollbackd.ctl.verbs`). Exit status: 0 on
success, 2 for usage and configuration errors, 1 when ``check-config --probe`` finds a blind
target; the operator verbs' statuses are :data:`rollbackd.ctl.client.EXIT_CODES`; ``run`` and
``replay`` return their own status otherwise. ``kubectl-rollbackd`` is the same command under the
name kubectl looks for in a plugin (``kubectl rollbackd status``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rollbackd import __version__
from rollbackd.config.loader import CONFIG_ENV, ConfigError, load_settings, resolve_config_path
from rollbackd.config.settings import Settings
from rollbackd.ctl.client import EXIT_CODES
from rollbackd.ctl.verbs import SERVER_ENV, VERBS, add_connection_arguments, add_verbs, run_verb
from rollbackd.store.history import cli_history, limit_argument, since_argument, target_argument

EXIT_CONFIG = 2
#: ``check-config --probe``: a target would be blind (a side without series), or Prometheus
#: could not be asked.
EXIT_BLIND = 1

_DESCRIPTION = """\
Makes bad releases undo themselves: watches canary, blue-green and Deployment releases through
Prometheus and health endpoints, decides by the rollback runbook, rolls back, verifies, and
tells everyone."""

_ENVIRONMENT = f"""\
configuration:
  One YAML file (--config FILE, or ${CONFIG_ENV}), overridden by environment variables
  ROLLBACKD_<SECTION>__<KEY>, e.g. ROLLBACKD_PROMETHEUS__URL=http://prometheus:9090,
  ROLLBACKD_SAFETY__DRY_RUN=true, ROLLBACKD_INTERVAL_S=5. See 'rollbackd config-schema'."""

_VERB_EPILOG = "exit status:\n" + "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())


def _config_argument(parser: argparse.ArgumentParser, *, help: str) -> None:
    parser.add_argument("--config", metavar="FILE", default=None, help=help)


def build_parser(prog: str = "rollbackd") -> argparse.ArgumentParser:
    """The argument parser of the ``rollbackd`` command (``prog``: its name in the help)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=_DESCRIPTION,
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    run = commands.add_parser(
        "run",
        help="run the daemon",
        description="Watch every configured target, decide, roll back, verify and publish events\n"
        "until SIGTERM or SIGINT.",
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_argument(
        run,
        help=f"the YAML configuration file (default: ${CONFIG_ENV}; without either, the defaults "
        "with environment overrides)",
    )

    replay = commands.add_parser(
        "replay",
        help="replay recorded scenarios through the detectors and the decision",
        description="Run the daemon's detectors and decision over scenario files (or directories\n"
        "of them) and print one JSON object per scenario, one per line:\n"
        "scenario, decision, mode, decided_at_s, reason.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    replay.add_argument("files", nargs="+", metavar="FILE", help="scenario JSON files or directories")
    replay.add_argument(
        "--format",
        choices=("json", "table"),
        default="json",
        help="json: one JSON object per line (the default, for programs); table: a readable summary",
    )
    _config_argument(
        replay,
        help="a configuration file whose 'defaults' the scenarios start from (each scenario's own "
        "slo, policy and context still apply); the environment is not consulted",
    )

    backtest = commands.add_parser(
        "backtest",
        help="what rollbackd would have decided over a past time range, from Prometheus",
        description="Read each target's history from the configured Prometheus (query_range at the\n"
        "target's interval) and judge it tick by tick with the daemon's own evaluator; print every\n"
        "change of verdict with its reasons, then a summary per target. --set overrides settings;\n"
        "each --compare is one more variant judged on the same history. Exit status: 0 when judged,\n"
        "2 for configuration and usage errors, 3 when Prometheus gave no history.",
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from rollbackd.backtest import add_arguments as backtest_arguments

    backtest_arguments(backtest)

    check = commands.add_parser(
        "check-config",
        help="validate a configuration file",
        description="Load FILE with the environment overrides, as 'run' would, and print\n"
        "'FILE: OK (N targets)', or every problem with its line on stderr and exit with status 2.\n"
        "With --probe, also run every target's queries once against the configured Prometheus.",
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("file", metavar="FILE", help="the YAML configuration file")
    check.add_argument(
        "--ignore-env",
        action="store_true",
        help="check the file alone, without ROLLBACKD_* environment overrides",
    )
    check.add_argument(
        "--probe",
        action="store_true",
        help="also ask the configured Prometheus for every target's series: per target and side, how\n"
        "many there are and their labels, or what is probably wrong and the preset that fits; exit\n"
        "status 1 when a target would be blind (a side without series) or Prometheus cannot be asked",
    )

    demo = commands.add_parser(
        "demo",
        help="watch a bad release undo itself, end to end, on this machine",
        description="One command, no cluster and no container engine: an EMULATED Kubernetes API\n"
        "(kmock) seeded with a release, real sample-app processes as its pods, a load generator\n"
        "following the emulated routing, a real Prometheus when the 'prometheus' binary is on the\n"
        "PATH, and the real daemon. The new version turns bad; rollbackd decides, rolls back and\n"
        "verifies, and a timeline shows when each step happened. Exit status 0 on a verified\n"
        "rollback, 1 otherwise. Needs the demo extra: pip install 'rollbackd[demo]'.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--scenario",
        choices=("canary", "bluegreen", "deployment", "gateway", "gitops", "flag", "config"),
        default="canary",
        help="canary: abort an ingress-nginx canary (the default); bluegreen: switch a Service back "
        "to the old colour; deployment: undo a Deployment to its previous revision; gateway: abort a "
        "canary routed by a Gateway API HTTPRoute (its weight to 0); gitops: the canary synced from Git "
        "by Argo CD and Flux, whose reconciler puts the bad version back unless suspended; flag: a "
        "feature flag turned on makes the app fail, rollbackd turns it off (the flag in PostgreSQL, or "
        "--flag-store http: behind the app's admin API); config: a ConfigMap change makes the app fail, "
        "rollbackd restores its previous data and restarts the Deployment",
    )
    demo.add_argument(
        "--flag-store",
        choices=("sql", "http"),
        default="sql",
        help="the flag scenario's flag store: sql (a PostgreSQL table; $ROLLBACKD_DEMO_FLAGS_DSN, default "
        "the local server's 'test' database) or http (the sample app's admin API)",
    )
    demo.add_argument(
        "--gitops",
        choices=("suspend", "refuse", "ignore"),
        default="suspend",
        help="the gitops scenario's mode: suspend (the default: the rollback holds), refuse (escalates "
        "instead), ignore (the reconciler undoes the rollback, and the demo fails)",
    )
    demo.add_argument(
        "--no-prometheus",
        action="store_true",
        help="read the sample apps' /metrics directly even when Prometheus is installed",
    )
    demo.add_argument(
        "--mqtt-url",
        default=None,
        help="publish the events to this MQTT broker (default: mqtt://127.0.0.1:1883 when one answers "
        "there); watch them with: mosquitto_sub -t 'rollbackd/#' -v",
    )

    demo.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="the whole demo's time limit, start-up included (default 110; a loaded machine may need more)",
    )
    demo.add_argument(
        "--linger",
        action="store_true",
        help="after the rollback, keep the daemon and its status page up until Ctrl-C (to look around)",
    )

    history = commands.add_parser(
        "history",
        help="show the audit log: decisions, actions, verifications, holds, ...",
        description="Print the audit log from the configured store (store.url, store.data_dir), oldest\n"
        "first: one line per entry with local time, target, kind and summary; with --json, one JSON\n"
        "object per entry with its details (evidence, reasons, changes). Exit status 1 when the\n"
        f"store cannot be read. With --server (or ${SERVER_ENV}), ask a running daemon instead\n"
        "(times in UTC; -o json|yaml prints the API's document).",
        epilog=_ENVIRONMENT + "\n\n" + _VERB_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_argument(history, help=f"the YAML configuration file (default: ${CONFIG_ENV})")
    history.add_argument("--target", metavar="NS/NAME", type=target_argument, help="only this target")
    history.add_argument(
        "--since",
        metavar="WHEN",
        type=since_argument,
        help="only entries since a duration ago (30m, 1h, 2d) or a time (2024-05-01T12:00:00Z)",
    )
    history.add_argument(
        "--limit", metavar="N", type=limit_argument, default=1000, help="at most the N latest entries (1000)"
    )
    history.add_argument("--json", action="store_true", help="one JSON object per line, for programs")
    add_connection_arguments(history)

    events = commands.add_parser(
        "events",
        help="show the event stream (over MQTT)",
        description="With --follow, print rollbackd's events as they happen, one line each (time,\n"
        "target, type, summary), duplicates dropped; without it, print each target's retained\n"
        "status and exit. The broker is events.mqtt of the configuration, or --mqtt-url.",
        epilog=_ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _config_argument(events, help=f"the YAML configuration file (default: ${CONFIG_ENV})")
    events.add_argument("--follow", "-f", action="store_true", help="print events as they happen, until ^C")
    events.add_argument("--target", metavar="NS/NAME", help="only this target's events")
    events.add_argument(
        "--type",
        metavar="GLOB",
        action="append",
        dest="types",
        help="only event types matching GLOB (rollback.*, hold.set, ...); repeatable",
    )
    events.add_argument("--mqtt-url", metavar="URL", help="the broker (default: events.mqtt.url)")
    events.add_argument("--count", type=int, metavar="N", help="with --follow: exit after N events")

    add_verbs(commands, argparse.RawDescriptionHelpFormatter, _VERB_EPILOG)

    commands.add_parser(
        "config-schema",
        help="print the JSON Schema of the configuration file",
        description="Print the JSON Schema of the configuration file, for editors and CI checks.",
    )
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "rollbackd") -> int:
    """Entry point of the ``rollbackd`` command; returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        if args.command in VERBS or (args.command == "history" and _asks_a_daemon(args)):
            return _printing(_verb, args)
        if args.command in ("check-config", "config-schema"):
            return _printing(_check_config if args.command == "check-config" else _config_schema, args)
        if args.command == "replay":
            from rollbackd.replay import cli_replay

            return _printing(cli_replay, args)
        if args.command == "backtest":
            from rollbackd.backtest import cli_backtest

            return _printing(lambda parsed: cli_backtest(parsed, environ=os.environ), args)
        if args.command == "demo":
            from rollbackd.demo import cli_demo

            return cli_demo(args)
        if args.command == "history":
            if args.output == "yaml":
                parser.error("history -o yaml needs a daemon to ask (--server or $ROLLBACKD_SERVER); "
                             "reading the store directly, use -o json or --json")
            args.json = args.json or args.output == "json"
            args.config = _config_path(args.config)
            return _printing(lambda parsed: cli_history(parsed, environ=os.environ), args)
        if args.command == "events":
            from rollbackd.events.follow import run as cli_events

            settings = load_settings(resolve_config_path(args.config, environ=os.environ), environ=os.environ)
            return cli_events(args, settings=settings, environ=os.environ, out=sys.stdout)
        if args.command == "run":
            args.config = _config_path(args.config)
            from rollbackd.daemon.main import cli_run

            return cli_run(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    parser.print_help(sys.stderr)
    return EXIT_CONFIG


def _asks_a_daemon(args: argparse.Namespace) -> bool:
    """Whether ``history`` reads a daemon's API (``--server`` or ``$ROLLBACKD_SERVER``), not the store."""
    return bool(args.server or os.environ.get(SERVER_ENV))


def _verb(args: argparse.Namespace) -> int:
    return run_verb(args, environ=os.environ, out=sys.stdout, err=sys.stderr)


def kubectl_plugin() -> int:
    """Entry point of ``kubectl-rollbackd``: the same command, as ``kubectl rollbackd ...``."""
    return main(prog="kubectl rollbackd")


def _config_path(value: str | None) -> str | None:
    path = resolve_config_path(value, environ=os.environ)
    return str(path) if path is not None else None


def _printing(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command that prints to stdout; a reader that goes away (``| head``) is no error."""
    try:
        status = command(args)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit does not fail again
        return 1
    return status


def _check_config(args: argparse.Namespace) -> int:
    environ = {} if args.ignore_env else os.environ
    settings = load_settings(Path(args.file), environ=environ)
    count = len(settings.targets)
    print(f"{args.file}: OK ({count} target{'' if count == 1 else 's'})")
    if count == 0 and not settings.discovery.enabled:
        print(
            f"{args.file}: warning: no targets: rollbackd would run but watch nothing; list the releases "
            "to watch under 'targets:' (see docs/configuration.md), or opt Deployments in with discovery "
            "(docs/discovery.md)",
            file=sys.stderr,
        )
    if not args.probe:
        return 0
    return _probe(settings)


def _probe(settings: Settings) -> int:
    """Print the probe of every target's series; 1 when a target would be blind."""
    import asyncio

    from rollbackd.daemon.main import probe_targets
    from rollbackd.sources.backend import BackendConfigError

    try:
        # The backend's secrets come from the environment even with --ignore-env, as for 'run'.
        report = asyncio.run(probe_targets(settings, environ=os.environ))
    except BackendConfigError as exc:
        print(f"cannot probe: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    for line in report.lines():
        print(line)
    blind = report.blind
    if blind:
        keys = ", ".join(target.key for target in blind)
        print(f"{len(blind)} of {len(report.targets)} targets would be blind: {keys}", file=sys.stderr)
        return EXIT_BLIND
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Settings.model_json_schema()}
    print(json.dumps(schema, indent=2))
    return 0
