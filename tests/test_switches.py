"""The switch board: switches written through one replica are read by every other one from the
store (SQLite here, PostgreSQL in tests/test_switches_replicas.py), survive a restart, carry who
and why, and a hold ends at the wall-clock time stored with it, whoever reads it and when."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rollbackd.daemon.state import DaemonState
from rollbackd.daemon.switches import FREEZE, SwitchBoard, SwitchWriteError
from rollbackd.daemon.switchstores import StoreSwitches
from rollbackd.store.base import Store
from rollbackd.store.sqlite import SQLiteStore
from tests.test_daemon import make_settings

TARGET = "shop/checkout"
T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class Clocks:
    """A wall clock and an event-loop clock the test moves (each replica has its own loop clock)."""

    def __init__(self, loop: float = 1000.0) -> None:
        self.wall = T0
        self.loop = loop

    def advance(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.loop += seconds


def replica(store: Store | None, clocks: Clocks) -> tuple[DaemonState, SwitchBoard]:
    state = DaemonState(make_settings())
    board = SwitchBoard(state, store=lambda: None if store is None else StoreSwitches(store), durable=True,
                        loop_clock=lambda: clocks.loop, wall_clock=lambda: clocks.wall)
    return state, board


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with SQLiteStore(tmp_path / "rollbackd.db") as opened:
        yield opened


async def test_a_freeze_written_through_one_replica_is_obeyed_by_the_other_at_its_next_read(
    store: SQLiteStore,
) -> None:
    clocks = Clocks()
    a_state, a = replica(store, clocks)
    b_state, b = replica(store, clocks)
    assert await b.sync()
    await a.set_freeze(True, by="oncall", reason="incident 42")
    assert a_state.flags.freeze is True
    assert (b_state.flags.freeze, await b.sync(), b_state.flags.freeze) == (False, True, True)
    who = b.who(FREEZE)
    assert who is not None
    assert (who.by, who.reason, who.at) == ("oncall", "incident 42", T0)

    await b.set_dry_run(True, by="release-bot", reason="trying the new SLO")
    await a.set_freeze(False, by="oncall", reason="incident over")
    assert await a.sync()
    assert await b.sync()
    assert (a_state.flags.freeze, a_state.flags.dry_run) == (False, True)
    assert (b_state.flags.freeze, b_state.flags.dry_run) == (False, True)


async def test_the_switches_survive_a_restart(tmp_path: Path) -> None:
    clocks = Clocks()
    async with SQLiteStore(tmp_path / "rollbackd.db") as store:
        _, board = replica(store, clocks)
        await board.set_freeze(True, by="oncall", reason="change freeze for the holidays")
        await board.set_hold(TARGET, for_s=900, by="oncall", reason="fix 2.1.1 on its way")
    async with SQLiteStore(tmp_path / "rollbackd.db") as store:
        state, board = replica(store, Clocks(loop=5.0))
        # It must not act before the stored switches are read.
        assert (board.ready, await board.sync(), board.ready) == (False, True, True)
        assert state.flags.freeze is True
        hold = state.holds.get(TARGET)
        assert hold is not None
        assert hold.reason == "fix 2.1.1 on its way"
        assert hold.until == pytest.approx(5.0 + 900)


async def test_a_hold_ends_at_its_stored_wall_clock_time_on_every_replica(store: SQLiteStore) -> None:
    clocks = Clocks()
    a_state, a = replica(store, clocks)
    await a.set_hold(TARGET, for_s=900, by="oncall", reason="fix-forward")
    # Another replica (its own loop clock) reads it ten minutes later: five minutes are left.
    clocks.advance(600)
    other = Clocks(loop=42.0)
    other.wall = clocks.wall
    b_state, b = replica(store, other)
    assert await b.sync()
    hold = b_state.holds.get(TARGET)
    assert hold is not None
    assert hold.until - other.loop == pytest.approx(300)
    assert hold.set_at == pytest.approx(other.loop - 600)

    await a.clear_hold(TARGET)
    assert a_state.holds.get(TARGET) is None
    assert await b.sync()
    assert b_state.holds.get(TARGET) is None


async def test_a_switch_set_while_the_store_does_not_answer_is_applied_here_and_stored_once_it_does(
    tmp_path: Path,
) -> None:
    clocks = Clocks()
    opened: list[Store] = []
    state, board = replica(None, clocks)
    board = SwitchBoard(state, store=lambda: StoreSwitches(opened[0]) if opened else None, durable=True,
                        loop_clock=lambda: clocks.loop, wall_clock=lambda: clocks.wall)
    assert await board.set_freeze(True, by="oncall", reason="incident") is False  # not stored yet
    assert state.flags.freeze is True  # obeyed here all the same
    async with SQLiteStore(tmp_path / "rollbackd.db") as store:
        assert board.unsaved
        opened.append(store)
        assert (await board.sync(), board.unsaved) == (True, False)
        other_state, other = replica(store, clocks)
        assert (await other.sync(), other_state.flags.freeze) == (True, True)
        await store.close()
        with pytest.raises(SwitchWriteError, match="not started"):
            await board.request_rollback(TARGET, run_id="r1", force=False, by="oncall", reason="bad")
        assert board.rollback_request(TARGET) is None


async def test_a_switch_changed_by_the_configuration_file_stays_until_the_next_api_write(
    store: SQLiteStore,
) -> None:
    clocks = Clocks()
    state, board = replica(store, clocks)
    await board.set_freeze(True, by="oncall", reason="incident")
    state.flags.freeze = False  # a reloaded file turned it off
    assert await board.sync()
    assert state.flags.freeze is False
    await board.set_freeze(True, by="oncall", reason="again")
    assert state.flags.freeze is True
