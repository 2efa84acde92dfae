"""Authentication decisions that take time, and MQTT 5 enhanced authentication (AUTH packets).

An `AuthExchange.step()` may answer with a future instead of an `AuthStep`: the protocol then
holds the client's input (reading paused; packets already read wait in order) and goes on after
the decision, CONNACK first. The futures here are the harness's tiny `Future` (add_done_callback
and result), not asyncio's. MQTT 5.0 section 4.12 (enhanced authentication) and 3.15 (AUTH).
"""
import base64
import hashlib
import hmac

import pytest

from cymqtt.auth import Auth, AuthStep
from cymqtt.config import Config
from cymqtt.consts import CONN_AUTH

from ._harness import (
    AUTH, AUTH_DATA, AUTH_METHOD, CONNACK, MAXIMUM_PACKET_SIZE, PINGREQ_BYTES,
    PINGRESP_BYTES, REASON_STRING, RECEIVE_MAXIMUM, REQUEST_PROBLEM_INFO, TOPIC_ALIAS_MAXIMUM,
    Future, Scripted, World, auth, connect, decode, frames, publish, subscribe, suback,
)

DEFAULT_V5_PROPS = {RECEIVE_MAXIMUM: 32, TOPIC_ALIAS_MAXIMUM: 64, MAXIMUM_PACKET_SIZE: 1048576}
QUIET = {REQUEST_PROBLEM_INFO: 0}


def method_connect(client_id="a", data=b"token", extra: dict | None = None):
    """An MQTT 5 CONNECT naming the TEST method, with authentication data."""
    return connect(client_id, version=5,
                   properties={AUTH_METHOD: "TEST", AUTH_DATA: data, **(extra or {})})


def ok_connack(frame: bytes, extra: dict | None = None) -> None:
    ack = decode(frame)
    assert (ack.type, ack.reason_code, ack.session_present) == (CONNACK, 0, False)
    assert ack.properties == {**DEFAULT_V5_PROPS, AUTH_METHOD: "TEST", **(extra or {})}


# -- a decision that takes time ---------------------------------------------------------------


def test_pending_decision_holds_input_then_handles_it_in_order():
    """While the authenticator's answer is pending nothing is sent, reading is paused and the
    packets pipelined behind CONNECT wait; after the decision CONNACK goes first
    [MQTT-3.2.0-1], then the SUBACK and PINGRESP of the waiting packets, then what the client
    sent meanwhile (held by the paused transport), and reading resumes."""
    fut = Future()
    a = Scripted(fut)
    w = World(authenticators=[a])
    c = w.client()
    c.send(method_connect(), subscribe(1, ("t", 1), version=5), PINGREQ_BYTES)
    assert c.take() == b""
    assert c.paused and c.io.pause_calls == 1
    assert c.proto.state == CONN_AUTH
    assert w.registry.get("a") is None
    c.send(publish("t", b"mine", qos=1, pid=5, version=5))       # arrives while paused
    assert c.io.held and c.take() == b""
    assert a.seen == [b"token"]

    fut.set_result(AuthStep.success())
    out = c.take_frames()
    ok_connack(out[0])
    assert out[1:] == [suback(1, 1, version=5), PINGRESP_BYTES,
                       publish("t", b"mine", qos=1, pid=1, version=5),
                       b"\x40\x02\x00\x05"]
    assert not c.paused and c.io.resume_calls == 1
    assert w.registry.get("a").client is c.proto


def test_other_clients_not_held():
    """One client's pending decision holds only that client (auth.py: "other clients are not
    held up")."""
    fut = Future()
    w = World(authenticators=[Scripted(fut)])
    slow = w.client()
    slow.send(method_connect("slow"))
    fast = w.connected("fast")
    fast.send(subscribe(1, "x"), PINGREQ_BYTES)
    assert fast.take() == suback(1, 0) + PINGRESP_BYTES
    assert slow.take() == b"" and slow.paused
    fut.set_result(AuthStep.success())
    ok_connack(slow.take())


def test_pending_decision_fails():
    """A failing decision -> CONNACK with its reason code (here 0x87 with the reason given)
    and close [MQTT-4.12.0-4]; the packets that waited are not handled and no session is
    made."""
    fut = Future()
    w = World(authenticators=[Scripted(fut)])
    c = w.client()
    c.send(method_connect(), subscribe(1, "t", version=5))
    fut.set_result(AuthStep.failure(0x87, "not on the list"))
    (frame,) = c.take_frames()
    ack = decode(frame)
    assert (ack.type, ack.reason_code) == (CONNACK, 0x87)
    assert ack.properties == {REASON_STRING: "not on the list"}
    assert c.closed
    assert c.io.resume_calls == 0
    assert w.registry.sessions == {}


def test_pending_decision_fails_quiet_byte_exact():
    """The same with request problem information 0: CONNACK 0x86 with no properties."""
    fut = Future()
    w = World(authenticators=[Scripted(fut)])
    c = w.client()
    c.send(method_connect(extra=QUIET))
    fut.set_result(AuthStep.failure(0x86))
    assert c.take() == b"\x20\x03\x00\x86\x00"
    assert c.closed


def test_pending_decision_raises():
    """A decision that ends in an exception closes the connection with CONNACK 0x83
    (implementation specific error); the broker goes on serving others."""
    fut = Future()
    w = World(authenticators=[Scripted(fut)])
    c = w.client()
    c.send(method_connect(extra=QUIET))
    fut.set_exception(RuntimeError("auth service down"))
    assert c.take() == b"\x20\x03\x00\x83\x00"
    assert c.closed
    w.connected("next")


def test_connection_lost_while_pending():
    """The client goes away before the decision: when it comes, nothing is sent and no
    session is made."""
    fut = Future()
    w = World(authenticators=[Scripted(fut)])
    c = w.client()
    c.send(method_connect())
    c.drop()
    fut.set_result(AuthStep.success())
    assert c.take() == b""
    assert w.registry.sessions == {}


def test_already_done_future():
    """A future that is already done when step() returns it works like an answer now."""
    fut = Future()
    fut.set_result(AuthStep.success())
    w = World(authenticators=[Scripted(fut)])
    c = w.client()
    c.send(method_connect(), subscribe(1, "t", version=5))
    out = c.take_frames()
    ok_connack(out[0])
    assert out[1:] == [suback(1, 0, version=5)]
    assert not c.paused


# -- enhanced authentication ------------------------------------------------------------------


def test_enhanced_auth_challenge_response():
    """The server asks for more with AUTH 0x18 [MQTT-4.12.0-2], the client answers AUTH 0x18
    [MQTT-4.12.0-3]; every AUTH and the successful CONNACK carry the CONNECT's method
    [MQTT-4.12.0-5]; the final data goes in CONNACK."""
    a = Scripted(AuthStep.continue_with(b"challenge"), AuthStep.success(b"welcome"))
    w = World(authenticators=[a])
    c = w.client()
    c.send(method_connect("e", b"hello"))
    (frame,) = c.take_frames()
    d = decode(frame)
    assert (d.type, d.reason_code) == (AUTH, 0x18)
    assert d.properties == {AUTH_METHOD: "TEST", AUTH_DATA: b"challenge"}
    assert c.proto.state == CONN_AUTH
    c.send(auth(0x18, {AUTH_METHOD: "TEST", AUTH_DATA: b"response"}))
    ok_connack(c.take(), {AUTH_DATA: b"welcome"})
    assert a.seen == [b"hello", b"response"]
    assert a.started == [("e", None)]


def test_enhanced_auth_async_middle_step():
    """A later step may be pending too: the AUTH's answer waits, then CONNACK."""
    fut = Future()
    w = World(authenticators=[Scripted(AuthStep.continue_with(b"c"), fut)])
    c = w.client()
    c.send(method_connect())
    assert decode(c.take()).type == AUTH
    c.send(auth(0x18, {AUTH_METHOD: "TEST", AUTH_DATA: b"r"}), PINGREQ_BYTES)
    assert c.take() == b"" and c.paused
    fut.set_result(AuthStep.success())
    out = c.take_frames()
    ok_connack(out[0])
    assert out[1:] == [PINGRESP_BYTES]


def test_unknown_method():
    """An authentication method the server does not support -> CONNACK 0x8C (bad
    authentication method) and close [MQTT-4.12.0-1]."""
    w = World(authenticators=[Scripted()])
    c = w.client()
    c.send(connect("u", version=5, properties={AUTH_METHOD: "NOPE", **QUIET}))
    assert c.take() == b"\x20\x03\x00\x8c\x00"
    assert c.closed


@pytest.mark.parametrize("frame", [
    auth(0x18, {AUTH_METHOD: "OTHER", AUTH_DATA: b"r"}),
    auth(0x19, {AUTH_METHOD: "TEST"}),
    publish("t", b"x", version=5),
], ids=["other-method", "reauth-during-connect", "publish"])
def test_wrong_packet_during_exchange(frame):
    """During the exchange the client may send only AUTH 0x18 with the same method
    [MQTT-4.12.0-5, MQTT-3.1.2-30]: anything else -> CONNACK 0x82 (protocol error)."""
    w = World(authenticators=[Scripted(AuthStep.continue_with(b"c"))])
    c = w.client()
    c.send(method_connect(extra=QUIET))
    assert decode(c.take()).type == AUTH
    c.send(frame)
    assert c.take() == b"\x20\x03\x00\x82\x00"
    assert c.closed


def test_failure_during_exchange():
    """The server may refuse at any step: CONNACK with a reason code >= 0x80 [MQTT-4.12.0-4]."""
    w = World(authenticators=[Scripted(AuthStep.continue_with(b"c"), AuthStep.failure(0x86))])
    c = w.client()
    c.send(method_connect(extra=QUIET))
    c.take()
    c.send(auth(0x18, {AUTH_METHOD: "TEST", AUTH_DATA: b"bad"}))
    assert c.take() == b"\x20\x03\x00\x86\x00"
    assert c.closed


def test_auth_without_method():
    """A client that gave no authentication method must not send AUTH [MQTT-4.12.0-7]: after
    CONNACK that is DISCONNECT 0x82; in 3.1.1 packet type 15 is reserved and closes."""
    w = World()
    c5 = w.connected("c5", version=5, properties=QUIET)
    c5.send(auth(0x19, {AUTH_METHOD: "TEST"}))
    assert c5.take() == b"\xe0\x01\x82"
    assert c5.closed
    c4 = w.connected("c4")
    c4.send(b"\xf0\x00")
    assert c4.closed and c4.take() == b""


def test_reauthentication():
    """After CONNACK the client may re-authenticate with AUTH 0x19 and the same method
    [MQTT-4.12.1-1]; success is AUTH 0x00 with the method; a failure disconnects with the
    failure's code (section 4.12.1)."""
    a = Scripted(AuthStep.success(), AuthStep.continue_with(b"again?"), AuthStep.success(),
                 AuthStep.failure(0x87))
    w = World(authenticators=[a])
    c = w.client()
    c.send(method_connect(extra=QUIET))
    ok_connack(c.take())
    c.send(auth(0x19, {AUTH_METHOD: "TEST", AUTH_DATA: b"re"}))
    d = decode(c.take())
    assert (d.type, d.reason_code, d.properties) == \
        (AUTH, 0x18, {AUTH_METHOD: "TEST", AUTH_DATA: b"again?"})
    c.send(auth(0x18, {AUTH_METHOD: "TEST", AUTH_DATA: b"yes"}))
    d = decode(c.take())
    assert (d.type, d.reason_code, d.properties) == (AUTH, 0x00, {AUTH_METHOD: "TEST"})
    assert len(a.started) == 2
    c.send(PINGREQ_BYTES)
    assert c.take() == PINGRESP_BYTES
    c.send(auth(0x19, {AUTH_METHOD: "TEST"}))
    assert c.take() == b"\xe0\x01\x87"
    assert c.closed
    assert a.seen == [b"token", b"re", b"yes", None]


# -- the built-in SCRAM-SHA-256 ---------------------------------------------------------------


def _scram_client_final(password: str, client_first_bare: str, server_first: str) -> tuple:
    # RFC 5802 section 3, written out here (not cymqtt's helper).
    attrs = dict(part.split("=", 1) for part in server_first.split(","))
    salt = base64.b64decode(attrs["s"])
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{client_first_bare},{server_first},{without_proof}".encode()
    signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    proof = bytes(x ^ y for x, y in zip(client_key, signature))
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    verifier = base64.b64encode(hmac.new(server_key, auth_message, hashlib.sha256).digest())
    return f"{without_proof},p={base64.b64encode(proof).decode()}", b"v=" + verifier


@pytest.mark.parametrize("password,accepted", [("s3cret", True), ("wrong", False)])
def test_scram_sha_256(password, accepted):
    """SCRAM-SHA-256 over AUTH (RFC 5802/7677): client-first in CONNECT, server-first in AUTH
    0x18, client-final in AUTH 0x18, server-final in CONNACK; a wrong password -> 0x86."""
    w = World(Config(sys_interval=0, users={"alice": "s3cret"}, allow_anonymous=False))
    c = w.client()
    first_bare = "n=alice,r=clientnonce123"
    c.send(connect("sc", version=5, properties={
        AUTH_METHOD: "SCRAM-SHA-256", AUTH_DATA: ("n,," + first_bare).encode(), **QUIET}))
    d = decode(c.take())
    assert (d.type, d.reason_code, d.properties[AUTH_METHOD]) == (AUTH, 0x18, "SCRAM-SHA-256")
    server_first = d.properties[AUTH_DATA].decode()
    assert server_first.startswith("r=clientnonce123")
    final, verifier = _scram_client_final(password, first_bare, server_first)
    c.send(auth(0x18, {AUTH_METHOD: "SCRAM-SHA-256", AUTH_DATA: final.encode()}))
    if accepted:
        ack = decode(c.take())
        assert ack.reason_code == 0
        assert ack.properties[AUTH_METHOD] == "SCRAM-SHA-256"
        assert ack.properties[AUTH_DATA] == verifier
        assert c.open
    else:
        assert frames(c.take()) == [b"\x20\x03\x00\x86\x00"]
        assert c.closed


def test_disconnect_during_exchange():
    """DISCONNECT before CONNACK (section 4.12: the client may send AUTH or DISCONNECT)
    just closes, without a reply."""
    w = World(authenticators=[Scripted(AuthStep.continue_with(b"c"))])
    c = w.client()
    c.send(method_connect())
    c.take()
    c.send(b"\xe0\x00")
    assert c.closed and c.take() == b""


class SlowPasswords(Auth):
    """A password check that answers later (a PBKDF2 or argon2 hash off the loop, say)."""

    def __init__(self, answer: Future) -> None:
        super().__init__({"u": "p"})
        self.answer = answer

    def check(self, username, password):
        return self.answer


def test_pending_password_check_holds_even_data_the_shell_delivers_anyway():
    """A CONNECT whose password check is pending (state still CONN_NEW): bytes that reach the
    protocol meanwhile, even from a shell that does not stop reading at once, wait in order
    and are handled after CONNACK; they are not mistaken for a first packet that is not
    CONNECT [MQTT-3.1.0-1]."""
    fut = Future()
    w = World()
    w.ctx.auth = SlowPasswords(fut)
    c = w.client()
    c.send(connect("pw", username="u", password=b"p"))
    assert c.paused and c.take() == b""
    c.proto.receive_data(PINGREQ_BYTES)              # straight in, past the paused shell
    c.proto.receive_data(subscribe(1, ("t", 0)))
    assert c.take() == b"" and not c.closed
    fut.set_result(AuthStep.success())
    assert c.take() == b"\x20\x02\x00\x00" + PINGRESP_BYTES + suback(1, 0)
    assert not c.paused


def test_malformed_bytes_behind_a_pending_connect_wait_their_turn():
    """Garbage right behind a CONNECT whose decision is pending is answered after the decision,
    in order: CONNACK 0 first, then DISCONNECT 0x81 for the malformed packet (MQTT 5), not a
    refusal of the CONNECT itself."""
    fut = Future()
    w = World(authenticators=[Scripted(fut)])
    c = w.client()
    c.send(method_connect(extra=QUIET), b"\x30\xff\xff\xff\xff\x7f")   # a 5-byte length
    assert c.take() == b"" and not c.closed
    fut.set_result(AuthStep.success())
    out = c.take_frames()
    ok_connack(out[0])
    assert out[1:] == [b"\xe0\x01\x81"]
    assert c.closed
