"""PINGREQ, DISCONNECT and wills, bad input, pipelining and chunking.

MQTT 3.1.1 sections 3.1.2.5 (will), 3.12 (PINGREQ), 3.14 (DISCONNECT), 4.8 (error handling) and
MQTT 5.0 the same plus will delay (3.1.3.2.2), DISCONNECT reason codes (3.14.2.1) and 4.13
(handling errors). Malformed input must close the one connection that sent it, with the reason
the spec names for MQTT 5, and leave every other client alone.
"""
import random

import pytest

from cymqtt import timers
from cymqtt.config import Config

from ._harness import (
    DISCONNECT, PINGREQ_BYTES, PINGRESP_BYTES, REASON_STRING, REQUEST_PROBLEM_INFO,
    SESSION_EXPIRY, WILL_DELAY, Will, World, connack, connect, decode, disconnect, frames,
    publish, puback, subscribe, suback, unsubscribe, unsuback,
)

QUIET = {REQUEST_PROBLEM_INFO: 0}
LIMITS = timers.Limits(connect_timeout=10.0, write_timeout=30.0, retry_interval=30.0)


def watcher(w: World, topic: str = "will/#", qos: int = 1):
    c = w.connected("watcher")
    c.send(subscribe(1, (topic, qos)))
    assert c.take() == suback(1, qos)
    return c


# -- PINGREQ ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", [3, 4, 5])
def test_pingreq(version):
    """The server answers PINGREQ with PINGRESP [MQTT-3.12.4-1]: d0 00."""
    w = World()
    c = w.connected("p", version=version)
    c.send(PINGREQ_BYTES)
    assert c.take() == b"\xd0\x00"
    c.send(PINGREQ_BYTES, PINGREQ_BYTES)
    assert c.take() == PINGRESP_BYTES * 2
    assert c.open


def test_server_only_packet_from_client():
    """A client must not send PINGRESP (a server's packet): 3.1.1 closes the connection;
    MQTT 5 sends DISCONNECT 0x82 (protocol error) first (section 4.13)."""
    w = World()
    c4 = w.connected("c4")
    c4.send(PINGRESP_BYTES)
    assert c4.closed and c4.take() == b""
    c5 = w.connected("c5", version=5, properties=QUIET)
    c5.send(PINGRESP_BYTES)
    assert c5.take() == b"\xe0\x01\x82"
    assert c5.closed


# -- DISCONNECT and the will ------------------------------------------------------------------


def test_disconnect_discards_will():
    """On DISCONNECT the server discards the will without publishing it [MQTT-3.1.2-10,
    MQTT-3.14.4-3] and closes the connection; a clean session ends with it."""
    w = World()
    watch = watcher(w)
    c = w.connected("w1", will=Will("will/w1", b"gone", qos=1))
    c.send(disconnect())
    assert c.closed and c.io.lost
    assert c.take() == b""
    assert watch.take() == b""
    assert w.registry.get("w1") is None


def test_lost_connection_publishes_will():
    """A network connection closed without DISCONNECT publishes the will [MQTT-3.1.2-8]; a
    will with RETAIN 1 is published as a retained message [MQTT-3.1.2-17]."""
    w = World()
    watch = watcher(w)
    c = w.connected("w2", will=Will("will/w2", b"gone", qos=1, retain=True))
    c.drop()
    assert watch.take() == publish("will/w2", b"gone", qos=1, pid=1)
    watch.send(puback(1))
    late = w.connected("late")
    late.send(subscribe(1, "will/#"))
    assert late.take() == suback(1, 0) + publish("will/w2", b"gone", retain=True)


def test_will_published_on_protocol_error():
    """A connection the server closes for an error publishes its will (3.1.1 section 3.1.2.5:
    "the Server closes the Network Connection because of a protocol error")."""
    w = World()
    watch = watcher(w, qos=0)
    c = w.connected("w3", will=Will("will/w3", b"err"))
    c.send(b"\x60\x02\x00\x01")               # PUBREL with flags 0000: malformed
    assert c.closed
    assert watch.take() == publish("will/w3", b"err")


def test_disconnect_v5_reason_0_discards_will():
    """MQTT 5: DISCONNECT 0x00 (normal disconnection) discards the will [MQTT-3.14.4-3];
    the short form (no reason code) means 0x00 too (section 3.14.2.1)."""
    w = World()
    watch = watcher(w)
    for cid, frame in (("a", disconnect(0)), ("b", disconnect())):
        c = w.connected(cid, version=5, will=Will(f"will/{cid}", b"x"))
        c.send(frame)
        assert c.closed
    assert watch.take() == b""


def test_disconnect_v5_0x04_keeps_will():
    """MQTT 5: DISCONNECT 0x04 (disconnect with will message): the will is published
    (section 3.14.2.1)."""
    w = World()
    watch = watcher(w)
    c = w.connected("w4", version=5, will=Will("will/w4", b"as asked", qos=1,
                                               properties={}))
    c.send(disconnect(0x04))
    assert c.closed
    assert watch.take() == publish("will/w4", b"as asked", qos=1, pid=1)


def test_will_properties_forwarded_v5():
    """MQTT 5: the will's properties (here a user property) go with it; the will delay is not
    forwarded (section 3.1.3.2)."""
    w = World()
    s5 = w.connected("s5", version=5)
    s5.send(subscribe(1, ("will/#", 0), version=5))
    assert s5.take() == suback(1, 0, version=5)
    c = w.connected("w5", version=5, will=Will("will/w5", b"p", properties={
        0x26: [("why", "test")], WILL_DELAY: 0}))
    c.drop()
    assert s5.take() == publish("will/w5", b"p", version=5,
                                properties={0x26: [("why", "test")]})


def test_will_delay_v5():
    """MQTT 5: with a will delay the will is published when the delay has passed after the
    connection closed [MQTT-3.1.2-8]; the sweep (timers.check) says when."""
    w = World()
    watch = watcher(w)
    c = w.connected("wd", version=5, properties={SESSION_EXPIRY: 100},
                    will=Will("will/wd", b"late", qos=1, properties={WILL_DELAY: 10}))
    t0 = w.loop.now
    c.drop()
    assert watch.take() == b""
    assert timers.check(t0 + 9.5, w.protocols(), w.registry, LIMITS) == []
    due = timers.check(t0 + 10, w.protocols(), w.registry, LIMITS)
    assert due == [(timers.WILL_DUE, "wd")]
    w.loop.advance(10)
    w.registry.fire_will("wd", w.loop.now)
    assert watch.take() == publish("will/wd", b"late", qos=1, pid=1)
    watch.send(puback(1))
    assert timers.check(t0 + 11, w.protocols(), w.registry, LIMITS) == []


def test_will_delay_cancelled_by_reconnect_v5():
    """MQTT 5: a new connection to the session before the will delay has passed means the
    will is not sent [MQTT-3.1.3-9]."""
    w = World()
    watch = watcher(w)
    c = w.connected("wr", version=5, clean=False, properties={SESSION_EXPIRY: 100},
                    will=Will("will/wr", b"never", properties={WILL_DELAY: 10}))
    c.drop()
    w.loop.advance(5)
    back = w.client()
    back.send(connect("wr", version=5, clean=False, properties={SESSION_EXPIRY: 100}))
    assert decode(back.take()).session_present is True
    assert w.registry.pending_wills == {}
    assert timers.check(w.loop.now + 60, w.protocols(), w.registry, LIMITS) == []
    assert watch.take() == b""


def test_will_delay_ends_with_session_v5():
    """MQTT 5: the will is published when the will delay passes or the session ends,
    whichever is first [MQTT-3.1.2-8]: with no session expiry, at once; with a shorter
    session expiry, at the session's end."""
    w = World()
    watch = watcher(w, qos=0)
    now_ = w.connected("now", version=5,
                       will=Will("will/now", b"1", properties={WILL_DELAY: 30}))
    now_.drop()
    assert watch.take() == publish("will/now", b"1")
    soon = w.connected("soon", version=5, properties={SESSION_EXPIRY: 5},
                       will=Will("will/soon", b"2", properties={WILL_DELAY: 30}))
    t0 = w.loop.now
    soon.drop()
    assert watch.take() == b""
    assert timers.check(t0 + 4.5, w.protocols(), w.registry, LIMITS) == []
    actions = timers.check(t0 + 5, w.protocols(), w.registry, LIMITS)
    assert sorted(a for a, _ in actions) == [timers.SESSION_EXPIRED, timers.WILL_DUE]


def test_disconnect_sets_session_expiry_v5():
    """MQTT 5: DISCONNECT may change the session expiry interval (section 3.14.2.2.2) but not
    from 0 to non-zero, a Protocol Error (same section; DISCONNECT 0x82 from the server)."""
    w = World()
    a = w.connected("a", version=5, properties={SESSION_EXPIRY: 10})
    a.send(disconnect(0, {SESSION_EXPIRY: 0}))
    assert a.closed
    assert w.registry.get("a") is None              # expiry 0 now: ended with the connection
    b = w.connected("b", version=5, properties=QUIET)
    b.send(disconnect(0, {SESSION_EXPIRY: 60}))
    assert b.take() == b"\xe0\x01\x82"
    assert b.closed


def test_nothing_handled_after_disconnect():
    """After DISCONNECT the connection is closing: packets behind it in the same chunk are not
    handled (the client must not send them, [MQTT-3.14.4-2] in 3.1.1)."""
    w = World()
    c = w.connected("d")
    c.send(PINGREQ_BYTES, disconnect(), PINGREQ_BYTES, publish("x", b"y"))
    assert c.take() == PINGRESP_BYTES
    assert c.closed


# -- malformed input --------------------------------------------------------------------------

BAD = {
    "remaining-length-5-bytes": b"\x30\x80\x80\x80\x80\x01",
    "remaining-length-not-minimal": b"\xc0\x80\x00",
    "pubrel-flags": b"\x60\x02\x00\x01",
    "pingreq-flags": b"\xc1\x00",
    "subscribe-flags": b"\x80\x06\x00\x01\x00\x01t\x00",
    "publish-qos3": b"\x36\x05\x00\x01t\x00\x01",
    "publish-qos0-dup": b"\x38\x03\x00\x01t",
    "reserved-type-0": b"\x00\x00",
    "trailing-bytes": b"\xc0\x01\x00",
    "puback-pid-0": b"\x40\x02\x00\x00",
    "topic-bad-utf8": b"\x30\x04\x00\x02\xc3\x28",
}


@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
def test_malformed_311_closes_only_that_client(bad):
    """3.1.1: bad input closes the connection that sent it, without a packet ([MQTT-2.2.2-2],
    [MQTT-3.3.1-4], [MQTT-3.3.1-2], section 4.8); other clients are unaffected."""
    w = World()
    sub = w.connected("sub")
    sub.send(subscribe(1, "t"))
    assert sub.take() == suback(1, 0)
    bad_client = w.connected("bad")
    bad_client.send(bad)
    assert bad_client.closed
    assert bad_client.take() == b""
    assert w.registry.get("bad") is None
    pub = w.connected("pub")
    pub.send(publish("t", b"still"))
    assert sub.take() == publish("t", b"still")
    sub.send(PINGREQ_BYTES)
    assert sub.take() == PINGRESP_BYTES


V5_BAD = dict(BAD, **{"topic-bad-utf8": b"\x30\x05\x00\x02\xc3\x28\x00"})
V5_CODES = {name: 0x82 if name == "puback-pid-0" else 0x81 for name in V5_BAD}


@pytest.mark.parametrize("name", list(V5_BAD))
def test_malformed_v5_disconnect(name):
    """MQTT 5: after CONNACK a malformed packet gets DISCONNECT 0x81 (a packet id 0 is a
    Protocol Error, 0x82, section 2.2.1) and the connection is closed [MQTT-4.13.1-1];
    a 3.1.1 client connected alongside is unaffected."""
    w = World()
    other = w.connected("other")
    c = w.connected("c5", version=5, properties=QUIET)
    c.send(V5_BAD[name])
    assert c.take() == bytes([0xE0, 0x01, V5_CODES[name]])
    assert c.closed
    other.send(PINGREQ_BYTES)
    assert other.take() == PINGRESP_BYTES and other.open


def test_malformed_v5_reason_string():
    """MQTT 5: with request problem information 1 (the default) the DISCONNECT may carry a
    reason string (section 3.14.2.2.3), and nothing else here."""
    w = World()
    c = w.connected("c5", version=5)
    c.send(b"\x30\x80\x80\x80\x80\x01")
    (frame,) = c.take_frames()
    d = decode(frame)
    assert (d.type, d.reason_code) == (DISCONNECT, 0x81)
    assert set(d.properties) == {REASON_STRING} and d.properties[REASON_STRING]


def test_packet_too_large_v5():
    """MQTT 5: a packet larger than the maximum packet size the server announced -> DISCONNECT
    0x95 (section 3.2.2.3.6); refused on its fixed header, before its body arrives."""
    w = World(Config(sys_interval=0, max_packet_size=64))
    c = w.connected("big", version=5, properties=QUIET)
    c.send(b"\x30\xff\xff\x7f")                # announces a 2 MB PUBLISH
    assert c.take() == b"\xe0\x01\x95"
    assert c.closed
    ok = w.connected("ok", version=5)
    ok.send(publish("t", b"x" * 40, version=5))
    assert ok.open


def test_packets_before_the_bad_one_are_handled():
    """The packets in front of a malformed one in the same chunk are handled, in order; the
    error comes after them."""
    w = World()
    c4 = w.connected("c4")
    c4.send(PINGREQ_BYTES, b"\x30\x80\x80\x80\x80\x01", PINGREQ_BYTES)
    assert c4.take() == PINGRESP_BYTES
    assert c4.closed
    c5 = w.connected("c5", version=5, properties=QUIET)
    c5.send(PINGREQ_BYTES, b"\x60\x02\x00\x01", PINGREQ_BYTES)
    assert c5.take() == PINGRESP_BYTES + b"\xe0\x01\x81"


def test_malformed_split_over_chunks():
    """The same malformed remaining length, one byte at a time: the same outcome."""
    w = World()
    c = w.connected("c5", version=5, properties=QUIET)
    c.send_bytewise(PINGREQ_BYTES + b"\x30\x80\x80\x80\x80\x01")
    assert c.take() == PINGRESP_BYTES + b"\xe0\x01\x81"
    assert c.closed


def test_input_after_close_ignored():
    """Once closing, the protocol reads nothing more (the shell may still deliver a chunk)."""
    w = World()
    c = w.connected("c")
    c.send(disconnect())
    c.proto.receive_data(PINGREQ_BYTES)
    assert c.take() == b""


# -- pipelining and chunking ------------------------------------------------------------------


def session_stream(version: int) -> bytes:
    """One client's whole conversation, for the pipelining and chunking tests."""
    v = version
    return b"".join([
        connect("pipe", version=v, keepalive=30),
        subscribe(1, ("me/#", 1), version=v),
        publish("me/1", b"one", qos=1, pid=10, version=v),
        PINGREQ_BYTES,
        publish("me/2", b"two", qos=2, pid=11, version=v),
        b"\x62\x02\x00\x0b",                         # PUBREL 11
        puback(1),
        publish("out", b"three", version=v),
        unsubscribe(2, "me/#", version=v),
        publish("me/3", b"four", qos=1, pid=12, version=v),
        disconnect(),
    ])


def expected_stream(version: int) -> bytes:
    v = version
    if v == 5:
        head = None      # CONNACK with properties: checked apart
        ack12 = b"\x40\x03\x00\x0c\x10"              # no matching subscribers left
    else:
        head = connack(False, 0)
        ack12 = b"\x40\x02\x00\x0c"
    return head, b"".join([
        suback(1, 1, version=v),
        publish("me/1", b"one", qos=1, pid=1, version=v),
        b"\x40\x02\x00\x0a",                         # PUBACK 10 (after routing)
        PINGRESP_BYTES,
        publish("me/2", b"two", qos=1, pid=2, version=v),
        b"\x50\x02\x00\x0b",                         # PUBREC 11
        b"\x70\x02\x00\x0b",                         # PUBCOMP 11
        unsuback(2, 0, version=v),
        ack12,
    ])


def run_stream(version: int, chunks: list[bytes]):
    w = World()
    out = w.connected("out-watcher")
    out.send(subscribe(1, "out"))
    assert out.take() == suback(1, 0)
    c = w.client()
    for chunk in chunks:
        c.send(chunk)
    return c.take(), out.take(), c


@pytest.mark.parametrize("version", [4, 5])
def test_pipelined_packets_handled_in_order(version):
    """Every packet of one chunk is handled, in order, and the answers go out in that order:
    CONNACK first [MQTT-3.2.0-1], then each packet's response. A packet behind DISCONNECT is
    not read."""
    data = session_stream(version)
    got, out, c = run_stream(version, [data])
    head, rest = expected_stream(version)
    fs = frames(got)
    if head is None:
        assert decode(fs[0]).type == 2 and decode(fs[0]).reason_code == 0
        head = fs[0]
    else:
        assert fs[0] == head
    assert got == head + rest
    assert out == publish("out", b"three")
    assert c.closed
    assert len(c.io.writes) == 1      # one flush for the whole chunk (DESIGN rule 3)


@pytest.mark.parametrize("version", [4, 5])
def test_chunking_invariance(version):
    """The same byte stream split anywhere (whole, byte by byte, random cuts) gives the same
    bytes out, in the same order (TCP is a stream: MQTT packets have no relation to reads)."""
    data = session_stream(version)
    whole = run_stream(version, [data])[:2]
    bytewise = run_stream(version, [data[i:i + 1] for i in range(len(data))])[:2]
    assert bytewise == whole
    rnd = random.Random(1234 + version)
    for _ in range(20):
        cuts = sorted(rnd.sample(range(1, len(data)), rnd.randint(1, 12)))
        chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        assert run_stream(version, chunks)[:2] == whole, cuts


def test_two_clients_interleaved_chunks():
    """Two connections fed interleaved partial chunks keep their own parse state."""
    w = World()
    a = w.client()
    b = w.client()
    sa = connect("ia") + subscribe(1, "t/b")
    sb = connect("ib") + subscribe(1, "t/a")
    for i in range(max(len(sa), len(sb))):
        a.send(sa[i:i + 1])
        b.send(sb[i:i + 1])
    assert a.take() == connack() + suback(1, 0)
    assert b.take() == connack() + suback(1, 0)
    pa = publish("t/a", b"from a")
    pb = publish("t/b", b"from b")
    a.send(pa[:3])
    b.send(pb[:5])
    a.send(pa[3:])
    b.send(pb[5:])
    assert a.take() == pb
    assert b.take() == pa
