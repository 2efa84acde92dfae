"""A plain reference for the parts of the MQTT codec the tests pin the compiled one against.

Short, obviously correct, never optimised: variable byte integers, a PUBLISH encoder and a decoder
for a stream of PUBLISH frames (MQTT 3.1, 3.1.1 and 5.0). It follows the OASIS texts directly
(MQTT 5 sections 1.5, 2.1, 2.2.2 and 3.3; MQTT 3.1.1 sections 1.5, 2.2 and 3.3) and raises
``RefError`` for anything it cannot decode. It deliberately shares no code with cymqtt.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MAX_VARINT = 268_435_455

# MQTT 5 properties a PUBLISH may carry (table 2-4), by data type.
BYTE, U16, U32, VARINT = "byte", "u16", "u32", "varint"
UTF8, BINARY, PAIR = "utf8", "binary", "pair"
PUBLISH_PROPERTIES = {
    0x01: BYTE,     # payload format indicator
    0x02: U32,      # message expiry interval
    0x03: UTF8,     # content type
    0x08: UTF8,     # response topic
    0x09: BINARY,   # correlation data
    0x0B: VARINT,   # subscription identifier (may repeat)
    0x23: U16,      # topic alias
    0x26: PAIR,     # user property (may repeat)
}
REPEATABLE = {0x0B, 0x26}


class RefError(ValueError):
    """The bytes are not a valid frame (or the values cannot be encoded)."""


@dataclass
class RefPublish:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0
    properties: dict = field(default_factory=dict)

    def astuple(self):
        return (self.topic, self.payload, self.qos, self.retain, self.dup, self.packet_id,
                self.properties or None)


# -- variable byte integer (section 1.5.5) ---------------------------------------------------------

def encode_varint(value: int) -> bytes:
    if not 0 <= value <= MAX_VARINT:
        raise RefError(f"varint out of range: {value}")
    out = bytearray()
    while True:
        digit = value % 128
        value //= 128
        if value > 0:
            out.append(digit + 128)
        else:
            out.append(digit)
            return bytes(out)


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """(value, position after it). At most 4 bytes; the shortest encoding only."""
    value = 0
    multiplier = 1
    start = pos
    while True:
        if pos - start == 4:
            raise RefError("varint longer than 4 bytes")
        if pos >= len(data):
            raise RefError("truncated varint")
        byte = data[pos]
        pos += 1
        value += (byte % 128) * multiplier
        multiplier *= 128
        if byte < 128:
            break
    if encode_varint(value) != bytes(data[start:pos]):
        raise RefError("varint not minimally encoded")
    return value, pos


# -- helpers ---------------------------------------------------------------------------------------

def _u16(value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise RefError(f"two byte integer out of range: {value}")
    return bytes([value // 256, value % 256])


def _u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise RefError(f"four byte integer out of range: {value}")
    return value.to_bytes(4, "big")


def _utf8(text: str) -> bytes:
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RefError("not encodable as UTF-8") from exc
    if "\x00" in text:
        raise RefError("U+0000 in a string")
    return _u16(len(raw)) + raw


def _binary(data: bytes) -> bytes:
    return _u16(len(data)) + bytes(data)


def _property_value(kind: str, value) -> bytes:
    if kind == BYTE:
        if not 0 <= value <= 255:
            raise RefError("byte out of range")
        return bytes([value])
    if kind == U16:
        return _u16(value)
    if kind == U32:
        return _u32(value)
    if kind == VARINT:
        return encode_varint(value)
    if kind == UTF8:
        return _utf8(value)
    if kind == BINARY:
        return _binary(value)
    key, val = value
    return _utf8(key) + _utf8(val)


def encode_properties(properties: dict | None) -> bytes:
    """A PUBLISH property block, in the dict's order; repeatable ones given as lists."""
    body = b""
    for pid, value in (properties or {}).items():
        if pid not in PUBLISH_PROPERTIES:
            raise RefError(f"property {pid:#x} not allowed in PUBLISH")
        values = value if pid in REPEATABLE else [value]
        for item in values:
            body += encode_varint(pid) + _property_value(PUBLISH_PROPERTIES[pid], item)
    return encode_varint(len(body)) + body


# -- PUBLISH (section 3.3) -------------------------------------------------------------------------

def encode_publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                   dup: bool = False, packet_id: int = 0, properties: dict | None = None,
                   version: int = 4) -> bytes:
    if qos not in (0, 1, 2):
        raise RefError(f"QoS {qos}")
    if "+" in topic or "#" in topic:
        raise RefError("wildcard in a topic name")
    body = _utf8(topic)
    if qos > 0:
        if not 1 <= packet_id <= 0xFFFF:
            raise RefError("packet id")
        body += _u16(packet_id)
    if version == 5:
        body += encode_properties(properties)
    body += bytes(payload)
    first = 0x30 + (8 if dup else 0) + qos * 2 + (1 if retain else 0)
    return bytes([first]) + encode_varint(len(body)) + body


def _read_u16(data: bytes, pos: int) -> tuple[int, int]:
    if pos + 2 > len(data):
        raise RefError("truncated two byte integer")
    return data[pos] * 256 + data[pos + 1], pos + 2


def _read_string(data: bytes, pos: int) -> tuple[str, int]:
    length, pos = _read_u16(data, pos)
    if pos + length > len(data):
        raise RefError("truncated string")
    raw = bytes(data[pos:pos + length])
    try:
        text = raw.decode("utf-8")      # strict: refuses surrogates and overlong forms
    except UnicodeDecodeError as exc:
        raise RefError("ill-formed UTF-8") from exc
    if "\x00" in text:
        raise RefError("U+0000 in a string")
    return text, pos + length


def _read_binary(data: bytes, pos: int) -> tuple[bytes, int]:
    length, pos = _read_u16(data, pos)
    if pos + length > len(data):
        raise RefError("truncated binary data")
    return bytes(data[pos:pos + length]), pos + length


def decode_properties(data: bytes) -> dict:
    """The property block `data` (without its length) of a PUBLISH."""
    props: dict = {}
    pos = 0
    while pos < len(data):
        pid, pos = decode_varint(data, pos)
        kind = PUBLISH_PROPERTIES.get(pid)
        if kind is None:
            raise RefError(f"property {pid:#x} not allowed in PUBLISH")
        if kind == BYTE:
            if pos >= len(data):
                raise RefError("truncated property")
            value, pos = data[pos], pos + 1
        elif kind == U16:
            value, pos = _read_u16(data, pos)
        elif kind == U32:
            if pos + 4 > len(data):
                raise RefError("truncated property")
            value, pos = int.from_bytes(data[pos:pos + 4], "big"), pos + 4
        elif kind == VARINT:
            value, pos = decode_varint(data, pos)
        elif kind == UTF8:
            value, pos = _read_string(data, pos)
        elif kind == BINARY:
            value, pos = _read_binary(data, pos)
        else:
            key, pos = _read_string(data, pos)
            val, pos = _read_string(data, pos)
            value = (key, val)
        if pid == 0x01 and value > 1:
            raise RefError("payload format indicator other than 0 or 1")
        if pid == 0x0B and value == 0:
            raise RefError("subscription identifier 0")
        if pid in REPEATABLE:
            props.setdefault(pid, []).append(value)
        elif pid in props:
            raise RefError(f"property {pid:#x} twice")
        else:
            props[pid] = value
    return props


def decode_publish(first: int, body: bytes, version: int) -> RefPublish:
    qos = (first // 2) % 4
    dup = bool(first & 8)
    if qos == 3:
        raise RefError("QoS 3")
    if qos == 0 and dup:
        raise RefError("DUP with QoS 0")
    topic, pos = _read_string(body, 0)
    if "+" in topic or "#" in topic:
        raise RefError("wildcard in a topic name")
    packet_id = 0
    if qos > 0:
        packet_id, pos = _read_u16(body, pos)
        if packet_id == 0:
            raise RefError("packet id 0")
    properties: dict = {}
    if version == 5:
        length, pos = decode_varint(body, pos)
        if pos + length > len(body):
            raise RefError("property length beyond the packet")
        properties = decode_properties(body[pos:pos + length])
        pos += length
    if topic == "" and 0x23 not in properties:
        raise RefError("empty topic name")
    return RefPublish(topic, bytes(body[pos:]), qos, bool(first & 1), dup, packet_id, properties)


def decode_publish_stream(data: bytes, version: int = 4) -> tuple[list[RefPublish], bytes]:
    """Every complete PUBLISH frame in `data`, and the bytes left over after them."""
    data = bytes(data)
    out = []
    pos = 0
    while pos < len(data):
        first = data[pos]
        if first // 16 != 3:
            raise RefError(f"not a PUBLISH: {first:#x}")
        if (first >> 1) & 3 == 3:
            # Refused from the fixed header, as the parser does, not once the body is in.
            raise RefError("QoS 3")
        try:
            length, body_at = decode_varint(data, pos + 1)
        except RefError as exc:
            if str(exc) == "truncated varint":
                break
            raise
        if body_at + length > len(data):
            break
        out.append(decode_publish(first, data[body_at:body_at + length], version))
        pos = body_at + length
    return out, data[pos:]
