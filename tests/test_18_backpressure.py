"""Back-pressure over real sockets (DESIGN hot-path rules 6 and 7): retained streams that reach
every subscriber, floods that lose nothing to a subscriber that pauses, a stalled subscriber that
holds nobody and is dropped from (counted) then disconnected, memory that stays bounded under a
flood, and the per-client counters that show it.

Clients are raw sockets (written by hand below, a small SO_RCVBUF where a full socket is wanted)
and paho; the broker is the `broker` fixture (its own loop thread, asyncio or uvloop), except for
the memory test, which runs `python -m cymqtt` as a subprocess and reads its VmRSS. Time that a
rule waits for (stall_timeout, write_timeout) is played forward with the broker's TestClock.
"""
from __future__ import annotations

import collections
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from cymqtt._fast.codec import FrameParser
from helpers_paho import V311, wait_until
from protocol._harness import packet as _packet, utf8 as _str

PUBLISH, PUBACK, SUBACK, PINGRESP = 3, 4, 9, 13


# -- MQTT bytes, by hand ------------------------------------------------------------------------

def connect_frame(client_id: str, clean: bool = True, keepalive: int = 600) -> bytes:
    return _packet(0x10, _str("MQTT") + bytes([4, 0x02 if clean else 0])
                   + keepalive.to_bytes(2, "big") + _str(client_id))


def subscribe_frame(pid: int, topic: str, qos: int) -> bytes:
    return _packet(0x82, pid.to_bytes(2, "big") + _str(topic) + bytes([qos]))


def publish_frame(topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                  pid: int = 1) -> bytes:
    body = _str(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload
    return _packet(0x30 | (qos << 1) | (1 if retain else 0), body)


def puback_frame(pid: int) -> bytes:
    return b"\x40\x02" + pid.to_bytes(2, "big")


PINGREQ = b"\xc0\x00"


def numbered_batch(topic: str, start: int, n: int, size: int) -> bytes:
    """n QoS 0 PUBLISHes whose payloads are the 8-digit sequence number padded to `size`."""
    pad = b"." * (size - 8)
    head = _packet(0x30, _str(topic) + b"\0" * size)[:-size]     # fixed header + topic
    return b"".join(head + b"%08d" % i + pad for i in range(start, start + n))


# -- clients --------------------------------------------------------------------------------------

def client(port: int, client_id: str, subscribe: tuple[str, int] | None = None,
           rcvbuf: int | None = None, clean: bool = True) -> socket.socket:
    """A connected MQTT 3.1.1 socket (CONNACK checked), subscribed when asked (SUBACK checked).
    `rcvbuf` is set before connecting, so the TCP window is small from the start."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(connect_frame(client_id, clean))
    assert _recv_exact(s, 4) == b"\x20\x02\x00\x00"
    if subscribe:
        topic, qos = subscribe
        s.sendall(subscribe_frame(1, topic, qos))
        assert _recv_exact(s, 5) == b"\x90\x03\x00\x01" + bytes([qos])
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = s.recv(n - len(buf))
        if not data:
            break
        buf += data
    return buf


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True when the broker closes `s` within `timeout` (what was buffered is read and skipped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not s.recv(1 << 20):
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


class Reader(threading.Thread):
    """Reads one socket as fast as it can on its own thread and parses what arrives; PUBLISHes go
    to `on_publish(packet)` (QoS 1 ones are acknowledged when `ack`). `reading.clear()` stops
    reading (the socket fills up) until `reading.set()`. `ping()` asks the thread to send a
    PINGREQ; `pongs` counts the PINGRESPs: the broker answers one after everything it queued for
    the connection before it."""

    def __init__(self, sock: socket.socket, on_publish, ack: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.on_publish = on_publish
        self.ack = ack
        self.parser = FrameParser(4)
        self.reading = threading.Event()
        self.reading.set()
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.closed = False
        self.pongs = 0
        self._pings = 0
        self.start()

    def ping(self) -> None:
        self._pings += 1

    def sync(self, timeout: float = 10.0) -> None:
        """Return once everything the broker queued for this client so far has been handled."""
        want = self.pongs + 1
        self.ping()
        wait_until(lambda: self.pongs >= want or self.error or self.closed, timeout,
                   what="PINGRESP")
        self.check()

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"reader failed: {self.error!r}") from self.error

    def run(self) -> None:
        sock = self.sock
        sock.settimeout(0.05)
        try:
            while not self.done.is_set():
                if self._pings:
                    self._pings -= 1
                    sock.sendall(PINGREQ)
                if not self.reading.is_set():
                    time.sleep(0.005)
                    continue
                try:
                    data = sock.recv(1 << 20)
                except socket.timeout:
                    continue
                if not data:
                    self.closed = True
                    return
                packets = self.parser.feed(data)
                assert self.parser.error is None, self.parser.error
                acks = []
                for p in packets:
                    if p.type == PUBLISH:
                        self.on_publish(p)
                        if p.qos == 1 and self.ack:
                            acks.append(puback_frame(p.packet_id))
                    elif p.type == PINGRESP:
                        self.pongs += 1
                if acks:
                    sock.sendall(b"".join(acks))
        except BaseException as exc:     # reported to the test by check()
            if not self.done.is_set():
                self.error = exc

    def stop(self) -> None:
        self.done.set()
        self.join(5)


class Flooder(threading.Thread):
    """Writes QoS 0 PUBLISHes to `topic` as fast as the socket takes them (TCP push-back is
    what slows it), numbered from 0 in the payload, in batches, until `stop()` or `count`."""

    def __init__(self, sock: socket.socket, topic: str, size: int = 32, batch: int = 500,
                 count: int | None = None, fixed: bool = False) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.topic = topic
        self.size = size
        self.batch = batch
        self.count = count
        self.fixed = numbered_batch(topic, 0, batch, size) if fixed else None
        self.sent = 0                 # messages written so far
        self.sent_at: list[tuple[float, int]] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        self.sock.settimeout(None)
        try:
            while not self.halt.is_set():
                n = self.batch if self.count is None else min(self.batch, self.count - self.sent)
                if n <= 0:
                    return
                data = self.fixed or numbered_batch(self.topic, self.sent, n, self.size)
                self.sock.sendall(data)
                self.sent += n
        except BaseException as exc:
            if not self.halt.is_set():
                self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
        assert not self.is_alive(), "the flooder is stuck in sendall"


class Sequence:
    """What a subscriber of numbered messages got: count, and the first few out-of-order ones."""

    def __init__(self) -> None:
        self.next = 0
        self.got = 0
        self.bad: list[tuple[int, int]] = []

    def __call__(self, p) -> None:
        n = int(p.payload[:8])
        if n != self.next and len(self.bad) < 10:
            self.bad.append((self.next, n))
        self.next = n + 1
        self.got += 1


def _close(*socks) -> None:
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()


def state(bt, client_id: str, fn):
    """fn(session) on the broker's loop (None when there is no such session)."""
    def get():
        s = bt.broker.session(client_id)
        return None if s is None else fn(s)
    return bt.call(get)


# -- retained: every one, to every subscriber ---------------------------------------------------

A, B = 20, 1000          # ret/<a>/<b>/x: ret/# matches A * B, ret/7/+/x matches B


def test_all_retained_messages_reach_wildcard_subscribers(broker, paho):
    """20,000 retained messages (64-byte payloads): a new subscriber to ret/# at QoS 0 and one
    at QoS 1 (acknowledging as it goes) each receive every one of them exactly once with
    RETAIN 1 [MQTT-3.3.1-6, MQTT-3.3.1-8], at the QoS of the subscription; ret/7/+/x gets exactly
    its 1,000, and so does paho at QoS 1 on the same filter."""
    pub = client(broker.port, "retainer")
    try:
        # stored at QoS 1, so that each subscriber gets them at its subscription's QoS
        pub.sendall(b"".join(
            publish_frame(f"ret/{a}/{b}/x", f"{a}/{b}".encode().ljust(64, b"."), qos=1,
                          retain=True, pid=a * B + b + 1)
            for a in range(A) for b in range(B)))
        assert _recv_exact(pub, 4 * A * B) == b"".join(puback_frame(i + 1)
                                                       for i in range(A * B))
        wait_until(lambda: broker.call(lambda: broker.broker.retained_count) == A * B, 30,
                   what="20,000 retained messages stored")
    finally:
        _close(pub)

    seen = {name: collections.Counter() for name in ("q0", "q1", "seven")}
    totals = dict.fromkeys(seen, 0)     # read by this thread while the readers count
    wrong: list = []

    def recorder(name, qos):
        def on_publish(p):
            seen[name][p.topic] += 1
            totals[name] += 1
            if not p.retain or p.qos != qos or \
                    p.payload != p.topic[4:-2].encode().ljust(64, b"."):
                wrong.append((name, p.topic, p.qos, p.retain, p.payload))
        return on_publish

    socks = [client(broker.port, "q0", ("ret/#", 0)), client(broker.port, "q1", ("ret/#", 1)),
             client(broker.port, "seven", ("ret/7/+/x", 0))]
    readers = [Reader(socks[0], recorder("q0", 0)), Reader(socks[1], recorder("q1", 1), ack=True),
               Reader(socks[2], recorder("seven", 0))]
    p = paho("paho-ret", V311)
    try:
        p.subscribe("ret/7/+/x", 1)
        expect = {"q0": A * B, "q1": A * B, "seven": B}
        wait_until(lambda: all(r.error is None for r in readers) and all(
            totals[k] >= expect[k] for k in expect), 60,
            what="every retained message at every subscriber")
        for r, cid in zip(readers, expect):
            wait_until(lambda: state(broker, cid, lambda s: s.retained_pending + s.inflight)
                       == 0, 10, what=f"{cid}'s stream done")
            r.sync()
        assert wrong == []
        assert {k: sum(v.values()) for k, v in seen.items()} == expect
        assert all(n == 1 for v in seen.values() for n in v.values())
        assert set(seen["seven"]) == {f"ret/7/{b}/x" for b in range(B)}
        assert set(seen["q1"]) == {f"ret/{a}/{b}/x" for a in range(A) for b in range(B)}
        p.wait_messages(B, timeout=60)
        wait_until(lambda: state(broker, "paho-ret", lambda s: s.retained_pending + s.inflight)
                   == 0, 10, what="paho's stream done")
        got = p.messages
        assert len(got) == B
        assert {m.topic for m in got} == {f"ret/7/{b}/x" for b in range(B)}
        assert all(m.retain and m.qos == 1 for m in got)
        assert broker.call(lambda: broker.broker.stats()["messages_dropped"]) == 0
    finally:
        for r in readers:
            r.stop()
        _close(*socks)


# -- a draining subscriber holds the flood: nothing lost --------------------------------------

@pytest.mark.broker_config(stall_timeout=3.0)
def test_qos0_flood_to_a_subscriber_that_pauses_loses_nothing(broker):
    """A publisher writing QoS 0 as fast as it can for 2 s to a subscriber that stops reading for
    0.5 s (less than stall_timeout) then reads on: the subscriber gets every message, in order,
    without a gap, and the broker counts no drop. While it did not read, the broker held the
    publisher (ClientProtocol.throttled seen) instead of buffering: the subscriber's transport
    buffer stayed small."""
    seq = Sequence()
    sub = client(broker.port, "reader", ("flood/t", 0), rcvbuf=16384)
    pub = client(broker.port, "flooder")
    reader = Reader(sub, seq)
    flooder = None
    try:
        flooder = Flooder(pub, "flood/t", size=512, batch=200)
        time.sleep(0.6)
        reader.reading.clear()

        def sample():
            p = broker.broker.session("flooder").client
            s = broker.broker.session("reader").client
            return p.throttled, s.io.transport.get_write_buffer_size(), s.writable

        samples = []
        until = time.monotonic() + 0.5
        while time.monotonic() < until:
            samples.append(broker.call(sample))
            time.sleep(0.01)
        reader.reading.set()
        time.sleep(0.9)
        flooder.stop()
        assert flooder.error is None, flooder.error
        total = flooder.sent
        wait_until(lambda: seq.got >= total or reader.error, 30, what="every message read")
        reader.sync()
        assert seq.bad == []
        assert seq.got == total and seq.next == total
        assert any(throttled for throttled, _, _ in samples), samples[:20]
        assert any(not writable for _, _, writable in samples)
        assert max(buffered for _, buffered, _ in samples) < 1024 * 1024
        st = broker.call(broker.broker.stats)
        assert st["messages_dropped"] == 0 and st["messages_dropped_slow_consumer"] == 0
        assert state(broker, "reader", lambda s: s.dropped) == 0
    finally:
        if flooder is not None and flooder.is_alive():
            flooder.halt.set()
        reader.stop()
        _close(sub, pub)
        if flooder is not None:
            flooder.join(5)


# -- a stalled subscriber holds nobody, is dropped from, then disconnected --------------------

@pytest.mark.broker_config(write_timeout=5.0, sys_interval=0.2)
def test_stalled_subscriber_does_not_stop_a_publisher_feeding_a_healthy_one(broker):
    """A subscriber that never reads (small SO_RCVBUF) and one that reads, on the same topic.
    Once the stalled one's socket is full and stall_timeout has passed, the publisher is not
    held by it: 2,000 more messages all reach the healthy subscriber, in order; each of them is
    dropped for the stalled one and counted (Session.dropped_slow, Broker.clients()'s dropped,
    stats messages_dropped_slow_consumer and messages_dropped, $SYS/broker/publish/messages/
    dropped). After write_timeout the stalled client is disconnected; the count stays."""
    stalled = client(broker.port, "stalled", ("flood/t", 0), rcvbuf=4096)
    seq = Sequence()
    healthy = client(broker.port, "healthy", ("flood/t", 0))
    reader = Reader(healthy, seq)
    pub = client(broker.port, "pub")
    sys_sock = None
    try:
        # fill the stalled subscriber's socket with big messages, until its transport pushes
        # back (pause_writing; the kernel's buffers take a few MB first)
        sent = 0
        while not state(broker, "stalled", lambda s: s.client.tx_paused):
            assert sent < 4000, "the stalled subscriber's socket never filled up"
            pub.sendall(numbered_batch("flood/t", sent, 20, 8192))
            sent += 20
        wait_until(lambda: seq.got >= sent or reader.error, 20, what="healthy caught up")
        reader.sync()
        assert state(broker, "healthy", lambda s: s.client.writable)
        broker.clock.advance(1.1)              # stall_timeout (1 s) passes for the full socket
        before = state(broker, "stalled", lambda s: s.dropped_slow)

        n = 2000
        for i in range(sent, sent + n, 200):
            pub.sendall(numbered_batch("flood/t", i, 200, 64))
        wait_until(lambda: seq.got >= sent + n or reader.error, 20,
                   what="2,000 messages at the healthy subscriber")
        reader.sync()
        assert seq.bad == [] and seq.got == sent + n
        dropped = state(broker, "stalled", lambda s: s.dropped_slow)
        assert dropped - before == n
        assert state(broker, "stalled", lambda s: s.client.writable) is False
        clients = {c["client_id"]: c for c in broker.call(broker.broker.clients)}
        assert clients["stalled"]["dropped"] == dropped
        assert clients["healthy"]["dropped"] == 0 and clients["healthy"]["sent"] == sent + n
        st = broker.call(broker.broker.stats)
        assert st["messages_dropped_slow_consumer"] == dropped > 0
        assert st["messages_dropped"] == dropped

        sys_values: list[int] = []
        sys_sock = client(broker.port, "sys", ("$SYS/broker/publish/messages/dropped", 0))
        sys_reader = Reader(sys_sock, lambda p: sys_values.append(int(p.payload)))
        try:
            wait_until(lambda: dropped in sys_values, 5, what="$SYS dropped count")
        finally:
            sys_reader.stop()

        broker.clock.advance(5.0)              # write_timeout for the stalled one
        # the broker's own sweep (every 0.5 s) closes it; reading the socket before that
        # would drain it and make it writable again
        wait_until(lambda: broker.call(lambda: broker.broker.session("stalled") is None), 5,
                   what="stalled session ended")
        assert closed_by_peer(stalled, 10), "the stalled client's socket is still open"
        st = broker.call(broker.broker.stats)
        assert st["messages_dropped_slow_consumer"] == dropped   # kept after the session ended
        pub.sendall(numbered_batch("flood/t", sent + n, 1, 64))
        wait_until(lambda: seq.got == sent + n + 1, 5, what="healthy still served")
    finally:
        reader.stop()
        _close(stalled, healthy, pub, *([sys_sock] if sys_sock else []))


# -- memory stays bounded under a flood (broker in its own process) ---------------------------

def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Drain(threading.Thread):
    """Reads and discards as fast as it can; counts bytes."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.bytes = 0
        self.halt = threading.Event()
        self.start()

    def run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.halt.is_set():
            try:
                data = self.sock.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            self.bytes += len(data)


def test_memory_stays_bounded_during_a_flood(request, tmp_path):
    """`python -m cymqtt` with 10 publishers writing QoS 0 as fast as they can for 10 s, 10
    subscribers reading as fast as they can, and one subscriber (to everything) that never
    reads: the broker's resident memory stays within baseline + 150 MB (a broker that buffers
    for the slow ones, or reads faster than it writes, would blow that), and does not keep
    growing in the second half of the run."""
    if request.config.getoption("--loop") == "uvloop":
        pytest.skip("the subprocess broker runs uvloop either way; the asyncio run covers it")
    log = open(tmp_path / "broker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cymqtt", "--host", "127.0.0.1",
                             "--port", "0"], stdout=subprocess.DEVNULL, stderr=log,
                            start_new_session=True)
    socks: list[socket.socket] = []
    threads: list = []
    try:
        port = wait_until(lambda: _listening_port(tmp_path / "broker.log", proc), 15,
                          what="the broker's 'listening on' line")
        topics = [f"mem/{i}" for i in range(10)]
        deaf = client(port, "deaf", ("mem/#", 0), rcvbuf=4096)
        socks.append(deaf)
        subs = [client(port, f"sub{i}", (t, 0)) for i, t in enumerate(topics)]
        pubs = [client(port, f"pub{i}") for i in range(10)]
        socks += subs + pubs
        time.sleep(0.3)
        baseline = _rss_kib(proc.pid)
        threads += [Drain(s) for s in subs]
        flooders = [Flooder(s, t, size=256, batch=400, fixed=True) for s, t in zip(pubs, topics)]
        threads += flooders
        samples = []
        end = time.monotonic() + 10
        while time.monotonic() < end:
            time.sleep(0.5)
            assert proc.poll() is None, "the broker died"
            samples.append(_rss_kib(proc.pid))
        for f in flooders:
            assert f.error is None, f.error
        assert all(d.bytes for d in threads if isinstance(d, Drain))
        mb = 1024
        peak = max(samples)
        assert peak < baseline + 150 * mb, (baseline, samples)
        q = len(samples) // 4
        second = sum(samples[q:2 * q]) / q
        last = sum(samples[3 * q:]) / len(samples[3 * q:])
        assert last < second + max(20 * mb, second * 0.1), (baseline, samples)
    finally:
        for t in threads:
            t.halt.set()
        _close(*socks)
        for t in threads:
            t.join(5)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        log.close()


def _listening_port(path, proc) -> int | None:
    assert proc.poll() is None, open(path).read()
    m = re.search(rb"listening on 127\.0\.0\.1:(\d+)", open(path, "rb").read())
    return int(m.group(1)) if m else None


# -- per-client counters ------------------------------------------------------------------------

@pytest.mark.broker_config(max_inflight=5, max_queued=20)
def test_clients_counters_match_what_the_clients_did(broker):
    """Broker.clients() (and Broker.client(id)): a publisher's `received` is the PUBLISH packets it sent; a subscriber's
    `sent` the ones it was sent (and read); a QoS 1 subscriber that never acknowledges shows its
    window in `inflight`, a full queue in `queued` and the overflow in `dropped`; a stalled one
    shows its QoS 0 drops in `dropped`, and sent + dropped is every message routed to it."""
    everything = Sequence()
    reader_sock = client(broker.port, "reader", ("cnt/#", 0))
    reader = Reader(reader_sock, everything)
    holder_got: list = []
    holder_sock = client(broker.port, "holder", ("cnt/q1", 1))
    holder = Reader(holder_sock, holder_got.append, ack=False)
    stalled = client(broker.port, "stalled", ("cnt/big", 0), rcvbuf=4096)
    pub = client(broker.port, "pub")
    try:
        n = 0
        pub.sendall(numbered_batch("cnt/a", n, 40, 16))
        n += 40
        pub.sendall(b"".join(publish_frame("cnt/q1", b"%08d" % i, qos=1, pid=i + 1)
                             for i in range(n, n + 30)))
        got = b""
        while len(got) < 30 * 4:                 # 30 PUBACKs
            pub.settimeout(10)
            got += pub.recv(4096)
        assert got == b"".join(puback_frame(i + 1) for i in range(n, n + 30))
        n += 30
        big = 0
        while not state(broker, "stalled", lambda s: s.client.tx_paused):
            assert big < 4000, "the stalled subscriber's socket never filled up"
            pub.sendall(numbered_batch("cnt/big", n, 10, 8192))
            n += 10
            big += 10
        wait_until(lambda: everything.got >= n or reader.error, 20, what="reader caught up")
        reader.sync()
        assert state(broker, "reader", lambda s: s.client.writable)
        broker.clock.advance(1.1)               # the stalled one is now stalled
        pub.sendall(numbered_batch("cnt/big", n, 25, 16))
        n += 25
        big += 25
        wait_until(lambda: everything.got >= n or reader.error, 20, what="reader caught up")
        reader.sync()
        holder.sync()
        clients = {c["client_id"]: c for c in broker.call(broker.broker.clients)}
        assert everything.bad == [] and everything.got == n
        assert clients["pub"]["received"] == n and clients["pub"]["sent"] == 0
        assert clients["reader"]["sent"] == n and clients["reader"]["received"] == 0
        assert clients["reader"]["dropped"] == 0
        assert len(holder_got) == 5
        h = clients["holder"]
        assert (h["sent"], h["inflight"], h["queued"], h["dropped"]) == (5, 5, 20, 30 - 25)
        assert h["received"] == 0 and h["retained_pending"] == 0
        assert broker.call(lambda: broker.broker.client("holder")) == h
        s = clients["stalled"]
        assert s["dropped"] >= 25
        assert s["sent"] + s["dropped"] == big
        assert s["dropped"] == state(broker, "stalled", lambda x: x.dropped_slow)
        assert (s["inflight"], s["queued"]) == (0, 0)
    finally:
        reader.stop()
        holder.stop()
        _close(reader_sock, holder_sock, stalled, pub)
