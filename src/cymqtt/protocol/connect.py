"""CONNECT and AUTH: validation, authentication, the session, CONNACK, the will.

A CONNECT goes through up to three steps: the checks that need nothing but the packet and the
config; authentication (a password check, or an MQTT 5 enhanced-authentication exchange over
AUTH packets), whose answer may arrive later as a future (`ClientProtocol.wait_for` holds the
client's input meanwhile); and the session, taken from the registry, with CONNACK.
"""
from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Callable

from cymqtt._fast.codec import Auth, ConnAck, encode
from cymqtt.auth import CONTINUE, SUCCESS, AuthStep
from cymqtt.consts import (
    CONN_ACTIVE, CONN_AUTH, CONN_NEW, NEVER, P_ASSIGNED_CLIENT_ID, P_AUTH_DATA, P_AUTH_METHOD,
    P_MAXIMUM_PACKET_SIZE, P_MAXIMUM_QOS, P_RECEIVE_MAXIMUM, P_REQUEST_PROBLEM_INFO,
    P_REQUEST_RESPONSE_INFO, P_RESPONSE_INFORMATION, P_RETAIN_AVAILABLE, P_SERVER_KEEP_ALIVE,
    P_SERVER_REFERENCE, P_SESSION_EXPIRY, P_SHARED_AVAILABLE, P_SUB_ID_AVAILABLE,
    P_TOPIC_ALIAS_MAXIMUM, P_WILDCARD_AVAILABLE, P_WILL_DELAY, RC_BAD_AUTHENTICATION_METHOD,
    RC_CLIENT_IDENTIFIER_NOT_VALID, RC_CONTINUE_AUTHENTICATION, RC_NOT_AUTHORIZED,
    RC_PROTOCOL_ERROR, RC_QOS_NOT_SUPPORTED, RC_QUOTA_EXCEEDED, RC_REAUTHENTICATE, RC_RETAIN_NOT_SUPPORTED,
    RC_SERVER_MOVED, RC_SUCCESS, RC_USE_ANOTHER_SERVER,
)
from cymqtt.message import Message
from cymqtt.protocol.errors import ProtocolViolation
from cymqtt.protocol.publish import TokenBucket
from cymqtt.session import Will

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.protocol.client import ClientProtocol

__all__ = ["CONN_LOG", "EnhancedAuth", "handle_auth", "handle_before_connect", "handle_connect",
           "keepalive_for"]

# Connection messages (config `connection_messages`): one line per connect and disconnect.
CONN_LOG = logging.getLogger("cymqtt.connections")
_MOSQ_PROTOCOL = {3: 1, 4: 2, 5: 5}     # protocol level -> mosquitto's "p" number

log = logging.getLogger("cymqtt.protocol")

# An MQTT 3.x CONNACK that accepts is one of two frames (session present or not): encoded
# once here rather than for every CONNECT (a ConnAck object and an encode call each).
_CONNACK_3 = (encode(ConnAck(False, RC_SUCCESS), 4), encode(ConnAck(True, RC_SUCCESS), 4))


class EnhancedAuth:
    """A connection's MQTT 5 enhanced authentication (ClientProtocol.auth; None for the many
    connections that use none, so they do not carry three empty fields)."""

    __slots__ = ("method", "exchange", "pending_connect")

    def __init__(self, method: str, exchange, pending_connect: tuple | None) -> None:
        self.method = method                      # the authentication method of CONNECT
        self.exchange = exchange                  # the AuthExchange under way, or None
        self.pending_connect = pending_connect    # (CONNECT, assigned id) until it succeeds


def handle_connect(proto: ClientProtocol, pkt) -> None:
    if proto.state != CONN_NEW:
        raise ProtocolViolation(RC_PROTOCOL_ERROR, "second CONNECT on a connection "
                                                   "[MQTT-3.1.0-2]")
    ctx = proto.ctx
    config = ctx.config
    version = pkt.version
    proto.version = version
    props = pkt.properties or {}
    if version == 5:
        proto.problem_info = bool(props.get(P_REQUEST_PROBLEM_INFO, 1))
        proto.receive_maximum = props.get(P_RECEIVE_MAXIMUM, 65535)
        proto.max_packet_out = props.get(P_MAXIMUM_PACKET_SIZE, 0)
        alias_max = props.get(P_TOPIC_ALIAS_MAXIMUM, 0)
        if alias_max:
            proto.alias_out_max = alias_max
            proto.aliases_out = {}
    if config.redirect_to:
        raise ProtocolViolation(
            RC_SERVER_MOVED if config.redirect_permanent else RC_USE_ANOTHER_SERVER,
            f"use another server: {config.redirect_to}",
            {P_SERVER_REFERENCE: config.redirect_to})
    if pkt.will_topic is not None:
        if pkt.will_qos > config.maximum_qos:
            raise ProtocolViolation(RC_QOS_NOT_SUPPORTED,
                                    f"will QoS {pkt.will_qos} exceeds the maximum QoS "
                                    f"{config.maximum_qos} [MQTT-3.2.2-12]")
        if pkt.will_retain and not config.retain_available:
            raise ProtocolViolation(RC_RETAIN_NOT_SUPPORTED,
                                    "will retain: retain is not available [MQTT-3.2.2-13]")

    client_id = pkt.client_id
    assigned = None
    if not client_id:
        if not config.allow_zero_length_client_id or version == 3 or (
                version == 4 and not pkt.clean_start):
            raise ProtocolViolation(RC_CLIENT_IDENTIFIER_NOT_VALID,
                                    "empty client identifier not allowed here [MQTT-3.1.3-8]")
        client_id = assigned = "auto-" + uuid.uuid4().hex
    elif version == 3 and len(client_id) > 23:
        raise ProtocolViolation(RC_CLIENT_IDENTIFIER_NOT_VALID,
                                "MQTT 3.1 client identifiers are 1..23 characters")
    proto.client_id = client_id
    proto.username = pkt.username
    full = proto.io.admit()
    if full is not None:
        raise ProtocolViolation(RC_QUOTA_EXCEEDED, full)
    identity = proto.io.identity_username
    if identity is not None:
        # use_identity_as_username: the certificate is the credential (the password file is
        # not used on this listener, as in mosquitto).
        if not identity:
            raise ProtocolViolation(RC_NOT_AUTHORIZED, "no client certificate to take the user "
                                                       "name from")
        proto.username = identity

    method = props.get(P_AUTH_METHOD) if version == 5 else None
    if method is not None:
        authenticator = ctx.auth.authenticator(method)
        if authenticator is None:
            raise ProtocolViolation(RC_BAD_AUTHENTICATION_METHOD,
                                    f"authentication method {method!r} is not supported")
        proto.auth = EnhancedAuth(method, authenticator.start(client_id, pkt.username),
                                  (pkt, assigned))
        proto.state = CONN_AUTH
        _auth_step(proto, props.get(P_AUTH_DATA))
        return

    def checked(step: AuthStep) -> None:
        if step.status != SUCCESS:
            raise ProtocolViolation(step.reason_code or RC_NOT_AUTHORIZED,
                                    step.reason or "not authorized")
        _complete_connect(proto, pkt, assigned, None)

    if identity is not None:
        _complete_connect(proto, pkt, assigned, None)
        return
    _decide(proto, ctx.auth.check(pkt.username, pkt.password), checked)


def _decide(proto: ClientProtocol, answer, then: Callable[[AuthStep], None]) -> None:
    # An authentication answer now (an AuthStep) or later (an asyncio future of one).
    if isinstance(answer, AuthStep):
        then(answer)
    elif hasattr(answer, "add_done_callback"):
        proto.wait_for(answer, then)
    else:
        raise TypeError(f"an authenticator returned {answer!r}: expected an AuthStep or an "
                        "asyncio future of one")


def _auth_step(proto: ClientProtocol, data: bytes | None) -> None:
    """Feed the client's authentication data to the exchange and act on its answer."""
    _decide(proto, proto.auth.exchange.step(data), lambda step: _auth_stepped(proto, step))


def _auth_stepped(proto: ClientProtocol, step: AuthStep) -> None:
    if step.status == CONTINUE:
        proto.send(encode(Auth(RC_CONTINUE_AUTHENTICATION,
                               {P_AUTH_METHOD: proto.auth.method,
                                P_AUTH_DATA: step.data or b""}), 5))
        return
    proto.auth.exchange = None
    if step.status != SUCCESS:
        raise ProtocolViolation(step.reason_code or RC_NOT_AUTHORIZED,
                                step.reason or "authentication failed")
    ack = {P_AUTH_METHOD: proto.auth.method}
    if step.data:
        ack[P_AUTH_DATA] = step.data
    if proto.state == CONN_AUTH:
        pkt, assigned = proto.auth.pending_connect
        proto.auth.pending_connect = None
        proto.state = CONN_NEW
        _complete_connect(proto, pkt, assigned, ack)
    else:
        proto.send(encode(Auth(RC_SUCCESS, ack), 5))     # re-authentication succeeded


def _complete_connect(proto: ClientProtocol, pkt, assigned: str | None,
                      auth_props: dict | None, claimed: bool = False) -> None:
    """The client is who it says: attach (or create) its session and send CONNACK. In a
    cluster, first claim the client id: a node holding its session hands it over."""
    ctx = proto.ctx
    if ctx.cluster is not None and not claimed:
        claim = ctx.cluster.claim(proto.client_id, bool(pkt.clean_start))
        if claim is not None:
            proto.wait_for(claim, lambda _: _complete_connect(proto, pkt, assigned, auth_props,
                                                              True))
            return
    config = ctx.config
    now = ctx.clock()
    version = pkt.version
    props = pkt.properties or {}
    client_id = proto.client_id

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

    keepalive = keepalive_for(pkt.keepalive, version, config)   # may refuse: before the session
    access = ctx.access.for_client(client_id, proto.username)
    will = _make_will(client_id, pkt) if pkt.will_topic is not None else None
    if will is not None and access is not None and not access.can_publish(pkt.will_topic):
        # As mosquitto: the CONNECT is accepted, the will it may not publish never is.
        log.info("client %s: the ACL does not let it publish its will topic %r; the will is "
                 "dropped", client_id, pkt.will_topic)
        will = None
    session, session_present = ctx.registry.connect(
        proto, client_id, bool(pkt.clean_start), version, expiry,
        props.get(P_SESSION_EXPIRY, 0) if version == 5 else expiry, will, now)
    proto.session = session
    session.access = access
    if config.max_publish_rate:
        proto.rate = TokenBucket(config.max_publish_rate, now)

    proto.keepalive = keepalive

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
        if keepalive != pkt.keepalive or config.server_keep_alive is not None:
            ack_props[P_SERVER_KEEP_ALIVE] = keepalive
        if expiry != props.get(P_SESSION_EXPIRY, 0):
            ack_props[P_SESSION_EXPIRY] = expiry
        if props.get(P_REQUEST_RESPONSE_INFO) and config.response_information is not None:
            ack_props[P_RESPONSE_INFORMATION] = config.response_information.replace(
                "{client_id}", client_id)
        if auth_props:
            ack_props.update(auth_props)
        proto.send(encode(ConnAck(session_present, RC_SUCCESS, ack_props), 5))
    else:
        proto.send(_CONNACK_3[1 if session_present else 0])
    proto.state = CONN_ACTIVE
    ctx.metrics.clients_total += 1
    if config.connection_messages and CONN_LOG.isEnabledFor(logging.INFO):
        proto.logged = True
        # mosquitto's line: p2 = MQTT 3.1.1 (p1 3.1, p5 5.0), c = clean start, k = keep
        # alive; e = session expiry when there is one, u = the user name.
        CONN_LOG.info("New client connected from %s as %s (p%d, c%d%s, k%d%s)",
                      proto.peer, client_id, _MOSQ_PROTOCOL.get(version, 5),
                      1 if pkt.clean_start else 0,
                      "" if not expiry else ", e" + ("never" if expiry >= NEVER else
                                                     str(expiry)),
                      keepalive, "" if proto.username is None else f", u'{proto.username}'")
    if session_present:
        session.resume(now)


def keepalive_for(asked: int, version: int, config) -> int:
    """The keep alive a client gets: `server_keep_alive` when set; else the client's, capped
    at `max_keepalive` (0, "none", counts as above it), as mosquitto does. MQTT 3.x has no way
    to tell the client, so one asking for more than the cap is refused [CVE-2020-13849]."""
    if config.server_keep_alive is not None:
        return config.server_keep_alive
    cap = config.max_keepalive
    if cap and cap < 65535 and (asked > cap or asked == 0):
        if version < 5:
            raise ProtocolViolation(
                RC_CLIENT_IDENTIFIER_NOT_VALID,
                f"keep alive {asked} s is {'none' if asked == 0 else 'above'} the broker's "
                f"max_keepalive {cap} s (MQTT 3.x clients must ask for 1 .. {cap})")
        return cap
    return asked


def _make_will(client_id: str, pkt) -> Will:
    wprops = pkt.will_properties
    delay = 0
    if wprops:
        delay = wprops.get(P_WILL_DELAY, 0)
        wprops = {k: v for k, v in wprops.items() if k != P_WILL_DELAY} or None
    # Its message expiry (if any) starts to run when the will is published.
    msg = Message(pkt.will_topic, pkt.will_payload or b"", pkt.will_qos, pkt.will_retain,
                  wprops, None, client_id)
    return Will(msg, delay)


def handle_auth(proto: ClientProtocol, pkt) -> None:
    """MQTT 5 enhanced authentication: the rest of a CONNECT's exchange (0x18), or a
    re-authentication on a live connection (0x19, then 0x18s) [MQTT-4.12]."""
    auth = proto.auth
    if auth is None:
        raise ProtocolViolation(RC_PROTOCOL_ERROR, "AUTH without an authentication method in "
                                                   "CONNECT [MQTT-3.15.2-1]")
    props = pkt.properties or {}
    if props.get(P_AUTH_METHOD) != auth.method:
        raise ProtocolViolation(RC_PROTOCOL_ERROR, "AUTH names another authentication method "
                                                   "than CONNECT [MQTT-4.12.0-5]")
    rc = pkt.reason_code
    if proto.state == CONN_AUTH:
        if rc != RC_CONTINUE_AUTHENTICATION:
            raise ProtocolViolation(RC_PROTOCOL_ERROR, f"AUTH reason 0x{rc:02X} during CONNECT")
    elif rc == RC_REAUTHENTICATE:
        authenticator = proto.ctx.auth.authenticator(auth.method)
        auth.exchange = authenticator.start(proto.client_id, proto.username)
    elif rc != RC_CONTINUE_AUTHENTICATION or auth.exchange is None:
        raise ProtocolViolation(RC_PROTOCOL_ERROR, f"unexpected AUTH reason 0x{rc:02X}")
    _auth_step(proto, props.get(P_AUTH_DATA))


def handle_before_connect(proto: ClientProtocol, pkt) -> None:
    raise ProtocolViolation(RC_PROTOCOL_ERROR, f"{pkt.name} before CONNECT [MQTT-3.1.0-1]")
