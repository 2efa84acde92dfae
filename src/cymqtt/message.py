"""An application message as the broker holds it: stored once, referenced by every queue.

A message is encoded once per variant (protocol family, QoS, retain flag) and the frame is shared
by every subscriber of that variant; QoS 1/2 subscribers get a copy with their own packet id
(`publish_with_id`). Subscription identifiers and a changed message expiry make per-subscriber
frames, which are built on demand and not cached.
"""
from __future__ import annotations

import math

from cymqtt._fast.codec import encode_publish, publish_with_id

from cymqtt.consts import P_MESSAGE_EXPIRY, P_SUBSCRIPTION_ID, P_TOPIC_ALIAS

# Topic alias and subscription identifiers are per connection / per subscription: a PUBLISH
# never carries them through the broker as received.
_NOT_FORWARDED = (P_TOPIC_ALIAS, P_SUBSCRIPTION_ID)


class Message:
    """One published message. `expires_at` is on the loop clock, None when it never expires."""

    __slots__ = ("topic", "payload", "qos", "retain", "properties", "expires_at", "sender",
                 "sid", "_key", "_frame", "_frames")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: dict | None = None, expires_at: float | None = None,
                 sender: str | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties      # forwarded MQTT 5 properties, or None
        self.expires_at = expires_at
        self.sender = sender              # client id of the publisher (no local), or None
        self.sid = 0                      # its row in the store (store.Journal), 0: not stored
        # The first variant encoded, and its key (_variant()); other variants in _frames. Most
        # messages go out in one variant, so most never make a dict.
        self._key = -1
        self._frame: bytes | None = None
        self._frames: dict | None = None

    @classmethod
    def from_publish(cls, pkt, sender: str | None, now: float) -> Message:
        props = pkt.properties
        if props:
            props = {k: v for k, v in props.items() if k not in _NOT_FORWARDED} or None
        msg = cls(pkt.topic, pkt.payload, pkt.qos, pkt.retain, props, None, sender)
        if props:
            msg.start_expiry(now)
        return msg

    def start_expiry(self, now: float) -> None:
        """Start the MQTT 5 message expiry interval, if the message has one, at `now` (when it
        is published: a will's runs from the moment the will is sent)."""
        if self.properties and P_MESSAGE_EXPIRY in self.properties:
            self.expires_at = now + self.properties[P_MESSAGE_EXPIRY]

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def frame(self, version: int, qos: int, retain: bool, packet_id: int = 0, dup: bool = False,
              sub_ids: list | None = None, now: float = 0.0) -> bytes:
        """This message as a PUBLISH for one subscriber."""
        v5 = version == 5
        if sub_ids or (v5 and self.expires_at is not None):
            # Per-subscriber properties: built for this delivery, not cached.
            return encode_publish(self.topic, self.payload, qos, retain, dup and qos > 0,
                                  packet_id if qos else 0, self.props_for(sub_ids, now), 5)
        key = (8 if v5 else 0) | (qos << 1) | (1 if retain else 0)
        if key == self._key:
            frame = self._frame
        else:
            frame = None if self._frames is None else self._frames.get(key)
            if frame is None:
                frame = encode_publish(self.topic, self.payload, qos, retain, False,
                                       1 if qos else 0, self.properties if v5 else None,
                                       5 if v5 else 4)
                if self._key < 0:
                    self._key = key
                    self._frame = frame
                else:
                    if self._frames is None:
                        self._frames = {}
                    self._frames[key] = frame
        if qos and (packet_id != 1 or dup):
            return publish_with_id(frame, packet_id, dup)
        return frame

    def props_for(self, sub_ids: list | None, now: float) -> dict | None:
        props = dict(self.properties) if self.properties else {}
        if self.expires_at is not None:
            # (rounded to microseconds first: now + 120 - now may be 120.00000000001)
            props[P_MESSAGE_EXPIRY] = max(0, math.ceil(round(self.expires_at - now, 6)))
        if sub_ids:
            props[P_SUBSCRIPTION_ID] = sub_ids
        return props or None

    def __repr__(self) -> str:
        return (f"Message({self.topic!r}, {self.payload[:32]!r}, qos={self.qos}, "
                f"retain={self.retain})")
