"""Chat messages of events: what happened, to which target, why, and a link to the status page.

Pure functions, no I/O. :func:`message_of` reads an event into a :class:`Message` (a title, the
event's summary, facts such as "error rate 7.9% vs SLO 1% (baseline 0.2%)", a severity and the
status page's link); :func:`slack`, :func:`teams` and :func:`discord` lay it out as each chat's
incoming webhook takes it:

- Slack: Block Kit (a ``header``, a ``section`` with the summary and the facts as fields, a
  ``context`` with the event and the link) and a ``text`` fallback for notifications. Every outside
  string in mrkdwn is escaped (``&``, ``<``, ``>``), so a target name cannot make a link or a
  mention;
- Microsoft Teams: an Adaptive Card (1.4) in the ``message`` + ``attachments`` envelope that
  Workflows and incoming webhooks take. Every text is a plain text run (``RichTextBlock``
  ``TextRun``s are never read as markdown);
- Discord: one embed (title, description, color, fields, url, timestamp) with
  ``allowed_mentions: {parse: []}``, so no name can ping anyone; markdown characters are escaped
  and every length is cut to Discord's limits, marked with an ellipsis, never silently.

Without a status page URL (``events.status_url`` or the webhook's ``status_url``) a message has
no link rather than a wrong one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from rollbackd.events.model import (
    CloudEvent,
    DecisionMadeData,
    EscalationRaisedData,
    EventType,
    EvidenceData,
    FindingData,
    GitOpsSuspendedData,
    HoldExpiredData,
    HoldSetData,
    RollbackCompletedData,
    RollbackFailedData,
    RollbackStartedData,
    RollbackVerdictData,
    TargetDegradedData,
    VerificationData,
)

Severity = Literal["danger", "warning", "good", "info"]

#: Colors of each severity (Discord embeds take an RGB integer).
_RGB: dict[Severity, int] = {"danger": 0xD73A49, "warning": 0xE3A008, "good": 0x2DA44E, "info": 0x4C6EF5}
#: Adaptive Card text colors of each severity.
_CARD_COLOR: dict[Severity, str] = {
    "danger": "attention",
    "warning": "warning",
    "good": "good",
    "info": "accent",
}
ELLIPSIS = "…"


@dataclass(frozen=True, slots=True)
class Fact:
    """One line of a message: a short label and its value (plain text)."""

    label: str
    value: str


@dataclass(frozen=True, slots=True)
class Message:
    """An event told to people: all plain text, escaped by each layout."""

    title: str
    summary: str
    facts: tuple[Fact, ...]
    severity: Severity
    event_type: str
    event_id: str
    target: str
    time: datetime
    link: str | None


# --- reading an event -----------------------------------------------------------------------------


def percent(value: float) -> str:
    """A fraction as a short percentage: 0.079 -> ``7.9%``, 0.01 -> ``1%``."""
    return f"{value * 100:.3g}%"


def _amount(unit: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if unit == "ratio":
        return percent(value)
    if unit == "ms":
        return f"{value:.0f} ms"
    return f"{value:g}"


_SIGNAL_NAMES = {"error_rate": "error rate", "p95": "P95"}


def finding_text(finding: FindingData) -> str:
    """``error rate 7.9% vs SLO 1% (baseline 0.2%)``: a signal's value against its threshold."""
    if finding.signal == "health":
        return finding.detail or f"{_amount('', finding.value)} health endpoints failing"
    name = _SIGNAL_NAMES.get(finding.signal, finding.signal)
    text = f"{name} {_amount(finding.unit, finding.value)} vs SLO {_amount(finding.unit, finding.threshold)}"
    if finding.baseline_value is not None:
        text += f" (baseline {_amount(finding.unit, finding.baseline_value)})"
    return text


def evidence_facts(evidence: EvidenceData | None) -> list[Fact]:
    """The breached signals against their thresholds (every signal when none is breached)."""
    if evidence is None:
        return []
    findings = [f for f in evidence.findings if f.breached] or list(evidence.findings)
    facts = [Fact("Why", finding_text(f)) for f in findings]
    if not facts and evidence.reasons:
        facts.append(Fact("Why", evidence.reasons[0]))
    return facts


def verification_facts(verification: VerificationData) -> list[Fact]:
    """The rolled-back version's values against the SLO over the validation window."""
    facts = []
    slo = verification.slo
    if verification.error_rate is not None:
        against = f" vs SLO {percent(slo.max_error_rate)}" if slo is not None else ""
        facts.append(Fact("Error rate", f"{percent(verification.error_rate)}{against}"))
    if verification.p95_ms is not None:
        against = f" vs SLO {slo.max_p95_ms:.0f} ms" if slo is not None else ""
        facts.append(Fact("P95", f"{verification.p95_ms:.0f} ms{against}"))
    if verification.reasons:
        facts.append(Fact("Verdict", verification.reasons[0]))
    return facts


def _title_and_severity(event: CloudEvent) -> tuple[str, Severity]:
    data, target = event.data, event.subject
    if isinstance(data, TargetDegradedData):
        return f"{target} is degraded ({data.impact})", "danger" if data.impact == "severe" else "warning"
    if isinstance(data, DecisionMadeData):
        decision = data.decision
        if decision.rollback:
            verb = "would roll back (dry-run)" if decision.dry_run else "rolls back"
            return f"Decision: {target} {verb} ({decision.outcome})", "danger"
        if decision.escalate:
            return f"Decision: {target} needs a human ({decision.blocked_by or 'escalation'})", "danger"
        if decision.blocked_by:
            return f"Decision: no rollback of {target} ({decision.blocked_by})", "warning"
        return f"Decision: {target} {decision.outcome}", "info"
    if isinstance(data, RollbackStartedData):
        return f"Rolling back {target}", "danger"
    if isinstance(data, RollbackCompletedData):
        return f"Rolled back {target}, verifying", "warning"
    if isinstance(data, RollbackFailedData):
        return f"Rollback of {target} {'refused' if data.refused else 'failed'}", "danger"
    if isinstance(data, RollbackVerdictData):
        if event.event_type is EventType.ROLLBACK_VERIFIED:
            return f"Rolled back {target}, verified", "good"
        return f"Rollback of {target} not verified: a human is needed", "danger"
    if isinstance(data, EscalationRaisedData):
        return f"{target} needs a human ({data.cause})", "danger"
    if isinstance(data, HoldSetData):
        return f"{target} held until {data.hold.until:%Y-%m-%d %H:%M}Z ({data.hold.reason})", "info"
    if isinstance(data, HoldExpiredData):
        still = ", still breaching" if data.still_breaching else ""
        return f"Hold on {target} expired{still}", "warning" if data.still_breaching else "info"
    if isinstance(data, GitOpsSuspendedData):
        tool = "Argo CD" if data.reconciler == "argocd" else "Flux"
        return f"{tool} reconciliation of {target} suspended: revert in Git", "warning"
    return f"{event.short_type}: {target}", "info"


def _facts(event: CloudEvent) -> list[Fact]:
    data = event.data
    facts = [Fact("Target", event.subject)]
    if isinstance(data, TargetDegradedData):
        facts += evidence_facts(data.evidence)
    elif isinstance(data, DecisionMadeData):
        facts += evidence_facts(data.evidence)
        if data.decision.reasons:
            facts.append(Fact("Decision", data.decision.reasons[0]))
    elif isinstance(data, RollbackStartedData):
        facts.append(Fact("Mode", data.mode))
        if data.action:
            facts.append(Fact("Action", data.action))
        facts += evidence_facts(data.evidence) or [Fact("Why", r) for r in data.reasons[:1]]
    elif isinstance(data, RollbackCompletedData | RollbackFailedData):
        action = data.action
        facts += [Fact("Action", f"{action.action}: {action.outcome}"), Fact("What", action.reason)]
        facts.append(Fact("Took", f"{data.duration_s:.0f} s since the decision"))
        if isinstance(data, RollbackCompletedData) and data.next_step:
            facts.append(Fact("Next", data.next_step))
    elif isinstance(data, RollbackVerdictData):
        facts += verification_facts(data.verification)
        facts.append(Fact("Took", f"{data.duration_s:.0f} s since the decision"))
    elif isinstance(data, EscalationRaisedData):
        facts += [Fact("Why", reason) for reason in data.reasons[:3]]
        facts += evidence_facts(data.evidence)
        if data.sink:
            facts.append(Fact("Sink", data.sink))
    elif isinstance(data, GitOpsSuspendedData):
        facts += [
            Fact("Suspended", f"{data.object} ({data.field}, was {data.previous!r})"),
            Fact("Reconciles", ", ".join(data.reconciles) or "-"),
            Fact("Next", data.next_step),
            Fact("Resume", data.resume),
        ]
    elif isinstance(data, HoldSetData | HoldExpiredData):
        facts += [Fact("Reason", data.hold.reason), Fact("Until", f"{data.hold.until:%Y-%m-%d %H:%M:%S}Z")]
        if isinstance(data, HoldExpiredData):
            facts += evidence_facts(data.evidence)
    return facts


def message_of(event: CloudEvent, *, status_url: str | None) -> Message:
    """What a chat message says about ``event``; ``status_url`` is the link, if any."""
    title, severity = _title_and_severity(event)
    return Message(
        title=title,
        summary=event.summary,
        facts=tuple(_facts(event)),
        severity=severity,
        event_type=event.short_type,
        event_id=event.id,
        target=event.subject,
        time=event.time,
        link=status_url,
    )


# --- text helpers ---------------------------------------------------------------------------------


def cut(text: str, limit: int) -> str:
    """``text`` within ``limit`` characters, an ellipsis marking a cut."""
    return text if len(text) <= limit else text[: limit - 1] + ELLIPSIS


def slack_escape(text: str) -> str:
    """Slack's mrkdwn escaping of ``&``, ``<`` and ``>``: no link, mention or command slips in."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MARKDOWN = re.compile(r"([\\`*_~|\[\]<>#])")


def markdown_escape(text: str) -> str:
    """``text`` with the characters that start Discord markdown (emphasis, code, spoilers, links,
    mentions, quotes, headings) backslash-escaped: shown as themselves."""
    return _MARKDOWN.sub(r"\\\1", text)


def _when(message: Message) -> str:
    return f"{message.time:%Y-%m-%d %H:%M:%S}Z"


# --- Slack ----------------------------------------------------------------------------------------

#: Block Kit's limits: a header's text, a section's text, its fields and each field's text.
SLACK_HEADER_MAX = 150
SLACK_TEXT_MAX = 3000
SLACK_FIELDS_MAX = 10
SLACK_FIELD_MAX = 2000


def _mrkdwn(text: str) -> dict[str, str]:
    return {"type": "mrkdwn", "text": text}


def slack(message: Message) -> dict[str, Any]:
    """A Slack incoming-webhook body: Block Kit blocks and a ``text`` fallback."""
    fields = [
        _mrkdwn(cut(f"*{slack_escape(f.label)}*\n{slack_escape(f.value)}", SLACK_FIELD_MAX))
        for f in message.facts[:SLACK_FIELDS_MAX]
    ]
    context = [_mrkdwn(cut(f"{slack_escape(message.event_type)} · {_when(message)}", SLACK_FIELD_MAX))]
    if message.link is not None:
        context.append(_mrkdwn(f"<{slack_escape(message.link)}|Status page>"))
    section: dict[str, Any] = {
        "type": "section",
        "text": {
            "type": "mrkdwn",
            "text": cut(slack_escape(message.summary or message.title), SLACK_TEXT_MAX),
        },
    }
    if fields:
        section["fields"] = fields
    return {
        "text": cut(slack_escape(f"{message.title}: {message.summary}"), SLACK_TEXT_MAX),
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": cut(message.title, SLACK_HEADER_MAX)}},
            section,
            {"type": "context", "elements": context},
        ],
    }


# --- Microsoft Teams ------------------------------------------------------------------------------

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
ADAPTIVE_CARD_SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"
ADAPTIVE_CARD_VERSION = "1.4"


def _run(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextRun", "text": text, **style}


def teams(message: Message) -> dict[str, Any]:
    """A Teams message: an Adaptive Card in the ``message`` + ``attachments`` envelope."""
    body: list[dict[str, Any]] = [
        {
            "type": "RichTextBlock",
            "inlines": [
                _run(message.title, weight="Bolder", size="Medium", color=_CARD_COLOR[message.severity])
            ],
        },
        {"type": "RichTextBlock", "inlines": [_run(message.summary)]},
    ]
    body += [
        {"type": "RichTextBlock", "inlines": [_run(f"{fact.label}: ", weight="Bolder"), _run(fact.value)]}
        for fact in message.facts
    ]
    stamp = _run(f"{message.event_type} · {_when(message)}", isSubtle=True)
    body.append({"type": "RichTextBlock", "inlines": [stamp]})
    card: dict[str, Any] = {
        "$schema": ADAPTIVE_CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": ADAPTIVE_CARD_VERSION,
        "fallbackText": f"{message.title}: {message.summary}",
        "body": body,
    }
    if message.link is not None:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Status page", "url": message.link}]
    return {
        "type": "message",
        "attachments": [{"contentType": ADAPTIVE_CARD, "contentUrl": None, "content": card}],
    }


# --- Discord --------------------------------------------------------------------------------------

#: Discord's embed limits: title, description, fields, field name and value, footer, in all.
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4096
DISCORD_FIELDS_MAX = 25
DISCORD_FIELD_NAME_MAX = 256
DISCORD_FIELD_VALUE_MAX = 1024
DISCORD_FOOTER_MAX = 2048
DISCORD_EMBED_TOTAL_MAX = 6000


def discord(message: Message) -> dict[str, Any]:
    """A Discord webhook body: one embed, and no mention of anyone whatever the names say."""
    title = cut(message.title, DISCORD_TITLE_MAX)
    footer = cut(f"{message.event_type} · {message.event_id}", DISCORD_FOOTER_MAX)
    budget = DISCORD_EMBED_TOTAL_MAX - len(title) - len(footer)
    description = cut(markdown_escape(message.summary or message.title), min(DISCORD_DESCRIPTION_MAX, budget))
    budget -= len(description)
    fields: list[dict[str, Any]] = []
    facts: Sequence[Fact] = message.facts
    for index, fact in enumerate(facts):
        name = cut(markdown_escape(fact.label), DISCORD_FIELD_NAME_MAX)
        value = cut(markdown_escape(fact.value) or "n/a", DISCORD_FIELD_VALUE_MAX)  # never empty
        left = len(facts) - index
        room = len(fields) < DISCORD_FIELDS_MAX - (1 if left > 1 else 0)
        if not room or len(name) + len(value) > budget - 40:
            note = f"{left} more not shown"
            fields.append({"name": "…", "value": note, "inline": False})
            budget -= 1 + len(note)
            break
        fields.append({"name": name, "value": value, "inline": len(value) <= 40})
        budget -= len(name) + len(value)
    embed: dict[str, Any] = {
        "title": title,
        "description": description,
        "color": _RGB[message.severity],
        "fields": fields,
        "timestamp": message.time.isoformat(),
        "footer": {"text": footer},
    }
    if message.link is not None:
        embed["url"] = message.link
    return {"embeds": [embed], "allowed_mentions": {"parse": []}}


#: The chat layouts by webhook format.
LAYOUTS = {"slack": slack, "teams": teams, "discord": discord}
