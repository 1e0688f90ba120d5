"""Breach episodes with hysteresis and attribution states: the decision framework, the announcer
and the retained status over flapping evidence, with the real judge and with hand-made evidence.

An episode opens on a proven breach and closes only when recovery is proven; in between, a tick
that does not prove the breach keeps the episode's verdict, and subscribers hear of the episode
once (``target.degraded``), of each escalation cause once, and of verdicts only when they change.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from rollbackd.daemon import views
from rollbackd.daemon.page import target_status
from rollbackd.daemon.wallclock import WallClock
from rollbackd.decision.framework import DecisionState, decide
from rollbackd.evaluate import TargetEvaluator
from rollbackd.events.build import Announcer, Clock, EventFactory
from rollbackd.events.model import CloudEvent, TargetState, state_after
from rollbackd.model import (
    Attribution,
    Context,
    Decision,
    Evidence,
    Hold,
    Impact,
    Observation,
    Outcome,
    Sample,
    Strategy,
)
from rollbackd.params import Policy, TargetParams

TARGET = "shop/checkout"
#: The status page's wall clock: loop time 0 at midnight UTC.
WALL = WallClock(Clock(wall=datetime(2026, 1, 1, tzinfo=UTC), loop=0.0))
PARAMS = TargetParams(
    key=TARGET, strategy=Strategy.CANARY, interval_s=10.0, policy=Policy(controlled_grace_s=120)
)
WALL0 = datetime(2026, 11, 24, 3, 0, 0, tzinfo=UTC)


def clock(t: float) -> Clock:
    return Clock(wall=WALL0 + timedelta(seconds=t), loop=t)


def breach(
    t: float,
    attribution: Attribution = Attribution.ATTRIBUTABLE,
    impact: Impact = Impact.MANAGEABLE,
    *,
    since: float | None = None,
) -> Evidence:
    return Evidence(
        target=TARGET,
        t=t,
        impact=impact,
        attributable=attribution is Attribution.ATTRIBUTABLE,
        inconclusive=False,
        reasons=(f"breach proven at {t:g}",),
        since=since,
        attribution=attribution,
    )


def unproven(t: float) -> Evidence:
    """Above the SLO or clean for a moment, but neither the breach nor a recovery is proven."""
    return Evidence(
        target=TARGET, t=t, impact=Impact.NONE, attributable=False, inconclusive=False, within_slo=True
    )


def gap(t: float) -> Evidence:
    return Evidence(target=TARGET, t=t, impact=Impact.NONE, attributable=False, inconclusive=True)


def recovered(t: float) -> Evidence:
    return Evidence(
        target=TARGET,
        t=t,
        impact=Impact.NONE,
        attributable=False,
        inconclusive=False,
        within_slo=True,
        recovered=True,
    )


@dataclass
class Story:
    """Decisions of the real framework told by the real announcer, as a subscriber sees them."""

    params: TargetParams = PARAMS
    ctx: Context = field(default_factory=Context)
    state: DecisionState = field(default_factory=DecisionState)
    announcer: Announcer = field(default_factory=lambda: Announcer(factory=EventFactory(), target=TARGET))
    decisions: list[Decision] = field(default_factory=list)
    events: list[CloudEvent] = field(default_factory=list)
    #: The retained status after each tick (the state after the latest event so far).
    statuses: list[TargetState | None] = field(default_factory=list)

    def tick(self, evidence: Evidence, ctx: Context | None = None) -> Decision:
        decision, self.state = decide(evidence, ctx or self.ctx, self.params, self.state)
        self.decisions.append(decision)
        hold = (ctx or self.ctx).hold
        self.events += self.announcer.on_decision(decision, hold=hold, clock=clock(evidence.t))
        self.statuses.append(state_after(self.events[-1]) if self.events else None)
        return decision

    def kinds(self) -> list[str]:
        return [event.short_type for event in self.events]


def shape(decision: Decision) -> tuple[object, ...]:
    return decision.outcome, decision.rollback, decision.blocked_by, decision.escalate


# --- the framework and the announcer over flapping evidence ----------------------------------------


def test_a_flapping_platform_incident_is_one_episode_told_once() -> None:
    story = Story()
    story.tick(recovered(0))
    for i in range(1, 60):
        t = 10.0 * i
        story.tick(breach(t, Attribution.BASELINE_DEGRADED) if i % 2 else unproven(t))
    assert story.kinds() == ["decision.made", "target.degraded", "decision.made", "escalation.raised"]
    during = story.decisions[1:]
    assert {shape(d) for d in during} == {(Outcome.NONE, False, "not-attributable", True)}
    assert {d.episode.opened_at for d in during if d.episode is not None} == {10.0}
    assert all(d.episode is not None for d in during)
    assert "likely a platform incident" in during[-1].reason
    assert TargetState.HEALTHY not in story.statuses[1:]
    # The status says "escalated" all along, also on the unproven ticks.
    assert set(story.statuses[1:]) == {TargetState.ESCALATED}


def test_missing_data_and_unproven_ticks_never_close_an_episode_only_a_proven_recovery_does() -> None:
    story = Story()
    story.tick(breach(10, Attribution.BASELINE_DEGRADED))
    for t in range(20, 200, 10):
        story.tick(gap(t) if t % 30 == 0 else unproven(t))
    assert story.state.episode is not None
    closed = story.tick(recovered(200))
    assert closed.episode is None
    assert closed.outcome is Outcome.NONE
    assert closed.reason.startswith("no SLO breach")
    assert story.statuses[-1] is TargetState.HEALTHY
    story.tick(breach(210, Attribution.BASELINE_DEGRADED))
    # A new episode: told again, its escalation too.
    assert story.kinds().count("target.degraded") == 2
    assert story.kinds().count("escalation.raised") == 2


def test_a_controlled_grace_ending_on_an_unproven_tick_waits_for_the_next_proven_one() -> None:
    story = Story()
    for t in range(200, 310, 10):
        story.tick(breach(t, since=180) if t % 20 == 0 else unproven(t))
    assert not any(d.rollback for d in story.decisions)
    assert all(d.outcome is Outcome.CONTROLLED for d in story.decisions)
    # Due at 310 (180 + 120 s grace + one interval), on an unproven tick: no rollback.
    due = story.tick(unproven(310))
    assert not due.rollback
    assert due.blocked_by == "unproven"
    assert "rolling back only on an interval whose breach is proven" in due.reason
    acted = story.tick(breach(320, since=180))
    assert acted.rollback
    assert acted.outcome is Outcome.CONTROLLED
    assert story.kinds() == ["target.degraded", "decision.made", "decision.made", "decision.made"]
    assert [state_after(e) for e in story.events] == [
        TargetState.DEGRADED,
        TargetState.WAITING,
        TargetState.WAITING,  # the grace is over, the rollback waits for a proven interval
        TargetState.ROLLING_BACK,
    ]


def test_a_dry_run_rollback_verdict_is_not_retold_on_unproven_ticks() -> None:
    story = Story(ctx=Context(dry_run=True))
    for i in range(12):
        t = 190.0 + 10 * i
        story.tick(breach(t, impact=Impact.SEVERE, since=180) if i % 2 == 0 else unproven(t))
    assert [d.rollback for d in story.decisions] == [i % 2 == 0 for i in range(12)]
    assert all(d.dry_run for d in story.decisions if d.rollback)
    assert story.kinds() == ["target.degraded", "decision.made"]


def test_an_attribution_once_proven_is_not_taken_back_by_a_pending_tick() -> None:
    story = Story()
    story.tick(breach(200, since=180))
    for t in range(210, 300, 10):
        story.tick(breach(t, Attribution.PENDING, since=180) if t % 20 else breach(t, since=180))
    assert {shape(d) for d in story.decisions} == {(Outcome.CONTROLLED, False, None, False)}
    assert story.kinds() == ["target.degraded", "decision.made"]
    assert story.state.episode is not None
    assert story.state.episode.attribution is Attribution.ATTRIBUTABLE


def test_the_level_of_an_episode_does_not_fall_back_on_a_lesser_tick() -> None:
    story = Story(ctx=Context(frozen=True))
    for i in range(10):
        impact = Impact.SEVERE if i % 2 == 0 else Impact.MANAGEABLE
        story.tick(breach(190.0 + 10 * i, impact=impact, since=180))
    # Frozen: the severe verdict is blocked and escalated once; the manageable ticks between keep it.
    assert {shape(d) for d in story.decisions} == {(Outcome.IMMEDIATE, False, "freeze", True)}
    assert story.kinds() == ["target.degraded", "decision.made", "escalation.raised"]


def test_an_expired_hold_is_told_as_still_breaching_on_an_unproven_tick() -> None:
    hold = Hold(until=250.0)
    story = Story(ctx=Context(hold=hold))
    story.tick(breach(200, since=180))
    story.tick(unproven(260))
    expired = [e for e in story.events if e.short_type == "hold.expired"]
    assert len(expired) == 1
    assert expired[0].to_json()["data"]["still_breaching"] is True
    assert story.statuses[-1] is not TargetState.HEALTHY
    assert not story.decisions[-1].rollback


# --- attribution states ------------------------------------------------------------------------------


def test_pending_attribution_neither_escalates_nor_blames_the_platform_until_the_grace_is_over() -> None:
    story = Story()
    for t in range(190, 310, 10):
        decision = story.tick(breach(t, Attribution.PENDING, since=180))
        assert decision.outcome is Outcome.NONE
        assert decision.blocked_by == "attribution-pending"
        assert not decision.escalate
        assert "platform" not in decision.reason
        assert "attribution pending" in decision.reason
    assert "escalation.raised" not in story.kinds()
    assert story.statuses[-1] is TargetState.DEGRADED
    late = story.tick(breach(310, Attribution.PENDING, since=180))  # onset 180 + grace 120 + interval
    assert late.escalate
    assert late.blocked_by == "attribution-pending"
    assert "the baseline is within the SLO" in late.reason
    assert "not significantly worse than 1.5x it" in late.reason
    assert "platform" not in late.reason
    story.tick(breach(320, Attribution.PENDING, since=180))
    assert story.kinds().count("escalation.raised") == 1
    escalation = next(e for e in story.events if e.short_type == "escalation.raised")
    assert escalation.to_json()["data"]["cause"] == "attribution-pending"


def test_pending_that_becomes_attributable_rolls_back_after_the_grace_without_any_escalation() -> None:
    story = Story()
    for t in range(190, 250, 10):
        story.tick(breach(t, Attribution.PENDING, since=180))
    for t in range(250, 320, 10):
        story.tick(breach(t, since=180))
    assert story.decisions[-1].rollback
    assert story.decisions[-1].outcome is Outcome.CONTROLLED
    assert "escalation.raised" not in story.kinds()
    assert story.kinds().count("target.degraded") == 1


def test_a_degraded_baseline_is_a_likely_platform_incident_and_no_baseline_has_its_own_cause() -> None:
    degraded, _ = decide(breach(190, Attribution.BASELINE_DEGRADED), Context(), PARAMS, DecisionState())
    assert degraded.escalate
    assert degraded.blocked_by == "not-attributable"
    assert "the baseline is beyond the SLO too" in degraded.reason
    assert "likely a platform incident" in degraded.reason
    alone, _ = decide(breach(190, Attribution.NO_BASELINE), Context(), PARAMS, DecisionState())
    assert alone.escalate
    assert alone.blocked_by == "no-baseline"
    assert "no baseline with enough traffic" in alone.reason
    assert "platform" not in alone.reason
    told = EventFactory().target_degraded(breach(190, Attribution.PENDING), clock=clock(190))
    assert "attribution pending" in told.summary
    assert told.to_json()["data"]["evidence"]["attribution"] == "pending"


# --- the real judge ----------------------------------------------------------------------------------


def spread(requests: int, rate: float, i: int) -> Sample:
    """``requests`` with errors spread evenly at ``rate`` (deterministic): interval ``i``."""
    errors = int((i + 1) * requests * rate) - int(i * requests * rate)
    return Sample(requests=requests, errors=errors)


def judged(
    pairs: Sequence[tuple[Sample | None, Sample | None]], params: TargetParams = PARAMS
) -> list[Evidence]:
    evaluator = TargetEvaluator(params)
    return [
        evaluator.judge(Observation(TARGET, 10.0 * i, baseline, candidate))
        for i, (baseline, candidate) in enumerate(pairs)
    ]


def test_the_judge_tells_the_attribution_states_apart() -> None:
    healthy = [(spread(400, 0.002, i), spread(40, 0.002, i)) for i in range(10)]
    # Canary at 25% errors, baseline clean: attributable at once.
    blamed = judged(healthy + [(spread(400, 0.002, i), spread(40, 0.25, i)) for i in range(10, 14)])
    assert blamed[-1].attribution is Attribution.ATTRIBUTABLE
    # Both at 10%: the baseline is degraded too.
    shared = judged(healthy + [(spread(400, 0.1, i), spread(40, 0.1, i)) for i in range(10, 20)])
    assert shared[-1].breached
    assert shared[-1].attribution is Attribution.BASELINE_DEGRADED
    # The candidate at 6% with a clean baseline that served little: breach proven, blame pending.
    thin = [(spread(8, 0.0, i), spread(40, 0.002, i)) for i in range(10)]
    thin += [(spread(8, 0.0, i), spread(40, 0.06, i)) for i in range(10, 30)]
    pending = [e for e in judged(thin) if e.breached]
    assert pending
    assert pending[0].attribution is Attribution.PENDING
    assert not pending[0].attributable
    # No baseline traffic at all.
    lonely = judged([(None, spread(40, 0.25, i)) for i in range(6)])
    assert lonely[-1].breached
    assert lonely[-1].attribution is Attribution.NO_BASELINE


def test_the_judge_proves_recovery_only_with_enough_clean_traffic_after_the_breach() -> None:
    pairs = [(spread(400, 0.002, i), spread(40, 0.002, i)) for i in range(10)]
    pairs += [(spread(400, 0.002, i), spread(40, 0.25, i)) for i in range(10, 14)]
    pairs += [(spread(400, 0.002, i), Sample(40, 0)) for i in range(14, 40)]
    evidence = judged(pairs)
    assert evidence[13].breached
    assert not evidence[13].recovered
    after = evidence[14:]
    first = next(i for i, e in enumerate(after) if e.recovered)
    # 459 clean requests prove an error rate below 1% at 99%: 12 intervals of 40, not two.
    assert first == 11
    assert not any(e.recovered for e in after[:first])
    # A gap in the data proves nothing.
    gaps = judged(pairs[:14] + [(None, None)] * 30)
    assert not any(e.recovered for e in gaps[14:])


# --- properties -------------------------------------------------------------------------------------

EVIDENCE_KINDS = st.sampled_from(["proven", "unproven", "gap", "recovered"])


@st.composite
def evidence_sequences(draw: st.DrawFn) -> list[Evidence]:
    out: list[Evidence] = []
    for i in range(draw(st.integers(min_value=1, max_value=60))):
        t = 10.0 * (i + 1)
        kind = draw(EVIDENCE_KINDS)
        if kind == "proven":
            attribution = draw(st.sampled_from(list(Attribution)))
            impact = draw(st.sampled_from([Impact.MANAGEABLE, Impact.SEVERE]))
            since = t - draw(st.integers(min_value=0, max_value=20)) * 10.0
            out.append(breach(t, attribution, impact, since=since))
        else:
            out.append({"unproven": unproven, "gap": gap, "recovered": recovered}[kind](t))
    return out


CONTEXTS = st.builds(
    Context,
    frozen=st.booleans(),
    dry_run=st.booleans(),
    hold=st.one_of(st.none(), st.builds(Hold, until=st.floats(min_value=0, max_value=700))),
)


@settings(max_examples=300)
@given(evidences=evidence_sequences(), ctx=CONTEXTS)
def test_no_evidence_sequence_tells_an_episode_twice(evidences: list[Evidence], ctx: Context) -> None:
    story = Story(ctx=ctx)
    told: dict[float, int] = {}
    escalations: dict[tuple[float, str], int] = {}
    for evidence in evidences:
        before = len(story.events)
        decision = story.tick(evidence)
        new = story.events[before:]
        episode = decision.episode
        if not evidence.breached:
            assert not decision.rollback  # a rollback only on a tick whose breach is proven
        for event in new:
            if event.short_type == "target.degraded":
                assert episode is not None
                told[episode.opened_at] = told.get(episode.opened_at, 0) + 1
            if event.short_type == "escalation.raised" and episode is not None:
                key = (episode.opened_at, event.to_json()["data"]["cause"])
                escalations[key] = escalations.get(key, 0) + 1
        if episode is not None:
            assert story.statuses[-1] is not TargetState.HEALTHY
            assert episode.opened_at in told  # opened on a proven tick, and told then
    assert all(count == 1 for count in told.values())
    assert all(count == 1 for count in escalations.values())


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(min_value=0, max_value=2**32 - 1),
    canary=st.sampled_from([2, 4, 10, 40]),
    cand_rate=st.sampled_from([0.0, 0.02, 0.05, 0.1, 0.3]),
    base_rate=st.sampled_from([0.0, 0.005, 0.05, 0.1]),
    gaps=st.floats(min_value=0.0, max_value=0.3),
)
def test_the_real_judge_and_framework_tell_each_episode_once(
    seed: int, canary: int, cand_rate: float, base_rate: float, gaps: float
) -> None:
    rng = random.Random(seed)
    params = TargetParams(key=TARGET, strategy=Strategy.CANARY, interval_s=1.0)
    evaluator = TargetEvaluator(params)
    announcer = Announcer(factory=EventFactory(), target=TARGET)
    degraded: dict[float, int] = {}
    last: TargetState | None = None
    for i in range(150):
        t = float(i)
        if rng.random() < gaps:
            baseline = candidate = None
        else:
            candidate = Sample(canary, sum(rng.random() < cand_rate for _ in range(canary)))
            baseline = Sample(9 * canary, sum(rng.random() < base_rate for _ in range(9 * canary)))
        evidence = evaluator.judge(Observation(TARGET, t, baseline, candidate))
        decision = evaluator.decide(evidence, Context(dry_run=True))
        assert not decision.rollback or evidence.breached
        for event in announcer.on_decision(decision, hold=None, clock=clock(t)):
            last = state_after(event)
            if event.short_type == "target.degraded":
                assert decision.episode is not None
                degraded[decision.episode.opened_at] = degraded.get(decision.episode.opened_at, 0) + 1
        if decision.episode is not None:
            assert last is not TargetState.HEALTHY
    assert all(count == 1 for count in degraded.values())


# --- what the status page shows ----------------------------------------------------------------------


def test_the_status_page_never_shows_an_open_episode_as_healthy() -> None:
    story = Story()
    story.tick(breach(190, Attribution.PENDING, since=180))
    story.tick(unproven(200))
    story.tick(breach(210, since=180))
    story.tick(unproven(310))  # the grace is over on an unproven interval
    labels = [
        target_status({"decision": views.decision_view(decision, now=decision.t, wall=WALL)}).label
        for decision in story.decisions
    ]
    assert labels == [
        "degraded: attribution pending",
        "degraded: attribution pending",
        "controlled rollback: waiting",
        "controlled rollback: waiting for a proven interval",
    ]
    closed = story.tick(recovered(320))
    assert target_status({"decision": views.decision_view(closed, now=320, wall=WALL)}).label == "healthy"
