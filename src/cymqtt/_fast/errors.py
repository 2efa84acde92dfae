"""Codec errors: the only exceptions the compiled core raises for bad input.

Pure Python so every layer (and every test) can import them without the build. Each error carries
the MQTT 5 reason code the broker sends back (in CONNACK before a session exists, in DISCONNECT
after), and its text names the rule it breaks, citing the normative statement where there is one.
``CodecError`` subclasses ``ValueError``, so encoders given impossible values raise it too.
"""

__all__ = [
    "CodecError",
    "MalformedPacket",
    "ProtocolError",
    "PacketTooLarge",
    "TopicNameInvalid",
    "UnsupportedProtocolVersion",
]


class CodecError(ValueError):
    """Bad MQTT bytes or values. ``reason_code`` is the MQTT 5 reason code to send back."""

    reason_code: int = 0x81

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        super().__init__(message)
        if reason_code is not None:
            self.reason_code = reason_code

    def __reduce__(self):
        return (type(self), (str(self), self.reason_code))


class MalformedPacket(CodecError):
    """0x81: the bytes cannot be parsed according to the specification."""

    reason_code = 0x81


class ProtocolError(CodecError):
    """0x82: the bytes parse, but break a rule of the protocol."""

    reason_code = 0x82


class UnsupportedProtocolVersion(CodecError):
    """0x84: CONNECT names a protocol or level this broker does not speak."""

    reason_code = 0x84


class TopicNameInvalid(CodecError):
    """0x90: a PUBLISH or will topic name that is well-formed UTF-8 but not a valid topic name."""

    reason_code = 0x90


class PacketTooLarge(CodecError):
    """0x95: the fixed header announces a packet above the maximum packet size."""

    reason_code = 0x95
