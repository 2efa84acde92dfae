"""MQTT 5 PUBLISH features, black-box over real sockets (GitHub issue "MQTT 5.0, all of it"):
topic aliases both ways, message expiry, request/response and other pass-through properties,
PUBACK reason codes.

paho-mqtt in MQTT 5 mode for the application view, `RawClient` (the compiled codec) where the
bytes matter. Nothing waits for a fixed time to see that something did *not* happen: a fence
(mqtt5_helpers.py) proves it instead. Message expiry, which the broker stamps with its clock
when a message arrives, needs real time to pass (about a second, with intervals of 1 s).

Spec references are to MQTT 5.0 (OASIS, 2019): [MQTT-x.y.z-n] normative statements, or sections.
"""
from __future__ import annotations

import pytest

from cymqtt._fast.codec import Disconnect, PubAck, Publish
from mqtt5_helpers import (
    ALIAS, ALIAS_MAX, EXPIRY, MAX_PACKET, PFI, PROBLEM_INFO, PUBACK, REASON_STRING, RECEIVE_MAX,
    REQ_RESPONSE_INFO, RESPONSE_INFO, SERVER_REFERENCE, SESSION_EXPIRY, AliasTable,
    expect_disconnect, fence, let_time_pass, next_packet, offline, pub_props, raw_subscribe,
    unfenced, until_pingresp,
)


# -- topic aliases --------------------------------------------------------------------------------

def test_inbound_topic_alias_set_then_reused(broker, raw, paho):
    """A client sets a Topic Alias with a topic, then sends an empty topic with the alias; the
    broker maps it back, and a new topic with the same alias replaces the mapping.

    "A sender can modify the Topic Alias mapping by sending another PUBLISH in the same Network
    Connection with the same Topic Alias value and a different non-zero length Topic Name"; the
    receiver "uses the Topic Alias to determine the Topic Name" when the name is empty
    (section 3.3.2.3.4).
    """
    sub = paho("alias-sub")
    sub.subscribe("alias/#", 1)
    c = raw(broker.port, "alias-pub")
    assert c.connack.properties[ALIAS_MAX] == broker.broker.config.topic_alias_maximum
    sends = [("alias/t", b"1"), ("", b"2"), ("alias/u", b"3"), ("", b"4")]
    for pid, (topic, payload) in enumerate(sends, 1):
        c.send_packet(Publish(topic, payload, 1, packet_id=pid, properties={ALIAS: 1}))
        ack = next_packet(c, "PUBACK")
        assert ack.packet_id == pid and ack.reason_code == 0
    msgs = sub.wait_messages(4)
    assert [(m.topic, m.payload) for m in msgs] == [
        ("alias/t", b"1"), ("alias/t", b"2"), ("alias/u", b"3"), ("alias/u", b"4")]
    # The alias is the sender's business: it is not forwarded.
    assert all("TopicAlias" not in m.properties for m in msgs)


def test_inbound_topic_alias_zero_is_0x94(broker, raw):
    """"A Topic Alias of 0 is not permitted" [MQTT-3.3.2-8]; "A Topic Alias value of 0 or greater
    than the Maximum Topic Alias is a Protocol Error, the receiver uses DISCONNECT with Reason Code
    of 0x94 (Topic Alias invalid)" (section 3.3.2.3.4)."""
    c = raw(broker.port, "alias-zero")
    c.send_packet(Publish("a/t", b"x", 0, properties={ALIAS: 0}))
    expect_disconnect(c, 0x94)


@pytest.mark.broker_config(topic_alias_maximum=3)
def test_inbound_topic_alias_above_maximum_is_0x94(broker, raw):
    """CONNACK announces the broker's Topic Alias Maximum; "The Client MUST NOT send a Topic Alias
    in a PUBLISH packet to the Server greater than this value" [MQTT-3.2.2-17], and one above it
    gets DISCONNECT 0x94 (section 3.3.2.3.4). The maximum itself is accepted."""
    c = raw(broker.port, "alias-max")
    assert c.connack.properties[ALIAS_MAX] == 3
    c.send_packet(Publish("a/t", b"x", 1, packet_id=1, properties={ALIAS: 3}))
    assert next_packet(c, "PUBACK").reason_code in (0, 0x10)
    c.send_packet(Publish("a/t", b"x", 1, packet_id=2, properties={ALIAS: 4}))
    expect_disconnect(c, 0x94)


@pytest.mark.broker_config(topic_alias_maximum=0)
def test_topic_aliases_disabled_any_alias_is_0x94(broker, raw):
    """Topic Alias Maximum 0: "the Client MUST NOT send any Topic Aliases on to the Server"
    [MQTT-3.2.2-18]; alias 1 is then greater than the maximum: DISCONNECT 0x94."""
    c = raw(broker.port, "alias-off")
    assert c.connack.properties.get(ALIAS_MAX, 0) == 0
    c.send_packet(Publish("a/t", b"x", 0, properties={ALIAS: 1}))
    expect_disconnect(c, 0x94)


def test_unknown_topic_alias_with_empty_topic_is_0x82(broker, raw):
    """An empty topic with an alias the client never set has no Topic Name: a Protocol Error,
    DISCONNECT 0x82 (sections 3.3.2.1, 3.3.2.3.4, 4.13)."""
    c = raw(broker.port, "alias-unknown")
    c.send_packet(Publish("", b"x", 0, properties={ALIAS: 5}))
    expect_disconnect(c, 0x82)


def test_empty_topic_without_alias_is_0x82(broker, raw):
    """"It is a Protocol Error if the Topic Name is zero length and there is no Topic Alias"
    [MQTT-3.3.2-1 / section 3.3.2.1]."""
    c = raw(broker.port, "alias-none")
    c.send_packet(Publish("", b"x", 0))
    expect_disconnect(c, 0x82)


def test_inbound_topic_alias_does_not_survive_the_connection(broker, raw):
    """"Topic Alias mappings exist only within a Network Connection and last only for the lifetime
    of that Network Connection" [MQTT-3.3.2-7]: after a reconnect (session resumed) the old alias
    is unknown, so an empty topic with it is a Protocol Error (0x82)."""
    c = raw(broker.port, "alias-life", {SESSION_EXPIRY: 60})
    c.send_packet(Publish("life/t", b"x", 1, packet_id=1, properties={ALIAS: 1}))
    next_packet(c, "PUBACK")
    c.send_packet(Disconnect(0))
    assert c.closed()
    c2 = raw(broker.port, "alias-life", {SESSION_EXPIRY: 60}, clean_start=False)
    assert c2.connack.session_present
    c2.send_packet(Publish("", b"y", 0, properties={ALIAS: 1}))
    expect_disconnect(c2, 0x82)


def test_outbound_topic_aliases_on_the_wire(broker, raw, paho):
    """A client announcing Topic Alias Maximum 2 in CONNECT: the first PUBLISH on a topic carries
    the topic and an alias, later ones an empty topic and the alias; never an alias above 2
    [MQTT-3.1.2-26], and a topic that finds no free alias goes out by name.

    "The Client uses this value to limit the number of Topic Aliases that it is willing to hold on
    this Connection. The Server MUST NOT send a Topic Alias in a PUBLISH packet to the Client
    greater than this value" [MQTT-3.1.2-26]; the receiver resolves an empty topic through the
    alias (section 3.3.2.3.4).
    """
    c = raw(broker.port, "oa-sub", {ALIAS_MAX: 2})
    assert raw_subscribe(c, [("oa/#", 0)]) == [0]
    pub = paho("oa-pub")
    topics = ["oa/a", "oa/a", "oa/b", "oa/b", "oa/c", "oa/c", "oa/a", "oa/b"]
    for i, t in enumerate(topics):
        pub.publish(t, str(i).encode(), qos=1)
    got = [next_packet(c, "PUBLISH") for _ in topics]
    assert until_pingresp(c) == []
    table = AliasTable(2)
    assert [table.resolve(p) for p in got] == topics
    assert [p.payload for p in got] == [str(i).encode() for i in range(len(topics))]
    # The first use of a topic: name and alias; the second: empty name and the same alias.
    a1, a2, b1, b2 = got[:4]
    assert a1.topic == "oa/a" and a1.properties[ALIAS] in (1, 2)
    assert a2.topic == "" and a2.properties[ALIAS] == a1.properties[ALIAS]
    assert b1.topic == "oa/b" and b1.properties[ALIAS] not in (None, a1.properties[ALIAS])
    assert b2.topic == "" and b2.properties[ALIAS] == b1.properties[ALIAS]
    # oa/c: both aliases are taken, so it needs its name on the wire (it may take an alias over).
    assert got[4].topic == "oa/c"


def test_no_outbound_aliases_without_topic_alias_maximum(broker, raw, paho):
    """Without Topic Alias Maximum in CONNECT (absent = 0) "the Server MUST NOT send any Topic
    Aliases to the Client" [MQTT-3.1.2-27]."""
    c = raw(broker.port, "oa-none")
    raw_subscribe(c, [("oan/#", 0)])
    pub = paho("oan-pub")
    for i in range(3):
        pub.publish("oan/t", b"%d" % i, qos=1)
    got = [next_packet(c, "PUBLISH") for _ in range(3)]
    assert all(p.topic == "oan/t" and ALIAS not in (p.properties or {}) for p in got)


def test_outbound_aliases_restart_on_a_new_connection(broker, raw, paho):
    """Unacknowledged QoS 1 messages re-sent on a new connection must not rely on aliases from the
    old one: mappings "last only for the lifetime of that Network Connection" [MQTT-3.3.2-7], so
    the first re-sent PUBLISH names its topic again."""
    c = raw(broker.port, "oar-sub", {ALIAS_MAX: 5, SESSION_EXPIRY: 60})
    raw_subscribe(c, [("oar/t", 1)])
    pub = paho("oar-pub")
    pub.publish("oar/t", b"1", qos=1)
    pub.publish("oar/t", b"2", qos=1)
    first = [next_packet(c, "PUBLISH") for _ in range(2)]
    assert [p.topic for p in first] == ["oar/t", ""]          # aliased on the first connection
    c.close()                                                  # no acks, no DISCONNECT
    offline(broker, "oar-sub")
    c2 = raw(broker.port, "oar-sub", {ALIAS_MAX: 5, SESSION_EXPIRY: 60}, clean_start=False)
    assert c2.connack.session_present
    again = [next_packet(c2, "PUBLISH") for _ in range(2)]
    table = AliasTable(5)
    assert [table.resolve(p) for p in again] == ["oar/t", "oar/t"]
    assert [p.payload for p in again] == [b"1", b"2"] and all(p.dup for p in again)


def test_outbound_alias_not_spent_on_a_message_too_large_for_the_client(broker, raw, paho):
    """A message larger than the client's Maximum Packet Size is not sent [MQTT-3.1.2-24] ("the
    Server MUST discard" it, [MQTT-3.1.2-25]). An alias the client never saw must not be used
    afterwards: the next, small message on that topic has to carry its topic name, else the client
    cannot resolve it (section 3.3.2.3.4)."""
    c = raw(broker.port, "oab-sub", {ALIAS_MAX: 5, MAX_PACKET: 128})
    raw_subscribe(c, [("oab/t", 0)])
    pub = paho("oab-pub")
    pub.publish("oab/t", b"x" * 300, qos=1)
    pub.publish("oab/t", b"small", qos=1)
    p = next_packet(c, "PUBLISH")
    assert p.payload == b"small"
    assert AliasTable(5).resolve(p) == "oab/t"
    assert until_pingresp(c) == []


# -- message expiry -------------------------------------------------------------------------------

def test_message_expiry_while_queued_for_an_offline_session(broker, paho):
    """A message whose Message Expiry Interval passes while it waits for an offline session is not
    delivered; one still alive is delivered with the remaining interval.

    - "If the Message Expiry Interval has passed and the Server has not managed to start onward
      delivery to a matching subscriber, then it MUST delete the copy of the message for that
      subscriber" [MQTT-3.3.2-5].
    - "The PUBLISH packet sent to a Client by the Server MUST contain a Message Expiry Interval
      set to the received value minus the time that the Application Message has been waiting in
      the Server" [MQTT-3.3.2-6].
    """
    sub = paho("exp-sub", session_expiry=300)
    sub.subscribe("exp/#", 1)
    sub.disconnect()
    offline(broker, "exp-sub")
    pub = paho("exp-pub")
    pub.publish("exp/short", b"short", qos=1, properties=pub_props(MessageExpiryInterval=1))
    pub.publish("exp/long", b"long", qos=1, properties=pub_props(MessageExpiryInterval=60))
    pub.publish("exp/none", b"none", qos=1)
    let_time_pass(broker, 1.3)
    sub2 = paho("exp-sub", session_expiry=300, clean=False)
    assert sub2.session_present
    msgs = sub2.wait_messages(2)
    # Delivery is in order: had exp/short been kept, it would have come first.
    assert [m.topic for m in msgs] == ["exp/long", "exp/none"]
    remaining = msgs[0].properties["MessageExpiryInterval"]
    assert 1 <= remaining < 60
    assert "MessageExpiryInterval" not in msgs[1].properties


def test_message_expiry_while_waiting_behind_the_receive_maximum(broker, raw, paho):
    """An online subscriber with Receive Maximum 1 that has not acknowledged: the next messages
    wait in its queue. One that expires there is dropped [MQTT-3.3.2-5]; the rest follow after
    the PUBACK with their remaining interval [MQTT-3.3.2-6]."""
    c = raw(broker.port, "expq-sub", {RECEIVE_MAX: 1})
    raw_subscribe(c, [("expq/#", 1)])
    pub = paho("expq-pub")
    pub.publish("expq/first", b"1", qos=1)
    pub.publish("expq/dies", b"2", qos=1, properties=pub_props(MessageExpiryInterval=1))
    pub.publish("expq/lives", b"3", qos=1, properties=pub_props(MessageExpiryInterval=60))
    first = next_packet(c, "PUBLISH")
    assert first.topic == "expq/first"
    let_time_pass(broker, 1.3)
    c.send_packet(PubAck(PUBACK, first.packet_id))
    nxt = next_packet(c, "PUBLISH")
    assert nxt.topic == "expq/lives"
    assert 1 <= nxt.properties[EXPIRY] < 60


def test_retained_message_expires(broker, paho):
    """Retained messages expire too: a new subscriber does not get one whose interval has passed,
    and gets a live one with the remaining interval [MQTT-3.3.2-5, MQTT-3.3.2-6]."""
    pub = paho("rexp-pub")
    pub.publish("rexp/short", b"s", qos=1, retain=True,
                properties=pub_props(MessageExpiryInterval=1))
    pub.publish("rexp/long", b"l", qos=1, retain=True,
                properties=pub_props(MessageExpiryInterval=60))
    let_time_pass(broker, 1.3)
    sub = paho("rexp-sub")
    sub.subscribe("rexp/#", 1)
    fence(pub, sub)
    msgs = unfenced(sub)
    assert [(m.topic, m.retain) for m in msgs] == [("rexp/long", True)]
    assert 1 <= msgs[0].properties["MessageExpiryInterval"] < 60


# -- request/response and other pass-through properties -------------------------------------------

def test_publish_properties_reach_the_subscriber_unchanged(broker, paho):
    """Response Topic, Correlation Data, Content Type, Payload Format Indicator and User
    Properties (order kept, repeated keys kept) reach the subscriber unchanged
    [MQTT-3.3.2-4, -15, -16, -17, -18, -20], at QoS 0 and QoS 1."""
    sub = paho("pt-sub")
    sub.subscribe("pt/#", 1)
    pub = paho("pt-pub")
    user = [("k", "1"), ("a", "x"), ("k", "2"), ("é", "ünïcode")]
    for qos in (0, 1):
        pub.publish(f"pt/{qos}", "grüße".encode(), qos=qos, properties=pub_props(
            ResponseTopic="pt/reply/here", CorrelationData=b"\x00\x01\xfe\xff",
            ContentType="text/plain; charset=utf-8", PayloadFormatIndicator=1,
            UserProperty=list(user)))
    for m in sub.wait_messages(2):
        p = m.properties
        assert m.payload == "grüße".encode()
        assert p["ResponseTopic"] == "pt/reply/here"
        assert p["CorrelationData"] == "0001feff"
        assert p["ContentType"] == "text/plain; charset=utf-8"
        assert p["PayloadFormatIndicator"] == 1
        assert [tuple(kv) for kv in p["UserProperty"]] == user


def test_invalid_utf8_with_payload_format_indicator_is_refused_0x99(broker, raw, paho):
    """Payload Format Indicator 1 says the payload is UTF-8; the broker checks
    (validate_utf8_payload, default on) and refuses one that is not: "the Server ... MAY ... send
    a PUBACK or PUBREC with Reason Code 0x99 (Payload format invalid)" [MQTT-3.3.2-4 /
    section 3.3.2.3.2]. QoS 1 gets PUBACK 0x99, QoS 2 PUBREC 0x99, QoS 0 is dropped; none of them
    is delivered, the connection stays up, a valid one passes."""
    sub = paho("pfi-sub")
    sub.subscribe("pfi/#", 1)
    c = raw(broker.port, "pfi-pub")
    bad = b"\xff\xfe not utf-8"
    c.send_packet(Publish("pfi/t", bad, 1, packet_id=1, properties={PFI: 1}))
    ack = next_packet(c, "PUBACK")
    assert (ack.packet_id, ack.reason_code) == (1, 0x99)
    c.send_packet(Publish("pfi/t", bad, 2, packet_id=2, properties={PFI: 1}))
    rec = next_packet(c, "PUBREC")
    assert (rec.packet_id, rec.reason_code) == (2, 0x99)
    c.send_packet(Publish("pfi/t", bad, 0, properties={PFI: 1}))
    c.send_packet(Publish("pfi/t", "ok ✓".encode(), 1, packet_id=3, properties={PFI: 1}))
    assert next_packet(c, "PUBACK").reason_code == 0
    # The same bytes without the indicator are just bytes.
    c.send_packet(Publish("pfi/t", bad, 1, packet_id=4))
    assert next_packet(c, "PUBACK").reason_code == 0
    msgs = sub.wait_messages(2)
    assert [m.payload for m in msgs] == ["ok ✓".encode(), bad]
    fence(paho("pfi-fence"), sub)
    assert len(unfenced(sub)) == 2


@pytest.mark.broker_config(validate_utf8_payload=False)
def test_utf8_validation_can_be_switched_off(broker, raw, paho):
    """validate_utf8_payload = false: the broker forwards without checking (the standard lets a
    Server skip the check, section 3.3.2.3.2); the receiver then decides."""
    sub = paho("pfo-sub")
    sub.subscribe("pfo/#", 1)
    c = raw(broker.port, "pfo-pub")
    c.send_packet(Publish("pfo/t", b"\xff", 1, packet_id=1, properties={PFI: 1}))
    assert next_packet(c, "PUBACK").reason_code == 0
    assert sub.wait_messages(1)[0].payload == b"\xff"


@pytest.mark.broker_config(response_information="reply/{client_id}/")
def test_response_information_when_requested(broker, raw):
    """Request Response Information 1: CONNACK carries Response Information (here the configured
    "reply/{client_id}/" with the client id filled in); 0 or absent: "The Server MUST NOT send
    Response Information" unless requested (section 3.1.2.11.6)."""
    c = raw(broker.port, "ri-1", {REQ_RESPONSE_INFO: 1})
    assert c.connack.properties[RESPONSE_INFO] == "reply/ri-1/"
    c0 = raw(broker.port, "ri-0", {REQ_RESPONSE_INFO: 0})
    assert RESPONSE_INFO not in (c0.connack.properties or {})
    cn = raw(broker.port, "ri-n")
    assert RESPONSE_INFO not in (cn.connack.properties or {})


def test_no_response_information_unless_configured(broker, raw):
    """Without response_information configured the request is answered without it (the Server
    "MAY" send it, section 3.2.2.3.15)."""
    c = raw(broker.port, "ri-unset", {REQ_RESPONSE_INFO: 1})
    assert RESPONSE_INFO not in (c.connack.properties or {})


def test_request_problem_information_0_no_reason_strings(broker, raw, make_broker):
    """Request Problem Information 0: the broker leaves the Reason String out of the CONNACK and
    DISCONNECT it sends for errors (section 3.1.2.11.7 allows it there and forbids it everywhere
    else [MQTT-3.1.2-29]; cymqtt leaves it out); with the default (1) the reason string is sent
    (control)."""
    # DISCONNECT for a broken rule
    quiet = raw(broker.port, "pi-quiet", {PROBLEM_INFO: 0})
    quiet.send_packet(Publish("a", b"x", 0, properties={ALIAS: 0}))
    d = next_packet(quiet, "DISCONNECT")
    assert d.reason_code == 0x94 and REASON_STRING not in (d.properties or {})
    loud = raw(broker.port, "pi-loud")
    loud.send_packet(Publish("a", b"x", 0, properties={ALIAS: 0}))
    d = next_packet(loud, "DISCONNECT")
    assert d.reason_code == 0x94 and d.properties[REASON_STRING]
    # DISCONNECT 0x8E on takeover
    taken = raw(broker.port, "pi-take", {PROBLEM_INFO: 0})
    raw(broker.port, "pi-take")
    d = next_packet(taken, "DISCONNECT")
    assert d.reason_code == 0x8E and REASON_STRING not in (d.properties or {})
    # CONNACK refusing the connection
    other = make_broker(redirect_to="other:1883")
    ack = raw(other.port, "pi-redirect", {PROBLEM_INFO: 0}, expect=0x9C).connack
    assert REASON_STRING not in ack.properties and ack.properties[SERVER_REFERENCE]
    ack = raw(other.port, "pi-redirect2", expect=0x9C).connack
    assert ack.properties[REASON_STRING]


# -- PUBACK reason codes --------------------------------------------------------------------------

def test_puback_no_matching_subscribers(broker, raw, paho):
    """PUBACK 0x10 (No matching subscribers) when nobody subscribes (section 3.4.2.1), 0 once
    someone does."""
    c = raw(broker.port, "nms")
    c.send_packet(Publish("nms/t", b"x", 1, packet_id=1))
    assert next_packet(c, "PUBACK").reason_code == 0x10
    paho("nms-sub").subscribe("nms/t", 1)
    c.send_packet(Publish("nms/t", b"x", 1, packet_id=2))
    assert next_packet(c, "PUBACK").reason_code == 0
