# cython: language_level=3
"""MQTT 3.1 / 3.1.1 / 5.0 packet codec: FrameParser (bytes in, packets out) and encoders.

Sans-I/O: the parser is fed whatever chunks the transport delivers and returns every complete
packet in them; it never raises into its caller. On bad input it returns the packets that came
before the bad one and records the error (a `CodecError` carrying the MQTT 5 reason code) in
`parser.error`; later input is ignored. Encoders raise `CodecError` for values the wire cannot
carry.
"""
cimport cython
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize, PyUnicode_DecodeUTF8
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from libc.string cimport memchr, memcmp, memcpy
from libc.stdint cimport uint64_t

from cymqtt._fast.buffer cimport (
    Cursor, WriteBuffer, cur_init, cur_left, cur_u8, cur_u16, cur_u32, cur_varint, cur_take,
    cur_binary, cur_utf8, cur_pair, varint_size,
)
from cymqtt._fast.consts cimport (
    CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBSCRIBE, SUBACK, UNSUBSCRIBE,
    UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH, MAX_PACKET_SIZE, MAX_REMAINING_LENGTH,
    USER_PROPERTY, SUBSCRIPTION_IDENTIFIER, TOPIC_ALIAS,
)

from cymqtt._fast.errors import (
    CodecError, MalformedPacket, PacketTooLarge, ProtocolError, TopicNameInvalid,
    UnsupportedProtocolVersion,
)

# Module-level C aliases: no global dict lookups on the error paths.
cdef object _CodecError = CodecError
cdef object _Malformed = MalformedPacket
cdef object _Protocol = ProtocolError
cdef object _TooLarge = PacketTooLarge
cdef object _TopicInvalid = TopicNameInvalid
cdef object _Unsupported = UnsupportedProtocolVersion

PACKET_NAMES = (
    "RESERVED", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
    "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT", "AUTH",
)
cdef tuple _NAMES = PACKET_NAMES


# ---------------------------------------------------------------------------------------------
# MQTT 5 properties (section 2.2.2.2, table 2-4): each identifier's data type and the packets it
# may appear in. "Where" bit 0 stands for the will properties inside CONNECT.

cdef enum PropKind:
    PK_NONE = 0
    PK_BYTE
    PK_U16
    PK_U32
    PK_VARINT
    PK_UTF8
    PK_BINARY
    PK_PAIR

cdef enum:
    WILL = 0        # pseudo packet type for will properties

cdef unsigned char PROP_KIND[64]
cdef unsigned int PROP_WHERE[64]


cdef void _prop(int pid, PropKind kind, tuple where) noexcept:
    cdef unsigned int mask = 0
    for w in where:
        mask |= 1u << <int>w
    PROP_KIND[pid] = kind
    PROP_WHERE[pid] = mask


cdef void _init_props() noexcept:
    cdef int i
    for i in range(64):
        PROP_KIND[i] = PK_NONE
        PROP_WHERE[i] = 0
    _prop(0x01, PK_BYTE, (PUBLISH, WILL))              # payload format indicator
    _prop(0x02, PK_U32, (PUBLISH, WILL))               # message expiry interval
    _prop(0x03, PK_UTF8, (PUBLISH, WILL))              # content type
    _prop(0x08, PK_UTF8, (PUBLISH, WILL))              # response topic
    _prop(0x09, PK_BINARY, (PUBLISH, WILL))            # correlation data
    _prop(0x0B, PK_VARINT, (PUBLISH, SUBSCRIBE))       # subscription identifier
    _prop(0x11, PK_U32, (CONNECT, CONNACK, DISCONNECT))  # session expiry interval
    _prop(0x12, PK_UTF8, (CONNACK,))                   # assigned client identifier
    _prop(0x13, PK_U16, (CONNACK,))                    # server keep alive
    _prop(0x15, PK_UTF8, (CONNECT, CONNACK, AUTH))     # authentication method
    _prop(0x16, PK_BINARY, (CONNECT, CONNACK, AUTH))   # authentication data
    _prop(0x17, PK_BYTE, (CONNECT,))                   # request problem information
    _prop(0x18, PK_U32, (WILL,))                       # will delay interval
    _prop(0x19, PK_BYTE, (CONNECT,))                   # request response information
    _prop(0x1A, PK_UTF8, (CONNACK,))                   # response information
    _prop(0x1C, PK_UTF8, (CONNACK, DISCONNECT))        # server reference
    _prop(0x1F, PK_UTF8, (CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK,
                          DISCONNECT, AUTH))           # reason string
    _prop(0x21, PK_U16, (CONNECT, CONNACK))            # receive maximum
    _prop(0x22, PK_U16, (CONNECT, CONNACK))            # topic alias maximum
    _prop(0x23, PK_U16, (PUBLISH,))                    # topic alias
    _prop(0x24, PK_BYTE, (CONNACK,))                   # maximum QoS
    _prop(0x25, PK_BYTE, (CONNACK,))                   # retain available
    _prop(0x26, PK_PAIR, (CONNECT, CONNACK, PUBLISH, WILL, PUBACK, PUBREC, PUBREL, PUBCOMP,
                          SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, DISCONNECT, AUTH))
    _prop(0x27, PK_U32, (CONNECT, CONNACK))            # maximum packet size
    _prop(0x28, PK_BYTE, (CONNACK,))                   # wildcard subscription available
    _prop(0x29, PK_BYTE, (CONNACK,))                   # subscription identifiers available
    _prop(0x2A, PK_BYTE, (CONNACK,))                   # shared subscription available

_init_props()

# Byte-valued properties whose only legal values are 0 and 1.
cdef uint64_t BOOL_PROPS = ((1ULL << 0x01) | (1ULL << 0x17) | (1ULL << 0x19) | (1ULL << 0x24)
                            | (1ULL << 0x25) | (1ULL << 0x28) | (1ULL << 0x29) | (1ULL << 0x2A))
# Properties for which 0 is a Protocol Error.
cdef uint64_t NONZERO_PROPS = ((1ULL << 0x0B) | (1ULL << 0x21) | (1ULL << 0x27))


cdef inline str _where_name(int where):
    return "will properties" if where == WILL else _NAMES[where]


cdef dict _parse_props(Cursor *c, int where):
    """The property block at the cursor, as {identifier: value}; None when it is empty.

    User properties (0x26) and subscription identifiers (0x0B) are lists, in wire order."""
    cdef long length = cur_varint(c, "property length")
    if length == 0:
        return None
    if cur_left(c) < length:
        raise _Malformed(f"{_where_name(where)}: property length {length} exceeds the "
                         f"{cur_left(c)} bytes left in the packet")
    cdef Py_ssize_t saved_end = c.end
    c.end = c.pos + length
    cdef dict props = {}
    cdef uint64_t seen = 0
    cdef long pid
    cdef object value
    cdef int kind
    while c.pos < c.end:
        pid = cur_varint(c, "property identifier")
        if pid >= 64 or PROP_KIND[pid] == PK_NONE:
            raise _Malformed(f"{_where_name(where)}: unknown property identifier 0x{pid:02X}")
        if not (PROP_WHERE[pid] & (1u << where)):
            raise _Malformed(f"property 0x{pid:02X} is not allowed in {_where_name(where)}")
        kind = PROP_KIND[pid]
        if kind == PK_BYTE:
            value = cur_u8(c, "property value")
        elif kind == PK_U16:
            value = cur_u16(c, "property value")
        elif kind == PK_U32:
            value = cur_u32(c, "property value")
        elif kind == PK_VARINT:
            value = cur_varint(c, "property value")
        elif kind == PK_UTF8:
            value = cur_utf8(c, "property value")
        elif kind == PK_BINARY:
            value = cur_binary(c, "property value")
        else:
            value = cur_pair(c, "user property")
        if (BOOL_PROPS >> pid) & 1 and value > 1:
            raise _Protocol(f"property 0x{pid:02X} must be 0 or 1, got {value}")
        if (NONZERO_PROPS >> pid) & 1 and value == 0:
            raise _Protocol(f"property 0x{pid:02X} must not be 0")
        if pid == USER_PROPERTY or (pid == SUBSCRIPTION_IDENTIFIER and where == PUBLISH):
            if (seen >> pid) & 1:
                (<list>props[pid]).append(value)
            else:
                props[pid] = [value]
        elif (seen >> pid) & 1:
            raise _Protocol(f"{_where_name(where)}: property 0x{pid:02X} appears more than once")
        elif pid == SUBSCRIPTION_IDENTIFIER:
            props[pid] = [value]
        else:
            props[pid] = value
        seen |= (<uint64_t>1) << pid
    c.end = saved_end
    return props


cdef int _write_prop_value(WriteBuffer w, int pid, int kind, object value) except -1:
    if kind == PK_BYTE:
        if not 0 <= value <= 255:
            raise _Malformed(f"property 0x{pid:02X}: byte value out of range: {value}")
        w.write_u8(value)
    elif kind == PK_U16:
        w.write_u16(value)
    elif kind == PK_U32:
        w.write_u32(value)
    elif kind == PK_VARINT:
        w.write_varint(value)
    elif kind == PK_UTF8:
        w.write_utf8(value)
    elif kind == PK_BINARY:
        w.write_binary(value)
    else:
        w.write_pair(value)
    return 0


cdef int _write_props(WriteBuffer w, dict props, int where) except -1:
    if not props:
        return w.write_u8(0)
    cdef WriteBuffer body = WriteBuffer()
    cdef int kind
    cdef long pid
    for key, value in props.items():
        pid = key
        if pid < 0 or pid >= 64 or PROP_KIND[pid] == PK_NONE:
            raise _Malformed(f"unknown property identifier {key!r}")
        if not (PROP_WHERE[pid] & (1u << where)):
            raise _Malformed(f"property 0x{pid:02X} is not allowed in {_where_name(where)}")
        kind = PROP_KIND[pid]
        if pid == USER_PROPERTY or pid == SUBSCRIPTION_IDENTIFIER:
            if isinstance(value, (list, tuple)) and (pid == SUBSCRIPTION_IDENTIFIER
                                                     or not _is_pair(value)):
                for item in value:
                    body.write_u8(pid)
                    _write_prop_value(body, pid, kind, item)
                continue
        body.write_u8(pid)
        _write_prop_value(body, pid, kind, value)
    w.write_varint(body._len - body._start)
    return w.write_raw(body._data + body._start, body._len - body._start)


cdef inline bint _is_pair(object v):
    # A bare ("key", "value") tuple given for the user property, rather than a list of them.
    return type(v) is tuple and len(<tuple>v) == 2 and type((<tuple>v)[0]) is str


# ---------------------------------------------------------------------------------------------
# Topic names and filters (section 4.7)

cdef int check_filter(const unsigned char *p, Py_ssize_t n) except -1:
    """Raise MalformedPacket unless p[:n] is a valid topic filter (shared forms included)."""
    cdef Py_ssize_t i, start = 0
    if n == 0:
        raise _Malformed("empty topic filter [MQTT-4.7.3-1]")
    if n >= 7 and memcmp(p, b"$share/", 7) == 0:
        # $share/{ShareName}/{filter}: a non-empty share name without / + # [MQTT-4.8.2-1/2]
        i = 7
        while i < n and p[i] != b'/':
            if p[i] == b'+' or p[i] == b'#':
                raise _Malformed("shared subscription name contains a wildcard [MQTT-4.8.2-2]")
            i += 1
        if i == 7 or i >= n - 1:
            raise _Malformed("shared subscription needs $share/{name}/{filter} [MQTT-4.8.2-1]")
        start = i + 1
    elif n >= 7 and memcmp(p, b"$queue/", 7) == 0:
        start = 7
        if n == 7:
            raise _Malformed("$queue/ needs a topic filter after it")
    for i in range(start, n):
        if p[i] == b'#':
            if i != n - 1 or (i > start and p[i - 1] != b'/'):
                raise _Malformed("'#' must be the last level, alone in it [MQTT-4.7.1-1]")
        elif p[i] == b'+':
            if (i > start and p[i - 1] != b'/') or (i < n - 1 and p[i + 1] != b'/'):
                raise _Malformed("'+' must occupy a whole level [MQTT-4.7.1-2]")
    return 0


cdef int check_topic_name(const unsigned char *p, Py_ssize_t n) except -1:
    if memchr(p, b'+', n) != NULL or memchr(p, b'#', n) != NULL:
        raise _TopicInvalid("topic name contains a wildcard character [MQTT-3.3.2-2]")
    return 0


def validate_topic_name(str topic) -> None:
    """Raise CodecError unless `topic` is a valid, non-empty PUBLISH topic name."""
    cdef Py_ssize_t n
    cdef const char *p = _utf8_of(topic, &n)
    if n == 0:
        raise _Protocol("empty topic name [MQTT-4.7.3-1]")
    check_topic_name(<const unsigned char *>p, n)


def validate_topic_filter(str topic_filter) -> None:
    """Raise CodecError unless `topic_filter` is a valid SUBSCRIBE topic filter."""
    cdef Py_ssize_t n
    cdef const char *p = _utf8_of(topic_filter, &n)
    check_filter(<const unsigned char *>p, n)


cdef const char *_utf8_of(str s, Py_ssize_t *n) except NULL:
    cdef const char *p
    try:
        p = PyUnicode_AsUTF8AndSize(s, n)
    except UnicodeEncodeError:
        raise _Malformed(f"{s!r} is not encodable as UTF-8 [MQTT-1.5.4-1]")
    if n[0] and memchr(p, 0, n[0]) != NULL:
        raise _Malformed(f"{s!r} contains U+0000 [MQTT-1.5.4-2]")
    return p


# ---------------------------------------------------------------------------------------------
# Packets

cdef inline object _norm(object v):
    # Absent properties decode as None; an empty dict given to an encoder means the same.
    if type(v) is dict and not v:
        return None
    return v


cdef class Packet:
    """Base of every packet record. Packets compare equal field by field."""

    _fields = ()

    def _values(self):
        return tuple([_norm(getattr(self, f)) for f in self._fields])

    def __eq__(self, other):
        if not isinstance(other, Packet) or type(self) is not type(other):
            return NotImplemented
        return self.type == (<Packet>other).type and self._values() == other._values()

    __hash__ = None

    def __repr__(self):
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{_NAMES[self.type]}({fields})"

    @property
    def name(self) -> str:
        """The packet type's name: "CONNECT", "PUBLISH", ..."""
        return _NAMES[self.type]

    def encode(self, int version=4) -> bytes:
        """This packet as MQTT bytes for protocol `version` (CONNECT uses its own)."""
        return encode(self, version)


@cython.final
cdef class Connect(Packet):
    _fields = ("protocol_name", "version", "clean_start", "keepalive", "client_id", "properties",
               "will_topic", "will_payload", "will_qos", "will_retain", "will_properties",
               "username", "password")

    def __init__(self, str client_id="", *, int version=4, bint clean_start=True,
                 int keepalive=60, dict properties=None, str will_topic=None,
                 bytes will_payload=b"", int will_qos=0, bint will_retain=False,
                 dict will_properties=None, str username=None, bytes password=None,
                 str protocol_name=None):
        self.type = CONNECT
        self.version = version
        self.protocol_name = protocol_name or ("MQIsdp" if version == 3 else "MQTT")
        self.clean_start = clean_start
        self.keepalive = keepalive
        self.client_id = client_id
        self.properties = properties
        self.will_topic = will_topic
        self.will_payload = will_payload if will_topic is not None else None
        self.will_qos = will_qos
        self.will_retain = will_retain
        self.will_properties = will_properties
        self.username = username
        self.password = password


@cython.final
cdef class ConnAck(Packet):
    _fields = ("session_present", "reason_code", "properties")

    def __init__(self, bint session_present=False, int reason_code=0, dict properties=None):
        self.type = CONNACK
        self.session_present = session_present
        self.reason_code = reason_code
        self.properties = properties


@cython.final
@cython.no_gc
cdef class Publish(Packet):
    _fields = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")

    def __init__(self, str topic, payload=b"", int qos=0, bint retain=False, bint dup=False,
                 int packet_id=0, dict properties=None):
        self.type = PUBLISH
        self.topic = topic
        self.payload = payload if type(payload) is bytes else bytes(payload)
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = properties


@cython.final
cdef class PubAck(Packet):
    _fields = ("packet_id", "reason_code", "properties")

    def __init__(self, int type=PUBACK, int packet_id=1, int reason_code=0,
                 dict properties=None):
        if type not in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            raise ValueError(f"PubAck type must be PUBACK..PUBCOMP, not {type}")
        self.type = type
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties


@cython.final
cdef class Subscribe(Packet):
    _fields = ("packet_id", "topics", "properties")

    def __init__(self, int packet_id=1, list topics=None, dict properties=None):
        self.type = SUBSCRIBE
        self.packet_id = packet_id
        self.topics = topics if topics is not None else []
        self.properties = properties


@cython.final
cdef class SubAck(Packet):
    _fields = ("packet_id", "reason_codes", "properties")

    def __init__(self, int type=SUBACK, int packet_id=1, list reason_codes=None,
                 dict properties=None):
        if type not in (SUBACK, UNSUBACK):
            raise ValueError(f"SubAck type must be SUBACK or UNSUBACK, not {type}")
        self.type = type
        self.packet_id = packet_id
        self.reason_codes = reason_codes if reason_codes is not None else []
        self.properties = properties


@cython.final
cdef class Unsubscribe(Packet):
    _fields = ("packet_id", "topics", "properties")

    def __init__(self, int packet_id=1, list topics=None, dict properties=None):
        self.type = UNSUBSCRIBE
        self.packet_id = packet_id
        self.topics = topics if topics is not None else []
        self.properties = properties


@cython.final
cdef class Ping(Packet):
    def __init__(self, int type=PINGREQ):
        if type not in (PINGREQ, PINGRESP):
            raise ValueError(f"Ping type must be PINGREQ or PINGRESP, not {type}")
        self.type = type


@cython.final
cdef class Disconnect(Packet):
    _fields = ("reason_code", "properties")

    def __init__(self, int reason_code=0, dict properties=None):
        self.type = DISCONNECT
        self.reason_code = reason_code
        self.properties = properties


@cython.final
cdef class Auth(Packet):
    _fields = ("reason_code", "properties")

    def __init__(self, int reason_code=0, dict properties=None):
        self.type = AUTH
        self.reason_code = reason_code
        self.properties = properties


cdef Ping _PINGREQ = Ping(PINGREQ)
cdef Ping _PINGRESP = Ping(PINGRESP)


# ---------------------------------------------------------------------------------------------
# FrameParser

# Fixed-header flags each type must carry (section 2.1.3); PUBLISH (3) is checked on its own.
cdef unsigned char REQUIRED_FLAGS[16]
for _i in range(16):
    REQUIRED_FLAGS[_i] = 0
REQUIRED_FLAGS[<int>PUBREL] = 2
REQUIRED_FLAGS[<int>SUBSCRIBE] = 2
REQUIRED_FLAGS[<int>UNSUBSCRIBE] = 2


@cython.final
cdef class FrameParser:
    """Splits a byte stream into MQTT packets.

    :param version: protocol level (3, 4 or 5). Leave 0 on the server side: the parser takes the
        level from the CONNECT it reads, so packets after it in the same chunk decode right.
    :param max_packet_size: a security limit. A fixed header announcing a larger packet is
        refused (0x95) before any of its body is buffered, so a peer cannot make us hold more.

    Call ``feed(chunk)`` with every chunk received; it returns the complete packets in it. When
    it meets bad input it returns the packets before it, and ``error`` holds the ``CodecError``
    (with ``reason_code``); send that reason and close the connection. ``feed`` never raises.
    """

    def __init__(self, int version=0, Py_ssize_t max_packet_size=MAX_PACKET_SIZE):
        if version not in (0, 3, 4, 5):
            raise ValueError(f"unknown protocol version {version}")
        if max_packet_size < 2:
            raise ValueError("max_packet_size must be at least 2")
        self.version = version
        self.max_packet_size = max_packet_size
        self.error = None
        self._tail = None
        self._need = 0

    @property
    def buffered(self) -> int:
        """Bytes held of an incomplete packet (0 when the stream ended on a packet boundary)."""
        return 0 if self._tail is None else PyByteArray_GET_SIZE(self._tail)

    cpdef list feed(self, object data):
        """Every complete packet in `data` (after any bytes held from earlier calls)."""
        cdef list out = []
        cdef Py_ssize_t used, n
        cdef Py_buffer view
        cdef bytearray tail
        if self.error is not None:
            return out
        try:
            if self._tail is not None:
                self._tail += data
                n = PyByteArray_GET_SIZE(self._tail)
                if n < self._need:
                    return out
                tail = self._tail
                self._tail = None
                used = self._parse_all(<const unsigned char *>PyByteArray_AS_STRING(tail), n, out)
                if used < n:
                    self._tail = tail[used:]
            elif type(data) is bytes:
                n = PyBytes_GET_SIZE(data)
                used = self._parse_all(<const unsigned char *>PyBytes_AS_STRING(data), n, out)
                if used < n:
                    self._tail = bytearray(data[used:])
            else:
                PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
                try:
                    n = view.len
                    used = self._parse_all(<const unsigned char *>view.buf, n, out)
                    if used < n:
                        self._tail = bytearray((<const char *>view.buf)[used:n])
                finally:
                    PyBuffer_Release(&view)
        except _CodecError as exc:
            self._fail(exc)
        except Exception as exc:
            # Not expected from any input; reported the same way so one bad peer cannot take
            # the process down with an exception type the caller did not plan for.
            self._fail(_Malformed(f"undecodable packet ({type(exc).__name__}: {exc})"))
        return out

    cdef void _fail(self, object exc) noexcept:
        self.error = exc
        self._tail = None
        self._need = 0

    cdef Py_ssize_t _parse_all(self, const unsigned char *p, Py_ssize_t n, list out) except -1:
        # Returns how many bytes were consumed; complete packets are appended to `out`. On a
        # CodecError the packets already appended stay (feed() keeps them), and error is set.
        cdef Py_ssize_t pos = 0, i, rl, total
        cdef int shift
        cdef unsigned char b
        self._need = 0
        while pos < n:
            # The first byte alone can be wrong: refuse it now, before waiting for a body.
            self._check_first_byte(p[pos])
            if n - pos < 2:
                self._need = 2
                return pos
            # fixed header: type/flags byte, then the remaining length (1 to 4 bytes)
            i = pos + 1
            rl = 0
            shift = 0
            while True:
                if i >= n:
                    self._need = 0
                    return pos
                b = p[i]
                i += 1
                rl |= <Py_ssize_t>(b & 0x7F) << shift
                if not (b & 0x80):
                    if b == 0 and shift:
                        raise _Malformed("remaining length is not minimally encoded "
                                         "[MQTT-1.5.5-1]")
                    break
                shift += 7
                if shift == 28:
                    raise _Malformed("remaining length is longer than 4 bytes [MQTT-1.5.5-1]")
            total = (i - pos) + rl
            if total > self.max_packet_size:
                raise _TooLarge(f"{_NAMES[p[pos] >> 4]} of {total} bytes exceeds the maximum "
                                f"packet size of {self.max_packet_size}")
            if n - pos < total:
                self._need = total      # the tail will start at pos: wait for the whole frame
                return pos
            out.append(self._parse_packet(p[pos], p + i, rl))
            pos += total
        return pos

    cdef int _check_first_byte(self, unsigned char b0) except -1:
        cdef int ptype = b0 >> 4
        cdef unsigned char flags = b0 & 0x0F
        if ptype == PUBLISH:
            if (flags & 6) == 6:
                raise _Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
            if not (flags & 6) and (flags & 8):
                raise _Malformed("PUBLISH with QoS 0 must not set DUP [MQTT-3.3.1-2]")
            return 0
        if ptype == 0 or (ptype == AUTH and self.version != 5):
            raise _Malformed(f"packet type {ptype} is reserved"
                             + (" before MQTT 5" if ptype == AUTH else ""))
        if flags != REQUIRED_FLAGS[ptype]:
            raise _Malformed(f"{_NAMES[ptype]}: reserved fixed header flags are 0x{flags:X}, "
                             f"must be 0x{REQUIRED_FLAGS[ptype]:X} [MQTT-2.1.3-1]")
        return 0

    cdef object _parse_packet(self, unsigned char b0, const unsigned char *body, Py_ssize_t rl):
        cdef int ptype = b0 >> 4
        cdef unsigned char flags = b0 & 0x0F
        cdef Cursor c
        cur_init(&c, body, rl)
        cdef object pkt
        # (_check_first_byte has vetted the type and the flags)
        if ptype == PUBLISH:
            pkt = self._parse_publish(flags, &c)
        elif ptype == PUBACK or ptype == PUBREC or ptype == PUBREL or ptype == PUBCOMP:
            pkt = self._parse_puback(ptype, &c)
        elif ptype == PINGREQ:                       # 0xC0
            pkt = _PINGREQ
        elif ptype == PINGRESP:                      # 0xD0
            pkt = _PINGRESP
        elif ptype == CONNECT:                       # 0x10
            pkt = self._parse_connect(&c)
        elif ptype == CONNACK:                       # 0x20
            pkt = self._parse_connack(&c)
        elif ptype == SUBSCRIBE:                     # 0x82
            pkt = self._parse_subscribe(&c)
        elif ptype == SUBACK or ptype == UNSUBACK:   # 0x90, 0xB0
            pkt = self._parse_suback(ptype, &c)
        elif ptype == UNSUBSCRIBE:                   # 0xA2
            pkt = self._parse_unsubscribe(&c)
        elif ptype == DISCONNECT:                    # 0xE0
            pkt = self._parse_disconnect(&c)
        elif ptype == AUTH and self.version == 5:    # 0xF0
            pkt = self._parse_auth(&c)
        else:
            raise _Malformed(f"packet type {ptype} is reserved"
                             + (" before MQTT 5" if ptype == AUTH else ""))
        if c.pos != c.end:
            raise _Malformed(f"{_NAMES[ptype]}: {c.end - c.pos} unexpected byte(s) after the "
                             f"packet's content")
        return pkt

    cdef str _topic_name(self, Cursor *c):
        cdef Py_ssize_t n = cur_u16(c, "PUBLISH topic name")
        cdef const unsigned char *p = cur_take(c, n, "PUBLISH topic name")
        cdef bytes last = self._last_topic_raw
        if last is not None and PyBytes_GET_SIZE(last) == n and \
                memcmp(PyBytes_AS_STRING(last), p, n) == 0:
            return self._last_topic
        if n == 0:
            return ""
        if memchr(p, 0, n) != NULL:
            raise _Malformed("topic name contains U+0000 [MQTT-1.5.4-2]")
        check_topic_name(p, n)
        cdef str topic
        try:
            topic = PyUnicode_DecodeUTF8(<const char *>p, n, NULL)
        except UnicodeDecodeError:
            raise _Malformed("topic name is ill-formed UTF-8 [MQTT-1.5.4-1]")
        self._last_topic_raw = PyBytes_FromStringAndSize(<const char *>p, n)
        self._last_topic = topic
        return topic

    cdef Publish _parse_publish(self, unsigned char flags, Cursor *c):
        cdef int qos = (flags >> 1) & 3
        if qos == 3:
            raise _Malformed("PUBLISH with QoS 3 [MQTT-3.3.1-4]")
        if qos == 0 and (flags & 8):
            raise _Malformed("PUBLISH with QoS 0 must not set DUP [MQTT-3.3.1-2]")
        cdef Publish pkt = Publish.__new__(Publish)
        pkt.type = PUBLISH
        pkt.qos = qos
        pkt.dup = (flags & 8) != 0
        pkt.retain = flags & 1
        pkt.topic = self._topic_name(c)
        if qos:
            pkt.packet_id = cur_u16(c, "PUBLISH packet identifier")
            if pkt.packet_id == 0:
                raise _Protocol("PUBLISH with QoS > 0 has packet identifier 0 [MQTT-2.2.1-3]")
        else:
            pkt.packet_id = 0
        if self.version == 5:
            pkt.properties = _parse_props(c, PUBLISH)
            if not pkt.topic and (pkt.properties is None or TOPIC_ALIAS not in pkt.properties):
                raise _Protocol("PUBLISH with an empty topic name and no topic alias "
                                "[MQTT-3.3.2-1]")
        else:
            pkt.properties = None
            if not pkt.topic:
                raise _Protocol("PUBLISH with an empty topic name [MQTT-4.7.3-1]")
        pkt.payload = PyBytes_FromStringAndSize(<const char *>c.buf + c.pos, c.end - c.pos)
        c.pos = c.end
        return pkt

    cdef PubAck _parse_puback(self, int ptype, Cursor *c):
        cdef PubAck pkt = PubAck.__new__(PubAck)
        pkt.type = ptype
        pkt.packet_id = cur_u16(c, "packet identifier")
        if pkt.packet_id == 0:
            raise _Protocol(f"{_NAMES[ptype]} with packet identifier 0 [MQTT-2.2.1-3]")
        pkt.reason_code = 0
        pkt.properties = None
        if self.version == 5 and c.pos < c.end:
            pkt.reason_code = cur_u8(c, "reason code")
            if c.pos < c.end:
                pkt.properties = _parse_props(c, ptype)
        return pkt

    cdef Connect _parse_connect(self, Cursor *c):
        cdef Connect pkt = Connect.__new__(Connect)
        pkt.type = CONNECT
        pkt.protocol_name = cur_utf8(c, "CONNECT protocol name")
        cdef int level = cur_u8(c, "CONNECT protocol level")
        if not ((pkt.protocol_name == "MQTT" and (level == 4 or level == 5))
                or (pkt.protocol_name == "MQIsdp" and level == 3)):
            if level == 5:
                # An MQTT 5 client with a wrong protocol name reads the refusal (0x84) only
                # in the 5.0 CONNACK format.
                self.version = 5
            raise _Unsupported(f"CONNECT names protocol {pkt.protocol_name!r} level {level}; "
                               f"this broker speaks MQIsdp 3, MQTT 4 and MQTT 5 [MQTT-3.1.2-2]")
        pkt.version = level
        self.version = level      # later packets, and the reply to a bad CONNECT, use it
        cdef int flags = cur_u8(c, "CONNECT flags")
        if flags & 0x01:
            raise _Malformed("CONNECT reserved flag is set [MQTT-3.1.2-3]")
        pkt.clean_start = (flags & 0x02) != 0
        cdef bint will = (flags & 0x04) != 0
        pkt.will_qos = (flags >> 3) & 3
        pkt.will_retain = (flags & 0x20) != 0
        if will:
            if pkt.will_qos == 3:
                raise _Malformed("CONNECT will QoS 3 [MQTT-3.1.2-14]")
        elif pkt.will_qos or pkt.will_retain:
            raise _Malformed("CONNECT will QoS/retain set without the will flag "
                             "[MQTT-3.1.2-11, MQTT-3.1.2-13, MQTT-3.1.2-15]")
        if (flags & 0x40) and not (flags & 0x80) and level < 5:
            raise _Malformed("CONNECT password flag without user name flag [MQTT-3.1.2-22]")
        pkt.keepalive = cur_u16(c, "CONNECT keep alive")
        pkt.properties = _parse_props(c, CONNECT) if level == 5 else None
        pkt.client_id = cur_utf8(c, "CONNECT client identifier")
        pkt.will_properties = None
        pkt.will_topic = None
        pkt.will_payload = None
        if will:
            if level == 5:
                pkt.will_properties = _parse_props(c, WILL)
            pkt.will_topic = self._will_topic(c)
            pkt.will_payload = cur_binary(c, "CONNECT will payload")
        pkt.username = cur_utf8(c, "CONNECT user name") if flags & 0x80 else None
        pkt.password = cur_binary(c, "CONNECT password") if flags & 0x40 else None
        return pkt

    cdef str _will_topic(self, Cursor *c):
        cdef str topic = cur_utf8(c, "CONNECT will topic")
        cdef Py_ssize_t n
        cdef const char *p = PyUnicode_AsUTF8AndSize(topic, &n)
        if n == 0:
            raise _Protocol("CONNECT will topic is empty [MQTT-4.7.3-1]")
        check_topic_name(<const unsigned char *>p, n)
        return topic

    cdef ConnAck _parse_connack(self, Cursor *c):
        cdef ConnAck pkt = ConnAck.__new__(ConnAck)
        pkt.type = CONNACK
        cdef long flags = cur_u8(c, "CONNACK flags")
        if flags & 0xFE:
            raise _Malformed("CONNACK reserved flags are set [MQTT-3.2.2-1]")
        pkt.session_present = flags & 1
        pkt.reason_code = cur_u8(c, "CONNACK reason code")
        pkt.properties = None
        if self.version == 5:
            pkt.properties = _parse_props(c, CONNACK)
        return pkt

    cdef Subscribe _parse_subscribe(self, Cursor *c):
        cdef Subscribe pkt = Subscribe.__new__(Subscribe)
        pkt.type = SUBSCRIBE
        pkt.packet_id = self._packet_id(c, SUBSCRIBE)
        pkt.properties = _parse_props(c, SUBSCRIBE) if self.version == 5 else None
        cdef list topics = []
        cdef str topic_filter
        cdef long opts
        cdef Py_ssize_t start
        while c.pos < c.end:
            start = c.pos + 2
            topic_filter = cur_utf8(c, "SUBSCRIBE topic filter")
            check_filter(c.buf + start, c.pos - start)
            opts = cur_u8(c, "SUBSCRIBE options")
            if (opts & 3) == 3:
                if self.version == 5:   # MQTT 5 section 3.8.3.1: a Protocol Error there
                    raise _Protocol(f"SUBSCRIBE {topic_filter!r} asks for QoS 3")
                raise _Malformed(f"SUBSCRIBE {topic_filter!r} asks for QoS 3 [MQTT-3-8.3-4]")
            if self.version == 5:
                if opts & 0xC0:
                    raise _Malformed("SUBSCRIBE options reserved bits are set [MQTT-3.8.3-5]")
                if (opts >> 4) & 3 == 3:
                    raise _Protocol("SUBSCRIBE retain handling 3 [MQTT-3.8.3-5]")
                if (opts & 4) and topic_filter.startswith("$share/"):
                    raise _Protocol("no local on a shared subscription [MQTT-3.8.3-4]")
            elif opts & 0xFC:
                raise _Malformed("SUBSCRIBE options reserved bits are set [MQTT-3-8.3-4]")
            topics.append((topic_filter, opts))
        if not topics:
            raise _Protocol("SUBSCRIBE without any topic filter [MQTT-3.8.3-3]")
        pkt.topics = topics
        return pkt

    cdef Unsubscribe _parse_unsubscribe(self, Cursor *c):
        cdef Unsubscribe pkt = Unsubscribe.__new__(Unsubscribe)
        pkt.type = UNSUBSCRIBE
        pkt.packet_id = self._packet_id(c, UNSUBSCRIBE)
        pkt.properties = _parse_props(c, UNSUBSCRIBE) if self.version == 5 else None
        cdef list topics = []
        cdef Py_ssize_t start
        while c.pos < c.end:
            start = c.pos + 2
            topics.append(cur_utf8(c, "UNSUBSCRIBE topic filter"))
            check_filter(c.buf + start, c.pos - start)
        if not topics:
            raise _Protocol("UNSUBSCRIBE without any topic filter [MQTT-3.10.3-2]")
        pkt.topics = topics
        return pkt

    cdef SubAck _parse_suback(self, int ptype, Cursor *c):
        cdef SubAck pkt = SubAck.__new__(SubAck)
        pkt.type = ptype
        pkt.packet_id = self._packet_id(c, ptype)
        pkt.properties = None
        pkt.reason_codes = []
        if self.version == 5:
            pkt.properties = _parse_props(c, ptype)
        elif ptype == UNSUBACK:
            return pkt
        while c.pos < c.end:
            pkt.reason_codes.append(c.buf[c.pos])
            c.pos += 1
        return pkt

    cdef Disconnect _parse_disconnect(self, Cursor *c):
        cdef Disconnect pkt = Disconnect.__new__(Disconnect)
        pkt.type = DISCONNECT
        pkt.reason_code = 0
        pkt.properties = None
        if self.version == 5 and c.pos < c.end:
            pkt.reason_code = cur_u8(c, "DISCONNECT reason code")
            if c.pos < c.end:
                pkt.properties = _parse_props(c, DISCONNECT)
        return pkt

    cdef Auth _parse_auth(self, Cursor *c):
        cdef Auth pkt = Auth.__new__(Auth)
        pkt.type = AUTH
        pkt.reason_code = 0
        pkt.properties = None
        if c.pos < c.end:
            pkt.reason_code = cur_u8(c, "AUTH reason code")
            if c.pos < c.end:
                pkt.properties = _parse_props(c, AUTH)
        return pkt

    cdef int _packet_id(self, Cursor *c, int ptype) except -1:
        cdef long pid = cur_u16(c, "packet identifier")
        if pid == 0:
            raise _Protocol(f"{_NAMES[ptype]} with packet identifier 0 [MQTT-2.2.1-3]")
        return pid


# ---------------------------------------------------------------------------------------------
# Encoders (encode, encode_publish, publish_with_id, encode_ack and the per-type helpers)

include "codec_encoders.pxi"
