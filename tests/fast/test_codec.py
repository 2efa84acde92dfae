"""cymqtt._fast.codec: FrameParser and the encoders.

1. Round trips over generated packets of every type, per protocol version (hypothesis).
2. Byte examples from the OASIS standards, decoded byte-exactly.
3. The malformed corpus: one test per validation rule, with the reason code it yields.
4. Chunking invariance: any split of a valid stream gives the same packets.
5. A seeded fuzz run: bad bytes give packets or a CodecError in parser.error, nothing else.
6. Encoders: byte-equal to tests/models/ref_codec.py, publish_with_id, ack short forms, refusals.
7. The reference PUBLISH stream decoder agrees with FrameParser.

Spec references: "5:" is OASIS MQTT Version 5.0, "3.1.1:" is OASIS MQTT Version 3.1.1.
"""
import random

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cymqtt._fast.codec import (
    Auth, ConnAck, Connect, Disconnect, FrameParser, Packet, Ping, PubAck, Publish, SubAck,
    Subscribe, Unsubscribe, encode, encode_ack, encode_publish, publish_with_id,
)
from cymqtt._fast.errors import (
    CodecError, MalformedPacket, PacketTooLarge, ProtocolError, TopicNameInvalid,
    UnsupportedProtocolVersion,
)

try:
    from models import ref_codec
except ImportError:  # tests/ became a package
    from tests.models import ref_codec

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
WILL = 0    # the will properties inside CONNECT

ROUND_TRIP = settings(max_examples=120, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------------
# Helpers to write frames by hand

def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + ref_codec.encode_varint(len(body)) + body


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def s(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return u16(len(raw)) + raw


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return ref_codec.encode_varint(len(body)) + body


def connect_frame(level=4, name="MQTT", flags=0x02, keepalive=60, properties=b"\x00",
                  payload=None) -> bytes:
    if payload is None:
        payload = s("client")
    body = s(name) + bytes([level, flags]) + u16(keepalive)
    if level == 5:
        body += properties
    return frame(0x10, body + payload)


PINGREQ_FRAME = b"\xc0\x00"


def reject(bad: bytes, version: int, reason: int, exc_type=CodecError, good=PINGREQ_FRAME):
    """Feed good + bad + good: only the first good packet comes back and parser.error holds the
    right error; later feeds return nothing. Returns the error."""
    parser = FrameParser(version)
    expected = FrameParser(version).feed(good)
    assert len(expected) == 1
    out = parser.feed(good + bad + good)
    assert out == expected, out
    err = parser.error
    assert isinstance(err, exc_type), repr(err)
    assert err.reason_code == reason, (hex(err.reason_code), str(err))
    assert not str(err).startswith("undecodable packet"), err     # no stray exception types
    assert parser.feed(good) == []
    assert parser.feed(b"") == []
    assert parser.buffered == 0
    return err


def parse_one(data: bytes, version: int):
    parser = FrameParser(version)
    out = parser.feed(data)
    assert parser.error is None, parser.error
    assert parser.buffered == 0
    assert len(out) == 1, out
    return out[0]


# ------------------------------------------------------------------------------------------------
# Strategies

CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.text(CHAR, max_size=10)
LEVEL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/+#$"),
                max_size=5)
TOPIC_NAMES = st.one_of(
    st.lists(LEVEL, min_size=1, max_size=5).map("/".join).filter(bool),
    st.sampled_from(["a/b", "/", "$SYS/broker/load", "sport/tennis/player1", "\u00e9/\U0002A6D4"]),
)


@st.composite
def topic_filters(draw, allow_shared=True):
    """(filter, shared) with filter valid under MQTT 4.7 / 4.8."""
    levels = draw(st.lists(st.one_of(LEVEL, st.just("+")), max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels) or "+"
    if allow_shared and draw(st.integers(0, 5)) == 0:
        name = draw(st.text(st.characters(blacklist_categories=("Cs",),
                                          blacklist_characters="\x00/+#"), min_size=1, max_size=4))
        return f"$share/{name}/{f}", True
    return f, False


BOOL = st.integers(0, 1)
U16 = st.integers(0, 0xFFFF)
U16NZ = st.integers(1, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U32NZ = st.integers(1, 0xFFFFFFFF)
BIN = st.binary(max_size=12)
USER = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=3)
ACKS = {PUBACK, PUBREC, PUBREL, PUBCOMP}
EVERYWHERE = {CONNECT, CONNACK, PUBLISH, WILL, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK,
              DISCONNECT, AUTH} | ACKS

# MQTT 5 table 2-4, written out independently of the codec's table: id -> (values, packets).
PROPERTY_TABLE = {
    0x01: (BOOL, {PUBLISH, WILL}),                          # payload format indicator
    0x02: (U32, {PUBLISH, WILL}),                           # message expiry interval
    0x03: (TEXT, {PUBLISH, WILL}),                          # content type
    0x08: (TOPIC_NAMES, {PUBLISH, WILL}),                   # response topic
    0x09: (BIN, {PUBLISH, WILL}),                           # correlation data
    0x0B: (None, {PUBLISH, SUBSCRIBE}),                     # subscription identifier
    0x11: (U32, {CONNECT, CONNACK, DISCONNECT}),            # session expiry interval
    0x12: (TEXT, {CONNACK}),                                # assigned client identifier
    0x13: (U16, {CONNACK}),                                 # server keep alive
    0x15: (TEXT, {CONNECT, CONNACK, AUTH}),                 # authentication method
    0x16: (BIN, {CONNECT, CONNACK, AUTH}),                  # authentication data
    0x17: (BOOL, {CONNECT}),                                # request problem information
    0x18: (U32, {WILL}),                                    # will delay interval
    0x19: (BOOL, {CONNECT}),                                # request response information
    0x1A: (TEXT, {CONNACK}),                                # response information
    0x1C: (TEXT, {CONNACK, DISCONNECT}),                    # server reference
    0x1F: (TEXT, {CONNACK, SUBACK, UNSUBACK, DISCONNECT, AUTH} | ACKS),   # reason string
    0x21: (U16NZ, {CONNECT, CONNACK}),                      # receive maximum
    0x22: (U16, {CONNECT, CONNACK}),                        # topic alias maximum
    0x23: (U16NZ, {PUBLISH}),                               # topic alias
    0x24: (BOOL, {CONNACK}),                                # maximum QoS
    0x25: (BOOL, {CONNACK}),                                # retain available
    0x26: (USER, EVERYWHERE),                               # user property
    0x27: (U32NZ, {CONNECT, CONNACK}),                      # maximum packet size
    0x28: (BOOL, {CONNACK}),                                # wildcard subscription available
    0x29: (BOOL, {CONNACK}),                                # subscription identifier available
    0x2A: (BOOL, {CONNACK}),                                # shared subscription available
}


@st.composite
def properties(draw, where):
    allowed = [pid for pid, (_, w) in PROPERTY_TABLE.items() if where in w]
    chosen = draw(st.lists(st.sampled_from(allowed), unique=True, max_size=4))
    out = {}
    for pid in chosen:
        if pid == 0x0B:
            # repeatable in PUBLISH (one per matching subscription), once in SUBSCRIBE
            n = (1, 3) if where == PUBLISH else (1, 1)
            out[pid] = draw(st.lists(st.integers(1, 268_435_455), min_size=n[0], max_size=n[1]))
        else:
            out[pid] = draw(PROPERTY_TABLE[pid][0])
    return out or None


def v5_props(draw, version, where):
    return draw(properties(where)) if version == 5 else None


@st.composite
def connects(draw, version):
    will = draw(st.booleans())
    username = draw(st.none() | TEXT)
    password = draw(st.none() | BIN)
    if version < 5 and username is None:
        password = None         # [MQTT-3.1.2-22]
    return Connect(
        draw(TEXT), version=version, clean_start=draw(st.booleans()), keepalive=draw(U16),
        properties=v5_props(draw, version, CONNECT),
        will_topic=draw(TOPIC_NAMES) if will else None,
        will_payload=draw(st.binary(max_size=20)),
        will_qos=draw(st.integers(0, 2)) if will else 0,
        will_retain=draw(st.booleans()) if will else False,
        will_properties=v5_props(draw, version, WILL) if will else None,
        username=username, password=password,
    )


@st.composite
def connacks(draw, version):
    rc = draw(st.integers(0, 5) if version < 5 else st.sampled_from(
        [0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
         0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F]))
    return ConnAck(draw(st.booleans()), rc, v5_props(draw, version, CONNACK))


@st.composite
def publishes(draw, version, max_payload=40):
    qos = draw(st.integers(0, 2))
    props_ = v5_props(draw, version, PUBLISH)
    topic = draw(TOPIC_NAMES)
    if props_ and 0x23 in props_ and draw(st.booleans()):
        topic = ""              # a topic alias stands in for the name [MQTT-3.3.2-1]
    return Publish(topic, draw(st.binary(max_size=max_payload)), qos, draw(st.booleans()),
                   draw(st.booleans()) if qos else False,
                   draw(U16NZ) if qos else 0, props_)


@st.composite
def pubacks(draw, version):
    ptype = draw(st.sampled_from(sorted(ACKS)))
    rc = 0 if version < 5 else draw(st.sampled_from([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91,
                                                     0x92, 0x97, 0x99]))
    return PubAck(ptype, draw(U16NZ), rc, v5_props(draw, version, ptype))


@st.composite
def subscribes(draw, version):
    topics = []
    for _ in range(draw(st.integers(1, 4))):
        f, shared = draw(topic_filters())
        opts = draw(st.integers(0, 2))
        if version == 5:
            opts |= draw(st.integers(0, 1)) << 3 | draw(st.integers(0, 2)) << 4
            if not shared:
                opts |= draw(st.integers(0, 1)) << 2    # no local [MQTT-3.8.3-4]
        topics.append((f, opts))
    return Subscribe(draw(U16NZ), topics, v5_props(draw, version, SUBSCRIBE))


@st.composite
def subacks(draw, version):
    ptype = draw(st.sampled_from([SUBACK, UNSUBACK]))
    if ptype == UNSUBACK and version < 5:
        codes = []                              # 3.1.1: UNSUBACK has no payload
    elif ptype == SUBACK:
        codes = draw(st.lists(st.sampled_from(
            [0, 1, 2, 0x80] + ([0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2]
                               if version == 5 else [])), min_size=1, max_size=5))
    else:
        codes = draw(st.lists(st.sampled_from([0, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]),
                              min_size=1, max_size=5))
    return SubAck(ptype, draw(U16NZ), codes, v5_props(draw, version, ptype))


@st.composite
def unsubscribes(draw, version):
    topics = [draw(topic_filters())[0] for _ in range(draw(st.integers(1, 4)))]
    return Unsubscribe(draw(U16NZ), topics, v5_props(draw, version, UNSUBSCRIBE))


@st.composite
def pings(draw, version):
    return Ping(draw(st.sampled_from([PINGREQ, PINGRESP])))


@st.composite
def disconnects(draw, version):
    if version < 5:
        return Disconnect()
    return Disconnect(draw(st.sampled_from([0x00, 0x04, 0x80, 0x81, 0x82, 0x8B, 0x8E, 0x95])),
                      v5_props(draw, version, DISCONNECT))


@st.composite
def auths(draw, version):
    return Auth(draw(st.sampled_from([0x00, 0x18, 0x19])), v5_props(draw, version, AUTH))


KINDS = {
    "connect": connects, "connack": connacks, "publish": publishes, "puback": pubacks,
    "subscribe": subscribes, "suback": subacks, "unsubscribe": unsubscribes, "ping": pings,
    "disconnect": disconnects, "auth": auths,
}


def any_packet(version):
    kinds = [k for k in KINDS if k not in ("connect", "auth") or (k == "auth" and version == 5)]
    return st.one_of([KINDS[k](version) for k in kinds])


# ------------------------------------------------------------------------------------------------
# 1. Round trips

@pytest.mark.parametrize("kind,version", [(k, v) for k in sorted(KINDS) for v in (3, 4, 5)
                                          if k != "auth" or v == 5])      # AUTH is MQTT 5 only
@ROUND_TRIP
@given(data=st.data())
def test_round_trip(kind, version, data):
    """FrameParser(version).feed(encode(p, version)) == [p]; re-encoding gives the same bytes."""
    packet = data.draw(KINDS[kind](version))
    wire = encode(packet, version)
    assert packet.encode(version) == wire
    assert wire[0] >> 4 == packet.type
    parsers = [FrameParser(version)]
    if kind == "connect":
        parsers.append(FrameParser(0))          # a server learns the level from CONNECT
    for parser in parsers:
        out = parser.feed(wire)
        assert parser.error is None, parser.error
        assert out == [packet]
        assert parser.version == version
        assert type(out[0]) is type(packet)
        assert encode(out[0], version) == wire


def test_auth_needs_mqtt_5_to_encode():
    with pytest.raises(ProtocolError):
        encode(Auth(0x18), 4)


def test_equality_is_field_by_field():
    assert Publish("a", b"x") == Publish("a", b"x", properties={})
    assert Publish("a", b"x") != Publish("a", b"y")
    assert Publish("a", b"x", 1, packet_id=1) != Publish("a", b"x", 1, packet_id=2)
    assert PubAck(PUBACK, 1) != PubAck(PUBREC, 1)
    assert SubAck(SUBACK, 1, [0]) != SubAck(UNSUBACK, 1, [0])
    assert Ping(PINGREQ) != Ping(PINGRESP)
    assert Disconnect() != Auth()
    assert Publish("a").name == "PUBLISH"


def test_packet_constructors_refuse_wrong_types():
    for cls, bad in ((PubAck, PUBLISH), (SubAck, SUBSCRIBE), (Ping, DISCONNECT)):
        with pytest.raises(ValueError):
            cls(bad)


# ------------------------------------------------------------------------------------------------
# 2. Examples from the standards

CONNECT_PAYLOAD_311 = s("cid") + s("w/t") + s(b"hi") + s("user") + s(b"pass")


def test_spec_connect_variable_header_311():
    """3.1.1 section 3.1.2.10 figure 3.6: 00 04 'MQTT' 04 CE 00 0A (user name, password, will QoS 1,
    will flag, clean session; keep alive 10)."""
    var_header = b"\x00\x04MQTT\x04\xce\x00\x0a"
    pkt = parse_one(frame(0x10, var_header + CONNECT_PAYLOAD_311), 0)
    assert pkt == Connect("cid", version=4, clean_start=True, keepalive=10, will_topic="w/t",
                          will_payload=b"hi", will_qos=1, will_retain=False, username="user",
                          password=b"pass")
    assert pkt.protocol_name == "MQTT" and pkt.version == 4
    assert encode(pkt) == frame(0x10, var_header + CONNECT_PAYLOAD_311)


def test_spec_connect_variable_header_5():
    """5 section 3.1.2.11 figure 3-6: ... 05 CE 00 0A, properties length 5, session expiry
    interval (0x11) 10."""
    var_header = b"\x00\x04MQTT\x05\xce\x00\x0a\x05\x11\x00\x00\x00\x0a"
    payload = s("cid") + b"\x00" + s("w/t") + s(b"hi") + s("user") + s(b"pass")
    parser = FrameParser(0)
    (pkt,) = parser.feed(frame(0x10, var_header + payload))
    assert parser.version == 5
    assert pkt.properties == {0x11: 10}
    assert (pkt.keepalive, pkt.will_qos, pkt.clean_start, pkt.username, pkt.password) == (
        10, 1, True, "user", b"pass")
    assert encode(pkt) == frame(0x10, var_header + payload)


def test_spec_connect_mqtt_3_1():
    """MQTT 3.1: protocol name "MQIsdp", level 3."""
    pkt = parse_one(frame(0x10, s("MQIsdp") + b"\x03\x02\x00\x3c" + s("c")), 0)
    assert pkt == Connect("c", version=3, keepalive=60)
    assert pkt.protocol_name == "MQIsdp"


def test_spec_publish_variable_header():
    """3.1.1 section 3.3.2.3 figure 3.12 / 5 figure 3-9: topic "a/b", packet identifier 10."""
    wire4 = frame(0x32, b"\x00\x03a/b\x00\x0a" + b"payload")
    assert parse_one(wire4, 4) == Publish("a/b", b"payload", qos=1, packet_id=10)
    assert encode_publish("a/b", b"payload", 1, packet_id=10) == wire4
    wire5 = frame(0x32, b"\x00\x03a/b\x00\x0a\x00" + b"payload")
    assert parse_one(wire5, 5) == Publish("a/b", b"payload", qos=1, packet_id=10)
    assert encode_publish("a/b", b"payload", 1, packet_id=10, version=5) == wire5


def test_spec_subscribe_suback_unsubscribe():
    """3.1.1 figures 3.21/3.22 (SUBSCRIBE "a/b" QoS 1, "c/d" QoS 2, id 10), 3.26 (SUBACK 0, 2, 128)
    and 3.30 (UNSUBSCRIBE "a/b", "c/d")."""
    sub = b"\x82\x0e\x00\x0a\x00\x03a/b\x01\x00\x03c/d\x02"
    assert parse_one(sub, 4) == Subscribe(10, [("a/b", 1), ("c/d", 2)])
    suback = b"\x90\x05\x00\x0a\x00\x02\x80"
    assert parse_one(suback, 4) == SubAck(SUBACK, 10, [0, 2, 0x80])
    unsub = b"\xa2\x0c\x00\x0a\x00\x03a/b\x00\x03c/d"
    assert parse_one(unsub, 4) == Unsubscribe(10, ["a/b", "c/d"])
    for wire, pkt in ((sub, Subscribe(10, [("a/b", 1), ("c/d", 2)])),
                      (suback, SubAck(SUBACK, 10, [0, 2, 0x80])),
                      (unsub, Unsubscribe(10, ["a/b", "c/d"]))):
        assert encode(pkt, 4) == wire


@pytest.mark.parametrize("wire,version,pkt", [
    (b"\x20\x02\x00\x00", 4, ConnAck(False, 0)),
    (b"\x20\x02\x01\x00", 4, ConnAck(True, 0)),
    (b"\x20\x02\x00\x05", 4, ConnAck(False, 5)),         # 3.1.1 table 3.1: not authorized
    (b"\x20\x03\x00\x00\x00", 5, ConnAck(False, 0)),
    (b"\x20\x03\x00\x84\x00", 5, ConnAck(False, 0x84)),
    (b"\x40\x02\x00\x0a", 4, PubAck(PUBACK, 10)),
    (b"\x50\x02\x00\x0a", 4, PubAck(PUBREC, 10)),
    (b"\x62\x02\x00\x0a", 4, PubAck(PUBREL, 10)),
    (b"\x70\x02\x00\x0a", 4, PubAck(PUBCOMP, 10)),
    (b"\x40\x02\x00\x0a", 5, PubAck(PUBACK, 10)),        # 5 section 3.4.2.1: rc 0 omitted
    (b"\x40\x03\x00\x0a\x10", 5, PubAck(PUBACK, 10, 0x10)),
    (b"\x40\x04\x00\x0a\x10\x00", 5, PubAck(PUBACK, 10, 0x10)),
    (b"\xb0\x02\x00\x0a", 4, SubAck(UNSUBACK, 10, [])),
    (b"\xb0\x04\x00\x0a\x00\x11", 5, SubAck(UNSUBACK, 10, [0x11])),
    (b"\xc0\x00", 4, Ping(PINGREQ)),
    (b"\xd0\x00", 4, Ping(PINGRESP)),
    (b"\xe0\x00", 4, Disconnect()),
    (b"\xe0\x00", 5, Disconnect(0)),                      # 5 section 3.14.2.1
    (b"\xe0\x01\x04", 5, Disconnect(0x04)),
    (b"\xe0\x02\x8e\x00", 5, Disconnect(0x8E)),
    (b"\xf0\x00", 5, Auth(0)),                            # 5 section 3.15.2.1
    (b"\xf0\x02\x18\x00", 5, Auth(0x18)),
])
def test_spec_short_packets(wire, version, pkt):
    assert parse_one(wire, version) == pkt


def test_spec_properties_example():
    """5 section 3.1.2.11: user properties repeat and keep their order; table 2-4 types."""
    body = (b"\x00\x03a/b"
            + props(b"\x01\x01", b"\x02\x00\x00\x0e\x10", b"\x03" + s("text/plain"),
                    b"\x08" + s("re/ply"), b"\x09" + s(b"\x00\x01"), b"\x0b\x80\x01",
                    b"\x0b\x01", b"\x23\x00\x07", b"\x26" + s("k") + s("v1"),
                    b"\x26" + s("k") + s("v2"))
            + b"msg")
    pkt = parse_one(frame(0x30, body), 5)
    assert pkt.properties == {
        0x01: 1, 0x02: 3600, 0x03: "text/plain", 0x08: "re/ply", 0x09: b"\x00\x01",
        0x0B: [128, 1], 0x23: 7, 0x26: [("k", "v1"), ("k", "v2")]}
    assert list(pkt.properties[0x26]) == [("k", "v1"), ("k", "v2")]
    assert pkt.payload == b"msg"
    assert encode(pkt, 5) == frame(0x30, body)


@pytest.mark.parametrize("rl", [0, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_remaining_length_boundaries(rl):
    """5 section 1.5.5 table 1-1, through the fixed header of a PUBLISH of `rl` body bytes."""
    head = b"\x00\x01t"
    if rl < len(head):
        wire = frame(0xc0, b"")
        assert parse_one(wire, 4) == Ping(PINGREQ)
        return
    payload = b"p" * (rl - len(head))
    wire = encode_publish("t", payload)
    assert wire[1:1 + len(ref_codec.encode_varint(rl))] == ref_codec.encode_varint(rl)
    assert parse_one(wire, 4) == Publish("t", payload)


# ------------------------------------------------------------------------------------------------
# 3. The malformed corpus: one test per rule

@pytest.mark.parametrize("bad,version", [
    (b"\x80\x04\x00\x01\x00\x01", 4),     # SUBSCRIBE with flags 0 (must be 0x82)
    (b"\x83\x06\x00\x01\x00\x01a\x00", 4),
    (b"\xa0\x05\x00\x01\x00\x01a", 4),     # UNSUBSCRIBE with flags 0 (must be 0xA2)
    (b"\x60\x02\x00\x01", 4),              # PUBREL with flags 0 (must be 0x62)
    (b"\x41\x02\x00\x01", 4),              # PUBACK 0x41
    (b"\x52\x02\x00\x01", 4),
    (b"\x72\x02\x00\x01", 4),
    (b"\x11\x0c" + b"\x00\x04MQTT\x04\x02\x00\x3c\x00\x00", 0),    # CONNECT 0x11
    (b"\x28\x02\x00\x00", 4),
    (b"\x98\x03\x00\x01\x00", 4),
    (b"\xb2\x02\x00\x01", 4),
    (b"\xc1\x00", 4), (b"\xd8\x00", 4), (b"\xe2\x00", 4), (b"\xf1\x00", 5),
])
def test_reserved_fixed_header_flags(bad, version):
    """5 section 2.1.3 [MQTT-2.1.3-1]: wrong reserved flags are a Malformed Packet (0x81)."""
    reject(bad, version, 0x81, MalformedPacket)


@pytest.mark.parametrize("first", [0x00, 0x0F])
def test_reserved_packet_type_0(first):
    reject(bytes([first, 0]), 4, 0x81, MalformedPacket)


@pytest.mark.parametrize("first", [0x36, 0x37, 0x3E, 0x3F])
def test_publish_qos_3(first):
    """[MQTT-3.3.1-4]: a PUBLISH with both QoS bits set is malformed."""
    reject(frame(first, b"\x00\x01a\x00\x01"), 4, 0x81, MalformedPacket)


@pytest.mark.parametrize("first", [0x38, 0x39])
def test_publish_qos_0_with_dup(first):
    """[MQTT-3.3.1-2]: DUP must be 0 for QoS 0."""
    reject(frame(first, b"\x00\x01a"), 4, 0x81, MalformedPacket)


BAD_UTF8 = [b"a\x00b", b"\xed\xa0\x80", b"x/\xed\xbf\xbf", b"\xc0\xaf", b"\xff", b"a\xe2\x82"]


@pytest.mark.parametrize("raw", BAD_UTF8)
@pytest.mark.parametrize("version", [4, 5])
def test_publish_topic_bad_utf8(raw, version):
    """[MQTT-1.5.4-1/2]: ill-formed UTF-8, surrogates, overlongs and U+0000 in a topic: 0x81."""
    body = s(raw) + (b"\x00" if version == 5 else b"") + b"payload"
    reject(frame(0x30, body), version, 0x81, MalformedPacket)


def test_publish_topic_cache_does_not_skip_validation():
    """The parser caches the last topic; a different bad topic of the same length still fails."""
    good = frame(0x30, s("a/b") + b"x")
    reject(frame(0x30, s(b"a\x00b") + b"x"), 4, 0x81, MalformedPacket, good=good)
    reject(frame(0x30, s(b"a/+") + b"x"), 4, 0x90, TopicNameInvalid, good=good)


@pytest.mark.parametrize("raw", BAD_UTF8)
def test_connect_client_id_bad_utf8(raw):
    reject(connect_frame(payload=s(raw)), 0, 0x81, MalformedPacket)
    reject(connect_frame(level=5, payload=s(raw)), 0, 0x81, MalformedPacket)


@pytest.mark.parametrize("where", ["user name", "will topic", "subscribe", "unsubscribe",
                                   "property", "user property"])
def test_other_strings_bad_utf8(where):
    bad = s(b"\xed\xa0\x80")
    wire = {
        "user name": connect_frame(flags=0x82, payload=s("c") + bad),
        "will topic": connect_frame(flags=0x06, payload=s("c") + bad + s(b"m")),
        "subscribe": frame(0x82, u16(1) + bad + b"\x00"),
        "unsubscribe": frame(0xA2, u16(1) + bad),
        "property": frame(0x30, s("t") + props(b"\x03" + bad)),
        "user property": frame(0x30, s("t") + props(b"\x26" + s("k") + bad)),
    }[where]
    reject(wire, 5 if "property" in where else 4, 0x81, MalformedPacket)


@pytest.mark.parametrize("topic", ["a/+", "+", "#", "a/#", "sport/tennis+", "a#b"])
@pytest.mark.parametrize("version", [4, 5])
def test_publish_topic_with_wildcards(topic, version):
    """[MQTT-3.3.2-2]: no wildcards in a PUBLISH topic name: Topic Name invalid (0x90)."""
    body = s(topic) + (b"\x00" if version == 5 else b"")
    reject(frame(0x30, body), version, 0x90, TopicNameInvalid)


def test_will_topic_with_wildcards():
    reject(connect_frame(flags=0x06, payload=s("c") + s("a/#") + s(b"m")), 0, 0x90,
           TopicNameInvalid)


@pytest.mark.parametrize("version", [4, 5])
def test_publish_empty_topic(version):
    """[MQTT-4.7.3-1]; in MQTT 5 an empty topic needs a topic alias [MQTT-3.3.2-1]."""
    reject(frame(0x30, s("") + (b"\x00" if version == 5 else b"") + b"x"), version, 0x82,
           ProtocolError)
    if version == 5:
        pkt = parse_one(frame(0x30, s("") + props(b"\x23\x00\x01") + b"x"), 5)
        assert pkt.topic == "" and pkt.properties == {0x23: 1}


BAD_FILTERS = ["a/#/b", "a+", "#/", "a/b#", "+a", "a/+b", "##", "$share//x", "$share/g",
               "$share/g/", "$share/g+/x", "$share/#/x", "", "$queue/"]


@pytest.mark.parametrize("bad", BAD_FILTERS)
@pytest.mark.parametrize("packet", ["subscribe", "unsubscribe"])
def test_malformed_topic_filters(bad, packet):
    """5 section 4.7.1 / 4.8.2: misplaced wildcards, empty or nameless shares: 0x81."""
    if packet == "subscribe":
        wire = frame(0x82, u16(1) + s("ok/+") + b"\x01" + s(bad) + b"\x01")
    else:
        wire = frame(0xA2, u16(1) + s("ok/#") + s(bad))
    reject(wire, 4, 0x81, MalformedPacket)


@pytest.mark.parametrize("good", ["#", "+", "/", "a/+/b", "+/+", "a/#", "/#", "$SYS/#",
                                  "$share/g/a/#", "$share/g/+", "$share/g//", "$queue/a"])
def test_valid_topic_filters(good):
    assert parse_one(frame(0x82, u16(1) + s(good) + b"\x02"), 4) == Subscribe(1, [(good, 2)])
    assert parse_one(frame(0xA2, u16(1) + s(good)), 4) == Unsubscribe(1, [good])


@pytest.mark.parametrize("wire,version", [
    (frame(0x32, s("a") + u16(0)), 4),                    # PUBLISH QoS 1
    (frame(0x34, s("a") + u16(0) + b"\x00"), 5),          # PUBLISH QoS 2
    (b"\x40\x02\x00\x00", 4),                             # PUBACK
    (b"\x50\x02\x00\x00", 5),                             # PUBREC
    (b"\x62\x02\x00\x00", 4),                             # PUBREL
    (b"\x70\x02\x00\x00", 4),                             # PUBCOMP
    (frame(0x82, u16(0) + s("a") + b"\x00"), 4),          # SUBSCRIBE
    (frame(0xA2, u16(0) + s("a")), 4),                    # UNSUBSCRIBE
    (b"\x90\x03\x00\x00\x00", 4),                         # SUBACK
    (b"\xb0\x02\x00\x00", 4),                             # UNSUBACK
])
def test_packet_id_zero(wire, version):
    """[MQTT-2.2.1-3]: packet identifiers are non-zero: Protocol Error (0x82)."""
    reject(wire, version, 0x82, ProtocolError)


@pytest.mark.parametrize("wire,version", [
    (frame(0x82, u16(1)), 4),
    (frame(0xA2, u16(1)), 4),
    (frame(0x82, u16(1) + b"\x00"), 5),
    (frame(0xA2, u16(1) + b"\x00"), 5),
])
def test_subscribe_unsubscribe_without_filters(wire, version):
    """[MQTT-3.8.3-2/3], [MQTT-3.10.3-2]: at least one topic filter: 0x82."""
    reject(wire, version, 0x82, ProtocolError)


@pytest.mark.parametrize("bad,version,reason", [
    (frame(0x82, u16(1) + s("a") + b"\x03"), 4, 0x81),       # QoS 3
    (frame(0x82, u16(1) + s("a") + b"\x04"), 4, 0x81),       # reserved bits in 3.1.1
    (frame(0x82, u16(1) + s("a") + b"\x80"), 4, 0x81),
    (frame(0x82, u16(1) + b"\x00" + s("a") + b"\x03"), 5, 0x82),   # 5: a Protocol Error
    (frame(0x82, u16(1) + b"\x00" + s("a") + b"\x40"), 5, 0x81),   # reserved bits in 5
    (frame(0x82, u16(1) + b"\x00" + s("a") + b"\x30"), 5, 0x82),   # retain handling 3
    (frame(0x82, u16(1) + b"\x00" + s("$share/g/a") + b"\x04"), 5, 0x82),  # no local, shared
    (frame(0x82, u16(1) + s("a")), 4, 0x81),                 # options byte missing
])
def test_subscribe_options(bad, version, reason):
    """3.1.1 section 3.8.3.1, 5 section 3.8.3.1: subscription options."""
    reject(bad, version, reason)


def test_subscribe_options_valid_in_5():
    wire = frame(0x82, u16(1) + b"\x00" + s("a") + b"\x2e" + s("$share/g/a") + b"\x1a")
    assert parse_one(wire, 5) == Subscribe(1, [("a", 0x2E), ("$share/g/a", 0x1A)])


@pytest.mark.parametrize("bad", [
    connect_frame(level=5, properties=props(b"\x11\x00\x00\x00\x0a", b"\x11\x00\x00\x00\x0b")),
    connect_frame(level=5, properties=props(b"\x21\x00\x0a", b"\x21\x00\x0a")),
    frame(0x30, s("t") + props(b"\x01\x00", b"\x01\x01")),
    frame(0x30, s("t") + props(b"\x23\x00\x01", b"\x23\x00\x02")),
    frame(0x82, u16(1) + props(b"\x0b\x01", b"\x0b\x02") + s("a") + b"\x00"),
    b"\x40\x0a\x00\x01\x00\x06" + b"\x1f\x00\x00\x1f\x00\x00",
])
def test_duplicated_property(bad):
    """5 section 2.2.2.2: a property other than user property / PUBLISH subscription identifier
    that appears twice is a Protocol Error (0x82)."""
    reject(bad, 5, 0x82, ProtocolError)


@pytest.mark.parametrize("pid", [0x00, 0x04, 0x0A, 0x10, 0x14, 0x1B, 0x1D, 0x20, 0x2B, 0x3F, 0x7F])
def test_unknown_property(pid):
    """5 section 2.2.2.2: an unknown property identifier is malformed (0x81)."""
    reject(frame(0x30, s("t") + props(bytes([pid, 0]))), 5, 0x81, MalformedPacket)


def test_unknown_property_multibyte_identifier():
    reject(frame(0x30, s("t") + props(b"\x80\x01\x00")), 5, 0x81, MalformedPacket)


@pytest.mark.parametrize("bad", [
    connect_frame(level=5, properties=props(b"\x23\x00\x01")),            # topic alias
    connect_frame(level=5, properties=props(b"\x01\x01")),                # payload format
    connect_frame(level=5, properties=props(b"\x18\x00\x00\x00\x01")),    # will delay
    connect_frame(level=5, flags=0x06,                                    # session expiry in will
                  payload=s("c") + props(b"\x11\x00\x00\x00\x01") + s("w") + s(b"m")),
    frame(0x30, s("t") + props(b"\x11\x00\x00\x00\x01")),                 # session expiry
    frame(0x30, s("t") + props(b"\x1f" + s("why"))),                      # reason string
    b"\x40\x06\x00\x01\x00\x02\x23\x00",                                  # PUBACK topic alias
    frame(0x82, u16(1) + props(b"\x23\x00\x01") + s("a") + b"\x00"),
    frame(0xA2, u16(1) + props(b"\x0b\x01") + s("a")),
    b"\xe0\x04\x00\x02\x21\x00",                                          # DISCONNECT rcv max
    b"\xf0\x04\x18\x02\x12\x00",                                          # AUTH client id
])
def test_property_not_allowed_on_packet(bad):
    """5 table 2-4: a property outside the packets it belongs to is malformed (0x81)."""
    reject(bad, 5, 0x81, MalformedPacket)


@pytest.mark.parametrize("bad", [
    connect_frame(level=5, properties=props(b"\x21\x00\x00")),            # receive maximum 0
    connect_frame(level=5, properties=props(b"\x27\x00\x00\x00\x00")),    # max packet size 0
    frame(0x30, s("t") + props(b"\x0b\x00")),                             # subscription id 0
    frame(0x82, u16(1) + props(b"\x0b\x00") + s("a") + b"\x00"),
    connect_frame(level=5, properties=props(b"\x17\x02")),                # request problem 2
    connect_frame(level=5, properties=props(b"\x19\x02")),
    frame(0x30, s("t") + props(b"\x01\x02")),                             # payload format 2
])
def test_property_value_forbidden(bad):
    """5 sections 3.1.2.11.x, 3.3.2.3.8: receive maximum 0, max packet size 0, subscription id 0
    and byte flags other than 0/1 are Protocol Errors (0x82)."""
    reject(bad, 5, 0x82, ProtocolError)


@pytest.mark.parametrize("bad", [
    frame(0x30, s("t") + b"\x05\x02\x00\x00"),          # property length beyond the packet
    frame(0x30, s("t") + b"\x03\x02\x00\x00\x00\x00"),  # value crosses the block's end
    frame(0x30, s("t") + b"\x80\x80\x80\x80\x01"),      # property length: 5 byte varint
    frame(0x30, s("t") + b"\x80\x00"),                  # property length not minimal
    frame(0x30, s("t")),                                # property length missing
    b"\x40\x05\x00\x01\x00\x05\x1f",                    # PUBACK property length too long
])
def test_property_block_malformed(bad):
    reject(bad, 5, 0x81, MalformedPacket)


@pytest.mark.parametrize("max_size", [2, 10, 100, 1000, 20_000])
def test_oversize_packet_refused_from_its_header(max_size):
    """A fixed header announcing more than max_packet_size gets 0x95 at once, before its body."""
    total = max_size + 1
    rl = total - 1
    while 1 + len(ref_codec.encode_varint(rl)) + rl > total:
        rl -= 1
    header = bytes([0x30]) + ref_codec.encode_varint(rl)
    assert len(header) + rl == total
    parser = FrameParser(4, max_packet_size=max_size)
    assert parser.feed(PINGREQ_FRAME + header) == [Ping(PINGREQ)]
    assert isinstance(parser.error, PacketTooLarge)
    assert parser.error.reason_code == 0x95
    assert parser.buffered == 0
    # The header split over feeds is refused as soon as it is complete.
    parser = FrameParser(4, max_packet_size=max_size)
    for i in range(len(header) - 1):
        assert parser.feed(header[i:i + 1]) == []
        assert parser.error is None
    assert parser.feed(header[-1:]) == []
    assert parser.error.reason_code == 0x95


def test_packet_of_exactly_max_size_is_accepted():
    wire = encode_publish("t", b"x" * 200)
    assert FrameParser(4, max_packet_size=len(wire)).feed(wire) == [Publish("t", b"x" * 200)]
    parser = FrameParser(4, max_packet_size=len(wire) - 1)
    assert parser.feed(wire) == []
    assert parser.error.reason_code == 0x95


def test_largest_remaining_length_waits_for_its_body():
    parser = FrameParser(4)
    assert parser.feed(b"\x30\xff\xff\xff\x7f\x00\x01t") == []
    assert parser.error is None
    assert parser.buffered == 8


@pytest.mark.parametrize("bad", [
    b"\x30\x80\x80\x80\x80\x01",     # remaining length of 5 bytes
    b"\xc0\xff\xff\xff\xff",
    b"\xc0\x80\x00",                 # not minimal
    b"\x30\x80\x80\x00",
])
def test_remaining_length_malformed(bad):
    """[MQTT-1.5.5-1]: the remaining length is a minimal varint of at most 4 bytes."""
    reject(bad, 4, 0x81, MalformedPacket)


@pytest.mark.parametrize("name,level", [
    ("MQTT", 3), ("MQTT", 6), ("MQTT", 0), ("MQIsdp", 4), ("MQIsdp", 5), ("mqtt", 4),
    ("MQTX", 4), ("", 4), ("MQTT\u00e9", 4),
])
def test_unsupported_protocol(name, level):
    """[MQTT-3.1.2-1/2]: an unknown protocol name or level: Unsupported Protocol Version (0x84)."""
    wire = frame(0x10, s(name) + bytes([level, 0x02]) + u16(60) + s("c"))
    reject(wire, 0, 0x84, UnsupportedProtocolVersion)


@pytest.mark.parametrize("version", [0, 3, 4])
def test_auth_before_mqtt_5(version):
    """AUTH (type 15) is reserved before MQTT 5: malformed (0x81)."""
    reject(b"\xf0\x00", version, 0x81, MalformedPacket)
    reject(b"\xf0\x02\x18\x00", version, 0x81, MalformedPacket)


def test_auth_after_a_v5_connect_in_the_same_chunk():
    parser = FrameParser(0)
    out = parser.feed(connect_frame(level=5) + b"\xf0\x02\x18\x00")
    assert parser.error is None
    assert out[1] == Auth(0x18)


@pytest.mark.parametrize("level", [3, 4, 5])
def test_connect_reserved_flag(level):
    """[MQTT-3.1.2-3]: the reserved CONNECT flag must be 0."""
    name = "MQIsdp" if level == 3 else "MQTT"
    reject(connect_frame(level=level, name=name, flags=0x03), 0, 0x81, MalformedPacket)


@pytest.mark.parametrize("flags", [0x08, 0x10, 0x18, 0x20, 0x28])
def test_will_qos_or_retain_without_will_flag(flags):
    """[MQTT-3.1.2-11/13/15]: will QoS and retain must be 0 when the will flag is 0."""
    reject(connect_frame(flags=flags | 0x02), 0, 0x81, MalformedPacket)


def test_will_qos_3():
    """[MQTT-3.1.2-14]."""
    reject(connect_frame(flags=0x1E, payload=s("c") + s("w") + s(b"m")), 0, 0x81, MalformedPacket)


def test_password_without_user_name_before_5():
    """3.1.1 [MQTT-3.1.2-22]; MQTT 5 allows it."""
    reject(connect_frame(flags=0x42, payload=s("c") + s(b"pw")), 0, 0x81, MalformedPacket)
    pkt = parse_one(connect_frame(level=5, flags=0x42, payload=s("c") + s(b"pw")), 0)
    assert pkt.password == b"pw" and pkt.username is None


@pytest.mark.parametrize("bad", [
    connect_frame(flags=0x82, payload=s("c")),               # user name flag, no user name
    connect_frame(flags=0x06, payload=s("c") + s("w")),      # will payload missing
    frame(0x10, s("MQTT") + b"\x04\x02"),                    # keep alive missing
    frame(0x10, s("MQTT")),
])
def test_connect_truncated(bad):
    reject(bad, 0, 0x81, MalformedPacket)


def test_connack_reserved_flags():
    """[MQTT-3.2.2-1]: CONNACK acknowledge flags bits 7-1 are reserved."""
    reject(b"\x20\x02\x02\x00", 4, 0x81, MalformedPacket)


@pytest.mark.parametrize("bad,version", [
    (b"\xc0\x01\x00", 4),                                 # PINGREQ with a body
    (b"\xd0\x01\x00", 5),
    (b"\xe0\x01\x00", 4),                                 # DISCONNECT with a body before 5
    (b"\x40\x03\x00\x01\x00", 4),                         # PUBACK with a reason code before 5
    (b"\xb0\x03\x00\x01\x00", 4),                         # UNSUBACK with a payload before 5
    (b"\x20\x03\x00\x00\x00", 4),                         # CONNACK with properties before 5
    (connect_frame(payload=s("c") + b"\x00"), 0),         # CONNECT with a spare byte
    (connect_frame(level=5, properties=b"\x00", payload=s("c") + b"\x01"), 0),
    (b"\x20\x04\x00\x00\x00\x00", 5),
])
def test_trailing_bytes(bad, version):
    """Bytes after a packet's content, within its remaining length, are malformed (0x81)."""
    reject(bad, version, 0x81, MalformedPacket)


@pytest.mark.parametrize("bad,version", [
    (b"\x40\x01\x00", 4), (b"\x40\x00", 5), (b"\x90\x01\x00", 4), (b"\x20\x01\x00", 4),
    (frame(0x32, s("a") + b"\x00"), 4), (frame(0x30, b"\x00"), 4), (frame(0x30, b""), 4),
    (frame(0x82, u16(1) + b"\x00\x05ab"), 4),
])
def test_content_shorter_than_its_fields(bad, version):
    reject(bad, version, 0x81, MalformedPacket)


def test_packets_before_the_bad_one_are_returned():
    good = [Publish("a", b"1"), PubAck(PUBACK, 3), Ping(PINGREQ), Publish("b", b"2", 1,
                                                                           packet_id=9)]
    stream = b"".join(encode(p, 4) for p in good)
    parser = FrameParser(4)
    out = parser.feed(stream + b"\x36\x03\x00\x01a" + encode(Publish("c", b"3"), 4))
    assert out == good
    assert isinstance(parser.error, MalformedPacket) and parser.error.reason_code == 0x81
    assert "QoS 3" in str(parser.error)
    err = parser.error
    assert parser.feed(stream) == []
    assert parser.feed(bytearray(stream)) == []
    assert parser.error is err                 # the first error stays


def test_error_inside_a_held_tail():
    """A bad frame that arrives in pieces fails when complete, returning what came before."""
    parser = FrameParser(4)
    bad = frame(0x32, s("a") + u16(0) + b"x")
    assert parser.feed(PINGREQ_FRAME + bad[:3]) == [Ping(PINGREQ)]
    assert parser.error is None and parser.buffered == 3
    assert parser.feed(bad[3:] + PINGREQ_FRAME) == []
    assert parser.error.reason_code == 0x82
    assert parser.buffered == 0


def test_constructor_arguments():
    with pytest.raises(ValueError):
        FrameParser(6)
    with pytest.raises(ValueError):
        FrameParser(4, max_packet_size=1)


def test_feed_of_a_non_buffer_reports_an_error_instead_of_raising():
    parser = FrameParser(4)
    assert parser.feed("not bytes") == []
    assert isinstance(parser.error, CodecError)


# ------------------------------------------------------------------------------------------------
# 4. Chunking invariance

def mixed_stream_v5() -> tuple[bytes, list]:
    packets = [
        Connect("dev-1", version=5, keepalive=30, properties={0x11: 3600, 0x21: 20},
                will_topic="dev/1/status", will_payload=b"offline", will_qos=1,
                will_properties={0x18: 5, 0x26: [("k", "v")]}, username="u", password=b"p"),
        Subscribe(1, [("dev/+/cmd", 1), ("$share/g/jobs/#", 2)], {0x0B: [7]}),
        Publish("dev/1/status", b"online", 1, True, False, 2, {0x01: 1, 0x02: 60}),
        Publish("dev/1/status", b"", 0),
        Publish("", b"alias", 0, properties={0x23: 4}),
        Publish("x" * 200, bytes(range(256)) * 3, 2, packet_id=65535),
        PubAck(PUBACK, 2), PubAck(PUBREC, 3, 0x10), PubAck(PUBREL, 3, 0, {0x1F: "ok"}),
        PubAck(PUBCOMP, 3),
        Unsubscribe(4, ["dev/+/cmd", "#"], {0x26: [("a", "b")]}),
        Ping(PINGREQ), Ping(PINGRESP), Auth(0x19, {0x15: "SCRAM", 0x16: b"\x00" * 40}),
        SubAck(SUBACK, 1, [1, 2, 0x80]), SubAck(UNSUBACK, 4, [0, 0x11]),
        ConnAck(True, 0, {0x12: "assigned"}),
        Disconnect(0x04, {0x11: 0}),
    ]
    return b"".join(encode(p, 5) for p in packets), packets


def mixed_stream_v4() -> tuple[bytes, list]:
    packets = [
        Connect("c", version=4, will_topic="w", will_payload=b"m", username="u", password=b"p"),
        Subscribe(1, [("a/#", 0), ("+/b", 2)]), Publish("a/b", b"\x00" * 300, 1, packet_id=1),
        Publish("a/b", b"x"), PubAck(PUBACK, 1), Unsubscribe(2, ["a/#"]), Ping(PINGREQ),
        SubAck(SUBACK, 1, [0, 2]), SubAck(UNSUBACK, 2), ConnAck(False, 0), Disconnect(),
    ]
    return b"".join(encode(p, 4) for p in packets), packets


@pytest.mark.parametrize("make", [mixed_stream_v5, mixed_stream_v4])
def test_every_single_split_point(make):
    data, packets = make()
    whole = FrameParser(0)
    assert whole.feed(data) == packets
    for i in range(len(data) + 1):
        parser = FrameParser(0)
        out = parser.feed(data[:i])
        out += parser.feed(data[i:])
        assert out == packets, i
        assert parser.error is None and parser.buffered == 0


@pytest.mark.parametrize("make", [mixed_stream_v5, mixed_stream_v4])
def test_one_byte_at_a_time(make):
    data, packets = make()
    parser = FrameParser(0)
    out = []
    for i in range(len(data)):
        out += parser.feed(data[i:i + 1])
        assert parser.buffered <= i + 1
    assert out == packets
    assert parser.buffered == 0 and parser.error is None


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 10_000), max_size=12), st.sampled_from(["bytes", "bytearray",
                                                                        "memoryview"]))
def test_random_split_points(cuts, kind):
    data, packets = mixed_stream_v5()
    points = sorted({c % (len(data) + 1) for c in cuts})
    parser = FrameParser(0)
    out = []
    prev = 0
    for p in points + [len(data)]:
        chunk = data[prev:p]
        chunk = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](chunk)
        out += parser.feed(chunk)
        prev = p
    assert out == packets
    assert parser.buffered == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([3, 4, 5]).flatmap(
    lambda v: st.tuples(st.just(v), st.lists(any_packet(v), min_size=1, max_size=8))),
    st.lists(st.integers(0, 100_000), max_size=6))
def test_generated_streams_any_split(version_packets, cuts):
    version, packets = version_packets
    data = b"".join(encode(p, version) for p in packets)
    points = sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]
    parser = FrameParser(version)
    out, prev = [], 0
    for p in points:
        out += parser.feed(data[prev:p])
        prev = p
    assert parser.error is None, parser.error
    assert out == packets


def test_thousands_of_frames_in_one_chunk():
    frames = [encode_publish(f"sensors/{i % 17}/t", i.to_bytes(4, "big") * (i % 5), i % 3,
                             packet_id=(i % 65535) + 1 if i % 3 else 0) for i in range(5000)]
    data = b"".join(frames)
    parser = FrameParser(4)
    out = parser.feed(data)
    assert parser.error is None and len(out) == 5000
    for i, pkt in enumerate(out):
        assert pkt.topic == f"sensors/{i % 17}/t"
        assert pkt.payload == i.to_bytes(4, "big") * (i % 5)
        assert pkt.qos == i % 3
    # The same stream in 1,000-byte pieces.
    parser = FrameParser(4)
    pieces = [parser.feed(data[i:i + 1000]) for i in range(0, len(data), 1000)]
    assert [p for chunk in pieces for p in chunk] == out


def test_bytearray_and_memoryview_input():
    data, packets = mixed_stream_v5()
    assert FrameParser(0).feed(bytearray(data)) == packets
    assert FrameParser(0).feed(memoryview(data)) == packets
    padded = b"\xff" * 7 + data + b"\xee" * 3
    assert FrameParser(0).feed(memoryview(padded)[7:-3]) == packets
    parser = FrameParser(0)
    out = parser.feed(memoryview(bytearray(data))[:100]) + parser.feed(memoryview(data)[100:])
    assert out == packets


def test_parser_copies_what_it_keeps():
    """Neither the packets nor a held tail may alias the caller's (reusable) buffer."""
    wire = encode_publish("a/b", b"hello", 1, packet_id=5) + encode_publish("a/b", b"world")
    buf = bytearray(wire)
    parser = FrameParser(4)
    out = parser.feed(memoryview(buf)[:len(wire) - 3])
    buf[:] = b"\x00" * len(buf)                     # the transport reuses its buffer
    out += parser.feed(wire[len(wire) - 3:])
    assert out == [Publish("a/b", b"hello", 1, packet_id=5), Publish("a/b", b"world")]


# ------------------------------------------------------------------------------------------------
# 5. Fuzz

def _valid_frames() -> list[tuple[int, bytes]]:
    rnd = random.Random(1)
    out = []
    for version in (3, 4, 5):
        for p in mixed_stream_v4()[1] + (mixed_stream_v5()[1] if version == 5 else []):
            if isinstance(p, Connect):
                continue
            out.append((version, encode(p, version)))
        for i in range(20):
            out.append((version, encode_publish(
                "t/" + str(i), rnd.randbytes(rnd.randint(0, 30)), i % 3, bool(i & 4),
                bool(i & 8) and i % 3 > 0, (i + 1) if i % 3 else 0,
                {0x26: [("a", "b")], 0x0B: [i + 1]} if version == 5 else None, version)))
    out.append((0, mixed_stream_v4()[0][:60]))
    for v in (3, 4, 5):
        out.append((0, encode(Connect("cid", version=v, will_topic="w", will_qos=2,
                                      username="u", password=b"p",
                                      properties={0x11: 1} if v == 5 else None), v)))
    return out


ALL_ERRORS = (MalformedPacket, ProtocolError, TopicNameInvalid, PacketTooLarge,
              UnsupportedProtocolVersion)


def _mutate(rnd: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    op = rnd.randrange(9)
    if op == 8 and len(b) > 2 and b[1] < 0x80:          # damage the body, keep the length right
        body = bytearray(b[2:])
        for _ in range(rnd.randint(1, 2)):
            if body:
                body[rnd.randrange(len(body))] = rnd.randrange(256)
        if rnd.random() < 0.5:
            del body[rnd.randrange(len(body) + 1):]
        return bytes([b[0]]) + ref_codec.encode_varint(len(body)) + bytes(body)
    if op == 0 and b:                                   # flip bytes
        for _ in range(rnd.randint(1, 3)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
    elif op == 1 and b:                                 # flip bits
        i = rnd.randrange(len(b))
        b[i] ^= 1 << rnd.randrange(8)
    elif op == 2:                                       # truncate
        del b[rnd.randrange(len(b) + 1):]
    elif op == 3 and len(b) > 1:                        # wrong remaining length
        b[1] = rnd.randrange(256)
    elif op == 4:                                       # insert
        b.insert(rnd.randrange(len(b) + 1), rnd.randrange(256))
    elif op == 5 and b:                                 # delete
        del b[rnd.randrange(len(b))]
    elif op == 6 and b:                                 # another type / flags nibble
        b[0] = rnd.randrange(256)
    else:                                               # duplicate a slice
        i = rnd.randrange(len(b) + 1)
        b[i:i] = b[rnd.randrange(len(b) + 1):][:8]
    return bytes(b)


def _check_packets(packets, initial_version):
    """Each packet that came out re-encodes to bytes that parse back to it."""
    version = initial_version
    for pkt in packets:
        assert isinstance(pkt, Packet)
        if isinstance(pkt, Connect):
            version = pkt.version
        v = version or 4
        again = FrameParser(0 if isinstance(pkt, Connect) else v)
        assert again.feed(encode(pkt, v)) == [pkt], pkt
        assert again.error is None


def test_fuzz():
    """100,000 random and mutated inputs: never an exception, never anything but packets and a
    CodecError with a reason code."""
    rnd = random.Random(0xC0DEC)
    valid = _valid_frames()
    seen_errors = set()
    n_packets = 0
    for n in range(100_000):
        mode = n % 4
        if mode == 0:
            data = rnd.randbytes(rnd.randint(0, 48))
            version = rnd.choice((0, 3, 4, 5))
        else:
            version, data = rnd.choice(valid)
            data = _mutate(rnd, data)
            if mode == 3:                               # in a stream, between good frames
                v2, other = rnd.choice(valid)
                data = other + data + other if v2 == version else data
            if rnd.random() < 0.3:
                data = _mutate(rnd, data)
            if version and rnd.random() < 0.2:
                version = rnd.choice((0, 3, 4, 5))
        parser = FrameParser(version, max_packet_size=rnd.choice((2, 64, 1 << 20, 268435460)))
        if rnd.random() < 0.3 and data:
            cut = rnd.randrange(len(data))
            out = parser.feed(data[:cut])
            out += parser.feed(memoryview(data)[cut:])
        else:
            out = parser.feed(data)
        err = parser.error
        if err is not None:
            assert type(err) in ALL_ERRORS, repr(err)
            assert err.reason_code in (0x81, 0x82, 0x84, 0x90, 0x95)
            assert not str(err).startswith("undecodable packet"), (data, version, err)
            assert parser.feed(b"\xc0\x00") == []
            assert parser.buffered == 0
            seen_errors.add(err.reason_code)
        else:
            assert parser.buffered <= len(data)
        n_packets += len(out)
        _check_packets(out, version)
    assert seen_errors == {0x81, 0x82, 0x84, 0x90, 0x95}
    assert n_packets > 10_000


# ------------------------------------------------------------------------------------------------
# 6. Encoders

@settings(max_examples=300, deadline=None)
@given(st.sampled_from([3, 4, 5]).flatmap(lambda v: st.tuples(st.just(v), publishes(v, 300))))
def test_encode_publish_matches_reference(version_packet):
    version, p = version_packet
    ours = encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id, p.properties,
                          version)
    theirs = ref_codec.encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id,
                                      p.properties, version)
    assert ours == theirs


def test_encode_publish_payload_types_and_defaults():
    ref = encode_publish("a", b"xyz")
    assert ref == b"\x30\x06\x00\x01axyz"
    assert encode_publish("a", bytearray(b"xyz")) == ref
    assert encode_publish("a", memoryview(b"xyz")) == ref
    assert encode_publish("a", b"xyz", version=5) == b"\x30\x07\x00\x01a\x00xyz"
    assert encode_publish("a", b"xyz", version=5, properties={}) == b"\x30\x07\x00\x01a\x00xyz"
    assert encode_publish("a", b"", 0, retain=True) == b"\x31\x03\x00\x01a"
    assert encode_publish("a", b"", 2, dup=True, packet_id=258) == b"\x3c\x05\x00\x01a\x01\x02"
    assert encode_publish("a", b"", version=4, properties={0x23: 1}) == b"\x30\x03\x00\x01a"


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([3, 4, 5]).flatmap(lambda v: st.tuples(st.just(v), publishes(v))),
       U16NZ, st.booleans())
def test_publish_with_id(version_packet, new_id, dup):
    version, p = version_packet
    assume(p.qos > 0)
    frame_ = encode(p, version)
    patched = publish_with_id(frame_, new_id, dup)
    assert patched == encode_publish(p.topic, p.payload, p.qos, p.retain, dup, new_id,
                                     p.properties, version)
    (got,) = FrameParser(version).feed(patched)
    assert (got.packet_id, got.dup, got.topic, got.payload) == (new_id, dup, p.topic, p.payload)
    assert publish_with_id(frame_, p.packet_id, p.dup) == frame_
    assert encode(p, version) == frame_           # the original is untouched


def test_publish_with_id_large_frame():
    frame_ = encode_publish("t" * 300, b"x" * 20_000, 1, packet_id=1)
    assert publish_with_id(frame_, 0xABCD, True) == encode_publish(
        "t" * 300, b"x" * 20_000, 1, dup=True, packet_id=0xABCD)


@pytest.mark.parametrize("bad", [
    encode_publish("a", b"x"),                            # QoS 0: no packet id to patch
    b"", b"\x32", b"\x32\x02\x00\x01",                    # truncated
    encode_publish("abc", b"", 1, packet_id=1)[:-1],
    b"\x62\x02\x00\x01",                                  # PUBREL: not a PUBLISH
    b"\x82\x06\x00\x01\x00\x01a\x00",                     # SUBSCRIBE: not a PUBLISH
])
def test_publish_with_id_refuses_other_frames(bad):
    with pytest.raises(CodecError):
        publish_with_id(bad, 7)


@pytest.mark.parametrize("packet_id", [0, 65536, -1])
def test_publish_with_id_refuses_bad_ids(packet_id):
    with pytest.raises(CodecError):
        publish_with_id(encode_publish("a", b"x", 1, packet_id=1), packet_id)


@pytest.mark.parametrize("ptype,first", [(PUBACK, 0x40), (PUBREC, 0x50), (PUBREL, 0x62),
                                         (PUBCOMP, 0x70)])
def test_encode_ack(ptype, first):
    """5 sections 3.4.2.1 etc.: the reason code may be left off when it is 0 and there are no
    properties; 3.1.1 acks are always the 4-byte form."""
    head = bytes([first])
    assert encode_ack(ptype, 0x1234) == head + b"\x02\x12\x34"
    assert encode_ack(ptype, 0x1234, version=5) == head + b"\x02\x12\x34"
    assert encode_ack(ptype, 0x1234, 0, {}, version=5) == head + b"\x02\x12\x34"
    assert encode_ack(ptype, 1, 0x92, version=5) == head + b"\x03\x00\x01\x92"
    assert encode_ack(ptype, 1, 0, {0x1F: "r"}, version=5) == (
        head + b"\x08\x00\x01\x00\x04\x1f\x00\x01r")
    assert encode_ack(ptype, 1, 0x80, {0x26: [("a", "b"), ("c", "d")]}, version=5) == (
        head + b"\x12\x00\x01\x80\x0e\x26\x00\x01a\x00\x01b\x26\x00\x01c\x00\x01d")
    assert encode_ack(ptype, 1, 0x80, {0x26: ("a", "b")}, version=5) == (
        head + b"\x0b\x00\x01\x80\x07\x26\x00\x01a\x00\x01b")
    assert encode_ack(ptype, 1, 0x92, version=4) == head + b"\x02\x00\x01"
    for v in (4, 5):
        wire = encode_ack(ptype, 9, 0x10 if v == 5 else 0, version=v)
        assert parse_one(wire, v) == PubAck(ptype, 9, 0x10 if v == 5 else 0)


@pytest.mark.parametrize("args,kwargs,reason", [
    ((PUBACK, 0), {}, 0x82),
    ((PUBACK, 65536), {}, 0x82),
    ((PUBACK, 1, 256), {"version": 5}, 0x81),
    ((PUBACK, 1, 0, {0x23: 1}), {"version": 5}, 0x81),     # topic alias not allowed in PUBACK
])
def test_encode_ack_refuses(args, kwargs, reason):
    with pytest.raises(CodecError) as ei:
        encode_ack(*args, **kwargs)
    assert ei.value.reason_code == reason


def test_encode_ack_refuses_other_types():
    with pytest.raises(ValueError):
        encode_ack(PUBLISH, 1)


@pytest.mark.parametrize("kwargs,reason", [
    ({"qos": 3}, 0x81),
    ({"qos": -1}, 0x81),
    ({"qos": 1, "packet_id": 0}, 0x82),
    ({"qos": 2, "packet_id": 65536}, 0x82),
    ({"topic": "t" * 70_000}, 0x81),
    ({"topic": "\u00e9" * 32_768}, 0x81),                   # 65,536 bytes
    ({"topic": "a\x00b"}, 0x81),
    ({"topic": "a\ud800"}, 0x81),
    ({"topic": "a/+"}, 0x90),
    ({"topic": "#"}, 0x90),
    ({"properties": {0x11: 1}, "version": 5}, 0x81),       # session expiry not in PUBLISH
    ({"properties": {0x99: 1}, "version": 5}, 0x81),
    ({"properties": {0x23: 70_000}, "version": 5}, 0x81),
    ({"properties": {0x01: 256}, "version": 5}, 0x81),
    ({"properties": {0x03: "a\x00"}, "version": 5}, 0x81),
])
def test_encode_publish_refuses_impossible_values(kwargs, reason):
    args = {"topic": "a/b", "payload": b"x", **kwargs}
    with pytest.raises(CodecError) as ei:
        encode_publish(**args)
    assert ei.value.reason_code == reason, ei.value


@pytest.mark.parametrize("packet,version,reason", [
    (Subscribe(1, []), 4, 0x82),
    (Subscribe(1, [("a/#/b", 0)]), 4, 0x81),
    (Unsubscribe(1, []), 4, 0x82),
    (Unsubscribe(1, ["a/#/b"]), 4, 0x81),
    (Unsubscribe(1, ["$share/g"]), 5, 0x81),
    (Connect("c", version=6), 6, 0x84),
    (Connect("c", version=4, password=b"p"), 4, 0x81),
    (Connect("c", version=4, will_topic="w", will_qos=3), 4, 0x81),
    (Connect("c", version=5, properties={0x23: 1}), 5, 0x81),
    (Connect("c", version=5, will_topic="w", will_properties={0x11: 1}), 5, 0x81),
    (Connect("c\x00", version=4), 4, 0x81),
    (Connect("c", version=4, keepalive=65536), 4, 0x81),
    (ConnAck(False, 0, {0x23: 1}), 5, 0x81),
    (Disconnect(0x80, {0x21: 1}), 5, 0x81),
    (Disconnect(256), 5, 0x81),
    (ConnAck(False, 256), 4, 0x81),
    (SubAck(SUBACK, 1, [256]), 4, 0x81),
    (Auth(0x18), 4, 0x82),
])
def test_other_encoders_refuse_impossible_values(packet, version, reason):
    with pytest.raises(CodecError) as ei:
        encode(packet, version)
    assert ei.value.reason_code == reason, ei.value


def test_encoders_refuse_none():
    with pytest.raises(TypeError):
        encode(None)
    with pytest.raises(TypeError):
        publish_with_id(None, 1)
    with pytest.raises(TypeError):
        encode_publish(None, b"")
    with pytest.raises(TypeError):
        encode(Publish(None))


def test_encoders_accept_a_bare_user_property_pair():
    wire = encode(Disconnect(0x80, {0x26: ("k", "v")}), 5)
    assert parse_one(wire, 5) == Disconnect(0x80, {0x26: [("k", "v")]})


# ------------------------------------------------------------------------------------------------
# 7. The reference decoder agrees with FrameParser on PUBLISH streams

def _fields(p):
    return (p.topic, p.payload, p.qos, bool(p.retain), bool(p.dup), p.packet_id,
            p.properties or None)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([3, 4, 5]).flatmap(
    lambda v: st.tuples(st.just(v), st.lists(publishes(v, 200), max_size=10))),
    st.integers(0, 40))
def test_reference_decoder_agrees(version_packets, cut_tail):
    version, packets = version_packets
    data = b"".join(ref_codec.encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup,
                                             p.packet_id, p.properties, version) for p in packets)
    # leave a partial frame at the end
    extra = encode_publish("tail/topic", b"z" * 30, 1, packet_id=3, version=version)
    data += extra[:cut_tail % len(extra)]
    ref_packets, rest = ref_codec.decode_publish_stream(data, version)
    parser = FrameParser(version)
    ours = parser.feed(data)
    assert parser.error is None
    assert [_fields(p) for p in ours] == [p.astuple() for p in ref_packets]
    assert [_fields(p) for p in ours] == [_fields(p) for p in packets]
    assert parser.buffered == len(rest)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([4, 5]).flatmap(
    lambda v: st.tuples(st.just(v), st.lists(publishes(v, 20), min_size=1, max_size=4))),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=2))
def test_reference_decoder_agrees_on_damaged_streams(version_packets, flips):
    """With a byte or two changed, both decoders accept the same packets or both refuse."""
    version, packets = version_packets
    data = bytearray(b"".join(encode(p, version) for p in packets))
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data)
    try:
        ref_packets, rest = ref_codec.decode_publish_stream(data, version)
        ref_error = None
    except ref_codec.RefError as exc:
        ref_error = exc
    parser = FrameParser(version)
    ours = parser.feed(data)
    if ref_error is None:
        assert parser.error is None, parser.error
        assert [_fields(p) for p in ours] == [p.astuple() for p in ref_packets]
        assert parser.buffered == len(rest)
    elif "not a PUBLISH" not in str(ref_error):
        assert parser.error is not None, (ref_error, ours)


@pytest.mark.parametrize("first", [b"\x00", b"\x60", b"\x80", b"\x36", b"\x38", b"\xf0", b"\x11"])
def test_a_bad_first_byte_is_refused_before_its_body_arrives(first):
    """Reserved types and flags show in the first byte [MQTT-2.1.3-1]: the parser refuses them
    at once instead of buffering up to max_packet_size of a body that will be refused anyway."""
    for data in (first, first + b"\xff\xff\x7f"):
        parser = FrameParser(4)
        assert parser.feed(data) == []
        assert parser.error is not None and parser.error.reason_code == 0x81
        assert parser.buffered == 0
