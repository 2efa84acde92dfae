"""The sweep: every timed rule of the broker as one pure function of `now`.

    actions = check(now, clients, registry, limits)     # reads, never changes anything
    for kind, target in actions: ...                    # the broker carries them out

No per-connection timers (DESIGN rule 4): one pass every SWEEP_INTERVAL seconds covers the
CONNECT timeout, keep alive (1.5 x the client's value [MQTT-3.1.2-22]), sockets that stay
unwritable, MQTT 3.x re-sends, session expiry and delayed wills. Because `now` is an argument,
tests play time forward without sleeping.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from cymqtt.consts import CONN_ACTIVE, CONN_AUTH, CONN_NEW

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.protocol.client import ClientProtocol
    from cymqtt.registry import Registry

__all__ = ["CONNECT_TIMEOUT", "KEEPALIVE_EXPIRED", "Limits", "RETRY_DUE", "SESSION_EXPIRED",
           "SWEEP_INTERVAL", "WILL_DUE", "WRITE_STALLED", "check"]

SWEEP_INTERVAL = 0.5   # seconds between sweeps; keep alive is enforced to within this

# What an action asks for; its target is in brackets.
CONNECT_TIMEOUT = 1    # no CONNECT within connect_timeout: abort [client]
KEEPALIVE_EXPIRED = 2  # silent for 1.5 x keep alive: DISCONNECT 0x8D and close [client]
WRITE_STALLED = 3      # socket unwritable for write_timeout: abort [client]
RETRY_DUE = 4          # MQTT 3.x: re-send what waited retry_interval for its ack [client]
SESSION_EXPIRED = 5    # offline past its expiry interval: end it [session]
WILL_DUE = 6           # a delayed will's time has come: publish it [client id]


@dataclass(frozen=True)
class Limits:
    """The sweep's slice of the config."""

    connect_timeout: float
    write_timeout: float
    retry_interval: float


def check(now: float, clients: Iterable[ClientProtocol], registry: Registry,
          limits: Limits) -> list[tuple[int, object]]:
    """What the timed rules ask for at `now`, as (action, target) pairs, in this order: the
    clients' deadlines, then expired sessions, then due wills."""
    actions: list[tuple[int, object]] = []
    retry = limits.retry_interval
    # Every connection, every sweep: the common state (connected) is tested first. A client
    # is in one state only, so the order of the tests changes no action.
    for c in clients:
        state = c.state
        if state == CONN_ACTIVE:
            keepalive = c.keepalive
            if keepalive and now - c.last_rx > 1.5 * keepalive:
                actions.append((KEEPALIVE_EXPIRED, c))
            elif not c.writable:
                if now - c.paused_since > limits.write_timeout:
                    actions.append((WRITE_STALLED, c))
            elif retry and c.version < 5:
                session = c.session
                if session is not None and session.window is not None and \
                        session.window.inflight_count:
                    actions.append((RETRY_DUE, c))
        elif state == CONN_NEW or state == CONN_AUTH:
            if now - c.created > limits.connect_timeout:
                actions.append((CONNECT_TIMEOUT, c))
    if registry.offline:
        actions.extend((SESSION_EXPIRED, s) for s in registry.expired(now))
    if registry.pending_wills:
        actions.extend((WILL_DUE, cid) for cid in registry.wills_due(now))
    return actions
