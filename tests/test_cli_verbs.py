"""The operator verbs (``rollbackd status``, ``freeze``, ``hold`` ...) against a running daemon over
real HTTP: what each prints in each format, what it changes, and its exit status on errors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollbackd.cli import main
from rollbackd.config.settings import ApiSettings, Settings, StoreSettings
from rollbackd.ctl.render import accepted_table
from rollbackd.daemon.app import Daemon
from rollbackd.daemon.wiring import open_daemon
from tests.kubefixtures import wait_until
from tests.test_daemon import ScriptedHealth, ScriptedMetrics, canary, make_settings

SECRET = "op3rator-Token-9d2e"
REPO = Path(__file__).resolve().parents[1]


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Daemon]:
    async with open_daemon(
        settings, metrics_source=ScriptedMetrics(), health_source=ScriptedHealth()
    ) as daemon:
        await wait_until(lambda: daemon.journal.attached, what="the store attached")
        yield daemon


def settings_for(tmp_path: Path, *, token_file: Path | None = None) -> Settings:
    settings = make_settings(canary("checkout"), canary("payments", namespace="pay"))
    api = ApiSettings(token_file=str(token_file)) if token_file is not None else settings.api
    return settings.model_copy(update={"api": api, "store": StoreSettings(data_dir=str(tmp_path))})


def exit_status(argv: list[str]) -> int:
    """``rollbackd argv``'s exit status, usage errors (argparse exits) included."""
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


class Cli:
    """Runs ``rollbackd ARGS`` (the real entry point, in a thread) against one daemon."""

    def __init__(self, capsys: pytest.CaptureFixture[str], server: str, token_file: Path | None) -> None:
        self._capsys = capsys
        self.server = server
        self.token_file = token_file

    async def __call__(self, *args: str, connect: bool = True) -> tuple[int, str, str]:
        self._capsys.readouterr()
        extra = ["--server", self.server] if connect else []
        if connect and self.token_file is not None:
            extra += ["--token-file", str(self.token_file)]
        code = await asyncio.to_thread(exit_status, [*args, *extra])
        out, err = self._capsys.readouterr()
        return code, out, err

    async def json(self, *args: str) -> Any:
        code, out, err = await self(*args, "-o", "json")
        assert code == 0, err
        return json.loads(out)


def fields(out: str) -> dict[str, str]:
    """The ``name: value`` lines of ``rollbackd status TARGET``."""
    pairs = (line.partition(":") for line in out.splitlines() if not line.startswith(" "))
    return {name: value.strip() for name, _, value in pairs if value.strip()}


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(SECRET + "\n")
    return path


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ROLLBACKD_SERVER", "ROLLBACKD_TOKEN", "ROLLBACKD_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@contextlib.asynccontextmanager
async def cli_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token_file: Path
) -> AsyncIterator[tuple[Daemon, Cli]]:
    async with running(settings_for(tmp_path, token_file=token_file)) as daemon:
        yield daemon, Cli(capsys, f"http://127.0.0.1:{daemon.port}", token_file)


@pytest.mark.usefixtures("no_env")
async def test_status_lists_every_target_and_the_switches_in_each_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token_file: Path
) -> None:
    async with cli_for(tmp_path, capsys, token_file) as (daemon, cli):
        await wait_until(lambda: all(t.latest is not None for t in daemon.state.targets.values()))
        code, out, err = await cli("status")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].split() == ["freeze:", "off", "dry-run:", "off"]
        assert lines[1] == f"switches kept in {daemon.switches.where}"
        assert lines[3].split() == ["TARGET", "STRATEGY", "DECISION", "ROLLBACK", "HOLD", "COOLDOWN"]
        rows = {line.split()[0]: line.split() for line in lines[4:]}
        assert set(rows) == {"shop/checkout", "pay/payments"}
        assert rows["shop/checkout"][1] == "canary"
        assert rows["shop/checkout"][2:] == ["none", "-", "-", "-"]

        document = await cli.json("status")
        assert set(document["targets"]) == {"shop/checkout", "pay/payments"}
        assert document["freeze"] is False
        code, out, _ = await cli("status", "-o", "yaml")
        assert code == 0
        assert yaml.safe_load(out) == {**document, "targets": yaml.safe_load(out)["targets"]}
        assert set(yaml.safe_load(out)["targets"]) == {"shop/checkout", "pay/payments"}

        code, out, err = await cli("status", "checkout", "-n", "shop")
        assert code == 0, err
        assert fields(out)["target"] == "shop/checkout"
        assert fields(out)["strategy"] == "canary"
        assert (await cli.json("status", "pay/payments"))["key"] == "pay/payments"


@pytest.mark.usefixtures("no_env")
async def test_freeze_dry_run_hold_and_release_change_the_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token_file: Path
) -> None:
    async with cli_for(tmp_path, capsys, token_file) as (daemon, cli):
        code, out, err = await cli("freeze", "--reason", "incident 4711")
        assert (code, out.splitlines()[0]) == (0, "freeze: on   dry-run: off"), err
        assert daemon.state.flags.freeze is True
        assert (await cli.json("dry-run", "on")).items() >= {"freeze": True, "dry_run": True}.items()
        code, out, _ = await cli("unfreeze", "-o", "yaml")
        assert code == 0
        assert yaml.safe_load(out).items() >= {"freeze": False, "dry_run": True}.items()
        assert (await cli.json("dry-run", "off"))["dry_run"] is False
        assert (await cli.json("status"))["freeze"] is False

        held = await cli.json("hold", "shop/checkout", "--for", "15m", "--reason", "fix 1.4.2 on its way")
        assert held["hold"]["reason"] == "fix 1.4.2 on its way"
        assert 899 <= held["hold"]["remaining_s"] <= 900
        code, out, _ = await cli("status", "shop/checkout")
        assert code == 0
        assert fields(out)["hold"] == "15m left"
        assert fields(out)["hold reason"] == "fix 1.4.2 on its way"
        code, out, _ = await cli("release", "checkout", "-n", "shop")
        assert code == 0
        assert fields(out)["hold"] == "-"
        assert (await cli.json("status", "shop/checkout"))["hold"] is None

        entries: list[dict[str, Any]] = []

        async def both_holds_recorded() -> bool:  # the audit log is written beside the answer
            entries[:] = (await cli.json("history", "--target", "shop/checkout"))["entries"]
            return [entry["kind"] for entry in entries][-2:] == ["hold", "hold"]

        await wait_until(both_holds_recorded, what="the hold and its release, audited", interval_s=0.2)
        assert "fix 1.4.2 on its way" in entries[-2]["summary"]
        code, out, _ = await cli("history")
        assert code == 0
        assert out.splitlines()[0].split() == ["TIME", "TARGET", "KIND", "SUMMARY"]
        assert any("global freeze on" in line for line in out.splitlines())  # written before the holds


@pytest.mark.usefixtures("no_env")
async def test_errors_have_their_own_exit_status_and_say_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token_file: Path
) -> None:
    async with cli_for(tmp_path, capsys, token_file) as (daemon, cli):
        code, _, err = await cli("status", "shop/nothing")
        assert code == 5
        assert "no such target" in err

        code, _, err = await cli("hold", "shop/nothing", "--for", "1h")
        assert code == 5

        cli.token_file = None  # no token at all
        code, _, err = await cli("freeze")
        assert code == 4
        assert "--token-file" in err
        assert "ROLLBACKD_TOKEN" in err
        assert daemon.state.flags.freeze is False

        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-token")
        cli.token_file = wrong
        code, _, err = await cli("freeze")
        assert (code, daemon.state.flags.freeze) == (4, False)
        assert "not the daemon's" in err
        cli.token_file = tmp_path / "missing"
        code, _, err = await cli("freeze")
        assert code == 2
        assert "cannot read the token file" in err

        cli.token_file = token_file
        code, _, err = await cli("hold", "shop/checkout", "--for", "31d")
        assert code == 1
        assert "eta_s" in err
        code, _, err = await cli("hold", "shop/checkout", "--for", "soon")
        assert code == 2
        assert "15m" in err
        code, _, err = await cli("status", "a/b/c")
        assert code == 2
        assert "NAMESPACE/NAME" in err

    code, _, err = await cli("status")  # the daemon is gone
    assert code == 3
    assert "cannot reach the daemon" in err
    assert "--server" in err


@pytest.mark.usefixtures("no_env")
async def test_the_server_and_token_come_from_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with cli_for(tmp_path, capsys, token_file) as (daemon, cli):
        monkeypatch.setenv("ROLLBACKD_SERVER", cli.server)
        monkeypatch.setenv("ROLLBACKD_TOKEN", SECRET)
        code, _, err = await cli("freeze", connect=False)
        assert code == 0, err
        assert daemon.state.flags.freeze is True
        async def freeze_recorded() -> bool:
            code, out, _ = await cli("history", "-o", "json", connect=False)
            assert code == 0
            return any(entry["kind"] == "freeze" for entry in json.loads(out)["entries"])

        await wait_until(freeze_recorded, what="the freeze in the audit log", interval_s=0.2)


@pytest.mark.usefixtures("no_env")
async def test_rollback_and_accept_reach_the_daemons_operator_actions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], token_file: Path
) -> None:
    async with cli_for(tmp_path, capsys, token_file) as (_daemon, cli):
        assert (await cli("freeze", "--reason", "incident 4711"))[0] == 0
        code, _, err = await cli("rollback", "shop/checkout", "--reason", "bad release")
        assert code == 1
        assert "refused POST /api/v1/targets/shop/checkout/rollback (409)" in err
        code, _, err = await cli("rollback", "checkout", "-n", "shop", "--reason", "bad release", "--force")
        assert code == 1  # this daemon has no Kubernetes access: it says so
        assert "(409)" in err
        code, _, err = await cli("rollback", "shop/nothing", "--reason", "bad release")
        assert code == 5

        code, out, err = await cli("accept", "shop/checkout", "--reason", "looks good to me")
        assert code == 0, err
        assert "looks good to me" in fields(out)["accepted"]
        accepted = (await cli.json("status", "shop/checkout"))["accepted"]
        assert accepted["reason"] == "looks good to me"
        code, out, err = await cli("accept", "shop/checkout", "--undo", "-o", "yaml")
        assert code == 0, err
        assert yaml.safe_load(out)["accepted"] is None

        code, _, err = await cli("rollback", "shop/checkout")
        assert code == 2
        assert "--reason" in err

def test_a_requested_rollback_is_shown_with_its_run_id() -> None:
    answer = {"run_id": "5f0c", "target": "shop/checkout", "applies": "started by this replica (the leader)"}
    assert accepted_table(answer).splitlines() == [
        "rollback of shop/checkout requested: run 5f0c",
        "applies: started by this replica (the leader)",
    ]


async def test_kubectl_rollbackd_is_the_same_command_as_a_kubectl_plugin(
    tmp_path: Path, token_file: Path
) -> None:
    """The console script kubectl finds on the PATH: a real process talking to a real daemon."""
    script = Path(sys.executable).with_name("kubectl-rollbackd")
    assert script.exists(), "kubectl-rollbackd is not installed: make install"
    async with running(settings_for(tmp_path, token_file=token_file)) as daemon:
        env = {**os.environ, "ROLLBACKD_SERVER": f"127.0.0.1:{daemon.port}", "ROLLBACKD_TOKEN": SECRET}
        process = await asyncio.create_subprocess_exec(
            str(script),
            "status",
            "-o",
            "json",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert set(json.loads(out)["targets"]) == {"shop/checkout", "pay/payments"}
        process = await asyncio.create_subprocess_exec(
            str(script),
            "--help",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await process.communicate()
        assert out.decode().startswith("usage: kubectl rollbackd")
