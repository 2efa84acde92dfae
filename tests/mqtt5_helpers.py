"""Helpers shared by the test_12_mqtt5_*.py modules (MQTT 5 features over real sockets).

Nothing in those tests waits for a fixed time to see that something did *not* happen. A "fence"
proves it instead: the broker handles one connection's packets in order and writes one client's
frames in order, so when a PINGRESP (raw clients, `until_pingresp`) or a marker message published
after the event (paho clients, `fence`) arrives, anything the event would have produced has
arrived before it. Timed rules run through `bt.sweep(advance)`; message expiry, which the broker
stamps with its clock when a message arrives, passes by moving that clock (`let_time_pass`).
The `raw` fixture (a RawClient past its MQTT 5 CONNACK) is in conftest.py.

Spec references are to MQTT 5.0 (OASIS, 2019).
"""
from __future__ import annotations

import uuid

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from _testbase import RawClient
from cymqtt._fast.codec import Ping, Subscribe
from helpers_paho import PahoClient, props, wait_until

PUBACK, PUBREC, PUBREL, PUBCOMP = 4, 5, 6, 7

# Property identifiers (section 2.2.2.2).
PFI, EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION = 0x01, 0x02, 0x03, 0x08, 0x09
SUB_ID, SESSION_EXPIRY, SERVER_KEEP_ALIVE, PROBLEM_INFO = 0x0B, 0x11, 0x13, 0x17
REQ_RESPONSE_INFO, RESPONSE_INFO, SERVER_REFERENCE, REASON_STRING = 0x19, 0x1A, 0x1C, 0x1F
RECEIVE_MAX, ALIAS_MAX, ALIAS, MAX_QOS, RETAIN_AVAILABLE = 0x21, 0x22, 0x23, 0x24, 0x25
USER_PROPERTY, MAX_PACKET = 0x26, 0x27
WILDCARD_AVAILABLE, SUB_ID_AVAILABLE, SHARED_AVAILABLE = 0x28, 0x29, 0x2A


def next_packet(c: RawClient, name: str | None = None, timeout: float = 5.0):
    p = c.recv_packet(timeout)
    assert p is not None, "the broker closed the connection"
    if name is not None:
        assert p.name == name, f"expected {name}, got {p!r}"
    return p


def expect_disconnect(c: RawClient, reason: int) -> None:
    """The broker sends DISCONNECT with `reason` and closes the connection."""
    p = c.recv_packet()
    assert p is not None, f"connection closed without DISCONNECT 0x{reason:02X}"
    assert p.name == "DISCONNECT", f"expected DISCONNECT 0x{reason:02X}, got {p!r}"
    assert p.reason_code == reason, f"DISCONNECT 0x{p.reason_code:02X}, expected 0x{reason:02X}"
    assert c.closed(), "the connection stayed open after DISCONNECT"


def until_pingresp(c: RawClient) -> list:
    """Fence: PINGREQ, then every packet that arrives before the PINGRESP."""
    c.send_packet(Ping())
    got = []
    while True:
        p = next_packet(c)
        if p.name == "PINGRESP":
            return got
        got.append(p)


def raw_subscribe(c: RawClient, topics: list, pid: int = 1, properties: dict | None = None):
    c.send_packet(Subscribe(pid, topics, properties))
    ack = next_packet(c, "SUBACK")
    assert ack.packet_id == pid
    return ack.reason_codes


def fence(pub: PahoClient, *subs: PahoClient) -> None:
    """Fence for paho subscribers: a marker published now reaches each of `subs` after anything
    routed to it before."""
    for s in subs:
        topic = f"fence/{s.client_id}"
        if not getattr(s, "_fenced", False):
            s.subscribe(topic, 1)
            s._fenced = True
        token = uuid.uuid4().hex.encode()
        pub.publish(topic, token, qos=1)
        wait_until(lambda: token in s.payloads(topic), what=f"fence marker at {s.client_id}")


def unfenced(c: PahoClient) -> list:
    return [m for m in c.messages if not m.topic.startswith("fence/")]


def offline(bt, client_id: str) -> None:
    """Wait until the broker has handled the loss of `client_id`'s connection."""
    def gone():
        s = bt.call(lambda: bt.broker.session(client_id))
        return s is None or not bt.call(lambda: s.connected)
    wait_until(gone, what=f"{client_id} to be seen offline")


def pub_props(**values) -> Properties:
    return props(PacketTypes.PUBLISH, **values)


def let_time_pass(bt, seconds: float) -> None:
    """Move the broker's clock on: deadlines it stamped (message expiry) pass, no sleeping."""
    bt.clock.advance(seconds)


class AliasTable:
    """The receiving side of outbound topic aliases, as section 3.3.2.3.4 describes it."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.topics: dict[int, str] = {}

    def resolve(self, pkt) -> str:
        alias = (pkt.properties or {}).get(ALIAS)
        if alias is None:
            assert pkt.topic, "PUBLISH with neither topic nor alias"
            return pkt.topic
        assert 1 <= alias <= self.maximum, f"alias {alias} outside 1..{self.maximum}"
        if pkt.topic:
            self.topics[alias] = pkt.topic
            return pkt.topic
        assert alias in self.topics, f"alias {alias} used before the broker set it"
        return self.topics[alias]
