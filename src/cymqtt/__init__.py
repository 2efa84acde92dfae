"""cymqtt: an MQTT 3.1 / 3.1.1 / 5.0 broker for Python with a compiled Cython core.

    from cymqtt import Broker

    async with Broker(port=0) as broker:
        ...

Importing cymqtt from a checkout whose extensions are not built fails with one ImportError line
saying how to build them; there is no pure-Python fallback.
"""
from cymqtt._version import __version__
from cymqtt import _fast  # noqa: F401  (fails loudly and clearly when not built)
from cymqtt._fast.errors import (
    CodecError, MalformedPacket, PacketTooLarge, ProtocolError, TopicNameInvalid,
    UnsupportedProtocolVersion,
)
from cymqtt.auth import Authenticator, AuthExchange, AuthStep, ScramSha256
from cymqtt.broker import Broker
from cymqtt.config import Config, ConfigError, load_config

__all__ = [
    "__version__", "Broker", "Config", "ConfigError", "load_config",
    "Authenticator", "AuthExchange", "AuthStep", "ScramSha256",
    "CodecError", "MalformedPacket", "PacketTooLarge", "ProtocolError", "TopicNameInvalid",
    "UnsupportedProtocolVersion",
]
