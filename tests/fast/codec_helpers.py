"""What the tests/fast/test_codec_*.py modules share: packet-type constants, helpers that write
frames by hand (independent of the codec under test), `reject` / `parse_one`, and the hypothesis
strategies that generate valid packets of every type per protocol version.

Spec references: "5:" is OASIS MQTT Version 5.0, "3.1.1:" is OASIS MQTT Version 3.1.1.
"""
from hypothesis import strategies as st

from cymqtt._fast.codec import (
    Auth, ConnAck, Connect, Disconnect, FrameParser, Ping, PubAck, Publish, SubAck, Subscribe,
    Unsubscribe,
)
from cymqtt._fast.errors import CodecError

try:
    from models import ref_codec
except ImportError:  # tests/ became a package
    from tests.models import ref_codec

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
WILL = 0    # the will properties inside CONNECT


# ------------------------------------------------------------------------------------------------
# Helpers to write frames by hand

def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + ref_codec.encode_varint(len(body)) + body


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def s(text) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return u16(len(raw)) + raw


def props(*items: bytes) -> bytes:
    body = b"".join(items)
    return ref_codec.encode_varint(len(body)) + body


def connect_frame(level=4, name="MQTT", flags=0x02, keepalive=60, properties=b"\x00",
                  payload=None) -> bytes:
    if payload is None:
        payload = s("client")
    body = s(name) + bytes([level, flags]) + u16(keepalive)
    if level == 5:
        body += properties
    return frame(0x10, body + payload)


PINGREQ_FRAME = b"\xc0\x00"


def reject(bad: bytes, version: int, reason: int, exc_type=CodecError, good=PINGREQ_FRAME):
    """Feed good + bad + good: only the first good packet comes back and parser.error holds the
    right error; later feeds return nothing. Returns the error."""
    parser = FrameParser(version)
    expected = FrameParser(version).feed(good)
    assert len(expected) == 1
    out = parser.feed(good + bad + good)
    assert out == expected, out
    err = parser.error
    assert isinstance(err, exc_type), repr(err)
    assert err.reason_code == reason, (hex(err.reason_code), str(err))
    assert not str(err).startswith("undecodable packet"), err     # no stray exception types
    assert parser.feed(good) == []
    assert parser.feed(b"") == []
    assert parser.buffered == 0
    return err


def parse_one(data: bytes, version: int):
    parser = FrameParser(version)
    out = parser.feed(data)
    assert parser.error is None, parser.error
    assert parser.buffered == 0
    assert len(out) == 1, out
    return out[0]


# ------------------------------------------------------------------------------------------------
# Strategies

CHAR = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
TEXT = st.text(CHAR, max_size=10)
LEVEL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00/+#$"),
                max_size=5)
TOPIC_NAMES = st.one_of(
    st.lists(LEVEL, min_size=1, max_size=5).map("/".join).filter(bool),
    st.sampled_from(["a/b", "/", "$SYS/broker/load", "sport/tennis/player1", "\u00e9/\U0002A6D4"]),
)


@st.composite
def topic_filters(draw, allow_shared=True):
    """(filter, shared) with filter valid under MQTT 4.7 / 4.8."""
    levels = draw(st.lists(st.one_of(LEVEL, st.just("+")), max_size=4))
    if draw(st.booleans()):
        levels.append("#")
    f = "/".join(levels) or "+"
    if allow_shared and draw(st.integers(0, 5)) == 0:
        name = draw(st.text(st.characters(blacklist_categories=("Cs",),
                                          blacklist_characters="\x00/+#"), min_size=1, max_size=4))
        return f"$share/{name}/{f}", True
    return f, False


BOOL = st.integers(0, 1)
U16 = st.integers(0, 0xFFFF)
U16NZ = st.integers(1, 0xFFFF)
U32 = st.integers(0, 0xFFFFFFFF)
U32NZ = st.integers(1, 0xFFFFFFFF)
BIN = st.binary(max_size=12)
USER = st.lists(st.tuples(TEXT, TEXT), min_size=1, max_size=3)
ACKS = {PUBACK, PUBREC, PUBREL, PUBCOMP}
EVERYWHERE = {CONNECT, CONNACK, PUBLISH, WILL, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK,
              DISCONNECT, AUTH} | ACKS

# MQTT 5 table 2-4, written out independently of the codec's table: id -> (values, packets).
PROPERTY_TABLE = {
    0x01: (BOOL, {PUBLISH, WILL}),                          # payload format indicator
    0x02: (U32, {PUBLISH, WILL}),                           # message expiry interval
    0x03: (TEXT, {PUBLISH, WILL}),                          # content type
    0x08: (TOPIC_NAMES, {PUBLISH, WILL}),                   # response topic
    0x09: (BIN, {PUBLISH, WILL}),                           # correlation data
    0x0B: (None, {PUBLISH, SUBSCRIBE}),                     # subscription identifier
    0x11: (U32, {CONNECT, CONNACK, DISCONNECT}),            # session expiry interval
    0x12: (TEXT, {CONNACK}),                                # assigned client identifier
    0x13: (U16, {CONNACK}),                                 # server keep alive
    0x15: (TEXT, {CONNECT, CONNACK, AUTH}),                 # authentication method
    0x16: (BIN, {CONNECT, CONNACK, AUTH}),                  # authentication data
    0x17: (BOOL, {CONNECT}),                                # request problem information
    0x18: (U32, {WILL}),                                    # will delay interval
    0x19: (BOOL, {CONNECT}),                                # request response information
    0x1A: (TEXT, {CONNACK}),                                # response information
    0x1C: (TEXT, {CONNACK, DISCONNECT}),                    # server reference
    0x1F: (TEXT, {CONNACK, SUBACK, UNSUBACK, DISCONNECT, AUTH} | ACKS),   # reason string
    0x21: (U16NZ, {CONNECT, CONNACK}),                      # receive maximum
    0x22: (U16, {CONNECT, CONNACK}),                        # topic alias maximum
    0x23: (U16NZ, {PUBLISH}),                               # topic alias
    0x24: (BOOL, {CONNACK}),                                # maximum QoS
    0x25: (BOOL, {CONNACK}),                                # retain available
    0x26: (USER, EVERYWHERE),                               # user property
    0x27: (U32NZ, {CONNECT, CONNACK}),                      # maximum packet size
    0x28: (BOOL, {CONNACK}),                                # wildcard subscription available
    0x29: (BOOL, {CONNACK}),                                # subscription identifier available
    0x2A: (BOOL, {CONNACK}),                                # shared subscription available
}


@st.composite
def properties(draw, where):
    allowed = [pid for pid, (_, w) in PROPERTY_TABLE.items() if where in w]
    chosen = draw(st.lists(st.sampled_from(allowed), unique=True, max_size=4))
    out = {}
    for pid in chosen:
        if pid == 0x0B:
            # repeatable in PUBLISH (one per matching subscription), once in SUBSCRIBE
            n = (1, 3) if where == PUBLISH else (1, 1)
            out[pid] = draw(st.lists(st.integers(1, 268_435_455), min_size=n[0], max_size=n[1]))
        else:
            out[pid] = draw(PROPERTY_TABLE[pid][0])
    return out or None


def v5_props(draw, version, where):
    return draw(properties(where)) if version == 5 else None


@st.composite
def connects(draw, version):
    will = draw(st.booleans())
    username = draw(st.none() | TEXT)
    password = draw(st.none() | BIN)
    if version < 5 and username is None:
        password = None         # [MQTT-3.1.2-22]
    return Connect(
        draw(TEXT), version=version, clean_start=draw(st.booleans()), keepalive=draw(U16),
        properties=v5_props(draw, version, CONNECT),
        will_topic=draw(TOPIC_NAMES) if will else None,
        will_payload=draw(st.binary(max_size=20)),
        will_qos=draw(st.integers(0, 2)) if will else 0,
        will_retain=draw(st.booleans()) if will else False,
        will_properties=v5_props(draw, version, WILL) if will else None,
        username=username, password=password,
    )


@st.composite
def connacks(draw, version):
    rc = draw(st.integers(0, 5) if version < 5 else st.sampled_from(
        [0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90,
         0x95, 0x97, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F]))
    return ConnAck(draw(st.booleans()), rc, v5_props(draw, version, CONNACK))


@st.composite
def publishes(draw, version, max_payload=40):
    qos = draw(st.integers(0, 2))
    props_ = v5_props(draw, version, PUBLISH)
    topic = draw(TOPIC_NAMES)
    if props_ and 0x23 in props_ and draw(st.booleans()):
        topic = ""              # a topic alias stands in for the name [MQTT-3.3.2-1]
    return Publish(topic, draw(st.binary(max_size=max_payload)), qos, draw(st.booleans()),
                   draw(st.booleans()) if qos else False,
                   draw(U16NZ) if qos else 0, props_)


@st.composite
def pubacks(draw, version):
    ptype = draw(st.sampled_from(sorted(ACKS)))
    rc = 0 if version < 5 else draw(st.sampled_from([0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91,
                                                     0x92, 0x97, 0x99]))
    return PubAck(ptype, draw(U16NZ), rc, v5_props(draw, version, ptype))


@st.composite
def subscribes(draw, version):
    topics = []
    for _ in range(draw(st.integers(1, 4))):
        f, shared = draw(topic_filters())
        opts = draw(st.integers(0, 2))
        if version == 5:
            opts |= draw(st.integers(0, 1)) << 3 | draw(st.integers(0, 2)) << 4
            if not shared:
                opts |= draw(st.integers(0, 1)) << 2    # no local [MQTT-3.8.3-4]
        topics.append((f, opts))
    return Subscribe(draw(U16NZ), topics, v5_props(draw, version, SUBSCRIBE))


@st.composite
def subacks(draw, version):
    ptype = draw(st.sampled_from([SUBACK, UNSUBACK]))
    if ptype == UNSUBACK and version < 5:
        codes = []                              # 3.1.1: UNSUBACK has no payload
    elif ptype == SUBACK:
        codes = draw(st.lists(st.sampled_from(
            [0, 1, 2, 0x80] + ([0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2]
                               if version == 5 else [])), min_size=1, max_size=5))
    else:
        codes = draw(st.lists(st.sampled_from([0, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91]),
                              min_size=1, max_size=5))
    return SubAck(ptype, draw(U16NZ), codes, v5_props(draw, version, ptype))


@st.composite
def unsubscribes(draw, version):
    topics = [draw(topic_filters())[0] for _ in range(draw(st.integers(1, 4)))]
    return Unsubscribe(draw(U16NZ), topics, v5_props(draw, version, UNSUBSCRIBE))


@st.composite
def pings(draw, version):
    return Ping(draw(st.sampled_from([PINGREQ, PINGRESP])))


@st.composite
def disconnects(draw, version):
    if version < 5:
        return Disconnect()
    return Disconnect(draw(st.sampled_from([0x00, 0x04, 0x80, 0x81, 0x82, 0x8B, 0x8E, 0x95])),
                      v5_props(draw, version, DISCONNECT))


@st.composite
def auths(draw, version):
    return Auth(draw(st.sampled_from([0x00, 0x18, 0x19])), v5_props(draw, version, AUTH))


KINDS = {
    "connect": connects, "connack": connacks, "publish": publishes, "puback": pubacks,
    "subscribe": subscribes, "suback": subacks, "unsubscribe": unsubscribes, "ping": pings,
    "disconnect": disconnects, "auth": auths,
}


def any_packet(version):
    kinds = [k for k in KINDS if k not in ("connect", "auth") or (k == "auth" and version == 5)]
    return st.one_of([KINDS[k](version) for k in kinds])
