"""cymqtt-bench's compiled loops (src/cymqtt/bench/_wire.pyx), checked on real bytes: the
frames PublishFiller makes are what the broker's own FrameParser reads, and DeliveryReader
counts, times and acknowledges a stream the way a plain model of MQTT says, however the stream
is cut into chunks."""
from __future__ import annotations

import pytest

from cymqtt._fast.codec import (
    ConnAck, FrameParser, SubAck, encode, encode_ack, encode_publish,
)
from cymqtt.bench import _wire, stats
from cymqtt.bench.client import HEADER, PublishTemplate

PUBACK, PUBREC, PUBREL, PUBCOMP = 4, 5, 6, 7
MS = 1_000_000                  # ns


def stamp(ts_ns: int, index: int = 1, seq: int = 0, size: int = 64) -> bytes:
    return HEADER.pack(ts_ns, index, seq) + bytes(size - HEADER.size)


# -- histogram --------------------------------------------------------------------------------

def test_bucket_is_stats_bucket():
    values = [-5, 0, 1, 31, 32, 33, 63, 64, 1000, 4095, 4096, 10**6, 2**39, 2**40 - 1, 2**40,
              2**41, 2**62]
    values += list(range(0, 5000, 7))
    for us in values:
        assert _wire.bucket(us) == stats.bucket(us), us


def test_histogram_to_list_matches_stats():
    h = _wire.LatencyHistogram()
    ref = stats.new_histogram()
    for us in (0, 5, 40, 40, 1500, 2**45, -3):
        h.add(us)
        ref[stats.bucket(us)] += 1
    assert h.to_list() == ref
    assert h.total == 7 and h.max_us == 2**45


# -- PublishFiller -----------------------------------------------------------------------------

@pytest.mark.parametrize("version", [3, 4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_template_and_filler_make_frames_the_codec_reads(version, qos):
    tpl = PublishTemplate("bench/7", 40, qos, version)
    assert tpl.frame == encode_publish("bench/7", bytes(40), qos, False, False,
                                       1 if qos else 0, None, version)
    filler = tpl.filler(7)
    if qos:
        inflight = {3, 4, 65535}
        frames, next_pid = filler.with_ids(5, 1000, 2**32 - 2, 65533, inflight)
        # 65533, 65534, then 65535 is taken, wrap to 1, 2, then 3 and 4 are taken: 5
        want_ids = [65533, 65534, 1, 2, 5]
        assert next_pid == 6
        assert inflight == {3, 4, 65535, *want_ids}
    else:
        frames = filler.qos0(5, 1000, 2**32 - 2)
        want_ids = [0] * 5
    assert len(frames) == 5 * tpl.length
    packets = FrameParser(version).feed(frames)
    assert len(packets) == 5
    for k, p in enumerate(packets):
        assert p.topic == "bench/7" and p.qos == qos and len(p.payload) == 40
        assert p.payload[16:] == bytes(24)
        # the sequence number wraps at 2**32
        assert HEADER.unpack_from(p.payload) == (1000, 7, (2**32 - 2 + k) % 2**32)
        assert p.packet_id == want_ids[k]


def test_filler_refuses_what_cannot_work():
    tpl = PublishTemplate("t", 16, 0, 4)
    with pytest.raises(ValueError):
        _wire.PublishFiller(tpl.frame, tpl.stamp_off + 1, -1, 1)    # stamp past the end
    with pytest.raises(ValueError):
        tpl.filler(1).with_ids(1, 0, 0, 1, set())                   # QoS 0 has no ids
    q1 = PublishTemplate("t", 16, 1, 4).filler(1)
    with pytest.raises(ValueError):
        q1.with_ids(2, 0, 0, 1, set(range(1, 65535)))               # only 1 id is free
    assert q1.qos0(0, 0, 0) == b""


# -- DeliveryReader ----------------------------------------------------------------------------

def model_stream(version: int, now: int):
    """A stream a subscriber might read, and what reading it must give:
    (bytes, deliveries counted, retained, duplicates, acks, other frames, latencies in us)."""
    parts, acks, others, lat = [], [], [], []
    counted = retained = dups = 0

    def other(frame: bytes) -> None:
        parts.append(frame)
        others.append(frame)

    def pub(qos: int, pid: int = 0, *, age_ms: int = 1, retain: bool = False,
            dup: bool = False, props: dict | None = None, payload: bytes | None = None,
            counts: bool = True) -> None:
        nonlocal counted, retained, dups
        body = payload if payload is not None else stamp(now - age_ms * MS)
        parts.append(encode_publish("bench/1", body, qos, retain, dup, pid, props, version))
        if qos == 1:
            acks.append(encode_ack(PUBACK, pid, 0, None, version))
        elif qos == 2:
            acks.append(encode_ack(PUBREC, pid, 0, None, version))
        if dup or not counts:
            dups += 1
        if counts:
            counted += 1
            retained += retain
            if len(body) >= 16:
                lat.append(age_ms * 1000)

    other(encode(ConnAck(False, 0), version))
    other(encode(SubAck(9, 1, [1]), version))
    pub(0, age_ms=2)
    pub(1, 10, age_ms=3, retain=True)
    pub(2, 11, age_ms=4)
    pub(2, 11, age_ms=4, dup=True, counts=False)     # resent before our PUBREC arrived
    parts.append(encode_ack(PUBREL, 11, 0, None, version))
    acks.append(encode_ack(PUBCOMP, 11, 0, None, version))
    pub(2, 11, age_ms=5)                             # the id is free again: a new message
    pub(1, 12, dup=True)                             # a QoS 1 resend: counted, and a duplicate
    pub(0, payload=b"short")                         # not from cymqtt-bench: counted, untimed
    if version == 5:
        pub(1, 13, age_ms=6, props={0x02: 60, 0x26: [("k", "v" * 200)]})  # properties skipped
    other(b"\xd0\x00")                               # PINGRESP
    pub(0, age_ms=7, payload=stamp(now - 7 * MS, size=300))   # 2-byte remaining length
    return (b"".join(parts), counted, retained, dups, b"".join(acks), b"".join(others),
            sorted(lat))


def read_all(reader: _wire.DeliveryReader, chunks, now: int):
    got, acks, others = 0, [], []
    for c in chunks:
        got += reader.feed(c, now)
        a, o = reader.take_acks(), reader.take_others()
        if a is not None:
            acks.append(a)
        if o is not None:
            others.append(o)
    return got, b"".join(acks), b"".join(others)


def hist_values(h: _wire.LatencyHistogram) -> list[float]:
    return sorted(stats.bucket_value(i) for i, n in enumerate(h.to_list()) for _ in range(n))


@pytest.mark.parametrize("version", [4, 5])
def test_reader_counts_times_and_acks_whatever_the_chunking(version):
    now = 10**15
    data, counted, retained, dups, acks, others, lat = model_stream(version, now)
    splits = [[data]] + [[data[:k], data[k:]] for k in range(1, len(data))]
    splits.append([data[k:k + 1] for k in range(len(data))])        # one byte at a time
    for chunks in splits:
        h = _wire.LatencyHistogram()
        r = _wire.DeliveryReader(version, h)
        got, a, o = read_all(r, chunks, now)
        assert r.error is None
        assert (got, r.received, r.retained, r.duplicates) == (counted, counted, retained, dups)
        assert a == acks and o == others
        assert r.buffered == 0
        assert h.total == len(lat)
        # each latency lands in its own bucket (within stats.py's 3 %)
        for want, have in zip(lat, hist_values(h)):
            assert abs(have - want) / want < 0.04
        assert h.max_us == max(lat)
    # the other frames are whole packets for the Python parser
    assert [p.type for p in FrameParser(version).feed(others)] == [2, 9, 13]


def test_reader_accepts_any_buffer_and_counts_without_a_histogram():
    frame = encode_publish("a", stamp(0), 0, False, False, 0, None, 4)
    r = _wire.DeliveryReader(4, None)
    assert r.feed(bytearray(frame * 2), 0) == 2
    assert r.feed(memoryview(frame * 3)[: len(frame) * 2 + 5], 0) == 2
    assert r.buffered == 5
    assert r.feed(memoryview(frame)[5:], 0) == 1
    assert r.feed(b"", 0) == 0 and r.received == 5 and r.take_acks() is None


@pytest.mark.parametrize("bad, text", [
    (b"\x36\x05\x00\x01a\x00\x01", "QoS 3"),
    (b"\x30\xff\xff\xff\xff\x01", "longer than 4 bytes"),
    (b"\x32\x05\x00\x01a\x00\x00", "packet id 0"),
    (b"\x30\x01\x00", "without a topic"),
    (b"\x30\x03\x00\x05a", "shorter than its topic"),
    (b"\x62\x00", "PUBREL without a packet id"),
])
def test_reader_stops_at_a_malformed_frame(bad, text):
    good = encode_publish("a", stamp(0), 0, False, False, 0, None, 4)
    r = _wire.DeliveryReader(4, None)
    assert r.feed(good + bad + good, 0) == 1
    assert r.error is not None and text in r.error
    assert r.feed(good, 0) == 0 and r.received == 1


def test_reader_v5_property_length_past_the_frame_is_an_error():
    # topic "a", QoS 0, property length 9 but only 1 byte follows
    r = _wire.DeliveryReader(5, None)
    assert r.feed(b"\x30\x05\x00\x01a\x09\x00", 0) == 0
    assert "properties" in r.error



def test_the_module_is_compiled():
    import importlib.machinery
    assert _wire.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
