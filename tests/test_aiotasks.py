"""Whoever starts a task stops it: :func:`rollbackd.aiotasks.stop_tasks` cancels, waits a bounded
time, names the tasks that did not stop, and never swallows the caller's own cancellation; the
daemon stops the rollback runs it started through :class:`~rollbackd.daemon.rollbacks.Rollbacks`."""

from __future__ import annotations

import asyncio
import logging

import pytest

from rollbackd.actions.base import ActionResult, ChangeRecorder, Progress
from rollbackd.aiotasks import stop_tasks
from rollbackd.daemon.app import Daemon
from rollbackd.params import TargetParams
from rollbackd.run import Phase
from tests.kubefixtures import wait_until
from tests.test_daemon import SEVERE, ScriptedHealth, ScriptedMetrics, make_settings
from tests.test_daemon_rollbacks import ScriptedAction, ScriptedTargets

NOT_STOPPED = "task did not stop within the shutdown timeout"


async def forever() -> None:
    await asyncio.Event().wait()


async def stubborn(cleanup_s: float) -> None:
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        await asyncio.sleep(cleanup_s)  # cleans up for a long time before it gives in
        raise


async def failing() -> None:
    raise ValueError("boom")


def not_stopped(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.__dict__["task"] for r in caplog.records if r.getMessage() == NOT_STOPPED]


async def test_tasks_are_cancelled_and_waited_for() -> None:
    tasks = [asyncio.create_task(forever(), name=f"worker-{i}") for i in range(3)]
    done = asyncio.create_task(asyncio.sleep(0), name="already-done")
    await done
    still_running = await stop_tasks([*tasks, done, None], timeout_s=5)
    assert still_running == frozenset()
    assert all(task.cancelled() for task in tasks)
    assert not done.cancelled()


@pytest.mark.looptime
async def test_a_task_that_does_not_stop_in_time_is_logged_by_name(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="rollbackd")
    loop = asyncio.get_running_loop()
    quick = asyncio.create_task(forever(), name="quick")
    slow = asyncio.create_task(stubborn(30), name="slow-to-clean-up")
    await asyncio.sleep(0)  # both started
    started = loop.time()
    still_running = await stop_tasks([quick, slow], timeout_s=5)
    assert loop.time() - started == pytest.approx(5)
    assert still_running == {slow}
    assert not_stopped(caplog) == ["slow-to-clean-up"]
    (record,) = [r for r in caplog.records if r.getMessage() == NOT_STOPPED]
    assert record.levelno == logging.ERROR
    assert record.__dict__["timeout_s"] == 5
    await asyncio.wait([slow])  # it does stop, later
    assert slow.cancelled()


@pytest.mark.looptime
async def test_the_callers_own_cancellation_propagates() -> None:
    slow = asyncio.create_task(stubborn(30), name="slow-to-clean-up")
    await asyncio.sleep(0)
    caller = asyncio.create_task(stop_tasks([slow], timeout_s=60), name="caller")
    await asyncio.sleep(1)  # the caller waits for the slow task
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert caller.cancelled()  # not swallowed: the caller ends cancelled, not returning
    assert not slow.done()  # it was asked to stop and is still cleaning up
    await asyncio.wait([slow])
    assert slow.cancelled()


async def test_a_task_that_failed_raises_as_awaiting_it_would() -> None:
    crashed = asyncio.create_task(failing(), name="crashed")
    other = asyncio.create_task(forever(), name="other")
    await asyncio.wait([crashed])
    with pytest.raises(ValueError, match="boom"):
        await stop_tasks([crashed, other])
    assert other.cancelled()  # the others are stopped all the same


async def test_failures_can_be_dropped_or_left_to_another_owner() -> None:
    crashed = asyncio.create_task(failing(), name="crashed")
    await asyncio.wait([crashed])
    assert await stop_tasks([crashed], failures="drop") == frozenset()
    assert await stop_tasks([crashed], failures="leave") == frozenset()
    with pytest.raises(ValueError, match="boom"):
        await stop_tasks([crashed])


class HangingAction(ScriptedAction):
    """An action that never finishes, and says whether it was stopped."""

    async def run(self, *, dry_run: bool, recorder: ChangeRecorder | None = None,
                  progress: Progress | None = None) -> ActionResult:
        assert isinstance(self.cluster, HangingTargets)
        self.cluster.runs.append(dry_run)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cluster.stopped = True
            raise
        raise AssertionError("unreachable")


class HangingTargets(ScriptedTargets):
    stopped = False

    def action(
        self, params: TargetParams, *, bad_revision: int | None = None, why: object = None
    ) -> ScriptedAction:
        return HangingAction(self)


@pytest.mark.looptime
async def test_the_daemon_stops_the_rollback_runs_it_started() -> None:
    cluster = HangingTargets()
    loop = asyncio.get_running_loop()
    daemon = Daemon(make_settings(), metrics_source=ScriptedMetrics(SEVERE), health_source=ScriptedHealth(),
                    targets=cluster, shutdown_timeout_s=5)
    async with daemon:
        await wait_until(lambda: cluster.runs == [False], timeout_s=120, what="the rollback acting")
        run = daemon.rollbacks.runs["shop/checkout"]
        assert run.phase is Phase.ACTING
        stopping_at = loop.time()
    assert cluster.stopped
    assert loop.time() - stopping_at < 5
    assert run.phase is Phase.ACTING  # left under way: a restart resumes it from its record
