"""ClientProtocol: one client connection's MQTT, sans I/O (python-websockets' Protocol model).

The I/O side (net.connection for TCP; a WebSocket or TLS listener drives the same object) owns
the socket and hands this object what it reads and what happens to the socket:

    proto = ClientProtocol(ctx, io)       # io: the `ClientIO` below
    proto.receive_data(data)              # bytes in: parsed, each packet handled in order
    data = proto.data_to_send()           # after io.wake(): the frames to write, joined
    proto.pause_writing() / proto.resume_writing()   # the transport's flow control
    proto.connection_lost()               # the socket is gone: the registry detaches

Frames go to an outbox that is written once per loop iteration: the first frame of a tick
calls `io.wake()`, and the I/O side calls `data_to_send()` in its flush. Closing is an intent:
`io.close()` (write what is queued, then close) or `io.abort()`; `connection_lost()` follows.

Packets are handled by the functions of connect.py, publish.py, subscribe.py and control.py,
chosen by packet type from two tables (before and after CONNACK), so no handler checks the
state itself. A handler that finds a rule broken raises `ProtocolViolation`; this object sends
the reason and closes. No handler touches a socket, a loop or a clock other than `ctx.clock`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Protocol

from cymqtt._fast.codec import ConnAck, Disconnect, FrameParser, encode, encode_ack, encode_publish
from cymqtt.consts import (
    AUTH, CONN_ACTIVE, CONN_CLOSING, CONN_NEW, CONNECT, DISCONNECT, P_REASON_STRING,
    P_TOPIC_ALIAS, PINGREQ, PUBACK, PUBCOMP, PUBLISH, PUBREC, PUBREL, RC_BAD_USER_NAME_OR_PASSWORD,
    RC_BAD_AUTHENTICATION_METHOD, RC_BANNED, RC_CLIENT_IDENTIFIER_NOT_VALID,
    RC_IMPLEMENTATION_SPECIFIC_ERROR, RC_NOT_AUTHORIZED, RC_PROTOCOL_ERROR, RC_QUOTA_EXCEEDED,
    RC_SERVER_BUSY,
    RC_SERVER_MOVED, RC_SERVER_UNAVAILABLE, RC_UNSUPPORTED_PROTOCOL_VERSION,
    RC_USE_ANOTHER_SERVER, SUBSCRIBE, UNSUBSCRIBE,
)
from cymqtt.protocol import connect, control, publish, subscribe
from cymqtt.protocol.connect import CONN_LOG
from cymqtt.protocol.errors import ProtocolViolation, reason_name
from cymqtt.session import Client

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.context import Context
    from cymqtt.message import Message
    from cymqtt.session import Session

__all__ = ["ClientIO", "ClientProtocol"]

log = logging.getLogger("cymqtt.protocol")

# MQTT 5 CONNACK reason codes -> MQTT 3.x CONNACK return codes (3.1.1 section 3.2.2.3).
V3_CONNACK = {
    RC_UNSUPPORTED_PROTOCOL_VERSION: 0x01,
    RC_CLIENT_IDENTIFIER_NOT_VALID: 0x02,
    RC_SERVER_UNAVAILABLE: 0x03,
    RC_SERVER_BUSY: 0x03,
    # 0x05 (not authorized), not 0x04: what mosquitto answers, and what clients written
    # against it check for a wrong password.
    RC_BAD_USER_NAME_OR_PASSWORD: 0x05,
    RC_NOT_AUTHORIZED: 0x05,
    RC_BAD_AUTHENTICATION_METHOD: 0x05,
    RC_USE_ANOTHER_SERVER: 0x03,
    RC_SERVER_MOVED: 0x03,
    RC_BANNED: 0x05,
    RC_QUOTA_EXCEEDED: 0x03,
}

# Bytes one connection may gather in its outbox within one loop iteration before it counts as
# unwritable (its publishers are then held, or its deliveries queue: Session.deliver).
OUTBOX_HIGH = 256 * 1024
# Packets handled per connection per loop iteration; the rest of what was read waits for the
# next one (reading paused meanwhile), so one flooding client cannot starve the others' reads,
# pings and acks, and no iteration grows long enough to hurt everyone's latency.
READ_BUDGET = 64


class ClientIO(Protocol):
    """What a ClientProtocol needs from the I/O side of its connection."""

    @property
    def peer(self) -> str:
        """"host:port" of the client, for logs."""

    @property
    def identity_username(self) -> str | None:
        """On a listener whose certificates name their users: the client certificate's CN
        ("" without one); None elsewhere."""

    def admit(self) -> str | None:
        """Take a client slot under the listener's and the broker's max_connections, once per
        CONNECT; the reason when they are full."""

    def wake(self) -> None:
        """Frames are waiting: call `data_to_send()` and write them within this loop tick."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        """Write what `data_to_send()` holds, then close the socket."""

    def abort(self) -> None:
        """Close the socket now, dropping what is queued."""

    def call_soon(self, callback: Callable[[], None]) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> None: ...


# Handlers by packet type: DISPATCH once CONNACK is sent, DISPATCH_EARLY before that (CONNECT,
# the AUTH exchange, and DISCONNECT only).
_early = [connect.handle_before_connect] * 16
_early[CONNECT] = connect.handle_connect
_early[AUTH] = connect.handle_auth
_early[DISCONNECT] = control.handle_disconnect
DISPATCH_EARLY = tuple(_early)

_active = [control.handle_unexpected] * 16
_active[CONNECT] = connect.handle_connect
_active[PUBLISH] = publish.handle_publish
_active[PUBACK] = publish.handle_puback
_active[PUBREC] = publish.handle_ack
_active[PUBREL] = publish.handle_ack
_active[PUBCOMP] = publish.handle_ack
_active[SUBSCRIBE] = subscribe.handle_subscribe
_active[UNSUBSCRIBE] = subscribe.handle_unsubscribe
_active[PINGREQ] = control.handle_pingreq
_active[DISCONNECT] = control.handle_disconnect
_active[AUTH] = connect.handle_auth
DISPATCH = tuple(_active)
del _early, _active


class ClientProtocol(Client):
    """The MQTT state of one connection. Attributes are read by the handlers, the session it
    is attached to (`session.Client`) and the sweep (timers.py); only this module and the
    handlers write them."""

    __slots__ = (
        "ctx", "io", "parser", "state", "session", "client_id", "version", "keepalive",
        "last_rx", "created", "outbox", "out_bytes", "tx_paused",
        "max_packet_out", "aliases_in", "aliases_out", "alias_out_max", "problem_info",
        "username", "auth",
        "throttled", "throttles", "waiting", "pending", "received", "sent", "rate",
        "logged", "close_reason",
    )

    def __init__(self, ctx: Context, io: ClientIO) -> None:
        Client.__init__(self)   # writable, paused_since, receive_maximum
        self.ctx = ctx
        self.io = io
        self.parser = FrameParser(0, ctx.config.max_packet_size)
        self.state = CONN_NEW
        self.session: Session | None = None
        self.client_id: str | None = None
        self.version = 4                  # until CONNECT says otherwise
        self.keepalive = 0
        self.last_rx = self.created = ctx.clock()
        self.outbox: list[bytes] | None = None   # frames of this tick; None while idle
        self.out_bytes = 0                # bytes in the outbox
        self.tx_paused = False            # the transport asked us to stop writing
        self.max_packet_out = 0           # client's MQTT 5 maximum packet size; 0 = no limit
        self.aliases_in: dict[int, str] | None = None     # alias -> topic the client set
        self.aliases_out: dict[str, int] | None = None    # topic -> alias we assigned
        self.alias_out_max = 0            # the client's topic alias maximum
        self.problem_info = True          # MQTT 5 request problem information
        self.username: str | None = None
        self.auth = None                      # connect.EnhancedAuth, with an auth method
        self.throttled = False                # its subscribers are congested: hold its input
        self.throttles = 0                    # times it was held (names each pause's timer)
        self.waiting = False                  # a decision (an authenticator's) is pending
        self.pending: list | None = None      # parsed packets held while throttled or waiting
        self.received = 0                     # PUBLISH packets from this client
        self.sent = 0                         # PUBLISH packets to this client
        self.rate = None                      # publish.TokenBucket under max_publish_rate
        # Connection messages: "New client connected" was logged (so its end is logged too),
        # and why the connection ends ("disconnected: keep alive timeout"), once known.
        self.logged = False
        self.close_reason: str | None = None

    @property
    def peer(self) -> str:
        return self.io.peer

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the socket. Every complete packet in them is handled before this returns,
        unless input is held (a throttle, a pending decision): then they wait, in order."""
        if self.state == CONN_CLOSING:
            return
        ctx = self.ctx
        ctx.metrics.bytes_received += len(data)
        if self.state == CONN_NEW and self.pending is None and data and data[0] != 0x10 \
                and not self.parser.buffered:
            # The first packet must be a CONNECT [MQTT-3.1.0-1]: its first byte says so; do not
            # wait for a body that garbage (HTTP, TLS, ...) announces.
            self.fail(RC_PROTOCOL_ERROR, "the first packet is not CONNECT [MQTT-3.1.0-1]")
            return
        packets = self.parser.feed(data)
        if packets:
            # Keep alive counts complete packets: a client that trickles the bytes of one
            # packet is as silent as one that sends nothing [MQTT-3.1.2-24].
            self.last_rx = ctx.clock()
        if self.pending is not None:       # still working through an earlier chunk
            self.pending.extend(packets)
            return
        self._dispatch(packets)

    def _dispatch(self, packets: list) -> None:
        active = DISPATCH
        early = DISPATCH_EARLY
        for i, pkt in enumerate(packets):
            if i == READ_BUDGET:
                # This client's share of the loop iteration is used up: the rest waits for
                # the next one (_resume), with the socket not read meanwhile.
                self.pending = packets[i:]
                self.io.pause_reading()
                self.io.call_soon(self._resume)
                return
            try:
                (active if self.state == CONN_ACTIVE else early)[pkt.type](self, pkt)
            except ProtocolViolation as exc:
                self.fail(exc.reason_code, str(exc), exc.props)
            except Exception:
                log.exception("client %s (%s): error while handling %s; closing its connection",
                              self.client_id, self.peer, pkt.name)
                self.fail(RC_IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
            if self.state == CONN_CLOSING:
                return
            if self.throttled or self.waiting:
                # The rest of this chunk waits (_resume), in order, and so does a parse error
                # behind it; data read meanwhile joins `pending` (receive_data).
                self.pending = packets[i + 1:]
                return
        err = self.parser.error
        if err is not None:
            self.fail(err.reason_code, str(err))

    def _resume(self) -> None:
        # Input is no longer held: handle what waited, then read the socket again.
        if self.throttled or self.waiting or self.state == CONN_CLOSING:
            return
        packets = self.pending
        self.pending = None
        if packets is not None:
            self._dispatch(packets)      # also reports a parse error that came with them
        if not self.throttled and not self.waiting and self.pending is None and \
                self.state != CONN_CLOSING:
            self.io.resume_reading()

    def throttle(self, seconds: float) -> None:
        """Stop reading this client's packets for a while: what it publishes is piling up in
        subscribers' queues. Congested sessions call unthrottle() once they drain; the timer
        bounds the pause so that two clients feeding each other cannot wait forever."""
        if self.throttled or self.state == CONN_CLOSING:
            return
        self.throttled = True
        self.io.pause_reading()
        self.throttles += 1
        n = self.throttles
        # The timer of an earlier pause, ended early by its sessions, must not end this one.
        self.io.call_later(seconds, lambda: n == self.throttles and self.unthrottle())

    def unthrottle(self) -> None:
        if self.throttled:
            self.throttled = False
            if self.state == CONN_CLOSING or self.waiting:
                return
            if self.pending is not None:
                self.io.call_soon(self._resume)
            else:
                self.io.resume_reading()

    def wait_for(self, future, then: Callable[[object], None]) -> None:
        """Hold this client's input until `future` (an asyncio future) is done, then call
        `then(result)` and go on with the packets that arrived meanwhile. A CONNECT decision
        that takes time (an authenticator, a store load, a cluster claim) waits this way."""
        self.waiting = True
        if self.pending is None:
            self.pending = []
        self.io.pause_reading()
        future.add_done_callback(lambda f: self._decided(f, then))

    def _decided(self, future, then: Callable[[object], None]) -> None:
        self.waiting = False
        if self.state == CONN_CLOSING:
            return
        try:
            then(future.result())
        except ProtocolViolation as exc:
            self.fail(exc.reason_code, str(exc), exc.props)
        except Exception:
            log.exception("client %s (%s): a pending decision failed; closing its connection",
                          self.client_id, self.peer)
            self.fail(RC_IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
        self._resume()

    # -- flow control from the transport -------------------------------------------------------

    def pause_writing(self) -> None:
        self.tx_paused = True
        if self.writable:
            self.writable = False
            self.paused_since = self.ctx.clock()

    def resume_writing(self) -> None:
        self.tx_paused = False
        if self.out_bytes <= OUTBOX_HIGH:
            self._writable_again()

    def _writable_again(self) -> None:
        self.writable = True
        if self.session is not None and self.state != CONN_CLOSING:
            # (A closing connection sends nothing: what waits stays with the session.)
            self.session.release(self.ctx.clock())

    def connection_lost(self, exc: BaseException | None = None) -> None:
        """The socket is closed (by either side; `exc` the socket error, if any): the session
        is detached, its will handled."""
        self.state = CONN_CLOSING
        self.outbox = None
        if self.logged:
            self.logged = False
            why = self.close_reason
            if why is None:
                why = "closed its connection" if exc is None else \
                    f"disconnected: socket error: {exc}"
            CONN_LOG.info("Client %s %s", self.client_id, why)
        self._detach()

    def _detach(self) -> None:
        session = self.session
        if session is None or session.client is not self:
            return
        self.session = None
        self.ctx.registry.detach(session, self.ctx.clock())

    # -- output --------------------------------------------------------------------------------

    def send(self, frame: bytes) -> None:
        """Queue one frame; it is written with the rest of this loop iteration's frames."""
        if self.state == CONN_CLOSING:
            return
        outbox = self.outbox
        if outbox is None:
            self.outbox = [frame]
            self.out_bytes = len(frame)
            self.io.wake()
        else:
            outbox.append(frame)
            self.out_bytes += len(frame)
            if self.out_bytes > OUTBOX_HIGH and self.writable:
                # Many frames for one client in one loop iteration: treat it as unwritable now
                # (deliveries queue or drop under the session's limits) rather than let this
                # tick's outbox grow without bound before the transport can push back.
                self.writable = False
                self.paused_since = self.ctx.clock()

    def data_to_send(self) -> bytes:
        """The frames queued since the last call, as one bytes object (b"" when none)."""
        outbox = self.outbox
        if outbox is None:
            return b""
        self.outbox = None      # idle connections hold no list (DESIGN rule 5)
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        full = self.out_bytes > OUTBOX_HIGH
        self.out_bytes = 0
        if full and not self.tx_paused and self.state != CONN_CLOSING:
            # Writable again unless the transport pushes back once it has these bytes; it
            # tells us (pause_writing) during the write that follows this call, so look after.
            self.io.call_soon(self._check_writable)
        return data

    def _check_writable(self) -> None:
        if not self.writable and not self.tx_paused and self.out_bytes <= OUTBOX_HIGH \
                and self.state != CONN_CLOSING:
            self._writable_again()

    def send_publish(self, msg: Message, qos: int, retain: bool, packet_id: int, dup: bool,
                     sub_ids: list | None, now: float) -> None:
        if self.aliases_out is None:
            frame = msg.frame(self.version, qos, retain, packet_id, dup, sub_ids, now)
        else:
            frame = self._aliased_frame(msg, qos, retain, packet_id, dup, sub_ids, now)
        if self.max_packet_out and len(frame) > self.max_packet_out:
            # Too large for this client [MQTT-3.1.2-25]: dropped as if it had been delivered.
            self.ctx.metrics.dropped_too_large += 1
            if packet_id and self.session is not None:
                self.session.forget(packet_id, qos, now)
            return
        self.ctx.metrics.messages_sent += 1
        self.sent += 1
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
        if self.logged and self.close_reason is None:     # said once, when it is gone
            self.close_reason = f"disconnected: {text} ({reason_name(reason_code)})"
        else:
            log.info("client %s (%s): %s (reason 0x%02X); closing", self.client_id or "<new>",
                     self.peer, text, reason_code)
        version = self.parser.version or self.version
        if version == 5:
            props = self._with_reason(props, text)
        if self.state != CONN_ACTIVE:
            if version == 5:
                self.send(encode(ConnAck(False, reason_code, props), 5))
            elif reason_code in V3_CONNACK and (
                    self.parser.version or reason_code == RC_UNSUPPORTED_PROTOCOL_VERSION):
                # 0x84: the level was refused, so the parser has none; answer in 3.1.1 form
                # with 0x01 (unacceptable protocol level) [MQTT-3.1.2-2].
                self.send(encode(ConnAck(False, V3_CONNACK[reason_code]), 4))
        elif version == 5:
            self.send(encode(Disconnect(reason_code, props), 5))
        self.close()

    def disconnect(self, reason_code: int, text: str | None = None,
                   props: dict | None = None, why: str | None = None) -> None:
        """Close on the broker's initiative (keep alive, shutdown); MQTT 5 clients get a
        DISCONNECT with `reason_code` first. The will is published, as for a lost connection.
        `why` is for the log ("disconnected: why"; default `text`)."""
        if self.state == CONN_CLOSING:
            return
        if self.close_reason is None:
            self.close_reason = f"disconnected: {why or text or reason_name(reason_code)}"
        if self.version == 5 and self.state == CONN_ACTIVE:
            self.send(encode(Disconnect(reason_code, self._with_reason(props, text)), 5))
        self.close()

    def shutdown(self, reason_code: int, text: str, props: dict | None = None,
                 why: str | None = None) -> None:
        """The broker stops: disconnect without publishing the will."""
        if self.session is not None and self.session.client is self:
            self.ctx.registry.discard_will(self.session)
        self.disconnect(reason_code, text, props, why)

    def kick(self, reason_code: int, text: str) -> None:
        """The registry gave this connection's session to a newer one (takeover): close it,
        leaving the session alone."""
        self.session = None
        self.disconnect(reason_code, text, why="session taken over by a newer connection")

    def _with_reason(self, props: dict | None, text: str | None) -> dict | None:
        # MQTT 5: a reason string goes with the reason code unless the client asked for no
        # problem information (request problem information 0).
        if not text or not self.problem_info:
            return props
        props = dict(props) if props else {}
        props[P_REASON_STRING] = text[:200]
        return props

    def close(self) -> None:
        """Write what is queued, then close; connection_lost() finishes the job."""
        if self.state == CONN_CLOSING:
            return
        self.state = CONN_CLOSING
        self.io.close()
        # Done with the session now, not when the socket is gone (it lingers a moment to
        # let the peer read what was written last: net.Connection.close).
        self._detach()

    def abort(self, why: str | None = None) -> None:
        """Close now, dropping what is queued; `why` is for the log."""
        if why is not None and self.close_reason is None:
            self.close_reason = f"disconnected: {why}"
        self.state = CONN_CLOSING
        self.outbox = None
        self.io.abort()

    def __repr__(self) -> str:
        return f"<ClientProtocol {self.client_id!r} {self.peer} state={self.state}>"
