"""Will messages (GitHub issue "The broker core"): when they are published, when not, their
retain flag and QoS, and the MQTT 5 will delay interval.

Will owners are paho clients or RawClients (to close without DISCONNECT, send garbage or go
silent); watchers are paho clients. `broker.sweep(advance)` plays the timed rules (keep alive,
will delay, session expiry) as if `advance` seconds had passed. "Not published" is checked with a
marker: the watcher gets a message published after the point where the will would have been
routed, and nothing before it.
"""
from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes

from cymqtt._fast.codec import Connect, Disconnect
from helpers_paho import V5, V31, V311, props, wait_until


@pytest.fixture
def watcher(paho):
    """A subscriber to will/# at QoS 2."""
    w = paho("watcher", V5)
    w.subscribe("will/#", 2)
    return w


def will_client(raw_client, client_id: str, version: int = 4, *, topic: str = "will/t",
                payload: bytes = b"gone", qos: int = 0, retain: bool = False,
                delay: int | None = None, expiry: int | None = None, clean: bool = True,
                keepalive: int = 60, present: bool | None = None):
    """A RawClient connected with a will."""
    c = raw_client(version)
    c.send_packet(Connect(
        client_id, version=version, clean_start=clean, keepalive=keepalive,
        will_topic=topic, will_payload=payload, will_qos=qos, will_retain=retain,
        will_properties=None if delay is None else {0x18: delay},
        properties=None if expiry is None else {0x11: expiry}))
    ack = c.recv_packet()
    assert ack is not None and ack.name == "CONNACK" and ack.reason_code == 0, ack
    if present is not None:
        assert ack.session_present is present
    return c


def assert_no_will_yet(paho, watcher, tag: str) -> None:
    """Nothing reached the watcher before a marker published now."""
    n = len(watcher.messages)
    paho("marker-" + tag, V311).publish("will/marker", tag.encode(), qos=1)
    watcher.wait_messages(n + 1)
    assert [m.topic for m in watcher.messages[n:]] == ["will/marker"], watcher.messages


def wait_conn_gone(bt, client_id: str) -> None:
    def gone():
        s = bt.broker.session(client_id)
        return s is None or s.client is None
    wait_until(lambda: bt.call(gone), what=f"{client_id}'s connection to end")


# -- when the will is published ------------------------------------------------------------------

@pytest.mark.parametrize("version", [3, 4, 5])
def test_will_published_when_socket_closes_without_disconnect(broker, raw_client, watcher,
                                                              version):
    """The network connection closed without DISCONNECT: the will is published
    [MQTT-3.1.2-8]."""
    c = will_client(raw_client, "w-abrupt%d" % version, version, payload=b"abrupt")
    c.close()
    [m] = watcher.wait_messages(1)
    assert (m.topic, m.payload, m.retain) == ("will/t", b"abrupt", False)


@pytest.mark.parametrize("protocol", [V31, V311, V5], ids=["3.1", "3.1.1", "5"])
def test_paho_will_published_on_drop(broker, paho, watcher, protocol):
    """A real client's will (each protocol version) is published when its socket dies."""
    c = paho("pw%d" % protocol, protocol,
             will=dict(topic="will/paho", payload=b"paho died", qos=1))
    c.drop()
    [m] = watcher.wait_messages(1)
    assert (m.topic, m.payload, m.qos) == ("will/paho", b"paho died", 1)


@pytest.mark.parametrize("version", [4, 5])
def test_will_published_on_keepalive_timeout(broker, raw_client, watcher, paho, version):
    """A client silent past 1.5 x keep alive is disconnected and its will published
    [MQTT-3.1.2-24 with MQTT-3.1.2-8]."""
    c = will_client(raw_client, "w-ka%d" % version, version, payload=b"silent", keepalive=1)
    broker.sweep(1.0)
    assert_no_will_yet(paho, watcher, "ka-early")
    broker.sweep(2.0)
    assert c.closed()
    watcher.wait_messages(2)
    assert watcher.payloads("will/t") == [b"silent"]


@pytest.mark.parametrize("version", [4, 5])
def test_will_published_on_protocol_error(broker, raw_client, watcher, version):
    """A connection closed by the server for a protocol error publishes the will (3.1.1
    section 3.1.2.5; MQTT 5 section 3.1.2.5: a server-closed connection is not a normal
    disconnect)."""
    c = will_client(raw_client, "w-err%d" % version, version, payload=b"bad bytes")
    c.send(b"\x00\x00")                                # reserved packet type 0
    assert c.closed()
    [m] = watcher.wait_messages(1)
    assert m.payload == b"bad bytes"


def test_will_published_on_second_connect(broker, raw_client, watcher):
    """A second CONNECT on the connection is a protocol violation; the will goes out."""
    c = will_client(raw_client, "w-twice", 4, payload=b"connected twice")
    c.send_packet(Connect("w-twice"))
    assert c.closed()
    assert watcher.wait_messages(1)[0].payload == b"connected twice"


@pytest.mark.parametrize("version", [4, 5])
def test_will_published_on_takeover(broker, raw_client, watcher, version):
    """Takeover closes the old connection without DISCONNECT from its client: its will is
    published [MQTT-3.1.4-3 with MQTT-3.1.2-8]. The new connection's own will is kept."""
    will_client(raw_client, "w-take", version, payload=b"old one")
    new = will_client(raw_client, "w-take", version, payload=b"new one")
    [m] = watcher.wait_messages(1)
    assert m.payload == b"old one"
    new.close()
    watcher.wait_messages(2)
    assert watcher.payloads() == [b"old one", b"new one"]


# -- when it is not ------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [V311, V5], ids=["3.1.1", "5"])
def test_no_will_after_normal_disconnect(broker, paho, watcher, protocol):
    """DISCONNECT deletes the will without publishing it [MQTT-3.1.2-10, MQTT-3.14.4-3]."""
    c = paho("w-clean%d" % protocol, protocol,
             will=dict(topic="will/t", payload=b"must not appear"))
    c.disconnect()
    wait_conn_gone(broker, "w-clean%d" % protocol)
    assert_no_will_yet(paho, watcher, "clean")


def test_no_will_after_raw_disconnect_then_close(broker, raw_client, paho, watcher):
    """DISCONNECT followed by the socket closing still publishes nothing."""
    c = will_client(raw_client, "w-disc", 4)
    c.send(b"\xe0\x00")
    assert c.closed()
    wait_conn_gone(broker, "w-disc")
    assert_no_will_yet(paho, watcher, "disc")


def test_v5_disconnect_0x04_publishes_will(broker, raw_client, watcher):
    """MQTT 5 DISCONNECT with reason 0x04 (disconnect with will message): the server publishes
    the will (MQTT 5 section 3.14.2.1, [MQTT-3.1.2-10])."""
    c = will_client(raw_client, "w-04", 5, payload=b"asked for it")
    c.send_packet(Disconnect(0x04))
    assert c.closed()
    [m] = watcher.wait_messages(1)
    assert m.payload == b"asked for it"


def test_paho_v5_disconnect_0x04_publishes_will(broker, paho, watcher):
    """The same with a real client choosing reason 0x04."""
    from paho.mqtt.reasoncodes import ReasonCode
    c = paho("w-04p", V5, will=dict(topic="will/p", payload=b"bye with will"))
    c.disconnect(ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
    assert watcher.wait_messages(1)[0].payload == b"bye with will"


# -- retain and QoS ------------------------------------------------------------------------------

def test_will_retain_is_honoured(broker, raw_client, paho, watcher):
    """Will retain 1: the will is published as a retained message [MQTT-3.1.2-17]; a later
    subscriber receives it with the retain flag."""
    c = will_client(raw_client, "w-ret", 4, topic="will/ret", payload=b"kept", retain=True)
    c.close()
    watcher.wait_messages(1)
    late = paho("late", V311)
    late.subscribe("will/ret", 1)
    [m] = late.wait_messages(1)
    assert (m.topic, m.payload, m.retain) == ("will/ret", b"kept", True)


def test_will_without_retain_is_not_retained(broker, raw_client, paho, watcher):
    """Will retain 0: published as a non-retained message [MQTT-3.1.2-16]."""
    c = will_client(raw_client, "w-noret", 4, topic="will/noret", payload=b"once")
    c.close()
    watcher.wait_messages(1)
    late = paho("late2", V311)
    late.subscribe("will/noret", 1)
    late.publish("will/noret", b"marker", qos=1)
    late.wait_messages(1)
    assert late.payloads() == [b"marker"]


@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_qos_is_honoured(broker, raw_client, watcher, will_qos):
    """The will is published at its will QoS (3.1.1 section 3.1.2.6)."""
    c = will_client(raw_client, "w-q%d" % will_qos, 4, payload=b"q", qos=will_qos)
    c.close()
    [m] = watcher.wait_messages(1)
    assert m.qos == will_qos


def test_will_qos1_queued_for_offline_persistent_subscriber(broker, raw_client, paho):
    """A QoS 1 will reaches an offline persistent-session subscriber on its return, like any
    QoS 1 message."""
    s = paho("w-offline-sub", V311, clean=False)
    s.subscribe("will/q", 1)
    s.disconnect()
    wait_conn_gone(broker, "w-offline-sub")
    c = will_client(raw_client, "w-q1off", 4, topic="will/q", payload=b"queued", qos=1)
    c.close()
    wait_until(lambda: broker.call(lambda: broker.broker.session("w-offline-sub").queued),
               what="the will to be queued")
    back = paho("w-offline-sub", V311, clean=False)
    [m] = back.wait_messages(1)
    assert (m.payload, m.qos) == (b"queued", 1)


# -- MQTT 5 will delay ---------------------------------------------------------------------------

def test_will_delay_holds_will_until_interval(broker, raw_client, paho, watcher):
    """Will delay interval: the will is not published before the delay has passed
    (MQTT 5 section 3.1.3.2.2) and is published after it."""
    c = will_client(raw_client, "w-delay", 5, payload=b"late will", delay=10, expiry=60)
    c.close()
    wait_conn_gone(broker, "w-delay")
    broker.sweep(5.0)
    assert_no_will_yet(paho, watcher, "delay")
    broker.sweep(11.0)
    watcher.wait_messages(2)
    assert watcher.payloads("will/t") == [b"late will"]


def test_will_delay_cancelled_by_reconnect(broker, raw_client, paho, watcher):
    """A new connection to the session (clean start 0) within the will delay: the will is not
    sent [MQTT-3.1.3-9]."""
    c = will_client(raw_client, "w-back", 5, payload=b"never", delay=10, expiry=60)
    c.close()
    wait_conn_gone(broker, "w-back")
    broker.sweep(5.0)
    back = paho("w-back", V5, clean=False, session_expiry=60)
    assert back.session_present is True
    broker.sweep(30.0)
    assert broker.call(lambda: broker.broker.pending_will_ids()) == []
    assert_no_will_yet(paho, watcher, "back")


def test_will_delay_cancelled_by_takeover_with_clean_start_0(broker, raw_client, paho,
                                                            watcher):
    """Takeover with clean start 0 is a new connection to the session within the will delay:
    the old connection's delayed will is not sent [MQTT-3.1.3-9]."""
    will_client(raw_client, "w-tk-delay", 5, payload=b"never", delay=10, expiry=60)
    new = will_client(raw_client, "w-tk-delay", 5, clean=False, expiry=60, present=True,
                      topic="will/other", payload=b"new will")
    broker.sweep(30.0)
    assert_no_will_yet(paho, watcher, "tk")
    assert new.sock.fileno() >= 0


def test_will_delay_reconnect_clean_start_1_publishes(broker, raw_client, paho, watcher):
    """A reconnect with clean start 1 inside the delay ends the old session; the will is
    published when the session ends, which comes before the delay (MQTT 5 section 3.1.2.5)."""
    c = will_client(raw_client, "w-clean-back", 5, payload=b"session ended", delay=100,
                    expiry=300)
    c.close()
    wait_conn_gone(broker, "w-clean-back")
    paho("w-clean-back", V5, clean=True)
    assert watcher.wait_messages(1)[0].payload == b"session ended"


def test_will_delay_takeover_with_clean_start_1_publishes_at_once(broker, raw_client,
                                                                watcher):
    """Takeover with clean start 1 ends the old session, so its delayed will is published at
    once rather than after the delay (MQTT 5 section 3.1.2.5)."""
    will_client(raw_client, "w-tk-clean", 5, payload=b"old session over", delay=100,
                expiry=300)
    will_client(raw_client, "w-tk-clean", 5, clean=True, present=False)
    assert watcher.wait_messages(1)[0].payload == b"old session over"


def test_session_expiry_shorter_than_will_delay(broker, raw_client, paho, watcher):
    """The will goes out at the delay or when the session ends, whichever comes first
    (MQTT 5 section 3.1.2.5): session expiry 5 s < will delay 100 s -> published at 5 s."""
    c = will_client(raw_client, "w-short", 5, payload=b"at session end", delay=100, expiry=5)
    c.close()
    wait_conn_gone(broker, "w-short")
    broker.sweep(3.0)
    assert_no_will_yet(paho, watcher, "short")
    broker.sweep(6.0)
    watcher.wait_messages(2)
    assert watcher.payloads("will/t") == [b"at session end"]
    assert broker.call(lambda: "w-short" not in broker.broker.session_ids())


def test_will_delay_with_session_expiry_0_publishes_at_once(broker, raw_client, watcher):
    """Session expiry 0: the session ends with the connection, so a delayed will goes out
    immediately."""
    c = will_client(raw_client, "w-zero", 5, payload=b"now", delay=100)
    c.close()
    assert watcher.wait_messages(1)[0].payload == b"now"


def test_will_delay_after_normal_disconnect_nothing(broker, raw_client, paho, watcher):
    """A normal DISCONNECT discards even a delayed will."""
    c = will_client(raw_client, "w-dd", 5, delay=5, expiry=60)
    c.send_packet(Disconnect(0))
    assert c.closed()
    wait_conn_gone(broker, "w-dd")
    broker.sweep(10.0)
    assert_no_will_yet(paho, watcher, "dd")


def test_paho_v5_will_delay(broker, paho, watcher):
    """The same will delay flow with a real MQTT 5 client."""
    wp = props(PacketTypes.WILLMESSAGE, WillDelayInterval=20)
    c = paho("w-paho-delay", V5, session_expiry=120,
             will=dict(topic="will/pd", payload=b"paho late", qos=1, properties=wp))
    c.drop()
    wait_conn_gone(broker, "w-paho-delay")
    broker.sweep(10.0)
    assert_no_will_yet(paho, watcher, "pd")
    broker.sweep(21.0)
    watcher.wait_messages(2)
    assert watcher.payloads("will/pd") == [b"paho late"]
