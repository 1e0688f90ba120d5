"""A minimal rollbackd event subscriber: prints each event once, even when delivered twice.

    pip install aiomqtt
    python examples/subscriber.py --url mqtt://mosquitto:1883 --prefix rollbackd

rollbackd delivers every event at least once (QoS 1), so the same event may arrive again after a
reconnect: dedupe by the CloudEvents ``id``. With a fixed ``--client-id`` the broker keeps a
persistent session, so events published while this subscriber is away are delivered when it
comes back. See docs/events.md for the topics and the payload of each type.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
from urllib.parse import urlsplit

import aiomqtt


async def subscribe(url: str, prefix: str, client_id: str | None) -> None:
    parts = urlsplit(url)
    seen: collections.OrderedDict[str, None] = collections.OrderedDict()  # recent ids, oldest first
    while True:
        try:
            async with aiomqtt.Client(
                parts.hostname or "localhost",
                parts.port or 1883,
                identifier=client_id,
                clean_session=client_id is None,  # a fixed id: the broker keeps what we miss
            ) as client:
                await client.subscribe(f"{prefix}/v1/+/+/events/+", qos=1)
                print(f"# subscribed to {prefix}/v1/+/+/events/+", flush=True)
                async for message in client.messages:
                    event = json.loads(message.payload)
                    if event["id"] in seen:
                        continue  # a redelivery
                    seen[event["id"]] = None
                    if len(seen) > 10_000:
                        seen.popitem(last=False)
                    kind = event["type"].removeprefix("io.rollbackd.")
                    summary = event["data"]["summary"]
                    print(f"{event['time']}  {event['subject']}  {kind:<20} {summary}", flush=True)
        except aiomqtt.MqttError as error:
            print(f"# connection lost ({error}); reconnecting in 2s", flush=True)
            await asyncio.sleep(2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="mqtt://localhost:1883", help="the broker, mqtt://host:port")
    parser.add_argument("--prefix", default="rollbackd", help="rollbackd's events.mqtt.topic_prefix")
    parser.add_argument("--client-id", help="a fixed client id for a persistent session")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(subscribe(args.url, args.prefix, args.client_id))


if __name__ == "__main__":
    main()
