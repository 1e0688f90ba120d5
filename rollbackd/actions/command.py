"""Roll a release back with a configured command: the runbook's ``./scripts/deploy.sh rollback``, a
Docker Compose host, a Terraform revert -- releases whose mechanism rollbackd does not know.

The command is an argv (no shell), run with the event loop's ``subprocess_exec`` in its own
session, so in its own process group: whatever it starts is ended with it. Its environment is the
daemon's ``PATH``, the configured ``env`` and the ``ROLLBACKD_*`` variables that say which target
and why (:func:`command_env`); nothing else of the daemon's environment (its tokens, its store DSN)
is passed on. stdin is ``/dev/null``; stdout and stderr are taken as they come, and the last
:data:`OUTPUT_LIMIT_BYTES` of each are kept (:class:`OutputTail`) for the audit record and the
events.

- exit code 0: ``done``;
- any other exit code, a signal, or a command that cannot be started: ``failed``, with the tail
  of its output in the reason;
- still running at ``timeout_s``: its process group gets SIGTERM, then SIGKILL ``kill_grace_s``
  later; ``failed``.

Once the command has exited, processes it left behind in its process group are killed (they would
hold its output open and outlive the rollback unowned); the same happens when the run is
cancelled (the daemon stopping: the process that takes the rollback over runs the command again,
so the command must be safe to run twice, as ``deploy.sh rollback`` is).

The run writes its one change (``Command/<namespace>/<target> run``) into the run's record
before the command starts; dry-run plans that change and runs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rollbackd.actions.base import (
    ActionOutcome,
    ActionResult,
    Change,
    ChangeRecorder,
    Progress,
    RollbackWhy,
    Waiting,
)
from rollbackd.config.settings import CommandSettings

ACTION = "command"

#: Bytes of each of stdout and stderr kept (their tail) for the audit record.
OUTPUT_LIMIT_BYTES = 64 * 1024
#: Characters of the output's tail quoted in a failed rollback's reason.
REASON_TAIL_CHARS = 600
#: How long the output is still read once the command and its group are gone, in seconds.
DRAIN_S = 2.0
#: What a dry-run plan (which has no decision yet) puts in the ``ROLLBACKD_*`` variables.
PLANNING = RollbackWhy(decision="dry-run", reason="")


class OutputTail:
    """The last ``limit`` bytes of a stream, and how many bytes it had in all.

    A bytearray trimmed from the front: one slice per read chunk; nothing a library would do
    shorter."""

    def __init__(self, limit: int = OUTPUT_LIMIT_BYTES) -> None:
        self._limit = limit
        self._kept = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        self._kept += data
        if len(self._kept) > self._limit:
            del self._kept[: len(self._kept) - self._limit]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._kept)

    def text(self) -> str:
        """The kept bytes as text (invalid UTF-8, such as a character cut at the start, replaced)."""
        return self._kept.decode("utf-8", errors="replace")


class _CommandProtocol(asyncio.SubprocessProtocol):
    """The command's end and output, as the event loop reports them: its output into two
    :class:`OutputTail`, its exit (``exited``) apart from its pipes closing (``closed``).

    ``asyncio.subprocess.Process.wait()`` returns only once every pipe is closed too, so a process
    the command left behind holding its output open would keep the run waiting after the command
    itself exited; the loop's own protocol callbacks tell the two apart."""

    def __init__(self, stdout: OutputTail, stderr: OutputTail) -> None:
        self._tails = {1: stdout, 2: stderr}
        self.exited = asyncio.Event()
        self.closed = asyncio.Event()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        self._tails[fd].add(data.encode() if isinstance(data, str) else data)

    def process_exited(self) -> None:
        self.exited.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()


def command_env(
    settings: CommandSettings, *, namespace: str, name: str, why: RollbackWhy, path: str
) -> dict[str, str]:
    """The command's whole environment: ``PATH``, the configured ``env``, then the target and the
    decision (``ROLLBACKD_*``; the settings forbid configuring those names)."""
    return {
        "PATH": path,
        **settings.env,
        "ROLLBACKD_TARGET": name,
        "ROLLBACKD_NAMESPACE": namespace,
        "ROLLBACKD_DECISION": why.decision,
        "ROLLBACKD_REASON": why.reason,
        "ROLLBACKD_REVISION": why.revision or "",
        "ROLLBACKD_RUN_ID": why.run_id,
    }


def _signal_group(pgid: int, signum: signal.Signals) -> bool:
    """Send ``signum`` to the process group ``pgid``; whether any process was left in it."""
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member changed its user: the rest got it
        return True
    return True


def _tail_text(stdout: OutputTail, stderr: OutputTail) -> str:
    """The end of what the command said, for a reason: stderr's, else stdout's."""
    for tail in (stderr, stdout):
        text = tail.text().strip()
        if text:
            if len(text) > REASON_TAIL_CHARS:
                text = "..." + text[-REASON_TAIL_CHARS:]
            return text
    return ""


@dataclass(frozen=True, slots=True)
class _Exit:
    code: int | None  # the exit code; None when it ended by a signal
    signal: str | None
    timed_out: bool


class CommandAction:
    """Roll the target back by running its configured command.

    - ``target``: the target's key (``namespace/name``);
    - ``settings``: the target's ``command`` (argv, cwd, env, timeout_s, kill_grace_s);
    - ``why``: the decision, for the ``ROLLBACKD_*`` variables (a dry-run plan needs none).
    """

    name = ACTION

    def __init__(self, *, target: str, settings: CommandSettings, why: RollbackWhy | None = None) -> None:
        self.target = target
        self.namespace, _, self.target_name = target.partition("/")
        self.settings = settings
        self.why = why if why is not None else PLANNING
        self.shown = shlex.join(settings.argv)
        self._object = f"Command/{target}"

    def _result(self, outcome: ActionOutcome, reason: str, **fields: Any) -> ActionResult:
        return ActionResult(action=self.name, target=self.target, outcome=outcome, reason=reason, **fields)

    async def run(
        self, *, dry_run: bool, recorder: ChangeRecorder | None = None, progress: Progress | None = None
    ) -> ActionResult:
        """Run the command (see the module docstring); never raises but for cancellation."""
        planned = Change(self._object, "run", None, self.shown)
        if dry_run:
            return self._result(ActionOutcome.PLANNED, f"would run {self.shown}", changes=(planned,))
        if recorder is not None and not await recorder.intend((planned,)):
            return self._result(ActionOutcome.FAILED, f"could not record the command before running it, so "
                                f"it was not run: {self.shown} (nothing was changed)")
        loop = asyncio.get_running_loop()
        started = loop.time()
        env = command_env(self.settings, namespace=self.namespace, name=self.target_name, why=self.why,
                          path=os.environ.get("PATH", os.defpath))
        stdout, stderr = OutputTail(), OutputTail()
        protocol = _CommandProtocol(stdout, stderr)
        try:
            transport = await self._spawn(protocol, env)
        except OSError as exc:  # not found, not executable, no such cwd
            if recorder is not None:
                await recorder.made((planned,), ())
            where = f" in {self.settings.cwd}" if self.settings.cwd else ""
            return self._result(ActionOutcome.FAILED, f"could not start {self.shown}{where}: "
                                f"{exc.strerror or exc} (nothing was changed)",
                                api_s=loop.time() - started)
        spawned = loop.time()
        group = transport.get_pid()  # its own session: its process group has its pid
        try:
            if recorder is not None:
                await recorder.made((planned,), (planned,))
            if progress is not None:
                progress(Waiting(what=f"the command {self.shown} to finish", since=started))
            try:
                ended = await self._wait(transport, protocol, group)
            finally:
                if progress is not None:
                    progress(None)
            exited = loop.time()
            _signal_group(group, signal.SIGKILL)  # what it left behind in its group
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_S):  # the rest of its output
                    await protocol.closed.wait()
        except BaseException:  # cancelled (the daemon stopping): the command's group goes with the run
            _signal_group(group, signal.SIGKILL)
            raise
        finally:
            transport.close()
        details = {"command": {
            "argv": list(self.settings.argv),
            "cwd": self.settings.cwd,
            "exit_code": ended.code,
            "signal": ended.signal,
            "timed_out": ended.timed_out,
            "duration_s": round(exited - started, 3),
            "stdout_tail": stdout.text(),
            "stderr_tail": stderr.text(),
            "stdout_bytes": stdout.total,
            "stderr_bytes": stderr.total,
        }}
        timing = {"api_s": (spawned - started) + (loop.time() - exited), "wait_s": exited - spawned,
                  "changes": (planned,), "details": details}
        took = f"{exited - started:.1f}s"
        if ended.code == 0:
            return self._result(ActionOutcome.DONE, f"ran {self.shown}: exit code 0 after {took}", **timing)
        if ended.timed_out:
            what = (f"{self.shown} was still running at its timeout of {self.settings.timeout_s:g}s and "
                    f"was ended with its process group (SIGTERM, then SIGKILL after "
                    f"{self.settings.kill_grace_s:g}s)")
        elif ended.signal is not None:
            what = f"{self.shown} was killed by {ended.signal} after {took}"
        else:
            what = f"{self.shown} exited with code {ended.code} after {took}"
        tail = _tail_text(stdout, stderr)
        reason = f"{what}; output's tail: {tail}" if tail else f"{what}; it wrote no output"
        return self._result(ActionOutcome.FAILED, reason, **timing)

    async def _spawn(self, protocol: _CommandProtocol, env: Mapping[str, str]) -> asyncio.SubprocessTransport:
        """Start the command. A cancellation while it starts lets the start finish, then ends the
        command's group: asyncio's own clean-up of a cancelled start would wait for the command's
        output to close, which a process it started may hold open for ever."""
        loop = asyncio.get_running_loop()
        spawn = asyncio.ensure_future(loop.subprocess_exec(
            lambda: protocol, *self.settings.argv, cwd=self.settings.cwd, env=dict(env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        ))
        try:
            transport, _ = await asyncio.shield(spawn)
        except asyncio.CancelledError:
            with contextlib.suppress(OSError):
                started, _ = await spawn
                _signal_group(started.get_pid(), signal.SIGKILL)
                started.close()
            raise
        return transport

    async def _wait(self, transport: asyncio.SubprocessTransport, protocol: _CommandProtocol,
                    group: int) -> _Exit:
        """Wait for the command to exit, ending its process group at its timeout."""
        timed_out = False
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await protocol.exited.wait()
        except TimeoutError:
            timed_out = True
            _signal_group(group, signal.SIGTERM)
            try:
                async with asyncio.timeout(self.settings.kill_grace_s):
                    await protocol.exited.wait()
            except TimeoutError:
                _signal_group(group, signal.SIGKILL)
                await protocol.exited.wait()
        code = transport.get_returncode()
        assert code is not None  # it exited
        if code < 0:
            return _Exit(code=None, signal=signal.Signals(-code).name, timed_out=timed_out)
        return _Exit(code=code, signal=None, timed_out=timed_out)


def command_details(details: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The command's record in an action result's details (``None`` for other actions)."""
    found = details.get("command")
    return found if isinstance(found, Mapping) else None
