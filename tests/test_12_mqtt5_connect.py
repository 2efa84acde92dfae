"""MQTT 5 CONNECT / CONNACK negotiation, black-box over real sockets (GitHub issue "MQTT 5.0, all
of it"): server redirection, the capabilities the broker announces and enforces (server keep
alive, maximum QoS, retain, wildcard / subscription identifier / shared subscription
availability) and flow control both ways (receive maximum, maximum packet size).

paho-mqtt in MQTT 5 mode for the application view, `RawClient` (the compiled codec) where the
bytes matter. Nothing waits for a fixed time to see that something did *not* happen: a fence
(mqtt5_helpers.py) proves it instead.

Spec references are to MQTT 5.0 (OASIS, 2019): [MQTT-x.y.z-n] normative statements, or sections.
"""
from __future__ import annotations

import pytest

from _testbase import RawClient
from cymqtt._fast.codec import Connect, PubAck, Publish, Subscribe
from helpers_paho import V5, PahoClient
from mqtt5_helpers import (
    MAX_PACKET, MAX_QOS, PUBACK, PUBCOMP, PUBREC, PUBREL, RECEIVE_MAX, RETAIN_AVAILABLE,
    SERVER_KEEP_ALIVE, SERVER_REFERENCE, SHARED_AVAILABLE, SUB_ID, SUB_ID_AVAILABLE,
    WILDCARD_AVAILABLE, expect_disconnect, next_packet, raw_subscribe, until_pingresp,
)


# -- redirection and server capabilities ----------------------------------------------------------

@pytest.mark.broker_config(redirect_to="other:1883")
def test_server_redirection_use_another_server(broker, raw, paho):
    """redirect_to: CONNACK 0x9C (Use another server) with Server Reference 0x1C, then the
    connection closes (sections 3.2.2.2, 4.11); a 3.1.1 client gets return code 3."""
    c = raw(broker.port, "redir", expect=0x9C)
    assert c.connack.properties[SERVER_REFERENCE] == "other:1883"
    assert c.closed()
    p = PahoClient(broker.port, "redir-paho", V5, expect_rc=0x9C)
    try:
        assert p.connack_properties.get("ServerReference") == "other:1883"
    finally:
        p.close()
    v3 = RawClient(broker.port, 4)
    try:
        v3.send_packet(Connect("redir-v3", version=4))
        ack = next_packet(v3, "CONNACK")
        assert ack.reason_code == 3
        assert v3.closed()
    finally:
        v3.close()


@pytest.mark.broker_config(redirect_to="other:1883", redirect_permanent=True)
def test_server_redirection_moved_permanently(broker, raw):
    """redirect_permanent: CONNACK 0x9D (Server moved) with the Server Reference."""
    c = raw(broker.port, "moved", expect=0x9D)
    assert c.connack.properties[SERVER_REFERENCE] == "other:1883"
    assert c.closed()


@pytest.mark.broker_config(server_keep_alive=5)
def test_server_keep_alive_replaces_the_clients(broker, raw):
    """server_keep_alive = 5: CONNACK carries Server Keep Alive 5 and "the Client MUST use this
    value instead of the Keep Alive value the Client sent on CONNECT" [MQTT-3.2.2-21]; the broker
    enforces it (one and a half times, section 3.1.2.10): the client that said 60 is
    disconnected with 0x8D after 7.5 s of silence, not 90 s."""
    c = raw(broker.port, "ska", keepalive=60)
    assert c.connack.properties[SERVER_KEEP_ALIVE] == 5
    broker.sweep(6)
    assert until_pingresp(c) == []          # still connected at 6 s
    broker.sweep(8)
    expect_disconnect(c, 0x8D)


@pytest.mark.broker_config(maximum_qos=1)
def test_maximum_qos(broker, raw):
    """maximum_qos = 1: CONNACK Maximum QoS 1 (section 3.2.2.3.4); a QoS 2 subscription is granted
    QoS 1; a QoS 2 PUBLISH gets DISCONNECT 0x9B (QoS not supported) [MQTT-3.2.2-11]."""
    c = raw(broker.port, "mq")
    assert c.connack.properties[MAX_QOS] == 1
    assert raw_subscribe(c, [("mq/t", 2)]) == [1]
    c.send_packet(Publish("mq/t", b"x", 1, packet_id=1))
    got = {p.name: p for p in (next_packet(c), next_packet(c))}   # its own copy and the PUBACK
    assert got["PUBACK"].reason_code == 0 and got["PUBLISH"].qos == 1
    c.send_packet(PubAck(PUBACK, got["PUBLISH"].packet_id))
    c.send_packet(Publish("mq/t", b"x", 2, packet_id=2))
    expect_disconnect(c, 0x9B)


@pytest.mark.broker_config(maximum_qos=1)
def test_will_qos_above_maximum_qos_is_refused_0x9b(broker, raw):
    """"If a Server receives a CONNECT packet containing a Will QoS that exceeds its capabilities,
    it MUST reject the connection. It SHOULD use a CONNACK packet with Reason Code 0x9B (QoS not
    supported)" [MQTT-3.2.2-12]."""
    c = raw(broker.port, "mq-will", expect=0x9B, will_topic="w/t", will_payload=b"x",
            will_qos=2)
    assert c.closed()


@pytest.mark.broker_config(retain_available=False)
def test_retain_not_available(broker, raw):
    """retain_available = false: CONNACK Retain Available 0; a PUBLISH with RETAIN 1 gets
    DISCONNECT 0x9A (Retain not supported) [MQTT-3.2.2-14 / section 3.2.2.3.5]."""
    c = raw(broker.port, "ra")
    assert c.connack.properties[RETAIN_AVAILABLE] == 0
    c.send_packet(Publish("ra/t", b"x", 1, packet_id=1))
    assert next_packet(c, "PUBACK").reason_code in (0, 0x10)
    c.send_packet(Publish("ra/t", b"x", 1, retain=True, packet_id=2))
    expect_disconnect(c, 0x9A)


@pytest.mark.broker_config(retain_available=False)
def test_will_retain_without_retain_available_is_refused_0x9a(broker, raw):
    """"If a Server receives a CONNECT packet containing a Will Message with the Will Retain set to
    1, and it does not support retained messages, the Server MUST reject the connection request.
    It SHOULD send CONNACK with Reason Code 0x9A (Retain not supported)" [MQTT-3.2.2-13]."""
    c = raw(broker.port, "ra-will", expect=0x9A, will_topic="w/t", will_payload=b"x",
            will_retain=True)
    assert c.closed()


@pytest.mark.broker_config(wildcard_subscription_available=False)
def test_wildcard_subscriptions_not_available(broker, raw):
    """wildcard_subscription_available = false: CONNACK Wildcard Subscription Available 0
    (section 3.2.2.3.11); wildcard filters get SUBACK 0xA2 (Wildcard Subscriptions not supported,
    a SUBACK reason code in section 3.9.3) while a plain filter in the same SUBSCRIBE is granted.
    (Section 3.2.2.3.11 also lets the Server treat it as a Protocol Error with DISCONNECT 0xA2;
    cymqtt answers per filter, as EMQX does.)"""
    c = raw(broker.port, "wc")
    assert c.connack.properties[WILDCARD_AVAILABLE] == 0
    assert raw_subscribe(c, [("wc/+", 1), ("wc/t", 1), ("#", 0)]) == [0xA2, 1, 0xA2]


@pytest.mark.broker_config(subscription_identifier_available=False)
def test_subscription_identifiers_not_available(broker, raw):
    """subscription_identifier_available = false: CONNACK Subscription Identifiers Available 0; a
    SUBSCRIBE with an identifier is a Protocol Error answered with DISCONNECT 0xA1 (Subscription
    Identifiers not supported) (section 3.2.2.3.12)."""
    c = raw(broker.port, "sidna")
    assert c.connack.properties[SUB_ID_AVAILABLE] == 0
    assert raw_subscribe(c, [("s/t", 1)]) == [1]
    c.send_packet(Subscribe(2, [("s/u", 1)], {SUB_ID: 9}))
    expect_disconnect(c, 0xA1)


@pytest.mark.broker_config(shared_subscription_available=False)
def test_shared_subscriptions_not_available(broker, raw):
    """shared_subscription_available = false: CONNACK Shared Subscription Available 0; shared
    filters get SUBACK 0x9E (Shared Subscriptions not supported) (section 3.2.2.3.13), plain ones
    are granted."""
    c = raw(broker.port, "shna")
    assert c.connack.properties[SHARED_AVAILABLE] == 0
    assert raw_subscribe(c, [("$share/g/t", 1), ("t", 1), ("$queue/t", 1)]) == [0x9E, 1, 0x9E]


# -- flow control ---------------------------------------------------------------------------------

def test_client_receive_maximum_caps_what_the_broker_has_in_flight(broker, raw, paho):
    """Receive Maximum 2 from the client: "The Server MUST NOT send more than Receive Maximum QoS 1
    and QoS 2 PUBLISH packets for which it has not received PUBACK, PUBCOMP, or PUBREC with a
    Reason Code of 128 or greater from the Client" [MQTT-3.3.4-9]. Exactly 2 arrive while the
    client does not acknowledge; each PUBACK lets exactly one more through."""
    c = raw(broker.port, "rm-sub", {RECEIVE_MAX: 2})
    raw_subscribe(c, [("rm/t", 1)])
    pub = paho("rm-pub")
    for i in range(5):
        pub.publish("rm/t", b"%d" % i, qos=1)
    first = [next_packet(c, "PUBLISH") for _ in range(2)]
    assert until_pingresp(c) == []
    assert broker.call(lambda: broker.broker.session("rm-sub").queued) == 3
    c.send_packet(PubAck(PUBACK, first[0].packet_id))
    third = next_packet(c, "PUBLISH")
    assert until_pingresp(c) == []
    for p in (first[1], third):
        c.send_packet(PubAck(PUBACK, p.packet_id))
    rest = [next_packet(c, "PUBLISH") for _ in range(2)]
    assert [p.payload for p in first + [third] + rest] == [b"%d" % i for i in range(5)]
    for p in rest:
        c.send_packet(PubAck(PUBACK, p.packet_id))
    assert until_pingresp(c) == []


def test_client_receive_maximum_counts_qos2_until_pubcomp(broker, raw, paho):
    """Receive Maximum 1 and QoS 2: the slot stays taken after PUBREC (the PUBREL is outstanding)
    and frees at PUBCOMP [MQTT-3.3.4-9]; a PUBREC with a reason code of 0x80 or more frees it at
    once [MQTT-3.3.4-9, MQTT-4.3.3-4]."""
    c = raw(broker.port, "rm2-sub", {RECEIVE_MAX: 1})
    raw_subscribe(c, [("rm2/t", 2)])
    pub = paho("rm2-pub")
    for i in range(3):
        pub.publish("rm2/t", b"%d" % i, qos=2)
    a = next_packet(c, "PUBLISH")
    c.send_packet(PubAck(PUBREC, a.packet_id))
    assert next_packet(c, "PUBREL").packet_id == a.packet_id
    assert until_pingresp(c) == []
    c.send_packet(PubAck(PUBCOMP, a.packet_id))
    b = next_packet(c, "PUBLISH")
    assert b.payload == b"1"
    c.send_packet(PubAck(PUBREC, b.packet_id, 0x80))       # refused: flow over, slot free
    d = next_packet(c, "PUBLISH")
    assert d.payload == b"2"


@pytest.mark.broker_config(receive_maximum=2)
def test_broker_receive_maximum_exceeded_is_0x93(broker, raw):
    """receive_maximum = 2: CONNACK Receive Maximum 2; a third QoS 2 PUBLISH while two await
    PUBREL exceeds it: "If it receives more than Receive Maximum QoS 1 and QoS 2 PUBLISH packets
    where it has not sent a PUBACK or PUBCOMP in response, the Server uses a DISCONNECT packet
    with Reason Code 0x93 (Receive Maximum exceeded)" (section 3.3.4, [MQTT-3.3.4-7])."""
    ok = raw(broker.port, "rmx-ok")
    assert ok.connack.properties[RECEIVE_MAX] == 2
    for pid in (1, 2):
        ok.send_packet(Publish("rmx/t", b"x", 2, packet_id=pid))
        assert next_packet(ok, "PUBREC").packet_id == pid
    ok.send_packet(PubAck(PUBREL, 1))
    assert next_packet(ok, "PUBCOMP").packet_id == 1
    ok.send_packet(Publish("rmx/t", b"x", 2, packet_id=3))   # two in flight again: allowed
    assert next_packet(ok, "PUBREC").packet_id == 3

    c = raw(broker.port, "rmx-bad")
    for pid in (1, 2):
        c.send_packet(Publish("rmx/t", b"x", 2, packet_id=pid))
        assert next_packet(c, "PUBREC").packet_id == pid
    c.send_packet(Publish("rmx/t", b"x", 2, packet_id=3))
    expect_disconnect(c, 0x93)


def test_receive_maximum_zero_is_a_protocol_error(broker, raw):
    """"It is a Protocol Error to include the Receive Maximum value more than once or for it to
    have the value 0" (section 3.1.2.11.3): CONNACK 0x82."""
    c = raw(broker.port, "rm0", {RECEIVE_MAX: 0}, expect=0x82)
    assert c.closed()


def test_maximum_packet_size_zero_is_a_protocol_error(broker, raw):
    """"It is a Protocol Error to include the Maximum Packet Size more than once, or for the value
    to be set to zero" (section 3.1.2.11.4): CONNACK 0x82."""
    c = raw(broker.port, "mp0", {MAX_PACKET: 0}, expect=0x82)
    assert c.closed()


def test_client_maximum_packet_size_is_respected(broker, raw, paho):
    """"The Server MUST NOT send packets exceeding Maximum Packet Size to the Client"
    [MQTT-3.1.2-24]; such a message is discarded for that client [MQTT-3.1.2-25], smaller ones
    still arrive, and other clients get the large one."""
    c = raw(broker.port, "mps-sub", {MAX_PACKET: 64})
    raw_subscribe(c, [("mps/t", 1)])
    big_sub = paho("mps-big")
    big_sub.subscribe("mps/t", 1)
    pub = paho("mps-pub")
    pub.publish("mps/t", b"x" * 200, qos=1)
    pub.publish("mps/t", b"small", qos=1)
    p = next_packet(c, "PUBLISH")
    assert p.payload == b"small"
    c.send_packet(PubAck(PUBACK, p.packet_id))
    assert until_pingresp(c) == []
    assert [len(m.payload) for m in big_sub.wait_messages(2)] == [200, 5]
