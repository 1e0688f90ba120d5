"""Configuration reload without a restart: the watched file changes, valid changes are applied
(and logged), invalid ones are refused with the old configuration kept -- including the symlink
swap a Kubernetes ConfigMap volume does."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from rollbackd.config.loader import load_settings
from rollbackd.config.settings import Settings
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.reload import ConfigWatcher, SettingsChange, plan_reload
from rollbackd.model import Sample
from tests.kubefixtures import wait_until
from tests.test_daemon import Api, ScriptedHealth, ScriptedMetrics

#: 0.8% errors on the candidate, 0.1% on the baseline: within a 1% SLO, a breach of a 0.5% one.
NEAR_THE_LINE = (Sample(requests=2000, errors=2), Sample(requests=2000, errors=16))

INTERVAL_S = 0.2
POLL_S = 0.5


def target(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": "shop",
        "strategy": "canary",
        "ingress": f"{name}-canary",
        "baseline": {"deployment": f"{name}-stable"},
        "candidate": {"deployment": f"{name}-canary"},
        **extra,
    }


def config(*targets: dict[str, Any], max_error_rate: float = 0.01, **extra: Any) -> dict[str, Any]:
    return {
        "interval_s": INTERVAL_S,
        "http": {"host": "127.0.0.1", "port": 0},
        "api": {"allow_unauthenticated_writes": True},
        "defaults": {"slo": {"max_error_rate": max_error_rate}},
        "targets": list(targets) or [target("checkout")],
        **extra,
    }


def write(path: Path, document: dict[str, Any] | str) -> None:
    """Replace the file's content at once (write aside, then rename), as editors and tools do."""
    text = document if isinstance(document, str) else yaml.safe_dump(document, sort_keys=False)
    aside = path.with_name(f".{path.name}.tmp")
    aside.write_text(text)
    os.replace(aside, path)


@contextlib.asynccontextmanager
async def running(path: Path, metrics: ScriptedMetrics) -> AsyncIterator[tuple[Daemon, ConfigWatcher, Api]]:
    settings = load_settings(path, environ={})
    async with (
        aiohttp.ClientSession() as session,
        Daemon(settings, metrics_source=metrics, health_source=ScriptedHealth()) as daemon,
        ConfigWatcher(
            path=path,
            load=lambda: load_settings(path, environ={}),
            apply=daemon.apply_settings,
            current=lambda: daemon.settings,
            refused=daemon.refuse_settings,
            poll_s=POLL_S,
        ) as watcher,
    ):
        yield daemon, watcher, Api(session, daemon)


async def until(condition: Callable[[], bool], *, timeout_s: float = 10.0, what: str) -> float:
    """Wait until ``condition()`` (:func:`wait_until`); return how long it took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    await wait_until(condition, timeout_s=timeout_s, what=what)
    return loop.time() - started


def error_threshold(view: dict[str, Any]) -> float | None:
    evidence = view["evidence"]
    if evidence is None:
        return None
    for finding in evidence["findings"]:
        if finding["signal"] == "error_rate":
            return float(finding["threshold"])
    return None


# --- through the file ----------------------------------------------------------------------------


async def test_a_tighter_slo_is_applied_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rollbackd.yaml"
    write(path, config(target("checkout"), target("cart")))
    metrics = ScriptedMetrics(NEAR_THE_LINE)
    caplog.set_level(logging.INFO, logger="rollbackd")
    async with running(path, metrics) as (daemon, watcher, api):
        await until(lambda: daemon.ticks >= 10, what="ten ticks")
        before = await api.target()
        assert before["decision"]["outcome"] == "none"
        assert error_threshold(before) == 0.01
        checkout = daemon.state.targets["shop/checkout"]

        write(path, config(target("checkout"), target("cart", slo={"max_error_rate": 0.005})))
        applied_s = await until(
            lambda: daemon.state.targets["shop/cart"].params.slo.max_error_rate == 0.005, what="the reload"
        )
        visible_s = applied_s + await until(
            lambda: (latest := daemon.state.targets["shop/cart"].latest) is not None
            and latest.evidence is not None
            and latest.evidence.breached,
            what="a decision with the new SLO",
        )
        cart = await api.target("shop/cart")
        assert error_threshold(cart) == 0.005
        assert cart["decision"]["outcome"] == "controlled"  # 0.8% breaches 0.5%: manageable, in grace
        # The other target kept its state, windows and all.
        assert daemon.state.targets["shop/checkout"] is checkout
        assert (await api.target())["decision"]["outcome"] == "none"
        assert watcher.reloads == 1
        assert watcher.last_apply_s is not None
    print(f"\nconfiguration reload: applied {applied_s:.2f}s after the file changed (polling every "
          f"{POLL_S:g}s; load and apply took {watcher.last_apply_s * 1000:.1f} ms), visible in a decision "
          f"after {visible_s:.2f}s")
    assert applied_s < 10.0
    audit = [r for r in caplog.records if r.getMessage().startswith("configuration reloaded")]
    assert len(audit) == 1
    assert audit[0].levelno == logging.WARNING
    assert "shop/cart changed: slo.max_error_rate: 0.01 -> 0.005" in audit[0].getMessage()
    assert "shop/checkout" not in audit[0].getMessage()


async def test_an_invalid_change_is_refused_and_the_old_configuration_keeps_running(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rollbackd.yaml"
    write(path, config())
    metrics = ScriptedMetrics(NEAR_THE_LINE)
    async with running(path, metrics) as (daemon, watcher, api):
        await until(lambda: daemon.ticks >= 3, what="three ticks")
        settings_before = daemon.settings
        targets_before = dict(daemon.state.targets)
        ticks = daemon.ticks
        # Line 7 of the new file: an error rate of 200%.
        write(path, "\n".join([
            "interval_s: 0.2",
            "http: {host: 127.0.0.1, port: 0}",
            "api: {allow_unauthenticated_writes: true}",
            "defaults:",
            "  slo:",
            "    max_p95_ms: 300",
            "    max_error_rate: 2",
            "targets: []",
        ]) + "\n")
        await until(lambda: watcher.rejections == 1, what="the refusal")
        await until(lambda: daemon.ticks >= ticks + 3, what="ticks after the refusal")
        assert daemon.settings is settings_before
        assert daemon.state.targets == targets_before
        assert error_threshold(await api.target()) == 0.01

        # Fixed: applied.
        write(path, config(max_error_rate=0.02))
        await until(lambda: watcher.reloads == 1, what="the reload of the fixed file")
        assert daemon.settings.defaults.slo.max_error_rate == 0.02
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.getMessage()]
    assert len(refusals) == 1  # once per content, not once per look
    message = refusals[0].getMessage()
    assert f"{path}:7" in message
    assert "defaults.slo.max_error_rate" in message
    assert "still running the previous configuration" in message


async def test_a_file_without_targets_does_not_drop_every_target(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An emptied file (or one cut short before ``targets``) is refused while targets run: the
    daemon keeps watching them, logs and audits why; ``targets: []`` is taken at its word."""
    path = tmp_path / "rollbackd.yaml"
    write(path, config(target("checkout"), target("cart")))
    caplog.set_level(logging.INFO, logger="rollbackd")
    async with running(path, ScriptedMetrics(NEAR_THE_LINE)) as (daemon, watcher, api):
        await until(lambda: daemon.ticks >= 2, what="two ticks")
        settings_before = daemon.settings
        for refused, text in enumerate(["", "interval_s: 0.2\nhttp: {host: 127.0.0.1, port: 0}\n"], start=1):
            write(path, text)
            await until(lambda n=refused: watcher.rejections == n, what="the refusal")  # type: ignore[misc]
            ticks = daemon.ticks
            await until(lambda n=ticks: daemon.ticks >= n + 2, what="ticks after the refusal")  # type: ignore[misc]
            assert daemon.settings is settings_before
            assert set(daemon.state.targets) == {"shop/checkout", "shop/cart"}
            assert (await api.target("shop/cart"))["decision"]["outcome"] == "none"

        write(path, {**config(), "targets": []})
        await until(lambda: watcher.reloads == 1, what="the explicit 'targets: []'")
        assert daemon.state.targets == {}
        status, _ = await api.call("GET", "/api/v1/targets/shop/cart")
        assert status == 404
    why = (
        f"{path}: no 'targets' key: applying the file would stop watching all 2 targets; list them, or write"
        " 'targets: []' to stop watching every target"
    )
    refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert refusals == [
        f"configuration change refused; still running the previous configuration: {why}"
    ] * 2
    audited = [r for r in caplog.records if getattr(r, "kind", None) == "config.refused"]
    assert [r.getMessage() for r in audited] == [f"audit: configuration change refused: {why}"] * 2
    (applied,) = [m for r in caplog.records if (m := r.getMessage()).startswith("configuration reloaded")]
    assert "targets removed: shop/checkout, shop/cart" in applied


async def test_a_configmap_symlink_swap_is_seen(tmp_path: Path) -> None:
    """How the kubelet updates a ConfigMap volume: a new timestamped directory, then the ``..data``
    symlink is replaced in one rename; the file's own path is a symlink through ``..data``."""
    volume = tmp_path / "config"
    volume.mkdir()

    def publish(version: str, document: dict[str, Any]) -> None:
        directory = volume / f"..{version}"
        directory.mkdir()
        (directory / "rollbackd.yaml").write_text(yaml.safe_dump(document))
        link = volume / "..data_tmp"
        link.symlink_to(directory.name)
        os.replace(link, volume / "..data")

    publish("2024_01_01_00_00_00.1", config())
    (volume / "rollbackd.yaml").symlink_to("..data/rollbackd.yaml")
    path = volume / "rollbackd.yaml"
    async with running(path, ScriptedMetrics()) as (daemon, watcher, _):
        await until(lambda: daemon.ticks >= 1, what="a tick")
        publish("2024_01_01_00_05_00.2", config(target("checkout"), target("payments")))
        await until(lambda: "shop/payments" in daemon.state.targets, what="the new target")
        assert watcher.reloads == 1


async def test_sections_that_need_a_restart_are_kept_and_said_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "rollbackd.yaml"
    write(path, config())
    async with running(path, ScriptedMetrics()) as (daemon, watcher, _):
        write(path, config(interval_s=5, max_error_rate=0.02, prometheus={
            "url": "http://prometheus.example:9090", "headers": {"X-Scope-OrgID": "hunter2"},
        }))
        await until(lambda: watcher.reloads == 1, what="the reload")
        assert daemon.settings.interval_s == INTERVAL_S
        assert daemon.settings.prometheus.url == "http://prometheus:9090"
        assert daemon.settings.defaults.slo.max_error_rate == 0.02
    (audit,) = [r for r in caplog.records if r.getMessage().startswith("configuration reloaded")]
    assert "needs a restart to take effect: interval_s, prometheus" in audit.getMessage()
    assert "hunter2" not in caplog.text  # section names only, never their values


# --- Daemon.apply_settings -----------------------------------------------------------------------


def settings_of(document: dict[str, Any]) -> Settings:
    return Settings.model_validate(document)


@pytest.mark.looptime
async def test_targets_added_removed_and_changed() -> None:
    old = settings_of(config(target("checkout"), target("cart"), target("search")))
    metrics = ScriptedMetrics(NEAR_THE_LINE)
    async with Daemon(old, metrics_source=metrics, health_source=ScriptedHealth()) as daemon:
        await asyncio.sleep(30 * INTERVAL_S)
        checkout, cart = daemon.state.targets["shop/checkout"], daemon.state.targets["shop/cart"]
        kept = list(cart.observations)
        assert len(kept) == 30

        new = settings_of(config(target("checkout"), target("cart", policy={"cooldown_s": 60}),
                                 target("payments")))
        change = daemon.apply_settings(new)

        assert change.added == ("shop/payments",)
        assert change.removed == ("shop/search",)
        assert change.changed == {"shop/cart": ("policy.cooldown_s: 600.0 -> 60.0",)}
        assert list(daemon.state.targets) == ["shop/checkout", "shop/cart", "shop/payments"]
        assert daemon.state.targets["shop/checkout"] is checkout
        rebuilt = daemon.state.targets["shop/cart"]
        assert rebuilt is not cart
        assert rebuilt.params.policy.cooldown_s == 60.0
        # The new evaluator judged the observations already seen: no blind start.
        assert list(rebuilt.observations) == kept
        judged_again, judged_before = rebuilt.evaluator.latest_evidence, cart.evaluator.latest_evidence
        assert judged_again is not None
        assert judged_before is not None
        assert judged_again.candidate_requests == judged_before.candidate_requests
        assert rebuilt.latest is cart.latest
        await asyncio.sleep(2 * INTERVAL_S)
        assert daemon.state.targets["shop/payments"].latest is not None
        assert metrics.calls[-1][2] == ("shop/checkout", "shop/cart", "shop/payments")


@pytest.mark.looptime
async def test_the_file_flips_a_switch_only_when_the_file_changed_it() -> None:
    old = settings_of(config())
    async with Daemon(old, metrics_source=ScriptedMetrics(), health_source=ScriptedHealth()) as daemon:
        daemon.state.flags.freeze = True  # set through the API
        change = daemon.apply_settings(settings_of(config(max_error_rate=0.02)))
        assert change.switches == ()
        assert daemon.state.flags.freeze is True
        frozen = settings_of({**config(), "safety": {"dry_run": True}})
        change = daemon.apply_settings(frozen)
        assert change.switches == ("safety.dry_run: false -> true",)
        assert daemon.state.flags.dry_run is True
        assert daemon.state.flags.freeze is True


def test_plan_reload_describes_nothing_for_an_identical_file() -> None:
    settings = settings_of(config())
    effective, change = plan_reload(settings, settings_of(config()))
    assert effective == settings
    assert change == SettingsChange()
    assert change.empty
    assert change.summary() == "no setting changed"


def test_a_defaults_change_reaches_every_target_that_does_not_override_it() -> None:
    old = settings_of(config(target("checkout"), target("cart", slo={"max_error_rate": 0.002})))
    new = settings_of(config(target("checkout"), target("cart", slo={"max_error_rate": 0.002}),
                             max_error_rate=0.02))
    _, change = plan_reload(old, new)
    assert change.changed == {"shop/checkout": ("slo.max_error_rate: 0.01 -> 0.02",)}
