"""The command lever with real subprocesses: what it is told, how it ends, what is kept of its output,
and that a command that hangs is ended with every process it started."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from rollbackd.actions.base import ActionOutcome, Change, RollbackWhy
from rollbackd.actions.command import OUTPUT_LIMIT_BYTES, CommandAction
from rollbackd.config.settings import CommandSettings
from tests.kubefixtures import wait_until

KEY = "shop/checkout"
WHY = RollbackWhy(decision="immediate", reason="error rate 30% (SLO 1%)", revision="7", run_id="run-1")


def action(argv: Sequence[str], **settings: object) -> CommandAction:
    settings_ = CommandSettings.model_validate({"argv": list(argv), **settings})
    return CommandAction(target=KEY, settings=settings_, why=WHY)


def sh(script: str, **settings: object) -> CommandAction:
    return action(["/bin/sh", "-c", script], **settings)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet has ended: it counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class RunRecorder:
    """A run's record: what was intended and made, or a store that cannot be written."""

    def __init__(self, *, writable: bool = True) -> None:
        self.writable = writable
        self.intents: list[tuple[Change, ...]] = []
        self.done: list[tuple[Change, ...]] = []

    async def intend(self, changes: Sequence[Change]) -> bool:
        if self.writable:
            self.intents.append(tuple(changes))
        return self.writable

    async def made(self, intended: Sequence[Change], made: Sequence[Change]) -> None:
        self.done.append(tuple(made))


async def test_exit_zero_is_done_and_the_command_is_told_the_target_and_the_decision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROLLBACKD_API_TOKEN_FILE_TEST", "daemon-only")
    recorder = RunRecorder()
    result = await action([sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
                          cwd=str(tmp_path), env={"DEPLOY_ENV": "prod"}).run(dry_run=False, recorder=recorder)
    assert result.outcome is ActionOutcome.DONE, result.reason
    command = result.details["command"]
    assert command["exit_code"] == 0
    told = json.loads(command["stdout_tail"])
    told.pop("LC_CTYPE", None)  # some interpreters set it for themselves
    assert told == {
        "PATH": os.environ["PATH"],
        "DEPLOY_ENV": "prod",
        "ROLLBACKD_TARGET": "checkout",
        "ROLLBACKD_NAMESPACE": "shop",
        "ROLLBACKD_DECISION": "immediate",
        "ROLLBACKD_REASON": "error rate 30% (SLO 1%)",
        "ROLLBACKD_REVISION": "7",
        "ROLLBACKD_RUN_ID": "run-1",
    }
    assert result.changes == (Change("Command/shop/checkout", "run", None, shlex.join(command["argv"])),)
    assert recorder.intents == [result.changes]
    assert recorder.done == [result.changes]
    assert "exit code 0" in result.reason


async def test_it_runs_in_its_working_directory(tmp_path: Path) -> None:
    script = tmp_path / "deploy.sh"
    script.write_text("#!/bin/sh\necho \"rolled back from $(pwd) with $1\"\n")
    script.chmod(0o755)
    result = await action(["./deploy.sh", "rollback"], cwd=str(tmp_path)).run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.details["command"]["stdout_tail"] == f"rolled back from {tmp_path} with rollback\n"


async def test_a_non_zero_exit_is_a_failed_rollback_with_the_output_tail_in_the_reason() -> None:
    result = await sh("echo 'checking release 1.5'; echo 'error: helm release shop/checkout is locked' >&2; "
                      "exit 3").run(dry_run=False)
    assert result.outcome is ActionOutcome.FAILED
    assert "exited with code 3" in result.reason
    assert "error: helm release shop/checkout is locked" in result.reason
    command = result.details["command"]
    assert command["exit_code"] == 3
    assert command["stdout_tail"] == "checking release 1.5\n"
    assert command["stderr_tail"] == "error: helm release shop/checkout is locked\n"
    assert command["timed_out"] is False


async def test_a_command_that_hangs_is_ended_at_its_timeout_with_its_child(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    result = await sh(f"sleep 600 & echo $! > {pid_file}; echo 'waiting for the load balancer'; wait",
                      timeout_s=1.0, kill_grace_s=5.0).run(dry_run=False)
    assert result.outcome is ActionOutcome.FAILED
    assert "still running at its timeout of 1s" in result.reason
    assert "waiting for the load balancer" in result.reason
    assert result.details["command"]["timed_out"] is True
    child = int(pid_file.read_text())
    await wait_until(lambda: not alive(child), timeout_s=10, what="the command's child to be gone")


async def test_a_command_that_ignores_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await sh(f"trap '' TERM; sleep 600 & echo $! > {pid_file}; while :; do sleep 0.1; done",
                      timeout_s=0.5, kill_grace_s=0.5).run(dry_run=False)
    assert result.outcome is ActionOutcome.FAILED
    assert result.details["command"]["signal"] == "SIGKILL"
    assert result.details["command"]["timed_out"] is True
    assert loop.time() - started < 30
    child = int(pid_file.read_text())
    await wait_until(lambda: not alive(child), timeout_s=10, what="the command's child to be gone")


async def test_processes_left_behind_in_its_group_are_ended_when_it_exits(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    result = await sh(f"sleep 600 & echo $! > {pid_file}; echo started").run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    child = int(pid_file.read_text())
    await wait_until(lambda: not alive(child), timeout_s=10, what="the left-behind process to be gone")


async def test_a_process_that_left_its_group_holding_the_output_open_does_not_keep_the_run_waiting() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await sh("setsid sleep 5 & echo started").run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    assert result.details["command"]["stdout_tail"] == "started\n"
    assert loop.time() - started < 4.5  # not the 5 s the stray process holds the output open


async def test_a_cancelled_run_ends_the_command_and_its_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    task = asyncio.create_task(sh(f"sleep 600 & echo $! > {pid_file}; wait").run(dry_run=False))
    await wait_until(lambda: pid_file.exists() and pid_file.read_text().strip() != "", timeout_s=10,
                     what="the command to start its child")
    child = int(pid_file.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_until(lambda: not alive(child), timeout_s=10, what="the command's child to be gone")


async def test_a_program_that_does_not_exist_is_a_failed_rollback(tmp_path: Path) -> None:
    recorder = RunRecorder()
    result = await action(["./scripts/deploy.sh", "rollback"], cwd=str(tmp_path)).run(
        dry_run=False, recorder=recorder)
    assert result.outcome is ActionOutcome.FAILED
    assert "could not start ./scripts/deploy.sh rollback in " in result.reason
    assert "No such file or directory" in result.reason
    assert recorder.done == [()]


async def test_dry_run_plans_the_command_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = await sh(f"touch {marker}").run(dry_run=True)
    assert result.outcome is ActionOutcome.PLANNED
    assert result.reason == f"would run /bin/sh -c 'touch {marker}'"
    assert not marker.exists()


async def test_a_command_that_cannot_be_recorded_first_is_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = await sh(f"touch {marker}").run(dry_run=False, recorder=RunRecorder(writable=False))
    assert result.outcome is ActionOutcome.FAILED
    assert "was not run" in result.reason
    assert not marker.exists()


async def test_output_is_kept_bounded_to_its_tail() -> None:
    megabyte = 1024 * 1024
    result = await action([sys.executable, "-c",
                           f"import sys; sys.stdout.write('x' * {megabyte} + 'the end')"]).run(dry_run=False)
    assert result.outcome is ActionOutcome.DONE, result.reason
    command = result.details["command"]
    assert command["stdout_bytes"] == megabyte + len("the end")
    assert len(command["stdout_tail"]) == OUTPUT_LIMIT_BYTES
    assert command["stdout_tail"].endswith("xthe end")


def test_the_configuration_refuses_the_variables_rollbackd_sets_and_a_relative_cwd() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="ROLLBACKD_TARGET' is set by rollbackd"):
        CommandSettings.model_validate({"argv": ["true"], "env": {"ROLLBACKD_TARGET": "x"}})
    with pytest.raises(ValidationError, match="cwd"):
        CommandSettings.model_validate({"argv": ["true"], "cwd": "scripts"})
    with pytest.raises(ValidationError, match="argv"):
        CommandSettings.model_validate({"argv": []})
