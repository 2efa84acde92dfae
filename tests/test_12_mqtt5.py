"""MQTT 5 features, black-box over real sockets (GitHub issue "MQTT 5.0, all of it").

paho-mqtt in MQTT 5 mode for the application view, `RawClient` (the compiled codec) where the
bytes matter: reason codes, properties, topic aliases on the wire, flow control. Authentication
(AUTH, SCRAM) lives in test_11_auth.py; plain will behaviour in test_05_will.py.

Nothing here waits for a fixed time to see that something did *not* happen. A "fence" proves it
instead: the broker handles one connection's packets in order and writes one client's frames in
order, so when a PINGRESP (raw clients) or a marker message published after the event (paho
clients) arrives, anything the event would have produced has arrived before it. Timed rules run
through `bt.sweep(advance)`; only message expiry, which the broker stamps with its clock when a
message arrives, needs real time to pass (about a second, with intervals of 1 s).

Spec references are to MQTT 5.0 (OASIS, 2019): [MQTT-x.y.z-n] normative statements, or sections.
"""
from __future__ import annotations

import itertools
import uuid

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from _testbase import RawClient
from cymqtt._fast.codec import Connect, Disconnect, Ping, PubAck, Publish, Subscribe
from helpers_paho import V5, V311, PahoClient, props, wait_until

PUBACK, PUBREC, PUBREL, PUBCOMP = 4, 5, 6, 7

# Property identifiers (section 2.2.2.2).
PFI, EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION = 0x01, 0x02, 0x03, 0x08, 0x09
SUB_ID, SESSION_EXPIRY, SERVER_KEEP_ALIVE, PROBLEM_INFO = 0x0B, 0x11, 0x13, 0x17
REQ_RESPONSE_INFO, RESPONSE_INFO, SERVER_REFERENCE, REASON_STRING = 0x19, 0x1A, 0x1C, 0x1F
RECEIVE_MAX, ALIAS_MAX, ALIAS, MAX_QOS, RETAIN_AVAILABLE = 0x21, 0x22, 0x23, 0x24, 0x25
USER_PROPERTY, MAX_PACKET = 0x26, 0x27
WILDCARD_AVAILABLE, SUB_ID_AVAILABLE, SHARED_AVAILABLE = 0x28, 0x29, 0x2A


# -- fixtures and helpers -----------------------------------------------------------------------

@pytest.fixture
def raw():
    """raw(port, client_id, properties=..., expect=0) -> a RawClient past its MQTT 5 CONNACK
    (`.connack`); expect=None accepts any CONNACK."""
    made: list[RawClient] = []

    def make(port: int, client_id: str, properties: dict | None = None, *,
             clean_start: bool = True, keepalive: int = 60, expect: int | None = 0,
             **connect_kw) -> RawClient:
        c = RawClient(port, 5)
        made.append(c)
        c.send_packet(Connect(client_id, version=5, clean_start=clean_start,
                              keepalive=keepalive, properties=properties, **connect_kw))
        ack = c.recv_packet()
        assert ack is not None and ack.name == "CONNACK", f"expected CONNACK, got {ack!r}"
        if expect is not None:
            assert ack.reason_code == expect, f"CONNACK reason 0x{ack.reason_code:02X}"
        c.connack = ack
        return c

    yield make
    for c in made:
        c.close()


def next_packet(c: RawClient, name: str | None = None, timeout: float = 5.0):
    p = c.recv_packet(timeout)
    assert p is not None, "the broker closed the connection"
    if name is not None:
        assert p.name == name, f"expected {name}, got {p!r}"
    return p


def expect_disconnect(c: RawClient, reason: int) -> None:
    """The broker sends DISCONNECT with `reason` and closes the connection."""
    p = c.recv_packet()
    assert p is not None, f"connection closed without DISCONNECT 0x{reason:02X}"
    assert p.name == "DISCONNECT", f"expected DISCONNECT 0x{reason:02X}, got {p!r}"
    assert p.reason_code == reason, f"DISCONNECT 0x{p.reason_code:02X}, expected 0x{reason:02X}"
    assert c.closed(), "the connection stayed open after DISCONNECT"


def until_pingresp(c: RawClient) -> list:
    """Fence: PINGREQ, then every packet that arrives before the PINGRESP."""
    c.send_packet(Ping())
    got = []
    while True:
        p = next_packet(c)
        if p.name == "PINGRESP":
            return got
        got.append(p)


def raw_subscribe(c: RawClient, topics: list, pid: int = 1, properties: dict | None = None):
    c.send_packet(Subscribe(pid, topics, properties))
    ack = next_packet(c, "SUBACK")
    assert ack.packet_id == pid
    return ack.reason_codes


def fence(pub: PahoClient, *subs: PahoClient) -> None:
    """Fence for paho subscribers: a marker published now reaches each of `subs` after anything
    routed to it before."""
    for s in subs:
        topic = f"fence/{s.client_id}"
        if not getattr(s, "_fenced", False):
            s.subscribe(topic, 1)
            s._fenced = True
        token = uuid.uuid4().hex.encode()
        pub.publish(topic, token, qos=1)
        wait_until(lambda: token in s.payloads(topic), what=f"fence marker at {s.client_id}")


def unfenced(c: PahoClient) -> list:
    return [m for m in c.messages if not m.topic.startswith("fence/")]


def offline(bt, client_id: str) -> None:
    """Wait until the broker has handled the loss of `client_id`'s connection."""
    def gone():
        return bt.call(lambda: all(c.client_id != client_id or c.session is None
                                   for c in bt.broker.connections))
    wait_until(gone, what=f"{client_id} to be seen offline")


def pub_props(**values) -> Properties:
    return props(PacketTypes.PUBLISH, **values)


def let_time_pass(bt, seconds: float) -> None:
    """Real time must pass for deadlines the broker stamped with its clock (message expiry)."""
    end = bt.call(bt.broker.now) + seconds
    wait_until(lambda: bt.call(bt.broker.now) >= end, timeout=seconds + 5, interval=0.05,
               what=f"{seconds} s on the broker's clock")


class AliasTable:
    """The receiving side of outbound topic aliases, as section 3.3.2.3.4 describes it."""

    def __init__(self, maximum: int) -> None:
        self.maximum = maximum
        self.topics: dict[int, str] = {}

    def resolve(self, pkt) -> str:
        alias = (pkt.properties or {}).get(ALIAS)
        if alias is None:
            assert pkt.topic, "PUBLISH with neither topic nor alias"
            return pkt.topic
        assert 1 <= alias <= self.maximum, f"alias {alias} outside 1..{self.maximum}"
        if pkt.topic:
            self.topics[alias] = pkt.topic
            return pkt.topic
        assert alias in self.topics, f"alias {alias} used before the broker set it"
        return self.topics[alias]


# -- 1. topic aliases ---------------------------------------------------------------------------

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


# -- 2. message expiry --------------------------------------------------------------------------

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


# -- 3. will delay and session expiry -----------------------------------------------------------

def _will(delay: int | None, topic: str = "will/t", payload: bytes = b"gone") -> dict:
    wp = None
    if delay is not None:
        wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=delay)
    return dict(topic=topic, payload=payload, qos=1, properties=wp)


def test_will_delay_publishes_after_the_delay(broker, paho):
    """"The Server delays publishing the Client's Will Message until the Will Delay Interval has
    passed or the Session ends, whichever happens first" (section 3.1.3.2.2): with a session
    expiry of 60 s and a will delay of 5 s, the will goes at 5 s, not at once."""
    watcher = paho("wd-watch")
    watcher.subscribe("will/#", 1)
    c = paho("wd-client", session_expiry=60, will=_will(5))
    c.drop()
    offline(broker, "wd-client")
    fence(watcher, watcher)
    assert unfenced(watcher) == []
    broker.sweep(4)
    fence(watcher, watcher)
    assert unfenced(watcher) == []
    broker.sweep(5.5)
    assert [m.payload for m in watcher.wait_messages(1, topic="will/t")] == [b"gone"]


def test_will_goes_when_the_session_ends_before_the_delay(broker, paho):
    """Will delay 60 s, session expiry 2 s: the will is published when the session ends, at 2 s
    (section 3.1.3.2.2: "whichever happens first"; [MQTT-3.1.2-8])."""
    watcher = paho("we-watch")
    watcher.subscribe("will/#", 1)
    c = paho("we-client", session_expiry=2, will=_will(60))
    c.drop()
    offline(broker, "we-client")
    fence(watcher, watcher)
    assert unfenced(watcher) == []
    broker.sweep(2.5)
    assert [m.payload for m in watcher.wait_messages(1, topic="will/t")] == [b"gone"]
    assert broker.call(lambda: "we-client" not in broker.broker.sessions)


def test_will_without_session_expiry_goes_at_once_despite_delay(broker, paho):
    """Session Expiry Interval 0: the session ends when the connection closes, so a will with a
    delay of 60 s is published at once (section 3.1.3.2.2)."""
    watcher = paho("w0-watch")
    watcher.subscribe("will/#", 1)
    c = paho("w0-client", will=_will(60))
    c.drop()
    assert [m.payload for m in watcher.wait_messages(1, topic="will/t")] == [b"gone"]


def test_reconnect_inside_the_will_delay_cancels_the_will(broker, paho):
    """"The Will Message MUST be published after the Network Connection is subsequently closed and
    either the Will Delay Interval has elapsed or the Session ends, unless ... a new Network
    Connection for the ClientID is opened before the Will Delay Interval has elapsed"
    [MQTT-3.1.2-8]."""
    watcher = paho("wr-watch")
    watcher.subscribe("will/#", 1)
    c = paho("wr-client", session_expiry=60, will=_will(5))
    c.drop()
    offline(broker, "wr-client")
    c2 = paho("wr-client", session_expiry=60, clean=False)
    assert c2.session_present
    broker.sweep(10)
    fence(watcher, watcher)
    assert unfenced(watcher) == []
    c2.disconnect()                        # normal DISCONNECT: no will either
    offline(broker, "wr-client")
    broker.sweep(65)                       # past the session's end (60 s) as well
    assert broker.call(lambda: "wr-client" not in broker.broker.sessions)
    fence(watcher, watcher)
    assert unfenced(watcher) == []


def test_takeover_with_clean_start_0_and_will_delay_sends_no_will(broker, paho):
    """Takeover by a connection with Clean Start 0: "the Will Message for the existing connection
    is sent unless the new connection specifies Clean Start of 0 and the Will Delay is greater
    than zero" (section 3.1.4); the old connection gets DISCONNECT 0x8E [MQTT-3.1.4-3]."""
    watcher = paho("wt-watch")
    watcher.subscribe("will/#", 1)
    old = paho("wt-client", session_expiry=60, will=_will(10))
    new = paho("wt-client", session_expiry=60, clean=False)
    assert new.session_present
    assert old.wait_disconnected() == 0x8E
    broker.sweep(20)
    fence(watcher, watcher)
    assert unfenced(watcher) == []


def test_takeover_with_clean_start_1_sends_the_will(broker, paho):
    """Takeover by a connection with Clean Start 1 ends the old session, so the old connection's
    will is sent despite its delay: "if the new Network Connection has Clean Start set to 1 then
    if the existing Network Connection has a Will Message it will be sent because the original
    Session is ended on the takeover" (section 3.1.4, non-normative)."""
    watcher = paho("wt1-watch")
    watcher.subscribe("will/#", 1)
    old = paho("wt1-client", session_expiry=60, will=_will(30))
    paho("wt1-client", session_expiry=60, clean=True)
    assert old.wait_disconnected() == 0x8E
    assert [m.payload for m in watcher.wait_messages(1, topic="will/t")] == [b"gone"]


def test_disconnect_with_will_message_respects_the_delay(broker, paho):
    """DISCONNECT with Reason Code 0x04 (Disconnect with Will Message) publishes the will
    (section 3.14.2.1), still after the Will Delay Interval."""
    watcher = paho("wdw-watch")
    watcher.subscribe("will/#", 1)
    c = paho("wdw-client", session_expiry=60, will=_will(5))
    c.disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))
    offline(broker, "wdw-client")
    fence(watcher, watcher)
    assert unfenced(watcher) == []
    broker.sweep(5.5)
    assert [m.payload for m in watcher.wait_messages(1, topic="will/t")] == [b"gone"]


# -- 4. shared subscriptions --------------------------------------------------------------------

def _members(paho, ids, filt, qos=1, protocol=V5):
    members = []
    for cid in ids:
        m = paho(cid, protocol=protocol)
        assert m.subscribe(filt, qos) == [qos]
        members.append(m)
    return members


def _spread(pub, members, topic, n, prefix="m"):
    """Publish n messages; wait until the members hold n between them; return the owner of
    each payload (and check no payload went to two members or twice to one)."""
    for i in range(n):
        pub.publish(topic, f"{prefix}{i}".encode(), qos=1)
    wait_until(lambda: sum(len(unfenced(m)) for m in members) >= n,
               what=f"{n} messages across the group")
    fence(pub, *members)
    owner: dict[bytes, str] = {}
    for m in members:
        for msg in unfenced(m):
            assert msg.payload not in owner, f"{msg.payload!r} delivered twice"
            owner[msg.payload] = m.client_id
    assert sorted(owner) == sorted(f"{prefix}{i}".encode() for i in range(n))
    return owner


def test_shared_round_robin_each_message_to_exactly_one_member(broker, paho):
    """"each Application Message matching a Shared Subscription is sent to only one Client in each
    Share Group" (section 4.8.2); the default strategy, round_robin, spreads them evenly."""
    members = _members(paho, ["rr-1", "rr-2", "rr-3"], "$share/g/rr/t")
    pub = paho("rr-pub")
    owner = _spread(pub, members, "rr/t", 30)
    counts = {m.client_id: list(owner.values()).count(m.client_id) for m in members}
    assert counts == {"rr-1": 10, "rr-2": 10, "rr-3": 10}


@pytest.mark.broker_config(shared_subscription_strategy="random")
def test_shared_random_strategy(broker, paho):
    """shared_subscription_strategy = "random": every message to exactly one member, both members
    used, and not in the strict alternation round robin would give (chance 2**-39)."""
    members = _members(paho, ["rnd-1", "rnd-2"], "$share/g/rnd/t")
    pub = paho("rnd-pub")
    owner = _spread(pub, members, "rnd/t", 40)
    seq = [owner[f"m{i}".encode()] for i in range(40)]
    assert set(seq) == {"rnd-1", "rnd-2"}
    assert any(a == b for a, b in itertools.pairwise(seq)), "random strategy alternates strictly"


@pytest.mark.broker_config(shared_subscription_strategy="hash_clientid")
def test_shared_hash_clientid_same_publisher_same_member(broker, paho):
    """shared_subscription_strategy = "hash_clientid": all messages of one publisher go to the same
    member (interleaved publishers; round robin would scatter each publisher's messages)."""
    members = _members(paho, ["hc-1", "hc-2", "hc-3"], "$share/g/hc/t")
    pubs = [paho(f"hc-pub-{k}") for k in range(4)]
    for i in range(6):
        for k, p in enumerate(pubs):
            p.publish("hc/t", f"p{k}-{i}".encode(), qos=1)
    wait_until(lambda: sum(len(unfenced(m)) for m in members) >= 24, what="24 messages")
    fence(pubs[0], *members)
    by_pub: dict[str, set] = {}
    total = 0
    for m in members:
        for msg in unfenced(m):
            total += 1
            by_pub.setdefault(msg.payload.decode().split("-")[0], set()).add(m.client_id)
    assert total == 24
    assert all(len(owners) == 1 for owners in by_pub.values()), by_pub


@pytest.mark.broker_config(shared_subscription_strategy="hash_topic")
def test_shared_hash_topic_same_topic_same_member(broker, paho):
    """shared_subscription_strategy = "hash_topic": every message on one topic goes to the same
    member, whoever publishes it."""
    members = _members(paho, ["ht-1", "ht-2", "ht-3"], "$share/g/ht/#")
    pubs = [paho("ht-pub-a"), paho("ht-pub-b")]
    # Five topics over three members: round robin would move each topic from member to member.
    for i in range(4):
        for k in range(5):
            pubs[(i + k) % 2].publish(f"ht/{k}", f"{k}-{i}".encode(), qos=1)
    wait_until(lambda: sum(len(unfenced(m)) for m in members) >= 20, what="20 messages")
    fence(pubs[0], *members)
    by_topic: dict[str, set] = {}
    for m in members:
        for msg in unfenced(m):
            by_topic.setdefault(msg.topic, set()).add(m.client_id)
    assert sorted(by_topic) == [f"ht/{k}" for k in range(5)]
    assert all(len(owners) == 1 for owners in by_topic.values()), by_topic


@pytest.mark.broker_config(shared_subscription_strategy="sticky")
def test_shared_sticky_strategy_keeps_one_member_until_it_leaves(broker, paho):
    """shared_subscription_strategy = "sticky": one member gets everything while it stays
    connected; when it leaves, another member takes over, again alone."""
    members = _members(paho, ["st-1", "st-2", "st-3"], "$share/g/st/t")
    pub = paho("st-pub")
    owner = _spread(pub, members, "st/t", 9, "a")
    (first,) = set(owner.values())
    leaving = next(m for m in members if m.client_id == first)
    leaving.disconnect()
    offline(broker, first)
    rest = [m for m in members if m is not leaving]
    for m in rest:
        m.clear()
    owner2 = _spread(pub, rest, "st/t", 9, "b")
    assert len(set(owner2.values())) == 1 and first not in owner2.values()


def test_queue_prefix_is_a_shared_subscription(broker, paho):
    """`$queue/{filter}` (EMQX's group-less form) shares like `$share/{group}/{filter}`."""
    members = _members(paho, ["q-1", "q-2"], "$queue/q/t")
    pub = paho("q-pub")
    owner = _spread(pub, members, "q/t", 10)
    assert sorted(owner.values()).count("q-1") == 5


def test_shared_subscriptions_work_for_mqtt311_clients(broker, paho):
    """Shared subscriptions are an MQTT 5 feature the broker also gives 3.1.1 clients (as
    mosquitto and EMQX do): the $share and $queue filters load-balance for them too."""
    members = _members(paho, ["v3-1", "v3-2"], "$share/g311/v3/t", protocol=V311)
    pub = paho("v3-pub", protocol=V311)
    owner = _spread(pub, members, "v3/t", 10)
    assert sorted(owner.values()).count("v3-1") == 5
    queue = _members(paho, ["v3q-1", "v3q-2"], "$queue/v3q/t", protocol=V311)
    owner = _spread(pub, queue, "v3q/t", 6)
    assert sorted(owner.values()).count("v3q-1") == 3


def test_groups_and_plain_subscribers_each_get_every_message(broker, paho):
    """Each Share Group gets each message once, and a non-shared subscription on the same filter
    gets every message (section 4.8.2)."""
    plain = paho("mix-plain")
    plain.subscribe("mix/t", 1)
    g1 = _members(paho, ["mix-g1-a", "mix-g1-b"], "$share/g1/mix/t")
    g2 = _members(paho, ["mix-g2-a", "mix-g2-b"], "$share/g2/mix/t")
    pub = paho("mix-pub")
    for i in range(10):
        pub.publish("mix/t", b"%d" % i, qos=1)
    assert len(plain.wait_messages(10)) == 10
    for group in (g1, g2):
        wait_until(lambda: sum(len(unfenced(m)) for m in group) >= 10, what="group share")
    fence(pub, plain, *g1, *g2)
    assert len(unfenced(plain)) == 10
    for group in (g1, g2):
        payloads = sorted(msg.payload for m in group for msg in unfenced(m))
        assert payloads == sorted(b"%d" % i for i in range(10))


def test_no_retained_messages_on_a_shared_subscribe(broker, paho):
    """Retained messages are not sent when a Shared Subscription is established: "When a new
    Non-shared Subscription is made, the last retained message, if any, on each matching topic
    name is sent to the Client" (section 3.3.1.3) - non-shared only, as section 4.8.2 repeats for
    Shared Subscriptions; a plain subscriber does get it (control)."""
    pub = paho("srt-pub")
    pub.publish("srt/t", b"retained", qos=1, retain=True)
    shared = paho("srt-shared")
    shared.subscribe("$share/g/srt/t", 1)
    plain = paho("srt-plain")
    plain.subscribe("srt/t", 1)
    fence(pub, shared, plain)
    assert unfenced(shared) == []
    assert [(m.payload, m.retain) for m in unfenced(plain)] == [(b"retained", True)]


def test_no_local_on_a_shared_subscription_is_0x82(broker, raw):
    """"It is a Protocol Error to set the No Local bit to 1 on a Shared Subscription"
    [MQTT-3.8.3-4]: DISCONNECT 0x82."""
    c = raw(broker.port, "snl")
    c.send_packet(Subscribe(1, [("$share/g/snl/t", 1 | 0x04)]))
    expect_disconnect(c, 0x82)


def _raw_member_gets_one(broker, raw, paho, cid, topic, qos):
    """A raw member and a paho member in $share/g/{topic}; publish until the raw one holds a
    message; returns (raw client, its PUBLISH, paho member, publisher)."""
    member = raw(broker.port, cid)
    assert raw_subscribe(member, [(f"$share/g/{topic}", qos)]) == [qos]
    other = paho(cid + "-other")
    other.subscribe(f"$share/g/{topic}", qos)
    pub = paho(cid + "-pub")
    pub.publish(topic, b"first", qos=qos)
    pub.publish(topic, b"second", qos=qos)
    p = next_packet(member, "PUBLISH")
    assert p.payload in (b"first", b"second") and p.qos == qos
    return member, p, other, pub


def test_shared_unacked_qos1_is_redispatched_when_the_member_leaves(broker, raw, paho):
    """A member whose session ends with a QoS 1 message unacknowledged: the message goes to
    another member of the group. "If the Client's Session terminates before the Client reconnects,
    the Server SHOULD send the Application Message to another Client that is subscribed to the
    same Shared Subscription" (section 4.8.2)."""
    member, p, other, pub = _raw_member_gets_one(broker, raw, paho, "rd1", "rd1/t", 1)
    member.close()                       # session expiry 0: the session ends with the socket
    wait_until(lambda: p.payload in other.payloads("rd1/t"),
               what="the unacknowledged message at the other member")
    fence(pub, other)
    assert sorted(other.payloads("rd1/t")) == [b"first", b"second"]


def test_shared_qos2_is_not_redispatched_when_the_member_leaves(broker, raw, paho):
    """QoS 2: "If the Client's Session terminates before the Client reconnects, the Server MUST NOT
    send the Application Message to any other subscribed Client" [MQTT-4.8.2-5]."""
    member, p, other, pub = _raw_member_gets_one(broker, raw, paho, "rd2", "rd2/t", 2)
    member.close()
    offline(broker, "rd2")
    broker.sweep(1)
    fence(pub, other)
    assert p.payload not in other.payloads("rd2/t")


def test_shared_message_refused_by_the_member_is_not_redispatched(broker, raw, paho):
    """"If a Client responds with a PUBACK or PUBREC containing a Reason Code of 0x80 or greater to
    a PUBLISH packet from the Server, the Server MUST discard the Application Message and not
    attempt to send it to any other Subscriber" [MQTT-4.8.2-6]."""
    member, p, other, pub = _raw_member_gets_one(broker, raw, paho, "rd3", "rd3/t", 1)
    member.send_packet(PubAck(PUBACK, p.packet_id, 0x80))
    assert until_pingresp(member) == []      # the refusal is handled before the socket closes
    member.close()
    offline(broker, "rd3")
    broker.sweep(1)
    fence(pub, other)
    assert p.payload not in other.payloads("rd3/t")


# -- 5. subscription options and identifiers ----------------------------------------------------

def test_no_local(broker, paho):
    """"If the value [of No Local] is 1, Application Messages MUST NOT be forwarded to a connection
    with a ClientID equal to the ClientID of the publishing connection" [MQTT-3.8.3-3]; the same
    client's subscription without No Local gets its own message (control), and another client
    gets both."""
    a = paho("nl-a")
    a.subscribe("nl/local", options=SubscribeOptions(qos=1, noLocal=True))
    a.subscribe("nl/echo", options=SubscribeOptions(qos=1, noLocal=False))
    b = paho("nl-b")
    b.subscribe("nl/#", 1)
    a.publish("nl/local", b"1", qos=1)
    a.publish("nl/echo", b"2", qos=1)
    assert [m.topic for m in b.wait_messages(2)] == ["nl/local", "nl/echo"]
    fence(b, a)
    assert [m.topic for m in unfenced(a)] == ["nl/echo"]


def test_retain_as_published(broker, paho):
    """Retain As Published 1: the RETAIN flag as the publisher set it [MQTT-3.3.1-13]; 0: RETAIN
    cleared when forwarding [MQTT-3.3.1-12]."""
    keep = paho("rap-keep")
    keep.subscribe("rap/t", options=SubscribeOptions(qos=1, retainAsPublished=True))
    clear = paho("rap-clear")
    clear.subscribe("rap/t", options=SubscribeOptions(qos=1, retainAsPublished=False))
    pub = paho("rap-pub")
    pub.publish("rap/t", b"r", qos=1, retain=True)
    pub.publish("rap/t", b"n", qos=1, retain=False)
    assert [(m.payload, m.retain) for m in keep.wait_messages(2)] == [(b"r", True), (b"n", False)]
    assert [(m.payload, m.retain) for m in clear.wait_messages(2)] == [(b"r", False),
                                                                       (b"n", False)]


@pytest.mark.parametrize("handling, expected", [(0, 2), (1, 1), (2, 0)])
def test_retain_handling(broker, paho, handling, expected):
    """Retain Handling, subscribing twice to the same filter after a retained message:
    0 - sent at every subscribe [MQTT-3.3.1-9]; 1 - only if the subscription did not exist
    [MQTT-3.3.1-10]; 2 - never [MQTT-3.3.1-11]. Retained messages sent for a subscribe have
    RETAIN 1 (section 3.3.1.3), whatever Retain As Published says."""
    pub = paho(f"rh{handling}-pub")
    pub.publish("rh/t", b"kept", qos=1, retain=True)
    sub = paho(f"rh{handling}-sub")
    for _ in range(2):
        sub.subscribe("rh/t", options=SubscribeOptions(qos=1, retainHandling=handling))
        fence(pub, sub)
    got = unfenced(sub)
    assert [(m.payload, m.retain) for m in got] == [(b"kept", True)] * expected


def test_subscription_identifiers_all_matching_ones_go_with_the_message(broker, paho):
    """Overlapping subscriptions with identifiers 1 and 268,435,455 (the smallest and largest,
    section 3.8.2.1.2) and one without: one message carrying both identifiers [MQTT-3.3.4-3];
    a message matching only the first carries only 1 [MQTT-3.3.4-4 / section 3.3.2.3.8]."""
    sub = paho("sid-sub")
    sub.subscribe("sid/#", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=1))
    sub.subscribe("sid/+/x", 1,
                  properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=268435455))
    sub.subscribe("sid/a/x", 1)
    pub = paho("sid-pub")
    pub.publish("sid/a/x", b"both", qos=1)
    pub.publish("sid/b", b"one", qos=1)
    both, one = sub.wait_messages(2)
    assert both.payload == b"both"
    assert sorted(both.properties["SubscriptionIdentifier"]) == [1, 268435455]
    assert one.payload == b"one" and one.properties["SubscriptionIdentifier"] == [1]
    fence(pub, sub)
    assert len(unfenced(sub)) == 2        # overlapping subscriptions: one copy [MQTT-3.3.4-2]


def test_subscription_identifier_on_retained_and_replaced_on_resubscribe(broker, paho):
    """The identifier goes with retained messages sent for the subscribe, and a new SUBSCRIBE to
    the same filter replaces the subscription, identifier included [MQTT-3.8.4-3]."""
    pub = paho("sidr-pub")
    pub.publish("sidr/t", b"old", qos=1, retain=True)
    sub = paho("sidr-sub")
    sub.subscribe("sidr/t", 1, properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=5))
    (retained,) = sub.wait_messages(1)
    assert retained.retain and retained.properties["SubscriptionIdentifier"] == [5]
    sub.subscribe("sidr/t", options=SubscribeOptions(qos=1, retainHandling=2),
                  properties=props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=6))
    pub.publish("sidr/t", b"new", qos=1)
    msgs = sub.wait_messages(2)
    assert msgs[1].payload == b"new" and msgs[1].properties["SubscriptionIdentifier"] == [6]


def test_subscription_identifier_zero_is_a_protocol_error(broker, raw):
    """"It is a Protocol Error if the Subscription Identifier has a value of 0"
    (section 3.8.2.1.2): DISCONNECT 0x82."""
    c = raw(broker.port, "sid0")
    # Built by hand: SUBSCRIBE id 1, properties [0x0B 0x00], filter "a", options QoS 0.
    body = b"\x00\x01" + b"\x02\x0b\x00" + b"\x00\x01a\x00"
    c.send(bytes([0x82, len(body)]) + body)
    expect_disconnect(c, 0x82)


def test_client_publish_with_subscription_identifier_is_a_protocol_error(broker, raw):
    """"A PUBLISH packet sent from a Client to a Server MUST NOT contain a Subscription
    Identifier" [MQTT-3.3.4-6]: DISCONNECT 0x82."""
    c = raw(broker.port, "sidpub")
    c.send_packet(Publish("a/t", b"x", 0, properties={SUB_ID: [3]}))
    expect_disconnect(c, 0x82)


# -- 6. request/response and other pass-through properties --------------------------------------

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


# -- 7. redirection and server capabilities -----------------------------------------------------

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


# -- 8. flow control ----------------------------------------------------------------------------

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
    assert broker.call(lambda: broker.broker.sessions["rm-sub"].queued) == 3
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


# -- session expiry details the MQTT 5 client can get wrong ------------------------------------

def test_disconnect_setting_session_expiry_after_zero_is_0x82(broker, raw):
    """"If the Session Expiry Interval in the CONNECT packet was zero, then it is a Protocol Error
    to set a non-zero Session Expiry Interval in the DISCONNECT packet sent by the Client"
    [MQTT-3.14.2-2]: the broker answers DISCONNECT 0x82."""
    c = raw(broker.port, "sx0")
    c.send_packet(Disconnect(0, {SESSION_EXPIRY: 30}))
    expect_disconnect(c, 0x82)


def test_puback_no_matching_subscribers(broker, raw, paho):
    """PUBACK 0x10 (No matching subscribers) when nobody subscribes (section 3.4.2.1), 0 once
    someone does."""
    c = raw(broker.port, "nms")
    c.send_packet(Publish("nms/t", b"x", 1, packet_id=1))
    assert next_packet(c, "PUBACK").reason_code == 0x10
    paho("nms-sub").subscribe("nms/t", 1)
    c.send_packet(Publish("nms/t", b"x", 1, packet_id=2))
    assert next_packet(c, "PUBACK").reason_code == 0
