"""A real, tiny shell for driving `ClientProtocol`s in tests, and an independent MQTT byte kit.

No sockets, no event loop: `FakeLoop` is a list of ready callbacks plus a heap of timers on a
clock the test advances, and `RecordingIO` implements the `ClientIO` interface the way
`net.connection.Connection` does (wake -> flush on the next loop pass, close -> flush then
close, connection_lost one pass later), recording every byte written and every flow-control
call. Data a test sends while reading is paused waits in the shell, as a paused transport's
data does, and is delivered one loop pass after `resume_reading()`.

    w = World()                          # FakeLoop + Context(Config(...), clock=loop.time)
    c = w.client()                       # a Peer: RecordingIO + ClientProtocol
    c.send(connect("c1"))                # receive_data(), then the ready callbacks run
    assert c.take() == b"\\x20\\x02\\x00\\x00"

The packet builders below write MQTT bytes by hand with `struct` (they do not use cymqtt's
encoder, which is under test), and `frames()` / `decode()` split and read what the broker wrote
without cymqtt's parser.
"""
from __future__ import annotations

import heapq
import struct
from dataclasses import dataclass, field
from typing import Callable

from cymqtt.auth import AuthExchange, Authenticator
from cymqtt.config import Config
from cymqtt.context import Context
from cymqtt.protocol.client import ClientProtocol

# -- the shell --------------------------------------------------------------------------------


class FakeLoop:
    """call_soon / call_later on a fake clock. Nothing runs until the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.ready: list[Callable[[], None]] = []
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0

    def time(self) -> float:
        return self.now

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.ready.append(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self._timers, (self.now + delay, self._seq, callback))

    @property
    def timers(self) -> list[tuple[float, Callable[[], None]]]:
        """Pending timers as (due, callback), soonest first."""
        return [(when, cb) for when, _, cb in sorted(self._timers)]

    def run_ready(self, limit: int = 10_000) -> int:
        """Run ready callbacks (and those they schedule) until none is left."""
        n = 0
        while self.ready:
            batch, self.ready = self.ready, []
            for cb in batch:
                cb()
                n += 1
                if n > limit:
                    raise AssertionError("the ready queue does not drain (a callback loop?)")
        return n

    def advance(self, seconds: float) -> None:
        """Move the clock forward, running each timer (then the ready queue) when it is due."""
        end = self.now + seconds
        self.run_ready()
        while self._timers and self._timers[0][0] <= end:
            when, _, cb = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            cb()
            self.run_ready()
        self.now = end


class RecordingIO:
    """The `ClientIO` of one fake connection."""

    def __init__(self, loop: FakeLoop, peer: str = "127.0.0.1:50000") -> None:
        self.loop = loop
        self._peer = peer
        self.proto: ClientProtocol | None = None
        self.written = bytearray()        # everything written, in order
        self.writes: list[bytes] = []     # one entry per write
        self.wakes = 0
        self.paused = False               # reading is paused now
        self.pause_calls = 0
        self.resume_calls = 0
        self.closed = False               # close() was called (after writing what was queued)
        self.aborted = False              # abort() was called
        self.lost = False                 # connection_lost() was delivered
        self.held: list[bytes] = []       # data sent by the test while reading was paused
        self._flush_scheduled = False

    # ClientIO
    @property
    def peer(self) -> str:
        return self._peer

    identity_username = None       # a plain TCP listener's: no certificate identity

    def admit(self) -> str | None:
        return None

    def wake(self) -> None:
        self.wakes += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def pause_reading(self) -> None:
        self.pause_calls += 1
        self.paused = True

    def resume_reading(self) -> None:
        self.resume_calls += 1
        if self.paused:
            self.paused = False
            if self.held:
                self.loop.call_soon(self._deliver_held)

    def close(self) -> None:
        if self.closed or self.aborted:
            return
        self.flush()
        self.closed = True
        self.loop.call_soon(self._lose)

    def abort(self) -> None:
        if self.closed or self.aborted:
            return
        self.aborted = True
        self.held.clear()
        self.loop.call_soon(self._lose)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.loop.call_soon(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.loop.call_later(delay, callback)

    # the shell's side
    @property
    def gone(self) -> bool:
        return self.closed or self.aborted or self.lost

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.gone:
            return
        data = self.proto.data_to_send()
        if data:
            self.written += data
            self.writes.append(data)

    def receive(self, data: bytes) -> None:
        """Bytes from the peer: to the protocol now, or held while reading is paused."""
        if self.gone:
            return
        if self.paused or self.held:
            self.held.append(data)
        else:
            self.proto.receive_data(data)

    def _deliver_held(self) -> None:
        while self.held and not self.paused and not self.gone:
            self.proto.receive_data(self.held.pop(0))

    def _lose(self) -> None:
        if not self.lost:
            self.lost = True
            self.proto.connection_lost()

    def drop(self) -> None:
        """The peer vanished (no DISCONNECT): connection_lost() now."""
        self.held.clear()
        self._lose()


class Peer:
    """One client connection as a test drives it."""

    def __init__(self, world: World, peer: str) -> None:
        self.world = world
        self.loop = world.loop
        self.io = RecordingIO(world.loop, peer)
        self.proto = ClientProtocol(world.ctx, self.io)
        self.io.proto = self.proto
        self._taken = 0

    def send(self, *packets: bytes) -> Peer:
        """All `packets` in one chunk (one receive_data call), then the loop's ready callbacks."""
        self.io.receive(b"".join(packets))
        self.loop.run_ready()
        return self

    def send_bytewise(self, data: bytes) -> Peer:
        for i in range(len(data)):
            self.io.receive(data[i:i + 1])
            self.loop.run_ready()
        return self

    def take(self) -> bytes:
        """What the broker wrote to this client since the last take()."""
        self.loop.run_ready()
        data = bytes(self.io.written[self._taken:])
        self._taken = len(self.io.written)
        return data

    def take_frames(self) -> list[bytes]:
        return frames(self.take())

    def drop(self) -> None:
        """The network connection is lost without a DISCONNECT."""
        self.io.drop()
        self.loop.run_ready()

    @property
    def closed(self) -> bool:
        """The broker closed (or aborted) this connection."""
        return self.io.closed or self.io.aborted

    @property
    def open(self) -> bool:
        return not self.closed and not self.io.lost

    @property
    def paused(self) -> bool:
        return self.io.paused


class World:
    """One Context (one broker's parts) on a FakeLoop, and the clients connected to it."""

    def __init__(self, config: Config | None = None, authenticators=None,
                 start: float = 1000.0, **overrides) -> None:
        self.loop = FakeLoop(start)
        config = config or Config(sys_interval=0)
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        self.ctx = Context.create(config, authenticators=authenticators, clock=self.loop.time)
        self.peers: list[Peer] = []

    @property
    def registry(self):
        return self.ctx.registry

    def client(self) -> Peer:
        p = Peer(self, f"127.0.0.1:{50000 + len(self.peers)}")
        self.peers.append(p)
        return p

    def connected(self, client_id: str, version: int = 4, **kw) -> Peer:
        """A client whose CONNECT was accepted (its CONNACK is taken and checked)."""
        p = self.client()
        p.send(connect(client_id, version=version, **kw))
        first = frames(bytes(p.io.written))[0]
        ack = decode(first)
        assert ack.type == CONNACK and ack.reason_code == 0, ack
        p._taken = len(first)     # what follows the CONNACK (a resumed session's) stays
        return p

    def protocols(self) -> list[ClientProtocol]:
        """The protocols of connections still open (what the broker's sweep iterates)."""
        return [p.proto for p in self.peers if not p.io.lost]


class Future:
    """A minimal future: add_done_callback(fn) and result(); callbacks run on set_result."""

    def __init__(self) -> None:
        self._done = False
        self._result = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Future], None]] = []

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, fn: Callable[[Future], None]) -> None:
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def result(self):
        if not self._done:
            raise RuntimeError("result() of a pending future")
        if self._exc is not None:
            raise self._exc
        return self._result

    def _finish(self) -> None:
        self._done = True
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def set_result(self, value) -> None:
        assert not self._done
        self._result = value
        self._finish()

    def set_exception(self, exc: BaseException) -> None:
        assert not self._done
        self._exc = exc
        self._finish()


class Scripted(Authenticator):
    """Authentication method "TEST": answers each step() with the next of `answers` (an
    AuthStep, or a Future of one)."""

    method = "TEST"

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.seen: list = []          # the data each step() got
        self.started: list = []       # (client_id, username) of each start()

    def start(self, client_id, username):
        self.started.append((client_id, username))
        return _Exchange(self)


class _Exchange(AuthExchange):
    def __init__(self, owner: Scripted) -> None:
        self.owner = owner

    def step(self, data):
        self.owner.seen.append(data)
        return self.owner.answers.pop(0)


# -- MQTT bytes, written by hand --------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

# MQTT 5 property identifiers and their value kinds (MQTT 5 section 2.2.2.2).
PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE = 0x01, 0x02, 0x03
RESPONSE_TOPIC, CORRELATION_DATA, SUBSCRIPTION_ID = 0x08, 0x09, 0x0B
SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE = 0x11, 0x12, 0x13
AUTH_METHOD, AUTH_DATA, REQUEST_PROBLEM_INFO, WILL_DELAY = 0x15, 0x16, 0x17, 0x18
REQUEST_RESPONSE_INFO, RESPONSE_INFO, SERVER_REFERENCE, REASON_STRING = 0x19, 0x1A, 0x1C, 0x1F
RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS, MAXIMUM_QOS = 0x21, 0x22, 0x23, 0x24
RETAIN_AVAILABLE, USER_PROPERTY, MAXIMUM_PACKET_SIZE = 0x25, 0x26, 0x27
WILDCARD_AVAILABLE, SUB_ID_AVAILABLE, SHARED_AVAILABLE = 0x28, 0x29, 0x2A

_BYTE, _U16, _U32, _VARINT, _STR, _BIN, _PAIR = range(7)
PROPERTY_KINDS = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STR, 0x08: _STR, 0x09: _BIN, 0x0B: _VARINT, 0x11: _U32,
    0x12: _STR, 0x13: _U16, 0x15: _STR, 0x16: _BIN, 0x17: _BYTE, 0x18: _U32, 0x19: _BYTE,
    0x1A: _STR, 0x1C: _STR, 0x1F: _STR, 0x21: _U16, 0x22: _U16, 0x23: _U16, 0x24: _BYTE,
    0x25: _BYTE, 0x26: _PAIR, 0x27: _U32, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def props(p: dict | None) -> bytes:
    """An MQTT 5 property block, length first; {id: value} (a list of values for 0x26)."""
    body = bytearray()
    for pid, value in (p or {}).items():
        kind = PROPERTY_KINDS[pid]
        values = value if kind == _PAIR else [value]
        for v in values:
            body += varint(pid)
            if kind == _BYTE:
                body += struct.pack("!B", v)
            elif kind == _U16:
                body += struct.pack("!H", v)
            elif kind == _U32:
                body += struct.pack("!I", v)
            elif kind == _VARINT:
                body += varint(v)
            elif kind in (_STR, _BIN):
                body += utf8(v)
            else:
                body += utf8(v[0]) + utf8(v[1])
    return varint(len(body)) + bytes(body)


def packet(first_byte: int, body: bytes) -> bytes:
    return bytes([first_byte]) + varint(len(body)) + body


@dataclass
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    properties: dict | None = None


def connect(client_id: str = "", *, version: int = 4, clean: bool = True, keepalive: int = 60,
            username: str | None = None, password: bytes | None = None, will: Will | None = None,
            properties: dict | None = None, protocol_name: str | None = None,
            level: int | None = None, flags: int | None = None) -> bytes:
    """CONNECT. `level` and `protocol_name` override what `version` implies; `flags` replaces
    the connect flags byte computed from the other arguments."""
    name = protocol_name or ("MQIsdp" if version == 3 else "MQTT")
    f = 0
    if clean:
        f |= 0x02
    if will is not None:
        f |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if password is not None:
        f |= 0x40
    if username is not None:
        f |= 0x80
    if flags is not None:
        f = flags
    body = utf8(name) + bytes([version if level is None else level, f])
    body += struct.pack("!H", keepalive)
    if version == 5:
        body += props(properties)
    body += utf8(client_id)
    if will is not None:
        if version == 5:
            body += props(will.properties)
        body += utf8(will.topic) + utf8(will.payload)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return packet(0x10, body)


def connack(session_present: bool = False, code: int = 0) -> bytes:
    """A CONNACK without properties (MQTT 3.x)."""
    return bytes([0x20, 2, 1 if session_present else 0, code])


def publish(topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
            dup: bool = False, pid: int | None = None, version: int = 4,
            properties: dict | None = None) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", 1 if pid is None else pid)
    if version == 5:
        body += props(properties)
    return packet(first, body + payload)


def ack(ptype: int, pid: int, code: int | None = None, properties: dict | None = None) -> bytes:
    """PUBACK/PUBREC/PUBREL/PUBCOMP; a reason code or properties make it the MQTT 5 form."""
    body = struct.pack("!H", pid)
    if code is not None or properties is not None:
        body += bytes([code or 0])
        if properties is not None:
            body += props(properties)
    return packet((ptype << 4) | (2 if ptype == PUBREL else 0), body)


def puback(pid: int, code: int | None = None) -> bytes:
    return ack(PUBACK, pid, code)


def pubrec(pid: int, code: int | None = None) -> bytes:
    return ack(PUBREC, pid, code)


def pubrel(pid: int, code: int | None = None) -> bytes:
    return ack(PUBREL, pid, code)


def pubcomp(pid: int, code: int | None = None) -> bytes:
    return ack(PUBCOMP, pid, code)


def subscribe(pid: int, *filters: tuple[str, int] | str, version: int = 4,
              properties: dict | None = None) -> bytes:
    """SUBSCRIBE; each filter is "topic" (QoS 0) or ("topic", options byte)."""
    body = struct.pack("!H", pid)
    if version == 5:
        body += props(properties)
    for f in filters:
        topic, options = (f, 0) if isinstance(f, str) else f
        body += utf8(topic) + bytes([options])
    return packet(0x82, body)


def suback(pid: int, *codes: int, version: int = 4) -> bytes:
    body = struct.pack("!H", pid) + (b"\x00" if version == 5 else b"") + bytes(codes)
    return packet(0x90, body)


def unsubscribe(pid: int, *filters: str, version: int = 4) -> bytes:
    body = struct.pack("!H", pid) + (b"\x00" if version == 5 else b"")
    for f in filters:
        body += utf8(f)
    return packet(0xA2, body)


def unsuback(pid: int, *codes: int, version: int = 4) -> bytes:
    body = struct.pack("!H", pid)
    if version == 5:
        body += b"\x00" + bytes(codes)
    return packet(0xB0, body)


PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"


def disconnect(code: int | None = None, properties: dict | None = None) -> bytes:
    body = b""
    if code is not None or properties is not None:
        body = bytes([code or 0])
        if properties is not None:
            body += props(properties)
    return packet(0xE0, body)


def auth(code: int, properties: dict | None = None) -> bytes:
    return packet(0xF0, bytes([code]) + props(properties))


# -- reading what the broker wrote (without cymqtt's parser) ----------------------------------


def _varint_at(buf: bytes, i: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, i
        shift += 7
        if shift > 21:
            raise ValueError("variable byte integer longer than 4 bytes")


def frames(data: bytes) -> list[bytes]:
    """Split a byte stream into whole MQTT packets; fail on a partial one."""
    out = []
    i = 0
    while i < len(data):
        n, j = _varint_at(data, i + 1)
        if j + n > len(data):
            raise ValueError(f"partial packet at byte {i}: {data[i:].hex()}")
        out.append(data[i:j + n])
        i = j + n
    return out


def parse_props(buf: bytes, i: int) -> tuple[dict, int]:
    n, i = _varint_at(buf, i)
    end = i + n
    out: dict = {}
    while i < end:
        pid, i = _varint_at(buf, i)
        kind = PROPERTY_KINDS[pid]
        if kind == _BYTE:
            v = buf[i]
            i += 1
        elif kind == _U16:
            (v,) = struct.unpack_from("!H", buf, i)
            i += 2
        elif kind == _U32:
            (v,) = struct.unpack_from("!I", buf, i)
            i += 4
        elif kind == _VARINT:
            v, i = _varint_at(buf, i)
        else:
            parts = []
            for _ in range(2 if kind == _PAIR else 1):
                (ln,) = struct.unpack_from("!H", buf, i)
                raw = bytes(buf[i + 2:i + 2 + ln])
                parts.append(raw if kind == _BIN else raw.decode())
                i += 2 + ln
            v = tuple(parts) if kind == _PAIR else parts[0]
        if kind == _PAIR or kind == _VARINT and pid == SUBSCRIPTION_ID:
            out.setdefault(pid, []).append(v)
        else:
            assert pid not in out, f"property 0x{pid:02X} twice"
            out[pid] = v
    assert i == end, "property block overruns its length"
    return out, end


@dataclass
class Decoded:
    type: int
    flags: int
    raw: bytes
    session_present: bool = False
    reason_code: int = 0
    reason_codes: list = field(default_factory=list)
    packet_id: int = 0
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    properties: dict = field(default_factory=dict)


def decode(frame: bytes, version: int = 5) -> Decoded:
    """One packet the broker sent, read by this module's own rules. `version` says whether
    acks and PUBLISH carry MQTT 5 fields (CONNACK, DISCONNECT and AUTH are read by length)."""
    t, flags = frame[0] >> 4, frame[0] & 0x0F
    n, i = _varint_at(frame, 1)
    assert i + n == len(frame), f"one whole packet expected: {frame.hex()}"
    d = Decoded(t, flags, frame)
    end = len(frame)
    if t == CONNACK:
        d.session_present = bool(frame[i] & 1)
        d.reason_code = frame[i + 1]
        if i + 2 < end:
            d.properties, i = parse_props(frame, i + 2)
            assert i == end
    elif t == PUBLISH:
        d.qos, d.retain, d.dup = (flags >> 1) & 3, bool(flags & 1), bool(flags & 8)
        (ln,) = struct.unpack_from("!H", frame, i)
        d.topic = frame[i + 2:i + 2 + ln].decode()
        i += 2 + ln
        if d.qos:
            (d.packet_id,) = struct.unpack_from("!H", frame, i)
            i += 2
        if version == 5:
            d.properties, i = parse_props(frame, i)
        d.payload = bytes(frame[i:])
    elif t in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        (d.packet_id,) = struct.unpack_from("!H", frame, i)
        if i + 2 < end:
            d.reason_code = frame[i + 2]
        if i + 3 < end:
            d.properties, i = parse_props(frame, i + 3)
            assert i == end
    elif t in (SUBACK, UNSUBACK):
        (d.packet_id,) = struct.unpack_from("!H", frame, i)
        i += 2
        if version == 5:
            d.properties, i = parse_props(frame, i)
        d.reason_codes = list(frame[i:])
    elif t in (DISCONNECT, AUTH):
        if i < end:
            d.reason_code = frame[i]
        if i + 1 < end:
            d.properties, i = parse_props(frame, i + 1)
            assert i == end
    return d
