"""The webhook sink: each event POSTed as a structured CloudEvent, signed, retried until accepted
-- or, with another ``format``, signed per the Standard Webhooks spec, or as a chat message.

Formats (``events.webhooks[].format``):

- ``cloudevents`` (the default): what follows;
- ``standard-webhooks``: the same CloudEvent JSON body (``Content-Type: application/json``) with
  the Standard Webhooks headers: ``webhook-id`` (the event id: the same on every retry),
  ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: ``v1,`` and the base64
  HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed with the base64-decoded part of the
  ``whsec_...`` secret;
- ``slack``, ``teams``, ``discord``: a chat message made by :mod:`rollbackd.events.chat`.

Request: ``POST <url>`` with ``Content-Type: application/cloudevents+json; charset=utf-8`` and the
event's JSON as the body. With a secret configured, two headers let the receiver prove the request
came from rollbackd and is fresh:

- ``X-Rollbackd-Timestamp``: the Unix time (whole seconds) the request was signed;
- ``X-Rollbackd-Signature``: ``sha256=`` followed by the lowercase hex HMAC-SHA256, keyed with the
  secret (UTF-8), of the timestamp, a ``.``, and the raw body bytes:
  ``hex(hmac_sha256(secret, f"{timestamp}." + body))``.

A receiver recomputes the HMAC over the raw body it got, compares in constant time, and rejects
timestamps more than a few minutes away from its clock (a replayed request). A retry is signed
again with a new timestamp, so it is a fresh request carrying the same event ``id``: dedupe by id.

Any 2xx answer delivers the event. A permanent refusal (400, 401, 403, 404, 410, 413, 422: the
same request would be refused again) gives up on the event at once: it is dead-lettered, audited
and escalated (see :mod:`rollbackd.events.deadletter`). Anything else (408, 429, 5xx, or no answer
within ``timeout_s``) is retried by the dispatcher with backoff. Events whose type matches none of
the webhook's ``types`` globs are not sent (and count as delivered for this webhook).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import aiohttp

from rollbackd import __version__
from rollbackd.config.settings import WebhookFormat, WebhookSettings
from rollbackd.events.chat import LAYOUTS, message_of
from rollbackd.events.dispatcher import DeliveryError, RejectedDelivery
from rollbackd.events.model import CLOUDEVENTS_JSON, CloudEvent, EventFormatError, short_type
from rollbackd.events.secrets import SecretError, read_secret
from rollbackd.store.base import OutboxEvent

SIGNATURE_HEADER = "X-Rollbackd-Signature"
TIMESTAMP_HEADER = "X-Rollbackd-Timestamp"
#: Answers that refuse the event for good: retrying the same request would be refused again.
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 410, 413, 422})
#: How far a receiver should accept a signature's timestamp from its own clock.
DEFAULT_TOLERANCE_S = 300.0


#: The Standard Webhooks headers.
WEBHOOK_ID = "webhook-id"
WEBHOOK_TIMESTAMP = "webhook-timestamp"
WEBHOOK_SIGNATURE = "webhook-signature"
#: The prefix of a Standard Webhooks secret; the rest is the key, base64-encoded.
WHSEC_PREFIX = "whsec_"
JSON = "application/json"


def standard_webhooks_key(secret: str, *, what: str) -> bytes:
    """The HMAC key of a Standard Webhooks secret ``whsec_<base64>``; :class:`SecretError`
    naming ``what`` when it is not one."""
    try:
        key = base64.b64decode(secret.removeprefix(WHSEC_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not secret.startswith(WHSEC_PREFIX) or len(key) < 16:
        raise SecretError(
            f"{what}: not a Standard Webhooks secret: expected whsec_ followed by at least 16 bytes "
            "in base64 (make one with: echo whsec_$(head -c 32 /dev/urandom | base64))"
        )
    return key


def standard_webhooks_signature(key: bytes, *, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of ``body`` sent as ``msg_id`` at ``timestamp``."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")


def sign(secret: str, *, timestamp: int, body: bytes) -> str:
    """The ``X-Rollbackd-Signature`` value of ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(
    secret: str,
    *,
    body: bytes,
    timestamp: str | None,
    signature: str | None,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> bool:
    """Whether a request's headers prove ``body`` was signed with ``secret`` within ``tolerance_s``
    of ``now`` (what a receiver checks)."""
    if not timestamp or not signature or not timestamp.isdigit():
        return False
    stamp = int(timestamp)
    if abs(now - stamp) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, timestamp=stamp, body=body), signature)


def type_matches(patterns: Sequence[str], event_type: str) -> bool:
    """Whether the short or the full ``event_type`` matches one of the glob ``patterns``."""
    short = short_type(event_type)
    return any(fnmatch.fnmatchcase(short, p) or fnmatch.fnmatchcase(event_type, p) for p in patterns)


class WebhookSink:
    """POSTs events to one URL; its outbox cursor is ``webhook:<name>``.

    Keyword-only arguments:

    - ``name``: the webhook's configured name; ``url``: where to POST;
    - ``secret``: the signing key, or ``None`` to send unsigned requests;
    - ``types``: glob patterns of the event types to send;
    - ``timeout_s``: timeout of one request;
    - ``session``: an ``aiohttp`` session to use (otherwise the sink opens and closes its own);
    - ``wall_clock``: the signing timestamp's source (Unix seconds);
    - ``format``: what is POSTed (see the module); ``status_url``: the link of chat messages.
    """

    def __init__(
        self,
        *,
        name: str,
        url: str,
        secret: str | None,
        types: Sequence[str] = ("*",),
        timeout_s: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        wall_clock: Callable[[], float] = time.time,
        format: WebhookFormat = "cloudevents",
        status_url: str | None = None,
    ) -> None:
        self._name = f"webhook:{name}"
        self._url = url
        # URLs of chat webhooks carry tokens in their path: messages show the host only.
        parts = urlsplit(url)
        self._where = (
            f"webhook {name} ({parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''})"
        )
        self._secret = secret
        self._types = tuple(types)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session = session
        self._own_session = session is None
        self._wall_clock = wall_clock
        self.skipped = 0  # events not sent because of the type filter
        self._format = format
        self._status_url = status_url
        self._key = (
            standard_webhooks_key(secret or "", what=f"events.webhooks[{name}] secret")
            if format == "standard-webhooks"
            else None
        )

    @classmethod
    def from_settings(
        cls,
        settings: WebhookSettings,
        *,
        environ: Mapping[str, str],
        session: aiohttp.ClientSession | None = None,
        status_url: str | None = None,
    ) -> WebhookSink:
        """A sink for one entry of ``events.webhooks`` (its secret read from where it says);
        ``status_url`` is ``events.status_url``, the link when the webhook has none of its own."""
        secret = read_secret(
            what=f"events.webhooks[{settings.name}] secret",
            env=settings.secret_env,
            file=settings.secret_file,
            environ=environ,
        )
        return cls(
            name=settings.name,
            url=settings.url,
            secret=secret,
            types=settings.types,
            timeout_s=settings.timeout_s,
            session=session,
            format=settings.format,
            status_url=settings.status_url or status_url,
        )

    @property
    def name(self) -> str:
        return self._name

    async def __aenter__(self) -> Self:
        if self._session is None:
            self._session = aiohttp.ClientSession(headers={"User-Agent": f"rollbackd/{__version__}"})
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    def headers(self, body: bytes, *, event_id: str = "") -> dict[str, str]:
        """The request headers for ``body`` (the event ``event_id``), signed now when a secret
        is configured."""
        if self._key is not None:
            stamp = int(self._wall_clock())
            return {
                "Content-Type": f"{JSON}; charset=utf-8",
                WEBHOOK_ID: event_id,
                WEBHOOK_TIMESTAMP: str(stamp),
                WEBHOOK_SIGNATURE: standard_webhooks_signature(
                    self._key, msg_id=event_id, timestamp=stamp, body=body
                ),
            }
        if self._format in LAYOUTS:
            return {"Content-Type": f"{JSON}; charset=utf-8"}
        headers = {"Content-Type": f"{CLOUDEVENTS_JSON}; charset=utf-8"}
        if self._secret is not None:
            stamp = int(self._wall_clock())
            headers[TIMESTAMP_HEADER] = str(stamp)
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp=stamp, body=body)
        return headers

    def body(self, event: OutboxEvent) -> dict[str, object]:
        """What is POSTed for ``event``: the CloudEvent, or its chat message. An event no chat
        message can be made of (not a rollbackd event) is refused for good."""
        layout = LAYOUTS.get(self._format)
        if layout is None:
            return dict(event.payload)
        try:
            cloud_event = CloudEvent.from_json(event.payload)
        except EventFormatError as exc:
            raise RejectedDelivery(f"{self._where}: no {self._format} message for this event: {exc}") from exc
        return layout(message_of(cloud_event, status_url=self._status_url))

    async def deliver(self, event: OutboxEvent) -> None:
        """POST ``event``; raise :class:`~rollbackd.events.dispatcher.DeliveryError` unless a 2xx
        answer comes back."""
        if not type_matches(self._types, event.type):
            self.skipped += 1
            return
        if self._session is None:
            raise RuntimeError("WebhookSink.deliver() needs an open sink (async with)")
        body = json.dumps(self.body(event), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        try:
            headers = self.headers(body, event_id=event.event_id)
            async with self._session.post(
                self._url, data=body, headers=headers, timeout=self._timeout
            ) as response:
                if 200 <= response.status < 300:
                    return
                answer = f"{self._where} answered HTTP {response.status} {response.reason or ''}".strip()
                if response.status in PERMANENT_STATUSES:
                    raise RejectedDelivery(f"{answer}: refused for good, not retried")
                raise DeliveryError(answer)
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = str(exc).replace(self._url, "<url>")
            raise DeliveryError(
                f"POST to {self._where} failed: {type(exc).__name__} {detail}".rstrip()
            ) from exc
