"""Connection: the asyncio.Protocol adaptor for one client socket.

Bytes in -> `FrameParser.feed` -> one handler call per packet (handlers.DISPATCH). Frames out go
to `outbox`; the connection joins the broker's dirty list and one flush per loop iteration
writes each dirty connection's frames with a single `transport.write` (uvloop's queued-writes
idea, one level up). No MQTT rules live here beyond framing and closing.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from cymqtt._fast.codec import (
    ConnAck, Disconnect, FrameParser, encode, encode_ack, encode_publish,
)
from cymqtt import handlers
from cymqtt.handlers import CONN_ACTIVE, CONN_CLOSING, CONN_NEW
from cymqtt.props import P_REASON_STRING, P_TOPIC_ALIAS, PUBREL

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.broker import Broker
    from cymqtt.message import Message
    from cymqtt.session import Session, Will

log = logging.getLogger("cymqtt.connection")


# MQTT 5 CONNACK reason codes -> MQTT 3.x CONNACK return codes (3.1.1 section 3.2.2.3).
V3_CONNACK = {0x84: 0x01, 0x85: 0x02, 0x88: 0x03, 0x89: 0x03, 0x86: 0x04, 0x87: 0x05,
              0x8C: 0x05, 0x9C: 0x03, 0x9D: 0x03, 0x8A: 0x05}

_monotonic = time.monotonic

# Bytes one connection may gather in its outbox within one loop iteration before it counts as
# unwritable (its deliveries then queue or drop under the session limits).
OUTBOX_HIGH = 256 * 1024


class Connection(asyncio.Protocol):
    __slots__ = ("broker", "transport", "parser", "state", "session", "client_id", "version",
                 "keepalive", "last_rx", "created", "outbox", "writable", "paused_since",
                 "will", "max_packet_out", "aliases_in", "problem_info",
                 "clean_exit", "receive_maximum", "username", "auth_method", "auth_exchange",
                 "pending_connect", "aliases_out", "alias_out_max", "out_bytes", "tx_paused",
                 "throttled", "pending")

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.transport: asyncio.Transport | None = None
        self.parser = FrameParser(0, broker.config.max_packet_size)
        self.state = CONN_NEW
        self.session: Session | None = None
        self.client_id: str | None = None
        self.version = 4                  # until CONNECT says otherwise
        self.keepalive = 0
        self.last_rx = self.created = _monotonic()
        self.outbox: list[bytes] | None = None   # frames of this tick; None while idle
        self.writable = True
        self.paused_since = 0.0
        self.will: Will | None = None
        self.max_packet_out = 0           # client's MQTT 5 maximum packet size; 0 = no limit
        self.aliases_in: dict[int, str] | None = None
        self.problem_info = True          # MQTT 5 request problem information
        self.clean_exit = False           # DISCONNECT received: no will
        self.receive_maximum = 65535      # the client's, for what we send it
        self.username: str | None = None
        self.auth_method: str | None = None   # MQTT 5 enhanced authentication method
        self.auth_exchange = None             # the AuthExchange under way, if any
        self.pending_connect = None           # CONNECT waiting for its AUTH exchange
        self.aliases_out: dict[str, int] | None = None   # topic -> alias we assigned
        self.alias_out_max = 0                # the client's topic alias maximum
        self.out_bytes = 0                    # bytes in the outbox
        self.tx_paused = False                # the transport asked us to stop writing
        self.throttled = False                # reading paused: its subscribers are congested
        self.pending: list | None = None      # parsed packets waiting for the throttle to end

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.broker.on_connection_made(self)

    @property
    def peer(self) -> str:
        """"host:port" of the client, for logs (not stored: idle connections stay small)."""
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return f"{peer[0]}:{peer[1]}" if peer else "?"

    def data_received(self, data: bytes) -> None:
        if self.state == CONN_CLOSING:
            return
        self.last_rx = _monotonic()
        stats = self.broker.stats
        stats.bytes_received += len(data)
        if self.state == CONN_NEW and data and data[0] != 0x10 and not self.parser.buffered:
            # The first packet must be a CONNECT [MQTT-3.1.0-1]: its first byte says so; do not
            # wait for a body that garbage (HTTP, TLS, ...) announces.
            self.fail(0x82, "the first packet is not CONNECT [MQTT-3.1.0-1]")
            return
        packets = self.parser.feed(data)
        if self.pending is not None:       # still working through an earlier chunk
            self.pending.extend(packets)
            return
        self._dispatch(packets)

    def _dispatch(self, packets: list) -> None:
        active = handlers.DISPATCH
        early = handlers.DISPATCH_EARLY
        for i, pkt in enumerate(packets):
            try:
                (active if self.state == CONN_ACTIVE else early)[pkt.type](self, pkt)
            except handlers.ProtocolViolation as exc:
                self.fail(exc.reason_code, str(exc), exc.props)
            except Exception:
                log.exception("client %s (%s): error while handling %s; closing its connection",
                              self.client_id, self.peer, pkt.name)
                self.fail(0x83, "internal error")
            if self.state == CONN_CLOSING:
                return
            if self.throttled and i + 1 < len(packets):
                # Its subscribers are congested: the rest of this chunk waits too (unthrottle).
                self.pending = packets[i + 1:]
                return
        err = self.parser.error
        if err is not None:
            self.fail(err.reason_code, str(err))

    def _dispatch_pending(self) -> None:
        packets = self.pending
        self.pending = None
        if packets is None or self.state == CONN_CLOSING:
            return
        self._dispatch(packets)
        if not self.throttled and self.pending is None and self.state != CONN_CLOSING:
            self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.tx_paused = True
        if self.writable:
            self.writable = False
            self.paused_since = _monotonic()

    def resume_writing(self) -> None:
        self.tx_paused = False
        if self.out_bytes <= OUTBOX_HIGH:
            self._writable_again()

    def _writable_again(self) -> None:
        self.writable = True
        if self.session is not None:
            self.session.release(_monotonic())

    def throttle(self, seconds: float) -> None:
        """Stop reading this client's packets for a while: what it publishes is piling up in
        subscribers' queues. Congested sessions call unthrottle() once they drain; the timer
        bounds the pause so that two clients feeding each other cannot wait forever."""
        if self.throttled or self.state == CONN_CLOSING or self.transport is None:
            return
        self.throttled = True
        self.transport.pause_reading()
        self.broker.loop.call_later(seconds, self.unthrottle)

    def unthrottle(self) -> None:
        if self.throttled:
            self.throttled = False
            if self.state == CONN_CLOSING or self.transport is None:
                return
            if self.pending is not None:
                self.broker.loop.call_soon(self._dispatch_pending)
            else:
                self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CONN_CLOSING
        self.outbox = None
        self.broker.on_connection_lost(self)

    # -- output --------------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue one frame; it is written with the rest of this loop iteration's frames."""
        if self.state == CONN_CLOSING:
            return
        outbox = self.outbox
        if outbox is None:
            self.outbox = [frame]
            self.out_bytes = len(frame)
            self.broker.mark_dirty(self)
        else:
            outbox.append(frame)
            self.out_bytes += len(frame)
            if self.out_bytes > OUTBOX_HIGH and self.writable:
                # Many frames for one client in one loop iteration: treat it as unwritable now
                # (deliveries queue or drop under the session's limits) rather than let this
                # tick's outbox grow without bound before the transport can push back.
                self.writable = False
                self.paused_since = _monotonic()

    def flush(self) -> int:
        outbox = self.outbox
        if outbox is None or self.transport is None:
            return 0
        self.outbox = None      # idle connections hold no list (DESIGN rule 5)
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        full = self.out_bytes > OUTBOX_HIGH
        self.out_bytes = 0
        self.transport.write(data)
        if full and not self.tx_paused and self.state != CONN_CLOSING:
            self._writable_again()
        return len(data)

    def send_publish(self, msg: Message, qos: int, retain: bool, packet_id: int, dup: bool,
                     sub_ids: list | None, now: float) -> None:
        if self.aliases_out is None:
            frame = msg.frame(self.version, qos, retain, packet_id, dup, sub_ids, now)
        else:
            frame = self._aliased_frame(msg, qos, retain, packet_id, dup, sub_ids, now)
        if self.max_packet_out and len(frame) > self.max_packet_out:
            # Too large for this client [MQTT-3.1.2-25]: dropped as if it had been delivered.
            self.broker.stats.dropped_too_large += 1
            if packet_id and self.session is not None:
                self.session.forget(packet_id, qos, now)
            return
        self.broker.stats.messages_sent += 1
        self.send(frame)

    def _aliased_frame(self, msg: Message, qos: int, retain: bool, packet_id: int, dup: bool,
                       sub_ids: list | None, now: float) -> bytes:
        # MQTT 5 outbound topic aliases: the first PUBLISH on a topic sets an alias, later ones
        # send it with an empty topic. Aliases are never reassigned once the table is full.
        aliases = self.aliases_out
        topic = msg.topic
        alias = aliases.get(topic)
        if alias is None:
            if len(aliases) >= self.alias_out_max:
                return msg.frame(self.version, qos, retain, packet_id, dup, sub_ids, now)
            alias = len(aliases) + 1
        else:
            topic = ""
        props = msg.props_for(sub_ids, now) or {}
        props[P_TOPIC_ALIAS] = alias
        frame = encode_publish(topic, msg.payload, qos, retain, dup, packet_id, props, 5)
        if topic and not (self.max_packet_out and len(frame) > self.max_packet_out):
            # The client learns the alias only from a frame it receives: one too large for it
            # is dropped by send_publish, so its alias must not be used later [MQTT-3.3.2-7].
            aliases[topic] = alias
        return frame

    def send_pubrel(self, packet_id: int) -> None:
        self.send(encode_ack(PUBREL, packet_id, 0, None, self.version))

    # -- closing -------------------------------------------------------------------------------

    def fail(self, reason_code: int, text: str, props: dict | None = None) -> None:
        """Close because of bad input or a broken rule: tell the client why when the protocol
        has a way (CONNACK before the session exists, MQTT 5 DISCONNECT after). `props` are
        extra MQTT 5 properties for that packet (a server reference, say)."""
        if self.state == CONN_CLOSING:
            return
        log.info("client %s (%s): %s (reason 0x%02X); closing", self.client_id or "<new>",
                 self.peer, text, reason_code)
        version = self.parser.version or self.version
        if version == 5:
            props = self._with_reason(props, text)
        if self.state != CONN_ACTIVE:
            if version == 5:
                self.send(encode(ConnAck(False, reason_code, props), 5))
            elif reason_code in V3_CONNACK and (self.parser.version or reason_code == 0x84):
                # 0x84: the level was refused, so the parser has none; answer in 3.1.1 form
                # with 0x01 (unacceptable protocol level) [MQTT-3.1.2-2].
                self.send(encode(ConnAck(False, V3_CONNACK[reason_code]), 4))
        elif version == 5:
            self.send(encode(Disconnect(reason_code, props), 5))
        self.close()

    def disconnect(self, reason_code: int, text: str | None = None,
                   props: dict | None = None) -> None:
        """Close on the broker's initiative (takeover, keep alive, shutdown); MQTT 5 clients get
        a DISCONNECT with `reason_code` first. The will is published (unless clean_exit)."""
        if self.state == CONN_CLOSING:
            return
        if self.version == 5 and self.state == CONN_ACTIVE:
            self.send(encode(Disconnect(reason_code, self._with_reason(props, text)), 5))
        self.close()

    def _with_reason(self, props: dict | None, text: str | None) -> dict | None:
        # MQTT 5: a reason string goes with the reason code unless the client asked for no
        # problem information (request problem information 0).
        if not text or not self.problem_info:
            return props
        props = dict(props) if props else {}
        props[P_REASON_STRING] = text[:200]
        return props

    def close(self) -> None:
        """Flush what is queued, then close the socket; connection_lost finishes the job."""
        if self.state == CONN_CLOSING:
            return
        t = self.transport
        if t is None:
            self.state = CONN_CLOSING
            return
        try:
            self.flush()
        finally:
            self.state = CONN_CLOSING
            t.close()

    def abort(self) -> None:
        self.state = CONN_CLOSING
        self.outbox = None
        if self.transport is not None:
            self.transport.abort()

    def __repr__(self) -> str:
        return f"<Connection {self.client_id!r} {self.peer} state={self.state}>"
