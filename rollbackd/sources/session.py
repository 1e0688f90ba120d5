"""An object that owns one aiohttp session: opened by its ``__aenter__``, closed on leaving
``async with``."""

from __future__ import annotations

import aiohttp


class OwnsSession:
    """Closes ``_session`` (set by the subclass's ``__aenter__``) when ``async with`` ends."""

    _session: aiohttp.ClientSession | None

    async def __aexit__(self, *exc_info: object) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
