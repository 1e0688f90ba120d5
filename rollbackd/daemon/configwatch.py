"""Keeping the versions of the ConfigMaps config targets name: Kubernetes keeps no history of a
ConfigMap, so rollbackd watches them and keeps each version of their data in its store, where the
config lever (:mod:`rollbackd.actions.config_restore`) finds the data to go back to.

:class:`ConfigWatch` is an async context manager owning one task per namespace that holds such
ConfigMaps (``rollbackd:config-watch:<namespace>``). A reloaded configuration
(:meth:`ConfigWatch.reconfigure`) starts the tasks of namespaces it adds at once, and stops those of
namespaces no config target names any more; a namespace whose ConfigMaps (or their ``config``)
changed is watched anew (listed first, so a ConfigMap added keeps its data as it is now). A task
lists the namespace's ConfigMaps, keeps the named ones' data, then watches from the list's
``resourceVersion``; when the stream ends or breaks it lists again (after a backoff with jitter when
something failed). Each new version of the data is kept
(:meth:`~rollbackd.store.base.Store.add_config_version`, bounded by the target's ``keep_versions``
and ``keep_age_s``); a change of the data (not the first version seen) is a release of kind
``config`` (unless it is the config lever's own restore, which it marks with
:data:`~rollbackd.model.RESTORED_FROM_ANNOTATION`), announced through the daemon's release book
(stored with its ``release.started`` event;
its id, ``config:<namespace>/<name>@<resourceVersion>``, makes two replicas' announcements one).
Every replica keeps what it sees: a version another replica kept already is not kept twice. While
the store is not open (or fails), nothing is kept: the namespace is listed again after a pause, and
the listing keeps the data as it is then.

:class:`StoreHistory` is the lever's view of the kept versions, through the journal's store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Self

from rollbackd.aiotasks import stop_tasks
from rollbackd.backoff import Backoff
from rollbackd.config.settings import ConfigLeverSettings, Settings
from rollbackd.daemon.discovery import MIN_STREAM_S
from rollbackd.daemon.journal import Journal
from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import KubeError
from rollbackd.kube.watch import list_configmaps, watch_configmaps
from rollbackd.model import RESTORED_FROM_ANNOTATION, ConfigMapVersion, Strategy
from rollbackd.releases import Release
from rollbackd.store.base import StoreError

logger = logging.getLogger(__name__)

#: Pause before listing again after a failure, growing to ``max_s``.
BACKOFF = Backoff(initial_s=0.5, max_s=30.0)
#: One watch request; then list and watch again.
WATCH_TIMEOUT_S = 300.0


#: The ConfigMaps watched in one namespace: name -> (the target's key, its ``config``).
_Names = dict[str, tuple[str, ConfigLeverSettings]]


def watched_configmaps(settings: Settings) -> dict[str, _Names]:
    """namespace -> ConfigMap name -> (the target's key, its ``config``), for every config target."""
    found: dict[str, _Names] = {}
    for target in settings.targets:
        if target.strategy is Strategy.CONFIG and target.config is not None:
            names = found.setdefault(target.namespace, {})
            for name in target.config.configmaps:
                names[name] = (target.key, target.config)
    return found


class _NotKept(Exception):
    """A version seen could not be kept: the namespace is listed again (after a pause)."""


class StoreHistory:
    """The kept versions of ConfigMaps, read through ``journal``'s store (the lever's
    :class:`~rollbackd.actions.config_restore.ConfigHistory`)."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    async def config_versions(
        self, namespace: str, name: str, *, limit: int = 2
    ) -> Sequence[ConfigMapVersion]:
        store = self._journal.store
        if store is None:
            raise StoreError("the store is not open: the kept versions of ConfigMaps cannot be read")
        return await store.config_versions(namespace, name, limit=limit)


class ConfigWatch:
    """Watches the ConfigMaps of ``settings``' config targets through ``kube`` and keeps their
    versions in ``journal``'s store (see the module docstring)."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        settings: Settings,
        journal: Journal,
        announce: Callable[[Release], Awaitable[tuple[Release, bool]]],
        backoff: Backoff = BACKOFF,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kube = kube
        self._journal = journal
        self._announce = announce
        self._wall_clock = wall_clock
        self._backoff = backoff
        #: What the configuration names now, and what each running task watches.
        self._wanted = watched_configmaps(settings)
        self._watching: dict[str, tuple[_Names, asyncio.Task[None]]] = {}
        self._changed = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def namespaces(self) -> frozenset[str]:
        """The namespaces whose ConfigMaps are watched now."""
        return frozenset(namespace for namespace, (_, task) in self._watching.items() if not task.done())

    def reconfigure(self, settings: Settings) -> None:
        """Watch what the reloaded ``settings`` name, at once (see the module docstring)."""
        self._wanted = watched_configmaps(settings)
        self._changed.set()

    async def __aenter__(self) -> Self:
        self._start(self._wanted)
        self._supervisor = asyncio.create_task(self._follow(), name="rollbackd:config-watch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        supervisor, self._supervisor = self._supervisor, None
        await stop_tasks([supervisor], failures="drop")
        watching, self._watching = self._watching, {}
        await stop_tasks([task for _, task in watching.values()], failures="drop")

    def _start(self, wanted: Mapping[str, _Names]) -> None:
        for namespace, names in wanted.items():
            if namespace not in self._watching:
                task = asyncio.create_task(self._watch(namespace, names),
                                           name=f"rollbackd:config-watch:{namespace}")
                self._watching[namespace] = (names, task)

    async def _follow(self) -> None:
        """Bring the namespaces' tasks in line with the configuration whenever it changes."""
        while True:
            await self._changed.wait()
            self._changed.clear()
            wanted = self._wanted
            stale = [ns for ns, (names, _) in self._watching.items() if wanted.get(ns) != names]
            await stop_tasks([self._watching.pop(ns)[1] for ns in stale], failures="drop")
            for namespace in stale:
                if namespace not in wanted:
                    logger.info("the ConfigMaps of namespace %s are not watched any more", namespace)
            added = sorted(set(wanted) - set(self._watching))
            self._start(wanted)
            if added:
                logger.info("watching the ConfigMaps of %s", ", ".join(f"namespace {ns}" for ns in added),
                            extra={"namespaces": added})

    async def _watch(self, namespace: str, names: _Names) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            started = loop.time()
            try:
                listed = await list_configmaps(self._kube, namespace=namespace)
                for obj in listed.items:
                    await self._keep(namespace, names, obj)
                async for event in watch_configmaps(self._kube, namespace=namespace,
                                                    resource_version=listed.resource_version,
                                                    timeout_s=WATCH_TIMEOUT_S):
                    changed = event.get("object")
                    if event.get("type") in ("ADDED", "MODIFIED") and isinstance(changed, Mapping):
                        await self._keep(namespace, names, changed)
                failed = loop.time() - started < MIN_STREAM_S
            except KubeError as exc:
                logger.warning("cannot watch the ConfigMaps of namespace %s: %s", namespace, exc)
                failed = True
            except _NotKept:  # the store is not open (yet, or any more): list again once it is
                failed = True
            failures = failures + 1 if failed else 0
            if failures:
                await asyncio.sleep(self._backoff.delay(failures))

    async def _keep(self, namespace: str, names: _Names, obj: Mapping[str, Any]) -> None:
        metadata: Obj = obj.get("metadata") or {}
        name = metadata.get("name")
        watched = names.get(name) if isinstance(name, str) else None
        store = self._journal.store
        if watched is None:
            return
        if store is None:
            raise _NotKept
        key, config = watched
        version = ConfigMapVersion(
            namespace=namespace, name=str(name), resource_version=str(metadata.get("resourceVersion")),
            data={str(k): str(v) for k, v in (obj.get("data") or {}).items()},
        )
        try:
            # All kept versions: a restore puts one of the older ones back.
            before = await store.config_versions(namespace, str(name), limit=config.keep_versions)
            added = await store.add_config_version(version, keep_versions=config.keep_versions,
                                                   keep_age_s=config.keep_age_s)
        except StoreError as exc:
            logger.warning("cannot keep a version of the ConfigMap %s/%s: %s", namespace, name, exc,
                           extra={"target": key})
            raise _NotKept from exc
        if not added or not before:  # the same data, or the first version seen: no change
            return
        restored_from = (metadata.get("annotations") or {}).get(RESTORED_FROM_ANNOTATION)
        if restored_from == before[0].resource_version and any(
            kept.data == version.data for kept in before[1:]
        ):
            # The config lever put an earlier version back: kept, but a rollback is not a release.
            # (The annotation alone proves nothing: anyone may write it, so data never kept before
            # is a release, whatever the annotation says.)
            logger.info("the ConfigMap %s/%s has its data restored by rollbackd (resourceVersion %s): "
                        "kept, not a release", namespace, name, version.resource_version,
                        extra={"target": key})
            return
        previous = dict(before[0].data)
        keys = set(previous) | set(version.data)  # those changed are told in the release
        changed = sorted(item for item in keys if previous.get(item) != version.data.get(item))
        release = Release(
            id=f"config:{namespace}/{name}@{version.resource_version}",
            target=key,
            kind="config",
            started_at=self._wall_clock(),
            description=f"ConfigMap {namespace}/{name} changed (resourceVersion {version.resource_version})",
            details={"configmap": f"{namespace}/{name}", "resource_version": version.resource_version,
                     "previous_resource_version": before[0].resource_version, "keys": changed},
            who="rollbackd (ConfigMap watch)",
        )
        try:
            await self._announce(release)
        except (StoreError, TimeoutError, LookupError) as exc:
            logger.warning("cannot announce the change of the ConfigMap %s/%s as a release: %s", namespace,
                           name, exc, extra={"target": key})
