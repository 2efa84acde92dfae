"""Malformed and forbidden input, one test per rule (mosquitto's 01-bad-initial-packets.py idea).

Every hostile byte string is written out by hand here (not by the codec under test). Each test
asserts what the broker sends back (MQTT 5: CONNACK with the reason code before the session
exists, DISCONNECT with it after; MQTT 3.1.1: nothing, MQTT-4.8.0-1 says close), that the
connection is then closed, and that clients connected before the bad one keep publishing and
receiving (the `witness`). Spec references: MQTT 3.1.1 (OASIS, 2014) and MQTT 5.0 (OASIS, 2019).
"""
from __future__ import annotations

import pytest

from mqtt_bytes import (
    CONNACK, DISCONNECT, PUBACK, PUBCOMP, PUBREL, ack_all, connect, publish, subscribe, sync,
)

# -- an independent generator ------------------------------------------------------------------


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + varint(len(body)) + body


def s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return len(b).to_bytes(2, "big") + b


def pid(n: int = 1) -> bytes:
    return n.to_bytes(2, "big")


def props(version: int, raw: bytes = b"") -> bytes:
    """A property block in MQTT 5, nothing before it."""
    return varint(len(raw)) + raw if version == 5 else b""


def connect_v5(raw_props: bytes = b"", flags: int = 0x02, client_id: bytes = s("bad"),
               tail: bytes = b"") -> bytes:
    return frame(0x10, s("MQTT") + bytes([5, flags]) + b"\x00\x3c" + varint(len(raw_props))
                 + raw_props + client_id + tail)


def connect_v4(client_id: str = "bad") -> bytes:
    return frame(0x10, s("MQTT") + bytes([4, 0x02]) + b"\x00\x3c" + s(client_id))


# -- fixtures ----------------------------------------------------------------------------------

@pytest.fixture
def witness(broker, raw_client):
    """Two clients connected before the bad one (3.1.1 subscriber, MQTT 5 publisher); calling it
    checks that a message still goes through and that a new client can still connect."""
    sub = connect(raw_client, "witness-sub", 4)
    subscribe(sub, ("w/t", 1))
    pub = connect(raw_client, "witness-pub", 5)
    n = [0]

    def check() -> None:
        n[0] += 1
        publish(pub, "w/t", b"still-%d" % n[0], 1, pid=n[0])
        got = sync(sub)
        assert [m.payload for m in got] == [b"still-%d" % n[0]]
        ack_all(sub, got)
        fresh = connect(raw_client, f"fresh-{n[0]}", 5)
        fresh.close()

    check.sub = sub
    return check


def refused(c, version: int, reason: int | None, kind: int = DISCONNECT) -> None:
    """MQTT 5: the next packet is `kind` with `reason`; 3.1.1 (or reason None): nothing is sent.
    Then the broker closes the connection."""
    if version == 5 and reason is not None:
        p = c.recv_packet()
        assert p is not None, "closed without a reason code"
        assert (p.type, p.reason_code) == (kind, reason), p
    assert c.closed(), "the broker did not close the connection"
    assert c.pending == [], f"unexpected packets: {c.pending}"


# -- rules after CONNECT: (id, bytes for a version, MQTT 5 reason code, versions) ----------------

def _pub(first: int, topic: bytes, v: int, ident: bytes = b"", prop: bytes = b"",
         payload: bytes = b"x") -> bytes:
    return frame(first, s(topic) + ident + props(v, prop) + payload)


RULES = [
    # fixed header flags [MQTT-2.1.3-1] (3.1.1: MQTT-2.2.2-2): Malformed Packet
    ("subscribe-flags-0", lambda v: frame(0x80, pid() + props(v) + s("a") + b"\x00"), 0x81),
    ("unsubscribe-flags-0", lambda v: frame(0xA0, pid() + props(v) + s("a")), 0x81),
    ("pubrel-flags-0", lambda v: frame(0x60, pid()), 0x81),
    ("pingreq-flags-1", lambda v: b"\xc1\x00", 0x81),
    ("disconnect-flags-1", lambda v: b"\xe1\x00", 0x81),
    # PUBLISH header [MQTT-3.3.1-4]: QoS 3; [MQTT-3.3.1-2]: DUP with QoS 0
    ("publish-qos3", lambda v: _pub(0x36, b"a/b", v, pid()), 0x81),
    ("publish-qos0-dup", lambda v: _pub(0x38, b"a/b", v), 0x81),
    # topic names [MQTT-1.5.4-1] ill-formed UTF-8, surrogates; [MQTT-1.5.4-2] U+0000
    ("topic-invalid-utf8", lambda v: _pub(0x30, b"\xff\xfe", v), 0x81),
    ("topic-surrogate", lambda v: _pub(0x30, b"a/\xed\xa0\x80", v), 0x81),
    ("topic-overlong-utf8", lambda v: _pub(0x30, b"a/\xc0\xaf", v), 0x81),
    ("topic-nul", lambda v: _pub(0x30, b"a\x00b", v), 0x81),
    # [MQTT-3.3.2-2]: wildcards in a topic name; MQTT 5 reason 0x90 Topic Name invalid
    ("publish-topic-plus", lambda v: _pub(0x30, b"a/+", v), 0x90),
    ("publish-topic-hash", lambda v: _pub(0x32, b"a/#", v, pid()), 0x90),
    # 3.1.1 [MQTT-4.7.3-1] (5.0 section 3.3.2.1, without a topic alias): empty topic name
    ("publish-topic-empty", lambda v: _pub(0x30, b"", v), 0x82),
    # topic filters [MQTT-4.7.1-1], [MQTT-4.7.1-2], [MQTT-4.7.3-1]: Malformed Packet here
    ("filter-hash-not-last", lambda v: frame(0x82, pid() + props(v) + s("a/#/b") + b"\x00"), 0x81),
    ("filter-hash-in-level", lambda v: frame(0x82, pid() + props(v) + s("a/b#") + b"\x00"), 0x81),
    ("filter-plus-in-level", lambda v: frame(0x82, pid() + props(v) + s("a+/b") + b"\x00"), 0x81),
    ("filter-empty", lambda v: frame(0x82, pid() + props(v) + s("") + b"\x00"), 0x81),
    ("unsubscribe-filter-bad", lambda v: frame(0xA2, pid() + props(v) + s("a/#/b")), 0x81),
    # [MQTT-3.8.3-3] (5.0: MQTT-3.8.3-2): SUBSCRIBE needs a filter; [MQTT-3.10.3-2] UNSUBSCRIBE
    ("subscribe-no-filters", lambda v: frame(0x82, pid() + props(v)), 0x82),
    ("unsubscribe-no-filters", lambda v: frame(0xA2, pid() + props(v)), 0x82),
    # [MQTT-3.8.3-4] (5.0: section 3.8.3.1): requested QoS 3, reserved option bits
    ("subscribe-qos3", lambda v: frame(0x82, pid() + props(v) + s("a") + b"\x03"), 0x82),
    ("subscribe-reserved-bits", lambda v: frame(0x82, pid() + props(v) + s("a") + b"\xc1"),
     0x81),
    # [MQTT-2.3.1-1] (5.0: MQTT-2.2.1-3): packet identifier 0
    ("publish-pid-0", lambda v: _pub(0x32, b"a/b", v, pid(0)), 0x82),
    ("subscribe-pid-0", lambda v: frame(0x82, pid(0) + props(v) + s("a") + b"\x00"), 0x82),
    ("unsubscribe-pid-0", lambda v: frame(0xA2, pid(0) + props(v) + s("a")), 0x82),
    ("puback-pid-0", lambda v: frame(0x40, pid(0)), 0x82),
    ("pubrel-pid-0", lambda v: frame(0x62, pid(0)), 0x82),
    # reserved packet type 0 (3.1.1 section 2.2.1, 5.0 section 2.1.2)
    ("packet-type-0", lambda v: b"\x00\x00", 0x81),
    # remaining length: at most 4 bytes, minimally encoded [MQTT-1.5.5-1] (3.1.1 section 2.2.3)
    ("remaining-length-5-bytes", lambda v: b"\x30\xff\xff\xff\xff\x01", 0x81),
    ("remaining-length-not-minimal", lambda v: b"\xc0\x80\x00", 0x81),
    # content not matching the remaining length
    ("trailing-bytes", lambda v: b"\xc0\x01\x00", 0x81),
    ("truncated-topic", lambda v: frame(0x30, b"\x00\x09ab"), 0x81),
    # packets only a server sends (5.0 section 4.13.1 / 3.1.1 MQTT-4.8.0-1): Protocol Error
    ("client-sends-connack", lambda v: frame(0x20, b"\x00\x00" + props(v)), 0x82),
    ("client-sends-suback", lambda v: frame(0x90, pid() + props(v) + b"\x00"), 0x82),
    ("client-sends-unsuback", lambda v: frame(0xB0, pid() + props(v) + (b"\x00" if v == 5
                                                                       else b"")), 0x82),
    ("client-sends-pingresp", lambda v: b"\xd0\x00", 0x82),
]
RULES_V5 = [
    # [MQTT-3.3.4-6]: a client's PUBLISH must not carry a Subscription Identifier
    ("publish-with-subscription-id", lambda v: _pub(0x30, b"a/b", v, prop=b"\x0b\x01"), 0x82),
    # section 2.2.2.2: an identifier not valid for the packet is a Malformed Packet
    ("publish-session-expiry-property",
     lambda v: _pub(0x30, b"a/b", v, prop=b"\x11\x00\x00\x00\x01"), 0x81),
    ("publish-unknown-property", lambda v: _pub(0x30, b"a/b", v, prop=b"\x7f\x00"), 0x81),
    # section 2.2.2.2: a property other than user property / subscription id twice: Protocol Error
    ("publish-duplicate-property",
     lambda v: _pub(0x30, b"a/b", v, prop=b"\x03" + s("a") + b"\x03" + s("b")), 0x82),
    # property length longer than the packet
    ("publish-property-length-overrun", lambda v: frame(0x30, s("a/b") + b"\x20\x01"), 0x81),
    # MQTT-3.8.3-4: No Local on a shared subscription; section 3.8.3.1: Retain Handling 3
    ("subscribe-shared-no-local",
     lambda v: frame(0x82, pid() + props(v) + s("$share/g/t") + b"\x05"), 0x82),
    ("subscribe-retain-handling-3", lambda v: frame(0x82, pid() + props(v) + s("t") + b"\x31"),
     0x82),
    # section 3.3.2.3.2: Payload Format Indicator is 0 or 1; anything else is refused (0x82)
    ("publish-payload-format-2", lambda v: _pub(0x30, b"a/b", v, prop=b"\x01\x02"), 0x82),
    # section 3.15 / 4.12: AUTH without an Authentication Method in CONNECT
    ("auth-without-method", lambda v: b"\xf0\x00", 0x82),
]
RULES_V311 = [
    # AUTH (type 15) is reserved before MQTT 5
    ("auth-in-v311", lambda v: b"\xf0\x00", None),
]
ALL = ([pytest.param(b, r, 4, id=f"{n}-v311") for n, b, r in RULES + RULES_V311]
       + [pytest.param(b, r, 5, id=f"{n}-v5") for n, b, r in RULES + RULES_V5])


@pytest.mark.parametrize("build,reason,version", ALL)
def test_bad_packet_after_connect(broker, raw_client, witness, build, reason, version):
    """One rule broken after a successful CONNECT: MQTT 5 gets DISCONNECT with the reason the
    spec names, 3.1.1 gets the connection closed (MQTT-4.8.0-1); the broker serves others."""
    c = connect(raw_client, "bad", version)
    c.send(build(version))
    refused(c, version, reason)
    witness()
    assert broker.call(lambda: "bad" not in broker.broker.session_ids())


def test_bad_packet_among_good_ones_keeps_the_good_ones(broker, raw_client, witness):
    """The packets before the bad one in the same chunk are handled; the bad one ends it."""
    c = connect(raw_client, "bad", 5)
    good = _pub(0x32, b"w/t", 5, pid(9), payload=b"before-bad")
    c.send(good + b"\x00\x00" + _pub(0x30, b"w/t", 5, payload=b"after-bad"))
    ack = c.recv_packet()
    assert ack is not None and ack.type == PUBACK and ack.packet_id == 9
    refused(c, 5, 0x81)
    got = sync(witness.sub)
    assert [m.payload for m in got] == [b"before-bad"]     # routed; 'after-bad' never
    ack_all(witness.sub, got)
    witness()


# -- maximum packet size --------------------------------------------------------------------

@pytest.mark.broker_config(max_packet_size=1024)
@pytest.mark.parametrize("version", [4, 5])
def test_oversized_packet_refused_without_waiting_for_body(broker, raw_client, witness,
                                                           version):
    """5.0 section 3.2.2.3.6 / MQTT-3.2.2-15: a packet larger than the server's Maximum Packet
    Size gets DISCONNECT 0x95. Only the fixed header is sent: the broker decides from the
    announced length, without waiting for (or buffering) the body."""
    c = connect(raw_client, "bad", version)
    if version == 5:
        assert c.connack.properties[0x27] == 1024
    c.send(b"\x30" + varint(100_000))
    if version == 5:
        p = c.recv_packet(timeout=2)
        assert p is not None and (p.type, p.reason_code) == (DISCONNECT, 0x95), p
    assert c.closed(timeout=2)
    witness()


@pytest.mark.broker_config(max_packet_size=1024)
def test_maximum_packet_size_boundary(broker, raw_client, witness):
    """A PUBLISH of exactly max_packet_size bytes is accepted; one byte more gets 0x95."""
    c = connect(raw_client, "c", 5)
    exact = _pub(0x32, b"big/t", 5, pid(1), payload=b"x" * 1011)
    assert len(exact) == 1024
    c.send(exact)
    ack = c.recv_packet()
    assert ack is not None and ack.type == PUBACK and ack.packet_id == 1
    c.send(_pub(0x32, b"big/t", 5, pid(2), payload=b"x" * 1012))
    refused(c, 5, 0x95)
    witness()


@pytest.mark.broker_config(max_packet_size=256)
def test_oversized_first_packet_closed(broker, raw_client, witness):
    """A first packet announcing more than the limit is refused before it is read; the
    protocol version is not known yet, so nothing is sent."""
    c = raw_client(4)
    c.send(b"\x10" + varint(10_000))
    refused(c, 4, None)
    witness()


@pytest.mark.broker_config(maximum_qos=1)
def test_v5_publish_above_maximum_qos_gets_disconnect_0x9b(broker, raw_client, witness):
    """5.0 section 3.2.2.3.4 (MQTT-3.2.2-11 for the client): CONNACK says Maximum QoS 1; a QoS 2
    PUBLISH then gets DISCONNECT 0x9B (QoS not supported) and is not delivered."""
    c = connect(raw_client, "bad", 5)
    assert c.connack.properties[0x24] == 1
    c.send(_pub(0x34, b"w/t", 5, pid(1), payload=b"too-high"))
    refused(c, 5, 0x9B)
    witness()


# -- before CONNECT -----------------------------------------------------------------------------

@pytest.mark.parametrize("data", [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(b"\x00\x00", id="type-0"),
    pytest.param(b"\xff\xff\xff\xff\xff", id="ff"),
    pytest.param(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 40, id="tls-hello"),
    pytest.param(b"\x30\x05\x00\x01a\x00x", id="publish-first"),
    pytest.param(b"\x10\xff\xff\xff\xff\x01", id="5-byte-remaining-length"),
    pytest.param(b"junk" + connect_v4(), id="junk-then-connect"),
])
def test_garbage_before_connect_closed_silently(broker, raw_client, witness, data):
    """3.1.1 MQTT-3.1.0-1 / 5.0 MQTT-3.1.0-1 and MQTT-4.8.0-1: the first packet must be a
    CONNECT; anything else is closed without a CONNACK (the protocol version is unknown)."""
    c = raw_client(4)
    c.send(data)
    refused(c, 4, None)
    witness()


@pytest.mark.parametrize("data,reason", [
    # 5.0 section 2.2.2.2: an unknown property identifier is a Malformed Packet
    pytest.param(connect_v5(b"\x7f\x00"), 0x81, id="unknown-property"),
    # 5.0 section 3.1.2.11: Session Expiry Interval twice is a Protocol Error
    pytest.param(connect_v5(b"\x11\x00\x00\x00\x01\x11\x00\x00\x00\x02"), 0x82,
                 id="duplicate-property"),
    # 5.0 section 3.1.2.11.3: Receive Maximum 0 is a Protocol Error
    pytest.param(connect_v5(b"\x21\x00\x00"), 0x82, id="receive-maximum-0"),
    # 5.0 section 3.1.2.11.4: Maximum Packet Size 0 is a Protocol Error
    pytest.param(connect_v5(b"\x27\x00\x00\x00\x00"), 0x82, id="maximum-packet-size-0"),
    # 5.0 MQTT-3.1.2-3: the reserved flag must be 0
    pytest.param(connect_v5(flags=0x03), 0x81, id="reserved-flag"),
    # 5.0 MQTT-3.1.2-11/-13: will QoS without the will flag
    pytest.param(connect_v5(flags=0x0A), 0x81, id="will-qos-without-will"),
    # 5.0 MQTT-3.1.3-4 / MQTT-1.5.4-1: the client identifier must be well-formed UTF-8
    pytest.param(connect_v5(client_id=s(b"\xff\xfe")), 0x81, id="client-id-invalid-utf8"),
    # will topic with a wildcard (MQTT-3.1.3-11 / MQTT-3.3.2-2): Topic Name invalid
    pytest.param(connect_v5(flags=0x06, tail=b"\x00" + s("w/#") + s("bye")), 0x90,
                 id="will-topic-wildcard"),
    # the CONNECT ends before its client identifier does
    pytest.param(frame(0x10, s("MQTT") + b"\x05\x02\x00\x3c\x00\x00\x05ab"), 0x81,
                 id="truncated-client-id"),
])
def test_v5_bad_connect_gets_connack_reason(broker, raw_client, witness, data, reason):
    """MQTT 5 section 3.2.2.2 / MQTT-3.2.2-7 and section 4.13: a CONNECT that breaks a rule gets a
    CONNACK with the reason code (0x80 or above), then the connection is closed."""
    c = raw_client(5)
    c.send(data)
    refused(c, 5, reason, kind=CONNACK)
    witness()


def test_v5_second_bad_packet_in_connect_chunk(broker, raw_client, witness):
    """A good CONNECT and a bad packet in one chunk: CONNACK success, then DISCONNECT 0x81."""
    c = raw_client(5)
    c.send(connect_v5() + b"\x00\x00")
    p = c.recv_packet()
    assert p is not None and (p.type, p.reason_code) == (CONNACK, 0)
    refused(c, 5, 0x81)
    witness()


# -- acknowledgements that refer to nothing are not fatal -----------------------------------------

def test_v5_pubrel_for_unknown_id_gets_pubcomp_0x92(broker, raw_client, witness):
    """5.0 section 3.7.2.1: PUBREL for an unknown packet identifier is answered with PUBCOMP 0x92
    (Packet Identifier not found); the connection stays."""
    c = connect(raw_client, "c", 5)
    c.send(frame(0x62, pid(77)))
    p = c.recv_packet()
    assert p is not None and (p.type, p.packet_id, p.reason_code) == (PUBCOMP, 77, 0x92)
    c.send(frame(0x40, pid(78)) + frame(0x50, pid(79)) + frame(0x70, pid(80)))
    got = sync(c)
    assert [(x.type, x.reason_code) for x in got] == [(PUBREL, 0x92)]   # for the stray PUBREC
    witness()


def test_v311_stray_acks_ignored(broker, raw_client, witness):
    """3.1.1: acknowledgements for unknown ids are not a protocol violation; the client stays."""
    c = connect(raw_client, "c", 4)
    c.send(frame(0x40, pid(5)) + frame(0x70, pid(6)) + frame(0x62, pid(7)))
    got = sync(c)
    assert [(x.type, x.packet_id) for x in got] == [(PUBCOMP, 7)]
    witness()
