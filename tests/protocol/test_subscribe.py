"""SUBSCRIBE / SUBACK and UNSUBSCRIBE / UNSUBACK, and the retained messages a subscription gets.

MQTT 3.1.1 sections 3.8 to 3.11 and 3.3.1.3 (RETAIN); MQTT 5.0 the same plus subscription
options (no local, retain as published, retain handling), subscription identifiers and shared
subscriptions. Byte-exact wherever the encoding leaves no choice.
"""
import pytest

from cymqtt.config import Config
from cymqtt.message import Message

from ._harness import (
    PUBLISH, REQUEST_PROBLEM_INFO, SUBSCRIPTION_ID, World, decode, frames, packet, publish,
    puback, subscribe, suback, unsubscribe, unsuback,
)

QUIET = {REQUEST_PROBLEM_INFO: 0}


def test_suback_311_byte_exact():
    """SUBACK has the SUBSCRIBE's packet id [MQTT-3.8.4-2] and one return code per filter,
    the QoS granted [MQTT-3.8.4-5]; several filters are handled as a sequence with one SUBACK
    [MQTT-3.8.4-4]."""
    w = World()
    c = w.connected("c")
    c.send(subscribe(0x1234, ("a", 0), ("b", 1), ("c/+", 2)))
    assert c.take() == b"\x90\x05\x12\x34\x00\x01\x02"
    assert {f: s.qos for f, s in w.registry.get("c").subscriptions.items()} == \
        {"a": 0, "b": 1, "c/+": 2}


def test_suback_v5_byte_exact():
    """MQTT 5 SUBACK: packet id, an empty property block, one reason code per filter
    [MQTT-3.8.4-6, MQTT-3.9.3-1]."""
    w = World()
    c = w.connected("c", version=5)
    c.send(subscribe(7, ("a", 2), ("b", 0), version=5))
    assert c.take() == b"\x90\x05\x00\x07\x00\x02\x00"


def test_granted_qos_capped_by_maximum_qos():
    """The server may grant a lower QoS than requested [MQTT-3.8.4-6]; with maximum QoS 1 a
    QoS 2 request is granted 1, and deliveries follow the granted QoS."""
    w = World(maximum_qos=1)
    c = w.connected("c")
    c.send(subscribe(1, ("t", 2)))
    assert c.take() == b"\x90\x03\x00\x01\x01"
    w.connected("p").send(publish("t", b"x", qos=1, pid=4))
    assert c.take() == publish("t", b"x", qos=1, pid=1)


def test_subscription_replaced():
    """A SUBSCRIBE with a filter the session has replaces that subscription (one delivery, at
    the new QoS) [MQTT-3.8.4-3]."""
    w = World()
    c = w.connected("c")
    c.send(subscribe(1, ("t", 0)), subscribe(2, ("t", 1)))
    assert c.take() == suback(1, 0) + suback(2, 1)
    assert list(w.registry.get("c").subscriptions) == ["t"]
    w.connected("p").send(publish("t", b"x", qos=1, pid=1))
    assert c.take() == publish("t", b"x", qos=1, pid=1)


def test_overlapping_subscriptions_one_delivery_at_max_qos():
    """When several subscriptions of one client match, it gets the message respecting the
    maximum QoS of all of them [MQTT-3.3.5-1] (here: one copy, at QoS 1)."""
    w = World()
    c = w.connected("c")
    c.send(subscribe(1, ("a/#", 0), ("a/b", 1)))
    assert c.take() == suback(1, 0, 1)
    w.connected("p").send(publish("a/b", b"x", qos=1, pid=1))
    assert c.take() == publish("a/b", b"x", qos=1, pid=1)


def test_subscription_identifiers_v5():
    """MQTT 5: a PUBLISH sent for a subscription with an identifier carries it
    [MQTT-3.3.4-3]; one copy for several matching subscriptions carries all their
    identifiers [MQTT-3.3.4-4]."""
    w = World()
    c = w.connected("c", version=5)
    c.send(subscribe(1, ("t", 1), version=5, properties={SUBSCRIPTION_ID: 7}),
           subscribe(2, ("t/#", 0), version=5, properties={SUBSCRIPTION_ID: 9}),
           subscribe(3, ("#", 0), version=5))
    assert c.take() == suback(1, 1, version=5) + suback(2, 0, version=5) + suback(3, 0, version=5)
    w.connected("p").send(publish("t", b"x", qos=1, pid=5))
    (frame,) = c.take_frames()
    d = decode(frame)
    assert (d.type, d.topic, d.qos, d.packet_id, d.payload) == (PUBLISH, "t", 1, 1, b"x")
    assert sorted(d.properties.pop(SUBSCRIPTION_ID)) == [7, 9]
    assert d.properties == {}


def test_failure_codes_v5_and_311():
    """Subscriptions the server does not support get a failure code: MQTT 5 0xA2 (wildcards)
    and 0x9E (shared subscriptions) (section 3.9.3); 3.1.1 knows only 0x80 [MQTT-3.9.3-2].
    The other filters of the packet are still granted."""
    w = World(wildcard_subscription_available=False, shared_subscription_available=False)
    c5 = w.connected("c5", version=5)
    c5.send(subscribe(1, ("a/+", 0), ("$share/g/t", 1), ("ok", 1), version=5))
    assert c5.take() == b"\x90\x06\x00\x01\x00\xa2\x9e\x01"
    c4 = w.connected("c4")
    c4.send(subscribe(1, ("a/#", 1), ("ok", 2)))
    assert c4.take() == b"\x90\x04\x00\x01\x80\x02"
    assert set(w.registry.get("c4").subscriptions) == {"ok"}


def test_subscription_identifier_not_supported_v5():
    """MQTT 5: a subscription identifier when the server said it supports none -> DISCONNECT
    0xA1 (section 3.8.2.1.2)."""
    w = World(subscription_identifier_available=False)
    c = w.connected("c", version=5, properties=QUIET)
    c.send(subscribe(1, ("t", 0), version=5, properties={SUBSCRIPTION_ID: 1}))
    assert c.take() == b"\xe0\x01\xa1"
    assert c.closed


# -- UNSUBSCRIBE ------------------------------------------------------------------------------


def test_unsuback_311():
    """UNSUBACK with the UNSUBSCRIBE's packet id [MQTT-3.10.4-4], even when no subscription
    was deleted [MQTT-3.10.4-5]; after it nothing more is delivered [MQTT-3.10.4-2]."""
    w = World()
    c = w.connected("c")
    c.send(subscribe(1, "t"))
    assert c.take() == suback(1, 0)
    c.send(unsubscribe(0x0203, "t"), unsubscribe(4, "never"))
    assert c.take() == b"\xb0\x02\x02\x03" + b"\xb0\x02\x00\x04"
    w.connected("p").send(publish("t", b"x"))
    assert c.take() == b""
    assert w.registry.get("c").subscriptions == {}


def test_unsuback_v5_codes():
    """MQTT 5 UNSUBACK: one reason code per filter, in the filters' order [MQTT-3.11.3-1],
    each an unsubscribe reason code [MQTT-3.11.3-2]: 0x00 for a subscription deleted, 0x11
    (no subscription existed) otherwise (section 3.11.3); several filters are handled as a
    sequence [MQTT-3.10.4-6], so unsubscribing "x" twice gives 0x00 then 0x11."""
    w = World()
    c = w.connected("c", version=5)
    c.send(subscribe(1, ("x", 0), ("z/#", 1), version=5))
    assert c.take() == suback(1, 0, 1, version=5)
    c.send(unsubscribe(9, "x", "y", "z/#", "x", version=5))
    assert c.take() == b"\xb0\x07\x00\x09\x00\x00\x11\x00\x11"
    assert c.take() == b""
    assert unsuback(9, 0, 0x11, 0, 0x11, version=5) == b"\xb0\x07\x00\x09\x00\x00\x11\x00\x11"


# -- retained messages ------------------------------------------------------------------------


def test_retained_on_subscribe():
    """A new subscription gets the retained message of every matching topic [MQTT-3.3.1-6],
    with RETAIN 1 [MQTT-3.3.1-8], at the lower of its QoS and the subscription's
    [MQTT-3.8.4-6], after the SUBACK."""
    w = World()
    p = w.connected("p")
    p.send(publish("r/2", b"b", retain=True, qos=1, pid=2), publish("r/1", b"a", retain=True),
           publish("r/1/x", b"c", retain=True, qos=2, pid=3), publish("other", b"o", retain=True))
    s = w.connected("s")
    s.send(subscribe(1, ("r/#", 1)))
    out = s.take_frames()
    assert out[0] == suback(1, 1)
    # The order of the topics is the broker's choice, and the packet ids follow it.
    got = {}
    for f in out[1:]:
        d = decode(f, 4)
        got[d.topic] = f if not d.qos else (f[:-3] + b"\x00\x00" + f[-1:], d.packet_id)
    assert got.pop("r/1") == publish("r/1", b"a", retain=True)
    frame_x, pid_x = got.pop("r/1/x")
    frame_2, pid_2 = got.pop("r/2")
    assert got == {}
    assert frame_x == publish("r/1/x", b"c", retain=True, qos=1, pid=0)
    assert frame_2 == publish("r/2", b"b", retain=True, qos=1, pid=0)
    assert sorted([pid_x, pid_2]) == [1, 2]


def test_retained_replaced_and_deleted():
    """A new retained message replaces the old one [MQTT-3.3.1-5]; a zero-byte retained
    message deletes it and is not stored [MQTT-3.3.1-10, MQTT-3.3.1-11]; a PUBLISH with
    RETAIN 0 leaves it alone [MQTT-3.3.1-12]."""
    w = World()
    p = w.connected("p")
    p.send(publish("k", b"v1", retain=True), publish("k", b"v2", retain=True),
           publish("k", b"live"))
    s = w.connected("s")
    s.send(subscribe(1, "k"))
    assert s.take() == suback(1, 0) + publish("k", b"v2", retain=True)
    p.send(publish("k", b"", retain=True))
    assert s.take() == b"\x30\x03\x00\x01k"        # delivered normally, RETAIN 0
    t = w.connected("t")
    t.send(subscribe(1, "k"))
    assert t.take() == suback(1, 0)


def test_resubscribe_resends_retained_311():
    """3.1.1: replacing a subscription re-sends the matching retained messages
    [MQTT-3.8.4-3]."""
    w = World()
    w.connected("p").send(publish("k", b"v", retain=True))
    s = w.connected("s")
    s.send(subscribe(1, "k"))
    assert s.take() == suback(1, 0) + publish("k", b"v", retain=True)
    s.send(subscribe(2, "k"))
    assert s.take() == suback(2, 0) + publish("k", b"v", retain=True)


@pytest.mark.parametrize("handling,first,again", [(0, True, True), (1, True, False),
                                                  (2, False, False)])
def test_retain_handling_v5(handling, first, again):
    """MQTT 5 retain handling: 0 sends retained messages on every SUBSCRIBE [MQTT-3.3.1-9],
    1 only when the subscription is new [MQTT-3.3.1-10], 2 never [MQTT-3.3.1-11]."""
    w = World()
    w.connected("p").send(publish("k", b"v", retain=True))
    s = w.connected("s", version=5)
    retained = publish("k", b"v", retain=True, version=5)
    options = handling << 4
    s.send(subscribe(1, ("k", options), version=5))
    assert s.take() == suback(1, 0, version=5) + (retained if first else b"")
    s.send(subscribe(2, ("k", options), version=5))
    assert s.take() == suback(2, 0, version=5) + (retained if again else b"")


def test_retain_not_available():
    """With retain unavailable [MQTT-3.2.2-14], a retained PUBLISH from an MQTT 5 client is
    refused with DISCONNECT 0x9A (section 3.2.2.3.5)."""
    w = World(retain_available=False)
    c = w.connected("c", version=5, properties=QUIET)
    c.send(publish("k", b"v", retain=True, version=5))
    assert c.take() == b"\xe0\x01\x9a"
    assert c.closed


def test_sys_topics_not_matched_by_wildcards():
    """Topic filters starting with a wildcard do not match topics starting with $
    [MQTT-4.7.2-1]; "$SYS/#" does."""
    w = World()
    hash_ = w.connected("hash")
    hash_.send(subscribe(1, "#"), subscribe(2, "+/broker/uptime"))
    sys_ = w.connected("sys")
    sys_.send(subscribe(1, "$SYS/#"))
    assert hash_.take() == suback(1, 0) + suback(2, 0)
    assert sys_.take() == suback(1, 0)
    w.ctx.router.route(Message("$SYS/broker/uptime", b"5"), w.loop.now)
    w.loop.run_ready()
    assert hash_.take() == b""
    assert sys_.take() == publish("$SYS/broker/uptime", b"5")


def test_shared_subscription_round_robin():
    """MQTT 5 shared subscriptions: each message goes to one member of the group (section
    4.8.2), here in turn (the default strategy)."""
    w = World(Config(sys_interval=0, shared_subscription_strategy="round_robin"))
    a = w.connected("a", version=5)
    b = w.connected("b", version=5)
    for c in (a, b):
        c.send(subscribe(1, ("$share/g/job", 1), version=5))
        assert c.take() == suback(1, 1, version=5)
    p = w.connected("p")
    p.send(*(publish("job", bytes([0x30 + i]), qos=1, pid=i + 1) for i in range(4)))
    got_a = [decode(f).payload for f in a.take_frames()]
    got_b = [decode(f).payload for f in b.take_frames()]
    assert sorted(got_a + got_b) == [b"0", b"1", b"2", b"3"]
    assert len(got_a) == len(got_b) == 2
    a.send(puback(1), puback(2))
    b.send(puback(1), puback(2))
    assert w.registry.get("a").inflight == w.registry.get("b").inflight == 0


# -- malformed SUBSCRIBE / UNSUBSCRIBE ------------------------------------------------------


@pytest.mark.parametrize("frame,why", [
    (packet(0x80, b"\x00\x01\x00\x01t\x00"), "reserved flags 0000 [MQTT-3.8.1-1]"),
    (packet(0x82, b"\x00\x01"), "no topic filter [MQTT-3.8.3-3]"),
    (packet(0x82, b"\x00\x01\x00\x01t\x03"), "QoS 3 [MQTT-3-8.3-4]"),
    (packet(0x82, b"\x00\x01\x00\x01t\x04"), "reserved option bits [MQTT-3-8.3-4]"),
    (packet(0x82, b"\x00\x01\x00\x05a/#/b\x00"), "# not last [MQTT-4.7.1-2]"),
    (packet(0xA0, b"\x00\x01\x00\x01t"), "UNSUBSCRIBE flags 0000 [MQTT-3.10.1-1]"),
    (packet(0xA2, b"\x00\x01"), "UNSUBSCRIBE without filter [MQTT-3.10.3-2]"),
])
def test_malformed_subscribe_311(frame, why):
    """3.1.1: a malformed SUBSCRIBE or UNSUBSCRIBE closes the connection, without a packet;
    the session's subscriptions are unchanged."""
    w = World()
    c = w.connected("c", clean=False)
    c.send(frame)
    assert c.closed, why
    assert c.take() == b""
    assert w.registry.get("c").subscriptions == {}


@pytest.mark.parametrize("body,code", [
    (b"\x00\x01\x00", 0x82),                      # no payload: Protocol Error [MQTT-3.8.3-2]
    (b"\x00\x01\x00\x00\x01t\xc0", 0x81),         # reserved option bits [MQTT-3.8.3-5]
    (b"\x00\x01\x00\x00\x05a/#/b\x00", 0x81),     # bad filter
])
def test_malformed_subscribe_v5(body, code):
    """MQTT 5: the same errors get DISCONNECT with the reason the spec names (0x81 malformed,
    0x82 protocol error) before the close [MQTT-4.13.1-1]."""
    w = World()
    c = w.connected("c", version=5, properties=QUIET)
    c.send(packet(0x82, body))
    assert frames(c.take()) == [bytes([0xE0, 0x01, code])]
    assert c.closed
