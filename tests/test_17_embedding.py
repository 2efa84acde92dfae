"""The embedding API: `Broker.publish` from the program, introspection (`session`, `clients`,
`stats`), and the registry's events through `Broker.add_listener`, with real clients."""
from __future__ import annotations

import pytest

from _testbase import EventRecorder
from helpers_paho import V5, V311, wait_until
from mqtt_bytes import connect, subscribe


@pytest.mark.parametrize("topic, why", [
    ("", "empty"),
    ("a/+", "wildcard"),
    ("a/#", "wildcard"),
    ("a\x00b", "U+0000"),
    ("x" * 65536, "too long"),
])
def test_publish_refuses_invalid_topics_before_any_delivery(broker, raw_client, topic, why):
    """Broker.publish raises ValueError for what a PUBLISH could not carry [MQTT-3.3.2-2,
    MQTT-4.7.3-1, MQTT-1.5.4-2], and nothing reaches a subscriber or takes a packet id: the next
    valid message is delivered with packet id 1."""
    sub = connect(raw_client, "emb-sub", 5)
    subscribe(sub, ("#", 1), ("a/#", 1))
    with pytest.raises(ValueError, match="cannot publish"):
        broker.call(lambda: broker.broker.publish(topic, b"x", qos=1))
    assert broker.call(lambda: broker.broker.session("emb-sub").inflight) == 0
    assert broker.call(lambda: broker.broker.publish("a/b", b"ok", qos=1)) == 1
    p = sub.recv_packet()
    assert (p.name, p.topic, p.payload, p.packet_id) == ("PUBLISH", "a/b", b"ok", 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"qos": 3}, "qos must be 0, 1 or 2"),
    ({"qos": -1}, "qos must be 0, 1 or 2"),
    ({"qos": True}, "qos must be 0, 1 or 2"),
    ({"payload": 5}, "payload must be bytes or str"),
    ({"properties": [1]}, "properties must be a dict"),
    ({"properties": {0x01: "not an int"}}, "cannot publish"),
    ({"properties": {0x7F: 1}}, "cannot publish"),
])
def test_publish_refuses_bad_arguments(broker, kwargs, match):
    with pytest.raises(ValueError, match=match):
        broker.call(lambda: broker.broker.publish("t", **kwargs))


def test_publish_takes_str_bytearray_and_sys_topics(broker, paho):
    sub = paho("emb-sys", V311)
    sub.subscribe("$SYS/emb/#", 0)
    sub.subscribe("emb/#", 0)
    assert broker.call(lambda: broker.broker.publish("$SYS/emb/x", "text")) == 1
    assert broker.call(lambda: broker.broker.publish("emb/y", bytearray(b"ba"))) == 1
    assert sorted(m.payload for m in sub.wait_messages(2)) == [b"ba", b"text"]


def test_clients_and_stats_describe_connected_clients(broker, paho):
    a = paho("intro-a", V5)
    b = paho("intro-b", V311, keepalive=30)
    b.subscribe("intro/#", 1)
    a.publish("intro/1", b"x", qos=1)
    b.wait_messages(1)

    def snapshot():
        return {c["client_id"]: c for c in broker.broker.clients()}
    clients = wait_until(lambda: (s := broker.call(snapshot)) and
                         s.get("intro-b", {}).get("sent") == 1 and s, what="counters")
    assert clients["intro-a"]["protocol"] == 5 and clients["intro-a"]["received"] == 1
    assert clients["intro-b"]["protocol"] == 4 and clients["intro-b"]["keepalive"] == 30
    assert clients["intro-b"]["subscriptions"] == 1
    assert clients["intro-b"]["peer"].startswith("127.0.0.1:")
    stats = broker.call(broker.broker.stats)
    assert stats["clients_connected"] == 2 and stats["sessions"] == 2
    assert stats["subscriptions"] == 1 and stats["messages_received"] == 1
    assert stats["messages_sent"] == 1 and stats["connections_total"] == 2
    assert stats["clients_total"] == 2


def test_registry_events_follow_a_persistent_session(broker, paho):
    """What a store would see: a persistent session created, its subscription, a QoS 1 message
    queued while it is offline and acknowledged after it returns, the unsubscription, and its
    end when it reconnects with clean start."""
    rec = EventRecorder()
    broker.call(lambda: broker.broker.add_listener(rec))
    s = paho("ev", V5, session_expiry=60)
    s.subscribe("ev/#", 1)
    s.disconnect()
    wait_until(lambda: broker.call(lambda: not broker.broker.session("ev").connected))
    assert broker.call(lambda: broker.broker.publish("ev/1", b"m", qos=1)) == 1
    s2 = paho("ev", V5, session_expiry=60, clean=False)
    s2.wait_messages(1)
    wait_until(lambda: broker.call(lambda: ("acked", "ev", 1) in rec.events), what="ack")
    s2.client.unsubscribe("ev/#")
    wait_until(lambda: broker.call(lambda: rec.events[-1][0] == "unsubscribed"), what="unsub")
    s2.disconnect()
    paho("ev", V5, clean=True).disconnect()
    wait_until(lambda: broker.call(lambda: rec.events.count(("ended", "ev")) == 2),
               what="both sessions ended")
    assert broker.call(lambda: list(rec.events)) == [
        ("created", "ev"), ("subscribed", "ev", "ev/#", 1), ("queued", "ev", "ev/1", b"m", 1),
        ("acked", "ev", 1), ("unsubscribed", "ev", "ev/#"),
        ("ended", "ev"), ("created", "ev"), ("ended", "ev")]
