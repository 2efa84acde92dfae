"""PINGREQ, DISCONNECT, and packets a client must never send."""
from __future__ import annotations

from typing import TYPE_CHECKING

from cymqtt.consts import (
    CONN_ACTIVE, P_SESSION_EXPIRY, RC_DISCONNECT_WITH_WILL, RC_PROTOCOL_ERROR,
)
from cymqtt.protocol.errors import ProtocolViolation, reason_name

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.protocol.client import ClientProtocol

__all__ = ["handle_disconnect", "handle_pingreq", "handle_unexpected"]

PINGRESP_FRAME = b"\xd0\x00"


def handle_pingreq(proto: ClientProtocol, pkt) -> None:
    proto.send(PINGRESP_FRAME)


def handle_disconnect(proto: ClientProtocol, pkt) -> None:
    if proto.state != CONN_ACTIVE:
        proto.close()
        return
    session = proto.session
    if pkt.properties and P_SESSION_EXPIRY in pkt.properties:
        new = pkt.properties[P_SESSION_EXPIRY]
        if session.requested_expiry == 0 and new != 0:
            raise ProtocolViolation(RC_PROTOCOL_ERROR, "DISCONNECT sets a session expiry after "
                                                       "CONNECT said 0 [MQTT-3.14.2-2]")
        cap = proto.ctx.config.max_session_expiry      # the same bound as in CONNECT
        session.expiry_interval = new if cap is None or new <= cap else cap
    # Reason 0x04: disconnect with will message; anything else discards the will.
    if pkt.reason_code != RC_DISCONNECT_WITH_WILL:
        proto.ctx.registry.discard_will(session)
    if proto.logged:
        proto.close_reason = "disconnected" if proto.version < 5 else \
            f"disconnected ({reason_name(pkt.reason_code)})"
    proto.close()


def handle_unexpected(proto: ClientProtocol, pkt) -> None:
    raise ProtocolViolation(RC_PROTOCOL_ERROR, f"a client must not send {pkt.name}")
