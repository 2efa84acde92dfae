"""Back-pressure between ClientProtocols on one Context, bytes only, on the harness's fake clock.

DESIGN hot-path rules 6 and 7: a subscriber whose socket is full but draining still gets its
QoS 0 messages and its publishers' input is held (the rest of their chunk waits, in order) until
it drains; one that stays unwritable for `stall_timeout` is stalled: its QoS 0 messages are
dropped and counted, and it holds nobody. Each connection handles at most READ_BUDGET packets per
loop pass. Retained messages for a new subscription stream as the socket (and, for QoS 1, the
window) takes them.

The subscriber's transport is modelled with `proto.pause_writing()` / `resume_writing()`, the
calls asyncio makes when a transport's write buffer crosses its marks (`SocketBuffer` below does
it from the bytes written and not yet "read"). What every client receives is read with the
harness's own decoder.
"""
from __future__ import annotations

import pytest

from cymqtt.config import Config
from cymqtt.metrics import collect
from cymqtt.protocol.client import OUTBOX_HIGH, READ_BUDGET
from cymqtt.protocol.publish import THROTTLE_MAX

from ._harness import (
    PINGREQ_BYTES, PINGRESP_BYTES, PUBLISH, UNSUBACK, Peer, World, connect, decode, disconnect,
    frames, puback, publish, subscribe, suback, unsubscribe,
)

STALL = Config().stall_timeout     # the default (1 s), which World() uses


def subscriber(w: World, client_id: str, topic: str, qos: int, **kw) -> Peer:
    s = w.connected(client_id, **kw)
    s.send(subscribe(1, (topic, qos)))
    assert s.take() == suback(1, qos)
    return s


def received(peer: Peer) -> list:
    """The PUBLISH packets the broker wrote to `peer` since the last take(), decoded."""
    return [d for d in (decode(f, version=4) for f in peer.take_frames()) if d.type == PUBLISH]


def payloads(peer: Peer) -> list[bytes]:
    return [d.payload for d in received(peer)]


def numbered(n: int, start: int = 0, topic: str = "t", size: int = 0, **kw) -> list[bytes]:
    """QoS 0 (unless told) PUBLISH frames whose payloads are b"000000", b"000001", ..."""
    return [publish(topic, b"%06d" % i + b"." * size, **kw) for i in range(start, start + n)]


def seq(n: int, start: int = 0, size: int = 0) -> list[bytes]:
    return [b"%06d" % i + b"." * size for i in range(start, start + n)]


def one_pass(w: World) -> None:
    """One loop iteration: the callbacks ready now (not those they schedule)."""
    batch, w.loop.ready = w.loop.ready, []
    for cb in batch:
        cb()


def stats(w: World) -> dict:
    return collect(w.ctx.metrics, w.registry, w.ctx.router, 0, w.loop.now)


class SocketBuffer:
    """A subscriber's socket that holds `limit` bytes: after a flush leaves more than that
    written and not yet read, the transport calls pause_writing(); read_all() empties it and
    calls resume_writing(), as asyncio does when its buffer drains."""

    def __init__(self, peer: Peer, limit: int) -> None:
        self.peer = peer
        self.limit = limit
        self.read_upto = len(peer.io.written)
        io = peer.io
        flush = io.flush

        def flush_and_push_back() -> None:
            flush()
            if self.unread > limit and not peer.proto.tx_paused:
                peer.proto.pause_writing()

        io.flush = flush_and_push_back

    @property
    def unread(self) -> int:
        return len(self.peer.io.written) - self.read_upto

    def read_all(self) -> None:
        self.read_upto = len(self.peer.io.written)
        if self.peer.proto.tx_paused:
            self.peer.proto.resume_writing()


# -- QoS 0: a draining subscriber holds its publisher ----------------------------------------


def test_qos0_to_an_unwritable_subscriber_is_sent_and_holds_the_publisher():
    """A subscriber whose transport paused writing a moment ago still gets the QoS 0 message
    (nothing dropped); the publisher is then not read: its reading is paused and the rest of
    its chunk is held. Data it sends meanwhile waits in its socket. When the subscriber's
    transport resumes, the publisher is read again and every held message arrives, in order."""
    w = World()
    sub = subscriber(w, "sub", "t", 0)
    pub = w.connected("pub")
    session = w.registry.get("sub")
    sub.proto.pause_writing()
    pub.send(*numbered(10))
    assert payloads(sub) == seq(1)
    assert pub.paused and pub.proto.throttled
    assert [p.payload for p in pub.proto.pending] == seq(9, 1)
    assert session.waiters == {pub.proto}
    pub.send(*numbered(5, 10))                 # read by nobody: it waits in the socket
    assert pub.io.held and pub.proto.received == 1
    assert payloads(sub) == []

    sub.proto.resume_writing()
    assert payloads(sub) == seq(14, 1)
    assert not pub.paused and not pub.proto.throttled and pub.proto.pending is None
    assert pub.proto.received == 15 and session.waiters is None
    assert session.dropped == 0 and stats(w)["messages_dropped"] == 0


def test_a_held_publisher_is_read_again_after_throttle_max_even_without_a_drain():
    """THROTTLE_MAX bounds each pause: a publisher held by a subscriber that does not drain
    (but is not stalled yet) gets one more message through every THROTTLE_MAX seconds, and is
    held again; nothing is dropped meanwhile."""
    assert THROTTLE_MAX < STALL
    w = World()
    sub = subscriber(w, "sub", "t", 0)
    pub = w.connected("pub")
    sub.proto.pause_writing()
    pub.send(*numbered(10))
    assert payloads(sub) == seq(1)
    w.loop.advance(THROTTLE_MAX - 0.01)
    assert payloads(sub) == [] and pub.proto.throttled
    w.loop.advance(0.01)
    assert payloads(sub) == seq(1, 1)
    assert pub.proto.throttled and pub.paused
    assert w.registry.get("sub").dropped == 0


def test_qos0_to_a_stalled_subscriber_is_dropped_and_counted_and_holds_nobody():
    """Once a subscriber has been unwritable for stall_timeout it is stalled: its QoS 0
    messages are dropped, counted in Session.dropped_slow (and Session.dropped, and the broker's
    messages_dropped_slow_consumer / messages_dropped), and the publisher is read on without a
    pause. When its socket drains it gets new messages again."""
    w = World()
    sub = subscriber(w, "sub", "t", 0)
    pub = w.connected("pub")
    session = w.registry.get("sub")
    sub.proto.pause_writing()
    w.loop.advance(STALL)
    pub.send(*numbered(10))
    assert payloads(sub) == []
    assert not pub.paused and not pub.proto.throttled and pub.proto.pending is None
    assert pub.io.pause_calls == 0
    assert session.waiters is None
    assert session.dropped_slow == 10 and session.dropped == 10
    st = stats(w)
    assert st["messages_dropped_slow_consumer"] == 10 and st["messages_dropped"] == 10
    assert st["messages_dropped_queue_full"] == 0

    sub.proto.resume_writing()
    pub.send(*numbered(3, 10))
    assert payloads(sub) == seq(3, 10)
    assert session.dropped_slow == 10


def test_a_subscriber_that_stalls_while_holding_the_publisher_lets_it_go():
    """A publisher held by a subscriber that then never drains: each THROTTLE_MAX one more
    message gets through while the subscriber is within stall_timeout; from stall_timeout on
    the rest of the held chunk is read, the stalled one's copies dropped (counted)."""
    w = World()
    sub = subscriber(w, "sub", "t", 0)
    pub = w.connected("pub")
    sub.proto.pause_writing()
    pub.send(*numbered(20))
    w.loop.advance(STALL)
    assert payloads(sub) == seq(2)          # at 0 s, and at THROTTLE_MAX
    assert pub.proto.received == 20
    assert not pub.proto.throttled and not pub.paused and pub.proto.pending is None
    assert w.registry.get("sub").dropped_slow == 18


def test_stalled_and_healthy_subscribers_the_healthy_one_gets_everything():
    """One publisher feeding a stalled and a healthy subscriber: after the stall the publisher
    is read at full speed (more than READ_BUDGET packets per chunk go through without a
    throttle), the healthy subscriber gets every message in order, the stalled one's are
    dropped and counted."""
    w = World()
    slow = subscriber(w, "slow", "t", 0)
    healthy = subscriber(w, "healthy", "t", 0)
    pub = w.connected("pub")
    slow.proto.pause_writing()
    pub.send(*numbered(50))
    assert payloads(healthy) == seq(1)            # held by the slow one, not stalled yet
    assert pub.proto.throttled
    w.loop.advance(STALL)
    pub.send(*numbered(600, 50))
    assert payloads(healthy) == seq(650)[1:]
    assert not pub.proto.throttled and not pub.paused and pub.proto.pending is None
    assert pub.proto.received == 650
    session = w.registry.get("slow")
    assert session.dropped_slow == 650 - 2
    assert w.registry.get("healthy").dropped == 0
    assert payloads(slow) == seq(2)


def test_fan_out_paced_by_a_draining_subscriber_nobody_loses_a_message():
    """Fan-out from one publisher to five subscribers, one of them with a small socket buffer
    that it empties every third loop pass (draining, never stalled): the publisher is held by
    it again and again, the slow subscriber's unread bytes stay bounded, and all five get
    every message, in order, none dropped."""
    w = World()
    fast = [subscriber(w, f"fast{i}", "t", 0) for i in range(4)]
    slow = subscriber(w, "slow", "t", 0)
    pub = w.connected("pub")
    sock = SocketBuffer(slow, limit=4096)
    n, per_chunk, size = 3000, 50, 100
    chunks = [b"".join(numbered(per_chunk, i, size=size)) for i in range(0, n, per_chunk)]
    got = {p.proto.client_id: [] for p in fast + [slow]}
    held = max_unread = 0
    for rounds in range(10_000):
        if chunks:
            pub.io.receive(chunks.pop(0))     # held by the shell while reading is paused
        w.loop.run_ready()
        held += pub.proto.throttled
        max_unread = max(max_unread, sock.unread)
        for p in fast:
            got[p.proto.client_id] += payloads(p)
        if rounds % 3 == 2:
            got["slow"] += payloads(slow)
            sock.read_all()
        w.loop.advance(0.01)
        if not chunks and pub.proto.received == n and not pub.io.held:
            break
    w.loop.run_ready()
    for p in fast + [slow]:
        got[p.proto.client_id] += payloads(p)
    expected = seq(n, size=size)
    assert {cid: len(v) for cid, v in got.items()} == {cid: n for cid in got}
    assert all(v == expected for v in got.values())
    assert held > 10, "the slow subscriber never held the publisher"
    # what piled up unread: the buffer limit, plus at most one chunk routed before the push-back
    assert max_unread <= 4096 + per_chunk * (size + 11)
    assert stats(w)["messages_dropped"] == 0


# -- READ_BUDGET: one connection's share of a loop pass ---------------------------------------


def test_read_budget_splits_a_big_chunk_over_loop_passes_in_order():
    """One receive_data with 1,000 QoS 0 PUBLISH packets: READ_BUDGET of them are handled in
    that call, the rest is held with reading paused, and each later loop pass handles up to
    READ_BUDGET more, in order, until reading resumes. A PINGREQ from another client that
    arrives meanwhile is answered in the next loop pass, before the flood is done."""
    assert 1000 > 3 * READ_BUDGET         # the flood needs several passes
    w = World()
    sub = subscriber(w, "sub", "t", 0)
    pub = w.connected("pub")
    other = w.connected("other")
    pub.io.receive(b"".join(numbered(1000)))
    assert pub.proto.received == READ_BUDGET
    assert pub.io.paused and len(pub.proto.pending) == 1000 - READ_BUDGET

    other.io.receive(PINGREQ_BYTES)              # another connection is read meanwhile
    one_pass(w)
    assert other.io.written[-2:] == PINGRESP_BYTES
    handled = 2 * READ_BUDGET
    assert pub.proto.received == handled and pub.paused
    while handled + READ_BUDGET < 1000:
        one_pass(w)
        handled += READ_BUDGET
        assert pub.proto.received == handled and pub.paused
    one_pass(w)
    assert pub.proto.received == 1000
    w.loop.run_ready()
    assert not pub.paused and pub.proto.pending is None
    assert payloads(sub) == seq(1000)
    assert other.take() == PINGRESP_BYTES


def test_read_budget_keeps_order_with_data_arriving_while_held():
    """Data read from the socket while a budget-split chunk is still being worked through
    joins the held packets behind it: everything is handled in the order it was sent."""
    w = World()
    sub = subscriber(w, "sub", "t", 0)
    pub = w.connected("pub")
    pub.io.receive(b"".join(numbered(600)))
    pub.proto.receive_data(b"".join(numbered(100, 600)))    # a read that was in progress
    w.loop.run_ready()
    assert payloads(sub) == seq(700)
    assert not pub.paused


# -- QoS 1: the queue past two windows --------------------------------------------------------


def test_qos1_queue_past_two_windows_holds_the_publisher_while_the_subscriber_acks():
    """QoS 1 to a subscriber that has not acknowledged yet but is within stall_timeout: once
    its queue reaches two windows the publisher is held (the rest of its chunk waits); as the
    subscriber acknowledges, the queue drains and the publisher is read again; every message
    arrives, in order, none dropped."""
    w = World(Config(sys_interval=0, max_inflight=2, max_queued=100))
    sub = subscriber(w, "sub", "t", 1)
    pub = w.connected("pub")
    session = w.registry.get("sub")
    pub.send(*numbered(30, qos=1, pid=1))
    # 2 in flight + 4 (two windows) queued; the publisher got its 6 PUBACKs and is held
    assert (session.inflight, session.queued) == (2, 4)
    assert pub.proto.received == 6 and pub.proto.throttled and pub.paused
    assert len(frames(pub.take())) == 6
    got = []
    for _ in range(200):
        w.loop.advance(0.05)                   # acks come well within stall_timeout
        batch = received(sub)
        got += batch
        if not batch and pub.proto.received == 30 and not session.inflight:
            break
        assert session.queued <= 4 + 1          # never more than the mark (+ the one past it)
        sub.send(*(puback(d.packet_id) for d in batch))
    assert [d.payload for d in got] == seq(30)
    assert session.dropped == 0 and not pub.proto.throttled
    assert len(frames(pub.take())) == 30 - 6


def test_qos1_subscriber_that_stops_acking_stops_holding_the_publisher():
    """A QoS 1 subscriber that acknowledges nothing for stall_timeout is not draining: it no
    longer holds the publisher, whose messages fill its queue up to max_queued and are then
    dropped, counted as queue-full drops."""
    w = World(Config(sys_interval=0, max_inflight=2, max_queued=10))
    sub = subscriber(w, "sub", "t", 1)
    pub = w.connected("pub")
    session = w.registry.get("sub")
    pub.send(*numbered(30, qos=1, pid=1))
    assert pub.proto.throttled
    w.loop.advance(STALL)
    assert pub.proto.received == 30
    assert not pub.proto.throttled and not pub.paused
    assert len(frames(pub.take())) == 30
    assert (session.inflight, session.queued) == (2, 10)
    assert session.dropped == 30 - 12 and session.dropped_slow == 0
    st = stats(w)
    assert st["messages_dropped_queue_full"] == 18 and st["messages_dropped"] == 18
    assert [d.payload for d in received(sub)] == seq(2)
    pub.send(*numbered(5, 30, qos=1, pid=31))    # still read at once
    assert pub.proto.received == 35 and not pub.proto.throttled


# -- retained messages for a new subscription ---------------------------------------------------


def store_retained(w: World, n: int, size: int = 200, qos: int = 0, prefix: str = "r") -> None:
    """n retained messages on topics r/0000 .. r/<n-1>, payload = topic + padding."""
    pub = w.connected("retainer")
    for i in range(0, n, 500):
        pub.send(*(publish(f"{prefix}/{j:04d}", f"{prefix}/{j:04d}".encode() + b"." * size,
                           qos=qos, pid=j % 65535 + 1, retain=True)
                   for j in range(i, min(n, i + 500))))
    pub.send(disconnect())
    assert len(w.ctx.retained) >= n


def test_retained_backlog_larger_than_the_outbox_comes_in_successive_flushes():
    """More retained messages than fit in OUTBOX_HIGH: the subscriber gets them over several
    writes, none much larger than OUTBOX_HIGH, and gets all of them, once each, with the
    retain flag set [MQTT-3.3.1-8]; retained_pending counts down to 0."""
    w = World()
    n = 3000
    store_retained(w, n)
    assert n * 210 > 2 * OUTBOX_HIGH
    s = w.connected("s")
    writes_before = len(s.io.writes)
    s.send(subscribe(1, ("r/#", 0)))
    data = s.take()
    writes = s.io.writes[writes_before:]
    assert len(writes) >= 3
    assert max(len(x) for x in writes) <= OUTBOX_HIGH + 300
    got = [decode(f, version=4) for f in frames(data)]
    assert got[0].raw == suback(1, 0)
    pubs = got[1:]
    assert all(d.type == PUBLISH and d.retain and d.qos == 0 for d in pubs)
    assert sorted(d.topic for d in pubs) == [f"r/{j:04d}" for j in range(n)]
    assert all(d.payload.startswith(d.topic.encode()) for d in pubs)
    session = w.registry.get("s")
    assert session.retained_pending == 0 and session.backlog is None


def test_retained_backlog_waits_for_an_unwritable_socket():
    """The stream goes only as fast as the socket: while the subscriber's transport is paused
    nothing more of it is sent (retained_pending says how much waits); resume_writing sends
    the rest."""
    w = World()
    store_retained(w, 2000)
    s = w.connected("s")
    s.io.receive(subscribe(1, ("r/#", 0)))       # SUBACK and the stream's first outbox ...
    s.proto.pause_writing()                      # ... and the transport pushes back
    first = received(s)
    session = w.registry.get("s")
    assert 0 < len(first) < 2000
    pending = session.retained_pending
    s.send(PINGREQ_BYTES)
    assert s.take() == PINGRESP_BYTES                # the client is served, the stream waits
    assert session.retained_pending == pending
    s.proto.resume_writing()
    rest = received(s)
    assert len(first) + len(rest) == 2000
    assert len({d.topic for d in first + rest}) == 2000
    assert session.retained_pending == 0


@pytest.mark.parametrize("max_inflight, max_queued, n", [(8, 1000, 500), (32, 10, 100)])
def test_retained_backlog_qos1_never_overflows_window_or_queue(max_inflight, max_queued, n):
    """Retained messages at QoS 1: they go out as the window takes them, the queue never holds
    more than one window (nor more than max_queued, even when that is below the window: a
    valid config), nothing is dropped, and everything arrives as the acks come in, with the
    retain flag and distinct packet ids in flight."""
    w = World(Config(sys_interval=0, max_inflight=max_inflight, max_queued=max_queued))
    store_retained(w, n, size=20, qos=1)
    s = w.connected("s")
    s.send(subscribe(1, ("r/#", 1)))
    session = w.registry.get("s")
    got = []
    for _ in range(n):
        batch = received(s)
        assert session.inflight <= max_inflight
        assert session.queued <= min(max_inflight, max_queued)
        if not batch:
            break
        assert all(d.qos == 1 and d.retain for d in batch)
        assert len({d.packet_id for d in batch}) == len(batch)
        got += batch
        s.send(*(puback(d.packet_id) for d in batch))
    assert session.dropped == 0, f"{session.dropped} retained messages dropped: {session.window}"
    assert sorted(d.topic for d in got) == [f"r/{j:04d}" for j in range(n)]
    assert session.retained_pending == 0
    assert (session.inflight, session.queued) == (0, 0)


def test_retained_replaced_or_deleted_before_its_turn_is_not_sent_old():
    """A retained message replaced between the SUBSCRIBE and its turn in the stream is not
    delivered in its old version; the new one, routed live, is (once). One deleted meanwhile
    (empty retained payload) is not delivered from the stream at all."""
    w = World()
    store_retained(w, 1000)
    s = w.connected("s")
    s.proto.pause_writing()                      # the stream cannot start yet
    s.send(subscribe(1, ("r/#", 0)))
    assert w.registry.get("s").retained_pending == 1000
    # two publishers: each is held after its first message to the unwritable subscriber
    w.connected("pub1").send(publish("r/0999", b"NEW", retain=True))
    w.connected("pub2").send(publish("r/0500", b"", retain=True))
    s.proto.resume_writing()
    w.loop.run_ready()
    got = received(s)
    by_topic: dict = {}
    for d in got:
        by_topic.setdefault(d.topic, []).append(d.payload)
    assert by_topic.pop("r/0999") == [b"NEW"]
    assert by_topic.pop("r/0500") == [b""]            # the live delete notice, not the old one
    assert sorted(by_topic) == [f"r/{j:04d}" for j in range(999) if j != 500]
    assert all(len(v) == 1 and v[0].startswith(k.encode()) for k, v in by_topic.items())


def test_unsubscribe_mid_stream_does_not_crash():
    """An UNSUBSCRIBE while the retained stream of that subscription is still being sent is
    answered; the connection keeps working; no message arrives twice, and the stream ends
    (retained_pending reaches 0) without any error."""
    w = World(Config(sys_interval=0, max_inflight=4))
    store_retained(w, 200, size=20, qos=1)
    s = w.connected("s")
    s.send(subscribe(1, ("r/#", 1)))
    first = received(s)
    assert 0 < len(first) < 200
    s.send(unsubscribe(2, "r/#"))
    data = s.take_frames()
    assert decode(data[0], version=4).type == UNSUBACK
    got = first + [d for d in (decode(f, version=4) for f in data[1:]) if d.type == PUBLISH]
    pending = list(got)
    for _ in range(200):
        if not pending:
            break
        s.send(*(puback(d.packet_id) for d in pending))
        pending = received(s)
        got += pending
    assert len({d.topic for d in got}) == len(got)
    session = w.registry.get("s")
    assert session.retained_pending == 0 and session.inflight == 0
    s.send(PINGREQ_BYTES)
    assert s.take() == PINGRESP_BYTES and s.open


def test_disconnect_mid_stream_then_a_persistent_session_continues_it():
    """A persistent session whose connection goes away in the middle of a QoS 1 retained
    stream: on reconnect (clean session 0) the unacknowledged ones are re-sent (DUP) and the
    stream continues: every retained message arrives. A clean session dropped mid-stream just
    ends, without error."""
    w = World(Config(sys_interval=0, max_inflight=4))
    n = 100
    store_retained(w, n, size=20, qos=1)
    s = w.connected("s", clean=False)
    s.send(subscribe(1, ("r/#", 1)))
    first = received(s)
    acked = first[:2]
    s.send(*(puback(d.packet_id) for d in acked))
    s.drop()
    assert w.registry.get("s").retained_pending > 0

    back = w.client()
    back.send(connect("s", clean=False))
    out = [decode(f, version=4) for f in back.take_frames()]
    assert out[0].raw == b"\x20\x02\x01\x00"            # session present
    got = [d for d in out[1:] if d.type == PUBLISH]
    pending = list(got)
    for _ in range(n):
        if not pending:
            break
        back.send(*(puback(d.packet_id) for d in pending))
        pending = received(back)
        got += pending
    topics = [d.topic for d in acked] + [d.topic for d in got]
    assert sorted(set(topics)) == [f"r/{j:04d}" for j in range(n)]
    assert any(d.dup for d in got)                   # the unacknowledged were re-sent
    session = w.registry.get("s")
    assert session.retained_pending == 0 and session.dropped == 0

    c = w.connected("c")                              # clean session, dropped mid-stream
    c.send(subscribe(1, ("r/#", 1)))
    assert received(c)
    c.drop()
    assert w.registry.get("c") is None
    assert back.open


def test_disconnect_mid_stream_qos0_persistent_session_continues_on_reconnect():
    """QoS 0 retained stream cut by a lost connection (the socket was full, so part of the
    stream never went out): the persistent session keeps the rest, and the reconnected client
    receives it."""
    w = World()
    n = 2000
    store_retained(w, n)
    s = w.connected("s", clean=False)
    s.io.receive(subscribe(1, ("r/#", 0)))
    s.proto.pause_writing()                      # the socket fills up mid-stream
    first = received(s)
    s.drop()
    left = w.registry.get("s").retained_pending
    assert left == n - len(first) > 0
    back = w.client()
    back.send(connect("s", clean=False))
    rest = [d for d in (decode(f, version=4) for f in frames(back.take())) if d.type == PUBLISH]
    assert len(rest) == left
    assert sorted({d.topic for d in first + rest}) == [f"r/{j:04d}" for j in range(n)]


def test_an_earlier_pause_timer_does_not_end_a_later_pause():
    """THROTTLE_MAX bounds each pause from its own start. A publisher held by an unwritable
    subscriber, let go when that subscriber drains, then held again a moment later: the timer
    of the first pause must not let it go before the second pause has lasted THROTTLE_MAX (or
    the subscriber drains); meanwhile the unwritable subscriber gets no more than the one
    message that started the pause."""
    w = World()
    sub = subscriber(w, "sub", "t", 0)
    pub = w.connected("pub")
    sub.proto.pause_writing()
    pub.send(*numbered(2))
    assert pub.proto.throttled
    w.loop.advance(0.1)
    sub.proto.resume_writing()                   # drained: the publisher goes on
    w.loop.run_ready()
    assert not pub.proto.throttled and payloads(sub) == seq(2)
    w.loop.advance(0.1)
    sub.proto.pause_writing()                    # full again: held again, at t = 0.2
    pub.send(*numbered(5, 2))
    assert pub.proto.throttled and payloads(sub) == seq(1, 2)
    w.loop.advance(THROTTLE_MAX - 0.05)          # t = 0.65: the first pause's timer is due
    assert payloads(sub) == [], "the first pause's timer let the publisher go early"
    assert pub.proto.throttled and pub.paused
