"""cymqtt._fast.codec: the encoders. Byte-equal to tests/models/ref_codec.py, publish_with_id,
ack short forms, refusals.

Frame writers, constants and hypothesis strategies are in codec_helpers.py.
Spec references: "5:" is OASIS MQTT Version 5.0, "3.1.1:" is OASIS MQTT Version 3.1.1.
"""
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cymqtt._fast.codec import (
    Auth, ConnAck, Connect, Disconnect, FrameParser, PubAck, Publish, SubAck, Subscribe,
    Unsubscribe, encode, encode_ack, encode_publish, publish_with_id,
)
from cymqtt._fast.errors import CodecError

from .codec_helpers import (
    PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, SUBACK, U16NZ, parse_one, publishes, ref_codec,
)


# ------------------------------------------------------------------------------------------------
# Encoders

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
