# The MQTT wire primitives (MQTT 5 section 1.5 / 3.1.1 section 1.5): variable byte integers, two- and
# four-byte integers, length-prefixed UTF-8 strings and binary data, string pairs.
#
# Reading goes through a `Cursor`, a plain struct over memory someone else owns (the bytes the
# transport handed us). The readers are `inline` and defined here, in the .pxd, so every module
# that cimports them (codec.pyx) compiles them into its own loops; their rare error paths call the
# out-of-line `cur_fail_*` functions implemented in buffer.pyx.
#
# Writing goes through `WriteBuffer`, one growing bytearray with room reserved in front for the
# fixed header, so a packet is written once and its length back-patched without a second copy.

from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.string cimport memchr

cdef struct Cursor:
    const unsigned char *buf    # start of the readable memory
    Py_ssize_t pos              # next byte to read
    Py_ssize_t end              # one past the last readable byte


cdef int cur_fail_short(Cursor *c, Py_ssize_t need, const char *what) except -1
cdef int cur_fail_varint(Cursor *c) except -1
cdef object cur_fail_utf8(Cursor *c, Py_ssize_t n, const char *what)


cdef inline void cur_init(Cursor *c, const unsigned char *buf, Py_ssize_t length) noexcept nogil:
    c.buf = buf
    c.pos = 0
    c.end = length


cdef inline Py_ssize_t cur_left(Cursor *c) noexcept nogil:
    return c.end - c.pos


cdef inline long cur_u8(Cursor *c, const char *what) except -1:
    if c.pos >= c.end:
        cur_fail_short(c, 1, what)
    c.pos += 1
    return c.buf[c.pos - 1]


cdef inline long cur_u16(Cursor *c, const char *what) except -1:
    if c.end - c.pos < 2:
        cur_fail_short(c, 2, what)
    c.pos += 2
    return (<long>c.buf[c.pos - 2] << 8) | c.buf[c.pos - 1]


cdef inline long long cur_u32(Cursor *c, const char *what) except -1:
    if c.end - c.pos < 4:
        cur_fail_short(c, 4, what)
    cdef const unsigned char *p = c.buf + c.pos
    c.pos += 4
    return ((<long long>p[0] << 24) | (<long long>p[1] << 16) | (<long long>p[2] << 8)
            | <long long>p[3])


cdef inline long cur_varint(Cursor *c, const char *what) except -1:
    # 1 to 4 bytes, 7 bits each, least significant first; a 5th byte [MQTT-1.5.5-1] or a
    # non-minimal encoding (a trailing 0x00 group after a continuation) is malformed.
    cdef long value = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if c.pos >= c.end:
            cur_fail_short(c, 1, what)
        b = c.buf[c.pos]
        c.pos += 1
        value |= <long>(b & 0x7F) << shift
        if not (b & 0x80):
            if b == 0 and shift:
                cur_fail_varint(c)
            return value
        shift += 7
        if shift == 28:
            cur_fail_varint(c)


cdef inline const unsigned char *cur_take(Cursor *c, Py_ssize_t n, const char *what) except NULL:
    if c.end - c.pos < n:
        cur_fail_short(c, n, what)
    c.pos += n
    return c.buf + c.pos - n


cdef inline bytes cur_binary(Cursor *c, const char *what):
    cdef Py_ssize_t n = cur_u16(c, what)
    cdef const unsigned char *p = cur_take(c, n, what)
    return PyBytes_FromStringAndSize(<const char *>p, n)


cdef inline str cur_utf8(Cursor *c, const char *what):
    # MQTT UTF-8: well-formed (no surrogates, no overlongs: Python's strict decoder refuses both)
    # and no U+0000 [MQTT-1.5.4-1, MQTT-1.5.4-2].
    cdef Py_ssize_t n = cur_u16(c, what)
    cdef const unsigned char *p = cur_take(c, n, what)
    if n == 0:
        return ""
    if memchr(p, 0, n) != NULL:
        return cur_fail_utf8(c, n, what)
    try:
        return PyUnicode_DecodeUTF8(<const char *>p, n, NULL)
    except UnicodeDecodeError:
        return cur_fail_utf8(c, n, what)


cdef inline tuple cur_pair(Cursor *c, const char *what):
    cdef str k = cur_utf8(c, what)
    return (k, cur_utf8(c, what))


cdef int varint_size(Py_ssize_t value) noexcept nogil


cdef class WriteBuffer:
    cdef bytearray _buf          # storage; only [_start, _len) is the packet so far
    cdef char *_data             # == PyByteArray_AS_STRING(_buf), refreshed on growth
    cdef Py_ssize_t _len         # bytes written, counting the reserved header room
    cdef Py_ssize_t _cap         # len(_buf)
    cdef Py_ssize_t _start       # first byte of the result (moves back when the header is put)

    cdef int _grow(self, Py_ssize_t extra) except -1
    cdef int write_u8(self, long v) except -1
    cdef int write_u16(self, long v) except -1
    cdef int write_u32(self, long long v) except -1
    cdef int write_varint(self, Py_ssize_t v) except -1
    cdef int write_raw(self, const char *p, Py_ssize_t n) except -1
    cdef int write_bytes(self, object b) except -1
    cdef int write_binary(self, object b) except -1
    cdef int write_utf8(self, str s) except -1
    cdef int write_pair(self, object pair) except -1
    cdef bytes finish(self, unsigned char first_byte)
    cdef bytes getvalue(self)
