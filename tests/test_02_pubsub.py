"""PUBLISH / SUBSCRIBE / UNSUBSCRIBE, black-box over real sockets (GitHub issue "The broker core").

Byte-level flows use `RawClient` with the expected broker bytes written out by hand (independent of
the codec under test); interoperability uses paho-mqtt in MQTT 3.1.1 and 5 modes. "Nothing else
arrived" is checked without sleeping: the broker answers a PINGREQ after everything it queued for
that connection before it, so the packets before the PINGRESP are all there is (`sync`).
Spec references: MQTT 3.1.1 (OASIS, 2014) and MQTT 5.0 (OASIS, 2019).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from _testbase import RawClient
from cymqtt._fast.codec import (
    Connect, PubAck, Publish, Subscribe, Unsubscribe, encode,
)
from helpers_paho import V5, V311, props, wait_until
from mqtt_bytes import (
    DISCONNECT, NO_LOCAL, P_ALIAS, P_SUB_ID, P_USER, PUBACK, PUBCOMP, PUBREC, PUBREL,
    RETAIN_AS_PUBLISHED, ack_all, connect, mqtt_str, publish, recv_bytes, subscribe, sync,
)
from paho.mqtt.packettypes import PacketTypes


# -- QoS flows, byte-exact ----------------------------------------------------------------------

def test_publisher_qos1_gets_exact_puback(broker, raw_client):
    """MQTT-3.3.4-1 / MQTT-4.3.2-2: a QoS 1 PUBLISH is answered with PUBACK carrying its id."""
    c = connect(raw_client, "pub")
    c.send(b"\x32\x08" + mqtt_str("q/1") + b"\x00\x07" + b"x")
    assert recv_bytes(c, 4) == b"\x40\x02\x00\x07"


def test_publisher_qos2_gets_exact_pubrec_then_pubcomp(broker, raw_client):
    """3.1.1 MQTT-4.3.3-2 (5.0 MQTT-4.3.3-8, -11): PUBLISH QoS 2 -> PUBREC; PUBREL -> PUBCOMP,
    each with the packet id of the PUBLISH."""
    c = connect(raw_client, "pub")
    c.send(b"\x34\x08" + mqtt_str("q/2") + b"\x00\x09" + b"x")
    assert recv_bytes(c, 4) == b"\x50\x02\x00\x09"
    c.send(b"\x62\x02\x00\x09")
    assert recv_bytes(c, 4) == b"\x70\x02\x00\x09"


def test_v5_publisher_qos1_no_subscribers_gets_puback_0x10_then_success(broker, raw_client):
    """MQTT 5 section 3.4.2.1: PUBACK reason 0x10 (No matching subscribers); with a subscriber
    the reason is 0x00, which may be left out (remaining length 2)."""
    c = connect(raw_client, "pub", 5)
    c.send(b"\x32\x09" + mqtt_str("q/1") + b"\x00\x01" + b"\x00" + b"x")
    assert recv_bytes(c, 5) == b"\x40\x03\x00\x01\x10"
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("q/1", 1))
    c.send(b"\x32\x09" + mqtt_str("q/1") + b"\x00\x02" + b"\x00" + b"x")
    assert recv_bytes(c, 4) == b"\x40\x02\x00\x02"


def test_v311_publisher_qos1_no_subscribers_gets_plain_puback(broker, raw_client):
    """MQTT 3.1.1 section 3.4: PUBACK has no reason code, subscribers or not."""
    c = connect(raw_client, "pub")
    c.send(b"\x32\x08" + mqtt_str("q/1") + b"\x00\x01" + b"x")
    assert recv_bytes(c, 4) == b"\x40\x02\x00\x01"


def test_qos2_duplicate_publish_before_pubrel_is_routed_once(broker, raw_client):
    """3.1.1 MQTT-4.3.3-2 (5.0 MQTT-4.3.3-10): until PUBREL, a PUBLISH with the same id is
    acknowledged with PUBREC again and MUST NOT cause duplicate messages to be delivered onward."""
    s = connect(raw_client, "sub")
    subscribe(s, ("d/t", 0))
    c = connect(raw_client, "pub")
    c.send_packet(Publish("d/t", b"once", 2, packet_id=5))
    assert recv_bytes(c, 4) == b"\x50\x02\x00\x05"
    c.send_packet(Publish("d/t", b"once", 2, dup=True, packet_id=5))
    assert recv_bytes(c, 4) == b"\x50\x02\x00\x05"
    c.send(b"\x62\x02\x00\x05")
    assert recv_bytes(c, 4) == b"\x70\x02\x00\x05"
    got = sync(s)
    assert [(p.topic, p.payload) for p in got] == [("d/t", b"once")]


@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivery_bytes_at_min_qos(broker, raw_client, pub_qos, sub_qos):
    """MQTT-3.8.4-6 (5.0: MQTT-3.8.4-8): delivered at min(published QoS, granted QoS); the
    broker's PUBLISH to the subscriber is exact: no DUP, retain 0, packet id 1 when QoS > 0."""
    s = connect(raw_client, "sub")
    assert subscribe(s, ("m/t", sub_qos)) == [sub_qos]
    p = connect(raw_client, "pub")
    publish(p, "m/t", b"hi", pub_qos)
    q = min(pub_qos, sub_qos)
    body = mqtt_str("m/t") + (b"\x00\x01" if q else b"") + b"hi"
    expected = bytes([0x30 | (q << 1), len(body)]) + body
    assert recv_bytes(s, len(expected)) == expected
    if q == 1:
        s.send(b"\x40\x02\x00\x01")
    elif q == 2:
        s.send(b"\x50\x02\x00\x01")                          # PUBREC
        assert recv_bytes(s, 4) == b"\x62\x02\x00\x01"       # PUBREL from the broker
        s.send(b"\x70\x02\x00\x01")                          # PUBCOMP
    assert sync(s) == []
    session = broker.call(lambda: broker.broker.session("sub"))
    if q:
        assert broker.call(lambda: session.inflight) == 0


def test_v5_subscriber_qos2_flow_exact(broker, raw_client):
    """5.0 MQTT-4.3.3-1 .. -5: the broker sends PUBLISH QoS 2 (DUP 0, property length 0), the
    subscriber's PUBREC gets a PUBREL with the same id, its PUBCOMP ends the flow (window
    empty)."""
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("q/2", 2))
    p = connect(raw_client, "pub", 5)
    publish(p, "q/2", b"hi", 2, pid=300)
    body = mqtt_str("q/2") + b"\x00\x01" + b"\x00" + b"hi"
    assert recv_bytes(s, 2 + len(body)) == bytes([0x34, len(body)]) + body
    s.send(b"\x50\x02\x00\x01")
    assert recv_bytes(s, 4) == b"\x62\x02\x00\x01"
    assert broker.call(lambda: broker.broker.session("sub").inflight) == 1
    s.send(b"\x70\x02\x00\x01")
    assert sync(s) == []
    assert broker.call(lambda: broker.broker.session("sub").inflight) == 0


def test_granted_qos_in_suback(broker, raw_client):
    """MQTT-3.9.3-1: SUBACK return codes are in the order of the filters, each the granted QoS."""
    c = connect(raw_client, "c")
    c.send_packet(Subscribe(0x1234, [("g/0", 0), ("g/1", 1), ("g/2", 2)]))
    assert recv_bytes(c, 7) == b"\x90\x05\x12\x34\x00\x01\x02"


@pytest.mark.broker_config(maximum_qos=1)
def test_granted_qos_capped_by_maximum_qos_and_delivery_downgraded(broker, raw_client):
    """MQTT-3.8.4-6 (3.1.1: the Server might grant a lower QoS than requested); delivery then uses
    the granted QoS, not the requested one."""
    c = connect(raw_client, "c")
    assert subscribe(c, ("g/0", 0), ("g/1", 1), ("g/2", 2)) == [0, 1, 1]
    p = connect(raw_client, "p")
    publish(p, "g/2", b"x", 1)
    got = sync(c)
    assert [(m.topic, m.qos) for m in got] == [("g/2", 1)]


@pytest.mark.broker_config(wildcard_subscription_available=False,
                            shared_subscription_available=False)
@pytest.mark.parametrize("version,failure", [(4, [0x80, 0x80]), (5, [0xA2, 0x9E])])
def test_suback_failure_codes_per_version(broker, raw_client, version, failure):
    """3.1.1 MQTT-3.9.3-2: SUBACK return codes other than 0x00, 0x01, 0x02 and 0x80 (Failure)
    are reserved; MQTT 5 section 3.9.3 names the reason (0xA2 Wildcard Subscriptions not
    supported, 0x9E Shared Subscriptions not supported). Other filters in the packet succeed."""
    c = connect(raw_client, "c", version)
    assert subscribe(c, ("a/#", 1), ("$share/g/t", 1), ("plain/t", 1)) == failure + [1]
    p = connect(raw_client, "p", version)
    publish(p, "a/b", b"no", 1)
    publish(p, "plain/t", b"yes", 1, pid=2)
    assert [m.payload for m in sync(c)] == [b"yes"]


# -- paho, both protocol versions ---------------------------------------------------------------

@pytest.mark.parametrize("protocol", [V311, V5], ids=["v311", "v5"])
def test_paho_qos_matrix(paho, protocol):
    """MQTT-3.8.4-6 (5.0: MQTT-3.8.4-8): each subscriber gets every message at min(pub, sub) QoS;
    the publisher's QoS 1/2 flows complete (paho waits for PUBACK / PUBCOMP)."""
    subs = {}
    for q in (0, 1, 2):
        subs[q] = paho(f"sub{q}", protocol)
        assert subs[q].subscribe("mx/t", q) == [q]
    pub = paho("pub", protocol)
    for q in (0, 1, 2):
        pub.publish("mx/t", f"p{q}".encode(), qos=q)
    for sq, sub in subs.items():
        got = sub.wait_messages(3)
        assert sorted((m.payload, m.qos) for m in got) == [
            (f"p{pq}".encode(), min(pq, sq)) for pq in (0, 1, 2)]


def test_paho_v5_publisher_v311_subscriber_and_back(paho):
    """One exchange across protocol versions: properties dropped for 3.1.1, QoS kept."""
    a = paho("a5", V5)
    b = paho("b3", V311)
    a.subscribe("x/b", 2)
    b.subscribe("x/a", 2)
    a.publish("x/a", b"to-311", qos=2)
    b.publish("x/b", b"to-5", qos=1)
    assert [(m.payload, m.qos) for m in b.wait_messages(1)] == [(b"to-311", 2)]
    assert [(m.payload, m.qos) for m in a.wait_messages(1)] == [(b"to-5", 1)]


def test_order_of_1000_qos1_messages_preserved(paho):
    """3.1.1 MQTT-4.6.0-5, -6 (5.0 MQTT-4.6.0-6), ordered topics: QoS 1 messages from one
    publisher reach a subscriber in the order published (1,000 of them, far more than the
    inflight window)."""
    sub = paho("sub", V5)
    sub.subscribe("ord/t", 1)
    pub = paho("pub", V311)
    infos = [pub.publish("ord/t", str(i).encode(), qos=1, wait=False) for i in range(1000)]
    for info in infos:
        info.wait_for_publish(10)
    got = sub.wait_messages(1000, timeout=20)
    assert [m.payload for m in got] == [str(i).encode() for i in range(1000)]
    assert all(m.qos == 1 for m in got)


# -- overlapping subscriptions ------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
def test_overlapping_subscriptions_one_copy_at_max_qos(broker, raw_client, version):
    """MQTT-3.3.5-1 (5.0: MQTT-3.3.4-2): with 'a/#' (QoS 0) and 'a/+' (QoS 2) the client gets the
    message once, at min(published QoS, 2), the highest of the matching subscriptions."""
    s = connect(raw_client, "sub", version)
    assert subscribe(s, ("a/#", 0), ("a/+", 2)) == [0, 2]
    p = connect(raw_client, "pub", version)
    for pq in (0, 1, 2):
        publish(p, "a/b", f"m{pq}".encode(), pq, pid=pq + 1)
        got = sync(s)
        assert [(m.topic, m.payload, m.qos) for m in got] == [("a/b", f"m{pq}".encode(), pq)]
        ack_all(s, got)
    # 'a/b/c' only matches 'a/#': one copy at QoS 0
    publish(p, "a/b/c", b"deep", 2, pid=9)
    assert [(m.topic, m.qos) for m in sync(s)] == [("a/b/c", 0)]


def test_v5_overlapping_subscriptions_carry_both_identifiers(broker, raw_client):
    """MQTT-3.3.4-3, MQTT-3.3.4-4: one copy carrying the Subscription Identifiers of all matching
    subscriptions (order not significant); a subscription without one adds none."""
    s = connect(raw_client, "sub", 5)
    assert subscribe(s, ("a/#", 0), pid=1, properties={P_SUB_ID: 11}) == [0]
    assert subscribe(s, ("a/+", 2), pid=2, properties={P_SUB_ID: 22}) == [2]
    assert subscribe(s, ("+/b", 1), pid=3) == [1]
    p = connect(raw_client, "pub", 5)
    publish(p, "a/b", b"m", 2)
    got = sync(s)
    assert len(got) == 1 and got[0].qos == 2
    assert sorted(got[0].properties[P_SUB_ID]) == [11, 22]
    ack_all(s, got)
    publish(p, "a/b/c", b"m", 1)
    got = sync(s)
    assert len(got) == 1 and got[0].qos == 0 and got[0].properties[P_SUB_ID] == [11]
    publish(p, "z/b", b"m", 1)
    got = sync(s)
    assert len(got) == 1 and got[0].qos == 1 and not (got[0].properties or {}).get(P_SUB_ID)


def test_paho_v5_subscription_identifiers(paho):
    """MQTT-3.3.4-4 with a real client: paho sees both identifiers on the one copy. A marker
    published afterwards (same publisher, so delivered after it) shows nothing else came."""
    s = paho("sub", V5)
    s.subscribe("a/#", 0, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=3))
    s.subscribe("a/+", 2, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=4))
    s.subscribe("marker", 2)      # QoS 2 like "a/b": paho hands both over on PUBREL, in order
    pub = paho("pub", V5)
    pub.publish("a/b", b"m", qos=2)
    pub.publish("marker", b"", qos=2)
    s.wait_messages(1, topic="marker")
    got = s.messages
    assert [m.topic for m in got] == ["a/b", "marker"]
    assert got[0].qos == 2
    ids = got[0].properties.get("SubscriptionIdentifier")
    assert sorted(ids if isinstance(ids, list) else [ids]) == [3, 4]


# -- wildcards and $-topics ---------------------------------------------------------------------

WILDCARD_FILTERS = {
    1: "sport/#", 2: "sport/tennis/+", 3: "sport/+", 4: "+/+", 5: "+", 6: "#",
    7: "$SYS/#", 8: "+/monitor/Clients", 9: "$SYS/monitor/+", 10: "/+",
}
WILDCARD_CASES = [   # topic, ids of the filters that match it (section 4.7)
    ("sport", {1, 5, 6}),                       # 'sport/#' also matches the parent level
    ("sport/tennis", {1, 3, 4, 6}),
    ("sport/tennis/player1", {1, 2, 6}),
    ("sport/", {1, 3, 4, 6}),                   # 'sport/+' matches 'sport/' (empty level)
    ("/finance", {4, 6, 10}),                   # '+' does not match '/finance'
    ("finance", {5, 6}),
    ("$SYS/monitor/Clients", {7, 9}),           # MQTT-4.7.2-1: '#', '+/...' skip '$' topics
    ("$other/x", set()),
]


def test_wildcard_matching_by_subscription_identifier(broker, raw_client):
    """Section 4.7.1 and MQTT-4.7.2-1: '#' matches the parent and any number of levels, '+' one
    level (empty too); filters starting with a wildcard do not match topics starting with '$',
    '$SYS/#' does. Each filter has its own Subscription Identifier, so the one copy delivered
    names exactly the filters that matched."""
    s = connect(raw_client, "sub", 5)
    for sid, f in WILDCARD_FILTERS.items():
        assert subscribe(s, (f, 0), pid=sid, properties={P_SUB_ID: sid}) == [0]
    p = connect(raw_client, "pub", 5)
    for topic, want in WILDCARD_CASES:
        if topic.startswith("$"):
            broker.call(lambda t=topic: broker.broker.publish(t, b"x"))
        else:
            publish(p, topic, b"x")
        got = sync(s)
        if not want:
            assert got == [], topic
            continue
        assert len(got) == 1, (topic, got)
        assert got[0].topic == topic
        assert set(got[0].properties[P_SUB_ID]) == want, topic


def test_paho_v311_hash_does_not_get_sys_but_sys_hash_does(broker, paho):
    """MQTT-4.7.2-1 with real 3.1.1 clients."""
    everything = paho("all", V311)
    everything.subscribe("#", 0)
    sys_sub = paho("sys", V311)
    sys_sub.subscribe("$SYS/#", 0)
    sys_sub.subscribe("marker", 0)
    broker.call(lambda: broker.broker.publish("$SYS/test/x", b"s"))
    pub = paho("pub", V311)
    pub.publish("plain", b"p", qos=1)
    pub.publish("marker", b"", qos=1)       # delivered after everything published before it
    everything.wait_messages(1, topic="marker")
    assert [m.topic for m in everything.messages] == ["plain", "marker"]
    sys_sub.wait_messages(1, topic="marker")
    assert [m.topic for m in sys_sub.messages] == ["$SYS/test/x", "marker"]


@pytest.mark.parametrize("topic", ["$SYS/fake", "$app/x"])
def test_v5_client_cannot_publish_to_dollar_topics(broker, raw_client, topic):
    """Section 4.7.2: '$' topics are the server's; a client's PUBLISH to one is not delivered, and
    MQTT 5 QoS 1 / 2 get reason 0x87 (Not authorized) in PUBACK / PUBREC."""
    s = connect(raw_client, "sub", 5)
    subscribe(s, (topic.split("/")[0] + "/#", 2))
    p = connect(raw_client, "pub", 5)
    publish(p, topic, b"q0", 0)
    assert publish(p, topic, b"q1", 1, pid=1).reason_code == 0x87
    assert publish(p, topic, b"q2", 2, pid=2).reason_code == 0x87
    assert sync(s) == []
    # the publisher is still connected and can publish elsewhere
    assert publish(p, "ok/t", b"x", 1, pid=3).type == PUBACK


def test_v311_client_cannot_publish_to_sys(broker, raw_client):
    """Section 4.7.2 in 3.1.1: the PUBLISH is acknowledged (no reason codes there) but dropped."""
    s = connect(raw_client, "sub")
    subscribe(s, ("$SYS/#", 1))
    p = connect(raw_client, "pub")
    publish(p, "$SYS/fake", b"x", 1)
    publish(p, "$SYS/fake", b"x", 0)
    assert sync(s) == []


# -- UNSUBSCRIBE --------------------------------------------------------------------------------

def test_unsubscribe_stops_delivery_v311_exact_unsuback(broker, raw_client):
    """MQTT-3.10.4-1, -2, -4: after UNSUBACK (same packet id) no new messages for that filter;
    other subscriptions of the client stay."""
    s = connect(raw_client, "sub")
    subscribe(s, ("u/t", 1), ("u/other", 0))
    p = connect(raw_client, "pub")
    publish(p, "u/t", b"before", 1)
    got = sync(s)
    assert [m.payload for m in got] == [b"before"]
    ack_all(s, got)
    s.send_packet(Unsubscribe(0x0105, ["u/t"]))
    assert recv_bytes(s, 4) == b"\xb0\x02\x01\x05"
    publish(p, "u/t", b"after", 1, pid=2)
    publish(p, "u/other", b"other", 0)
    assert [m.payload for m in sync(s)] == [b"other"]


def test_v5_unsuback_reason_codes(broker, raw_client):
    """MQTT-3.11.3-1, section 3.11.3: one reason code per filter, 0x00 Success or 0x11 No
    subscription existed."""
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("u/t", 1))
    s.send_packet(Unsubscribe(7, ["u/t", "never/subscribed"]))
    assert recv_bytes(s, 7) == b"\xb0\x05\x00\x07\x00\x00\x11"
    s.send_packet(Unsubscribe(8, ["u/t"]))
    assert recv_bytes(s, 6) == b"\xb0\x04\x00\x08\x00\x11"
    p = connect(raw_client, "pub", 5)
    assert publish(p, "u/t", b"x", 1).reason_code == 0x10     # nobody subscribed any more
    assert sync(s) == []


# -- MQTT 5 basics ------------------------------------------------------------------------------

def test_v5_user_properties_forwarded_in_order(broker, raw_client):
    """MQTT-3.3.2-17, MQTT-3.3.2-18: user properties unaltered and in order; other application
    properties (content type, response topic, correlation data, payload format) too."""
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("up/t", 1))
    user = [("k", "1"), ("a", "2"), ("k", "3"), ("", "empty key")]
    props = {P_USER: user, 0x03: "text/plain", 0x08: "reply/here", 0x09: b"\x00\x01corr",
             0x01: 1}
    p = connect(raw_client, "pub", 5)
    publish(p, "up/t", "héllo".encode(), 1, properties=props)
    got = sync(s)
    assert len(got) == 1
    assert got[0].properties[P_USER] == user
    for k in (0x03, 0x08, 0x09, 0x01):
        assert got[0].properties[k] == props[k]


def test_v5_user_properties_with_paho(paho):
    """MQTT-3.3.2-18 with real clients on both ends."""
    s = paho("sub", V5)
    s.subscribe("up/t", 1)
    user = [("z", "1"), ("a", "2"), ("z", "0")]
    paho("pub", V5).publish("up/t", b"x", qos=1,
                            properties=props(PacketTypes.PUBLISH, UserProperty=user))
    got = s.wait_messages(1)
    assert [tuple(kv) for kv in got[0].properties["UserProperty"]] == user


@pytest.mark.parametrize("qos", [0, 1])
def test_v5_maximum_packet_size_respected_per_subscriber(broker, raw_client, qos):
    """MQTT-3.1.2-24, MQTT-3.1.2-25: the server does not send a packet larger than the client's
    Maximum Packet Size; it discards it as if delivered, while a client without the limit gets
    it. The small client keeps receiving messages that fit."""
    small = connect(raw_client, "small", 5, properties={0x27: 64})
    big = connect(raw_client, "big", 5)
    subscribe(small, ("mps/t", qos))
    subscribe(big, ("mps/t", qos))
    p = connect(raw_client, "pub", 5)
    publish(p, "mps/t", b"L" * 200, qos)
    publish(p, "mps/t", b"tiny", qos, pid=2)
    got_big = sync(big)
    assert [m.payload for m in got_big] == [b"L" * 200, b"tiny"]
    got_small = sync(small)
    assert [m.payload for m in got_small] == [b"tiny"]
    ack_all(small, got_small)
    if qos:
        assert sync(small) == []
        assert broker.call(lambda: broker.broker.session("small").inflight) == 0


@pytest.mark.broker_config(receive_maximum=2)
def test_v5_receive_maximum_exceeded_gets_disconnect_0x93(broker, raw_client):
    """5.0 MQTT-3.3.4-7 and section 3.3.4: a client that has more unacknowledged QoS 2 PUBLISHes
    than the server's Receive Maximum gets DISCONNECT 0x93 and is closed. Releasing one makes
    room, so the limit counts unreleased messages."""
    c = connect(raw_client, "c", 5)
    assert c.connack.properties[0x21] == 2
    for pid in (1, 2):
        c.send_packet(Publish("rm/t", b"x", 2, packet_id=pid))
        assert c.recv_packet().type == PUBREC
    c.send_packet(PubAck(PUBREL, 1))
    assert c.recv_packet() == PubAck(PUBCOMP, 1)
    c.send_packet(Publish("rm/t", b"x", 2, packet_id=3))        # 2 unreleased: allowed
    assert c.recv_packet() == PubAck(PUBREC, 3)
    c.send_packet(Publish("rm/t", b"x", 2, packet_id=4))        # a third: too many
    d = c.recv_packet()
    assert d is not None and d.type == DISCONNECT and d.reason_code == 0x93
    assert c.closed()


@pytest.mark.broker_config(topic_alias_maximum=5)
def test_v5_inbound_topic_alias(broker, raw_client):
    """Section 3.3.2.3.4: a PUBLISH with a topic and alias sets the mapping, one with an empty
    topic and the alias uses it, a later one remaps it. The alias is the publisher's own; the
    subscriber gets the full topic and no Topic Alias property."""
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("ta/#", 1))
    p = connect(raw_client, "pub", 5)
    assert p.connack.properties[0x22] == 5
    publish(p, "ta/one", b"1", 1, pid=1, properties={P_ALIAS: 5})
    publish(p, "", b"2", 1, pid=2, properties={P_ALIAS: 5})
    publish(p, "ta/two", b"3", 0, properties={P_ALIAS: 5})
    publish(p, "", b"4", 1, pid=3, properties={P_ALIAS: 5})
    got = sync(s)
    assert [(m.topic, m.payload) for m in got] == [
        ("ta/one", b"1"), ("ta/one", b"2"), ("ta/two", b"3"), ("ta/two", b"4")]
    assert all(P_ALIAS not in (m.properties or {}) for m in got)


@pytest.mark.broker_config(topic_alias_maximum=5)
@pytest.mark.parametrize("alias,topic,reason", [
    (0, "ta/t", 0x94),     # MQTT-3.3.2-8: alias 0 is not allowed
    (6, "ta/t", 0x94),     # MQTT-3.3.2-9: above the Topic Alias Maximum in CONNACK
    (3, "", 0x82),         # section 3.3.4: an alias with no mapping is a Protocol Error
])
def test_v5_bad_topic_alias_gets_disconnect(broker, raw_client, alias, topic, reason):
    """A bad inbound topic alias: DISCONNECT with the reason code, then the connection closes;
    nothing is delivered and other clients keep working."""
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("ta/#", 0))
    p = connect(raw_client, "pub", 5)
    p.send_packet(Publish(topic, b"x", 1, packet_id=1, properties={P_ALIAS: alias}))
    d = p.recv_packet()
    assert d is not None and d.type == DISCONNECT and d.reason_code == reason
    assert p.closed()
    assert sync(s) == []
    q = connect(raw_client, "pub2", 5)
    publish(q, "ta/t", b"ok")
    assert [m.payload for m in sync(s)] == [b"ok"]


def test_v5_no_local(broker, raw_client):
    """MQTT-3.8.3-3: with No Local set, the client's own messages are not forwarded to it; other
    subscribers get them, and without No Local the publisher gets its own message."""
    c = connect(raw_client, "self", 5)
    subscribe(c, ("nl/t", 1 | NO_LOCAL), ("nl/echo", 1), ("nl/solo", 1 | NO_LOCAL), pid=1)
    other = connect(raw_client, "other", 5)
    subscribe(other, ("nl/t", 1), ("nl/echo", 1))
    assert publish(c, "nl/t", b"mine", 1, pid=1).type == PUBACK
    assert sync(c) == []
    publish(c, "nl/solo", b"alone", 1, pid=3)      # its only subscriber is the publisher
    assert sync(c) == []
    publish(c, "nl/echo", b"echo", 1, pid=2)
    got = sync(c)
    assert [m.payload for m in got] == [b"echo"]
    ack_all(c, got)
    assert [m.payload for m in sync(other)] == [b"mine", b"echo"]
    # a message from another client does reach the No Local subscription
    publish(other, "nl/t", b"theirs", 1, pid=1)
    assert [m.payload for m in sync(c)] == [b"theirs"]


def test_v5_retain_as_published(broker, raw_client):
    """MQTT-3.3.1-12, MQTT-3.3.1-13: live forwarding keeps the RETAIN flag only for
    subscriptions with Retain As Published."""
    rap = connect(raw_client, "rap", 5)
    plain = connect(raw_client, "plain", 5)
    subscribe(rap, ("rap/t", 1 | RETAIN_AS_PUBLISHED))
    subscribe(plain, ("rap/t", 1))
    p = connect(raw_client, "pub", 5)
    publish(p, "rap/t", b"kept", 1, retain=True)
    publish(p, "rap/t", b"live", 1, pid=2, retain=False)
    assert [(m.payload, m.retain) for m in sync(rap)] == [(b"kept", True), (b"live", False)]
    assert [(m.payload, m.retain) for m in sync(plain)] == [(b"kept", False), (b"live", False)]


def test_v5_client_receive_maximum_limits_unacked_deliveries(broker, raw_client):
    """MQTT-3.3.4-9: the server does not send more unacknowledged QoS 1/2 PUBLISHes than the
    client's Receive Maximum; the rest follow, in order, as acknowledgements come in."""
    s = connect(raw_client, "sub", 5, properties={0x21: 2})
    subscribe(s, ("rx/t", 2))
    p = connect(raw_client, "pub", 5)
    for i in range(1, 6):
        publish(p, "rx/t", b"%d" % i, 1 if i % 2 else 2, pid=i)
    got = sync(s)
    assert [m.payload for m in got] == [b"1", b"2"]
    seen, unacked = list(got), list(got)
    while len(seen) < 5:
        ack_all(s, [unacked.pop(0)])          # one slot frees: exactly one more comes
        new = sync(s)
        assert len(new) == 1, new
        seen += new
        unacked += new
    assert [m.payload for m in seen] == [b"1", b"2", b"3", b"4", b"5"]
    assert [m.qos for m in seen] == [1, 2, 1, 2, 1]


@pytest.mark.parametrize("version", [4, 5])
def test_resubscribe_replaces_subscription_qos(broker, raw_client, version):
    """MQTT-3.8.4-3: a SUBSCRIBE with a filter identical to an existing subscription replaces it
    (new QoS); messages are not duplicated."""
    s = connect(raw_client, "sub", version)
    assert subscribe(s, ("rs/t", 2)) == [2]
    assert subscribe(s, ("rs/t", 0), pid=2) == [0]
    p = connect(raw_client, "pub", version)
    publish(p, "rs/t", b"m", 2)
    assert [(m.payload, m.qos) for m in sync(s)] == [(b"m", 0)]


def test_large_payload_intact(paho):
    """A 600 KB payload (3-byte remaining length, many TCP segments) arrives byte for byte."""
    s = paho("sub", V5)
    s.subscribe("big/t", 1)
    payload = bytes(range(256)) * 2400
    paho("pub", V311).publish("big/t", payload, qos=1)
    assert s.wait_messages(1)[0].payload == payload


def test_unicode_topics_and_wildcards(broker, raw_client):
    """Section 1.5.4 / 4.7: topic names are UTF-8; matching compares levels exactly."""
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("сенсор/+/温度", 1), ("ünï/#", 0))
    p = connect(raw_client, "pub", 5)
    publish(p, "сенсор/кухня/温度", b"21", 1)
    publish(p, "сенсор/кухня/温", b"no", 1, pid=2)
    publish(p, "ünï", b"parent", 0)
    assert [(m.topic, m.payload) for m in sync(s)] == [
        ("сенсор/кухня/温度", b"21"), ("ünï", b"parent")]


# -- back-pressure: a subscriber that never reads ------------------------------------------------

def _stalled_subscriber(port: int, topic: str) -> socket.socket:
    """A 3.1.1 client with a tiny receive buffer that subscribes at QoS 1, then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.sendall(encode(Connect("slow", version=4)))
    assert sock.recv(4) == b"\x20\x02\x00\x00"
    sock.sendall(encode(Subscribe(1, [(topic, 1)]), 4))
    assert sock.recv(5) == b"\x90\x03\x00\x01\x01"
    return sock


def _slow_state(bt):
    def get():
        s = bt.broker.session("slow")
        if s is None:
            return None
        conn = s.client
        return dict(queued=s.queued, dropped=s.dropped,
                    inflight=s.inflight,
                    writable=None if conn is None else conn.writable,
                    buffered=None if conn is None or conn.io.transport is None
                    else conn.io.transport.get_write_buffer_size())
    return bt.call(get)


def _flood(bt, raw_pub: RawClient, n: int, payload: bytes, states: list) -> None:
    for i in range(1, n + 1):
        publish(raw_pub, "flood/t", payload + str(i).encode(), 1, pid=i)
        if i % 10 == 0:
            states.append(_slow_state(bt))


@pytest.mark.skipif(not shutil.which("mosquitto_sub"), reason="needs mosquitto_sub")
@pytest.mark.broker_config(max_queued=10, max_inflight=1000, write_timeout=30)
def test_slow_consumer_memory_bounded(broker, raw_client, tmp_path):
    """Design 'slow consumers': a subscriber whose socket is never read makes the socket
    unwritable; what it cannot take goes to its session queue, which never exceeds max_queued;
    the excess is dropped and counted; the transport's buffer stays bounded. The publisher keeps
    getting PUBACKs and a reading subscriber (mosquitto_sub, its own process) gets every message,
    in order."""
    slow = _stalled_subscriber(broker.port, "flood/#")
    out_file = open(tmp_path / "fast.out", "wb")     # a file, not a pipe: never blocks it
    fast = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-i", "fast", "-q", "1",
         "-t", "flood/#", "-C", "200", "-W", "20", "-F", "%p"],
        stdout=out_file, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: broker.call(lambda: "fast" in broker.broker.session_ids() and "flood/#" in
                                       broker.broker.session("fast").subscriptions),
                   5, what="mosquitto_sub subscribed")
        pub = connect(raw_client, "pub")
        states: list = []
        _flood(broker, pub, 200, b"P" * 32768, states)
        assert all(st["queued"] <= 10 for st in states), states
        last = _slow_state(broker)
        assert last["writable"] is False, last         # the socket filled up
        assert last["queued"] == 10
        assert last["dropped"] > 0
        assert last["inflight"] + last["queued"] + last["dropped"] == 200
        assert last["buffered"] < 1024 * 1024           # the broker does not hold the flood
        _, err = fast.communicate(timeout=30)
        assert fast.returncode == 0, err
        out = (tmp_path / "fast.out").read_bytes()
        assert [line[32768:] for line in out.splitlines()] == [
            str(i).encode() for i in range(1, 201)]
    finally:
        if fast.poll() is None:
            fast.kill()
            fast.wait(5)
        out_file.close()
        slow.close()


@pytest.mark.broker_config(max_queued=10, max_inflight=1000, write_timeout=2.0)
def test_stalled_connection_closed_by_sweep_others_keep_working(broker, raw_client, paho):
    """Design 'slow consumers': QoS 0 for a stalled subscriber is dropped (not queued); a
    connection whose socket stays unwritable past write_timeout is closed by the sweep; other
    clients keep publishing and receiving throughout."""
    slow = _stalled_subscriber(broker.port, "flood/#")
    other = paho("other", V5)
    other.subscribe("other/t", 1)
    pub = connect(raw_client, "pub")
    _flood(broker, pub, 200, b"P" * 32768, [])
    st = _slow_state(broker)
    assert st is not None and st["writable"] is False, st
    publish(pub, "flood/t", b"q0", 0)
    st0 = _slow_state(broker)
    assert (st0["queued"], st0["dropped"]) == (st["queued"], st["dropped"] + 1)
    publish(pub, "other/t", b"during", 1, pid=300)
    assert [m.payload for m in other.wait_messages(1)] == [b"during"]
    broker.sweep(advance=3)
    wait_until(lambda: _slow_state(broker) is None, 2, what="stalled session gone")
    slow.settimeout(5)
    deadline = time.monotonic() + 5
    closed = False
    while time.monotonic() < deadline:
        try:
            if not slow.recv(1 << 20):
                closed = True
                break
        except (ConnectionResetError, BrokenPipeError):
            closed = True
            break
    assert closed, "the stalled socket was not closed"
    slow.close()
    publish(pub, "other/t", b"after", 1, pid=301)
    assert [m.payload for m in other.wait_messages(2)] == [b"during", b"after"]
    assert broker.call(lambda: broker.broker.clients_connected) == 2
