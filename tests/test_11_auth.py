"""Authentication: user name/password, MQTT 5 enhanced authentication (AUTH, section 4.12) with
the built-in SCRAM-SHA-256 and with a pluggable Python authenticator, re-authentication."""
import base64
import os

import pytest

from cymqtt._fast.codec import Auth, Connect, Disconnect, Publish, Subscribe, encode
from cymqtt.auth import AuthExchange, Authenticator, AuthStep, scram_client_proof
from _testbase import BrokerThread, RawClient

USERS = {"alice": "wonderland", "bob": "builder"}
SCRAM = "SCRAM-SHA-256"


def scram_connect(port: int, user: str, password: str, client_id: str = "scram"):
    """Run the SCRAM-SHA-256 exchange; returns (client, final packet from the broker)."""
    c = RawClient(port, 5)
    cnonce = base64.b64encode(os.urandom(12)).decode()
    first_bare = f"n={user},r={cnonce}"
    c.send_packet(Connect(client_id, version=5, properties={
        0x15: SCRAM, 0x16: ("n,," + first_bare).encode()}))
    p = c.recv_packet()
    if p is None or p.name != "AUTH":
        return c, p
    assert p.reason_code == 0x18
    assert p.properties[0x15] == SCRAM
    server_first = p.properties[0x16].decode()
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert attrs["r"].startswith(cnonce)
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{first_bare},{server_first},{without_proof}".encode()
    proof = scram_client_proof(password, base64.b64decode(attrs["s"]), int(attrs["i"]),
                               auth_message)
    c.send_packet(Auth(0x18, {0x15: SCRAM, 0x16: (
        f"{without_proof},p={base64.b64encode(proof).decode()}").encode()}))
    return c, c.recv_packet()


@pytest.fixture
def scram_broker(make_broker):
    return make_broker(users=USERS)


def test_scram_success_gives_connack_with_server_final(scram_broker):
    c, ack = scram_connect(scram_broker.port, "alice", "wonderland")
    assert ack.name == "CONNACK" and ack.reason_code == 0
    assert ack.properties[0x15] == SCRAM
    assert ack.properties[0x16].startswith(b"v=")
    # and the connection works
    c.send_packet(Subscribe(1, [("t", 0)]))
    assert c.recv_packet().name == "SUBACK"


def test_scram_wrong_password_is_refused_with_0x86(scram_broker):
    c, ack = scram_connect(scram_broker.port, "alice", "looking-glass")
    assert ack.name == "CONNACK" and ack.reason_code == 0x86
    assert c.closed()


def test_scram_unknown_user_is_refused(scram_broker):
    c, ack = scram_connect(scram_broker.port, "mallory", "x")
    assert ack.name == "CONNACK" and ack.reason_code == 0x86
    assert c.closed()


def test_unknown_authentication_method_gets_0x8c(scram_broker):
    c = RawClient(scram_broker.port, 5)
    c.send_packet(Connect("x", version=5, properties={0x15: "KERBEROS"}))
    ack = c.recv_packet()
    assert ack.name == "CONNACK" and ack.reason_code == 0x8C
    assert c.closed()


def test_auth_without_method_is_a_protocol_error(broker):
    c = RawClient(broker.port, 5)
    c.send_packet(Connect("x", version=5))
    assert c.recv_packet().reason_code == 0
    c.send_packet(Auth(0x19, {0x15: SCRAM}))
    d = c.recv_packet()
    assert d.name == "DISCONNECT" and d.reason_code == 0x82
    assert c.closed()


def test_packets_other_than_auth_during_the_exchange_are_refused(scram_broker):
    c = RawClient(scram_broker.port, 5)
    c.send_packet(Connect("x", version=5, properties={0x15: SCRAM,
                                                      0x16: b"n,,n=alice,r=abc"}))
    assert c.recv_packet().name == "AUTH"
    c.send_packet(Publish("t", b"too early"))
    ack = c.recv_packet()
    assert ack.name == "CONNACK" and ack.reason_code == 0x82
    assert c.closed()


class Token(Authenticator):
    """Two rounds: the broker asks for a challenge answer, then accepts 'ok:<challenge>'."""

    method = "TOKEN"

    def __init__(self):
        self.started = []

    def start(self, client_id, username):
        self.started.append(client_id)
        return TokenExchange()


class TokenExchange(AuthExchange):
    def __init__(self):
        self.challenge = None

    def step(self, data):
        if self.challenge is None:
            if data != b"hello":
                return AuthStep.failure(0x87, "say hello first")
            self.challenge = b"42"
            return AuthStep.continue_with(self.challenge)
        if data == b"ok:" + self.challenge:
            return AuthStep.success(b"welcome")
        return AuthStep.failure(0x87, "wrong answer")


def test_pluggable_authenticator_continue_success_and_reauthentication():
    token = Token()
    bt = BrokerThread(authenticators=[token], sys_interval=0)
    try:
        c = RawClient(bt.port, 5)
        c.send_packet(Connect("tok", version=5, properties={0x15: "TOKEN", 0x16: b"hello"}))
        p = c.recv_packet()
        assert p.name == "AUTH" and p.reason_code == 0x18 and p.properties[0x16] == b"42"
        c.send_packet(Auth(0x18, {0x15: "TOKEN", 0x16: b"ok:42"}))
        ack = c.recv_packet()
        assert ack.name == "CONNACK" and ack.reason_code == 0
        assert ack.properties[0x16] == b"welcome"
        # re-authentication on the live connection [MQTT-4.12.1]
        c.send_packet(Auth(0x19, {0x15: "TOKEN", 0x16: b"hello"}))
        p = c.recv_packet()
        assert p.name == "AUTH" and p.reason_code == 0x18
        c.send_packet(Auth(0x18, {0x15: "TOKEN", 0x16: b"ok:42"}))
        p = c.recv_packet()
        assert p.name == "AUTH" and p.reason_code == 0x00
        assert token.started == ["tok", "tok"]
        # a failed re-authentication disconnects with the exchange's reason code
        c.send_packet(Auth(0x19, {0x15: "TOKEN", 0x16: b"hello"}))
        assert c.recv_packet().name == "AUTH"
        c.send_packet(Auth(0x18, {0x15: "TOKEN", 0x16: b"wrong"}))
        d = c.recv_packet()
        assert d.name == "DISCONNECT" and d.reason_code == 0x87
        assert c.closed()
        # a different method in AUTH than in CONNECT is a protocol error
        c2 = RawClient(bt.port, 5)
        c2.send_packet(Connect("tok2", version=5, properties={0x15: "TOKEN", 0x16: b"hello"}))
        assert c2.recv_packet().name == "AUTH"
        c2.send_packet(Auth(0x18, {0x15: "OTHER", 0x16: b"ok:42"}))
        assert c2.recv_packet().reason_code == 0x82
    finally:
        bt.stop()


@pytest.mark.parametrize("version", [4, 5])
def test_password_authentication(make_broker, version):
    """A wrong password: CONNACK 0x86 (5.0) or 0x05 (3.1.1 not authorized, as mosquitto)."""
    bt = make_broker(users=USERS, allow_anonymous=False)
    good = RawClient(bt.port, version)
    good.send_packet(Connect("g", version=version, username="bob", password=b"builder"))
    assert good.recv_packet().reason_code == 0
    bad = RawClient(bt.port, version)
    bad.send_packet(Connect("b", version=version, username="bob", password=b"x"))
    assert bad.recv_packet().reason_code == (0x86 if version == 5 else 0x05)
    assert bad.closed()
    anon = RawClient(bt.port, version)
    anon.send_packet(Connect("a", version=version))
    assert anon.recv_packet().reason_code == (0x87 if version == 5 else 0x05)
    assert anon.closed()
    good.send_packet(Disconnect())


class Broken(Authenticator):
    """A buggy plug-in: its exchange raises."""

    method = "BROKEN"

    def start(self, client_id, username):
        class Exchange(AuthExchange):
            def step(self, data):
                raise RuntimeError("plug-in bug")
        return Exchange()


def test_an_exception_while_serving_one_connection_closes_only_that_one(caplog):
    """DESIGN: the broker never crashes on a client; the error is logged, that connection gets
    0x83 (implementation specific error) and closes, everyone else goes on."""
    bt = BrokerThread(authenticators=[Broken()], sys_interval=0)
    try:
        other = RawClient(bt.port, 5)
        other.send_packet(Connect("other", version=5))
        assert other.recv_packet().reason_code == 0
        other.send_packet(Subscribe(1, [("t", 0)]))
        assert other.recv_packet().name == "SUBACK"
        bad = RawClient(bt.port, 5)
        bad.send_packet(Connect("bad", version=5, properties={0x15: "BROKEN", 0x16: b"x"}))
        ack = bad.recv_packet()
        assert ack.name == "CONNACK" and ack.reason_code == 0x83
        assert bad.closed()
        assert "plug-in bug" in caplog.text
        pub = RawClient(bt.port, 5)
        pub.send_packet(Connect("pub", version=5))
        assert pub.recv_packet().reason_code == 0
        pub.send_packet(Publish("t", b"still here"))
        assert other.recv_packet().payload == b"still here"
    finally:
        bt.stop()


class Slow(Authenticator):
    """A plug-in whose decision takes time off the event loop (a password hash, a call to
    another service): step() returns an asyncio future from run_in_executor."""

    method = "SLOW"

    def __init__(self) -> None:
        import threading
        self.release = threading.Event()     # the test decides when the answer comes

    def start(self, client_id, username):
        import asyncio
        release = self.release

        class Exchange(AuthExchange):
            def step(self, data):
                def decide():
                    release.wait(10)
                    if data == b"let-me-in":
                        return AuthStep.success()
                    return AuthStep.failure(0x86, "no")
                return asyncio.get_running_loop().run_in_executor(None, decide)
        return Exchange()


def test_a_pending_connect_decision_holds_that_client_only():
    """A CONNECT whose authenticator answers later: the broker reads nothing more from that
    client meanwhile (a SUBSCRIBE sent right behind the CONNECT is handled after CONNACK, in
    order), and every other client is served as usual while it waits."""
    slow = Slow()
    bt = BrokerThread(authenticators=[slow], sys_interval=0)
    try:
        c = RawClient(bt.port, 5)
        c.send(encode(Connect("waiting", version=5, properties={0x15: "SLOW", 0x16: b"let-me-in"}),
                      5) + encode(Subscribe(1, [("held/#", 1)]), 5))
        other = RawClient(bt.port, 5)
        other.send_packet(Connect("other", version=5))
        assert other.recv_packet().reason_code == 0
        other.send_packet(Subscribe(1, [("free", 0)]))
        assert other.recv_packet().name == "SUBACK"
        other.send_packet(Publish("free", b"not held up"))
        assert other.recv_packet().payload == b"not held up"
        with pytest.raises(TimeoutError):
            c.recv_packet(timeout=0.2)           # still deciding: nothing for this client
        slow.release.set()
        ack = c.recv_packet()
        assert ack.name == "CONNACK" and ack.reason_code == 0
        assert c.recv_packet().name == "SUBACK"
        other.send_packet(Publish("held/x", b"now subscribed"))
        assert c.recv_packet().payload == b"now subscribed"
        refused = RawClient(bt.port, 5)
        refused.send_packet(Connect("r", version=5, properties={0x15: "SLOW", 0x16: b"bad"}))
        ack = refused.recv_packet()
        assert ack.name == "CONNACK" and ack.reason_code == 0x86
        assert refused.closed()
    finally:
        slow.release.set()
        bt.stop()
