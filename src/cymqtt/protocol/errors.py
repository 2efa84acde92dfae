"""The one exception a handler raises: a client broke a rule."""
from __future__ import annotations

__all__ = ["ProtocolViolation"]


class ProtocolViolation(Exception):
    """A client broke a rule; `reason_code` is the MQTT 5 code to send before closing (CONNACK
    before the session exists, DISCONNECT after), `props` any further MQTT 5 properties for that
    packet (a server reference, say)."""

    def __init__(self, reason_code: int, text: str, props: dict | None = None) -> None:
        super().__init__(text)
        self.reason_code = reason_code
        self.props = props
