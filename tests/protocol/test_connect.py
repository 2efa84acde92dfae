"""CONNECT and CONNACK, driven on ClientProtocols with bytes only.

MQTT 3.1.1 section 3.1 / 3.2 and MQTT 5.0 section 3.1 / 3.2: the first packet, CONNACK and its
session present flag, protocol levels, client identifiers, password authentication, client id
takeover, and malformed CONNECT packets. 3.x CONNACKs are compared byte for byte; MQTT 5
CONNACKs are read with the harness's own decoder, because property order is the encoder's
choice.
"""
import pytest

from cymqtt.config import Config

from ._harness import (
    AUTH_METHOD, ASSIGNED_CLIENT_ID, CONNACK, DISCONNECT, MAXIMUM_PACKET_SIZE, PINGREQ_BYTES,
    PINGRESP_BYTES, REASON_STRING, RECEIVE_MAXIMUM, REQUEST_PROBLEM_INFO,
    REQUEST_RESPONSE_INFO, RESPONSE_INFO, SERVER_KEEP_ALIVE, SERVER_REFERENCE, SESSION_EXPIRY,
    TOPIC_ALIAS_MAXIMUM, Will, World, connack, connect, decode, disconnect, frames, publish,
    subscribe, suback,
)

# What a default Config puts in every successful MQTT 5 CONNACK.
DEFAULT_V5_PROPS = {RECEIVE_MAXIMUM: 32, TOPIC_ALIAS_MAXIMUM: 64, MAXIMUM_PACKET_SIZE: 1048576}
QUIET = {REQUEST_PROBLEM_INFO: 0}     # MQTT 5: no reason strings, so failures are byte-exact


def only_reason_string(props: dict) -> bool:
    return set(props) <= {REASON_STRING}


# -- CONNACK ------------------------------------------------------------------------------------


def test_connack_311_accepted():
    """3.1.1: the first packet from the server is CONNACK [MQTT-3.2.0-1]; clean session 1 ->
    session present 0 [MQTT-3.2.2-1]; return code 0 accepts."""
    w = World()
    c = w.client()
    c.send(connect("c1"))
    assert c.take() == b"\x20\x02\x00\x00"
    assert c.open and not c.paused
    assert w.registry.get("c1").client is c.proto


def test_connack_31_accepted():
    """MQTT 3.1 (MQIsdp, level 3): CONNACK 0 in the same two-byte form."""
    w = World()
    c = w.client()
    c.send(connect("c31", version=3))
    assert c.take() == b"\x20\x02\x00\x00"
    assert c.proto.version == 3


def test_session_present_311_reconnect():
    """3.1.1: clean session 0 without stored state -> session present 0 [MQTT-3.2.2-3]; with
    the state kept after a disconnect -> 1 [MQTT-3.2.2-2]; clean session 1 -> 0 and the old
    state is discarded [MQTT-3.2.2-1, MQTT-3.1.2-6]."""
    w = World()
    a = w.client()
    a.send(connect("p", clean=False))
    assert a.take() == connack(False, 0)
    a.send(subscribe(1, ("t/1", 1)))
    assert a.take() == suback(1, 1)
    a.send(disconnect())
    assert a.closed and a.io.lost

    b = w.client()
    b.send(connect("p", clean=False))
    assert b.take() == b"\x20\x02\x01\x00"
    assert set(w.registry.get("p").subscriptions) == {"t/1"}
    b.send(disconnect())

    c = w.client()
    c.send(connect("p", clean=True))
    assert c.take() == b"\x20\x02\x00\x00"
    assert w.registry.get("p").subscriptions == {}


def test_connack_5_properties():
    """MQTT 5: CONNACK reason 0 with the server's limits: receive maximum, topic alias maximum
    and maximum packet size (sections 3.2.2.3.3, 3.2.2.3.8, 3.2.2.3.6); session present 0 on
    clean start [MQTT-3.2.2-2]."""
    w = World()
    c = w.client()
    c.send(connect("v5", version=5))
    (frame,) = c.take_frames()
    assert frame[:2] == b"\x20\x0e"
    ack = decode(frame)
    assert (ack.type, ack.flags, ack.session_present, ack.reason_code) == (CONNACK, 0, False, 0)
    assert ack.properties == DEFAULT_V5_PROPS
    assert c.proto.version == 5


def test_session_present_5_reconnect():
    """MQTT 5: clean start 0 with a session kept by its expiry interval -> session present 1
    [MQTT-3.2.2-3]; without a session expiry the session ended with the connection, so the
    next clean start 0 finds none -> 0."""
    w = World()
    a = w.client()
    a.send(connect("s5", version=5, clean=False, properties={SESSION_EXPIRY: 300}))
    first = decode(a.take())
    assert first.session_present is False
    assert first.properties == DEFAULT_V5_PROPS      # granted as asked: no 0x11 echoed
    a.send(disconnect(0))
    b = w.client()
    b.send(connect("s5", version=5, clean=False, properties={SESSION_EXPIRY: 300}))
    assert decode(b.take()).session_present is True
    b.send(disconnect(0))                 # this connection's expiry is 300 too: kept

    c = w.client()
    c.send(connect("s5", version=5, clean=False))     # session expiry 0 from now on
    assert decode(c.take()).session_present is True
    c.send(disconnect(0))
    assert w.registry.get("s5") is None
    d = w.client()
    d.send(connect("s5", version=5, clean=False))
    assert decode(d.take()).session_present is False


def test_session_expiry_capped_and_echoed():
    """MQTT 5: when the server uses another session expiry than the client asked for it says
    so in CONNACK (section 3.2.2.3.2)."""
    w = World(max_session_expiry=100)
    c = w.client()
    c.send(connect("cap", version=5, clean=False, properties={SESSION_EXPIRY: 1000}))
    ack = decode(c.take())
    assert ack.properties == {**DEFAULT_V5_PROPS, SESSION_EXPIRY: 100}
    assert w.registry.get("cap").expiry_interval == 100


def test_server_keep_alive_and_response_information():
    """MQTT 5: a server keep alive replaces the client's and is sent in CONNACK [MQTT-3.2.2-21];
    response information is sent when requested (section 3.2.2.3.15)."""
    w = World(server_keep_alive=30, response_information="reply/{client_id}")
    c = w.client()
    c.send(connect("ka", version=5, keepalive=600, properties={REQUEST_RESPONSE_INFO: 1}))
    ack = decode(c.take())
    assert ack.properties == {**DEFAULT_V5_PROPS, SERVER_KEEP_ALIVE: 30,
                              RESPONSE_INFO: "reply/ka"}
    assert c.proto.keepalive == 30


def test_redirect():
    """MQTT 5: server redirection, CONNACK 0x9C with a server reference (section 4.11);
    MQTT 3.1.1 gets return code 3 (server unavailable). Both are closed."""
    w = World(redirect_to="other.example:1883")
    c5 = w.client()
    c5.send(connect("r5", version=5))
    ack = decode(c5.take())
    assert ack.reason_code == 0x9C
    assert ack.properties.pop(SERVER_REFERENCE) == "other.example:1883"
    assert only_reason_string(ack.properties)
    assert c5.closed
    c4 = w.client()
    c4.send(connect("r4"))
    assert c4.take() == b"\x20\x02\x00\x03"
    assert c4.closed
    assert w.registry.get("r5") is None and w.registry.get("r4") is None


# -- the first packet, the second CONNECT ------------------------------------------------------


@pytest.mark.parametrize("first", [
    PINGREQ_BYTES,
    publish("a/b", b"x"),
    subscribe(1, "a/b"),
    disconnect(),
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",      # a TLS ClientHello
], ids=["pingreq", "publish", "subscribe", "disconnect", "http", "tls"])
def test_first_packet_not_connect(first):
    """The first packet from a client must be CONNECT [MQTT-3.1.0-1]: anything else closes the
    connection, without CONNACK (3.1.1 has no code for it) and without waiting for the body
    that the garbage announces."""
    w = World()
    c = w.client()
    c.send(first)
    assert c.closed
    assert c.io.written == b""
    assert w.registry.sessions == {}


def test_first_byte_alone_not_connect():
    """[MQTT-3.1.0-1]: one byte is enough to refuse a stream that does not start with CONNECT."""
    w = World()
    c = w.client()
    c.send(b"\x82")
    assert c.closed and c.io.written == b""


def test_second_connect_311():
    """3.1.1: a second CONNECT is a protocol violation: the connection is closed [MQTT-3.1.0-2],
    with nothing sent (3.1.1 has no DISCONNECT from the server)."""
    w = World()
    c = w.connected("twice")
    c.send(connect("twice"))
    assert c.closed
    assert c.take() == b""
    assert w.registry.get("twice") is None      # clean session: ended with the connection


def test_second_connect_5():
    """MQTT 5: a second CONNECT is a Protocol Error [MQTT-3.1.0-2]: DISCONNECT 0x82, then close
    [MQTT-4.13.1-1]. With request problem information 0 no reason string is added."""
    w = World()
    c = w.connected("twice5", version=5, properties=QUIET)
    c.send(connect("twice5", version=5))
    assert c.take() == b"\xe0\x01\x82"
    assert c.closed

    d = w.connected("twice5b", version=5)
    d.send(connect("twice5b", version=5))
    (frame,) = d.take_frames()
    msg = decode(frame)
    assert (msg.type, msg.reason_code) == (DISCONNECT, 0x82)
    assert set(msg.properties) == {REASON_STRING}


# -- protocol level ---------------------------------------------------------------------------


@pytest.mark.parametrize("name,level", [("MQTT", 6), ("MQTT", 2), ("MQTT", 0x85),
                                        ("MQIsdp", 4), ("MQTT", 3)])
def test_bad_protocol_level(name, level):
    """3.1.1: an unsupported protocol level gets CONNACK 0x01 (unacceptable protocol level),
    then the connection is closed [MQTT-3.1.2-2]. The level is unknown, so the broker cannot
    tell an MQTT 5 client from another: it answers in the 3.1.1 form (as mosquitto does)."""
    w = World()
    c = w.client()
    c.send(connect("lvl", version=4, protocol_name=name, level=level))
    assert c.take() == b"\x20\x02\x00\x01"
    assert c.closed
    assert w.registry.get("lvl") is None


@pytest.mark.parametrize("name", ["MQIsdp", "MQTX", "mqtt"])
def test_wrong_protocol_name_at_level_5_is_refused_in_the_5_0_format(name):
    """Level 5 says MQTT 5, whatever the name: the refusal, 0x84 (unsupported protocol
    version), comes in the 5.0 CONNACK format that client reads; then the connection closes."""
    w = World()
    c = w.client()
    c.send(connect("lvl", version=5, protocol_name=name, level=5))
    frames = c.take_frames()
    assert frames[0][0] == 0x20 and frames[0][2:4] == b"\x00\x84"
    assert c.closed
    assert w.registry.get("lvl") is None


# -- client identifiers -----------------------------------------------------------------------


def test_empty_client_id_311_clean():
    """3.1.1: a zero-byte client id with clean session 1 is accepted and the server assigns a
    unique id [MQTT-3.1.3-6]: two such clients are both connected."""
    w = World()
    a = w.client()
    a.send(connect(""))
    b = w.client()
    b.send(connect(""))
    assert a.take() == b"\x20\x02\x00\x00"
    assert b.take() == b"\x20\x02\x00\x00"
    assert a.open and b.open
    assert a.proto.client_id and b.proto.client_id and a.proto.client_id != b.proto.client_id


def test_empty_client_id_311_persistent_refused():
    """3.1.1: a zero-byte client id with clean session 0 -> CONNACK 0x02 (identifier rejected)
    and close [MQTT-3.1.3-8]."""
    w = World()
    c = w.client()
    c.send(connect("", clean=False))
    assert c.take() == b"\x20\x02\x00\x02"
    assert c.closed
    assert w.registry.sessions == {}


@pytest.mark.parametrize("client_id,accepted", [("", False), ("a" * 23, True),
                                                ("a" * 24, False)])
def test_client_id_31(client_id, accepted):
    """MQTT 3.1: client identifiers are 1 to 23 characters (3.1 section 3.1, "Client
    Identifier"); others get return code 2."""
    w = World()
    c = w.client()
    c.send(connect(client_id, version=3))
    assert c.take() == (b"\x20\x02\x00\x00" if accepted else b"\x20\x02\x00\x02")
    assert c.closed is not accepted


def test_empty_client_id_5_assigned():
    """MQTT 5: a zero-length client id gets a CONNACK with an Assigned Client Identifier, new
    and not used by another session [MQTT-3.2.2-16]; clean start 0 is allowed too."""
    w = World()
    ids = []
    for clean in (True, False):
        c = w.client()
        c.send(connect("", version=5, clean=clean))
        ack = decode(c.take())
        assert ack.reason_code == 0
        assigned = ack.properties.pop(ASSIGNED_CLIENT_ID)
        assert ack.properties == DEFAULT_V5_PROPS
        assert assigned and assigned == c.proto.client_id
        assert w.registry.get(assigned).client is c.proto
        ids.append(assigned)
    assert ids[0] != ids[1]


def test_empty_client_id_not_allowed():
    """With zero-length client ids disabled: 3.1.1 CONNACK 0x02 [MQTT-3.1.3-9]; MQTT 5 CONNACK
    0x85 (client identifier not valid) [MQTT-3.1.3-8]."""
    w = World(allow_zero_length_client_id=False)
    c = w.client()
    c.send(connect(""))
    assert c.take() == b"\x20\x02\x00\x02"
    assert c.closed
    c5 = w.client()
    c5.send(connect("", version=5, properties=QUIET))
    assert c5.take() == b"\x20\x03\x00\x85\x00"
    assert c5.closed


# -- password authentication ------------------------------------------------------------------


def secured(**kw) -> World:
    return World(Config(sys_interval=0, users={"alice": "secret"}, allow_anonymous=False, **kw))


def test_password_accepted():
    """3.1.1 section 3.1.3.5: a configured user with its password is accepted (CONNACK 0)."""
    w = secured()
    c = w.client()
    c.send(connect("dev", username="alice", password=b"secret"))
    assert c.take() == b"\x20\x02\x00\x00"
    assert c.proto.username == "alice"


@pytest.mark.parametrize("username,password,code", [
    ("alice", b"wrong", 0x05),
    ("bob", b"secret", 0x05),
    ("alice", None, 0x05),
    (None, None, 0x05),
], ids=["bad-password", "unknown-user", "no-password", "anonymous"])
def test_password_refused_311(username, password, code):
    """3.1.1: a bad user name or password, and an anonymous client where none are allowed, get
    CONNACK 0x05 (not authorized; table 3.1 also has 0x04, but 0x05 is what mosquitto answers
    and what clients written against it expect) (section 3.2.2.3); session present is 0
    [MQTT-3.2.2-4] and the connection is closed [MQTT-3.2.2-5]. No session is made."""
    w = secured()
    c = w.client()
    c.send(connect("dev", username=username, password=password))
    assert c.take() == bytes([0x20, 0x02, 0x00, code])
    assert c.closed
    assert w.registry.sessions == {}


def test_password_refused_5():
    """MQTT 5: CONNACK 0x86 (bad user name or password) / 0x87 (not authorized), then close
    (section 3.2.2.2)."""
    w = secured()
    c = w.client()
    c.send(connect("dev", version=5, username="alice", password=b"nope", properties=QUIET))
    assert c.take() == b"\x20\x03\x00\x86\x00"
    assert c.closed
    d = w.client()
    d.send(connect("dev", version=5))
    ack = decode(d.take())
    assert ack.reason_code == 0x87 and not ack.session_present
    assert only_reason_string(ack.properties)
    assert d.closed


def test_anonymous_allowed_with_users():
    """allow_anonymous: a client without a user name connects; a wrong password is still
    refused (0x05, not authorized, as mosquitto answers)."""
    w = World(Config(sys_interval=0, users={"alice": "secret"}, allow_anonymous=True))
    a = w.client()
    a.send(connect("anon"))
    assert a.take() == b"\x20\x02\x00\x00"
    b = w.client()
    b.send(connect("bad", username="alice", password=b"x"))
    assert b.take() == b"\x20\x02\x00\x05"


def test_failed_auth_does_not_take_over():
    """A CONNECT that fails authentication must not disturb the session of the client id it
    names: the connected client stays connected and attached (section 3.1.4: takeover happens
    only after the server has accepted the new connection)."""
    w = secured()
    good = w.client()
    good.send(connect("dev", clean=False, username="alice", password=b"secret"))
    assert good.take() == b"\x20\x02\x00\x00"
    bad = w.client()
    bad.send(connect("dev", clean=True, username="alice", password=b"guess"))
    assert bad.take() == b"\x20\x02\x00\x05"
    assert good.open
    assert w.registry.get("dev").client is good.proto
    good.send(PINGREQ_BYTES)
    assert good.take() == PINGRESP_BYTES


# -- takeover ---------------------------------------------------------------------------------


def test_takeover_311():
    """3.1.1: a second connection with a connected client id makes the server disconnect the
    existing client [MQTT-3.1.4-2] (3.1.1 has no DISCONNECT from the server: it is closed).
    The old connection's later loss does not detach the new one."""
    w = World()
    old = w.connected("dup", clean=False)
    old.send(subscribe(1, ("t", 1)))
    assert old.take() == suback(1, 1)
    new = w.client()
    new.send(connect("dup", clean=False))
    assert new.take() == b"\x20\x02\x01\x00"      # the session is taken, with its subscription
    assert old.closed and old.take() == b""
    assert old.io.lost                            # connection_lost() came, and did nothing
    assert w.registry.get("dup").client is new.proto
    pub = w.connected("pub")
    pub.send(publish("t", b"hi"))
    assert new.take() == b"\x30\x05\x00\x01thi"
    new.send(PINGREQ_BYTES)
    assert new.take() == PINGRESP_BYTES


def test_takeover_5_disconnect_8e():
    """MQTT 5: the existing client gets DISCONNECT 0x8E (session taken over) and is closed
    [MQTT-3.1.4-3]; the new one is accepted."""
    w = World()
    old = w.connected("dup5", version=5, properties=QUIET)
    new = w.client()
    new.send(connect("dup5", version=5))
    assert decode(new.take()).reason_code == 0
    assert old.take() == b"\xe0\x01\x8e"
    assert old.closed
    assert w.registry.get("dup5").client is new.proto


def test_takeover_5_reason_string():
    """MQTT 5 [MQTT-3.1.4-3]: with problem information on (the default) the DISCONNECT 0x8E
    may carry a reason string, and nothing else."""
    w = World()
    old = w.connected("dup5r", version=5)
    w.client().send(connect("dup5r", version=5))
    (frame,) = old.take_frames()
    d = decode(frame)
    assert (d.type, d.reason_code) == (DISCONNECT, 0x8E)
    assert only_reason_string(d.properties)


def test_takeover_mixed_versions():
    """Takeover across protocol versions: a 3.1.1 client taken over by an MQTT 5 one is closed
    without any packet (it speaks 3.1.1) [MQTT-3.1.4-2]."""
    w = World()
    old = w.connected("mix")
    new = w.client()
    new.send(connect("mix", version=5))
    assert decode(new.take()).reason_code == 0
    assert old.closed and old.take() == b""


def test_takeover_publishes_old_will():
    """The connection taken over did not send DISCONNECT: its will is published
    [MQTT-3.1.2-8] (MQTT 5 section 3.1.4: "If the existing Client has a Will Message, that
    Will Message is published")."""
    w = World()
    watcher = w.connected("watcher")
    watcher.send(subscribe(1, "will/#"))
    assert watcher.take() == suback(1, 0)
    w.connected("dupw", will=Will("will/dupw", b"bye"))
    w.client().send(connect("dupw"))
    assert watcher.take() == b"\x30\x0e\x00\x09will/dupwbye"


# -- malformed CONNECT ------------------------------------------------------------------------


@pytest.mark.parametrize("flags,why", [
    (0x03, "reserved flag set [MQTT-3.1.2-3]"),
    (0x42, "password without user name [MQTT-3.1.2-22]"),
    (0x1E, "will QoS 3 [MQTT-3.1.2-14]"),
    (0x0A, "will QoS without the will flag [MQTT-3.1.2-13]"),
    (0x22, "will retain without the will flag [MQTT-3.1.2-15]"),
])
def test_malformed_connect_311(flags, why):
    """3.1.1: a CONNECT with bad flags is closed without CONNACK (none of its codes fits)."""
    w = World()
    c = w.client()
    c.send(connect("m", flags=flags))
    assert c.closed, why
    assert c.io.written == b""


def test_malformed_connect_5():
    """MQTT 5: a malformed CONNECT (reserved flag [MQTT-3.1.2-3]) may get CONNACK 0x81 before
    the close [MQTT-4.13.1-1]."""
    w = World()
    c = w.client()
    c.send(connect("m5", version=5, flags=0x03))
    ack = decode(c.take())
    assert (ack.type, ack.reason_code, ack.session_present) == (CONNACK, 0x81, False)
    assert only_reason_string(ack.properties)
    assert c.closed


def test_will_qos_not_supported_5():
    """MQTT 5: a will QoS above the server's maximum QoS -> CONNACK 0x9B [MQTT-3.2.2-12]."""
    w = World(maximum_qos=1)
    c = w.client()
    c.send(connect("wq", version=5, will=Will("w", b"x", qos=2), properties=QUIET))
    assert c.take() == b"\x20\x03\x00\x9b\x00"
    assert c.closed


def test_connack_5_announces_limits():
    """MQTT 5: what the server does not support is announced in CONNACK: maximum QoS
    [MQTT-3.2.2-9], retain available, wildcard / subscription identifier / shared
    subscription available (sections 3.2.2.3.4 to 3.2.2.3.13)."""
    w = World(maximum_qos=1, retain_available=False, wildcard_subscription_available=False,
              subscription_identifier_available=False, shared_subscription_available=False)
    c = w.client()
    c.send(connect("lim", version=5))
    ack = decode(c.take())
    assert ack.properties == {**DEFAULT_V5_PROPS, 0x24: 1, 0x25: 0, 0x28: 0, 0x29: 0, 0x2A: 0}


def test_no_auth_method_in_connack_without_one():
    """MQTT 5: without an authentication method in CONNECT the server must not send one in
    CONNACK [MQTT-4.12.0-6]."""
    w = World()
    c = w.client()
    c.send(connect("noauth", version=5, username="u", password=b"p"))
    assert AUTH_METHOD not in decode(c.take()).properties


def test_connect_frames_split_and_joined():
    """A CONNECT followed by a PINGREQ in one chunk gets CONNACK then PINGRESP, in order."""
    w = World()
    c = w.client()
    c.send(connect("j") + PINGREQ_BYTES)
    assert frames(c.take()) == [b"\x20\x02\x00\x00", PINGRESP_BYTES]


@pytest.mark.parametrize("version", [4, 5])
def test_takeover_of_a_clean_session_starts_a_new_one(version):
    """A session with expiry 0 (3.1.1 clean session 1, MQTT 5 no session expiry) lasts as long
    as its network connection [MQTT-3.1.2-6]: taking that connection over ends it, so a new
    CONNECT with clean start 0 gets session present 0 and none of its subscriptions."""
    w = World()
    old = w.connected("cs", version=version, clean=True,
                      **({"properties": QUIET} if version == 5 else {}))
    old.send(subscribe(1, ("t", 1), version=version))
    assert old.take() == suback(1, 1, version=version)
    new = w.client()
    new.send(connect("cs", version=version, clean=False))
    ack = decode(new.take_frames()[0])
    assert (ack.type, ack.reason_code, ack.session_present) == (CONNACK, 0, False)
    assert old.closed
    assert w.registry.get("cs").subscriptions == {}
    pub = w.connected("pub-cs")
    pub.send(publish("t", b"not for the new session"))
    assert new.take() == b""
