"""cymqtt.net._stream: the epoll Reactor and its Streams, on real sockets on 127.0.0.1.

Every test runs on the loop `--loop` names (asyncio by default, or uvloop), built by the `net`
fixture below; each test body is one coroutine run under `asyncio.wait_for`, so a bug fails the
test instead of hanging the run. The peer of each Stream is a plain blocking socket (timeout 10 s);
what must read or write while the loop runs does it in a thread (`run_in_executor`).
The loop's exception handler is recorded: an error the module leaks into the loop fails the test.
"""
from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import resource
import socket
import sys
import threading
import time

import pytest

_stream = pytest.importorskip("cymqtt.net._stream")
if not getattr(_stream, "AVAILABLE", False):
    pytest.skip("cymqtt.net._stream is not available on this platform (no epoll)",
                allow_module_level=True)

from .streamkit import (  # noqa: E402 (after the platform skip)
    BProto,
    HIGH,
    LOW,
    Net,
    PROTOS,
    Proto,
    Reactor,
    fill,
    open_fds,
    recv_exact,
    recv_to_eof,
    rst_close,
    until,
)


@pytest.fixture
def net(request):
    kind = request.config.getoption("--loop")
    if kind == "uvloop":
        import uvloop
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    n = Net(loop)
    yield n
    n.teardown()
    assert n.errors == [], f"errors reported to the loop's exception handler: {n.errors}"

# --- 0. attach -----------------------------------------------------------------------------------

def test_available_and_attach_sets_nonblocking_nodelay_and_calls_connection_made(net):
    assert _stream.AVAILABLE is True

    async def main():
        r = net.reactor()
        assert len(r) == 0
        c, fd = net.connect()
        p = Proto()
        s = r.attach(fd, p)
        # connection_made ran synchronously inside attach, with the stream
        assert p.made == 1 and p.stream is s
        assert len(r) == 1
        assert s.fileno() == fd
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        dup = socket.socket(fileno=os.dup(fd))
        try:
            assert dup.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            dup.close()
        assert s.is_reading() and not s.is_closing()
        assert s.get_protocol() is p
        assert s.can_write_eof() is True
        c.sendall(b"hello")
        await until(lambda: p.data == b"hello", what="data")
        assert p.order[:2] == ["made", "read"] and p.types == {bytes}
        assert p.lost == []
    net.run(main())


# --- 1. echo round trips -------------------------------------------------------------------------

@pytest.mark.parametrize("cls", PROTOS)
def test_echo_round_trip(net, cls):
    async def main():
        r = net.reactor()
        p = cls(echo=True)
        c, s = net.pair(r, p)
        for msg in (b"a", b"hello world", bytes(range(256)) * 10):
            c.sendall(msg)
            assert await net.in_thread(recv_exact, c, len(msg)) == msg
        if cls is BProto:
            assert p.data_received_calls == 0 and p.hints
    net.run(main())


@pytest.mark.parametrize("cls", PROTOS)
def test_echo_20_megabytes_each_way_intact_and_in_order(net, cls):
    size = 20 * 1024 * 1024
    payload = os.urandom(size)

    async def main():
        r = net.reactor()
        p = cls(echo=True, keep=False)
        c, s = net.pair(r, p)

        def send():
            view = memoryview(payload)
            for i in range(0, size, 1 << 20):   # in pieces of varied sizes
                c.sendall(view[i:i + (1 << 20)])
        sender = net.in_thread(send)
        got = await net.in_thread(recv_exact, c, size)
        await sender
        assert p.nbytes == size
        assert len(got) == size
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        assert s.get_write_buffer_size() == 0
        if cls is BProto:
            assert p.data_received_calls == 0
    net.run(main(), timeout=30)


def test_writelines_and_write_types(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        s.write(b"a")
        s.write(bytearray(b"b"))
        s.write(memoryview(b"xcx")[1:2])
        s.write(b"")
        s.writelines([b"d", bytearray(b"e"), memoryview(b"f")])
        s.writelines(iter([b"g", b"h"]))
        assert await net.in_thread(recv_exact, c, 8) == b"abcdefgh"
    net.run(main())


def test_buffered_write_of_a_bytearray_is_not_changed_by_mutating_it(net):
    """What write() has taken is sent as it was (asyncio copies what it buffers)."""
    async def main():
        r = net.reactor()
        s_proto = Proto()
        c, s = net.pair(r, s_proto)
        s.set_write_buffer_limits(high=1 << 30)
        head = fill(s, extra_chunks=0)
        assert s.get_write_buffer_size() > 0
        ba = bytearray(b"A" * 100_000)
        s.write(ba)
        ba[:] = b"B" * 100_000
        s.write_eof()
        data, err = await net.in_thread(recv_to_eof, c)
        assert err is None
        assert data == head + b"A" * 100_000
    net.run(main(), timeout=20)


# --- 2. read_size and fairness -------------------------------------------------------------------

@pytest.mark.parametrize("read_size, make, limit", [
    (4096, Proto, 4096), (4096, BProto, 4096), (65536, lambda: BProto(bufsize=1000), 1000)],
    ids=["data_received", "buffered", "buffered-smaller-than-read_size"])
def test_each_read_is_bounded_by_read_size_and_the_buffer(net, read_size, make, limit):
    async def main():
        r = net.reactor(read_size=read_size)
        p = make()
        c, s = net.pair(r, p)
        payload = os.urandom(300_000)
        c.sendall(payload)
        await until(lambda: p.nbytes == len(payload), what="all data")
        assert bytes(p.data) == payload
        assert max(p.reads) <= limit
    net.run(main())


def test_a_flooding_peer_does_not_starve_another_stream(net):
    async def main():
        r = net.reactor(read_size=4096)
        flood_p = BProto(keep=False)
        c1, s1 = net.pair(r, flood_p)
        small_p = Proto()
        c2, s2 = net.pair(r, small_p)
        stop = threading.Event()

        def flood():
            chunk = b"f" * 262144
            try:
                while not stop.is_set():
                    c1.sendall(chunk)
            except OSError:
                pass
        t = threading.Thread(target=flood, daemon=True)
        t.start()
        try:
            await until(lambda: flood_p.nbytes > 2_000_000, what="the flood to be flowing")
            expected = b""
            for i in range(20):
                before = flood_p.nbytes
                msg = b"m%03d;" % i
                expected += msg
                c2.sendall(msg)
                await until(lambda: bytes(small_p.data) == expected, timeout=3,
                            what=f"small message {i} while the flood goes on")
                # the flood is still being read: other streams get turns, it is not stopped
                await until(lambda: flood_p.nbytes > before, timeout=3, what="flood progress")
            # the loop's other callbacks run too
            t0 = time.monotonic()
            for _ in range(20):
                await asyncio.sleep(0.01)
            assert time.monotonic() - t0 < 3
            assert max(flood_p.reads) <= 4096 and max(small_p.reads) <= 4096
        finally:
            stop.set()
            await net.in_thread(t.join, 5)
    net.run(main(), timeout=20)


# --- 3. back-pressure ----------------------------------------------------------------------------

def test_back_pressure_pause_and_resume_writing_once_each(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        assert s.get_write_buffer_limits() == (LOW, HIGH)
        written = [fill(s, extra_chunks=0)]
        while s.get_write_buffer_size() <= HIGH:
            assert p.writes == [], "pause_writing before the buffer went above high"
            chunk = os.urandom(10_000)
            s.write(chunk)
            written.append(chunk)
        await until(lambda: p.writes, timeout=2, what="pause_writing")
        assert [e for e, _ in p.writes] == ["pause"]
        assert p.writes[0][1] > HIGH
        for _ in range(20):   # more writes above high: no second pause
            chunk = os.urandom(65536)
            s.write(chunk)
            written.append(chunk)
        await asyncio.sleep(0.05)
        assert [e for e, _ in p.writes] == ["pause"]
        expected = b"".join(written)
        got = await net.in_thread(recv_exact, c, len(expected))
        assert got == expected
        await until(lambda: s.get_write_buffer_size() == 0, what="the buffer to drain")
        await asyncio.sleep(0.05)
        assert [e for e, _ in p.writes] == ["pause", "resume"]
        assert p.writes[1][1] <= LOW
        assert p.lost == []
    net.run(main(), timeout=20)


def test_close_while_writing_is_paused_resumes_writing_before_connection_lost(net):
    """close() with the buffer above high: when it drains, resume_writing pairs the earlier
    pause_writing (as asyncio's transports do) before connection_lost."""
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        written = fill(s, extra_chunks=4)
        await until(lambda: p.writes, timeout=2, what="pause_writing")
        s.close()
        data, err = await net.in_thread(recv_to_eof, c)
        assert err is None and data == written
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert [e for e, _ in p.writes] == ["pause", "resume"], p.writes
        assert p.order[-1] == "lost" and p.lost == [None]
    net.run(main(), timeout=20)


def test_set_write_buffer_limits_like_asyncio(net):
    async def main():
        r = net.reactor()
        c, s = net.pair(r, Proto())
        s.set_write_buffer_limits(high=1000, low=100)
        assert s.get_write_buffer_limits() == (100, 1000)
        s.set_write_buffer_limits(high=1000)
        assert s.get_write_buffer_limits() == (250, 1000)
        s.set_write_buffer_limits(low=100)
        assert s.get_write_buffer_limits() == (100, 400)
        s.set_write_buffer_limits()
        assert s.get_write_buffer_limits() == (LOW, HIGH)
    net.run(main())


def test_set_write_buffer_limits_changes_the_thresholds(net):
    high, low = 300_000, 100_000

    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        s.set_write_buffer_limits(high=high, low=low)
        written = [fill(s, chunk_size=10_000, extra_chunks=0)]
        # above the default high (64 KiB) but not above ours: no pause
        while s.get_write_buffer_size() <= high:
            chunk = os.urandom(10_000)
            s.write(chunk)
            written.append(chunk)
            if s.get_write_buffer_size() <= high:
                assert p.writes == [], (s.get_write_buffer_size(), p.writes)
        await until(lambda: p.writes, timeout=2, what="pause_writing")
        assert p.writes[0][0] == "pause" and p.writes[0][1] > high
        expected = b"".join(written)
        got = await net.in_thread(recv_exact, c, len(expected))
        assert got == expected
        await until(lambda: len(p.writes) == 2, what="resume_writing")
        assert p.writes[1][0] == "resume" and p.writes[1][1] <= low
        await until(lambda: s.get_write_buffer_size() == 0, what="the buffer to drain")
    net.run(main(), timeout=20)


# --- 4. pause_reading / resume_reading -----------------------------------------------------------

@pytest.mark.parametrize("cls", PROTOS)
def test_pause_reading_holds_data_and_resume_delivers_it(net, cls):
    async def main():
        r = net.reactor()
        p = cls()
        c, s = net.pair(r, p)
        s.pause_reading()
        assert not s.is_reading()
        first = os.urandom(100_000)
        c.sendall(first)
        await asyncio.sleep(0.3)
        assert p.nbytes == 0
        s.resume_reading()
        assert s.is_reading()
        await until(lambda: p.nbytes == len(first), what="the held data")
        # again, while the stream has been reading
        s.pause_reading()
        s.pause_reading()   # twice: no error
        assert not s.is_reading()
        second = os.urandom(50_000)
        c.sendall(second)
        await asyncio.sleep(0.3)
        assert p.nbytes == len(first)
        s.resume_reading()
        s.resume_reading()
        assert s.is_reading()
        await until(lambda: p.nbytes == len(first) + len(second), what="the second batch")
        assert bytes(p.data) == first + second
        assert p.lost == [] and p.eofs == 0
    net.run(main())


def test_pause_reading_from_inside_the_read_callback(net):
    async def main():
        r = net.reactor(read_size=4096)
        p = Proto(pause_after_first_read=True)
        c, s = net.pair(r, p)
        payload = os.urandom(200_000)
        c.sendall(payload)
        await until(lambda: p.reads, what="the first read")
        await asyncio.sleep(0.3)
        assert len(p.reads) == 1 and not s.is_reading()
        s.resume_reading()
        await until(lambda: p.nbytes == len(payload), what="the rest")
        assert bytes(p.data) == payload
    net.run(main())


# --- 5. EOF --------------------------------------------------------------------------------------

def test_eof_received_true_keeps_the_stream_open_for_writing(net):
    async def main():
        r = net.reactor()
        p = Proto(eof_result=True)
        c, s = net.pair(r, p)
        c.sendall(b"last words")
        c.shutdown(socket.SHUT_WR)
        await until(lambda: p.eofs == 1, what="eof_received")
        assert bytes(p.data) == b"last words"
        t0 = time.process_time()
        await asyncio.sleep(0.5)   # the socket stays at EOF: no repeated eof, no spinning
        assert time.process_time() - t0 < 0.3
        assert p.eofs == 1 and p.lost == []
        assert not s.is_closing() and s.fileno() >= 0 and len(r) == 1
        s.write(b"reply after eof")
        assert await net.in_thread(recv_exact, c, 15) == b"reply after eof"
        s.close()
        data, err = await net.in_thread(recv_to_eof, c)
        assert (data, err) == (b"", None)
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert p.lost == [None] and p.eofs == 1 and len(r) == 0
        assert p.order == ["made", "read", "eof", "lost"]
    net.run(main())


@pytest.mark.parametrize("eof_result", [None, False])
def test_eof_received_falsy_closes_and_connection_lost_none(net, eof_result):
    async def main():
        r = net.reactor()
        p = Proto(eof_result=eof_result)
        c, s = net.pair(r, p)
        c.shutdown(socket.SHUT_WR)
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert p.eofs == 1 and p.lost == [None]
        assert p.fileno_at_lost == -1 and s.fileno() == -1
        assert len(r) == 0
        data, err = await net.in_thread(recv_to_eof, c)
        assert (data, err) == (b"", None)
        assert p.order == ["made", "eof", "lost"]
    net.run(main())


# --- 6. close / abort ----------------------------------------------------------------------------

def test_close_with_empty_buffer_closes_now_and_connection_lost_is_soon(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        s.write(b"bye")
        await asyncio.sleep(0.01)
        s.close()
        assert s.is_closing()
        assert p.lost == []   # via call_soon, not from inside close()
        await until(lambda: p.lost, what="connection_lost")
        assert p.lost == [None] and p.fileno_at_lost == -1 and s.fileno() == -1
        assert len(r) == 0
        data, err = await net.in_thread(recv_to_eof, c)
        assert (data, err) == (b"bye", None)
        s.write(b"ignored")    # after close: ignored, no error
        s.close()
        await asyncio.sleep(0.05)
        assert p.lost == [None]
    net.run(main())


def test_close_with_buffered_data_flushes_everything_then_eof(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        written = fill(s)
        size = s.get_write_buffer_size()
        assert size > 0
        s.close()
        assert s.is_closing()
        s.write(b"ignored after close")
        s.writelines([b"ignored", b"too"])
        assert s.get_write_buffer_size() == size
        await asyncio.sleep(0.1)
        assert p.lost == [], "connection_lost before the buffer was sent"
        data, err = await net.in_thread(recv_to_eof, c)
        assert err is None
        assert len(data) == len(written) and data == written
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert p.lost == [None] and p.fileno_at_lost == -1 and s.fileno() == -1
        assert len(r) == 0
    net.run(main(), timeout=20)


def test_close_stops_reading_and_a_closing_stream_does_not_spin(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        fill(s)
        s.close()
        c.sendall(b"sent after close")   # readable now, but close() means no more reads
        t0 = time.process_time()
        await asyncio.sleep(0.5)
        assert time.process_time() - t0 < 0.3
        assert p.nbytes == 0 and p.eofs == 0 and p.lost == []
        await net.in_thread(recv_to_eof, c)   # may end in a reset: unread data at close
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert len(p.lost) == 1 and p.nbytes == 0 and len(r) == 0
    net.run(main(), timeout=20)


def test_abort_drops_the_buffer_and_closes_now(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        written = fill(s, extra_chunks=16)
        assert s.get_write_buffer_size() > 0
        s.abort()
        assert s.fileno() == -1 and s.is_closing()
        assert s.get_write_buffer_size() == 0
        assert p.lost == []   # via call_soon
        s.write(b"ignored after abort")
        assert s.get_write_buffer_size() == 0
        await until(lambda: p.lost, what="connection_lost")
        assert p.lost == [None] and len(r) == 0
        data, err = await net.in_thread(recv_to_eof, c)
        assert err is None or isinstance(err, ConnectionResetError), err
        assert len(data) < len(written)
        assert written.startswith(data)
        await asyncio.sleep(0.05)
        assert p.lost == [None]
    net.run(main(), timeout=20)


@pytest.mark.parametrize("buffered", [False, True], ids=["empty", "buffered"])
@pytest.mark.parametrize("calls", [("close", "abort"), ("abort", "close"), ("close", "close"),
                                   ("abort", "abort"), ("close", "abort", "close", "abort")],
                         ids="-".join)
def test_connection_lost_exactly_once_whatever_the_calls(net, calls, buffered):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        if buffered:
            fill(s)
        for name in calls:
            getattr(s, name)()
            s.write(b"ignored")
        # the peer reads, so a close() can flush what is buffered
        reader = net.in_thread(recv_to_eof, c)
        await until(lambda: p.lost, what="connection_lost")
        data, err = await reader
        assert b"ignored" not in data
        await asyncio.sleep(0.1)
        assert p.lost == [None]
        assert s.fileno() == -1 and len(r) == 0
        s.close()
        s.abort()
        await asyncio.sleep(0.02)
        assert p.lost == [None]
    net.run(main(), timeout=20)


# --- 7. write_eof --------------------------------------------------------------------------------

def test_write_eof_after_buffered_data_then_keeps_reading(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        written = fill(s)
        assert s.get_write_buffer_size() > 0
        s.write_eof()
        data, err = await net.in_thread(recv_to_eof, c)
        assert err is None and data == written
        assert s.get_write_buffer_size() == 0 and p.lost == []
        assert s.fileno() >= 0
        c.sendall(b"the peer still talks")
        await until(lambda: bytes(p.data) == b"the peer still talks", what="data after write_eof")
        c.shutdown(socket.SHUT_WR)
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert p.eofs == 1 and p.lost == [None] and len(r) == 0
    net.run(main(), timeout=20)


def test_write_eof_with_empty_buffer_is_immediate(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        s.write(b"x")
        s.write_eof()
        data, err = await net.in_thread(recv_to_eof, c)
        assert (data, err) == (b"x", None)
        c.sendall(b"y")
        await until(lambda: bytes(p.data) == b"y", what="data after write_eof")
        assert p.lost == []
        s.close()
        await until(lambda: p.lost, what="connection_lost")
        assert p.lost == [None]
    net.run(main())


# --- 8. peer reset and a gone peer ---------------------------------------------------------------

@pytest.mark.parametrize("buffered", [False, True], ids=["idle", "buffered"])
def test_peer_reset_connection_lost_once(net, buffered):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        if buffered:
            fill(s)
        net.clients.remove(c)
        rst_close(c)
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.1)
        assert len(p.lost) == 1
        exc = p.lost[0]
        assert exc is None or isinstance(exc, OSError), repr(exc)
        if buffered:
            # with unsent data the reset cannot be a clean EOF
            assert isinstance(exc, (ConnectionResetError, BrokenPipeError)), repr(exc)
        assert s.fileno() == -1 and p.fileno_at_lost == -1 and len(r) == 0
        s.write(b"ignored")
        await asyncio.sleep(0.02)
        assert len(p.lost) == 1
    net.run(main())


def test_write_to_a_gone_peer_is_connection_lost_with_oserror(net):
    async def main():
        r = net.reactor()
        p = Proto(eof_result=True)
        c, s = net.pair(r, p)
        net.clients.remove(c)
        c.close()   # FIN; later writes make its kernel answer RST
        await until(lambda: p.eofs == 1, what="eof_received")
        for _ in range(300):
            if p.lost:
                break
            s.write(b"x" * 1000)   # must not raise
            await asyncio.sleep(0.01)
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert len(p.lost) == 1 and isinstance(p.lost[0], OSError), p.lost
        assert s.fileno() == -1 and len(r) == 0
        s.write(b"ignored")
    net.run(main())


def test_write_to_a_reset_peer_while_paused_is_connection_lost_with_oserror(net):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        s.pause_reading()
        net.clients.remove(c)
        rst_close(c)
        await asyncio.sleep(0.05)
        for _ in range(300):
            if p.lost:
                break
            s.write(b"x" * 1000)   # must not raise
            await asyncio.sleep(0.01)
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert len(p.lost) == 1 and isinstance(p.lost[0], OSError), p.lost
        assert s.fileno() == -1 and len(r) == 0
    net.run(main())


# --- 9. no spinning while paused -----------------------------------------------------------------

@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_peer_closing_while_reading_is_paused_does_not_spin(net, how):
    async def main():
        r = net.reactor()
        p = Proto()
        c, s = net.pair(r, p)
        s.pause_reading()
        c.sendall(b"pending")
        net.clients.remove(c)
        if how == "fin":
            c.close()
        else:
            rst_close(c)
        await asyncio.sleep(0.05)
        t0 = time.process_time()
        await asyncio.sleep(0.5)
        used = time.process_time() - t0
        assert used < 0.3, f"{used:.3f} s of CPU in 0.5 s while paused: the loop spins"
        if how == "fin":
            assert p.nbytes == 0 and p.eofs == 0 and p.lost == []
        else:
            # a reset may be reported at once (an error), but no data while paused
            assert p.nbytes == 0 and len(p.lost) <= 1
        s.resume_reading()
        await until(lambda: p.lost, what="connection_lost")
        await asyncio.sleep(0.05)
        assert len(p.lost) == 1 and s.fileno() == -1 and len(r) == 0
        if how == "fin":
            assert bytes(p.data) == b"pending" and p.eofs == 1 and p.lost == [None]
        else:
            assert p.lost[0] is None or isinstance(p.lost[0], OSError), p.lost
    net.run(main())


# --- 10. extra info, protocol --------------------------------------------------------------------

def test_get_extra_info(net):
    async def main():
        r = net.reactor()
        c, s = net.pair(r, Proto())
        assert s.get_extra_info("peername") == c.getsockname()
        assert s.get_extra_info("sockname") == c.getpeername()
        assert s.get_extra_info("no such thing") is None
        assert s.get_extra_info("no such thing", 42) == 42
        assert s.get_extra_info("socket", "dflt") == "dflt"
    net.run(main())


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6")
def test_get_extra_info_ipv6_and_unix_sockets_as_the_socket_module_gives_them(net):
    async def main():
        r = net.reactor()
        try:
            listener = socket.socket(socket.AF_INET6)
            listener.bind(("::1", 0))
        except OSError:
            pytest.skip("no ::1 here")
        with listener:
            listener.listen(1)
            c = socket.create_connection(listener.getsockname()[:2], timeout=10)
            net.clients.append(c)
            conn, _ = listener.accept()
            s = r.attach(conn.detach(), Proto())
            assert s.get_extra_info("peername") == c.getsockname()    # 4-tuples
            assert s.get_extra_info("sockname") == c.getpeername()
        a, b = socket.socketpair()                                    # AF_UNIX: the fallback
        net.clients.append(a)
        s = r.attach(b.detach(), Proto())
        assert s.get_extra_info("peername") == a.getsockname()
    net.run(main())


@pytest.mark.parametrize("new_cls", [Proto, BProto], ids=["plain", "buffered"])
def test_set_protocol_sends_later_callbacks_to_the_new_protocol(net, new_cls):
    async def main():
        r = net.reactor()
        p1 = Proto()
        c, s = net.pair(r, p1)
        c.sendall(b"one")
        await until(lambda: bytes(p1.data) == b"one", what="data to p1")
        p2 = new_cls()
        p2.stream = s
        s.set_protocol(p2)
        assert s.get_protocol() is p2
        c.sendall(b"two")
        await until(lambda: bytes(p2.data) == b"two", what="data to p2")
        if new_cls is BProto:
            assert p2.data_received_calls == 0      # through get_buffer
        c.shutdown(socket.SHUT_WR)
        await until(lambda: p2.lost, what="connection_lost")
        assert p2.eofs == 1 and p2.lost == [None]
        assert bytes(p1.data) == b"one" and p1.lost == [] and p1.eofs == 0
    net.run(main())


# --- 11. Reactor.close -------------------------------------------------------------------------

def test_reactor_close_aborts_every_stream_and_is_idempotent(net):
    async def main():
        fds_before = open_fds()
        r = Reactor(net.loop)
        protos = [Proto() for _ in range(5)]
        pairs = [net.pair(r, p) for p in protos]
        fill(pairs[0][1])        # one with buffered data
        pairs[1][1].pause_reading()
        assert len(r) == 5
        r.close()
        await until(lambda: all(p.lost for p in protos), what="connection_lost for every stream")
        await asyncio.sleep(0.05)
        assert [p.lost for p in protos] == [[None]] * 5
        assert len(r) == 0
        assert all(s.fileno() == -1 for _, s in pairs)
        r.close()
        for c, s in pairs:
            s.write(b"ignored")
            data, err = await net.in_thread(recv_to_eof, c)
            assert err is None or isinstance(err, ConnectionResetError)
            net.clients.remove(c)
            c.close()
        await asyncio.sleep(0.05)
        assert not open_fds() - fds_before, "an fd leaked (the epoll fd or a stream's)"
        # the loop still works
        await asyncio.sleep(0.01)
    net.run(main(), timeout=20)


def test_reactor_close_with_no_streams(net):
    async def main():
        fds_before = open_fds()
        r = Reactor(net.loop, read_size=1024, max_events=16)
        assert len(r) == 0
        r.close()
        r.close()
        await asyncio.sleep(0.01)
        assert not open_fds() - fds_before
    net.run(main())


# --- 12. many streams ----------------------------------------------------------------------------

def test_two_thousand_streams_echo_then_close_without_leaking_fds(net):
    n = 2000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * n + 200
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    async def main():
        fds_before = open_fds()
        r = Reactor(net.loop)
        protos = [Proto(echo=True) for _ in range(n)]
        pairs = [net.pair(r, p) for p in protos]
        assert len(r) == n
        assert sys.getsizeof(pairs[0][1]) <= 150, sys.getsizeof(pairs[0][1])
        msgs = [b"message %d." % i for i in range(n)]
        for (c, _), m in zip(pairs, msgs):
            c.sendall(m)
        await until(lambda: all(bytes(p.data) == m for p, m in zip(protos, msgs)), timeout=10,
                    what="every stream to read its message")

        def read_all():
            return [recv_exact(c, len(m)) for (c, _), m in zip(pairs, msgs)]
        assert await net.in_thread(read_all) == msgs
        # half closed by the stream, half by the peer (EOF)
        for i, (c, s) in enumerate(pairs):
            if i % 2 == 0:
                s.close()
            else:
                c.shutdown(socket.SHUT_WR)
        await until(lambda: all(p.lost for p in protos), timeout=10,
                    what="connection_lost for every stream")
        await asyncio.sleep(0.05)
        assert all(p.lost == [None] for p in protos)
        assert len(r) == 0
        for c, _ in pairs:
            net.clients.remove(c)
            c.close()
        r.close()
        await asyncio.sleep(0.05)
        assert not open_fds() - fds_before, "fds leaked"
    net.run(main(), timeout=30)
