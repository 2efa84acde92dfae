"""cymqtt.acl against a real mosquitto 2.0: the same acl_file, the same clients, the same topics.

For each ACL file below, one mosquitto runs with it. Every client of the file's table connects
(anonymous or with a user name, MQTT 3.1.1 or 5.0, client ids with '/', '+' or '#'),
subscribes to '#', '$SYS/#', '$foo/#' and a few narrower filters, then publishes every probe
topic at QoS 1. What mosquitto did is recorded: the SUBACK codes, the PUBACK reason codes of
5.0 publishers, and which client received which publisher's message on which topic (plus the
broker's own $SYS messages). `ClientAcl` must predict all of it: a message from P on T reaches
S exactly when `P.can_publish(T)` and `S.can_receive(T)`; a 5.0 PUBACK is 0x87 exactly when
`can_publish` is False; and whenever `can_subscribe(F)` is False, S received nothing on a topic
F matches (mosquitto 2.0 grants every SUBSCRIBE and filters at delivery).

The unit tests at the end pin the parser's errors and the compiled checks without a broker.
"""
from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cymqtt.acl import AclError, AclFile, covers, meet
from models.ref_topics import matches
from _testbase import free_port

# Not run again on uvloop by make test: cymqtt and mosquitto run as processes of their own.
pytestmark = pytest.mark.loop_independent

MOSQUITTO = "/usr/sbin/mosquitto"

# Every file ends with these two users: root may write everywhere, spy may read everywhere, so
# each probe is both published and observed.
ROOT_AND_SPY = """
user root
topic write #
topic write $foo/#
topic write $SYS/#
user spy
topic read #
topic read $SYS/#
topic read $foo/#
"""

BASICS = """\
# lines before the first user: anonymous clients
topic read public/#
topic deny public/secret
topic write anon/out
topic readwrite both/+/x
user alice
topic readwrite alice/#
topic read shared/#
topic deny alice/private
topic write to/bob
topic read sensors/+/temp
user bob smith
topic read #
topic deny secret/#
topic write to/alice
user alice
topic read extra/alice
topic read
topic   write    spaced   topic
"""
BASICS_PROBES = [
    "public/x", "public/secret", "public/secret/sub", "anon/out", "both/1/x", "both/1/2/x",
    "alice/a", "alice", "alice/private", "alice/private/x", "shared/s", "to/bob", "to/alice",
    "sensors/k/temp", "sensors/k/humidity", "secret/x", "extra/alice", "read", "other",
    "spaced   topic", "$foo/bar", "$SYS/x",
]
BASICS_CLIENTS = [
    ("anon1", None, 4), ("anon5", None, 5), ("al", "alice", 4), ("al5", "alice", 5),
    ("bs", "bob smith", 4), ("nobody", "carol", 5),
]

PATTERNS = """\
pattern readwrite dev/%c/#
pattern read users/%u/#
pattern deny dev/%c/locked
pattern write out/%u/%c
pattern read lit/%%c
pattern read common/#
user alice
topic read dev/#
topic deny users/alice/hidden
user carl
topic write dev/c2/locked
"""
PATTERNS_PROBES = [
    "dev/c1/x", "dev/c1/locked", "dev/c2/x", "dev/c2/locked", "dev/c/1/x", "dev/c/1/locked",
    "dev/a1/x", "dev/a1/locked", "dev/other/x", "users/alice/x", "users/alice/hidden",
    "users/carl/y", "users/dave/x/z", "users/bo/x", "out/carl/c2", "out/alice/a1",
    "out/alice/c1", "lit/%c1", "lit/c1", "common/x", "dev/c/x",
]
PATTERNS_CLIENTS = [
    ("c1", None, 4), ("c2", "carl", 5), ("c/1", None, 4), ("c+1", None, 5), ("c#1", "alice", 4),
    ("a1", "alice", 5), ("u1", "bo+b", 4), ("u2", "dave/x", 5),
]

PRECEDENCE = """\
topic readwrite p/#
topic deny p/d
pattern deny p/+/%c
user u
topic read q/#
topic write q/#
topic deny q/no/#
topic readwrite q/no/but/yes
pattern read q/no/%u
pattern deny q/pat/%c
pattern readwrite q/pat/#
pattern readwrite p/#
"""
PRECEDENCE_PROBES = [
    "p/a", "p/d", "p/a/x1", "p/a/x2", "p/a/uu", "q/a", "q/no/u", "q/no", "q/no/but/yes",
    "q/pat/x1", "q/pat/uu", "q/pat/other", "q/other",
]
PRECEDENCE_CLIENTS = [("x1", None, 4), ("x2", None, 5), ("uu", "u", 4), ("ux", "u", 5)]

DOLLAR = """\
topic read #
user d
topic read $SYS/#
topic readwrite $foo/#
topic readwrite #
topic write $SYS/#
user e
topic readwrite +/#
topic read +
pattern read $SYS/broker/%u
"""
DOLLAR_PROBES = [
    "a", "a/b", "$foo/bar", "$foo", "$SYS/test", "$SYS/broker/connection/x/state",
    "$SYS/broker/version/x", "$SYSTEM/x",
]
DOLLAR_CLIENTS = [("n1", None, 4), ("d1", "d", 5), ("e1", "e", 4), ("v1", "version", 5)]

CASES = {
    "basics": (BASICS, BASICS_PROBES, BASICS_CLIENTS),
    "patterns": (PATTERNS, PATTERNS_PROBES, PATTERNS_CLIENTS),
    "precedence": (PRECEDENCE, PRECEDENCE_PROBES, PRECEDENCE_CLIENTS),
    "dollar": (DOLLAR, DOLLAR_PROBES, DOLLAR_CLIENTS),
}
SUBSCRIPTIONS = ["#", "$SYS/#", "$foo/#"]
EXTRA_FILTERS = ["public/secret", "+/+", "dev/+/locked", "$SYS/broker/version", "nothing/here",
                 "q/no/#", "alice/private/#", "$share/g/secret/#"]


# ---------------------------------------------------------------------------------------------
# A real mosquitto and paho clients


def start_mosquitto(tmp_path, acl_text: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    (tmp_path / "acl").write_text(acl_text)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nsys_interval 1\n"
                    f"user {getpass.getuser()}\nacl_file {tmp_path / 'acl'}\n")
    return _serving([MOSQUITTO, "-c", str(conf)], port, "mosquitto")


def start_cymqtt(tmp_path, acl_text: str) -> tuple[subprocess.Popen, int]:
    """The same file served by cymqtt (its own process, as a user runs it)."""
    port = free_port()
    (tmp_path / "acl").write_text(acl_text)
    conf = tmp_path / "cymqtt.toml"
    conf.write_text(f'port = {port}\nsys_interval = 1\nacl_file = "{tmp_path / "acl"}"\n')
    return _serving([sys.executable, "-m", "cymqtt", "-c", str(conf), "--log-level", "warning"],
                    port, "cymqtt")


def _serving(cmd: list[str], port: int, name: str) -> tuple[subprocess.Popen, int]:
    # Start the broker and wait (10 s at most) until it accepts connections on `port`.
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.terminate()
    raise RuntimeError(f"{name} did not start: " + proc.stderr.read().decode())


class Probe:
    """One paho client recording its SUBACKs, PUBACKs and messages."""

    def __init__(self, port: int, index: int, client_id: str, username: str | None,
                 version: int) -> None:
        self.index, self.client_id, self.username, self.version = \
            index, client_id, username, version
        self.received: set[tuple[str, str]] = set()
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: dict[int, int] = {}
        self.connected = threading.Event()
        self.rc: int | None = None
        self._lock = threading.Lock()
        proto = mqtt.MQTTv5 if version == 5 else mqtt.MQTTv311
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                      protocol=proto)
        if username is not None:
            c.username_pw_set(username)
        c.on_connect = self._on_connect
        c.on_message = self._on_message
        c.on_subscribe = lambda c, u, mid, rcs, p: self.subacks.__setitem__(
            mid, [r.value for r in rcs])
        c.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc.value)
        c.connect("127.0.0.1", port, keepalive=30)
        c.loop_start()

    def _on_connect(self, c, u, flags, rc, props):
        self.rc = rc.value
        self.connected.set()

    def _on_message(self, c, u, msg):
        with self._lock:
            self.received.add((msg.topic, msg.payload.decode("utf-8", "replace")))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def run_case(tmp_path, acl_text, probes, clients,
             start=start_mosquitto) -> tuple[list[Probe], dict, dict]:
    """Drive the broker `start` runs (mosquitto by default); returns the probes,
    {(i, filter): suback}, {(i, topic): puback}."""
    proc, port = start(tmp_path, acl_text)
    people: list[Probe] = []
    try:
        for i, (cid, user, version) in enumerate(clients):
            people.append(Probe(port, i, cid, user, version))
        assert wait_for(lambda: all(p.connected.is_set() for p in people))
        assert all(p.rc == 0 for p in people), [(p.client_id, p.rc) for p in people]
        filters = SUBSCRIPTIONS + EXTRA_FILTERS
        sub_mid = {p.index: p.client.subscribe([(f, 1) for f in filters])[1] for p in people}
        assert wait_for(lambda: all(sub_mid[p.index] in p.subacks for p in people))
        subacks = {(p.index, f): code for p in people
                   for f, code in zip(filters, p.subacks[sub_mid[p.index]])}
        mids: dict[tuple[int, str], int] = {}
        for p in people:
            for topic in probes:
                mids[(p.index, topic)] = p.client.publish(topic, f"p{p.index}", qos=1).mid
        assert wait_for(lambda: all(mid in people[i].pubacks for (i, _), mid in mids.items()))
        time.sleep(1.2)                 # deliveries settle; one $SYS interval passes
        pubacks = {(i, t): people[i].pubacks[mid] for (i, t), mid in mids.items()}
        return people, subacks, pubacks
    finally:
        for p in people:
            p.stop()
        proc.terminate()
        proc.wait(5)


# ---------------------------------------------------------------------------------------------
# The differential test

@pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto 2.0 not installed")
@pytest.mark.parametrize("broker_kind", ["mosquitto", "cymqtt"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_client_acl_predicts_mosquitto(tmp_path, case, broker_kind):
    """The model against mosquitto, and cymqtt serving the same file against the model: the
    same deliveries and PUBACKs as mosquitto. SUBACKs differ by design: mosquitto grants
    every SUBSCRIBE, cymqtt refuses (0x80 / 0x87) a filter that could deliver nothing."""
    text, probes, clients = CASES[case]
    text += ROOT_AND_SPY
    clients = clients + [("root", "root", 5), ("spy", "spy", 4)]
    acl_file = AclFile.parse(text, case)
    model = [acl_file.for_client(cid, user) for cid, user, _ in clients]
    start = start_mosquitto if broker_kind == "mosquitto" else start_cymqtt
    people, subacks, pubacks = run_case(tmp_path, text, probes, clients, start)
    wrong: list[str] = []

    # SUBACK: mosquitto grants everything (QoS 1); can_subscribe may refuse only filters that
    # deliver nothing, which the deliveries below check. cymqtt refuses exactly those.
    def suback(i: int, f: str) -> int:
        if broker_kind == "mosquitto" or model[i].can_subscribe(f):
            return 1
        return 0x87 if clients[i][2] == 5 else 0x80
    wrong += [f"{clients[i][:2]} SUBACK {f!r} = {code:#x}" for (i, f), code in subacks.items()
              if code != suback(i, f)]
    # PUBACK reason codes of MQTT 5 publishers.
    for (i, topic), code in pubacks.items():
        if clients[i][2] == 5:
            expected = model[i].can_publish(topic)
            if (code in (0, 0x10)) != expected:
                wrong.append(f"{clients[i][:2]} PUBACK {topic!r} = {code:#x}, "
                             f"can_publish says {expected}")
    # Deliveries between clients.
    for s, person in enumerate(people):
        got = {(t, pl) for t, pl in person.received if pl.startswith("p") and t in probes}
        want = {(t, f"p{p}") for p in range(len(people)) for t in probes
                if model[p].can_publish(t) and model[s].can_receive(t)}
        for t, pl in sorted(got - want):
            wrong.append(f"{clients[s][:2]} received {t!r} from {clients[int(pl[1:])][:2]}"
                         " but the model says no")
        for t, pl in sorted(want - got):
            wrong.append(f"{clients[s][:2]} did not receive {t!r} from "
                         f"{clients[int(pl[1:])][:2]} but the model says yes")
        # The broker's own $SYS messages: the retained version always exists.
        sys_got = {t for t, pl in person.received if t.startswith("$SYS/broker/")
                   and t not in probes}
        for t in sorted(sys_got):
            if not model[s].can_receive(t):
                wrong.append(f"{clients[s][:2]} received {t!r} but can_receive says no")
        if model[s].can_receive("$SYS/broker/version") != ("$SYS/broker/version" in sys_got):
            wrong.append(f"{clients[s][:2]} $SYS/broker/version: received "
                         f"{'$SYS/broker/version' in sys_got}, model says the opposite")
        # can_subscribe False must mean: nothing arrives through that filter.
        for f in SUBSCRIPTIONS + EXTRA_FILTERS:
            if not model[s].can_subscribe(f):
                plain = f.split("/", 2)[2] if f.startswith("$share/") else f
                leaked = sorted(t for t, _ in person.received if matches(plain, t))
                if leaked:
                    wrong.append(f"{clients[s][:2]} can_subscribe({f!r}) is False but "
                                 f"{leaked[:3]} arrived")
    assert not wrong, "\n".join(wrong)
    # The table is worth something only if both answers occur often.
    answers = [model[p].can_receive(t) for p in range(len(people)) for t in probes]
    assert 0.15 < sum(answers) / len(answers) < 0.85


def _utf8(s: str) -> bytes:
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


@pytest.mark.skipif(not os.path.exists(MOSQUITTO), reason="mosquitto 2.0 not installed")
def test_will_is_checked_when_sent_not_at_connect(tmp_path):
    """mosquitto 2.0 accepts a CONNECT whose will topic the client may not write (CONNACK 0)
    and drops the will when it would be published: can_publish(will topic) decides."""
    text = "topic read #\nuser w\ntopic write allowed/#\n" + ROOT_AND_SPY
    acl_file = AclFile.parse(text)
    proc, port = start_mosquitto(tmp_path, text)
    spy = Probe(port, 0, "spy", "spy", 4)
    try:
        assert wait_for(spy.connected.is_set)
        mid = spy.client.subscribe("#", 1)[1]
        assert wait_for(lambda: mid in spy.subacks)
        wills = [("w1", None, "will/denied"), ("w2", "w", "allowed/x"), ("w3", "w", "no/x")]
        for cid, user, topic in wills:
            flags = 0x06 | (0x80 if user else 0)             # clean session, will, user name
            body = (_utf8("MQTT") + bytes([4, flags]) + b"\x00\x3c" + _utf8(cid) + _utf8(topic)
                    + _utf8("bye") + (_utf8(user) if user else b""))
            with socket.create_connection(("127.0.0.1", port), 5) as s:
                s.sendall(bytes([0x10, len(body)]) + body)
                assert s.recv(4) == b"\x20\x02\x00\x00"       # accepted
            # closed without DISCONNECT: the will is due
        want = {t for cid, user, t in wills if acl_file.for_client(cid, user).can_publish(t)}
        assert want == {"allowed/x"}
        assert wait_for(lambda: {t for t, _ in spy.received} & {w[2] for w in wills} == want)
        time.sleep(0.3)
        assert {t for t, _ in spy.received} & {w[2] for w in wills} == want
    finally:
        spy.stop()
        proc.terminate()
        proc.wait(5)


# ---------------------------------------------------------------------------------------------
# Without a broker: the parser and the compiled checks

@pytest.mark.parametrize("text,message", [
    ("topic\n", "empty topic"),
    ("topic bogus a/b\n", "invalid topic access type 'bogus'"),
    ("topic read a/#/b\n", "invalid ACL topic 'a/#/b'"),
    ("topic read a+\n", "'+' must be a whole level"),
    ("pattern write dev/%c#\n", "invalid ACL topic"),
    ("user\n", "missing username"),
    ("user   \n", "missing username"),
    ("toppic read a\n", "invalid line 'toppic read a'"),
    ("  # indented comment\n", "invalid line"),
    ("\ttopic read a\n", "invalid line"),
    ("topic a b\n", "invalid topic access type 'a'"),
])
def test_parse_errors_name_the_line(tmp_path, text, message):
    path = tmp_path / "acl"
    path.write_text("# ok\n\ntopic read fine\n" + text)
    with pytest.raises(AclError) as e:
        AclFile.load(path)
    assert str(e.value).startswith(f"{path}:4: ") and message in str(e.value)
    assert isinstance(e.value, ValueError)


def test_parse_grammar_details():
    f = AclFile.parse("topic a/b\n   \n\t\ntopic read\nuser  bob smith \ntopic deny  x y  \r\n"
                      "pattern write %u/%c\nuser bob smith\ntopic write z\n", "t")
    got = [(r.kind, r.access, r.filter, r.user, r.line) for r in f.rules]
    assert got == [("topic", 3, "a/b", None, 1), ("topic", 3, "read", None, 4),
                   ("topic", 0, "x y", "bob smith", 6), ("pattern", 2, "%u/%c", "bob smith", 7),
                   ("topic", 2, "z", "bob smith", 9)]
    assert f.users == {"bob smith"} and f.has_patterns


def test_unreadable_file():
    with pytest.raises(AclError, match="cannot read the acl file"):
        AclFile.load("/nonexistent/acl")


def test_meet_and_covers():
    assert meet("a/#", "+/b") == "a/b"
    assert meet("a/#", "a") == "a"
    assert meet("a/+", "a/b/c") is None
    assert meet("#", "$SYS/x") is None and meet("+/x", "$SYS/x") is None
    assert meet("$SYS/#", "$SYS/+/x") == "$SYS/+/x"
    assert meet("a/#", "a/+/#") == "a/+/#"
    assert covers("a/#", "a") and covers("a/#", "a/+/c") and covers("+/#", "a")
    assert not covers("a/+", "a/#") and not covers("#", "$SYS/x") and not covers("a/b", "a/+")


def test_without_patterns_the_compiled_rules_are_shared():
    f = AclFile.parse("topic read x\nuser a\ntopic read y\n")
    assert f.for_client("1", "a") is f.for_client("2", "a")
    assert f.for_client("1", None) is not f.for_client("1", "a")
    assert f.for_client("1", "x") is f.for_client("1", "y")         # unknown names: no rules
    assert not f.for_client("1", "x").can_receive("x") and f.for_client("1", None).can_receive("x")


def test_dollar_rules():
    acl = AclFile.parse("topic readwrite #\ntopic readwrite $SYS/#\ntopic readwrite $share/#\n"
                        ).for_client("c", None)
    assert acl.can_receive("$SYS/broker/uptime") and not acl.can_publish("$SYS/x")
    assert acl.can_publish("$SYS/broker/connection/b1/state")
    assert not acl.can_receive("$share/g/t") and not acl.can_publish("$share/g/t")
    assert acl.can_subscribe("$share/g/t") and not acl.can_subscribe("$share/g")
    only_hash = AclFile.parse("topic read #\n").for_client("c", None)
    assert not only_hash.can_receive("$SYS/broker/uptime")
    assert not only_hash.can_subscribe("$SYS/#") and only_hash.can_subscribe("#")


def test_can_receive_with_100_rules_is_fast():
    """Not a benchmark (tests assert behaviour): a guard that the check is a trie walk, not a
    Python loop over the rules. The timing is reported by the benchmark note."""
    lines = [f"topic read site/{i}/+/temp" for i in range(90)]
    lines += [f"topic deny site/{i}/secret/#" for i in range(5)]
    lines += [f"pattern readwrite dev/%c/{i}/#" for i in range(5)]
    acl = AclFile.parse("user u\n" + "\n".join(lines)).for_client("c1", "u")
    assert acl.can_receive("site/42/x/temp") and not acl.can_receive("site/3/secret/temp")
    assert not acl.can_receive("site/42/x/hum") and acl.can_publish("dev/c1/3/x")
    n = 20000
    t = time.perf_counter()
    for _ in range(n):
        acl.can_receive("site/42/x/temp")
    per_call = (time.perf_counter() - t) / n
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} us per can_receive"
