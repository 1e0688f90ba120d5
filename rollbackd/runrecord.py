"""The store's record of a rollback under way: all a process that takes it over needs to go on
telling the same story.

It is the ``rollback:<namespace>/<name>`` state of the store, written when the run starts (once its
decision and ``rollback.started`` are in the audit log), before each change the action makes and
after it, when the action is done, and deleted at the verdict. It holds:

- the run's identity (``run_id``, also in every ``rollback.*`` event of the run) and its
  ``rollback.started`` event (id and payload: it is published once, with that id);
- the decision: when it was taken (wall clock), its mode and reasons, the revision judged bad;
- every change, in order, written down *before* it is made (``made: false``) and confirmed after
  (``made: true``; a change the step found already made is dropped). A change left unconfirmed is
  one the stopped process was making when it stopped: the action that resumes the run plans from
  the objects as they are and finds it done (or makes it), so it counts as the run's either way.
  A field may be listed by several processes; :meth:`RunRecord.merged_changes` tells it once.

:class:`RunRecord` is a frozen value with no I/O: the daemon writes ``to_state()`` and reads back
with :meth:`RunRecord.from_state`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rollbackd.actions.base import Change, merge_changes

#: The version of the record's layout (a record without one is from before run ids: phase, mode
#: and bad revision only).
RECORD_VERSION = 2


@dataclass(frozen=True, slots=True)
class RecordedChange:
    """One change of the run as the record has it: ``made`` once the step that makes it returned,
    not yet while it is being made."""

    change: Change
    made: bool

    def to_state(self) -> dict[str, Any]:
        c = self.change
        return {"object": c.object, "field": c.field, "before": c.before, "after": c.after, "made": self.made}

    @classmethod
    def from_state(cls, value: Mapping[str, Any]) -> RecordedChange:
        change = Change(str(value["object"]), str(value["field"]), value.get("before"), value.get("after"))
        return cls(change, bool(value.get("made", False)))


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A rollback under way, as the store keeps it (see the module docstring)."""

    run_id: str
    phase: str
    mode: str
    #: When the rollback was decided (wall clock, UTC): durations run from it across restarts.
    decided_at: datetime
    reasons: tuple[str, ...] = ()
    #: The revision judged bad: reported as ``from_revision``, and what a Deployment undo acts on.
    bad_revision: int | None = None
    started_event_id: str | None = None
    #: The ``rollback.started`` event as published (CloudEvents JSON), to publish again as it was.
    started_event: Mapping[str, Any] | None = None
    changes: tuple[RecordedChange, ...] = ()

    @property
    def active(self) -> bool:
        return self.phase in ("acting", "verifying")

    def merged_changes(self) -> tuple[Change, ...]:
        """The run's changes so far, each field once (earliest ``before``, latest ``after``)."""
        return merge_changes(r.change for r in self.changes)

    def to_state(self) -> dict[str, Any]:
        return {
            "version": RECORD_VERSION,
            "run_id": self.run_id,
            "phase": self.phase,
            "mode": self.mode,
            "decided_at": self.decided_at.astimezone(UTC).isoformat(),
            "reasons": list(self.reasons),
            "bad_revision": self.bad_revision,
            "from_revision": self.bad_revision,
            "started_event_id": self.started_event_id,
            "started_event": None if self.started_event is None else dict(self.started_event),
            "changes": [r.to_state() for r in self.changes],
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any], *, now: datetime, new_id: str) -> RunRecord:
        """Read a record back. One written before records had run ids (phase, mode and bad
        revision only) becomes a run decided ``now`` with id ``new_id``: its earlier story is not
        known. Raises ``ValueError`` (or ``KeyError``, ``TypeError``) for a record that is not one."""
        bad = state.get("bad_revision")
        bad_revision = bad if isinstance(bad, int) and not isinstance(bad, bool) else None
        phase = str(state["phase"])
        mode = str(state.get("mode") or "immediate")
        if "run_id" not in state:
            return cls(run_id=new_id, phase=phase, mode=mode, decided_at=now, bad_revision=bad_revision)
        decided = datetime.fromisoformat(str(state["decided_at"]))
        if decided.tzinfo is None:
            raise ValueError(f"the record's decided_at has no time zone: {state['decided_at']!r}")
        started = state.get("started_event")
        started_id = state.get("started_event_id")
        return cls(
            run_id=str(state["run_id"]),
            phase=phase,
            mode=mode,
            decided_at=decided,
            reasons=tuple(str(reason) for reason in state.get("reasons") or ()),
            bad_revision=bad_revision,
            started_event_id=None if started_id is None else str(started_id),
            started_event=started if isinstance(started, Mapping) else None,
            changes=tuple(RecordedChange.from_state(c) for c in state.get("changes") or ()),
        )
