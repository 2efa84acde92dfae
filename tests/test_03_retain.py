"""Retained messages, black-box over real sockets (GitHub issue "The broker core").

Set, replace, delete, delivery to new subscribers (retain flag 1, QoS min(message, subscription)),
live forwarding (retain flag 0 unless Retain As Published), MQTT 5 Retain Handling, shared
subscriptions. Raw-socket helpers come from mqtt_bytes.py (`sync` = everything sent before the
PINGRESP to a PINGREQ sent now, so "nothing else arrived" needs no sleep).
Spec references: MQTT 3.1.1 (OASIS, 2014) and MQTT 5.0 (OASIS, 2019).
"""
from __future__ import annotations

import pytest

from cymqtt._fast.codec import Publish, Unsubscribe
from helpers_paho import V5, V311
from mqtt_bytes import (
    DISCONNECT, PUBLISH, RETAIN_AS_PUBLISHED, ack_all, connect, mqtt_str, publish,
    recv_bytes, subscribe, sync,
)

RH_SEND, RH_IF_NEW, RH_NEVER = 0x00, 0x10, 0x20     # retain handling, options bits 4-5


def retained_count(bt) -> int:
    return bt.call(lambda: bt.broker.retained_count)


def test_new_subscriber_gets_retained_with_flag_exact(broker, raw_client):
    """3.1.1 MQTT-3.3.1-5, -6, -8: a retained message is stored and sent to a new matching
    subscription with RETAIN 1 (after the SUBACK)."""
    p = connect(raw_client, "pub")
    publish(p, "r/t", b"keep", 0, retain=True)
    s = connect(raw_client, "sub")
    s.send(b"\x82\x08\x00\x01" + mqtt_str("r/t") + b"\x00")
    body = mqtt_str("r/t") + b"keep"
    expected = b"\x90\x03\x00\x01\x00" + bytes([0x31, len(body)]) + body
    assert recv_bytes(s, len(expected)) == expected
    assert sync(s) == []


@pytest.mark.parametrize("version", [4, 5])
def test_retained_replaced_only_last_kept(broker, raw_client, version):
    """3.1.1 MQTT-3.3.1-5 (5.0 MQTT-3.3.1-5): a new retained message replaces any existing one
    for the topic; a new subscriber gets only the last."""
    p = connect(raw_client, "pub", version)
    for i, payload in enumerate([b"one", b"two", b"three"], 1):
        publish(p, "r/t", payload, 1, pid=i, retain=True)
    assert retained_count(broker) == 1
    s = connect(raw_client, "sub", version)
    subscribe(s, ("r/t", 1))
    got = sync(s)
    assert [(m.payload, m.retain) for m in got] == [(b"three", True)]


@pytest.mark.parametrize("version", [4, 5])
def test_empty_retained_payload_deletes(broker, raw_client, version):
    """3.1.1 MQTT-3.3.1-10, -11 (5.0 MQTT-3.3.1-6, -7): a retained PUBLISH with an empty payload
    is forwarded as normal to current subscribers (RETAIN 0), removes the retained message and
    is not itself stored; later subscribers get nothing."""
    p = connect(raw_client, "pub", version)
    publish(p, "r/t", b"keep", 1, retain=True)
    publish(p, "r/other", b"stays", 0, retain=True)
    live = connect(raw_client, "live", version)
    subscribe(live, ("r/t", 0))
    assert [m.payload for m in sync(live)] == [b"keep"]
    publish(p, "r/t", b"", 1, pid=2, retain=True)
    assert [(m.payload, m.retain) for m in sync(live)] == [(b"", False)]
    assert retained_count(broker) == 1
    s = connect(raw_client, "sub", version)
    subscribe(s, ("r/#", 0))
    assert [m.topic for m in sync(s)] == ["r/other"]


def test_delete_of_missing_retained_is_harmless(broker, raw_client):
    """3.1.1 MQTT-3.3.1-11: a zero-byte retained message is never stored."""
    p = connect(raw_client, "pub")
    publish(p, "nothing/here", b"", 1, retain=True)
    assert retained_count(broker) == 0
    s = connect(raw_client, "sub")
    subscribe(s, ("#", 0))
    assert sync(s) == []


def test_wildcard_subscription_gets_every_matching_retained(broker, raw_client):
    """3.1.1 MQTT-3.3.1-6: the last retained message on each matching topic is sent; '#' does
    not match '$' topics (MQTT-4.7.2-1), '$SYS/#' does."""
    p = connect(raw_client, "pub")
    topics = ["w/a", "w/b", "w/c/d", "w", "x/y"]
    for i, t in enumerate(topics, 1):
        publish(p, t, t.encode(), 1, pid=i, retain=True)
    broker.call(lambda: broker.broker.publish("$SYS/fake/retained", b"sys", retain=True))
    s = connect(raw_client, "sub")
    subscribe(s, ("w/#", 0))
    got = sync(s)
    assert sorted(m.topic for m in got) == ["w", "w/a", "w/b", "w/c/d"]
    assert all(m.retain and m.payload == m.topic.encode() for m in got)
    s2 = connect(raw_client, "sub2")
    subscribe(s2, ("#", 0))
    assert sorted(m.topic for m in sync(s2)) == sorted(topics)
    s3 = connect(raw_client, "sub3")
    subscribe(s3, ("$SYS/#", 0), ("+/+", 0))
    assert sorted(m.topic for m in sync(s3)) == ["$SYS/fake/retained", "w/a", "w/b", "x/y"]


@pytest.mark.parametrize("version,options,flag", [
    (4, 1, False),                         # 3.1.1 MQTT-3.3.1-9
    (5, 1, False),                         # 5.0 MQTT-3.3.1-12
    (5, 1 | RETAIN_AS_PUBLISHED, True),    # 5.0 MQTT-3.3.1-13
])
def test_live_forward_of_retained_publish(broker, raw_client, version, options, flag):
    """A retained PUBLISH forwarded to an existing subscription has RETAIN 0, unless that MQTT 5
    subscription asked for Retain As Published; it is stored for new subscribers either way."""
    s = connect(raw_client, "sub", version)
    subscribe(s, ("lf/t", options))
    p = connect(raw_client, "pub", version)
    publish(p, "lf/t", b"r", 1, retain=True)
    got = sync(s)
    assert [(m.payload, m.retain) for m in got] == [(b"r", flag)]
    ack_all(s, got)
    late = connect(raw_client, "late", version)
    subscribe(late, ("lf/t", options))
    assert [(m.payload, m.retain) for m in sync(late)] == [(b"r", True)]


@pytest.mark.parametrize("msg_qos,sub_qos", [(2, 1), (2, 0), (0, 2), (1, 2), (2, 2)])
def test_retained_qos_is_min_of_message_and_subscription(broker, raw_client, msg_qos, sub_qos):
    """3.1.1 MQTT-3.8.4-6 (5.0 MQTT-3.8.4-8): messages sent in response to a subscription go at
    min(QoS of the published message, granted QoS); QoS > 0 ones complete their flow."""
    p = connect(raw_client, "pub")
    publish(p, "rq/t", b"m", msg_qos, retain=True)
    s = connect(raw_client, "sub")
    subscribe(s, ("rq/t", sub_qos))
    got = sync(s)
    assert [(m.qos, m.retain) for m in got] == [(min(msg_qos, sub_qos), True)]
    ack_all(s, got)
    assert sync(s) == []


def test_resubscribe_resends_retained_v311(broker, raw_client):
    """3.1.1 MQTT-3.8.4-3: a SUBSCRIBE with an identical filter replaces the subscription and
    re-sends the matching retained messages."""
    p = connect(raw_client, "pub")
    publish(p, "rs/t", b"m", 0, retain=True)
    s = connect(raw_client, "sub")
    subscribe(s, ("rs/t", 0))
    assert [m.payload for m in sync(s)] == [b"m"]
    subscribe(s, ("rs/t", 0), pid=2)
    assert [m.payload for m in sync(s)] == [b"m"]


def test_v5_retain_handling(broker, raw_client):
    """5.0 MQTT-3.3.1-9, -10, -11: Retain Handling 0 sends retained messages on every SUBSCRIBE,
    1 only when the subscription did not exist yet, 2 never."""
    p = connect(raw_client, "pub", 5)
    for i, t in enumerate(["rh/0", "rh/1", "rh/2"], 1):
        publish(p, t, t.encode(), 1, pid=i, retain=True)
    s = connect(raw_client, "sub", 5)
    for pid in (1, 2):          # subscribe, then the same again
        assert subscribe(s, ("rh/0", 1 | RH_SEND), ("rh/1", 1 | RH_IF_NEW),
                         ("rh/2", 1 | RH_NEVER), pid=pid) == [1, 1, 1]
        got = sync(s)
        expected = ["rh/0", "rh/1"] if pid == 1 else ["rh/0"]
        assert sorted(m.topic for m in got) == expected, pid
        assert all(m.retain for m in got)
        ack_all(s, got)
    # the subscriptions work for live messages whatever their retain handling
    publish(p, "rh/2", b"live", 1, pid=9)
    assert [(m.topic, m.payload, m.retain) for m in sync(s)] == [("rh/2", b"live", False)]


def test_v5_retain_handling_1_after_unsubscribe_sends_again(broker, raw_client):
    """5.0 MQTT-3.3.1-10: after UNSUBSCRIBE the subscription no longer exists, so Retain
    Handling 1 sends the retained message again."""
    p = connect(raw_client, "pub", 5)
    publish(p, "rh/t", b"m", 0, retain=True)
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("rh/t", RH_IF_NEW))
    assert len(sync(s)) == 1
    s.send_packet(Unsubscribe(2, ["rh/t"]))
    assert s.recv_packet().reason_codes == [0]
    subscribe(s, ("rh/t", RH_IF_NEW), pid=3)
    assert len(sync(s)) == 1


@pytest.mark.parametrize("version", [4, 5])
def test_shared_subscription_gets_no_retained(broker, raw_client, version):
    """5.0 section 4.8.2 (as mosquitto and EMQX do): retained messages are not sent when a client
    subscribes to a shared subscription; live messages are delivered to it (RETAIN 0)."""
    p = connect(raw_client, "pub", version)
    publish(p, "sh/t", b"old", 1, retain=True)
    s = connect(raw_client, "sub", version)
    assert subscribe(s, ("$share/g/sh/#", 1)) == [1]
    assert sync(s) == []
    publish(p, "sh/t", b"new", 1, pid=2, retain=True)
    got = sync(s)
    assert [(m.payload, m.retain) for m in got] == [(b"new", False)]


def test_retained_with_paho_both_versions(paho):
    """Real clients: a 3.1.1 publisher's retained message reaches a v5 and a 3.1.1 subscriber
    with the retain flag; deleting it with an empty payload works from MQTT 5."""
    paho("pub3", V311).publish("pr/t", b"hello", qos=1, retain=True)
    s5 = paho("s5", V5)
    s5.subscribe("pr/#", 1)
    s3 = paho("s3", V311)
    s3.subscribe("pr/#", 2)
    for s in (s5, s3):
        got = s.wait_messages(1)
        assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
            ("pr/t", b"hello", 1, True)]
    paho("pub5", V5).publish("pr/t", b"", qos=1, retain=True)
    late = paho("late", V311)
    late.subscribe("pr/#", 1)
    late.subscribe("pr/sync", 1)
    paho("pub6", V5).publish("pr/sync", b"s", qos=1)
    assert [m.topic for m in late.wait_messages(1)] == ["pr/sync"]


@pytest.mark.broker_config(retain_available=False)
def test_v5_retain_unavailable(broker, raw_client):
    """5.0 MQTT-3.2.2-14 (and section 3.2.2.3.5): with retain unavailable CONNACK says Retain
    Available 0 and a retained PUBLISH gets DISCONNECT 0x9A."""
    c = connect(raw_client, "c", 5)
    assert c.connack.properties[0x25] == 0
    c.send_packet(Publish("ru/t", b"x", 1, True, packet_id=1))
    d = c.recv_packet()
    assert d is not None and d.type == DISCONNECT and d.reason_code == 0x9A
    assert c.closed()
    assert retained_count(broker) == 0


def test_retained_message_with_properties_v5(broker, raw_client):
    """5.0 section 3.3.1.3: the retained message keeps its application properties for later
    subscribers (user properties in order, content type)."""
    user = [("b", "1"), ("a", "2")]
    p = connect(raw_client, "pub", 5)
    publish(p, "rp/t", b"m", 1, retain=True, properties={0x26: user, 0x03: "text/x"})
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("rp/t", 1))
    got = sync(s)
    assert len(got) == 1 and got[0].type == PUBLISH and got[0].retain
    assert got[0].properties[0x26] == user and got[0].properties[0x03] == "text/x"


def test_v5_retained_carries_subscription_identifier(broker, raw_client):
    """5.0 MQTT-3.3.4-3 (section 3.3.2.3.8): a retained message sent because of a subscription
    carries that subscription's identifier."""
    p = connect(raw_client, "pub", 5)
    publish(p, "ri/t", b"m", 0, retain=True)
    s = connect(raw_client, "sub", 5)
    subscribe(s, ("ri/#", 0), properties={0x0B: 42})
    got = sync(s)
    assert len(got) == 1 and got[0].retain and got[0].properties[0x0B] == [42]
