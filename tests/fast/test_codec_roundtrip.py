"""cymqtt._fast.codec: round trips and the standards' byte examples.

1. Round trips over generated packets of every type, per protocol version (hypothesis).
2. Byte examples from the OASIS standards, decoded byte-exactly.

Frame writers, constants and hypothesis strategies are in codec_helpers.py.
Spec references: "5:" is OASIS MQTT Version 5.0, "3.1.1:" is OASIS MQTT Version 3.1.1.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cymqtt._fast.codec import (
    Auth, ConnAck, Connect, Disconnect, FrameParser, Ping, PubAck, Publish, SubAck, Subscribe,
    Unsubscribe, encode, encode_publish,
)
from cymqtt._fast.errors import ProtocolError

from .codec_helpers import (
    DISCONNECT, KINDS, PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK,
    SUBSCRIBE, UNSUBACK, frame, parse_one, props, ref_codec, s,
)


ROUND_TRIP = settings(max_examples=120, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow])


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
