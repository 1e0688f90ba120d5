"""A release's lifetime as a pure rule: judged from its start until accepted (after
``policy.accept_after_s`` without a breach episode, or by an operator) or superseded by a newer
revision; an accepted release's decisions are blocked by ``accepted``."""

from __future__ import annotations

from rollbackd.decision.lifetime import Change, Ending, Lifetime, Operator, advance, announced
from rollbackd.decision.verdict import Verdict, partner_verdict
from rollbackd.evaluate import TargetEvaluator
from rollbackd.model import Context, Observation, Sample, Strategy
from rollbackd.params import TargetParams

HOUR = 3600.0


def test_time_accepts_a_quiet_release_once_accept_after_s_passed() -> None:
    release = Lifetime(started_at=100.0)
    release, change = advance(release, 100.0 + HOUR - 10, accept_after_s=HOUR, quiet=True)
    assert change is None
    assert release.accepted is None
    release, change = advance(release, 100.0 + HOUR, accept_after_s=HOUR, quiet=True)
    assert change is Change.ACCEPTED
    assert release.accepted is not None
    assert release.accepted.how is Ending.AFTER
    assert release.accepted.text == "accepted after 1h"
    # Accepted once: later ticks change nothing.
    assert advance(release, 100.0 + 2 * HOUR, accept_after_s=HOUR, quiet=True) == (release, None)


def test_time_never_accepts_during_a_breach_episode_nor_when_off() -> None:
    release = Lifetime(started_at=0.0)
    assert advance(release, 5 * HOUR, accept_after_s=HOUR, quiet=False) == (release, None)
    assert advance(release, 5 * HOUR, accept_after_s=0.0, quiet=True) == (release, None)
    # Once the episode is over, the time already judged counts.
    release, change = advance(release, 5 * HOUR + 10, accept_after_s=HOUR, quiet=True)
    assert change is Change.ACCEPTED
    assert release.accepted is not None
    assert release.accepted.text == "accepted after 5h"


def test_an_operator_accepts_and_a_withdrawal_judges_the_release_again() -> None:
    release, change = advance(
        Lifetime(started_at=0.0), 60.0, accept_after_s=0.0, quiet=False,
        operator=Operator("alice", "known slow"),
    )
    assert change is Change.ACCEPTED
    assert release.accepted is not None
    assert release.accepted.text == "accepted by alice"
    assert release.accepted.why == "accepted by alice: known slow"
    release, change = advance(release, 70.0, accept_after_s=0.0, quiet=False, operator=None)
    assert change is Change.WITHDRAWN
    assert release.accepted is None


def test_a_newer_revision_supersedes_an_accepted_release_and_starts_a_new_judgement() -> None:
    release, _ = advance(Lifetime(started_at=0.0), 10.0, accept_after_s=HOUR, quiet=True, revision=6)
    assert release.revision == 6
    release, _ = advance(release, HOUR, accept_after_s=HOUR, quiet=True, revision=6)
    assert release.accepted is not None
    successor, change = advance(release, 2 * HOUR, accept_after_s=HOUR, quiet=True, revision=7)
    assert change is Change.SUPERSEDED
    assert successor.started_at == 2 * HOUR
    assert successor.revision == 7
    assert successor.accepted is None  # judged: its own hour starts now
    assert successor.previous is not None
    assert successor.previous.text == "superseded by revision 7"
    assert successor.previous_revision == 6
    # An older revision read (a stale read) supersedes nothing.
    assert advance(release, 2 * HOUR, accept_after_s=HOUR, quiet=True, revision=5) == (release, None)


def test_an_announced_release_supersedes_an_accepted_one_and_counts_from_its_own_start() -> None:
    accepted, _ = advance(Lifetime(started_at=0.0, revision=3), HOUR, accept_after_s=HOUR, quiet=True)
    assert accepted.accepted is not None
    # Announced to have started at 2h, taken a little later: judged from 2h on.
    release = announced(accepted, release="flag-on-1", started_at=2 * HOUR)
    assert release.accepted is None
    assert (release.started_at, release.release) == (2 * HOUR, "flag-on-1")
    assert release.previous is not None
    assert release.previous.text == "superseded by release flag-on-1"
    assert release.previous_revision == 3
    assert advance(release, 3 * HOUR - 1, accept_after_s=HOUR, quiet=True)[1] is None
    release, change = advance(release, 3 * HOUR, accept_after_s=HOUR, quiet=True)
    assert change is Change.ACCEPTED
    # An operator's acceptance of the release before does not carry over: only one given now.
    judged = announced(release, release="flag-on-2", started_at=4 * HOUR)
    assert judged.accepted is None


def test_a_release_that_started_before_watching_began_is_judged_from_its_start() -> None:
    """A replica that starts (or takes over) after the release started: its first tick was the
    release already, whose accept_after_s counts from the release's start, not the replica's."""
    watching = Lifetime(started_at=500.0, revision=4)
    release = announced(watching, release="config-7", started_at=100.0)
    assert (release.started_at, release.revision, release.previous) == (100.0, 4, None)
    release, change = advance(release, 100.0 + HOUR, accept_after_s=HOUR, quiet=True)
    assert change is Change.ACCEPTED
    first = announced(None, release="config-7", started_at=100.0)
    assert first == Lifetime(started_at=100.0, release="config-7")


def test_a_release_still_judged_is_not_superseded_the_episode_decides() -> None:
    release, _ = advance(Lifetime(started_at=0.0), 10.0, accept_after_s=HOUR, quiet=False, revision=6)
    assert advance(release, 20.0, accept_after_s=HOUR, quiet=False, revision=7) == (release, None)


def test_an_accepted_release_is_neither_rolled_back_nor_escalated_and_says_how_it_was_accepted() -> None:
    params = TargetParams(key="shop/checkout", strategy=Strategy.CANARY, interval_s=10.0)
    evaluator = TargetEvaluator(params)
    accepted = Lifetime(started_at=0.0)
    accepted, _ = advance(accepted, HOUR, accept_after_s=HOUR, quiet=True)
    assert accepted.accepted is not None
    ctx = Context(accepted=accepted.accepted.why)
    severe = (Sample(requests=1000, errors=5), Sample(requests=1000, errors=400))

    def tick(i: int) -> Observation:
        return Observation(target=params.key, t=HOUR + 10 * i, baseline=severe[0], candidate=severe[1])

    decisions = [evaluator.step(tick(i), ctx) for i in range(6)]
    assert not any(d.rollback or d.escalate for d in decisions)
    assert {d.blocked_by for d in decisions} == {"accepted"}
    assert "release accepted after 1h without a breach episode" in decisions[-1].reason
    # A partner asking whether the release may go is told it may: it was accepted.
    assert partner_verdict(decisions[-1], now=decisions[-1].t, interval_s=10.0).verdict is Verdict.PASS
    # The same ticks without the acceptance: rolled back.
    judged = TargetEvaluator(params)
    assert any(judged.step(tick(i), Context()).rollback for i in range(6))
