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
    from cymqtt.config import ListenerConfig
    from cymqtt.context import Context
    from cymqtt.metrics import Metrics

__all__ = ["Admission", "Connection", "Endpoint", "Flusher", "READ_SIZE"]

READ_SIZE = 64 * 1024     # bytes read from one socket at a time (per loop iteration at most)
LINGER = 2.0              # seconds a closed connection still reads (and drops) what comes in


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


class Admission:
    """Clients connected through every listener of a broker, against its `max_connections`."""

    __slots__ = ("active", "limit")

    def __init__(self, limit: int) -> None:
        self.active = 0
        self.limit = limit              # -1: no limit


class Endpoint:
    """What every connection of one listener shares (one reference per connection rather than
    several: idle connections stay small, DESIGN rule 5)."""

    __slots__ = ("name", "flusher", "connections", "read_buffer", "config", "admission",
                 "active", "identity_as_username")

    def __init__(self, name: str, flusher: Flusher, connections: set[Connection],
                 read_buffer: memoryview, config: ListenerConfig | None = None,
                 admission: Admission | None = None) -> None:
        self.name = name
        self.flusher = flusher
        self.connections = connections       # every open connection of the listener set
        # Where every connection of the loop reads into (READ_SIZE bytes, shared; consumed
        # before the next read).
        self.read_buffer = read_buffer
        self.config = config
        self.admission = admission if admission is not None else Admission(-1)
        self.active = 0                      # clients admitted through this listener
        self.identity_as_username = config is not None and config.use_identity_as_username


class Connection(asyncio.BufferedProtocol):
    """One accepted socket of `endpoint`'s listener."""

    __slots__ = ("protocol", "transport", "_endpoint", "_admitted")

    def __init__(self, ctx: Context, endpoint: Endpoint) -> None:
        self.protocol = ClientProtocol(ctx, self)
        self.transport: asyncio.Transport | None = None
        self._endpoint = endpoint
        self._admitted = False

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
        self._release()
        self.protocol.connection_lost(exc)

    def _release(self) -> None:
        # Give back the client slot admit() took.
        if self._admitted:
            self._admitted = False
            ep = self._endpoint
            ep.active -= 1
            ep.admission.active -= 1

    # -- ClientIO: what the protocol asks of the socket ----------------------------------------

    @property
    def peer(self) -> str:
        """"host:port" of the client, for logs (not stored: idle connections stay small)."""
        peer = self.transport.get_extra_info("peername") if self.transport else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return f"{peer[0]}:{peer[1]}"
        return str(peer) if peer else "?"

    def admit(self) -> str | None:
        """Take a client slot of the listener and the broker (their `max_connections`); a
        reason when they are full. Called once, when CONNECT is accepted."""
        ep = self._endpoint
        limit = ep.config.max_connections if ep.config is not None else -1
        if 0 <= limit <= ep.active:
            return f"listener {ep.name} has its max_connections ({limit}) clients"
        g = ep.admission
        if 0 <= g.limit <= g.active:
            return f"the broker has its max_connections ({g.limit}) clients"
        ep.active += 1
        g.active += 1
        self._admitted = True
        return None

    @property
    def identity_username(self) -> str | None:
        """On a listener with `use_identity_as_username`: the CN of the client's certificate
        ("" without one); None elsewhere."""
        if not self._endpoint.identity_as_username:
            return None
        cert = self.transport.get_extra_info("peercert") if self.transport else None
        for rdn in (cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return ""

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
        self._release()
        try:
            self._endpoint.flusher.metrics.bytes_sent += self.flush()
        finally:
            if t.can_write_eof() and not t.is_closing():
                # Half-close and read (discarding) for a moment: closing with unread input
                # makes the kernel send a reset, and a peer that gets one may never read the
                # reason code just written (CONNACK or DISCONNECT). Its FIN, or LINGER, ends it.
                try:
                    t.write_eof()
                except OSError:          # the peer is gone already
                    t.close()
                    return
                t.resume_reading()
                self._endpoint.flusher.loop.call_later(LINGER, t.close)
            else:
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
