"""The MQTT rules, one handler per packet type (mosquitto's handle_*.c, in Python).

Each handler takes the connection and the decoded packet. It reaches the connection only through
its narrow interface (send, send_publish, fail, disconnect, close and a few attributes) and the
rest of the broker through `conn.broker`. A handler that finds a rule broken raises
`ProtocolViolation(reason_code, text)`; the connection sends the reason and closes.
"""
from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from cymqtt._fast.codec import (
    Auth, ConnAck, SubAck, encode, encode_ack,
)
from cymqtt.auth import CONTINUE, SUCCESS, check_password
from cymqtt.message import Message
from cymqtt.props import (
    AUTH, CONNECT, DISCONNECT, P_ASSIGNED_CLIENT_ID, P_AUTH_DATA, P_AUTH_METHOD,
    P_MAXIMUM_PACKET_SIZE, P_MAXIMUM_QOS, P_PAYLOAD_FORMAT, P_RECEIVE_MAXIMUM,
    P_REQUEST_PROBLEM_INFO, P_REQUEST_RESPONSE_INFO, P_RESPONSE_INFORMATION,
    P_RETAIN_AVAILABLE, P_SERVER_KEEP_ALIVE, P_SERVER_REFERENCE, P_SESSION_EXPIRY,
    P_SHARED_AVAILABLE, P_SUB_ID_AVAILABLE, P_SUBSCRIPTION_ID, P_TOPIC_ALIAS,
    P_TOPIC_ALIAS_MAXIMUM, P_WILDCARD_AVAILABLE, P_WILL_DELAY, PINGREQ, PUBACK, PUBCOMP,
    PUBLISH, PUBREC, PUBREL, SUBACK, SUBSCRIBE, UNSUBACK, UNSUBSCRIBE,
)
from cymqtt.router import split_shared
from cymqtt.session import NEVER, Session, Subscription, Will

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.connection import Connection

log = logging.getLogger("cymqtt.handlers")

# Connection states (Connection.state). Defined here, where the rules that move between them
# live; connection.py imports them (it depends on handlers, never the other way round).
CONN_NEW = 0        # socket open, waiting for CONNECT
CONN_ACTIVE = 1     # CONNACK sent
CONN_CLOSING = 2    # closing; further input is ignored
CONN_AUTH = 3       # CONNECT read, MQTT 5 enhanced authentication under way

PINGRESP_FRAME = b"\xd0\x00"


class ProtocolViolation(Exception):
    """A client broke a rule; `reason_code` is the MQTT 5 code to send before closing, `props`
    any further MQTT 5 properties for that CONNACK or DISCONNECT."""

    def __init__(self, reason_code: int, text: str, props: dict | None = None) -> None:
        super().__init__(text)
        self.reason_code = reason_code
        self.props = props


# -- CONNECT ------------------------------------------------------------------------------------

def handle_connect(conn: Connection, pkt) -> None:
    if conn.state != CONN_NEW:
        raise ProtocolViolation(0x82, "second CONNECT on a connection [MQTT-3.1.0-2]")
    broker = conn.broker
    config = broker.config
    version = pkt.version
    conn.version = version
    props = pkt.properties or {}
    if version == 5:
        conn.problem_info = bool(props.get(P_REQUEST_PROBLEM_INFO, 1))
        conn.receive_maximum = props.get(P_RECEIVE_MAXIMUM, 65535)
        conn.max_packet_out = props.get(P_MAXIMUM_PACKET_SIZE, 0)
        alias_max = props.get(P_TOPIC_ALIAS_MAXIMUM, 0)
        if alias_max:
            conn.alias_out_max = alias_max
            conn.aliases_out = {}
    if config.redirect_to:
        raise ProtocolViolation(0x9D if config.redirect_permanent else 0x9C,
                                f"use another server: {config.redirect_to}",
                                {P_SERVER_REFERENCE: config.redirect_to})
    if pkt.will_topic is not None:
        if pkt.will_qos > config.maximum_qos:
            raise ProtocolViolation(0x9B, f"will QoS {pkt.will_qos} exceeds the maximum QoS "
                                          f"{config.maximum_qos} [MQTT-3.2.2-12]")
        if pkt.will_retain and not config.retain_available:
            raise ProtocolViolation(0x9A, "will retain: retain is not available "
                                          "[MQTT-3.2.2-13]")

    client_id = pkt.client_id
    assigned = None
    if not client_id:
        if not config.allow_zero_length_client_id or version == 3 or (
                version == 4 and not pkt.clean_start):
            raise ProtocolViolation(0x85, "empty client identifier not allowed here "
                                          "[MQTT-3.1.3-8]")
        client_id = assigned = "auto-" + uuid.uuid4().hex
    elif version == 3 and len(client_id) > 23:
        raise ProtocolViolation(0x85, "MQTT 3.1 client identifiers are 1..23 characters")
    conn.client_id = client_id
    conn.username = pkt.username

    method = props.get(P_AUTH_METHOD) if version == 5 else None
    if method is not None:
        authenticator = broker.authenticators.get(method)
        if authenticator is None:
            raise ProtocolViolation(0x8C, f"authentication method {method!r} is not supported")
        conn.auth_method = method
        conn.auth_exchange = authenticator.start(client_id, pkt.username)
        conn.pending_connect = (pkt, assigned)
        conn.state = CONN_AUTH
        _auth_step(conn, props.get(P_AUTH_DATA))
        return
    if config.users:
        if pkt.username is None:
            if not config.allow_anonymous:
                raise ProtocolViolation(0x87, "anonymous clients are not allowed")
        elif not check_password(config.users, pkt.username, pkt.password):
            raise ProtocolViolation(0x86, f"bad user name or password for {pkt.username!r}")
    _complete_connect(conn, pkt, assigned, None)


def _auth_step(conn: Connection, data: bytes | None) -> None:
    """Feed the client's authentication data to the exchange and act on its answer."""
    step = conn.auth_exchange.step(data)
    if step.status == CONTINUE:
        conn.send(encode(Auth(0x18, {P_AUTH_METHOD: conn.auth_method,
                                     P_AUTH_DATA: step.data or b""}), 5))
        return
    conn.auth_exchange = None
    if step.status != SUCCESS:
        raise ProtocolViolation(step.reason_code or 0x87,
                                step.reason or "authentication failed")
    ack = {P_AUTH_METHOD: conn.auth_method}
    if step.data:
        ack[P_AUTH_DATA] = step.data
    if conn.state == CONN_AUTH:
        pkt, assigned = conn.pending_connect
        conn.pending_connect = None
        conn.state = CONN_NEW
        _complete_connect(conn, pkt, assigned, ack)
    else:
        conn.send(encode(Auth(0x00, ack), 5))     # re-authentication succeeded


def _complete_connect(conn: Connection, pkt, assigned: str | None,
                      auth_props: dict | None) -> None:
    """The client is who it says: attach (or create) its session and send CONNACK."""
    broker = conn.broker
    config = broker.config
    now = broker.now()
    version = pkt.version
    props = pkt.properties or {}
    client_id = conn.client_id

    # Session expiry: MQTT 5 from the property; 3.x from clean session and the config default.
    if version == 5:
        expiry = props.get(P_SESSION_EXPIRY, 0)
        if config.max_session_expiry is not None and expiry > config.max_session_expiry:
            expiry = config.max_session_expiry
    elif pkt.clean_start:
        expiry = 0
    else:
        d = config.session_expiry_default
        expiry = NEVER if d is None else d

    registry = broker.sessions
    session = registry.get(client_id)
    if session is not None and session.conn is not None:
        old = session.conn
        log.info("client %s: taken over by a new connection from %s", client_id, conn.peer)
        broker.process_will(old, now, session_ending=bool(pkt.clean_start))
        old.clean_exit = True
        session.conn = None
        old.session = None
        old.disconnect(0x8E, "session taken over")
    session_present = False
    if session is not None and not pkt.clean_start:
        session_present = True
        broker.cancel_will(client_id)
    else:
        if session is not None:
            broker.end_session(session, now)
        session = Session(client_id, config)
        registry[client_id] = session
    broker.offline.pop(client_id, None)
    session.expiry_interval = expiry
    session.requested_expiry = props.get(P_SESSION_EXPIRY, 0) if version == 5 else expiry
    session.attach(conn, version)
    conn.session = session

    if pkt.will_topic is not None:
        conn.will = _make_will(conn, pkt, now)

    keepalive = pkt.keepalive
    if config.server_keep_alive is not None:
        keepalive = config.server_keep_alive
    conn.keepalive = keepalive

    ack_props = None
    if version == 5:
        ack_props = {
            P_RECEIVE_MAXIMUM: config.receive_maximum,
            P_TOPIC_ALIAS_MAXIMUM: config.topic_alias_maximum,
            P_MAXIMUM_PACKET_SIZE: config.max_packet_size,
        }
        if not config.retain_available:
            ack_props[P_RETAIN_AVAILABLE] = 0
        if config.maximum_qos < 2:
            ack_props[P_MAXIMUM_QOS] = config.maximum_qos
        if not config.wildcard_subscription_available:
            ack_props[P_WILDCARD_AVAILABLE] = 0
        if not config.subscription_identifier_available:
            ack_props[P_SUB_ID_AVAILABLE] = 0
        if not config.shared_subscription_available:
            ack_props[P_SHARED_AVAILABLE] = 0
        if assigned:
            ack_props[P_ASSIGNED_CLIENT_ID] = assigned
        if config.server_keep_alive is not None:
            ack_props[P_SERVER_KEEP_ALIVE] = config.server_keep_alive
        if expiry != props.get(P_SESSION_EXPIRY, 0):
            ack_props[P_SESSION_EXPIRY] = expiry
        if props.get(P_REQUEST_RESPONSE_INFO) and config.response_information is not None:
            ack_props[P_RESPONSE_INFORMATION] = config.response_information.replace(
                "{client_id}", client_id)
        if auth_props:
            ack_props.update(auth_props)
    conn.send(encode(ConnAck(session_present, 0, ack_props), version))
    conn.state = CONN_ACTIVE
    broker.on_client_connected(conn)
    if session_present:
        session.resume(now)


def _make_will(conn: Connection, pkt, now: float) -> Will:
    wprops = pkt.will_properties
    delay = 0
    if wprops:
        delay = wprops.get(P_WILL_DELAY, 0)
        wprops = {k: v for k, v in wprops.items() if k != P_WILL_DELAY} or None
    # Its message expiry (if any) starts to run when the will is published.
    msg = Message(pkt.will_topic, pkt.will_payload or b"", pkt.will_qos, pkt.will_retain,
                  wprops, None, conn.client_id)
    return Will(msg, delay)


# -- PUBLISH and its acknowledgements -----------------------------------------------------------

def handle_publish(conn: Connection, pkt) -> None:
    broker = conn.broker
    qos = pkt.qos
    topic = pkt.topic
    props = pkt.properties
    if props is not None:
        if P_SUBSCRIPTION_ID in props:
            raise ProtocolViolation(0x82, "PUBLISH from a client carries a subscription "
                                          "identifier [MQTT-3.3.4-6]")
        alias = props.get(P_TOPIC_ALIAS)
        if alias is not None:
            topic = _resolve_alias(conn, alias, topic)
            pkt.topic = topic
    if qos > broker.config.maximum_qos:
        raise ProtocolViolation(0x9B, f"QoS {qos} exceeds the maximum QoS "
                                      f"{broker.config.maximum_qos} [MQTT-3.2.2-11]")
    if pkt.retain and not broker.config.retain_available:
        raise ProtocolViolation(0x9A, "retain is not available [MQTT-3.2.2-14]")
    broker.stats.messages_received += 1
    if props is not None and props.get(P_PAYLOAD_FORMAT) == 1 and \
            broker.config.validate_utf8_payload and not _is_utf8(pkt.payload):
        # Chosen over DISCONNECT: the sender learns which message was refused, and keeps its
        # connection [MQTT-3.3.2.3.2].
        log.info("client %s: PUBLISH to %r says UTF-8 but is not; refused (0x99)",
                 conn.client_id, topic)
        if qos:
            conn.send(encode_ack(PUBACK if qos == 1 else PUBREC, pkt.packet_id, 0x99, None, 5))
        return
    if topic[0] == "$":
        # Clients cannot publish to $-topics ($SYS belongs to the broker).
        log.debug("client %s: PUBLISH to %r refused ($-topic)", conn.client_id, topic)
        if qos == 1:
            conn.send(encode_ack(PUBACK, pkt.packet_id, 0x87, None, conn.version))
        elif qos == 2:
            conn.send(encode_ack(PUBREC, pkt.packet_id, 0x87, None, conn.version))
        return
    if qos == 0:
        broker.route(Message.from_publish(pkt, conn.client_id, broker.now()), conn)
    elif qos == 1:
        n = broker.route(Message.from_publish(pkt, conn.client_id, broker.now()), conn)
        conn.send(encode_ack(PUBACK, pkt.packet_id, 0 if n or conn.version < 5 else 0x10,
                             None, conn.version))
    else:
        inbound = conn.session.inbound_qos2(broker.config.receive_maximum
                                            if conn.version == 5 else 65535)
        r = inbound.receive(pkt.packet_id)
        if r < 0:
            raise ProtocolViolation(0x93, "more QoS 2 messages in flight than the receive "
                                          "maximum allows [MQTT-3.3.4-9]")
        if r:
            broker.route(Message.from_publish(pkt, conn.client_id, broker.now()), conn)
        conn.send(encode_ack(PUBREC, pkt.packet_id, 0, None, conn.version))


def _is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _resolve_alias(conn: Connection, alias: int, topic: str) -> str:
    maximum = conn.broker.config.topic_alias_maximum
    if alias == 0 or alias > maximum:
        raise ProtocolViolation(0x94, f"topic alias {alias} is outside 1..{maximum} "
                                      "[MQTT-3.3.2-9]")
    aliases = conn.aliases_in
    if topic:
        if aliases is None:
            aliases = conn.aliases_in = {}
        aliases[alias] = topic
        return topic
    if aliases is None or alias not in aliases:
        raise ProtocolViolation(0x82, f"topic alias {alias} used before it was set")
    return aliases[alias]


def handle_ack(conn: Connection, pkt) -> None:
    """PUBACK, PUBREC and PUBCOMP for messages we sent; PUBREL for a QoS 2 message we got."""
    t = pkt.type
    session = conn.session
    now = conn.broker.now()
    if t == PUBREL:
        found = session.inbound is not None and session.inbound.release(pkt.packet_id)
        conn.send(encode_ack(PUBCOMP, pkt.packet_id, 0 if found else 0x92, None, conn.version))
    elif t == PUBREC:
        if pkt.reason_code >= 0x80:
            # The client refused the message: the QoS 2 flow ends here [MQTT-4.3.3-4].
            session.last_ack = now
            session.forget(pkt.packet_id, 2, now)
            return
        found = session.ack(PUBREC, pkt.packet_id, now)
        conn.send(encode_ack(PUBREL, pkt.packet_id, 0 if found else 0x92, None, conn.version))
    else:
        session.ack(t, pkt.packet_id, now)


# -- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------------

def handle_subscribe(conn: Connection, pkt) -> None:
    broker = conn.broker
    config = broker.config
    session = conn.session
    now = broker.now()
    sub_id = None
    if pkt.properties and P_SUBSCRIPTION_ID in pkt.properties:
        if not config.subscription_identifier_available:
            raise ProtocolViolation(0xA1, "subscription identifiers are not supported")
        sub_id = pkt.properties[P_SUBSCRIPTION_ID][0]
    codes = []
    retained: list = []
    for full_filter, options in pkt.topics:
        group, topic_filter = split_shared(full_filter)
        if group is not None and not config.shared_subscription_available:
            codes.append(0x9E)
            continue
        if not config.wildcard_subscription_available and ("+" in topic_filter
                                                           or "#" in topic_filter):
            codes.append(0xA2)
            continue
        qos = min(options & 3, config.maximum_qos)
        options = (options & ~3) | qos
        sub = Subscription(session, full_filter, topic_filter, group, options, sub_id)
        existed = full_filter in session.subscriptions
        session.subscriptions[full_filter] = sub
        broker.router.subscribe(sub)
        codes.append(qos)
        if group is None and config.retain_available and (
                sub.retain_handling == 0 or (sub.retain_handling == 1 and not existed)):
            retained.append(sub)
    if conn.version < 5:
        # MQTT 3.x knows one failure code, 0x80 [MQTT-3.9.3-2].
        codes = [c if c < 0x80 else 0x80 for c in codes]
    conn.send(encode(SubAck(SUBACK, pkt.packet_id, codes), conn.version))
    for sub in retained:
        ids = [sub.sub_id] if sub.sub_id else None
        for msg in broker.router.retained.match(sub.topic_filter, now):
            session.deliver(msg, min(msg.qos, sub.qos), True, ids, now)


def handle_unsubscribe(conn: Connection, pkt) -> None:
    session = conn.session
    router = conn.broker.router
    codes = []
    for full_filter in pkt.topics:
        sub = session.subscriptions.pop(full_filter, None)
        if sub is None:
            codes.append(0x11)
        else:
            router.unsubscribe(sub)
            codes.append(0)
    conn.send(encode(SubAck(UNSUBACK, pkt.packet_id, codes), conn.version))


# -- the rest -----------------------------------------------------------------------------------

def handle_pingreq(conn: Connection, pkt) -> None:
    conn.send(PINGRESP_FRAME)


def handle_disconnect(conn: Connection, pkt) -> None:
    if conn.state != CONN_ACTIVE:
        conn.close()
        return
    session = conn.session
    if pkt.properties and P_SESSION_EXPIRY in pkt.properties:
        new = pkt.properties[P_SESSION_EXPIRY]
        if session.requested_expiry == 0 and new != 0:
            raise ProtocolViolation(0x82, "DISCONNECT sets a session expiry after CONNECT "
                                          "said 0 [MQTT-3.14.2-2]")
        cap = conn.broker.config.max_session_expiry      # the same bound as in CONNECT
        session.expiry_interval = new if cap is None or new <= cap else cap
    # Reason 0x04: disconnect with will message; anything else discards the will.
    conn.clean_exit = pkt.reason_code != 0x04
    conn.close()


def handle_auth(conn: Connection, pkt) -> None:
    """MQTT 5 enhanced authentication: the rest of a CONNECT's exchange (0x18), or a
    re-authentication on a live connection (0x19, then 0x18s) [MQTT-4.12]."""
    if conn.auth_method is None:
        raise ProtocolViolation(0x82, "AUTH without an authentication method in CONNECT "
                                      "[MQTT-3.15.2-1]")
    props = pkt.properties or {}
    if props.get(P_AUTH_METHOD) != conn.auth_method:
        raise ProtocolViolation(0x82, "AUTH names another authentication method than CONNECT "
                                      "[MQTT-4.12.0-5]")
    rc = pkt.reason_code
    if conn.state == CONN_AUTH:
        if rc != 0x18:
            raise ProtocolViolation(0x82, f"AUTH reason 0x{rc:02X} during CONNECT")
    elif rc == 0x19:
        authenticator = conn.broker.authenticators[conn.auth_method]
        conn.auth_exchange = authenticator.start(conn.client_id, conn.username)
    elif rc != 0x18 or conn.auth_exchange is None:
        raise ProtocolViolation(0x82, f"unexpected AUTH reason 0x{rc:02X}")
    _auth_step(conn, props.get(P_AUTH_DATA))


def handle_unexpected(conn: Connection, pkt) -> None:
    raise ProtocolViolation(0x82, f"a client must not send {pkt.name}")


def handle_before_connect(conn: Connection, pkt) -> None:
    raise ProtocolViolation(0x82, f"{pkt.name} before CONNECT [MQTT-3.1.0-1]")


# Handlers by packet type: DISPATCH once CONNACK is sent, DISPATCH_EARLY before that (CONNECT,
# the AUTH exchange, and DISCONNECT only), so no handler checks the state itself.
DISPATCH_EARLY = [handle_before_connect] * 16
DISPATCH_EARLY[CONNECT] = handle_connect
DISPATCH_EARLY[AUTH] = handle_auth
DISPATCH_EARLY[DISCONNECT] = handle_disconnect
DISPATCH_EARLY = tuple(DISPATCH_EARLY)

DISPATCH = [handle_unexpected] * 16
DISPATCH[CONNECT] = handle_connect
DISPATCH[PUBLISH] = handle_publish
DISPATCH[PUBACK] = handle_ack
DISPATCH[PUBREC] = handle_ack
DISPATCH[PUBREL] = handle_ack
DISPATCH[PUBCOMP] = handle_ack
DISPATCH[SUBSCRIBE] = handle_subscribe
DISPATCH[UNSUBSCRIBE] = handle_unsubscribe
DISPATCH[PINGREQ] = handle_pingreq
DISPATCH[DISCONNECT] = handle_disconnect
DISPATCH[AUTH] = handle_auth
DISPATCH = tuple(DISPATCH)
