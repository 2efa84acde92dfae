"""$SYS/broker/... topics, black-box over real sockets (GitHub issue "The broker core").

The broker publishes mosquitto's $SYS names (retained) every `sys_interval` seconds. Values are
checked for plausibility against what the test itself did (clients it connected, messages it
published), always by polling with a deadline. MQTT 3.1.1 / 5.0 section 4.7.2 reserves '$'
topics for the server; '#' and '+' filters do not match them (MQTT-4.7.2-1).
"""
from __future__ import annotations

import re

import pytest

from cymqtt._version import __version__
from helpers_paho import V5, V311, wait_until
from mqtt_bytes import connect, publish, subscribe, sync

SYS = "$SYS/broker/"
TOPICS = ["version", "uptime", "clients/connected", "clients/disconnected", "clients/total",
          "messages/received", "messages/sent", "publish/messages/dropped", "bytes/received",
          "bytes/sent", "subscriptions/count", "retained messages/count",
          "connections/refused/fd limit"]


def latest(client) -> dict[str, str]:
    """Topic (without '$SYS/broker/') -> the last value `client` received."""
    out = {}
    for m in client.messages:
        if m.topic.startswith(SYS):
            out[m.topic[len(SYS):]] = m.payload.decode()
    return out


def wait_value(client, name: str, pred, what: str) -> str:
    def check():
        v = latest(client).get(name)
        return v if v is not None and pred(v) else None
    return wait_until(check, 5, what=f"$SYS {name} {what} (last: {latest(client).get(name)})")


@pytest.mark.broker_config(sys_interval=0.2)
def test_sys_topics_present_with_plausible_values(broker, paho):
    """Every mosquitto-style $SYS/broker topic arrives on '$SYS/broker/#'; version names the
    broker, uptime is 'N seconds', counters are non-negative integers."""
    sub = paho("sys", V311)
    sub.subscribe(SYS + "#", 0)
    wait_until(lambda: set(TOPICS) <= set(latest(sub)), 5, what="all $SYS topics")
    values = latest(sub)
    assert values["version"] == f"cymqtt {__version__}"
    assert re.fullmatch(r"\d+ seconds", values["uptime"])
    for name in TOPICS[2:]:
        assert re.fullmatch(r"\d+", values[name]), (name, values[name])
    # the first values (retained) may predate this client; a later round counts it
    wait_value(sub, "clients/connected", lambda v: int(v) == 1, "== 1")
    wait_value(sub, "bytes/received", lambda v: int(v) > 0, "> 0")
    wait_value(sub, "bytes/sent", lambda v: int(v) > 0, "> 0")


@pytest.mark.broker_config(sys_interval=0.2)
def test_sys_clients_connected_counts_clients(broker, paho, raw_client):
    """clients/connected follows the clients the test connects and disconnects; a persistent
    3.1.1 session that goes offline counts in clients/disconnected."""
    sub = paho("sys", V5)
    sub.subscribe(SYS + "clients/#", 0)
    wait_value(sub, "clients/connected", lambda v: v == "1", "== 1")
    a = connect(raw_client, "a")
    paho("b", V311)
    wait_value(sub, "clients/connected", lambda v: v == "3", "== 3")
    a.close()
    wait_value(sub, "clients/connected", lambda v: v == "2", "== 2 after a close")
    persistent = paho("p", V311, clean=False)
    wait_value(sub, "clients/connected", lambda v: v == "3", "== 3")
    persistent.disconnect()
    wait_value(sub, "clients/disconnected", lambda v: v == "1", "== 1 (offline session)")
    wait_value(sub, "clients/connected", lambda v: v == "2", "== 2")


@pytest.mark.broker_config(sys_interval=0.2)
def test_sys_message_and_byte_counters_grow(broker, paho, raw_client):
    """messages/received grows by what clients publish, messages/sent by what the broker
    delivers, bytes/received and bytes/sent grow with the traffic."""
    sub = paho("sys", V311)
    sub.subscribe(SYS + "#", 0)
    wait_until(lambda: set(TOPICS) <= set(latest(sub)), 5, what="all $SYS topics")
    before = {k: int(v) for k, v in latest(sub).items() if k != "version" and k != "uptime"}
    r = connect(raw_client, "r")
    subscribe(r, ("cnt/t", 1))
    p = connect(raw_client, "p")
    for i in range(5):
        publish(p, "cnt/t", b"x" * 1000, 1, pid=i + 1)
    got = sync(r)
    assert len(got) == 5
    wait_value(sub, "messages/received", lambda v: int(v) >= before["messages/received"] + 5,
               "grows by 5")
    wait_value(sub, "messages/sent", lambda v: int(v) >= before["messages/sent"] + 5,
               "grows by 5")
    wait_value(sub, "bytes/received", lambda v: int(v) >= before["bytes/received"] + 5000,
               "grows by 5,000")
    wait_value(sub, "bytes/sent", lambda v: int(v) >= before["bytes/sent"] + 5000,
               "grows by 5,000")


@pytest.mark.broker_config(sys_interval=0.2)
def test_sys_subscription_and_retained_counts(broker, paho, raw_client):
    """subscriptions/count counts subscriptions (the $SYS one included); 'retained
    messages/count' grows by one when a client retains a message and shrinks when it is
    deleted."""
    sub = paho("sys", V311)
    sub.subscribe(SYS + "#", 0)
    wait_value(sub, "subscriptions/count", lambda v: v == "1", "== 1")
    base = int(wait_value(sub, "retained messages/count", lambda v: True, "present"))
    c = connect(raw_client, "c")
    subscribe(c, ("s/1", 0), ("s/2/#", 1), ("$share/g/s/3", 1))
    wait_value(sub, "subscriptions/count", lambda v: v == "4", "== 4")
    publish(c, "kept/t", b"r", 1, retain=True)
    wait_value(sub, "retained messages/count", lambda v: int(v) == base + 1, f"== {base + 1}")
    publish(c, "kept/t", b"", 1, pid=2, retain=True)
    wait_value(sub, "retained messages/count", lambda v: int(v) == base, f"== {base}")


@pytest.mark.broker_config(sys_interval=0.2)
def test_sys_dropped_counts_offline_qos0(broker, paho, raw_client):
    """publish/messages/dropped counts messages a session could not take (QoS 0 for an offline
    persistent session, which does not queue QoS 0 by default)."""
    sub = paho("sys", V311)
    sub.subscribe(SYS + "publish/#", 0)
    wait_value(sub, "publish/messages/dropped", lambda v: v == "0", "== 0")
    off = paho("off", V311, clean=False)
    off.subscribe("dr/t", 0)
    off.disconnect()
    wait_until(lambda: broker.call(lambda: "off" in broker.broker.session_ids() and not broker.broker.session("off").connected), 5,
               what="the session offline")
    p = connect(raw_client, "p")
    for _ in range(3):
        publish(p, "dr/t", b"x", 0)
    wait_value(sub, "publish/messages/dropped", lambda v: v == "3", "== 3")


@pytest.mark.broker_config(sys_interval=60)
def test_sys_topics_are_retained(broker, raw_client):
    """The values published at start are retained: a subscriber gets them at once (RETAIN 1),
    long before the next interval."""
    s = connect(raw_client, "s")
    subscribe(s, (SYS + "#", 0))
    got = sync(s)
    assert sorted(m.topic[len(SYS):] for m in got) == sorted(TOPICS)
    assert all(m.retain for m in got)


@pytest.mark.broker_config(sys_interval=0.2)
def test_sys_live_updates_and_hash_does_not_match(broker, paho):
    """Values are republished every interval (live copies have RETAIN 0, MQTT-3.3.1-9); a '#'
    or '+/...' subscriber gets none of them (MQTT-4.7.2-1) but does get ordinary messages."""
    sys_sub = paho("sys", V311)
    sys_sub.subscribe(SYS + "uptime", 0)
    everything = paho("all", V5)
    everything.subscribe("#", 0)
    everything.subscribe("+/broker/#", 0)
    wait_until(lambda: sum(not m.retain for m in sys_sub.messages) >= 2, 5,
               what="two live $SYS updates")
    paho("p", V311).publish("plain/t", b"x", qos=1)
    got = everything.wait_messages(1)
    assert [m.topic for m in got] == ["plain/t"]


def test_sys_disabled_with_interval_0(broker, raw_client):
    """sys_interval 0 (the test fixture's default) publishes no $SYS topics."""
    s = connect(raw_client, "s")
    subscribe(s, ("$SYS/#", 0))
    assert sync(s) == []
