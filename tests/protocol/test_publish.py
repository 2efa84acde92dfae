"""PUBLISH and its acknowledgements, both directions, between ClientProtocols on one Context.

MQTT 3.1.1 sections 3.3 to 3.7 and 4.3 / 4.4 (QoS flows and redelivery), MQTT 5.0 the same plus
message expiry, topic aliases and the payload format indicator. What a subscriber receives is
compared byte for byte with frames the harness builds by hand.
"""
import pytest

from cymqtt.config import Config

from ._harness import (
    MAXIMUM_PACKET_SIZE, MESSAGE_EXPIRY, PAYLOAD_FORMAT, RECEIVE_MAXIMUM, REQUEST_PROBLEM_INFO,
    SESSION_EXPIRY, SUBSCRIPTION_ID, TOPIC_ALIAS, TOPIC_ALIAS_MAXIMUM, USER_PROPERTY, World,
    connect, disconnect, publish, puback, pubcomp, pubrec, pubrel, subscribe, suback,
)

QUIET = {REQUEST_PROBLEM_INFO: 0}


def subscriber(w: World, client_id: str, topic: str, qos: int, version: int = 4, **kw):
    s = w.connected(client_id, version=version, **kw)
    s.send(subscribe(1, (topic, qos), version=version))
    assert s.take() == suback(1, qos, version=version)
    return s


# -- QoS 0 / 1 / 2 routed ---------------------------------------------------------------------


def test_qos0_routed_byte_exact():
    """QoS 0: no response to the publisher [MQTT-3.3.4-1]; the subscriber gets the message
    (3.1.1 section 3.3.5), here the very same bytes."""
    w = World()
    sub = subscriber(w, "sub", "a/b", 0)
    pub = w.connected("pub")
    frame = publish("a/b", b"hello")
    assert frame == b"\x30\x0a\x00\x03a/bhello"
    pub.send(frame)
    assert pub.take() == b""
    assert sub.take() == frame


def test_qos1_both_directions():
    """QoS 1: the receiver of a PUBLISH answers PUBACK with its packet id [MQTT-4.3.2-2]; the
    server gives its own delivery an unused packet id (section 2.3.1) and completes it on the
    subscriber's PUBACK."""
    w = World()
    sub = subscriber(w, "sub", "a/b", 1)
    pub = w.connected("pub")
    pub.send(publish("a/b", b"m1", qos=1, pid=10))
    assert pub.take() == b"\x40\x02\x00\x0a"
    assert sub.take() == b"\x32\x09\x00\x03a/b\x00\x01m1"
    session = w.registry.get("sub")
    assert session.inflight == 1
    pub.send(publish("a/b", b"m2", qos=1, pid=11))
    assert pub.take() == b"\x40\x02\x00\x0b"
    assert sub.take() == b"\x32\x09\x00\x03a/b\x00\x02m2"
    sub.send(puback(1), puback(2))
    assert sub.take() == b""
    assert session.inflight == 0


def test_qos1_v5_no_matching_subscribers():
    """MQTT 5 PUBACK: 0x00 when somebody got it (sent in the short form, section 3.4.2.1),
    0x10 (no matching subscribers) when nobody did."""
    w = World()
    pub = w.connected("pub5", version=5)
    pub.send(publish("nobody/here", b"x", qos=1, pid=3, version=5))
    assert pub.take() == b"\x40\x03\x00\x03\x10"
    sub = subscriber(w, "sub5", "t", 1, version=5)
    pub.send(publish("t", b"x", qos=1, pid=4, version=5))
    assert pub.take() == b"\x40\x02\x00\x04"
    assert sub.take() == b"\x32\x07\x00\x01t\x00\x01\x00x"


def test_qos2_inbound_flow():
    """QoS 2 from a client: PUBREC for the PUBLISH, PUBCOMP for the PUBREL [MQTT-4.3.3-2];
    the message goes to subscribers once, when it is first received."""
    w = World()
    sub = subscriber(w, "sub", "q2", 0)
    pub = w.connected("pub")
    pub.send(publish("q2", b"once", qos=2, pid=7))
    assert pub.take() == b"\x50\x02\x00\x07"
    assert sub.take() == b"\x30\x08\x00\x02q2once"
    pub.send(pubrel(7))
    assert pub.take() == b"\x70\x02\x00\x07"
    assert sub.take() == b""


def test_qos2_outbound_flow():
    """QoS 2 to a client: PUBLISH, its PUBREC, our PUBREL [MQTT-4.3.3-1], its PUBCOMP ends
    the flow."""
    w = World()
    sub = subscriber(w, "sub", "q2", 2)
    pub = w.connected("pub")
    pub.send(publish("q2", b"m", qos=2, pid=1))
    assert pub.take() == b"\x50\x02\x00\x01"
    assert sub.take() == b"\x34\x07\x00\x02q2\x00\x01m"
    session = w.registry.get("sub")
    sub.send(pubrec(1))
    assert sub.take() == b"\x62\x02\x00\x01"
    assert session.inflight == 1
    sub.send(pubcomp(1))
    assert sub.take() == b""
    assert session.inflight == 0


def test_qos2_outbound_flow_v5_refused_by_pubrec():
    """MQTT 5: a PUBREC with a reason code >= 0x80 ends the QoS 2 flow: no PUBREL
    [MQTT-4.3.3-4]; the packet id is free again."""
    w = World()
    sub = subscriber(w, "sub5", "q2", 2, version=5)
    pub = w.connected("pub")
    pub.send(publish("q2", b"m", qos=2, pid=1))
    assert sub.take() == b"\x34\x08\x00\x02q2\x00\x01\x00m"
    sub.send(pubrec(1, 0x80))
    assert sub.take() == b""
    assert w.registry.get("sub5").inflight == 0


def test_qos2_duplicate_not_routed_twice():
    """Until the PUBREL, a PUBLISH with the same packet id is acknowledged with PUBREC again
    but not delivered again [MQTT-4.3.3-2]; after PUBCOMP the same id is a new message."""
    w = World()
    sub = subscriber(w, "sub", "d", 2)
    pub = w.connected("pub")
    pub.send(publish("d", b"A", qos=2, pid=5))
    pub.send(publish("d", b"A", qos=2, pid=5, dup=True))
    assert pub.take() == b"\x50\x02\x00\x05" * 2
    assert sub.take() == b"\x34\x06\x00\x01d\x00\x01A"
    pub.send(pubrel(5))
    assert pub.take() == b"\x70\x02\x00\x05"
    pub.send(publish("d", b"B", qos=2, pid=5))
    assert pub.take() == b"\x50\x02\x00\x05"
    assert sub.take() == b"\x34\x06\x00\x01d\x00\x02B"


def test_pubrel_unknown_id():
    """A PUBREL for an id we hold no message for still gets PUBCOMP (3.1.1 section 3.6.4);
    MQTT 5 says why: 0x92, packet identifier not found (section 3.7.2.1)."""
    w = World()
    c4 = w.connected("c4")
    c4.send(pubrel(9))
    assert c4.take() == b"\x70\x02\x00\x09"
    c5 = w.connected("c5", version=5)
    c5.send(pubrel(9))
    assert c5.take() == b"\x70\x03\x00\x09\x92"
    assert c4.open and c5.open


def test_pubrec_unknown_id_v5():
    """MQTT 5: a PUBREC for an id not in flight gets PUBREL 0x92 (section 3.6.2.1)."""
    w = World()
    c5 = w.connected("c5", version=5)
    c5.send(pubrec(4))
    assert c5.take() == b"\x62\x03\x00\x04\x92"


def test_puback_unknown_id_ignored():
    """A PUBACK or PUBCOMP for no message in flight is ignored; the connection stays."""
    w = World()
    c = w.connected("c")
    c.send(puback(3), pubcomp(4))
    assert c.take() == b""
    assert c.open


# -- refused publications ---------------------------------------------------------------------


def test_publish_to_sys_refused():
    """Clients cannot publish to $SYS topics. 3.1.1: the server "MUST either make a positive
    acknowledgement, according to the normal QoS rules, or close the Network Connection"
    [MQTT-3.3.5-2]; MQTT 5 answers 0x87 (not authorized). Nothing is delivered or retained."""
    w = World()
    sub = subscriber(w, "sub", "$SYS/#", 1)
    c4 = w.connected("c4")
    c4.send(publish("$SYS/broker/fake", b"x"))
    c4.send(publish("$SYS/broker/fake", b"x", qos=1, pid=5, retain=True))
    assert c4.take() == b"\x40\x02\x00\x05"
    c5 = w.connected("c5", version=5)
    c5.send(publish("$SYS/x", b"x", qos=1, pid=6, version=5))
    c5.send(publish("$SYS/x", b"x", qos=2, pid=7, version=5))
    assert c5.take() == b"\x40\x03\x00\x06\x87" + b"\x50\x03\x00\x07\x87"
    assert sub.take() == b""
    assert list(w.ctx.retained.match("$SYS/#", w.loop.now)) == []
    assert c4.open and c5.open


def test_qos_above_maximum_v5():
    """MQTT 5: a PUBLISH above the maximum QoS the server announced [MQTT-3.2.2-11] is a
    Protocol Error answered with DISCONNECT 0x9B (section 3.2.2.3.4)."""
    w = World(maximum_qos=1)
    c = w.connected("c", version=5, properties=QUIET)
    c.send(publish("t", b"x", qos=2, pid=1, version=5))
    assert c.take() == b"\xe0\x01\x9b"
    assert c.closed


def test_subscription_identifier_from_client_v5():
    """MQTT 5: a PUBLISH from a client must not carry a subscription identifier: Protocol
    Error [MQTT-3.3.4-6], DISCONNECT 0x82."""
    w = World()
    c = w.connected("c", version=5, properties=QUIET)
    c.send(publish("t", b"x", version=5, properties={SUBSCRIPTION_ID: 3}))
    assert c.take() == b"\xe0\x01\x82"
    assert c.closed


def test_payload_format_invalid_v5():
    """MQTT 5: payload format indicator 1 with a payload that is not UTF-8 -> PUBACK 0x99
    (payload format invalid) (section 3.3.2.3.2); not delivered; the connection stays."""
    w = World()
    sub = subscriber(w, "sub", "t", 1)
    c = w.connected("c", version=5)
    c.send(publish("t", b"\xff\xfe", qos=1, pid=2, version=5, properties={PAYLOAD_FORMAT: 1}))
    assert c.take() == b"\x40\x03\x00\x02\x99"
    assert sub.take() == b""
    assert c.open


def test_inbound_receive_maximum_v5():
    """MQTT 5: more unacknowledged QoS 2 PUBLISHes than the server's receive maximum ->
    DISCONNECT 0x93 (receive maximum exceeded) (sections 3.2.2.3.3, 3.3.4)."""
    w = World(receive_maximum=2)
    c = w.connected("c", version=5, properties=QUIET)
    c.send(publish("t", b"1", qos=2, pid=1, version=5),
           publish("t", b"2", qos=2, pid=2, version=5))
    assert c.take() == b"\x50\x02\x00\x01\x50\x02\x00\x02"
    c.send(publish("t", b"3", qos=2, pid=3, version=5))
    assert c.take() == b"\xe0\x01\x93"
    assert c.closed


# -- what the subscriber gets -----------------------------------------------------------------


@pytest.mark.parametrize("sub_qos,pub_qos,first_byte", [
    (0, 1, 0x30), (0, 2, 0x30), (1, 2, 0x32), (2, 1, 0x32), (2, 0, 0x30), (1, 0, 0x30)])
def test_subscription_qos_downgrade(sub_qos, pub_qos, first_byte):
    """A message is delivered at the minimum of its QoS and the subscription's
    [MQTT-3.8.4-6] (MQTT 5 [MQTT-3.8.4-8])."""
    w = World()
    sub = subscriber(w, "sub", "g", sub_qos)
    pub = w.connected("pub")
    pub.send(publish("g", b"v", qos=pub_qos, pid=9))
    expected = publish("g", b"v", qos=min(sub_qos, pub_qos), pid=1)
    assert expected[0] == first_byte
    assert sub.take() == expected


def test_live_delivery_clears_retain_311():
    """3.1.1: a retained message sent to an established subscription has RETAIN 0
    [MQTT-3.3.1-9]; MQTT 5 with retain as published keeps it (section 3.8.3.1)."""
    w = World()
    s4 = subscriber(w, "s4", "r", 0)
    s5 = w.connected("s5", version=5)
    s5.send(subscribe(1, ("r", 0x08), version=5))
    assert s5.take() == suback(1, 0, version=5)
    pub = w.connected("pub")
    pub.send(publish("r", b"kept", retain=True))
    assert s4.take() == b"\x30\x07\x00\x01rkept"
    assert s5.take() == b"\x31\x08\x00\x01r\x00kept"


def test_v5_properties_to_v5_and_v311():
    """MQTT 5 properties a publisher sets go to MQTT 5 subscribers unchanged (section
    3.3.2.3); a 3.1.1 subscriber gets the same message without them. The topic alias is
    per connection and not forwarded (section 3.3.2.3.4)."""
    w = World()
    s4 = subscriber(w, "s4", "p/+", 0)
    s5 = subscriber(w, "s5", "p/+", 0, version=5)
    pub = w.connected("pub", version=5)
    user = {USER_PROPERTY: [("k", "v")], TOPIC_ALIAS: 1}
    pub.send(publish("p/1", b"data", version=5, properties=user))
    assert s4.take() == b"\x30\x09\x00\x03p/1data"
    assert s5.take() == publish("p/1", b"data", version=5,
                                properties={USER_PROPERTY: [("k", "v")]})


def test_topic_alias_inbound_v5():
    """MQTT 5: a topic alias set by one PUBLISH stands for its topic in later ones with an
    empty topic name (section 3.3.2.3.4); alias 0 is a Topic Alias invalid error, DISCONNECT
    0x94 [MQTT-3.3.2-8]."""
    w = World()
    sub = subscriber(w, "sub", "long/topic/name", 0)
    pub = w.connected("pub", version=5, properties=QUIET)
    pub.send(publish("long/topic/name", b"1", version=5, properties={TOPIC_ALIAS: 3}),
             publish("", b"2", version=5, properties={TOPIC_ALIAS: 3}))
    assert sub.take() == publish("long/topic/name", b"1") + publish("long/topic/name", b"2")
    pub.send(publish("x", b"3", version=5, properties={TOPIC_ALIAS: 0}))
    assert pub.take() == b"\xe0\x01\x94"
    assert pub.closed


@pytest.mark.parametrize("props", [{TOPIC_ALIAS: 65}, {TOPIC_ALIAS: 2}],
                         ids=["above-maximum", "never-set"])
def test_topic_alias_errors_v5(props):
    """MQTT 5: an alias above the server's topic alias maximum is 0x94 [MQTT-3.3.2-9]; an
    empty topic with an alias never set is a Protocol Error 0x82 (section 3.3.4)."""
    w = World()
    pub = w.connected("pub", version=5, properties=QUIET)
    topic = "t" if props[TOPIC_ALIAS] == 65 else ""
    pub.send(publish(topic, b"x", version=5, properties=props))
    assert pub.take() == (b"\xe0\x01\x94" if props[TOPIC_ALIAS] == 65 else b"\xe0\x01\x82")
    assert pub.closed


def test_no_local_v5():
    """MQTT 5: with the no local option a client does not get its own messages
    [MQTT-3.8.3-3]; other subscribers still do."""
    w = World()
    me = w.connected("me", version=5)
    me.send(subscribe(1, ("nl", 0x04), version=5))
    assert me.take() == suback(1, 0, version=5)
    other = subscriber(w, "other", "nl", 0)
    me.send(publish("nl", b"x", version=5))
    assert me.take() == b""
    assert other.take() == b"\x30\x05\x00\x02nlx"


# -- persistent sessions: queue and redelivery -------------------------------------------------


def test_queued_while_offline_311():
    """3.1.1: QoS 1 and 2 messages for an offline session with clean session 0 are stored
    [MQTT-3.1.2-5] and sent, in order, after the reconnect's CONNACK; QoS 0 ones are not (the
    default)."""
    w = World()
    sub = subscriber(w, "sub", "q", 1, clean=False)
    sub.drop()
    pub = w.connected("pub")
    pub.send(publish("q", b"1", qos=1, pid=1), publish("q", b"0"),
             publish("q", b"2", qos=1, pid=2))
    assert pub.take() == b"\x40\x02\x00\x01\x40\x02\x00\x02"
    back = w.client()
    back.send(connect("sub", clean=False))
    assert back.take() == (b"\x20\x02\x01\x00" + publish("q", b"1", qos=1, pid=1)
                           + publish("q", b"2", qos=1, pid=2))


def test_unacknowledged_resent_with_dup():
    """On reconnect with clean session 0 the server re-sends unacknowledged PUBLISH packets
    with their original packet ids (and DUP 1), and PUBREL for QoS 2 messages that were
    PUBRECed [MQTT-4.4.0-1, MQTT-3.3.1-1]."""
    w = World()
    s1 = subscriber(w, "sub", "r/#", 2, clean=False)
    pub = w.connected("pub")
    pub.send(publish("r/1", b"a", qos=1, pid=1), publish("r/2", b"b", qos=2, pid=2))
    assert s1.take() == publish("r/1", b"a", qos=1, pid=1) + publish("r/2", b"b", qos=2, pid=2)
    s1.send(pubrec(2))
    assert s1.take() == b"\x62\x02\x00\x02"
    s1.drop()
    s2 = w.client()
    s2.send(connect("sub", clean=False))
    assert s2.take() == (b"\x20\x02\x01\x00" + publish("r/1", b"a", qos=1, pid=1, dup=True)
                         + b"\x62\x02\x00\x02")
    s2.send(puback(1), pubcomp(2))
    assert w.registry.get("sub").inflight == 0


def test_message_expiry_while_queued_v5():
    """MQTT 5: a message waiting in the server is sent with its expiry interval less the time
    it waited [MQTT-3.3.2-6]; one that expired is not sent [MQTT-3.3.2-5]."""
    w = World()
    sub = subscriber(w, "sub", "e/#", 1, version=5, clean=False,
                     properties={SESSION_EXPIRY: 3600})
    sub.send(disconnect(0))
    pub = w.connected("pub", version=5)
    pub.send(publish("e/long", b"L", qos=1, pid=1, version=5, properties={MESSAGE_EXPIRY: 60}),
             publish("e/short", b"S", qos=1, pid=2, version=5, properties={MESSAGE_EXPIRY: 10}))
    w.loop.advance(20)
    back = w.connected("sub", version=5, clean=False, properties={SESSION_EXPIRY: 3600})
    assert back.take() == publish("e/long", b"L", qos=1, pid=1, version=5,
                                  properties={MESSAGE_EXPIRY: 40})


def test_outbound_window_and_receive_maximum():
    """The server sends at most its in-flight window of unacknowledged QoS 1/2 messages, and
    never more than an MQTT 5 client's receive maximum [MQTT-3.3.4-9]; the rest waits and goes
    out in order as acknowledgements free the window."""
    w = World(Config(sys_interval=0, max_inflight=2))
    s4 = subscriber(w, "s4", "w", 1)
    s5 = subscriber(w, "s5", "w", 1, version=5, properties={RECEIVE_MAXIMUM: 1})
    pub = w.connected("pub")
    pub.send(*(publish("w", bytes([0x30 + i]), qos=1, pid=i + 1) for i in range(3)))
    assert s4.take() == publish("w", b"0", qos=1, pid=1) + publish("w", b"1", qos=1, pid=2)
    assert s5.take() == publish("w", b"0", qos=1, pid=1, version=5)
    s4.send(puback(1))
    assert s4.take() == publish("w", b"2", qos=1, pid=3)
    s5.send(puback(1))
    assert s5.take() == publish("w", b"1", qos=1, pid=2, version=5)
    s5.send(puback(2))
    assert s5.take() == publish("w", b"2", qos=1, pid=3, version=5)


def test_topic_name_with_wildcard():
    """A topic name must not contain wildcards [MQTT-3.3.2-2]. A 3.1.1 client is closed
    without a packet; an MQTT 5 client gets DISCONNECT 0x90 (topic name invalid) first
    (section 4.13)."""
    w = World()
    c4 = w.connected("c4")
    c4.send(publish("a/+", b"x"))
    assert c4.closed and c4.take() == b""
    c5 = w.connected("c5", version=5, properties=QUIET)
    c5.send(publish("a/+", b"x", version=5))
    assert c5.take() == b"\xe0\x01\x90"
    assert c5.closed


def test_qos2_dedupe_survives_reconnect():
    """The inbound QoS 2 state is session state (3.1.1 section 4.1): a PUBLISH re-sent after a
    reconnect with clean session 0, before PUBREL, is acknowledged but not delivered again
    [MQTT-4.3.3-2]."""
    w = World()
    sub = subscriber(w, "sub", "t", 0)
    p = w.connected("p", clean=False)
    p.send(publish("t", b"A", qos=2, pid=5))
    assert p.take() == b"\x50\x02\x00\x05"
    assert sub.take() == publish("t", b"A")
    p.drop()
    back = w.client()
    back.send(connect("p", clean=False))
    assert back.take() == b"\x20\x02\x01\x00"
    back.send(publish("t", b"A", qos=2, pid=5, dup=True))
    assert back.take() == b"\x50\x02\x00\x05"
    assert sub.take() == b""
    back.send(pubrel(5))
    assert back.take() == b"\x70\x02\x00\x05"


def test_outbound_topic_aliases_v5():
    """MQTT 5: to a client with a topic alias maximum the server may send aliases, none above
    that maximum [MQTT-3.1.2-26]; a topic sent once with its alias is sent after as an empty
    topic with the alias (section 3.3.2.3.4)."""
    w = World()
    a = w.connected("al", version=5, properties={TOPIC_ALIAS_MAXIMUM: 2})
    a.send(subscribe(1, ("x/#", 0), version=5))
    assert a.take() == suback(1, 0, version=5)
    p = w.connected("p")
    for t in ["x/long/topic", "x/long/topic", "x/b", "x/c", "x/c"]:
        p.send(publish(t, b"pl"))
    assert a.take() == b"".join([
        publish("x/long/topic", b"pl", version=5, properties={TOPIC_ALIAS: 1}),
        publish("", b"pl", version=5, properties={TOPIC_ALIAS: 1}),
        publish("x/b", b"pl", version=5, properties={TOPIC_ALIAS: 2}),
        publish("x/c", b"pl", version=5),          # the table is full: no alias
        publish("x/c", b"pl", version=5),
    ])


def test_too_large_for_client_dropped_v5():
    """MQTT 5: the server must not send a packet larger than the client's maximum packet size;
    such a message is discarded as if it had been delivered [MQTT-3.1.2-25]: nothing is sent,
    nothing stays in flight, the next message goes through."""
    w = World()
    a = w.connected("small", version=5, properties={MAXIMUM_PACKET_SIZE: 30})
    a.send(subscribe(1, ("t", 1), version=5))
    assert a.take() == suback(1, 1, version=5)
    p = w.connected("p")
    p.send(publish("t", b"y" * 40, qos=1, pid=1), publish("t", b"ok", qos=1, pid=2))
    assert a.take() == publish("t", b"ok", qos=1, pid=2, version=5)
    assert w.registry.get("small").inflight == 1
