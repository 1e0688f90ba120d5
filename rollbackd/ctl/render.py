"""The operator commands' output: the daemon's JSON documents as a table, JSON or YAML.

Pure functions from documents to text; ``json`` and ``yaml`` print the document the API answered,
unchanged, so that scripts read the same fields as the API reference describes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

FORMATS = ("table", "json", "yaml")


def as_json(document: Any) -> str:
    return json.dumps(document, indent=2, ensure_ascii=False)


def as_yaml(document: Any) -> str:
    return str(
        yaml.safe_dump(document, sort_keys=False, allow_unicode=True, default_flow_style=False)
    ).rstrip()


def render(document: Any, output: str, table: Any) -> str:
    """``document`` in the ``output`` format; ``table`` is called for ``table``."""
    if output == "json":
        return as_json(document)
    if output == "yaml":
        return as_yaml(document)
    return str(table(document))


def duration(seconds: object) -> str:
    """``seconds`` as a short duration: 45s, 12m, 1h30m, 2d3h."""
    if not isinstance(seconds, int | float) or seconds != seconds:
        return "-"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m{secs}s" if secs and minutes < 10 else f"{minutes}m"
    return f"{secs}s"


def columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned table, two spaces between columns, like kubectl's."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [
        "  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False)).rstrip()
        for row in (header, *rows)
    ]
    return "\n".join(lines)


def on_off(value: object) -> str:
    return "on" if value is True else "off" if value is False else "-"


#: The keys of the switches' document (who set each, and whom a write applies to, when the daemon says).
SWITCH_KEYS = frozenset({"freeze", "dry_run", "freeze_set", "dry_run_set", "switches_kept_in", "applies"})


def switches_line(document: Mapping[str, Any]) -> str:
    """The global switches: ``freeze: off   dry-run: on``, then who set each and where the
    switches are kept (when the daemon says)."""
    lines = [f"freeze: {on_off(document.get('freeze'))}   dry-run: {on_off(document.get('dry_run'))}"]
    for key, name in (("freeze_set", "freeze"), ("dry_run_set", "dry-run")):
        lines.extend(f"{name} {text}" for text in [_who(document.get(key))] if text)
    kept_in = document.get("switches_kept_in")
    if isinstance(kept_in, str) and kept_in:
        lines.append(f"switches kept in {_one_line(kept_in)}")
    return "\n".join(lines)


def _who(setting: object) -> str:
    """``set by NAME at TIME: REASON`` of a switch the daemon reports as set through its API."""
    if not isinstance(setting, Mapping):
        return ""
    text = f"set by {setting.get('by', '?')}"
    if setting.get("at"):
        text += f" at {setting['at']}"
    if setting.get("reason"):
        text += f": {_one_line(setting['reason'])}"
    return text


def _applies(document: Mapping[str, Any]) -> str:
    applies = document.get("applies")
    return f"\napplies: {_one_line(applies)}" if isinstance(applies, str) and applies else ""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _decision(target: Mapping[str, Any]) -> str:
    decision = target.get("decision")
    if not isinstance(decision, Mapping):
        return "-"
    outcome = str(decision.get("outcome", "-"))
    if decision.get("dry_run"):
        outcome += " (dry-run)"
    return outcome


def _rollback(target: Mapping[str, Any]) -> str:
    run = target.get("rollback")
    if not isinstance(run, Mapping):
        return "-"
    phase = str(run.get("phase", "-"))
    return f"{phase} ({duration(run.get('age_s'))} ago)"


def _hold(target: Mapping[str, Any]) -> str:
    hold = target.get("hold")
    if not isinstance(hold, Mapping):
        return "-"
    if hold.get("expired"):
        return "expired"
    return f"{duration(hold.get('remaining_s'))} left"


def _cooldown(target: Mapping[str, Any]) -> str:
    cooldown = target.get("cooldown")
    if not isinstance(cooldown, Mapping):
        return "-"
    return f"{duration(cooldown.get('remaining_s'))} left"


def targets_table(document: Mapping[str, Any]) -> str:
    """``rollbackd status``: the switches, then one row per target."""
    targets = document.get("targets")
    rows = [
        [
            str(key),
            str(target.get("strategy", "-")),
            _decision(target),
            _rollback(target),
            _hold(target),
            _cooldown(target),
        ]
        for key, target in (targets.items() if isinstance(targets, Mapping) else ())
        if isinstance(target, Mapping)
    ]
    table = columns(["TARGET", "STRATEGY", "DECISION", "ROLLBACK", "HOLD", "COOLDOWN"], rows)
    if not rows:
        table += "\n(no targets: the daemon watches nothing; add some under 'targets:' in its configuration)"
    return switches_line(document) + "\n\n" + table


def target_table(target: Mapping[str, Any]) -> str:
    """``rollbackd status TARGET``: the target's state, one field a line, then the reasons."""
    lines = [
        ("target", str(target.get("key", "-"))),
        ("strategy", str(target.get("strategy", "-"))),
        ("decision", _decision(target)),
        ("rollback", _rollback(target)),
        ("hold", _hold(target)),
        ("cooldown", _cooldown(target)),
    ]
    hold = target.get("hold")
    if isinstance(hold, Mapping) and hold.get("reason"):
        lines.append(("hold reason", _one_line(hold["reason"])))
    accepted = target.get("accepted")
    if isinstance(accepted, Mapping):
        revision = f"revision {accepted['revision']}, " if accepted.get("revision") is not None else ""
        lines.append(("accepted", f"{revision}{_who(accepted)}"))
    lifetime = target.get("lifetime")
    if isinstance(lifetime, Mapping):
        lines.append(("judged", _lifetime(lifetime)))
    run = target.get("rollback")
    if isinstance(run, Mapping) and isinstance(run.get("verification"), Mapping):
        lines.append(("verification", str(run["verification"].get("status", "-"))))
    width = max(len(name) for name, _ in lines)
    text = "\n".join(f"{name + ':':<{width + 1}} {value}" for name, value in lines)
    decision = target.get("decision")
    reasons = decision.get("reasons") if isinstance(decision, Mapping) else None
    if isinstance(reasons, Sequence) and not isinstance(reasons, str) and reasons:
        text += "\nreasons:\n" + "\n".join(f"  - {_one_line(reason)}" for reason in reasons)
    return text


def _lifetime(release: Mapping[str, Any]) -> str:
    """``revision 7, accepted after 1h (revision 6 superseded by revision 7)``."""
    which = (
        f"release {release['release']}" if release.get("release") is not None
        else f"revision {release['revision']}" if release.get("revision") is not None else "this release"
    )
    accepted = release.get("accepted")
    text = f"{which}, {accepted.get('text')}" if isinstance(accepted, Mapping) else f"{which}, judged"
    previous = release.get("previous")
    if isinstance(previous, Mapping):
        before = previous.get("revision")
        name = f"revision {before}" if before is not None else "the release before"
        text += f" ({name} {previous.get('text')})"
    return text


def history_table(document: Mapping[str, Any]) -> str:
    """``rollbackd history``: time (UTC), target, kind, summary; one entry a line, oldest first."""
    entries = document.get("entries")
    rows = [
        [
            str(entry.get("at") or "-"),
            str(entry.get("target") or "-"),
            str(entry.get("kind", "-")),
            _one_line(entry.get("summary", "")),
        ]
        for entry in (entries if isinstance(entries, Sequence) else ())
        if isinstance(entry, Mapping)
    ]
    if not rows:
        return "(no audit entries)"
    return columns(["TIME", "TARGET", "KIND", "SUMMARY"], rows)


def accepted_table(document: Any) -> str:
    """What a write answered that is not a target nor the switches (a rollback's run id, ...)."""
    if not isinstance(document, Mapping):
        return _one_line(document)
    if "targets" in document:
        return targets_table(document)
    if "key" in document and "strategy" in document:
        return target_table(document) + _applies(document)
    if set(document) <= SWITCH_KEYS:
        return switches_line(document) + _applies(document)
    if "run_id" in document:
        requested = f"rollback of {document.get('target', '?')} requested: run {document['run_id']}"
        return requested + _applies(document)
    return "\n".join(f"{key}: {_one_line(value)}" for key, value in document.items())


def release_table(document: Any) -> str:
    """The answer of ``release start``: the release, and whether it is new."""
    if not isinstance(document, Mapping) or not isinstance(document.get("release"), Mapping):
        return accepted_table(document)
    release = document["release"]
    verb = "announced" if document.get("created") else "already announced (same id): nothing changed"
    lines = [
        f"release {release.get('id')} of {release.get('target')} {verb}",
        f"kind: {release.get('kind')}, started at {release.get('started_at')} by {release.get('who')}",
    ]
    if release.get("description"):
        lines.append(f"description: {release.get('description')}")
    return "\n".join(lines) + _applies(document)
