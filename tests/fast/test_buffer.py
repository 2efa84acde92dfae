"""cymqtt._fast.buffer: the MQTT wire primitives (MQTT 5 section 1.5, MQTT 3.1.1 section 1.5).

Reader (the Cursor readers behind a Python face), WriteBuffer's py_* writers and encode_varint,
each checked against hand-written bytes and against tests/models/ref_codec.py.
"""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cymqtt._fast.buffer import Reader, WriteBuffer, encode_varint
from cymqtt._fast.errors import CodecError, MalformedPacket

try:
    from models import ref_codec
except ImportError:  # tests/ became a package
    from tests.models import ref_codec

# MQTT 5 section 1.5.5, table 1-1 (MQTT 3.1.1 table 2.4): the edges of each encoded length.
VARINT_TABLE = [
    (0, b"\x00"),
    (127, b"\x7f"),
    (128, b"\x80\x01"),
    (16_383, b"\xff\x7f"),
    (16_384, b"\x80\x80\x01"),
    (2_097_151, b"\xff\xff\x7f"),
    (2_097_152, b"\x80\x80\x80\x01"),
    (268_435_455, b"\xff\xff\xff\x7f"),
]


def malformed(excinfo) -> int:
    assert isinstance(excinfo.value, MalformedPacket), excinfo.value
    return excinfo.value.reason_code


# -- variable byte integers ------------------------------------------------------------------------

@pytest.mark.parametrize("value,wire", VARINT_TABLE)
def test_varint_table_1_1(value, wire):
    """Section 1.5.5: the boundary values encode to the bytes of the table, and back."""
    assert encode_varint(value) == wire
    w = WriteBuffer()
    w.py_write_varint(value)
    assert w.py_getvalue() == wire
    r = Reader(wire)
    assert r.read_varint() == value
    assert r.remaining == 0 and r.offset == len(wire)
    assert ref_codec.encode_varint(value) == wire
    assert ref_codec.decode_varint(wire) == (value, len(wire))


@given(st.integers(0, 268_435_455))
def test_varint_matches_reference(value):
    wire = encode_varint(value)
    assert wire == ref_codec.encode_varint(value)
    r = Reader(wire + b"\xaa")
    assert r.read_varint() == value
    assert r.remaining == 1


@pytest.mark.parametrize("value", [-1, 268_435_456, 2**31])
def test_varint_out_of_range_is_refused(value):
    with pytest.raises(MalformedPacket):
        encode_varint(value)
    with pytest.raises(MalformedPacket):
        WriteBuffer().py_write_varint(value)


@pytest.mark.parametrize("wire", [
    b"\x80\x80\x80\x80\x01",    # 5 bytes [MQTT-1.5.5-1]
    b"\xff\xff\xff\xff\x7f",
    b"\x80\x80\x80\x80\x00",
    b"\xff\xff\xff\xff",        # a 4th byte that still continues
])
def test_varint_longer_than_four_bytes_is_malformed(wire):
    with pytest.raises(CodecError) as ei:
        Reader(wire).read_varint()
    assert malformed(ei) == 0x81


@pytest.mark.parametrize("wire", [
    b"\x80\x00",                # 0 in two bytes
    b"\xff\x00",                # 127 in two bytes
    b"\x80\x80\x00",            # 0 in three bytes
    b"\x80\x80\x80\x00",        # 0 in four bytes
    b"\x81\x80\x00",            # 1 in three bytes
])
def test_varint_non_minimal_is_malformed(wire):
    """MQTT 5 section 1.5.5: the encoding must use the minimum number of bytes."""
    with pytest.raises(CodecError) as ei:
        Reader(wire).read_varint()
    assert malformed(ei) == 0x81
    with pytest.raises(ref_codec.RefError):
        ref_codec.decode_varint(wire)


@pytest.mark.parametrize("wire", [b"", b"\x80", b"\xff\xff", b"\x80\x80\x80"])
def test_varint_truncated_is_malformed(wire):
    with pytest.raises(MalformedPacket):
        Reader(wire).read_varint()


# -- integers --------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, 0xFF, 0x100, 0x1234, 0xFFFF])
def test_u16(value):
    w = WriteBuffer()
    w.py_write_u16(value)
    assert w.py_getvalue() == value.to_bytes(2, "big")
    assert Reader(value.to_bytes(2, "big")).read_u16() == value


@pytest.mark.parametrize("value", [0, 1, 0xFFFF, 0x10000, 0x12345678, 0xFFFFFFFF])
def test_u32(value):
    w = WriteBuffer()
    w.py_write_u32(value)
    assert w.py_getvalue() == value.to_bytes(4, "big")
    assert Reader(value.to_bytes(4, "big")).read_u32() == value


def test_integers_are_big_endian():
    r = Reader(b"\x01\x02\x03\x04\x05\x06\x07")
    assert r.read_u8() == 1
    assert r.read_u16() == 0x0203
    assert r.read_u32() == 0x04050607
    assert r.remaining == 0


@pytest.mark.parametrize("method,value", [
    ("py_write_u16", -1), ("py_write_u16", 0x10000),
    ("py_write_u32", -1), ("py_write_u32", 0x1_0000_0000),
    ("py_write_u8", -1), ("py_write_u8", 0x100),
])
def test_integer_out_of_range_is_refused(method, value):
    w = WriteBuffer()
    with pytest.raises(CodecError):
        getattr(w, method)(value)
    assert w.py_getvalue() == b""


@pytest.mark.parametrize("wire,method", [
    (b"", "read_u8"), (b"\x01", "read_u16"), (b"", "read_u16"),
    (b"\x01\x02\x03", "read_u32"),
])
def test_integer_truncated_is_malformed(wire, method):
    r = Reader(wire)
    with pytest.raises(CodecError) as ei:
        getattr(r, method)()
    assert malformed(ei) == 0x81


def test_reader_offset():
    r = Reader(b"\x00\x01\x02", 1)
    assert r.offset == 1 and r.remaining == 2
    assert r.read_u8() == 1
    with pytest.raises(ValueError):
        Reader(b"\x00", 2)
    with pytest.raises(ValueError):
        Reader(b"\x00", -1)


def test_reader_accepts_any_buffer():
    for data in (b"\x00\x02hi", bytearray(b"\x00\x02hi"), memoryview(b"xx\x00\x02hi")[2:]):
        assert Reader(data).read_utf8() == "hi"


# -- UTF-8 strings (section 1.5.4) -----------------------------------------------------------------

def test_utf8_spec_example():
    """MQTT 5 section 1.5.4 figure 1-1 / 3.1.1 figure 1.3: "A\\U0002A6D4" is
    00 05 41 F0 AA 9B 94."""
    wire = b"\x00\x05\x41\xf0\xaa\x9b\x94"
    assert Reader(wire).read_utf8() == "A\U0002A6D4"
    w = WriteBuffer()
    w.py_write_utf8("A\U0002A6D4")
    assert w.py_getvalue() == wire


@given(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")))
def test_utf8_round_trip(text):
    w = WriteBuffer()
    w.py_write_utf8(text)
    wire = w.py_getvalue()
    raw = text.encode()
    assert wire == len(raw).to_bytes(2, "big") + raw
    r = Reader(wire)
    assert r.read_utf8() == text
    assert r.remaining == 0


@pytest.mark.parametrize("raw,why", [
    (b"a\x00b", "U+0000 [MQTT-1.5.4-2]"),
    (b"\x00", "U+0000 alone"),
    (b"\xed\xa0\x80", "lone high surrogate U+D800 [MQTT-1.5.4-1]"),
    (b"\xed\xbf\xbf", "lone low surrogate U+DFFF"),
    (b"\xed\xa0\xbd\xed\xb8\x80", "a surrogate pair written as CESU-8"),
    (b"\xc0\xaf", "overlong '/'"),
    (b"\xc0\x80", "overlong U+0000 (modified UTF-8)"),
    (b"\xe0\x80\xaf", "three byte overlong"),
    (b"\xf4\x90\x80\x80", "above U+10FFFF"),
    (b"\xff", "not UTF-8 at all"),
    (b"\xe2\x82", "truncated sequence"),
    (b"\x80", "stray continuation byte"),
])
def test_utf8_ill_formed_is_malformed(raw, why):
    wire = len(raw).to_bytes(2, "big") + raw
    with pytest.raises(CodecError) as ei:
        Reader(wire).read_utf8()
    assert malformed(ei) == 0x81, why
    with pytest.raises(ref_codec.RefError):
        ref_codec._read_string(wire, 0)


@pytest.mark.parametrize("text", ["a\x00b", "\x00", "\ud800", "x\udfff"])
def test_write_utf8_refuses_what_the_wire_forbids(text):
    w = WriteBuffer()
    with pytest.raises(MalformedPacket):
        w.py_write_utf8(text)


def test_write_utf8_too_long():
    w = WriteBuffer()
    w.py_write_utf8("x" * 65_535)
    assert len(w.py_getvalue()) == 65_537
    with pytest.raises(MalformedPacket):
        WriteBuffer().py_write_utf8("x" * 65_536)
    with pytest.raises(MalformedPacket):
        WriteBuffer().py_write_utf8("\u00e9" * 32_768)     # 65,536 bytes in 32,768 characters


@pytest.mark.parametrize("wire", [b"", b"\x00", b"\x00\x03ab", b"\x00\x01",
                                  b"\xff\xff" + b"x" * 100])
def test_utf8_truncated_is_malformed(wire):
    with pytest.raises(CodecError) as ei:
        Reader(wire).read_utf8()
    assert malformed(ei) == 0x81


def test_utf8_empty_and_consecutive():
    r = Reader(b"\x00\x00\x00\x01a\x00\x02bc")
    assert [r.read_utf8(), r.read_utf8(), r.read_utf8()] == ["", "a", "bc"]
    assert r.remaining == 0


# -- binary data and string pairs ------------------------------------------------------------------

@given(st.binary(max_size=300))
def test_binary_round_trip(data):
    w = WriteBuffer()
    w.py_write_binary(data)
    wire = w.py_getvalue()
    assert wire == len(data).to_bytes(2, "big") + data
    assert Reader(wire).read_binary() == data


def test_binary_takes_bytes_like_and_any_content():
    w = WriteBuffer()
    w.py_write_binary(bytearray(b"\x00\xff\xed\xa0\x80"))
    w.py_write_binary(memoryview(b""))
    assert w.py_getvalue() == b"\x00\x05\x00\xff\xed\xa0\x80\x00\x00"
    r = Reader(w.py_getvalue())
    assert r.read_binary() == b"\x00\xff\xed\xa0\x80"
    assert r.read_binary() == b""


def test_binary_limits():
    with pytest.raises(MalformedPacket):
        WriteBuffer().py_write_binary(b"x" * 65_536)
    for wire in (b"\x00\x05abcd", b"\x00", b""):
        with pytest.raises(CodecError) as ei:
            Reader(wire).read_binary()
        assert malformed(ei) == 0x81


def test_string_pair():
    wire = b"\x00\x03key\x00\x05value"
    w = WriteBuffer()
    w.py_write_pair(("key", "value"))
    assert w.py_getvalue() == wire
    assert Reader(wire).read_pair() == ("key", "value")


@pytest.mark.parametrize("wire", [
    b"\x00\x03key",                       # no value
    b"\x00\x03key\x00\x05val",            # value truncated
    b"\x00\x03k\x00y\x00\x00",            # U+0000 in the key
    b"\x00\x01k\x00\x03\xed\xa0\x80",     # surrogate in the value
])
def test_string_pair_malformed(wire):
    with pytest.raises(CodecError) as ei:
        Reader(wire).read_pair()
    assert malformed(ei) == 0x81


# -- WriteBuffer framing ---------------------------------------------------------------------------

@pytest.mark.parametrize("body_len", [0, 1, 127, 128, 16_383, 16_384, 70_000])
def test_finish_puts_the_fixed_header_in_front(body_len):
    w = WriteBuffer(4)       # small on purpose: the buffer must grow
    for i in range(body_len):
        w.py_write_u8(i & 0xFF)
    body = bytes(i & 0xFF for i in range(body_len))
    assert w.py_getvalue() == body
    assert w.py_finish(0x30) == b"\x30" + ref_codec.encode_varint(body_len) + body


def test_growth_keeps_earlier_bytes():
    w = WriteBuffer()
    chunks = [bytes([i]) * (i * 37 % 500) for i in range(60)]
    for c in chunks:
        w.py_write_binary(c)
    expected = b"".join(len(c).to_bytes(2, "big") + c for c in chunks)
    assert w.py_getvalue() == expected
