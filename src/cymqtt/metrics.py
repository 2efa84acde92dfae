"""Counters the broker keeps, and the one snapshot that `$SYS`, `Broker.stats()` and (later)
Prometheus all read.

Counters are plain attributes incremented on the hot path (an attribute add, no call, no lock:
the broker's state lives on one event loop thread). Gauges are not kept at all: `collect()`
computes them from the registry and the router when someone asks, so they cost nothing per
message. Per-client counters live on the client (`ClientProtocol.received`/`sent`) and the session
(`Session.dropped`/`queued`), where they are one attribute away.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from cymqtt.registry import Registry
    from cymqtt.router import Router

__all__ = ["Metrics", "collect"]


class Metrics:
    """Broker-wide counters since start. `started` is on the broker's clock."""

    __slots__ = ("bytes_received", "bytes_sent", "messages_received", "messages_sent",
                 "dropped_too_large", "dropped_ended_sessions", "dropped_ended_slow",
                 "dropped_refused", "connections_total", "clients_total",
                 "connections_refused_fd_limit", "started")

    def __init__(self, started: float = 0.0) -> None:
        self.bytes_received = 0
        self.bytes_sent = 0
        self.messages_received = 0         # PUBLISH packets from clients
        self.messages_sent = 0             # PUBLISH packets to clients
        self.dropped_too_large = 0         # larger than the client's maximum packet size
        # Queue-limit drops of sessions that have ended (live sessions count their own, see
        # collect()), so the total never goes down when a session goes away.
        self.dropped_ended_sessions = 0
        self.dropped_ended_slow = 0        # the same for QoS 0 dropped to stalled clients
        # PUBLISHes not routed: denied by the ACL or over the topic limits (MQTT 3.x senders
        # get them acknowledged: their protocol has no way to refuse one).
        self.dropped_refused = 0
        self.connections_total = 0         # sockets accepted
        self.clients_total = 0             # CONNACKs with success sent
        # Accepted and closed at once (or left in the backlog): no file descriptor to spare
        # (EMFILE/ENFILE; also ENOBUFS/ENOMEM); net/accept.py.
        self.connections_refused_fd_limit = 0
        self.started = started


def collect(metrics: Metrics, registry: Registry, router: Router, connections: int,
            now: float) -> dict[str, int]:
    """Every counter and gauge, by name, as of `now`. O(sessions): call it per scrape or $SYS
    interval, not per message."""
    sessions = registry.sessions
    connected = registry.connected_count()
    dropped_queue = metrics.dropped_ended_sessions
    dropped_slow = metrics.dropped_ended_slow
    inflight = queued = 0
    for s in sessions.values():
        dropped_slow += s.dropped_slow
        w = s.window
        if w is not None:
            dropped_queue += w.dropped
            inflight += w.inflight_count
            queued += w.queued_count
    return {
        "uptime": int(now - metrics.started),
        "connections": connections,
        "clients_connected": connected,
        "clients_disconnected": len(sessions) - connected,
        "sessions": len(sessions),
        "subscriptions": router.subscription_count,
        "retained_messages": len(router.retained),
        "inflight_messages": inflight,
        "queued_messages": queued,
        "pending_wills": len(registry.pending_wills),
        "messages_received": metrics.messages_received,
        "messages_sent": metrics.messages_sent,
        "messages_dropped": dropped_queue + dropped_slow + metrics.dropped_too_large
        + metrics.dropped_refused,
        "messages_dropped_queue_full": dropped_queue,
        "messages_dropped_slow_consumer": dropped_slow,
        "messages_dropped_too_large": metrics.dropped_too_large,
        "messages_dropped_refused": metrics.dropped_refused,
        "bytes_received": metrics.bytes_received,
        "bytes_sent": metrics.bytes_sent,
        "connections_total": metrics.connections_total,
        "clients_total": metrics.clients_total,
        "connections_refused_fd_limit": metrics.connections_refused_fd_limit,
    }
