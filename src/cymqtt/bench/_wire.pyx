# cython: language_level=3
"""cymqtt-bench's per-message loops in C (see _wire.pxd for the four classes).

Why compiled: flooding 100 topics at QoS 0, the Python pump (struct.pack_into per frame) and
the Python receive path (a Publish object, a histogram update and a few attribute reads per
delivery, about 1 us each) shared one core; reading a few hundred thousand deliveries a second
left little for sending. Here a stamped frame costs one memcpy and four stores, and a delivery
a header walk and a histogram increment.

Payload stamp, the first 16 payload bytes of every frame the bench sends (client.py HEADER):

    >Q  send time, time.monotonic_ns     >I  publisher index     >I  sequence number
"""
cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef enum:
    PUBLISH = 3
    PUBREL = 6
    MAX_IDS = 65535


# -- big-endian helpers --------------------------------------------------------------------

cdef inline void _put_u16(char *p, unsigned int v) noexcept nogil:
    p[0] = <char>((v >> 8) & 0xFF)
    p[1] = <char>(v & 0xFF)


cdef inline void _put_u32(char *p, uint32_t v) noexcept nogil:
    p[0] = <char>((v >> 24) & 0xFF)
    p[1] = <char>((v >> 16) & 0xFF)
    p[2] = <char>((v >> 8) & 0xFF)
    p[3] = <char>(v & 0xFF)


cdef inline void _put_u64(char *p, uint64_t v) noexcept nogil:
    _put_u32(p, <uint32_t>(v >> 32))
    _put_u32(p + 4, <uint32_t>(v & 0xFFFFFFFFu))


cdef inline uint64_t _get_u64(const unsigned char *p) noexcept nogil:
    cdef uint64_t v = 0
    cdef int i
    for i in range(8):
        v = (v << 8) | p[i]
    return v


cdef inline int _bit_length(uint64_t v) noexcept nogil:
    cdef int n = 0
    while v >= 256:
        v >>= 8
        n += 8
    while v:
        v >>= 1
        n += 1
    return n


cdef inline int _bucket(int64_t us) noexcept nogil:
    # stats.bucket: exact below 32 us, then 16 buckets per power of two, clamped at 2**40.
    cdef int b
    if us < HIST_SMALL:
        return <int>us if us > 0 else 0
    b = _bit_length(<uint64_t>us)
    if b > HIST_MAX_BITS:
        return HIST_SIZE - 1
    return (b << 4) | <int>((us >> (b - 5)) & 15)


cdef inline int _append(bytearray ba, const char *p, Py_ssize_t n) except -1:
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(ba)
    PyByteArray_Resize(ba, old + n)
    memcpy(PyByteArray_AS_STRING(ba) + old, p, n)
    return 0


def bucket(int64_t us) -> int:
    """The histogram bucket of `us` microseconds: the same as stats.bucket (tested)."""
    return _bucket(us)


# -- LatencyHistogram ----------------------------------------------------------------------

@cython.final
cdef class LatencyHistogram:
    """Latency samples in stats.py's buckets; `to_list()` gives the list stats.py reads."""

    def __cinit__(self):
        cdef int i
        for i in range(HIST_SIZE):
            self.counts[i] = 0
        self.total = 0
        self.max_us = 0

    cdef void add_us(self, int64_t us) noexcept:
        self.counts[_bucket(us)] += 1
        self.total += 1
        if us > self.max_us:
            self.max_us = us

    def add(self, int64_t us) -> None:
        """Count one sample of `us` microseconds (negative counts as 0)."""
        self.add_us(us)

    def to_list(self) -> list:
        return [self.counts[i] for i in range(HIST_SIZE)]


# -- PublishFiller -------------------------------------------------------------------------

@cython.final
cdef class PublishFiller:
    """Stamped copies of one PUBLISH frame.

    :param frame: a complete PUBLISH frame whose payload is at least 16 bytes
    :param stamp_off: offset in `frame` of the payload (where the stamp goes)
    :param pid_off: offset of the 2-byte packet id (QoS 1/2), or -1 (QoS 0)
    :param index: the publisher's index, the stamp's second field
    """

    def __cinit__(self, bytes frame not None, Py_ssize_t stamp_off, Py_ssize_t pid_off,
                  uint32_t index):
        cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
        if stamp_off < 2 or stamp_off + STAMP_SIZE > n:
            raise ValueError(f"stamp offset {stamp_off} does not leave {STAMP_SIZE} bytes "
                             f"in a {n}-byte frame")
        if pid_off != -1 and (pid_off < 2 or pid_off + 2 > stamp_off):
            raise ValueError(f"packet id offset {pid_off} is not before the payload")
        self.frame = frame
        self.length = n
        self.stamp_off = stamp_off
        self.pid_off = pid_off
        self.index = index

    def qos0(self, Py_ssize_t n, uint64_t now_ns, uint32_t seq) -> bytes:
        """`n` frames stamped `now_ns` with sequence numbers seq, seq + 1, ... (mod 2**32)."""
        if n < 0:
            raise ValueError("n must be >= 0")
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n * self.length)
        cdef char *p = PyBytes_AS_STRING(out)
        cdef const char *tpl = PyBytes_AS_STRING(self.frame)
        cdef Py_ssize_t i, L = self.length, so = self.stamp_off
        for i in range(n):
            memcpy(p, tpl, L)
            _put_u64(p + so, now_ns)
            _put_u32(p + so + 8, self.index)
            _put_u32(p + so + 12, <uint32_t>(seq + <uint32_t>i))
            p += L
        return out

    def with_ids(self, Py_ssize_t n, uint64_t now_ns, uint32_t seq, int pid,
                 set inflight not None) -> tuple:
        """QoS 1/2: `n` stamped frames, each with the next packet id from `pid` on that is
        not in `inflight` (ids run 1..65535 and wrap); the ids used are added to `inflight`.
        Returns (frames, the id to start from next time)."""
        if self.pid_off < 0:
            raise ValueError("a QoS 0 template has no packet id")
        if n < 0 or len(inflight) + n > MAX_IDS:
            raise ValueError(f"{n} more packet ids do not fit beside {len(inflight)} in flight")
        if not 1 <= pid <= MAX_IDS:
            pid = 1
        cdef bytes out = PyBytes_FromStringAndSize(NULL, n * self.length)
        cdef char *p = PyBytes_AS_STRING(out)
        cdef const char *tpl = PyBytes_AS_STRING(self.frame)
        cdef Py_ssize_t i, L = self.length, so = self.stamp_off, po = self.pid_off
        for i in range(n):
            while pid in inflight:
                pid = pid % MAX_IDS + 1
            inflight.add(pid)
            memcpy(p, tpl, L)
            _put_u16(p + po, <unsigned int>pid)
            _put_u64(p + so, now_ns)
            _put_u32(p + so + 8, self.index)
            _put_u32(p + so + 12, <uint32_t>(seq + <uint32_t>i))
            pid = pid % MAX_IDS + 1
            p += L
        return out, pid


# -- DeliveryReader ------------------------------------------------------------------------

@cython.final
cdef class DeliveryReader:
    """What one connection receives: PUBLISH frames counted (and timed into `hist`), the acks
    they call for queued, every other packet kept whole for the Python parser.

    :param version: protocol level 3, 4 or 5 (settable later: a server learns it from CONNECT)
    :param hist: a LatencyHistogram to read the payload stamps into, or None to only count

    Per chunk: ``n = reader.feed(data, time.monotonic_ns())`` gives the deliveries counted in
    it; then ``take_acks()`` (PUBACK for QoS 1, PUBREC for QoS 2, PUBCOMP for each PUBREL) and
    ``take_others()`` (any other packets, concatenated) give what to write and what to parse,
    each as bytes or None. A malformed frame sets ``error`` and ends all reading.
    """

    def __cinit__(self, int version=4, LatencyHistogram hist=None):
        self.version = version
        self.hist = hist
        self._tail = None
        self._acks = bytearray()
        self._other = bytearray()
        self._q2 = set()
        self.received = 0
        self.retained = 0
        self.duplicates = 0
        self.error = None

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete frame."""
        return 0 if self._tail is None else PyByteArray_GET_SIZE(self._tail)

    def feed(self, data, int64_t now_ns) -> int:
        """Read one chunk; returns the deliveries counted in it."""
        cdef uint64_t before = self.received
        cdef Py_ssize_t used, n
        cdef bytearray tail
        cdef const unsigned char[:] view
        if self.error is not None:
            return 0
        if self._tail is not None:
            tail = self._tail
            tail += data
            n = PyByteArray_GET_SIZE(tail)
            used = self._scan(<const unsigned char *>PyByteArray_AS_STRING(tail), n, now_ns)
            if used == n:
                self._tail = None
            elif used:
                del tail[:used]
        elif type(data) is bytes:
            n = PyBytes_GET_SIZE(data)
            used = self._scan(<const unsigned char *>PyBytes_AS_STRING(data), n, now_ns)
            if used < n:
                self._tail = bytearray(data[used:])
        else:
            view = data
            n = view.shape[0]
            used = self._scan(&view[0], n, now_ns) if n else 0
            if used < n:
                self._tail = bytearray(view[used:])
        if self.error is not None:
            self._tail = None
        return <Py_ssize_t>(self.received - before)

    def take_acks(self):
        """The ack frames owed since the last call, as bytes, or None."""
        if not PyByteArray_GET_SIZE(self._acks):
            return None
        out = bytes(self._acks)
        PyByteArray_Resize(self._acks, 0)
        return out

    def take_others(self):
        """The complete non-PUBLISH frames read since the last call, as bytes, or None."""
        if not PyByteArray_GET_SIZE(self._other):
            return None
        out = bytes(self._other)
        PyByteArray_Resize(self._other, 0)
        return out

    cdef Py_ssize_t _scan(self, const unsigned char *p, Py_ssize_t n, int64_t now_ns) except -1:
        # Consumes every complete frame in p[0:n]; returns the bytes consumed.
        cdef Py_ssize_t pos = 0, i, rl, end
        cdef int shift, ptype
        cdef unsigned char b
        cdef char ack[4]
        while n - pos >= 2:
            i = pos + 1
            rl = 0
            shift = 0
            while True:
                if i >= n:
                    return pos                   # the length itself is incomplete
                b = p[i]
                i += 1
                rl |= <Py_ssize_t>(b & 0x7F) << shift
                if not (b & 0x80):
                    break
                shift += 7
                if shift == 28:
                    self.error = "remaining length longer than 4 bytes"
                    return pos
            end = i + rl
            if end > n:
                return pos
            ptype = p[pos] >> 4
            if ptype == PUBLISH:
                if self._publish(p + i, rl, p[pos] & 0x0F, now_ns):
                    return pos
            elif ptype == PUBREL:
                if rl < 2:
                    self.error = "PUBREL without a packet id"
                    return pos
                self._q2.discard((p[i] << 8) | p[i + 1])
                ack[0] = <char>0x70                  # PUBCOMP, success
                ack[1] = 2
                ack[2] = <char>p[i]
                ack[3] = <char>p[i + 1]
                _append(self._acks, ack, 4)
            else:
                _append(self._other, <const char *>p + pos, end - pos)
            pos = end
        return pos

    cdef int _publish(self, const unsigned char *body, Py_ssize_t rl, int flags,
                      int64_t now_ns) except -1:
        # One PUBLISH body (after the fixed header). Returns 1 with `error` set on a bad frame.
        cdef int qos = (flags >> 1) & 3
        cdef Py_ssize_t off, plen
        cdef unsigned int pid = 0
        cdef Py_ssize_t props = 0
        cdef int shift = 0
        cdef unsigned char b
        cdef char ack[4]
        if qos == 3:
            self.error = "PUBLISH with QoS 3"
            return 1
        if rl < 2:
            self.error = "PUBLISH without a topic"
            return 1
        off = 2 + ((body[0] << 8) | body[1])
        if qos:
            if off + 2 > rl:
                self.error = "PUBLISH shorter than its topic and packet id"
                return 1
            pid = (body[off] << 8) | body[off + 1]
            if pid == 0:
                self.error = "PUBLISH with packet id 0"
                return 1
            off += 2
        if self.version == 5:
            while True:
                if off >= rl:
                    self.error = "PUBLISH shorter than its property length"
                    return 1
                b = body[off]
                off += 1
                props |= <Py_ssize_t>(b & 0x7F) << shift
                if not (b & 0x80):
                    break
                shift += 7
                if shift == 28:
                    self.error = "PUBLISH property length longer than 4 bytes"
                    return 1
            off += props
        if off > rl:
            self.error = "PUBLISH shorter than its topic and properties"
            return 1
        if qos:
            ack[0] = <char>(0x40 if qos == 1 else 0x50)     # PUBACK / PUBREC, success
            ack[1] = 2
            ack[2] = <char>(pid >> 8)
            ack[3] = <char>(pid & 0xFF)
            _append(self._acks, ack, 4)
            if qos == 2:
                if pid in self._q2:                      # a resend before our PUBREC arrived
                    self.duplicates += 1
                    return 0
                self._q2.add(pid)
            if flags & 8:
                self.duplicates += 1
        self.received += 1
        if flags & 1:
            self.retained += 1
        plen = rl - off
        if self.hist is not None and plen >= STAMP_SIZE:
            self.hist.add_us((now_ns - <int64_t>_get_u64(body + off)) // 1000)
        return 0


@cython.final
cdef class WsUnframer:
    """A bench client's WebSocket input once the handshake is done: the broker's data frames
    (binary and continuation, unmasked: RFC 6455 section 5.2) -> their payloads joined, one
    bytes object per feed. A broker that sends a frame per MQTT packet (mosquitto does) costs a
    header walk per frame here instead of python-websockets' generator steps (about 7 us).

    `feed(data)` returns (payloads, rest): `rest` is None while only data frames came (an
    incomplete one is kept for the next feed); at the first other frame (ping, pong, close,
    text) or a masked one, `rest` is the input from that frame on and `stopped` is set: the
    caller hands it, and everything after it, to python-websockets."""

    def __cinit__(self):
        self._tail = None
        self.stopped = False

    def feed(self, data) -> tuple:
        cdef bytes buf
        if self._tail is not None:
            self._tail += data
            buf = bytes(self._tail)
            self._tail = None
        else:
            buf = data if type(data) is bytes else bytes(data)
        cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t i = 0, hl, total = 0, j, size
        cdef uint64_t ln
        cdef list spans = []            # (start, length) of each payload
        while i + 2 <= n:
            if (p[i] & 0x0F) not in (0, 2) or p[i + 1] & 0x80:
                self.stopped = True
                return self._join(buf, spans, total), buf[i:]
            ln = p[i + 1] & 0x7F
            hl = 2
            if ln == 126:
                if i + 4 > n:
                    break
                ln = (<uint64_t>p[i + 2] << 8) | p[i + 3]
                hl = 4
            elif ln == 127:
                if i + 10 > n:
                    break
                ln = _get_u64(p + i + 2)
                hl = 10
            if <uint64_t>(n - i - hl) < ln:
                break
            spans.append((i + hl, <Py_ssize_t>ln))
            total += <Py_ssize_t>ln
            i += hl + <Py_ssize_t>ln
        if i < n:
            self._tail = bytearray(buf[i:])
        return self._join(buf, spans, total), None

    cdef bytes _join(self, bytes buf, list spans, Py_ssize_t total):
        if not spans:
            return b""
        if len(spans) == 1:
            start, size = spans[0]
            return buf[start:start + size]
        cdef bytes out = PyBytes_FromStringAndSize(NULL, total)
        cdef char *q = PyBytes_AS_STRING(out)
        cdef const char *src = PyBytes_AS_STRING(buf)
        cdef Py_ssize_t at = 0, s, z
        for start, size in spans:
            s = start
            z = size
            memcpy(q + at, src + s, z)
            at += z
        return out
