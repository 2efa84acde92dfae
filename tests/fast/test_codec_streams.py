"""cymqtt._fast.codec: FrameParser over streams.

1. Chunking invariance: any split of a valid stream gives the same packets.
2. A seeded fuzz run: bad bytes give packets or a CodecError in parser.error, nothing else.
3. The reference PUBLISH stream decoder (tests/models/ref_codec.py) agrees with FrameParser.

Frame writers, constants and hypothesis strategies are in codec_helpers.py.
Spec references: "5:" is OASIS MQTT Version 5.0, "3.1.1:" is OASIS MQTT Version 3.1.1.
"""
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cymqtt._fast.codec import (
    Auth, ConnAck, Connect, Disconnect, FrameParser, Packet, Ping, PubAck, Publish, SubAck,
    Subscribe, Unsubscribe, encode, encode_publish,
)
from cymqtt._fast.errors import (
    MalformedPacket, PacketTooLarge, ProtocolError, TopicNameInvalid, UnsupportedProtocolVersion,
)

from .codec_helpers import (
    PINGREQ, PINGRESP, PUBACK, PUBCOMP, PUBREC, PUBREL, SUBACK, UNSUBACK, any_packet, publishes,
    ref_codec,
)


# ------------------------------------------------------------------------------------------------
# 1. Chunking invariance

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
# 2. Fuzz

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
# 3. The reference decoder agrees with FrameParser on PUBLISH streams

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
