"""``rollbackd run``: the process edge. Reads the environment and the configuration file, sets up
logging, opens the real sources, runs the :class:`~rollbackd.daemon.app.Daemon` and turns SIGTERM
and SIGINT into a graceful, bounded shutdown.

Around the daemon: leader election when ``leader_election.enabled`` (identity from ``$POD_NAME``,
namespace from ``$POD_NAMESPACE`` unless configured), the API token (``api.token_env`` is looked up
here), and the configuration file watched for changes (applied without a restart).

One writer per store: an SQLite store is locked for the process' life (:mod:`rollbackd.store.lock`;
a second daemon on the same file refuses to start), and daemons sharing a PostgreSQL store without
Lease election elect their leader on the store (:mod:`rollbackd.daemon.store_leader`).

Exit codes: 0 after a clean shutdown, 1 when the daemon failed (or did not stop in time), 2 when
the configuration is invalid, 3 when another rollbackd already uses the SQLite store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from rollbackd import __version__
from rollbackd.actions.targets import KubeTargets, OffClusterTargets
from rollbackd.config.loader import ConfigError, load_settings
from rollbackd.config.settings import Settings
from rollbackd.daemon.app import SHUTDOWN_TIMEOUT_S, Daemon
from rollbackd.daemon.auth import ApiAuth
from rollbackd.daemon.discovery import Discovery
from rollbackd.daemon.http import PortInUseError
from rollbackd.daemon.leader import LeaderElector
from rollbackd.daemon.logs import configure_logging
from rollbackd.daemon.metrics import DaemonMetrics
from rollbackd.daemon.releasemap import ConfigMapReleases
from rollbackd.daemon.reload import ConfigWatcher, SettingsChange
from rollbackd.daemon.rollbackmap import ConfigMapRollbacks
from rollbackd.daemon.store_leader import StoreLeader
from rollbackd.daemon.switchmap import ConfigMapSwitches, default_name
from rollbackd.daemon.switchstores import store_where, switches_place
from rollbackd.daemon.wiring import open_daemon
from rollbackd.errors import SourceStats
from rollbackd.kube.client import KubeClient
from rollbackd.kube.errors import KubeConfigError, KubeError
from rollbackd.sources.backend import BackendConfigError
from rollbackd.sources.health import HealthProber
from rollbackd.sources.lookback import Lookback, min_range_s
from rollbackd.sources.probe import ProbeReport, probe
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource
from rollbackd.store import sqlite_path, store_kind
from rollbackd.store.base import StoreError
from rollbackd.store.lock import SQLiteLock, StoreInUseError

logger = logging.getLogger(__name__)

#: Extra time, beyond the root tasks' shutdown timeout, for closing the sources before the
#: process gives up on a graceful exit.
_CLOSE_MARGIN_S = 5.0

_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Mounted into every pod with a service account.
_SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def kube_client_for(settings: Settings, *, environ: Mapping[str, str]) -> KubeClient | None:
    """The Kubernetes client the settings ask for, or ``None``: without it the feature-flag and
    command targets are acted on all the same, the others decided on only
    (:class:`~rollbackd.actions.targets.OffClusterTargets`).

    ``kubernetes.enabled: auto`` uses the pod's service account when running in a pod, else a
    kubeconfig (``kubernetes.kubeconfig``, ``$KUBECONFIG``, ``~/.kube/config``) when one exists, else
    nothing; ``true`` requires one of them; ``false`` never touches the cluster.
    """
    kube = settings.kubernetes
    if kube.enabled is False:
        return None
    timeout = kube.request_timeout_s
    if environ.get("KUBERNETES_SERVICE_HOST") and Path(_SERVICE_ACCOUNT_TOKEN).exists():
        return KubeClient(in_cluster=True, request_timeout_s=timeout)
    candidates = [kube.kubeconfig, *environ.get("KUBECONFIG", "").split(os.pathsep)]
    home = environ.get("HOME")
    if home:
        candidates.append(str(Path(home) / ".kube" / "config"))
    for candidate in candidates:
        if candidate and Path(candidate).expanduser().is_file():
            return KubeClient(
                kubeconfig=str(Path(candidate).expanduser()), context=kube.context, request_timeout_s=timeout
            )
    if kube.enabled is True:
        raise KubeConfigError(
            "kubernetes.enabled is true, but there is no service account (not running in a pod) and no "
            "kubeconfig (set kubernetes.kubeconfig or $KUBECONFIG)"
        )
    logger.warning("no Kubernetes configuration found (neither a service account nor a kubeconfig)")
    return None


def leader_elector_for(
    settings: Settings, kube: KubeClient | None, *, environ: Mapping[str, str]
) -> LeaderElector | None:
    """The leader election the settings ask for (``None`` when disabled). Needs Kubernetes access:
    :class:`~rollbackd.kube.errors.KubeConfigError` otherwise."""
    election = settings.leader_election
    if not election.enabled:
        return None
    if kube is None:
        raise KubeConfigError(
            "leader_election.enabled is true, but there is no Kubernetes access (kubernetes.enabled is "
            "false, or neither a service account nor a kubeconfig was found): the Lease cannot be reached"
        )
    return LeaderElector(
        kube=kube,
        namespace=lease_namespace(settings, environ=environ),
        name=election.lease_name,
        identity=process_identity(settings, environ=environ),
        lease_duration_s=election.lease_duration_s,
        renew_period_s=election.renew_period_s,
    )


def lease_namespace(settings: Settings, *, environ: Mapping[str, str]) -> str:
    """The namespace of the Lease (and of the switches' ConfigMap): ``leader_election.namespace``,
    else ``$POD_NAMESPACE``, else ``default``."""
    return settings.leader_election.namespace or environ.get("POD_NAMESPACE") or "default"


def switch_store_for(
    settings: Settings, kube: KubeClient | None, *, environ: Mapping[str, str]
) -> ConfigMapSwitches | None:
    """Where the operators' switches (and the announced releases) are kept (``safety.switches``,
    see :func:`~rollbackd.daemon.switchstores.switches_place`): the ConfigMap every replica
    watches, or ``None`` for the store. The choice is logged. ``safety.switches: kubernetes`` without
    Kubernetes access is a :class:`~rollbackd.kube.errors.KubeConfigError`."""
    if settings.safety.switches == "kubernetes" and kube is None:
        raise KubeConfigError(
            "safety.switches is kubernetes, but there is no Kubernetes access (kubernetes.enabled is false, "
            "or neither a service account nor a kubeconfig was found): set safety.switches to auto or store, "
            "or give rollbackd a kubeconfig"
        )
    if switches_place(settings, kubernetes=kube is not None) == "store" or kube is None:
        logger.info("the switches set through the API are kept in %s", store_where(settings),
                    extra={"switches": "store"})
        return None
    place = ConfigMapSwitches(
        kube=kube,
        namespace=lease_namespace(settings, environ=environ),
        name=settings.safety.switches_configmap or default_name(settings.leader_election.lease_name),
    )
    logger.info("the switches set through the API and the announced releases are kept in %s, watched by "
                "every replica", place.where, extra={"switches": "kubernetes"})
    return place


def process_identity(settings: Settings, *, environ: Mapping[str, str]) -> str:
    """This process among the replicas: ``leader_election.identity``, else ``$POD_NAME``, else
    hostname and process id."""
    return (
        settings.leader_election.identity
        or environ.get("POD_NAME")
        or f"{socket.gethostname()}-{os.getpid()}"
    )


def store_leader_for(settings: Settings, *, environ: Mapping[str, str]) -> StoreLeader | None:
    """The leader election on a PostgreSQL store (an advisory lock), for daemons sharing it
    without Lease election; ``None`` for an SQLite store (locked instead)."""
    url = settings.store.url
    if url is None or store_kind(url) != "postgresql":
        return None
    return StoreLeader(dsn=url, identity=process_identity(settings, environ=environ))


async def probe_targets(settings: Settings, *, environ: Mapping[str, str]) -> ProbeReport:
    """``rollbackd check-config --probe``: every target's series, asked once of the configured
    backend (its secrets read from the files and ``environ``, as ``run`` reads them). Raises
    :class:`~rollbackd.sources.backend.BackendConfigError` naming a secret or TLS file that cannot
    be used."""
    async with PrometheusClient.from_settings(settings.prometheus, environ=environ) as client:
        return await probe(settings, client)


async def run_daemon(
    settings: Settings,
    *,
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
    config_path: Path | None = None,
) -> None:
    """Open Prometheus and the health prober, run the daemon until SIGTERM or SIGINT, close all.
    ``config_path``, the file ``settings`` came from, is watched and its changes applied.

    The first signal starts a graceful shutdown; if it has not completed within
    ``shutdown_timeout_s`` plus a few seconds, or a second signal arrives, the process exits at
    once with status 1 (logged).
    """
    loop = asyncio.get_running_loop()
    metrics = DaemonMetrics()
    prometheus = settings.prometheus
    environ = environ if environ is not None else {}
    client = PrometheusClient.from_settings(
        prometheus, environ=environ,
        stats=SourceStats(source="prometheus", on_error=metrics.count_source_error),
    )
    prober = HealthProber(
        timeout_s=settings.health.timeout_s,
        concurrency=settings.health.concurrency,
        stats=SourceStats(source="health", on_error=metrics.count_source_error),
    )
    kube = kube_client_for(settings, environ=environ)
    switch_store = switch_store_for(settings, kube, environ=environ)  # used once kube is open
    auth = ApiAuth.from_settings(settings.api, environ=environ)
    if settings.api.allow_unauthenticated_writes:
        logger.warning("api.allow_unauthenticated_writes: anyone reaching the port can steer rollbackd")
    elif auth.token() is None:
        logger.warning("no API token (api.token_file or api.token_env): the write endpoints are refused")
    #: Armed by the first signal; stays armed while the sources close.
    deadline: list[asyncio.TimerHandle] = []
    #: The running daemon, once open; a signal before that stops it as soon as it is.
    running: list[Daemon] = []

    def on_signal(signum: signal.Signals) -> None:
        if deadline:
            _exit_now(f"second {signum.name} during shutdown")
        logger.info("shutdown requested", extra={"signal": signum.name})
        deadline.append(
            loop.call_later(
                shutdown_timeout_s + _CLOSE_MARGIN_S, _exit_now, "shutdown did not complete in time"
            )
        )
        for daemon in running:
            daemon.stop()

    try:
        async with contextlib.AsyncExitStack() as stack:
            if store_kind(settings.store.url) == "sqlite":
                database = sqlite_path(settings.store.url, data_dir=Path(settings.store.data_dir))
                stack.enter_context(SQLiteLock(database))  # before anything: a second writer stops here
            await stack.enter_async_context(client)
            await stack.enter_async_context(prober)
            targets: KubeTargets | OffClusterTargets
            if kube is not None:
                await stack.enter_async_context(kube)
                targets = KubeTargets(kube=kube, settings=settings)
                logger.info("acting on Kubernetes", extra={"kubernetes": kube.describe()})
                await report_router_problems(targets)
            else:  # the feature-flag and command levers need no cluster
                targets = OffClusterTargets(settings=settings)
                decided_only = any(not targets.reaches(target.key) for target in settings.targets)
                logger.log(logging.WARNING if decided_only else logging.INFO, "%s", targets.summary(),
                           extra={"kubernetes": "off"})
            elector = leader_elector_for(settings, kube, environ=environ)
            leader: LeaderElector | StoreLeader | None = elector
            if leader is None:
                leader = store_leader_for(settings, environ=environ)
            if leader is not None:
                await stack.enter_async_context(leader)
            for signum in _SIGNALS:
                loop.add_signal_handler(signum, on_signal, signum)
            try:
                async with open_daemon(
                    settings,
                    metrics_source=Lookback(
                        PrometheusSource(
                            client=client, shards=prometheus.query_shards,
                            max_answer_bytes=prometheus.max_answer_bytes,
                            # A sample is up to one scrape old; older by a further interval is stale.
                            max_lag_s=prometheus.scrape_interval_s + settings.interval_s,
                            on_lag=lambda lag_s: metrics.set_source_lag("prometheus", lag_s),
                        ),
                        min_range_s=min_range_s(prometheus.scrape_interval_s),
                    ),
                    health_source=prober,
                    metrics=metrics,
                    targets=targets,
                    kube=kube,
                    leader=leader,
                    auth=auth,
                    environ=environ,
                    shutdown_timeout_s=shutdown_timeout_s,
                    probe=client,
                    switch_store=switch_store,
                    shared_releases=None if switch_store is None else ConfigMapReleases(switch_store),
                    shared_rollbacks=None if switch_store is None else ConfigMapRollbacks(switch_store),
                ) as daemon:
                    running.append(daemon)
                    if deadline:  # a signal arrived while the daemon was starting
                        daemon.stop()
                    async with contextlib.AsyncExitStack() as watching:
                        discovery = await watching.enter_async_context(
                            discovery_for(daemon, kube)
                        ) if kube is not None and settings.discovery.enabled else None
                        if settings.discovery.enabled and kube is None:
                            logger.error("discovery.enabled, but there is no Kubernetes access: no "
                                         "Deployment is watched for opt-in annotations")
                        if config_path is not None:
                            path = config_path
                            await watching.enter_async_context(
                                ConfigWatcher(
                                    path=path,
                                    load=lambda: load_settings(path, environ=environ),
                                    apply=lambda new: reloaded(daemon, discovery, new),
                                    current=lambda: daemon.file_settings,
                                    refused=daemon.refuse_settings,
                                )
                            )
                        await daemon.stopped()
            finally:
                for signum in _SIGNALS:
                    loop.remove_signal_handler(signum)
    finally:
        for handle in deadline:
            handle.cancel()


def discovery_for(daemon: Daemon, kube: KubeClient) -> Discovery:
    """Opt-in by annotation for ``daemon``: the Deployments of the namespaces ``discovery`` allows,
    watched; what their annotations declare handed to the daemon as it changes."""
    return Discovery(
        kube=kube,
        settings=lambda: daemon.file_settings,
        report=daemon.apply_discovery,
        leading=lambda: daemon.leading,
    )


def reloaded(daemon: Daemon, discovery: Discovery | None, new: Settings) -> SettingsChange:
    """Apply a reloaded file, then read the annotated Deployments again under it (its defaults,
    caps and own targets decide what the annotations may declare)."""
    change = daemon.apply_settings(new)
    if discovery is not None:
        discovery.refresh()
    return change


async def report_router_problems(cluster: KubeTargets) -> None:
    """At start-up: an error for each target whose traffic router needs a resource the API server
    does not serve (e.g. the Gateway API is not installed); the other targets are not affected."""
    try:
        problems = await cluster.check_routers()
    except KubeError as exc:
        logger.warning("could not check that the API server serves the targets' routes: %s", exc)
        return
    for key, problem in problems.items():
        logger.error("%s", problem, extra={"target": key})


def _exit_now(why: str) -> None:
    """Leave the process at once, with status 1, after flushing the logs."""
    logger.critical("exiting without a complete shutdown: %s", why)
    logging.shutdown()
    os._exit(1)


#: The warning of a configuration without targets (the daemon runs, judging nothing).
NO_TARGETS = (
    "no targets configured: rollbackd runs but watches nothing; list the releases to watch under "
    "'targets:' in the configuration file (see docs/configuration.md)"
)


def _port_in_use(exc: BaseException) -> PortInUseError | None:
    """The :class:`PortInUseError` in ``exc``, through the task groups' exception groups."""
    if isinstance(exc, PortInUseError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _port_in_use(inner)
            if found is not None:
                return found
    return None


def cli_run(args: argparse.Namespace) -> int:
    """Entry point of ``rollbackd run``: ``args.config`` is the configuration file (or ``None``)."""
    config = getattr(args, "config", None)
    try:
        settings = load_settings(Path(config) if config else None, environ=os.environ)
    except ConfigError as exc:
        print(f"rollbackd: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log)
    logger.info("rollbackd starting", extra={"version": __version__, "config": config})
    if not settings.targets and not settings.discovery.enabled:  # discovery finds them at run time
        logger.warning(NO_TARGETS, extra={"config": config})
    try:
        asyncio.run(run_daemon(settings, environ=os.environ, config_path=Path(config) if config else None))
    except KubeConfigError as exc:
        logger.error("cannot reach Kubernetes: %s", exc)
        print(f"rollbackd: {exc}", file=sys.stderr)
        return 2
    except BackendConfigError as exc:
        logger.error("cannot reach Prometheus: %s", exc)
        print(f"rollbackd: {exc}", file=sys.stderr)
        return 2
    except StoreError as exc:  # the SQLite store's lock: held by another daemon, or no lock file
        logger.error("cannot start: %s", exc)
        print(f"rollbackd: {exc}", file=sys.stderr)
        return 3 if isinstance(exc, StoreInUseError) else 1
    except Exception as exc:
        busy = _port_in_use(exc)
        if busy is not None:  # a usual mistake, not a defect: one line, no traceback
            logger.error("cannot start: %s", busy)
            print(f"rollbackd: {busy}", file=sys.stderr)
            return 2
        logger.exception("rollbackd failed")
        return 1
    logger.info("rollbackd stopped")
    return 0
