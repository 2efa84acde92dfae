"""In-process subscribers: `Broker.subscribe(filter)` as an async iterator of messages.

A `MessageStream` is a subscriber session of its own that the router delivers to like any
other: it gets retained messages on subscribe, messages at the lower of the two QoS, and its
QoS 1/2 messages go through the session's window and queue (`max_inflight`, `max_queued`). It
acknowledges a message when the program takes it, so a program that stops reading is treated
like a client that stops reading: QoS 1/2 messages queue and then drop, QoS 0 messages are
dropped once `stall_timeout` has passed. It is not in the registry: it has no client id, no
will, no expiry, and neither a store nor a cluster sees it.
"""
from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from cymqtt._fast.codec import validate_topic_filter
from cymqtt.consts import PUBACK, PUBCOMP, PUBREC
from cymqtt.router import split_shared
from cymqtt.session import Backlog, Client, Session, Subscription

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.config import Config
    from cymqtt.message import Message
    from cymqtt.router import Router  # noqa: F401

__all__ = ["MessageStream", "ReceivedMessage"]

# Messages handed over but not yet taken before the stream counts as unwritable (like a full
# socket): then QoS 0 messages are dropped after stall_timeout and QoS 1/2 ones queue.
BUFFER = 1024

_ids = itertools.count(1)


class ReceivedMessage(NamedTuple):
    """A message as a subscriber receives it: QoS is the lower of the published and the
    subscribed one; `retain` is set for retained messages sent on subscribe."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict | None


class MessageStream(Client):
    """Messages matching one topic filter, in order: ``async for msg in stream``, or
    ``await stream.get()``. ``close()`` (or leaving ``async with``) unsubscribes and ends the
    iteration; so does the broker's stop. Use it on the broker's event loop."""

    def __init__(self, router: Router, config: Config, clock: Callable[[], float],
                 topic_filter: str, qos: int = 0) -> None:
        if not isinstance(topic_filter, str):
            raise ValueError(f"topic filter must be a str, not {type(topic_filter).__name__}")
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos!r}")
        group, bare = split_shared(topic_filter)
        try:
            if not bare or (group is not None and (not group or "+" in group or "#" in group)):
                raise ValueError("empty filter or share name")
            validate_topic_filter(bare)
        except ValueError as exc:           # a CodecError too
            raise ValueError(f"cannot subscribe to {topic_filter[:60]!r}: {exc}") from None
        self.topic_filter = topic_filter
        self.qos = qos
        self._router = router
        self._clock = clock
        self._items: deque = deque()
        self._waiter: asyncio.Future | None = None
        self._closed = False
        Client.__init__(self)       # what the session reads of the client it delivers to
        # U+0000 cannot be in an MQTT client id, so no client's session shares this trie key.
        self._session = session = Session(f"\x00stream-{next(_ids)}", config)
        session.attach(self, 5)
        self._sub = sub = Subscription(session, topic_filter, bare, group, qos, None)
        session.subscriptions[topic_filter] = sub
        router.subscribe(sub)
        now = clock()
        if group is None and router.retain_available:
            retained = router.retained.match(bare, now)
            if retained:
                session.add_backlog(Backlog(retained, qos, None, router.retained.get), now)

    # -- session.Client ------------------------------------------------------------------------

    def send_publish(self, msg: Message, qos: int, retain: bool, packet_id: int, dup: bool,
                     sub_ids: list | None, now: float) -> None:
        self._items.append((msg, qos, retain, packet_id))
        if self.writable and len(self._items) >= BUFFER:
            self.writable = False
            self.paused_since = now
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def send_pubrel(self, packet_id: int) -> None:
        # A QoS 2 flow left at PUBREC: complete it.
        self._session.ack(PUBCOMP, packet_id, self._clock())

    def unthrottle(self) -> None:
        pass                      # it never publishes, so it is never held

    def kick(self, reason_code: int, text: str) -> None:
        self.close()              # not in the registry: nothing takes it over

    # -- the program's side --------------------------------------------------------------------

    async def get(self) -> ReceivedMessage:
        """The next message; raises StopAsyncIteration once the stream is closed."""
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        msg, qos, retain, pid = self._items.popleft()
        session = self._session
        if pid:
            now = self._clock()
            if qos == 1:
                session.ack(PUBACK, pid, now)
            else:
                session.ack(PUBREC, pid, now)
                session.ack(PUBCOMP, pid, now)
        if not self.writable and len(self._items) <= BUFFER // 2 and not self._closed:
            self.writable = True
            session.release(self._clock())
        return ReceivedMessage(msg.topic, msg.payload, qos, retain, msg.properties)

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> ReceivedMessage:
        return await self.get()

    def close(self) -> None:
        """Unsubscribe; messages already received can still be read, then iteration ends."""
        if self._closed:
            return
        self._closed = True
        self._router.unsubscribe(self._sub)
        self._session.subscriptions.clear()
        self._session.client = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def dropped(self) -> int:
        """Messages dropped for this subscriber (it did not keep up)."""
        return self._session.dropped

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MessageStream({self.topic_filter!r}, qos={self.qos}, closed={self._closed})"
