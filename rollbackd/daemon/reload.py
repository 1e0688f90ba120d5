"""Configuration reload without a restart: the mounted file is watched, a valid change is applied,
an invalid one is refused and the running configuration stays.

:class:`ConfigWatcher` polls the file every ``poll_s`` (0.5 s by default) on the event-loop clock
and hashes its content. Polling, not inotify: a Kubernetes ConfigMap volume changes by swapping
the ``..data`` symlink to a new directory, which change notifications on the file's own path miss;
reading through the path (symlinks resolved) and hashing what is there sees every change, whatever
the mechanism. The read and the validation run in a worker thread, off the event loop.

A reload must say which targets to watch: a file without a ``targets`` key (emptied, or cut short
by a faulty deploy) is refused while targets are running, since applying it would stop watching
all of them; ``targets: []`` says so explicitly and is applied.

What a reload changes at once (:data:`HOT_SECTIONS`): ``targets`` (added, removed, changed),
``defaults`` (SLOs, severity, detection, policy, queries) and the ``safety`` switches (only when
the file changed them: a freeze set through the API is not undone by an unrelated edit). A
changed target gets a new evaluator that judges the observations already in its windows again with
the new parameters; unchanged targets keep their state as it is. Every other section (the
interval, connections, the HTTP listener, the store, events, leader election, API access) is kept
as it was started and the change is logged as needing a restart.

Each applied change is logged at WARNING with a summary (target keys, the parameters that changed
with old and new values, section names; never other values, which may be secrets). A refused one
is logged at ERROR with every problem's file, line and key (see
:class:`~rollbackd.config.loader.ConfigError`) and handed to ``refused`` (the daemon audits it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from rollbackd.aiotasks import poll_forever, stop_tasks
from rollbackd.config.loader import ConfigError, Problem
from rollbackd.config.resolve import target_params
from rollbackd.config.settings import Settings, TargetSettings
from rollbackd.sources.targets import source_target

logger = logging.getLogger(__name__)

#: Top-level sections a reload applies at once; a change anywhere else needs a restart.
HOT_SECTIONS = frozenset({"targets", "defaults", "safety"})

#: Default pause between two looks at the file, in seconds.
DEFAULT_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class SettingsChange:
    """What a reload changes.

    ``added`` / ``removed``: target keys; ``changed``: target key -> what changed (``"slo.max_error_rate:
    0.01 -> 0.005"``, or a setting's name for values not shown); ``switches``: safety switches the
    file flipped; ``restart_required``: sections that changed but apply only after a restart.
    """

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    switches: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()

    @property
    def applied(self) -> bool:
        """Whether anything changes at once."""
        return bool(self.added or self.removed or self.changed or self.switches)

    @property
    def empty(self) -> bool:
        return not self.applied and not self.restart_required

    def details(self) -> dict[str, Any]:
        """The change as JSON-ready lists and objects, for log lines and audit records."""
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": {key: list(what) for key, what in self.changed.items()},
            "switches": list(self.switches),
            "restart_required": list(self.restart_required),
        }

    def summary(self) -> str:
        parts: list[str] = []
        if self.added:
            parts.append(f"targets added: {', '.join(self.added)}")
        if self.removed:
            parts.append(f"targets removed: {', '.join(self.removed)}")
        for key, what in self.changed.items():
            parts.append(f"{key} changed: {'; '.join(what)}")
        if self.switches:
            parts.append(f"switches: {', '.join(self.switches)}")
        if self.restart_required:
            parts.append(f"needs a restart to take effect: {', '.join(self.restart_required)}")
        return "; ".join(parts) if parts else "no setting changed"


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A frozen dataclass as ``{"slo.max_error_rate": 0.01, ...}``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for item in dataclasses.fields(value):
            out.update(_flat(getattr(value, item.name), f"{prefix}{item.name}."))
        return out
    return {prefix.rstrip("."): value}


def _shown(value: Any) -> str:
    if isinstance(value, enum.Enum):
        return str(value.value)
    return repr(value) if isinstance(value, str) else str(value)


def _target_changes(
    old: Settings, new: Settings, before: TargetSettings, after: TargetSettings
) -> tuple[str, ...]:
    """What differs for one target: resolved parameters with their values (numbers, switches and
    enums only), then the names of other differing settings (queries, series, health URLs,
    Kubernetes object names), whose values are not shown."""
    what: list[str] = []
    params_before, params_after = _flat(target_params(old, before)), _flat(target_params(new, after))
    for key, value in params_after.items():
        if params_before.get(key) != value:
            what.append(f"{key}: {_shown(params_before.get(key))} -> {_shown(value)}")
    source_before = source_target(old, before)
    source_after = source_target(new, after)
    for item in dataclasses.fields(source_after):
        if getattr(source_before, item.name) != getattr(source_after, item.name):
            what.append(f"{item.name} changed")
    dumped_before, dumped_after = before.model_dump(), after.model_dump()
    for name in ("strategy", "baseline", "candidate", "ingress", "service", "command", "config"):
        if dumped_before.get(name) != dumped_after.get(name) and f"{name} changed" not in what:
            what.append(f"{name} changed")
    return tuple(what)


def plan_reload(old: Settings, new: Settings) -> tuple[Settings, SettingsChange]:
    """The settings to run with after a reload from ``old`` to ``new``, and what that changes.

    The result is ``new`` with every section outside :data:`HOT_SECTIONS` kept from ``old``."""
    restart = tuple(
        name
        for name in type(new).model_fields
        if name not in HOT_SECTIONS and getattr(old, name) != getattr(new, name)
    )
    effective = new.model_copy(update={name: getattr(old, name) for name in restart})
    before = {target.key: target for target in old.targets}
    after = {target.key: target for target in effective.targets}
    changed: dict[str, tuple[str, ...]] = {}
    for key, target in after.items():
        if key in before:
            what = _target_changes(old, effective, before[key], target)
            if what or before[key] != target:
                changed[key] = what or ("settings changed",)
    switches = tuple(
        f"safety.{name}: {str(getattr(old.safety, name)).lower()} -> {str(getattr(new.safety, name)).lower()}"
        for name in ("freeze", "dry_run")
        if getattr(old.safety, name) != getattr(new.safety, name)
    )
    change = SettingsChange(
        added=tuple(key for key in after if key not in before),
        removed=tuple(key for key in before if key not in after),
        changed=changed,
        switches=switches,
        restart_required=restart,
    )
    return effective, change


def targets_problem(path: Path, old: Settings, new: Settings) -> Problem | None:
    """Why ``new`` (loaded from ``path``) may not replace ``old``: it lists no ``targets`` at all
    while ``old`` has some. ``None`` when it may."""
    if "targets" in new.model_fields_set or not old.targets:
        return None
    count = len(old.targets)
    return Problem(
        str(path),
        f"no 'targets' key: applying the file would stop watching all {count} target"
        f"{'' if count == 1 else 's'}; list them, or write 'targets: []' to stop watching every target",
    )


def _fingerprint(path: Path) -> str:
    """The SHA-256 of what is at ``path`` now, symlinks followed (a ConfigMap's ``..data`` swap
    included)."""
    return hashlib.sha256(path.resolve(strict=True).read_bytes()).hexdigest()


class ConfigWatcher:
    """Watches the configuration file and applies its valid changes.

    Keyword arguments:

    - ``path``: the configuration file (as mounted: symlinks are followed on every look);
    - ``load``: reads and validates the file (``load_settings(path, environ=...)``); raises
      :class:`~rollbackd.config.loader.ConfigError` for an invalid one;
    - ``apply``: hands valid new settings to the daemon and returns what changed
      (:meth:`~rollbackd.daemon.app.Daemon.apply_settings`);
    - ``current``: the settings running now (a file without ``targets`` is refused while they
      have targets);
    - ``refused``: told of every refused change (:meth:`~rollbackd.daemon.app.Daemon.refuse_settings`);
    - ``poll_s``: pause between two looks at the file.

    ``async with`` reads the file's current content as the baseline and starts the polling task
    (``rollbackd:config-watcher``); leaving the block stops it. :attr:`reloads` and
    :attr:`rejections` count the outcomes; :attr:`last_apply_s` is how long the latest change
    took from being seen to being applied.
    """

    def __init__(
        self,
        *,
        path: Path,
        load: Callable[[], Settings],
        apply: Callable[[Settings], SettingsChange],
        current: Callable[[], Settings],
        refused: Callable[[ConfigError], None] | None = None,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        if not poll_s > 0:
            raise ValueError(f"poll_s must be positive, not {poll_s!r}")
        self.path = path
        self._load = load
        self._apply = apply
        self._current = current
        self._refused = refused
        self.poll_s = poll_s
        self._seen: str | None = None
        self._unreadable: str | None = None
        self._task: asyncio.Task[None] | None = None
        self.reloads = 0
        self.rejections = 0
        self.last_apply_s: float | None = None

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("a ConfigWatcher can be entered only once at a time")
        try:
            self._seen = await asyncio.to_thread(_fingerprint, self.path)
        except OSError as exc:
            self._unreadable = str(exc)
            logger.warning(
                "cannot read the configuration file to watch it: %s", exc, extra={"config": str(self.path)}
            )
        self._task = asyncio.create_task(self._run(), name="rollbackd:config-watcher")
        logger.info(
            "watching the configuration file", extra={"config": str(self.path), "poll_s": self.poll_s}
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        task, self._task = self._task, None
        await stop_tasks([task])

    async def _run(self) -> None:
        # A defect of one check is logged and must not end the watching (nor the daemon).
        await poll_forever(
            self.check, every_s=lambda: self.poll_s, what=f"the configuration file {self.path}"
        )

    async def check(self) -> SettingsChange | None:
        """Look at the file once; load and apply it if its content changed. Returns the change
        applied, ``None`` if the content is the same, unreadable or invalid."""
        loop = asyncio.get_running_loop()
        try:
            fingerprint = await asyncio.to_thread(_fingerprint, self.path)
        except OSError as exc:
            if str(exc) != self._unreadable:
                logger.warning(
                    "cannot read the configuration file; still running the current configuration: %s",
                    exc,
                    extra={"config": str(self.path)},
                )
            self._unreadable = str(exc)
            return None
        self._unreadable = None
        if fingerprint == self._seen:
            return None
        self._seen = fingerprint
        seen_at = loop.time()
        try:
            settings = await asyncio.to_thread(self._load)
            problem = targets_problem(self.path, self._current(), settings)
            if problem is not None:
                raise ConfigError([problem])
        except ConfigError as exc:
            self.rejections += 1
            logger.error(
                "configuration change refused; still running the previous configuration: %s",
                "; ".join(str(problem) for problem in exc.problems),
                extra={"config": str(self.path), "problems": [str(problem) for problem in exc.problems]},
            )
            if self._refused is not None:
                self._refused(exc)
            return None
        change = self._apply(settings)
        self.reloads += 1
        self.last_apply_s = loop.time() - seen_at
        fields = {"config": str(self.path), **change.details(), "apply_s": round(self.last_apply_s, 4)}
        if change.empty:
            logger.info("configuration file changed; no setting changed", extra=fields)
        else:
            logger.warning("configuration reloaded: %s", change.summary(), extra=fields)
        return change
