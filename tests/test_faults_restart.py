"""SIGTERM and SIGKILL at every phase of a rollback: real ``rollbackd run`` processes, kmock's
emulated Kubernetes API, a real Prometheus scraping real sample apps, a private Mosquitto.

One daemon watches four canaries that are all bad from the start, so it decides to roll all four
back on the same tick; the emulated API server stops each rollback at a different phase by
holding one request until the test lets it go:

- ``decided``: the decision and ``rollback.started`` are recorded; the action's first write (the
  canary Ingress' weight) is held before the API server applies it: nothing changed yet;
- ``mid-action``: the weight is 0, the scale-down of the canary Deployment is held before it is
  applied (between two steps);
- ``acted``: every write is applied, the answer to the last one (the scale-down) is held: the
  cluster is rolled back, the daemon does not know yet and has not started verifying;
- ``verifying``: the action completed (``rollback.completed`` recorded) and the validation window
  is running.

The test stops the process (SIGTERM, or SIGKILL) once every target is in its phase, lets the held
requests go (the API server may apply them after their client is gone, as a real one would),
starts a new process on the same store, and checks: every rollback is finished exactly once (the
objects end rolled back, each change was applied once, one ``rollback.verified`` per target),
every audit record and event recorded before the stop is still there and delivered afterwards,
and neither process crashed. And it is one story per target, on the MQTT stream as in the outbox:
one ``rollback.started`` id, the original decision time and durations from it in
``rollback.completed`` and ``rollback.verified``, whose action lists every change of the run,
those the stopped process made included; each change was in the run's record before it was made.

And in process, with a store that is slow to write: a rollback's action touches the cluster only
once its decision, its ``rollback.started`` and the state a restart resumes from are recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import aiohttp.web
import attrs
import kmock
import pytest
import yaml

from rollbackd.actions.base import ActionResult, ChangeRecorder, Progress
from rollbackd.config.settings import (
    EventsSettings,
    HttpSettings,
    Settings,
    StoreSettings,
    VerificationSettings,
)
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.journal import Journal
from rollbackd.events.service import open_events
from rollbackd.params import TargetParams
from rollbackd.store import open_store
from rollbackd.store.base import AuditEntry, OutboxEvent
from rollbackd.store.base import Store as StoreProtocol
from tests.faultledger import FaultLedger
from tests.kubefixtures import (
    DEPLOYMENTS,
    INGRESSES,
    ClusterEmulator,
    saying,
    seed_deployment,
    seed_ingress,
    wait_until,
)
from tests.mqttfixtures import Mosquitto, mosquitto, subscribed
from tests.promfixtures import (
    HOST,
    PrometheusServer,
    SampleAppProcess,
    require_prometheus,
    start_prometheus,
    start_sample_app,
)
from tests.test_daemon import SEVERE, ScriptedHealth, ScriptedMetrics, canary
from tests.test_daemon_rollbacks import ScriptedAction, ScriptedTargets

__all__ = ["mosquitto"]  # fixture

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "shop"
STABLE = "web"
WEIGHT = "nginx.ingress.kubernetes.io/canary-weight"
#: The phase each target is stopped in, by target name.
PHASES = {"dec": "decided", "mid": "mid-action", "act": "acted", "ver": "verifying"}
VERIFICATION_WINDOW_S = 3.0


@dataclass
class Gate:
    """Holds the first request matching (method, resource, name, subresource) until released:
    ``before`` the API server applies it, or after (the write is stored, its answer held)."""

    method: str
    resource: kmock.resource
    name: str
    subresource: str | None = None
    before: bool = True
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    released: asyncio.Event = field(default_factory=asyncio.Event)
    used: bool = False

    def takes(self, request: kmock.Request) -> bool:
        return (
            not self.used
            and str(request.method).upper().endswith(self.method)
            and request.resource == self.resource
            and request.namespace == NAMESPACE
            and request.name == self.name
            and request.subresource == self.subresource
        )

    async def hold(self) -> None:
        self.used = True
        self.arrived.set()
        await self.released.wait()


@attrs.define(kw_only=True)
class GatedCluster(ClusterEmulator):
    """The emulated cluster with :class:`Gate` s, and a log of every change a write made."""

    gates: list[Gate] = attrs.field(factory=list)
    #: Called (once, by object name) when the first write to that object arrives.
    probes: dict[str, Callable[[], None]] = attrs.field(factory=dict)
    #: (object, field, before, after) of every applied write that changed the weight or replicas.
    changes: list[tuple[str, str, Any, Any]] = attrs.field(factory=list)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        watched = self._watched(request)
        if watched is not None and watched[1] in self.probes:
            self.probes.pop(watched[1])()
        gate = next((g for g in self.gates if g.takes(request)), None)
        if gate is not None and gate.before:
            await gate.hold()
        before = self._fields(watched)
        response = await super()._handle(request)
        after = self._fields(watched)
        for (what, old), (_, new) in zip(before, after, strict=True):
            if old != new:
                self.changes.append((f"{watched[0]}/{watched[1]}" if watched else "?", what, old, new))
        if gate is not None and not gate.before:
            await gate.hold()
        return response

    @staticmethod
    def _watched(request: kmock.Request) -> tuple[str, str] | None:
        if str(request.method).upper().endswith("GET") or request.name is None:
            return None
        if request.resource == INGRESSES:
            return "Ingress", request.name
        if request.resource == DEPLOYMENTS:
            return "Deployment", request.name
        return None

    def _fields(self, watched: tuple[str, str] | None) -> list[tuple[str, Any]]:
        if watched is None:
            return []
        kind, name = watched
        obj = self.read(INGRESSES if kind == "Ingress" else DEPLOYMENTS, NAMESPACE, name) or {}
        if kind == "Ingress":
            return [("weight", (obj.get("metadata") or {}).get("annotations", {}).get(WEIGHT))]
        return [("replicas", (obj.get("spec") or {}).get("replicas"))]


@dataclass
class Apps:
    prometheus: PrometheusServer
    stable: SampleAppProcess
    canaries: dict[str, SampleAppProcess]


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Apps]:
    """The stable version and four bad canaries (30% errors) serving their own traffic, and a
    Prometheus scraping them every second; shared by the tests of this module."""
    binary = require_prometheus()
    logs = tmp_path_factory.mktemp("apps")
    started: list[SampleAppProcess] = []
    prometheus: PrometheusServer | None = None
    try:
        stable = start_sample_app(
            deployment=STABLE, namespace=NAMESPACE, rps=100.0, error_rate=0.002, seed=0, log_dir=logs
        )
        started.append(stable)
        canaries: dict[str, SampleAppProcess] = {}
        for index, name in enumerate(PHASES, start=1):
            canaries[name] = start_sample_app(
                deployment=name, namespace=NAMESPACE, rps=50.0, error_rate=0.3, seed=index, log_dir=logs
            )
            started.append(canaries[name])
        prometheus = start_prometheus(
            targets=[app.address for app in started],
            data_dir=logs / "prometheus",
            scrape_interval_s=1.0,
            binary=binary,
            scrapes=2,
        )
        yield Apps(prometheus=prometheus, stable=stable, canaries=canaries)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for app in started:
            app.stop()


@pytest.fixture
async def cluster() -> AsyncIterator[GatedCluster]:
    """The emulated cluster, served, seeded with the stable Deployment and one canary Deployment
    and canary Ingress (weight 20) per target."""
    async with GatedCluster() as emu, kmock.Server(emu):
        seed_deployment(emu, NAMESPACE, STABLE, replicas=3, image="shop/web:1.4")
        for name in PHASES:
            seed_deployment(emu, NAMESPACE, name, replicas=1, image="shop/web:1.5", labels={"app": name})
            seed_ingress(
                emu, NAMESPACE, f"{name}-canary", service=name, host=f"{name}.example.com", canary_weight=20
            )
        yield emu


def write_config(tmp_path: Path, apps: Apps, cluster: GatedCluster, broker: Mosquitto, prefix: str) -> Path:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "emulated",
                "clusters": [{"name": "emulated", "cluster": {"server": str(cluster.url).rstrip("/")}}],
                "users": [{"name": "rollbackd", "user": {"token": "t"}}],
                "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "rollbackd"}}],
            }
        )
    )
    config = tmp_path / "rollbackd.yaml"
    config.write_text(yaml.safe_dump({
        "interval_s": 1.0,
        "prometheus": {"url": apps.prometheus.url, "timeout_s": 5, "retries": 0, "scrape_interval_s": 1},
        # Not asked: the kernel's pick, so that the restarted process never finds its port taken.
        "http": {"host": HOST, "port": 0},
        "log": {"level": "INFO", "format": "json"},
        # Held requests must stay held: no timeout while the test keeps them.
        "kubernetes": {"enabled": True, "kubeconfig": str(kubeconfig), "request_timeout_s": 120,
                       "availability_timeout_s": 30},
        "store": {"data_dir": str(tmp_path / "data")},
        "verification": {"window_s": VERIFICATION_WINDOW_S},
        "events": {
            "kubernetes_events": False,
            "retry_initial_s": 0.05,
            "retry_max_s": 0.5,
            "mqtt": {"enabled": True, "url": broker.url, "topic_prefix": prefix, "instance": "faults"},
        },
        "defaults": {
            "detection": {"window_s": 5, "baseline_window_s": 60, "min_requests": 20,
                          "min_latency_samples": 20},
            "policy": {"max_rollbacks_per_hour": 10},
        },
        "targets": [
            {"name": name, "namespace": NAMESPACE, "strategy": "canary", "ingress": f"{name}-canary",
             "baseline": {"deployment": STABLE}, "candidate": {"deployment": name}}
            for name in PHASES
        ],
    }))  # fmt: skip
    return config


class Store:
    """Reads the daemon's SQLite store directly (as an operator's ``sqlite3`` would)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _rows(self, query: str) -> list[tuple[Any, ...]]:
        if not self.path.exists():
            return []
        with contextlib.closing(sqlite3.connect(self.path, timeout=5)) as conn:
            try:
                return list(conn.execute(query))
            except sqlite3.OperationalError:  # not migrated yet
                return []

    def audit(self) -> list[tuple[int, str, str | None]]:
        rows = self._rows("SELECT seq, kind, target FROM audit_log ORDER BY seq")
        return [(int(seq), str(kind), target) for seq, kind, target in rows]

    def outbox(self) -> list[str]:
        return [str(i) for (i,) in self._rows("SELECT event_id FROM outbox ORDER BY seq")]

    def outbox_events(self, target: str) -> list[dict[str, Any]]:
        """The outbox's events about ``target``, in order."""
        rows = self._rows(
            f"SELECT payload FROM outbox WHERE subject = '{NAMESPACE}/{target}' ORDER BY seq"
        )
        return [json.loads(payload) for (payload,) in rows]

    def rollback_state(self, target: str) -> dict[str, Any] | None:
        key = f"rollback:{NAMESPACE}/{target}"
        for (value,) in self._rows(f"SELECT value FROM target_state WHERE key = '{key}'"):
            return json.loads(value) if value is not None else None
        return None

    def kinds(self, target: str) -> list[str]:
        return [kind for _, kind, t in self.audit() if t == f"{NAMESPACE}/{target}"]


async def start_daemon(
    config: Path, log: Path, *, environ: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``rollbackd run`` on ``config``, its output into ``log``; its environment is ``environ``
    (default: this process', without ``ROLLBACKD_*`` variables)."""
    if environ is None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollbackd", "run", "--config", str(config),
            cwd=REPO, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out, env=dict(environ),
        )  # fmt: skip


@pytest.mark.faults
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_rollback_stopped_at_any_phase_is_finished_once_after_a_restart(
    stop: signal.Signals,
    apps: Apps,
    cluster: GatedCluster,
    mosquitto: Mosquitto,
    tmp_path: Path,
    fault_ledger: FaultLedger,
) -> None:
    prefix = f"r{tmp_path.name[-10:]}"
    config = write_config(tmp_path, apps, cluster, mosquitto, prefix)
    store = Store(tmp_path / "data" / "rollbackd.db")
    log = tmp_path / "rollbackd.log"
    gates = {
        "dec": Gate("PATCH", INGRESSES, "dec-canary"),
        "mid": Gate("PATCH", DEPLOYMENTS, "mid", subresource="scale"),
        "act": Gate("PATCH", DEPLOYMENTS, "act", subresource="scale", before=False),
    }
    cluster.gates.extend(gates.values())
    # What the store held when each rollback's first write reached the API server.
    recorded_before_acting: dict[str, tuple[list[str], dict[str, Any] | None]] = {}

    def probe(name: str) -> Callable[[], None]:
        def look() -> None:
            recorded_before_acting[name] = (store.kinds(name), store.rollback_state(name))

        return look

    cluster.probes.update({f"{name}-canary": probe(name) for name in PHASES})
    # The run's record when each scale-down of a canary Deployment reached the API server.
    recorded_before_scaling: dict[str, dict[str, Any] | None] = {}

    def probe_scale(name: str) -> Callable[[], None]:
        def look() -> None:
            recorded_before_scaling[name] = store.rollback_state(name)

        return look

    cluster.probes.update({name: probe_scale(name) for name in PHASES})

    def tail() -> str:
        return "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""

    async with subscribed(
        mosquitto.options, f"{prefix}/v1/+/+/events/+", session=f"{prefix}-watcher"
    ) as subscriber:
        first = await start_daemon(config, log)
        try:
            for name, gate in gates.items():
                await wait_until(gate.arrived.is_set, timeout_s=120,
                                 what=saying(PHASES[name], tail))
            await wait_until(
                lambda: "rollback.completed" in store.kinds("ver"), timeout_s=60,
                what=lambda: f"verifying: {tail()}",
            )
            assert first.returncode is None, tail()
            before_stop_audit = store.audit()
            first.send_signal(stop)
            fault_ledger.fault(f"{stop.name} with rollbacks decided, mid-action, acted and verifying")
            code = await asyncio.wait_for(first.wait(), timeout=30)
        finally:
            if first.returncode is None:
                first.kill()
                await first.wait()
        for gate in gates.values():
            gate.released.set()
        assert code == (0 if stop is signal.SIGTERM else -signal.SIGKILL), tail()
        audit_at_stop = store.audit()
        outbox_at_stop = store.outbox()
        assert audit_at_stop[: len(before_stop_audit)] == before_stop_audit

        restarted_at = datetime.now(UTC)
        second = await start_daemon(config, log)
        try:
            await wait_until(
                lambda: all("rollback.verified" in store.kinds(name) for name in PHASES),
                timeout_s=120,
                what=lambda: f"every rollback verified after the restart: {tail()}",
            )
            assert second.returncode is None, tail()
            second.send_signal(signal.SIGTERM)
            second_code = await asyncio.wait_for(second.wait(), timeout=30)
        finally:
            if second.returncode is None:
                second.kill()
                await second.wait()
        assert second_code == 0, tail()

        outbox = store.outbox()
        await wait_until(
            lambda: set(outbox) <= {m.json()["id"] for m in subscriber.messages},
            timeout_s=60,
            what="every event delivered",
        )
        delivered = {m.json()["id"] for m in subscriber.messages}
        streamed = [m.json() for m in subscriber.messages if not m.retain]

    audit = store.audit()
    lost_records = [entry for entry in audit_at_stop if entry not in audit]
    lost_events = [event for event in outbox_at_stop if event not in delivered]
    crashes = int("Traceback" in log.read_text(errors="replace")) + int(second_code != 0)
    fault_ledger.observe(records_lost=len(lost_records) + len(lost_events), crashes=crashes)
    assert lost_records == []
    assert lost_events == []
    assert crashes == 0, tail()

    # Each rollback finished once: rolled back, each change applied once, verified once.
    for name, phase in PHASES.items():
        ingress = cluster.read(INGRESSES, NAMESPACE, f"{name}-canary") or {}
        deployment = cluster.read(DEPLOYMENTS, NAMESPACE, name) or {}
        assert ingress["metadata"]["annotations"][WEIGHT] == "0", phase
        assert deployment["spec"]["replicas"] == 0, phase
        mine = (f"Deployment/{name}", f"Ingress/{name}-canary")
        changed = [change for change in cluster.changes if change[0] in mine]
        assert sorted(changed) == sorted(
            [
                ("Deployment/" + name, "replicas", 1, 0),
                ("Ingress/" + name + "-canary", "weight", "20", "0"),
            ]
        ), (phase, changed)
        kinds = store.kinds(name)
        assert kinds.count("rollback.verified") == 1, (phase, kinds)
        assert kinds.count("rollback.started") == 1, (phase, kinds)
        assert kinds.count("rollback.completed") == 1, (phase, kinds)
    assert (cluster.read(DEPLOYMENTS, NAMESPACE, STABLE) or {})["spec"]["replicas"] == 3

    # One story per target, on the MQTT stream as in the outbox, told by both processes together.
    for name, phase in PHASES.items():
        subject = f"{NAMESPACE}/{name}"
        for where, events in (
            ("mqtt", [e for e in streamed if e["subject"] == subject]),
            ("outbox", store.outbox_events(name)),
        ):
            started = {e["id"]: e for e in events if e["type"] == "io.rollbackd.rollback.started"}
            assert len(started) == 1, (phase, where, list(started))
            (first_story,) = started.values()
            decided_at = datetime.fromisoformat(first_story["data"]["decided_at"])
            assert first_story["data"]["reasons"], (phase, where)  # the decision's, not empty
            run_id = first_story["data"]["run_id"]
            assert datetime.fromisoformat(first_story["time"]) < restarted_at, (phase, where)  # the first's
            for kind in ("rollback.completed", "rollback.verified"):
                (event,) = {e["id"]: e for e in events if e["type"] == f"io.rollbackd.{kind}"}.values()
                data = event["data"]
                assert data["run_id"] == run_id, (phase, where, kind)
                assert datetime.fromisoformat(data["decided_at"]) == decided_at, (phase, where, kind)
                # Measured from the original decision: the whole time, the restart included.
                at = datetime.fromisoformat(event["time"])
                assert abs(data["duration_s"] - (at - decided_at).total_seconds()) < 1.0, (phase, where, kind)
                if kind == "rollback.verified" or phase != "verifying":
                    assert data["duration_s"] >= (restarted_at - decided_at).total_seconds(), (phase, kind)
                changes = {
                    (c["object"], c["field"]): (c["before"], c["after"]) for c in data["action"]["changes"]
                }
                assert len(changes) == len(data["action"]["changes"]), (phase, where, kind)  # each once
                assert changes == {
                    (f"Ingress/{NAMESPACE}/{name}-canary", f"metadata.annotations[{WEIGHT}]"): ("20", "0"),
                    (f"Deployment/{NAMESPACE}/{name}", "spec.replicas"): (1, 0),
                }, (phase, where, kind)

    # Each change was in the run's record before it reached the API server.
    for name, state in recorded_before_scaling.items():
        assert state is not None, PHASES[name]
        recorded = {(c["object"], c["field"]): c for c in state["changes"]}
        scale = recorded[(f"Deployment/{NAMESPACE}/{name}", "spec.replicas")]
        assert (scale["before"], scale["after"]) == (1, 0), (PHASES[name], state)

    # Nothing was done before it was recorded: each rollback's first write came after its
    # rollback.started record and the state a restart resumes from.
    for name, (kinds, state) in recorded_before_acting.items():
        assert "rollback.started" in kinds, (PHASES[name], kinds)
        assert state is not None, PHASES[name]
        assert state["phase"] == "acting", (PHASES[name], state)
        (weight,) = state["changes"]  # the change about to be made, not made yet
        assert (weight["field"], weight["before"], weight["after"], weight["made"]) == (
            f"metadata.annotations[{WEIGHT}]", "20", "0", False
        ), (PHASES[name], state)


class SlowStore:
    """A real store whose writes each take ``delay_s`` first (a database under load)."""

    def __init__(self, inner: StoreProtocol, delay_s: float) -> None:
        self.inner = inner
        self.delay_s = delay_s

    async def record(self, entry: AuditEntry, events: Sequence[OutboxEvent] = ()) -> AuditEntry:
        await asyncio.sleep(self.delay_s)
        return await self.inner.record(entry, events)

    async def put_state(self, key: str, value: Mapping[str, Any] | None) -> None:
        await asyncio.sleep(self.delay_s)
        await self.inner.put_state(key, value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class WatchingTargets(ScriptedTargets):
    """A scripted cluster whose action first looks at what the store holds for the target."""

    store: StoreProtocol | None = None
    seen: list[tuple[list[str], Mapping[str, Any] | None]] = field(default_factory=list)

    def action(
        self, params: TargetParams, *, bad_revision: int | None = None, why: object = None
    ) -> ScriptedAction:
        cluster = self

        class Watching(ScriptedAction):
            async def run(self, *, dry_run: bool, recorder: ChangeRecorder | None = None,
                          progress: Progress | None = None) -> ActionResult:
                assert cluster.store is not None
                kinds = [entry.kind for entry in await cluster.store.history(target=params.key)]
                cluster.seen.append((kinds, await cluster.store.get_state(f"rollback:{params.key}")))
                return await super().run(dry_run=dry_run, recorder=recorder, progress=progress)

        return Watching(self)


@pytest.mark.faults
async def test_a_rollback_touches_the_cluster_only_once_its_start_is_recorded(
    tmp_path: Path, fault_ledger: FaultLedger
) -> None:
    config = Settings(
        interval_s=0.1,
        http=HttpSettings(host="127.0.0.1", port=0),
        store=StoreSettings(data_dir=str(tmp_path / "data")),
        verification=VerificationSettings(window_s=0.5),
        events=EventsSettings(kubernetes_events=False),
        targets=(canary("checkout"),),
    )
    inner = open_store(None, data_dir=tmp_path / "data")
    await inner.open()
    cluster = WatchingTargets(action_s=0.05, store=inner)
    journal = Journal(required=True)
    try:
        slow = cast(StoreProtocol, SlowStore(inner, delay_s=0.3))
        async with open_events(config, store=slow, environ={}) as events:
            journal.attach(events, slow)
            fault_ledger.fault("store slow while a rollback starts")
            async with Daemon(
                config,
                metrics_source=ScriptedMetrics(SEVERE),
                health_source=ScriptedHealth(),
                targets=cluster,
                journal=journal,
            ) as daemon:
                await wait_until(lambda: bool(cluster.seen), timeout_s=20, what="the action")
                await wait_until(
                    lambda: not daemon.rollbacks.runs["shop/checkout"].phase.active,
                    timeout_s=20,
                    what="the rollback finished",
                )
            journal.detach()
    finally:
        await inner.close()
    ((kinds, state),) = cluster.seen
    assert "rollback.started" in kinds
    assert state is not None
    assert state["phase"] == "acting"
