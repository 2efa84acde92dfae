"""Listening sockets accepted by the broker itself, so both event loops behave alike at the
open-file limit.

At the limit, accept() fails with EMFILE (or ENFILE, system-wide). The loops differ there:
asyncio's selector loop stops accepting for 1 s and reports an error with a traceback through
the exception handler every time, while the pending clients wait in the backlog; uvloop (libuv)
accepts and closes them, logging nothing. Here, on both: the pending connections are accepted
and closed at once (a reserved descriptor is freed for that moment, the "idle fd" trick of
libuv and muduo), so a client is told right away instead of waiting for a CONNACK that cannot
come; each is counted (`Metrics.connections_refused_fd_limit`), and one log line per second at
most says how many. The listener keeps listening: once descriptors are free, the next client
is served. Without a reserve (it could not be re-opened), accepting pauses for 1 s instead.

    server = await start_server(loop, factory, host, port, metrics)
    server.sockets[0].getsockname()      # as asyncio.Server
    server.close()

`open_file_limit()` / `raise_open_file_limit()` read and raise RLIMIT_NOFILE (the `cymqtt`
command raises the soft limit to the hard one at start).
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.metrics import Metrics
    from cymqtt.net._stream import Reactor

try:
    import resource
except ImportError:  # pragma: no cover - not Unix
    resource = None  # type: ignore[assignment]

__all__ = ["AcceptServer", "open_file_limit", "raise_open_file_limit", "start_server"]

log = logging.getLogger("cymqtt.net")

ACCEPT_BATCH = 128          # accept() calls per readiness event (asyncio's backlog loop: 100)
PAUSE = 1.0                 # seconds without accepting when no reserve descriptor is left
REPORT_INTERVAL = 1.0       # at most one "refused" log line per this many seconds
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


# Seconds a TLS client may take over its handshake before the socket is closed.
TLS_HANDSHAKE_TIMEOUT = 10.0


def open_file_limit() -> tuple[int, int]:
    """(soft, hard) RLIMIT_NOFILE; -1 for unlimited or unknown."""
    if resource is None:  # pragma: no cover
        return -1, -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    inf = resource.RLIM_INFINITY
    return (-1 if soft == inf else soft), (-1 if hard == inf else hard)


def raise_open_file_limit() -> tuple[int, int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns (soft before, soft now, hard)."""
    before, hard = open_file_limit()
    if resource is None or before == hard:
        return before, before, hard
    target = hard
    if hard == -1:      # unlimited hard limit: Linux caps at fs.nr_open
        try:
            with open("/proc/sys/fs/nr_open") as fh:
                target = int(fh.read())
        except (OSError, ValueError):
            target = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d to %d: %s", before, target, exc)
    return before, open_file_limit()[0], hard


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None


class AcceptServer:
    """The listening sockets of one listener, accepted with `loop.add_reader`. Each accepted
    socket becomes a Stream of `reactor` (net/_stream: plain TCP on Linux) or else gets a
    transport from `loop.connect_accepted_socket` (TLS; asyncio and uvloop alike)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol],
                 sockets: list[socket.socket], metrics: Metrics, ssl=None,
                 reactor: Reactor | None = None) -> None:
        self._loop = loop
        self._factory = factory
        self.sockets = sockets
        self._metrics = metrics
        self._ssl = ssl
        self._reactor = reactor if ssl is None else None
        self._reserve = _open_reserve()
        self._refused = 0           # refused since the last report
        self._why = ""              # the last accept() error, for the report
        self._report: asyncio.TimerHandle | None = None
        self._paused: dict[int, asyncio.TimerHandle] = {}     # fd -> its resume timer
        self._closed = False
        self._attaching: set[asyncio.Task] = set()
        for sock in sockets:
            loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _on_readable(self, sock: socket.socket) -> None:
        loop = self._loop
        reactor = self._reactor
        for _ in range(ACCEPT_BATCH):
            try:
                if reactor is not None:
                    # A descriptor, no socket object: the reactor owns it from here on.
                    fd, _addr = sock._accept()     # type: ignore[attr-defined]
                    try:
                        reactor.attach(fd, self._factory())
                    except OSError as exc:
                        log.debug("accepted socket lost before it was set up: %s", exc)
                    continue
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno in OUT_OF_RESOURCES:
                    self._out_of_resources(sock, exc)
                else:
                    log.warning("accept() on %s failed: %s", sock.getsockname(), exc)
                return
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:     # the peer is gone already
                conn.close()
                continue
            task = loop.create_task(self._attach(conn))
            self._attaching.add(task)       # the loop keeps only a weak reference to it
            task.add_done_callback(self._attaching.discard)

    async def _attach(self, conn: socket.socket) -> None:
        try:
            if self._ssl is None:
                await self._loop.connect_accepted_socket(self._factory, conn)
            else:
                await self._loop.connect_accepted_socket(
                    self._factory, conn, ssl=self._ssl,
                    ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        except (ConnectionError, OSError) as exc:
            log.debug("accepted socket lost before it was set up: %s", exc)
            conn.close()

    def _out_of_resources(self, sock: socket.socket, exc: OSError) -> None:
        refused = 0
        if self._reserve is not None:
            # Free one descriptor, accept and close what is pending, take it back.
            os.close(self._reserve)
            self._reserve = None
            while True:
                try:
                    conn, _addr = sock.accept()
                except OSError:
                    break
                conn.close()
                refused += 1
            self._reserve = _open_reserve()
        if self._reserve is None:
            # No descriptor to spare: stop accepting for a while, as asyncio does.
            refused = max(refused, 1)
            fd = sock.fileno()
            self._loop.remove_reader(fd)
            self._paused[fd] = self._loop.call_later(PAUSE, self._resume, sock)
        self._metrics.connections_refused_fd_limit += refused
        self._refused += refused
        if self._report is None:
            self._report_now(exc)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.pop(sock.fileno(), None)
        if self._closed:
            return
        if self._reserve is None:
            self._reserve = _open_reserve()
        self._loop.add_reader(sock.fileno(), self._on_readable, sock)

    def _report_now(self, exc: OSError | None = None) -> None:
        n = self._refused
        if not n:
            self._report = None
            return
        self._refused = 0
        soft, _hard = open_file_limit()
        if exc is not None:
            self._why = f"{os.strerror(exc.errno)} ({errno.errorcode.get(exc.errno, '?')})"
        log.warning("cannot accept connections: %s, open-file limit %s: refused %d "
                    "connection%s%s; raise the limit (ulimit -n) or lower the client count",
                    self._why, soft if soft >= 0 else "unlimited", n, "" if n == 1 else "s",
                    "" if exc is not None else f" in the last {REPORT_INTERVAL:.0f} s")
        self._report = self._loop.call_later(REPORT_INTERVAL, self._report_now)

    def close(self) -> None:
        """Stop listening (accepted connections stay open)."""
        if self._closed:
            return
        self._closed = True
        for sock in self.sockets:
            try:
                self._loop.remove_reader(sock.fileno())
            except (ValueError, OSError):
                pass
            sock.close()
        for h in self._paused.values():
            h.cancel()
        if self._report is not None:
            self._report.cancel()
        if self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None


def _bind(infos: list, backlog: int, reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets for every address of `infos` (as loop.create_server); with
    `reuse_port`, SO_REUSEPORT: other processes bind the same port and the kernel spreads
    new connections over them all."""
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, type_, proto, _canon, addr in infos:
            if (family, addr) in seen:
                continue
            seen.add((family, addr))
            sock = socket.socket(family, type_, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(addr)
            except OSError as exc:
                raise OSError(exc.errno, f"error while attempting to bind on address "
                                         f"{addr!r}: {exc.strerror}") from None
            sock.listen(backlog)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


async def start_server(loop: asyncio.AbstractEventLoop,
                       factory: Callable[[], asyncio.BaseProtocol], host: str | None, port: int,
                       metrics: Metrics, *, backlog: int = 4096, ssl=None,
                       reuse_port: bool = False, reactor: Reactor | None = None) -> AcceptServer:
    """Bind `host`:`port` (shared with other processes when `reuse_port`: SO_REUSEPORT) and
    accept on it, into `reactor` when given (not for TLS). Raises OSError (port in use, say)
    or socket.gaierror (a host that does not resolve)."""
    infos = await loop.getaddrinfo(host or None, port, family=socket.AF_UNSPEC,
                                   type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return AcceptServer(loop, factory, _bind(infos, backlog, reuse_port), metrics, ssl, reactor)
