"""The switches in a ConfigMap every replica watches (``safety.switches: kubernetes``, or ``auto``
with an SQLite store and leader election).

With SQLite each replica has its own file, so switches kept there reach only the replica that
received them; the ConfigMap ``safety.switches_configmap`` (default ``<lease name>-switches``, in
the Lease's namespace) is what every replica reads.

**Why a ConfigMap and not the Lease's annotations.** The leader writes the Lease every
``renew_period_s`` with a ``resourceVersion`` precondition: switch writes there would conflict
with the renewals (a renewal lost to a conflict brings the leader closer to stepping down), and
every renewal would wake every replica watching for switches. A ConfigMap changes only when an
operator writes a switch, and its RBAC can be limited to that one name.

**Keys and values.** One key per switch: ``freeze``, ``dry-run``, ``hold.<namespace>.<name>``,
``accept.<namespace>.<name>``, ``rollback.<namespace>.<name>`` (a ConfigMap key allows only
``[-._a-zA-Z0-9]``; a namespace has no dot, so the first dot after the kind ends it). The value is
the switch's small JSON document: ``on``, who (``by``), why (``reason``), when (``at``) and a
hold's end (``until``), UTC. The announced releases are kept beside them
(``release.<namespace>.<name>``, see :mod:`rollbackd.daemon.releasemap`).

**Writes** read the ConfigMap, change one key and replace it carrying the ``resourceVersion``
just read: a 409 (another replica wrote in between) reads it again and retries
(:func:`~rollbackd.kube.retry.retrying`). A missing ConfigMap is created (a 409 ``AlreadyExists``:
another replica created it first, read and retry). A write returns once the API server stored it,
so the leader sees it.

**Reads** are one ``get`` for every key; a missing ConfigMap holds no switch.

**Watching**: :meth:`ConfigMapSwitches.watch` gets the ConfigMap, watches it from that
``resourceVersion`` (a field selector on its name) and calls ``changed()`` on every event, so the
switch board reads the switches at once; when the stream ends or breaks (an error, a ``410 Gone``)
it gets and watches again, after a backoff when it failed. The board's poll every
``safety.switches_poll_s`` stays as the fallback.

RBAC: ``get``, ``update`` and ``watch`` on ``configmaps`` limited by ``resourceNames`` to that
name, in the Lease's namespace; ``create`` only when the ConfigMap does not exist yet (the Helm
chart creates it, since ``create`` cannot be limited to a name).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rollbackd.backoff import Backoff
from rollbackd.daemon.switchstores import SwitchStoreError
from rollbackd.kube import objects
from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import KubeError, KubeNotFound
from rollbackd.kube.retry import DEFAULT_BACKOFF, retrying
from rollbackd.kube.watch import watch_configmap

logger = logging.getLogger(__name__)

#: How long one watch request lasts before the API server ends it (then get and watch again).
WATCH_TIMEOUT_S = 300.0

#: A watch stream shorter than this that ended without an error counts as a failure (backoff).
MIN_STREAM_S = 1.0

#: Pauses before watching again after a failure: 0.5 s, 1 s, ... up to 30 s, jittered.
WATCH_BACKOFF = Backoff(initial_s=0.5, max_s=30.0)

#: Attempts of one write (conflicts and temporary errors retried).
WRITE_ATTEMPTS = 6

#: The label the ConfigMap rollbackd creates carries.
MANAGED_BY = {"app.kubernetes.io/managed-by": "rollbackd", "app.kubernetes.io/component": "switches"}


def default_name(lease_name: str) -> str:
    """The ConfigMap's name when ``safety.switches_configmap`` is not set."""
    return f"{lease_name}-switches"


def configmap_key(key: str) -> str:
    """The ConfigMap key of switch ``key``: ``switch:hold:shop/web`` -> ``hold.shop.web``."""
    return key.removeprefix("switch:").replace(":", ".").replace("/", ".")


class ConfigMapSwitches:
    """The switches in ConfigMap ``namespace/name``, through ``kube`` (open; the caller owns it)."""

    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        name: str,
        write_attempts: int = WRITE_ATTEMPTS,
        write_backoff: Backoff = DEFAULT_BACKOFF,
        watch_backoff: Backoff = WATCH_BACKOFF,
        watch_timeout_s: float = WATCH_TIMEOUT_S,
    ) -> None:
        self._kube = kube
        self.namespace = namespace
        self.name = name
        self.where = f"the ConfigMap {namespace}/{name}"
        self._write_attempts = write_attempts
        self._write_backoff = write_backoff
        self._watch_backoff = watch_backoff
        self._watch_timeout_s = watch_timeout_s
        #: Why the watch does not work now (``None``: it does), said once per problem.
        self._watch_problem: str | None = None

    # --- writes and reads ----------------------------------------------------------------------

    async def put(self, key: str, value: Mapping[str, Any] | None) -> None:
        text = None if value is None else json.dumps(dict(value), sort_keys=True, separators=(",", ":"))
        await self.update(configmap_key(key), lambda _: text)

    async def update(self, entry: str, change: Callable[[str | None], str | None]) -> None:
        """Set ConfigMap key ``entry`` to ``change(its value now)`` (``None``: absent, or removed),
        written only when that differs, carrying the ``resourceVersion`` read: after a 409 the
        ConfigMap is read again and ``change`` called again on what another replica wrote.
        :class:`SwitchStoreError` when it could not be written."""

        async def write() -> None:
            current = await self._read()
            data: dict[str, Any] = dict((current or {}).get("data") or {})
            now = data.get(entry)
            text = change(None if now is None else str(now))
            if text == now:
                return  # nothing to change: nothing to write
            if text is None:
                del data[entry]
            else:
                data[entry] = text
            if current is None:
                await objects.create_configmap(self._kube, namespace=self.namespace, configmap={
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": self.name, "namespace": self.namespace, "labels": dict(MANAGED_BY)},
                    "data": data,
                })
                logger.info("created %s to keep the switches in", self.where)
                return
            replaced = dict(current)  # its metadata.resourceVersion makes the write conditional
            replaced["data"] = data
            await objects.replace_configmap(self._kube, namespace=self.namespace, name=self.name,
                                            configmap=replaced)

        try:
            await retrying(write, attempts=self._write_attempts, backoff=self._write_backoff)
        except KubeError as exc:
            raise SwitchStoreError(f"could not write {self.where}: {exc}") from exc

    async def get(self, keys: Sequence[str]) -> dict[str, Mapping[str, Any] | None]:
        data = await self.data()
        return {key: _decoded(data.get(configmap_key(key))) for key in keys}

    async def data(self) -> dict[str, str]:
        """Every key of the ConfigMap and its text (none when it does not exist).
        :class:`SwitchStoreError` when it could not be read."""
        try:
            current = await self._read()
        except KubeError as exc:
            raise SwitchStoreError(f"could not read {self.where}: {exc}") from exc
        return {str(key): str(value) for key, value in ((current or {}).get("data") or {}).items()}

    async def _read(self) -> Obj | None:
        try:
            return await objects.get_configmap(self._kube, namespace=self.namespace, name=self.name)
        except KubeNotFound:
            return None

    # --- watching ------------------------------------------------------------------------------

    async def watch(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` at every change of the ConfigMap (and after every fresh read of it,
        for what changed while nobody watched), until cancelled."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            try:
                current = await self._read()
                version = objects.metadata_of(current).get("resourceVersion") if current else None
                self._recovered()
                changed()
                started = loop.time()
                async for event in watch_configmap(
                    self._kube, namespace=self.namespace, name=self.name,
                    resource_version=version if isinstance(version, str) else None,
                    timeout_s=self._watch_timeout_s,
                ):
                    if event.get("type") != "BOOKMARK":
                        changed()
                if loop.time() - started >= MIN_STREAM_S:
                    failures = 0
                    continue  # the server ended the stream: read and watch again
            except KubeError as exc:
                self._failed(str(exc))
            except Exception as exc:  # a defect must not end the watching (nor the daemon): the poll goes on
                logger.exception("watching %s failed", self.where)
                self._failed(f"unexpected failure: {exc!r}")
            await asyncio.sleep(self._watch_backoff.delay(failures))
            failures += 1

    def _failed(self, why: str) -> None:
        if why != self._watch_problem:
            logger.warning("cannot watch %s (%s): the switches are read every safety.switches_poll_s "
                           "meanwhile; watching again", self.where, why)
        self._watch_problem = why

    def _recovered(self) -> None:
        if self._watch_problem is not None:
            logger.warning("watching %s again", self.where)
        self._watch_problem = None


def _decoded(text: object) -> Mapping[str, Any] | None:
    """A key's JSON document (``{}``, which the board reports as unreadable, when it is not one)."""
    if text is None:
        return None
    try:
        document = json.loads(str(text))
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}


def listed(text: str | None, *, key: str, what: str) -> list[Any]:
    """The JSON list a key's text holds (``[]`` when absent); a text that is not one is logged
    (``what`` it should list) and read as empty."""
    if text is None:
        return []
    try:
        documents = json.loads(text)
    except ValueError:
        documents = None
    if not isinstance(documents, list):
        logger.error("the ConfigMap key %s is not a list of %s; its %s are ignored", key, what, what)
        return []
    return documents
