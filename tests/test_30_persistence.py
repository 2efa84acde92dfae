"""Persistence (issue 10): what the broker acknowledged survives a restart and a kill -9.

Brokers run in a thread (`BrokerThread`, restarted on the same data_dir) or as the `cymqtt`
command in a subprocess (`Cli`), which the crash tests kill with SIGKILL in the middle of a
QoS 1 or QoS 2 flood. Clients are raw MQTT sockets (`Peer`), so every acknowledgement is the
test's own: what the publisher was acknowledged must reach the persistent subscriber after
the restart, QoS 2 exactly once, in order.
"""
from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import threading
import time

import pytest

from _testbase import BrokerThread, Cli, RawClient, free_port
from cymqtt._fast.codec import (
    ConnAck, Connect, Disconnect, PubAck, Publish, Subscribe,
)
from cymqtt.consts import PUBACK, PUBCOMP, PUBREC, PUBREL
from cymqtt.store import MemoryStore

# Not run again on uvloop by make test: its brokers run on asyncio (BrokerThread's default)
# or as processes of their own.
pytestmark = pytest.mark.loop_independent

P_SESSION_EXPIRY = 0x11
P_MESSAGE_EXPIRY = 0x02


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            time.sleep(0.05)


class Peer(RawClient):
    """A raw MQTT client that keeps its own side of the session across reconnects."""

    def __init__(self, port: int, client_id: str, version: int = 4, clean: bool = False,
                 expiry: int | None = None) -> None:
        super().__init__(port, version)
        props = {P_SESSION_EXPIRY: expiry} if expiry is not None else None
        self.send_packet(Connect(client_id, version=version, clean_start=clean,
                                 properties=props))
        ack = self.recv_packet()
        assert isinstance(ack, ConnAck) and ack.reason_code == 0, ack
        self.session_present = ack.session_present

    def subscribe(self, topic_filter: str, qos: int) -> None:
        self.send_packet(Subscribe(1, [(topic_filter, qos)]))
        while True:
            p = self.recv_packet()
            if p.type == 9:
                return

    def publishes(self, timeout: float = 2.0) -> list:
        """Every PUBLISH that arrives until `timeout` passes without one (acks unsent)."""
        got = []
        while True:
            try:
                p = self.recv_packet(timeout)
            except (TimeoutError, socket.timeout):
                return got
            if p is None:
                return got
            if isinstance(p, Publish):
                got.append(p)


def restart(bt: BrokerThread, **overrides) -> BrokerThread:
    port = bt.port
    bt.stop()
    return BrokerThread(port=port, **overrides)


@pytest.fixture
def data_dir(tmp_path):
    return str(tmp_path / "data")


# -- restoring after a clean stop -----------------------------------------------------------------

def test_retained_messages_survive_a_restart(data_dir):
    bt = BrokerThread(data_dir=data_dir, port=0)
    for topic, payload in (("r/a", b"1"), ("r/b", b"2"), ("r/c", b"3"), ("r/a", b"1 again")):
        bt.call(lambda t=topic, p=payload: bt.broker.publish(t, p, retain=True))
    bt.call(lambda: bt.broker.publish("r/b", b"", retain=True))       # deleted
    bt = restart(bt, data_dir=data_dir)
    try:
        assert bt.call(lambda: bt.broker.retained_count) == 2
        sub = Peer(bt.port, "s", clean=True)
        sub.subscribe("r/#", 1)
        got = {(p.topic, p.payload, p.retain) for p in sub.publishes(1.0)}
        assert got == {("r/a", b"1 again", True), ("r/c", b"3", True)}
    finally:
        bt.stop()


def test_session_subscriptions_and_queue_survive_in_order(data_dir):
    """A 3.1.1 persistent session: its subscription and the QoS 1 and 2 messages queued
    while it was offline come back after a restart with session present = 1, in order."""
    bt = BrokerThread(data_dir=data_dir, port=0)
    sub = Peer(bt.port, "keeper")
    sub.subscribe("q/#", 2)
    sub.close()
    pub = Peer(bt.port, "pub", clean=True)
    for i in range(20):
        pub.send_packet(Publish("q/x", b"%d" % i, qos=1 + i % 2, packet_id=i + 1))
    acks = [pub.recv_packet() for _ in range(20)]
    assert [a.packet_id for a in acks] == list(range(1, 21))
    bt = restart(bt, data_dir=data_dir)
    try:
        sub = Peer(bt.port, "keeper")
        assert sub.session_present
        got = sub.publishes(1.0)
        assert [p.payload for p in got] == [b"%d" % i for i in range(20)]
        assert [p.qos for p in got] == [1 + i % 2 for i in range(20)]
    finally:
        bt.stop()


def test_unacknowledged_messages_are_resent_with_dup_and_their_ids(data_dir):
    """A QoS 1 message sent but not acknowledged goes again with DUP and the same packet id;
    a QoS 2 message the client sent PUBREC for gets PUBREL again, not the message."""
    bt = BrokerThread(data_dir=data_dir, port=0)
    sub = Peer(bt.port, "slow")
    sub.subscribe("d/#", 2)
    bt.call(lambda: bt.broker.publish("d/1", b"one", qos=1))
    bt.call(lambda: bt.broker.publish("d/2", b"two", qos=2))
    first, second = sub.publishes(1.0)
    assert (first.payload, second.payload) == (b"one", b"two")
    sub.send_packet(PubAck(PUBREC, second.packet_id))
    rel = sub.recv_packet()
    assert rel.type == PUBREL and rel.packet_id == second.packet_id
    time.sleep(0.2)
    sub.close()
    bt = restart(bt, data_dir=data_dir)
    try:
        sub = Peer(bt.port, "slow")
        assert sub.session_present
        again = [sub.recv_packet(), sub.recv_packet()]
        pub = next(p for p in again if isinstance(p, Publish))
        rel = next(p for p in again if not isinstance(p, Publish))
        assert (pub.payload, pub.packet_id, pub.dup) == (b"one", first.packet_id, True)
        assert (rel.type, rel.packet_id) == (PUBREL, second.packet_id)
        sub.send_packet(PubAck(PUBACK, first.packet_id))
        sub.send_packet(PubAck(PUBCOMP, second.packet_id))
        assert sub.publishes(0.5) == []
    finally:
        bt.stop()
    bt = BrokerThread(data_dir=data_dir, port=0)     # and both are gone for good
    try:
        sub = Peer(bt.port, "slow")
        assert sub.publishes(0.5) == []
    finally:
        bt.stop()


def test_inbound_qos2_is_exactly_once_across_a_restart(data_dir):
    """A QoS 2 message PUBREC'd before the restart is not delivered again when the publisher
    re-sends it (DUP) and then PUBREL after it."""
    bt = BrokerThread(data_dir=data_dir, port=0)
    sub = Peer(bt.port, "sub2")
    sub.subscribe("x/#", 1)
    sub.close()
    pub = Peer(bt.port, "pub2")
    pub.send_packet(Publish("x/1", b"once", qos=2, packet_id=7))
    rec = pub.recv_packet()
    assert (rec.type, rec.packet_id) == (PUBREC, 7)
    pub.close()
    bt = restart(bt, data_dir=data_dir)
    try:
        pub = Peer(bt.port, "pub2")
        assert pub.session_present
        pub.send_packet(Publish("x/1", b"once", qos=2, packet_id=7, dup=True))
        assert pub.recv_packet().type == PUBREC
        pub.send_packet(PubAck(PUBREL, 7))
        comp = pub.recv_packet()
        assert (comp.type, comp.packet_id, comp.reason_code) == (PUBCOMP, 7, 0)
        sub = Peer(bt.port, "sub2")
        assert [p.payload for p in sub.publishes(1.0)] == [b"once"]
    finally:
        bt.stop()


def test_session_expiry_counts_the_time_the_broker_was_down(data_dir):
    bt = BrokerThread(data_dir=data_dir, port=0)
    for cid, expiry in (("short", 1), ("long", 3600)):
        c = Peer(bt.port, cid, version=5, clean=True, expiry=expiry)
        c.subscribe("e/#", 1)
        c.send_packet(Disconnect())
        c.close()
    bt.stop()
    time.sleep(1.5)
    bt = BrokerThread(data_dir=data_dir, port=0)
    try:
        assert sorted(bt.call(bt.broker.session_ids)) == ["long"]
        assert Peer(bt.port, "long", version=5, expiry=3600).session_present
        assert not Peer(bt.port, "short", version=5, expiry=3600).session_present
    finally:
        bt.stop()


def test_message_expiry_counts_the_time_the_broker_was_down(data_dir):
    """MQTT 5 message expiry, queued for an offline session: a message with 1 s left is gone
    after 1.5 s of downtime; one with an hour left arrives with its expiry counted down."""
    bt = BrokerThread(data_dir=data_dir, port=0)
    c = Peer(bt.port, "exp", version=5, clean=True, expiry=3600)
    c.subscribe("x/#", 1)
    c.send_packet(Disconnect())
    c.close()
    pub = Peer(bt.port, "exp-pub", version=5, clean=True)
    for pid, (payload, expiry) in enumerate(((b"short", 1), (b"long", 3600)), 1):
        pub.send_packet(Publish("x/1", payload, qos=1, packet_id=pid,
                                properties={P_MESSAGE_EXPIRY: expiry}))
        assert pub.recv_packet().packet_id == pid
    bt.stop()
    time.sleep(1.5)
    bt = BrokerThread(data_dir=data_dir, port=bt.port)
    try:
        c = Peer(bt.port, "exp", version=5, expiry=3600)
        (got,) = c.publishes(1.0)
        assert got.payload == b"long"
        assert 3590 <= got.properties[P_MESSAGE_EXPIRY] <= 3599
    finally:
        bt.stop()


def test_compaction_gives_space_back(data_dir):
    """Rows deleted leave free pages; compact() returns them to the file system."""
    from cymqtt.store import SQLiteStore
    from cymqtt.store.base import Batch
    store = SQLiteStore(os.path.join(data_dir, "c.db"))
    store.load()
    batch = Batch()
    batch.messages = {i: (i, "t", b"x" * 1000, 1, 0, None, None, None) for i in range(1, 5001)}
    store.commit(batch)
    store.compact()
    full = store.size()
    batch = Batch()
    batch.messages = {i: None for i in range(1, 5001)}
    store.commit(batch)
    store.compact()
    assert store.size() < full / 4, (store.size(), full)
    store.close()


def test_a_will_pending_at_a_crash_is_published_after_it(data_dir):
    """A client connected when the broker stops without a DISCONNECT (its process killed)
    has its will published once the broker is back."""
    port = free_port()
    cli = Cli("asyncio", "-p", str(port), "--data-dir", data_dir)
    try:
        c = RawClient(port)
        c.send_packet(Connect("willer", clean_start=False, will_topic="w/gone",
                              will_payload=b"bye", will_qos=1, will_retain=True))
        assert c.recv_packet().reason_code == 0
        time.sleep(0.3)
    finally:
        cli.kill()
    cli = Cli("asyncio", "-p", str(port), "--data-dir", data_dir)
    try:
        s = Peer(port, "watcher", clean=True)
        s.subscribe("w/#", 1)
        got = s.publishes(1.0)
        assert [(p.topic, p.payload) for p in got] == [("w/gone", b"bye")]
    finally:
        assert cli.stop() == 0


# -- what never touches the disk ----------------------------------------------------------------

def test_clean_sessions_and_qos0_write_nothing(data_dir):
    bt = BrokerThread(data_dir=data_dir, port=0)
    try:
        sub = Peer(bt.port, "clean-sub", clean=True)
        sub.subscribe("c/#", 1)
        keeper = Peer(bt.port, "keeper", clean=False)
        keeper.subscribe("c/#", 0)                      # persistent, but QoS 0
        before = bt.call(bt.broker.stats)["store_rows_written"]
        pub = Peer(bt.port, "clean-pub", clean=True)
        for i in range(50):
            pub.send_packet(Publish("c/t", b"x", qos=1, packet_id=i + 1))
        assert [pub.recv_packet().packet_id for _ in range(50)] == list(range(1, 51))
        time.sleep(0.3)
        assert bt.call(bt.broker.stats)["store_rows_written"] == before
    finally:
        bt.stop()


def test_delivery_acknowledged_in_its_grace_period_writes_nothing(data_dir):
    """A QoS 1 delivery to a connected persistent subscriber that acknowledges it within the
    grace period (here 20 ms: after the 2 ms cut, before GRACE) is never written; the
    publisher's PUBACK waits for the subscriber's, not for a commit."""
    from cymqtt.store.journal import COMMIT_DELAY, GRACE
    assert COMMIT_DELAY < 0.02 < GRACE
    bt = BrokerThread(data_dir=data_dir, port=0)
    try:
        sub = Peer(bt.port, "graced")
        sub.subscribe("g/#", 1)
        time.sleep(0.2)                                 # its session and subscription, written
        before = bt.call(bt.broker.stats)["store_rows_written"]
        pub = Peer(bt.port, "g-pub", clean=True)
        for i in range(20):
            pub.send_packet(Publish("g/t", b"m%d" % i, qos=1, packet_id=i + 1))
            got = sub.recv_packet()
            assert isinstance(got, Publish) and got.payload == b"m%d" % i
            time.sleep(0.02)
            with pytest.raises((TimeoutError, socket.timeout)):
                pub.recv_packet(0.001)                  # not acknowledged before it is safe
            sub.send_packet(PubAck(PUBACK, got.packet_id))
            ack = pub.recv_packet()
            assert (ack.type, ack.packet_id) == (PUBACK, i + 1)
        time.sleep(0.2)
        stats = bt.call(bt.broker.stats)
        assert stats["store_rows_written"] == before
        assert stats["store_in_grace"] == 0
    finally:
        bt.stop()


def test_delivery_unacknowledged_past_its_grace_period_is_written_first(data_dir):
    """A subscriber that does not acknowledge: the delivery is written once its grace period
    is over, and only then is the publisher acknowledged; a kill -9 right after that PUBACK
    loses nothing (the message comes again, DUP, under its packet id)."""
    port = free_port()
    args = ("-p", str(port), "--data-dir", data_dir, "--log-level", "warning")
    cli = Cli("asyncio", *args, logs_to_stderr=False)
    try:
        wait_listening(port)
        sub = Peer(port, "mute")
        sub.subscribe("u/#", 1)
        pub = Peer(port, "u-pub", clean=True)
        pub.send_packet(Publish("u/t", b"keep me", qos=1, packet_id=9))
        sent = sub.recv_packet()
        assert isinstance(sent, Publish) and sent.payload == b"keep me"
        ack = pub.recv_packet(5.0)                      # never acknowledged by sub
        assert (ack.type, ack.packet_id) == (PUBACK, 9)
        cli.proc.send_signal(signal.SIGKILL)
        cli.proc.wait(5)
    finally:
        cli.kill()
    cli = Cli("asyncio", *args, logs_to_stderr=False)
    try:
        wait_listening(port)
        sub = Peer(port, "mute")
        assert sub.session_present
        again = sub.recv_packet(5.0)
        assert (again.payload, again.packet_id, again.dup) == (b"keep me", sent.packet_id, True)
    finally:
        cli.kill()


def test_embedded_broker_persists_only_when_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bt = BrokerThread(port=0)
    try:
        assert "store_commits" not in bt.call(bt.broker.stats)
    finally:
        bt.stop()
    assert not (tmp_path / "cymqtt-data").exists()


def test_memory_store_carries_state_between_brokers():
    store = MemoryStore()
    bt = BrokerThread(port=0, store=store)
    c = Peer(bt.port, "mem")
    c.subscribe("m/#", 1)
    c.close()
    bt.call(lambda: bt.broker.publish("m/1", b"kept", qos=1))
    time.sleep(0.2)
    bt = restart(bt, store=store)
    try:
        c = Peer(bt.port, "mem")
        assert c.session_present
        assert [p.payload for p in c.publishes(1.0)] == [b"kept"]
    finally:
        bt.stop()


# -- a full store ---------------------------------------------------------------------------------

def test_full_store_refuses_what_needs_it_and_recovers():
    """While commits fail (a full disk), a QoS 1 message for a persistent session is refused
    (MQTT 5: 0x97; 3.1.1: the connection closes), one for clean sessions still flows; once
    there is room again, messages are accepted."""
    store = MemoryStore()
    bt = BrokerThread(port=0, store=store)
    try:
        keeper = Peer(bt.port, "keeper")
        keeper.subscribe("full/#", 1)
        clean = Peer(bt.port, "cleansub", clean=True)
        clean.subscribe("free/#", 1)
        store.max_rows = store.rows()            # the disk is full
        pub = Peer(bt.port, "pub5", version=5, clean=True)
        pub.send_packet(Publish("full/1", b"a", qos=1, packet_id=1))
        deadline = time.monotonic() + 5
        while not bt.call(lambda: bt.broker._journal.failing):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises((TimeoutError, socket.timeout)):
            pub.recv_packet(0.3)                  # its PUBACK waits for a commit
        other = Peer(bt.port, "other5", version=5, clean=True)
        other.send_packet(Publish("full/2", b"b", qos=1, packet_id=2))
        ack = other.recv_packet()
        assert (ack.packet_id, ack.reason_code) == (2, 0x97)
        other.send_packet(Publish("free/1", b"c", qos=1, packet_id=3))
        assert other.recv_packet().packet_id == 3
        assert [p.payload for p in clean.publishes(0.5)] == [b"c"]
        old = Peer(bt.port, "pub3", clean=True)
        old.send_packet(Publish("full/3", b"d", qos=1, packet_id=1))
        assert old.closed()
        store.max_rows = None                   # room again
        ack = pub.recv_packet()
        assert (ack.type, ack.packet_id, ack.reason_code) == (PUBACK, 1, 0)
        assert not bt.call(lambda: bt.broker._journal.failing)
        pub.send_packet(Publish("full/4", b"e", qos=1, packet_id=4))
        ack = pub.recv_packet()
        assert (ack.packet_id, ack.reason_code) == (4, 0)
        assert [p.payload for p in keeper.publishes(0.5)] == [b"a", b"e"]
    finally:
        bt.stop()


def test_sqlite_size_limit_is_a_full_disk(data_dir):
    from cymqtt.store import SQLiteStore, StoreFull
    from cymqtt.store.base import Batch
    store = SQLiteStore(os.path.join(data_dir, "small.db"), max_bytes=64 * 1024)
    store.load()
    batch = Batch()
    batch.messages = {i: (i, "t", b"x" * 1000, 1, 0, None, None, None) for i in range(1, 200)}
    with pytest.raises(StoreFull):
        store.commit(batch)
    store.close()


# -- a damaged database ---------------------------------------------------------------------------

def _fill(data_dir: str, port: int) -> None:
    cli = Cli("asyncio", "-p", str(port), "--data-dir", data_dir)
    try:
        pub = Peer(port, "filler", clean=True)
        for i in range(30):
            pub.send_packet(Publish(f"keep/{i}", b"v" * 100, qos=1, retain=True,
                                    packet_id=i + 1))
            assert pub.recv_packet().packet_id == i + 1
    finally:
        assert cli.stop() == 0


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_damaged_database_is_moved_aside_and_the_broker_starts_empty(data_dir, damage):
    port = free_port()
    _fill(data_dir, port)
    db = os.path.join(data_dir, "cymqtt.db")
    if damage == "garbage":
        with open(db, "r+b") as f:
            f.seek(100)
            f.write(os.urandom(4096))
    else:
        with open(db, "r+b") as f:
            f.truncate(os.path.getsize(db) // 3)
    cli = Cli("asyncio", "-p", str(port), "--data-dir", data_dir)
    try:
        errors = [ln for ln in cli.lines if "ERROR" in ln or "cannot be read" in ln]
        assert len(errors) == 1, "\n".join(cli.lines)
        assert db in errors[0] and "moved aside" in errors[0] and "starting empty" in errors[0]
        aside = [n for n in os.listdir(data_dir) if n.startswith("cymqtt.db.corrupt-")]
        assert aside, os.listdir(data_dir)
        s = Peer(port, "late", clean=True)
        s.subscribe("keep/#", 0)
        assert s.publishes(0.5) == []                  # empty, and serving
        pub = Peer(port, "after", clean=True)
        pub.send_packet(Publish("keep/new", b"n", qos=1, retain=True, packet_id=1))
        assert pub.recv_packet().packet_id == 1
    finally:
        assert cli.stop() == 0
    with sqlite3.connect(db) as conn:                   # the new file works
        assert conn.execute("SELECT count(*) FROM retained").fetchone()[0] == 1


def test_unwritable_data_dir_is_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = subprocess.run([sys.executable, "-m", "cymqtt", "-p", "0", "--data-dir",
                        str(blocker / "sub")], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("cymqtt:")]
    assert len(lines) == 1 and "data_dir" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_no_persistence_flag_keeps_nothing(tmp_path):
    port = free_port()
    cli = Cli("asyncio", "-p", str(port), "--no-persistence")
    try:
        pub = Peer(port, "p", clean=True)
        pub.send_packet(Publish("np/1", b"x", qos=1, retain=True, packet_id=1))
        pub.recv_packet()
    finally:
        assert cli.stop() == 0
    assert not os.path.exists("cymqtt-data")
    cli = Cli("asyncio", "-p", str(port))
    try:
        assert os.path.exists("cymqtt-data/cymqtt.db")  # the command persists by default
    finally:
        assert cli.stop() == 0


# -- kill -9 in the middle of a flood ---------------------------------------------------------

class Flood:
    """A raw publisher sending seq numbers at `qos` as fast as its window of 64 allows; it
    records each seq the broker acknowledged (PUBACK; for QoS 2, PUBREC) and completes QoS 2
    flows with PUBREL."""

    def __init__(self, port: int, qos: int, topic: str = "flood/1") -> None:
        self.port = port
        self.qos = qos
        self.topic = topic
        self.acked: list[int] = []
        self.sent: dict[int, int] = {}        # pid -> seq, awaiting the broker's ack
        self.released: set[int] = set()       # QoS 2 pids PUBREC'd, awaiting PUBCOMP
        self.client = Peer(port, f"flood-pub-{qos}")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        c = self.client
        seq = 0
        pid = 0
        try:
            while True:
                while len(self.sent) + len(self.released) < 64:
                    seq += 1
                    pid = pid % 65535 + 1
                    self.sent[pid] = seq
                    c.send_packet(Publish(self.topic, b"%d" % seq, qos=self.qos,
                                          packet_id=pid))
                p = c.recv_packet(10)
                if p is None:
                    return
                self._on(p)
        except (OSError, TimeoutError):
            return

    def _on(self, p) -> None:
        if p.type in (PUBACK, PUBREC) and p.packet_id in self.sent:
            self.acked.append(self.sent.pop(p.packet_id))
            if p.type == PUBREC:
                self.released.add(p.packet_id)
                self.client.send_packet(PubAck(PUBREL, p.packet_id))
        elif p.type == PUBCOMP:
            self.released.discard(p.packet_id)

    def finish(self) -> None:
        """After the restart: reconnect, complete the QoS 2 flows that were under way."""
        self.thread.join(10)
        self.client = c = Peer(self.port, f"flood-pub-{self.qos}")
        assert c.session_present
        for pid in sorted(self.released):
            c.send_packet(PubAck(PUBREL, pid))
        while self.released:
            p = c.recv_packet(10)
            assert p is not None and p.type == PUBCOMP, p
            self.released.discard(p.packet_id)


class Receiver:
    """A raw persistent subscriber that acknowledges everything, delivering QoS 2 messages
    once per packet id until PUBREL (as the standard's receiver does)."""

    def __init__(self, port: int, qos: int) -> None:
        self.qos = qos
        self.port = port
        self.delivered: list[int] = []
        self.awaiting_rel: set[int] = set()
        self.client = Peer(port, f"flood-sub-{qos}")
        self.client.subscribe("flood/#", qos)
        self.start()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        c = self.client
        try:
            while True:
                p = c.recv_packet(30)
                if p is None:
                    return
                if isinstance(p, Publish):
                    if p.qos == 2:
                        if p.packet_id not in self.awaiting_rel:
                            self.awaiting_rel.add(p.packet_id)
                            self.delivered.append(int(p.payload))
                        c.send_packet(PubAck(PUBREC, p.packet_id))
                    else:
                        self.delivered.append(int(p.payload))
                        c.send_packet(PubAck(PUBACK, p.packet_id))
                elif p.type == PUBREL:
                    self.awaiting_rel.discard(p.packet_id)
                    c.send_packet(PubAck(PUBCOMP, p.packet_id))
        except (OSError, TimeoutError):
            return

    def reconnect(self) -> None:
        self.thread.join(10)
        self.client = Peer(self.port, f"flood-sub-{self.qos}")
        assert self.client.session_present
        self.start()


@pytest.mark.parametrize("qos", [1, 2])
@pytest.mark.parametrize("when", ["early", "random"])
def test_sigkill_mid_flood_loses_nothing_acknowledged(data_dir, qos, when):
    """kill -9 while a publisher floods a persistent subscriber (online) and a second,
    offline persistent subscriber: after the restart each receives every message the
    publisher was acknowledged, in order; at QoS 2 none twice."""
    port = free_port()
    conf = os.path.join(os.path.dirname(data_dir), "big-queues.toml")
    with open(conf, "w") as f:
        f.write("max_queued = 1000000\n")      # the offline subscriber keeps the whole flood
    args = ("-c", conf, "-p", str(port), "--data-dir", data_dir, "--log-level", "warning")
    cli = Cli("asyncio", *args, logs_to_stderr=False)
    wait_listening(port)
    offline = Peer(port, f"flood-off-{qos}")
    offline.subscribe("flood/#", qos)
    offline.close()
    online = Receiver(port, qos)
    flood = Flood(port, qos)
    time.sleep(0.05 if when == "early" else random.uniform(0.2, 1.5))
    cli.proc.send_signal(signal.SIGKILL)
    cli.proc.wait(5)
    acked = list(flood.acked)
    assert len(acked) > 0
    cli = Cli("asyncio", *args, logs_to_stderr=False)
    try:
        wait_listening(port)
        flood.finish()
        online.reconnect()
        off = Receiver.__new__(Receiver)
        off.qos, off.port, off.delivered, off.awaiting_rel = qos, port, [], set()
        off.client = Peer(port, f"flood-off-{qos}")
        assert off.client.session_present
        off.start()
        for r in (online, off):
            deadline = time.monotonic() + 20
            while not set(acked) <= set(r.delivered):
                assert time.monotonic() < deadline, (
                    f"missing {sorted(set(acked) - set(r.delivered))[:10]} of {len(acked)}")
                time.sleep(0.05)
            first = list(dict.fromkeys(r.delivered))
            assert first == sorted(first), "order per publisher"
            if qos == 2:
                assert len(r.delivered) == len(set(r.delivered)), "QoS 2 delivered twice"
    finally:
        cli.kill()
