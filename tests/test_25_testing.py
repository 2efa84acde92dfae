"""For Python users (GitHub issue 15, item 5): the pytest plugin `cymqtt.testing` (entry point
pytest11) with its `mqtt_broker` fixtures, used by a test module the way a user's would be (a
pytest subprocess, paho as the client); `BrokerThread` for synchronous code; the in-process
subscriber `Broker.subscribe(filter)`; and `Broker.publish` from another thread.
"""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from cymqtt import Broker
from cymqtt.testing import BrokerThread
from helpers_paho import V5, V311, PahoClient, wait_until

pytest_plugins = ["pytester"]

USER_TESTS = '''
import threading
import pytest
import paho.mqtt.client as mqtt

PORTS = []


def roundtrip(broker, topic, payload):
    got = threading.Event()
    received = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.on_message = lambda cl, ud, msg: (received.append(msg), got.set())
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        c.subscribe(topic, 1)
        assert subscribed.wait(5)
        assert broker.publish(topic, payload, qos=1) == 1
        assert got.wait(5)
        return received
    finally:
        c.loop_stop()
        c.disconnect()


def test_one(mqtt_broker):
    PORTS.append(mqtt_broker.port)
    assert mqtt_broker.host == "127.0.0.1" and mqtt_broker.port > 0
    (msg,) = roundtrip(mqtt_broker, "user/t", b"hello")
    assert msg.payload == b"hello"
    mqtt_broker.publish("kept", b"retained", retain=True)


def test_two_starts_clean(mqtt_broker):
    PORTS.append(mqtt_broker.port)
    assert mqtt_broker.call(lambda: mqtt_broker.broker.retained_count) == 0


@pytest.mark.mqtt_broker_config(max_queued=7)
def test_marker(mqtt_broker):
    assert mqtt_broker.broker.config.max_queued == 7


def test_session_a(mqtt_broker_session):
    PORTS.append(("session", mqtt_broker_session.port))
    mqtt_broker_session.publish("shared/kept", b"x", retain=True)


def test_session_b(mqtt_broker_session):
    PORTS.append(("session", mqtt_broker_session.port))
    assert mqtt_broker_session.call(lambda: mqtt_broker_session.broker.retained_count) == 1
    sessions = [p for p in PORTS if isinstance(p, tuple)]
    assert len(set(sessions)) == 1


def test_factory(mqtt_broker_factory):
    a = mqtt_broker_factory(max_inflight=3)
    b = mqtt_broker_factory()
    assert a.port != b.port and a.broker.config.max_inflight == 3
    (msg,) = roundtrip(b, "f/t", b"from the factory")
    assert msg.payload == b"from the factory"
'''


def test_plugin_used_by_a_user_test_module(pytester):
    """A user's test module that only asks for the fixtures (no conftest, no import of cymqtt)
    runs with pytest in a subprocess: a fresh broker per test, the config marker, one broker
    for the session, a factory; the plugin is found through its pytest11 entry point."""
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=6)


def test_plugin_fixtures_listed(pytester):
    """`pytest --fixtures` lists the plugin's fixtures with their documentation."""
    pytester.makepyfile(test_x="def test_x(): pass\n")
    result = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(["mqtt_broker*", "*cymqtt broker for this test*"])
    assert "mqtt_broker_session" in result.stdout.str()
    assert "mqtt_broker_factory" in result.stdout.str()


# -- BrokerThread ----------------------------------------------------------------------------------

def test_broker_thread_for_synchronous_code():
    """`with BrokerThread() as b`: a broker on 127.0.0.1 and a free port for code that is not
    async; `publish` from this thread returns the delivery count; `stop` is idempotent."""
    with BrokerThread(max_queued=10) as bt:
        assert bt.host == "127.0.0.1" and bt.port > 0
        sub = PahoClient(bt.port, "bt-sub", V311)
        try:
            sub.subscribe("bt/#", 1)
            assert bt.publish("bt/x", b"sync", qos=1) == 1
            assert sub.wait_messages(1)[0].payload == b"sync"
            with pytest.raises(ValueError):
                bt.publish("bt/#", b"wildcard")
        finally:
            sub.close()
    bt.stop()
    with socket.socket() as s:           # the listener is gone
        assert s.connect_ex(("127.0.0.1", bt.port)) != 0


def test_broker_thread_port_in_use_raises_and_leaves_no_thread():
    """A taken port raises OSError from start(), and the loop thread is ended."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        before = threading.active_count()
        with pytest.raises(OSError):
            BrokerThread(port=s.getsockname()[1]).start()
        assert threading.active_count() == before


def test_publish_from_another_thread(broker):
    """Broker.publish called from a thread that is not the broker's loop schedules the delivery
    on the loop (thread-safe) and returns None; a paho subscriber gets the message."""
    sub = PahoClient(broker.port, "other-thread-sub", V5)
    try:
        sub.subscribe("thr/#", 1)
        results = []
        t = threading.Thread(target=lambda: results.append(
            broker.broker.publish("thr/a", b"from a thread", qos=1)))
        t.start()
        t.join(5)
        assert results == [None]
        assert sub.wait_messages(1)[0].payload == b"from a thread"
        with pytest.raises(ValueError):               # still checked in the caller's thread
            broker.broker.publish("thr/+", b"x")
    finally:
        sub.close()


# -- Broker.subscribe: in-process messages -----------------------------------------------------

def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_subscribe_receives_like_a_client():
    """An in-process subscriber gets retained messages first, then messages from the program
    and from real clients, at the lower of the published and subscribed QoS, in order."""
    async def main():
        async with Broker(port=0, host="127.0.0.1", sys_interval=0) as broker:
            broker.publish("s/kept", b"retained", qos=1, retain=True)
            async with broker.subscribe("s/#", qos=1) as stream:
                broker.publish("s/a", b"one", qos=2)
                broker.publish("other", b"not matching")
                def client_publishes():
                    pub = PahoClient(broker.port, "sub-api-pub", V311)
                    pub.publish("s/b", b"two", qos=1)
                    pub.close()
                await asyncio.get_running_loop().run_in_executor(None, client_publishes)
                got = [await stream.get() for _ in range(3)]
            assert [(m.topic, m.payload, m.qos, m.retain) for m in got] == [
                ("s/kept", b"retained", 1, True), ("s/a", b"one", 1, False),
                ("s/b", b"two", 1, False)]
            assert stream.closed
            assert broker._router.subscription_count == 0     # unsubscribed on leaving
    run(main())


def test_subscribe_async_for_ends_on_close_and_on_stop():
    """`async for` ends when the stream is closed (after what it already holds) and when the
    broker stops; closed streams receive nothing more."""
    async def main():
        broker = Broker(port=0, host="127.0.0.1", sys_interval=0)
        await broker.start()
        first = broker.subscribe("c/+")
        second = broker.subscribe("$share/g/c/+")
        broker.publish("c/1", b"a")
        broker.publish("c/2", b"b")
        first.close()
        broker.publish("c/3", b"after close")
        assert [m.payload async for m in first] == [b"a", b"b"]
        assert (await second.get()).payload == b"a"

        async def drain():
            return [m.payload async for m in second]
        task = asyncio.create_task(drain())
        await asyncio.sleep(0.01)
        await broker.stop()
        assert await task == [b"b", b"after close"]
    run(main())


def test_subscribe_that_stops_reading_is_a_slow_subscriber():
    """A program that stops taking QoS 1 messages is treated as a client that stops reading:
    `max_inflight` in flight, `max_queued` queued behind them, the rest dropped and counted;
    taking them lets the queue move again."""
    async def main():
        async with Broker(port=0, host="127.0.0.1", sys_interval=0, max_inflight=4,
                          max_queued=6) as broker:
            stream = broker.subscribe("slow/#", qos=1)
            for i in range(20):
                broker.publish("slow/t", b"%d" % i, qos=1)
            assert stream.dropped == 10
            got = [int((await stream.get()).payload) for _ in range(10)]
            assert got == list(range(10))
            broker.publish("slow/t", b"next", qos=1)
            assert (await stream.get()).payload == b"next"
            stream.close()
    run(main())


@pytest.mark.parametrize("bad", ["a/#/b", "", "a+", "$share//x", "$share/g/"])
def test_subscribe_refuses_bad_filters(bad):
    """A filter a SUBSCRIBE could not carry, or a bad QoS, is a ValueError."""
    async def main():
        async with Broker(port=0, host="127.0.0.1", sys_interval=0) as broker:
            with pytest.raises(ValueError):
                broker.subscribe(bad)
            with pytest.raises(ValueError):
                broker.subscribe("ok", qos=3)
    run(main())


def test_subscribe_no_clash_with_client_ids(broker):
    """The in-process subscriber is not a client: it is not in `session_ids()`, and a real
    client's subscriptions and messages are unaffected by it."""
    c = PahoClient(broker.port, "real", V5)
    try:
        c.subscribe("n/#", 0)

        async def both():
            stream = broker.broker.subscribe("n/#")
            broker.broker.publish("n/x", b"to both")
            msg = await stream.get()
            stream.close()
            return msg.payload, broker.broker.session_ids()
        payload, ids = broker.run(both())
        assert payload == b"to both" and ids == ["real"]
        assert wait_until(lambda: c.messages)[0].payload == b"to both"
    finally:
        c.close()


def test_public_surface_lists_only_public_names():
    """`dir(Broker)` shows the API, not the machinery: the sweep is `_sweep`."""
    public = {n for n in dir(Broker) if not n.startswith("_")}
    assert not public & {"sweep", "route", "mark_dirty"}, public
    assert {"start", "stop", "publish", "subscribe", "port", "stats"} <= public
