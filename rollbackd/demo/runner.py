"""``rollbackd demo``: one release goes bad and undoes itself, end to end, on one machine.

No cluster and no container engine: the Kubernetes API is kmock's emulator (clearly labelled as
such), served over real HTTP and spoken to through the real ``kubernetes_asyncio`` client. Around
it, everything is real:

1. the emulated cluster is seeded with the scenario's objects (see :mod:`rollbackd.demo.scenarios`),
   and emulated deployment and EndpointSlice controllers run against it;
2. one sample-app process per version stands in for that version's pods;
3. a Prometheus server scrapes them every second -- or, when there is no ``prometheus`` binary (or
   with ``--no-prometheus``), the daemon reads the apps' ``/metrics`` directly, and the demo says so;
4. a load generator sends requests, reading the routing from the emulated cluster every second;
5. the real :class:`~rollbackd.daemon.app.Daemon` runs in this process with a 1 s interval, short
   windows and a short validation window, acting on the emulated cluster through
   :class:`~rollbackd.actions.targets.KubeTargets`.

Then the new version turns bad (``POST /control`` ``error_rate``); rollbackd decides, acts, traffic
goes back to the old version, and the rollback is verified. In the config scenario the bad change is
the release itself, made through the API (a ConfigMap's data), and the same pods recover in place
once rollbackd has put the previous data back and restarted them: no traffic moves, the errors go.
The timeline says what happened when, in seconds since the start, and ends with the measured
durations. Exit status 0 on a verified rollback, 1 otherwise (with the reason).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import aiomqtt
import kmock

from rollbackd.actions.reconcilers import REVERT_IN_GIT
from rollbackd.actions.steps import ActionSettings
from rollbackd.actions.targets import KubeTargets
from rollbackd.aiotasks import stop_tasks
from rollbackd.backoff import Backoff
from rollbackd.config.settings import (
    Defaults,
    DetectionSettings,
    EventsSettings,
    GitOpsMode,
    HealthSettings,
    HttpSettings,
    KubernetesSettings,
    LogSettings,
    MqttSettings,
    PolicySettings,
    PrometheusSettings,
    Settings,
    StoreSettings,
    TargetSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.logs import configure_logging
from rollbackd.daemon.metrics import DaemonMetrics
from rollbackd.daemon.wiring import open_daemon
from rollbackd.demo.direct import DirectMetricsSource
from rollbackd.demo.emulator import ClusterEmulator, Controllers
from rollbackd.demo.flagloop import DEFAULT_DSN, FlagLoopFailed, FlagLoopOptions, run_flag_loop
from rollbackd.demo.processes import (
    HOST,
    PrometheusServer,
    SampleAppProcess,
    astart_sample_app,
    find_prometheus,
)
from rollbackd.demo.reconciler import GitOpsReconciler
from rollbackd.demo.scenarios import CANARY_WEIGHT, NAMESPACE, scenario_named
from rollbackd.demo.traffic import UNROUTED, LoadGenerator, RoutingChange, Tally
from rollbackd.errors import SourceStats
from rollbackd.events.mqtt import MqttOptions, Topics, clear_retained
from rollbackd.kube import KubeClient
from rollbackd.model import Decision, Outcome
from rollbackd.run import Phase, RollbackRun
from rollbackd.sources.base import MetricsSource
from rollbackd.sources.health import HealthProber
from rollbackd.sources.lookback import Lookback, min_range_s
from rollbackd.sources.prometheus import PrometheusClient, PrometheusSource

logger = logging.getLogger(__name__)

EMULATOR_LABEL = "EMULATED Kubernetes API (kmock) -- not a real cluster"


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoOptions:
    """How the demo runs.

    - ``work_dir``: where logs and Prometheus' data go;
    - ``scenario``: ``canary``, ``bluegreen``, ``deployment``, ``gateway``, ``gitops`` or ``config``;
    - ``prometheus``: the Prometheus binary, or ``None`` to read the apps' metrics directly;
    - ``no_prometheus_reason``: why there is no Prometheus (said plainly in the timeline);
    - ``rps``: requests per second the load generator sends in all;
    - ``canary_weight``: the canary scenario's canary-weight (the gateway scenario's HTTPRoute
      weight of the canary, out of 100), in percent: the canary gets ``rps x canary_weight / 100``
      requests per second (20 requests/s by default);
    - ``interval_s``: the daemon's evaluation interval, and Prometheus' scrape interval;
    - ``detection_window_s``: the daemon's detection window (``defaults.detection.window_s``;
      short here, the daemon's default is 600 s): a verdict needs 50 requests in it;
    - ``verification_window_s``: the validation window after the rollback;
    - ``rollout_delay_s``: how long the emulated pods of a rolled-out ReplicaSet take to be ready;
    - ``fault_error_rate``: the fraction of requests the bad version fails;
    - ``healthy_ticks``: conclusive, healthy decisions to wait for before the fault;
    - ``timeout_s``: the whole demo's time limit;
    - ``mqtt_url``: the MQTT broker the events go to, or ``None`` (recorded in the store only);
      the demo's retained messages (the target's status, the daemon's liveness) are cleared when
      it ends;
    - ``linger``: after the story, keep the daemon and its status page up until Ctrl-C (SIGINT).
    - ``gitops``: the gitops scenario's ``gitops`` mode (suspend, refuse or ignore);
    - ``gitops_passes``: passes of the emulated GitOps reconciler (one a second) the rollback must
      outlast, after it is verified, in the gitops scenario.
    """

    work_dir: Path
    scenario: str = "canary"
    prometheus: str | None = None
    no_prometheus_reason: str = "no 'prometheus' binary on the PATH"
    rps: float = 100.0
    canary_weight: int = CANARY_WEIGHT
    interval_s: float = 1.0
    detection_window_s: float = 5.0
    verification_window_s: float = 10.0
    rollout_delay_s: float = 3.0
    fault_error_rate: float = 0.3
    healthy_ticks: int = 6
    timeout_s: float = 110.0
    mqtt_url: str | None = None
    linger: bool = False
    gitops: GitOpsMode = "suspend"
    gitops_passes: int = 3


class DemoFailed(Exception):
    """The demo did not end in a verified rollback; the message says why."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of the timeline: seconds since the start, and what happened."""

    t: float
    text: str


class Timeline:
    """Prints what happens as it happens, stamped with seconds since the start, and keeps it."""

    def __init__(self, *, out: TextIO, started_at: float) -> None:
        self.out = out
        self.started_at = started_at
        self.entries: list[Entry] = []

    def since_start(self, loop_time: float) -> float:
        return loop_time - self.started_at

    def say(self, text: str, *, at: float | None = None) -> Entry:
        """A timestamped line (``at``: the loop time it happened; default now)."""
        when = at if at is not None else asyncio.get_running_loop().time()
        entry = Entry(self.since_start(when), text)
        self.entries.append(entry)
        self._print(f"{entry.t:7.1f}s  {text}")
        return entry

    def detail(self, text: str) -> None:
        """A line belonging to the previous one."""
        self._print(f"{'':10}{text}")

    def plain(self, text: str = "") -> None:
        self._print(text)

    def _print(self, line: str) -> None:
        print(line, file=self.out, flush=True)


@dataclass(slots=True)
class Measurements:
    """Loop times of the story's moments (``None``: did not happen)."""

    fault: float | None = None
    decision: float | None = None
    acted: float | None = None
    no_traffic: float | None = None
    #: The first whole second from the decision on in which the bad backend failed at most
    #: :data:`ERRORS_GONE_SHARE` of its requests (a scenario recovering in place).
    errors_gone: float | None = None
    verified: float | None = None


#: A second of traffic with at most this share failed counts as the errors gone (the apps' usual
#: share is 0.2%).
ERRORS_GONE_SHARE = 0.02


def demo_settings(target: TargetSettings, *, prometheus_url: str | None, options: DemoOptions) -> Settings:
    """The daemon's configuration for the demo: the defaults, but everything short."""
    return Settings(
        interval_s=options.interval_s,
        prometheus=PrometheusSettings(
            url=prometheus_url or PrometheusSettings().url,
            timeout_s=2.0,
            retries=0,
            scrape_interval_s=options.interval_s,
        ),
        health=HealthSettings(),  # the daemon's probe timeout: a busy machine answers late
        http=HttpSettings(host=HOST, port=0),
        log=LogSettings(level="INFO", format="text"),
        kubernetes=KubernetesSettings(
            enabled=True, request_timeout_s=5.0, retries=3, availability_timeout_s=30.0
        ),
        store=StoreSettings(data_dir=str(options.work_dir / "data")),
        events=EventsSettings(
            mqtt=MqttSettings(
                enabled=options.mqtt_url is not None, url=options.mqtt_url or LOCAL_MQTT, instance="demo"
            ),
            kubernetes_events=True,
        ),
        verification=VerificationSettings(
            window_s=options.verification_window_s, max_wait_s=3 * options.verification_window_s
        ),
        defaults=Defaults(
            detection=DetectionSettings(
                window_s=options.detection_window_s,
                baseline_window_s=max(120.0, options.detection_window_s),
            ),
            policy=PolicySettings(controlled_grace_s=5.0, cooldown_s=300.0),
        ),
        targets=(target,),
    )


def _decision_text(decision: Decision) -> str:
    if decision.rollback:
        head = f"ROLLBACK ({decision.outcome.value})"
    elif decision.escalate:
        head = f"{decision.outcome.value}, escalating"
    else:
        head = decision.outcome.value
    reason = decision.reasons[0] if decision.reasons else ""
    return f"rollbackd decision: {head} -- {reason}" if reason else f"rollbackd decision: {head}"


def _tallies(tallies: Mapping[str, Tally], order: tuple[str, ...]) -> str:
    names = [name for name in order if name in tallies] + sorted(set(tallies) - set(order))
    if not names:
        return "no requests"
    return ", ".join(f"{name} {tallies[name].sent} ({tallies[name].failed} failed)" for name in names)


class Demo:
    """One run of one scenario (see the module docstring)."""

    def __init__(self, options: DemoOptions, *, out: TextIO) -> None:
        self.options = options
        self.scenario = scenario_named(options.scenario, canary_weight=options.canary_weight,
                                       gitops=options.gitops)
        #: The emulated GitOps reconciler (gitops scenario), once running.
        self._reconciler: GitOpsReconciler | None = None
        self.out = out
        self.measured = Measurements()
        self._timeline: Timeline | None = None
        self._shown_decision: tuple[object, ...] | None = None
        self._order = tuple(app.backend for app in self.scenario.apps)
        self._prometheus_url: str | None = None
        self._emu: ClusterEmulator | None = None
        #: Consecutive ticks counted by _served_ticks / _healthy_ticks, and the tick counted last.
        self._served = self._healthy = 0
        self._served_t: float | None = None
        self._healthy_t: float | None = None
        self._shown_release: str | None = None

    @property
    def timeline(self) -> Timeline:
        assert self._timeline is not None
        return self._timeline

    async def run(self) -> Measurements:
        """Run the whole story; raise :class:`DemoFailed` when it does not end verified."""
        loop = asyncio.get_running_loop()
        self._timeline = Timeline(out=self.out, started_at=loop.time())
        deadline = loop.time() + self.options.timeout_s
        scenario = self.scenario
        self.timeline.plain(f"rollbackd demo -- {scenario.name}: {scenario.title}")
        self.timeline.plain()
        async with contextlib.AsyncExitStack() as stack:
            kube_url = await self._start_cluster(stack)
            apps = await self._start_apps(stack, kube_url)
            source = await self._start_metrics(stack, apps)
            kube = await stack.enter_async_context(KubeClient.for_host(kube_url, request_timeout_s=5.0))
            self.timeline.say(
                f"load generator: {self.options.rps:g} requests/s in all, routed as "
                f"{scenario.routing.source} says (read every {self.options.interval_s:g}s)"
            )
            load = await stack.enter_async_context(
                LoadGenerator(
                    kube=kube,
                    routing=scenario.routing,
                    backends={name: app.url for name, app in apps.items()},
                    rps=self.options.rps,
                    routing_interval_s=self.options.interval_s,
                    on_change=self._routing_changed,
                )
            )
            published: list[Settings] = []  # cleared once the daemon has stopped (callbacks run LIFO)
            stack.push_async_callback(self._clear_retained, published)
            daemon = await self._start_daemon(stack, kube, apps, source)
            published.append(daemon.settings)
            key = daemon.settings.targets[0].key
            ticker = loop.create_task(self._report_traffic(load), name="rollbackd:demo:traffic-report")
            stack.push_async_callback(stop_tasks, [ticker])

            if scenario.release is not None:
                await self._until(
                    deadline,
                    "the old version has served a while",
                    lambda: self._served_ticks(daemon, key) >= self.options.healthy_ticks,
                )
                self.timeline.say(await scenario.release(kube))
            await self._until(
                deadline,
                f"{self.options.healthy_ticks} healthy decisions",
                lambda: self._healthy_ticks(daemon, key) >= self.options.healthy_ticks,
            )
            if scenario.fault is not None:
                text = await scenario.fault(kube)
                self.measured.fault = loop.time()
                self.timeline.say(f"FAULT, a release: {text}", at=self.measured.fault)
            else:
                await self._fault(apps[scenario.bad])
            run = await self._follow_rollback(daemon, key, deadline, load)
            if self._reconciler is not None:
                await self._rollback_holds(self._reconciler, run, deadline)
            await asyncio.sleep(0.5)  # the last requests in flight come back
            if scenario.aftermath is not None:
                assert self._emu is not None
                lines = await scenario.aftermath(self._emu, kube)
                self.timeline.say(f"after the rollback: {lines[0]}")
                for line in lines[1:]:
                    self.timeline.detail(line)
            self._summary(run, load)
            if self.options.linger:
                await self._linger(daemon)
        return self.measured

    async def _linger(self, daemon: Daemon) -> None:
        """Keep everything up, the status page included, until Ctrl-C."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        try:
            self.timeline.say(
                f"--linger: the status page stays up at http://{HOST}:{daemon.port}/ (Ctrl-C to end)"
            )
            await stop.wait()
        finally:
            loop.remove_signal_handler(signal.SIGINT)

    async def _clear_retained(self, published: list[Settings]) -> None:
        """Once the daemon has stopped: clear the retained messages it left on the broker, so that
        a later ``mosquitto_sub`` or ``rollbackd events`` does not show the demo's target."""
        for settings in published:
            mqtt = settings.events.mqtt
            if mqtt.enabled:
                await self._clear(settings)

    async def _clear(self, settings: Settings) -> None:
        mqtt = settings.events.mqtt
        topics = Topics(mqtt.topic_prefix)
        retained = [topics.status(target.key) for target in settings.targets]
        if mqtt.instance is not None:
            retained.append(topics.liveness(mqtt.instance))
        try:
            async with asyncio.timeout(5.0):
                await clear_retained(MqttOptions.from_url(mqtt.url), retained)
        except (aiomqtt.MqttError, TimeoutError) as exc:
            logger.warning("could not clear the demo's retained MQTT messages: %s", exc)

    # --- set-up ----------------------------------------------------------------------------------

    async def _start_cluster(self, stack: contextlib.AsyncExitStack) -> str:
        emu = self._emu = await stack.enter_async_context(ClusterEmulator())
        await stack.enter_async_context(kmock.Server(emu))
        url = str(emu.url)
        self.timeline.say(f"{EMULATOR_LABEL}, serving at {url}")
        for line in self.scenario.seed(emu):
            self.timeline.detail(f"seeded {line}")
        await stack.enter_async_context(
            Controllers(emu, rollout_delay_s=self.options.rollout_delay_s, poll_s=0.05)
        )
        self.timeline.detail(
            f"emulated {self.scenario.controllers} running (pods ready "
            f"{self.options.rollout_delay_s:g}s after their ReplicaSet scales up)"
        )
        if self.scenario.gitops is not None:
            reconciler = GitOpsReconciler(emu, poll_s=1.0, on_revert=self._reverted)
            for line in self.scenario.gitops(reconciler):
                self.timeline.detail(line)
            self._reconciler = await stack.enter_async_context(reconciler)
            self.timeline.detail("emulated GitOps reconciler running: every 1s it puts back what Git "
                                 "declares, for each Application / Kustomization that is not suspended")
        return url

    async def _start_apps(
        self, stack: contextlib.AsyncExitStack, kube_url: str
    ) -> dict[str, SampleAppProcess]:
        started = await asyncio.gather(
            *(
                astart_sample_app(
                    deployment=app.deployment,
                    namespace=NAMESPACE,
                    error_rate=0.002,
                    latency_ms=20.0,
                    seed=index,
                    log_dir=self.options.work_dir,
                    config_url=None if app.configmap is None
                    else f"{kube_url}/api/v1/namespaces/{NAMESPACE}/configmaps/{app.configmap}",
                )
                for index, app in enumerate(self.scenario.apps)
            ),
            return_exceptions=True,
        )
        apps: dict[str, SampleAppProcess] = {}
        failure: BaseException | None = None
        for app, process in zip(self.scenario.apps, started, strict=True):
            if isinstance(process, BaseException):
                failure = failure or process
                continue
            apps[app.backend] = process
            stack.push_async_callback(process.astop)
        if failure is not None:
            raise DemoFailed(f"a sample app did not start: {failure}")
        for app in self.scenario.apps:
            process = apps[app.backend]
            self.timeline.say(
                f"sample app {app.backend!r} at {process.url} (pid {process.pid}): {app.role}, "
                f"series deployment={app.deployment}"
            )
        return apps

    async def _start_metrics(
        self, stack: contextlib.AsyncExitStack, apps: Mapping[str, SampleAppProcess]
    ) -> MetricsSource:
        options = self.options
        if options.prometheus is None:
            source = await stack.enter_async_context(
                DirectMetricsSource(urls=[f"{app.url}/metrics" for app in apps.values()])
            )
            self.timeline.say(
                f"NO PROMETHEUS: {options.no_prometheus_reason}; rollbackd reads the sample "
                "apps' /metrics directly instead (counter growth between two reads)"
            )
            return source
        server = PrometheusServer(
            targets=[app.address for app in apps.values()],
            data_dir=options.work_dir / "prometheus",
            binary=options.prometheus,
            scrape_interval_s=options.interval_s,
        )
        version = await _prometheus_version(server.binary)
        server.start()
        stack.push_async_callback(server.astop)
        await server.await_ready(timeout_s=60.0)
        await server.await_scrapes(scrapes=2, timeout_s=60.0)
        self._prometheus_url = server.url
        client = await stack.enter_async_context(
            PrometheusClient(base_url=server.url, timeout_s=2.0, retries=0)
        )
        self.timeline.say(
            f"Prometheus {version} at {server.url}, scraping the sample apps every {options.interval_s:g}s"
        )
        return Lookback(PrometheusSource(client=client), min_range_s=min_range_s(options.interval_s))

    async def _start_daemon(
        self,
        stack: contextlib.AsyncExitStack,
        kube: KubeClient,
        apps: Mapping[str, SampleAppProcess],
        source: MetricsSource,
    ) -> Daemon:
        options = self.options
        target = self.scenario.target({name: app.url for name, app in apps.items()})
        settings = demo_settings(target, prometheus_url=self._prometheus_url, options=options)
        metrics = DaemonMetrics()
        prober = await stack.enter_async_context(
            HealthProber(
                timeout_s=settings.health.timeout_s,
                stats=SourceStats(source="health", on_error=metrics.count_source_error),
            )
        )
        targets = KubeTargets(
            kube=kube,
            settings=settings,
            action_settings=ActionSettings.from_kubernetes(
                settings.kubernetes, poll_s=0.2, backoff=Backoff(initial_s=0.1, max_s=1.0)
            ),
        )
        if options.mqtt_url:
            self.timeline.say(
                f"events: publishing to {options.mqtt_url} (watch them: mosquitto_sub -t 'rollbackd/#' -v)"
            )
        else:
            self.timeline.say(
                "events: no MQTT broker answers at 127.0.0.1:1883; they go to the audit "
                "store only (--mqtt-url URL to publish)"
            )
        daemon = await stack.enter_async_context(
            open_daemon(
                settings,
                metrics_source=source,
                health_source=prober,
                metrics=metrics,
                targets=targets,
                kube=kube,
                shutdown_timeout_s=5.0,
            )
        )
        slo = settings.defaults.slo
        self.timeline.say(
            f"rollbackd daemon running (in this process) against the emulated cluster: target {target.key} "
            f"({target.strategy.value}), evaluation every {settings.interval_s:g}s, SLO errors <= "
            f"{slo.max_error_rate:.0%} and P95 <= {slo.max_p95_ms:g} ms, validation window "
            f"{settings.verification.window_s:g}s"
        )
        self.timeline.detail(f"API: http://{HOST}:{daemon.port}/api/v1/targets (status page at /)")
        return daemon

    # --- the story -------------------------------------------------------------------------------

    def _time_limit(self) -> str:
        limit = self.options.timeout_s
        return f"the demo's time limit, start-up included, is {limit:g}s: --timeout gives more"

    async def _until(self, deadline: float, what: str, condition: Callable[[], bool]) -> None:
        loop = asyncio.get_running_loop()
        while not condition():
            if loop.time() > deadline:
                raise DemoFailed(f"timed out waiting for {what} ({self._time_limit()})")
            await asyncio.sleep(0.1)

    def _note_decision(self, daemon: Daemon, key: str) -> Decision | None:
        decision = daemon.state.targets[key].latest
        if decision is None:
            return None
        evidence = decision.evidence
        shape = (
            decision.outcome,
            decision.rollback,
            decision.escalate,
            evidence.impact if evidence is not None else None,
        )
        if shape != self._shown_decision:
            self._shown_decision = shape
            self.timeline.say(_decision_text(decision), at=decision.t)
            if decision.rollback and evidence is not None:
                for finding in evidence.findings:
                    if finding.breached:
                        self.timeline.detail(f"evidence: {finding.detail}")
        return decision

    def _served_ticks(self, daemon: Daemon, key: str) -> int:
        """Consecutive ticks on which the old version (the baseline) served requests."""
        decision = self._note_decision(daemon, key)
        evidence = decision.evidence if decision is not None else None
        if decision is None or evidence is None or evidence.baseline_requests <= 0:
            self._served = 0
        elif decision.t != self._served_t:
            self._served_t = decision.t
            self._served += 1
        return self._served

    def _healthy_ticks(self, daemon: Daemon, key: str) -> int:
        """Consecutive conclusive decisions of "no rollback needed"."""
        decision = self._note_decision(daemon, key)
        if decision is None or decision.outcome is not Outcome.NONE or decision.escalate:
            self._healthy = 0
        elif decision.t != self._healthy_t:
            self._healthy_t = decision.t
            self._healthy += 1
        return self._healthy

    async def _fault(self, app: SampleAppProcess) -> None:
        rate = self.options.fault_error_rate
        bad = self.scenario.app(self.scenario.bad)
        await app.acontrol(error_rate=rate)
        self.measured.fault = asyncio.get_running_loop().time()
        self.timeline.say(
            f"FAULT: {bad.backend!r} ({bad.role}) now fails {rate:.0%} of its requests "
            f"(POST {app.url}/control {json.dumps({'error_rate': rate})})",
            at=self.measured.fault,
        )

    def _routing_changed(self, change: RoutingChange) -> None:
        if self._timeline is None:
            return
        bad = self.scenario.bad
        text = f"routing ({self.scenario.routing.source}): {change.describe()}"
        if self.measured.fault is not None and change.shares.get(bad, 0.0) == 0.0:
            if self.measured.no_traffic is None:
                self.measured.no_traffic = change.t
            text += f" -- {bad!r} gets no traffic"
        self.timeline.say(text, at=change.t)

    async def _report_traffic(self, load: LoadGenerator) -> None:
        loop = asyncio.get_running_loop()
        every_s = 3.0
        while True:
            await asyncio.sleep(every_s)
            now = loop.time()
            tallies = load.totals(since=now - every_s, until=now)
            self.timeline.say(f"traffic, last {every_s:g}s: {_tallies(tallies, self._order)}")

    def _note_release(self, daemon: Daemon, key: str) -> None:
        """A release rollbackd saw (a ConfigMap's change), once."""
        release = daemon.releases.latest(key)
        if release is None or release.id == self._shown_release:
            return
        self._shown_release = release.id
        keys = release.details.get("keys")
        changed = f", keys changed: {', '.join(map(str, keys))}" if isinstance(keys, list) and keys else ""
        what = f"{release.kind} {release.id} (release.started{changed})"
        if self.measured.decision is None:
            self.timeline.say(f"rollbackd saw a release: {what}; judged from now on against the target's own "
                              "history before it")
        else:
            self.timeline.say(f"rollbackd saw the rollback's own write as a release: {what}")

    def _note_errors_gone(self, load: LoadGenerator) -> None:
        """A scenario recovering in place: the first second the bad backend's errors are gone."""
        m = self.measured
        if self.scenario.fault is None or m.errors_gone is not None:
            return
        if m.decision is None:  # (before it, the errors are still going on, or not yet begun)
            return
        bad = self.scenario.bad
        second = load.first_clean_second(bad, since=m.decision, max_failed_share=ERRORS_GONE_SHARE)
        if second is None:
            return
        m.errors_gone = second
        tally = load.totals(since=second, until=second + 1.0).get(bad, Tally())
        self.timeline.say(f"errors gone: {bad!r} failed {tally.failed} of its {tally.sent} "
                          "requests in this second", at=second)

    async def _follow_rollback(
        self, daemon: Daemon, key: str, deadline: float, load: LoadGenerator
    ) -> RollbackRun:
        loop = asyncio.get_running_loop()
        shown_action = False
        shown_verifying: str | None = None
        last_progress = 0.0
        while True:
            self._note_release(daemon, key)
            self._note_decision(daemon, key)
            self._note_errors_gone(load)
            run = daemon.rollbacks.runs.get(key)
            if run is not None:
                if self.measured.decision is None:
                    last = daemon.state.targets[key].last_rollback
                    self.measured.decision = last.t if last is not None else run.decided_at
                    self.timeline.say(f"rollback started ({run.mode})", at=run.decided_at)
                if run.action is not None and not shown_action:
                    shown_action = True
                    self._show_action(run)
                if shown_action and self._reconciler is not None and self._reconciler.reverts:
                    raise DemoFailed(
                        f"the GitOps reconciler undid the rollback: it put the bad version back as Git "
                        f"declares it (gitops: {self.options.gitops}); with gitops: suspend, rollbackd turns "
                        "Argo CD's automated sync off and suspends the Flux Kustomization before it acts"
                    )
                result = run.verification
                if (
                    result is not None
                    and not result.done
                    and result.reasons
                    and loop.time() - last_progress >= 3.0
                    and result.reasons[0] != shown_verifying
                ):
                    shown_verifying = result.reasons[0]
                    last_progress = loop.time()
                    self.timeline.say(f"verifying: {shown_verifying}")
                if not run.phase.active:
                    return self._verdict(run)
            if loop.time() > deadline:
                latest = daemon.state.targets[key].latest
                seen = _decision_text(latest) if latest is not None else "no decision yet"
                what = "a rollback decision" if run is None else f"the rollback to finish ({run.phase.value})"
                raise DemoFailed(f"timed out waiting for {what} ({self._time_limit()}); latest {seen}")
            await asyncio.sleep(0.05)

    def _show_action(self, run: RollbackRun) -> None:
        result = run.action
        assert result is not None
        assert run.acted_at is not None
        self.measured.acted = run.acted_at
        waited = "the restarted pods to roll out" if self.scenario.fault else "the old version to serve"
        self.timeline.say(
            f"action {result.action}: {result.outcome.value} ({result.api_s:.2f}s of API calls, "
            f"{result.wait_s:.2f}s waiting for {waited}) -- {result.reason}",
            at=run.acted_at,
        )
        for change in result.changes:
            self.timeline.detail(f"changed {change.describe()}")
        for hold in result.gitops:
            state = "suspended" if hold.suspended else "NOT suspended"
            syncs = ", ".join(hold.reconciles)
            self.timeline.detail(f"GitOps: {hold.object} ({hold.reconciler}, syncs {syncs}) {state}; "
                                 f"resume with: {hold.resume}")

    def _reverted(self, reconciler: str, obj: str) -> None:
        self.timeline.say(f"GitOps reconciler: {reconciler} put {obj} back as Git declares it "
                          "(the bad version)")

    async def _rollback_holds(self, reconciler: GitOpsReconciler, run: RollbackRun, deadline: float) -> None:
        """The gitops scenario: the rollback must outlast ``gitops_passes`` more passes of the reconciler."""
        passes = self.options.gitops_passes
        start = reconciler.passes
        await self._until(deadline, f"{passes} more passes of the GitOps reconciler",
                          lambda: reconciler.passes >= start + passes)
        if reconciler.reverts:
            raise DemoFailed(f"the GitOps reconciler put the bad version back {reconciler.reverts} time(s)")
        held = [hold.object for hold in run.action.gitops] if run.action is not None else []
        self.timeline.say(
            f"the GitOps reconciler made {passes} more passes and put nothing back: the rollback holds "
            f"({', '.join(held) or 'nothing'} suspended). {REVERT_IN_GIT}"
        )

    def _verdict(self, run: RollbackRun) -> RollbackRun:
        result = run.verification
        reason = result.reasons[0] if result is not None and result.reasons else ""
        at = run.finished_at
        if run.phase is Phase.VERIFIED:
            self.measured.verified = at
            self.timeline.say(f"VERIFIED: {reason}", at=at)
            return run
        if run.phase in (Phase.ACTION_FAILED, Phase.REFUSED) and run.action is not None:
            reason = run.action.reason
        self.timeline.say(f"rollback {run.phase.value.upper()}: {reason}", at=at)
        raise DemoFailed(f"the rollback ended {run.phase.value}: {reason}")

    # --- the summary -----------------------------------------------------------------------------

    def _summary(self, run: RollbackRun, load: LoadGenerator) -> None:
        m = self.measured
        bad, good = self.scenario.bad, self.scenario.good
        timeline = self.timeline
        timeline.plain()
        timeline.plain("summary")

        def span(label: str, start: float | None, end: float | None, note: str = "") -> None:
            value = "n/a" if start is None or end is None else f"{end - start:5.1f}s"
            timeline.plain(f"  {label:<38} {value}{note}")

        span("fault -> rollback decision", m.fault, m.decision)
        span("rollback decision -> action done", m.decision, m.acted)
        if self.scenario.fault is not None:
            span(f"fault -> {bad!r} errors gone", m.fault, m.errors_gone)
        else:
            span(f"fault -> {bad!r} gets no traffic", m.fault, m.no_traffic,
                 "   (target: under 5s with 1s scrapes and 1s evaluations)")
        span("rollback decision -> verified", m.decision, m.verified)
        span("fault -> verified", m.fault, m.verified)
        if self.scenario.fault is not None:
            self._summary_in_place(load)
            return
        if m.fault is None or m.no_traffic is None:
            raise DemoFailed(f"the routing never stopped sending traffic to {bad!r}")
        before = load.totals(until=m.fault)
        during = load.totals(since=m.fault, until=m.no_traffic)
        after = load.totals(since=m.no_traffic + 1.0)
        timeline.plain(f"  {'traffic before the fault':<38} {_tallies(before, self._order)}")
        timeline.plain(f"  {'traffic from the fault to the switch':<38} {_tallies(during, self._order)}")
        timeline.plain(f"  {'traffic after the switch':<38} {_tallies(after, self._order)}")
        last_bad = load.last_sent(bad)
        if last_bad is not None and last_bad > m.no_traffic:
            raise DemoFailed(f"{bad!r} still got requests after the routing sent it none")
        if after.get(good, Tally()).sent == 0:
            raise DemoFailed(f"no traffic reached {good!r} after the switch")
        unrouted = after.get(UNROUTED, Tally()).sent
        if unrouted:
            raise DemoFailed(f"{unrouted} requests found no backend after the switch")
        timeline.plain()
        timeline.plain(f"demo OK: {self.scenario.name} rolled back and verified; all traffic on {good!r}")

    def _summary_in_place(self, load: LoadGenerator) -> None:
        """The traffic of a scenario whose pods recover in place: before the fault, until the
        errors went, after; the errors must be gone and stay gone."""
        m, bad, timeline = self.measured, self.scenario.bad, self.timeline
        if m.fault is None or m.errors_gone is None:
            raise DemoFailed(f"the errors of {bad!r} never went away")
        before = load.totals(until=m.fault)
        during = load.totals(since=m.fault, until=m.errors_gone)
        after = load.totals(since=m.errors_gone)
        timeline.plain(f"  {'traffic before the fault':<38} {_tallies(before, self._order)}")
        timeline.plain(f"  {'traffic from the fault to the recovery':<38} {_tallies(during, self._order)}")
        timeline.plain(f"  {'traffic after the recovery':<38} {_tallies(after, self._order)}")
        served = after.get(bad, Tally())
        if served.sent == 0:
            raise DemoFailed(f"no traffic reached {bad!r} after the recovery")
        if served.failed > ERRORS_GONE_SHARE * served.sent:
            raise DemoFailed(f"{bad!r} still failed {served.failed} of {served.sent} requests after the "
                             "recovery")
        timeline.plain()
        timeline.plain(f"demo OK: {self.scenario.name} rolled back and verified; {bad!r} serves without the "
                       f"errors ({served.failed / served.sent:.1%} failed since)")


async def _prometheus_version(binary: str) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await asyncio.wait_for(process.communicate(), timeout=10.0)
    except (OSError, TimeoutError):
        return "(version unknown)"
    words = output.decode(errors="replace").split()
    # "prometheus, version 2.42.0+ds (branch: ...)"
    return words[2] if len(words) > 2 and words[1] == "version" else "(version unknown)"


async def run_demo(options: DemoOptions, *, out: TextIO) -> Measurements:
    """Run one scenario, printing its timeline to ``out``; raise :class:`DemoFailed` when it does
    not end in a verified rollback."""
    try:
        return await Demo(options, out=out).run()
    except ExceptionGroup as group:  # raised inside the daemon's task group: tell the reason itself
        found: BaseException | None = group.subgroup(DemoFailed)
        while isinstance(found, BaseExceptionGroup):
            found = found.exceptions[0]
        if isinstance(found, DemoFailed):
            raise found from group
        raise


async def _until_terminated(options: DemoOptions, *, out: TextIO) -> Measurements:
    """:func:`run_demo`, cancelled by SIGTERM so that every child process is stopped on the way out."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_demo(options, out=out)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


#: The broker the demo publishes to when one answers there and no --mqtt-url is given.
LOCAL_MQTT = "mqtt://127.0.0.1:1883"
LOCAL_MQTT_ADDRESS = ("127.0.0.1", 1883)


def _answers(address: tuple[str, int]) -> bool:
    """Whether something accepts TCP connections at ``address`` (a quick look, loopback only)."""
    try:
        with socket.create_connection(address, timeout=0.5):
            return True
    except OSError:
        return False


def run_cli(args: argparse.Namespace) -> int:
    """``rollbackd demo`` once kmock is known to be there: the process edge (finds Prometheus on
    the PATH, sends the logs to a file in a fresh work directory, prints the timeline on stdout).
    0 on a verified rollback; 1 when the demo failed (the work directory is kept, with the logs);
    130 on Ctrl-C and 143 on SIGTERM."""
    if args.scenario == "flag":
        return run_flag_cli(args)
    if args.no_prometheus:
        binary, reason = None, "--no-prometheus given"
    else:
        binary = find_prometheus()
        reason = "no 'prometheus' binary on the PATH"
    work_dir = Path(tempfile.mkdtemp(prefix="rollbackd-demo-"))
    mqtt_url = getattr(args, "mqtt_url", None) or (LOCAL_MQTT if _answers(LOCAL_MQTT_ADDRESS) else None)
    options = DemoOptions(
        scenario=args.scenario,
        gitops=getattr(args, "gitops", "suspend"),
        prometheus=binary,
        no_prometheus_reason=reason,
        work_dir=work_dir,
        mqtt_url=mqtt_url,
        linger=bool(getattr(args, "linger", False)),
    )
    if getattr(args, "timeout", None) is not None:
        options = replace(options, timeout_s=args.timeout)
    log_path = work_dir / "rollbackd.log"
    with log_path.open("a", encoding="utf-8") as log:
        configure_logging(LogSettings(level="INFO", format="text"), stream=log)
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
        try:
            asyncio.run(_until_terminated(options, out=sys.stdout))
        except DemoFailed as exc:
            print(f"\ndemo FAILED: {exc}\nlogs kept in {work_dir}", file=sys.stdout, flush=True)
            return 1
        except KeyboardInterrupt:
            print(f"\ndemo interrupted; logs kept in {work_dir}", file=sys.stdout, flush=True)
            return 130
        except asyncio.CancelledError:
            print(f"\ndemo stopped by SIGTERM; logs kept in {work_dir}", file=sys.stdout, flush=True)
            return 143
        except Exception as exc:
            logger.exception("the demo failed")
            print(f"\ndemo FAILED: {exc!r}\nlogs kept in {work_dir}", file=sys.stdout, flush=True)
            return 1
        finally:
            logging.getLogger().handlers.clear()
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0


def run_flag_cli(args: argparse.Namespace) -> int:
    """``rollbackd demo --scenario flag``: the feature-flag closed loop
    (:mod:`rollbackd.demo.flagloop`), its steps printed as they happen. 0 on a verified rollback
    with the flag off, 1 otherwise (the work directory is kept, with the logs)."""
    work_dir = Path(tempfile.mkdtemp(prefix="rollbackd-demo-flag-"))
    options = FlagLoopOptions(
        work_dir=work_dir, store=getattr(args, "flag_store", "sql"),
        dsn=os.environ.get("ROLLBACKD_DEMO_FLAGS_DSN") or DEFAULT_DSN,
    )
    started = time.monotonic()

    def say(text: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    log_path = work_dir / "rollbackd.log"
    with log_path.open("a", encoding="utf-8") as log:
        configure_logging(LogSettings(level="INFO", format="text"), stream=log)
        try:
            result = asyncio.run(run_flag_loop(options, say=say))
        except (FlagLoopFailed, OSError) as exc:
            print(f"\ndemo FAILED: {exc}\nlogs kept in {work_dir}", flush=True)
            return 1
        except KeyboardInterrupt:
            print(f"\ndemo interrupted; logs kept in {work_dir}", flush=True)
            return 130
        finally:
            logging.getLogger().handlers.clear()
    print(f"\nflag on -> flag off: {result.on_to_off_s or 0:.1f}s; the flag reads {result.flag_after!r} in "
          "its store")
    shutil.rmtree(work_dir, ignore_errors=True)
    return 0
