"""SUBSCRIBE and UNSUBSCRIBE: filter checks, the registry's subscription table, and the retained
messages a new subscription receives."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from cymqtt._fast.codec import SubAck, encode
from cymqtt.consts import (
    P_SUBSCRIPTION_ID, RC_NO_SUBSCRIPTION_EXISTED, RC_NOT_AUTHORIZED, RC_QUOTA_EXCEEDED,
    RC_SHARED_SUBSCRIPTIONS_NOT_SUPPORTED, RC_SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
    RC_SUCCESS, RC_TOPIC_FILTER_INVALID, RC_UNSPECIFIED_ERROR,
    RC_WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED, SUBACK, UNSUBACK,
)
from cymqtt.protocol.errors import ProtocolViolation
from cymqtt.router import split_shared
from cymqtt.session import Backlog, Subscription

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.protocol.client import ClientProtocol

__all__ = ["handle_subscribe", "handle_unsubscribe"]

log = logging.getLogger("cymqtt.protocol")


def handle_subscribe(proto: ClientProtocol, pkt) -> None:
    ctx = proto.ctx
    config = ctx.config
    registry = ctx.registry
    session = proto.session
    now = ctx.clock()
    journal = ctx.journal
    mark = journal.ops if journal is not None else 0
    sub_id = None
    if pkt.properties and P_SUBSCRIPTION_ID in pkt.properties:
        if not config.subscription_identifier_available:
            raise ProtocolViolation(RC_SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                                    "subscription identifiers are not supported")
        sub_id = pkt.properties[P_SUBSCRIPTION_ID][0]
    codes = []
    retained: list = []
    access = session.access
    limit = config.max_subscriptions_per_client
    for full_filter, options in pkt.topics:
        group, topic_filter = split_shared(full_filter)
        if len(topic_filter) > config.max_topic_length or \
                topic_filter.count("/") >= config.max_topic_levels:
            codes.append(RC_TOPIC_FILTER_INVALID)
            continue
        if access is not None and not access.can_subscribe(topic_filter):
            log.debug("client %s: SUBSCRIBE %r denied by the ACL", proto.client_id, full_filter)
            codes.append(RC_NOT_AUTHORIZED)
            continue
        if limit and len(session.subscriptions) >= limit and \
                full_filter not in session.subscriptions:
            codes.append(RC_QUOTA_EXCEEDED)
            continue
        if group is not None and not config.shared_subscription_available:
            codes.append(RC_SHARED_SUBSCRIPTIONS_NOT_SUPPORTED)
            continue
        if not config.wildcard_subscription_available and ("+" in topic_filter
                                                           or "#" in topic_filter):
            codes.append(RC_WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED)
            continue
        qos = min(options & 3, config.maximum_qos)
        options = (options & ~3) | qos
        sub = Subscription(session, full_filter, topic_filter, group, options, sub_id)
        existed = registry.subscribe(session, sub)
        codes.append(qos)
        if group is None and config.retain_available and (
                sub.retain_handling == 0 or (sub.retain_handling == 1 and not existed)):
            retained.append(sub)
    if proto.version < 5:
        # MQTT 3.x knows one failure code, 0x80 [MQTT-3.9.3-2].
        codes = [c if c < 0x80 else RC_UNSPECIFIED_ERROR for c in codes]
    suback = encode(SubAck(SUBACK, pkt.packet_id, codes), proto.version)
    # In a cluster, SUBACK waits until every node routes the new filters here, so that what
    # is published anywhere after it arrives.
    routed = ctx.cluster.routes_settled() if ctx.cluster is not None else None
    if routed is not None:
        proto.wait_for(routed, lambda _: _subscribed(proto, suback, mark, retained, now))
    else:
        _subscribed(proto, suback, mark, retained, now)


def _subscribed(proto: ClientProtocol, suback: bytes, mark: int, retained: list,
                now: float) -> None:
    # SUBACK, then the retained messages of the new subscriptions.
    ctx = proto.ctx
    session = proto.session
    access = session.access
    _ack(proto, suback, mark)
    store = ctx.retained
    current = store.get
    if access is not None:
        def current(topic: str, get=store.get):
            # A retained message the client may not read counts as gone.
            return get(topic) if access.can_receive(topic) else None
    for sub in retained:
        # Streamed as the client's socket and window take them (Session.add_backlog): all of
        # them, however many, without holding the loop for others.
        messages = store.match(sub.topic_filter, now)
        if messages:
            session.add_backlog(Backlog(messages, sub.qos, [sub.sub_id] if sub.sub_id else None,
                                        current), now)


def handle_unsubscribe(proto: ClientProtocol, pkt) -> None:
    registry = proto.ctx.registry
    session = proto.session
    journal = proto.ctx.journal
    mark = journal.ops if journal is not None else 0
    codes = [RC_SUCCESS if registry.unsubscribe(session, full_filter)
             else RC_NO_SUBSCRIPTION_EXISTED for full_filter in pkt.topics]
    _ack(proto, encode(SubAck(UNSUBACK, pkt.packet_id, codes), proto.version), mark)


def _ack(proto: ClientProtocol, frame: bytes, mark: int) -> None:
    # A persistent session's subscriptions are committed before SUBACK or UNSUBACK says so.
    journal = proto.ctx.journal
    if journal is None:
        proto.send(frame)
    else:
        journal.ack(proto, frame, mark)
