"""``rollbackd demo``: every scenario run as the real command, plus its load generator and its
Prometheus-free metrics source on their own.

The demo runs (canary, blue-green, deployment and gateway with Prometheus when it is installed;
canary, the two gitops ones and config with ``--no-prometheus``) start together, as subprocesses,
once for the module; each test reads one run's timeline. Without a ``prometheus`` binary the first four run
without it too, and the timeline must say so.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import aiomqtt
import pytest

pytest.importorskip("kmock", reason="the demo needs kmock (the demo extra) for its emulated Kubernetes API")

from rollbackd.config.settings import GatewayApiRouterSettings, IngressNginxRouterSettings
from rollbackd.demo.direct import DirectMetricsSource
from rollbackd.demo.emulator import CONFIGMAPS
from rollbackd.demo.processes import find_prometheus, free_port
from rollbackd.demo.scenarios import GATEWAY
from rollbackd.demo.traffic import UNROUTED, LoadGenerator, RouterRouting, RoutingChange
from rollbackd.events.follow import statuses
from rollbackd.events.mqtt import Topics
from rollbackd.kube import KubeClient, objects
from rollbackd.sources.base import QueryTemplates, SeriesRef, SourceTarget
from tests import crdschemas
from tests.kubefixtures import (
    GATEWAYS,
    HTTPROUTES,
    ClusterEmulator,
    Controllers,
    seed_ingress,
    seed_route,
    wait_until,
)
from tests.mqttfixtures import Mosquitto, mosquitto
from tests.promfixtures import astart_sample_app

__all__ = ["mosquitto"]  # fixtures

#: Generous: a run takes about half a minute alone, longer beside three others on a small machine.
RUN_TIMEOUT_S = 240.0

RUNS = {
    "canary": ["--scenario", "canary"],
    "bluegreen": ["--scenario", "bluegreen"],
    "deployment": ["--scenario", "deployment"],
    "gateway": ["--scenario", "gateway"],
    "canary-direct": ["--scenario", "canary", "--no-prometheus"],
    "gitops": ["--scenario", "gitops", "--no-prometheus"],
    "gitops-ignore": ["--scenario", "gitops", "--gitops", "ignore", "--no-prometheus"],
    "config": ["--scenario", "config", "--no-prometheus"],
}

#: scenario -> (the bad backend, the good one, the action, a change the action must report)
EXPECTED = {
    "canary": ("canary", "stable", "canary-abort",
               "changed Ingress/shop/web-canary "
               "metadata.annotations[nginx.ingress.kubernetes.io/canary-weight]: '20' -> '0'"),
    "bluegreen": ("green", "blue", "blue-green-switch-back",
                  "changed Service/shop/web spec.selector: {'app': 'web', 'colour': 'green'} -> "
                  "{'app': 'web', 'colour': 'blue'}"),
    "gitops": ("canary", "stable", "canary-abort",
               "changed Application/argocd/shop-web spec.syncPolicy.automated: "
               "{'prune': True, 'selfHeal': True} -> None"),
    "deployment": ("v1.5", "v1.4", "deployment-undo",
                   "changed Deployment/shop/web spec.template: 'revision 2 (web=shop/web:1.5)' -> "
                   "'revision 1 (web=shop/web:1.4)'"),
    "gateway": ("canary", "stable", "canary-abort",
                "changed HTTPRoute/shop/web spec.rules[0].backendRefs[1].weight: 20 -> 0"),
}

STAMP = re.compile(r"^\s*(\d+\.\d)s  (.*)$")


@dataclass(frozen=True)
class Run:
    args: list[str]
    returncode: int
    output: str

    def line(self, pattern: str) -> tuple[int, str]:
        """The index and text of the first line matching ``pattern`` (a regex); fails if none."""
        for index, text in enumerate(self.output.splitlines()):
            if re.search(pattern, text):
                return index, text
        raise AssertionError(f"no line matches {pattern!r} in the output of {self.args}:\n{self.output}")

    def stamp(self, pattern: str) -> float:
        """Seconds since the start on the first timestamped line matching ``pattern``."""
        _, text = self.line(pattern)
        found = STAMP.match(text)
        assert found is not None, f"not a timeline line: {text!r}"
        return float(found.group(1))


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    """Every run of :data:`RUNS`, started together and awaited."""
    cwd = tmp_path_factory.mktemp("demo")  # not the repository: the command must not need it
    started: dict[str, tuple[list[str], subprocess.Popen[str]]] = {}
    try:
        for name, args in RUNS.items():
            command = [sys.executable, "-m", "rollbackd", "demo", *args]
            started[name] = (command, subprocess.Popen(
                command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ))
        runs: dict[str, Run] = {}
        for name, (command, process) in started.items():
            try:
                output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.terminate()  # the demo stops its child processes on SIGTERM
                output, _ = process.communicate(timeout=30)
                pytest.fail(f"{command} did not finish within {RUN_TIMEOUT_S:g}s:\n{output}")
            runs[name] = Run(command, process.returncode, output)
        yield runs
    finally:
        for _, process in started.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def _check_story(run: Run, scenario: str) -> None:
    bad, good, action, change = EXPECTED[scenario]
    assert run.returncode == 0, run.output
    run.line(r"EMULATED Kubernetes API \(kmock\) -- not a real cluster")
    fault = run.stamp(rf"FAULT: '{re.escape(bad)}' .* now fails 30% of its requests")
    decision = run.stamp(r"rollbackd decision: ROLLBACK \(immediate\)")
    acted = run.stamp(rf"action {action}: done")
    switched = run.stamp(rf"routing \(.*\): {re.escape(good)} 100% -- '{re.escape(bad)}' gets no traffic")
    verified = run.stamp(r"VERIFIED: rollback verified after")
    assert fault <= decision <= acted <= verified
    assert fault <= switched <= verified
    index, _ = run.line(rf"action {action}: done")
    change_index, _ = run.line(re.escape(change))
    assert change_index > index
    run.line(rf"fault -> '{re.escape(bad)}' gets no traffic +\d+\.\ds")
    run.line(rf"traffic after the switch +{re.escape(good)} \d+ ")
    _, after = run.line(r"traffic after the switch")
    assert f"{bad} " not in after.split("switch", 1)[1]
    run.line(rf"demo OK: .* all traffic on '{re.escape(good)}'")


def _check_metrics_source(run: Run, *, direct_asked: bool) -> None:
    if direct_asked:
        run.line(r"NO PROMETHEUS: --no-prometheus given; rollbackd reads the sample apps' /metrics directly")
    elif find_prometheus() is None:
        run.line(r"NO PROMETHEUS: no 'prometheus' binary on the PATH; rollbackd reads the sample apps'")
    else:
        run.line(r"Prometheus \S+ at http://127\.0\.0\.1:\d+, scraping the sample apps every 1s")
        assert "NO PROMETHEUS" not in run.output


@pytest.mark.parametrize("scenario", ["canary", "bluegreen", "deployment", "gateway"])
def test_each_scenario_rolls_back_and_verifies(demo_runs: dict[str, Run], scenario: str) -> None:
    run = demo_runs[scenario]
    _check_story(run, scenario)
    _check_metrics_source(run, direct_asked=False)


def test_the_canary_demo_works_without_prometheus(demo_runs: dict[str, Run]) -> None:
    run = demo_runs["canary-direct"]
    _check_story(run, "canary")
    _check_metrics_source(run, direct_asked=True)
    assert "Prometheus " not in run.output.replace("NO PROMETHEUS", "")


def test_under_gitops_suspend_the_rollback_outlasts_the_reconciler(demo_runs: dict[str, Run]) -> None:
    run = demo_runs["gitops"]
    _check_story(run, "gitops")
    suspended, _ = run.line(re.escape("changed Application/argocd/shop-web spec.syncPolicy.automated"))
    flux, _ = run.line(re.escape("changed Kustomization/flux-system/shop-canary spec.suspend: False -> True"))
    weight, _ = run.line(re.escape("changed Ingress/shop/web-canary metadata.annotations"))
    assert suspended < weight
    assert flux < weight
    held = run.stamp(r"the GitOps reconciler made 3 more passes and put nothing back: the rollback holds")
    assert held >= run.stamp(r"VERIFIED:")
    run.line(re.escape("Git still declares the bad version; revert it in Git, then resume reconciliation"))
    assert "put Ingress/shop/web-canary back" not in run.output


def test_under_gitops_ignore_the_reconciler_undoes_the_rollback(demo_runs: dict[str, Run]) -> None:
    run = demo_runs["gitops-ignore"]
    assert run.returncode == 1, run.output
    started = run.stamp(r"rollback started")
    run.line(r"action canary-abort: done")
    undone = run.stamp(r"GitOps reconciler: Application/argocd/shop-web put Ingress/shop/web-canary back "
                       r"as Git declares it \(the bad version\)")
    assert undone >= started
    run.line(r"demo FAILED: the GitOps reconciler undid the rollback: .*\(gitops: ignore\)")
    assert "spec.syncPolicy.automated" not in run.output


def test_the_blue_green_demo_releases_green_before_the_fault(demo_runs: dict[str, Run]) -> None:
    run = demo_runs["bluegreen"]
    release = run.stamp(r"RELEASE: Service shop/web switched to green")
    to_green = run.stamp(r"routing \(Service shop/web\): green 100%")
    assert release <= to_green < run.stamp(r"FAULT:")


def test_the_gateway_demo_leaves_the_route_at_weight_0_accepted_by_its_gateway(
    demo_runs: dict[str, Run],
) -> None:
    run = demo_runs["gateway"]
    run.line(r"seeded HTTPRoute shop/web: shop\.example\.com on Gateway shop-gateway -> backendRefs "
             r"web weight 80, web-canary weight 20")
    run.line(r"routing \(HTTPRoute shop/web\): canary 20%, stable 80%")
    run.line(r"action canary-abort: done .* canary aborted: no traffic to it \(HTTPRoute shop/web\), "
             r"scaled to 0")
    run.line(re.escape("changed HTTPRoute/shop/web spec.rules[0].backendRefs[0].weight: 80 -> 100"))
    run.line(re.escape("changed Deployment/shop/web-canary spec.replicas: 1 -> 0"))
    verified = run.stamp(r"VERIFIED: rollback verified after")
    # What the cluster says once the rollback is verified: the canary's weight is 0, and the
    # Gateway accepted that generation of the route.
    after = run.stamp(r"after the rollback: HTTPRoute shop/web \(generation 2\): rule 0: web weight 100, "
                      r"web-canary weight 0 -- the canary gets 0% as rollbackd reads the split")
    assert after >= verified
    run.line(r"HTTPRoute status, parent Gateway shop/shop-gateway: Accepted True, ResolvedRefs True "
             r"\(generation 2\)")
    run.line(r"Gateway shop/shop-gateway: Accepted True, Programmed True; listener http: "
             r"1 route\(s\) attached")
    # No request reaches the canary after the switch: every traffic report after it names stable only.
    switched = run.stamp(r"routing \(HTTPRoute shop/web\): stable 100% -- 'canary' gets no traffic")
    reports = [(float(found.group(1)), found.group(2)) for found in map(STAMP.match, run.output.splitlines())
               if found is not None and found.group(2).startswith("traffic, last 3s:")]
    later = [text for t, text in reports if t >= switched + 4.0]  # whole seconds after the switch
    assert later, run.output
    assert all("canary" not in text for text in later), later


def test_the_config_demo_restores_the_configmap_restarts_the_deployment_and_the_errors_go(
    demo_runs: dict[str, Run],
) -> None:
    run = demo_runs["config"]
    assert run.returncode == 0, run.output
    run.line(r"EMULATED Kubernetes API \(kmock\) -- not a real cluster")
    run.line(r"seeded ConfigMap shop/checkout-config: payments\.timeout_ms=800")
    fault = run.stamp(r"FAULT, a release: ConfigMap shop/checkout-config changed through the API .*"
                      r"payments\.timeout_ms '800' -> '60'")
    seen = run.stamp(r"rollbackd saw a release: config config:shop/checkout-config@\d+ \(release\.started, "
                     r"keys changed: payments\.timeout_ms\)")
    decision = run.stamp(r"rollbackd decision: ROLLBACK \(immediate\)")
    acted = run.stamp(r"action config-restore: done .* restored the ConfigMaps checkout-config to their "
                      r"previous data; restarted checkout, fully available")
    gone = run.stamp(r"errors gone: 'checkout' failed \d+ of its \d+ requests in this second")
    verified = run.stamp(r"VERIFIED: rollback verified after")
    assert fault <= seen <= decision <= acted <= verified
    assert decision <= gone <= verified
    action, _ = run.line(r"action config-restore: done")
    restored, _ = run.line(re.escape("changed ConfigMap/shop/checkout-config data: "
                                     "{'payments.timeout_ms': '60'} -> {'payments.timeout_ms': '800'}"))
    restarted, _ = run.line(re.escape("changed Deployment/shop/checkout spec.template.metadata.annotations"
                                      "[kubectl.kubernetes.io/restartedAt]: None -> '") + r"\d{4}-\d\d-\d\dT")
    assert action < restored < restarted
    # What the cluster says once the rollback is verified: the data of before the change, and the
    # Deployment rolled out again with the restart annotation.
    assert run.stamp(r"after the rollback: ConfigMap shop/checkout-config \(resourceVersion \d+\): "
                     r"payments\.timeout_ms=800, payments\.url=") >= verified
    run.line(r"Deployment shop/checkout: kubectl\.kubernetes\.io/restartedAt=\d{4}-\d\d-\d\dT\S+Z, "
             r"revision 2, 3/3 replicas available \(rolled out\)")
    # The app's errors followed the ConfigMap: many between the change and the recovery, few after.
    _, during = run.line(r"traffic from the fault to the recovery +checkout \d+ \(\d+ failed\)")
    sent, failed = (int(n) for n in re.findall(r"(\d+)", during.split("recovery", 1)[1]))
    assert failed >= 0.1 * sent, during
    _, after = run.line(r"traffic after the recovery +checkout \d+ \(\d+ failed\)")
    sent, failed = (int(n) for n in re.findall(r"(\d+)", after.split("recovery", 1)[1]))
    assert sent > 0
    assert failed <= 0.02 * sent, after
    run.line(r"fault -> 'checkout' errors gone +\d+\.\ds")
    run.line(r"demo OK: config rolled back and verified; 'checkout' serves without the errors")


async def test_the_sample_app_follows_its_configmap(kube_cluster: ClusterEmulator, kube: KubeClient,
                                                    tmp_path: Path) -> None:
    """The config demo's pods: a payments timeout of 0 ms fails every request, 800 ms none."""
    kube_cluster.store(CONFIGMAPS, "shop", {"metadata": {"name": "checkout-config"},
                                            "data": {"payments.timeout_ms": "0"}})
    url = f"{kube_cluster.url}/api/v1/namespaces/shop/configmaps/checkout-config"
    app = await astart_sample_app(deployment="checkout", namespace="shop", config_url=url, log_dir=tmp_path)
    try:
        async def statuses_now() -> list[int]:
            async with aiohttp.ClientSession() as session:
                found = []
                for _ in range(20):
                    async with session.get(f"{app.url}/work") as response:
                        found.append(response.status)
                return found

        async def all_are(status: int) -> bool:
            return set(await statuses_now()) == {status}

        await wait_until(lambda: all_are(500), timeout_s=30, what="every request failing at a 0 ms timeout")
        await objects.patch_configmap(kube, namespace="shop", name="checkout-config",
                                      patch={"data": {"payments.timeout_ms": "800"}})
        await wait_until(lambda: all_are(200), timeout_s=30, what="no request failing at an 800 ms timeout")
    finally:
        await app.astop()


async def test_the_gateway_scenario_seeds_what_the_gateway_api_accepts(kube_cluster: ClusterEmulator) -> None:
    lines = GATEWAY.seed(kube_cluster)
    assert any(line.startswith("HTTPRoute shop/web:") for line in lines)
    async with Controllers(kube_cluster):
        await wait_until(
            lambda: bool((kube_cluster.read(GATEWAYS, "shop", "shop-gateway") or {}).get("status"))
            and bool((kube_cluster.read(HTTPROUTES, "shop", "web") or {}).get("status")),
            what="the emulated gateway's reports",
        )
    for resource, name in ((GATEWAYS, "shop-gateway"), (HTTPROUTES, "web")):
        seeded = kube_cluster.read(resource, "shop", name)
        assert seeded is not None
        crdschemas.validate(seeded)


def test_sigterm_stops_the_demo_and_its_child_processes(tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-m", "rollbackd", "demo", "--no-prometheus"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "rollbackd daemon running" in line:
                break
        pids = [int(pid) for pid in re.findall(r"\(pid (\d+)\)", "".join(lines))]
        assert len(pids) == 2, "".join(lines)
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 143, "".join(lines) + rest
    assert "demo stopped by SIGTERM" in rest
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_demo_past_its_time_limit_fails_saying_how_to_give_it_more(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rollbackd", "demo", "--scenario", "deployment", "--no-prometheus",
         "--timeout", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert re.search(r"demo FAILED: timed out waiting for .* \(the demo's time limit, start-up included, "
                     r"is 1s: --timeout gives more\)", done.stdout), done.stdout


def test_free_ports_are_not_the_ones_outgoing_connections_take() -> None:
    """A port the kernel may hand to an outgoing connection could be taken before the server it
    was picked for binds it: free_port picks outside the ephemeral range, ports a server can bind."""
    low, high = (int(part) for part in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 40  # at random, not one port over and over
    for port in ports:
        assert not low <= port <= high, port
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
            server.bind(("127.0.0.1", port))
            server.listen()


def test_without_kmock_the_demo_says_which_extra_to_install() -> None:
    blocked = ("import sys; sys.modules['kmock'] = None; "  # as if kmock were not installed
               "from rollbackd.cli import main; sys.exit(main(['demo']))")
    done = subprocess.run([sys.executable, "-c", blocked], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "pip install 'rollbackd[demo]'" in done.stderr


def test_an_unknown_scenario_is_a_usage_error() -> None:
    done = subprocess.run([sys.executable, "-m", "rollbackd", "demo", "--scenario", "rolling"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid choice: 'rolling'" in done.stderr


# --- the parts on their own ----------------------------------------------------------------------

async def test_the_load_generator_follows_the_canary_weight(kube_cluster: ClusterEmulator, kube: KubeClient,
                                                            tmp_path: Path) -> None:
    seed_ingress(kube_cluster, "shop", "web-canary", service="web-canary", host="shop.example.com",
                 canary_weight=20)
    stable = await astart_sample_app(deployment="web", namespace="shop", log_dir=tmp_path)
    canary = await astart_sample_app(deployment="web-canary", namespace="shop", log_dir=tmp_path)
    changes: list[RoutingChange] = []
    try:
        routing = RouterRouting(namespace="shop", stable="stable", canary="canary",
                                router=IngressNginxRouterSettings(kind="ingress-nginx", ingress="web-canary"))
        backends = {"stable": stable.url, "canary": canary.url}
        async with LoadGenerator(kube=kube, routing=routing, backends=backends, rps=50,
                                 routing_interval_s=0.2, on_change=changes.append) as load:
            await wait_until(lambda: requests_sent(load) >= 50, interval_s=0.05, what="50 requests sent")
            weighted = load.totals()
            await objects.patch_ingress(kube, namespace="shop", name="web-canary", patch={
                "metadata": {"annotations": {objects.CANARY_WEIGHT_ANNOTATION: "0"}}})
            await wait_until(lambda: len(changes) >= 2, interval_s=0.05, what="the routing change seen")
            switched_at = changes[1].t
            sent_before = requests_sent(load)
            await wait_until(lambda: requests_sent(load) >= sent_before + 25, what="25 more requests")
            last_canary = load.last_sent("canary")
    finally:
        await stable.astop()
        await canary.astop()

    # Exactly one request in five went to the canary while its weight was 20.
    sent = weighted["stable"].sent + weighted["canary"].sent
    assert abs(weighted["canary"].sent - sent / 5) <= 1
    assert weighted["canary"].ok + weighted["canary"].failed <= weighted["canary"].sent
    assert [dict(c.shares) for c in changes] == [{"stable": 0.8, "canary": 0.2}, {"stable": 1.0}]
    assert last_canary is not None
    assert last_canary <= switched_at
    assert UNROUTED not in load.totals()


async def test_the_load_generator_follows_a_gateway_route_as_rollbackd_aborts_it(
    kube_cluster: ClusterEmulator, kube: KubeClient, tmp_path: Path
) -> None:
    seed_route(kube_cluster, "shop", "web", rules=[{"web": 75, "web-canary": 25}])
    stable = await astart_sample_app(deployment="web", namespace="shop", log_dir=tmp_path)
    canary = await astart_sample_app(deployment="web-canary", namespace="shop", log_dir=tmp_path)
    changes: list[RoutingChange] = []
    router = GatewayApiRouterSettings(kind="gateway-api", route="web", canary_service="web-canary",
                                      stable_service="web")
    try:
        routing = RouterRouting(namespace="shop", router=router, stable="stable", canary="canary")
        assert routing.source == "HTTPRoute shop/web"
        backends = {"stable": stable.url, "canary": canary.url}
        async with LoadGenerator(kube=kube, routing=routing, backends=backends, rps=50,
                                 routing_interval_s=0.2, on_change=changes.append) as load:
            await wait_until(lambda: requests_sent(load) >= 40, interval_s=0.05, what="40 requests sent")
            weighted = load.totals()
            kube_cluster.update(HTTPROUTES, "shop", "web", {"spec": {"rules": [{"backendRefs": [
                {"name": "web", "port": 80, "weight": 100},
                {"name": "web-canary", "port": 80, "weight": 0}]}]}})
            await wait_until(lambda: len(changes) >= 2, interval_s=0.05, what="the routing change seen")
    finally:
        await stable.astop()
        await canary.astop()

    sent = weighted["stable"].sent + weighted["canary"].sent
    assert abs(weighted["canary"].sent - sent / 4) <= 1
    assert [dict(c.shares) for c in changes] == [{"stable": 0.75, "canary": 0.25}, {"stable": 1.0}]


async def test_the_direct_source_counts_what_each_side_served_between_two_collects(tmp_path: Path) -> None:
    stable = await astart_sample_app(deployment="web", namespace="shop", log_dir=tmp_path)
    canary = await astart_sample_app(deployment="web-canary", namespace="shop", error_rate=1.0,
                                     log_dir=tmp_path)
    labels = ("namespace", "deployment")
    target = SourceTarget(
        key="shop/web",
        queries=QueryTemplates(requests="r", errors="e", latency_buckets="l", group_labels=labels),
        baseline=SeriesRef(labels=(("namespace", "shop"), ("deployment", "web"))),
        candidate=SeriesRef(labels=(("namespace", "shop"), ("deployment", "web-canary"))),
    )
    try:
        async with DirectMetricsSource(urls=[f"{stable.url}/metrics", f"{canary.url}/metrics"]) as source:
            first = await source.collect([target], window_s=1.0)
            await _requests(stable.url, 30)
            await _requests(canary.url, 10)
            second = await source.collect([target], window_s=1.0)
            third = await source.collect([target], window_s=1.0)
            await canary.astop()
            fourth = await source.collect([target], window_s=1.0)
    finally:
        await stable.astop()
        await canary.astop()

    assert first == {"shop/web": (None, None)}  # nothing to compare with yet
    baseline, candidate = second["shop/web"]
    assert baseline is not None
    assert candidate is not None
    assert (baseline.requests, baseline.errors) == (30, 0)
    assert (candidate.requests, candidate.errors) == (10, 10)
    assert candidate.latency is not None
    assert candidate.latency.total == 10
    assert candidate.p95_ms is not None
    assert 0 < candidate.p95_ms < 1000
    quiet_baseline, quiet_candidate = third["shop/web"]
    assert quiet_baseline is not None
    assert quiet_baseline.requests == 0
    assert quiet_candidate is not None
    assert quiet_candidate.requests == 0
    # An app that cannot be scraped is missing data, not zero traffic.
    still_there, gone = fourth["shop/web"]
    assert still_there is not None
    assert gone is None
    assert source.stats.errors["connection"] == 1


def requests_sent(load: LoadGenerator) -> int:
    """Requests the load generator sent so far, to every backend."""
    return sum(t.sent for t in load.totals().values())


async def _requests(url: str, count: int) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.get(f"{url}/work") as response:
                await response.read()


async def test_linger_keeps_the_status_page_up_and_the_end_clears_the_retained_messages(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """``make demo DEMO_ARGS=--linger``: the page answers after the story until Ctrl-C (exit 0);
    the demo's retained MQTT messages are there while it runs and gone once it ended."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "rollbackd", "demo", "--no-prometheus", "--linger", "--mqtt-url", mosquitto.url,
        cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(RUN_TIMEOUT_S):
            while not lines or "--linger: the status page stays up" not in lines[-1]:
                line = (await process.stdout.readline()).decode()
                assert line, "".join(lines)
                lines.append(line)
        page = re.search(r"(http://127\.0\.0\.1:\d+/)", lines[-1])
        assert page is not None, lines[-1]
        async with aiohttp.ClientSession() as session, session.get(page.group(1)) as response:
            assert response.status == 200
            assert "shop/web" in await response.text()
        retained = await statuses(options=mosquitto.options, topics=Topics())
        assert [status["subject"] for status in retained] == ["shop/web"]
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            rest, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, "".join(lines) + rest.decode()
    assert await statuses(options=mosquitto.options, topics=Topics()) == []
    async with aiomqtt.Client("127.0.0.1", mosquitto.port) as client:
        await client.subscribe(Topics().liveness("demo"), qos=1)
        with pytest.raises(TimeoutError):  # nothing retained: nothing delivered
            async with asyncio.timeout(1.0):
                await anext(aiter(client.messages))
