"""The on-call status page: one server-rendered HTML document, no script, no external asset.

The page is a rendering of the very document ``GET /api/v1/targets`` answers
(:func:`~rollbackd.daemon.views.targets_view`), so the page and the API can never disagree. It
shows the daemon's banner (version, readiness, freeze, dry-run, ticks, targets), then one card per
target, worst first:

1. a rollback decided (now, in dry-run, or recently and the target is in its cooldown);
2. a controlled rollback waiting out its grace (or for an interval that proves the breach again),
   or a proven breach whose attribution is pending;
3. an escalation or a hold (a breach the framework or a safety rail keeps from a rollback);
4. inconclusive (not enough data) or not evaluated yet;
5. healthy.

Every text that comes from the outside (names, reasons, hold reasons) is HTML-escaped.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rollbackd.actions.reconcilers import REVERT_IN_GIT
from rollbackd.daemon.charts import CSS as _CHARTS_CSS
from rollbackd.daemon.charts import render_charts
from rollbackd.daemon.docread import Doc as _Doc
from rollbackd.daemon.docread import escape as _e
from rollbackd.daemon.docread import items as _list
from rollbackd.daemon.docread import number as _num
from rollbackd.daemon.docread import obj as _obj
from rollbackd.daemon.docread import text as _text
from rollbackd.daemon.jsonify import JsonValue
from rollbackd.daemon.probing import ProbeOutcome
from rollbackd.daemon.sourcestatus import SourceState, SourceStatus

#: The shortest refresh period of the page, in seconds.
MIN_REFRESH_S = 2
#: The refresh period when no target tells the evaluation interval.
FALLBACK_REFRESH_S = 10


class Urgency(enum.IntEnum):
    """How urgently a target needs a look; lower is worse (the page sorts on it)."""

    ROLLBACK = 0
    WAITING = 1
    ESCALATED = 2
    INCONCLUSIVE = 3
    HEALTHY = 4


@dataclass(frozen=True, slots=True)
class Status:
    """Where a target stands at a glance: its urgency group and the words on its badge."""

    urgency: Urgency
    label: str

    @property
    def css(self) -> str:
        return self.urgency.name.lower()


#: The page's one script, inline (no external asset): every ``data-refresh-s`` seconds it fetches
#: the page again and swaps the new content in, keeping the reader's place (the scroll position,
#: the folded sections they opened); it does nothing while the tab is hidden (counted in
#: ``data-live-paused``) and catches up as soon as it is shown again. ``data-live-updates``
#: counts the swaps. It reads the fetched page as an inert document and swaps that document's
#: nodes in: the page's escaped text stays text.
LIVE_SCRIPT = """
(function () {
  "use strict";
  var body = document.body, period = 1000 * Number(body.dataset.refreshS || 10), busy = false;
  function place(details) {
    var card = details.closest("article"), all = card ? card.querySelectorAll("details") : [];
    var index = details.dataset.key || Array.prototype.indexOf.call(all, details);
    return (card ? card.dataset.key : "") + "#" + index;
  }
  function update() {
    if (document.hidden) { body.dataset.livePaused = String(Number(body.dataset.livePaused) + 1); return; }
    if (busy) { return; }
    busy = true;
    fetch(window.location.href, {cache: "no-store", credentials: "same-origin"})
      .then(function (response) {
        if (!response.ok) { throw new Error("status " + response.status); }
        return response.text();
      })
      .then(function (text) {
        var fresh = new DOMParser().parseFromString(text, "text/html");
        var live = document.getElementById("live"), incoming = fresh.getElementById("live");
        if (!live || !incoming) { return; }
        var open = {}, x = window.scrollX, y = window.scrollY;
        live.querySelectorAll("details[open]").forEach(function (d) { open[place(d)] = true; });
        live.replaceWith(document.adoptNode(incoming));
        document.getElementById("live").querySelectorAll("details").forEach(function (d) {
          if (open[place(d)]) { d.open = true; }
        });
        document.title = fresh.title;
        window.scrollTo(x, y);
        body.dataset.liveUpdates = String(Number(body.dataset.liveUpdates) + 1);
      })
      .catch(function () { body.dataset.liveFailures = String(Number(body.dataset.liveFailures || 0) + 1); })
      .then(function () { busy = false; });
  }
  window.setInterval(update, period);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { update(); } });
})();
"""


def refresh_seconds(interval_s: float | None) -> int:
    """The page's refresh period: the evaluation interval rounded up, at least
    :data:`MIN_REFRESH_S` (:data:`FALLBACK_REFRESH_S` when the interval is unknown)."""
    if interval_s is None or not math.isfinite(interval_s) or interval_s <= 0:
        return FALLBACK_REFRESH_S
    return max(MIN_REFRESH_S, math.ceil(interval_s))


def human_duration(seconds: float) -> str:
    """``42s``, ``5m 03s``, ``3h 07m``: seconds below two minutes, then coarser."""
    if not math.isfinite(seconds):
        return "?"
    total = max(0, round(seconds))
    if total < 120:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 120:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


#: Badge words for what keeps a breaching target from a rollback (``blocked_by``).
_HELD_BY = {"hold": "fix-forward hold", "newer-rollout": "newer rollout"}
_ESCALATED_BY = {
    "not-attributable": "not attributable (baseline degraded too)",
    "no-baseline": "no baseline to compare with",
    "attribution-pending": "attribution pending too long",
    "rollback-risk": "rollback risk",
    "freeze": "freeze",
    "cooldown": "cooldown",
    "rate-limit": "hourly rollback cap",
    "store": "audit trail cannot be written",
    "post-rollback-watch": "degraded again after its rollback",
}


#: Badge words for where a rollback run stands (``rollback.phase``): rolled back and still being
#: verified is not the same news as rolled back and verified.
_RUN_BADGES = {
    "acting": "rolling back",
    "verifying": "rolled back, verifying",
    "verified": "rolled back, verified",
    "verification-failed": "rolled back, verification failed",
    "action-failed": "rollback failed",
}


#: Words for who a proven breach is blamed on (``attribution``).
_BLAME = {
    "attributable": "the new version",
    "pending": "pending (baseline within the SLO)",
    "baseline-degraded": "baseline degraded too",
    "no-baseline": "no baseline to compare with",
}


def target_status(target: _Doc) -> Status:
    """Classify one target of the API document (see the module documentation for the order)."""
    decision = _obj(target.get("decision"))
    if decision is None:
        return Status(Urgency.INCONCLUSIVE, "not evaluated yet")
    outcome = _text(decision.get("outcome"))
    blocked_by = _text(decision.get("blocked_by"))
    if decision.get("rollback") is True:
        if decision.get("dry_run") is True:
            return Status(Urgency.ROLLBACK, f"would roll back ({outcome}, dry-run)")
        return Status(Urgency.ROLLBACK, f"rollback decided ({outcome})")
    if blocked_by == "post-rollback-watch":  # the news is the new degradation, not the old rollback
        return Status(Urgency.ESCALATED, f"escalated: {_ESCALATED_BY[blocked_by]}")
    run = _obj(target.get("rollback"))
    if run is not None and _text(run.get("phase")) in _RUN_BADGES:
        return Status(Urgency.ROLLBACK, _RUN_BADGES[_text(run.get("phase"))])
    # A cooldown only starts when a rollback was decided for real: the target was rolled back.
    if _obj(target.get("cooldown")) is not None and _obj(target.get("last_rollback")) is not None:
        return Status(Urgency.ROLLBACK, "rolled back")
    if outcome == "controlled" and not blocked_by:
        return Status(Urgency.WAITING, "controlled rollback: waiting")
    if blocked_by == "unproven" and decision.get("escalate") is not True:
        return Status(Urgency.WAITING, f"{outcome} rollback: waiting for a proven interval")
    if blocked_by == "attribution-pending" and decision.get("escalate") is not True:
        return Status(Urgency.WAITING, "degraded: attribution pending")
    if blocked_by == "accepted":  # not judged: watched for the next release
        lifetime = _obj(target.get("lifetime"))
        accepted = _obj(lifetime.get("accepted")) if lifetime is not None else None
        return Status(Urgency.HEALTHY, _text(accepted.get("text")) if accepted is not None else "accepted")
    if blocked_by in _HELD_BY:
        return Status(Urgency.ESCALATED, f"held: {_HELD_BY[blocked_by]}")
    if decision.get("escalate") is True or blocked_by:
        why = f": {_ESCALATED_BY.get(blocked_by, blocked_by)}" if blocked_by else ""
        return Status(Urgency.ESCALATED, f"escalated{why}")
    if _obj(decision.get("episode")) is not None:  # never healthy while a breach episode is open
        return Status(Urgency.ESCALATED, "degraded")
    if outcome == "inconclusive":
        return Status(Urgency.INCONCLUSIVE, "inconclusive")
    return Status(Urgency.HEALTHY, "healthy")


def render_status_page(
    document: JsonValue,
    *,
    version: str,
    ready: bool,
    alive: bool,
    ticks: int,
    refresh_s: int,
    generated_at: datetime,
    not_ready: str | None = None,
    timelines: Mapping[str, JsonValue] | None = None,
    probe: ProbeOutcome | None = None,
    sources: Sequence[SourceState] = (),
    now_loop: float | None = None,
) -> str:
    """The whole page.

    Keyword arguments:

    - ``document``: what :func:`~rollbackd.daemon.views.targets_view` returns;
    - ``version``: the daemon's version;
    - ``ready``: whether every target was evaluated at least once;
    - ``alive``: whether the evaluation loop runs;
    - ``ticks``: completed ticks;
    - ``not_ready``: why the daemon does not act though it evaluates (the audit trail cannot be
      written), shown as an alert;
    - ``refresh_s``: the browser reloads the page that often (see :func:`refresh_seconds`);
    - ``generated_at``: the wall-clock time of the rendering (timezone-aware), to print holds' and
      cooldowns' ends as clock times;
    - ``timelines``: per target key, its latest audit records (``GET /api/v1/history`` entries),
      newest first; ``None`` when the audit trail cannot be read;
    - ``probe``: the start-up probe of the targets' series; its blind targets are alerts;
    - ``sources``: each data source's state (:mod:`rollbackd.daemon.sourcestatus`): one that is
      down is an alert saying since when (UTC) and why, one that is off a note; ``now_loop``, the
      event-loop time of the rendering, says for how long.
    """
    doc = _obj(document) or {}
    targets = [t for t in (_obj(v) for v in (_obj(doc.get("targets")) or {}).values()) if t is not None]
    ranked = sorted(
        ((target_status(target), index, target) for index, target in enumerate(targets)),
        key=lambda item: (item[0].urgency, item[1]),
    )
    freeze = doc.get("freeze") is True
    dry_run = doc.get("dry_run") is True
    counts = {urgency: sum(1 for s, _, _ in ranked if s.urgency is urgency) for urgency in Urgency}
    title = f"rollbackd: {len(targets)} targets"
    if counts[Urgency.ROLLBACK]:
        title = f"rollbackd: {counts[Urgency.ROLLBACK]} rollback · {len(targets)} targets"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Without scripts the browser reloads the page; with them, live.js swaps the content in.
        f'<noscript><meta http-equiv="refresh" content="{refresh_s}"></noscript>',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title>",
        f"<style>{_CSS}{_CHARTS_CSS}</style>",
        "</head>",
        f'<body data-refresh-s="{refresh_s}" data-live-updates="0" data-live-paused="0"><div id="live">',
        _banner(
            version=version,
            ready=ready,
            alive=alive,
            freeze=freeze,
            dry_run=dry_run,
            ticks=ticks,
            targets=len(targets),
        ),
        _alerts(ready=ready, alive=alive, freeze=freeze, dry_run=dry_run, not_ready=not_ready,
                freeze_set=_set_by(doc.get("freeze_set")), dry_run_set=_set_by(doc.get("dry_run_set"))),
        _source_alerts(sources, now_loop=now_loop),
        _probe_alerts(probe),
        _opt_in_alerts(_obj(doc.get("opt_ins"))),
        _summary(counts) if targets else '<p class="empty">No targets configured.</p>',
        "<main>",
        *(
            _card(target, status, generated_at=generated_at, timeline=_timeline_of(timelines, target))
            for status, _, target in ranked
        ),
        "</main>",
        "<footer>Rendered at ",
        f"{_e(generated_at.strftime('%Y-%m-%d %H:%M:%S %Z'))}, refreshes every {refresh_s}s. ",
        _switches_kept_in(doc.get("switches_kept_in")),
        'The same data as JSON: <a href="api/v1/targets">api/v1/targets</a>.</footer>',
        f"</div><script>{LIVE_SCRIPT}</script></body></html>",
    ]
    return "\n".join(parts)


# --- the banner --------------------------------------------------------------------------------


def _pill(name: str, value: str, *, css: str) -> str:
    return f'<span class="pill {css}"><span class="k">{_e(name)}</span> <b>{_e(value)}</b></span>'


def _banner(
    *,
    version: str,
    ready: bool,
    alive: bool,
    freeze: bool,
    dry_run: bool,
    ticks: int,
    targets: int,
) -> str:
    pills = [
        _pill("ready", "yes" if ready else "no", css="ok" if ready else "warn"),
        _pill("evaluation loop", "running" if alive else "STOPPED", css="ok" if alive else "bad"),
        _pill("freeze", "ON" if freeze else "off", css="bad" if freeze else "muted"),
        _pill("dry-run", "ON" if dry_run else "off", css="warn" if dry_run else "muted"),
        _pill("ticks", str(ticks), css="muted"),
        _pill("targets", str(targets), css="muted"),
    ]
    return (
        f'<header><h1>rollbackd <span class="version">{_e(version)}</span></h1>'
        f'<div class="pills">{"".join(pills)}</div></header>'
    )


def _switches_kept_in(value: JsonValue) -> str:
    """The footer's ``Switches are kept in WHERE.``; empty when the document does not say."""
    return f"Switches are kept in {_e(value)}. " if isinstance(value, str) else ""


def _set_by(value: JsonValue) -> str:
    """`` Set by NAME at TIME: REASON.`` for a switch's ``*_set`` document; empty without one."""
    switch = _obj(value)
    if switch is None:
        return ""
    return f" Set by {switch.get('by')} at {switch.get('at')}: {switch.get('reason')}."


def _alerts(
    *,
    ready: bool,
    alive: bool,
    freeze: bool,
    dry_run: bool,
    not_ready: str | None = None,
    freeze_set: str = "",
    dry_run_set: str = "",
) -> str:
    alerts = []
    if not alive:
        alerts.append(("bad", "The evaluation loop is not running: nothing is being watched."))
    if freeze:
        alerts.append(
            ("bad", "Freeze is ON: no automatic rollback; breaches are escalated instead." + freeze_set)
        )
    if dry_run:
        alerts.append(
            ("warn", "Dry-run is ON: rollbacks are decided but nothing acts on them." + dry_run_set)
        )
    if not ready and not_ready:
        alerts.append(("bad", f"Not acting: {not_ready}. Targets are still judged; nothing is rolled back."))
    elif not ready:
        alerts.append(("warn", "No evaluation yet: the first evaluation of the targets has not completed."))
    return "".join(f'<div class="alert {css}">{_e(text)}</div>' for css, text in alerts)


#: What a source that is down means for the targets, by source.
_DOWN_MEANS = {
    "prometheus": "targets are inconclusive without data; nothing is rolled back on missing data.",
    "kubernetes": "decisions stand, but the cluster cannot be read or acted on.",
    "store": "targets are still judged; nothing is rolled back until the audit trail can be written.",
}


def _source_alerts(sources: Sequence[SourceState], *, now_loop: float | None) -> str:
    """One alert per data source that is down (since when, for how long, why), one note per
    source that is off."""
    alerts: list[str] = []
    for state in sources:
        name = state.name.capitalize()
        since = state.since.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        if state.status is SourceStatus.DOWN:
            lasted = f" ({human_duration(now_loop - state.since_loop)})" if now_loop is not None else ""
            means = _DOWN_MEANS.get(state.name, "")
            text = f"{name} unreachable since {since}{lasted}: {state.error}. {means}".rstrip()
            alerts.append(f'<div class="alert bad source">{_e(text)}</div>')
        elif state.status is SourceStatus.OFF:
            alerts.append(f'<div class="alert note source">{_e(f"{name} off: {state.detail}.")}</div>')
    return "".join(alerts)


#: Most blind sides listed on the page; the log and ``check-config --probe`` list them all.
MAX_PROBE_LINES = 20


def _probe_alerts(probe: ProbeOutcome | None) -> str:
    """The start-up probe's blind targets, one alert line per side (at most :data:`MAX_PROBE_LINES`)."""
    if probe is None:
        return ""
    if probe.report is None:
        text = f"Could not probe the targets' series: {probe.error}"
        return f'<div class="alert warn">{_e(text)}</div>'
    lines = [line for target in probe.report.blind for line in target.lines()]
    if not lines:
        return ""
    at = datetime.fromtimestamp(probe.report.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    shown = lines[:MAX_PROBE_LINES]
    more = len(lines) - len(shown)
    items = "".join(f"<li>{_e(line)}</li>" for line in shown)
    if more:
        items += f"<li>… and {more} more (see the log or rollbackd check-config --probe)</li>"
    count = len(probe.report.blind)
    head = f"{count} target{'' if count == 1 else 's'} would be blind (no series found at {at}):"
    return f'<div class="alert warn probe">{_e(head)}<ul>{items}</ul></div>'
def _opt_in_alerts(opt_ins: _Doc | None) -> str:
    """One line per annotated object whose annotations cannot be used (naming the annotation and
    the fix), per annotated release the file's target wins over, and per namespace that cannot be
    watched."""
    if opt_ins is None:
        return ""
    alerts = []
    for item in (_obj(value) for value in _list(opt_ins.get("problems"))):
        if item is not None:
            problems = "; ".join(_text(problem) for problem in _list(item.get("problems")))
            alerts.append(("warn", f"Opt-in by annotation: {_text(item.get('object'))}: {problems}"))
    for item in (_obj(value) for value in _list(opt_ins.get("conflicts"))):
        if item is not None:
            why = _text(item.get("reason"))
            alerts.append(("note", f"Opt-in by annotation: {_text(item.get('object'))}: {why}"))
    for problem in _list(opt_ins.get("watch_problems")):
        alerts.append(("warn", f"Opt-in by annotation: {_text(problem)}"))
    return "".join(f'<div class="alert {css} opt-in">{_e(text)}</div>' for css, text in alerts)


def _summary(counts: Mapping[Urgency, int]) -> str:
    names = {
        Urgency.ROLLBACK: "rollback",
        Urgency.WAITING: "waiting",
        Urgency.ESCALATED: "escalated / held",
        Urgency.INCONCLUSIVE: "inconclusive",
        Urgency.HEALTHY: "healthy",
    }
    items = [
        f'<span class="count {urgency.name.lower()}{"" if counts[urgency] else " zero"}">'
        f"<b>{counts[urgency]}</b> {_e(names[urgency])}</span>"
        for urgency in Urgency
    ]
    return f'<nav class="summary">{"".join(items)}</nav>'


# --- one target --------------------------------------------------------------------------------


def _timeline_of(timelines: Mapping[str, JsonValue] | None, target: _Doc) -> list[JsonValue] | None:
    if timelines is None:
        return None
    return _list(timelines.get(_text(target.get("key"))))


def _timeline(entries: list[JsonValue] | None) -> str:
    """The target's audit records, newest first, in a folded list (its summary tells the latest)."""
    if entries is None:
        return '<p class="timeline muted">Timeline: no audit trail to read (no store, or it is not open).</p>'
    records = [entry for entry in (_obj(v) for v in entries) if entry is not None]
    if not records:
        return '<p class="timeline muted">Timeline: no audit records for this target yet.</p>'
    rows = []
    for entry in records:
        at = _text(entry.get("at"))
        clock = at[11:19] if len(at) >= 19 else at
        rows.append(
            f'<li data-seq="{_e(_text(entry.get("seq")))}"><time datetime="{_e(at)}">{_e(clock)}</time> '
            f'<span class="kind">{_e(_text(entry.get("kind")))}</span> {_e(_text(entry.get("summary")))}</li>'
        )
    latest = _e(_text(records[0].get("kind")))
    plural = "" if len(records) == 1 else "s"
    return (
        f'<details class="timeline" data-key="timeline"><summary>Timeline: {len(records)} latest audit '
        f"record{plural}, newest first (latest: {latest})</summary>"
        f'<ol>{"".join(rows)}</ol></details>'
    )


def _card(
    target: _Doc, status: Status, *, generated_at: datetime, timeline: list[JsonValue] | None = None
) -> str:
    key = _text(target.get("key"))
    evidence = _obj(target.get("evidence"))
    decision = _obj(target.get("decision"))
    last_rollback = _obj(target.get("last_rollback"))
    age = None if decision is None else _num(decision.get("age_s"))
    evaluated = "not evaluated yet" if age is None else f"evaluated {human_duration(age)} ago"
    head = (
        f'<div class="head"><span class="badge">{_e(status.label)}</span>'
        f"<h2>{_e(_text(target.get('namespace')))}/{_e(_text(target.get('name')))}</h2>"
        f'<span class="strategy">{_e(_text(target.get("strategy")))}</span>'
        f'<span class="source">{_e(_source(target))}</span>'
        f'<span class="evaluated">{_e(evaluated)}</span></div>'
    )
    rolled_back = _rolled_back(target)
    left = "" if decision is None else _reasons(decision, last_rollback, rolled_back=rolled_back)
    left += _restraints(target, generated_at=generated_at)
    series = _obj(target.get("series"))
    pooled = _obj(series.get("window_pooled")) if series is not None else None
    right = "" if evidence is None else _findings(evidence, pooled)
    facts = _facts(evidence, decision, last_rollback, generated_at=generated_at, rolled_back=rolled_back)
    return (
        f'<article class="target {status.css}" data-key="{_e(key)}" data-status="{status.css}">'
        f"{head}{facts}"
        f'<div class="body"><div class="left">{left}</div><div class="right">{right}</div></div>'
        f"{render_charts(series)}{_timeline(timeline)}</article>"
    )


def _source(target: _Doc) -> str:
    """Where the target came from: ``from the file``, ``from annotations on Deployment shop/web``."""
    obj = _obj(target.get("object"))
    if target.get("source") != "annotation" or obj is None:
        return "from the file"
    where = f"{_text(obj.get('namespace'))}/{_text(obj.get('name'))}"
    return f"from annotations on {_text(obj.get('kind'))} {where}"


def _fact(name: str, value: str, *, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<div><dt>{_e(name)}</dt><dd{cls}>{_e(value)}</dd></div>"


#: The API's target states a rollback run puts its target in (``state``): the run, not the
#: latest tick, says where the target stands.
_RUN_STATES = frozenset(
    {"rolling-back", "verifying", "rolled-back", "rollback-failed", "verification-failed"}
)


def _rolled_back(target: _Doc) -> str | None:
    """Where the target's rollback stands in the badge's words (``rolled back, verifying``), when
    its rollback run says where the target stands (the API's ``state``); ``None`` otherwise."""
    run = _obj(target.get("rollback"))
    if run is None or _obj(target.get("last_rollback")) is None:
        return None
    if _text(target.get("state")) not in _RUN_STATES:
        return None
    phase = _text(run.get("phase"))
    return _RUN_BADGES.get(phase, phase)


def _facts(
    evidence: _Doc | None,
    decision: _Doc | None,
    last_rollback: _Doc | None,
    *,
    generated_at: datetime,
    rolled_back: str | None = None,
) -> str:
    """The target's facts in a row. While its rollback says where it stands (``rolled_back``),
    the outcome is the rollback's, the impact and blame those it was decided on, and the latest
    tick's outcome is told apart."""
    if decision is None:
        return '<p class="muted">Not evaluated yet.</p>'
    if rolled_back is not None and last_rollback is not None:
        return _rollback_facts(decision, last_rollback, rolled_back)
    facts = [_fact("outcome", _text(decision.get("outcome")))]
    if last_rollback is None:
        facts.append(_fact("rollback decided", "no"))
    else:
        facts.append(_fact("rollback decided", _decided(last_rollback), css="hot"))
    if evidence is not None:
        impact = _text(evidence.get("impact"))
        facts.append(_fact("impact", impact, css="hot" if impact == "severe" else ""))
        facts.append(_fact("attributable", "yes" if evidence.get("attributable") is True else "no"))
        attribution = _text(evidence.get("attribution"))
        if attribution:
            facts.append(_fact("blame", _BLAME.get(attribution, attribution)))
    episode = _obj(decision.get("episode"))
    if episode is not None:
        opened = _since(generated_at, episode.get("opened_at"))
        proven = _since(generated_at, episode.get("proven_at"))
        if opened is not None and proven is not None:
            facts.append(
                _fact(
                    "breach episode",
                    f"open for {human_duration(opened)}, last proven {human_duration(proven)} ago",
                    css="warm",
                )
            )
    blocked_by = _text(decision.get("blocked_by"))
    if blocked_by:
        facts.append(_fact("blocked by", blocked_by, css="warm"))
    if decision.get("escalate") is True:
        facts.append(_fact("escalated", "yes: needs a human", css="warm"))
    breaching = _since(generated_at, decision.get("waiting_since"))
    if breaching is not None:
        facts.append(_fact("breaching since", f"{human_duration(breaching)} ago"))
    return f'<dl class="facts">{"".join(facts)}</dl>'


def _decided(last_rollback: _Doc) -> str:
    """``yes, 40s ago (immediate)``."""
    mode = _text(last_rollback.get("outcome"))
    dry = ", dry-run" if last_rollback.get("dry_run") is True else ""
    ago = human_duration(_num(last_rollback.get("age_s")) or 0.0)
    return f"yes, {ago} ago ({mode}{dry})"


def _rollback_facts(decision: _Doc, last_rollback: _Doc, rolled_back: str) -> str:
    """The facts of a target its rollback run stands for: the rollback's outcome, when it was
    decided, on what impact and blame, and what the latest tick says."""
    facts = [
        _fact("outcome", rolled_back, css="hot"),
        _fact("rollback decided", _decided(last_rollback), css="hot"),
    ]
    episode = _obj(last_rollback.get("episode"))
    if episode is not None:
        impact = _text(episode.get("impact"))
        blame = _BLAME.get(_text(episode.get("attribution")), _text(episode.get("attribution")))
        css = "hot" if impact == "severe" else ""
        facts.append(_fact("decided on", f"{impact} impact, blamed on {blame}", css=css))
    facts.append(_fact("latest tick", _text(decision.get("outcome"))))
    return f'<dl class="facts">{"".join(facts)}</dl>'


_SIGNAL_NAMES = {"error_rate": "error rate", "p95": "P95 latency", "health": "health probes"}


def _measure(signal: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if signal == "error_rate":
        return f"{value * 100:.2f}%"
    if signal == "p95":
        return f"{value:.0f} ms"
    if signal == "health":
        return f"{value:.0f} failing"
    return f"{value:g}"


#: What each conclusion of a finding means, for the reader who hovers its verdict.
_VERDICT_TITLES = {
    "breach": "proven above the SLO with the confidence shown",
    "unproven": "the latest intervals are above the SLO, but not with the confidence a breach needs",
    "within-lately": "the latest intervals are within the SLO; the window's value still includes "
    "earlier bad intervals",
    "within": "the detection window is within the SLO",
}

#: The pooled window's key of each metric signal (``series.window_pooled``).
_POOLED_KEYS = {"error_rate": "error_rate", "p95": "p95_ms"}


def _findings(evidence: _Doc, pooled: _Doc | None = None) -> str:
    """The evidence table: per signal its value, the SLO, the baseline, the confidence of the
    verdict (saying of what: above or within the SLO) and the verdict. The baseline is the one the
    finding compared with (a breach: over the breach's intervals), else the baseline over the
    detection window as the charts draw it (``pooled``: ``series.window_pooled``)."""
    findings = [f for f in (_obj(v) for v in _list(evidence.get("findings"))) if f is not None]
    candidate = _count(_num(evidence.get("candidate_requests")))
    baseline = _count(_num(evidence.get("baseline_requests")))
    traffic = f'<p class="traffic">requests in the window: candidate {candidate}, baseline {baseline}</p>'
    if not findings:
        note = "no findings: not enough data" if evidence.get("inconclusive") is True else "no findings"
        return f'<p class="muted">{_e(note)}</p>{traffic}'
    required = _num(evidence.get("confidence_required"))
    window_baseline = _obj(pooled.get("baseline")) if pooled is not None else None
    rows = []
    for finding in findings:
        signal = _text(finding.get("signal"))
        value = _num(finding.get("value"))
        threshold = _num(finding.get("threshold"))
        verdict, css, confidence = _verdict(finding, required)
        meaning = _VERDICT_TITLES.get(_text(finding.get("conclusion")), "")
        base, base_title = _baseline(signal, finding, window_baseline)
        above = value is not None and threshold is not None and value > threshold
        value_css = css if css != "ok" or not above else "warm"  # above the SLO, whatever the verdict
        rows.append(
            f'<tr data-signal="{_e(signal)}" title="{_e(_text(finding.get("detail")))}">'
            f"<td>{_e(_SIGNAL_NAMES.get(signal, signal))}</td>"
            f'<td class="num {value_css}">{_e(_measure(signal, value))}</td>'
            f'<td class="num">{_e(_measure(signal, threshold))}</td>'
            f'<td class="num baseline" title="{_e(base_title)}">{_e(base)}</td>'
            f'<td class="num confidence">{_e(confidence)}</td>'
            f'<td class="verdict {css}" title="{_e(meaning)}">{_e(verdict)}</td></tr>'
        )
    return (
        '<table class="findings"><thead><tr><th>signal</th><th class="num">value</th>'
        '<th class="num">SLO threshold</th><th class="num">baseline</th><th class="num">confidence</th>'
        "<th>verdict</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{traffic}"
    )


def _verdict(finding: _Doc, required: float | None) -> tuple[str, str, str]:
    """A finding's verdict, its style, and the confidence of that verdict saying of what (``99.9%
    above``: that the signal is above the SLO; ``99.9% within``: within it)."""
    signal = _text(finding.get("signal"))
    conclusion = _text(finding.get("conclusion"))
    confidence = _num(finding.get("confidence"))
    needed = f", {_percent(required)} needed" if required is not None else ""
    if signal == "health":  # probes, not statistics: the verdict says it all
        if finding.get("breached") is True:
            return _breach_words(finding), "hot", "consecutive probes"
        if conclusion == "unproven":
            return "failing, not on enough consecutive probes yet", "warm", "-"
        return "answering 2xx", "ok", "-"
    if finding.get("breached") is True or conclusion == "breach":
        css = "hot" if finding.get("severe") is True else "warm"
        return _breach_words(finding), css, f"{_percent(confidence)} above"
    if conclusion == "unproven":
        shown = _percent(confidence)
        return f"above the SLO, not proven ({shown}{needed})", "warm", f"{shown} above"
    if conclusion == "within-lately":
        return "back within the SLO lately", "ok", f"{_percent(confidence)} within"
    return "within the SLO", "ok", f"{_percent(confidence)} within"


def _breach_words(finding: _Doc) -> str:
    verdict = "SEVERE breach" if finding.get("severe") is True else "breach"
    if finding.get("attributable") is True:
        return verdict + ", attributable"
    blame = _BLAME.get(_text(finding.get("attribution")))
    return verdict + (f", not attributable ({blame})" if blame else ", not attributable")


def _baseline(signal: str, finding: _Doc, window: _Doc | None) -> tuple[str, str]:
    """The baseline cell of a finding, and what it is (its title)."""
    compared = _num(finding.get("baseline_value"))
    if compared is not None:
        return _measure(signal, compared), "the baseline the breach was compared with, over its intervals"
    key = _POOLED_KEYS.get(signal)
    if key is None:
        return "", ""
    if window is None:
        return "none", "no baseline traffic in the detection window"
    pooled = _num(window.get(key))
    if pooled is None:
        return "none", "the baseline has no data for this signal in the detection window"
    return _measure(signal, pooled), "the baseline over the detection window, as the charts draw it"


def _reasons(decision: _Doc, last_rollback: _Doc | None, *, rolled_back: str | None = None) -> str:
    """The decision's reasons: the first one shown, the others folded. While a rollback says where
    the target stands (``rolled_back``), the rollback's reasons come first and the latest tick's
    are folded under its first one."""
    reasons = [_text(r) for r in _list(decision.get("reasons"))]
    if rolled_back is not None and last_rollback is not None:
        why = [_text(r) for r in _list(last_rollback.get("reasons"))]
        headline = f"{rolled_back.capitalize()}: {why[0]}" if why else rolled_back.capitalize()
        parts = [f'<p class="reason">{_e(headline)}</p>']
        if len(why) > 1:
            parts.append(_details(f"{len(why) - 1} more reasons for the rollback", why[1:]))
        latest = f"latest tick ({_text(decision.get('outcome'))}): {reasons[0] if reasons else ''}"
        if len(reasons) > 1:
            parts.append(_details(latest, reasons[1:]))
        else:
            parts.append(f'<p class="latest-tick muted">{_e(latest)}</p>')
        return "".join(parts)
    parts = []
    if reasons:
        parts.append(f'<p class="reason">{_e(reasons[0])}</p>')
    if len(reasons) > 1:
        parts.append(_details(f"{len(reasons) - 1} more reasons", reasons[1:]))
    if last_rollback is not None and last_rollback.get("t") != decision.get("t"):
        why = [_text(r) for r in _list(last_rollback.get("reasons"))]
        if why:
            parts.append(_details("why the rollback was decided", why))
    return "".join(parts)


def _details(summary: str, items: Sequence[str]) -> str:
    listed = "".join(f"<li>{_e(item)}</li>" for item in items)
    return f"<details><summary>{_e(summary)}</summary><ul>{listed}</ul></details>"


def _changes(action: _Doc) -> list[str]:
    """An action's changes as "object field: before → after" lines."""
    lines = []
    for item in _list(action.get("changes")):
        change = _obj(item)
        if change is not None:
            before, after = _text(change.get("before")), _text(change.get("after"))
            lines.append(f"{_text(change.get('object'))} {_text(change.get('field'))}: {before} → {after}")
    return lines


def _gitops(action: _Doc) -> str:
    """The GitOps reconcilers of the rollback's objects: what was suspended, how to resume it, and
    the one thing people must do (revert in Git)."""
    holds = [hold for hold in (_obj(item) for item in _list(action.get("gitops"))) if hold is not None]
    if not holds:
        return ""
    lines = []
    for hold in holds:
        state = "reconciliation suspended" if hold.get("suspended") is True else "still reconciling"
        reconciles = ", ".join(_text(item) for item in _list(hold.get("reconciles")))
        lines.append(f"{_text(hold.get('object'))} ({_text(hold.get('reconciler'))}, reconciles "
                     f"{reconciles}): {state}; resume with: {_text(hold.get('resume'))}")
    step = _text(action.get("next_step")) if action.get("next_step") else REVERT_IN_GIT
    return f'<p class="gitops"><b>{_e(step)}</b></p>' + _details(f"{len(holds)} GitOps reconcilers", lines)


def _split(action: _Doc) -> str | None:
    """A canary abort's split as its router read it: "HTTPRoute shop/web: canary 20% → 0%" (only
    the first read, "canary 20%", when there is no later one, e.g. a dry-run plan)."""
    before, after = _obj(action.get("split_before")), _obj(action.get("split_after"))
    if before is None:
        return None
    text = f"{_text(before.get('source'))}: canary {_share(before.get('canary_percent'))}"
    if after is not None:
        text += f" → {_share(after.get('canary_percent'))}"
    return text


def _share(value: JsonValue) -> str:
    """A percentage as a router reads it (0..100)."""
    number = _num(value)
    return "?" if number is None else f"{number:.3g}%"


def _rollback(target: _Doc) -> str:
    """The rollback under way or done: phase, what the action changed, the verification."""
    run = _obj(target.get("rollback"))
    plan = _obj(target.get("dry_run_plan"))
    lines = []
    if run is not None:
        phase = _text(run.get("phase"))
        age = _num(run.get("age_s")) or 0.0
        lines.append(
            f'<p class="rollback"><b>Rollback {_e(phase)}</b> ({_e(_text(run.get("mode")))}, decided '
            f"{_e(human_duration(age))} ago)</p>"
        )
        waiting = _obj(run.get("waiting"))
        if waiting is not None:
            waited = _num(waiting.get("elapsed_s")) or 0.0
            lines.append(
                f'<p class="waiting-for">The action is waiting for {_e(_text(waiting.get("for")))} '
                f"(for {_e(human_duration(waited))} so far)</p>"
            )
        action = _obj(run.get("action"))
        if action is not None:
            changes = _changes(action)
            lines.append(f"<p>{_e(_text(action.get('action')))}: {_e(_text(action.get('reason')))}</p>")
            split = _split(action)
            if split is not None:
                lines.append(f'<p class="split">traffic: {_e(split)}</p>')
            if changes:
                lines.append(_details(f"{len(changes)} changes", changes))
            lines.append(_gitops(action))
        verification = _obj(run.get("verification"))
        if verification is not None:
            reasons = [_text(r) for r in _list(verification.get("reasons"))]
            status = _text(verification.get("status"))
            lines.append(f"<p><b>Verification {_e(status)}</b>: {_e(reasons[0] if reasons else '')}</p>")
        duration = _num(run.get("duration_s"))
        if duration is not None:
            within = run.get("within_runbook_target") is True
            lines.append(
                f"<p>took {_e(human_duration(duration))} from decision to verdict "
                f"({'within' if within else 'beyond'} the runbook's 10 minutes)</p>"
            )
    if plan is not None:
        changes = _changes(plan)
        split = _split(plan)
        if split is not None:
            lines.append(f'<p class="split">traffic now: {_e(split)}</p>')
        lines.append(f"<p><b>Dry-run</b>: {_e(_text(plan.get('action')))} would change:</p>")
        lines.append(_details(f"{len(changes)} planned changes", changes or ["nothing"]))
    return "".join(lines)


def _restraints(target: _Doc, *, generated_at: datetime) -> str:
    lines = [_rollback(target)]
    hold = _obj(target.get("hold"))
    if hold is not None:
        reason = _text(hold.get("reason"))
        by = _obj(hold.get("set"))
        if by is not None:
            reason = f"{reason} (set by {_text(by.get('by'))})"
        remaining = _num(hold.get("remaining_s")) or 0.0
        if hold.get("expired") is True:
            lines.append(
                f'<p class="hold expired"><b>Hold expired</b>: {_e(reason)} '
                "(a breach still there leads to a controlled rollback)</p>"
            )
        else:
            at = _clock(generated_at, remaining)
            lines.append(
                f'<p class="hold"><b>Hold</b> until {_e(at)} (in {_e(human_duration(remaining))}): '
                f"{_e(reason)}</p>"
            )
    accepted = _obj(target.get("accepted"))
    if accepted is not None:
        lines.append(
            f'<p class="hold"><b>Accepted</b> by {_e(_text(accepted.get("by")))} at '
            f'{_e(_text(accepted.get("at")))}: {_e(_text(accepted.get("reason")))} '
            "(not judged until the next revision)</p>"
        )
    lines.append(_lifetime(target))
    release = _obj(target.get("release"))
    if release is not None:
        what = _text(release.get("description")) or _text(release.get("id"))
        lines.append(
            f'<p class="release"><b>Release</b> ({_e(_text(release.get("kind")))}) started at '
            f'{_e(_text(release.get("started_at")))} by {_e(_text(release.get("who")))}: {_e(what)} '
            "(judged since then against the target's own history before it)</p>"
        )
    for key, title, meaning in (
        ("cooldown", "Cooldown", "no further automatic rollback of this target until then"),
        ("watch", "Watching after the rollback",
         "if it degrades again, rollbackd escalates and does not roll back a second time"),
    ):
        restraint = _obj(target.get(key))
        if restraint is not None:
            remaining = _num(restraint.get("remaining_s")) or 0.0
            lines.append(
                f'<p class="cooldown"><b>{title}</b> {_e(human_duration(remaining))} left (until '
                f"{_e(_clock(generated_at, remaining))}): {meaning}</p>"
            )
    return "".join(lines)


def _lifetime(target: _Doc) -> str:
    """The release judged now: since when, or how it was accepted; and how the one before ended."""
    release = _obj(target.get("lifetime"))
    if release is None:
        return ""
    revision, announced = release.get("revision"), release.get("release")
    which = (f"Release {_text(announced)}" if announced is not None
             else f"Revision {revision}" if revision is not None else "Release")
    accepted = _obj(release.get("accepted"))
    if accepted is not None:
        reason = _text(accepted.get("reason"))
        text = f"{_text(accepted.get('text'))}" + (f": {reason}" if reason else "")
        at = _text(accepted.get("at"))
        line = f"<b>{_e(which)}</b> {_e(text)}, at {_e(at)}: watched for the next release"
    else:
        judged = human_duration(_num(release.get("judged_s")) or 0.0)
        line = f"<b>{_e(which)}</b> judged for {_e(judged)} (since {_e(_text(release.get('started_at')))})"
    previous = _obj(release.get("previous"))
    if previous is not None:
        before = previous.get("revision")
        name = f"revision {_text(before)}" if before is not None else "the release before"
        line += f"; {_e(name)} {_e(_text(previous.get('text')))}"
    return f'<p class="lifetime">{line}</p>'


# --- small helpers -----------------------------------------------------------------------------


def _count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _since(now: datetime, when: JsonValue) -> float | None:
    """Seconds from the API's time ``when`` (ISO 8601, UTC) to ``now``; ``None`` without one."""
    if not isinstance(when, str):
        return None
    try:
        return (now - datetime.fromisoformat(when)).total_seconds()
    except ValueError:
        return None


def _clock(now: datetime, in_s: float) -> str:
    return (now + timedelta(seconds=in_s)).strftime("%H:%M:%S %Z").strip()


_CSS = """
:root{--bg:#f4f5f7;--card:#fff;--ink:#1d2330;--muted:#6b7280;--line:#e2e5ea;
--red:#c62828;--orange:#e67700;--purple:#7048e8;--grey:#868e96;--green:#2b8a3e}
*{box-sizing:border-box}
body{margin:0;padding:0 24px 24px;background:var(--bg);color:var(--ink);
font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
header{display:flex;flex-wrap:wrap;align-items:center;gap:12px 24px;padding:14px 0 10px}
h1{font-size:20px;margin:0}
.version{font-weight:400;color:var(--muted);font-size:14px}
.pills{display:flex;flex-wrap:wrap;gap:6px}
.pill{border:1px solid var(--line);border-radius:999px;padding:2px 10px;background:var(--card)}
.pill .k{color:var(--muted)}
.pill.ok b{color:var(--green)}.pill.muted b{color:var(--ink)}
.pill.warn{border-color:var(--orange);background:#fff4e6}.pill.warn b{color:var(--orange)}
.pill.bad{border-color:var(--red);background:#ffe3e3}.pill.bad b{color:var(--red)}
.alert{margin:6px 0;padding:8px 12px;border-radius:6px;font-weight:600}
.alert.bad{background:var(--red);color:#fff}
.alert.warn{background:#fff4e6;color:#8a4b00;border:1px solid var(--orange)}
.alert.note{background:var(--card);color:var(--ink);border:1px solid var(--line);font-weight:400}
.alert.probe ul{margin:4px 0 0 18px;padding:0;font-weight:400}
.summary{display:flex;flex-wrap:wrap;gap:16px;margin:10px 0 12px;color:var(--muted)}
.count b{font-size:16px;color:var(--ink)}.count.zero{opacity:.55}
.count.rollback:not(.zero) b{color:var(--red)}.count.waiting:not(.zero) b{color:var(--orange)}
.count.escalated:not(.zero) b{color:var(--purple)}
.empty,.muted{color:var(--muted)}
main{display:flex;flex-direction:column;gap:10px}
.target{background:var(--card);border:1px solid var(--line);border-left:6px solid var(--grey);
border-radius:6px;padding:8px 14px}
.target.rollback{border-left-color:var(--red)}.target.waiting{border-left-color:var(--orange)}
.target.escalated{border-left-color:var(--purple)}.target.inconclusive{border-left-color:var(--grey)}
.target.healthy{border-left-color:var(--green)}
.head{display:flex;align-items:baseline;gap:10px;flex-wrap:wrap}
.head h2{font-size:16px;margin:0;font-family:ui-monospace,"DejaVu Sans Mono",monospace}
.badge{text-transform:uppercase;font-weight:700;font-size:12px;letter-spacing:.03em;
padding:2px 8px;border-radius:4px;color:#fff;background:var(--grey)}
.rollback .badge{background:var(--red)}.waiting .badge{background:var(--orange)}
.escalated .badge{background:var(--purple)}.healthy .badge{background:var(--green)}
.strategy,.source{color:var(--muted)}.source{font-size:12px}.evaluated{margin-left:auto;color:var(--muted);font-size:12px}
.gitops{color:var(--purple)}
.body{display:grid;grid-template-columns:minmax(0,1fr) 680px;gap:0 28px;align-items:start}
@media (max-width:1000px){.body{grid-template-columns:minmax(0,1fr)}}
.facts{display:flex;flex-wrap:wrap;gap:2px 18px;margin:6px 0}
.facts div{display:flex;gap:5px}.facts dt{color:var(--muted)}.facts dd{margin:0;font-weight:600}
.traffic{margin:2px 0 0;color:var(--muted);font-size:12px}
.hot{color:var(--red);font-weight:700}.warm{color:var(--orange);font-weight:600}.ok{color:var(--green)}
table.findings{border-collapse:collapse;margin:0;width:100%}
.findings th{text-align:left;font-weight:500;color:var(--muted);border-bottom:1px solid var(--line);
padding:3px 10px 3px 0}
.findings td{padding:3px 10px 3px 0;border-bottom:1px solid #f0f1f3}
.findings .num{text-align:right;font-variant-numeric:tabular-nums}
.findings th,.findings td{white-space:nowrap}.findings td:last-child{white-space:normal}
table.findings{font-size:13px}
.reason{margin:4px 0 2px;font-weight:600}
details{margin:2px 0;color:var(--ink)}summary{cursor:pointer;color:var(--muted)}
details ul{margin:4px 0;padding-left:20px}details li{margin:2px 0;word-break:break-word}
.hold,.cooldown{margin:4px 0 0;padding:3px 10px;border-radius:4px;background:#f3f0ff}
.cooldown{background:#f1f3f5}.hold.expired{background:#fff4e6}
.timeline{margin:6px 0 2px}.timeline ol{margin:4px 0;padding-left:20px;max-height:260px;overflow:auto}
.timeline time{font-variant-numeric:tabular-nums;color:var(--muted)}.timeline .kind{font-weight:600}
footer{margin-top:18px;color:var(--muted);font-size:12px}
a{color:#1c7ed6}
"""
