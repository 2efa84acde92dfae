"""PUBLISH from a client, and the acknowledgements of both directions' QoS 1/2 flows.

The hot path: `handle_publish` checks the packet, makes one `Message` and hands it to the
router, which fans it out to sessions. When that leaves subscribers congested (their queues
growing past what they drain), the publisher's input is held for a while (DESIGN rule 7).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cymqtt._fast.codec import encode_ack
from cymqtt.consts import (
    CONN_CLOSING, P_PAYLOAD_FORMAT, P_SUBSCRIPTION_ID, P_TOPIC_ALIAS, PUBACK, PUBCOMP, PUBREC,
    PUBREL, RC_MESSAGE_RATE_TOO_HIGH, RC_NO_MATCHING_SUBSCRIBERS, RC_NOT_AUTHORIZED,
    RC_PACKET_IDENTIFIER_NOT_FOUND, RC_PAYLOAD_FORMAT_INVALID, RC_PROTOCOL_ERROR,
    RC_QOS_NOT_SUPPORTED, RC_QUOTA_EXCEEDED, RC_RECEIVE_MAXIMUM_EXCEEDED,
    RC_RETAIN_NOT_SUPPORTED, RC_SUCCESS, RC_TOPIC_ALIAS_INVALID, RC_TOPIC_NAME_INVALID,
)
from cymqtt.message import Message
from cymqtt.protocol.errors import ProtocolViolation

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.protocol.client import ClientProtocol

__all__ = ["TokenBucket", "handle_ack", "handle_puback", "handle_publish", "route"]

log = logging.getLogger("cymqtt.protocol")

THROTTLE_MAX = 0.5     # longest a publisher waits for congested subscribers before reading on


def route(proto: ClientProtocol, msg: Message, now: float) -> int:
    """Deliver `msg` from `proto`'s client; when it leaves draining subscribers congested
    (Session.deliver), the client is not read until they drain (at most THROTTLE_MAX s)."""
    router = proto.ctx.router
    n = router.route(msg, now)
    if router.congested:
        _hold(proto, router)
    return n


def _hold(proto: ClientProtocol, router) -> None:
    # The sessions the last route left congested will let `proto` read again once they drain.
    congested = router.congested
    router.congested = []
    for session in congested:
        client = session.client
        if client is None or client is proto:
            continue     # never wait for ourselves
        if session.waiters is None:
            session.waiters = set()
        session.waiters.add(proto)
        proto.throttle(THROTTLE_MAX)


class TokenBucket:
    """max_publish_rate for one client: `rate` PUBLISH packets per second, bursts of up to a
    second's worth (ClientProtocol.rate; None without a limit)."""

    __slots__ = ("rate", "tokens", "last")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.last = now

    def take(self, now: float) -> bool:
        """Spend a token; False when there was none (the packet is over the rate)."""
        tokens = self.tokens + (now - self.last) * self.rate
        cap = max(self.rate, 1.0)
        self.tokens = (tokens if tokens < cap else cap) - 1.0
        self.last = now
        return self.tokens >= 0.0

    def wait(self) -> float:
        """Seconds until a token is there again."""
        return max(-self.tokens, 0.0) / self.rate + 1.0 / self.rate


def handle_publish(proto: ClientProtocol, pkt) -> None:
    ctx = proto.ctx
    config = ctx.config
    qos = pkt.qos
    topic = pkt.topic
    props = pkt.properties
    if props is not None:
        if P_SUBSCRIPTION_ID in props:
            raise ProtocolViolation(RC_PROTOCOL_ERROR, "PUBLISH from a client carries a "
                                                       "subscription identifier [MQTT-3.3.4-6]")
        alias = props.get(P_TOPIC_ALIAS)
        if alias is not None:
            topic = _resolve_alias(proto, alias, topic)
            pkt.topic = topic
    if qos > config.maximum_qos:
        raise ProtocolViolation(RC_QOS_NOT_SUPPORTED, f"QoS {qos} exceeds the maximum QoS "
                                                      f"{config.maximum_qos} [MQTT-3.2.2-11]")
    if pkt.retain and not config.retain_available:
        raise ProtocolViolation(RC_RETAIN_NOT_SUPPORTED, "retain is not available "
                                                         "[MQTT-3.2.2-14]")
    ctx.metrics.messages_received += 1
    proto.received += 1
    if proto.rate is not None and not proto.rate.take(ctx.clock()):
        _over_rate(proto)
        if proto.state == CONN_CLOSING:
            return
    if props is not None and props.get(P_PAYLOAD_FORMAT) == 1 and \
            config.validate_utf8_payload and not _is_utf8(pkt.payload):
        # Chosen over DISCONNECT: the sender learns which message was refused, and keeps its
        # connection [MQTT-3.3.2.3.2].
        log.info("client %s: PUBLISH to %r says UTF-8 but is not; refused (0x99)",
                 proto.client_id, topic)
        if qos:
            proto.send(encode_ack(PUBACK if qos == 1 else PUBREC, pkt.packet_id,
                                  RC_PAYLOAD_FORMAT_INVALID, None, 5))
        return
    access = proto.session.access
    if topic[0] == "$" and (access is None or not access.decides_dollar_topics):
        # Clients cannot publish to $-topics ($SYS belongs to the broker), unless an ACL file
        # says otherwise (as in mosquitto, it never lets them write $SYS but for bridges'
        # connection state).
        log.debug("client %s: PUBLISH to %r refused ($-topic)", proto.client_id, topic)
        if qos:
            proto.send(encode_ack(PUBACK if qos == 1 else PUBREC, pkt.packet_id,
                                  RC_NOT_AUTHORIZED, None, proto.version))
        return
    if len(topic) >= config.max_topic_levels and (len(topic) > config.max_topic_length or
                                                  topic.count("/") >= config.max_topic_levels):
        _refuse(proto, pkt, RC_TOPIC_NAME_INVALID, "its topic is longer or deeper than "
                                                   "max_topic_length/max_topic_levels allow")
        return
    if access is not None and not access.can_publish(topic):
        _refuse(proto, pkt, RC_NOT_AUTHORIZED, "the ACL does not let it publish there")
        return
    now = ctx.clock()
    msg = Message(topic, pkt.payload, qos, pkt.retain, None, None, proto.client_id) \
        if props is None else Message.from_publish(pkt, proto.client_id, now)
    journal = ctx.journal
    if journal is not None and (qos or pkt.retain):   # (QoS 0 waits for nothing)
        _publish_durably(proto, pkt, msg, journal, now)
    elif qos < 2:
        router = ctx.router      # route(), inline: the hot path
        n = router.route(msg, now)
        if router.congested:
            _hold(proto, router)
        if qos:
            proto.send(encode_ack(PUBACK, pkt.packet_id,
                                  RC_SUCCESS if n or proto.version < 5
                                  else RC_NO_MATCHING_SUBSCRIBERS, None, proto.version))
    else:
        if _receive_qos2(proto, pkt):
            route(proto, msg, now)
        proto.send(encode_ack(PUBREC, pkt.packet_id, RC_SUCCESS, None, proto.version))


def _receive_qos2(proto: ClientProtocol, pkt) -> bool:
    # True for a new QoS 2 message (route it), False for a re-sent one (only PUBREC again).
    inbound = proto.session.inbound_qos2(proto.ctx.config.receive_maximum
                                         if proto.version == 5 else 65535)
    r = inbound.receive(pkt.packet_id)
    if r < 0:
        raise ProtocolViolation(RC_RECEIVE_MAXIMUM_EXCEEDED,
                                "more QoS 2 messages in flight than the receive maximum "
                                "allows [MQTT-3.3.4-9]")
    return r == 1


def _publish_durably(proto: ClientProtocol, pkt, msg: Message, journal, now: float) -> None:
    # With a store: the PUBACK/PUBREC waits for the commit of what the message wrote (queue
    # entries of persistent sessions, the retained change, the inbound QoS 2 id). While
    # commits fail (a full disk), a QoS 1/2 message that needs the store is refused.
    qos = msg.qos
    if qos and journal.failing and journal.needs_store(msg, proto.ctx.router):
        proto.ctx.metrics.dropped_refused += 1
        if proto.version == 5:
            log.warning("client %s: PUBLISH to %r refused (0x97): the store cannot commit",
                        proto.client_id, msg.topic)
            journal.ack(proto, encode_ack(PUBACK if qos == 1 else PUBREC, pkt.packet_id,
                                          RC_QUOTA_EXCEEDED, None, 5), journal.ops)
        else:
            # MQTT 3.x has no way to refuse one message: close, and the client re-sends it.
            log.warning("client %s: QoS %d PUBLISH to %r needs the store, which cannot "
                        "commit; closing", proto.client_id, qos, msg.topic)
            proto.close_reason = "disconnected: the store cannot commit"
            proto.close()
        return
    mark = journal.ops
    if qos == 2:
        if not _receive_qos2(proto, pkt):
            # A re-sent one: PUBREC again, after any commit under way (the first copy's).
            journal.ack(proto, encode_ack(PUBREC, pkt.packet_id, RC_SUCCESS, None,
                                          proto.version), -1)
            return
        session = proto.session
        if session.journal is not None:
            journal.inbound(session, pkt.packet_id, True)
    if qos:
        journal.collecting = True
    n = route(proto, msg, now)
    if qos:
        code = RC_SUCCESS if n or proto.version < 5 or qos == 2 else RC_NO_MATCHING_SUBSCRIBERS
        journal.ack(proto, encode_ack(PUBACK if qos == 1 else PUBREC, pkt.packet_id, code,
                                      None, proto.version), mark)


def _refuse(proto: ClientProtocol, pkt, reason_code: int, why: str) -> None:
    # A PUBLISH the broker will not route: MQTT 5 says so in PUBACK/PUBREC; MQTT 3.x has no
    # way to, so the message is acknowledged and dropped (as mosquitto does). Counted.
    proto.ctx.metrics.dropped_refused += 1
    log.debug("client %s: PUBLISH to %r dropped: %s", proto.client_id, pkt.topic, why)
    if pkt.qos:
        proto.send(encode_ack(PUBACK if pkt.qos == 1 else PUBREC, pkt.packet_id,
                              reason_code if proto.version == 5 else RC_SUCCESS, None,
                              proto.version))


def _over_rate(proto: ClientProtocol) -> None:
    # Past max_publish_rate: MQTT 5 clients are disconnected (0x96); MQTT 3.x clients are
    # not read until the bucket has a token again, so TCP slows them down.
    if proto.version == 5:
        proto.disconnect(RC_MESSAGE_RATE_TOO_HIGH, "message rate too high")
    else:
        proto.throttle(proto.rate.wait())


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _resolve_alias(proto: ClientProtocol, alias: int, topic: str) -> str:
    maximum = proto.ctx.config.topic_alias_maximum
    if alias == 0 or alias > maximum:
        raise ProtocolViolation(RC_TOPIC_ALIAS_INVALID, f"topic alias {alias} is outside "
                                                        f"1..{maximum} [MQTT-3.3.2-9]")
    aliases = proto.aliases_in
    if topic:
        if aliases is None:
            aliases = proto.aliases_in = {}
        aliases[alias] = topic
        return topic
    if aliases is None or alias not in aliases:
        raise ProtocolViolation(RC_PROTOCOL_ERROR, f"topic alias {alias} used before it was set")
    return aliases[alias]


def handle_puback(proto: ClientProtocol, pkt) -> None:
    """PUBACK for a QoS 1 message we sent (the common acknowledgement, on its own path)."""
    proto.session.ack(PUBACK, pkt.packet_id, proto.ctx.clock())


def handle_ack(proto: ClientProtocol, pkt) -> None:
    """PUBREC and PUBCOMP for messages we sent (PUBACK: handle_puback); PUBREL for a QoS 2
    message we got."""
    t = pkt.type
    session = proto.session
    now = proto.ctx.clock()
    if t == PUBREL:
        found = session.inbound is not None and session.inbound.release(pkt.packet_id)
        frame = encode_ack(PUBCOMP, pkt.packet_id,
                           RC_SUCCESS if found else RC_PACKET_IDENTIFIER_NOT_FOUND, None,
                           proto.version)
        journal = proto.ctx.journal
        if journal is None:
            proto.send(frame)
            return
        mark = journal.ops
        if found and session.journal is not None:
            journal.inbound(session, pkt.packet_id, False)
        journal.ack(proto, frame, mark)
    elif t == PUBREC:
        if pkt.reason_code >= 0x80:
            # The client refused the message: the QoS 2 flow ends here [MQTT-4.3.3-4].
            session.last_ack = now
            session.forget(pkt.packet_id, 2, now)
            return
        journal = proto.ctx.journal
        mark = journal.ops if journal is not None else 0
        found = session.ack(PUBREC, pkt.packet_id, now)
        frame = encode_ack(PUBREL, pkt.packet_id,
                           RC_SUCCESS if found else RC_PACKET_IDENTIFIER_NOT_FOUND, None,
                           proto.version)
        if journal is None:
            proto.send(frame)
        else:
            # PUBREL tells the client the broker knows it has the message: once that is
            # committed, a restart re-sends PUBREL, never the message.
            journal.ack(proto, frame, mark)
    else:
        session.ack(t, pkt.packet_id, now)
