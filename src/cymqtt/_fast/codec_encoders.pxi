# Encoders: included by codec.pyx (one extension module; this file only keeps codec.pyx short).
# Every encoder raises CodecError for values the wire cannot carry.

cpdef bytes encode(Packet packet, int version=4):
    """`packet` as MQTT bytes for protocol level `version` (a CONNECT carries its own)."""
    if packet is None:      # a typed argument lets None through; reading .type would be UB
        raise TypeError("encode() needs a packet, not None")
    cdef int t = packet.type
    if t == PUBLISH:
        p = <Publish>packet
        return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id,
                              p.properties, version)
    if t == PUBACK or t == PUBREC or t == PUBREL or t == PUBCOMP:
        a = <PubAck>packet
        return encode_ack(t, a.packet_id, a.reason_code, a.properties, version)
    if t == CONNECT:
        return _encode_connect(<Connect>packet)
    if t == CONNACK:
        return _encode_connack(<ConnAck>packet, version)
    if t == SUBSCRIBE:
        return _encode_subscribe(<Subscribe>packet, version)
    if t == SUBACK or t == UNSUBACK:
        return _encode_suback(<SubAck>packet, version)
    if t == UNSUBSCRIBE:
        return _encode_unsubscribe(<Unsubscribe>packet, version)
    if t == PINGREQ:
        return b"\xc0\x00"
    if t == PINGRESP:
        return b"\xd0\x00"
    if t == DISCONNECT:
        d = <Disconnect>packet
        return _encode_reason_only(0xE0, DISCONNECT, d.reason_code, d.properties, version)
    if t == AUTH:
        if version != 5:
            raise _Protocol("AUTH exists only in MQTT 5")
        au = <Auth>packet
        return _encode_reason_only(0xF0, AUTH, au.reason_code, au.properties, version)
    raise _Malformed(f"cannot encode packet type {t}")


cdef bytes _encode_connect(Connect p):
    cdef WriteBuffer w = WriteBuffer()
    cdef int v = p.version
    if v not in (3, 4, 5):
        raise _Unsupported(f"cannot encode CONNECT for protocol level {v}")
    w.write_utf8(p.protocol_name or ("MQIsdp" if v == 3 else "MQTT"))
    w.write_u8(v)
    cdef int flags = 0
    if p.clean_start:
        flags |= 0x02
    if p.will_topic is not None:
        if not 0 <= p.will_qos <= 2:
            raise _Malformed(f"will QoS {p.will_qos}")
        flags |= 0x04 | (p.will_qos << 3) | (0x20 if p.will_retain else 0)
    if p.password is not None:
        if p.username is None and v < 5:
            raise _Malformed("a password needs a user name before MQTT 5 [MQTT-3.1.2-22]")
        flags |= 0x40
    if p.username is not None:
        flags |= 0x80
    w.write_u8(flags)
    w.write_u16(p.keepalive)
    if v == 5:
        _write_props(w, p.properties, CONNECT)
    w.write_utf8(p.client_id or "")
    if p.will_topic is not None:
        if v == 5:
            _write_props(w, p.will_properties, WILL)
        w.write_utf8(p.will_topic)
        w.write_binary(p.will_payload or b"")
    if p.username is not None:
        w.write_utf8(p.username)
    if p.password is not None:
        w.write_binary(p.password)
    return w.finish(0x10)


cdef bytes _encode_connack(ConnAck p, int version):
    cdef WriteBuffer w = WriteBuffer()
    w.write_u8(1 if p.session_present else 0)
    w.write_u8(p.reason_code)
    if version == 5:
        _write_props(w, p.properties, CONNACK)
    return w.finish(0x20)


cpdef bytes encode_publish(str topic, object payload, int qos=0, bint retain=False,
                           bint dup=False, int packet_id=0, dict properties=None,
                           int version=4):
    """A PUBLISH frame. Without properties it is sized first and written in one allocation."""
    if qos < 0 or qos > 2:
        raise _Malformed(f"PUBLISH QoS {qos}")
    if qos and not 0 < packet_id <= 0xFFFF:
        raise _Protocol(f"PUBLISH QoS {qos} needs a packet identifier 1..65535, not {packet_id}")
    if type(payload) is not bytes:
        payload = bytes(payload)
    cdef Py_ssize_t tlen
    cdef const char *t = _utf8_of(topic, &tlen)      # refuses surrogates and U+0000
    if tlen > 0xFFFF:
        raise _Malformed(f"topic of {tlen} bytes exceeds 65,535")
    check_topic_name(<const unsigned char *>t, tlen)
    cdef unsigned char first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (1 if retain else 0)
    cdef Py_ssize_t plen = PyBytes_GET_SIZE(payload)
    cdef WriteBuffer w
    if version == 5 and properties:
        w = WriteBuffer(tlen + plen + 32)
        w.write_u16(tlen)
        w.write_raw(t, tlen)
        if qos:
            w.write_u16(packet_id)
        _write_props(w, properties, PUBLISH)
        w.write_raw(PyBytes_AS_STRING(payload), plen)
        return w.finish(first)
    cdef Py_ssize_t rl = 2 + tlen + (2 if qos else 0) + (1 if version == 5 else 0) + plen
    if rl > MAX_REMAINING_LENGTH:
        raise _TooLarge(f"PUBLISH of {rl} bytes exceeds 268,435,455")
    cdef int h = varint_size(rl)
    cdef bytes out = PyBytes_FromStringAndSize(NULL, 1 + h + rl)
    cdef unsigned char *o = <unsigned char *>PyBytes_AS_STRING(out)
    o[0] = first
    cdef Py_ssize_t i = 1, r = rl
    while r >= 128:
        o[i] = (r & 0x7F) | 0x80
        r >>= 7
        i += 1
    o[i] = <unsigned char>r
    i += 1
    o[i] = <unsigned char>(tlen >> 8)
    o[i + 1] = <unsigned char>(tlen & 0xFF)
    memcpy(o + i + 2, t, tlen)
    i += 2 + tlen
    if qos:
        o[i] = <unsigned char>(packet_id >> 8)
        o[i + 1] = <unsigned char>(packet_id & 0xFF)
        i += 2
    if version == 5:
        o[i] = 0
        i += 1
    memcpy(o + i, PyBytes_AS_STRING(payload), plen)
    return out


cpdef bytes publish_with_id(bytes frame, int packet_id, bint dup=False):
    """A copy of a QoS 1/2 PUBLISH `frame` with its packet identifier (and DUP) replaced.

    The router encodes a message once per variant and gives each subscriber this copy."""
    if not 0 < packet_id <= 0xFFFF:
        raise _Protocol(f"packet identifier must be 1..65535, not {packet_id}")
    if frame is None:
        raise TypeError("publish_with_id() needs a frame, not None")
    cdef Py_ssize_t n = PyBytes_GET_SIZE(frame)
    cdef const unsigned char *f = <const unsigned char *>PyBytes_AS_STRING(frame)
    cdef Py_ssize_t i = 1
    while i < n and i < 5 and (f[i] & 0x80):
        i += 1
    i += 1
    if i + 2 > n or (f[0] >> 4) != PUBLISH or not (f[0] >> 1) & 3:
        raise _Malformed("not a QoS 1/2 PUBLISH frame")
    cdef Py_ssize_t off = i + 2 + ((<Py_ssize_t>f[i] << 8) | f[i + 1])
    if off + 2 > n:
        raise _Malformed("truncated PUBLISH frame")
    cdef bytes out = PyBytes_FromStringAndSize(<const char *>f, n)
    cdef unsigned char *o = <unsigned char *>PyBytes_AS_STRING(out)
    if dup:
        o[0] |= 0x08
    else:
        o[0] &= 0xF7
    o[off] = <unsigned char>(packet_id >> 8)
    o[off + 1] = <unsigned char>(packet_id & 0xFF)
    return out


cpdef bytes encode_ack(int packet_type, int packet_id, int reason_code=0, dict properties=None,
                       int version=4):
    """PUBACK, PUBREC, PUBREL or PUBCOMP. MQTT 5 drops the reason code when it is 0 and there
    are no properties, as section 3.4.2.1 allows."""
    cdef unsigned char first
    if packet_type == PUBACK:
        first = 0x40
    elif packet_type == PUBREC:
        first = 0x50
    elif packet_type == PUBREL:
        first = 0x62
    elif packet_type == PUBCOMP:
        first = 0x70
    else:
        raise ValueError(f"not an acknowledgement type: {packet_type}")
    if not 0 < packet_id <= 0xFFFF:
        raise _Protocol(f"packet identifier must be 1..65535, not {packet_id}")
    cdef unsigned char buf[4]
    if version < 5 or (reason_code == 0 and not properties):
        buf[0] = first
        buf[1] = 2
        buf[2] = <unsigned char>(packet_id >> 8)
        buf[3] = <unsigned char>(packet_id & 0xFF)
        return PyBytes_FromStringAndSize(<char *>buf, 4)
    cdef WriteBuffer w = WriteBuffer()
    w.write_u16(packet_id)
    w.write_u8(reason_code)
    if properties:
        _write_props(w, properties, packet_type)
    return w.finish(first)


cdef bytes _encode_subscribe(Subscribe p, int version):
    if not p.topics:
        raise _Protocol("SUBSCRIBE needs at least one topic filter [MQTT-3.8.3-3]")
    cdef WriteBuffer w = WriteBuffer()
    w.write_u16(p.packet_id)
    if version == 5:
        _write_props(w, p.properties, SUBSCRIBE)
    cdef Py_ssize_t n
    cdef const char *s
    for item in p.topics:
        if isinstance(item, str):
            topic_filter, opts = item, 0
        else:
            topic_filter, opts = item
        s = _utf8_of(topic_filter, &n)
        check_filter(<const unsigned char *>s, n)
        w.write_utf8(topic_filter)
        w.write_u8(opts)
    return w.finish(0x82)


cdef bytes _encode_unsubscribe(Unsubscribe p, int version):
    if not p.topics:
        raise _Protocol("UNSUBSCRIBE needs at least one topic filter [MQTT-3.10.3-2]")
    cdef WriteBuffer w = WriteBuffer()
    w.write_u16(p.packet_id)
    if version == 5:
        _write_props(w, p.properties, UNSUBSCRIBE)
    cdef Py_ssize_t n
    cdef const char *s
    for topic_filter in p.topics:
        s = _utf8_of(topic_filter, &n)
        check_filter(<const unsigned char *>s, n)     # as _encode_subscribe does
        w.write_utf8(topic_filter)
    return w.finish(0xA2)


cdef bytes _encode_suback(SubAck p, int version):
    cdef WriteBuffer w = WriteBuffer()
    w.write_u16(p.packet_id)
    if version == 5:
        _write_props(w, p.properties, p.type)
    elif p.type == UNSUBACK:
        return w.finish(0xB0)
    for rc in p.reason_codes:
        w.write_u8(rc)
    return w.finish(0x90 if p.type == SUBACK else 0xB0)


cdef bytes _encode_reason_only(unsigned char first, int ptype, int reason_code,
                               dict properties, int version):
    # DISCONNECT and AUTH: before MQTT 5 (DISCONNECT only) they are empty; in 5 the reason code
    # and the properties may be left off while they are 0 / empty.
    if version < 5 or (reason_code == 0 and not properties):
        return PyBytes_FromStringAndSize(<char *>&first, 1) + b"\x00"
    cdef WriteBuffer w = WriteBuffer()
    w.write_u8(reason_code)
    if properties:
        _write_props(w, properties, ptype)
    return w.finish(first)
