#!/usr/bin/env python3
"""A stand-in broker that reads as fast as its sockets deliver: how much load can cymqtt-bench
offer, and can it still time deliveries while it floods?

    .venv/bin/python benchmarks/sink.py --port 18830 --deliver 300000 --duration 30 &
    .venv/bin/python -m cymqtt.bench pubsub --pairs 100 --qos 0 --max-ahead 0 --port 18830

It answers CONNECT, SUBSCRIBE, UNSUBSCRIBE and PINGREQ, acknowledges QoS 1/2 PUBLISHes and
otherwise discards what publishers send, counting the PUBLISH frames (cymqtt-bench's compiled
DeliveryReader walks the frame headers). It routes nothing: with --deliver R it sends its own
stamped QoS 0 PUBLISHes (64 B payload, topic sink/<n>) to the subscribers, R per second in
all, so the load generator has deliveries to read and time while it publishes. cymqtt-bench
then reports the publishers' offered rate as "sent", the sink's deliveries as "received" (and
calls the difference lost: nothing here routes a publisher's message to a subscriber).

On exit (after --duration, or on SIGINT/SIGTERM) it prints one JSON line: PUBLISH frames and
bytes read, and per second over the time publishes arrived; deliveries sent and skipped
(a subscriber's socket still held more than 256 KB).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from cymqtt._fast.codec import ConnAck, FrameParser, SubAck, encode, encode_publish
from cymqtt.bench._wire import DeliveryReader, PublishFiller

CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT = 1, 8, 10, 12, 14
SUBACK, UNSUBACK = 9, 11
PINGRESP = b"\xd0\x00"
PAYLOAD = 64                        # bytes per delivery; the stamp is its first 16
TICK = 0.005                        # deliveries are written every 5 ms
SKIP_ABOVE = 256 * 1024             # bytes queued for a subscriber: skip its share this tick


class Sink:
    def __init__(self, deliver: float) -> None:
        self.deliver = deliver
        self.conns: set[SinkConnection] = set()
        self.subscribers: list[SinkConnection] = []
        self.publishes = 0
        self.bytes_in = 0
        self.first_ns = 0
        self.last_ns = 0
        self.delivered = 0
        self.skipped = 0
        self._t0 = 0.0
        self._owed_base = 0
        self._rr = 0

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        loop.call_later(TICK, self.tick, loop)
        subs = [c for c in self.subscribers if c.transport is not None]
        if not self.deliver or not subs:
            self._t0 = 0.0
            return
        now = time.monotonic()
        if not self._t0:
            self._t0 = now
            self._owed_base = self.delivered + self.skipped
        owed = int((now - self._t0) * self.deliver) - (self.delivered + self.skipped
                                                       - self._owed_base)
        if owed <= 0:
            return
        now_ns = time.monotonic_ns()
        share, extra = divmod(owed, len(subs))
        self._rr = (self._rr + 1) % len(subs)
        for k, c in enumerate(subs[self._rr:] + subs[:self._rr]):
            n = share + (1 if k < extra else 0)
            if not n:
                continue
            if c.transport.get_write_buffer_size() > SKIP_ABOVE:
                self.skipped += n
                continue
            c.transport.write(c.filler.qos0(n, now_ns, c.seq))
            c.seq += n
            self.delivered += n

    def report(self) -> dict:
        window = (self.last_ns - self.first_ns) / 1e9 if self.last_ns > self.first_ns else 0.0
        return {"publishes_read": self.publishes, "bytes_read": self.bytes_in,
                "read_window_s": round(window, 3),
                "publishes_read_per_s": round(self.publishes / window, 1) if window else 0.0,
                "mb_read_per_s": round(self.bytes_in / window / 1e6, 1) if window else 0.0,
                "delivered": self.delivered, "deliveries_skipped": self.skipped}


class SinkConnection(asyncio.Protocol):
    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.transport: asyncio.Transport | None = None
        self.reader = DeliveryReader(4, None)
        self.parser = FrameParser(0)
        self.version = 4
        self.filler = None
        self.seq = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.sink.conns.add(self)

    def data_received(self, data: bytes) -> None:
        sink = self.sink
        sink.bytes_in += len(data)
        now = time.monotonic_ns()
        got = self.reader.feed(data, now)
        if got:
            sink.publishes += got
            sink.last_ns = now
            if not sink.first_ns:
                sink.first_ns = now
        acks = self.reader.take_acks()
        if acks is not None:
            self.transport.write(acks)
        others = self.reader.take_others()
        if others is not None:
            for p in self.parser.feed(others):
                self._packet(p)
        if self.reader.error is not None or self.parser.error is not None:
            self.transport.abort()

    def _packet(self, p) -> None:
        t = p.type
        if t == CONNECT:
            self.version = self.reader.version = p.version
            self.transport.write(encode(ConnAck(False, 0), p.version))
        elif t == SUBSCRIBE:
            self.transport.write(encode(SubAck(SUBACK, p.packet_id,
                                               [opts & 3 for _, opts in p.topics]),
                                        self.version))
            if self.filler is None:
                index = len(self.sink.subscribers) + 1
                frame = encode_publish(f"sink/{index}", bytes(PAYLOAD), 0, False, False, 0,
                                       None, self.version)
                self.filler = PublishFiller(frame, len(frame) - PAYLOAD, -1, 0)
                self.sink.subscribers.append(self)
        elif t == UNSUBSCRIBE:
            self.transport.write(encode(SubAck(UNSUBACK, p.packet_id,
                                               [0] * len(p.topics) if self.version == 5
                                               else []), self.version))
        elif t == PINGREQ:
            self.transport.write(PINGRESP)
        elif t == DISCONNECT:
            self.transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc) -> None:
        self.transport = None
        self.sink.conns.discard(self)
        if self in self.sink.subscribers:
            self.sink.subscribers.remove(self)


async def serve(o: argparse.Namespace) -> dict:
    loop = asyncio.get_running_loop()
    sink = Sink(o.deliver)
    server = await loop.create_server(lambda: SinkConnection(sink), o.host, o.port,
                                      backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.call_later(TICK, sink.tick, loop)
    print(f"sink: listening on {o.host}:{o.port}", file=sys.stderr, flush=True)
    try:
        await asyncio.wait_for(stop.wait(), o.duration)
    except (TimeoutError, asyncio.TimeoutError):
        pass
    server.close()
    for c in list(sink.conns):
        if c.transport is not None:
            c.transport.abort()
    return sink.report()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18830)
    p.add_argument("--deliver", type=float, default=0.0,
                   help="QoS 0 deliveries per second to the subscribers, in all (default 0)")
    p.add_argument("--duration", type=float, default=60.0,
                   help="seconds to serve, then exit (default 60)")
    o = p.parse_args(argv)
    try:
        import uvloop
        result = uvloop.run(serve(o))
    except ImportError:  # pragma: no cover
        result = asyncio.run(serve(o))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
