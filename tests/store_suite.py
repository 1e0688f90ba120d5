"""The behaviour every store backend owes the daemon, written once.

:class:`StoreSuite` is run by tests/test_store.py against each backend through a ``backend``
fixture giving a :class:`Backend`: a fresh, empty database per test, stores opened on it, and
raw SQL for looking behind the interface (``%s`` placeholders, as in psycopg).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Protocol

import pytest

from rollbackd.model import ConfigMapVersion
from rollbackd.releases import Release
from rollbackd.store import AuditEntry, OutboxEvent, PermanentStoreError, Store, StoreError
from rollbackd.store.migrations import LATEST_VERSION, MIGRATIONS

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


class Backend(Protocol):
    name: str

    def new_store(self) -> Store:
        """A store (not open) on this test's database; every call names the same database."""
        ...

    async def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` on this test's database outside the store; the rows it returns."""
        ...


@asynccontextmanager
async def opened(backend: Backend) -> AsyncIterator[Store]:
    store = backend.new_store()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def event(
    event_id: str,
    *,
    subject: str | None = "shop/checkout",
    created_at: datetime | None = None,
    **payload: Any,
) -> OutboxEvent:
    return OutboxEvent(
        event_id=event_id,
        type="io.rollbackd.decision.made",
        subject=subject,
        payload={"id": event_id, "specversion": "1.0", "data": payload},
        created_at=created_at,
    )


def entry(
    summary: str,
    *,
    target: str | None = "shop/checkout",
    kind: str = "decision",
    at: datetime | None = None,
    **details: Any,
) -> AuditEntry:
    return AuditEntry(kind=kind, summary=summary, target=target, details=details, at=at)


def seqs(events: Sequence[OutboxEvent]) -> list[int]:
    """The outbox positions of ``events`` (every event read from the store has one)."""
    assert all(e.seq is not None for e in events)
    return [e.seq for e in events if e.seq is not None]


async def count(backend: Backend, table: str) -> int:
    ((n,),) = await backend.execute(f"SELECT COUNT(*) FROM {table}")
    return int(n)


class StoreSuite:
    """Run with a ``backend`` fixture."""

    # -- the audit log ----------------------------------------------------------------------

    async def test_record_assigns_increasing_seq_and_the_current_time(self, backend: Backend) -> None:
        async with opened(backend) as store:
            before = datetime.now(UTC)
            first = await store.record(entry("one"))
            second = await store.record(entry("two"))
            after = datetime.now(UTC)
        assert first.seq is not None
        assert second.seq is not None
        assert second.seq > first.seq
        assert first.at is not None
        assert first.at.tzinfo is not None
        assert before - timedelta(seconds=1) <= first.at <= after + timedelta(seconds=1)
        assert (first.kind, first.summary, first.target) == ("decision", "one", "shop/checkout")

    async def test_history_gives_back_what_was_recorded_oldest_first(self, backend: Backend) -> None:
        details = {
            "evidence": {"error_rate": 0.125, "threshold": 0.01, "p95_ms": None},
            "reasons": ["error rate 12.5% >= 5 x SLO", "attributable: baseline at 0.2%"],
            "changes": [
                {
                    "object": "Ingress shop/checkout-canary",
                    "field": "canary-weight",
                    "before": "20",
                    "after": "0",
                }
            ],
            "note": "naïve ünïcode ✓",
        }
        async with opened(backend) as store:
            await store.record(entry("started", target=None, kind="daemon.start", at=T0))
            recorded = await store.record(
                AuditEntry(
                    kind="decision",
                    summary="immediate rollback",
                    target="shop/checkout",
                    details=details,
                    at=T0 + timedelta(seconds=30),
                )
            )
            await store.record(entry("rolled back", kind="action.step", at=T0 + timedelta(seconds=31)))
            history = await store.history()
        assert [(e.kind, e.summary, e.target, e.at) for e in history] == [
            ("daemon.start", "started", None, T0),
            ("decision", "immediate rollback", "shop/checkout", T0 + timedelta(seconds=30)),
            ("action.step", "rolled back", "shop/checkout", T0 + timedelta(seconds=31)),
        ]
        assert history[1] == recorded
        assert history[1].details == details

    async def test_history_orders_by_time_not_by_insertion(self, backend: Backend) -> None:
        async with opened(backend) as store:
            await store.record(entry("later", at=T0 + timedelta(minutes=5)))
            await store.record(entry("earlier", at=T0))
            await store.record(entry("same time as earlier, recorded after it", at=T0))
            history = await store.history()
        assert [e.summary for e in history] == ["earlier", "same time as earlier, recorded after it", "later"]

    async def test_history_filters_by_target(self, backend: Backend) -> None:
        async with opened(backend) as store:
            await store.record(entry("checkout 1", target="shop/checkout", at=T0))
            await store.record(entry("payments", target="shop/payments", at=T0 + timedelta(seconds=1)))
            await store.record(
                entry("reload", target=None, kind="config.reload", at=T0 + timedelta(seconds=2))
            )
            await store.record(entry("checkout 2", target="shop/checkout", at=T0 + timedelta(seconds=3)))
            checkout = await store.history(target="shop/checkout")
            payments = await store.history(target="shop/payments")
            nobody = await store.history(target="shop/nothing")
            everything = await store.history()
        assert [e.summary for e in checkout] == ["checkout 1", "checkout 2"]
        assert [e.summary for e in payments] == ["payments"]
        assert nobody == []
        assert [e.summary for e in everything] == ["checkout 1", "payments", "reload", "checkout 2"]

    async def test_history_since_is_inclusive_and_combines_with_target(self, backend: Backend) -> None:
        async with opened(backend) as store:
            for minute in range(5):
                await store.record(entry(f"checkout {minute}", at=T0 + timedelta(minutes=minute)))
                await store.record(
                    entry(
                        f"payments {minute}",
                        target="shop/payments",
                        at=T0 + timedelta(minutes=minute, seconds=1),
                    )
                )
            since = await store.history(since=T0 + timedelta(minutes=3))
            both = await store.history(target="shop/checkout", since=T0 + timedelta(minutes=3))
            # The same instant in another time zone is the same instant.
            plus_four = datetime(2024, 5, 1, 16, 3, 0, tzinfo=timezone(timedelta(hours=4)))
            shifted = await store.history(target="shop/checkout", since=plus_four)
            future = await store.history(since=T0 + timedelta(days=1))
        assert [e.summary for e in since] == ["checkout 3", "payments 3", "checkout 4", "payments 4"]
        assert [e.summary for e in both] == ["checkout 3", "checkout 4"]
        assert [e.summary for e in shifted] == ["checkout 3", "checkout 4"]
        assert future == []

    async def test_history_limit_keeps_the_most_recent_oldest_first(self, backend: Backend) -> None:
        async with opened(backend) as store:
            for n in range(6):
                await store.record(
                    entry(
                        f"entry {n}",
                        at=T0 + timedelta(seconds=n),
                        target="shop/payments" if n % 2 else "shop/checkout",
                    )
                )
            last_two = await store.history(limit=2)
            last_checkout = await store.history(target="shop/checkout", limit=2)
            none = await store.history(limit=0)
            all_of_them = await store.history(limit=100)
        assert [e.summary for e in last_two] == ["entry 4", "entry 5"]
        assert [e.summary for e in last_checkout] == ["entry 2", "entry 4"]
        assert none == []
        assert len(all_of_them) == 6

    async def test_a_naive_time_is_refused(self, backend: Backend) -> None:
        async with opened(backend) as store:
            with pytest.raises(ValueError, match="timezone-aware"):
                await store.history(since=datetime(2024, 5, 1, 12, 0))
            with pytest.raises(ValueError, match="timezone-aware"):
                await store.record(entry("naive", at=datetime(2024, 5, 1, 12, 0)))
            assert await store.history() == []

    # -- record + outbox: one transaction ---------------------------------------------------

    async def test_record_with_events_writes_both(self, backend: Backend) -> None:
        async with opened(backend) as store:
            recorded = await store.record(entry("immediate rollback"), [event("e-1", n=1), event("e-2", n=2)])
            pending = await store.pending("mqtt")
        assert [(e.event_id, e.type, e.subject, e.payload["data"]) for e in pending] == [
            ("e-1", "io.rollbackd.decision.made", "shop/checkout", {"n": 1}),
            ("e-2", "io.rollbackd.decision.made", "shop/checkout", {"n": 2}),
        ]
        assert pending[0].seq is not None
        assert pending[1].seq is not None
        assert pending[0].seq < pending[1].seq
        assert all(e.created_at == recorded.at for e in pending)

    async def test_a_failing_event_insert_leaves_neither_entry_nor_events(self, backend: Backend) -> None:
        async with opened(backend) as store:
            # The second insert into the outbox fails (the id is taken) after the audit entry and
            # the first event were inserted in the same transaction.
            with pytest.raises(PermanentStoreError, match="record the 'decision' entry"):
                await store.record(entry("doomed"), [event("dup", n=1), event("dup", n=2)])
            assert await store.history() == []
            assert await store.pending("mqtt") == []
            assert await count(backend, "audit_log") == 0
            assert await count(backend, "outbox") == 0
            # The store is still usable afterwards.
            await store.record(entry("fine"), [event("dup", n=3)])
            assert [e.summary for e in await store.history()] == ["fine"]
            assert [e.payload["data"] for e in await store.pending("mqtt")] == [{"n": 3}]

    async def test_an_unserialisable_event_leaves_neither_entry_nor_events(self, backend: Backend) -> None:
        async with opened(backend) as store:
            with pytest.raises(PermanentStoreError, match=r"payload of event e-bad .* not JSON"):
                await store.record(entry("doomed"), [event("e-ok"), event("e-bad", when=object())])
            with pytest.raises(PermanentStoreError, match="not JSON"):
                await store.record(entry("doomed"), [event("e-nan", value=float("nan"))])
            with pytest.raises(PermanentStoreError, match="details of the 'decision' audit entry"):
                await store.record(entry("doomed", evidence={1, 2}), [event("e-ok-2")])
            assert await store.history() == []
            assert await store.pending("mqtt") == []
        assert await count(backend, "audit_log") == 0
        assert await count(backend, "outbox") == 0

    # -- the outbox: cursors per sink -------------------------------------------------------

    async def test_each_sink_has_its_own_cursor(self, backend: Backend) -> None:
        async with opened(backend) as store:
            await store.record(entry("first"), [event("e-1"), event("e-2")])
            await store.record(entry("second"), [event("e-3")])
            await store.record(entry("third"), [event("e-4"), event("e-5")])
            everything = await store.pending("mqtt")
            positions = seqs(everything)
            assert [e.event_id for e in everything] == ["e-1", "e-2", "e-3", "e-4", "e-5"]
            assert positions == sorted(positions)

            await store.mark_delivered("mqtt", positions[2])
            assert [e.event_id for e in await store.pending("mqtt")] == ["e-4", "e-5"]
            # A sink that is behind (or dead) is not held back by, and does not hold back, others.
            assert [e.event_id for e in await store.pending("webhook")] == ["e-1", "e-2", "e-3", "e-4", "e-5"]
            assert [e.event_id for e in await store.pending("webhook", limit=2)] == ["e-1", "e-2"]

            # A late acknowledgement never moves a cursor back.
            await store.mark_delivered("mqtt", positions[0])
            assert [e.event_id for e in await store.pending("mqtt")] == ["e-4", "e-5"]

            await store.mark_delivered("mqtt", positions[4])
            assert await store.pending("mqtt") == []
            await store.record(entry("fourth"), [event("e-6")])
            assert [e.event_id for e in await store.pending("mqtt")] == ["e-6"]

    async def test_cursors_survive_a_restart(self, backend: Backend) -> None:
        async with opened(backend) as store:
            await store.record(entry("first"), [event("e-1"), event("e-2")])
            first, _ = await store.pending("mqtt")
            assert first.seq is not None
            await store.mark_delivered("mqtt", first.seq)
        async with opened(backend) as store:
            assert [e.event_id for e in await store.pending("mqtt")] == ["e-2"]

    async def test_concurrent_records_keep_each_records_events_together_in_order(
        self, backend: Backend
    ) -> None:
        async with opened(backend) as store:
            await asyncio.gather(
                *(
                    store.record(entry(f"record {n}"), [event(f"e-{n}-a"), event(f"e-{n}-b")])
                    for n in range(20)
                )
            )
            pending = await store.pending("mqtt")
            history = await store.history()
        assert len(history) == 20
        assert len(pending) == 40
        ids = [e.event_id for e in pending]
        assert all(ids[i][:-1] == ids[i + 1][:-1] and ids[i].endswith("a") for i in range(0, 40, 2))

    # -- pruning ----------------------------------------------------------------------------

    async def test_prune_deletes_only_old_events_every_listed_sink_delivered(self, backend: Backend) -> None:
        old, now = T0, datetime.now(UTC)
        async with opened(backend) as store:
            await store.record(entry("old"), [event(f"old-{n}", created_at=old) for n in range(4)])
            await store.record(entry("new"), [event("new-0")])
            positions = seqs(await store.pending("mqtt"))
            cutoff = now - timedelta(hours=1)

            # A listed sink that never delivered anything keeps everything.
            await store.mark_delivered("mqtt", positions[-1])
            assert await store.prune(delivered_before=cutoff, sinks=["mqtt", "webhook"]) == 0

            # Only what the slowest listed sink delivered goes; a sink not listed does not count.
            await store.mark_delivered("webhook", positions[1])
            assert await store.prune(delivered_before=cutoff, sinks=["mqtt", "webhook"]) == 2
            assert [e.event_id for e in await store.pending("webhook")] == ["old-2", "old-3", "new-0"]
            assert [e.event_id for e in await store.pending("kubernetes")] == ["old-2", "old-3", "new-0"]

            # Delivered everywhere, but younger than the cutoff: kept.
            await store.mark_delivered("webhook", positions[-1])
            assert await store.prune(delivered_before=cutoff, sinks=["mqtt", "webhook"]) == 2
            assert [e.event_id for e in await store.pending("kubernetes")] == ["new-0"]
            assert await store.prune(delivered_before=cutoff, sinks=["mqtt", "webhook"]) == 0

            # With no sinks at all, age alone decides.
            assert await store.prune(delivered_before=now + timedelta(hours=1), sinks=[]) == 1
            assert await store.pending("kubernetes") == []
            # The audit log is never pruned.
            assert [e.summary for e in await store.history()] == ["old", "new"]

    async def test_pruning_everything_never_reuses_a_seq(self, backend: Backend) -> None:
        async with opened(backend) as store:
            await store.record(entry("one"), [event("e-1"), event("e-2")])
            (*_, last) = await store.pending("mqtt")
            assert last.seq is not None
            await store.mark_delivered("mqtt", last.seq)
            later = datetime.now(UTC) + timedelta(hours=1)
            assert await store.prune(delivered_before=later, sinks=["mqtt"]) == 2
        async with opened(backend) as store:  # also across a restart
            await store.record(entry("two"), [event("e-3")])
            (fresh,) = await store.pending("mqtt")
        assert fresh.event_id == "e-3"
        assert fresh.seq is not None
        assert fresh.seq > last.seq

    # -- per-target state -------------------------------------------------------------------

    # -- releases ---------------------------------------------------------------------------

    async def test_a_release_is_stored_once_by_id_with_its_record_and_event(self, backend: Backend) -> None:
        flag = Release(id="flag-1", target="shop/checkout", kind="flag", started_at=T0,
                       description="new_checkout on", details={"flag": "new_checkout"}, who="ci")
        async with opened(backend) as store:
            stored, created = await store.add_release(flag, entry("release started"), [event("r1")])
            assert (stored, created) == (flag, True)
            # Announced again (a retried pipeline step), even with other fields: the first one stays,
            # and nothing else is written.
            again = Release(id="flag-1", target="shop/checkout", kind="config", started_at=T0 + timedelta(1))
            stored, created = await store.add_release(again, entry("again"), [event("r2")])
            assert (stored, created) == (flag, False)
            config = Release(id="cfg-7", target="shop/other", kind="config",
                             started_at=T0 + timedelta(hours=1))
            assert (await store.add_release(config, entry("config", target="shop/other")))[1] is True
            assert await store.releases() == [flag, config]
            assert await store.releases(target="shop/other") == [config]
            assert await store.releases(since=T0 + timedelta(minutes=1)) == [config]
            assert await store.releases(limit=1) == [config]
            recorded = await store.releases(recorded_since=datetime.now(UTC) + timedelta(hours=1))
            assert recorded == []
            assert [e.summary for e in await store.history()] == ["release started", "config"]
            assert [e.event_id for e in await store.pending("mqtt")] == ["r1"]
        async with opened(backend) as store:  # kept across restarts
            assert await store.releases() == [flag, config]

    async def test_state_get_put_delete(self, backend: Backend) -> None:
        in_flight = {
            "action": "canary.abort",
            "step": 2,
            "started_at": "2024-05-01T12:00:00Z",
            "changes": [{"object": "Ingress shop/checkout-canary", "before": "20", "after": "0"}],
        }
        async with opened(backend) as store:
            assert await store.get_state("shop/checkout") is None
            await store.put_state("shop/checkout", in_flight)
            await store.put_state("shop/payments", {"cooldown_until": 1714564800.5})
            assert await store.get_state("shop/checkout") == in_flight
            await store.put_state("shop/checkout", {"step": 3})
            assert await store.get_state("shop/checkout") == {"step": 3}
        async with opened(backend) as store:  # state outlives the process
            assert await store.get_state("shop/checkout") == {"step": 3}
            await store.put_state("shop/checkout", None)
            assert await store.get_state("shop/checkout") is None
            await store.put_state("shop/checkout", None)  # deleting nothing is fine
            assert await store.get_state("shop/payments") == {"cooldown_until": 1714564800.5}

    async def test_state_that_is_not_json_is_refused_and_nothing_changes(self, backend: Backend) -> None:
        async with opened(backend) as store:
            await store.put_state("shop/checkout", {"step": 1})
            with pytest.raises(PermanentStoreError, match="state of shop/checkout"):
                await store.put_state("shop/checkout", {"when": datetime.now(UTC)})
            assert await store.get_state("shop/checkout") == {"step": 1}

    # -- lifecycle and migrations -----------------------------------------------------------

    async def test_migrations_from_empty_then_a_rerun_changes_nothing(self, backend: Backend) -> None:
        async with opened(backend) as store:
            assert await store.ping()
            await store.record(entry("kept"), [event("e-1")])
            await store.put_state("shop/checkout", {"kept": True})
        versions = await backend.execute("SELECT version, description FROM schema_version ORDER BY version")
        assert versions == [(m.version, m.description) for m in MIGRATIONS]
        applied = await backend.execute("SELECT applied_at FROM schema_version")

        async with opened(backend) as store:
            assert [e.summary for e in await store.history()] == ["kept"]
            assert [e.event_id for e in await store.pending("mqtt")] == ["e-1"]
            assert await store.get_state("shop/checkout") == {"kept": True}
        assert versions == await backend.execute(
            "SELECT version, description FROM schema_version ORDER BY version"
        )
        assert await backend.execute("SELECT applied_at FROM schema_version") == applied
        for table in ("audit_log", "outbox", "outbox_cursor", "target_state"):
            await count(backend, table)  # every table exists

    async def test_a_database_newer_than_the_code_is_refused(self, backend: Backend) -> None:
        async with opened(backend):
            pass
        await backend.execute(
            "INSERT INTO schema_version (version, description, applied_at) VALUES (%s, %s, %s)",
            (LATEST_VERSION + 1, "from the future", datetime.now(UTC)),
        )
        store = backend.new_store()
        with pytest.raises(PermanentStoreError) as info:
            await store.open()
        message = str(info.value)
        assert f"schema version {LATEST_VERSION + 1}, newer than this rollbackd understands" in message
        assert f"up to {LATEST_VERSION}" in message
        assert not await store.ping()
        await store.close()

    async def test_a_closed_store_says_so(self, backend: Backend) -> None:
        store = backend.new_store()
        with pytest.raises(StoreError, match="not open"):
            await store.record(entry("too early"))
        await store.open()
        assert await store.ping()
        await store.close()
        await store.close()  # closing twice is fine
        assert not await store.ping()
        with pytest.raises(StoreError, match="not open"):
            await store.history()

    # -- records made at the same time share a transaction -----------------------------------

    async def test_one_bad_record_among_concurrent_ones_fails_alone(self, backend: Backend) -> None:
        async with opened(backend) as store:

            async def record(n: int) -> AuditEntry:
                second = f"e-{n}-a" if n == 5 else f"e-{n}-b"  # record 5 repeats an event id
                return await store.record(entry(f"r{n}"), [event(f"e-{n}-a"), event(second)])

            results = await asyncio.gather(*(record(n) for n in range(12)), return_exceptions=True)
            assert isinstance(results[5], PermanentStoreError)
            assert "record the 'decision' entry" in str(results[5])
            stored = [r for i, r in enumerate(results) if i != 5]
            assert all(isinstance(r, AuditEntry) and r.seq is not None for r in stored)
            positions = [r.seq for r in stored if isinstance(r, AuditEntry) and r.seq is not None]
            assert positions == sorted(positions)
            pending = await store.pending("mqtt")
            assert [e.event_id for e in pending] == [f"e-{n}-{x}" for n in range(12) if n != 5 for x in "ab"]
            assert [e.summary for e in await store.history()] == [f"r{n}" for n in range(12) if n != 5]
        assert await count(backend, "audit_log") == 11

    async def test_close_waits_for_records_under_way(self, backend: Backend) -> None:
        store = backend.new_store()
        await store.open()
        tasks = [asyncio.create_task(store.record(entry(f"r{n}"), [event(f"e{n}")])) for n in range(30)]
        await asyncio.sleep(0)
        await store.close()
        assert all(task.done() and task.exception() is None for task in tasks)
        assert await count(backend, "outbox") == 30

    async def test_a_caller_that_gives_up_does_not_break_the_others(self, backend: Backend) -> None:
        async with opened(backend) as store:
            tasks = [asyncio.create_task(store.record(entry(f"r{n}"), [event(f"e{n}")])) for n in range(10)]
            await asyncio.sleep(0)
            tasks[3].cancel()
            done = await asyncio.gather(*tasks, return_exceptions=True)
            assert isinstance(done[3], asyncio.CancelledError)
            assert all(not isinstance(d, BaseException) for i, d in enumerate(done) if i != 3)
            await store.record(entry("after"), [event("e-after")])
            assert (await store.pending("mqtt"))[-1].event_id == "e-after"

    # -- ConfigMaps' versions ---------------------------------------------------------------

    async def test_config_versions_are_kept_newest_first_once_each(self, backend: Backend) -> None:
        def version(rv: str, timeout: str) -> ConfigMapVersion:
            return ConfigMapVersion(namespace="shop", name="checkout-config", resource_version=rv,
                                    data={"timeout_ms": timeout}, seen_at=T0)

        async with opened(backend) as store:
            assert await store.add_config_version(version("10", "800"), keep_versions=20, keep_age_s=86400)
            assert await store.add_config_version(version("11", "80"), keep_versions=20, keep_age_s=86400)
            # Another replica seeing the same version, and a change of metadata only: nothing new.
            assert not await store.add_config_version(version("11", "80"), keep_versions=20, keep_age_s=86400)
            assert not await store.add_config_version(version("12", "80"), keep_versions=20, keep_age_s=86400)
            kept = await store.config_versions("shop", "checkout-config", limit=5)
        assert [(v.resource_version, dict(v.data)) for v in kept] == [
            ("11", {"timeout_ms": "80"}), ("10", {"timeout_ms": "800"})
        ]
        assert kept[0].seen_at == T0

    async def test_config_versions_are_bounded_by_count_and_age(self, backend: Backend) -> None:
        now = datetime.now(UTC)
        async with opened(backend) as store:
            for n in range(6):
                seen = now - timedelta(days=9 - n, hours=12)  # 9.5 days old, 8.5, ..., 4.5
                await store.add_config_version(
                    ConfigMapVersion(namespace="shop", name="web", resource_version=str(n),
                                     data={"n": str(n)}, seen_at=seen),
                    keep_versions=4, keep_age_s=7 * 86400,
                )
            kept = [v.resource_version for v in await store.config_versions("shop", "web", limit=10)]
            assert kept == ["5", "4", "3"]  # 4 newest (5..2), then 2 is older than 7 days
            # However old, the 2 newest stay: what a rollback goes back to.
            await store.add_config_version(
                ConfigMapVersion(namespace="shop", name="web", resource_version="6", data={"n": "6"},
                                 seen_at=now - timedelta(days=30)),
                keep_versions=4, keep_age_s=3600,
            )
            kept = [v.resource_version for v in await store.config_versions("shop", "web", limit=10)]
            assert kept == ["6", "5"]
            assert await store.config_versions("shop", "other") == []
