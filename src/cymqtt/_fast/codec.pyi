# Typing stub for the compiled cymqtt._fast.codec (see codec.pxd): FrameParser (bytes ->
# packets), the packet records, and the encoders (packets -> bytes). Bad input raises (encoders,
# validators) or is reported through FrameParser.error (feed never raises) as a CodecError.
from typing import Any, ClassVar, final

from typing_extensions import Buffer, disjoint_base

from cymqtt._fast.errors import CodecError as CodecError
from cymqtt._fast.errors import MalformedPacket as MalformedPacket
from cymqtt._fast.errors import PacketTooLarge as PacketTooLarge
from cymqtt._fast.errors import ProtocolError as ProtocolError
from cymqtt._fast.errors import TopicNameInvalid as TopicNameInvalid
from cymqtt._fast.errors import UnsupportedProtocolVersion as UnsupportedProtocolVersion

PACKET_NAMES: tuple[str, ...]   # indexed by packet type: "RESERVED", "CONNECT", ... "AUTH"

_Properties = dict[int, Any]     # MQTT 5 property id -> value; None when a packet has none

def validate_topic_name(topic: str) -> None: ...
def validate_topic_filter(topic_filter: str) -> None: ...

@disjoint_base
class Packet:
    """Base of every packet record. Packets compare equal field by field (and are unhashable)."""

    _fields: ClassVar[tuple[str, ...]]
    __hash__: ClassVar[None]  # type: ignore[assignment]
    @property
    def type(self) -> int: ...
    @property
    def name(self) -> str: ...
    def encode(self, version: int = 4) -> bytes: ...
    def _values(self) -> tuple[Any, ...]: ...

@final
class Connect(Packet):
    protocol_name: str
    version: int
    clean_start: bool
    keepalive: int
    client_id: str
    properties: _Properties | None
    will_topic: str | None
    will_payload: bytes
    will_qos: int
    will_retain: bool
    will_properties: _Properties | None
    username: str | None
    password: bytes | None
    def __init__(self, client_id: str = "", *, version: int = 4, clean_start: bool = True,
                 keepalive: int = 60, properties: _Properties | None = None,
                 will_topic: str | None = None, will_payload: bytes = b"", will_qos: int = 0,
                 will_retain: bool = False, will_properties: _Properties | None = None,
                 username: str | None = None, password: bytes | None = None,
                 protocol_name: str | None = None) -> None: ...

@final
class ConnAck(Packet):
    session_present: bool
    reason_code: int
    properties: _Properties | None
    def __init__(self, session_present: bool = False, reason_code: int = 0,
                 properties: _Properties | None = None) -> None: ...

@final
class Publish(Packet):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int
    properties: _Properties | None
    def __init__(self, topic: str, payload: Buffer = b"", qos: int = 0, retain: bool = False,
                 dup: bool = False, packet_id: int = 0,
                 properties: _Properties | None = None) -> None: ...

@final
class PubAck(Packet):
    """PUBACK, PUBREC, PUBREL or PUBCOMP, told apart by `type`."""

    packet_id: int
    reason_code: int
    properties: _Properties | None
    def __init__(self, type: int = 4, packet_id: int = 1, reason_code: int = 0,
                 properties: _Properties | None = None) -> None: ...

@final
class Subscribe(Packet):
    packet_id: int
    topics: list[tuple[str, int]]   # (filter, options: qos | nl<<2 | rap<<3 | rh<<4)
    properties: _Properties | None
    def __init__(self, packet_id: int = 1, topics: list[tuple[str, int]] | None = None,
                 properties: _Properties | None = None) -> None: ...

@final
class SubAck(Packet):
    """SUBACK or UNSUBACK, told apart by `type`."""

    packet_id: int
    reason_codes: list[int]
    properties: _Properties | None
    def __init__(self, type: int = 9, packet_id: int = 1, reason_codes: list[int] | None = None,
                 properties: _Properties | None = None) -> None: ...

@final
class Unsubscribe(Packet):
    packet_id: int
    topics: list[str]
    properties: _Properties | None
    def __init__(self, packet_id: int = 1, topics: list[str] | None = None,
                 properties: _Properties | None = None) -> None: ...

@final
class Ping(Packet):
    """PINGREQ or PINGRESP, told apart by `type`."""

    def __init__(self, type: int = 12) -> None: ...

@final
class Disconnect(Packet):
    reason_code: int
    properties: _Properties | None
    def __init__(self, reason_code: int = 0, properties: _Properties | None = None) -> None: ...

@final
class Auth(Packet):
    reason_code: int
    properties: _Properties | None
    def __init__(self, reason_code: int = 0, properties: _Properties | None = None) -> None: ...

_AnyPacket = (Connect | ConnAck | Publish | PubAck | Subscribe | SubAck | Unsubscribe | Ping
             | Disconnect | Auth)

@final
class FrameParser:
    """Splits a byte stream into packets; see the class docstring in codec.pyx."""

    version: int
    max_packet_size: int
    def __init__(self, version: int = 0, max_packet_size: int = 268435460) -> None: ...
    @property
    def error(self) -> CodecError | None: ...
    @property
    def buffered(self) -> int: ...
    def feed(self, data: Buffer) -> list[_AnyPacket]: ...

def encode(packet: Packet, version: int = 4) -> bytes: ...
def encode_publish(topic: str, payload: Buffer, qos: int = 0, retain: bool = False,
                   dup: bool = False, packet_id: int = 0, properties: _Properties | None = None,
                   version: int = 4) -> bytes: ...
def publish_with_id(frame: bytes, packet_id: int, dup: bool = False) -> bytes: ...
def encode_ack(packet_type: int, packet_id: int, reason_code: int = 0,
               properties: _Properties | None = None, version: int = 4) -> bytes: ...
