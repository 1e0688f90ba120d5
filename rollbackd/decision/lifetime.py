"""A release's lifetime, as a pure value: when a target's judgement starts and how it ends.

A release is judged from its start (the first tick the target is watched, a new revision after
an earlier release ended, or the end of a rollback) until it is **accepted**:

- after ``policy.accept_after_s`` seconds without an open breach episode (``after``: "accepted
  after 1h"); 0 turns this off;
- by an operator (the ``accept`` action; ``by``: "accepted by alice"), until withdrawn;

or until the **next release** supersedes it: a revision newer than the one judged, read from the
cluster, or a release announced from outside (:func:`announced`: a flag turned on, a configuration
change), which ends the judgement or acceptance of the one before at once and is judged from its
own start (``accept_after_s`` counts from there, not from when this process began watching). An
accepted release is not judged (its decisions are blocked by ``accepted``); the
target is watched for the next release, which starts a new judgement ("superseded by revision 7"
is how the old one ended).

:func:`advance` is the whole rule, one tick at a time; the daemon feeds it the tick's time, the
revision the cluster shows (when read) and the operator's acceptance, and acts on the change it
reports.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from rollbackd.decision.facts import is_newer
from rollbackd.decision.framework import duration_text


class Ending(enum.StrEnum):
    """How a release's judgement ended."""

    #: ``policy.accept_after_s`` passed without an open breach episode.
    AFTER = "accepted-after"
    #: An operator accepted it (the ``accept`` action).
    BY = "accepted-by"
    #: A newer revision came: the next release is judged.
    SUPERSEDED = "superseded"


class Change(enum.StrEnum):
    """What :func:`advance` changed on a tick (the daemon announces and acts on it)."""

    ACCEPTED = "accepted"
    #: An operator's acceptance was withdrawn: the release is judged again.
    WITHDRAWN = "withdrawn"
    #: A newer revision ended the release; a new one started.
    SUPERSEDED = "superseded"


@dataclass(frozen=True, slots=True)
class Accepted:
    """How a release's judgement ended: ``how``, at ``at`` (loop clock), ``by`` whom and why
    (an operator), or the ``revision`` or announced ``release`` (its id) that superseded it;
    ``judged_s`` is how long it was judged."""

    how: Ending
    at: float
    judged_s: float
    by: str | None = None
    reason: str = ""
    revision: int | None = None
    release: str | None = None

    @property
    def text(self) -> str:
        """``accepted after 1h``, ``accepted by alice``, ``superseded by revision 7``."""
        if self.how is Ending.AFTER:
            return f"accepted after {duration_text(self.judged_s)}"
        if self.how is Ending.BY:
            return f"accepted by {self.by}"
        if self.release is not None:
            return f"superseded by release {self.release}"
        return f"superseded by revision {self.revision}"

    @property
    def why(self) -> str:
        """The text with its reason: what a blocked decision's reasons say."""
        if self.how is Ending.AFTER:
            return f"{self.text} without a breach episode (policy.accept_after_s)"
        return f"{self.text}: {self.reason}" if self.reason else self.text


@dataclass(frozen=True, slots=True)
class Lifetime:
    """One release of a target: judged since ``started_at`` (loop clock), its ``revision`` once
    the cluster showed it, the announced ``release`` it is (its id; ``None``: a revision), and how
    its judgement ended (``ended``; ``None`` while it is judged). ``previous`` is how the release
    before it ended (superseded), if one did while watched."""

    started_at: float
    revision: int | None = None
    ended: Accepted | None = None
    previous: Accepted | None = None
    previous_revision: int | None = None
    release: str | None = None

    @property
    def accepted(self) -> Accepted | None:
        """The acceptance that ended the judgement (``None`` while judged)."""
        return self.ended if self.ended is not None and self.ended.how is not Ending.SUPERSEDED else None


@dataclass(frozen=True, slots=True)
class Operator:
    """An operator's acceptance of the target's release, as the switches hold it."""

    by: str
    reason: str


def advance(
    release: Lifetime,
    t: float,
    *,
    accept_after_s: float,
    quiet: bool,
    revision: int | None = None,
    operator: Operator | None = None,
) -> tuple[Lifetime, Change | None]:
    """The release after the tick at ``t``, and what changed.

    ``quiet``: no breach episode is open and no rollback is under way (only then does time
    accept a release); ``revision``: the candidate revision the cluster shows (``None``: not read
    this tick); ``operator``: an operator's acceptance in force (``None``: none, or withdrawn).

    A newer revision supersedes an *accepted* release (while a release is still judged, a newer
    revision is a fix rolling out: the decision framework holds for it, and the episode decides).
    """
    if revision is not None and release.revision is None:
        release = replace(release, revision=revision)
    if release.accepted is not None and is_newer(release.revision, revision):
        ending = Accepted(how=Ending.SUPERSEDED, at=t, judged_s=t - release.started_at, revision=revision)
        successor = Lifetime(
            started_at=t, revision=revision, previous=ending, previous_revision=release.revision
        )
        return successor, Change.SUPERSEDED
    accepted = release.accepted
    if accepted is not None:
        if accepted.how is Ending.BY and operator is None:
            return replace(release, ended=None), Change.WITHDRAWN
        return release, None
    judged_s = t - release.started_at
    if operator is not None:
        ending = Accepted(how=Ending.BY, at=t, judged_s=judged_s, by=operator.by, reason=operator.reason)
        return replace(release, ended=ending), Change.ACCEPTED
    if accept_after_s > 0 and quiet and judged_s >= accept_after_s:
        return replace(release, ended=Accepted(how=Ending.AFTER, at=t, judged_s=judged_s)), Change.ACCEPTED
    return release, None


def announced(current: Lifetime | None, *, release: str, started_at: float) -> Lifetime:
    """The lifetime of ``release``, announced to have started at ``started_at`` (loop clock): judged
    from then on, whatever ended the one before (judged or accepted, it is superseded by it).

    A lifetime that began at or after ``started_at`` (this process began watching after the
    release started) was this release already: it keeps its revision, how it ended and what came
    before it, and takes the release's start."""
    if current is not None and current.started_at >= started_at:
        return replace(current, started_at=started_at, release=release)
    if current is None:
        return Lifetime(started_at=started_at, release=release)
    ending = Accepted(
        how=Ending.SUPERSEDED, at=started_at, judged_s=started_at - current.started_at, release=release
    )
    return Lifetime(
        started_at=started_at, release=release, previous=ending, previous_revision=current.revision
    )
