"""The per-target detector: a bounded window of observations in, :class:`Evidence` out. No I/O.

State is bounded by time (``window_s`` of recent ticks, ``baseline_window_s`` of baseline history)
and by count, so memory stays flat however long the daemon runs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import replace

from rollbackd.detectors.signals import (
    Interval,
    Point,
    Reference,
    Track,
    Verdict,
    error_spec,
    judge_health,
    judge_metric,
    latency_spec,
    pool,
    recovery_proven,
)
from rollbackd.model import (
    OWN_PAST,
    Attribution,
    Evidence,
    Finding,
    HealthCheck,
    Impact,
    Observation,
    Sample,
    TimeText,
    scenario_time,
)
from rollbackd.params import TargetParams
from rollbackd.plausibility import ERRORS_SLACK, sample_problem

#: Hard cap on the ticks kept per deque, whatever the interval (memory stays bounded).
MAX_TICKS = 4096

_HealthPair = tuple[tuple[HealthCheck, ...] | None, tuple[HealthCheck, ...] | None]


class Judge:
    """Turns each new :class:`Observation` of one target into :class:`Evidence`."""

    def __init__(self, params: TargetParams, *, time_text: TimeText = scenario_time) -> None:
        self._params = params
        #: How the findings' details write a time (see :data:`~rollbackd.model.TimeText`).
        self._time_text = time_text
        self._tracks = (
            Track(error_spec(params), max_points=MAX_TICKS),
            Track(latency_spec(params), max_points=MAX_TICKS),
        )
        self._window: deque[Interval] = deque(maxlen=MAX_TICKS)
        self._health: deque[tuple[float, _HealthPair]] = deque(maxlen=MAX_TICKS)
        # The baseline's history with traffic (blue-green and rolling compare against it).
        self._history: deque[tuple[float, Sample]] = deque(maxlen=MAX_TICKS)
        self._last_breached = False
        #: The times of the window's intervals that were suspect when they came in (a breach
        #: suspected or proven): never part of a plain Deployment's healthy past.
        self._suspect: deque[float] = deque(maxlen=MAX_TICKS)
        #: When the current suspicion began (``None`` while all is well).
        self._onset: float | None = None
        #: The latest tick whose breach was proven, until a recovery from it is proven.
        self._proven_at: float | None = None
        #: The baseline's requests over the window, kept as a running sum (recounted now and then:
        #: fractional counts drift).
        self._baseline_served = 0.0
        self._evictions = 0

    @property
    def params(self) -> TargetParams:
        return self._params

    def reset(self) -> None:
        """Start a new episode (after a rollback, or a failed one): the window is forgotten, the
        healthy past of the version that stays is not. The baseline's history is kept (canary and
        blue-green: the baseline is what stays); a plain Deployment's window intervals from
        before its first suspect one join its history first (the revision rolled back to is the
        one that served them). Bounded as the history always is."""
        if self._params.strategy in OWN_PAST:
            suspect = set(self._suspect)
            first_suspect = min(suspect, default=math.inf)
            for interval in self._window:
                if interval.t >= first_suspect:
                    break
                sample = interval.candidate
                if interval.baseline is None and sample is not None and sample.requests > 0:
                    self._remember_history(interval.t, sample)
        self._start_over()

    def _start_over(self) -> None:
        """Forget the window and the breach it tracked (the history stays)."""
        self._window.clear()
        self._baseline_served = 0.0
        for track in self._tracks:
            track.clear()
        self._health.clear()
        self._suspect.clear()
        self._onset = None
        self._last_breached = False
        self._proven_at = None

    def released(self, at: float) -> list[Evidence]:
        """A release announced at ``at`` (a flag flip, a configuration change): from then on the
        target is judged against its own history before it, as a blue-green target is against
        its old colour's. The window's intervals before ``at`` that were not suspect become
        history (the version before the release served them); the window starts over at ``at``,
        its intervals since then judged again in order (their evidence is returned)."""
        kept = self.kept()
        suspect = set(self._suspect)
        for interval in self._window:
            sample = interval.candidate
            if interval.t < at and interval.t not in suspect and sample is not None and sample.requests > 0:
                self._remember_history(interval.t, sample)
        self._start_over()
        return [self.observe(obs) for obs in kept if obs.t >= at]

    def backfill(self, observations: Iterable[Observation]) -> int:
        """Take ``observations`` of the target's past (e.g. read from Prometheus when the process
        started) as if the judge had watched them, and return how many it took: only those older
        than anything the judge holds, in time order. They are not judged (no evidence, no
        decision), just remembered: the window's intervals, and the history the reference is
        drawn from. What the judge held is kept, as it was judged."""
        held = [self._window[0].t] if self._window else []
        if self._history:
            held.append(self._history[0][0])
        start = min(held, default=math.inf)
        older = sorted((obs for obs in observations if obs.t < start), key=lambda obs: obs.t)
        if not older:
            return 0
        kept = self.kept()
        evicted = [entry for entry in self._history if not kept or entry[0] < kept[0].t]
        suspect, onset, last_breached = list(self._suspect), self._onset, self._last_breached
        self._window.clear()
        self._baseline_served = 0.0
        for track in self._tracks:
            track.clear()
        self._health.clear()
        self._history.clear()
        self._suspect.clear()
        self._last_breached = False
        previous = -math.inf
        for obs in older:
            if obs.t == previous:
                continue
            previous = obs.t
            if obs.rejected is not None or _impossible(obs) is not None:
                continue
            self._admit(obs)
        for t, sample in evicted:
            self._remember_history(t, sample)
        self._last_breached = last_breached
        for obs in kept:
            self._admit(obs)
        self._suspect.extend(t for t in suspect if self._window and t >= self._window[0].t)
        self._onset = onset
        return len(older)

    def kept(self) -> list[Observation]:
        """The observations the window holds, as they came in: what a judge with other parameters
        (a configuration reload) judges again instead of starting blind."""
        health = dict(self._health)
        kept: list[Observation] = []
        for interval in self._window:
            health_candidate, health_baseline = health.get(interval.t, (None, None))
            kept.append(
                Observation(
                    target=self._params.key,
                    t=interval.t,
                    baseline=interval.baseline,
                    candidate=interval.candidate,
                    health_baseline=health_baseline,
                    health_candidate=health_candidate,
                )
            )
        return kept

    def rejudged(self, params: TargetParams) -> tuple[Judge, list[Evidence]]:
        """A judge with ``params`` that has judged again what this one holds, and its evidence for
        every observation: the baseline history older than the window carries over as it is, the
        window's observations are judged again in order."""
        fresh = Judge(params, time_text=self._time_text)
        start = self._window[0].t if self._window else math.inf
        fresh._history.extend(entry for entry in self._history if entry[0] < start)
        return fresh, [fresh.observe(obs) for obs in self.kept()]

    def _remember_history(self, t: float, sample: Sample) -> None:
        self._history.append((t, sample))
        horizon = t - self._params.detection.baseline_window_s
        while self._history and self._history[0][0] <= horizon:
            self._history.popleft()

    def _admit(self, obs: Observation) -> None:
        det = self._params.detection
        interval = Interval(t=obs.t, candidate=obs.candidate, baseline=obs.baseline)
        if len(self._window) == self._window.maxlen and self._window[0].baseline is not None:
            self._baseline_served -= self._window[0].baseline.requests  # about to be dropped
        self._window.append(interval)
        if obs.baseline is not None:
            self._baseline_served += obs.baseline.requests
        for track in self._tracks:
            track.add(interval)
            track.evict_through(obs.t - det.window_s)
        if obs.health_candidate is not None or obs.health_baseline is not None:
            # Ticks without probes leave no entry: the health judgement skips them anyway.
            self._health.append((obs.t, (obs.health_candidate, obs.health_baseline)))
        if obs.baseline is not None and obs.baseline.requests > 0:
            self._remember_history(obs.t, obs.baseline)
        horizon = obs.t - det.window_s
        while self._suspect and self._suspect[0] <= horizon:
            self._suspect.popleft()
        while self._window and self._window[0].t <= horizon:
            old = self._window.popleft()
            if old.baseline is not None:
                self._baseline_served -= old.baseline.requests
            self._evictions += 1
            if self._evictions % 1024 == 0:
                self._baseline_served = sum(
                    iv.baseline.requests for iv in self._window if iv.baseline is not None
                )
            # A plain Deployment has no separate baseline series: its own healthy past is the
            # reference, so intervals that leave the window while all is well become history.
            if (
                obs.baseline is None
                and self._params.strategy in OWN_PAST
                and old.candidate is not None
                and old.candidate.requests > 0
                and not self._last_breached
            ):
                self._remember_history(old.t, old.candidate)
        keep = max(det.window_s, det.confirm_intervals * self._params.interval_s)
        while self._health and self._health[0][0] <= obs.t - keep:
            self._health.popleft()

    def _reference_for(self, points: Sequence[Point]) -> Reference:
        """The baseline to compare the candidate with over ``points``: the concurrent baseline
        when it had enough traffic (canary), otherwise the baseline's recent history."""
        concurrent = [
            p.interval.baseline for p in points
            if p.interval.baseline is not None and p.interval.baseline.requests > 0
        ]
        served = sum(s.requests for s in concurrent)
        if concurrent and served >= self._params.detection.min_requests:
            return Reference(concurrent, pool([p.base for p in points if p.base is not None]))
        first = points[0].t if points else math.inf
        before = [s for t, s in self._history if t < first]
        if self._params.strategy in OWN_PAST and points and self._window:
            # A plain Deployment's own healthy past: its history, plus the window's intervals
            # from before the episode (those not suspect when they came in). The whole window
            # (an attribution over all of it) is compared with what came before the suspicion.
            whole = any(track.points and points[0] is track.points[0] for track in self._tracks)
            cutoff = self._onset if whole and self._onset is not None else first
            suspect = set(self._suspect)
            before = [s for t, s in self._history if t < cutoff]
            before.extend(
                iv.candidate for iv in self._window
                if iv.t < cutoff and iv.t not in suspect and iv.baseline is None
                and iv.candidate is not None and iv.candidate.requests > 0
            )
            return Reference(before)
        return Reference(before or [s for _, s in self._history])

    def observe(self, obs: Observation) -> Evidence:
        # Impossible values are rejected by the sources; any that still arrive are not judged: the
        # whole tick is a gap, so neither side's bad data is compared with the other.
        rejected = obs.rejected or _impossible(obs)
        if rejected is not None:
            obs = replace(obs, baseline=None, candidate=None)
        self._admit(obs)
        verdicts: list[Verdict] = []
        if rejected is not None:
            verdicts = [Verdict(None, f"impossible metrics this interval, not judged: {rejected}")]
        elif obs.candidate is None:
            verdicts = [Verdict(None, "no candidate metrics this interval (scrape gap or source down)")]
        else:
            verdicts = [
                judge_metric(track, obs.t, self._reference_for, self._params, time_text=self._time_text)
                for track in self._tracks
            ]
        # Health is judged on the ticks that probed the candidate, this one last.
        probed = self._health and self._health[-1][0] == obs.t
        health = judge_health(self._health, self._params) if probed else None

        findings: list[Finding] = [v.finding for v in verdicts if v.finding is not None]
        if health is not None:
            findings.append(health)
        breached = [f for f in findings if f.breached]
        blamed = [f for f in breached if f.attributable]
        focus = blamed or breached
        impact = Impact.NONE
        if focus:
            impact = Impact.SEVERE if any(f.severe for f in focus) else Impact.MANAGEABLE
        metric_conclusive = any(v.finding is not None for v in verdicts)
        inconclusive = not breached and not metric_conclusive
        reasons: list[str] = []
        for f in sorted(findings, key=lambda f: (not f.breached, not f.severe)):
            if f.breached or f.signal != "health":
                reasons.append(f.detail)
        reasons.extend(v.inconclusive_reason for v in verdicts if v.inconclusive_reason)
        within = (
            metric_conclusive
            and not any(v.above for v in verdicts)
            and not breached
            and (health is None or not health.value)
        )
        self._last_breached = bool(breached) or any(v.above for v in verdicts)
        if self._last_breached:
            self._suspect.append(obs.t)
            if self._onset is None:
                self._onset = obs.t
        elif rejected is None and obs.candidate is not None:
            self._onset = None  # judged and not suspect: a gap says nothing about it
        attribution = _blame(breached) if breached else None
        if breached:
            self._proven_at, recovered = obs.t, False
        elif self._proven_at is None:
            recovered = True  # nothing to recover from
        else:
            judged = rejected is None and obs.candidate is not None
            recovered = judged and self._recovered(self._proven_at, health)
            if recovered:
                self._proven_at = None
        return Evidence(
            target=self._params.key,
            t=obs.t,
            impact=impact,
            attributable=bool(blamed),
            inconclusive=inconclusive,
            findings=tuple(findings),
            reasons=tuple(reasons),
            candidate_requests=self._tracks[0].pooled.total,
            baseline_requests=max(0.0, self._baseline_served),
            within_slo=within,
            since=min((f.since for f in focus if f.since is not None), default=None),
            attribution=attribution,
            recovered=recovered,
        )

    def _recovered(self, after: float, health: Finding | None) -> bool:
        """Recovery from the breach proven at ``after`` is proven: every metric signal with data is
        proven within the SLO since then (at least one has data), and the latest health probe of
        the candidate, if any, passes."""
        if health is not None and health.value:
            return False
        proofs = [recovery_proven(track, after, self._params) for track in self._tracks]
        return any(proofs) and all(proof is not False for proof in proofs)


def _blame(breached: Sequence[Finding]) -> Attribution:
    """Who the breach of the ``breached`` findings is blamed on: the new version when one of them
    is attributable; otherwise the baseline when it is degraded in one of them, then "no
    baseline", and "pending" when every baseline is within the SLO."""
    states = {f.attribution for f in breached}
    for state in (Attribution.ATTRIBUTABLE, Attribution.BASELINE_DEGRADED, Attribution.NO_BASELINE):
        if state in states:
            return state
    return Attribution.PENDING


def _impossible(obs: Observation) -> str | None:
    """What makes ``obs``' metrics impossible (see :mod:`rollbackd.plausibility`), or ``None``."""
    for side, sample in (("candidate", obs.candidate), ("baseline", obs.baseline)):
        if sample is not None and (problem := sample_problem(sample, errors_slack=ERRORS_SLACK)):
            return f"{side} {problem}"
    return None
