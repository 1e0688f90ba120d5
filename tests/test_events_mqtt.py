"""The MQTT sink against a real, private Mosquitto: topics, order, retained status, liveness with
a last will, and no event lost while the broker is away."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import jsonschema
import pytest

from rollbackd.backoff import Backoff
from rollbackd.config.settings import MqttSettings
from rollbackd.events.dispatcher import DeliveryError, Dispatcher
from rollbackd.events.model import CloudEvent
from rollbackd.events.mqtt import OFFLINE, ONLINE, MqttConfigError, MqttOptions, MqttSink, Topics
from rollbackd.events.publisher import EventPublisher
from rollbackd.events.secrets import SecretError
from rollbackd.store import Store, open_store
from tests.eventstory import rollback_story
from tests.kubefixtures import wait_until
from tests.mqttfixtures import Mosquitto, mosquitto, subscribed, topics

__all__ = ["mosquitto", "topics"]  # fixtures

FAST = Backoff(initial_s=0.05, max_s=0.5)
SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "docs" / "schemas"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = open_store(None, data_dir=tmp_path / "store")
    await db.open()
    yield db
    await db.close()


def sink_for(broker: Mosquitto, topics: Topics, *, instance: str = "test-daemon") -> MqttSink:
    return MqttSink(options=broker.options, instance=instance, topics=topics, reconnect=FAST)


async def test_a_subscriber_receives_every_event_of_a_rollback_in_order(
    mosquitto: Mosquitto, topics: Topics, store: Store
) -> None:
    story = rollback_story("shop/checkout")
    async with (
        subscribed(mosquitto.options, topics.events_filter()) as subscriber,
        sink_for(mosquitto, topics) as sink,
        Dispatcher(store=store, sinks=[sink], backoff=FAST) as dispatcher,
    ):
        publisher = EventPublisher(store=store, on_recorded=dispatcher.nudge)
        for event in story:
            await publisher.announce(event)
        received = await subscriber.wait_for(len(story))
    assert [m.topic for m in received] == [
        f"{topics.prefix}/v1/shop/checkout/events/{kind}"
        for kind in (
            "target.degraded",
            "decision.made",
            "rollback.started",
            "rollback.completed",
            "rollback.verified",
        )
    ]
    assert [m.json()["id"] for m in received] == [e.id for e in story]
    for message in received:
        body = message.json()
        assert not message.retain
        assert body["specversion"] == "1.0"
        assert body["subject"] == "shop/checkout"
        kind = body["type"].removeprefix("io.rollbackd.")
        jsonschema.validate(body, json.loads((SCHEMAS_DIR / f"{kind}.json").read_text()))
        assert CloudEvent.from_json(body) == next(e for e in story if e.id == body["id"])


async def test_each_target_has_a_retained_status_of_its_latest_state(
    mosquitto: Mosquitto, topics: Topics, store: Store
) -> None:
    checkout, payments = rollback_story("shop/checkout"), rollback_story("shop/payments")
    async with sink_for(mosquitto, topics) as sink, Dispatcher(store=store, sinks=[sink], backoff=FAST) as d:
        publisher = EventPublisher(store=store, on_recorded=d.nudge)
        for event in checkout + payments[:3]:
            await publisher.announce(event)
        assert await d.drain(timeout_s=20)
    # A subscriber arriving later learns each target's state at once.
    async with subscribed(mosquitto.options, topics.status_filter()) as late:
        await late.wait_for(3)  # the two targets' statuses, and the daemon's liveness
    received = [m for m in late.messages if not topics.is_daemon_topic(m.topic)]
    statuses = {m.topic: m.json() for m in received}
    assert len(statuses) == 2
    assert all(m.retain for m in received)
    assert statuses[topics.status("shop/checkout")] == {
        "subject": "shop/checkout",
        "state": "rolled-back",
        "summary": checkout[-1].summary,
        "time": checkout[-1].to_json()["time"],
        "last_event": {"id": checkout[-1].id, "type": "io.rollbackd.rollback.verified"},
    }
    assert statuses[topics.status("shop/payments")]["state"] == "rolling-back"
    assert statuses[topics.status("shop/payments")]["last_event"]["id"] == payments[2].id


async def test_liveness_is_online_while_connected_and_offline_after_a_clean_stop(
    mosquitto: Mosquitto, topics: Topics
) -> None:
    liveness = topics.liveness("test-daemon")
    async with subscribed(mosquitto.options, liveness) as watcher:
        async with sink_for(mosquitto, topics) as sink:
            assert await sink.wait_connected(timeout_s=10)
            (online,) = await watcher.wait_for(1)
            assert online.payload == ONLINE
        (_, offline) = await watcher.wait_for(2)
        assert offline.payload == OFFLINE
    async with subscribed(mosquitto.options, liveness) as late:
        (retained,) = await late.wait_for(1)
    assert (retained.payload, retained.retain) == (OFFLINE, True)


DAEMON = textwrap.dedent("""\
    import asyncio, sys
    from rollbackd.events.mqtt import MqttOptions, MqttSink, Topics

    async def main() -> None:
        options = MqttOptions(hostname="127.0.0.1", port=int(sys.argv[1]), keepalive_s=5)
        async with MqttSink(options=options, instance=sys.argv[2], topics=Topics(sys.argv[3])) as sink:
            await sink.wait_connected(timeout_s=20)
            print("connected", flush=True)
            await asyncio.sleep(3600)

    asyncio.run(main())
""")


async def test_the_broker_publishes_the_last_will_when_the_daemon_dies(
    mosquitto: Mosquitto, topics: Topics
) -> None:
    liveness = topics.liveness("doomed")
    async with subscribed(mosquitto.options, liveness) as watcher:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            DAEMON,
            str(mosquitto.port),
            "doomed",
            topics.prefix,
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert daemon.stdout is not None
            async with asyncio.timeout(30):
                assert (await daemon.stdout.readline()).strip() == b"connected"
            (online,) = await watcher.wait_for(1)
            assert online.payload == ONLINE
        finally:
            daemon.kill()  # SIGKILL: no goodbye, the TCP connection just drops
            await daemon.wait()
        (_, will) = await watcher.wait_for(2)
    assert will.payload == OFFLINE
    async with subscribed(mosquitto.options, liveness) as late:
        (retained,) = await late.wait_for(1)
    assert (retained.payload, retained.retain) == (OFFLINE, True)


async def test_events_wait_in_the_outbox_while_the_broker_is_away_and_none_is_lost(
    mosquitto: Mosquitto, topics: Topics, store: Store
) -> None:
    story = rollback_story("shop/checkout")
    # A subscriber with a persistent session: the broker keeps its QoS 1 messages across restarts.
    async with subscribed(
        mosquitto.options, topics.events_filter(), session=f"{topics.prefix}-watcher"
    ) as sub:
        async with (
            sink_for(mosquitto, topics) as sink,
            Dispatcher(store=store, sinks=[sink], backoff=FAST) as d,
        ):
            publisher = EventPublisher(store=store, on_recorded=d.nudge)
            for event in story[:2]:
                await publisher.announce(event)
            await sub.wait_for(2)

            await mosquitto.stop()
            await wait_until(lambda: not sink.connected, timeout_s=20, what="the sink noticing")
            for event in story[2:]:
                await publisher.announce(event)
            await wait_until(lambda: d.status()["mqtt"].failures > 0, timeout_s=30, what="a failed delivery")
            waiting = [e.event_id for e in await store.pending("mqtt")]
            assert waiting == [e.id for e in story[2:]]

            await mosquitto.start()
            assert await d.drain(timeout_s=60)
            assert sink.connections == 2
        received = await sub.wait_for(len(story), timeout_s=30)
        ids = list(dict.fromkeys(m.json()["id"] for m in sub.messages))  # dedupe by id
    assert ids == [e.id for e in story]
    assert [m.json()["id"] for m in received][:2] == [e.id for e in story[:2]]


async def test_delivery_fails_as_temporary_when_no_broker_answers(topics: Topics) -> None:
    from tests.mqttfixtures import free_port

    options = MqttOptions(hostname="127.0.0.1", port=free_port(), timeout_s=0.5)
    async with MqttSink(options=options, instance="x", topics=topics, reconnect=FAST) as sink:
        with pytest.raises(DeliveryError, match="not connected"):
            await sink.deliver(rollback_story()[0].to_outbox())
        assert not sink.connected


def test_options_from_settings_read_the_password_from_where_it_says(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    settings = MqttSettings(
        enabled=True,
        url="mqtts://broker.example:8884",
        username="rollbackd",
        password_file=str(secret),
        tls={"ca_file": "/etc/ca.pem", "insecure": True},
    )
    options = MqttOptions.from_settings(settings, environ={}, instance="pod-1")
    assert (options.hostname, options.port, options.tls) == ("broker.example", 8884, True)
    assert (options.username, options.password, options.client_id) == (
        "rollbackd",
        "s3cret",
        "rollbackd-pod-1",
    )
    assert (options.ca_file, options.insecure) == ("/etc/ca.pem", True)
    assert "s3cret" not in repr(options)
    from_env = MqttSettings(url="mqtt://10.0.0.1", password_env="MQTT_PASSWORD")
    assert MqttOptions.from_settings(from_env, environ={"MQTT_PASSWORD": "pw"}, instance="i").password == "pw"
    assert MqttOptions.from_settings(from_env, environ={"MQTT_PASSWORD": "pw"}, instance="i").port == 1883
    with pytest.raises(SecretError, match="MQTT_PASSWORD is not set"):
        MqttOptions.from_settings(from_env, environ={}, instance="i")
    with pytest.raises(MqttConfigError, match="not an MQTT URL"):
        MqttOptions.from_url("http://broker:1883")


def test_tls_settings_need_an_mqtts_url() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="TLS settings apply to mqtts:// URLs only"):
        MqttSettings(url="mqtt://broker", tls={"ca_file": "/etc/ca.pem"})
    with pytest.raises(ValidationError, match="password_env or password_file, not both"):
        MqttSettings(password_env="A", password_file="/b")


def test_topics_keep_the_type_in_one_level() -> None:
    t = Topics("acme/rollbackd")
    assert t.event("shop/checkout", "io.rollbackd.rollback.started") == (
        "acme/rollbackd/v1/shop/checkout/events/rollback.started"
    )
    assert t.status("shop/checkout") == "acme/rollbackd/v1/shop/checkout/status"
    assert t.liveness("pod-7") == "acme/rollbackd/v1/daemon/pod-7/status"
    assert t.events_filter() == "acme/rollbackd/v1/+/+/events/+"
    assert t.events_filter("shop/checkout") == "acme/rollbackd/v1/shop/checkout/events/+"
    with pytest.raises(ValueError, match="namespace/name"):
        t.event("checkout", "rollback.started")


async def test_mqtts_with_a_client_certificate_and_a_password(
    mosquitto: Mosquitto, topics: Topics, tmp_path: Path, store: Store
) -> None:
    pki = await asyncio.to_thread(_make_pki, tmp_path / "pki")
    if pki is None:
        pytest.skip("openssl is not available to make test certificates")
    passwords = tmp_path / "passwords"
    tls_port = _free()
    await mosquitto.stop()
    await asyncio.to_thread(_write_password_file, mosquitto, passwords, "rollbackd", "pa55word")
    mosquitto.extra_config = textwrap.dedent(f"""\
        listener {tls_port} 127.0.0.1
        cafile {pki / "ca.pem"}
        certfile {pki / "server.pem"}
        keyfile {pki / "server.key"}
        require_certificate true
        password_file {passwords}
        allow_anonymous false
    """)
    mosquitto.per_listener_settings = True
    await mosquitto.start()
    secure = dataclasses.replace(
        mosquitto.options,
        port=tls_port,
        tls=True,
        ca_file=str(pki / "ca.pem"),
        cert_file=str(pki / "client.pem"),
        key_file=str(pki / "client.key"),
        username="rollbackd",
        password="pa55word",
    )
    story = rollback_story()[:2]
    async with (
        subscribed(mosquitto.options, topics.events_filter()) as subscriber,
        MqttSink(options=secure, instance="tls", topics=topics, reconnect=FAST) as sink,
        Dispatcher(store=store, sinks=[sink], backoff=FAST) as d,
    ):
        publisher = EventPublisher(store=store, on_recorded=d.nudge)
        for event in story:
            await publisher.announce(event)
        received = await subscriber.wait_for(2)
    assert [m.json()["id"] for m in received] == [e.id for e in story]
    # A wrong password is refused: nothing is delivered, and the sink keeps trying.
    wrong = dataclasses.replace(secure, password="nope")
    async with MqttSink(options=wrong, instance="tls", topics=topics, reconnect=FAST) as sink:
        assert not await sink.wait_connected(timeout_s=1.0)


def _free() -> int:
    from tests.mqttfixtures import free_port

    return free_port()


def _make_pki(directory: Path) -> Path | None:
    import shutil
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    directory.mkdir()

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "127.0.0.1"), ("client", "rollbackd")):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        )
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            f"{name}.pem",
            "-extfile",
            str(ext),
        )
    return directory


def _write_password_file(broker: Mosquitto, path: Path, user: str, password: str) -> None:
    import shutil
    import subprocess

    tool = shutil.which("mosquitto_passwd") or str(Path(broker.binary).with_name("mosquitto_passwd"))
    if not Path(tool).exists() and shutil.which("mosquitto_passwd") is None:
        pytest.skip("mosquitto_passwd is not installed")
    subprocess.run([tool, "-b", "-c", str(path), user, password], check=True, capture_output=True)
