"""Limits against abuse (max_connections, max_publish_rate, max_subscriptions_per_client,
topic length and levels), the Python authorizer hook, and the outside probe's bad-input
findings (trickled packets, the close after an error DISCONNECT, a level-5 CONNECT with a wrong
protocol name), over real sockets."""
from __future__ import annotations

import socket
import time

import pytest

from cymqtt._fast.codec import Connect, Publish
from cymqtt.access import Authorizer
from cymqtt.config import ListenerConfig
from mqtt_bytes import (
    CONNACK, DISCONNECT, PUBACK, PUBLISH, connect, publish, subscribe, sync,
)

VERSIONS = [pytest.param(4, id="v311"), pytest.param(5, id="v5")]


def refused_connack(raw_client, client_id: str, version: int):
    c = raw_client(version)
    c.send_packet(Connect(client_id, version=version))
    ack = c.recv_packet()
    assert ack is not None and ack.type == CONNACK
    assert c.closed()
    return ack.reason_code


# -- max_connections --------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_max_connections_refuses_the_next_client_and_frees_slots(make_broker, version,
                                                                 caplog):
    """max_connections = 2: the third client gets CONNACK 0x97 (5.0) / 0x03 (3.1.1, server
    unavailable) and is closed, with a log line; once one leaves, a new one gets in; the two
    connected clients keep working meanwhile."""
    from _testbase import RawClient
    bt = make_broker(max_connections=2)
    clients = []

    def raw(v):
        c = RawClient(bt.port, v)
        clients.append(c)
        return c

    a = connect(raw, "a", version)
    b = connect(raw, "b", version)
    with caplog.at_level("INFO", logger="cymqtt.protocol"):
        assert refused_connack(raw, "c", version) == (0x97 if version == 5 else 0x03)
    assert any("max_connections" in r.getMessage() for r in caplog.records)
    assert subscribe(a, ("t", 0)) == [0]
    publish(b, "t", b"still-served")
    assert [p.payload for p in sync(a)] == [b"still-served"]
    b.close()
    deadline = time.monotonic() + 5
    while bt.call(lambda: bt.broker.clients_connected) > 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    connect(raw, "d", version)
    for c in clients:
        c.close()


def test_per_listener_max_connections(make_broker):
    """A listener's own max_connections counts its clients only: the plain listener keeps
    accepting while the limited one is full."""
    from _testbase import RawClient
    bt = make_broker(listeners=(ListenerConfig(0, "127.0.0.1", max_connections=1),))
    (plain, limited) = [info["port"] for info in bt.broker.listeners]
    made = []

    def on(port):
        def make(v):
            c = RawClient(port, v)
            made.append(c)
            return c
        return make

    connect(on(limited), "l1", 5)
    assert refused_connack(on(limited), "l2", 5) == 0x97
    connect(on(plain), "p1", 5)
    connect(on(plain), "p2", 5)
    assert [i["clients"] for i in bt.broker.listeners] == [2, 1]
    for c in made:
        c.close()


# -- max_publish_rate -------------------------------------------------------------------------


def test_v5_client_over_max_publish_rate_gets_disconnect_0x96(make_broker, raw_client):
    """max_publish_rate = 10: a second's worth of burst (10) passes; a client that sends 40
    at once is disconnected with 0x96 (message rate too high)."""
    bt = make_broker(max_publish_rate=10)
    from _testbase import RawClient
    c = RawClient(bt.port, 5)
    c.send_packet(Connect("fast", version=5))
    assert c.recv_packet().type == CONNACK
    for i in range(40):
        c.send_packet(Publish("r/t", b"x", 1, packet_id=i + 1))
    acks, last = 0, None
    while True:
        p = c.recv_packet()
        if p is None:
            break
        if p.type == PUBACK:
            acks += 1
        last = p
    assert last is not None and last.type == DISCONNECT and last.reason_code == 0x96
    assert 10 <= acks < 40
    c.close()


def test_v311_client_over_max_publish_rate_is_slowed_not_dropped(make_broker):
    """3.1.1 has no way to say "too fast": the broker stops reading the client until its
    bucket refills, so 45 messages at max_publish_rate = 30 take over half a second, and every
    one is acknowledged and delivered."""
    from _testbase import RawClient
    bt = make_broker(max_publish_rate=30)
    sub = RawClient(bt.port, 4)
    sub.send_packet(Connect("sink", version=4))
    assert sub.recv_packet().type == CONNACK
    assert subscribe(sub, ("r/#", 0)) == [0]
    c = RawClient(bt.port, 4)
    c.send_packet(Connect("flood", version=4))
    assert c.recv_packet().type == CONNACK
    start = time.monotonic()
    for i in range(45):
        c.send_packet(Publish("r/t", b"%d" % i, 1, packet_id=i + 1))
    acked = [c.recv_packet(timeout=10) for _ in range(45)]
    elapsed = time.monotonic() - start
    assert [p.packet_id for p in acked] == list(range(1, 46))
    assert elapsed >= 0.4
    got = []
    while len(got) < 45:
        got.append(sub.recv_packet().payload)
    assert got == [b"%d" % i for i in range(45)]
    c.close()
    sub.close()


# -- subscriptions and topics -----------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_max_subscriptions_per_client(make_broker, version):
    """max_subscriptions_per_client = 3: the 4th and 5th filters are refused (0x97 quota
    exceeded; 3.1.1: 0x80); re-subscribing an existing filter is not a new subscription."""
    from _testbase import RawClient
    bt = make_broker(max_subscriptions_per_client=3)
    c = connect(lambda v: RawClient(bt.port, v), "subs", version)
    codes = subscribe(c, ("a", 0), ("b", 0), ("c", 0), ("d", 0), ("e", 0))
    bad = 0x97 if version == 5 else 0x80
    assert codes == [0, 0, 0, bad, bad]
    assert subscribe(c, ("a", 1), pid=2) == [1]
    c.close()


@pytest.mark.parametrize("version", VERSIONS)
def test_topic_length_and_levels(make_broker, version):
    """max_topic_levels = 4, max_topic_length = 40: a deeper filter is refused (0x8F; 3.1.1
    0x80); a deeper or longer topic is refused with PUBACK 0x90 (5.0) or acknowledged and
    dropped (3.1.1), never delivered, and counted in messages_dropped_refused."""
    from _testbase import RawClient
    bt = make_broker(max_topic_levels=4, max_topic_length=40)
    c = connect(lambda v: RawClient(bt.port, v), "topics", version)
    assert subscribe(c, ("a/b/c/d", 0), ("a/b/c/d/e", 0), ("#", 0)) == \
        [0, 0x8F if version == 5 else 0x80, 0]
    ok = "a/b/c/d"
    for topic in ("a/b/c/d/e", "x" * 41):
        ack = publish(c, topic, b"no", qos=1)
        assert ack.reason_code == (0x90 if version == 5 else 0)
    publish(c, ok, b"yes", qos=1, pid=2)
    assert [p.payload for p in sync(c) + getattr(c, "stash", []) if p.type == PUBLISH] == [b"yes"]
    assert bt.call(lambda: bt.broker.stats()["messages_dropped_refused"]) == 2
    c.close()


# -- authorizers ------------------------------------------------------------------------------


class Tenants(Authorizer):
    """Users publish and read under tenants/<user>/; nobody reads secret/."""

    def __init__(self) -> None:
        self.asked: list[tuple] = []

    def can_publish(self, client_id, username, topic):
        self.asked.append(("pub", client_id, topic))
        return topic.startswith(f"tenants/{username}/") or topic.startswith("open/")

    def can_subscribe(self, client_id, username, topic_filter):
        return not topic_filter.startswith("forbidden")

    def can_receive(self, client_id, username, topic):
        self.asked.append(("recv", client_id, topic))
        return not topic.startswith("secret/") and (
            not topic.startswith("tenants/") or topic.startswith(f"tenants/{username}/"))


@pytest.mark.parametrize("version", VERSIONS)
def test_authorizer_decides_publish_subscribe_and_delivery(make_broker, version):
    """Broker(authorizers=[...]): SUBSCRIBE refused (0x87 / 3.1.1 0x80), PUBLISH refused
    (5.0 PUBACK 0x87; 3.1.1 acknowledged and dropped), and '#' never delivers a topic the
    subscriber may not read: not live, not retained. Answers are cached per topic."""
    from _testbase import RawClient
    tenants = Tenants()
    bt = make_broker(authorizers=[tenants])
    bt.call(lambda: bt.broker.publish("secret/plans", b"retained", retain=True))
    bt.call(lambda: bt.broker.publish("open/news", b"retained-ok", retain=True))
    raw = lambda v: RawClient(bt.port, v)  # noqa: E731
    alice = connect(raw, "alice-c", version, username="alice")
    bob = connect(raw, "bob-c", version, username="bob")
    assert subscribe(alice, ("forbidden/x", 0), ("#", 0)) == \
        [0x87 if version == 5 else 0x80, 0]
    retained = sync(alice)
    assert [p.payload for p in retained] == [b"retained-ok"]
    ack = publish(bob, "tenants/alice/inbox", b"spoof", qos=1)
    assert ack.reason_code == (0x87 if version == 5 else 0)
    publish(bob, "tenants/bob/x", b"bob-own", qos=1, pid=2)
    for i in range(3):
        bt.call(lambda: bt.broker.publish("secret/live", b"hidden"))
        publish(alice, "tenants/alice/self", b"mine-%d" % i, qos=1, pid=3 + i)
    got = [p.payload for p in sync(alice) + getattr(alice, "stash", []) if p.type == PUBLISH]
    assert sorted(got) == [b"mine-0", b"mine-1", b"mine-2"]
    recv_asks = [a for a in tenants.asked if a == ("recv", "alice-c", "tenants/alice/self")]
    assert len(recv_asks) == 1          # cached after the first delivery
    alice.close()
    bob.close()


def test_a_failing_authorizer_denies(make_broker, raw_client):
    class Broken(Authorizer):
        def can_publish(self, client_id, username, topic):
            raise RuntimeError("backend down")

    bt = make_broker(authorizers=[Broken()])
    from _testbase import RawClient
    c = connect(lambda v: RawClient(bt.port, v), "x", 5)
    assert publish(c, "any", b"m", qos=1).reason_code == 0x87
    c.close()


# -- the probe's findings ---------------------------------------------------------------------


def test_a_trickled_packet_after_connect_does_not_keep_the_connection_alive(broker):
    """Keep alive counts complete packets: one PUBLISH sent a byte every 0.25 s by a client
    with keep alive 1 is cut off after 1.5 s of no complete packet, not kept open by its
    bytes."""
    s = socket.create_connection(("127.0.0.1", broker.port), timeout=5)
    s.sendall(b"\x10\x0e\x00\x04MQTT\x04\x02\x00\x01\x00\x02tk")
    assert s.recv(4) == b"\x20\x02\x00\x00"
    body = b"\x00\x05t/a/b" + b"p" * 100
    packet = b"\x30" + bytes([len(body)]) + body
    start = time.monotonic()
    closed_after = None
    for byte in packet:
        try:
            s.sendall(bytes([byte]))
            s.settimeout(0.25)
            if s.recv(10) == b"":
                closed_after = time.monotonic() - start
                break
        except socket.timeout:
            continue
        except OSError:
            closed_after = time.monotonic() - start
            break
    s.close()
    assert closed_after is not None and closed_after < 5, closed_after


def test_after_an_error_disconnect_the_peer_can_still_write_and_reads_the_reason(broker):
    """A protocol error: the broker sends DISCONNECT (0x81) and half-closes, reading (and
    dropping) what the client still sends for a moment, so the client reads the reason code
    and its writes meanwhile do not fail with a reset (paho's flow_control2 case)."""
    from _testbase import RawClient
    c = RawClient(broker.port, 5)
    c.send_packet(Connect("err", version=5))
    assert c.recv_packet().type == CONNACK
    c.send(b"\x20\x02\x00\x00")                  # CONNACK from a client: protocol error
    d = c.recv_packet()
    assert d.type == DISCONNECT and d.reason_code >= 0x80
    for _ in range(5):                            # the client has not noticed yet: it writes
        c.sock.sendall(b"\x30\x0a\x00\x03a/bhello" * 2000)
        time.sleep(0.05)
    c.sock.settimeout(5)
    assert c.sock.recv(10) == b""                 # FIN, not ECONNRESET
    c.close()
    assert broker.call(lambda: broker.broker.session("err")) is None


def test_level_5_connect_with_a_wrong_protocol_name_gets_0x84_in_the_5_format(broker):
    """The 5.0 client reads CONNACK 0x84 (unsupported protocol version) in its own format."""
    from _testbase import RawClient
    c = RawClient(broker.port, 5)
    c.send_packet(Connect("name", version=5, protocol_name="MQTX"))
    ack = c.recv_packet()
    assert ack.type == CONNACK and ack.reason_code == 0x84
    assert c.closed()
