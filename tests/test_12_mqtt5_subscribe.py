"""MQTT 5 subscriptions, black-box over real sockets (GitHub issue "MQTT 5.0, all of it"): shared
subscriptions and their strategies, subscription options (no local, retain as published, retain
handling) and subscription identifiers.

paho-mqtt in MQTT 5 mode for the application view, `RawClient` (the compiled codec) where the
bytes matter. Nothing waits for a fixed time to see that something did *not* happen: a fence
(mqtt5_helpers.py) proves it instead.

Spec references are to MQTT 5.0 (OASIS, 2019): [MQTT-x.y.z-n] normative statements, or sections.
"""
from __future__ import annotations

import itertools

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.subscribeoptions import SubscribeOptions

from cymqtt._fast.codec import PubAck, Publish, Subscribe
from helpers_paho import V5, V311, props, wait_until
from mqtt5_helpers import (
    PUBACK, SUB_ID, expect_disconnect, fence, next_packet, offline, raw_subscribe, unfenced,
    until_pingresp,
)


# -- shared subscriptions -------------------------------------------------------------------------

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


# -- subscription options and identifiers ---------------------------------------------------------

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
