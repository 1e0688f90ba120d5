"""The daemon assembled in one place: journal, store, events and :class:`~rollbackd.daemon.app.Daemon`.

``rollbackd run`` (:mod:`rollbackd.daemon.main`), the demo and the tests all open the daemon with
:func:`open_daemon`; what differs between them (the sources, the targets' Kubernetes access, the leadership,
the API's access rules, the metrics registry) is passed in, and everything else is wired the same.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from rollbackd.actions.targets import KubeTargets
from rollbackd.config.settings import Settings
from rollbackd.daemon.app import SHUTDOWN_TIMEOUT_S, Daemon
from rollbackd.daemon.auth import ApiAuth
from rollbackd.daemon.configwatch import ConfigWatch, StoreHistory
from rollbackd.daemon.journal import Journal
from rollbackd.daemon.leader import Leadership
from rollbackd.daemon.metrics import DaemonMetrics
from rollbackd.daemon.releases import SharedReleases
from rollbackd.daemon.rollbackmap import ConfigMapRollbacks
from rollbackd.daemon.storekeeper import RETRY_S, keep_store
from rollbackd.daemon.switchstores import SwitchStore
from rollbackd.kube import KubeClient
from rollbackd.run import TargetAccess
from rollbackd.sources.base import HealthSource, MetricsSource
from rollbackd.sources.probe import Queries


@contextlib.asynccontextmanager
async def open_daemon(
    settings: Settings,
    *,
    metrics_source: MetricsSource,
    health_source: HealthSource,
    metrics: DaemonMetrics | None = None,
    targets: TargetAccess | None = None,
    kube: KubeClient | None = None,
    leader: Leadership | None = None,
    auth: ApiAuth | None = None,
    environ: Mapping[str, str] | None = None,
    shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
    store_retry_s: float = RETRY_S,
    probe: Queries | None = None,
    switch_store: SwitchStore | None = None,
    shared_releases: SharedReleases | None = None,
    shared_rollbacks: ConfigMapRollbacks | None = None,
) -> AsyncIterator[Daemon]:
    """Run a daemon for ``settings`` with its store and events, and yield it once its HTTP server
    listens; on exit, stop it gracefully, record the stop and let the event sinks drain.

    The store is opened beside the daemon (``rollbackd:store``) and retried every
    ``store_retry_s`` while it is down: until it opens, the daemon judges but is not ready and does
    not act (see :mod:`rollbackd.daemon.storekeeper`). ``daemon.journal`` is where the daemon
    records; its ``attached`` says whether the store is open.

    Keyword arguments (the caller owns the lifetime of every object it passes):

    - ``metrics_source``, ``health_source``: where each tick's metrics and health come from.
    - ``metrics``: the metrics registry (a fresh one by default); pass the one the sources report
      their errors into.
    - ``targets``: the targets' Kubernetes access (release context, actions, availability);
      ``None`` decides only.
    - ``kube``: the Kubernetes client the ``kubernetes_events`` sink writes Events with, and the
      ConfigMaps of config targets are watched with (:mod:`rollbackd.daemon.configwatch`); ``None``:
      no Kubernetes Events, no ConfigMap versions kept.
    - ``leader``: the leader election of several replicas (entered by the caller); only the
      leader acts and delivers the outbox. ``None``: this process is the only one.
    - ``auth``: access rules of the API (default: from ``settings.api``, token files only).
    - ``environ``: where the event sinks find their secrets (default: none).
    - ``shutdown_timeout_s``: how long a graceful stop waits for the daemon's root tasks.
    - ``probe``: the Prometheus client the daemon probes the targets' series with once at start
      (``None``: no probe).
    - ``switch_store``: where the operators' switches are kept when not in the store (the
      ConfigMap every replica watches, :mod:`rollbackd.daemon.switchmap`).
    - ``shared_releases``: where the announced releases are kept when not in a shared store (the
      same ConfigMap, :mod:`rollbackd.daemon.releasemap`).
    - ``shared_rollbacks``: where the leader keeps its rollbacks for the next leader when the store
      is not shared (the same ConfigMap, :mod:`rollbackd.daemon.rollbackmap`).
    """
    journal = Journal(required=True)
    stopping = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(
            keep_store(
                settings,
                journal=journal,
                environ=environ if environ is not None else {},
                kube=kube,
                stopping=stopping,
                retry_s=store_retry_s,
                active=None if leader is None else lambda: leader.is_leader,
            ),
            name="rollbackd:store",
        )
        if isinstance(targets, KubeTargets):
            targets.config_history = StoreHistory(journal)
        try:
            async with Daemon(
                settings,
                metrics_source=metrics_source,
                health_source=health_source,
                metrics=metrics,
                targets=targets,
                leader=leader,
                auth=auth,
                journal=journal,
                shutdown_timeout_s=shutdown_timeout_s,
                probe=probe,
                switch_store=switch_store,
                shared_releases=shared_releases,
                shared_rollbacks=shared_rollbacks,
            ) as daemon:
                if kube is None:
                    yield daemon
                else:
                    async with ConfigWatch(kube=kube, settings=daemon.settings, journal=journal,
                                           announce=daemon.releases.announce) as watch:
                        daemon.follow_settings(watch)
                        yield daemon
        finally:
            stopping.set()
