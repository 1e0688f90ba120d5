"""Opt-in by annotation, the watching half: the Deployments of the namespaces that may opt in are
listed and watched (never polled), and every change of their ``rollbackd.io/`` annotations is
handed to the daemon at once as the targets they declare (:mod:`rollbackd.optin` reads them).

:class:`Discovery` is an async context manager owning one task per watched scope (a namespace of
``discovery.namespaces``, or every namespace with ``discovery.all_namespaces``), named
``rollbackd:discovery:<namespace>``, and one that writes the Kubernetes Events
(``rollbackd:discovery-events``). A scope's task lists the Deployments, hands the daemon what they
declare, then watches from the list's ``resourceVersion``; when the stream ends (the API server's
timeout) or breaks (a dropped connection, a 5xx, a 403 because RBAC does not allow it) it lists
again, after a backoff with jitter when something failed. A failure is logged once per change of
state (and shown on the status page); it never stops the daemon or the other scopes.

A Deployment whose annotations cannot be used gets a Warning Event (``InvalidOptIn``) naming the
annotation and the fix, once per distinct problem; the daemon shows the same line on the status
page. A Deployment that was a target and whose annotations became unusable is no longer watched as
a target until they are fixed: nothing is judged on settings its owners did not mean.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Self

from rollbackd.aiotasks import stop_tasks
from rollbackd.backoff import Backoff
from rollbackd.config.settings import Settings
from rollbackd.kube import objects
from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import KubeError
from rollbackd.kube.watch import list_deployments, watch_deployments
from rollbackd.optin import PREFIX, ObjectRef, OptIn, read_opt_in

logger = logging.getLogger(__name__)

#: A watch that ends sooner than this after it started counts as a failure for the backoff (an API
#: server, or a proxy, that closes every stream at once must not be asked again in a tight loop).
MIN_STREAM_S = 1.0

#: Most Kubernetes Events waiting to be written; more are dropped (and logged).
MAX_PENDING_EVENTS = 1000


@dataclass(frozen=True, slots=True)
class DiscoveryReport:
    """What the watched Deployments declare now: one :class:`~rollbackd.optin.OptIn` per annotated
    Deployment (in object order), and the scopes whose watch is failing, with why."""

    opt_ins: tuple[OptIn, ...] = ()
    watch_problems: tuple[str, ...] = ()


def _scope(namespace: str | None) -> str:
    return "every namespace" if namespace is None else f"namespace {namespace}"


def _ours(obj: Mapping[str, Any]) -> dict[str, str]:
    """The object's ``rollbackd.io/`` annotations."""
    return {key: value for key, value in objects.annotations_of(obj).items() if key.startswith(PREFIX)}


class Discovery:
    """Watches Deployments for opt-in annotations and reports what they declare.

    Keyword arguments:

    - ``kube``: the open Kubernetes client;
    - ``settings``: returns the file's settings now (``discovery`` says where to watch; the
      defaults and caps check what annotations ask for);
    - ``report``: told every change (:meth:`~rollbackd.daemon.app.Daemon.apply_discovery`);
    - ``leading``: whether this replica writes the Kubernetes Events (the leader does);
    - ``backoff``: pauses before watching again after a failure (default: from the settings).
    """

    def __init__(
        self,
        *,
        kube: KubeClient,
        settings: Callable[[], Settings],
        report: Callable[[DiscoveryReport], object],
        leading: Callable[[], bool] = lambda: True,
        backoff: Backoff | None = None,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._report = report
        self._leading = leading
        discovery = settings().discovery
        self._backoff = backoff or Backoff(
            initial_s=discovery.backoff_initial_s, max_s=discovery.backoff_max_s
        )
        #: The Deployments carrying rollbackd.io/ annotations: those annotations, and the object.
        self._annotated: dict[ObjectRef, tuple[dict[str, str], Obj]] = {}
        #: Why each failing scope's watch fails.
        self._failing: dict[str | None, str] = {}
        #: The problems last written as an Event for each object.
        self._told: dict[ObjectRef, tuple[str, ...]] = {}
        self._events: asyncio.Queue[tuple[Obj, str]] = asyncio.Queue(MAX_PENDING_EVENTS)
        self._tasks: list[asyncio.Task[None]] = []
        #: Completed lists (every scope's first one, then one per reconnection).
        self.lists = 0

    @property
    def scopes(self) -> tuple[str | None, ...]:
        """What is watched: each allowed namespace, or ``None`` (every namespace)."""
        discovery = self._settings().discovery
        return (None,) if discovery.all_namespaces else tuple(dict.fromkeys(discovery.namespaces))

    async def __aenter__(self) -> Self:
        if self._tasks:
            raise RuntimeError("a Discovery can be entered only once at a time")
        for namespace in self.scopes:
            name = f"rollbackd:discovery:{namespace or '*'}"
            self._tasks.append(asyncio.create_task(self._watch(namespace), name=name))
        self._tasks.append(asyncio.create_task(self._write_events(), name="rollbackd:discovery-events"))
        logger.info(
            "watching Deployments for opt-in annotations",
            extra={"namespaces": [namespace or "*" for namespace in self.scopes]},
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        tasks, self._tasks = self._tasks, []
        await stop_tasks(tasks, failures="drop")

    def refresh(self) -> None:
        """Read every annotated Deployment again (the file changed: defaults, caps, its own
        targets) and report."""
        self._changed()

    # --- watching --------------------------------------------------------------------------------

    async def _watch(self, namespace: str | None) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        timeout_s = self._settings().discovery.watch_timeout_s
        while True:
            try:
                listed = await list_deployments(self._kube, namespace=namespace)
                self.lists += 1
                self._relisted(namespace, listed.items)
                self._recovered(namespace)
                started = loop.time()
                async for event in watch_deployments(
                    self._kube, namespace=namespace, resource_version=listed.resource_version,
                    timeout_s=timeout_s,
                ):
                    self._take(event)
                if loop.time() - started >= MIN_STREAM_S:
                    failures = 0
                    continue  # the server ended the stream: list again and watch on
                logger.debug("the watch ended at once; listing again after a pause",
                             extra={"namespace": namespace or "*"})
            except KubeError as exc:
                self._failed(namespace, str(exc))
            except Exception as exc:  # a defect must not end the watching (nor the daemon)
                logger.exception("watching Deployments failed", extra={"namespace": namespace or "*"})
                self._failed(namespace, f"unexpected failure: {exc!r}")
            await asyncio.sleep(self._backoff.delay(failures))
            failures += 1

    def _failed(self, namespace: str | None, why: str) -> None:
        problem = f"cannot watch the Deployments of {_scope(namespace)}: {why}; retrying"
        if self._failing.get(namespace) == problem:
            return
        self._failing[namespace] = problem
        logger.warning(
            "opt-in by annotation: %s (annotated targets found so far stay)", problem,
            extra={"namespace": namespace or "*"},
        )
        self._changed()

    def _recovered(self, namespace: str | None) -> None:
        if self._failing.pop(namespace, None) is not None:
            logger.warning("opt-in by annotation: watching the Deployments of %s again", _scope(namespace),
                           extra={"namespace": namespace or "*"})
            self._changed()

    def _relisted(self, namespace: str | None, items: tuple[Obj, ...]) -> None:
        """A fresh list of a scope: what it holds replaces what was known of that scope (objects
        deleted or stripped of their annotations while nobody watched are dropped)."""
        before = {ref: ours for ref, (ours, _) in self._annotated.items()}
        for ref in [ref for ref in self._annotated if namespace is None or ref.namespace == namespace]:
            del self._annotated[ref]
        for obj in items:
            self._keep(obj)
        after = {ref: ours for ref, (ours, _) in self._annotated.items()}
        if after != before:
            self._changed()

    def _take(self, event: Mapping[str, Any]) -> None:
        """One watch event; the daemon hears of it only when ``rollbackd.io/`` annotations
        changed (a Deployment's status changes far more often)."""
        kind, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict) or kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        ref = _ref(obj)
        if ref is None:
            return
        before = self._annotated.get(ref, ({}, {}))[0]
        if kind == "DELETED":
            self._annotated.pop(ref, None)
        else:
            self._annotated.pop(ref, None)
            self._keep(obj)
        if self._annotated.get(ref, ({}, {}))[0] != before:
            self._changed()

    def _keep(self, obj: Obj) -> None:
        ref = _ref(obj)
        ours = _ours(obj)
        if ref is not None and ours:
            self._annotated[ref] = (ours, obj)

    # --- reporting -------------------------------------------------------------------------------

    def _changed(self) -> None:
        """Read what the annotated Deployments declare and tell the daemon; a new problem of an
        object becomes a Kubernetes Event on it."""
        settings = self._settings()
        opt_ins = []
        for ref in sorted(self._annotated):
            ours, obj = self._annotated[ref]
            opt_in = read_opt_in(ref, ours, settings=settings)
            if opt_in is None:
                continue
            opt_ins.append(opt_in)
            if opt_in.problems and self._told.get(ref) != opt_in.problems:
                self._tell(obj, opt_in)
            self._told[ref] = opt_in.problems
        for ref in self._told.keys() - {opt_in.ref for opt_in in opt_ins}:
            del self._told[ref]
        report = DiscoveryReport(
            opt_ins=tuple(opt_ins),
            watch_problems=tuple(self._failing[key] for key in sorted(self._failing, key=lambda k: k or "")),
        )
        self._report(report)

    def _tell(self, obj: Obj, opt_in: OptIn) -> None:
        problems = "; ".join(opt_in.problems)
        refused = opt_in.target is None
        logger.warning(
            "opt-in by annotation: %s: %s%s", opt_in.ref, problems,
            " (not watched until fixed)" if refused else "",
            extra={"object": str(opt_in.ref), "problems": list(opt_in.problems)},
        )
        if not self._leading():
            return
        note = f"rollbackd cannot use this {opt_in.ref.kind}'s annotations: {problems}"
        if refused:
            note += " — the release is not watched until they are fixed"
        try:
            self._events.put_nowait((obj, note))
        except asyncio.QueueFull:
            logger.error("too many Kubernetes Events waiting; this one is dropped",
                         extra={"object": str(opt_in.ref)})

    async def _write_events(self) -> None:
        while True:
            obj, note = await self._events.get()
            regarding = {"apiVersion": "apps/v1", "kind": "Deployment", **obj}
            event = objects.new_event(
                regarding=regarding, reason="InvalidOptIn", note=note, action="OptIn", type="Warning"
            )
            namespace = str(objects.metadata_of(obj).get("namespace") or "default")
            try:
                await objects.create_event(self._kube, namespace=namespace, event=event)
            except KubeError as exc:
                logger.warning("could not write the Kubernetes Event about an opt-in: %s", exc,
                               extra={"namespace": namespace})


def _ref(obj: Mapping[str, Any]) -> ObjectRef | None:
    metadata = objects.metadata_of(obj)
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str):
        return None
    return ObjectRef("Deployment", namespace, name)
