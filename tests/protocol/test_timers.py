"""timers.check: every timed rule as a pure function of `now`, on real ClientProtocols.

The harness's clock is the Context's clock, so the protocols stamp times the test chooses, and
`check(now, ...)` is asked about any moment without sleeping. What it answers is carried out the
way Broker._sweep does, to see the bytes.
"""
import pytest

from cymqtt import timers
from cymqtt.auth import AuthStep
from cymqtt.consts import CONN_ACTIVE, CONN_AUTH, NEVER

from ._harness import (
    AUTH_DATA, AUTH_METHOD, PINGREQ_BYTES, REQUEST_PROBLEM_INFO, SESSION_EXPIRY, WILL_DELAY,
    Scripted, Will, World, connect, disconnect, publish, puback, subscribe, suback,
)

LIMITS = timers.Limits(connect_timeout=10.0, write_timeout=30.0, retry_interval=30.0)
QUIET = {REQUEST_PROBLEM_INFO: 0}


def check(w: World, now: float, limits: timers.Limits = LIMITS):
    return timers.check(now, w.protocols(), w.registry, limits)


# -- CONNECT timeout --------------------------------------------------------------------------


def test_connect_timeout():
    """A connection that sends no CONNECT within connect_timeout is closed (3.1.1 section
    3.1.4: "If the Server does not receive a CONNECT Packet within a reasonable amount of time
    after the Network Connection is established, the Server SHOULD close the connection");
    bytes of an incomplete CONNECT do not extend it."""
    w = World()
    t0 = w.loop.now
    c = w.client()
    c.send(connect("slow")[:5])
    assert check(w, t0 + 10) == []
    assert check(w, t0 + 10.25) == [(timers.CONNECT_TIMEOUT, c.proto)]
    c.proto.abort()                      # what the broker does
    w.loop.run_ready()
    assert c.io.aborted and c.io.written == b""
    assert check(w, t0 + 11) == []


def test_connect_timeout_stops_at_connack():
    """Once CONNACK is sent the CONNECT timeout no longer applies."""
    w = World()
    t0 = w.loop.now
    c = w.connected("ok", keepalive=0)
    assert c.proto.state == CONN_ACTIVE
    assert check(w, t0 + 3600) == []


def test_connect_timeout_during_enhanced_auth():
    """An MQTT 5 authentication exchange that never finishes is bounded by the same timeout."""
    w = World(authenticators=[Scripted(AuthStep.continue_with(b"?"))])
    t0 = w.loop.now
    c = w.client()
    c.send(connect("x", version=5, properties={AUTH_METHOD: "TEST", AUTH_DATA: b"d"}))
    assert c.proto.state == CONN_AUTH
    assert check(w, t0 + 10) == []
    assert check(w, t0 + 10.5) == [(timers.CONNECT_TIMEOUT, c.proto)]


# -- keep alive -------------------------------------------------------------------------------


def test_keepalive_one_and_a_half_times():
    """With keep alive K the server disconnects a client it has heard nothing from for 1.5 K
    [MQTT-3.1.2-24] (MQTT 5 [MQTT-3.1.2-22]): kept at exactly 1.5 K, expired above; any
    packet (a PINGREQ) starts the period again."""
    w = World()
    t0 = w.loop.now
    c = w.connected("ka", keepalive=10)
    assert check(w, t0 + 14.75) == []
    assert check(w, t0 + 15) == []
    assert check(w, t0 + 15.25) == [(timers.KEEPALIVE_EXPIRED, c.proto)]
    w.loop.advance(12)
    c.send(PINGREQ_BYTES)
    assert c.take() == b"\xd0\x00"
    assert check(w, t0 + 15.25) == []
    assert check(w, t0 + 27) == []
    assert check(w, t0 + 27.25) == [(timers.KEEPALIVE_EXPIRED, c.proto)]


def test_keepalive_expired_disconnect_v5():
    """MQTT 5: the broker's answer to KEEPALIVE_EXPIRED is DISCONNECT 0x8D (keep alive
    timeout) and close; the will is published, as for a lost connection [MQTT-3.1.2-8]."""
    w = World()
    watch = w.connected("watch", keepalive=0)
    watch.send(subscribe(1, "will/#"))
    assert watch.take() == suback(1, 0)
    t0 = w.loop.now
    c = w.connected("ka5", version=5, keepalive=4, properties=QUIET,
                    will=Will("will/ka5", b"silent"))
    ((kind, target),) = check(w, t0 + 6.5)
    assert (kind, target) == (timers.KEEPALIVE_EXPIRED, c.proto)
    target.disconnect(0x8D, "keep alive timeout")
    assert c.take() == b"\xe0\x01\x8d"
    assert c.closed
    assert watch.take() == publish("will/ka5", b"silent")


def test_keepalive_zero_never_expires():
    """Keep alive 0 turns the mechanism off (3.1.1 section 3.1.2.10)."""
    w = World()
    w.connected("zero", keepalive=0)
    assert check(w, w.loop.now + 10**6) == []


def test_server_keep_alive_applies():
    """MQTT 5: with a server keep alive the client must use it [MQTT-3.2.2-21]; the sweep
    enforces that value, not the client's."""
    w = World(server_keep_alive=4)
    t0 = w.loop.now
    c = w.connected("sk", version=5, keepalive=600)
    assert check(w, t0 + 6) == []
    assert check(w, t0 + 6.25) == [(timers.KEEPALIVE_EXPIRED, c.proto)]


# -- session expiry ---------------------------------------------------------------------------


def test_session_expiry_311_default():
    """3.1.1 clean session 0: the session outlives the connection [MQTT-3.1.2-4/5], until the
    configured expiry (session_expiry_default) has passed since the disconnect."""
    w = World(session_expiry_default=100)
    c = w.connected("p", clean=False)
    w.loop.advance(50)
    t1 = w.loop.now
    c.drop()
    assert check(w, t1 + 99.5) == []
    session = w.registry.get("p")
    assert check(w, t1 + 100) == [(timers.SESSION_EXPIRED, session)]


def test_session_expiry_v5_and_never():
    """MQTT 5: the session ends its expiry interval after the connection closes (section
    3.1.2.11.2); 0xFFFFFFFF means it does not expire; a clean 3.1.1 session is never
    offline."""
    w = World(session_expiry_default=None)
    a = w.connected("a", version=5, properties={SESSION_EXPIRY: 60})
    b = w.connected("b", version=5, properties={SESSION_EXPIRY: NEVER})
    n = w.connected("n", clean=False)             # 3.1.1 with no default expiry: never
    c = w.connected("c")                          # clean: ends at once
    t0 = w.loop.now
    for p in (a, b, n, c):
        p.send(disconnect())
    assert set(w.registry.offline) == {"a", "b", "n"}
    assert check(w, t0 + 59) == []
    assert check(w, t0 + 60) == [(timers.SESSION_EXPIRED, w.registry.get("a"))]
    assert check(w, t0 + 10**9) == [(timers.SESSION_EXPIRED, w.registry.get("a"))]


def test_session_reconnected_no_longer_expires():
    """A session that got its client back is not expired."""
    w = World()
    a = w.connected("a", version=5, clean=False, properties={SESSION_EXPIRY: 10})
    a.drop()
    w.connected("a", version=5, clean=False, properties={SESSION_EXPIRY: 10}, keepalive=0)
    assert check(w, w.loop.now + 100) == []


# -- delayed will -----------------------------------------------------------------------------


def test_delayed_will_due():
    """MQTT 5: a will with a delay is due its delay after the connection closed, no earlier
    [MQTT-3.1.2-8]; registry.fire_will publishes it (what the broker does with WILL_DUE)."""
    w = World()
    watch = w.connected("watch", keepalive=0)
    watch.send(subscribe(1, "will/#"))
    assert watch.take() == suback(1, 0)
    c = w.connected("d", version=5, keepalive=0, properties={SESSION_EXPIRY: 3600},
                    will=Will("will/d", b"bye", properties={WILL_DELAY: 20}))
    w.loop.advance(5)
    t1 = w.loop.now
    c.drop()
    assert check(w, t1 + 19.75) == []
    assert check(w, t1 + 20) == [(timers.WILL_DUE, "d")]
    w.registry.fire_will("d", t1 + 20)
    w.loop.run_ready()
    assert watch.take() == publish("will/d", b"bye")
    assert check(w, t1 + 20) == []


# -- MQTT 3.x retry ---------------------------------------------------------------------------


def _subscriber(w: World, cid: str, version: int):
    s = w.connected(cid, version=version, keepalive=0)
    s.send(subscribe(1, ("r", 1), version=version))
    assert s.take() == suback(1, 1, version=version)
    return s


def test_retry_due_mqtt3_only():
    """MQTT 3.x: a client with unacknowledged messages is up for a re-send check (EMQX's
    retry_interval); MQTT 5 forbids re-sending except on reconnect [MQTT-4.4.0-1 (MQTT 5)];
    retry_interval 0 turns it off; the PUBACK ends it."""
    w = World()
    s4 = _subscriber(w, "s4", 4)
    _subscriber(w, "s5", 5)
    pub = w.connected("pub", keepalive=0)
    pub.send(publish("r", b"m", qos=1, pid=1))
    t0 = w.loop.now
    assert check(w, t0 + 1) == [(timers.RETRY_DUE, s4.proto)]
    off = timers.Limits(connect_timeout=10.0, write_timeout=30.0, retry_interval=0.0)
    assert check(w, t0 + 1, off) == []
    s4.take()
    s4.send(puback(1))
    assert check(w, t0 + 1) == []


def test_retry_resends_with_dup():
    """Carrying out RETRY_DUE: what has waited retry_interval since the first sweep saw it is
    re-sent with DUP 1 and its packet id (3.1.1 section 4.4), once per interval."""
    w = World()
    s = _subscriber(w, "s", 4)
    w.connected("pub", keepalive=0).send(publish("r", b"m", qos=1, pid=1))
    assert s.take() == publish("r", b"m", qos=1, pid=1)
    t0 = w.loop.now
    session = w.registry.get("s")
    session.retry(30, t0 + 0.5)                 # the first sweep stamps it
    session.retry(30, t0 + 30)
    assert s.take() == b""
    session.retry(30, t0 + 30.5)
    assert s.take() == publish("r", b"m", qos=1, pid=1, dup=True)
    session.retry(30, t0 + 31)
    assert s.take() == b""


# -- unwritable sockets -----------------------------------------------------------------------


def test_write_stalled():
    """A connection whose transport stays paused for write_timeout is reported (and
    aborted by the broker); resume_writing clears it."""
    w = World()
    c = w.connected("slow", keepalive=0)
    t0 = w.loop.now
    c.proto.pause_writing()
    assert check(w, t0 + 30) == []
    assert check(w, t0 + 30.5) == [(timers.WRITE_STALLED, c.proto)]
    c.proto.resume_writing()
    assert check(w, t0 + 31) == []


# -- purity -----------------------------------------------------------------------------------


def snapshot(w: World):
    reg = w.registry
    return (
        [(p.proto.state, p.proto.last_rx, p.proto.writable, bytes(p.io.written), p.io.closed,
          p.io.aborted) for p in w.peers],
        sorted(reg.sessions), sorted(reg.offline), dict(reg.pending_wills),
        [(s.client_id, s.inflight, s.queued, s.expires_at) for s in reg.sessions.values()],
        list(w.loop.ready),
    )


@pytest.mark.parametrize("when", [0, 2.5, 5, 7, 10.5, 1000])
def test_check_is_pure(when):
    """check() reads and never changes anything: asked twice about the same moment it gives
    the same answer, and the connections, sessions and wills are as they were. The answer is
    in its documented order: client deadlines, then expired sessions, then due wills."""
    w = World()
    t0 = w.loop.now
    new = w.client()                                            # CONNECT timeout at 10
    ka = w.connected("ka", keepalive=4)                         # keep alive expired at 6
    s4 = _subscriber(w, "s4", 4)                                # retry due
    w.connected("pub", keepalive=0).send(publish("r", b"m", qos=1, pid=1))
    exp = w.connected("exp", version=5, properties={SESSION_EXPIRY: 2})
    exp.send(disconnect(0))                                     # expires at 2
    wd = w.connected("wd", version=5, properties={SESSION_EXPIRY: 100},
                     will=Will("will", b"x", properties={WILL_DELAY: 3}))
    wd.drop()                                                   # will due at 3
    before = snapshot(w)
    first = check(w, t0 + when)
    second = check(w, t0 + when)
    assert first == second
    assert snapshot(w) == before
    expected = []
    if when > 10:
        expected.append((timers.CONNECT_TIMEOUT, new.proto))
    if when > 6:
        expected.append((timers.KEEPALIVE_EXPIRED, ka.proto))
    expected.append((timers.RETRY_DUE, s4.proto))
    if when >= 2:
        expected.append((timers.SESSION_EXPIRED, w.registry.get("exp")))
    if when >= 100:
        expected.append((timers.SESSION_EXPIRED, w.registry.get("wd")))
    if when >= 3:
        expected.append((timers.WILL_DUE, "wd"))
    assert first == expected
