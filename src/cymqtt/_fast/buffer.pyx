# cython: language_level=3
"""MQTT wire primitives: the Cursor readers (inline, in buffer.pxd) and WriteBuffer.

Python code reaches them through `Reader` and the `WriteBuffer` methods prefixed `py_`, which the
unit tests use; compiled code cimports the inline readers and calls the cdef writers directly.
"""
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.string cimport memcpy, memchr

from cymqtt._fast.consts cimport MAX_REMAINING_LENGTH

from cymqtt._fast.errors import MalformedPacket, PacketTooLarge

cdef object _MalformedPacket = MalformedPacket
cdef object _PacketTooLarge = PacketTooLarge

cdef enum:
    # Room kept in front of every WriteBuffer for the fixed header: type byte + 4 length bytes.
    HEADER_ROOM = 5


cdef int cur_fail_short(Cursor *c, Py_ssize_t need, const char *what) except -1:
    raise _MalformedPacket(
        f"{what.decode()}: needs {need} more byte(s) at offset {c.pos}, "
        f"only {c.end - c.pos} left in the packet"
    )


cdef int cur_fail_varint(Cursor *c) except -1:
    raise _MalformedPacket(
        f"variable byte integer at offset {c.pos} is longer than 4 bytes or not minimally "
        f"encoded [MQTT-1.5.5-1]"
    )


cdef object cur_fail_utf8(Cursor *c, Py_ssize_t n, const char *what):
    cdef const unsigned char *p = c.buf + c.pos - n
    if memchr(p, 0, n) != NULL:
        raise _MalformedPacket(
            f"{what.decode()}: UTF-8 string at offset {c.pos - n} contains U+0000 [MQTT-1.5.4-2]")
    raise _MalformedPacket(
        f"{what.decode()}: ill-formed UTF-8 string at offset {c.pos - n} [MQTT-1.5.4-1]")


cdef int varint_size(Py_ssize_t value) noexcept nogil:
    if value < 128:
        return 1
    if value < 16384:
        return 2
    if value < 2097152:
        return 3
    return 4


def encode_varint(Py_ssize_t value) -> bytes:
    """The variable byte integer encoding of ``value`` (0 .. 268,435,455)."""
    if value < 0 or value > MAX_REMAINING_LENGTH:
        raise _MalformedPacket(f"variable byte integer out of range: {value}")
    cdef WriteBuffer w = WriteBuffer()
    w.write_varint(value)
    return w.getvalue()


cdef class Reader:
    """A cursor over a bytes-like object, for tests and cold paths (compiled code uses Cursor)."""

    cdef Cursor _c
    cdef object _obj         # keeps the memory alive
    cdef Py_buffer _view
    cdef bint _has_view

    def __cinit__(self, data, Py_ssize_t offset=0):
        self._has_view = False
        self._obj = data
        PyObject_GetBuffer_simple(data, &self._view)
        self._has_view = True
        cur_init(&self._c, <const unsigned char *>self._view.buf, self._view.len)
        if offset < 0 or offset > self._view.len:
            raise ValueError("offset outside the buffer")
        self._c.pos = offset

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)

    @property
    def offset(self) -> int:
        return self._c.pos

    @property
    def remaining(self) -> int:
        return cur_left(&self._c)

    def read_u8(self) -> int:
        return cur_u8(&self._c, "byte")

    def read_u16(self) -> int:
        return cur_u16(&self._c, "two byte integer")

    def read_u32(self) -> int:
        return cur_u32(&self._c, "four byte integer")

    def read_varint(self) -> int:
        return cur_varint(&self._c, "variable byte integer")

    def read_utf8(self) -> str:
        return cur_utf8(&self._c, "UTF-8 string")

    def read_binary(self) -> bytes:
        return cur_binary(&self._c, "binary data")

    def read_pair(self) -> tuple:
        return cur_pair(&self._c, "string pair")


cdef inline int PyObject_GetBuffer_simple(object obj, Py_buffer *view) except -1:
    return PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)


cdef class WriteBuffer:
    """One growing bytearray; room for the fixed header is kept in front (see finish())."""

    def __cinit__(self, Py_ssize_t capacity=64):
        if capacity < 16:
            capacity = 16
        self._buf = bytearray(capacity + HEADER_ROOM)
        self._cap = capacity + HEADER_ROOM
        self._data = PyByteArray_AS_STRING(self._buf)
        self._len = HEADER_ROOM
        self._start = HEADER_ROOM

    cdef int _grow(self, Py_ssize_t extra) except -1:
        cdef Py_ssize_t cap = self._cap
        while cap < self._len + extra:
            cap *= 2
        PyByteArray_Resize(self._buf, cap)
        self._cap = cap
        self._data = PyByteArray_AS_STRING(self._buf)
        return 0

    cdef int write_u8(self, long v) except -1:
        if v < 0 or v > 0xFF:
            raise _MalformedPacket(f"byte out of range: {v}")
        if self._len + 1 > self._cap:
            self._grow(1)
        self._data[self._len] = <char>(v & 0xFF)
        self._len += 1
        return 0

    cdef int write_u16(self, long v) except -1:
        if v < 0 or v > 0xFFFF:
            raise _MalformedPacket(f"two byte integer out of range: {v}")
        if self._len + 2 > self._cap:
            self._grow(2)
        self._data[self._len] = <char>(v >> 8)
        self._data[self._len + 1] = <char>(v & 0xFF)
        self._len += 2
        return 0

    cdef int write_u32(self, long long v) except -1:
        if v < 0 or v > 0xFFFFFFFF:
            raise _MalformedPacket(f"four byte integer out of range: {v}")
        if self._len + 4 > self._cap:
            self._grow(4)
        cdef char *p = self._data + self._len
        p[0] = <char>(v >> 24)
        p[1] = <char>((v >> 16) & 0xFF)
        p[2] = <char>((v >> 8) & 0xFF)
        p[3] = <char>(v & 0xFF)
        self._len += 4
        return 0

    cdef int write_varint(self, Py_ssize_t v) except -1:
        if v < 0 or v > MAX_REMAINING_LENGTH:
            raise _MalformedPacket(f"variable byte integer out of range: {v}")
        if self._len + 4 > self._cap:
            self._grow(4)
        cdef unsigned char b
        while True:
            b = v & 0x7F
            v >>= 7
            if v:
                self._data[self._len] = <char>(b | 0x80)
                self._len += 1
            else:
                self._data[self._len] = <char>b
                self._len += 1
                return 0

    cdef int write_raw(self, const char *p, Py_ssize_t n) except -1:
        if self._len + n > self._cap:
            self._grow(n)
        memcpy(self._data + self._len, p, n)
        self._len += n
        return 0

    cdef int write_bytes(self, object b) except -1:
        # Raw bytes with no length prefix (a PUBLISH payload, SUBACK reason codes).
        if type(b) is not bytes:
            b = bytes(b)
        return self.write_raw(PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))

    cdef int write_binary(self, object b) except -1:
        if type(b) is not bytes:
            b = bytes(b)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
        if n > 0xFFFF:
            raise _MalformedPacket(f"binary data of {n} bytes exceeds 65,535")
        self.write_u16(n)
        return self.write_raw(PyBytes_AS_STRING(b), n)

    cdef int write_utf8(self, str s) except -1:
        cdef Py_ssize_t n
        cdef const char *p
        try:
            p = PyUnicode_AsUTF8AndSize(s, &n)
        except UnicodeEncodeError:
            raise _MalformedPacket(f"string {s!r} is not encodable as UTF-8 [MQTT-1.5.4-1]")
        if n > 0xFFFF:
            raise _MalformedPacket(f"UTF-8 string of {n} bytes exceeds 65,535")
        if n and memchr(p, 0, n) != NULL:
            raise _MalformedPacket(f"string {s!r} contains U+0000 [MQTT-1.5.4-2]")
        self.write_u16(n)
        return self.write_raw(p, n)

    cdef int write_pair(self, object pair) except -1:
        k, v = pair
        self.write_utf8(k)
        return self.write_utf8(v)

    cdef bytes finish(self, unsigned char first_byte):
        # Put the fixed header in the room kept in front and return the whole packet.
        cdef Py_ssize_t rl = self._len - HEADER_ROOM
        if rl > MAX_REMAINING_LENGTH:
            raise _PacketTooLarge(f"packet body of {rl} bytes exceeds 268,435,455")
        cdef int h = varint_size(rl)
        cdef Py_ssize_t start = HEADER_ROOM - 1 - h
        cdef Py_ssize_t i = start + 1
        self._data[start] = <char>first_byte
        while True:
            if rl >= 128:
                self._data[i] = <char>((rl & 0x7F) | 0x80)
            else:
                self._data[i] = <char>rl
                break
            rl >>= 7
            i += 1
        self._start = start
        return PyBytes_FromStringAndSize(self._data + start, self._len - start)

    cdef bytes getvalue(self):
        return PyBytes_FromStringAndSize(self._data + self._start, self._len - self._start)

    # Python-facing wrappers, for the unit tests.
    def py_write_u8(self, v): self.write_u8(v)
    def py_write_u16(self, v): self.write_u16(v)
    def py_write_u32(self, v): self.write_u32(v)
    def py_write_varint(self, v): self.write_varint(v)
    def py_write_utf8(self, s): self.write_utf8(s)
    def py_write_binary(self, b): self.write_binary(b)
    def py_write_pair(self, p): self.write_pair(p)
    def py_finish(self, first_byte): return self.finish(first_byte)
    def py_getvalue(self): return self.getvalue()
