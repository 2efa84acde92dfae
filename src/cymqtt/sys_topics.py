"""$SYS/broker/... topics, as mosquitto names them, from the metrics snapshot (metrics.collect).

Pure: `topics(stats)` maps the snapshot to topic -> value; the broker publishes them, retained,
every `sys_interval` seconds.
"""
from __future__ import annotations

from cymqtt._version import __version__

__all__ = ["topics"]


def topics(stats: dict[str, int]) -> dict[str, str]:
    """Topic -> value of every $SYS topic for the snapshot `stats`."""
    return {
        "$SYS/broker/version": f"cymqtt {__version__}",
        "$SYS/broker/uptime": f"{stats['uptime']} seconds",
        "$SYS/broker/clients/connected": str(stats["clients_connected"]),
        "$SYS/broker/clients/disconnected": str(stats["clients_disconnected"]),
        "$SYS/broker/clients/total": str(stats["sessions"]),
        "$SYS/broker/messages/received": str(stats["messages_received"]),
        "$SYS/broker/messages/sent": str(stats["messages_sent"]),
        "$SYS/broker/publish/messages/dropped": str(stats["messages_dropped"]),
        "$SYS/broker/bytes/received": str(stats["bytes_received"]),
        "$SYS/broker/bytes/sent": str(stats["bytes_sent"]),
        "$SYS/broker/subscriptions/count": str(stats["subscriptions"]),
        "$SYS/broker/retained messages/count": str(stats["retained_messages"]),
        # cymqtt's own: connections refused at the open-file limit (net/accept.py)
        "$SYS/broker/connections/refused/fd limit": str(stats["connections_refused_fd_limit"]),
    }
