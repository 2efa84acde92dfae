"""WebSocketConnection: MQTT over WebSocket (RFC 6455; MQTT 3.1.1 and 5.0, section 6), the same
`ClientProtocol` behind python-websockets' sans-I/O `ServerProtocol`.

    socket bytes -> ServerProtocol (HTTP upgrade, frames, masks, ping/pong, close handshake)
                 -> binary frame payloads, as one byte stream -> ClientProtocol
    ClientProtocol.data_to_send() -> one binary frame per flush -> socket

It is a `net.Connection` in every other respect: the listener's accept loop (net/accept.py,
TLS for `wss`), the shared read buffer and its READ_SIZE bound, the coalesced flush once per
loop iteration (a tick's MQTT frames travel in one WebSocket frame), pause/resume reading for
back-pressure, the transport's flow control, max_connections, identity from client
certificates. So routing, sessions, ACLs, limits, keep alive and connection logging are the
ones TCP clients get.

What a client must do, and what it is told otherwise:
- The handshake offers the subprotocol `mqtt` (or `mqttv3.1`, what MQTT 3.1 clients send)
  [MQTT-6.0.0-3]; the broker selects it [MQTT-6.0.0-4]. Any request path is accepted (`/mqtt`
  is what MQTT.js and paho use). A request without one of them, or not an upgrade, or of another
  WebSocket version gets an HTTP error (400, 426, ...) with the reason, then the socket closes.
- MQTT travels in binary frames [MQTT-6.0.0-1], split across frames or packed into them in any
  way [MQTT-6.0.0-2]. A text frame: close 1003 (unsupported data).
- Frames are masked (RFC 6455 section 5.1): an unmasked one is close 1002 (protocol error).
- A frame's payload may be `max_packet_size + FRAME_SLACK` bytes: one packet of the largest
  size the broker takes, plus small ones packed with it. A larger frame: close 1009 (message
  too big) as soon as its header announces it, before the payload is buffered. A message may
  have any number of fragments: MQTT over WebSocket is a byte stream, not messages.
- Pings are answered (pong); they are not MQTT activity, so keep alive still needs PINGREQ.
- The broker closes with close 1000 after its last MQTT packet (a refused CONNACK, a
  DISCONNECT); a client's close frame is answered, and ends the session as a lost connection
  would (its will is published unless it sent DISCONNECT first).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from websockets.frames import BINARY, CONT, TEXT, CloseCode
from websockets.http11 import Request
from websockets.protocol import CONNECTING, OPEN
from websockets.server import ServerProtocol

from cymqtt.consts import CONN_CLOSING
from cymqtt.net.connection import LINGER, Connection

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.context import Context
    from cymqtt.net.connection import Endpoint

__all__ = ["FRAME_SLACK", "SUBPROTOCOLS", "WebSocketConnection", "max_frame_size"]

log = logging.getLogger("cymqtt.net")

# In the server's order of preference [MQTT-6.0.0-4]: `mqttv3.1` is what MQTT 3.1 clients
# (and some old libraries for every version) offer.
SUBPROTOCOLS = ("mqtt", "mqttv3.1")
# Bytes a frame may carry beyond max_packet_size: the small packets a client packs with a
# packet of the largest size.
FRAME_SLACK = 64 * 1024


def max_frame_size(max_packet_size: int) -> int:
    """The largest frame payload a client may send (a security limit: a frame is buffered whole
    before its payload is unmasked and parsed)."""
    return max_packet_size + FRAME_SLACK


class _QuietLogger(logging.LoggerAdapter):
    # python-websockets logs "connection open"/"connection closed" at INFO for each connection;
    # the broker's connection messages say that already, so those lines go to DEBUG.
    def info(self, msg, *args, **kwargs) -> None:
        self.debug(msg, *args, **kwargs)


# What the first byte of an HTTP request can be: a method's first letter (RFC 9110 uses
# capitals; websockets then refuses any but GET).
_METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")

_WS_LOG = _QuietLogger(logging.getLogger("cymqtt.net.websocket"), {})


class WebSocketConnection(Connection):
    """One accepted socket of a `websockets` listener (TLS for `wss`)."""

    __slots__ = ("ws",)

    def __init__(self, ctx: Context, endpoint: Endpoint) -> None:
        super().__init__(ctx, endpoint)
        # No limit on a message (its fragments are a byte stream), one on each frame.
        self.ws = ServerProtocol(subprotocols=list(SUBPROTOCOLS), logger=_WS_LOG,
                                 max_size=(None, max_frame_size(ctx.config.max_packet_size)))

    # -- input ---------------------------------------------------------------------------------

    def buffer_updated(self, nbytes: int) -> None:
        ws = self.ws
        data = self._endpoint.read_buffer[:nbytes]
        if ws.state is CONNECTING and not ws.reader.buffer and data[0] not in _METHOD_START:
            self._not_http(data[0])
            return
        # (Copied by the StreamReader: the read buffer is shared by every connection.)
        ws.receive_data(data)
        protocol = self.protocol
        for event in ws.events_received():
            if event.__class__ is Request:
                self._handshake(event)
            elif event.opcode is BINARY or event.opcode is CONT:
                protocol.receive_data(event.data)
            elif event.opcode is TEXT:
                ws.fail(CloseCode.UNSUPPORTED_DATA, "MQTT over WebSocket takes binary frames "
                                                    "only [MQTT-6.0.0-1]")
                break
            # Ping (answered by ws), pong, close (answered by ws; checked below): nothing to do.
        if ws.eof_sent and protocol.state != CONN_CLOSING:
            self._ended_by_websocket()
        self._write_ws()

    def _not_http(self, first: int) -> None:
        # Not an HTTP request line (which starts with a method in capitals): MQTT or TLS on a
        # WebSocket port, say. Closed at once rather than after connect_timeout.
        log.info("%s sent no WebSocket handshake (first byte 0x%02X; an MQTT or TLS client on "
                 "a WebSocket listener?); closing", self.peer, first)
        self.protocol.close()

    def _handshake(self, request: Request) -> None:
        ws = self.ws
        response = ws.accept(request)
        ws.send_response(response)
        if response.status_code != 101:
            log.info("WebSocket handshake from %s refused (HTTP %d %s): %s", self.peer,
                     response.status_code, response.reason_phrase, ws.handshake_exc)

    def _ended_by_websocket(self) -> None:
        # The WebSocket side is over (a refused handshake, a bad frame, the client's close
        # frame): the MQTT side closes as for a socket that ends.
        ws = self.ws
        protocol = self.protocol
        if ws.state is CONNECTING:
            if ws.handshake_exc is not None and not ws.accept_called:
                log.info("WebSocket handshake from %s refused: %s", self.peer,
                         ws.handshake_exc)
        elif protocol.close_reason is None:
            if ws.close_rcvd is not None and ws.close_rcvd_then_sent:
                protocol.close_reason = (f"closed its connection (WebSocket close "
                                         f"{ws.close_rcvd.code})")
            elif ws.close_sent is not None:
                close = ws.close_sent
                protocol.close_reason = (f"disconnected: WebSocket close {close.code} "
                                         f"({close.reason})")
        protocol.close()

    # -- output --------------------------------------------------------------------------------

    def flush(self) -> int:
        t = self.transport
        if t is None:
            return 0
        data = self.protocol.data_to_send()
        if not data or self.ws.state is not OPEN:
            return 0                # before the handshake, or after a close frame: not sent
        self.ws.send_binary(data)
        return self._write_ws()

    def _write_ws(self) -> int:
        # What ServerProtocol has for the socket: the handshake response, frames, and b""
        # for "half-close now".
        t = self.transport
        sent = 0
        for chunk in self.ws.data_to_send():
            if t is None:
                break
            if chunk:
                t.write(chunk)
                sent += len(chunk)
            else:
                self._end_tcp()
        return sent

    def _end_tcp(self) -> None:
        # As net.Connection.close: half-close and read (discarding) until the client closes,
        # or LINGER seconds, so that it reads what was written last.
        t = self.transport
        if t is None or t.is_closing():
            return
        if not t.can_write_eof():       # TLS
            t.close()
            return
        try:
            t.write_eof()
        except OSError:
            t.close()
            return
        t.resume_reading()
        self._endpoint.flusher.loop.call_later(LINGER, t.close)

    def close(self) -> None:
        t = self.transport
        if t is None:
            return
        self._release()
        ws = self.ws
        if ws.state is OPEN:
            self._endpoint.flusher.metrics.bytes_sent += self.flush()
            ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._write_ws()
            t.resume_reading()          # (a no-op unless input was held)
            # The client answers with its close frame, then ServerProtocol half-closes; if it
            # does not, the socket is closed after LINGER seconds.
            self._endpoint.flusher.loop.call_later(LINGER, t.close)
        elif ws.state is CONNECTING and not ws.eof_sent:
            t.close()                   # no handshake yet (connect timeout, shutdown)
        # Otherwise the WebSocket closing handshake is under way already (_write_ws).

    def __repr__(self) -> str:
        return f"<WebSocketConnection {self.protocol.client_id!r} {self.peer}>"
