# The MQTT packet codec: FrameParser (bytes -> packets) and the encoders (packets -> bytes).
# Packet classes are plain typed records; their fields are the contract with the Python layer.

from cymqtt._fast.buffer cimport Cursor, WriteBuffer


cdef class Packet:
    cdef readonly int type           # PacketType: 1 CONNECT .. 15 AUTH


cdef class Connect(Packet):
    cdef public str protocol_name    # "MQTT" (3.1.1, 5.0) or "MQIsdp" (3.1)
    cdef public int version          # protocol level: 3, 4 or 5
    cdef public bint clean_start     # clean session (3.x) / clean start (5.0)
    cdef public int keepalive        # seconds; 0 = off
    cdef public str client_id
    cdef public dict properties      # None when absent
    cdef public str will_topic       # None when the will flag is 0
    cdef public bytes will_payload
    cdef public int will_qos
    cdef public bint will_retain
    cdef public dict will_properties
    cdef public str username         # None when the flag is 0
    cdef public bytes password       # None when the flag is 0


cdef class ConnAck(Packet):
    cdef public bint session_present
    cdef public int reason_code      # 3.x: the return code 0..5
    cdef public dict properties


cdef class Publish(Packet):
    cdef public str topic            # "" only with a topic alias (5.0)
    cdef public bytes payload
    cdef public int qos
    cdef public bint retain
    cdef public bint dup
    cdef public int packet_id        # 0 for QoS 0
    cdef public dict properties


cdef class PubAck(Packet):
    # PUBACK, PUBREC, PUBREL and PUBCOMP: same shape, told apart by `type`.
    cdef public int packet_id
    cdef public int reason_code
    cdef public dict properties


cdef class Subscribe(Packet):
    cdef public int packet_id
    cdef public list topics          # [(filter, options)]; options = qos | nl<<2 | rap<<3 | rh<<4
    cdef public dict properties


cdef class SubAck(Packet):
    # SUBACK and UNSUBACK (3.1.1 UNSUBACK carries no reason codes: the list is empty).
    cdef public int packet_id
    cdef public list reason_codes
    cdef public dict properties


cdef class Unsubscribe(Packet):
    cdef public int packet_id
    cdef public list topics          # [filter]
    cdef public dict properties


cdef class Ping(Packet):
    pass                             # PINGREQ or PINGRESP


cdef class Disconnect(Packet):
    cdef public int reason_code
    cdef public dict properties


cdef class Auth(Packet):
    cdef public int reason_code
    cdef public dict properties


cdef class FrameParser:
    cdef public int version              # 0 until CONNECT names it (server side), else 3/4/5
    cdef public Py_ssize_t max_packet_size
    cdef readonly object error           # the CodecError that stopped parsing, or None
    cdef bytearray _tail                 # an incomplete frame, only while there is one
    cdef Py_ssize_t _need                # bytes _tail must reach before a parse can finish
    cdef bytes _last_topic_raw           # PUBLISH topic cache: most streams repeat their topic
    cdef str _last_topic

    cpdef list feed(self, object data)
    cdef Py_ssize_t _parse_all(self, const unsigned char *p, Py_ssize_t n, list out) except -1
    cdef object _parse_packet(self, unsigned char b0, const unsigned char *body, Py_ssize_t rl)
    cdef void _fail(self, object exc) noexcept
    cdef int _check_first_byte(self, unsigned char b0) except -1
    cdef Publish _parse_publish(self, unsigned char flags, Cursor *c)
    cdef PubAck _parse_puback(self, int ptype, Cursor *c)
    cdef Connect _parse_connect(self, Cursor *c)
    cdef str _will_topic(self, Cursor *c)
    cdef ConnAck _parse_connack(self, Cursor *c)
    cdef Subscribe _parse_subscribe(self, Cursor *c)
    cdef Unsubscribe _parse_unsubscribe(self, Cursor *c)
    cdef SubAck _parse_suback(self, int ptype, Cursor *c)
    cdef Disconnect _parse_disconnect(self, Cursor *c)
    cdef Auth _parse_auth(self, Cursor *c)
    cdef int _packet_id(self, Cursor *c, int ptype) except -1
    cdef str _topic_name(self, Cursor *c)


cdef int check_filter(const unsigned char *p, Py_ssize_t n) except -1
cdef int check_topic_name(const unsigned char *p, Py_ssize_t n) except -1

cpdef bytes encode(Packet packet, int version=*)
cpdef bytes encode_publish(str topic, object payload, int qos=*, bint retain=*, bint dup=*,
                           int packet_id=*, dict properties=*, int version=*)
cpdef bytes publish_with_id(bytes frame, int packet_id, bint dup=*)
cpdef bytes encode_ack(int packet_type, int packet_id, int reason_code=*, dict properties=*,
                       int version=*)
