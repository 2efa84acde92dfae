"""MQTT 5 will delay and session expiry, black-box over real sockets (GitHub issue "MQTT 5.0,
all of it"). Plain will behaviour lives in test_05_will.py, sessions in test_04_sessions.py.

paho-mqtt in MQTT 5 mode for the application view, `RawClient` (the compiled codec) where the
bytes matter. Nothing waits for a fixed time to see that something did *not* happen: a fence
(mqtt5_helpers.py) proves it instead. Timed rules run through `bt.sweep(advance)`.

Spec references are to MQTT 5.0 (OASIS, 2019): [MQTT-x.y.z-n] normative statements, or sections.
"""
from __future__ import annotations

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from cymqtt._fast.codec import Disconnect
from helpers_paho import props
from mqtt5_helpers import SESSION_EXPIRY, expect_disconnect, fence, offline, unfenced


# -- will delay and session expiry ----------------------------------------------------------------

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
    assert broker.call(lambda: "we-client" not in broker.broker.session_ids())


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
    assert broker.call(lambda: "wr-client" not in broker.broker.session_ids())
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


# -- session expiry details the MQTT 5 client can get wrong ------------------------------------

def test_disconnect_setting_session_expiry_after_zero_is_0x82(broker, raw):
    """"If the Session Expiry Interval in the CONNECT packet was zero, then it is a Protocol Error
    to set a non-zero Session Expiry Interval in the DISCONNECT packet sent by the Client"
    [MQTT-3.14.2-2]: the broker answers DISCONNECT 0x82."""
    c = raw(broker.port, "sx0")
    c.send_packet(Disconnect(0, {SESSION_EXPIRY: 30}))
    expect_disconnect(c, 0x82)
