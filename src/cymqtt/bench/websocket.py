"""MQTT over WebSocket for the bench clients (`cymqtt-bench --ws`, `--wss`): python-websockets'
sans-I/O `ClientProtocol` between the socket and an unchanged MQTT client object.

    adapter = WebSocketAdapter(client, "ws://127.0.0.1:8080/mqtt")
    await loop.create_connection(lambda: adapter, host, port)         # ssl=... for wss

The adapter is the socket's asyncio protocol and the MQTT client's transport. When the socket
connects it sends the opening handshake (subprotocol `mqtt`); on 101 it calls
`client.connection_made(adapter)`, so the client's CONNECT goes out once the upgrade is done.
Each `write()` becomes one masked binary frame: the bench clients write once per loop iteration
(and once per flood batch), so framing and masking (websockets' C speed-up) cost once per
batch, not once per message. Binary frame payloads go to `client.data_received`; flow control
(pause_writing/resume_writing) and the socket's end are passed on.

What the broker sends is read by python-websockets until the handshake is done, then by the
compiled `_wire.WsUnframer` (a header walk per frame: a broker that sends one frame per MQTT
packet would otherwise make the load generator, not the broker, set the pace), and by
python-websockets again, for the rest of the connection, from the first frame that is not
binary data (a ping, a close).
"""
from __future__ import annotations

import asyncio
from typing import Any

from websockets.client import ClientProtocol
from websockets.frames import BINARY, CONT, CloseCode
from websockets.http11 import Response
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from cymqtt.bench._wire import WsUnframer

__all__ = ["WebSocketAdapter"]


class WebSocketAdapter(asyncio.Protocol):
    """One WebSocket connection carrying one MQTT client's bytes."""

    __slots__ = ("client", "ws", "transport", "_up", "_fast")

    def __init__(self, client: asyncio.Protocol, uri: str) -> None:
        self.client = client
        # The broker's frames: no size limit here (the bench trusts the broker under test).
        self.ws = ClientProtocol(parse_uri(uri), subprotocols=["mqtt"], max_size=None)
        self.transport: asyncio.Transport | None = None
        self._up = False                 # client.connection_made was called
        # Data frames' reader after the handshake: None before it, False once python-websockets
        # reads everything (a control frame came).
        self._fast: WsUnframer | None | bool = None

    # -- the socket's side ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ws.send_request(self.ws.connect())
        self._write_ws()

    def data_received(self, data: bytes) -> None:
        fast = self._fast
        if fast:
            payload, rest = fast.feed(data)
            if payload:
                self.client.data_received(payload)
            if rest is None:
                return
            self._fast = False
            data = rest
        ws = self.ws
        ws.receive_data(data)
        client = self.client
        for event in ws.events_received():
            if event.__class__ is Response:
                self._handshake_done()
            elif event.opcode is BINARY or event.opcode is CONT:
                client.data_received(event.data)
            # Pings are answered by ws; a close frame is answered by ws, then the broker
            # closes the socket.
        self._write_ws()
        if fast is None and self._up and ws.state is OPEN and not ws.reader.buffer:
            self._fast = WsUnframer()        # at a frame boundary: the compiled reader's turn

    def _handshake_done(self) -> None:
        if self.ws.handshake_exc is not None:
            self._lost(ConnectionError(f"WebSocket handshake refused: {self.ws.handshake_exc}"))
            if self.transport is not None:
                self.transport.abort()
            return
        self._up = True
        self.client.connection_made(self)   # type: ignore[arg-type]

    def pause_writing(self) -> None:
        if self._up:
            self.client.pause_writing()

    def resume_writing(self) -> None:
        if self._up:
            self.client.resume_writing()

    def eof_received(self) -> bool:
        return False                      # the broker closed: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost(exc if exc is not None or self._up else
                   ConnectionError("closed before the WebSocket handshake completed"))

    def _lost(self, exc: Exception | None) -> None:
        if self._up or exc is not None:
            self._up = False
            self.client.connection_lost(exc)
            self.client = _Gone()         # what still arrives goes nowhere

    def _write_ws(self) -> int:
        t = self.transport
        sent = 0
        for chunk in self.ws.data_to_send():
            if t is None:
                break
            if chunk:
                t.write(chunk)
                sent += len(chunk)
            else:
                t.close()                 # (the client side's EOF: the end of the stream)
        return sent

    # -- the MQTT client's transport -----------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.ws.state is OPEN and self.transport is not None:
            self.ws.send_binary(data)
            self._write_ws()

    def close(self) -> None:
        if self.ws.state is OPEN:
            self.ws.send_close(CloseCode.NORMAL_CLOSURE)
            self._write_ws()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport is None or self.transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default if self.transport is None else \
            self.transport.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self.transport is not None:
            self.transport.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return 0 if self.transport is None else self.transport.get_write_buffer_size()


class _Gone(asyncio.Protocol):
    """Where a closed adapter's late events go."""

    def data_received(self, data: bytes) -> None:
        pass
