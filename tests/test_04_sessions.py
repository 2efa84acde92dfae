"""Sessions: takeover, persistent sessions, session expiry, offline queues and their limits,
redelivery with DUP, and inbound QoS 2 de-duplication (GitHub issue "The broker core").

Real sockets and real clients: paho-mqtt (3.1.1 and 5) where a normal client fits, RawClient
where the test must control acknowledgements or see the exact flags. `broker.sweep(advance)`
runs the broker's timed rules as if `advance` seconds had passed, so nothing waits for expiry.
"""
from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes

from cymqtt import sys_topics
from cymqtt._fast.codec import Connect, Disconnect, PubAck, Publish, Subscribe
from helpers_paho import V5, V311, props, wait_until

PUBACK, PUBREC, PUBREL, PUBCOMP = 4, 5, 6, 7


def connect_raw(raw_client, client_id: str, version: int = 4, *, present: bool | None = None,
                **kw):
    """A RawClient that sent CONNECT and got CONNACK 0 (with session present as given)."""
    c = raw_client(version)
    c.send_packet(Connect(client_id, version=version, **kw))
    ack = c.recv_packet()
    assert ack is not None and ack.name == "CONNACK" and ack.reason_code == 0, ack
    if present is not None:
        assert ack.session_present is present
    return c


def subscribe_raw(c, topic: str, qos: int, pid: int = 1) -> None:
    c.send_packet(Subscribe(pid, [(topic, qos)]))
    ack = c.recv_packet()
    assert ack.name == "SUBACK" and ack.reason_codes == [qos], ack


def session(bt, client_id: str):
    return bt.call(lambda: bt.broker.session(client_id))


def wait_offline(bt, client_id: str) -> None:
    """Wait until the broker has processed the end of `client_id`'s connection."""
    def offline():
        s = bt.broker.session(client_id)
        return s is None or s.client is None
    wait_until(lambda: bt.call(offline), what=f"{client_id} to go offline")


def wait_gone(bt, client_id: str) -> None:
    wait_until(lambda: bt.call(lambda: client_id not in bt.broker.session_ids()),
               what=f"session {client_id} to end")


# -- takeover ------------------------------------------------------------------------------------

def test_takeover_v311_closes_old_connection(broker, raw_client):
    """A CONNECT with a client id already connected: the server disconnects the existing client
    [MQTT-3.1.4-2] and accepts the new one."""
    old = connect_raw(raw_client, "dup-id", 4)
    new = connect_raw(raw_client, "dup-id", 4)
    assert old.closed()
    assert not any(p.name == "DISCONNECT" for p in old.pending)   # 3.1.1 has none to send
    new.send(b"\xc0\x00")
    assert new.recv_packet().name == "PINGRESP"
    assert session(broker, "dup-id").client is not None


def test_takeover_v5_old_connection_gets_disconnect_0x8e(broker, raw_client):
    """MQTT 5: the existing connection gets DISCONNECT 0x8E (session taken over)
    [MQTT-3.1.4-3]."""
    old = connect_raw(raw_client, "dup5", 5)
    connect_raw(raw_client, "dup5", 5)
    pkt = old.recv_packet()
    assert pkt is not None and pkt.name == "DISCONNECT" and pkt.reason_code == 0x8E
    assert old.closed()


def test_takeover_paho_v5_sees_0x8e_and_does_not_fight(broker, paho):
    """A real MQTT 5 client is told why it was disconnected; the new client stays connected."""
    a = paho("dup-paho", V5)
    b = paho("dup-paho", V5)
    assert a.wait_disconnected() == 0x8E
    b.subscribe("tk/t", 1)
    b.publish("tk/t", b"still here", qos=1)
    assert b.wait_messages(1)[0].payload == b"still here"
    assert b.is_connected()


def test_takeover_keeps_session_when_clean_session_0(broker, paho):
    """Takeover with clean session 0 resumes the session: session present 1
    [MQTT-3.2.2-2] and the subscriptions made on the old connection still deliver."""
    a = paho("keep", V311, clean=False)
    a.subscribe("keep/t", 1)
    b = paho("keep", V311, clean=False)
    assert b.session_present is True
    a.wait_disconnected()
    pub = paho("keep-pub", V311)
    pub.publish("keep/t", b"to the new connection", qos=1)
    [m] = b.wait_messages(1)
    assert m.payload == b"to the new connection" and m.qos == 1
    assert a.messages == []


def test_takeover_with_clean_session_1_starts_fresh(broker, paho):
    """Takeover with clean session 1 discards the old session [MQTT-3.1.2-6]: session present 0
    and the old subscriptions are gone."""
    a = paho("fresh", V311, clean=False)
    a.subscribe("fresh/old", 1)
    b = paho("fresh", V311, clean=True)
    assert b.session_present is False
    b.subscribe("fresh/marker", 1)
    pub = paho("fresh-pub", V311)
    pub.publish("fresh/old", b"old", qos=1)
    pub.publish("fresh/marker", b"marker", qos=1)
    b.wait_messages(1)
    assert b.payloads() == [b"marker"]
    assert list(session(broker, "fresh").subscriptions) == ["fresh/marker"]


def test_takeover_resends_unacknowledged_message(broker, raw_client, paho):
    """A QoS 1 message in flight to the old connection is re-sent (DUP=1, same packet id) to the
    connection that took the session over [MQTT-4.4.0-1]."""
    old = connect_raw(raw_client, "tk-flight", 4, clean_start=False)
    subscribe_raw(old, "tkf/t", 1)
    paho("tkf-pub", V311).publish("tkf/t", b"m1", qos=1)
    first = old.recv_packet()
    assert first.name == "PUBLISH" and first.qos == 1 and not first.dup
    new = connect_raw(raw_client, "tk-flight", 4, present=True, clean_start=False)
    again = new.recv_packet()
    assert again.name == "PUBLISH"
    assert (again.payload, again.qos, again.dup, again.packet_id) == (
        b"m1", 1, True, first.packet_id)
    assert old.closed()


# -- persistent sessions (3.1.1) -----------------------------------------------------------------

def _offline_round(broker, paho, cid: str, publish: list[tuple[bytes, int]],
                   protocol: int = V311, **kw):
    """Subscribe `cid` (clean 0) to pq/#, go offline, publish, reconnect; the new client."""
    sub = paho(cid, protocol, clean=False, **kw)
    sub.subscribe("pq/#", 2)
    sub.disconnect()
    wait_offline(broker, cid)
    pub = paho(cid + "-pub", V311)
    for payload, qos in publish:
        pub.publish("pq/x", payload, qos=qos)
    return paho(cid, protocol, clean=False, **kw)


def test_persistent_session_queues_qos1_qos2_in_order(broker, paho):
    """Clean session 0: the session (subscriptions) outlives the connection [MQTT-3.1.2-4];
    QoS 1 and 2 messages published meanwhile are stored [MQTT-3.1.2-5] and delivered on
    reconnect, in order [MQTT-4.6.0-6], with session present 1 [MQTT-3.2.2-2]. QoS 0 messages
    are not queued by default."""
    sub = _offline_round(broker, paho, "pers", [(b"1", 1), (b"x", 0), (b"2", 1), (b"3", 2)])
    assert sub.session_present is True
    msgs = sub.wait_messages(3)
    assert [(m.payload, m.qos) for m in msgs] == [(b"1", 1), (b"2", 1), (b"3", 2)]


def test_persistent_session_many_messages_keep_order(broker, raw_client, paho):
    """More queued messages than the inflight window (32), QoS 1 and 2 mixed, go out on the wire
    once each and in publish order [MQTT-4.6.0-6] as the client acknowledges them."""
    sent = [(b"%03d" % i, 1 + i % 2) for i in range(80)]
    c = connect_raw(raw_client, "pers-many", 4, clean_start=False)
    subscribe_raw(c, "pqm/#", 2)
    c.close()
    wait_offline(broker, "pers-many")
    pub = paho("pers-many-pub", V311)
    for payload, qos in sent:
        pub.publish("pqm/x", payload, qos=qos)
    c = connect_raw(raw_client, "pers-many", 4, present=True, clean_start=False)
    got = []
    while len(got) < len(sent):
        p = c.recv_packet()
        if p.name == "PUBLISH":
            assert not p.dup
            got.append((p.payload, p.qos))
            c.send_packet(PubAck(PUBACK if p.qos == 1 else PUBREC, p.packet_id))
        else:
            assert p.name == "PUBREL", p
            c.send_packet(PubAck(PUBCOMP, p.packet_id))
    assert got == sent


@pytest.mark.broker_config(queue_qos0=True)
def test_persistent_session_queues_qos0_when_configured(broker, paho):
    """With queue_qos0 the offline session also keeps QoS 0 messages, in publish order (MQTT
    3.1.1 section 3.1.2.4: the server MAY store QoS 0 messages as part of the session)."""
    sub = _offline_round(broker, paho, "pers0", [(b"1", 1), (b"x", 0), (b"2", 1)])
    msgs = sub.wait_messages(3)
    assert [(m.payload, m.qos) for m in msgs] == [(b"1", 1), (b"x", 0), (b"2", 1)]


def test_clean_session_1_discards_old_session(broker, paho):
    """Clean session 1 discards any previous session [MQTT-3.1.2-6]: session present 0
    [MQTT-3.2.2-1], no subscriptions and none of the messages stored for the old one."""
    sub = paho("discard", V311, clean=False)
    sub.subscribe("dc/t", 1)
    sub.disconnect()
    wait_offline(broker, "discard")
    pub = paho("dc-pub", V311)
    pub.publish("dc/t", b"stored", qos=1)
    assert session(broker, "discard").queued == 1
    again = paho("discard", V311, clean=True)
    assert again.session_present is False
    again.subscribe("dc/marker", 1)
    pub.publish("dc/t", b"after", qos=1)
    pub.publish("dc/marker", b"marker", qos=1)
    again.wait_messages(1)
    assert again.payloads() == [b"marker"]
    # The clean session ends with its connection: nothing is left to resume.
    again.disconnect()
    wait_gone(broker, "discard")
    third = paho("discard", V311, clean=False)
    assert third.session_present is False


def test_clean_session_0_without_stored_session_is_not_present(broker, paho):
    """Session present is 0 when the server has no session for the id [MQTT-3.2.2-3]."""
    assert paho("never-seen", V311, clean=False).session_present is False


@pytest.mark.broker_config(session_expiry_default=5)
def test_v311_persistent_session_expires_per_config(broker, paho):
    """session_expiry_default bounds how long a 3.1.1 persistent session is kept offline."""
    sub = paho("v3exp", V311, clean=False)
    sub.subscribe("v3e/t", 1)
    sub.disconnect()
    wait_offline(broker, "v3exp")
    broker.sweep(3.0)
    assert session(broker, "v3exp") is not None
    broker.sweep(6.0)
    assert session(broker, "v3exp") is None
    again = paho("v3exp", V311, clean=False)
    assert again.session_present is False


@pytest.mark.broker_config(session_expiry_default=None)
def test_v311_persistent_session_never_expires_without_default(broker, paho):
    """With no default expiry a 3.1.1 persistent session is kept however long it is offline."""
    sub = paho("v3forever", V311, clean=False)
    sub.subscribe("v3f/t", 1)
    sub.disconnect()
    wait_offline(broker, "v3forever")
    broker.sweep(10.0 ** 7)
    assert paho("v3forever", V311, clean=False).session_present is True


# -- MQTT 5 session expiry -----------------------------------------------------------------------

def test_v5_session_expiry_0_ends_session_at_disconnect(broker, paho):
    """MQTT 5: session expiry interval absent or 0 ends the session when the network connection
    closes (section 3.1.2.11.2), even with clean start 0."""
    sub = paho("v5e0", V5, clean=False)
    sub.subscribe("v5e0/t", 1)
    sub.disconnect()
    wait_gone(broker, "v5e0")
    again = paho("v5e0", V5, clean=False)
    assert again.session_present is False


def test_v5_session_expiry_keeps_session_until_interval(broker, paho):
    """Session expiry > 0: the session and its queued messages survive a disconnect
    [MQTT-3.1.2-23] until the interval has passed; after it, reconnect finds none."""
    sub = paho("v5e", V5, clean=False, session_expiry=30)
    sub.subscribe("v5e/t", 1)
    sub.disconnect()
    wait_offline(broker, "v5e")
    paho("v5e-pub", V5).publish("v5e/t", b"kept", qos=1)
    broker.sweep(20.0)
    again = paho("v5e", V5, clean=False, session_expiry=30)
    assert again.session_present is True
    assert again.wait_messages(1)[0].payload == b"kept"
    again.disconnect()
    wait_offline(broker, "v5e")
    broker.sweep(29.0)
    assert session(broker, "v5e") is not None
    broker.sweep(31.0)
    assert session(broker, "v5e") is None
    third = paho("v5e", V5, clean=False, session_expiry=30)
    assert third.session_present is False


def test_v5_clean_start_1_discards_session(broker, paho):
    """MQTT 5 clean start 1 discards an existing session [MQTT-3.1.2-4]: session present 0."""
    sub = paho("v5cs", V5, clean=False, session_expiry=60)
    sub.subscribe("v5cs/t", 1)
    sub.disconnect()
    wait_offline(broker, "v5cs")
    again = paho("v5cs", V5, clean=True, session_expiry=60)
    assert again.session_present is False
    assert session(broker, "v5cs").subscriptions == {}


def test_v5_disconnect_shortens_session_expiry(broker, paho):
    """DISCONNECT may carry a new session expiry interval, which replaces CONNECT's (MQTT 5
    section 3.14.2.2.2)."""
    sub = paho("v5short", V5, clean=False, session_expiry=300)
    sub.subscribe("v5s/t", 1)
    sub.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=5))
    wait_offline(broker, "v5short")
    assert session(broker, "v5short").expiry_interval == 5
    broker.sweep(6.0)
    assert session(broker, "v5short") is None


def test_v5_disconnect_lengthens_session_expiry(broker, paho):
    """A DISCONNECT may also lengthen a non-zero session expiry interval."""
    sub = paho("v5long", V5, clean=False, session_expiry=5)
    sub.subscribe("v5l/t", 1)
    sub.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=300))
    wait_offline(broker, "v5long")
    broker.sweep(60.0)
    assert session(broker, "v5long") is not None
    assert paho("v5long", V5, clean=False, session_expiry=300).session_present is True


def test_v5_disconnect_setting_expiry_after_zero_is_protocol_error(broker, raw_client):
    """Session expiry 0 in CONNECT and non-zero in DISCONNECT is a Protocol Error (MQTT 5
    section 3.14.2.2.2): the server answers DISCONNECT 0x82, and the session still ends."""
    c = connect_raw(raw_client, "v5zero", 5, clean_start=False)
    c.send_packet(Disconnect(0, {0x11: 60}))
    pkt = c.recv_packet()
    assert pkt is not None and pkt.name == "DISCONNECT" and pkt.reason_code == 0x82
    assert c.closed()
    wait_gone(broker, "v5zero")


@pytest.mark.broker_config(max_session_expiry=10)
def test_v5_max_session_expiry_caps_client_request(broker, paho):
    """max_session_expiry caps what a client asks for; the session ends at the cap."""
    sub = paho("v5cap", V5, clean=False, session_expiry=1000)
    assert sub.connack_properties.get("SessionExpiryInterval") == 10
    sub.disconnect()
    wait_offline(broker, "v5cap")
    broker.sweep(11.0)
    assert session(broker, "v5cap") is None


@pytest.mark.broker_config(max_session_expiry=10)
def test_v5_disconnect_session_expiry_is_capped_too(broker, paho):
    """A DISCONNECT cannot lift the session expiry over max_session_expiry: the cap applies
    to the new interval as it does to CONNECT's."""
    sub = paho("v5dcap", V5, clean=False, session_expiry=5)
    sub.disconnect(properties=props(PacketTypes.DISCONNECT, SessionExpiryInterval=100000))
    wait_offline(broker, "v5dcap")
    assert session(broker, "v5dcap").expiry_interval == 10
    broker.sweep(11.0)
    assert session(broker, "v5dcap") is None


def test_session_resumed_across_protocol_versions(broker, paho):
    """A 3.1.1 persistent session resumed by an MQTT 5 client (clean start 0) delivers its
    queued messages in MQTT 5 form; the session's version follows the client."""
    sub = paho("xver", V311, clean=False)
    sub.subscribe("xv/t", 1)
    sub.disconnect()
    wait_offline(broker, "xver")
    paho("xver-pub", V311).publish("xv/t", b"queued in 3.1.1", qos=1)
    again = paho("xver", V5, clean=False, session_expiry=60)
    assert again.session_present is True
    assert again.wait_messages(1)[0].payload == b"queued in 3.1.1"
    assert session(broker, "xver").version == 5


# -- queue limit and drops -----------------------------------------------------------------------

@pytest.mark.broker_config(max_queued=3)
def test_queue_limit_keeps_first_n_and_counts_drops(broker, paho):
    """An offline session keeps at most max_queued messages: the first ones, in order; the rest
    are dropped and counted (session state and $SYS/broker/publish/messages/dropped)."""
    sub = paho("ql", V311, clean=False)
    sub.subscribe("ql/t", 1)
    sub.disconnect()
    wait_offline(broker, "ql")
    pub = paho("ql-pub", V311)
    for i in range(5):
        pub.publish("ql/t", b"m%d" % i, qos=1)
    assert broker.call(lambda: broker.broker.session("ql").dropped) == 2
    assert broker.call(lambda: broker.broker.session("ql").queued) == 3
    snap = broker.call(lambda: sys_topics.topics(broker.broker.stats()))
    assert snap["$SYS/broker/publish/messages/dropped"] == "2"
    again = paho("ql", V311, clean=False)
    pub.publish("ql/t", b"live", qos=1)
    again.wait_messages(4)
    assert again.payloads() == [b"m0", b"m1", b"m2", b"live"]


@pytest.mark.broker_config(max_queued=3, queue_qos0=True)
def test_queue_full_drops_qos0_first(broker, paho):
    """With QoS 0 queued too, a full queue makes room by dropping its oldest QoS 0 message,
    and a new QoS 0 message is dropped rather than a queued QoS 1 one (QoS 0 first)."""
    sub = paho("q0f", V311, clean=False)
    sub.subscribe("q0f/t", 1)
    sub.disconnect()
    wait_offline(broker, "q0f")
    pub = paho("q0f-pub", V311)
    pub.publish("q0f/t", b"a0", qos=0)
    pub.publish("q0f/t", b"b1", qos=1)
    pub.publish("q0f/t", b"c1", qos=1)     # the queue is full now
    pub.publish("q0f/t", b"d1", qos=1)     # a0 makes room
    pub.publish("q0f/t", b"e0", qos=0)     # dropped: QoS 0 and the queue is all QoS 1
    wait_until(lambda: broker.call(lambda: broker.broker.session("q0f").dropped) == 2,
               what="two drops")
    snap = broker.call(lambda: sys_topics.topics(broker.broker.stats()))
    assert snap["$SYS/broker/publish/messages/dropped"] == "2"
    again = paho("q0f", V311, clean=False)
    again.wait_messages(3)
    pub.publish("q0f/t", b"live", qos=1)
    again.wait_messages(4)
    assert again.payloads() == [b"b1", b"c1", b"d1", b"live"]


@pytest.mark.broker_config(max_queued=2)
def test_dropped_count_sums_sessions_in_sys(broker, paho):
    """$SYS/broker/publish/messages/dropped counts drops across sessions."""
    for cid in ("sa", "sb"):
        s = paho(cid, V311, clean=False)
        s.subscribe("sum/t", 1)
        s.disconnect()
        wait_offline(broker, cid)
    pub = paho("sum-pub", V311)
    for i in range(4):
        pub.publish("sum/t", b"%d" % i, qos=1)
    snap = broker.call(lambda: sys_topics.topics(broker.broker.stats()))
    assert snap["$SYS/broker/publish/messages/dropped"] == "4"


# -- redelivery with DUP -------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [1, 2])
def test_unacked_publish_resent_with_dup_on_reconnect(broker, raw_client, paho, version, qos):
    """A QoS 1/2 PUBLISH not acknowledged before the connection ended is re-sent on reconnect
    with DUP=1 and the same packet identifier [MQTT-4.4.0-1, MQTT-3.3.1-1]; then the flow
    completes normally."""
    cid = f"redo{version}{qos}"
    kw = dict(clean_start=False)
    if version == 5:
        kw["properties"] = {0x11: 60}
    c = connect_raw(raw_client, cid, version, **kw)
    subscribe_raw(c, "redo/t", qos)
    paho(cid + "-pub", V311).publish("redo/t", b"payload", qos=qos)
    first = c.recv_packet()
    assert (first.name, first.qos, first.dup) == ("PUBLISH", qos, False)
    c.close()                                          # no ack, no DISCONNECT
    wait_offline(broker, cid)
    c2 = connect_raw(raw_client, cid, version, present=True, **kw)
    again = c2.recv_packet()
    assert again.name == "PUBLISH"
    assert (again.topic, again.payload, again.qos, again.dup, again.packet_id) == (
        "redo/t", b"payload", qos, True, first.packet_id)
    if qos == 1:
        c2.send_packet(PubAck(PUBACK, again.packet_id))
    else:
        c2.send_packet(PubAck(PUBREC, again.packet_id))
        rel = c2.recv_packet()
        assert (rel.name, rel.packet_id) == ("PUBREL", again.packet_id)
        c2.send_packet(PubAck(PUBCOMP, again.packet_id))
    wait_until(lambda: broker.call(
        lambda: broker.broker.session(cid).inflight) == 0,
        what="the flow to complete")


@pytest.mark.parametrize("version", [4, 5])
def test_pubrel_resent_on_reconnect(broker, raw_client, paho, version):
    """QoS 2 awaiting PUBCOMP when the connection ended: on reconnect the server re-sends PUBREL
    (not the PUBLISH) with the same packet identifier [MQTT-4.4.0-1]."""
    cid = f"rel{version}"
    kw = dict(clean_start=False)
    if version == 5:
        kw["properties"] = {0x11: 60}
    c = connect_raw(raw_client, cid, version, **kw)
    subscribe_raw(c, "rel/t", 2)
    paho(cid + "-pub", V311).publish("rel/t", b"two", qos=2)
    pub = c.recv_packet()
    assert (pub.name, pub.qos) == ("PUBLISH", 2)
    c.send_packet(PubAck(PUBREC, pub.packet_id))
    rel = c.recv_packet()
    assert (rel.name, rel.packet_id) == ("PUBREL", pub.packet_id)
    c.close()                                          # no PUBCOMP
    wait_offline(broker, cid)
    c2 = connect_raw(raw_client, cid, version, present=True, **kw)
    again = c2.recv_packet()
    assert (again.name, again.packet_id) == ("PUBREL", pub.packet_id)
    c2.send_packet(PubAck(PUBCOMP, pub.packet_id))
    c2.send(b"\xc0\x00")
    assert c2.recv_packet().name == "PINGRESP"       # no second PUBLISH came before it


def test_acked_messages_are_not_resent(broker, raw_client, paho):
    """Only unacknowledged messages are re-sent: after PUBACK, reconnect brings nothing."""
    c = connect_raw(raw_client, "acked", 4, clean_start=False)
    subscribe_raw(c, "ack/t", 1)
    paho("acked-pub", V311).publish("ack/t", b"m", qos=1)
    p = c.recv_packet()
    c.send_packet(PubAck(PUBACK, p.packet_id))
    wait_until(lambda: broker.call(
        lambda: broker.broker.session("acked").inflight) == 0, what="PUBACK")
    c.close()
    wait_offline(broker, "acked")
    c2 = connect_raw(raw_client, "acked", 4, present=True, clean_start=False)
    c2.send(b"\xc0\x00")
    assert c2.recv_packet().name == "PINGRESP"


# -- inbound QoS 2: exactly once -----------------------------------------------------------------

def test_inbound_qos2_duplicate_before_pubrel_delivered_once(broker, raw_client, paho):
    """Inbound QoS 2: until PUBREL the receiver must not deliver a re-sent PUBLISH with the same
    packet id again [MQTT-4.3.3-9 (3.1.1: MQTT-4.3.3-2)]; after PUBCOMP the id is free and a
    new PUBLISH with it is a new message."""
    sub = paho("q2sub", V5)
    sub.subscribe("q2/t", 2)
    c = connect_raw(raw_client, "q2pub", 4)
    c.send_packet(Publish("q2/t", b"once", qos=2, packet_id=7))
    assert (lambda p: (p.name, p.packet_id))(c.recv_packet()) == ("PUBREC", 7)
    c.send_packet(Publish("q2/t", b"once", qos=2, packet_id=7, dup=True))
    assert (lambda p: (p.name, p.packet_id))(c.recv_packet()) == ("PUBREC", 7)
    c.send_packet(PubAck(PUBREL, 7))
    assert (lambda p: (p.name, p.packet_id))(c.recv_packet()) == ("PUBCOMP", 7)
    c.send_packet(Publish("q2/t", b"next", qos=2, packet_id=7))
    assert c.recv_packet().name == "PUBREC"
    c.send_packet(PubAck(PUBREL, 7))
    assert c.recv_packet().name == "PUBCOMP"
    sub.wait_messages(2)
    c.send_packet(Publish("q2/t", b"marker", qos=0))
    sub.wait_messages(3)
    assert sub.payloads() == [b"once", b"next", b"marker"]


def test_inbound_qos2_state_survives_reconnect(broker, raw_client, paho):
    """A persistent session keeps the QoS 2 ids received but not yet released (3.1.1 section
    4.1, session state): the publisher's re-sent PUBLISH after reconnect is not delivered
    again, and its PUBREL completes the flow."""
    sub = paho("q2rsub", V311)
    sub.subscribe("q2r/t", 2)
    c = connect_raw(raw_client, "q2rpub", 4, clean_start=False)
    c.send_packet(Publish("q2r/t", b"exactly once", qos=2, packet_id=9))
    assert c.recv_packet().name == "PUBREC"
    c.close()
    wait_offline(broker, "q2rpub")
    c2 = connect_raw(raw_client, "q2rpub", 4, present=True, clean_start=False)
    c2.send_packet(Publish("q2r/t", b"exactly once", qos=2, packet_id=9, dup=True))
    assert (lambda p: (p.name, p.packet_id))(c2.recv_packet()) == ("PUBREC", 9)
    c2.send_packet(PubAck(PUBREL, 9))
    assert (lambda p: (p.name, p.packet_id, p.reason_code))(c2.recv_packet()) == (
        "PUBCOMP", 9, 0)
    # The marker is QoS 2 as well: paho hands a QoS 2 message to the application at its
    # PUBREL, a QoS 0 one at once, so a QoS 0 marker could overtake a slow first delivery.
    c2.send_packet(Publish("q2r/t", b"marker", qos=2, packet_id=10))
    assert (lambda p: (p.name, p.packet_id))(c2.recv_packet()) == ("PUBREC", 10)
    c2.send_packet(PubAck(PUBREL, 10))
    assert c2.recv_packet().name == "PUBCOMP"
    sub.wait_messages(2)
    assert sub.payloads() == [b"exactly once", b"marker"]
