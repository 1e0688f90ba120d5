"""A feature flag behind the application's admin API (the runbook's ``POST /api/admin/features``
with a bearer token and ``{"feature_name": ..., "enabled": false}``).

One request from a template turns the flag off: method, URL, headers, the bearer token read from
its file (a mounted Secret) for every request so a rotated token is used at once, and a JSON body
in which ``"{flag}"`` is the flag's name. The answer's status says whether it worked; with
``read``, a GET reads the flag back before (off already: nothing to do) and after (still on:
failed). 401, 403, 404 and other 4xx answers are permanent; 5xx, 429, timeouts and connection
errors temporary. The token never appears in a message.

The JSON path of ``read`` is a dot-separated list of keys and list indexes (``features.0.enabled``),
looked up by hand: a JSONPath library for one lookup of a few keys was not worth its weight.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp

from rollbackd.actions.flagstore import FlagFlip, PermanentFlagError, TemporaryFlagError, is_off
from rollbackd.config.settings import FLAG_PLACEHOLDER, FlagHttpStore

#: Most bytes of an answer quoted in a message.
QUOTED_BYTES = 200


def fill(value: Any, flag: str) -> Any:
    """``value`` (a JSON value of the template) with ``{flag}`` replaced by ``flag`` in every text."""
    if isinstance(value, str):
        return value.replace(FLAG_PLACEHOLDER, flag)
    if isinstance(value, dict):
        return {fill(key, flag): fill(item, flag) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, flag) for item in value]
    return value


def at_path(document: Any, path: str) -> Any:
    """The value at the dot-separated ``path`` of ``document``; :class:`KeyError` naming the
    missing step."""
    found = document
    for step in path.split("."):
        if isinstance(found, dict) and step in found:
            found = found[step]
        elif isinstance(found, list) and step.isdigit() and int(step) < len(found):
            found = found[int(step)]
        else:
            raise KeyError(step)
    return found


class HttpFlag:
    """The flag ``flag`` behind the admin API ``settings`` describe."""

    kind = "http"

    def __init__(self, settings: FlagHttpStore, *, flag: str) -> None:
        self._settings = settings
        self._flag = flag
        self.where = settings.method + " " + fill(settings.url, flag)
        self.readable = settings.read is not None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", **self._settings.headers}
        path = self._settings.token_file
        if path is not None:
            try:
                token = Path(path).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not a UTF-8 text"
                raise PermanentFlagError(
                    f"cannot read the flag API's token file {path}: {why} (flag.store.token_file)"
                ) from None
            if not token:
                raise PermanentFlagError(f"the flag API's token file {path} is empty (flag.store.token_file)")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def _request(self, method: str, url: str, body: Any = None) -> tuple[int, str]:
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.request(method, url, json=body, headers=self._headers()) as response,
            ):
                return response.status, await response.text(errors="replace")
        except TimeoutError:
            raise TemporaryFlagError(
                f"{method} {url}: no answer within {self._settings.timeout_s:g}s"
            ) from None
        except aiohttp.ClientError as exc:
            raise TemporaryFlagError(f"{method} {url}: {type(exc).__name__}: {exc}") from None

    @staticmethod
    def _refused(method: str, url: str, status: int, text: str) -> TemporaryFlagError | PermanentFlagError:
        quoted = " ".join(text[:QUOTED_BYTES].split())
        hint = {
            401: "the token was refused: check the Secret behind flag.store.token_file",
            403: "the token may not change flags: check its permissions",
            404: "no such endpoint or flag: check flag.store.url and flag.name",
        }.get(status, "")
        message = f"{method} {url} answered {status}" + (f": {quoted}" if quoted else "")
        if hint:
            message += f" ({hint})"
        if status >= 500 or status == 429:
            return TemporaryFlagError(message)
        return PermanentFlagError(message)

    async def read(self) -> Any:
        read = self._settings.read
        if read is None:
            raise PermanentFlagError("the flag cannot be read back: flag.store.read is not configured")
        url, path = fill(read.url, self._flag), fill(read.json_path, self._flag)
        status, text = await self._request("GET", url)
        if status != 200:
            raise self._refused("GET", url, status, text)
        try:
            return at_path(json.loads(text), path)
        except ValueError:
            raise PermanentFlagError(f"GET {url} answered something that is not JSON") from None
        except KeyError as exc:
            raise PermanentFlagError(
                f"GET {url}: no {exc.args[0]!r} on the way to {path} in the answer "
                "(flag.store.read.json_path)"
            ) from None

    async def turn_off(self) -> FlagFlip:
        before = None
        if self.readable:
            before = await self.read()
            if is_off(before):
                return FlagFlip(before=before, after=before, changed=False)
        settings = self._settings
        url = fill(settings.url, self._flag)
        status, text = await self._request(settings.method, url, fill(settings.body, self._flag))
        if status not in settings.success_statuses:
            raise self._refused(settings.method, url, status, text)
        if not self.readable:
            return FlagFlip(before=None, after=None, changed=True)
        after = await self.read()
        if not is_off(after):
            raise PermanentFlagError(
                f"{settings.method} {url} answered {status}, but the flag still reads {after!r} "
                f"({fill(settings.read.json_path, self._flag) if settings.read else ''})"
            )
        return FlagFlip(before=before, after=after, changed=True)
