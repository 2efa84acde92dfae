"""$SYS/broker/... topics, as mosquitto names them, published (retained) every interval."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from cymqtt._version import __version__
from cymqtt.message import Message

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.broker import Broker


def snapshot(broker: Broker) -> dict[str, str]:
    """Topic -> value of every $SYS topic right now."""
    s = broker.stats
    connected = broker.clients_connected
    dropped = sum(sess.dropped for sess in broker.sessions.values())
    return {
        "$SYS/broker/version": f"cymqtt {__version__}",
        "$SYS/broker/uptime": f"{broker.uptime()} seconds",
        "$SYS/broker/clients/connected": str(connected),
        "$SYS/broker/clients/disconnected": str(len(broker.offline)),
        "$SYS/broker/clients/total": str(connected + len(broker.offline)),
        "$SYS/broker/messages/received": str(s.messages_received),
        "$SYS/broker/messages/sent": str(s.messages_sent),
        "$SYS/broker/publish/messages/dropped": str(dropped),
        "$SYS/broker/bytes/received": str(s.bytes_received),
        "$SYS/broker/bytes/sent": str(s.bytes_sent),
        "$SYS/broker/subscriptions/count": str(broker.router.subscription_count),
        "$SYS/broker/retained messages/count": str(len(broker.router.retained)),
    }


def publish(broker: Broker) -> None:
    for topic, value in snapshot(broker).items():
        broker.route(Message(topic, value.encode(), 0, True))


async def publish_forever(broker: Broker, interval: float) -> None:
    while True:
        publish(broker)
        await asyncio.sleep(interval)
