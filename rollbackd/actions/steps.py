"""What every Kubernetes rollback action does the same way: timed API calls, recorded changes,
bounded waits, and errors turned into results.

An action plans from the objects as they are now: a list of :class:`Step` values, each one planned
:class:`~rollbackd.actions.base.Change` plus the coroutine that applies it. The coroutine re-reads
its object and re-decides (so a conflict, a retry or a second run never applies a change twice),
then returns the changes it actually made (none when the object is already as wanted).

One :class:`ActionRun` carries out one run of one action:

- :meth:`ActionRun.call` and :meth:`ActionRun.apply` send requests through
  :func:`~rollbackd.kube.retry.retrying` (409: re-read and re-apply; 5xx, 429, timeouts: backoff)
  and add their time, backoff pauses included, to ``api_s``; with a
  :class:`~rollbackd.actions.base.ChangeRecorder`, :meth:`ActionRun.apply` writes a step's
  changes down before it sends anything (a step that cannot be written down is not applied:
  :class:`NotRecorded`), and what the step really changed afterwards;
- :meth:`ActionRun.wait_until` polls a condition until it holds, bounded by the run's
  availability budget on the event-loop clock, and adds its time to ``wait_s``; it logs when it
  starts (what it waits for) and ends (how long it took), and tells the run's ``progress``;
- :meth:`ActionRun.guarded` turns what may go wrong into a result: :class:`Refusal` (nothing
  changed yet: ``refused``), :class:`WaitTimeout`, :class:`NotRecorded`, :class:`ActionFailed` and every
  :class:`~rollbackd.kube.errors.KubeError` (``failed``, listing what was changed before).
  Cancellation is never swallowed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from rollbackd.actions.base import ActionOutcome, ActionResult, Change, ChangeRecorder, Progress, Waiting
from rollbackd.backoff import Backoff
from rollbackd.config.settings import KubernetesSettings
from rollbackd.kube import (
    KubeClient,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeTemporary,
    Obj,
    objects,
    retrying,
)
from rollbackd.kube.retry import DEFAULT_BACKOFF

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ActionSettings:
    """How an action talks to the API and how long it waits.

    - ``backoff``: pauses between attempts of one request;
    - ``attempts``: how many times one request is sent at most (the first included);
    - ``availability_timeout_s``: how long one run may wait, in all, for the version it rolls back
      to to be available / serving;
    - ``poll_s``: pause between two looks while waiting.

    Derive variants with :func:`dataclasses.replace`.
    """

    backoff: Backoff = DEFAULT_BACKOFF
    attempts: int = 5
    availability_timeout_s: float = 300.0
    poll_s: float = 1.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if not self.availability_timeout_s > 0:
            raise ValueError(f"availability_timeout_s must be positive, not {self.availability_timeout_s}")
        if not self.poll_s > 0:
            raise ValueError(f"poll_s must be positive, not {self.poll_s}")

    @classmethod
    def from_kubernetes(cls, kubernetes: KubernetesSettings, **overrides: Any) -> ActionSettings:
        """The values of the configuration's ``kubernetes`` section (``retries`` retries after the
        first attempt, ``availability_timeout_s``); ``overrides`` replace any field."""
        base = cls(attempts=kubernetes.retries + 1, availability_timeout_s=kubernetes.availability_timeout_s)
        return dataclasses.replace(base, **overrides)


class Refusal(Exception):
    """The action cannot be done safely from the objects as they are (nothing to go back to, a
    required object missing, a selector that would also pick the bad version ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotRecorded(Exception):
    """A step's changes could not be written down before they were made: the step is not applied
    (nothing may be changed that a process taking the rollback over would not know of)."""


class ActionFailed(Exception):
    """What the action wrote was refused where it takes effect (e.g. a Gateway does not accept the
    route as patched): the run fails with ``reason``, listing what it changed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class WaitTimeout(Exception):
    """A condition did not come true within the run's availability budget (or never will: a
    rollout past its progress deadline)."""


#: The settings an action uses unless told otherwise.
DEFAULT_SETTINGS = ActionSettings()

#: Applies one step: re-reads its object, changes it if still needed, returns what it changed.
Apply = Callable[[], Awaitable[Sequence[Change]]]


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a plan: the changes it is expected to make (what dry-run shows) and how to
    make them (``apply``, which re-reads and re-decides, so it is safe to run again)."""

    changes: tuple[Change, ...]
    apply: Apply


def object_name(kind: str, namespace: str, name: str) -> str:
    """``Deployment/shop/web``: how a :class:`~rollbackd.actions.base.Change` names its object."""
    return f"{kind}/{namespace}/{name}"


@dataclass(kw_only=True, eq=False)
class ActionRun:
    """One run of one action: its requests (retried, timed), its changes, its waits.

    Created at the start of :meth:`run`; ``action`` and ``target`` name the result; ``settings``
    bound the retries and the waits; ``recorder`` (optional) hears of every step's changes before
    and after it is applied; ``progress`` (optional) is told when a wait starts and ends. Time is
    read from the running event loop.
    """

    kube: KubeClient
    action: str
    target: str
    settings: ActionSettings
    recorder: ChangeRecorder | None = None
    progress: Progress | None = None
    #: What the run changed so far, and the time it spent in API requests and in waits.
    changes: list[Change] = dataclasses.field(default_factory=list, init=False)
    api_s: float = dataclasses.field(default=0.0, init=False)
    wait_s: float = dataclasses.field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._wait_budget_s = self.settings.availability_timeout_s
        self._loop = asyncio.get_running_loop()

    # -- requests --

    def _on_retry(self, error: KubeError, attempt: int, delay: float) -> None:
        logger.info(
            "%s: %s; retrying in %.2fs (attempt %d)", self.action, error, delay, attempt,
            extra={"target": self.target, "action": self.action},
        )

    async def call(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` (reads, or a write whose result the caller records itself) with retries;
        its time counts as API time."""
        started = self._loop.time()
        try:
            return await retrying(op, backoff=self.settings.backoff, attempts=self.settings.attempts,
                                  on_retry=self._on_retry)
        finally:
            self.api_s += self._loop.time() - started

    async def required(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """Like :meth:`call`, for an object the action cannot do without: a 404 becomes a
        :class:`Refusal` naming ``what`` (e.g. ``the stable Deployment shop/web``)."""
        try:
            return await self.call(op)
        except KubeNotFound as exc:
            raise Refusal(f"{what} does not exist ({exc})") from exc

    async def optional(self, op: Callable[[], Awaitable[T]]) -> T | None:
        """Like :meth:`call`; ``None`` when the object does not exist."""
        try:
            return await self.call(op)
        except KubeNotFound:
            return None

    async def apply(self, step: Step) -> None:
        """Apply one step (retried, timed as API time) and record the changes it made.

        A write the server applied but whose answer was lost (a timeout) is found done by the
        retry's re-read, and so is not listed: the list never shows a change twice, at the price
        of missing one in that rare case (the object's state is right either way; the recorder
        has it as intended).

        With a recorder, the step's planned changes are written down first; when they cannot be,
        :class:`NotRecorded` is raised and nothing is sent. Once applied, the recorder learns what
        the step really changed."""
        if self.recorder is not None and not await self.recorder.intend(step.changes):
            raise NotRecorded(
                "could not record the next change before making it, so it was not made: "
                + "; ".join(c.describe() for c in step.changes)
            )
        made = await self.call(step.apply)
        for change in made:
            logger.info("%s: %s", self.action, change.describe(),
                        extra={"target": self.target, "action": self.action})
        self.changes.extend(made)
        if self.recorder is not None:
            await self.recorder.made(step.changes, made)

    # -- waiting --

    async def wait_until(self, what: str, check: Callable[[], Awaitable[bool]]) -> None:
        """Poll ``check`` every ``poll_s`` until it returns true.

        The run's waits share one budget of ``availability_timeout_s`` (each gets at least one
        look, bounded by ``poll_s``); when it is spent,
        :class:`WaitTimeout` names ``what`` was awaited. A temporary API error during a look counts
        as "not yet"; any other API error ends the wait. The time counts as waiting time, the
        reads inside included.

        A wait that takes longer than the first look is logged when it starts (what it waits for)
        and when it ends (how long it took), and told to :attr:`progress` (a
        :class:`~rollbackd.actions.base.Waiting`, then ``None``).
        """
        started = self._loop.time()
        deadline = started + max(self._wait_budget_s, self.settings.poll_s)  # always one look at least
        extra = {"target": self.target, "action": self.action, "waiting_for": what}
        announced = False
        outcome = "ended"
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    try:
                        if await check():
                            return
                    except KubeTemporary as exc:
                        logger.info("%s: while waiting for %s: %s", self.action, what, exc, extra=extra)
                    if not announced:
                        announced = True
                        logger.info("%s: waiting for %s (at most %.0fs)", self.action, what,
                                    max(0.0, deadline - started), extra=extra)
                        self._tell(Waiting(what=what, since=started))
                    await asyncio.sleep(self.settings.poll_s)
        except TimeoutError:
            outcome = "timed out"
            raise WaitTimeout(
                f"{what} did not happen within the availability timeout of "
                f"{self.settings.availability_timeout_s:g}s"
            ) from None
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            spent = self._loop.time() - started
            self.wait_s += spent
            self._wait_budget_s = max(0.0, self._wait_budget_s - spent)
            if announced:
                logger.info("%s: waiting for %s %s after %.1fs", self.action, what,
                            "done" if outcome == "ended" else outcome, spent,
                            extra={**extra, "waited_s": round(spent, 3), "wait_outcome": outcome})
                self._tell(None)

    def _tell(self, waiting: Waiting | None) -> None:
        if self.progress is None:
            return
        try:
            self.progress(waiting)
        except Exception:  # telling about it must never stop the action
            logger.exception("could not report an action's wait", extra={"target": self.target})

    # -- results --

    def result(self, outcome: ActionOutcome, reason: str, **fields: Any) -> ActionResult:
        """The result of this run: ``changes`` default to those made, timings are the run's."""
        fields.setdefault("changes", tuple(self.changes))
        return ActionResult(action=self.action, target=self.target, outcome=outcome, reason=reason,
                            api_s=self.api_s, wait_s=self.wait_s, **fields)

    def failed(self, reason: str, **fields: Any) -> ActionResult:
        """``failed``, saying what was changed before it went wrong."""
        if self.changes:
            reason += f" (changed before the failure: {'; '.join(c.describe() for c in self.changes)})"
        else:
            reason += " (nothing was changed)"
        return self.result(ActionOutcome.FAILED, reason, **fields)

    async def guarded(
        self, body: Callable[[], Awaitable[ActionResult]], fields: Mapping[str, Any] | None = None
    ) -> ActionResult:
        """Run the action's ``body`` and turn refusals, timeouts and API errors into results.
        ``fields`` (e.g. the revisions, which ``body`` may fill in as it learns them) are read when
        such a result is made and added to it. Never raises for API errors."""
        try:
            return await body()
        except Refusal as exc:
            if self.changes:  # refused part-way: something did change, so this is a failure
                return self.failed(exc.reason, **(fields or {}))
            return self.result(ActionOutcome.REFUSED, exc.reason, **(fields or {}))
        except (WaitTimeout, NotRecorded, ActionFailed) as exc:
            return self.failed(str(exc), **(fields or {}))
        except KubeForbidden as exc:  # its message names the verb, resource, namespace and rule
            return self.failed(str(exc), **(fields or {}))
        except KubeTemporary as exc:
            return self.failed(
                f"the Kubernetes API kept failing after {self.settings.attempts} attempts: {exc}",
                **(fields or {}),
            )
        except KubeError as exc:
            return self.failed(str(exc), **(fields or {}))


@dataclass(frozen=True, kw_only=True, eq=False)
class KubeAction:
    """What the actions share, and :meth:`run`, which opens an :class:`ActionRun` and guards the
    action's own steps (``_run``).

    Each action is a keyword-only frozen dataclass of its objects' names on top of these fields:

    - ``kube``: an open client;
    - ``target``: the rollbackd target's key (``namespace/name``), for the result;
    - ``namespace``: where the objects live;
    - ``settings``: retries and the availability timeout.
    """

    name: ClassVar[str]

    kube: KubeClient
    target: str
    namespace: str
    settings: ActionSettings = DEFAULT_SETTINGS

    def _named(self, kind: str, name: str) -> str:
        """How a :class:`~rollbackd.actions.base.Change` names this action's object ``kind/name``."""
        return object_name(kind, self.namespace, name)

    async def run(
        self, *, dry_run: bool, recorder: ChangeRecorder | None = None, progress: Progress | None = None
    ) -> ActionResult:
        """Plan, then (unless ``dry_run``) apply the steps (each recorded with ``recorder`` first),
        waiting where the action says (see :class:`~rollbackd.actions.base.RollbackAction`)."""
        run = ActionRun(kube=self.kube, action=self.name, target=self.target, settings=self.settings,
                        recorder=recorder, progress=progress)
        fields = self._fields()
        return await run.guarded(lambda: self._run(run, fields, dry_run=dry_run), fields)

    async def _deployment(self, name: str) -> Obj:
        """The Deployment ``name`` in the action's namespace, as it is now."""
        return await objects.get_deployment(self.kube, namespace=self.namespace, name=name)

    async def _deployment_or_none(self, name: str) -> Obj | None:
        """The Deployment ``name`` as it is now, ``None`` when it does not exist."""
        try:
            return await self._deployment(name)
        except KubeNotFound:
            return None

    async def _scale_to_zero(
        self, deployment: str, change_of: Callable[[Obj | None], Change | None]
    ) -> Sequence[Change]:
        """Scale ``deployment`` to 0 when ``change_of`` (given it as read now, ``None`` if it is
        gone) says there is still a change to make; the change made, if any."""
        change = change_of(await self._deployment_or_none(deployment))
        if change is None:
            return ()
        await objects.scale_deployment(self.kube, namespace=self.namespace, name=deployment, replicas=0)
        return (change,)

    def _fields(self) -> dict[str, Any]:
        """The fields every result of one run carries (its steps may fill them in as they learn them)."""
        return {}

    async def _run(self, run: ActionRun, fields: dict[str, Any], *, dry_run: bool) -> ActionResult:
        raise NotImplementedError


# --- small pure helpers on objects ---------------------------------------------------------------

#: The ``Progressing`` condition's reason once a rollout stopped making progress.
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


def progress_deadline_exceeded(deployment: Mapping[str, Any]) -> bool:
    """Whether the deployment controller gave up on the current rollout (its
    ``progressDeadlineSeconds`` passed without progress). A status that has not yet observed the
    latest generation speaks of an earlier rollout (often the bad one): it does not count."""
    status = deployment.get("status") or {}
    observed = status.get("observedGeneration")
    generation = (deployment.get("metadata") or {}).get("generation")
    if observed is None or generation is None or int(observed) < int(generation):
        return False
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and condition.get("reason") == PROGRESS_DEADLINE_EXCEEDED:
            return True
    return False


def merge_diff(current: Any, wanted: Any) -> Any:
    """The JSON merge patch (RFC 7386) that turns ``current`` into ``wanted``: keys to drop map to
    ``None``, changed values to their new value (lists are replaced whole). ``{}`` when equal.
    (``wanted`` must not contain ``null`` values: a merge patch cannot express them.)"""
    if not isinstance(current, Mapping) or not isinstance(wanted, Mapping):
        return wanted
    patch: dict[str, Any] = {}
    for key in current:
        if key not in wanted:
            patch[key] = None
    for key, value in wanted.items():
        if key not in current:
            patch[key] = value
        elif current[key] != value:
            if isinstance(current[key], Mapping) and isinstance(value, Mapping):
                patch[key] = merge_diff(current[key], value)
            else:
                patch[key] = value
    return patch
