# cython: freethreading_compatible = False
"""Stream and Reactor: the transport of an accepted plain-TCP socket, in C, on Linux's epoll.

Why: an idle connection's transport is most of what it costs. A uvloop TCPTransport with its
libuv handle takes about 1.3 KB of the process's memory per connection (asyncio's selector
transport more), which is more than everything else an idle MQTT client holds. A Stream is
one small object (about 100 bytes): the socket's descriptor, its protocol, the bytes it could
not send yet and a few flags. The kernel keeps the rest.

How: one epoll set per loop (`Reactor`) holds every stream's socket, and the event loop
watches the epoll descriptor itself with `loop.add_reader` (asyncio's selector loop and uvloop
alike: an epoll descriptor is readable while any socket in it is ready). When it is, one
`epoll_wait(..., 0)` returns up to `max_events` ready sockets, and each gets one read of at
most `read_size` bytes: level-triggered, so what a flooding client sent beyond that waits in
the kernel for the next loop iteration, and every other connection gets its turn in between
(the fair share per tick DESIGN asks for; the kernel's ready list is round-robin).

A Stream is what asyncio calls a transport, for the methods the broker uses: write (sent at
once when the socket takes it, the rest buffered and sent when it is writable), pause_writing /
resume_writing on the protocol at the high and low water marks, pause_reading /
resume_reading, write_eof, close (after the buffer is sent), abort, get_extra_info
("peername", "sockname"), and connection_lost exactly once, through loop.call_soon, after the
descriptor is closed. A protocol is a BufferedProtocol (get_buffer/buffer_updated: the broker
reads every socket into one shared buffer) or a plain Protocol (data_received).

The interest set registered for a socket is "readable unless reading is paused or over" plus
"writable while bytes wait"; a socket with neither is taken out of the epoll set altogether,
because epoll reports a hung-up socket even with no events asked for, and level-triggered that
would wake the loop on every iteration.

Elsewhere than Linux AVAILABLE is False and the broker uses the loop's own transports.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE, PyBUF_WRITABLE
from cpython.bytearray cimport PyByteArray_FromStringAndSize, PyByteArray_AS_STRING
from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.errno cimport errno, EAGAIN, EINTR

import errno as _errno
import os as _os
import socket as _socket

cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/epoll.h>
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <netinet/tcp.h>
    #include <arpa/inet.h>
    #include <sys/ioctl.h>
    #include <unistd.h>
    #include <errno.h>
    #define CYM_HAVE_EPOLL 1
    #define CYM_IN EPOLLIN
    #define CYM_OUT EPOLLOUT
    #define CYM_ERR EPOLLERR
    #define CYM_HUP EPOLLHUP
    typedef struct epoll_event cym_event;
    static int cym_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }
    static int cym_epoll_set(int ep, int had, int fd, unsigned int want) {
        /* had/want: the interest before and after; 0 = not in the set */
        struct epoll_event ev;
        int op = want == 0 ? EPOLL_CTL_DEL : (had == 0 ? EPOLL_CTL_ADD : EPOLL_CTL_MOD);
        ev.events = want;
        ev.data.u64 = 0;
        ev.data.fd = fd;
        return epoll_ctl(ep, op, fd, &ev);
    }
    static int cym_epoll_wait(int ep, cym_event *evs, int n) { return epoll_wait(ep, evs, n, 0); }
    static int cym_event_fd(cym_event *evs, int i) { return evs[i].data.fd; }
    static unsigned int cym_event_mask(cym_event *evs, int i) { return evs[i].events; }
    static long long cym_send(int fd, const char *p, size_t n) {
        return (long long)send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    static long long cym_recv(int fd, char *p, size_t n) {
        return (long long)recv(fd, p, n, MSG_DONTWAIT);
    }
    static int cym_prepare(int fd) {
        /* ioctl(FIONBIO), not fcntl: glibc 2.28 made fcntl the symbol fcntl64, which a
           manylinux2014 (glibc 2.17) wheel may not use. */
        int one = 1;
        if (ioctl(fd, FIONBIO, &one) < 0) return -1;
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);   /* not TCP: ignored */
        return 0;
    }
    static int cym_shutdown_wr(int fd) { return shutdown(fd, SHUT_WR); }
    static int cym_close(int fd) { return close(fd); }
    /* The peer's (peer != 0) or our own address as the socket module gives it: 4 for IPv4
       (host, port), 6 for IPv6 (host, port, flowinfo, scope_id), 0 for another family,
       -1 on an error. */
    static int cym_name(int fd, int peer, char *host, size_t hostlen, int *port,
                        unsigned int *flowinfo, unsigned int *scope_id) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof ss;
        int r = peer ? getpeername(fd, (struct sockaddr *)&ss, &len)
                     : getsockname(fd, (struct sockaddr *)&ss, &len);
        if (r < 0) return -1;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            if (!inet_ntop(AF_INET, &a->sin_addr, host, hostlen)) return -1;
            *port = ntohs(a->sin_port);
            return 4;
        }
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            if (!inet_ntop(AF_INET6, &a->sin6_addr, host, hostlen)) return -1;
            *port = ntohs(a->sin6_port);
            *flowinfo = ntohl(a->sin6_flowinfo);
            *scope_id = a->sin6_scope_id;
            return 6;
        }
        return 0;
    }
    #else
    #include <errno.h>
    #define CYM_HAVE_EPOLL 0
    #define CYM_IN 1
    #define CYM_OUT 4
    #define CYM_ERR 8
    #define CYM_HUP 16
    typedef struct { unsigned int events; int fd; } cym_event;
    static int cym_nosys(void) { errno = ENOSYS; return -1; }
    static int cym_epoll_create(void) { return cym_nosys(); }
    static int cym_epoll_set(int ep, int had, int fd, unsigned int want) { return cym_nosys(); }
    static int cym_epoll_wait(int ep, cym_event *evs, int n) { return cym_nosys(); }
    static int cym_event_fd(cym_event *evs, int i) { return evs[i].fd; }
    static unsigned int cym_event_mask(cym_event *evs, int i) { return evs[i].events; }
    static long long cym_send(int fd, const char *p, size_t n) { return cym_nosys(); }
    static long long cym_recv(int fd, char *p, size_t n) { return cym_nosys(); }
    static int cym_prepare(int fd) { return cym_nosys(); }
    static int cym_shutdown_wr(int fd) { return cym_nosys(); }
    static int cym_close(int fd) { return cym_nosys(); }
    static int cym_name(int fd, int peer, char *host, size_t hostlen, int *port,
                        unsigned int *flowinfo, unsigned int *scope_id) { return cym_nosys(); }
    #endif
    """
    int CYM_HAVE_EPOLL
    int EWOULDBLOCK
    unsigned int CYM_IN, CYM_OUT, CYM_ERR, CYM_HUP
    ctypedef struct cym_event:
        pass
    int cym_epoll_create()
    int cym_epoll_set(int ep, int had, int fd, unsigned int want)
    int cym_epoll_wait(int ep, cym_event *evs, int n)
    int cym_event_fd(cym_event *evs, int i)
    unsigned int cym_event_mask(cym_event *evs, int i)
    long long cym_send(int fd, const char *p, size_t n)
    long long cym_recv(int fd, char *p, size_t n)
    int cym_prepare(int fd)
    int cym_shutdown_wr(int fd)
    int cym_close(int fd)
    int cym_name(int fd, int peer, char *host, size_t hostlen, int *port,
                 unsigned int *flowinfo, unsigned int *scope_id)

AVAILABLE = bool(CYM_HAVE_EPOLL)

cdef enum:
    HIGH_WATER = 64 * 1024       # asyncio's defaults
    LOW_WATER = 16 * 1024
    COMPACT_AT = 64 * 1024       # sent bytes kept at the head of the buffer before it is cut

cdef enum:                       # Stream.flags
    F_PAUSED = 1                 # pause_reading()
    F_EOF = 2                    # the peer's end was read: no more reading
    F_CLOSING = 4                # close(): no more reading or writing; closed once sent
    F_LOST = 8                   # descriptor closed; connection_lost scheduled
    F_EOF_PENDING = 16           # write_eof() once the buffer is sent
    F_EOF_SENT = 32              # shutdown(SHUT_WR) done
    F_WPAUSED = 64               # protocol.pause_writing() called, resume_writing() not yet
    F_BUFFERED = 128             # the protocol has get_buffer(): a BufferedProtocol

__all__ = ["AVAILABLE", "Reactor", "Stream"]


cdef inline bint _again(int err) noexcept:
    return err == EAGAIN or err == EWOULDBLOCK or err == EINTR


cdef object _os_error(int err):
    return OSError(err, _os.strerror(err))


cdef class Stream:
    """The transport of one socket in a Reactor (see the module's doc)."""

    cdef Reactor reactor
    cdef object protocol
    cdef bytearray wbuf          # bytes not sent yet, from wpos on; None when all are sent
    cdef Py_ssize_t wpos
    cdef int fd
    cdef unsigned int mask       # interest registered in the epoll set (0: not in it)
    cdef unsigned int flags
    cdef int high, low

    def __cinit__(self):
        self.fd = -1

    def __dealloc__(self):
        # Only when the loop went away with the stream still open (as a socket object's
        # finaliser closes its descriptor).
        if self.fd >= 0:
            cym_close(self.fd)
            self.fd = -1

    # -- asyncio.BaseTransport -------------------------------------------------------------

    def get_extra_info(self, name, default=None):
        """"peername" and "sockname" as the socket module gives them; else `default`."""
        cdef char host[64]
        cdef int port = 0
        cdef unsigned int flowinfo = 0, scope_id = 0
        if self.fd < 0 or name not in ("peername", "sockname"):
            return default
        r = cym_name(self.fd, name == "peername", host, sizeof(host), &port, &flowinfo,
                     &scope_id)
        if r == 4:
            return (host.decode("ascii"), port)
        if r == 6:
            return (host.decode("ascii"), port, flowinfo, scope_id)
        if r < 0:
            return default
        sock = _socket.socket(fileno=self.fd)      # another family: as the socket module says
        try:
            return sock.getpeername() if name == "peername" else sock.getsockname()
        except OSError:
            return default
        finally:
            sock.detach()

    def get_protocol(self):
        return self.protocol

    def set_protocol(self, protocol):
        self.protocol = protocol
        if hasattr(protocol, "get_buffer"):
            self.flags |= F_BUFFERED
        else:
            self.flags &= ~F_BUFFERED

    def is_closing(self):
        return bool(self.flags & (F_CLOSING | F_LOST))

    def fileno(self):
        return self.fd

    def close(self):
        """No more reading; the descriptor is closed once what is buffered has been sent."""
        if self.flags & (F_CLOSING | F_LOST):
            return
        self.flags |= F_CLOSING
        if self.wbuf is None:
            self._finish(None)
        else:
            self._interest()

    def abort(self):
        """Close now; what is buffered is dropped."""
        self._finish(None)

    # -- reading ---------------------------------------------------------------------------

    def is_reading(self):
        return not self.flags & (F_PAUSED | F_EOF | F_CLOSING | F_LOST)

    def pause_reading(self):
        if self.flags & (F_CLOSING | F_LOST):
            return
        self.flags |= F_PAUSED
        self._interest()

    def resume_reading(self):
        if self.flags & (F_CLOSING | F_LOST):
            return
        self.flags &= ~F_PAUSED
        self._interest()

    # -- writing ---------------------------------------------------------------------------

    def write(self, data):
        """Send `data` (any bytes-like object) as far as the socket takes it now; buffer the
        rest. Ignored once closing; a RuntimeError after write_eof(), as asyncio's."""
        cdef Py_buffer view
        cdef long long n
        cdef int err
        if self.flags & (F_CLOSING | F_LOST):
            return
        if self.flags & (F_EOF_PENDING | F_EOF_SENT):
            raise RuntimeError("Cannot call write() after write_eof()")
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            if view.len == 0:
                return
            if self.wbuf is not None:
                self.wbuf += data
            else:
                n = cym_send(self.fd, <char *>view.buf, <size_t>view.len)
                if n < 0:
                    err = errno
                    if not _again(err):
                        self._finish(_os_error(err))
                        return
                    n = 0
                if n == view.len:
                    return
                self.wbuf = PyByteArray_FromStringAndSize(<char *>view.buf + n, view.len - n)
                self.wpos = 0
                self._interest()
        finally:
            PyBuffer_Release(&view)
        if not self.flags & F_WPAUSED and self.buffered() > self.high:
            self.flags |= F_WPAUSED
            self._call("pause_writing")

    def writelines(self, list_of_data):
        for data in list_of_data:
            self.write(data)

    def can_write_eof(self):
        return True

    def write_eof(self):
        """Half-close (shutdown SHUT_WR) once the buffer is sent; reading goes on."""
        if self.flags & (F_CLOSING | F_LOST | F_EOF_PENDING | F_EOF_SENT):
            return
        if self.wbuf is not None:
            self.flags |= F_EOF_PENDING
            return
        self.flags |= F_EOF_SENT
        if cym_shutdown_wr(self.fd) < 0:
            raise _os_error(errno)

    def get_write_buffer_size(self):
        return self.buffered()

    def get_write_buffer_limits(self):
        return (self.low, self.high)

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self.high = high
        self.low = low
        n = self.buffered()
        if not self.flags & F_WPAUSED and n > self.high:
            self.flags |= F_WPAUSED
            self._call("pause_writing")
        elif self.flags & F_WPAUSED and n <= self.low:
            self.flags &= ~F_WPAUSED
            self._call("resume_writing")

    # -- inside ----------------------------------------------------------------------------

    cdef inline Py_ssize_t buffered(self):
        return 0 if self.wbuf is None else PyByteArray_GET_SIZE(self.wbuf) - self.wpos

    cdef int _interest(self) except -1:
        # Register what the socket should wake us for (see the module's doc).
        cdef unsigned int want = 0
        cdef unsigned int f = self.flags
        if f & F_LOST:
            return 0
        if not f & (F_PAUSED | F_EOF | F_CLOSING):
            want = CYM_IN
        if self.wbuf is not None:
            want |= CYM_OUT
        if want == self.mask:
            return 0
        if cym_epoll_set(self.reactor.epfd, self.mask, self.fd, want) < 0 and want != 0:
            self.mask = 0
            self._finish(_os_error(errno))
            return 0
        self.mask = want
        return 0

    cdef _finish(self, exc):
        # The end, whichever way it came: out of the set, descriptor closed, buffer dropped,
        # connection_lost(exc) on the next loop iteration.
        if self.flags & F_LOST:
            return
        self.flags |= F_LOST | F_CLOSING
        if self.mask:
            cym_epoll_set(self.reactor.epfd, self.mask, self.fd, 0)
            self.mask = 0
        self.reactor.streams.pop(self.fd, None)
        cym_close(self.fd)
        self.fd = -1
        self.wbuf = None
        self.reactor.loop.call_soon(self._lost, exc)

    def _lost(self, exc):
        protocol = self.protocol
        self.protocol = None
        if protocol is not None:
            try:
                protocol.connection_lost(exc)
            finally:
                self.reactor = None

    cdef _call(self, str name):
        # A flow-control callback of the protocol; what it raises ends the stream, as in
        # asyncio's transports.
        if self.flags & F_LOST:
            return
        try:
            getattr(self.protocol, name)()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, f"protocol.{name}() call failed.")

    cdef _fatal(self, exc, str what):
        self.reactor.loop.call_exception_handler({
            "message": f"Fatal error: {what}", "exception": exc,
            "transport": self, "protocol": self.protocol})
        self._finish(exc)

    cdef int _on_events(self, unsigned int events) except -1:
        if self.wbuf is not None and events & (CYM_OUT | CYM_ERR | CYM_HUP):
            self._on_writable()
        if not self.flags & (F_PAUSED | F_EOF | F_CLOSING | F_LOST) and \
                events & (CYM_IN | CYM_ERR | CYM_HUP):
            self._on_readable()
        return 0

    cdef int _on_writable(self) except -1:
        cdef long long n
        cdef int err
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self.wbuf)
        n = cym_send(self.fd, PyByteArray_AS_STRING(self.wbuf) + self.wpos,
                     <size_t>(size - self.wpos))
        if n < 0:
            err = errno
            if not _again(err):
                self._finish(_os_error(err))
            return 0
        self.wpos += n
        if self.wpos == size:
            self.wbuf = None
            self.wpos = 0
            if self.flags & F_CLOSING:
                if self.flags & F_WPAUSED:     # paired with pause_writing, as asyncio does
                    self.flags &= ~F_WPAUSED
                    self._call("resume_writing")
                self._finish(None)
                return 0
            self._interest()
            if self.flags & F_EOF_PENDING:
                self.flags = (self.flags & ~F_EOF_PENDING) | F_EOF_SENT
                if cym_shutdown_wr(self.fd) < 0:
                    self._finish(_os_error(errno))
                    return 0
        elif self.wpos >= COMPACT_AT and 2 * self.wpos >= size:
            del self.wbuf[:self.wpos]
            self.wpos = 0
        if self.flags & F_WPAUSED and self.buffered() <= self.low:
            self.flags &= ~F_WPAUSED
            self._call("resume_writing")
        return 0

    cdef int _on_readable(self) except -1:
        cdef Py_buffer view
        cdef long long n
        cdef int err
        cdef Py_ssize_t size
        protocol = self.protocol
        try:
            if self.flags & F_BUFFERED:
                buf = protocol.get_buffer(-1)
                PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE)
                size = view.len if view.len < self.reactor.read_size else self.reactor.read_size
                if size <= 0:
                    PyBuffer_Release(&view)
                    raise RuntimeError("get_buffer() returned an empty buffer")
                n = cym_recv(self.fd, <char *>view.buf, <size_t>size)
                err = errno
                PyBuffer_Release(&view)
                if n > 0:
                    protocol.buffer_updated(n)
                    return 0
            else:
                n = cym_recv(self.fd, self.reactor.scratch, <size_t>self.reactor.read_size)
                err = errno
                if n > 0:
                    protocol.data_received(PyBytes_FromStringAndSize(self.reactor.scratch, n))
                    return 0
            if n < 0:
                if not _again(err):
                    self._finish(_os_error(err))
                return 0
            # n == 0: the peer's end.
            self.flags |= F_EOF
            self._interest()
            if not protocol.eof_received():
                self.close()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._fatal(exc, "error in a protocol's read callback.")
        return 0

    def __repr__(self):
        return f"<Stream fd={self.fd} flags={self.flags:#x} buffered={self.buffered()}>"


cdef class Reactor:
    """The epoll set of one event loop's streams (see the module's doc).

        reactor = Reactor(loop)
        stream = reactor.attach(fd, protocol)     # owns fd; protocol.connection_made(stream)
        reactor.close()                           # aborts what is still open
    """

    cdef readonly object loop
    cdef int epfd
    cdef dict streams            # fd -> Stream, every open one
    cdef cym_event *events
    cdef int max_events
    cdef Py_ssize_t read_size
    cdef char *scratch           # where a plain Protocol's reads land
    cdef bint watching

    def __cinit__(self):
        self.epfd = -1

    def __init__(self, loop, Py_ssize_t read_size=65536, int max_events=1024):
        if not CYM_HAVE_EPOLL:
            raise OSError(_errno.ENOSYS, "cymqtt's own transports need Linux (epoll)")
        if read_size <= 0 or max_events <= 0:
            raise ValueError("read_size and max_events must be positive")
        self.loop = loop
        self.streams = {}
        self.read_size = read_size
        self.max_events = max_events
        self.events = <cym_event *>PyMem_Malloc(sizeof(cym_event) * max_events)
        self.scratch = <char *>PyMem_Malloc(read_size)
        if self.events == NULL or self.scratch == NULL:
            raise MemoryError()
        self.epfd = cym_epoll_create()
        if self.epfd < 0:
            raise _os_error(errno)
        loop.add_reader(self.epfd, self._on_ready)
        self.watching = True

    def __dealloc__(self):
        if self.epfd >= 0:
            cym_close(self.epfd)
        PyMem_Free(self.events)
        PyMem_Free(self.scratch)

    def __len__(self):
        return len(self.streams)

    def attach(self, int fd, protocol):
        """A Stream for `fd`, a connected socket this reactor now owns (made non-blocking,
        TCP_NODELAY): protocol.connection_made(stream) now, then reading. On an error the
        descriptor is closed and OSError raised."""
        cdef Stream s
        if not self.watching:
            cym_close(fd)
            raise RuntimeError("the reactor is closed")
        if cym_prepare(fd) < 0:
            err = errno
            cym_close(fd)
            raise _os_error(err)
        s = Stream.__new__(Stream)
        s.reactor = self
        s.fd = fd
        s.high = HIGH_WATER
        s.low = LOW_WATER
        s.set_protocol(protocol)
        self.streams[fd] = s
        try:
            protocol.connection_made(s)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            s._fatal(exc, "protocol.connection_made() call failed.")
            return s
        s._interest()
        return s

    def _on_ready(self):
        cdef int i, n, fd
        cdef Stream s
        cdef dict streams = self.streams
        n = cym_epoll_wait(self.epfd, self.events, self.max_events)
        for i in range(n):
            fd = cym_event_fd(self.events, i)
            obj = streams.get(fd)
            if obj is not None:
                s = <Stream>obj
                s._on_events(cym_event_mask(self.events, i))

    def close(self):
        """Stop watching; every stream still open is aborted (connection_lost soon)."""
        if not self.watching:
            return
        self.watching = False
        for s in list(self.streams.values()):
            (<Stream>s)._finish(None)
        try:
            self.loop.remove_reader(self.epfd)
        except (ValueError, OSError, RuntimeError):   # the loop is closed already
            pass
        cym_close(self.epfd)
        self.epfd = -1
