"""A raw WebSocket client for broker tests, written from RFC 6455 by hand (independent of the
python-websockets code the broker runs): the opening handshake as bytes, frames built and read
byte by byte, so tests can send what no library would (text frames, unmasked frames, oversized
headers, one MQTT byte per frame) and check the broker's answers exactly.

    ws = RawWebSocket(port)                       # handshake with subprotocol "mqtt", path /mqtt
    ws.send_mqtt(encode(Connect("c1"), 4))         # one masked binary frame
    ws.recv_packet()                               # the next MQTT packet, across frames
    ws.send_frame(TEXT, b"hi"); ws.recv_close()    # -> (1003, "...")
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import struct
import time

from cymqtt._fast.codec import FrameParser, encode

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"       # RFC 6455 section 1.3


def handshake_request(path: str = "/mqtt", subprotocol: str | None = "mqtt",
                      version: str = "13", upgrade: bool = True) -> tuple[bytes, bytes]:
    """The opening handshake's bytes and its Sec-WebSocket-Key."""
    key = base64.b64encode(os.urandom(16))
    lines = [f"GET {path} HTTP/1.1".encode(), b"Host: 127.0.0.1"]
    if upgrade:
        lines += [b"Upgrade: websocket", b"Connection: Upgrade",
                  b"Sec-WebSocket-Key: " + key, f"Sec-WebSocket-Version: {version}".encode()]
    if subprotocol is not None:
        lines.append(f"Sec-WebSocket-Protocol: {subprotocol}".encode())
    return b"\r\n".join(lines) + b"\r\n\r\n", key


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = True,
          length: int | None = None) -> bytes:
    """One frame; `length` overrides the announced payload length (for oversized headers)."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | opcode])
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack("!H", n)
    else:
        head += bytes([m | 127]) + struct.pack("!Q", n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class HandshakeRefused(Exception):
    def __init__(self, status: int, response: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.response = response


class RawWebSocket:
    """One client socket; `connect=False` leaves the handshake to `handshake()`; `rcvbuf`
    makes its receive buffer small (for a client whose socket fills up)."""

    def __init__(self, port: int, *, path: str = "/mqtt", subprotocol: str | None = "mqtt",
                 version: int = 4, tls: ssl.SSLContext | None = None, connect: bool = True,
                 timeout: float = 5.0, rcvbuf: int | None = None) -> None:
        sock = socket.socket()
        if rcvbuf:              # before connecting, so the TCP window is small from the start
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(timeout)
        sock.connect(("127.0.0.1", port))
        self.sock = tls.wrap_socket(sock, server_hostname="127.0.0.1") if tls else sock
        self.buf = b""
        self.parser = FrameParser(version)
        self.pending: list = []
        self.subprotocol: str | None = None
        if connect:
            self.handshake(path=path, subprotocol=subprotocol)

    # -- handshake -----------------------------------------------------------------------------

    def handshake(self, **kw) -> dict[str, str]:
        """Send the opening handshake; the response headers (lower-case names) on 101, else
        HandshakeRefused with the status and the whole response."""
        request, key = handshake_request(**kw)
        self.sock.sendall(request)
        status, headers, raw = self.read_response()
        if status != 101:
            raise HandshakeRefused(status, raw)
        want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        assert headers.get("sec-websocket-accept") == want, headers
        self.subprotocol = headers.get("sec-websocket-protocol")
        return headers

    def read_response(self) -> tuple[int, dict[str, str], bytes]:
        """An HTTP response: status, headers, and everything read up to the socket's end for
        an error (its body), or up to the blank line for 101."""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"closed during the handshake after {self.buf!r}")
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        raw = head + b"\r\n\r\n"
        if status != 101:
            raw += self.buf + self.read_to_end()
        return status, headers, raw

    def read_to_end(self, timeout: float = 5.0) -> bytes:
        """What the server sends until it closes the socket (fails if it does not)."""
        out = b""
        self.sock.settimeout(timeout)
        while True:
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return out
            if not data:
                return out
            out += data

    # -- frames --------------------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes, **kw) -> None:
        self.send(frame(opcode, payload, **kw))

    def send_mqtt(self, data: bytes) -> None:
        self.send_frame(BINARY, data)

    def send_packet(self, packet) -> None:
        self.send_mqtt(encode(packet, self.parser.version))

    def _read(self, n: int, deadline: float) -> bytes | None:
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the broker")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.buf += data
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bool, bytes] | None:
        """(opcode, fin, payload) of the next frame; None when the socket ends. Server frames
        must not be masked (RFC 6455 section 5.1)."""
        deadline = time.monotonic() + timeout
        head = self._read(2, deadline)
        if head is None:
            return None
        assert not head[1] & 0x80, "the server masked a frame"
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2, deadline))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8, deadline))[0]
        payload = self._read(n, deadline) if n else b""
        return head[0] & 0x0F, bool(head[0] & 0x80), payload

    def recv_packet(self, timeout: float = 5.0):
        """The next MQTT packet from binary frames; None when the broker closed."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            if f is None:
                return None
            opcode, _fin, payload = f
            if opcode == CLOSE:
                self.close_frame = payload
                return None
            assert opcode in (BINARY, CONT), f"frame opcode {opcode} from the broker"
            self.pending.extend(self.parser.feed(payload))
            assert self.parser.error is None, self.parser.error
        return self.pending.pop(0)

    def recv_close(self, timeout: float = 5.0) -> tuple[int, str]:
        """Skip to the close frame: its (code, reason)."""
        deadline = time.monotonic() + timeout
        while True:
            f = self.recv_frame(max(0.01, deadline - time.monotonic()))
            assert f is not None, "the socket ended without a close frame"
            if f[0] == CLOSE:
                payload = f[2]
                return struct.unpack("!H", payload[:2])[0], payload[2:].decode()

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the server closes the socket within `timeout` (frames skipped)."""
        try:
            self.read_to_end(timeout)
        except socket.timeout:
            return False
        return True

    def close(self) -> None:
        self.sock.close()
