"""One benchmark client: an asyncio.Protocol speaking MQTT through the compiled codec.

A client is a publisher, a subscriber or an idle connection (role "pub", "sub", "conn"); the
worker that owns it (worker.py) paces it. Frames go to `outbox` and the worker flushes every
dirty client once per loop iteration, so 32 acks produced by one read cost one write.

Publisher payloads carry, in their first 16 bytes, the send time (time.monotonic_ns, which is
one clock for every process on the machine), the publisher's index and a sequence number:

    >Q  send time, ns        >I  publisher index (1-based)        >I  sequence number

The frames are built from a template encoded once by `encode_publish`; per message only those
16 bytes (and for QoS 1/2 the packet identifier just before them) are written, many messages to
one bytes object, by the compiled `_wire.PublishFiller`. What arrives goes through the compiled
`_wire.DeliveryReader`: it counts PUBLISH frames, reads their stamps into the worker's latency
histogram and writes the QoS 1/2 acks; only the other packets (CONNACK, SUBACK, PUBACK, ...)
reach the Python `FrameParser` here.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import TYPE_CHECKING

from cymqtt._fast.codec import (
    Connect, FrameParser, Subscribe, encode, encode_ack, encode_publish,
)
from cymqtt.bench._wire import DeliveryReader, PublishFiller

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.bench.worker import Worker

HEADER = struct.Struct(">QII")            # time, publisher, sequence
HEADER_SIZE = HEADER.size                 # 16: the smallest payload the bench sends

PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 3, 4, 5, 6, 7
CONNACK, SUBACK, PINGRESP, DISCONNECT = 2, 9, 13, 14
PINGREQ = b"\xc0\x00"
DISCONNECT_FRAME = b"\xe0\x00"
P_RECEIVE_MAXIMUM = 0x21
P_SESSION_EXPIRY = 0x11

_monotonic_ns = time.monotonic_ns


class PublishTemplate:
    """A PUBLISH frame for one topic/QoS/size, and where its variable bytes live."""

    __slots__ = ("frame", "length", "stamp_off", "pid_off")

    def __init__(self, topic: str, size: int, qos: int, version: int) -> None:
        if size < HEADER_SIZE:
            raise ValueError(f"payload size must be at least {HEADER_SIZE} bytes")
        self.frame = encode_publish(topic, bytes(size), qos, False, False, 1 if qos else 0,
                                    None, version)
        self.length = len(self.frame)
        self.stamp_off = self.length - size              # the payload starts with the stamp
        if qos == 0:
            self.pid_off = -1
        else:                      # the packet id; MQTT 5 puts a property length 0 after it
            self.pid_off = self.stamp_off - (3 if version == 5 else 2)

    def filler(self, index: int) -> PublishFiller:
        """The compiled frame maker for publisher `index`."""
        return PublishFiller(self.frame, self.stamp_off, self.pid_off, index)


class BenchClient(asyncio.Protocol):
    __slots__ = (
        "w", "role", "index", "client_id", "topic", "qos", "version", "keepalive",
        "transport", "reader", "parser", "outbox", "dirty", "connected", "closing", "paused",
        "last_tx", "waiter", "waiting_for",
        # publisher
        "tpl", "filler", "sent", "acked", "seq", "inflight", "window", "next_pid", "count",
        "finished", "weight", "local_weight", "next_due", "t0",
    )

    def __init__(self, worker: Worker, role: str, index: int, client_id: str,
                 topic: str | None = None) -> None:
        self.w = worker
        self.role = role
        self.index = index
        self.client_id = client_id
        self.topic = topic
        self.qos = worker.qos
        self.version = worker.version
        self.keepalive = worker.keepalive
        self.transport: asyncio.Transport | None = None
        # PUBLISH (and PUBREL) frames are handled by the reader; the rest by the parser.
        self.reader = DeliveryReader(self.version, worker.hist)
        self.parser = FrameParser(self.version)
        self.outbox: list = []
        self.dirty = False
        self.connected = False
        self.closing = False
        self.paused = False
        self.last_tx = 0.0
        self.waiter: asyncio.Future | None = None
        self.waiting_for = 0
        self.tpl: PublishTemplate | None = None
        self.filler: PublishFiller | None = None
        self.sent = 0
        self.acked = 0
        self.seq = 0
        self.inflight: set | None = None
        self.window = worker.inflight
        self.next_pid = 1
        self.count = worker.count            # messages to send; 0 = until the duration ends
        self.finished = False
        self.weight = 0                      # subscribers that get each of its messages
        self.local_weight = 0                # ... of them in this worker process
        self.next_due = 0.0
        self.t0 = 0.0

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        w = self.w
        transport.set_write_buffer_limits(high=w.high_water)  # type: ignore[attr-defined]
        if w.sndbuf and self.role == "pub":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, w.sndbuf)
        props = None
        persistent = w.persistent_subs and self.role == "sub"
        if self.version == 5 and self.role == "sub":
            props = {P_RECEIVE_MAXIMUM: 65535}
            if persistent:
                props[P_SESSION_EXPIRY] = 300
        self.send(encode(Connect(self.client_id, version=self.version, clean_start=not persistent,
                                 keepalive=self.keepalive, properties=props,
                                 username=w.username, password=w.password)))

    def data_received(self, data: bytes) -> None:
        w = self.w
        now = _monotonic_ns()
        reader = self.reader
        got = reader.feed(data, now)
        if got:
            w.received += got
            if w.throttled:
                w.unthrottle()
            w.last_rx_ns = now
            if not w.first_rx_ns:
                w.first_rx_ns = now
        acks = reader.take_acks()
        if acks is not None:
            self.send(acks)
        others = reader.take_others()
        if others is not None:
            self._others(others)
        err = reader.error if reader.error is not None else self.parser.error
        if err is not None:
            w.error(f"bad frame from the broker: {err}")
            self.abort()
            return
        if self.tpl is not None and self.qos and not self.paused:
            w.refill(self)

    def _others(self, frames: bytes) -> None:
        # Every packet but PUBLISH and PUBREL (which the reader answers itself).
        w = self.w
        for p in self.parser.feed(frames):
            t = p.type
            if t == PUBACK or t == PUBCOMP:
                self._acked(p)
            elif t == PUBREC:
                if p.reason_code >= 0x80:
                    self._acked(p)
                elif self.inflight is not None and p.packet_id in self.inflight:
                    self.send(encode_ack(PUBREL, p.packet_id, 0, None, self.version))
                else:
                    w.error("PUBREC for an unknown packet id")
            elif t == PINGRESP:
                w.pongs += 1
            elif t == CONNACK:
                self._connack(p)
            elif t == SUBACK:
                self._suback(p)
            elif t == DISCONNECT:
                w.error(f"DISCONNECT from the broker (reason 0x{p.reason_code:02X})")
            else:
                w.error(f"unexpected {p.name}")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.tpl is not None:
            self.w.resumed(self)

    def connection_lost(self, exc: Exception | None) -> None:
        w = self.w
        if self.connected:
            self.connected = False
            w.connected -= 1
        if not self.closing:
            w.error("connection lost" + (f": {exc}" if exc else " (closed by the broker)"))
            w.lost_connections += 1
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError("connection closed by the broker"))
        self.transport = None
        self.outbox.clear()
        if self.tpl is not None and not self.finished:
            self.finished = True
            w.publisher_finished(self)

    # -- handshake -----------------------------------------------------------------------------

    def _connack(self, p) -> None:
        waiter = self.waiter
        if p.reason_code != 0:
            if waiter is not None and not waiter.done():
                waiter.set_exception(ConnectionError(f"CONNACK reason 0x{p.reason_code:02X}"))
            return
        if self.version == 5 and p.properties and self.tpl is not None:
            rmax = p.properties.get(P_RECEIVE_MAXIMUM)
            if rmax:
                self.window = min(self.window, rmax)
        self.connected = True
        w = self.w
        w.connected += 1
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _suback(self, p) -> None:
        waiter = self.waiter
        bad = [rc for rc in p.reason_codes if rc >= 0x80]
        if waiter is not None and not waiter.done():
            if bad:
                waiter.set_exception(ConnectionError(f"SUBACK refused (0x{bad[0]:02X})"))
            else:
                waiter.set_result(None)

    def subscribe_frame(self, topic_filter: str) -> bytes:
        return encode(Subscribe(1, [(topic_filter, self.qos)]), self.version)

    # -- output --------------------------------------------------------------------------------

    def send(self, frame) -> None:
        if self.transport is None:
            return
        self.outbox.append(frame)
        if not self.dirty:
            self.dirty = True
            self.w.mark_dirty(self)

    def flush(self, now: float) -> int:
        self.dirty = False
        outbox = self.outbox
        if not outbox or self.transport is None:
            outbox.clear()
            return 0
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        self.last_tx = now
        self.transport.write(data)
        return len(data)

    def ping(self, now: float) -> None:
        self.send(PINGREQ)
        self.w.pings += 1

    def disconnect(self) -> None:
        """Clean end: DISCONNECT and wait for the broker to close (the worker closes what is
        still open after a moment)."""
        self.closing = True
        t = self.transport
        if t is None:
            return
        if not self.connected:
            t.close()
            return
        self.outbox.append(DISCONNECT_FRAME)
        self.flush(0.0)

    def eof_received(self) -> bool:
        return False                     # the broker closed: close our side too

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # -- publishing ----------------------------------------------------------------------------

    def make_frames(self, n: int, now_ns: int) -> bytes:
        """`n` PUBLISH frames (one bytes object) stamped `now_ns`; QoS 1/2 take packet ids."""
        filler = self.filler
        if self.qos == 0:
            buf = filler.qos0(n, now_ns, self.seq)
        else:
            inflight = self.inflight
            if inflight is None:
                inflight = self.inflight = set()
            buf, self.next_pid = filler.with_ids(n, now_ns, self.seq, self.next_pid, inflight)
        self.seq += n
        self.sent += n
        return buf

    def _acked(self, p) -> None:
        inflight = self.inflight
        w = self.w
        if inflight is None or p.packet_id not in inflight:
            w.error(f"{p.name} for an unknown packet id")
            return
        inflight.discard(p.packet_id)
        self.acked += 1
        w.acked += 1
        if p.reason_code >= 0x80:
            w.error(f"{p.name} reason 0x{p.reason_code:02X}")
        if not inflight and not self.finished:
            w.maybe_finish(self)
