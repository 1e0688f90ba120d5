"""A release announced from outside: "something changed at time T that can be undone".

A pipeline (or the configuration watcher) says that a feature flag was turned on, a configuration
change applied, a command run: :class:`Release` is that statement, a frozen value with no I/O. The
daemon judges the target from ``started_at`` on against its own history before it (see
:meth:`rollbackd.detectors.judge.Judge.released`); the store keeps every release (its ``id`` is
the idempotency key: the same id announced twice is one release).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: The release kinds rollbackd knows a lever for, or shows as they are; any other short lowercase
#: word is accepted too (a free-ish enum: a pipeline's own kind is shown as it is).
KNOWN_KINDS = ("flag", "config", "command", "deployment", "other")

#: What a kind looks like: a lowercase word, digits and dashes, at most 32 characters.
KIND_PATTERN = re.compile(r"[a-z][a-z0-9-]{0,31}")
#: What an id looks like: up to 200 printable characters without spaces.
ID_PATTERN = re.compile(r"[!-~]{1,200}")

MAX_DESCRIPTION_CHARS = 1000


class ReleaseError(ValueError):
    """A release that cannot be taken as it is; the message names the field and what it accepts."""


def new_release_id() -> str:
    """An id for a release announced without one."""
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class Release:
    """One announced release of ``target`` (``namespace/name``).

    ``started_at`` is when the change took effect (wall clock, UTC); ``details`` what changed
    (a flag's name, a configuration change's id, ...); ``who`` who announced it (the API token's
    name, or the component that saw the change).
    """

    id: str
    target: str
    kind: str
    started_at: datetime
    description: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    who: str = "unknown"

    def __post_init__(self) -> None:
        if not ID_PATTERN.fullmatch(self.id):
            raise ReleaseError("id must be 1 to 200 printable characters without spaces")
        namespace, sep, name = self.target.partition("/")
        if not sep or not namespace or not name or "/" in name:
            raise ReleaseError(f"target must be namespace/name, not {self.target!r}")
        if not KIND_PATTERN.fullmatch(self.kind):
            raise ReleaseError(
                f"kind must be a lowercase word (like {', '.join(KNOWN_KINDS)}), not {self.kind!r}"
            )
        if len(self.description) > MAX_DESCRIPTION_CHARS:
            raise ReleaseError(f"description must be at most {MAX_DESCRIPTION_CHARS} characters")
        if self.started_at.tzinfo is None or self.started_at.utcoffset() is None:
            raise ReleaseError("started_at must carry a timezone (like 2026-12-06T17:03:12Z)")
        object.__setattr__(self, "started_at", self.started_at.astimezone(UTC))
        object.__setattr__(self, "details", dict(self.details))

    def to_json(self) -> dict[str, Any]:
        """The release as the API and the events show it."""
        return {
            "id": self.id,
            "target": self.target,
            "kind": self.kind,
            "description": self.description,
            "started_at": self.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "details": dict(self.details),
            "who": self.who,
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any], *, who: str | None = None) -> Release:
        """The release ``value`` describes (an API body or a stored document): ``id`` (default: a
        new one), ``target``, ``kind``, ``description``, ``started_at`` (default: now), ``details``;
        ``who`` wins over the document's own. :class:`ReleaseError` naming the field otherwise."""
        release_id = value.get("id", None)
        if release_id is None:
            release_id = new_release_id()
        target, kind = value.get("target"), value.get("kind", "other")
        description, details = value.get("description", ""), value.get("details", {})
        texts = (("id", release_id), ("target", target), ("kind", kind), ("description", description))
        for name, got in texts:
            if not isinstance(got, str):
                raise ReleaseError(f"{name} must be a text")
        if not isinstance(details, Mapping):
            raise ReleaseError('details must be a JSON object like {"flag": "new_checkout"}')
        started = value.get("started_at")
        if started is None:
            started_at = datetime.now(UTC)
        elif isinstance(started, datetime):
            started_at = started
        elif isinstance(started, str):
            try:
                started_at = datetime.fromisoformat(started)
            except ValueError:
                raise ReleaseError(
                    f"started_at must be an ISO 8601 time with a timezone (like 2026-12-06T17:03:12Z), "
                    f"not {started!r}"
                ) from None
        else:
            raise ReleaseError("started_at must be an ISO 8601 time (like 2026-12-06T17:03:12Z)")
        by = who if who is not None else value.get("who", "unknown")
        return cls(
            id=str(release_id),
            target=str(target),
            kind=str(kind),
            description=str(description),
            started_at=started_at,
            details=dict(details),
            who=str(by),
        )
