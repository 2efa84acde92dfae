"""The protocols, peers and loop harness of test_stream.py (see its doc)."""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import time

import pytest

_stream = pytest.importorskip("cymqtt.net._stream")

Reactor = _stream.Reactor

HIGH, LOW = 64 * 1024, 16 * 1024


# --- protocols -----------------------------------------------------------------------------------

class Proto:
    """A data_received protocol recording every callback; `echo` writes back what it reads,
    `eof_result` is what eof_received returns, `keep` keeps the bytes read (else just counts)."""

    def __init__(self, *, echo: bool = False, eof_result=None, keep: bool = True,
                 pause_after_first_read: bool = False) -> None:
        self.stream = None
        self.made = 0
        self.data = bytearray()
        self.nbytes = 0
        self.reads: list[int] = []
        self.types: set[type] = set()
        self.eofs = 0
        self.lost: list = []
        self.fileno_at_lost = None
        self.writes: list[tuple[str, int]] = []  # ("pause"|"resume", buffer size at the call)
        self.order: list[str] = []
        self.echo = echo
        self.eof_result = eof_result
        self.keep = keep
        self.pause_after_first_read = pause_after_first_read

    def connection_made(self, stream) -> None:
        self.made += 1
        self.stream = stream
        self.order.append("made")

    def data_received(self, data) -> None:
        self.types.add(type(data))
        self._got(bytes(data))

    def _got(self, b: bytes) -> None:
        if "read" not in self.order:
            self.order.append("read")
        self.nbytes += len(b)
        self.reads.append(len(b))
        if self.keep:
            self.data += b
        if self.echo:
            self.stream.write(b)
        if self.pause_after_first_read and len(self.reads) == 1:
            self.stream.pause_reading()

    def eof_received(self):
        self.eofs += 1
        self.order.append("eof")
        return self.eof_result

    def pause_writing(self) -> None:
        self.writes.append(("pause", self.stream.get_write_buffer_size()))

    def resume_writing(self) -> None:
        self.writes.append(("resume", self.stream.get_write_buffer_size()))

    def connection_lost(self, exc) -> None:
        self.lost.append(exc)
        self.order.append("lost")
        self.fileno_at_lost = self.stream.fileno()


class BProto(Proto):
    """A BufferedProtocol (get_buffer + buffer_updated) over a buffer of `bufsize` bytes;
    data_received must never be called on it."""

    def __init__(self, bufsize: int = 65536, **kw) -> None:
        super().__init__(**kw)
        self.buf = bytearray(bufsize)
        self.hints: list[int] = []
        self.data_received_calls = 0

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        return memoryview(self.buf)

    def buffer_updated(self, nbytes) -> None:
        assert 0 < nbytes <= len(self.buf)
        self._got(bytes(self.buf[:nbytes]))

    def data_received(self, data) -> None:  # pragma: no cover - a failure if reached
        self.data_received_calls += 1


PROTOS = [pytest.param(Proto, id="data_received"), pytest.param(BProto, id="buffered")]


# --- harness -------------------------------------------------------------------------------------

def open_fds() -> set[int]:
    """This process's open file descriptors. A test compares the sets before and after: what
    it opened must be closed, whatever other threads of the process (a broker of an earlier
    test winding down) close meanwhile."""
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        d = sock.recv(min(1 << 20, n - len(buf)))
        if not d:
            break
        buf += d
    return bytes(buf)


def recv_to_eof(sock: socket.socket) -> tuple[bytes, BaseException | None]:
    buf = bytearray()
    try:
        while True:
            d = sock.recv(1 << 20)
            if not d:
                return bytes(buf), None
            buf += d
    except OSError as e:
        return bytes(buf), e


def rst_close(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def until(pred, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
        await asyncio.sleep(0.002)


def fill(stream, chunk_size: int = 65536, extra_chunks: int = 4,
         limit: int = 256 << 20) -> bytes:
    """Write distinct chunks until the kernel takes no more (the Stream buffers), then
    `extra_chunks` more; returns everything written, in order."""
    written = []
    total = 0
    i = 0
    while stream.get_write_buffer_size() == 0:
        chunk = bytes([i % 251]) * chunk_size
        stream.write(chunk)
        written.append(chunk)
        total += chunk_size
        i += 1
        assert total < limit, "the kernel took 256 MB without the Stream buffering anything"
    for _ in range(extra_chunks):
        chunk = bytes([i % 251]) * chunk_size
        stream.write(chunk)
        written.append(chunk)
        i += 1
    return b"".join(written)


class Net:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.errors: list[dict] = []
        loop.set_exception_handler(lambda _loop, ctx: self.errors.append(ctx))
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.addr = self.listener.getsockname()
        self.clients: list[socket.socket] = []
        self.reactors: list = []

    def reactor(self, **kw):
        r = Reactor(self.loop, **kw)
        self.reactors.append(r)
        return r

    def connect(self) -> tuple[socket.socket, int]:
        c = socket.create_connection(self.addr, timeout=10)
        self.clients.append(c)
        conn, _ = self.listener.accept()
        return c, conn.detach()

    def pair(self, reactor, proto):
        c, fd = self.connect()
        s = reactor.attach(fd, proto)
        return c, s

    def run(self, coro, timeout: float = 10.0):
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def in_thread(self, fn, *args):
        return self.loop.run_in_executor(None, fn, *args)

    def teardown(self) -> None:
        for c in self.clients:
            try:
                c.close()
            except OSError:
                pass
        for r in self.reactors:
            r.close()
        self.loop.run_until_complete(asyncio.sleep(0.05))
        self.listener.close()
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()
