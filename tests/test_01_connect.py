"""CONNECT / CONNACK and keep alive, black-box over real sockets (GitHub issue "The broker core").

Byte-exact expectations come from the tiny generator below (independent of the codec under
test, in the manner of mosquitto's mosq_test.gen_*); interoperability from paho-mqtt in MQTT
3.1, 3.1.1 and 5 modes. Spec references: MQTT 3.1.1 (OASIS, 2014) and MQTT 5.0 (OASIS, 2019).
"""
from __future__ import annotations

import socket
import struct

import pytest
from paho.mqtt.packettypes import PacketTypes

from cymqtt._fast.codec import Connect, Disconnect, Ping, Publish, Subscribe
from helpers_paho import V5, V31, V311, props, wait_until


# -- an independent generator for the bytes we send and expect ----------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def gen_connect(client_id: str, level: int = 4, name: bytes | None = None, flags: int = 0x02,
                keepalive: int = 60, properties: bytes = b"") -> bytes:
    """CONNECT with `flags` as given (clean session/start by default), no will, no login."""
    if name is None:
        name = b"MQIsdp" if level == 3 else b"MQTT"
    body = _str(name) + bytes([level, flags]) + struct.pack("!H", keepalive)
    if level == 5:
        body += _varint(len(properties)) + properties
    body += _str(client_id)
    return b"\x10" + _varint(len(body)) + body


def gen_connack(rc: int = 0, session_present: bool = False) -> bytes:
    """A 3.1 / 3.1.1 CONNACK."""
    return bytes([0x20, 0x02, 1 if session_present else 0, rc])


def recv_exact(rc, n: int, timeout: float = 5.0) -> bytes:
    """Exactly `n` bytes from a RawClient's socket (b"" .. fewer when the broker closed)."""
    rc.sock.settimeout(timeout)
    data = b""
    while len(data) < n:
        try:
            chunk = rc.sock.recv(n - len(data))
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def connect_raw(raw_client, client_id: str, version: int = 4, **kw):
    """A RawClient that has sent CONNECT and got CONNACK 0; returns (client, connack)."""
    c = raw_client(version)
    c.send_packet(Connect(client_id, version=version, **kw))
    ack = c.recv_packet()
    assert ack is not None and ack.name == "CONNACK" and ack.reason_code == 0, ack
    return c, ack


# -- accepted protocol versions ------------------------------------------------------------------

@pytest.mark.parametrize("level", [3, 4])
def test_v3_connect_gets_exact_connack(broker, raw_client, level):
    """MQTT 3.1 (MQIsdp, level 3) and 3.1.1 (MQTT, level 4) are accepted: CONNACK 0x00, session
    present 0 for a clean session [MQTT-3.2.2-1]."""
    c = raw_client(level)
    c.send(gen_connect("lvl-%d" % level, level))
    assert recv_exact(c, 4) == gen_connack(0)
    c.send(b"\xc0\x00")                       # PINGREQ
    assert recv_exact(c, 2) == b"\xd0\x00"    # PINGRESP: the connection is usable


def test_v5_connect_gets_connack_success(broker, raw_client):
    """MQTT 5 (level 5): CONNACK reason 0x00 in MQTT 5 format (with properties)."""
    c = raw_client(5)
    c.send(gen_connect("lvl-5", 5))
    ack = c.recv_packet()
    assert ack.name == "CONNACK"
    assert (ack.session_present, ack.reason_code) == (False, 0)
    assert ack.properties is not None


@pytest.mark.parametrize("protocol", [V31, V311, V5], ids=["3.1", "3.1.1", "5"])
def test_paho_round_trip_each_version(paho, protocol):
    """A real client in each protocol version connects, subscribes and receives its message."""
    c = paho("rt-%d" % protocol, protocol)
    assert c.connack_rc == 0 and c.session_present is False
    assert c.subscribe("rt/x", 1) == [1]
    c.publish("rt/x", b"hello", qos=1)
    [m] = c.wait_messages(1)
    assert (m.topic, m.payload, m.qos) == ("rt/x", b"hello", 1)


# -- refused CONNECTs ----------------------------------------------------------------------------

@pytest.mark.parametrize("name,level", [(b"MQTT", 6), (b"MQTT", 2), (b"MQTT", 0x84)])
def test_unsupported_protocol_level_gets_connack_0x01(broker, raw_client, name, level):
    """An unsupported protocol level gets CONNACK return code 0x01 (unacceptable protocol
    level) and the connection is closed [MQTT-3.1.2-2]."""
    c = raw_client(4)
    c.send(gen_connect("badlevel", level, name=name))
    assert recv_exact(c, 4) == gen_connack(0x01)
    assert c.closed()


def test_broker_keeps_serving_after_refused_connect(broker, raw_client, paho):
    """Bad input on one connection does not disturb the broker for others."""
    c = raw_client(4)
    c.send(gen_connect("badlevel", 9))
    assert c.closed()
    ok = paho("after-bad", V311)
    assert ok.connack_rc == 0


def test_v5_connect_reserved_flag_gets_connack_0x81(broker, raw_client):
    """MQTT 5: the reserved CONNECT flag set is a Malformed Packet [MQTT-3.1.2-3]; before the
    session exists the reason goes in CONNACK (0x81), then the connection is closed
    [MQTT-4.13.1-1]."""
    c = raw_client(5)
    c.send(gen_connect("resv5", 5, flags=0x03))
    ack = c.recv_packet()
    assert ack is not None and ack.name == "CONNACK"
    assert ack.reason_code == 0x81 and ack.session_present is False
    assert c.closed()


def test_v311_connect_reserved_flag_closes(broker, raw_client):
    """MQTT 3.1.1: the server MUST disconnect a client whose reserved CONNECT flag is not 0
    [MQTT-3.1.2-3]; no success CONNACK is sent."""
    c = raw_client(4)
    c.send(gen_connect("resv4", 4, flags=0x03))
    assert c.closed()
    assert not any(p.name == "CONNACK" and p.reason_code == 0 for p in c.pending)
    assert broker.call(lambda: "resv4" not in broker.broker.session_ids())


def test_v311_empty_client_id_clean_session_is_assigned(broker, raw_client, paho):
    """3.1.1, zero-byte client id with clean session 1: the server assigns a unique id and
    accepts [MQTT-3.1.3-6, MQTT-3.1.3-7]; the client works normally."""
    c = raw_client(4)
    c.send(gen_connect("", 4, flags=0x02))
    assert recv_exact(c, 4) == gen_connack(0)
    ids = broker.call(lambda: broker.broker.session_ids())
    assert len(ids) == 1 and ids[0]
    # Two anonymous clients get different identifiers and both work.
    p = paho("", V311)
    assert p.subscribe("anon/t", 1) == [1]
    p.publish("anon/t", b"x", qos=1)
    assert p.wait_messages(1)[0].payload == b"x"
    ids = broker.call(lambda: broker.broker.session_ids())
    assert len(set(ids)) == 2 and all(ids)


def test_v311_empty_client_id_persistent_session_refused(broker, raw_client):
    """3.1.1, zero-byte client id with clean session 0: CONNACK 0x02 (identifier rejected),
    then close [MQTT-3.1.3-8]."""
    c = raw_client(4)
    c.send(gen_connect("", 4, flags=0x00))
    assert recv_exact(c, 4) == gen_connack(0x02)
    assert c.closed()


def test_v31_empty_client_id_refused(broker, raw_client):
    """MQTT 3.1 client identifiers are 1 to 23 characters: an empty one gets CONNACK 0x02."""
    c = raw_client(3)
    c.send(gen_connect("", 3))
    assert recv_exact(c, 4) == gen_connack(0x02)
    assert c.closed()


def test_v5_empty_client_id_gets_assigned_identifier(broker, raw_client, paho):
    """MQTT 5, zero-length client id: CONNACK carries Assigned Client Identifier (0x12)
    [MQTT-3.1.3-7, MQTT-3.2.2-16], and that is the session's id."""
    c = raw_client(5)
    c.send(gen_connect("", 5))
    ack = c.recv_packet()
    assert ack.reason_code == 0
    assigned = ack.properties.get(0x12)
    assert isinstance(assigned, str) and assigned
    assert broker.call(lambda: broker.broker.session_ids()) == [assigned]
    p = paho("", V5)
    other = p.connack_properties.get("AssignedClientIdentifier")
    assert other and other != assigned


def test_v5_client_id_given_gets_no_assigned_identifier(broker, raw_client):
    """The Assigned Client Identifier is only sent when the client sent an empty one."""
    c = raw_client(5)
    c.send(gen_connect("named", 5))
    ack = c.recv_packet()
    assert ack.reason_code == 0 and 0x12 not in (ack.properties or {})


def test_v31_client_id_longer_than_23_refused(broker, raw_client):
    """MQTT 3.1: a client identifier over 23 characters gets CONNACK 0x02 (identifier
    rejected) and the connection is closed."""
    c = raw_client(3)
    c.send(gen_connect("x" * 24, 3))
    assert recv_exact(c, 4) == gen_connack(0x02)
    assert c.closed()
    ok = raw_client(3)
    ok.send(gen_connect("y" * 23, 3))
    assert recv_exact(ok, 4) == gen_connack(0)


@pytest.mark.broker_config(maximum_qos=1)
def test_v5_will_qos_above_maximum_refused(broker, raw_client):
    """A will QoS above the server's maximum QoS: CONNACK 0x9B, then close
    [MQTT-3.2.2-12]."""
    c = raw_client(5)
    c.send_packet(Connect("wq2", version=5, will_topic="w/t", will_payload=b"x", will_qos=2))
    ack = c.recv_packet()
    assert (ack.name, ack.reason_code) == ("CONNACK", 0x9B)
    assert c.closed()
    ok = raw_client(5)
    ok.send_packet(Connect("wq1", version=5, will_topic="w/t", will_payload=b"x", will_qos=1))
    assert ok.recv_packet().reason_code == 0


@pytest.mark.broker_config(retain_available=False)
def test_v5_will_retain_without_retain_available_refused(broker, raw_client):
    """Will retain 1 when retained messages are not available: CONNACK 0x9A, then close
    [MQTT-3.2.2-13]."""
    c = raw_client(5)
    c.send_packet(Connect("wret", version=5, will_topic="w/t", will_payload=b"x",
                          will_retain=True))
    ack = c.recv_packet()
    assert (ack.name, ack.reason_code) == ("CONNACK", 0x9A)
    assert c.closed()


@pytest.mark.parametrize("first", [
    b"\xc0\x00",                                           # PINGREQ
    b"\x30\x05\x00\x01ahi",                                # PUBLISH a "hi"
    b"\x82\x06\x00\x01\x00\x01a\x00",                      # SUBSCRIBE a
    b"\xe0\x00",                                           # DISCONNECT
], ids=["pingreq", "publish", "subscribe", "disconnect"])
def test_first_packet_not_connect_closes(broker, raw_client, first):
    """The first packet from the client MUST be CONNECT; anything else closes the connection
    [MQTT-3.1.0-1]. Nothing is sent back."""
    c = raw_client(4)
    c.send(first)
    assert c.closed()
    assert c.pending == []


def test_second_connect_v311_closes(broker, raw_client):
    """A second CONNECT is a protocol violation: the connection is closed [MQTT-3.1.0-2]."""
    c, _ = connect_raw(raw_client, "twice4", 4)
    c.send(gen_connect("twice4", 4))
    assert c.closed()
    assert not any(p.name == "CONNACK" for p in c.pending)


def test_second_connect_v5_gets_disconnect_0x82(broker, raw_client):
    """MQTT 5: a second CONNECT is a Protocol Error: DISCONNECT 0x82, then close
    [MQTT-3.1.0-2, MQTT-4.13.1-1]."""
    c, _ = connect_raw(raw_client, "twice5", 5)
    c.send(gen_connect("twice5", 5))
    pkt = c.recv_packet()
    assert pkt is not None and pkt.name == "DISCONNECT" and pkt.reason_code == 0x82
    assert c.closed()


@pytest.mark.broker_config(connect_timeout=0.2)
def test_connect_timeout_closes_silent_socket(broker, raw_client):
    """A socket that sends no CONNECT within connect_timeout is closed (MQTT 3.1.1 section
    3.1: the server SHOULD close a connection that sends no CONNECT in a reasonable time)."""
    c = raw_client(4)
    wait_until(lambda: broker.call(lambda: broker.broker.connection_count) == 1,
               what="the broker to see the socket")
    broker.sweep(0.0)                 # inside the timeout: kept
    assert not c.closed(0.05)
    broker.sweep(1.0)                 # past it: closed
    assert c.closed()
    assert c.pending == []


@pytest.mark.broker_config(connect_timeout=0.2)
def test_connect_timeout_closes_incomplete_connect(broker, raw_client):
    """A CONNECT that never completes (a slow-loris first packet) is closed at the timeout."""
    c = raw_client(4)
    c.send(gen_connect("slow", 4)[:7])
    wait_until(lambda: broker.call(lambda: broker.broker.connection_count) == 1,
               what="the broker to see the socket")
    broker.sweep(1.0)
    assert c.closed()
    assert c.pending == []


@pytest.mark.broker_config(connect_timeout=0.2)
def test_connect_timeout_spares_connected_clients(broker, raw_client):
    """The CONNECT timeout applies only to sockets that have not sent CONNECT."""
    c, _ = connect_raw(raw_client, "quick", 4, keepalive=0)
    broker.sweep(5.0)
    c.send_packet(Ping())
    assert c.recv_packet().name == "PINGRESP"


# -- CONNACK properties (MQTT 5) -----------------------------------------------------------------

def test_v5_connack_properties_default(broker, raw_client):
    """CONNACK tells the client the server's limits (MQTT 5 section 3.2.2.3): receive maximum,
    topic alias maximum, maximum packet size; features that are available are not listed
    (absent means available), nor maximum QoS when it is 2 [MQTT-3.2.2-9]."""
    _, ack = connect_raw(raw_client, "props", 5)
    assert ack.properties == {0x21: 32, 0x22: 64, 0x27: 1024 * 1024}


@pytest.mark.broker_config(receive_maximum=10, topic_alias_maximum=7, max_packet_size=5000,
                           retain_available=False, wildcard_subscription_available=False,
                           subscription_identifier_available=False,
                           shared_subscription_available=False, maximum_qos=1,
                           server_keep_alive=30)
def test_v5_connack_properties_configured(broker, raw_client):
    """Limits and turned-off features show in CONNACK: receive maximum (0x21), topic alias
    maximum (0x22), maximum packet size (0x27), retain available 0 (0x25), wildcard (0x28),
    subscription identifiers (0x29) and shared subscriptions (0x2A) available 0, maximum QoS
    (0x24) and server keep alive (0x13) [MQTT-3.2.2-9, MQTT-3.2.2-21]."""
    _, ack = connect_raw(raw_client, "props2", 5, keepalive=60)
    assert ack.properties == {0x21: 10, 0x22: 7, 0x27: 5000, 0x25: 0, 0x28: 0, 0x29: 0,
                              0x2A: 0, 0x24: 1, 0x13: 30}


@pytest.mark.broker_config(maximum_qos=0)
def test_v5_connack_maximum_qos_0(broker, paho):
    """Maximum QoS 0 is announced to a real MQTT 5 client."""
    c = paho("mq0", V5)
    assert c.connack_properties.get("MaximumQoS") == 0


@pytest.mark.broker_config(max_session_expiry=100)
def test_v5_connack_session_expiry_when_capped(broker, paho):
    """When the server uses a session expiry other than the client asked for, CONNACK says
    which (Session Expiry Interval 0x11, MQTT 5 section 3.2.2.3.2)."""
    c = paho("capped", V5, session_expiry=5000)
    assert c.connack_properties.get("SessionExpiryInterval") == 100
    d = paho("uncapped", V5, session_expiry=50)
    assert "SessionExpiryInterval" not in d.connack_properties


# -- keep alive ----------------------------------------------------------------------------------

def test_keepalive_silent_v311_client_is_closed(broker, raw_client):
    """No control packet within 1.5 x keep alive: the server disconnects [MQTT-3.1.2-24]."""
    c, _ = connect_raw(raw_client, "ka4", 4, keepalive=1)
    broker.sweep(1.0)                   # 1.0 s < 1.5 x 1 s: kept
    assert not c.closed(0.05)
    broker.sweep(2.0)                   # 2.0 s > 1.5 s: closed
    assert c.closed()
    assert c.pending == []


def test_keepalive_silent_v5_client_gets_disconnect_0x8d(broker, raw_client):
    """MQTT 5: the server sends DISCONNECT 0x8D (keep alive timeout) before closing
    [MQTT-3.1.2-22]."""
    c, _ = connect_raw(raw_client, "ka5", 5, keepalive=1)
    broker.sweep(2.0)
    pkt = c.recv_packet()
    assert pkt is not None and pkt.name == "DISCONNECT" and pkt.reason_code == 0x8D
    assert c.closed()


def test_keepalive_real_time_expiry(broker, raw_client):
    """The broker's own periodic sweep enforces keep alive, without a test advancing time."""
    c, _ = connect_raw(raw_client, "ka-real", 4, keepalive=1)
    assert c.closed(timeout=3.0)


def test_pingreq_gets_pingresp_and_keeps_alive(broker, raw_client):
    """PINGREQ is answered with PINGRESP [MQTT-3.12.4-1], and any control packet resets the
    keep alive timer: after a ping at 1 s, the connection survives to 3.5 s (limit 3 s)."""
    c, _ = connect_raw(raw_client, "pinger", 4, keepalive=2)
    broker.clock.advance(1.0)
    c.send(b"\xc0\x00")
    assert recv_exact(c, 2) == b"\xd0\x00"
    broker.sweep(2.5)                   # 2.5 s after the ping (3.5 s after CONNECT): kept
    assert not c.closed(0.05)
    c.send_packet(Ping())
    assert c.recv_packet().name == "PINGRESP"
    broker.sweep(3.5)                   # 3.5 s of silence after the last ping: closed
    assert c.closed()


def test_keepalive_zero_disables(broker, raw_client):
    """Keep alive 0 turns the mechanism off (3.1.1 section 3.1.2.10)."""
    c, _ = connect_raw(raw_client, "ka0", 4, keepalive=0)
    broker.sweep(100000.0)
    c.send_packet(Ping())
    assert c.recv_packet().name == "PINGRESP"


@pytest.mark.broker_config(server_keep_alive=1)
def test_server_keep_alive_overrides_client(broker, raw_client):
    """MQTT 5: with Server Keep Alive the client must use the server's value
    [MQTT-3.2.2-21]; the broker enforces it."""
    c, ack = connect_raw(raw_client, "ska", 5, keepalive=600)
    assert ack.properties.get(0x13) == 1
    broker.sweep(2.0)
    pkt = c.recv_packet()
    assert pkt is not None and pkt.name == "DISCONNECT" and pkt.reason_code == 0x8D


def test_paho_keepalive_pings_keep_connection(broker, paho):
    """A real client with keep alive 1 pings on its own; the broker counts the ping, so the
    connection outlives 1.5 x keep alive from CONNECT."""
    c = paho("paho-ka", V311, keepalive=1)

    def pinged():
        conn = broker.broker.session("paho-ka").client
        return conn.last_rx - conn.created > 0.8
    wait_until(lambda: broker.call(pinged), timeout=3.0, what="paho's PINGREQ")
    broker.sweep(0.9)                   # < 1.5 s after the ping, > 1.5 s after CONNECT
    assert c.is_connected() and not c.disconnected.is_set()
    c.subscribe("ka/t", 0)
    c.publish("ka/t", b"alive")
    assert c.wait_messages(1)[0].payload == b"alive"


def test_publish_subscribe_after_connect_v5_props(broker, raw_client):
    """Packets after CONNECT in the same TCP segment are decoded with the CONNECT's version."""
    c = raw_client(5)
    c.send(gen_connect("batch5", 5) + Subscribe(1, [("b/t", 1)]).encode(5)
           + Publish("b/t", b"p", qos=0).encode(5) + Disconnect(0).encode(5))
    names = []
    while True:
        pkt = c.recv_packet()
        if pkt is None:
            break
        names.append((pkt.name, getattr(pkt, "payload", None)))
    assert names == [("CONNACK", None), ("SUBACK", None), ("PUBLISH", b"p")]


def test_assigned_id_usable_for_paho_v5_persistent(broker, paho):
    """An MQTT 5 client with an empty id and clean start 0 still gets an id assigned."""
    c = paho("", V5, clean=False, session_expiry=60)
    assigned = c.connack_properties["AssignedClientIdentifier"]
    assert broker.call(lambda: broker.broker.session(assigned).expiry_interval) == 60


def test_socket_closed_before_connect_is_forgotten(broker):
    """A socket that closes before CONNECT leaves nothing behind."""
    s = socket.create_connection(("127.0.0.1", broker.port))
    wait_until(lambda: broker.call(lambda: broker.broker.connection_count) == 1,
               what="the connection")
    s.close()
    wait_until(lambda: broker.call(lambda: broker.broker.connection_count) == 0,
               what="the connection to be forgotten")
    assert broker.call(lambda: broker.broker.session_ids()) == []


def test_paho_v5_connect_properties_accepted(broker, paho):
    """A v5 CONNECT with receive maximum, maximum packet size and topic alias maximum is
    accepted."""
    cp = props(PacketTypes.CONNECT, ReceiveMaximum=5, MaximumPacketSize=2000,
               TopicAliasMaximum=3)
    c = paho("cprops", V5, connect_properties=cp)
    assert c.connack_rc == 0
    assert c.subscribe("cp/t", 2) == [2]
    c.publish("cp/t", b"x" * 100, qos=2)
    assert c.wait_messages(1)[0].payload == b"x" * 100
