"""The one exception a handler raises: a client broke a rule; and reason codes named for logs."""
from __future__ import annotations

from cymqtt._fast.consts import ReasonCode

__all__ = ["ProtocolViolation", "reason_name"]


class ProtocolViolation(Exception):
    """A client broke a rule; `reason_code` is the MQTT 5 code to send before closing (CONNACK
    before the session exists, DISCONNECT after), `props` any further MQTT 5 properties for that
    packet (a server reference, say)."""

    def __init__(self, reason_code: int, text: str, props: dict | None = None) -> None:
        super().__init__(text)
        self.reason_code = reason_code
        self.props = props


def reason_name(code: int) -> str:
    """"0x8D keep alive timeout": an MQTT 5 reason code, for logs."""
    if code == 0:
        return "0x00 normal disconnection"
    try:
        name = ReasonCode(code).name.lower().replace("_", " ")
    except ValueError:
        name = "unknown reason"
    return f"0x{code:02X} {name}"
