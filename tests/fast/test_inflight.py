"""cymqtt._fast.inflight: OutboundWindow (outbound QoS 1/2 window + session queue) and
InboundQoS2 (client QoS 2 ids awaiting PUBREL).

MQTT 3.1.1 section 4.3 / MQTT 5.0 section 4.3 (QoS flows), 4.4 (message delivery retry), 4.9
(flow control, receive maximum). A RuleBasedStateMachine compares both classes with the
plain-Python model in tests/models/ref_inflight.py.
"""
import gc
import random
import sys
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cymqtt._fast import inflight
from cymqtt._fast.inflight import (
    AWAIT_PUBACK, AWAIT_PUBCOMP, AWAIT_PUBREC, InboundQoS2, InflightState, OutboundWindow,
)

try:
    from models import ref_inflight
except ImportError:  # pragma: no cover - depends on how pytest roots the tests
    from tests.models import ref_inflight


def fill(w, n, qos=1, online=True, prefix="m"):
    """Submit n messages; return what submit() answered for each."""
    return [w.submit(f"{prefix}{i}", qos, online) for i in range(n)]


# -- constants and construction ------------------------------------------------------------------

def test_states_are_module_constants_named_after_the_awaited_packet():
    assert (AWAIT_PUBACK, AWAIT_PUBREC, AWAIT_PUBCOMP) == (4, 5, 7)   # PUBACK, PUBREC, PUBCOMP
    assert InflightState.AWAIT_PUBREC is AWAIT_PUBREC
    assert set(inflight.__all__) >= {"OutboundWindow", "InboundQoS2", "AWAIT_PUBACK",
                                     "AWAIT_PUBREC", "AWAIT_PUBCOMP"}
    assert (ref_inflight.AWAIT_PUBACK, ref_inflight.AWAIT_PUBREC,
            ref_inflight.AWAIT_PUBCOMP) == (4, 5, 7)


def test_defaults():
    w = OutboundWindow()
    assert (w.max_inflight, w.max_queued, w.queue_qos0) == (32, 1000, False)
    assert (w.window, w.receive_maximum, w.last_pid) == (32, 65535, 0)
    assert (w.inflight_count, w.queued_count, w.dropped, len(w)) == (0, 0, 0, 0)
    assert w.resend() == [] and w.release() == [] and w.drain_queue() == []
    assert w.take_inflight() == [] and w.due(1.0, 1.0) == []
    assert "inflight=0/32" in repr(w)


@pytest.mark.parametrize("kw", [dict(max_inflight=0), dict(max_inflight=65536),
                                dict(max_inflight=-1), dict(max_queued=-1)])
def test_bad_limits_are_refused(kw):
    with pytest.raises(ValueError):
        OutboundWindow(**kw)


@pytest.mark.parametrize("value", [0, -1, 65536])
def test_bad_receive_maximum_is_refused(value):
    w = OutboundWindow()
    with pytest.raises(ValueError):
        w.receive_maximum = value
    assert w.receive_maximum == 65535


@pytest.mark.parametrize("qos", [-1, 3])
def test_bad_qos_is_refused(qos):
    w = OutboundWindow()
    with pytest.raises(ValueError):
        w.submit("m", qos, True)
    assert len(w) == 0


def test_readonly_counters():
    w = OutboundWindow()
    for name in ("dropped", "inflight_count", "queued_count", "window", "max_inflight"):
        with pytest.raises(AttributeError):
            setattr(w, name, 1)


# -- packet identifiers ---------------------------------------------------------------------------

def test_packet_ids_start_at_1_and_go_in_sequence():
    w = OutboundWindow(max_inflight=5)
    assert fill(w, 5) == [1, 2, 3, 4, 5]
    assert w.last_pid == 5


def test_freed_ids_are_not_reused_before_the_cursor_wraps():
    """Round-robin: after acking 2 the next id is 6, not 2."""
    w = OutboundWindow(max_inflight=5)
    fill(w, 5)
    assert w.puback(2)
    assert w.release() == []
    assert w.submit("x", 1, True) == 6


def test_all_65535_ids_in_flight_then_one_acked_is_the_next_id():
    """[MQTT-2.2.1-3]/[MQTT-2.3.1-2]: an id in use is never handed out again."""
    w = OutboundWindow(max_inflight=65535)
    pids = fill(w, 65535)
    assert pids == list(range(1, 65536))
    assert w.inflight_count == 65535
    assert w.submit("full", 1, True) == -1          # window full: queued
    assert w.puback(30000)
    assert w.release() == [(30000, 1, "full")]
    assert w.puback(10) and w.puback(40000)
    # The cursor is at 30000: 40000 comes before 10 (it is next in round-robin order).
    assert w.submit("a", 2, True) == 40000
    assert w.submit("b", 1, True) == 10
    assert w.submit("c", 1, True) == -1
    assert w.inflight_count == 65535
    order = [pid for pid, *_ in w.resend()]
    assert order[-3:] == [30000, 40000, 10] and len(set(order)) == 65535


def test_ids_wrap_from_65535_to_1():
    w = OutboundWindow(max_inflight=2)
    for i in range(65535):
        assert w.submit(i, 1, True) == i + 1
        assert w.puback(i + 1)
    assert w.last_pid == 65535
    assert w.submit("wrapped", 1, True) == 1


def test_wrap_skips_ids_still_in_flight():
    w = OutboundWindow(max_inflight=4)
    assert w.submit("old", 2, True) == 1             # held across the wrap
    w.last_pid = 65534
    assert fill(w, 2) == [65535, 2]                  # 1 is still in flight
    assert w.pubrec(1)                               # still in flight, awaiting PUBCOMP
    assert w.puback(65535) and w.puback(2)
    assert w.submit("x", 1, True) == 3


def test_last_pid_is_checked():
    w = OutboundWindow()
    for bad in (-1, 65536):
        with pytest.raises(ValueError):
            w.last_pid = bad


# -- window and receive maximum -------------------------------------------------------------------

def test_window_limit_queues_the_rest():
    w = OutboundWindow(max_inflight=3)
    assert fill(w, 5) == [1, 2, 3, -1, -1]
    assert (w.inflight_count, w.queued_count, len(w)) == (3, 2, 5)


def test_receive_maximum_narrows_the_window():
    """MQTT 5 4.9: no more than receive maximum unacknowledged QoS 1/2 PUBLISHes."""
    w = OutboundWindow(max_inflight=32)
    w.receive_maximum = 2
    assert w.window == 2
    assert fill(w, 3) == [1, 2, -1]
    w.receive_maximum = 100                          # above max_inflight: max_inflight rules
    assert w.window == 32
    assert w.release() == [(3, 1, "m2")]


def test_narrowing_below_what_is_in_flight_drops_nothing():
    w = OutboundWindow(max_inflight=4)
    fill(w, 4)
    w.receive_maximum = 2
    assert (w.window, w.inflight_count) == (2, 4)
    assert [p for p, *_ in w.resend()] == [1, 2, 3, 4]
    assert w.submit("q", 1, True) == -1              # no room until in flight < 2
    assert w.puback(1) and w.release() == []
    assert w.puback(2) and w.release() == []
    assert w.puback(3) and w.release() == [(5, 1, "q")]
    assert w.inflight_count == 2


# -- QoS 1 and QoS 2 flows ------------------------------------------------------------------------

def test_qos1_flow():
    """QoS 1: PUBLISH -> PUBACK; wrong acks are refused."""
    w = OutboundWindow()
    pid = w.submit("m", 1, True)
    assert w.resend() == [(pid, 1, AWAIT_PUBACK, "m")]
    assert not w.pubrec(pid)
    assert not w.pubcomp(pid)
    assert w.inflight_count == 1
    assert w.puback(pid)
    assert not w.puback(pid)                          # already acked
    assert w.inflight_count == 0 and w.resend() == []


def test_qos2_flow():
    """QoS 2: PUBLISH -> PUBREC -> (PUBREL) -> PUBCOMP; wrong acks are refused in each state."""
    w = OutboundWindow()
    pid = w.submit("m", 2, True)
    assert w.resend() == [(pid, 2, AWAIT_PUBREC, "m")]
    assert not w.puback(pid)
    assert not w.pubcomp(pid)                         # PUBCOMP before PUBREC
    assert w.pubrec(pid)
    assert w.resend() == [(pid, 2, AWAIT_PUBCOMP, "m")]
    assert not w.pubrec(pid)                          # a repeated PUBREC
    assert not w.puback(pid)
    assert w.inflight_count == 1
    assert w.pubcomp(pid)
    assert not w.pubcomp(pid)
    assert w.inflight_count == 0


@pytest.mark.parametrize("pid", [0, -1, 7, 65535, 65536, 1 << 20])
def test_unknown_ids_are_refused(pid):
    w = OutboundWindow()
    w.submit("m", 1, True)
    w.submit("n", 2, True)
    assert not w.puback(pid) and not w.pubrec(pid) and not w.pubcomp(pid)
    assert not w.mark_sent(pid, 1.0)
    assert w.inflight_count == 2


def test_qos2_rejected_by_pubrec_reason_frees_the_id_with_pubrec_then_pubcomp():
    """MQTT 5 4.3.3: PUBREC with reason >= 0x80 ends the flow; the id is free again."""
    w = OutboundWindow(max_inflight=1)
    assert w.submit("m", 2, True) == 1
    assert w.submit("n", 1, True) == -1
    assert w.pubrec(1) and w.pubcomp(1)
    assert w.release() == [(2, 1, "n")]


# -- queue, offline, drop policy ------------------------------------------------------------------

def test_offline_messages_are_queued_even_with_room():
    w = OutboundWindow()
    assert w.submit("a", 1, False) == -1
    assert w.submit("b", 2, False) == -1
    assert (w.inflight_count, w.queued_count) == (0, 2)


def test_offline_qos0_is_dropped_without_queue_qos0():
    w = OutboundWindow()
    assert w.submit("a", 0, False) == -2
    assert (w.dropped, w.queued_count) == (1, 0)


def test_offline_qos0_is_queued_with_queue_qos0():
    w = OutboundWindow(queue_qos0=True)
    assert w.submit("a", 0, False) == -1
    assert (w.dropped, w.queued_count) == (0, 1)
    assert w.release() == [(0, 0, "a")]


def test_online_qos0_goes_straight_out_even_behind_a_queue_or_a_full_window():
    w = OutboundWindow(max_inflight=1, queue_qos0=True)
    assert w.submit("a", 1, True) == 1
    assert w.submit("b", 1, True) == -1               # window full: queued
    assert w.submit("c", 0, True) == 0                # never enters the window or the queue
    assert (w.inflight_count, w.queued_count) == (1, 1)


def test_qos1_waits_behind_the_queue_even_when_the_window_has_room():
    """Messages go out in submission order [MQTT-4.6.0-6]."""
    w = OutboundWindow(max_inflight=2)
    assert w.submit("a", 1, False) == -1              # offline
    assert w.submit("b", 1, True) == -1               # back online, but "a" waits: queue too
    assert w.release() == [(1, 1, "a"), (2, 1, "b")]


def test_drop_policy_new_qos0_is_dropped_when_full():
    w = OutboundWindow(max_queued=2, queue_qos0=True)
    assert [w.submit("a", 1, False), w.submit("b", 0, False)] == [-1, -1]
    assert w.submit("c", 0, False) == -2
    assert w.dropped == 1
    assert w.drain_queue() == [(1, "a"), (0, "b")]


def test_drop_policy_oldest_qos0_makes_room_for_qos1():
    w = OutboundWindow(max_queued=4, queue_qos0=True)
    assert [w.submit(m, q, False) for m, q in
            [("a", 1), ("b", 0), ("c", 2), ("d", 0)]] == [-1, -1, -1, -1]
    assert w.submit("e", 1, False) == -1               # "b" is dropped
    assert (w.dropped, w.queued_count) == (1, 4)
    assert w.submit("f", 2, False) == -1               # then "d"
    assert (w.dropped, w.queued_count) == (2, 4)
    assert w.submit("g", 1, False) == -2               # no QoS 0 left: the new one goes
    assert (w.dropped, w.queued_count) == (3, 4)
    assert w.drain_queue() == [(1, "a"), (2, "c"), (1, "e"), (2, "f")]


def test_drop_policy_keeps_the_order_of_the_rest():
    w = OutboundWindow(max_queued=5, queue_qos0=True)
    for m, q in [("a", 1), ("b", 2), ("c", 0), ("d", 1), ("e", 0)]:
        assert w.submit(m, q, False) == -1
    assert w.submit("f", 1, False) == -1               # drops "c"
    assert w.drain_queue() == [(1, "a"), (2, "b"), (1, "d"), (0, "e"), (1, "f")]


def test_drop_policy_finds_the_oldest_qos0_in_a_wrapped_ring():
    """The queue is a ring buffer: the oldest QoS 0 is found (and removed) across its end."""
    w = OutboundWindow(max_inflight=1, max_queued=8, queue_qos0=True)
    assert w.submit("x", 1, True) == 1
    for i in range(6):
        assert w.submit(f"p{i}", 1, True) == -1        # queued behind the full window
    for i in range(3):                                 # move the ring's head forward
        assert w.puback(w.last_pid)
        assert [m for _, _, m in w.release()] == [f"p{i}"]
    for m, q in [("z0", 0), ("q0", 1), ("z1", 0), ("q1", 2), ("q2", 1)]:
        assert w.submit(m, q, False) == -1             # fills the ring, wrapping around
    assert w.queued_count == 8
    assert w.submit("r1", 2, False) == -1              # drops z0
    assert w.submit("r2", 1, False) == -1              # drops z1
    assert w.submit("r3", 1, False) == -2              # no QoS 0 left
    assert w.dropped == 3
    assert [m for _, m in w.drain_queue()] == ["p3", "p4", "p5", "q0", "q1", "q2", "r1", "r2"]


def test_drop_policy_no_qos0_new_message_is_dropped():
    w = OutboundWindow(max_queued=2)
    fill(w, 2, online=False)
    assert w.submit("late", 2, False) == -2
    assert w.dropped == 1
    assert [m for _, m in w.drain_queue()] == ["m0", "m1"]


def test_max_queued_zero_drops_whatever_would_queue():
    w = OutboundWindow(max_inflight=1, max_queued=0, queue_qos0=True)
    assert w.submit("a", 1, True) == 1
    assert w.submit("b", 1, True) == -2
    assert w.submit("c", 0, False) == -2
    assert w.submit("d", 2, False) == -2
    assert (w.dropped, len(w)) == (3, 1)


def test_dropped_counts_every_drop():
    w = OutboundWindow(max_inflight=1, max_queued=1)
    w.submit("a", 1, True)                 # in flight
    w.submit("b", 1, True)                 # queued
    w.submit("c", 1, True)                 # dropped: queue full
    w.submit("d", 0, False)                # dropped: offline QoS 0
    w.submit("e", 0, True)                 # sent
    assert w.dropped == 2


# -- release, resend, drain, take -----------------------------------------------------------------

def test_release_is_fifo_and_stops_when_the_window_is_full():
    w = OutboundWindow(max_inflight=2, queue_qos0=True)
    for m, q in [("a", 1), ("b", 0), ("c", 2), ("d", 1), ("e", 0)]:
        assert w.submit(m, q, False) == -1
    assert w.release() == [(1, 1, "a"), (0, 0, "b"), (2, 2, "c")]
    assert w.queued_count == 2
    assert w.release() == []                            # window full, "d" waits
    assert w.puback(1)
    assert w.release() == [(3, 1, "d"), (0, 0, "e")]
    assert w.queued_count == 0


def test_release_lets_a_queued_qos0_out_while_the_window_is_full():
    w = OutboundWindow(max_inflight=1, queue_qos0=True)
    w.submit("a", 0, False)
    w.submit("b", 1, False)
    w.submit("c", 0, False)
    w.submit("d", 1, False)
    w.submit("e", 0, False)
    assert w.release() == [(0, 0, "a"), (1, 1, "b"), (0, 0, "c")]
    assert w.puback(1)
    assert w.release() == [(2, 1, "d"), (0, 0, "e")]


def test_resend_order_and_states_after_partial_acks():
    """[MQTT-4.4.0-1]: on reconnect, re-send unacknowledged PUBLISH (DUP) and PUBREL, in order."""
    w = OutboundWindow(max_inflight=6)
    msgs = [("a", 1), ("b", 2), ("c", 2), ("d", 1), ("e", 2), ("f", 1)]
    assert [w.submit(m, q, True) for m, q in msgs] == [1, 2, 3, 4, 5, 6]
    assert w.pubrec(3) and w.puback(4) and w.pubrec(2) and w.pubcomp(2) and w.pubrec(5)
    assert w.resend() == [
        (1, 1, AWAIT_PUBACK, "a"),
        (3, 2, AWAIT_PUBCOMP, "c"),
        (5, 2, AWAIT_PUBCOMP, "e"),
        (6, 1, AWAIT_PUBACK, "f"),
    ]
    assert w.resend() == w.resend()                     # resend itself changes nothing
    assert w.submit("g", 2, True) == 7
    assert w.resend()[-1] == (7, 2, AWAIT_PUBREC, "g")
    assert [p for p, *_ in w.resend()] == [1, 3, 5, 6, 7]


def test_reconnect_resend_then_release():
    w = OutboundWindow(max_inflight=2)
    assert fill(w, 4) == [1, 2, -1, -1]
    # client goes away; more arrives
    assert w.submit("late", 1, False) == -1
    assert [p for p, *_ in w.resend()] == [1, 2]
    assert w.release() == []                             # the window is still full
    assert w.puback(2)
    assert w.release() == [(3, 1, "m2")]


def test_drain_queue_leaves_the_window():
    w = OutboundWindow(max_inflight=1, queue_qos0=True)
    w.submit("a", 1, True)
    w.submit("b", 2, True)
    w.submit("c", 0, False)
    assert w.drain_queue() == [(2, "b"), (0, "c")]
    assert (w.inflight_count, w.queued_count, w.drain_queue()) == (1, 0, [])
    assert w.submit("d", 0, False) == -1                 # the queue still works
    assert w.release() == [(0, 0, "d")]


def test_take_inflight_frees_the_ids_and_leaves_the_queue():
    w = OutboundWindow(max_inflight=3)
    fill(w, 4)
    assert w.pubrec(2) is False and w.puback(2)
    w.submit("x", 2, True)                               # queued behind m3
    assert w.release() == [(4, 1, "m3")]
    assert w.release() == []
    assert w.take_inflight() == [(1, 1, AWAIT_PUBACK, "m0"), (3, 1, AWAIT_PUBACK, "m2"),
                                 (4, 1, AWAIT_PUBACK, "m3")]
    assert (w.inflight_count, w.queued_count) == (0, 1)
    assert not w.puback(1)
    assert w.release() == [(5, 2, "x")]                  # the cursor carries on
    w.last_pid = 0
    assert w.submit("y", 1, True) == 1                   # 1 was freed by take_inflight


# -- resend on a live connection (3.1.1) ----------------------------------------------------------

def test_due_stamps_then_returns_after_timeout():
    w = OutboundWindow()
    w.submit("a", 1, True)
    w.submit("b", 2, True)
    assert w.due(100.0, 10.0) == []                       # first sweep stamps them
    assert w.due(109.0, 10.0) == []
    assert w.due(110.0, 10.0) == [(1, 1, AWAIT_PUBACK, "a"), (2, 2, AWAIT_PUBREC, "b")]
    assert w.due(115.0, 10.0) == []                       # re-stamped at 110
    assert w.pubrec(2)                                    # PUBREL goes out now: unstamped
    assert w.due(120.0, 10.0) == [(1, 1, AWAIT_PUBACK, "a")]
    assert w.due(130.0, 10.0) == [(1, 1, AWAIT_PUBACK, "a"), (2, 2, AWAIT_PUBCOMP, "b")]


def test_mark_sent_sets_the_clock_for_one_entry():
    w = OutboundWindow()
    w.submit("a", 1, True)
    w.submit("b", 1, True)
    assert w.mark_sent(2, 50.0)
    assert w.due(55.0, 5.0) == [(2, 1, AWAIT_PUBACK, "b")]   # "a" only gets stamped now
    assert w.due(60.0, 5.0) == [(1, 1, AWAIT_PUBACK, "a"), (2, 1, AWAIT_PUBACK, "b")]
    w.resend()                                               # reconnect: unstamps everything
    assert w.due(100.0, 5.0) == []


# -- memory and references ------------------------------------------------------------------------

def test_messages_are_referenced_not_leaked():
    msgs = [object() for _ in range(20)]
    base = [sys.getrefcount(m) for m in msgs]
    w = OutboundWindow(max_inflight=4, max_queued=8, queue_qos0=True)
    for i, m in enumerate(msgs):
        w.submit(m, i % 3, i % 2 == 0)
    del m
    w.puback(1)
    w.pubrec(2)
    out = w.release()
    del out
    w.resend()
    w.due(1.0, 0.0)
    w.due(2.0, 0.0)
    w.take_inflight()
    w.drain_queue()
    assert len(w) == 0
    assert [sys.getrefcount(m) for m in msgs] == base
    for i, m in enumerate(msgs):
        w.submit(m, 1 + i % 2, i % 2 == 0)
    del m, w
    gc.collect()
    assert [sys.getrefcount(m) for m in msgs] == base


def test_idle_window_holds_no_storage_after_a_burst():
    """Storage is allocated on demand and given back once a burst has drained."""
    w = OutboundWindow(max_inflight=200, max_queued=500)
    msgs = [f"m{i}" for i in range(800)]

    def burst():
        for m in msgs:
            w.submit(m, 1, True)

    def drain():
        while len(w):
            for pid, *_ in w.resend():
                assert w.puback(pid)
            w.release()

    burst()
    assert (w.inflight_count, w.queued_count, w.dropped) == (200, 500, 100)
    drain()                         # once untraced: fills CPython's tuple and list freelists
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        burst()
        busy = tracemalloc.get_traced_memory()[0]
        drain()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert busy - before > 200 * 32 + 500 * 16          # the slab and ring were allocated...
    assert after - before < 512                         # ...and given back


def test_small_windows_keep_their_slab_between_messages():
    """The default window keeps its slab (no malloc/free per message), and pids stay correct."""
    w = OutboundWindow()
    for i in range(1000):
        pid = w.submit(i, 1 + i % 2, True)
        assert pid == i + 1
        if i % 2 == 0:
            assert w.puback(pid)
        else:
            assert w.pubrec(pid) and w.pubcomp(pid)
    assert len(w) == 0


# -- InboundQoS2 ----------------------------------------------------------------------------------

def test_inbound_duplicate_is_not_delivered_twice():
    """[MQTT-4.3.3-9]: until PUBREL, a re-sent PUBLISH with the same id is not delivered again."""
    q = InboundQoS2()
    assert q.receive(7) == 1
    assert q.receive(7) == 0                           # DUP: send PUBREC, do not deliver
    assert 7 in q and len(q) == 1
    assert q.release(7)
    assert not q.release(7)                            # PUBCOMP with 0x92 (MQTT 5)
    assert q.receive(7) == 1                           # a new message with a reused id
    assert "pending=1/65535" in repr(q)


def test_inbound_receive_maximum():
    """MQTT 5 4.9: more than receive maximum awaiting PUBREL is a 0x93 disconnect."""
    q = InboundQoS2(receive_maximum=2)
    assert [q.receive(1), q.receive(2), q.receive(3)] == [1, 1, -1]
    assert q.receive(2) == 0                           # a duplicate is still recognised
    assert len(q) == 2 and 3 not in q
    assert q.release(1)
    assert q.receive(3) == 1
    q.receive_maximum = 1
    assert q.receive(4) == -1
    q.clear()
    assert len(q) == 0 and q.receive(4) == 1


def test_inbound_bad_values():
    with pytest.raises(ValueError):
        InboundQoS2(0)
    with pytest.raises(ValueError):
        InboundQoS2(65536)
    q = InboundQoS2()
    for bad in (0, -1, 65536):
        with pytest.raises(ValueError):
            q.receive(bad)
        assert not q.release(bad) and bad not in q
    with pytest.raises(ValueError):
        q.receive_maximum = 0
    assert "x" not in q


# Ids that share hash buckets (same value modulo the table sizes, 16 and up) exercise probing,
# deletion that moves later ids back, and probe runs that wrap past the table's last bucket.
COLLIDING = [1, 17, 33, 49, 65, 2, 18, 16, 32, 48, 64, 128, 15, 31, 47, 63, 65535, 65519, 65503]
colliding_pids = st.one_of(st.sampled_from(COLLIDING), st.integers(1, 65535))


def test_inbound_colliding_ids_match_a_set():
    """Many receive/release calls over ids that share buckets (deterministic, seeded)."""
    rng = random.Random(1883)
    for pool_size in (3, 6, len(COLLIDING)):
        real, model = InboundQoS2(), set()
        for _ in range(20000):
            pid = rng.choice(COLLIDING[:pool_size])
            if rng.random() < 0.55:
                assert real.receive(pid) == (0 if pid in model else 1)
                model.add(pid)
            else:
                assert real.release(pid) == (pid in model)
                model.discard(pid)
            assert len(real) == len(model)
        assert all((p in real) == (p in model) for p in COLLIDING)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(["receive", "release", "clear"]), colliding_pids),
                max_size=200),
       st.integers(1, 40))
def test_inbound_matches_the_model(ops, receive_maximum):
    real, model = InboundQoS2(receive_maximum), ref_inflight.InboundQoS2(receive_maximum)
    seen = set()
    for op, pid in ops:
        seen.add(pid)
        if op == "clear":
            real.clear()
            model.clear()
        else:
            assert getattr(real, op)(pid) == getattr(model, op)(pid)
        assert len(real) == len(model)
    assert all((p in real) == (p in model) for p in seen)


def test_inbound_many_ids_grow_and_shrink():
    q = InboundQoS2()
    pids = list(dict.fromkeys(list(range(1, 65536, 7)) + list(range(3, 65536, 1024))))
    for p in pids:
        assert q.receive(p) == 1
    assert len(q) == len(pids)
    for p in pids[::2]:
        assert q.release(p)
    assert all((p in q) == (i % 2 == 1) for i, p in enumerate(pids))
    for p in pids[1::2]:
        assert q.release(p)
    assert len(q) == 0


# -- state machine: OutboundWindow against the model ----------------------------------------------

pid_choices = st.one_of(st.integers(-1, 12), st.integers(65530, 65536))


class WindowMachine(RuleBasedStateMachine):
    """Random submit/ack/release/resend/reconnect sequences: the window equals the model."""

    @initialize(max_inflight=st.integers(1, 6), max_queued=st.integers(0, 6),
                queue_qos0=st.booleans())
    def setup(self, max_inflight, max_queued, queue_qos0):
        self.real = OutboundWindow(max_inflight, max_queued, queue_qos0)
        self.model = ref_inflight.OutboundWindow(max_inflight, max_queued, queue_qos0)
        self.n = 0
        self.now = 0.0

    def _pid(self, data):
        live = list(self.model.inflight)
        if live:
            return data.draw(st.one_of(st.sampled_from(live), pid_choices))
        return data.draw(pid_choices)

    @rule(qos=st.integers(0, 2), online=st.booleans())
    def submit(self, qos, online):
        msg = f"m{self.n}"
        self.n += 1
        assert self.real.submit(msg, qos, online) == self.model.submit(msg, qos, online)

    @rule(data=st.data(), kind=st.sampled_from(["puback", "pubrec", "pubcomp"]),
          then_release=st.booleans())
    def ack(self, data, kind, then_release):
        pid = self._pid(data)
        assert getattr(self.real, kind)(pid) == getattr(self.model, kind)(pid)
        if then_release:
            assert self.real.release() == self.model.release()

    @rule()
    def release(self):
        assert self.real.release() == self.model.release()

    @rule()
    def reconnect(self):
        assert self.real.resend() == self.model.resend()
        assert self.real.release() == self.model.release()

    @rule(value=st.integers(1, 8))
    def receive_maximum(self, value):
        self.real.receive_maximum = value
        self.model.receive_maximum = value

    # Jumps that make the next ids share hash buckets with live ones, and wrap past 65535.
    @rule(value=st.one_of(st.sampled_from([0, 16, 32, 48, 64, 65519, 65533, 65534, 65535]),
                          st.integers(0, 65535)))
    def move_cursor(self, value):
        self.real.last_pid = value
        self.model.last_pid = value

    @rule()
    def drain_queue(self):
        assert self.real.drain_queue() == self.model.drain_queue()

    @rule()
    def take_inflight(self):
        assert self.real.take_inflight() == self.model.take_inflight()

    @rule(data=st.data(), dt=st.sampled_from([0.0, 0.5, 1.0, 2.5]))
    def mark_sent(self, data, dt):
        self.now += dt
        pid = self._pid(data)
        assert self.real.mark_sent(pid, self.now) == self.model.mark_sent(pid, self.now)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.5]), timeout=st.sampled_from([0.0, 1.0, 2.0]))
    def due(self, dt, timeout):
        self.now += dt
        assert self.real.due(self.now, timeout) == self.model.due(self.now, timeout)

    @invariant()
    def same_counts(self):
        r, m = self.real, self.model
        assert (r.inflight_count, r.queued_count, r.dropped, r.window, len(r), r.last_pid) == \
            (m.inflight_count, m.queued_count, m.dropped, m.window, len(m), m.last_pid)
        assert r.inflight_count <= r.max_inflight
        assert r.queued_count <= r.max_queued


WindowMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60,
                                           deadline=None)
TestWindowMachine = WindowMachine.TestCase


# -- release(limit): at most `limit` queued messages per call -------------------------------------

def test_release_limit_is_respected_and_order_kept_across_calls():
    """release(limit) moves at most `limit` queued messages, oldest first; the next call goes
    on where the last one stopped, packet ids in sequence."""
    w = OutboundWindow(max_inflight=32)
    assert fill(w, 10, online=False) == [-1] * 10
    assert w.release(3) == [(1, 1, "m0"), (2, 1, "m1"), (3, 1, "m2")]
    assert (w.inflight_count, w.queued_count) == (3, 7)
    assert w.release(4) == [(4, 1, "m3"), (5, 1, "m4"), (6, 1, "m5"), (7, 1, "m6")]
    assert w.release(100) == [(8, 1, "m7"), (9, 1, "m8"), (10, 1, "m9")]
    assert w.release(5) == [] and (w.inflight_count, w.queued_count) == (10, 0)


def test_release_limit_counts_queued_qos0():
    """QoS 0 messages leaving the queue count toward the limit like QoS 1/2 ones, although
    they take no slot of the window."""
    w = OutboundWindow(max_inflight=8, queue_qos0=True)
    for m, q in [("a", 0), ("b", 1), ("c", 0), ("d", 0), ("e", 2)]:
        assert w.submit(m, q, False) == -1
    assert w.release(2) == [(0, 0, "a"), (1, 1, "b")]
    assert w.release(1) == [(0, 0, "c")]
    assert w.release(1) == [(0, 0, "d")]
    assert w.inflight_count == 1 and w.queued_count == 1
    assert w.release(1) == [(2, 2, "e")]


def test_release_limit_minus_one_releases_everything_that_fits():
    """limit=-1 (the default) has no limit: everything the window has room for, as release()
    without an argument; what does not fit stays queued, in order."""
    a = OutboundWindow(max_inflight=3, queue_qos0=True)
    b = OutboundWindow(max_inflight=3, queue_qos0=True)
    for w in (a, b):
        for i, q in enumerate([1, 0, 1, 1, 0, 1, 1]):
            w.submit(f"m{i}", q, False)
    out = a.release(-1)
    assert out == b.release()
    assert out == [(1, 1, "m0"), (0, 0, "m1"), (2, 1, "m2"), (3, 1, "m3"), (0, 0, "m4")]
    assert a.queued_count == 2 and a.inflight_count == 3
    assert a.puback(1) and a.release(-1) == [(4, 1, "m5")]


def test_release_limit_zero_releases_nothing():
    """limit=0 moves nothing, even with room in the window and QoS 0 at the head."""
    w = OutboundWindow(max_inflight=4, queue_qos0=True)
    w.submit("z", 0, False)
    w.submit("a", 1, False)
    assert w.release(0) == []
    assert (w.inflight_count, w.queued_count, w.last_pid) == (0, 2, 0)
    assert w.release(-1) == [(0, 0, "z"), (1, 1, "a")]


def test_release_limit_stops_at_a_full_window_without_skipping():
    """A full window stops release(limit) at the first QoS 1/2 message even when the limit
    allows more: the QoS 0 messages behind it wait (order is kept)."""
    w = OutboundWindow(max_inflight=1, queue_qos0=True)
    assert w.submit("in", 1, True) == 1
    w.submit("q1", 1, False)
    w.submit("q0", 0, False)
    assert w.release(10) == []
    assert w.queued_count == 2
    assert w.puback(1)
    assert w.release(10) == [(2, 1, "q1"), (0, 0, "q0")]


@settings(max_examples=200, deadline=None)
@given(qos=st.lists(st.sampled_from([0, 1, 2]), max_size=60),
       window=st.integers(1, 8),
       limits=st.lists(st.integers(-1, 5), max_size=20))
def test_release_limit_matches_a_plain_model(qos, window, limits):
    """Any sequence of release(limit) calls, with the window freed by acks every other step,
    hands out what a plain model says: oldest first, at most `limit` entries (any number for
    -1), QoS 0 counted, stopping at the first QoS 1/2 message that finds the window full,
    packet ids in sequence."""
    w = OutboundWindow(max_inflight=window, max_queued=100, queue_qos0=True)
    for i, q in enumerate(qos):
        assert w.submit(i, q, False) == -1
    queue = list(enumerate(qos))          # the model: (msg, qos) waiting, oldest first
    inflight: dict[int, int] = {}         # pid -> qos
    last = 0
    for step, k in enumerate(limits + [-1]):
        expected = []
        n = k
        while queue and n != 0:
            n -= 1
            msg, q = queue[0]
            if q == 0:
                expected.append((0, 0, msg))
            elif len(inflight) < window:
                last += 1
                inflight[last] = q
                expected.append((last, q, msg))
            else:
                break
            del queue[0]
        assert w.release(k) == expected
        assert (w.queued_count, w.inflight_count) == (len(queue), len(inflight))
        if step % 2:
            for pid, q in inflight.items():
                assert (w.puback(pid) if q == 1 else w.pubrec(pid) and w.pubcomp(pid))
            inflight.clear()
