"""What the daemon remembers between ticks: per-target evaluators and their latest decisions, the
runtime switches (freeze, dry-run), fix-forward holds and the rollback ledger (cooldowns, hourly cap).

Everything here lives in one event loop and is only touched from it, so no locks are needed.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from rollbackd.config.resolve import target_params
from rollbackd.config.settings import Settings, TargetSettings
from rollbackd.daemon.probing import ProbeOutcome
from rollbackd.daemon.series import Series, point_of
from rollbackd.decision.facts import ClusterFacts, is_newer
from rollbackd.decision.lifetime import Lifetime, announced

if TYPE_CHECKING:
    from rollbackd.daemon.rollbacks import Rollbacks
from rollbackd.decision.rails import HoldBook, RollbackLedger
from rollbackd.evaluate import TargetEvaluator
from rollbackd.model import Context, Decision, Evidence, Observation, Risk, TimeText, scenario_time
from rollbackd.optin import ObjectRef
from rollbackd.params import TargetParams
from rollbackd.releases import Release
from rollbackd.sources.base import SourceTarget
from rollbackd.sources.targets import source_target


@dataclass(slots=True)
class RuntimeFlags:
    """Global switches, initialised from ``settings.safety`` and toggled through the API."""

    freeze: bool = False
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class Acceptance:
    """An operator said the target's release is good (``by``, ``reason``, at ``at``, UTC): it is
    not judged until a revision newer than ``revision`` (``None``: the one the cluster shows next)
    comes, or a release announced to have started after ``at``."""

    by: str
    reason: str
    revision: int | None = None
    at: datetime | None = None


class TargetState:
    """One watched target: its resolved parameters, how the sources find it, its evaluator (which
    keeps its own window of observations) and the decisions worth showing."""

    def __init__(
        self,
        settings: TargetSettings,
        *,
        params: TargetParams,
        source: SourceTarget,
        time_text: TimeText = scenario_time,
    ) -> None:
        self.settings = settings
        self.params = params
        self.source = source
        #: How the reasons write a time (the daemon: wall-clock UTC).
        self.time_text = time_text
        self.evaluator = TargetEvaluator(params, time_text=time_text)
        #: The decision of the latest tick (any outcome).
        self.latest: Decision | None = None
        #: The latest decision that said "roll back now" (dry-run included).
        self.last_rollback: Decision | None = None
        #: What the cluster said this tick (read only while the target breaches).
        self.facts: ClusterFacts | None = None
        #: The candidate's revision when the current breach episode began: a newer one means a
        #: newer rollout (a fix) is already progressing.
        self.judged_revision: int | None = None
        #: Whether the target's past is still to be read from the metrics source (a target the
        #: process has just started watching), and how many reads of it failed.
        self.history_wanted = True
        self.history_failures = 0
        #: The latest release announced for it (a flag flip, a configuration change), and when it
        #: started on the event loop's clock (see :meth:`released`).
        self.release: Release | None = None
        self.release_at: float | None = None
        #: What the status page charts: every interval since the release, bounded (see
        #: :mod:`rollbackd.daemon.series`); kept across rollbacks and reloads.
        self.series = Series()
        #: The release judged now, how long, and how its judgement ended (see
        #: :mod:`rollbackd.decision.lifetime`): ``None`` until the first tick, and again after a
        #: rollback or an announced release (the next tick starts the next one).
        self.lifetime: Lifetime | None = None

    @property
    def key(self) -> str:
        return self.params.key

    @property
    def observations(self) -> list[Observation]:
        """The observations the evaluator's window holds (judged again after a reload)."""
        return self.evaluator.kept()

    def judge(self, obs: Observation) -> Evidence:
        """The detectors' half of a tick (the observation joins the charts' series)."""
        self.series.add(point_of(obs, interval_s=self.params.interval_s))
        return self.evaluator.judge(obs)

    def backfill(self, observations: Iterable[Observation]) -> int:
        """Take the target's past, read from the metrics source, as if it had been watched; it
        is not read again. Returns how many observations were taken."""
        self.history_wanted = False
        past = list(observations)
        self.series.extend(point_of(obs, interval_s=self.params.interval_s) for obs in past)
        taken = self.evaluator.backfill(past)
        if taken and self.release_at is not None:  # the past read in: before the release, or after
            self.evaluator.released(self.release_at)
        return taken

    def released(self, release: Release, at: float) -> None:
        """``release`` started at ``at`` (loop time): the target is judged from then on against
        its own history before it. An older release than the one taken already changes nothing."""
        if self.release is not None and self.release.started_at > release.started_at:
            return
        self.release, self.release_at = release, at
        # A new release: judged from its start, the one before superseded (judged or accepted).
        self.lifetime = announced(self.lifetime, release=release.id, started_at=at)
        self.evaluator.released(at)
        self.judged_revision = None

    def reset(self) -> None:
        """Judge afresh from now on (after a rollback, the next episode stands on its own data,
        against the healthy past of the version that stays)."""
        self.evaluator.reset()
        self.judged_revision = None

    def rebuilt(self, settings: TargetSettings, *, params: TargetParams, source: SourceTarget) -> TargetState:
        """This target under changed settings: a new evaluator that has judged the window's
        observations again with the new parameters (the breach-tracking state starts over); what
        the API shows (latest decisions, facts, judged revision) carries over."""
        fresh = TargetState(settings, params=params, source=source, time_text=self.time_text)
        fresh.evaluator = self.evaluator.rejudged(params)
        fresh.latest = self.latest
        fresh.last_rollback = self.last_rollback
        fresh.facts = self.facts
        fresh.judged_revision = self.judged_revision
        fresh.history_wanted = self.history_wanted
        fresh.history_failures = self.history_failures
        fresh.series = self.series
        fresh.release, fresh.release_at = self.release, self.release_at
        fresh.lifetime = self.lifetime
        return fresh


class DaemonState:
    """All targets (in configuration order) plus the global switches and safety rails."""

    def __init__(self, settings: Settings, *, time_text: TimeText = scenario_time) -> None:
        """``time_text``: how the targets' reasons write a time (the daemon: wall-clock UTC)."""
        self.time_text = time_text
        self.flags = RuntimeFlags(freeze=settings.safety.freeze, dry_run=settings.safety.dry_run)
        self.max_rollbacks_per_hour = settings.defaults.policy.max_rollbacks_per_hour
        self.holds = HoldBook()
        #: Releases accepted through the API, by target key.
        self.accepted: dict[str, Acceptance] = {}
        self.ledger = RollbackLedger(max_per_hour=self.max_rollbacks_per_hour)
        #: The rollback runs (set by the daemon; ``None`` when nothing acts, e.g. in some tests).
        self.rollbacks: Rollbacks | None = None
        self.targets: dict[str, TargetState] = {}
        #: The start-up probe of the targets' series, once it is in (see :mod:`rollbackd.daemon.probing`).
        self.probe: ProbeOutcome | None = None
        #: The targets annotations declare: the object each came from (the others are the file's).
        self.origins: dict[str, ObjectRef] = {}
        #: Annotated objects the file's targets win over, with why.
        self.conflicts: dict[str, str] = {}
        #: Annotated objects whose annotations cannot be used (all or in part): their problems.
        self.opt_in_problems: dict[str, tuple[str, ...]] = {}
        #: Why watching for annotations fails, per failing namespace.
        self.watch_problems: tuple[str, ...] = ()
        for target in settings.targets:
            state = TargetState(
                target,
                params=target_params(settings, target),
                source=source_target(settings, target),
                time_text=time_text,
            )
            self.targets[state.key] = state

    def apply(self, old: Settings, new: Settings, *, rebuild: Collection[str]) -> None:
        """Take over reloaded settings: targets new in ``new`` start empty, targets listed in
        ``rebuild`` (changed) are :meth:`TargetState.rebuilt`, the others keep their state as is;
        removed targets go with their holds. A safety switch changes only if the file changed it
        (a switch flipped through the API otherwise stays as it is); the hourly cap follows."""
        targets: dict[str, TargetState] = {}
        for target in new.targets:
            current = self.targets.get(target.key)
            if current is not None and target.key not in rebuild:
                current.settings = target
                targets[target.key] = current
                continue
            params, source = target_params(new, target), source_target(new, target)
            if current is None:
                targets[target.key] = TargetState(
                    target, params=params, source=source, time_text=self.time_text
                )
            else:
                targets[target.key] = current.rebuilt(target, params=params, source=source)
        for key in self.targets.keys() - targets.keys():
            self.holds.clear(key)
            self.accepted.pop(key, None)
        self.targets = targets
        if new.safety.freeze != old.safety.freeze:
            self.flags.freeze = new.safety.freeze
        if new.safety.dry_run != old.safety.dry_run:
            self.flags.dry_run = new.safety.dry_run
        self.max_rollbacks_per_hour = new.defaults.policy.max_rollbacks_per_hour
        self.ledger.max_per_hour = self.max_rollbacks_per_hour

    def context(
        self,
        target: TargetState,
        t: float,
        *,
        facts: ClusterFacts | None = None,
        in_progress: bool = False,
        standby: bool = False,
        audit_problem: str | None = None,
    ) -> Context:
        """What the decision framework weighs for ``target`` at time ``t`` besides the metrics:
        configuration, the API's switches and holds, the rails, and what the cluster says.
        ``standby``: another replica leads (leader election), so this one must not act;
        ``audit_problem``: why the audit trail cannot be written now, so nothing may be done."""
        risk = target.params.policy.rollback_risk
        why = "configured as high-risk (policy.rollback_risk: high)" if risk is Risk.HIGH else ""
        has_target = True
        newer = False
        if facts is not None:
            if risk is not Risk.HIGH and facts.risk is Risk.HIGH:
                risk, why = Risk.HIGH, facts.risk_reason
            has_target = facts.has_rollback_target
            if target.judged_revision is None:
                target.judged_revision = facts.candidate_revision
            newer = is_newer(target.judged_revision, facts.candidate_revision)
        hold = self.holds.get(target.key)
        if hold is not None and hold.until <= t and target.evaluator.breach_since is None:
            # An expired hold matters only while the breach it covered goes on: once that is
            # over, a later breach gets its own grace.
            self.holds.clear(target.key)
            hold = None
        if hold is None and facts is not None and facts.hold is not None:
            hold = facts.hold
        accepted = target.lifetime.accepted if target.lifetime is not None else None
        return Context(
            accepted=None if accepted is None else accepted.why,
            rollback_risk=risk,
            risk_reason=why,
            hold=hold,
            has_rollback_target=has_target,
            newer_rollout_in_progress=newer,
            rollback_in_progress=in_progress,
            frozen=self.flags.freeze,
            dry_run=self.flags.dry_run or target.settings.dry_run,
            standby=standby,
            audit_problem=audit_problem,
            cooldown_until=self.ledger.cooldown_until(target.key),
            watch=self.ledger.watch_of(target.key, t),
            rollbacks_last_hour=self.ledger.rollbacks_last_hour(t),
            max_rollbacks_per_hour=self.max_rollbacks_per_hour,
            time_text=self.time_text,
        )

    def remember(self, target: TargetState, decision: Decision) -> None:
        """Keep ``decision`` as the target's latest; a rollback decision also becomes its last
        rollback and, unless it was taken in dry-run, starts the target's cooldown and counts
        towards the hourly cap."""
        target.latest = decision
        if decision.rollback:
            target.last_rollback = decision
            if not decision.dry_run:
                self.ledger.record(target.key, decision.t, target.params.policy.cooldown_s)
                self.holds.clear(target.key)
