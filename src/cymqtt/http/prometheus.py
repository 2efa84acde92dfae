"""`/metrics`: the broker's counters and gauges in the Prometheus exposition format.

A `prometheus_client` collector reads `Broker.stats()` and `Broker.listeners` when Prometheus
scrapes, and only then: the broker keeps its counters as plain attributes (metrics.py), so the
MQTT hot path pays nothing for being scraped. Each HTTP server has its own registry (with the
process, platform and GC collectors), never prometheus_client's global one, so two brokers in
one process do not mix their figures.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client import (
    CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from cymqtt._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from prometheus_client.core import Metric

    from cymqtt.broker import Broker

__all__ = ["BrokerCollector", "make_registry", "exposition"]

# stats() key -> (metric name without cymqtt_, help). Gauges: what the broker holds now.
GAUGES = {
    "connections": ("connections", "Open MQTT connections (sockets), CONNECT sent or not"),
    "clients_connected": ("clients_connected", "Connected clients (CONNACK sent)"),
    "sessions": ("sessions", "Sessions, connected or not"),
    "clients_disconnected": ("sessions_offline", "Persistent sessions without a client"),
    "subscriptions": ("subscriptions", "Subscriptions of every session"),
    "retained_messages": ("retained_messages", "Retained messages held"),
    "inflight_messages": ("inflight_messages", "QoS 1/2 messages sent, not yet acknowledged"),
    "queued_messages": ("queued_messages", "Messages queued behind the inflight windows"),
    "pending_wills": ("pending_wills", "Wills waiting for their delay to pass"),
    "uptime": ("uptime_seconds", "Seconds since the broker started"),
}
# Counters (exposed with the _total suffix): since the broker started.
COUNTERS = {
    "messages_received": ("messages_received", "PUBLISH packets received from clients"),
    "messages_sent": ("messages_sent", "PUBLISH packets sent to clients"),
    "bytes_received": ("bytes_received", "Bytes received from MQTT clients"),
    "bytes_sent": ("bytes_sent", "Bytes sent to MQTT clients"),
    "connections_total": ("connections_accepted", "MQTT connections (sockets) accepted"),
    "clients_total": ("clients_accepted", "Clients accepted (CONNACK with success)"),
    "connections_refused_fd_limit": ("connections_refused_fd_limit",
                                     "Connections refused at the open-file limit"),
}
# The reasons of messages_dropped, each a stats() key.
DROP_REASONS = {
    "queue_full": "messages_dropped_queue_full",
    "slow_consumer": "messages_dropped_slow_consumer",
    "too_large": "messages_dropped_too_large",
    "refused": "messages_dropped_refused",
}


class BrokerCollector(Collector):
    """The broker's figures, read at scrape time."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        st = self._broker.stats()
        yield InfoMetricFamily("cymqtt_build", "The broker's version",
                               value={"version": __version__})
        for key, (name, doc) in GAUGES.items():
            yield GaugeMetricFamily(f"cymqtt_{name}", doc, value=st[key])
        for key, (name, doc) in COUNTERS.items():
            yield CounterMetricFamily(f"cymqtt_{name}", doc, value=st[key])
        dropped = CounterMetricFamily("cymqtt_messages_dropped",
                                      "Messages dropped, by reason: queue_full (a session's "
                                      "queue was full), slow_consumer (QoS 0 to a stalled "
                                      "client), too_large (over the client's maximum packet "
                                      "size), refused (denied by the ACL or a limit)",
                                      labels=["reason"])
        for reason, key in DROP_REASONS.items():
            dropped.add_metric([reason], st[key])
        yield dropped
        per_listener = GaugeMetricFamily("cymqtt_listener_connections",
                                         "Connected clients per MQTT listener",
                                         labels=["listener"])
        for listener in self._broker.listeners:
            per_listener.add_metric([listener["name"]], listener["clients"])
        yield per_listener


def make_registry(broker: Broker) -> CollectorRegistry:
    """A registry of its own: the broker's collector, and the process (CPU, memory, open
    files), platform (Python version) and garbage-collector ones."""
    registry = CollectorRegistry()
    registry.register(BrokerCollector(broker))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The body and content type of a scrape: OpenMetrics when `accept` asks for it, else the
    Prometheus text format."""
    encoder, content_type = choose_encoder(accept)
    return encoder(registry), content_type
