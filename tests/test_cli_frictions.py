"""What a new user trips over, said in plain words: a busy port, no targets, a YAML indentation
mistake, ``rollbackd events`` without MQTT, and a broker never reached versus one lost."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import sys
from pathlib import Path

import pytest
import yaml

from rollbackd.backoff import Backoff
from rollbackd.cli import main
from rollbackd.config.loader import ConfigError, load_settings
from rollbackd.events.follow import follow
from rollbackd.events.mqtt import Topics
from tests.kubefixtures import wait_until
from tests.mqttfixtures import Mosquitto, mosquitto, topics
from tests.tcpproxy import TcpProxy

__all__ = ["mosquitto", "topics"]  # fixtures

REPO = Path(__file__).resolve().parents[1]


async def test_a_busy_port_is_one_line_and_no_targets_a_warning(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "rollbackd.yaml"
        config.write_text(yaml.safe_dump({
            "http": {"host": "127.0.0.1", "port": port},
            "store": {"data_dir": str(tmp_path / "data")},
            "kubernetes": {"enabled": False},
            "log": {"format": "text"},
        }))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROLLBACKD_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "rollbackd", "run", "--config", str(config), cwd=REPO, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    text = stderr.decode()
    assert process.returncode == 2, text
    assert "Traceback" not in text
    (said,) = [line for line in text.splitlines() if line.startswith("rollbackd: ")]  # beside the log lines
    assert said.startswith(f"rollbackd: port {port} on 127.0.0.1 is already in use")
    assert "http.port" in said
    assert "no targets configured: rollbackd runs but watches nothing" in text


def test_check_config_warns_about_zero_targets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("interval_s: 5\n")
    assert main(["check-config", "--ignore-env", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"{config}: OK (0 targets)"
    assert "warning: no targets" in err
    assert "'targets:'" in err

    discovering = tmp_path / "discovery.yaml"
    discovering.write_text("discovery:\n  enabled: true\n  namespaces: [shop]\n")
    assert main(["check-config", "--ignore-env", str(discovering)]) == 0
    assert "warning" not in capsys.readouterr().err  # its targets are found at run time


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("interval_s: 5\ntargets:\n  - name: a\n   namespace: b\n", 4, "indented differently"),
        ("prometheus:\n  url: http://p:9090\n timeout_s: 3\n", 3, "indented differently"),
        ("prometheus:\n  url: http://p:9090\n    timeout_s: 3\n", 3, "indented further than the key above"),
        ("prometheus:\n\turl: http://p:9090\n", 2, "spaces only"),
    ],
)
def test_a_yaml_indentation_mistake_gets_a_hint(tmp_path: Path, text: str, line: int, words: str) -> None:
    config = tmp_path / "rollbackd.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(config, environ={})
    message = str(raised.value)
    assert message.startswith(f"{config}:{line}:")
    assert "Hint:" in message
    assert words in message


def test_events_without_mqtt_says_so_and_how_to_pass_a_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("ROLLBACKD_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "rollbackd.yaml"
    config.write_text("interval_s: 5\n")
    assert main(["events", "--follow", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "MQTT is off in this configuration" in err
    assert "--mqtt-url mqtt://" in err


async def test_lost_the_broker_is_said_only_after_having_had_it(mosquitto: Mosquitto, topics: Topics) -> None:
    async with TcpProxy("127.0.0.1", mosquitto.port) as proxy:
        await proxy.cut()  # the broker cannot be reached at first
        options = mosquitto.options
        options = type(options)(**{**{f: getattr(options, f) for f in options.__dataclass_fields__},
                                   "port": proxy.port})
        notes = io.StringIO()
        subscribed = asyncio.Event()
        watching = asyncio.create_task(follow(
            options=options, topics=topics, out=io.StringIO(), notes=notes, subscribed=subscribed,
            reconnect=Backoff(initial_s=0.05, max_s=0.2),
        ))
        try:
            await wait_until(lambda: "cannot reach the broker" in notes.getvalue(), what="unreachable note")
            assert "lost the broker" not in notes.getvalue()
            assert f"cannot reach the broker 127.0.0.1:{proxy.port}" in notes.getvalue()
            proxy.restore()
            async with asyncio.timeout(20):
                await subscribed.wait()
            await proxy.cut()
            await wait_until(lambda: "lost the broker" in notes.getvalue(), what="lost note")
        finally:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
