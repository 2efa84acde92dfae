"""The broker's per-message path without sockets: net.Connection.buffer_updated ->
ClientProtocol (parser, handlers) -> router -> session -> outbox -> flush, with in-memory
transports.

This isolates the Python work per message that sits on top of the socket floor (DESIGN.md
"What costs is per-message Python work"), so changes to handlers/router/session/message can be
measured before and after. Run:

    .venv/bin/python -m pytest benchmarks/bench_broker_path.py --benchmark-only
"""
from __future__ import annotations

import asyncio

import pytest

from cymqtt._fast.codec import Connect, Subscribe, encode, encode_publish
from cymqtt.broker import Broker
from cymqtt.net.connection import Connection

N = 1000


class NullTransport(asyncio.Transport):
    """Swallows writes; counts bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def write(self, data) -> None:
        self.written += len(data)

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 1) if name == "peername" else default

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def feed(conn: Connection, data: bytes) -> None:
    """What the transport does with bytes read: into the connection's buffer, then
    buffer_updated(), one buffer's worth at a time."""
    view = memoryview(data)
    while view:
        buf = conn.get_buffer(-1)
        n = min(len(buf), len(view))
        buf[:n] = view[:n]
        conn.buffer_updated(n)
        view = view[n:]


class Rig:
    """One broker, `pairs` publisher/subscriber pairs on distinct topics, all in memory."""

    def __init__(self, pairs: int, qos: int, version: int = 4) -> None:
        self.loop = asyncio.new_event_loop()
        self.broker = Broker(sys_interval=0)
        # The broker's own listener set, on this loop, without binding a socket.
        self.listeners = self.broker._listeners
        self.listeners.bind_loop(self.loop)
        self.pubs = []
        for i in range(pairs):
            sub = self._connect(f"sub{i}", version)
            feed(sub, encode(Subscribe(1, [(f"bench/{i}", qos)]), version))
            pub = self._connect(f"pub{i}", version)
            self.pubs.append((pub, sub))
        self.version = version
        self._drain()

    def _connect(self, client_id: str, version: int) -> Connection:
        conn = self.listeners.make_connection()
        conn.connection_made(NullTransport())
        feed(conn, encode(Connect(client_id, version=version)))
        return conn

    def _drain(self) -> None:
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    def chunk(self, i: int, qos: int) -> bytes:
        payload = b"x" * 64
        return b"".join(encode_publish(f"bench/{i}", payload, qos, False, False,
                                       (k % 65535) + 1 if qos else 0, None, self.version)
                        for k in range(N))

    def run(self, chunks, qos: int) -> None:
        sent = self.broker.stats()["messages_sent"]
        for (pub, sub), chunk in zip(self.pubs, chunks):
            feed(pub, chunk)
            w = sub.protocol.session.window
            while True:
                if qos and w is not None and w.inflight_count:
                    # the subscriber acknowledges the window; acks release the queue behind it
                    feed(sub, b"".join(b"\x40\x02" + pid.to_bytes(2, "big")
                                               for pid, _, _, _ in w.resend()))
                elif pub.protocol.pending is not None:
                    self._drain()      # the publisher was throttled: let it go on
                else:
                    break
        self._drain()
        assert self.broker.stats()["messages_sent"] - sent == len(chunks) * N

    def close(self) -> None:
        self.loop.close()


@pytest.mark.parametrize("qos", [0, 1])
def test_p2p_path(benchmark, qos):
    rig = Rig(pairs=10, qos=qos)
    chunks = [rig.chunk(i, qos) for i in range(10)]
    benchmark(rig.run, chunks, qos)
    assert sum(s.protocol.session.dropped for _, s in rig.pubs) == 0
    if benchmark.stats is not None:          # None under --benchmark-disable (one check run)
        per_round = 10 * N
        mean = benchmark.stats.stats.mean
        benchmark.extra_info["messages_per_s"] = per_round / mean
        print(f"\np2p QoS {qos}: {per_round / mean:,.0f} messages/s through the broker path")
    rig.close()
