"""One target's judge and decision framework together: the code both the daemon and
``rollbackd replay`` run, tick by tick. Pure: observations and context in, decisions out."""

from __future__ import annotations

from collections.abc import Iterable

from rollbackd.decision.framework import DecisionState, decide
from rollbackd.detectors.judge import Judge
from rollbackd.model import Context, Decision, Episode, Evidence, Observation, TimeText, scenario_time
from rollbackd.params import TargetParams


class TargetEvaluator:
    """Keeps one target's bounded window and decision state."""

    def __init__(self, params: TargetParams, *, time_text: TimeText = scenario_time) -> None:
        """``time_text`` writes the times in the findings' details (the decisions' reasons write
        theirs with the context's :attr:`~rollbackd.model.Context.time_text`)."""
        self._params = params
        self._time_text = time_text
        self._judge = Judge(params, time_text=time_text)
        self._state = DecisionState()
        self.latest_evidence: Evidence | None = None
        self.latest_decision: Decision | None = None

    @property
    def params(self) -> TargetParams:
        return self._params

    @property
    def breach_since(self) -> float | None:
        return self._state.breach_since

    @property
    def episode(self) -> Episode | None:
        """The breach episode open after the latest decision (``None`` when none is)."""
        return self._state.episode

    def step(self, obs: Observation, ctx: Context) -> Decision:
        """Judge ``obs`` and decide with ``ctx``: one tick."""
        return self.decide(self.judge(obs), ctx)

    def judge(self, obs: Observation) -> Evidence:
        """The detectors' half of a tick (the daemon reads the cluster only for breached targets,
        between the two halves)."""
        evidence = self._judge.observe(obs)
        self.latest_evidence = evidence
        return evidence

    def decide(self, evidence: Evidence, ctx: Context) -> Decision:
        """The decision framework's half of a tick, on the evidence :meth:`judge` just gave."""
        decision, self._state = decide(evidence, ctx, self._params, self._state)
        self.latest_decision = decision
        return decision

    def preview(self, evidence: Evidence, ctx: Context) -> Decision:
        """What :meth:`decide` would decide on ``evidence`` with ``ctx``, keeping nothing."""
        decision, _ = decide(evidence, ctx, self._params, self._state)
        return decision

    def kept(self) -> list[Observation]:
        """The observations the detectors' window holds (see :meth:`Judge.kept`)."""
        return self._judge.kept()

    def rejudged(self, params: TargetParams) -> TargetEvaluator:
        """An evaluator with ``params`` that has judged again the observations this one holds (a
        configuration reload); its decision state starts over."""
        fresh = TargetEvaluator(params, time_text=self._time_text)
        fresh._judge, evidences = self._judge.rejudged(params)
        if evidences:
            fresh.latest_evidence = evidences[-1]
        return fresh

    def backfill(self, observations: Iterable[Observation]) -> int:
        """Take the target's past as if it had been watched (see :meth:`Judge.backfill`): nothing
        is decided on it. Returns how many observations were taken."""
        return self._judge.backfill(observations)

    def released(self, at: float) -> None:
        """A release announced at ``at``: judged from then on against the target's own history
        before it (see :meth:`Judge.released`); the decision state starts over (a new episode)."""
        evidences = self._judge.released(at)
        self._state = DecisionState()
        if evidences:
            self.latest_evidence = evidences[-1]

    def reset(self) -> None:
        """Start afresh after a rollback: the next episode is judged on its own data, against the
        healthy past of the version that stays (see :meth:`Judge.reset`)."""
        self._judge.reset()
        self._state = DecisionState()
