"""The daemon: settings in, one supervised task group out.

:class:`Daemon` runs two named root tasks in one :class:`asyncio.TaskGroup`:

- ``rollbackd:evaluation-loop``: every ``interval_s`` (on the event-loop clock, without drift), one
  batched metrics collection and all health probes, then one evaluation per target; every decision
  is logged, counted in ``/metrics`` and kept for the API;
- ``rollbackd:http-server``: ``/healthz``, ``/readyz``, ``/metrics`` and the API.

Once at start, ``rollbackd:probe`` (given a ``probe`` client) asks whether every target's queries
find their series, beside the ticks: blind targets are logged and shown on the status page (see
:mod:`rollbackd.daemon.probing`).

Beside them, while targets the process has just started watching need their past,
``rollbackd:history`` reads it from the metrics source (when it can give history) in one batched
call; the ticks take it once it is in, before judging those targets.

With a leader election (several replicas: the Lease, or the PostgreSQL store's advisory lock),
every replica collects, judges and decides, but only the leader acts: a standby's rollback
decisions are blocked by ``standby``, it starts no rollback, verifies none and announces nothing.
:meth:`Daemon.apply_settings` takes over a reloaded configuration (see :mod:`rollbackd.daemon.reload`).

No exception of a tick ends the evaluation loop: one target's failing evaluation, decision, event
or verification is logged with the target, counted (``rollbackd_evaluation_errors_total``,
``rollbackd_tick_errors_total``) and skipped for that tick, the other targets going on; anything
else a tick raises is logged and counted, and the next tick runs as scheduled. If either root task
still fails, the group cancels the other and :meth:`Daemon.run` raises. A graceful
stop (:meth:`Daemon.stop`, e.g. on SIGTERM) cancels both, and the rollback runs under way through
:class:`~rollbackd.daemon.rollbacks.Rollbacks` which started them, and waits a bounded time for
them (:func:`rollbackd.aiotasks.stop_tasks`); tasks that do not stop in time are logged by name.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self, runtime_checkable

from rollbackd.aiotasks import stop_tasks
from rollbackd.config.loader import ConfigError
from rollbackd.config.settings import Settings
from rollbackd.daemon.auth import ApiAuth
from rollbackd.daemon.discovery import DiscoveryReport
from rollbackd.daemon.http import HttpContext, HttpServer, make_app
from rollbackd.daemon.journal import RUN_OVER, Journal
from rollbackd.daemon.jsonify import JsonValue
from rollbackd.daemon.leader import Leadership
from rollbackd.daemon.metrics import DaemonMetrics
from rollbackd.daemon.probing import probe_and_log
from rollbackd.daemon.releases import ReleaseBook, SharedReleases
from rollbackd.daemon.reload import SettingsChange, plan_reload
from rollbackd.daemon.rollbackmap import ConfigMapRollbacks, SharedRollback, recall_entries
from rollbackd.daemon.rollbacks import Rollbacks
from rollbackd.daemon.sourcestatus import SourceBoard
from rollbackd.daemon.state import Acceptance, DaemonState, TargetState
from rollbackd.daemon.switches import FREEZE, Switch, SwitchBoard, SwitchWriteError
from rollbackd.daemon.switchstores import StoreSwitches, SwitchStore, Watching, store_where
from rollbackd.daemon.target_state import current_state
from rollbackd.daemon.targetmetrics import TargetSample
from rollbackd.daemon.tick import IdleCollector, collect_tick, metrics_failure, run_every
from rollbackd.daemon.wallclock import WallClock
from rollbackd.decision.facts import ClusterFacts, is_newer
from rollbackd.decision.framework import duration_text
from rollbackd.decision.lifetime import Change, Lifetime, Operator, advance
from rollbackd.decision.rails import HOUR_S
from rollbackd.events.model import EventType
from rollbackd.gcpause import collector_paused
from rollbackd.model import Context, Decision, Evidence, Observation, Outcome
from rollbackd.optin import ObjectRef, OptIn, with_opt_ins
from rollbackd.params import TargetParams
from rollbackd.run import PartialAccess, Phase, RollbackRun, TargetAccess, reaches
from rollbackd.runrecord import RunRecord
from rollbackd.sources.base import GivesHistory, HealthSource, History, MetricsSource
from rollbackd.sources.probe import Queries
from rollbackd.store.base import AuditEntry, StoreError

logger = logging.getLogger(__name__)

#: How long a tick waits for the store to say which rollbacks were under way, in seconds.
RESUME_READ_TIMEOUT_S = 5.0

#: Why nothing is done yet: the switches set through the API (a freeze) are not read yet (from the
#: store, or the ConfigMap every replica watches).
SWITCHES_UNREAD = "the switches set through the API (a freeze, a hold) are not read yet"

#: Default bound on a graceful stop of the root tasks, in seconds.
SHUTDOWN_TIMEOUT_S = 10.0

#: Longest wait for one read of the targets' past from the metrics source, in seconds.
HISTORY_TIMEOUT_S = 10.0

#: Failed reads of a target's past before it is judged on what the process sees alone.
HISTORY_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class HistoryRead:
    """One read of targets' past: what was asked for, what came back (targets that failed are
    absent), and the two clocks when it was asked (to put Unix times on the event loop's)."""

    keys: tuple[str, ...]
    found: History
    loop_now: float
    wall_now: float


@runtime_checkable
class Reconfigurable(Protocol):
    """A cluster that learns reloaded settings (targets added, removed or moved)."""

    def reconfigure(self, settings: Settings) -> None: ...


class Daemon:
    """Watches every configured target and decides, tick after tick.

    Keyword arguments:

    - ``metrics_source``: where requests, errors and latency come from (one batched
      ``collect`` per tick); the caller owns its lifetime.
    - ``health_source``: probes the targets' health URLs; the caller owns its lifetime.
    - ``metrics``: the metrics to update (a fresh registry by default); pass one when the sources
      report their errors into it too.
    - ``targets``: the targets' Kubernetes access (release context, actions, availability);
      ``None`` decides only.
    - ``leader``: the leader election of several replicas (entered by the caller): the Lease's
      :class:`~rollbackd.daemon.leader.LeaderElector` or the store's
      :class:`~rollbackd.daemon.store_leader.StoreLeader`; ``None``: this process is the only one
      and always acts. A standby neither acts nor announces anything (no events).
    - ``auth``: access rules of the API (default: from ``settings.api``, token files only; pass
      ``ApiAuth.from_settings(settings.api, environ=os.environ)`` at the process edge).
    - ``shutdown_timeout_s``: how long a graceful stop waits for the root tasks.
    - ``probe``: the Prometheus client to probe the targets' series with once at start
      (:mod:`rollbackd.daemon.probing`); ``None``: no probe.
    - ``switch_store``: where the operators' switches are kept for every replica when it is not
      the store (the ConfigMap of :mod:`rollbackd.daemon.switchmap`, watched in a root task
      ``rollbackd:switches-watch``); ``None``: the store.
    - ``shared_releases``: where the announced releases are kept for every replica when the store
      is not shared (the same ConfigMap, :mod:`rollbackd.daemon.releasemap`); ``None``: the store.
    - ``shared_rollbacks``: where the leader keeps the rollbacks it starts, and their
      verification, for the next leader to recall when the store is not shared (the same
      ConfigMap, :mod:`rollbackd.daemon.rollbackmap`); ``None``: the audit log alone.

    Run it with ``await daemon.run()`` until :meth:`stop`, or as ``async with daemon:`` (which runs
    it in a background task, returns once the HTTP server listens, and stops it on exit).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics_source: MetricsSource,
        health_source: HealthSource,
        metrics: DaemonMetrics | None = None,
        targets: TargetAccess | None = None,
        leader: Leadership | None = None,
        auth: ApiAuth | None = None,
        journal: Journal | None = None,
        shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S,
        probe: Queries | None = None,
        switch_store: SwitchStore | None = None,
        shared_releases: SharedReleases | None = None,
        shared_rollbacks: ConfigMapRollbacks | None = None,
    ) -> None:
        #: The settings running now: the file's, with the targets annotations declare added.
        self.settings = settings
        #: The file's settings (as applied: sections that need a restart kept as started).
        self._file_settings = settings
        #: What the annotated objects declare (see :meth:`apply_discovery`).
        self._opt_ins: tuple[OptIn, ...] = ()
        #: The conflicts between the file and annotations already logged (said once).
        self._conflicts_said: dict[ObjectRef, str] = {}
        self.journal = journal if journal is not None else Journal(required=False)
        self.leader = leader
        self._auth = auth if auth is not None else ApiAuth.from_settings(settings.api, environ={})
        #: Loop times as people read them: wall-clock UTC (the API, the page, the reasons' times).
        self.wall = WallClock()
        self.state = DaemonState(settings, time_text=self.wall.text)
        self.metrics = metrics if metrics is not None else DaemonMetrics()
        self.metrics.watch_sinks(self.journal.sink_status)
        self.journal.add_poison_listener(lambda kind: self.metrics.poison_records.inc())
        self.journal.add_event_listener(lambda event: self.metrics.count_event(event.event_type.value))
        self.metrics.watch_targets(self._target_samples)
        self.metrics.watch_leader(lambda: self.leading)
        self._access = targets
        self.rollbacks = Rollbacks(
            targets=targets,
            verification_window_s=settings.verification.window_s,
            verification_max_wait_s=settings.verification.max_wait_s,
            on_finished=self._rollback_finished,
            on_change=self._rollback_changed,
            before_acting=self._start_recorded,
            record=self._save_run,
        )
        self.state.rollbacks = self.rollbacks
        self._switch_store = switch_store
        self._shared_rollbacks = shared_rollbacks
        #: The runs of the rollbacks in flight this leader shared, and what of them it shared.
        self._shared_stage: dict[str, Phase] = {}
        #: The runs counted towards the cooldowns and the hourly cap (started here, taken over or
        #: recalled), with when (loop time): a leadership won again recalls none twice.
        self._counted: dict[str, float] = {}
        #: What learns the settings of every reload besides the targets' cluster access.
        self._followers: list[Reconfigurable] = []
        self.switches = SwitchBoard(
            self.state,
            store=(lambda: switch_store) if switch_store is not None else self._store_switches,
            durable=switch_store is not None or self.journal.required,
            where=switch_store.where if switch_store is not None else store_where(settings),
            loop_clock=lambda: asyncio.get_running_loop().time(),
            poll_s=settings.safety.switches_poll_s,
        )
        self.switches.on_rollback_request = self._manual_rollback_requested
        self.releases = ReleaseBook(
            self.state,
            journal=self.journal,
            poll_s=settings.safety.switches_poll_s,
            shared=shared_releases,
            lookback_s=max(
                (t.params.detection.window_s + t.params.detection.baseline_window_s
                 for t in self.state.targets.values()),
                default=3600.0,
            ),
        )
        self._group: asyncio.TaskGroup | None = None
        #: Whether this process (as the leader, if there is an election) took over the rollbacks
        #: the store says were under way.
        self._resumed = False
        self._metrics_source = metrics_source
        self._health_source = health_source
        self._shutdown_timeout_s = shutdown_timeout_s
        self._stop_requested = asyncio.Event()
        self._listening = asyncio.Event()
        self._port: int | None = None
        self._evaluation_task: asyncio.Task[None] | None = None
        self._run_task: asyncio.Task[None] | None = None
        #: Completed ticks (every target evaluated once per tick).
        self.ticks = 0
        #: Whether the previous tick led: a replica that starts leading announces afresh.
        self._led = False
        #: The read of targets' past under way (see :meth:`_read_history`).
        self._history_task: asyncio.Task[HistoryRead] | None = None
        self._probe_client = probe
        self._probe_task: asyncio.Task[None] | None = None
        #: Whether the store has been open since the start (until then, its absence is no outage).
        self._store_opened = False
        #: Whether each data source works, since when, and why not (``/readyz``, the status page).
        self.sources = SourceBoard(loop=_loop_time, wall=self.wall.at)

    def _store_switches(self) -> StoreSwitches | None:
        """The switches in the store's rows, while it is open."""
        store = self.journal.store
        return None if store is None else StoreSwitches(store, where=self.switches.where)

    # --- observable state ----------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The HTTP port actually bound (meaningful with ``http.port: 0``)."""
        if self._port is None:
            raise RuntimeError("the HTTP server has not started")
        return self._port

    @property
    def alive(self) -> bool:
        """Whether the evaluation loop runs."""
        return self._evaluation_task is not None and not self._evaluation_task.done()

    @property
    def ready(self) -> bool:
        """Whether every target was evaluated at least once, and the store (when one is needed)
        is open: a daemon that cannot record what it does is not ready."""
        return self.ticks > 0 and self.journal.problem is None

    @property
    def leading(self) -> bool:
        """Whether this replica may act now: it leads, or there is no leader election."""
        return self.leader is None or self.leader.is_leader

    # --- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask for a graceful stop; :meth:`run` returns once the root tasks are done. Idempotent,
        and safe to call from a signal handler of the running loop."""
        self._stop_requested.set()

    async def run(self) -> None:
        """Run until :meth:`stop` is called; raise if a root task fails."""
        access: object = self._access
        if access is None:
            self.sources.off("kubernetes", "no Kubernetes access: deciding only, nothing is rolled back")
        elif isinstance(access, PartialAccess):
            self.sources.off("kubernetes", access.summary())
        if not self.journal.required:
            self.sources.off("store", "no store: decisions are not recorded")
        self.metrics.targets.set(len(self.state.targets))
        self.metrics.up.set(1)
        logger.info(
            "rollbackd running",
            extra={
                "targets": list(self.state.targets),
                "interval_s": self.settings.interval_s,
                "dry_run": self.state.flags.dry_run,
                "freeze": self.state.flags.freeze,
            },
        )
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                http_task = group.create_task(self._serve_http(), name="rollbackd:http-server")
                evaluation_task = group.create_task(
                    self._evaluate_forever(),
                    name="rollbackd:evaluation-loop",
                )
                stop_task = group.create_task(self._stop_requested.wait(), name="rollbackd:stop-request")
                if self._probe_client is not None:
                    self._probe_task = group.create_task(
                        self._probe(self._probe_client), name="rollbackd:probe"
                    )
                switches_task = group.create_task(self.switches.poll_forever(), name="rollbackd:switches")
                releases_task = group.create_task(self.releases.poll_forever(), name="rollbackd:releases")
                self._evaluation_task = evaluation_task
                root = [evaluation_task, http_task, stop_task, switches_task, releases_task]
                watched: object = self._switch_store
                if isinstance(watched, Watching):  # the ConfigMap: read the switches as they change
                    root.append(group.create_task(
                        watched.watch(self._switch_map_changed), name="rollbackd:switches-watch"
                    ))
                done, _ = await asyncio.wait(root, return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stop_task}:
                    if not task.cancelled() and task.exception() is None:
                        logger.error("root task ended on its own; stopping", extra={"task": task.get_name()})
                logger.info("stopping", extra={"timeout_s": self._shutdown_timeout_s})
                timeout_s = self._shutdown_timeout_s
                await asyncio.gather(
                    # The group's own tasks: their outcome is the group's to report.
                    stop_tasks(
                        [*root, self._history_task, self._probe_task], timeout_s=timeout_s, failures="leave"
                    ),
                    self.rollbacks.stop(timeout_s),
                )
        finally:
            self._group = None
            self._history_task = None
            self._probe_task = None
            try:
                await self.rollbacks.stop(self._shutdown_timeout_s)  # when the group failed
            finally:
                self.metrics.up.set(0)
                self._listening.clear()

    async def __aenter__(self) -> Self:
        self._run_task = asyncio.create_task(self.run(), name="rollbackd:daemon")
        listening = asyncio.create_task(self._listening.wait(), name="rollbackd:wait-listening")
        try:
            await asyncio.wait([self._run_task, listening], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            # Cancelled while starting: do not leave the daemon running behind the caller's back.
            self.stop()
            await asyncio.gather(self._run_task, return_exceptions=True)
            raise
        finally:
            await stop_tasks([listening])
        if self._run_task.done():
            await self._run_task  # raises what made it fail
            raise RuntimeError("the daemon stopped before its HTTP server listened")
        return self

    async def stopped(self) -> None:
        """Wait until the daemon entered with ``async with`` stops: after :meth:`stop`, or when a
        root task failed (raised here). Cancelling the wait leaves the daemon running."""
        if self._run_task is None:
            raise RuntimeError("the daemon was not started with async with")
        await asyncio.shield(self._run_task)

    async def __aexit__(self, *exc_info: object) -> None:
        self.stop()
        if self._run_task is not None:
            await self._run_task

    # --- root tasks ----------------------------------------------------------------------------

    async def _serve_http(self) -> None:
        context = HttpContext(
            state=self.state,
            metrics=self.metrics,
            clock=asyncio.get_running_loop().time,
            alive=lambda: self.alive,
            ready=lambda: self.ready,
            ticks=lambda: self.ticks,
            switches=self.switches,
            releases=self.releases,
            manual_rollback=self.request_manual_rollback,
            audit=lambda kind, summary, target, details: self.journal.audit(
                kind, summary, target=target, details=details
            ),
            history=lambda target, since, limit: self.journal.history(
                target=target, since=since, limit=limit
            ),
            leader=lambda: self.leading,
            not_ready_reason=lambda: self.journal.problem,
            auth=self._auth,
            sources=self.sources,
            wall=self.wall,
        )
        app = make_app(context)
        async with HttpServer(app, host=self.settings.http.host, port=self.settings.http.port) as server:
            self._port = server.port
            self._listening.set()
            await asyncio.Event().wait()

    async def _probe(self, client: Queries) -> None:
        """The start-up probe of the targets' series, kept for the status page."""
        self.state.probe = await probe_and_log(self.settings, client)

    async def _evaluate_forever(self) -> None:
        with IdleCollector(clock=asyncio.get_running_loop().time) as collector:
            await run_every(
                self.settings.interval_s,
                self._tick_survived,
                on_skipped=self.metrics.ticks_skipped.inc,
                between=collector.between_ticks,
            )

    async def _tick_survived(self) -> None:
        """One tick; whatever escapes it (a defect) is logged and counted, and the next tick comes
        as scheduled: no exception of a tick ends the daemon or loses what it remembers."""
        try:
            await self.tick()
        except Exception:
            self.metrics.count_tick_error("tick")
            logger.exception("tick failed; the next one runs as scheduled")

    # --- one tick ------------------------------------------------------------------------------

    async def tick(self) -> None:
        """Collect data for all targets once and evaluate each of them."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        targets = list(self.state.targets.values())
        if not self.switches.ready and (
            self._switch_store is not None or (self.journal.attached and self.journal.problem is None)
        ):
            await self.switches.sync()  # the first read since the store opened: before acting
        self._read_history()
        inputs = await collect_tick(
            [target.source for target in targets],
            metrics_source=self._metrics_source,
            health_source=self._health_source,
            window_s=self.settings.interval_s,
            on_source_error=self.metrics.count_source_error,
        )
        t = loop.time()
        self.metrics.collection_duration.observe(t - started)
        self.sources.report("prometheus", inputs.metrics_outage)
        if self.journal.required:
            self._store_opened = self._store_opened or self.journal.attached
            self.sources.report("store", self.journal.problem, starting=not self._store_opened)
        self.sources.summarize()
        self.metrics.metrics_source_up.set(1 if inputs.metrics_answered else 0)
        observations = {target.key: inputs.observation(target.source, t) for target in targets}
        self._take_history()
        evidences: dict[str, Evidence] = {}
        with collector_paused():  # collected between ticks (IdleCollector)
            for target in targets:
                try:
                    evidences[target.key] = target.judge(observations[target.key])
                except Exception:
                    # A defect in the core must not blind the daemon to every other target.
                    self.metrics.evaluation_errors.inc()
                    logger.exception("evaluation failed", extra={"target": target.key})
        if self.leading != self._led:
            self._led = not self._led
            if self._led:  # what it announced before it was a standby may be stale
                self.journal.forget_announced()
        await self._resume_rollbacks()  # after forgetting: a resumed run knows what it announced
        facts, reused = await self._facts_of(
            [
                t_ for t_ in targets
                if t_.key in evidences and (
                    evidences[t_.key].breached
                    or t_.evaluator.episode is not None
                    # Accepted: watched for the next release (a newer revision), at most one read
                    # per kubernetes.facts_max_age_s.
                    or (t_.lifetime is not None and t_.lifetime.accepted is not None)
                )
            ]
        )
        for target in targets:
            evidence = evidences.get(target.key)
            if evidence is None:
                continue
            try:
                await self._decide(
                    target, evidence, t, facts=facts.get(target.key), reused=target.key in reused
                )
            except Exception:
                # One target's defect (or one event that cannot be built) must not blind the
                # daemon to the others, nor end it: skipped, and tried again next tick.
                self.metrics.count_tick_error("decide")
                logger.exception("deciding failed; skipped this tick", extra={"target": target.key})
        if self.leading:
            await self._verify(targets, observations)
        self.ticks += 1
        self.metrics.evaluation_duration.observe(loop.time() - started)

    def _read_history(self) -> None:
        """Start reading the past of the targets the process has just started watching (all of
        them at start, those a reload added), in one batched call, unless a read is under way.
        It runs beside the ticks, which take its result once it is in (:meth:`_take_history`)."""
        if self._history_task is not None or self._group is None:
            return
        wanted = [target for target in self.state.targets.values() if target.history_wanted]
        if not wanted:
            return
        if not isinstance(self._metrics_source, GivesHistory):
            for target in wanted:
                target.history_wanted = False
            return
        self._history_task = self._group.create_task(self._history(wanted), name="rollbackd:history")

    async def _history(self, targets: list[TargetState]) -> HistoryRead:
        """The past of ``targets``: their baseline window and detection window, at the interval's
        step; a failure (logged and counted) leaves every target out."""
        source = self._metrics_source
        assert isinstance(source, GivesHistory)
        loop = asyncio.get_running_loop()
        interval_s = self.settings.interval_s
        range_s = max(t.params.detection.baseline_window_s + t.params.detection.window_s for t in targets)
        loop_now, wall_now = loop.time(), time.time()
        keys = tuple(target.key for target in targets)
        try:
            async with asyncio.timeout(HISTORY_TIMEOUT_S):
                # Up to one interval ago: the first tick's own interval is not counted twice.
                found = await source.history(
                    [target.source for target in targets],
                    step_s=interval_s, range_s=range_s, end_s=wall_now - interval_s,
                )
        except Exception as exc:
            source_name, kind = metrics_failure(exc)
            self.metrics.count_source_error(source_name, kind)
            logger.warning(
                "could not read the targets' past from the metrics source; trying again next tick",
                extra={"targets": len(keys), "kind": kind, "error": repr(exc)},
            )
            found = {}
        return HistoryRead(keys=keys, found=found, loop_now=loop_now, wall_now=wall_now)

    def _take_history(self) -> None:
        """Give each target the past the finished read found for it, mapped onto the event
        loop's clock, before it is judged; a target left out is read again on the next ticks (up
        to :data:`HISTORY_ATTEMPTS` reads in all), then judged on what the process sees alone."""
        task = self._history_task
        if task is None or not task.done():
            return
        self._history_task = None
        read = task.result()
        taken = filled = 0
        for key in read.keys:
            target = self.state.targets.get(key)
            if target is None or not target.history_wanted:
                continue
            past = read.found.get(key)
            if past is None:
                target.history_failures += 1
                if target.history_failures >= HISTORY_ATTEMPTS:
                    target.history_wanted = False
                    logger.warning(
                        "no past read for the target after %d attempts; judged on what this "
                        "process sees from now on", target.history_failures, extra={"target": key},
                    )
                continue
            observations = [
                Observation(target=key, t=read.loop_now - (read.wall_now - ts), baseline=baseline,
                            candidate=candidate)
                for ts, (baseline, candidate) in past
            ]
            taken += target.backfill(observations)
            filled += 1
        if filled:
            logger.info(
                "past of %d targets read from the metrics source", filled,
                extra={"targets": filled, "intervals": taken},
            )

    async def _decide(
        self, target: TargetState, evidence: Evidence, t: float, *, facts: ClusterFacts | None, reused: bool
    ) -> None:
        """One target's decision at ``t``: recorded, announced, and acted on when it says so."""
        if not evidence.breached and target.evaluator.episode is None:
            target.judged_revision = None
            self.rollbacks.episode_over(target.key)
        target.facts = facts
        acceptance = self.state.accepted.get(target.key)
        release = target.release
        if acceptance is not None and release is not None and acceptance.at is not None \
                and acceptance.at < release.started_at:
            # It accepted the release before this one: the announced release is judged.
            await self._end_acceptance(
                target.key, f"release {release.id} started after it", details={"release": release.id}
            )
        elif acceptance is not None and facts is not None and facts.candidate_revision is not None:
            await self._follow_acceptance(target, acceptance, facts.candidate_revision)
        self._follow_release(target, evidence, t, facts)
        acting = self.leading
        context = self._context(target, t, acting=acting)
        if reused:
            preview = target.evaluator.preview(evidence, context)
            if preview.rollback and not preview.dry_run and acting:
                # About to act on facts read ticks ago: read them again and decide on those.
                target.facts = await self._fresh_facts(target)
                context = self._context(target, t, acting=acting)
        decision = target.evaluator.decide(evidence, context)
        self._record(target, decision)
        if acting:  # a standby publishes nothing: the leader announces
            self.journal.decision(target.params, decision, hold=context.hold)
        if decision.rollback and acting and self._group is not None:
            if self.journal.problem is not None and not decision.dry_run:
                logger.error(
                    "not rolling back: %s (nothing may be done that cannot be recorded)",
                    self.journal.problem,
                    extra={"target": target.key},
                )
                return
            self.rollbacks.start(target.params, decision, bad_revision=target.judged_revision)

    def _follow_release(
        self, target: TargetState, evidence: Evidence, t: float, facts: ClusterFacts | None
    ) -> None:
        """The target's release after this tick (see :mod:`rollbackd.decision.lifetime`):
        accepted after ``policy.accept_after_s`` without a breach episode or by an operator
        (announced as ``release.accepted``), or superseded by a newer revision (judged afresh)."""
        acceptance = self.state.accepted.get(target.key)
        quiet = (
            not evidence.breached
            and target.evaluator.episode is None
            and not self.rollbacks.in_progress(target.key)
        )
        release, change = advance(
            target.lifetime or Lifetime(started_at=t),
            t,
            accept_after_s=target.params.policy.accept_after_s,
            quiet=quiet,
            revision=None if facts is None else facts.candidate_revision,
            operator=None if acceptance is None else Operator(by=acceptance.by, reason=acceptance.reason),
        )
        target.lifetime = release
        if change is Change.SUPERSEDED:
            target.reset()  # the new revision is judged on its own data
            target.judged_revision = release.revision
        if change is None or not self.leading:
            return
        ended = release.previous if change is Change.SUPERSEDED else release.accepted
        text = "judged again: the acceptance was withdrawn" if ended is None else ended.text
        logger.info("release %s", text, extra={"target": target.key, "revision": release.revision})
        if change is Change.ACCEPTED:
            self.journal.release_accepted(target.params, release)
        elif change is Change.SUPERSEDED:
            self.journal.audit(
                "release", f"release of revision {release.previous_revision} {text}", target=target.key,
                details={"revision": release.revision, "previous_revision": release.previous_revision},
            )

    async def _follow_acceptance(self, target: TargetState, acceptance: Acceptance, revision: int) -> None:
        """An accepted release covers the revision the cluster showed when it was accepted (or,
        accepted before any was seen, the first one seen since); a newer revision ends it."""
        key = target.key
        if acceptance.revision is None:
            self.state.accepted[key] = replace(acceptance, revision=revision)
            if self.leading:
                await self.switches.accept(key, revision=revision, by=acceptance.by, reason=acceptance.reason)
            return
        if not is_newer(acceptance.revision, revision):
            return
        # The new revision is judged on its own data, not on the accepted one's.
        target.reset()
        target.judged_revision = revision
        await self._end_acceptance(
            key, f"revision {revision} is newer than the accepted {acceptance.revision}",
            details={"accepted_revision": acceptance.revision, "revision": revision},
        )

    async def _end_acceptance(self, key: str, why: str, *, details: Mapping[str, JsonValue]) -> None:
        """The operator's acceptance of ``key``'s release ended (``why``): its release is judged
        again here, and the leader withdraws the stored switch and records why."""
        self.state.accepted.pop(key, None)
        if not self.leading:
            return
        await self.switches.withdraw_acceptance(key)
        self.journal.audit("accept", f"acceptance ended: {why}", target=key,
                           details={**details, "ended": True})

    async def request_manual_rollback(
        self, key: str, *, by: str, reason: str, force: bool
    ) -> tuple[int, JsonValue]:
        """``POST /api/v1/targets/{ns}/{name}/rollback``: a rollback an operator asks for, through
        the same action, verification and events as one decided here. Stored for the leader (this
        replica or another: it starts it within one read of the switches). Returns the HTTP status
        and body: 202 with the run's id, 409 when it may not start, 503 when it cannot be stored."""
        if not reaches(self._access, key):
            what = "anything back" if self._access is None else f"{key} back (its lever needs Kubernetes)"
            return 409, {"error": "this rollbackd has no Kubernetes access (kubernetes.enabled), so it "
                                  f"cannot roll {what}"}
        if self.state.flags.freeze and not force:
            who = self.switches.who(FREEZE)
            by_whom = f" (set by {who.by}: {who.reason})" if who is not None else ""
            return 409, {"error": f"the global freeze is on{by_whom}: no rollback is started while it is; "
                                  'send {"force": true} to roll back anyway, or lift the freeze'}
        under_way = await self._rollback_under_way(key)
        if under_way is not None:
            return 409, {"error": f"a rollback of {key} is already under way ({under_way}); wait for its "
                                  "verdict (GET /api/v1/targets/" + key + ")"}
        run_id = str(uuid.uuid4())
        try:
            request = await self.switches.request_rollback(
                key, run_id=run_id, force=force, by=by, reason=reason
            )
        except SwitchWriteError as exc:
            return 503, {"error": str(exc)}
        self.journal.audit(
            "rollback.manual",
            f"manual rollback requested by {by}: {reason}",
            target=key,
            details={"run_id": run_id, "by": by, "reason": reason, "force": force},
        )
        await self._manual_rollback_requested(key, request)  # this replica leads: at once
        run = self.rollbacks.runs.get(key)
        started = run is not None and run.run_id == run_id
        applies = "started by this replica (the leader)" if started else (
            f"stored; the leader starts it within {self.switches.poll_s:g}s"
        )
        return 202, {"run_id": run_id, "target": key, "applies": applies}

    async def _rollback_under_way(self, key: str) -> str | None:
        """Why a manual rollback of ``key`` may not start now: a run under way (here, or recorded
        by the leader), or one requested and not started yet; ``None`` when none is."""
        run = self.rollbacks.runs.get(key)
        if run is not None and run.phase.active:
            return f"run {run.run_id}, {run.phase.value}"
        waiting = self.switches.rollback_request(key)
        if waiting is not None:
            return f"run {waiting.run_id}, requested by {waiting.by}, not started yet"
        if not self.leading:
            try:
                recorded = await self.journal.runs_in_flight([key])
            except StoreError:
                recorded = {}
            saved = recorded.get(key)
            try:
                now = datetime.now(UTC)
                record = None if saved is None else RunRecord.from_state(saved, now=now, new_id="?")
            except (KeyError, TypeError, ValueError):
                record = None
            if record is not None and record.active:
                return f"run {record.run_id}, {record.phase}, by the leader"
        return None

    async def _manual_rollback_requested(self, key: str, request: Switch) -> None:
        """A manual rollback waits in the store: the leader starts it (once: the request is then
        cleared), or refuses it if a freeze came since (unless forced) or a rollback is under way."""
        if not self.leading or self._group is None:
            return
        target = self.state.targets.get(key)
        # What the cluster runs now is what the operator rolls back: a release may have come
        # since the revision an open breach episode judged (``None`` when the read failed: the
        # action then takes the revision running when it starts).
        facts = None if target is None else await self._fresh_facts(target)
        await self._start_manual_rollback(key, request, facts)

    async def _start_manual_rollback(self, key: str, request: Switch, facts: ClusterFacts | None) -> None:
        """The rest of :meth:`_manual_rollback_requested`, once the cluster's ``facts`` are read
        (anything may have changed during the read)."""
        if not self.leading:  # lost meanwhile: the request stays stored for the new leader
            return
        target = self.state.targets.get(key)  # a reload may have removed it meanwhile
        # Started meanwhile by another call for the same request (the API's and the watch's).
        run = self.rollbacks.runs.get(key)
        if target is None or (run is not None and run.run_id == request.run_id):
            await self.switches.clear_rollback(key)
            return
        refusal = None
        if self.state.flags.freeze and not request.force:
            refusal = "the global freeze is on"
        elif self.rollbacks.in_progress(key):
            refusal = "a rollback is already under way"
        elif self.journal.problem is not None:
            refusal = self.journal.problem
        if refusal is not None:
            logger.error("manual rollback refused: %s", refusal, extra={"target": key, "by": request.by})
            self.journal.audit(
                "rollback.manual",
                f"manual rollback requested by {request.by} refused: {refusal}",
                target=key,
                details={"run_id": request.run_id, "by": request.by, "refused": refusal},
            )
            await self.switches.clear_rollback(key)
            return
        loop = asyncio.get_running_loop()
        decision = Decision(
            target=key,
            t=loop.time(),
            outcome=Outcome.IMMEDIATE,
            rollback=True,
            reasons=(f"manual: {request.reason} (by {request.by})",),
            dry_run=self.state.flags.dry_run or target.settings.dry_run,
        )
        self._record(target, decision)
        bad = None if facts is None else facts.candidate_revision
        self.rollbacks.start(target.params, decision, bad_revision=bad, run_id=request.run_id)
        await self.switches.clear_rollback(key)

    def _context(self, target: TargetState, t: float, *, acting: bool) -> Context:
        """The decision context of ``target`` at ``t``, with the cluster facts it holds now."""
        return self.state.context(
            target,
            t,
            facts=target.facts,
            in_progress=self.rollbacks.in_progress(target.key),
            standby=not acting,
            # Nothing is done before the stored switches (a freeze set through another replica) are read.
            audit_problem=self.journal.problem or (None if self.switches.ready else SWITCHES_UNREAD),
        )

    async def _facts_of(self, targets: list[TargetState]) -> tuple[dict[str, ClusterFacts], set[str]]:
        """What the cluster says about the breached targets and those in an open breach episode
        (only those: the API load follows the incidents, not the number of targets), and the
        targets whose facts were reused from an earlier read (the access' reuse rule,
        ``kubernetes.facts_max_age_s``) rather than read now. A failed read leaves the target
        without facts."""
        access = self._access
        targets = [target for target in targets if reaches(access, target.key)]
        if access is None or not targets:
            return {}, set()
        loop_now = asyncio.get_running_loop().time()
        limit = asyncio.Semaphore(16)

        async def one(target: TargetState) -> tuple[str, ClusterFacts | None]:
            async with limit:
                return target.key, await self._read_facts(target, loop_now=loop_now)

        pairs = await asyncio.gather(*(one(target) for target in targets))
        found = {key: facts for key, facts in pairs if facts is not None}
        reused = {key for key in found if access.facts_read_at(key) != loop_now}
        for key in found.keys() - reused:  # reported once per read, not again with every reuse
            if found[key].problems:
                problems = "; ".join(found[key].problems)
                logger.warning("annotation problems: %s", problems, extra={"target": key})
        return found, reused

    async def _fresh_facts(self, target: TargetState) -> ClusterFacts | None:
        """The target's facts read now (``None`` when the read failed)."""
        return await self._read_facts(target, loop_now=asyncio.get_running_loop().time(), fresh=True)

    async def _read_facts(
        self, target: TargetState, *, loop_now: float, fresh: bool = False
    ) -> ClusterFacts | None:
        access = self._access
        if access is None:
            return None
        try:
            facts = await access.facts(target.params, loop_now=loop_now, fresh=fresh)
        except Exception as exc:
            self.metrics.count_source_error("kubernetes", type(exc).__name__)
            # The outage is logged once, when it starts (the source board); each read at DEBUG.
            if not self.sources.report("kubernetes", str(exc) or type(exc).__name__):
                logger.debug("could not read the cluster: %s", exc, extra={"target": target.key})
            return None
        self.sources.report("kubernetes", None)
        return facts

    async def _verify(self, targets: list[TargetState], observations: dict[str, Observation]) -> None:
        keys = set(self.rollbacks.verifying())
        verifying = [target for target in targets if target.key in keys]
        if not verifying:
            return
        await asyncio.gather(*(self.rollbacks.refresh_availability(target.params) for target in verifying))
        for target in verifying:
            try:
                self.rollbacks.feed(target.params, observations[target.key])
            except Exception:
                self.metrics.count_tick_error("verify")
                logger.exception("verifying failed; skipped this tick", extra={"target": target.key})

    async def _resume_rollbacks(self) -> None:
        """Once the store is open (and while this replica leads): finish the rollbacks a previous
        process or leader left under way."""
        if not self.leading:
            self._resumed = False
            return
        if self._resumed or not self.journal.attached or self._group is None or self._access is None:
            return
        if self.journal.problem is not None:  # the store is down: the tick must not wait for it
            return
        try:
            async with asyncio.timeout(RESUME_READ_TIMEOUT_S):
                keys = [key for key in self.state.targets if reaches(self._access, key)]
                found = await self.journal.runs_in_flight(keys)
                span_s = self._recall_span()
                since = datetime.now(UTC) - timedelta(seconds=span_s)
                recent = await self.journal.recent_rollbacks(since)
                # The leaders' before this one, when the store is not shared: their rollbacks, and
                # the one left under way.
                shared = [] if self._shared_rollbacks is None else await self._shared_rollbacks.read()
                recent = recall_entries(recent, shared, since=since)
                found = {**{r.target: r.record for r in shared if r.record is not None and r.target in keys},
                         **found}
                over = {r.run_id for r in shared if r.record is None}
        except (StoreError, TimeoutError) as exc:
            self.metrics.count_tick_error("resume")
            logger.error(
                "cannot read the rollbacks under way from the store, trying again next tick: %s",
                exc or f"no answer within {RESUME_READ_TIMEOUT_S:g}s",
            )
            return
        except Exception:
            self.metrics.count_tick_error("resume")
            logger.exception("could not read the rollbacks under way; trying again next tick")
            return
        self._resumed = True
        wall_now = datetime.now(UTC)
        recalled = self._recall_rollbacks(recent, wall_now, span_s=span_s)
        for key, saved in found.items():
            target = self.state.targets[key]
            try:
                record = RunRecord.from_state(saved, now=wall_now, new_id=str(uuid.uuid4()))
            except (KeyError, TypeError, ValueError) as exc:
                logger.error("the record of a rollback under way cannot be read, not resuming it: %s",
                             exc, extra={"target": key})
                continue
            if not record.active:
                continue
            if record.run_id in over:  # another leader finished it since this replica recorded it
                await self.journal.save_run(key, None)
                continue
            announced = await self.journal.announced_run_events(key, record)
            if announced & RUN_OVER:  # its verdict is recorded: only the record's removal was missing
                await self.journal.save_run(key, None)
                continue
            target.judged_revision = record.bad_revision
            self.journal.resuming(target.params, record, announced=announced)
            run = self.rollbacks.resume(target.params, record)
            if run is not None and record.run_id not in recalled and record.run_id not in self._counted:
                # A rollback taken over counts like one decided here: cooldown and hourly cap.
                self.state.ledger.record(key, run.decided_at, target.params.policy.cooldown_s)
                self._counted[record.run_id] = run.decided_at

    def _recall_span(self) -> float:
        """How far back the rollbacks that still restrain a target may lie: the hourly cap's
        hour, the longest cooldown, the post-rollback watch."""
        cooldowns = (target.params.policy.cooldown_s for target in self.state.targets.values())
        return max(HOUR_S, self.settings.verification.watch_s, *cooldowns)

    def _recall_rollbacks(
        self, entries: Sequence[AuditEntry], wall_now: datetime, *, span_s: float
    ) -> set[str]:
        """What the audit log says of the recent rollbacks (``entries``, oldest first) restrains
        this process as it restrained the one that took them: each one started counts towards
        its target's cooldown and the hourly cap (once: a run counted already is not counted
        again), each one verified starts the rest of its post-rollback watch. A new leader or a
        restarted process would otherwise roll a target back again in its cooldown, or a second
        time in its watch. ``entries`` come from the audit log and, when the store is not shared,
        the ConfigMap of :mod:`rollbackd.daemon.rollbackmap`.
        ``span_s`` is how far back they were read. Returns the recalled runs' ids."""
        now = asyncio.get_running_loop().time()
        watch_s = self.settings.verification.watch_s
        self._counted = {run_id: t for run_id, t in self._counted.items() if t > now - span_s}
        run_ids: set[str] = set()
        for entry in entries:
            target = self.state.targets.get(entry.target or "")
            if target is None or entry.at is None:
                continue
            t = now - (wall_now - entry.at).total_seconds()
            run_id = entry.details.get("run_id")
            if entry.kind == EventType.ROLLBACK_STARTED:
                if isinstance(run_id, str):
                    run_ids.add(run_id)
                    if run_id in self._counted:  # counted already (it led before, and leads again)
                        continue
                    self._counted[run_id] = t
                self.state.ledger.record(target.key, t, target.params.policy.cooldown_s)
            elif watch_s > 0 and t + watch_s > now:
                self.state.ledger.watch(target.key, since=t, watch_s=watch_s)
        if entries:
            logger.info(
                "recalled %d rollback(s) of the last %s from the audit log: their cooldowns, the hourly "
                "cap and post-rollback watches hold here too",
                len(run_ids),
                duration_text(span_s),
            )
        return run_ids

    @staticmethod
    def _run_state(run: RollbackRun) -> dict[str, Any] | None:
        """What a restart (or a new leader) needs to finish ``run``: its record (``None`` once it
        is over)."""
        return run.record().to_state() if run.phase.active else None

    async def _save_run(self, params: TargetParams, run: RollbackRun) -> bool:
        """Write ``run``'s record now (its changes so far included); whether it was written."""
        return await self.journal.save_run(params.key, self._run_state(run))

    async def _start_recorded(self, params: TargetParams, run: RollbackRun) -> bool:
        """Nothing is done that is not recorded: before the action touches the cluster, the
        decision and ``rollback.started`` are in the audit log and the run's record is saved."""
        return await self.journal.flushed() and await self._save_run(params, run)

    def _rollback_changed(self, params: TargetParams, run: RollbackRun) -> None:
        if run.run_id not in self._counted and not run.resumed:  # started here: counted by its decision
            oldest = run.decided_at - self._recall_span()
            self._counted = {run_id: t for run_id, t in self._counted.items() if t > oldest}
            self._counted[run.run_id] = run.decided_at
        self._share_rollback(params, run)
        target = self.state.targets.get(params.key)
        try:  # announced first: the record then holds the run's rollback.started
            self.journal.run(
                params,
                run,
                decision=target.last_rollback if target is not None else None,
                bad_revision=run.bad_revision,
            )
        finally:
            if self._group is not None:
                state = self._run_state(run)
                self._group.create_task(
                    self.journal.save_run(params.key, state), name=f"rollbackd:save-run:{params.key}"
                )

    def _share_rollback(self, params: TargetParams, run: RollbackRun) -> None:
        """The leader keeps each rollback it starts (or takes over) in the ConfigMap the replicas
        share, at every phase, with its record while it is under way: the next leader recalls it
        and, if it is still under way, finishes it (:meth:`_resume_rollbacks`). In the background,
        best effort: a write that fails is logged, the rollback goes on."""
        shared = self._shared_rollbacks
        if shared is None or self._group is None or not self.leading:
            return
        if self._shared_stage.get(run.run_id) is run.phase:
            return
        if run.phase.active:
            self._shared_stage[run.run_id] = run.phase
        else:  # over: nothing more of it is shared
            self._shared_stage.pop(run.run_id, None)
        rollback = SharedRollback(
            target=params.key,
            run_id=run.run_id,
            started_at=run.decided_wall or datetime.now(UTC),
            verified_at=datetime.now(UTC) if run.phase is Phase.VERIFIED else None,
            phase=run.phase,
            record=self._run_state(run),
        )
        keep_s = self._recall_span()

        async def write() -> None:
            try:
                await shared.keep(rollback, keep_s=keep_s)
            except StoreError as exc:
                logger.warning("the rollback could not be kept in %s for the next leader: %s", shared.where,
                               exc, extra={"target": params.key, "run_id": run.run_id})

        self._group.create_task(write(), name=f"rollbackd:share-rollback:{params.key}")

    def _rollback_finished(self, params: TargetParams, run: RollbackRun) -> None:
        """A rollback reached its verdict: count it, and start a new episode for the target (the
        healthy past of the version that stays is kept). A verified rollback starts the target's
        post-rollback watch (``verification.watch_s``)."""
        self.metrics.count_rollback(run.phase.value)
        target = self.state.targets.get(params.key)
        if target is not None:
            target.reset()
            target.lifetime = None  # the version that stays is judged from the next tick on
        if run.phase is Phase.VERIFIED and run.finished_at is not None:
            watch = self.state.ledger.watch(params.key, since=run.finished_at,
                                            watch_s=self.settings.verification.watch_s)
            if watch is not None:
                logger.warning(
                    "watching the target for %.0fs after its verified rollback: a new degradation escalates",
                    watch.until - watch.since, extra={"target": params.key},
                )

    @property
    def file_settings(self) -> Settings:
        """The configuration file's settings as applied, without the targets annotations declare."""
        return self._file_settings

    def _switch_map_changed(self) -> None:
        """The switches' ConfigMap changed: read its switches and releases now."""
        self.switches.nudge()
        self.releases.nudge()

    def follow_settings(self, follower: Reconfigurable) -> None:
        """Tell ``follower`` the effective settings of every reload and discovery from now on
        (e.g. the ConfigMap watch, which watches the ConfigMaps of targets added at once)."""
        self._followers.append(follower)

    def apply_settings(self, new: Settings) -> SettingsChange:
        """Take over a reloaded configuration at once (see :mod:`rollbackd.daemon.reload`): targets
        added, removed and changed, defaults, safety switches; sections that need a restart are
        kept as they are. The targets annotations declare stay beside the file's (the file wins
        where both declare a release). Returns what changed."""
        merged = with_opt_ins(new, self._opt_ins)
        effective, change = self._install(merged.settings)
        self._file_settings = effective.model_copy(update={"targets": new.targets})
        self._take_origins(merged.origins, merged.conflicts)
        self.metrics.count_reload(applied=True)
        if not change.empty:
            self.journal.audit(
                "config.reload",
                f"configuration reloaded: {change.summary()}",
                details=change.details(),
            )
        return change

    def apply_discovery(self, report: DiscoveryReport) -> SettingsChange:
        """Take over what annotated objects declare (see :mod:`rollbackd.daemon.discovery`), at
        once: their targets are added beside the file's, changed, or removed, as a reload of the
        file would (a new target's past is read from the metrics source). The file wins where both
        declare a release: said once in the log and shown on the status page. Returns what
        changed."""
        self._opt_ins = report.opt_ins
        merged = with_opt_ins(self._file_settings, report.opt_ins)
        _, change = self._install(merged.settings)
        self._take_origins(merged.origins, merged.conflicts)
        self.state.opt_in_problems = {
            str(opt_in.ref): opt_in.problems for opt_in in report.opt_ins if opt_in.problems
        }
        self.state.watch_problems = report.watch_problems
        if change.applied:
            declared = change.details()
            details = {
                "added": declared["added"],
                "removed": declared["removed"],
                "changed": declared["changed"],
                "objects": {key: str(ref) for key, ref in merged.origins.items()},
            }
            logger.warning("targets declared by annotations: %s", change.summary(), extra=details)
            self.journal.audit(
                "targets.discovered", f"targets declared by annotations: {change.summary()}", details=details
            )
        return change

    def _install(self, new: Settings) -> tuple[Settings, SettingsChange]:
        """Run with ``new`` (the file's settings and the annotations' targets) from now on."""
        effective, change = plan_reload(self.settings, new)
        self.state.apply(self.settings, effective, rebuild=change.changed.keys())
        self.switches.forget(change.removed)
        access: object = self._access
        for follower in [access, *self._followers]:
            if isinstance(follower, Reconfigurable):
                follower.reconfigure(effective)
        self.settings = effective
        self.metrics.targets.set(len(self.state.targets))
        return effective, change

    def _take_origins(self, origins: Mapping[str, ObjectRef], conflicts: Mapping[ObjectRef, str]) -> None:
        """Where each target came from, and the conflicts between file and annotations: each new
        one logged once."""
        self.state.origins = dict(origins)
        self.state.conflicts = {str(ref): why for ref, why in conflicts.items()}
        for ref, why in conflicts.items():
            if self._conflicts_said.get(ref) != why:
                logger.warning("opt-in by annotation: %s: %s", ref, why, extra={"object": str(ref)})
        self._conflicts_said = dict(conflicts)

    def refuse_settings(self, error: ConfigError) -> None:
        """Audit a configuration change the watcher refused; the running configuration stays."""
        self.metrics.count_reload(applied=False)
        problems = [str(problem) for problem in error.problems]
        self.journal.audit(
            "config.refused",
            f"configuration change refused: {'; '.join(problems)}",
            details={"problems": problems},
        )

    def _target_samples(self) -> list[TargetSample]:
        """Every watched target as ``/metrics`` shows it (read at each scrape, on the loop)."""
        loop_now = asyncio.get_running_loop().time()
        wall_now = time.time()
        runs = self.rollbacks.runs
        samples: list[TargetSample] = []
        for target in self.state.targets.values():
            decision = target.latest
            decided_at = None
            if decision is not None:
                decided_at = wall_now - (loop_now - decision.t)
            samples.append(
                TargetSample(
                    namespace=target.settings.namespace,
                    name=target.settings.name,
                    state=current_state(decision, runs.get(target.key)),
                    decided_at=decided_at,
                )
            )
        return samples

    def _record(self, target: TargetState, decision: Decision) -> None:
        previous = target.latest
        self.state.remember(target, decision)
        self.metrics.count_decision(decision)
        args: tuple[object, ...]
        if decision.rollback:
            level = logging.WARNING
            mode = " (dry-run)" if decision.dry_run else ""
            message, args = "rollback decision%s: %s", (mode, decision.reason)
        elif previous is None or _shape(previous) != _shape(decision):
            level = logging.WARNING if decision.escalate else logging.INFO
            message, args = "decision: %s", (decision.outcome.value,)
        else:
            level = logging.DEBUG
            message, args = "decision: %s", (decision.outcome.value,)
        if not logger.isEnabledFor(level):
            return  # most ticks of most targets: no line, so no fields to build
        fields: dict[str, object] = {
            "target": target.key,
            "outcome": decision.outcome.value,
            "rollback": decision.rollback,
            "dry_run": decision.dry_run,
            "escalate": decision.escalate,
            "blocked_by": decision.blocked_by,
            "reasons": list(decision.reasons),
            "t": self.wall.iso(decision.t),
        }
        evidence = decision.evidence
        if evidence is not None:
            fields.update(
                impact=evidence.impact.value,
                attributable=evidence.attributable,
                inconclusive=evidence.inconclusive,
            )
        logger.log(level, message, *args, extra=fields)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _shape(decision: Decision) -> tuple[object, ...]:
    """What makes a decision worth a log line at INFO when it changes from one tick to the next."""
    return decision.outcome, decision.rollback, decision.blocked_by, decision.escalate, decision.dry_run
