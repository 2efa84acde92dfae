"""Interoperability with the mosquitto command-line clients (Debian mosquitto-clients 2.x).

mosquitto_sub / mosquitto_pub run as subprocesses against the test broker, in MQTT 3.1.1 and 5
modes, at every QoS, with retained messages, together with paho. A subscriber is known to be
ready when the broker holds its subscription (read through `BrokerThread.call`), so nothing
sleeps. "Nothing retained" is shown without a timeout: the subscriber also listens on a sync
topic published after it subscribed, and a retained message would have come first.
"""
from __future__ import annotations

import shutil
import subprocess

import pytest

from helpers_paho import V5, V311, props, wait_until
from paho.mqtt.packettypes import PacketTypes

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_pub") and shutil.which("mosquitto_sub")),
    reason="mosquitto-clients (mosquitto_pub, mosquitto_sub) are not installed")

VERSIONS = [pytest.param("mqttv311", id="v311"), pytest.param("mqttv5", id="v5")]


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
            p.wait(5)


def sub_start(bt, procs, *args: str) -> subprocess.Popen:
    """mosquitto_sub with `args`, waiting (at most 5 s) for messages; returns the process once
    the broker holds all its -t subscriptions (or it has already exited, e.g. after -C 1 with
    a retained message; `sub_output` then reports it)."""
    cmd = ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(bt.port), "-W", "5", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(p)
    topics = [args[i + 1] for i, a in enumerate(args) if a == "-t"]
    wait_until(lambda: p.poll() is not None or subscribed(bt, topics), 5,
               what=f"mosquitto_sub subscribed to {topics}")
    return p


def subscribed(bt, topics: list[str]) -> bool:
    def check() -> bool:
        for s in map(bt.broker.session, bt.broker.session_ids()):
            if s.client is not None and all(t in s.subscriptions for t in topics):
                return True
        return False
    return bt.call(check)


def sub_output(p: subprocess.Popen) -> list[str]:
    out, err = p.communicate(timeout=10)
    assert p.returncode == 0, (p.returncode, out, err)
    return out.splitlines()


def pub(bt, *args: str, stdin: str | None = None) -> None:
    cmd = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(bt.port), *args]
    r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "rror" not in r.stderr and "arning" not in r.stderr, r.stderr


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub_each_qos(broker, procs, version, qos):
    """A message goes through at each QoS (both clients complete their QoS flows: exit code 0)."""
    s = sub_start(broker, procs, "-V", version, "-q", str(qos), "-t", "it/q", "-C", "1",
                  "-F", "%q %r %t %p")
    pub(broker, "-V", version, "-q", str(qos), "-t", "it/q", "-m", f"hello-{qos}")
    assert sub_output(s) == [f"{qos} 0 it/q hello-{qos}"]


@pytest.mark.parametrize("pub_qos,sub_qos", [(2, 1), (2, 0), (1, 2), (0, 2)])
def test_qos_downgraded_across_versions(broker, procs, pub_qos, sub_qos):
    """MQTT-3.8.4-6 (5.0 MQTT-3.8.4-8): a v3.1.1 publisher and a v5 subscriber; the message
    arrives at min(published QoS, subscription QoS)."""
    s = sub_start(broker, procs, "-V", "mqttv5", "-q", str(sub_qos), "-t", "dq/t", "-C", "1",
                  "-F", "%q %p")
    pub(broker, "-V", "mqttv311", "-q", str(pub_qos), "-t", "dq/t", "-m", "m")
    assert sub_output(s) == [f"{min(pub_qos, sub_qos)} m"]


def test_hash_verbose_receives_what_was_published(broker, procs):
    """`mosquitto_sub -t '#' -v -C 1` prints 'topic payload' for `mosquitto_pub -t a -m hi`."""
    s = sub_start(broker, procs, "-t", "#", "-v", "-C", "1")
    pub(broker, "-t", "a", "-m", "hi")
    assert sub_output(s) == ["a hi"]


@pytest.mark.parametrize("version", VERSIONS)
def test_retained_set_then_cleared(broker, procs, version):
    """3.1.1 MQTT-3.3.1-6, -10 (5.0 MQTT-3.3.1-5, -6): `mosquitto_pub -r` stores the message and
    a later mosquitto_sub gets it with the retain flag; `mosquitto_pub -r -n` (empty payload)
    deletes it, so the next subscriber only sees what is published after it subscribed."""
    pub(broker, "-V", version, "-q", "1", "-r", "-t", "ret/x", "-m", "keep")
    s = sub_start(broker, procs, "-V", version, "-q", "1", "-t", "ret/x", "-C", "1",
                  "-F", "%r %q %t %p")
    assert sub_output(s) == ["1 1 ret/x keep"]
    pub(broker, "-V", version, "-r", "-n", "-t", "ret/x")       # QoS 0: no ack to wait for
    wait_until(lambda: broker.call(lambda: broker.broker.retained_count) == 0, 5,
               what="the retained message deleted")
    s = sub_start(broker, procs, "-V", version, "-t", "ret/x", "-t", "ret/sync", "-C", "1",
                  "-F", "%r %t %p")
    pub(broker, "-V", version, "-t", "ret/sync", "-m", "go")
    assert sub_output(s) == ["0 ret/sync go"]


def test_retained_replaced_last_one_wins(broker, procs):
    """3.1.1 MQTT-3.3.1-5: only the last retained message of a topic is kept."""
    for m in ("one", "two", "three"):
        pub(broker, "-V", "mqttv311", "-r", "-q", "2", "-t", "rr/t", "-m", m)
    s = sub_start(broker, procs, "-V", "mqttv5", "-t", "rr/#", "-t", "rr-sync", "-C", "2",
                  "-F", "%r %t %p")
    pub(broker, "-t", "rr-sync", "-m", "go")
    assert sub_output(s) == ["1 rr/t three", "0 rr-sync go"]


@pytest.mark.parametrize("version", VERSIONS)
def test_many_lines_in_order(broker, procs, version):
    """MQTT 4.6 (message ordering): `mosquitto_pub -l` publishes 200 lines at QoS 1; a QoS 1
    subscriber prints them in order."""
    lines = [f"line-{i}" for i in range(200)]
    s = sub_start(broker, procs, "-V", version, "-q", "1", "-t", "ln/t", "-C", "200")
    pub(broker, "-V", version, "-q", "1", "-t", "ln/t", "-l", stdin="\n".join(lines) + "\n")
    assert sub_output(s) == lines


def test_paho_v5_subscriber_mosquitto_v311_publisher(broker, paho):
    """paho (MQTT 5) and mosquitto_pub (MQTT 3.1.1) in the same exchange, every QoS."""
    sub = paho("paho5", V5)
    sub.subscribe("mix/#", 2)
    for q in (0, 1, 2):
        pub(broker, "-V", "mqttv311", "-q", str(q), "-t", f"mix/{q}", "-m", f"from-311-{q}")
    got = sub.wait_messages(3)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [
        (f"mix/{q}", f"from-311-{q}".encode(), q) for q in (0, 1, 2)]


def test_mosquitto_v5_user_properties_reach_paho(broker, paho):
    """5.0 MQTT-3.3.2-17, -18: user properties set by mosquitto_pub -D reach a paho v5
    subscriber unaltered and in order; a paho v3.1.1 subscriber gets the message without them."""
    s5 = paho("s5", V5)
    s5.subscribe("up/t", 1)
    s3 = paho("s3", V311)
    s3.subscribe("up/t", 1)
    pub(broker, "-V", "mqttv5", "-q", "1", "-t", "up/t", "-m", "p",
        "-D", "publish", "user-property", "zz", "1",
        "-D", "publish", "user-property", "aa", "2",
        "-D", "publish", "content-type", "text/plain")
    m5 = s5.wait_messages(1)[0]
    assert [tuple(kv) for kv in m5.properties["UserProperty"]] == [("zz", "1"), ("aa", "2")]
    assert m5.properties["ContentType"] == "text/plain"
    m3 = s3.wait_messages(1)[0]
    assert m3.payload == b"p" and not m3.properties


def test_paho_publisher_mosquitto_subscribers_both_versions(broker, procs, paho):
    """One paho v5 PUBLISH (with a user property) reaches a v3.1.1 and a v5 mosquitto_sub."""
    s3 = sub_start(broker, procs, "-V", "mqttv311", "-q", "2", "-t", "pm/t", "-C", "1",
                   "-F", "%q %p")
    s5 = sub_start(broker, procs, "-V", "mqttv5", "-q", "2", "-t", "pm/+", "-C", "1",
                   "-F", "%q %p")
    paho("pp", V5).publish("pm/t", b"both", qos=2,
                           properties=props(PacketTypes.PUBLISH, UserProperty=[("k", "v")]))
    assert sub_output(s3) == ["2 both"]
    assert sub_output(s5) == ["2 both"]


@pytest.mark.broker_config(sys_interval=60)
def test_mosquitto_sub_reads_sys_version(broker, procs):
    """The retained $SYS/broker/version is readable by mosquitto_sub, which '#' does not match
    (MQTT-4.7.2-1)."""
    s = sub_start(broker, procs, "-t", "$SYS/broker/version", "-t", "#", "-C", "2", "-v")
    pub(broker, "-t", "after", "-m", "x")
    out = sub_output(s)
    assert out[0].startswith("$SYS/broker/version cymqtt ")
    assert out[1] == "after x"
