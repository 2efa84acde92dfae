"""Raw-bytes MQTT helpers for broker tests over `RawClient` sockets.

`connect`, `subscribe`, `publish` (waits until the broker has routed it), `ack_all`, `recv_bytes`
(byte-exact reads), `mqtt_str` (a length-prefixed UTF-8 string) and packet-type / property /
subscription-option constants written out by hand, independent of the codec under test.
"Nothing else arrived" is checked without sleeping: the broker answers a PINGREQ after everything
it queued for that connection before it, so the packets before the PINGRESP are all there is
(`sync`).
"""
from __future__ import annotations

import time

from _testbase import RawClient
from cymqtt._fast.codec import Connect, PubAck, Publish, Subscribe

CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 2, 3, 4, 5, 6, 7
SUBACK, UNSUBACK, PINGRESP, DISCONNECT = 9, 11, 13, 14
P_SUB_ID, P_USER, P_ALIAS = 0x0B, 0x26, 0x23
NO_LOCAL, RETAIN_AS_PUBLISHED = 0x04, 0x08


def connect(raw_client, client_id: str, version: int = 4, **kw) -> RawClient:
    c = raw_client(version)
    c.send_packet(Connect(client_id, version=version, **kw))
    ack = c.recv_packet()
    assert ack is not None and ack.type == CONNACK and ack.reason_code == 0, ack
    c.connack = ack
    return c


def subscribe(c: RawClient, *topics, pid: int = 1, properties: dict | None = None) -> list:
    """SUBSCRIBE (filter, options) pairs; returns the SUBACK reason codes."""
    c.send_packet(Subscribe(pid, list(topics), properties))
    ack = c.recv_packet()
    assert ack is not None and ack.type == SUBACK and ack.packet_id == pid, ack
    return ack.reason_codes


def sync(c: RawClient) -> list:
    """Every packet the broker sent `c` before answering a PINGREQ sent now."""
    c.send(b"\xc0\x00")
    out = _stash(c)
    while True:
        p = c.recv_packet()
        assert p is not None, f"connection closed; got {out}"
        if p.type == PINGRESP:
            return out
        out.append(p)


def _stash(c: RawClient) -> list:
    """PUBLISHes that reached a client while it waited for an acknowledgement of its own."""
    if not hasattr(c, "stash"):
        c.stash = []
    out, c.stash = c.stash, []
    return out


def _recv_not_publish(c: RawClient):
    while True:
        p = c.recv_packet()
        if p is None or p.type != PUBLISH:
            return p
        if not hasattr(c, "stash"):
            c.stash = []
        c.stash.append(p)


def publish(c: RawClient, topic: str, payload: bytes = b"x", qos: int = 0, pid: int = 1,
            retain: bool = False, properties: dict | None = None):
    """PUBLISH and wait until the broker has routed it (PUBACK, PUBREC+PUBCOMP or PINGRESP);
    returns the PUBACK / PUBREC packet (None for QoS 0)."""
    c.send_packet(Publish(topic, payload, qos, retain, packet_id=pid if qos else 0,
                          properties=properties))
    if qos == 0:
        c.stash = _stash(c) + sync(c)
        return None
    ack = _recv_not_publish(c)
    assert ack is not None and ack.type == (PUBACK if qos == 1 else PUBREC), ack
    assert ack.packet_id == pid
    if qos == 2 and ack.reason_code < 0x80:
        c.send_packet(PubAck(PUBREL, pid))
        comp = _recv_not_publish(c)
        assert comp is not None and comp.type == PUBCOMP and comp.packet_id == pid, comp
    return ack


def ack_all(c: RawClient, packets: list) -> None:
    """Acknowledge received QoS 1 / 2 PUBLISHes completely."""
    for p in packets:
        if p.type == PUBLISH and p.qos == 1:
            c.send_packet(PubAck(PUBACK, p.packet_id))
        elif p.type == PUBLISH and p.qos == 2:
            c.send_packet(PubAck(PUBREC, p.packet_id))
            rel = _recv_not_publish(c)
            assert rel is not None and rel.type == PUBREL and rel.packet_id == p.packet_id
            c.send_packet(PubAck(PUBCOMP, p.packet_id))


def recv_bytes(c: RawClient, n: int, timeout: float = 5.0) -> bytes:
    """Exactly `n` bytes off the socket (for byte-exact expectations)."""
    assert not c.pending and not c.parser.buffered
    buf = b""
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        c.sock.settimeout(max(0.01, deadline - time.monotonic()))
        data = c.sock.recv(n - len(buf))
        if not data:
            break
        buf += data
    return buf


def mqtt_str(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b
