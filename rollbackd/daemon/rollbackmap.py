"""Recent rollbacks shared by replicas that do not share a store: kept in the switches' ConfigMap
(:mod:`rollbackd.daemon.switchmap`), beside the switches and the announced releases.

A new leader, or a restarted process, recalls the rollbacks of the last hour before it acts: each
one started counts towards its target's cooldown and the hourly cap, each one verified starts the
rest of its post-rollback watch (:meth:`~rollbackd.daemon.app.Daemon._recall_rollbacks`), and a
rollback left under way is finished. With the embedded SQLite store each replica has its own audit
log and run records, so a new leader's store holds neither the rollbacks of the leader before it
(it would roll a target back again within its cooldown, or a second time within its watch) nor the
one that leader was carrying out when it was lost. The leader therefore also writes each rollback
it starts here, at every phase, and every leader reads them back when it takes over.

**Keys and values.** One key per target, ``rolled-back.<namespace>.<name>``, holding a JSON list
of its recent rollbacks, oldest first: ``{"run_id", "started_at", "verified_at", "phase",
"record"}`` (times UTC, ISO 8601; ``verified_at`` is ``null`` unless the rollback was verified;
``record`` is the run's record while it is under way, what a new leader resumes it from, and
``null`` once it is over).

**In order.** Writes are made in the background and may arrive out of order: one for an earlier
phase (``acting`` before ``verifying`` before the verdict) than the one kept is not applied.

**Bounded.** A write keeps the rollbacks started within ``keep_s`` (the span a leader recalls:
the hour of the cap, the longest cooldown, the post-rollback watch) and at most
:data:`KEEP_PER_TARGET` of them; a ConfigMap holds at most 1 MiB.

**Best effort.** The audit log stays the record; a write that fails is logged and the rollback
goes on (an API server that cannot be written to must not stop a rollback).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from rollbackd.daemon.switchmap import ConfigMapSwitches, listed
from rollbackd.daemon.switchstores import SwitchStoreError
from rollbackd.events.model import EventType
from rollbackd.run import Phase
from rollbackd.store.base import AuditEntry, TemporaryStoreError

logger = logging.getLogger(__name__)

#: How many rollbacks of each target the ConfigMap keeps at most (the latest ones).
KEEP_PER_TARGET = 20

#: The ConfigMap keys of the rollbacks start with this.
PREFIX = "rolled-back."


def rollbacks_key(target: str) -> str:
    """The ConfigMap key of ``target``'s rollbacks: ``shop/checkout`` -> ``rolled-back.shop.checkout``."""
    return PREFIX + target.replace("/", ".")


@dataclass(frozen=True, slots=True)
class SharedRollback:
    """One rollback of ``target`` as the ConfigMap keeps it."""

    target: str
    run_id: str
    started_at: datetime
    verified_at: datetime | None = None
    #: The run's phase when it was written.
    phase: Phase = Phase.ACTING
    #: The run's record (:meth:`~rollbackd.runrecord.RunRecord.to_state`) while it is under way.
    record: Mapping[str, Any] | None = None

    @property
    def rank(self) -> int:
        """How far the run had got: acting, verifying, over."""
        return _rank(self.phase)

    def entries(self) -> list[AuditEntry]:
        """The audit entries a store shared by the replicas would hold of it (``rollback.started``
        and, once verified, ``rollback.verified``): what the recall reads."""
        details = {"run_id": self.run_id}
        found = [AuditEntry(kind=EventType.ROLLBACK_STARTED,
                            summary="rollback started (kept in the ConfigMap)",
                            target=self.target, details=details, at=self.started_at)]
        if self.verified_at is not None:
            found.append(AuditEntry(kind=EventType.ROLLBACK_VERIFIED,
                                    summary="rollback verified (kept in the ConfigMap)",
                                    target=self.target, details=details, at=self.verified_at))
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "started_at": self.started_at.isoformat(),
            "verified_at": None if self.verified_at is None else self.verified_at.isoformat(),
            "phase": self.phase.value,
            "record": None if self.record is None else dict(self.record),
        }


class ConfigMapRollbacks:
    """The recent rollbacks in the ConfigMap of ``configmap`` (open; the caller owns its client)."""

    def __init__(self, configmap: ConfigMapSwitches, *, most: int = KEEP_PER_TARGET) -> None:
        self._configmap = configmap
        self.where = configmap.where
        self.most = most

    async def keep(self, rollback: SharedRollback, *, keep_s: float) -> None:
        """Keep ``rollback`` as it is now, replacing what was kept of its run, unless what was kept
        is of a later phase (a write that arrived late). The target's rollbacks started more than
        ``keep_s`` ago are dropped. :class:`~rollbackd.store.base.TemporaryStoreError` when it could
        not be written."""

        def kept_now(kept: list[SharedRollback]) -> list[SharedRollback]:
            earlier = next((r for r in kept if r.run_id == rollback.run_id), None)
            if earlier is not None and earlier.rank > rollback.rank:
                return kept
            return [*(r for r in kept if r.run_id != rollback.run_id), rollback]

        await self._update(rollback.target, kept_now, keep_s=keep_s)

    async def read(self) -> list[SharedRollback]:
        """Every rollback kept, oldest first. :class:`~rollbackd.store.base.TemporaryStoreError`
        when the ConfigMap could not be read."""
        try:
            data = await self._configmap.data()
        except SwitchStoreError as exc:
            raise TemporaryStoreError(str(exc)) from exc
        found = [
            rollback for key, text in data.items() if key.startswith(PREFIX)
            for rollback in _decoded(text, key=key, target=_target_of(key))
        ]
        return sorted(found, key=lambda r: (r.started_at, r.run_id))

    async def _update(
        self, target: str, change: Callable[[list[SharedRollback]], list[SharedRollback]], *, keep_s: float
    ) -> None:
        key = rollbacks_key(target)

        def changed(text: str | None) -> str | None:
            oldest = datetime.now(UTC) - timedelta(seconds=keep_s)
            kept = change(_decoded(text, key=key, target=target))
            recent = sorted((r for r in kept if r.started_at >= oldest),
                            key=lambda r: (r.started_at, r.run_id))[-self.most:]
            if not recent:
                return None
            return json.dumps([r.to_json() for r in recent], sort_keys=True, separators=(",", ":"))

        try:
            await self._configmap.update(key, changed)
        except SwitchStoreError as exc:
            raise TemporaryStoreError(
                f"the rollback could not be shared with the other replicas: {exc}"
            ) from exc


def recall_entries(
    audit: Sequence[AuditEntry], shared: Sequence[SharedRollback], *, since: datetime
) -> list[AuditEntry]:
    """What a leader recalls: the ``audit`` log's recent ``rollback.started`` and
    ``rollback.verified`` entries and those of the ``shared`` rollbacks since ``since`` that the
    log does not hold (by run id), oldest first."""
    known = {(entry.kind, entry.details.get("run_id")) for entry in audit}
    added = [
        entry for rollback in shared for entry in rollback.entries()
        if entry.at is not None and entry.at >= since and (entry.kind, rollback.run_id) not in known
    ]
    epoch = datetime.min.replace(tzinfo=UTC)
    return sorted([*audit, *added], key=lambda entry: entry.at or epoch)


def _target_of(key: str) -> str:
    """``rolled-back.shop.checkout`` -> ``shop/checkout`` (a namespace has no dot)."""
    namespace, _, name = key.removeprefix(PREFIX).partition(".")
    return f"{namespace}/{name}"


def _decoded(text: str | None, *, key: str, target: str) -> list[SharedRollback]:
    """The rollbacks a key's text holds; what cannot be read is left out (and logged)."""
    found = []
    for document in listed(text, key=key, what="rollbacks"):
        try:
            if not isinstance(document, dict) or not isinstance(document.get("run_id"), str):
                raise ValueError("not a JSON object with a run_id")
            verified = document.get("verified_at")
            record = document.get("record")
            if record is not None and not isinstance(record, dict):
                raise ValueError("its record is not a JSON object")
            found.append(SharedRollback(
                target=target,
                run_id=document["run_id"],
                started_at=_aware(datetime.fromisoformat(str(document["started_at"]))),
                verified_at=None if verified is None else _aware(datetime.fromisoformat(str(verified))),
                phase=Phase(document.get("phase", Phase.ACTING.value)),
                record=record,
            ))
        except (KeyError, TypeError, ValueError) as exc:
            logger.error("a rollback kept under the ConfigMap key %s cannot be read, ignored: %s", key, exc)
    return found


def _rank(phase: Phase) -> int:
    return {Phase.ACTING: 0, Phase.VERIFYING: 1}.get(phase, 2)


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
