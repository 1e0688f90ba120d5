"""Announced releases shared by replicas that do not share a store: kept in the switches'
ConfigMap (:mod:`rollbackd.daemon.switchmap`), beside the switches.

With the embedded SQLite store each replica has its own file, so a release announced to a standby
(or to a leader that then fails over) would never reach the replica that judges the target. The
releases go where the switches go (``safety.switches``: the ConfigMap when the store is not shared
and Kubernetes is reachable), and every replica reads them back (:class:`~rollbackd.daemon.releases.
ReleaseBook`, at once when the ConfigMap's watch sees a change, else every poll).

**Keys and values.** One key per target, ``release.<namespace>.<name>``, holding a JSON list of
its latest releases (each as ``POST /api/v1/releases`` answers it), oldest first.

**Bounded.** Only each target's :data:`KEEP_PER_TARGET` latest releases (by ``started_at``) are
kept: the judge needs only the latest, and a ConfigMap holds at most 1 MiB. Each replica keeps
every release it read in its own store (history, ``GET /api/v1/releases``).

**Idempotent by id.** A release whose id the target's key holds already is not written again: the
one stored is returned (so a pipeline retrying its announcement to another replica gets the same
release back).

**Conflict-safe.** A write reads the ConfigMap, changes the target's key and replaces it with the
``resourceVersion`` read; a 409 (another replica wrote in between) reads it again and adds the
release to what is there now (:meth:`~rollbackd.daemon.switchmap.ConfigMapSwitches.update`).
"""

from __future__ import annotations

import json
import logging

from rollbackd.daemon.switchmap import ConfigMapSwitches, listed
from rollbackd.daemon.switchstores import SwitchStoreError
from rollbackd.releases import Release, ReleaseError
from rollbackd.store.base import TemporaryStoreError

logger = logging.getLogger(__name__)

#: How many releases of each target the ConfigMap keeps: the latest ones, by ``started_at``.
KEEP_PER_TARGET = 5

#: The ConfigMap keys of the releases start with this.
PREFIX = "release."


def release_key(target: str) -> str:
    """The ConfigMap key of ``target``'s releases: ``shop/checkout`` -> ``release.shop.checkout``."""
    return PREFIX + target.replace("/", ".")


class ConfigMapReleases:
    """The announced releases in the ConfigMap of ``configmap`` (open; the caller owns its client)."""

    def __init__(self, configmap: ConfigMapSwitches, *, keep: int = KEEP_PER_TARGET) -> None:
        self._configmap = configmap
        self.where = configmap.where
        self.keep = keep

    async def add(self, release: Release) -> tuple[Release, bool]:
        """Keep ``release`` (unless its id is kept already: then that one is returned); whether
        this call kept it. :class:`~rollbackd.store.base.TemporaryStoreError` when the ConfigMap
        could not be written (nothing is kept)."""
        known: list[Release] = []
        release = Release.from_json(release.to_json())  # as every replica reads it (milliseconds)

        def added(text: str | None) -> str | None:
            kept = _decoded(text, key=release_key(release.target))
            known[:] = [earlier for earlier in kept if earlier.id == release.id]
            if known:
                return text
            newest = sorted([*kept, release], key=lambda r: (r.started_at, r.id))[-self.keep:]
            return json.dumps([r.to_json() for r in newest], sort_keys=True, separators=(",", ":"))

        try:
            await self._configmap.update(release_key(release.target), added)
        except SwitchStoreError as exc:
            raise TemporaryStoreError(
                f"the release could not be shared with the other replicas: {exc}"
            ) from exc
        return (known[0], False) if known else (release, True)

    async def read(self) -> list[Release]:
        """Every release kept, oldest first. :class:`~rollbackd.store.base.TemporaryStoreError`
        when the ConfigMap could not be read."""
        try:
            data = await self._configmap.data()
        except SwitchStoreError as exc:
            raise TemporaryStoreError(str(exc)) from exc
        found = [
            release for key, text in data.items() if key.startswith(PREFIX)
            for release in _decoded(text, key=key)
        ]
        return sorted(found, key=lambda r: (r.started_at, r.id))


def _decoded(text: str | None, *, key: str) -> list[Release]:
    """The releases a key's text holds; what cannot be read is left out (and logged)."""
    releases = []
    for document in listed(text, key=key, what="releases"):
        try:
            if not isinstance(document, dict):
                raise ReleaseError("not a JSON object")
            releases.append(Release.from_json(document))
        except ReleaseError as exc:
            logger.error("a release kept under the ConfigMap key %s cannot be read, ignored: %s", key, exc)
    return releases
