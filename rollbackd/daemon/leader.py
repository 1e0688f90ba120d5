"""Leader election on a ``coordination.k8s.io/v1`` Lease: of several replicas, exactly one acts.

Every replica runs a :class:`LeaderElector`. The Lease names its holder (``spec.holderIdentity``)
and how long a holder's claim lasts without renewal (``spec.leaseDurationSeconds``). Every
``renew_period_s`` each replica reads the Lease:

- the holder renews it (``renewTime``), a ``PUT`` carrying the ``resourceVersion`` it just read;
- a standby waits while the Lease is held, and takes it over once the holder has not renewed it
  for the lease duration, or at once when it was released (empty holder) or does not exist yet;
- every write carries the ``resourceVersion`` read just before it, so of two replicas racing for
  an expired Lease the API server accepts exactly one write; the other gets 409 Conflict, reads
  the Lease again and finds the winner there.

**No clocks are compared across machines.** ``renewTime`` and ``acquireTime`` are written for
people (``kubectl get lease``); the decisions use each replica's own event-loop clock. A standby
measures a holder's silence from the moment *it* first saw the current version of the Lease, not
from the timestamp inside it.

**Safety: a replica stops acting before anyone else can start.** Let ``D`` be the lease duration
and ``R`` the renew period. The holder reads the time ``t0`` *before* sending the read that
precedes a successful renewal; the renewed version is written after ``t0``, so every standby
first sees it at some time after ``t0``, and cannot take over before ``t0 + D``. The holder
counts itself the leader only until ``t0 + D - R`` (:attr:`LeaderElector.is_leader` checks this
deadline on every call, and a timer announces the loss at that instant even when the renewing
task is stuck in a request). So the old leader stops at least ``R`` before a new one may start:
that margin absorbs the difference in clock rates between machines and the last steps of
decisions taken just before the deadline. If another holder ever shows up in the Lease, the
replica stops at once as well.

**Liveness.** A leader that dies or is cut off is replaced within ``D + R`` of its last renewal:
the standby first sees that renewal at most ``R`` after it was written (it reads every ``R``) and
takes over ``D`` later (it wakes up exactly at the expiry). A leader that shuts down cleanly
releases the Lease (empty holder, duration 1 s), and a standby takes over on its next read, within
``R``. With the defaults (``D`` = 10 s, ``R`` = 2 s) a new leader holds the Lease at most 12 s
after the old one was lost; the daemon acts on its next tick.

RBAC: ``get``, ``create`` and ``update`` on ``leases`` (``coordination.k8s.io``) in the Lease's
namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, Self

from rollbackd.aiotasks import stop_tasks
from rollbackd.kube import objects
from rollbackd.kube.client import KubeClient, Obj
from rollbackd.kube.errors import KubeConflict, KubeError, KubeNotFound, KubePermanent

logger = logging.getLogger(__name__)

#: Default lease duration: how long a leader's claim lasts without renewal, in seconds.
DEFAULT_LEASE_DURATION_S = 10.0
#: Default renew period: how often the leader renews and the standbys look, in seconds.
DEFAULT_RENEW_PERIOD_S = 2.0
#: Default name of the Lease.
DEFAULT_LEASE_NAME = "rollbackd"

#: ``listener(leading)``: called with ``True`` when this replica becomes the leader and with
#: ``False`` when it stops being one.
LeadershipListener = Callable[[bool], None]


class Leadership(Protocol):
    """What the daemon reads of a leader election: the Lease (:class:`LeaderElector`) or the
    store's advisory lock (:class:`~rollbackd.daemon.store_leader.StoreLeader`)."""

    @property
    def is_leader(self) -> bool:
        """Whether this process may act now."""
        ...


def _micro_time(when: datetime) -> str:
    """A ``MicroTime`` as the API server writes it: ``2024-05-01T12:00:00.000000Z``."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a replica needs from a Lease it read."""

    holder: str
    duration_s: float | None
    transitions: int
    version: str

    @classmethod
    def of(cls, lease: Obj) -> LeaseRecord:
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=holder if isinstance(holder, str) else "",
            duration_s=float(duration) if isinstance(duration, int | float) and duration > 0 else None,
            transitions=transitions if isinstance(transitions, int) and transitions >= 0 else 0,
            version=str(objects.metadata_of(lease).get("resourceVersion") or ""),
        )


@dataclass(frozen=True, slots=True)
class LeaderStatus:
    """A snapshot for the API and logs: who this replica is, whether it leads, who holds the Lease
    as far as it last saw (``""``: nobody), and the Lease's ``namespace/name``."""

    identity: str
    leader: bool
    holder: str
    lease: str


class LeaderElector:
    """Competes for the Lease ``namespace/name`` as ``identity`` and tells whether this replica
    leads.

    Keyword arguments:

    - ``kube``: an open :class:`~rollbackd.kube.KubeClient` (the caller owns it);
    - ``namespace``, ``name``: where the Lease is (created if missing);
    - ``identity``: this replica's name in the Lease, unique among the replicas (the pod name;
      hostname and process id outside Kubernetes);
    - ``lease_duration_s``: how long a claim lasts without renewal (written to the Lease rounded
      up to whole seconds, as the API stores it);
    - ``renew_period_s``: how often the leader renews and standbys look; at most a third of
      ``lease_duration_s`` so that a leader gets at least two attempts before it steps down;
    - ``release_on_exit``: hand the Lease over on a clean exit so that a standby takes over at
      once (``False`` leaves it to expire, like a crash would);
    - ``wall_clock``: the UTC time written into ``acquireTime``/``renewTime`` (for people only).

    ``async with elector:`` starts competing in a task of its own (``rollbackd:leader-election``)
    and returns at once; leaving the block stops that task and, if leading, releases the Lease.
    Read :attr:`is_leader`, await :meth:`wait_leader` / :meth:`wait_standby`, or register a
    listener with :meth:`add_listener` (for example to pick up the previous leader's unfinished
    work on becoming the leader).
    """

    def __init__(
        self,
        *,
        kube: KubeClient,
        namespace: str,
        identity: str,
        name: str = DEFAULT_LEASE_NAME,
        lease_duration_s: float = DEFAULT_LEASE_DURATION_S,
        renew_period_s: float = DEFAULT_RENEW_PERIOD_S,
        release_on_exit: bool = True,
        wall_clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        if not identity:
            raise ValueError("identity must not be empty")
        if not renew_period_s > 0:
            raise ValueError(f"renew_period_s must be positive, not {renew_period_s!r}")
        if lease_duration_s < 3 * renew_period_s:
            raise ValueError(
                f"lease_duration_s ({lease_duration_s:g}) must be at least 3 x renew_period_s "
                f"({renew_period_s:g}): a leader needs two renewal attempts before it steps down"
            )
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_duration_s = lease_duration_s
        self.renew_period_s = renew_period_s
        self.release_on_exit = release_on_exit
        self._wall_clock = wall_clock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[LeadershipListener] = []
        self._leading = False
        #: Loop time until which this replica may act (see the module docstring).
        self._valid_until = -math.inf
        self._deadline: asyncio.TimerHandle | None = None
        self._leader_event = asyncio.Event()
        self._standby_event = asyncio.Event()
        self._standby_event.set()
        #: The version of the Lease last seen and the loop time it was first seen.
        self._observed: LeaseRecord | None = None
        self._observed_at = -math.inf
        self._last_error: str | None = None

    # --- what the rest of the daemon reads -----------------------------------------------------

    @property
    def lease(self) -> str:
        """``namespace/name`` of the Lease."""
        return f"{self.namespace}/{self.name}"

    @property
    def is_leader(self) -> bool:
        """Whether this replica leads *now*: it holds the Lease and renewed it recently enough that
        nobody else can have taken it over."""
        if not self._leading or self._loop is None:
            return False
        return self._loop.time() < self._valid_until

    @property
    def holder(self) -> str:
        """The holder of the Lease as last read (``""``: nobody or not read yet)."""
        return self._observed.holder if self._observed is not None else ""

    def status(self) -> LeaderStatus:
        return LeaderStatus(
            identity=self.identity, leader=self.is_leader, holder=self.holder, lease=self.lease
        )

    async def wait_leader(self) -> None:
        """Return once this replica leads (at once if it does)."""
        await self._leader_event.wait()

    async def wait_standby(self) -> None:
        """Return once this replica does not lead (at once if it does not)."""
        await self._standby_event.wait()

    def add_listener(self, listener: LeadershipListener) -> None:
        """Call ``listener(True)`` on becoming the leader and ``listener(False)`` on losing it, from
        the event loop, right when it happens. Listeners must be quick and must not raise (errors
        are logged); asynchronous work belongs in a task of the listener's owner."""
        self._listeners.append(listener)

    def _log_fields(self) -> dict[str, object]:
        return {"lease": self.lease, "identity": self.identity}

    def remove_listener(self, listener: LeadershipListener) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("a LeaderElector can be entered only once at a time")
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="rollbackd:leader-election")
        logger.info(
            "competing for leadership",
            extra={
                "lease": self.lease,
                "identity": self.identity,
                "lease_duration_s": self.lease_duration_s,
                "renew_period_s": self.renew_period_s,
            },
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        await stop_tasks([task])
        was_leading = self.is_leader
        self._set_leading(False, why="shutting down")
        if was_leading and self.release_on_exit:
            await self._release()

    # --- the competition -----------------------------------------------------------------------

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        conflicted = False
        while True:
            started = loop.time()
            again_now = False
            try:
                async with asyncio.timeout(self._attempt_budget(started)):
                    await self._attempt(started)
                self._last_error = None
            except KubeConflict:
                # Someone wrote the Lease between our read and our write: read it again at once
                # (once; a run of conflicts waits for the next period like any failure).
                again_now = not conflicted
            except (KubeError, TimeoutError) as exc:
                self._failed(exc, started)
            conflicted = again_now
            if not again_now:
                await asyncio.sleep(max(0.0, self._next_attempt(started) - loop.time()))

    def _attempt_budget(self, started: float) -> float:
        """How long one read-and-write may take: while leading, until the deadline to step down
        (a renewal that arrives later is of no use); otherwise one lease duration."""
        if self.is_leader:
            return max(0.0, self._valid_until - started)
        return self.lease_duration_s

    def _next_attempt(self, started: float) -> float:
        """When to look again: one renew period after the last look; a standby wakes up exactly
        when the holder's claim runs out, if that comes first."""
        due = started + self.renew_period_s
        if not self._leading and self._observed is not None and self._observed.holder:
            expiry = self._observed_at + (self._observed.duration_s or self.lease_duration_s)
            if started < expiry < due:
                return expiry
        return due

    async def _attempt(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        try:
            lease = await objects.get_lease(self.kube, namespace=self.namespace, name=self.name)
        except KubeNotFound:
            lease = None
        if lease is None:
            created = await objects.create_lease(
                self.kube, namespace=self.namespace, lease=self._claim(None, acquiring=True)
            )
            self._renewed(started, created, acquired=True)
            return
        record = self._observe(lease, loop.time())
        if record.holder == self.identity:
            stored = await objects.replace_lease(
                self.kube,
                namespace=self.namespace,
                name=self.name,
                lease=self._claim(lease, acquiring=not self._leading),
            )
            self._renewed(started, stored, acquired=not self._leading)
            return
        if self._leading:
            self._set_leading(False, why=f"the Lease is now held by {record.holder!r}")
        if record.holder and loop.time() < self._observed_at + (record.duration_s or self.lease_duration_s):
            return  # held by another replica that renews it: stay a standby
        stored = await objects.replace_lease(
            self.kube, namespace=self.namespace, name=self.name, lease=self._claim(lease, acquiring=True)
        )
        self._renewed(started, stored, acquired=True)

    def _observe(self, lease: Obj, now: float) -> LeaseRecord:
        record = LeaseRecord.of(lease)
        if self._observed is None or record != self._observed:
            self._observed = record
            self._observed_at = now
        return record

    def _claim(self, lease: Obj | None, *, acquiring: bool) -> Obj:
        """The Lease with this replica as the holder, renewed now; ``lease`` is the version just
        read (its ``resourceVersion`` makes the write conditional), ``None`` to create it."""
        now = _micro_time(self._wall_clock())
        if lease is None:
            return {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": math.ceil(self.lease_duration_s),
                    "acquireTime": now,
                    "renewTime": now,
                    "leaseTransitions": 0,
                },
            }
        record = LeaseRecord.of(lease)
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        spec.update(
            holderIdentity=self.identity,
            leaseDurationSeconds=math.ceil(self.lease_duration_s),
            renewTime=now,
        )
        if acquiring or not spec.get("acquireTime"):
            spec["acquireTime"] = now
        if record.holder and record.holder != self.identity:
            spec["leaseTransitions"] = record.transitions + 1
        claimed = dict(lease)
        claimed["spec"] = spec
        return claimed

    def _renewed(self, started: float, stored: Obj, *, acquired: bool) -> None:
        """A write of ours went through: this replica may act until ``started + D - R``."""
        assert self._loop is not None
        self._observe(stored, self._loop.time())
        self._valid_until = started + self.lease_duration_s - self.renew_period_s
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._loop.call_at(self._valid_until, self._deadline_passed)
        if not self._leading:
            self._set_leading(True, why="acquired the Lease" if acquired else "renewed the Lease")

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self._leading and not self.is_leader:
            self._set_leading(
                False,
                why=f"no successful renewal for {self.lease_duration_s - self.renew_period_s:g}s; stepping "
                "down before the Lease can expire",
            )

    def _failed(self, exc: BaseException, started: float) -> None:
        message = f"{exc}" if isinstance(exc, KubeError) else "the Lease request timed out"
        if self.is_leader:
            logger.warning(
                "could not renew the Lease: %s",
                message,
                extra={
                    "lease": self.lease,
                    "identity": self.identity,
                    "leader_for_s": round(max(0.0, self._valid_until - started), 3),
                },
            )
        elif message != self._last_error:
            level = logging.ERROR if isinstance(exc, KubePermanent) else logging.WARNING
            logger.log(
                level,
                "could not read or claim the Lease: %s",
                message,
                extra={"lease": self.lease, "identity": self.identity},
            )
        self._last_error = message

    def _set_leading(self, leading: bool, *, why: str) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            self._standby_event.clear()
            self._leader_event.set()
            logger.warning("became the leader: %s", why, extra=self._log_fields())
        else:
            self._valid_until = -math.inf
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._leader_event.clear()
            self._standby_event.set()
            logger.warning("stopped leading: %s", why, extra=self._log_fields())
        for listener in list(self._listeners):
            try:
                listener(leading)
            except Exception:
                logger.exception("a leadership listener failed", extra={"lease": self.lease})

    async def _release(self) -> None:
        """Hand the Lease over: empty holder, 1 s duration, so that a standby takes it at once. Only
        if this replica still holds it; a failure just leaves the Lease to expire."""
        try:
            async with asyncio.timeout(self.renew_period_s):
                lease = await objects.get_lease(self.kube, namespace=self.namespace, name=self.name)
                if LeaseRecord.of(lease).holder != self.identity:
                    return
                now = _micro_time(self._wall_clock())
                spec = dict(lease.get("spec") or {})
                spec.update(holderIdentity="", leaseDurationSeconds=1, renewTime=now, acquireTime=now)
                await objects.replace_lease(
                    self.kube, namespace=self.namespace, name=self.name, lease={**lease, "spec": spec}
                )
        except (KubeError, TimeoutError) as exc:
            logger.warning(
                "could not release the Lease; it expires on its own: %s",
                exc,
                extra={"lease": self.lease, "identity": self.identity},
            )
            return
        logger.info("released the Lease", extra={"lease": self.lease, "identity": self.identity})
