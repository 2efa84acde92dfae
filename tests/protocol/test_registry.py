"""Registry events (what a store or a cluster listens to), driven through ClientProtocols.

`RegistryListener` events must come at the right moments: session_created on a new session,
subscribed / unsubscribed on the SUBSCRIBE / UNSUBSCRIBE that changed something,
message_queued when a session's window accepts a QoS 1/2 message, message_acked when the
client completes its flow (PUBACK, or PUBCOMP for QoS 2), session_ended when the session is
gone (clean disconnect, expiry, replaced by clean start). A store that misses or gets an extra
event loses or resurrects messages, so the lists are compared exactly.
"""
from cymqtt import timers
from cymqtt.config import Config
from _testbase import EventRecorder as Recorder

from ._harness import (
    SESSION_EXPIRY, World, connect, decode, disconnect, publish, puback, pubcomp, pubrec,
    subscribe, suback, unsubscribe,
)

LIMITS = timers.Limits(connect_timeout=10.0, write_timeout=30.0, retry_interval=0.0)


def world(**kw):
    w = World(**kw)
    r = Recorder()
    w.registry.add_listener(r)
    return w, r


def test_clean_session_lifecycle():
    """Clean session: created on CONNECT; subscribed / unsubscribed for changes only
    (unsubscribing a filter that is not there emits nothing); ended when the broker closes
    the connection after DISCONNECT (3.1.1 [MQTT-3.1.2-6]: the session lasts as long as the
    network connection; the socket itself may linger a moment for the peer to read the last
    bytes, the session does not)."""
    w, r = world()
    c = w.connected("a")
    assert r.take() == [("created", "a")]
    c.send(subscribe(1, ("x/#", 1), ("y", 0)))
    assert r.take() == [("subscribed", "a", "x/#", 1), ("subscribed", "a", "y", 0)]
    c.send(subscribe(2, ("y", 2)))
    assert r.take() == [("subscribed", "a", "y", 2)]           # replaced [MQTT-3.8.4-3]
    c.send(unsubscribe(3, "y", "nope"))
    assert r.take() == [("unsubscribed", "a", "y")]
    c.io.receive(disconnect())                # handled: the broker closes the connection
    assert r.take() == [("ended", "a")]
    w.loop.run_ready()
    assert c.io.lost
    assert r.take() == []


def test_qos1_to_persistent_session_queued_then_acked():
    """QoS 1 to a connected persistent session: queued when the window accepts it (sent at
    once), acked only after the client's PUBACK, with the packet id it used. QoS 0 is never
    queued (it does not enter the window)."""
    w, r = world()
    s = w.connected("s", clean=False)
    s.send(subscribe(1, ("t", 1)))
    assert s.take() == suback(1, 1)
    p = w.connected("p")
    r.take()
    p.send(publish("t", b"zero"))
    assert r.take() == []
    p.send(publish("t", b"one", qos=1, pid=9))
    assert s.take() == publish("t", b"zero") + publish("t", b"one", qos=1, pid=1)
    assert r.take() == [("queued", "s", "t", b"one", 1)]
    s.send(puback(7))                              # not in flight: nothing
    assert r.take() == []
    s.send(puback(1))
    assert r.take() == [("acked", "s", 1)]
    s.send(puback(1))                              # a second PUBACK for it: nothing
    assert r.take() == []


def test_qos2_acked_after_pubcomp_only():
    """QoS 2: the flow is complete at PUBCOMP [MQTT-4.3.3-1], not at PUBREC."""
    w, r = world()
    s = w.connected("s", clean=False)
    s.send(subscribe(1, ("t", 2)))
    w.connected("p").send(publish("t", b"two", qos=2, pid=3))
    assert r.take()[-1] == ("queued", "s", "t", b"two", 2)
    s.send(pubrec(1))
    assert s.take().endswith(b"\x62\x02\x00\x01")
    assert r.take() == []
    s.send(pubcomp(1))
    assert r.take() == [("acked", "s", 1)]


def test_offline_session_queue_and_redelivery():
    """Offline persistent session: a message is queued while the client is away, the
    reconnect finds the session (no session_created: session present [MQTT-3.2.2-2]) and
    gets it, and its PUBACK acks it. A message the queue limit drops is not queued."""
    w, r = world(max_queued=1)
    s = w.connected("s", clean=False)
    s.send(subscribe(1, ("t", 1)))
    s.drop()
    assert r.take() == [("created", "s"), ("subscribed", "s", "t", 1)]
    p = w.connected("p")
    p.send(publish("t", b"kept", qos=1, pid=1), publish("t", b"dropped", qos=1, pid=2))
    assert r.take() == [("created", "p"), ("queued", "s", "t", b"kept", 1)]
    back = w.client()
    back.send(connect("s", clean=False))
    assert back.take() == b"\x20\x02\x01\x00" + publish("t", b"kept", qos=1, pid=1)
    assert r.take() == []
    back.send(puback(1))
    assert r.take() == [("acked", "s", 1)]


def test_clean_start_replaces_session():
    """A clean start discards the previous session [MQTT-3.1.2-4 (MQTT 5)]: ended, then a new
    one created; a reconnect without clean start emits neither."""
    w, r = world()
    a = w.connected("c", clean=False)
    a.send(disconnect())
    assert r.take() == [("created", "c")]
    w.connected("c", clean=False).send(disconnect())
    assert r.take() == []
    w.connected("c", clean=True)
    assert r.take() == [("ended", "c"), ("created", "c")]


def test_takeover_events():
    """Takeover [MQTT-3.1.4-2]: with clean session 0 the session moves to the new connection
    (no events, and the old connection's loss ends nothing); with clean session 1 the old
    session ends and a new one is created."""
    w, r = world()
    w.connected("t", clean=False)
    r.take()
    new = w.client()
    new.send(connect("t", clean=False))
    assert new.take() == b"\x20\x02\x01\x00"
    assert r.take() == []
    newer = w.client()
    newer.send(connect("t", clean=True))
    assert newer.take() == b"\x20\x02\x00\x00"
    assert r.take() == [("ended", "t"), ("created", "t")]


def test_session_expiry_ends_session():
    """MQTT 5: an offline session ends when its expiry interval has passed: the sweep says so
    (timers.check -> SESSION_EXPIRED) and the broker ends it (registry.end), which emits
    session_ended; not at the disconnect."""
    w, r = world()
    c = w.connected("e", version=5, properties={SESSION_EXPIRY: 30})
    c.send(disconnect(0))
    assert r.take() == [("created", "e")]
    t0 = w.loop.now
    assert timers.check(t0 + 29, w.protocols(), w.registry, LIMITS) == []
    actions = timers.check(t0 + 30, w.protocols(), w.registry, LIMITS)
    session = w.registry.get("e")
    assert actions == [(timers.SESSION_EXPIRED, session)]
    w.registry.end(session, t0 + 30)
    assert r.take() == [("ended", "e")]
    assert w.registry.get("e") is None


def test_listener_added_later_sees_existing_sessions():
    """add_listener: events from then on, for sessions that existed already too."""
    w = World()
    s = w.connected("s", clean=False)
    s.send(subscribe(1, ("t", 1)))
    r = Recorder()
    w.registry.add_listener(r)
    w.connected("p").send(publish("t", b"m", qos=1, pid=1))
    s.send(puback(1))
    assert r.take() == [("created", "p"), ("queued", "s", "t", b"m", 1), ("acked", "s", 1)]


def test_two_listeners_get_every_event():
    """Every listener gets each event once, in the same order."""
    w = World()
    r1, r2 = Recorder(), Recorder()
    w.registry.add_listener(r1)
    w.registry.add_listener(r2)
    s = w.connected("s")
    s.send(subscribe(1, ("t", 1)))
    w.connected("p").send(publish("t", b"m", qos=1, pid=1))
    s.send(puback(1))
    s.send(disconnect())
    expected = [("created", "s"), ("subscribed", "s", "t", 1), ("created", "p"),
                ("queued", "s", "t", b"m", 1), ("acked", "s", 1), ("ended", "s")]
    assert r1.events == expected
    assert r2.events == expected


def test_refused_connect_emits_nothing():
    """A CONNECT that is refused (bad password, bad client id) makes no session."""
    w = World(Config(sys_interval=0, users={"u": "p"}, allow_anonymous=False))
    r = Recorder()
    w.registry.add_listener(r)
    c = w.client()
    c.send(connect("x", username="u", password=b"bad"))
    assert c.take() == b"\x20\x02\x00\x05"
    d = w.client()
    d.send(connect("", clean=False, username="u", password=b"p"))
    assert d.take() == b"\x20\x02\x00\x02"
    assert r.events == []


def test_v5_shared_subscription_event_names_full_filter():
    """subscribed carries the filter as subscribed, $share/{group}/ included (what a store must
    keep to restore it)."""
    w, r = world()
    c = w.connected("g", version=5)
    c.send(subscribe(1, ("$share/grp/a/b", 1), version=5))
    assert decode(c.take()).reason_codes == [1]
    assert r.take() == [("created", "g"), ("subscribed", "g", "$share/grp/a/b", 1)]
    assert c.open
