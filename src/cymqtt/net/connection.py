"""Connection: the asyncio.Protocol adaptor between one socket and its `ClientProtocol`.

Bytes read go to `ClientProtocol.receive_data`. Reads land in one buffer that every connection
of the loop shares (a BufferedProtocol: no bytes object per read; the parser copies only an
incomplete packet's tail), and READ_SIZE bounds what one read takes from one socket: a flooding
client gets its share of a loop iteration and no more, and what it sent beyond waits in the
kernel, where TCP slows it down. The transport's flow control goes to
`pause_writing`/`resume_writing`; the socket's end to `connection_lost`. Frames out are written
once per loop iteration: the protocol's first frame of a tick calls `wake()`, which puts this
connection on the `Flusher`'s dirty list, and one `call_soon` flush writes every dirty
connection's frames with a single `transport.write` each (uvloop's queued-writes idea, one level
up: 1,000 messages routed to one subscriber in one tick cost one write, not 1,000).
"""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable

from cymqtt.protocol.client import ClientProtocol

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.context import Context
    from cymqtt.metrics import Metrics

__all__ = ["Connection", "Endpoint", "Flusher", "READ_SIZE"]

READ_SIZE = 64 * 1024     # bytes read from one socket at a time (per loop iteration at most)


class Flusher:
    """The loop's dirty connections, written once per iteration."""

    __slots__ = ("loop", "metrics", "dirty", "handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, metrics: Metrics) -> None:
        self.loop = loop
        self.metrics = metrics
        self.dirty: list[Connection] = []
        self.handle: asyncio.Handle | None = None

    def flush(self) -> None:
        self.handle = None
        dirty = self.dirty
        if not dirty:
            return
        self.dirty = []
        sent = 0
        for conn in dirty:
            sent += conn.flush()
        self.metrics.bytes_sent += sent


class Endpoint:
    """What every connection of one listener shares (one reference per connection rather than
    three: idle connections stay small, DESIGN rule 5)."""

    __slots__ = ("name", "flusher", "connections", "read_buffer")

    def __init__(self, name: str, flusher: Flusher, connections: set[Connection],
                 read_buffer: memoryview) -> None:
        self.name = name
        self.flusher = flusher
        self.connections = connections       # every open connection of the listener set
        # Where every connection of the loop reads into (READ_SIZE bytes, shared; consumed
        # before the next read).
        self.read_buffer = read_buffer


class Connection(asyncio.BufferedProtocol):
    """One accepted socket of `endpoint`'s listener."""

    __slots__ = ("protocol", "transport", "_endpoint")

    def __init__(self, ctx: Context, endpoint: Endpoint) -> None:
        self.protocol = ClientProtocol(ctx, self)
        self.transport: asyncio.Transport | None = None
        self._endpoint = endpoint

    @property
    def listener(self) -> str:
        """The name of the listener that accepted it."""
        return self._endpoint.name

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._endpoint.connections.add(self)
        self.protocol.ctx.metrics.connections_total += 1

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._endpoint.read_buffer

    def buffer_updated(self, nbytes: int) -> None:
        self.protocol.receive_data(self._endpoint.read_buffer[:nbytes])

    def pause_writing(self) -> None:
        self.protocol.pause_writing()

    def resume_writing(self) -> None:
        self.protocol.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._endpoint.connections.discard(self)
        self.protocol.connection_lost(exc)

    # -- ClientIO: what the protocol asks of the socket ----------------------------------------

    @property
    def peer(self) -> str:
        """"host:port" of the client, for logs (not stored: idle connections stay small)."""
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer) if peer else "?"

    def wake(self) -> None:
        fl = self._endpoint.flusher
        fl.dirty.append(self)
        if fl.handle is None:
            fl.handle = fl.loop.call_soon(fl.flush)

    def flush(self) -> int:
        t = self.transport
        if t is None:
            return 0
        data = self.protocol.data_to_send()
        if data:
            t.write(data)
        return len(data)

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()     # a no-op on a closing transport

    def close(self) -> None:
        t = self.transport
        if t is None:
            return
        try:
            self._endpoint.flusher.metrics.bytes_sent += self.flush()
        finally:
            t.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def call_soon(self, callback: Callable[[], None]) -> None:
        self._endpoint.flusher.loop.call_soon(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self._endpoint.flusher.loop.call_later(delay, callback)

    def __repr__(self) -> str:
        return f"<Connection {self.protocol.client_id!r} {self.peer}>"
