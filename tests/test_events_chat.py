"""Chat notifications and Standard Webhooks: each event as a Slack, Teams or Discord message that
says what happened, to which target, why and links the status page, validated against each
chat's documented shape (tests/chatschemas); hostile names cannot break out; signed requests
verified the Standard Webhooks way by an independent implementation of the spec's receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web

from rollbackd.config.loader import load_settings
from rollbackd.config.settings import EventsSettings, WebhookSettings
from rollbackd.events.build import EventFactory
from rollbackd.events.chat import ADAPTIVE_CARD, DISCORD_EMBED_TOTAL_MAX, discord, message_of, slack, teams
from rollbackd.events.dispatcher import Dispatcher
from rollbackd.events.model import CloudEvent
from rollbackd.events.publisher import EventPublisher
from rollbackd.events.secrets import SecretError
from rollbackd.events.webhooks import WebhookSink
from rollbackd.model import Hold
from rollbackd.store import Store, open_store
from tests.eventstory import clock, rollback_story
from tests.mqttfixtures import free_port

SCHEMAS = Path(__file__).parent / "chatschemas"
STATUS = "https://rollbackd.example.com/"
FAST_BACKOFF = {"initial_s": 0.01, "max_s": 0.05}


def schema(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((SCHEMAS / name).read_text(encoding="utf-8"))
    return loaded


SLACK = schema("slack-incoming-webhook.schema.json")
DISCORD = schema("discord-execute-webhook.schema.json")
TEAMS = schema("teams-message.schema.json")
ADAPTIVE = schema("adaptive-card-1.5.0.json")


def valid(instance: Any, against: dict[str, Any]) -> None:
    validator = jsonschema.validators.validator_for(against)(
        against, format_checker=jsonschema.FormatChecker()
    )
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:5])


def valid_teams(body: dict[str, Any]) -> None:
    valid(body, TEAMS)
    for attachment in body["attachments"]:
        valid(attachment["content"], ADAPTIVE)


def embed_length(embed: dict[str, Any]) -> int:
    """What Discord counts against the 6000 characters of an embed."""
    fields = sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", ()))
    return (
        len(embed.get("title", ""))
        + len(embed.get("description", ""))
        + fields
        + len(embed.get("footer", {}).get("text", ""))
    )


def every_kind_of_event() -> list[CloudEvent]:
    factory = EventFactory()
    story = rollback_story()
    return [
        *story,
        factory.escalation_raised(
            "shop/checkout",
            cause="not-attributable",
            reasons=("the baseline is degraded too",),
            clock=clock(1000),
        ),
        factory.sink_escalation(
            "shop/checkout",
            sink="webhook:pager",
            cause="sink-rejected",
            reason="webhook pager answered HTTP 410 Gone",
            event_type="io.rollbackd.rollback.started",
            clock=clock(1000),
        ),
        factory.hold_set(
            "shop/checkout", Hold(until=4600.0, reason="fix-forward", set_at=1000.0), clock=clock(1000)
        ),
    ]


# --- the documented shapes ---------------------------------------------------------------------


@pytest.mark.parametrize("event", every_kind_of_event(), ids=lambda e: e.short_type)
def test_every_event_is_a_valid_slack_teams_and_discord_message(event: CloudEvent) -> None:
    message = message_of(event, status_url=STATUS)
    valid(slack(message), SLACK)
    valid_teams(teams(message))
    body = discord(message)
    valid(body, DISCORD)
    assert embed_length(body["embeds"][0]) <= DISCORD_EMBED_TOTAL_MAX
    assert body["allowed_mentions"] == {"parse": []}


def test_the_schemas_refuse_what_the_chats_refuse() -> None:
    # A schema that accepted anything would prove nothing: each refuses a broken body.
    message = message_of(rollback_story()[0], status_url=STATUS)
    broken_slack = slack(message)
    broken_slack["blocks"][0]["text"]["text"] = "x" * 151  # a header is at most 150 characters
    with pytest.raises(AssertionError, match=r"\['blocks', 0\]"):
        valid(broken_slack, SLACK)
    broken_card = teams(message)
    broken_card["attachments"][0]["content"]["body"][0]["inlines"][0]["weight"] = "Heavy"
    with pytest.raises(AssertionError):
        valid_teams(broken_card)
    broken_discord = discord(message)
    broken_discord["embeds"][0]["fields"] = [{"name": "n", "value": "v"}] * 26
    with pytest.raises(AssertionError, match=r"\['embeds', 0, 'fields'\]"):
        valid(broken_discord, DISCORD)


# --- what the messages say ---------------------------------------------------------------------


def test_a_degradation_says_what_which_target_why_and_links_the_status_page() -> None:
    degraded = rollback_story()[0]
    body = slack(message_of(degraded, status_url=STATUS))
    text = json.dumps(body)
    assert body["blocks"][0]["text"]["text"] == "shop/checkout is degraded (severe)"
    assert "error rate 12% vs SLO 1% (baseline 0.2%)" in text
    assert f"<{STATUS}|Status page>" in text
    card = teams(message_of(degraded, status_url=STATUS))["attachments"][0]["content"]
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Status page", "url": STATUS}]
    assert "error rate 12% vs SLO 1% (baseline 0.2%)" in json.dumps(card)
    embed = discord(message_of(degraded, status_url=STATUS))["embeds"][0]
    assert embed["url"] == STATUS
    assert ("Why", "error rate 12% vs SLO 1% (baseline 0.2%)") in [
        (f["name"], f["value"]) for f in embed["fields"]
    ]


def test_a_verified_rollback_tells_the_values_against_the_slo() -> None:
    verified = rollback_story()[-1]
    message = message_of(verified, status_url=None)
    assert message.title == "Rolled back shop/checkout, verified"
    assert message.severity == "good"
    facts = {fact.label: fact.value for fact in message.facts}
    assert facts["Error rate"] == "0.2% vs SLO 1%"
    assert facts["P95"] == "120 ms vs SLO 500 ms"


def test_without_a_status_url_there_is_no_link_rather_than_a_wrong_one() -> None:
    message = message_of(rollback_story()[0], status_url=None)
    assert "http" not in json.dumps(slack(message))
    assert "actions" not in teams(message)["attachments"][0]["content"]
    assert "url" not in discord(message)["embeds"][0]


# --- hostile strings -----------------------------------------------------------------------------

HOSTILE = "<!channel> @everyone <@123> *bold* _it_ ~~x~~ `code` [click](https://evil.example) & </b>"


def hostile_event() -> CloudEvent:
    return EventFactory().escalation_raised(
        "shop/checkout<b>&amp;", cause="rollback-risk", reasons=(HOSTILE,), clock=clock(1000)
    )


def test_slack_escapes_outside_strings_so_they_cannot_mention_or_link() -> None:
    body = slack(message_of(hostile_event(), status_url=STATUS))
    valid(body, SLACK)
    mrkdwn = [body["text"], body["blocks"][1]["text"]["text"]]
    mrkdwn += [f["text"] for f in body["blocks"][1]["fields"]]
    for text in mrkdwn:
        without_link = text.replace(f"<{STATUS}|Status page>", "")
        assert "<" not in without_link, text
        assert ">" not in without_link, text
    assert any("&lt;!channel&gt;" in text for text in mrkdwn)
    assert any("checkout&lt;b&gt;&amp;amp;" in text for text in mrkdwn)


def test_discord_never_pings_and_shows_markdown_as_typed() -> None:
    body = discord(message_of(hostile_event(), status_url=STATUS))
    valid(body, DISCORD)
    assert body["allowed_mentions"] == {"parse": []}
    why = next(f["value"] for f in body["embeds"][0]["fields"] if f["name"] == "Why")
    for escaped in ("\\<@123\\>", "\\*bold\\*", "\\[click\\]", "\\`code\\`"):
        assert escaped in why


def test_teams_shows_outside_strings_as_plain_text_runs() -> None:
    card = teams(message_of(hostile_event(), status_url=STATUS))["attachments"][0]["content"]
    valid(card, ADAPTIVE)
    runs = [inline for block in card["body"] for inline in block["inlines"]]
    assert all(run["type"] == "TextRun" for run in runs)  # TextRun text is never read as markdown
    assert HOSTILE in [run["text"] for run in runs]


def test_discord_cuts_long_texts_to_its_limits_and_says_so() -> None:
    reasons = tuple(f"reason {i}: " + "x" * 5000 for i in range(3))
    event = EventFactory().escalation_raised(
        "shop/checkout", cause="rollback-risk", reasons=reasons, clock=clock(1000)
    )
    body = discord(message_of(event, status_url=STATUS))
    valid(body, DISCORD)
    embed = body["embeds"][0]
    assert embed_length(embed) <= DISCORD_EMBED_TOTAL_MAX
    values = [f["value"] for f in embed["fields"]]
    assert any(value.endswith("…") and len(value) == 1024 for value in values)
    assert embed["description"].endswith("…")
    assert embed["fields"][-1]["value"].endswith("more not shown")  # dropped, and said so


# --- through the webhook sink, over HTTP ---------------------------------------------------------


@dataclass
class Inbox:
    """A chat's webhook endpoint: keeps each request's headers and raw body; answers 204."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        return web.Response(status=204)


@pytest.fixture
async def inbox() -> AsyncIterator[Inbox]:
    box = Inbox()
    app = web.Application()
    app.router.add_post("/hook/T0KEN", box.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    box.url = f"http://127.0.0.1:{port}/hook/T0KEN"
    yield box
    await runner.cleanup()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    db = open_store(None, data_dir=tmp_path)
    await db.open()
    yield db
    await db.close()


async def deliver(store: Store, sink: WebhookSink, events: list[CloudEvent]) -> None:
    from rollbackd.backoff import Backoff

    async with sink, Dispatcher(store=store, sinks=[sink], backoff=Backoff(**FAST_BACKOFF)) as dispatcher:
        publisher = EventPublisher(store=store, on_recorded=dispatcher.nudge)
        for event in events:
            await publisher.announce(event)
        assert await dispatcher.drain(timeout_s=20)


LAYOUT_SCHEMAS: dict[str, Callable[[dict[str, Any]], None]] = {
    "slack": lambda body: valid(body, SLACK),
    "teams": valid_teams,
    "discord": lambda body: valid(body, DISCORD),
}


@pytest.mark.parametrize("fmt", ["slack", "teams", "discord"])
async def test_a_chat_webhook_gets_one_valid_json_message_per_event(
    fmt: str, inbox: Inbox, store: Store
) -> None:
    settings = EventsSettings(
        status_url=STATUS, webhooks=(WebhookSettings(name="chat", url=inbox.url, format=fmt),)
    )
    sink = WebhookSink.from_settings(settings.webhooks[0], environ={}, status_url=settings.status_url)
    story = rollback_story()
    await deliver(store, sink, story)
    assert len(inbox.requests) == len(story)
    for headers, raw in inbox.requests:
        assert headers["Content-Type"].startswith("application/json")
        body = json.loads(raw)
        LAYOUT_SCHEMAS[fmt](body)
        assert STATUS in raw.decode()
        assert "shop/checkout" in raw.decode()
    if fmt == "teams":
        assert json.loads(inbox.requests[0][1])["attachments"][0]["contentType"] == ADAPTIVE_CARD


# An independent receiver of the Standard Webhooks spec: the key is the base64 part of whsec_...,
# the signed content is "{webhook-id}.{webhook-timestamp}.{body}", the header holds space-separated
# "v1,<base64 HMAC-SHA256>" signatures, and a timestamp too far from now is refused.
SW_SECRET = "whsec_" + base64.b64encode(b"rollbackd-test-key-0123456789abcdef").decode()


def standard_webhooks_verify(secret: str, headers: dict[str, str], body: bytes, *, now: float) -> bool:
    key = base64.b64decode(secret.split("_", 1)[1])
    msg_id, stamp = headers["webhook-id"], headers["webhook-timestamp"]
    if abs(now - int(stamp)) > 5 * 60:
        return False
    expected = base64.b64encode(hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest())
    for signature in headers["webhook-signature"].split(" "):
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


async def test_standard_webhooks_requests_verify_with_the_spec_and_carry_the_cloudevent(
    inbox: Inbox, store: Store
) -> None:
    hook = WebhookSettings(name="sw", url=inbox.url, format="standard-webhooks", secret_env="SW_SECRET")
    sink = WebhookSink.from_settings(hook, environ={"SW_SECRET": SW_SECRET})
    story = rollback_story()
    await deliver(store, sink, story)
    assert len(inbox.requests) == len(story)
    for (headers, raw), event in zip(inbox.requests, story, strict=True):
        assert standard_webhooks_verify(SW_SECRET, headers, raw, now=time.time())
        assert headers["webhook-id"] == event.id  # the CloudEvent id: receivers dedupe by it
        assert json.loads(raw) == event.to_json()
        # Tampering is caught: another body, another id, another key.
        assert not standard_webhooks_verify(SW_SECRET, headers, raw + b" ", now=time.time())
        assert not standard_webhooks_verify(SW_SECRET, {**headers, "webhook-id": "x"}, raw, now=time.time())
        other = "whsec_" + base64.b64encode(b"another-key-0123456789abcdef").decode()
        assert not standard_webhooks_verify(other, headers, raw, now=time.time())
        assert not standard_webhooks_verify(SW_SECRET, headers, raw, now=time.time() + 3600)
    # The receiver docs/notifications.md shows agrees.
    (snippet,) = doc_blocks("python")
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # the documentation's own example
    for headers, raw in inbox.requests:
        assert namespace["verify"](SW_SECRET, headers, raw)
        assert not namespace["verify"](SW_SECRET, headers, raw + b" ")


def test_a_standard_webhooks_secret_must_be_whsec_base64() -> None:
    hook = WebhookSettings(name="sw", url="https://example.com/h", format="standard-webhooks", secret_env="S")
    with pytest.raises(SecretError, match=r"events.webhooks\[sw\] secret: not a Standard Webhooks secret"):
        WebhookSink.from_settings(hook, environ={"S": "plain-password"})
    with pytest.raises(SecretError, match="whsec_"):
        WebhookSink.from_settings(hook, environ={"S": "whsec_!!notbase64!!"})


# --- docs/notifications.md ------------------------------------------------------------------------

DOC = Path(__file__).parent.parent / "docs" / "notifications.md"


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_the_documented_configurations_load(tmp_path: Path) -> None:
    blocks = doc_blocks("yaml")
    assert len(blocks) >= 5
    formats = set()
    for index, block in enumerate(blocks):
        path = tmp_path / f"{index}.yaml"
        path.write_text(block, encoding="utf-8")
        events = load_settings(path, environ={}).events
        formats |= {hook.format for hook in events.webhooks}
    assert formats == {"slack", "teams", "discord", "standard-webhooks"}


def test_the_documented_messages_have_the_documented_shapes() -> None:
    checked = 0
    for block in doc_blocks("json"):
        body = json.loads(block)
        if "blocks" in body:
            valid(body, SLACK)
        elif "attachments" in body:
            valid_teams(body)
        else:
            valid(body, DISCORD)
        checked += 1
    assert checked == 3


def test_empty_texts_still_make_valid_messages() -> None:
    event = EventFactory().escalation_raised(
        "shop/checkout", cause="rollback-risk", reasons=("",), clock=clock(1000)
    )
    empty = CloudEvent.from_json({**event.to_json(), "data": {**event.to_json()["data"], "summary": ""}})
    message = message_of(empty, status_url=None)
    valid(slack(message), SLACK)
    valid_teams(teams(message))
    body = discord(message)
    valid(body, DISCORD)
    assert all(field["value"] for field in body["embeds"][0]["fields"])
