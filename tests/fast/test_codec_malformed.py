"""cymqtt._fast.codec: the malformed corpus, one test per validation rule, with the reason code
it yields (FrameParser fed good + bad + good: only the first good packet comes back and
parser.error holds the error).

Frame writers, constants and hypothesis strategies are in codec_helpers.py.
Spec references: "5:" is OASIS MQTT Version 5.0, "3.1.1:" is OASIS MQTT Version 3.1.1.
"""
import pytest

from cymqtt._fast.codec import (
    Auth, FrameParser, Ping, PubAck, Publish, Subscribe, Unsubscribe, encode, encode_publish,
)
from cymqtt._fast.errors import (
    CodecError, MalformedPacket, PacketTooLarge, ProtocolError, TopicNameInvalid,
    UnsupportedProtocolVersion,
)

from .codec_helpers import (
    PINGREQ, PINGREQ_FRAME, PUBACK, connect_frame, frame, parse_one, props, ref_codec, reject, s,
    u16,
)


# ------------------------------------------------------------------------------------------------
# The malformed corpus: one test per rule

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


@pytest.mark.parametrize("first", [b"\x00", b"\x60", b"\x80", b"\x36", b"\x38", b"\xf0", b"\x11"])
def test_a_bad_first_byte_is_refused_before_its_body_arrives(first):
    """Reserved types and flags show in the first byte [MQTT-2.1.3-1]: the parser refuses them
    at once instead of buffering up to max_packet_size of a body that will be refused anyway."""
    for data in (first, first + b"\xff\xff\x7f"):
        parser = FrameParser(4)
        assert parser.feed(data) == []
        assert parser.error is not None and parser.error.reason_code == 0x81
        assert parser.buffered == 0
