"""Delivery from the store's outbox (the real SQLite store): at least once, in order, each sink
on its own cursor, woken by new events, surviving restarts, pruned after the retention."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from rollbackd.backoff import Backoff
from rollbackd.events.build import EventFactory
from rollbackd.events.dispatcher import Dispatcher, RejectedDelivery
from rollbackd.events.model import CloudEvent
from rollbackd.events.publisher import EventPublisher, audit_entry_for
from rollbackd.store import AuditEntry, OutboxEvent, Store, open_store
from tests.eventstory import rollback_story
from tests.kubefixtures import wait_until

FAST = Backoff(initial_s=0.01, max_s=0.05)


class RecordingSink:
    """A sink that keeps what it was given and fails while told to."""

    def __init__(self, name: str, *, failures: int = 0, dead: bool = False) -> None:
        self.name = name
        self.failures = failures
        self.dead = dead
        self.attempts: list[str] = []
        self.delivered: list[str] = []

    async def deliver(self, event: OutboxEvent) -> None:
        self.attempts.append(event.event_id)
        if self.dead or self.failures > 0:
            self.failures -= 1
            raise ConnectionError(f"{self.name} is down")
        self.delivered.append(event.event_id)


class FlakyStore:
    """The real store, whose cursor moves fail while ``fail_marks`` is positive; counts the prunes."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.fail_marks = 0
        self.prunes = 0

    async def pending(self, sink: str, *, limit: int = 500) -> list[OutboxEvent]:
        return await self._store.pending(sink, limit=limit)

    async def mark_delivered(self, sink: str, through_seq: int) -> None:
        if self.fail_marks > 0:
            self.fail_marks -= 1
            raise OSError("disk I/O error")
        await self._store.mark_delivered(sink, through_seq)

    async def prune(self, *, delivered_before: datetime, sinks: Sequence[str]) -> int:
        pruned = await self._store.prune(delivered_before=delivered_before, sinks=sinks)
        self.prunes += 1
        return pruned

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = open_store(None, data_dir=tmp_path)
    await db.open()
    yield db
    await db.close()


async def record(store: Store, events: Sequence[CloudEvent]) -> None:
    for event in events:
        await store.record(audit_entry_for(event), [event.to_outbox()])


def ids(events: Sequence[CloudEvent]) -> list[str]:
    return [e.id for e in events]


async def test_every_sink_gets_every_event_in_order(store: Store) -> None:
    story = rollback_story("shop/checkout") + rollback_story("shop/payments")
    await record(store, story)
    a, b = RecordingSink("a"), RecordingSink("b")
    async def acknowledged() -> bool:
        return await store.pending("a") == [] and await store.pending("b") == []

    async with Dispatcher(store=store, sinks=[a, b], backoff=FAST, poll_interval_s=30):
        await wait_until(lambda: len(a.delivered) == len(b.delivered) == len(story), what="delivery")
        # A delivery is acknowledged in the store just after the sink took it (at least once:
        # stopping in between would deliver it again); wait for the acknowledgements too.
        await wait_until(acknowledged, what="every delivery acknowledged")
    assert a.delivered == b.delivered == ids(story)


async def test_a_failing_sink_retries_the_same_event_and_never_skips(store: Store) -> None:
    story = rollback_story()
    await record(store, story)
    flaky = RecordingSink("flaky", failures=3)
    async with Dispatcher(store=store, sinks=[flaky], backoff=FAST, poll_interval_s=30) as dispatcher:
        # The sink has the events before the dispatcher counts the last one: both are waited for.
        await wait_until(
            lambda: len(flaky.delivered) == dispatcher.status()["flaky"].delivered == len(story),
            what="delivery after failures, counted",
        )
        status = dispatcher.status()["flaky"]
    assert flaky.attempts[:4] == [story[0].id] * 4  # the first event, three failures, then success
    assert flaky.delivered == ids(story)
    assert (status.delivered, status.failures, status.retrying) == (5, 3, 0)
    assert status.last_error == "ConnectionError: flaky is down"


async def test_a_dead_sink_does_not_hold_back_the_others(store: Store) -> None:
    story = rollback_story()
    await record(store, story)
    dead, alive = RecordingSink("dead", dead=True), RecordingSink("alive")
    async with Dispatcher(store=store, sinks=[dead, alive], backoff=FAST, poll_interval_s=30) as dispatcher:
        await wait_until(lambda: len(alive.delivered) == len(story), what="delivery to the live sink")
        # An attempt is the sink's before its failure is the dispatcher's: the count is waited for.
        await wait_until(lambda: dispatcher.status()["dead"].retrying >= 3, what="retries of the dead sink")
        assert len(dead.attempts) >= 3
        assert not await dispatcher.drain(timeout_s=0.2)
    assert set(dead.attempts) == {story[0].id}  # stuck on the first event, nothing skipped
    assert ids(story) == [e.event_id for e in await store.pending("dead")]


async def test_new_events_are_delivered_at_once_without_waiting_for_the_poll(store: Store) -> None:
    sink = RecordingSink("sink")
    async with Dispatcher(store=store, sinks=[sink], backoff=FAST, poll_interval_s=3600) as dispatcher:
        publisher = EventPublisher(store=store, on_recorded=dispatcher.nudge)
        assert await dispatcher.drain(timeout_s=10)  # nothing to send: the loop sleeps, for an hour
        story = rollback_story()
        for event in story:
            await publisher.announce(event)
        assert await dispatcher.drain(timeout_s=10)
    assert sink.delivered == ids(story)


async def test_events_recorded_elsewhere_are_found_by_polling(store: Store) -> None:
    sink = RecordingSink("sink")
    async with Dispatcher(store=store, sinks=[sink], backoff=FAST, poll_interval_s=0.05) as dispatcher:
        assert await dispatcher.drain(timeout_s=10)  # nothing to send: the loop polls
        story = rollback_story()
        await record(store, story)  # no nudge: another process wrote them
        await wait_until(lambda: len(sink.delivered) == len(story), what="delivery by polling")


async def test_pending_events_survive_a_crash_and_go_out_after_the_restart(tmp_path: Path) -> None:
    story = rollback_story()
    first = open_store(None, data_dir=tmp_path)
    await first.open()
    delivered_before_crash = RecordingSink("mqtt")
    async with Dispatcher(store=first, sinks=[delivered_before_crash], backoff=FAST) as dispatcher:
        await record(first, story[:2])
        dispatcher.nudge()
        assert await dispatcher.drain(timeout_s=10)
        delivered_before_crash.dead = True  # the broker goes away; then the daemon dies
        await record(first, story[2:])
        dispatcher.nudge()
        await wait_until(lambda: len(delivered_before_crash.attempts) > 2, what="a failed attempt")
    await first.close()

    second = open_store(None, data_dir=tmp_path)  # the restarted daemon
    await second.open()
    try:
        after_restart = RecordingSink("mqtt")
        async with Dispatcher(store=second, sinks=[after_restart], backoff=FAST) as dispatcher:
            assert await dispatcher.drain(timeout_s=10)
        assert delivered_before_crash.delivered == ids(story[:2])
        assert after_restart.delivered == ids(story[2:])
    finally:
        await second.close()


async def test_a_lost_cursor_move_means_a_redelivery_never_a_loss(store: Store) -> None:
    flaky_store = FlakyStore(store)
    flaky_store.fail_marks = 2
    story = rollback_story()
    await record(store, story)
    sink = RecordingSink("sink")
    async with Dispatcher(store=flaky_store, sinks=[sink], backoff=FAST, poll_interval_s=30) as dispatcher:
        assert await dispatcher.drain(timeout_s=10)
    assert set(sink.delivered) == set(ids(story))
    assert sink.delivered[:2] == [story[0].id, story[0].id]  # delivered again, in order
    deduped = list(dict.fromkeys(sink.delivered))
    assert deduped == ids(story)


async def test_delivered_events_are_pruned_after_the_retention(store: Store) -> None:
    story = rollback_story()
    await record(store, story)
    sink = RecordingSink("sink")
    async with Dispatcher(
        store=store, sinks=[sink], backoff=FAST, poll_interval_s=30, retention_s=0.0, prune_interval_s=0.05
    ) as dispatcher:
        assert await dispatcher.drain(timeout_s=10)
        # A newcomer reads whatever is still in the outbox: nothing, once pruned.
        await wait_until(lambda: _empty(store, "newcomer"), what="pruning")


async def _empty(store: Store, sink: str) -> bool:
    return await store.pending(sink) == []


async def test_nothing_is_pruned_that_a_sink_has_not_delivered(store: Store) -> None:
    story = rollback_story()
    await record(store, story)
    dead, alive = RecordingSink("dead", dead=True), RecordingSink("alive")
    counting = FlakyStore(store)
    async with Dispatcher(
        store=counting,
        sinks=[dead, alive],
        backoff=FAST,
        poll_interval_s=30,
        retention_s=0.0,
        prune_interval_s=0.05,
    ):
        await wait_until(lambda: len(alive.delivered) == len(story), what="delivery")
        pruned_before = counting.prunes
        await wait_until(lambda: counting.prunes >= pruned_before + 3, what="three prune rounds after it")
    assert [e.event_id for e in await store.pending("dead")] == ids(story)


def test_sink_names_must_be_unique(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="repeated: a"):
        Dispatcher(store=open_store(None, data_dir=tmp_path), sinks=[RecordingSink("a"), RecordingSink("a")])


async def test_publisher_records_the_audit_entry_with_its_events_and_nudges(store: Store) -> None:
    nudges: list[None] = []
    publisher = EventPublisher(store=store, on_recorded=lambda: nudges.append(None))
    story = rollback_story()
    entry = await publisher.publish(
        AuditEntry(kind="decision", summary="roll back", target="shop/checkout"), story[:2]
    )
    assert entry.seq is not None
    assert nudges == [None]
    assert [e.event_id for e in await store.pending("any")] == ids(story[:2])
    (stored,) = await store.history(target="shop/checkout")
    assert stored.kind == "decision"
    await publisher.publish(AuditEntry(kind="config.reload", summary="no events"))
    assert nudges == [None]  # nothing to deliver, no nudge


async def test_submitted_entries_are_recorded_in_order_even_when_the_store_fails_for_a_while(
    store: Store,
) -> None:
    class Failing:
        failures = 2

        async def record(self, entry: AuditEntry, events: Sequence[OutboxEvent] = ()) -> AuditEntry:
            if self.failures:
                self.failures -= 1
                raise OSError("database is locked")
            return await store.record(entry, events)

    story = rollback_story()
    async with EventPublisher(store=Failing(), backoff=FAST) as publisher:  # type: ignore[arg-type]
        for event in story:
            publisher.submit(audit_entry_for(event), [event])
    assert [e.event_id for e in await store.pending("any")] == ids(story)
    with pytest.raises(RuntimeError, match="open publisher"):
        publisher.submit(audit_entry_for(story[0]), [story[0]])


async def test_factory_events_share_the_configured_source(store: Store) -> None:
    story = rollback_story(factory=EventFactory(source="/clusters/prod/rollbackd"))
    await record(store, story)
    assert {e.payload["source"] for e in await store.pending("any")} == {"/clusters/prod/rollbackd"}


class PipeSink:
    """A sink that takes several deliveries at once (``max_in_flight``), each completing after a
    random short delay, failing on chosen attempts; ``link`` is its connection."""

    def __init__(self, name: str = "pipe", *, window: int = 8, fail_at: Iterable[int] = ()) -> None:
        self.name = name
        self.max_in_flight = window
        self.wire: list[str] = []  # in the order deliveries started
        self.acked: list[str] = []
        self.fail_at = set(fail_at)
        self.calls = 0
        self.concurrent = 0
        self.peak = 0
        self.link = asyncio.Event()
        self.link.set()

    @property
    def connected(self) -> bool:
        return self.link.is_set()

    async def wait_connected(self, *, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.link.wait()
        return self.connected

    async def deliver(self, event: OutboxEvent) -> None:
        self.calls += 1
        attempt = self.calls
        self.wire.append(event.event_id)
        self.concurrent += 1
        self.peak = max(self.peak, self.concurrent)
        try:
            await asyncio.sleep(random.random() * 0.003)
            if attempt in self.fail_at:
                raise ConnectionError(f"attempt {attempt} failed")
            self.acked.append(event.event_id)
        finally:
            self.concurrent -= 1


async def test_a_pipelined_sink_gets_everything_in_order_despite_failures(store: Store) -> None:
    story: list[CloudEvent] = []
    for i in range(40):
        story += rollback_story(f"shop/t{i % 7}")
    await record(store, story)
    sink = PipeSink(fail_at={3, 20, 21, 77})
    async with Dispatcher(store=store, sinks=[sink], backoff=FAST, poll_interval_s=30) as dispatcher:
        assert await dispatcher.drain(timeout_s=20)
        status = dispatcher.status()["pipe"]
    # Retransmissions restart at the failed event, so first sends are in outbox order.
    assert list(dict.fromkeys(sink.wire)) == ids(story)
    assert set(sink.acked) == set(ids(story))
    assert sink.peak > 1
    assert status.failures >= 2
    assert status.retrying == 0
    assert await store.pending("pipe") == []


async def test_a_pipelined_sink_survives_lost_cursor_moves(store: Store) -> None:
    flaky = FlakyStore(store)
    flaky.fail_marks = 3
    story: list[CloudEvent] = []
    for i in range(30):
        story += rollback_story(f"shop/t{i % 5}")
    await record(store, story)
    sink = PipeSink()
    async with Dispatcher(store=flaky, sinks=[sink], backoff=FAST, poll_interval_s=30) as dispatcher:
        assert await dispatcher.drain(timeout_s=20)
    assert list(dict.fromkeys(sink.wire)) == ids(story)
    assert set(sink.acked) == set(ids(story))
    assert await store.pending("pipe") == []


async def test_a_disconnected_sink_retries_as_soon_as_it_reconnects(store: Store) -> None:
    story = rollback_story()
    await record(store, story)
    sink = PipeSink(fail_at={1})
    sink.link.clear()
    slow = Backoff(initial_s=30, max_s=30, jitter=0)
    async with Dispatcher(store=store, sinks=[sink], backoff=slow, poll_interval_s=30) as dispatcher:
        # The first failed and the rest were dropped; now pausing until the sink reconnects.
        await wait_until(
            lambda: sink.calls == len(story) and dispatcher.status()["pipe"].retrying == 1,
            what="every event sent once, the first failed",
        )
        sink.link.set()
        assert await dispatcher.drain(timeout_s=2)  # long before the 30 s backoff
    assert list(dict.fromkeys(sink.wire)) == ids(story)
    assert set(sink.acked) == set(ids(story))


async def test_a_connected_sink_that_fails_still_backs_off(store: Store) -> None:
    story = rollback_story()
    await record(store, story)
    sink = PipeSink(fail_at={1})
    slow = Backoff(initial_s=30, max_s=30, jitter=0)
    async with Dispatcher(store=store, sinks=[sink], backoff=slow, poll_interval_s=30) as dispatcher:
        await wait_until(lambda: sink.calls == len(story), what="every event sent once")
        assert not await dispatcher.drain(timeout_s=0.3)  # backing off, for 30 s
        assert sink.calls == len(story)


class RefusingSink(RecordingSink):
    """A sink that refuses every event for good (as a webhook answering 410 Gone)."""

    async def deliver(self, event: OutboxEvent) -> None:
        self.attempts.append(event.event_id)
        raise RejectedDelivery(f"{self.name} answered HTTP 410 Gone")


async def _outbox_size(store: Store) -> int:
    return len(await store.pending("anyone-new", limit=100_000))


async def _dead_letters(store: Store) -> list[AuditEntry]:
    return [entry for entry in await store.history() if entry.kind == "event.dead-lettered"]


async def test_a_dead_sink_gives_up_past_its_bound_and_the_outbox_stays_pruned(store: Store) -> None:
    dead, alive = RecordingSink("dead", dead=True), RecordingSink("alive")
    publisher = EventPublisher(store=store)
    async with Dispatcher(
        store=store,
        sinks=[dead, alive],
        backoff=FAST,
        poll_interval_s=0.05,
        retention_s=0.0,
        prune_interval_s=0.05,
        dead_letter_after_events=5,
    ) as dispatcher:
        sent: list[str] = []
        for round_ in range(8):
            story = rollback_story(f"shop/app-{round_}")
            for event in story:
                await publisher.announce(event)
            sent += ids(story)
            # The outbox never holds much more than the bound behind the healthy sink's cursor.
            await wait_until(partial(_has_all, alive, set(sent)), what="delivery to the live sink")
            await wait_until(lambda: _at_most(store, 5 + 5 + 2), what="the outbox pruned")
        # The dead sink gives up on what lies past its bound (and the round under way) as it
        # catches up with the outbox: waited for, as the pruning above may be seen first.
        await wait_until(
            lambda: dispatcher.status()["dead"].dead_lettered >= len(sent) - 2 * 5,
            what="the dead sink giving up past its bound",
        )
        assert dispatcher.status()["dead"].delivered == 0
    # The healthy sink got every event in order, and one escalation about the dead sink.
    escalations = [e for e in alive.delivered if e not in sent]
    assert [e for e in alive.delivered if e in sent] == sent
    assert len(escalations) == 1
    assert dead.delivered == []
    letters = await _dead_letters(store)
    assert {entry.details["sink"] for entry in letters} == {"dead"}
    assert {entry.details["cause"] for entry in letters} == {"sink-overdue"}
    assert [entry.details["event_id"] for entry in letters] == sent[: len(letters)]


def _has_all(sink: RecordingSink, wanted: set[str]) -> bool:
    return wanted <= set(sink.delivered)


async def _at_most(store: Store, size: int) -> bool:
    return await _outbox_size(store) <= size


async def test_a_sink_that_refuses_for_good_is_not_retried_and_escalates_once(store: Store) -> None:
    story = rollback_story("shop/checkout") + rollback_story("shop/payments")
    await record(store, story)
    refusing, alive = RefusingSink("refusing"), RecordingSink("alive")
    async with Dispatcher(
        store=store,
        sinks=[refusing, alive],
        backoff=FAST,
        poll_interval_s=30,
        factory=EventFactory(source="/test"),
    ) as dispatcher:
        await wait_until(lambda: len(alive.delivered) == len(story) + 1, what="the escalation")
        assert await dispatcher.drain(timeout_s=10)  # nothing waits for the refusing sink
        assert dispatcher.status()["refusing"].dead_lettered == len(story)
    assert refusing.attempts == ids(story)  # each tried once, never again; not sent the escalation
    letters = await _dead_letters(store)
    assert [entry.details["event_id"] for entry in letters] == ids(story)
    assert {entry.details["cause"] for entry in letters} == {"sink-rejected"}
    assert "HTTP 410 Gone" in letters[0].summary
    outbox = {event.event_id: event for event in await store.pending("anyone-new")}
    escalation = CloudEvent.from_json(outbox[alive.delivered[-1]].payload)
    assert escalation.type == "io.rollbackd.escalation.raised"
    assert escalation.source == "/test"
    assert escalation.subject == "shop/checkout"  # about the target of the first refused event
    assert escalation.to_json()["data"]["cause"] == "sink-rejected"
    assert escalation.to_json()["data"]["sink"] == "refusing"
    assert "refusing answered HTTP 410 Gone" in escalation.summary


async def test_a_slow_sink_within_its_bound_is_retried_not_given_up_on(store: Store) -> None:
    story = rollback_story()
    await record(store, story)
    flaky = RecordingSink("flaky", failures=3)
    async with Dispatcher(
        store=store, sinks=[flaky], backoff=FAST, poll_interval_s=30, dead_letter_after_s=3600.0,
        dead_letter_after_events=100,
    ) as dispatcher:
        await wait_until(lambda: len(flaky.delivered) == len(story), what="delivery after failures")
        assert dispatcher.status()["flaky"].dead_lettered == 0
    assert await _dead_letters(store) == []
