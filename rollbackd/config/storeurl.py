"""Reading ``store.url`` the way libpq does, and showing it without its secrets.

``store.url`` takes one of these forms:

- nothing: the SQLite file ``<data_dir>/rollbackd.db``;
- ``sqlite:///abs/path.db`` or ``sqlite://relative/path.db``: an SQLite file;
- ``postgresql://...`` or ``postgres://...`` (a libpq connection URI), or a libpq ``key=value``
  connection string (any text holding ``=``, as libpq decides): PostgreSQL;
- a plain file path (no ``=``, no ``@``, no ``://``): an SQLite file, relative to ``data_dir``.

PostgreSQL forms are parsed by libpq itself (``psycopg.conninfo.conninfo_to_dict``), so the
password found is the one libpq will send, whatever it holds (``?``, ``#``, ``@``, quotes,
non-ASCII). Whatever is refused is refused with a message that never echoes the value: libpq's
own parse errors quote parts of it, so they are not passed on. ``password`` and ``sslpassword``
are the secrets; every description replaces them by ``***``, and :meth:`StoreUrl.scrub` removes
them from any other text (a driver's error message).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, unquote

__all__ = ["SECRET_KEYS", "DsnError", "StoreUrl", "parse_store_url", "redact_url", "store_kind"]

#: libpq parameters whose values are secrets.
SECRET_KEYS = ("password", "sslpassword")

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")
_SQLITE_SCHEME = "sqlite://"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HIDDEN = "postgresql (connection details hidden)"

_BAD_URI = (
    "not a valid PostgreSQL connection URI (libpq cannot parse it): write "
    "postgresql://user:password@host:port/dbname?param=value with libpq's parameter names only, and "
    "percent-encode special characters in the user name and password (% as %25, @ as %40, / as %2F, "
    ": in the user name as %3A)"
)
_BAD_CONNINFO = (
    "holds '=' but is not a valid libpq connection string (libpq cannot parse it): write "
    "key=value pairs separated by spaces (host=db user=rollbackd password=secret dbname=rollbackd) "
    "with libpq's parameter names only, and single-quote values holding spaces or quotes "
    "(password='a b\\'c'); a file whose name holds '=' is written sqlite:///path"
)
_BAD_PORT = (
    "names a port that is not a number: percent-encode special characters in the "
    "password (a '/' as %2F, a '@' as %40), or correct the port"
)
_BAD_HOST = (
    "names a host holding '@': percent-encode an '@' in the user name or password as %40"
)
_NUL = "holds a NUL byte, which no connection string can carry: remove it"


class DsnError(ValueError):
    """``store.url`` cannot be used; the message says why and what to write, never the value."""


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """``store.url`` understood: which backend, the text to connect with, and how to show it.

    ``text`` (the value as configured) and ``secrets`` never appear in ``repr``; ``description``
    is safe for logs, messages and pages.
    """

    kind: Literal["sqlite", "postgresql"]
    description: str
    text: str = field(default="", repr=False)
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def scrub(self, message: str) -> str:
        """``message`` with every secret of this URL (as is, or percent-encoded) replaced by
        ``***``: for error messages of a driver, which may quote the connection string."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            for form in {secret, quote(secret, safe=""), quote(secret)}:
                message = message.replace(form, "***")
        return message

    def hides_secrets(self, text: str) -> bool:
        """Whether ``text`` shows none of this URL's secrets."""
        return self.scrub(text) == text


def parse_store_url(url: str | None) -> StoreUrl:
    """Which store ``url`` names, and its safe description; :class:`DsnError` otherwise."""
    text = url or ""
    if not text:
        return StoreUrl(kind="sqlite", description="", text="")
    if text.startswith(_SQLITE_SCHEME):
        return _sqlite(text)
    if text.startswith(_POSTGRES_SCHEMES):
        return _postgres(text, uri=True)
    scheme = _SCHEME.match(text)
    if scheme is not None:
        raise DsnError(
            f"unsupported store scheme '{scheme.group(1)}://': use a postgresql:// DSN, a sqlite:// "
            "URL or a file path"
        )
    if "://" in text:
        raise DsnError(
            "not a URL rollbackd understands: use a postgresql:// DSN, a libpq "
            "key=value string, a sqlite:// URL or a file path"
        )
    if "=" in text:  # libpq's own rule for a key=value connection string
        return _postgres(text, uri=False)
    if "@" in text:
        raise DsnError(
            "looks like user@host without a scheme: write postgresql://user:password@host/"
            "dbname for PostgreSQL (or sqlite:///path for a file whose name holds '@')"
        )
    return _sqlite(text)


def _sqlite(text: str) -> StoreUrl:
    if _CONTROL.search(text):
        raise DsnError(
            "holds a control character (a line break, a tab, a NUL byte): write the "
            "SQLite file's path without them"
        )
    return StoreUrl(kind="sqlite", description=text, text=text)


def _postgres(text: str, *, uri: bool) -> StoreUrl:
    if "\x00" in text:
        raise DsnError(_NUL)
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(text)
    except Exception:  # libpq's message quotes the text: not passed on
        raise DsnError(_BAD_URI if uri else _BAD_CONNINFO) from None
    port = str(params.get("port") or "")
    if any(part and not part.isdigit() for part in port.split(",")):
        raise DsnError(_BAD_PORT)
    if "@" in str(params.get("host") or ""):
        raise DsnError(_BAD_HOST)
    secrets = tuple(str(params[key]) for key in SECRET_KEYS if params.get(key))
    parsed = StoreUrl(kind="postgresql", description=_HIDDEN, text=text, secrets=secrets)
    for description in (_redact_uri(text) if uri else None, _render(params)):
        if description is not None and parsed.hides_secrets(description):
            return StoreUrl(kind="postgresql", description=description, text=text, secrets=secrets)
    return parsed


def _redact_uri(text: str) -> str:
    """A connection URI with the password of its user part and its secret query parameters
    replaced by ``***``, split as libpq splits it: the user part ends at the first ``@`` that
    comes before any ``/`` (so ``?`` and ``#`` may be in a password), parameters follow the
    first ``?`` after it."""
    scheme, _, rest = text.partition("://")
    stop = next((i for i, ch in enumerate(rest) if ch in "@/"), len(rest))
    if stop < len(rest) and rest[stop] == "@":
        user, colon, _ = rest[:stop].partition(":")
        head = f"{user}:***@" if colon else f"{user}@"
        rest = rest[stop + 1 :]
    else:
        head = ""
    base, question, query = rest.partition("?")
    if question:
        pairs = []
        for pair in query.split("&"):
            key, equals, _ = pair.partition("=")
            pairs.append(f"{key}=***" if equals and unquote(key) in SECRET_KEYS else pair)
        query = "&".join(pairs)
    return f"{scheme}://{head}{base}{question}{query}"


def _render(params: Mapping[str, str | int | None]) -> str:
    """Parameters as a libpq ``key=value`` string, secrets replaced by ``***``."""
    from psycopg.conninfo import make_conninfo

    shown = {key: "***" if key in SECRET_KEYS else value for key, value in params.items()}
    return make_conninfo("", **shown)


def store_kind(url: str | None) -> Literal["sqlite", "postgresql"]:
    """Which backend ``url`` means; :class:`ValueError`, with a message that does not echo
    ``url``, for one that is neither."""
    return parse_store_url(url).kind


def redact_url(url: str) -> str:
    """``url`` (a DSN, a ``key=value`` connection string or a path) as it may be shown in logs and
    messages: passwords replaced by ``***``, split as libpq splits them; a value that cannot be
    parsed is not shown at all."""
    try:
        return parse_store_url(url).description
    except DsnError:
        return "(store.url not shown: it cannot be parsed)"
